"""Dagster resources around the plain registries and runtimes.

Clients and loaded models live in private attributes, built once per process and reused by
every partition a run scores (see ``BackfillPolicy.single_run()``).
"""

from __future__ import annotations

import inspect
import threading
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from ml_assets.resources.core.models import ModelVersion, Registry, Scorer
from ml_assets.resources.core.plugins import RUNTIME_GROUP, create_registry, load_plugin
from ml_assets.resources.registries.direct import DirectFiles, fetch_version, resolve_ref


class ModelRegistryResource(dg.ConfigurableResource):
    """Where models are found: any registry registered under ``ml_assets.registries``.

    Example:
        ```python
        ModelRegistryResource(kind="mlflow", uri=dg.EnvVar("MLFLOW_TRACKING_URI"))
        ```
    """

    kind: str = Field(default="mlflow", description="Registry name in the ml_assets.registries entry points.")
    uri: str | None = Field(
        default=None,
        description="Registry location: an MLflow tracking URI (sqlite:///mlflow.db, http://...), a folder or URL.",
    )
    registry_uri: str | None = Field(default=None, description="MLflow only: a registry URI apart from tracking.")
    cache_dir: str | None = Field(default=None, description="Local artifact cache (default ~/.cache/ml-assets).")
    options: dict[str, Any] = Field(default_factory=dict, description="Registry-specific options.")

    _registry: Registry | None = PrivateAttr(default=None)
    _direct: DirectFiles | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._registry = self.build()

    def build(self) -> Registry:
        options: dict[str, Any] = {"cache_dir": self.cache_dir, **self.options}
        if self.registry_uri is not None:
            options["registry_uri"] = self.registry_uri
        return create_registry(self.kind, self.uri, **options)

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = self.build()
        return self._registry

    @property
    def direct(self) -> DirectFiles:
        """Model files named by URL (file:///..., s3://...), outside any registry."""
        if self._direct is None:
            self._direct = DirectFiles(cache_dir=self.cache_dir, storage_options=self.options.get("storage_options"))
        return self._direct

    def resolve(self, ref: str) -> ModelVersion:
        return resolve_ref(self.registry, self.direct, ref)

    def fetch(self, version: ModelVersion) -> Path:
        return fetch_version(self.registry, self.direct, version)


class ModelRuntimeResource(dg.ConfigurableResource):
    """How models run: the runtime is picked by the model's format unless ``runtime`` is set.

    Loaded models are kept per (registry, name, version) for the life of the process.
    """

    runtime: str | None = Field(
        default=None, description="Force a runtime (ml_assets.runtimes entry point); default: the model's format."
    )
    options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Options per runtime name, e.g. {'onnx': {'threads': 2, 'parallel': 1}}.",
    )
    # Secrets of remote runtimes live here, not in `options`, so they can be dg.EnvVar.
    token: str | None = Field(default=None, description="Bearer token for remote runtimes (use dg.EnvVar).")
    username: str | None = Field(default=None, description="Basic-auth user for remote runtimes.")
    password: str | None = Field(default=None, description="Basic-auth password for remote runtimes (use dg.EnvVar).")

    _scorers: dict[tuple[str, str, str], Scorer] = PrivateAttr(default_factory=dict)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def load(self, version: ModelVersion, path: Path) -> Scorer:
        key = (version.registry, version.name, version.version)
        with self._lock:
            scorer = self._scorers.get(key)
            if scorer is None:
                name = self.runtime or version.format
                scorer = load_plugin(RUNTIME_GROUP, name)(**self.runtime_options(name)).load(version, path)
                self._scorers[key] = scorer
            return scorer

    def runtime_options(self, name: str) -> dict[str, Any]:
        """The options for runtime ``name``: its ``options`` entry plus the secrets it accepts."""
        accepted = inspect.signature(load_plugin(RUNTIME_GROUP, name)).parameters
        secrets = {"token": self.token, "username": self.username, "password": self.password}
        return {**self.options.get(name, {}), **{k: v for k, v in secrets.items() if v and k in accepted}}

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        with self._lock:
            for scorer in self._scorers.values():
                scorer.close()
            self._scorers.clear()
