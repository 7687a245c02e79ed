"""Registries and runtimes are found by name: this package's own from a table, other distributions'
through entry points, as fsspec finds filesystems (``known_implementations``, then its entry points)."""

from __future__ import annotations

import functools
import pkgutil
import warnings
from typing import TYPE_CHECKING, Any

from ml_assets.resources.core.errors import PluginNotFoundError

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

REGISTRY_GROUP = "ml_assets.registries"
RUNTIME_GROUP = "ml_assets.runtimes"

# What pyproject.toml registers under the two groups (a test keeps them the same), found without reading
# every installed distribution's entry points: a scan costs 25-35 ms with ~300 distributions installed,
# and a run made three. A built-in name is not another distribution's to take.
BUILT_IN: dict[str, dict[str, str]] = {
    REGISTRY_GROUP: {
        "mlflow": "ml_assets.resources.registries.mlflow:MlflowRegistry",
        "file": "ml_assets.resources.registries.file:FileRegistry",
        "http": "ml_assets.resources.registries.http:HttpRegistry",
    },
    RUNTIME_GROUP: {
        "onnx": "ml_assets.resources.runtimes.onnx:OnnxRuntime",
        "http": "ml_assets.resources.runtimes.http:HttpRuntime",
        "pmml": "ml_assets.resources.runtimes.pmml:PmmlRuntime",
        "h2o_mojo": "ml_assets.resources.runtimes.h2o:H2oMojoRuntime",
        "pyfunc": "ml_assets.resources.runtimes.pyfunc:PyfuncRuntime",
        "native": "ml_assets.resources.runtimes.native:NativeRuntime",
    },
}


@functools.cache
def _plugins(group: str) -> tuple[EntryPoint, ...]:
    """Other distributions' entry points in ``group`` (read once per process)."""
    from importlib.metadata import entry_points

    return tuple(ep for ep in entry_points(group=group) if ep.name not in BUILT_IN[group])


def available(group: str) -> list[str]:
    return sorted({*BUILT_IN[group], *(ep.name for ep in _plugins(group))})


def load_plugin(group: str, name: str) -> Any:
    """The object registered as ``name`` in ``group``; an unknown name lists the known ones."""
    if name in BUILT_IN[group]:
        return pkgutil.resolve_name(BUILT_IN[group][name])
    matches = [ep for ep in _plugins(group) if ep.name == name]
    if not matches:
        kind = "registry" if group == REGISTRY_GROUP else "runtime"
        msg = f"no {kind} named {name!r}; known: {', '.join(available(group))}"
        raise PluginNotFoundError(msg)
    if len(matches) > 1:
        where = ", ".join(ep.value for ep in matches)
        warnings.warn(f"{name!r} is registered more than once in {group} ({where}); using the first", stacklevel=2)
    return matches[0].load()


def create_registry(name: str, uri: str | None = None, **options: Any) -> Any:
    """A registry is built from its location (tracking URI, folder, URL) and keyword options."""
    return load_plugin(REGISTRY_GROUP, name)(uri, **options)


def create_runtime(name: str, **options: Any) -> Any:
    return load_plugin(RUNTIME_GROUP, name)(**options)
