"""Registries and runtimes are found by name through entry points, as MLflow finds its plugins."""

from __future__ import annotations

import warnings
from importlib.metadata import entry_points
from typing import Any

from ml_assets.resources.core.errors import PluginNotFoundError

REGISTRY_GROUP = "ml_assets.registries"
RUNTIME_GROUP = "ml_assets.runtimes"


def available(group: str) -> list[str]:
    return sorted({ep.name for ep in entry_points(group=group)})


def load_plugin(group: str, name: str) -> Any:
    """The object registered as ``name`` in ``group``; an unknown name lists the known ones."""
    matches = [ep for ep in entry_points(group=group) if ep.name == name]
    if not matches:
        kind = "registry" if group == REGISTRY_GROUP else "runtime"
        msg = f"no {kind} named {name!r}; known: {', '.join(available(group)) or 'none'}"
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
