"""The MLflow model registry: aliases (the present) and stages (deprecated, still used).

Works with any tracking/registry URI MLflow accepts: a SQLite file, a database URI, or an
``http(s)://`` tracking server. mlflow is imported lazily, and not at all for resolving an alias or
a version number on a tracking server or a SQLite file whose files are cached (``mlflow_lookup``):
only a download on a cache miss, stages, ``latest`` and error messages need it.
"""

from __future__ import annotations

import functools
import os
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ml_assets.resources.core.cache import ArtifactCache
from ml_assets.resources.core.errors import ArtifactError, ModelNotFoundError, RegistryUnavailableError
from ml_assets.resources.core.formats import mlmodel_format, parse_mlmodel
from ml_assets.resources.core.http import RetryPolicy, redact
from ml_assets.resources.core.models import ColumnSpec, ModelRef, ModelVersion, Signature
from ml_assets.resources.registries.mlflow_lookup import VersionRecord, lookup_for, signature_columns

if TYPE_CHECKING:
    from mlflow import MlflowClient

T = TypeVar("T")
FORMAT_TAG = "ml_assets.format"
# MLflow signature types -> Arrow type names
_MLFLOW_TYPES = {
    "double": "double",
    "float": "float",
    "long": "int64",
    "integer": "int32",
    "boolean": "bool",
    "string": "string",
    "binary": "binary",
    "datetime": "timestamp[ns]",
}


# MLflow reads its HTTP timeout, retries and progress bar from the process environment at every
# call, and takes them from nowhere else. They are set only while one of our calls runs, and put
# back after, so the user's environment is never left changed; the lock keeps two of our calls
# from restoring each other's values.
_SETTINGS_LOCK = threading.RLock()


@contextmanager
def _mlflow_settings(settings: dict[str, tuple[Any, Any]]) -> Iterator[None]:
    with _SETTINGS_LOCK:
        saved = {var: os.environ.get(var) for var in settings}
        try:
            for var, (given, default) in settings.items():
                if given is not None:
                    os.environ[var] = str(given)
                elif saved[var] is None:
                    os.environ[var] = str(default)
            yield
        finally:
            for var, value in saved.items():
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value


def _with_mlflow_settings(method: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(method)
    def wrapper(self: MlflowRegistry, *args: Any, **kwargs: Any) -> T:
        with _mlflow_settings(self._settings):
            return method(self, *args, **kwargs)

    return wrapper


class MlflowRegistry:
    """Resolves ``models:/...`` refs in an MLflow registry and caches the versions' files.

    Args:
        tracking_uri: e.g. ``sqlite:///mlflow.db`` or ``http://127.0.0.1:5000``; None means
            MLflow's own default (``MLFLOW_TRACKING_URI``).
        registry_uri: when the registry lives apart from the tracking store.
        cache_dir: where artifacts are cached (default ``$ML_ASSETS_CACHE_DIR`` or ``~/.cache/ml-assets``).
        request_timeout_s / max_retries: for ``http(s)://`` tracking servers. MLflow's own defaults
            (120 s per request, 7 retries with exponential backoff) let one call hang for minutes
            when the server is down; these bound it to roughly ``(max_retries + 1) * timeout``
            plus a few seconds of backoff. MLflow reads them from the process environment
            (``MLFLOW_HTTP_REQUEST_TIMEOUT``, ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``,
            ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR``): values set there win over the defaults
            (30 s, 2 retries, factor 1); values given here win over the environment.
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        *,
        registry_uri: str | None = None,
        cache_dir: str | Path | None = None,
        request_timeout_s: int | None = None,
        max_retries: int | None = None,
    ) -> None:
        self._settings = {
            # MLflow draws a progress bar per download, even for one small file; ours is enough.
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": (None, "false"),
        }
        if any(u and u.startswith(("http://", "https://")) for u in (tracking_uri, registry_uri)):
            # The shared retry policy's bounds, in the form MLflow's REST client reads them.
            policy = RetryPolicy(max_attempts=(2 if max_retries is None else max_retries) + 1, backoff_base=1.0)
            given = {"MLFLOW_HTTP_REQUEST_TIMEOUT": request_timeout_s, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": max_retries}
            self._settings.update(
                {var: (given.get(var), default) for var, default in policy.mlflow_environment(30).items()}
            )
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        self.cache = ArtifactCache(cache_dir)
        self._versions: dict[tuple[str, str], ModelVersion] = {}

    @cached_property
    def client(self) -> MlflowClient:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)

    @property
    def location(self) -> str:
        if self.registry_uri:
            return redact(self.registry_uri)
        import mlflow

        return redact(mlflow.get_registry_uri())

    @property
    def registry_id(self) -> str:
        return f"mlflow:{self.location}"

    def __repr__(self) -> str:
        return f"MlflowRegistry({self.location!r})"

    # -- discovery -------------------------------------------------------------------------

    @_with_mlflow_settings
    def resolve(self, ref: ModelRef | str) -> ModelVersion:
        ref = ModelRef.parse(ref) if isinstance(ref, str) else ref
        if ref.direct_uri is not None:
            msg = f"{ref.raw!r} is a file, not a registry ref; it is scored without a registry"
            raise ModelNotFoundError(msg)
        if ref.alias is not None or ref.version is not None:
            record = self._lookup_version(ref)
            if record is not None:
                return self._describe(record, ref)
        if ref.alias is not None:
            mv = self._call(lambda c: c.get_model_version_by_alias(ref.name, ref.alias), ref)
        elif ref.version is not None:
            mv = self._call(lambda c: c.get_model_version(ref.name, ref.version), ref)
        elif ref.latest:
            versions = self._search_versions(ref)
            mv = max(versions, key=lambda v: int(v.version))
        else:
            mv = self._by_stage(ref)
        return self._describe(mv, ref)

    @_with_mlflow_settings
    def list_models(self) -> list[str]:
        models = self._call(lambda c: c.search_registered_models(max_results=1000), None)
        return sorted(m.name for m in models)

    @_with_mlflow_settings
    def list_versions(self, name: str) -> list[ModelVersion]:
        ref = ModelRef(raw=f"models:/{name}/latest", name=name, latest=True)
        found = sorted(self._search_versions(ref), key=lambda v: int(v.version))
        # Search results carry no aliases; the registered model has them all.
        by_version: dict[str, list[str]] = {}
        for alias, number in (self._registered_model(ref).aliases or {}).items():
            by_version.setdefault(str(number), []).append(alias)
        return [
            _replace(self._describe(mv, ref), aliases=tuple(sorted(by_version.get(str(mv.version), []))))
            for mv in found
        ]

    @_with_mlflow_settings
    def promote(self, name: str, version: str, *, alias: str | None = None, stage: str | None = None) -> ModelVersion:
        """Points ``alias`` at ``version`` and/or moves it into ``stage`` (archiving the version
        that held Production/Staging before, as the file registry does)."""
        if alias is None and stage is None:
            msg = "promote needs an alias, a stage or both"
            raise ValueError(msg)
        ref = ModelRef(raw=f"models:/{name}/{version}", name=name, version=str(version))
        self.resolve(ref)  # a clear error naming what exists
        if alias is not None:
            self._call(lambda c: c.set_registered_model_alias(name, alias, str(version)), ref)
        if stage is not None:
            archive = stage.lower() in ("production", "staging")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                self._call(
                    lambda c: c.transition_model_version_stage(
                        name, str(version), stage, archive_existing_versions=archive
                    ),
                    ref,
                )
        return self.resolve(ref)

    # -- files -----------------------------------------------------------------------------

    @_with_mlflow_settings
    def fetch(self, version: ModelVersion) -> Path:
        def download(dest: Path) -> None:
            import mlflow

            try:
                mlflow.artifacts.download_artifacts(
                    artifact_uri=version.artifact_uri,
                    dst_path=str(dest),
                    tracking_uri=self.tracking_uri,
                    registry_uri=self.registry_uri,
                )
            except Exception as exc:  # MLflow raises many kinds; all mean the same here
                msg = f"{version.describe()}: cannot download {redact(version.artifact_uri)}: {_shorten(str(exc))}"
                raise ArtifactError(msg) from exc
            _flatten_single_folder(dest)

        return self.cache.get_or_fetch(version, download)

    # -- helpers ---------------------------------------------------------------------------

    def _lookup_version(self, ref: ModelRef) -> VersionRecord | None:
        """The version from the registry's REST API or SQLite tables without MLflow; None: ask MLflow."""
        lookup = lookup_for(
            self.registry_uri,
            # _mlflow_settings put this call's bounds (given, the user's, or ours) in the environment
            timeout_s=float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", 30)),
            max_retries=int(os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", 2)),
        )
        return None if lookup is None else lookup.version(ref.name, version=ref.version, alias=ref.alias)

    def _call(self, fn: Any, ref: ModelRef | None) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return fn(self.client)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") and ref is not None:
                raise ModelNotFoundError(self._not_found_message(ref)) from None
            msg = f"MLflow registry {self.location} failed: {_shorten(str(exc))}"
            raise RegistryUnavailableError(msg) from exc
        except (OSError, ConnectionError) as exc:
            msg = f"MLflow registry {self.location} is unreachable: {_shorten(str(exc))}"
            raise RegistryUnavailableError(msg) from exc
        except Exception as exc:
            # SQLAlchemy and requests errors surface unwrapped when the store itself is broken.
            if type(exc).__module__.split(".")[0] in ("sqlalchemy", "requests", "urllib3"):
                msg = f"MLflow registry {self.location} is unreachable: {_shorten(str(exc))}"
                raise RegistryUnavailableError(msg) from exc
            raise

    def _search_versions(self, ref: ModelRef) -> list[Any]:
        self._registered_model(ref)  # a clear error for an unknown model
        versions = self._call(lambda c: c.search_model_versions(f"name = '{ref.name}'", max_results=10000), ref)
        if not versions:
            msg = f"model {ref.name!r} in MLflow registry {self.location} has no versions (asked: {ref.raw!r})"
            raise ModelNotFoundError(msg)
        return versions

    def _by_stage(self, ref: ModelRef) -> Any:
        self._registered_model(ref)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            found = self._call(lambda c: c.get_latest_versions(ref.name, stages=[ref.stage]), ref)
        if not found:
            raise ModelNotFoundError(self._not_found_message(ref))
        return found[0]

    def _registered_model(self, ref: ModelRef) -> Any:
        return self._call(lambda c: c.get_registered_model(ref.name), ref)

    def _not_found_message(self, ref: ModelRef) -> str:
        """Names what was asked and what exists: the models, or the model's aliases/stages/versions."""
        from mlflow.exceptions import MlflowException

        where = f"MLflow registry {self.location}"
        try:
            model = self.client.get_registered_model(ref.name)
        except MlflowException:
            try:
                known = ", ".join(self.list_models()) or "none"
            except RegistryUnavailableError:
                known = "unknown"
            return f"no model named {ref.name!r} in {where} (asked: {ref.raw!r}); models: {known}"
        aliases = ", ".join(sorted(model.aliases or {})) or "none"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                versions = self.client.search_model_versions(f"name = '{ref.name}'", max_results=10000)
            numbers = ", ".join(sorted((str(v.version) for v in versions), key=int)) or "none"
            stages = ", ".join(sorted({v.current_stage for v in versions if v.current_stage != "None"})) or "none"
        except MlflowException:
            numbers = stages = "unknown"
        if ref.alias is not None:
            what = f"alias {ref.alias!r}"
        elif ref.stage is not None:
            what = f"a version in stage {ref.stage!r}"
        else:
            what = f"version {ref.version}"
        return (
            f"model {ref.name!r} in {where} has no {what} (asked: {ref.raw!r}); "
            f"aliases: {aliases}; stages: {stages}; versions: {numbers}"
        )

    def _describe(self, mv: Any, ref: ModelRef) -> ModelVersion:
        key = (mv.name, str(mv.version))
        cached = self._versions.get(key)
        if cached is None:
            if isinstance(mv, VersionRecord):
                artifact_uri = mv.artifact_uri
            else:
                artifact_uri = self._call(lambda c: c.get_model_version_download_uri(mv.name, mv.version), ref)
            mlmodel = self._read_mlmodel(artifact_uri, mv)
            flavors = mlmodel.get("flavors") or {}
            # A version's tag wins; else the flavors decide (mlmodel_format), and pyfunc is what a model
            # without a loadable flavor is tried with (its load says what is missing).
            fmt = (mv.tags or {}).get(FORMAT_TAG) or mlmodel_format(mlmodel) or "pyfunc"
            extra = {}
            if "onnx" in flavors and flavors["onnx"].get("data"):
                extra["model_file"] = flavors["onnx"]["data"]
            cached = ModelVersion(
                name=mv.name,
                version=str(mv.version),
                format=fmt,
                artifact_uri=artifact_uri,
                registry=self.registry_id,
                signature=_signature(mlmodel),
                run_id=mv.run_id,
                created_at=datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=timezone.utc)
                if mv.creation_timestamp
                else None,
                tags=dict(mv.tags or {}),
                extra=extra,
            )
            self._versions[key] = cached
        # Aliases and stage move; the rest of a version never changes.
        return _replace(cached, ref=ref.raw, aliases=tuple(sorted(mv.aliases or ())), stage=_stage(mv))

    def _read_mlmodel(self, artifact_uri: str, mv: Any) -> dict[str, Any]:
        """The version's MLmodel: from the artifact cache when the version is there (no MLflow), else
        downloaded alone."""
        cached = self.cache.cached(
            ModelVersion(name=mv.name, version=str(mv.version), format="", artifact_uri="", registry=self.registry_id)
        )
        try:
            if cached is not None and (cached / "MLmodel").is_file():
                return parse_mlmodel((cached / "MLmodel").read_text())
            import mlflow

            with tempfile.TemporaryDirectory(prefix="ml-assets-mlmodel-") as tmp:
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=f"{artifact_uri.rstrip('/')}/MLmodel",
                    dst_path=tmp,
                    tracking_uri=self.tracking_uri,
                    registry_uri=self.registry_uri,
                )
                return parse_mlmodel(Path(local).read_text())
        except Exception as exc:  # a version without an MLmodel file is not an MLflow model
            msg = (
                f"model {mv.name!r} version {mv.version}: cannot read its MLmodel at "
                f"{redact(artifact_uri)}: {_shorten(str(exc))}"
            )
            raise ArtifactError(msg) from exc


def _stage(mv: Any) -> str | None:
    stage = getattr(mv, "current_stage", None)
    return None if stage in (None, "", "None") else stage


def _replace(version: ModelVersion, **changes: Any) -> ModelVersion:
    from dataclasses import replace

    return replace(version, **changes)


def _signature(mlmodel: dict[str, Any]) -> Signature | None:
    """Column names and types from an MLflow signature; None for tensor signatures or none at all."""
    columns = signature_columns(mlmodel, _MLFLOW_TYPES)
    if columns is None:
        return None
    inputs, outputs = columns
    return Signature(
        inputs=tuple(ColumnSpec(name, kind, required) for name, kind, required in inputs),
        outputs=tuple(ColumnSpec(name, kind) for name, kind in outputs),
    )


def _flatten_single_folder(dest: Path) -> None:
    """download_artifacts may nest the model in a folder of its own; keep the model at the top."""
    entries = list(dest.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and not (dest / "MLmodel").exists():
        inner = entries[0]
        for child in inner.iterdir():
            child.rename(dest / child.name)
        inner.rmdir()


def _shorten(text: str, limit: int = 300) -> str:
    """One line, credentials removed: library errors quote the URLs they failed on."""
    text = redact(" ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."
