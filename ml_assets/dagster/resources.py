"""Dagster resources around the plain registries and runtimes.

Clients and loaded models live in private attributes, built once per process and reused by
every partition a run scores (see ``BackfillPolicy.single_run()``).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from ml_assets.ray_engine import ModelServiceConfig, RayEngine
from ml_assets.resources.core.models import ModelVersion, Registry
from ml_assets.resources.core.plugins import create_registry
from ml_assets.resources.core.trust import TrustPolicy
from ml_assets.resources.registries.direct import DirectFiles
from ml_assets.service import ModelService

TRUST_DESCRIPTION = (
    "Trust policy: every model version is verified before it is loaded, and the result recorded in lineage "
    "and metadata. Keys: signatures (off|key|certificate), public_key (PEM file, for key), certificate_chain "
    "(PEM files of trusted CAs, for certificate), pickles (off|scan). Extra: trust."
)


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
    trust: dict[str, Any] = Field(default_factory=dict, description=TRUST_DESCRIPTION)

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

    @property
    def trust_policy(self) -> TrustPolicy | None:
        return TrustPolicy.from_options(self.trust)

    def resolve(self, ref: str) -> ModelVersion:
        return ModelService(self.registry, direct=self.direct).resolve(ref)

    def fetch(self, version: ModelVersion) -> Path:
        return ModelService(self.registry, direct=self.direct, trust=self.trust_policy).fetch(version)


class ModelRuntimeResource(dg.ConfigurableResource):
    """How models run: the runtime is picked by the model's format unless ``runtime`` is set.

    Each run gets one ``ModelService``: a model version is loaded once per run, however many
    partitions the run scores, and closed when the run ends.
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

    _services: list[ModelService] = PrivateAttr(default_factory=list)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def service(self, registry: ModelRegistryResource) -> ModelService:
        """A ``ModelService`` over ``registry`` with this runtime configuration; closed at teardown."""
        service = ModelService(
            registry.registry,
            direct=registry.direct,
            runtime=self.runtime,
            runtime_options=self.options,
            secrets={"token": self.token, "username": self.username, "password": self.password},
            trust=registry.trust_policy,
        )
        with self._lock:
            self._services.append(service)
        return service

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        with self._lock:
            services, self._services = self._services, []
        for service in services:
            service.close()


class RayEngineResource(dg.ConfigurableResource):
    """Scores each partition on a Ray cluster (extra: ``ray``) instead of in the run's own process.

    Actors load the version the run resolved (pinned), with the registry and runtime settings of
    the asset's resources; output, lineage and checks are those of a local run.

    Example:
        ```python
        RayEngineResource(address=dg.EnvVar("RAY_ADDRESS"), max_actors=8, cpus_per_actor=2)
        ```
    """

    address: str | None = Field(
        default=None, description="Cluster to join (auto, ray://head:10001); None starts a local Ray in the run."
    )
    min_actors: int = Field(default=1, description="Actors started up front; each loads the model once.")
    max_actors: int = Field(default=2, description="Upper bound of the actor pool; Ray Data grows it with the backlog.")
    cpus_per_actor: float = Field(default=1.0, description="CPUs each actor reserves (match the runtime's threads).")
    init_options: dict[str, Any] = Field(
        default_factory=dict, description="More ray.init arguments (runtime_env, ...) when the run starts Ray."
    )

    def engine(self, registry: ModelRegistryResource, runtime: ModelRuntimeResource) -> RayEngine:
        options = dict(registry.options)
        if registry.registry_uri is not None:
            options["registry_uri"] = registry.registry_uri
        models = ModelServiceConfig(
            registry=registry.kind,
            uri=registry.uri,
            registry_options=options,
            cache_dir=registry.cache_dir,
            storage_options=registry.options.get("storage_options") or {},
            runtime=runtime.runtime,
            runtime_options=runtime.options,
            secrets={"token": runtime.token, "username": runtime.username, "password": runtime.password},
            trust=registry.trust_policy,
        )
        return RayEngine(
            models=models,
            address=self.address,
            min_actors=self.min_actors,
            max_actors=self.max_actors,
            cpus_per_actor=self.cpus_per_actor,
            init_options=self.init_options,
        )
