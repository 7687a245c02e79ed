"""The one path from a model ref to a loaded scorer: ref -> registry -> version -> files -> runtime -> scorer.

The CLI, the Dagster asset and Component, and any other integration (Airflow, Ray actors) all go
through ``ModelService``, so a ref resolves, caches and loads the same way everywhere.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ml_assets.resources.core.errors import MissingDependencyError, NativeUnsupportedError, PluginNotFoundError
from ml_assets.resources.core.models import ModelRef, ModelVersion, Registry, Scorer
from ml_assets.resources.core.plugins import RUNTIME_GROUP, create_registry, load_plugin
from ml_assets.resources.core.trust import TrustPolicy
from ml_assets.resources.registries.direct import REGISTRY_ID, DirectFiles

#: Keyword arguments a runtime may take that hold credentials: passed only to runtimes that accept them.
SECRET_OPTIONS = ("token", "username", "password")
log = logging.getLogger(__name__)

# Optional packages (imported lazily by registries and runtimes) -> the extra that installs them.
_EXTRAS = {
    "onnxruntime": "onnx",
    "onnx": "onnx",
    "mlflow": "mlflow",
    "jpype": "jvm",
    "pypmml": "pmml",
    "h2o": "h2o",
    "s3fs": "s3",
    "requests": "http",
    "yaml": "http",
}


@contextmanager
def _install_hint(what: str) -> Iterator[None]:
    """A missing optional package becomes an error that says which extra installs it."""
    try:
        yield
    except ModuleNotFoundError as exc:
        package = (exc.name or "").split(".")[0]
        if package not in _EXTRAS:
            raise
        msg = f"{what} needs the package {package!r}: pip install 'dagster-ml-assets[{_EXTRAS[package]}]'"
        raise MissingDependencyError(msg) from exc


@dataclass(frozen=True)
class LoadedModel:
    """A resolved version and its scorer, ready for ``score_partition``."""

    version: ModelVersion
    scorer: Scorer


def runtime_options(
    runtime: str, options: Mapping[str, Any] | None = None, *, secrets: Mapping[str, str | None] | None = None
) -> dict[str, Any]:
    """The keyword arguments for runtime ``runtime``: ``options`` checked against what it takes, plus the
    secrets it accepts. An option the runtime does not take is an error that lists the ones it does."""
    factory = load_plugin(RUNTIME_GROUP, runtime)
    parameters = inspect.signature(factory).parameters
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    given = dict(options or {})
    refused = sorted(k for k in given if k not in parameters and not open_ended)
    if refused:
        accepted = sorted(k for k in parameters if k not in SECRET_OPTIONS and k != "self")
        msg = f"the {runtime} runtime takes no option {', '.join(refused)}; it takes: {', '.join(accepted) or 'none'}"
        raise PluginNotFoundError(msg)
    accepted_secrets = {k: v for k, v in (secrets or {}).items() if v and (k in parameters or open_ended)}
    return {**given, **accepted_secrets}


class ModelService:
    """Resolves refs, fetches files and loads scorers, each version loaded once per service.

    Args:
        registry: where registry refs (``models:/fraud@champion``) resolve; direct refs
            (``file:///m.onnx``, ``s3://b/m.pmml``) never need one.
        runtime: force a runtime by name; default: the version's format picks it.
        runtime_options: options per runtime name, e.g. ``{"onnx": {"threads": 2}}``.
        secrets: ``token``/``username``/``password`` for remote runtimes; given only to runtimes
            that take them, never logged.
        trust: verify every version's files (signature, pickles) before it is loaded; the
            resolved version carries what was verified into lineage and metadata.

    Example:
        ```python
        with ModelService.from_uri("mlflow", "sqlite:///mlflow.db") as models:
            model = models.open("models:/fraud@champion")
            score_partition(model.scorer, model.version, source, dest, partition="2026-11-01")
        ```
    """

    def __init__(
        self,
        registry: Registry | None = None,
        *,
        runtime: str | None = None,
        runtime_options: Mapping[str, Mapping[str, Any]] | None = None,
        secrets: Mapping[str, str | None] | None = None,
        direct: DirectFiles | None = None,
        trust: TrustPolicy | None = None,
    ) -> None:
        self.registry = registry
        self.trust = trust if trust is not None and trust.active else None
        self._verified: dict[tuple[str, str, str, str], dict[str, str]] = {}
        self.runtime = runtime
        self.runtime_options = {name: dict(opts) for name, opts in (runtime_options or {}).items()}
        self._secrets = dict(secrets or {})
        self.direct = direct or DirectFiles()
        self._scorers: dict[tuple[str, str, str], Scorer] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_uri(
        cls,
        kind: str = "mlflow",
        uri: str | None = None,
        *,
        cache_dir: str | Path | None = None,
        registry_options: Mapping[str, Any] | None = None,
        storage_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> ModelService:
        """A service over the registry named ``kind`` (an ``ml_assets.registries`` entry point) at ``uri``."""
        with _install_hint(f"the {kind} registry"):
            registry = create_registry(kind, uri, cache_dir=cache_dir, **dict(registry_options or {}))
        direct = DirectFiles(cache_dir=cache_dir, storage_options=storage_options)
        return cls(registry, direct=direct, **kwargs)

    def resolve(self, ref: ModelRef | str) -> ModelVersion:
        """The version ``ref`` names; with a trust policy, fetched and verified now, carrying the
        verification's facts (a refused version raises ModelVerificationError here)."""
        parsed = ModelRef.parse(ref) if isinstance(ref, str) else ref
        if parsed.direct_uri is not None:
            with _install_hint(f"reading {parsed.direct_uri}"):
                version = self.direct.resolve(parsed)
        elif self.registry is None:
            msg = f"{parsed.raw!r} needs a model registry, and none is configured"
            raise PluginNotFoundError(msg)
        else:
            with _install_hint(f"resolving {parsed.raw!r}"):
                version = self.registry.resolve(parsed)
        if self.trust is None:
            return version
        self.fetch(version)
        return replace(version, verification=self._verified[self._verify_key(version)])

    def fetch(self, version: ModelVersion) -> Path:
        """The version's local files; with a trust policy, verified (once per service and version)."""
        with _install_hint(f"fetching {version.describe()}"):
            if version.registry == REGISTRY_ID:
                path = self.direct.fetch(version)
            elif self.registry is None:
                msg = f"{version.describe()} needs a model registry, and none is configured"
                raise PluginNotFoundError(msg)
            else:
                path = self.registry.fetch(version)
        if self.trust is not None:
            key = self._verify_key(version)
            if key not in self._verified:
                self._verified[key] = self.trust.verify(version, path)
        return path

    @staticmethod
    def _verify_key(version: ModelVersion) -> tuple[str, str, str, str]:
        return (version.registry, version.name, version.version, version.checksum or "")

    def runtime_for(self, version: ModelVersion) -> str:
        return self.runtime or version.format

    def load(self, version: ModelVersion) -> Scorer:
        """The scorer of ``version``: fetched and loaded at the first call, the same object after."""
        key = (version.registry, version.name, version.version)
        with self._lock:
            scorer = self._scorers.get(key)
            if scorer is None:
                name = self.runtime_for(version)
                options = runtime_options(name, self.runtime_options.get(name), secrets=self._secrets)
                path = self.fetch(version)
                try:
                    with _install_hint(f"the {name} runtime ({version.describe()})"):
                        scorer = load_plugin(RUNTIME_GROUP, name)(**options).load(version, path)
                except NativeUnsupportedError as exc:
                    # native is only the default of the tree/sklearn flavors: a model of theirs that it does not
                    # score (by structure) is scored as it was logged, unless the user asked for native.
                    if self.runtime is not None:
                        raise
                    log.warning("%s; scoring it with the pyfunc runtime", exc)
                    options = runtime_options("pyfunc", self._fallback_options(name), secrets=self._secrets)
                    with _install_hint(f"the pyfunc runtime ({version.describe()})"):
                        scorer = load_plugin(RUNTIME_GROUP, "pyfunc")(**options).load(version, path)
                self._scorers[key] = scorer
            return scorer

    def _fallback_options(self, native: str) -> dict[str, Any]:
        """The pyfunc runtime's options where given; else those of the native runtime that pyfunc takes too
        (``env_manager``, ``env_path``, the index settings, ``workers``...): the model's environment stays."""
        if "pyfunc" in self.runtime_options:
            return dict(self.runtime_options["pyfunc"])
        taken = inspect.signature(load_plugin(RUNTIME_GROUP, "pyfunc")).parameters
        return {k: v for k, v in self.runtime_options.get(native, {}).items() if k in taken}

    def open(self, ref: ModelRef | str) -> LoadedModel:
        """Resolve ``ref`` now and load its version."""
        version = self.resolve(ref)
        return LoadedModel(version, self.load(version))

    def close(self) -> None:
        """Close every loaded scorer (worker processes, JVM buffers, HTTP sessions)."""
        with self._lock:
            scorers, self._scorers = list(self._scorers.values()), {}
        for scorer in scorers:
            scorer.close()

    def __enter__(self) -> ModelService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
