"""The ``ml_assets_registry`` connection: where models are found and how they run, as a ``ModelService``.

A connection holds what the Dagster ``ModelRegistryResource`` and ``ModelRuntimeResource`` hold:

- **Registry URI** (the connection's host): an MLflow tracking URI (``http://mlflow:5000``,
  ``sqlite:////data/mlflow.db``), a folder or an fsspec URL for the file registry.
- **Login / Password**: basic-auth credentials handed to remote runtimes (``mlflow models serve``,
  KServe); the password is masked by Airflow.
- **Extra** (JSON): ``kind`` (registry name, default ``mlflow``), ``token`` (bearer token for remote
  runtimes, masked), ``registry_uri`` (MLflow: a registry apart from tracking), ``cache_dir``,
  ``registry_options``, ``storage_options`` (fsspec, for direct ``s3://`` model files), ``runtime``
  (force a runtime), ``runtime_options`` (per runtime, e.g. ``{"onnx": {"threads": 2}}``).

Example (environment variable, JSON form)::

    AIRFLOW_CONN_ML_ASSETS_DEFAULT='{"conn_type": "ml_assets_registry", "host": "http://mlflow:5000",
                                     "extra": {"runtime_options": {"onnx": {"threads": 2}}}}'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow.sdk import BaseHook

from ml_assets.resources.core.errors import PluginNotFoundError
from ml_assets.resources.core.trust import TrustPolicy
from ml_assets.service import ModelService

if TYPE_CHECKING:
    from airflow.sdk import Connection

CONN_TYPE = "ml_assets_registry"
DEFAULT_CONN_ID = "ml_assets_default"
EXTRA_FIELDS = (
    "kind",
    "token",
    "registry_uri",
    "cache_dir",
    "registry_options",
    "storage_options",
    "runtime",
    "runtime_options",
    "trust",
)


def service_for(conn: Connection) -> ModelService:
    """A ``ModelService`` from a connection; secrets reach only the runtimes that take them."""
    extra = dict(conn.extra_dejson)
    unknown = sorted(set(extra) - set(EXTRA_FIELDS))
    if unknown:
        msg = (
            f"connection {conn.conn_id!r}: unknown extra field(s) {', '.join(unknown)}; "
            f"a {CONN_TYPE} connection takes: {', '.join(EXTRA_FIELDS)}"
        )
        raise PluginNotFoundError(msg)
    _mask_uri_password(conn.host)
    registry_options = dict(extra.get("registry_options") or {})
    if extra.get("registry_uri"):
        _mask_uri_password(extra["registry_uri"])
        registry_options["registry_uri"] = extra["registry_uri"]
    return ModelService.from_uri(
        extra.get("kind") or "mlflow",
        conn.host or None,
        cache_dir=extra.get("cache_dir"),
        registry_options=registry_options,
        storage_options=extra.get("storage_options"),
        runtime=extra.get("runtime"),
        runtime_options=extra.get("runtime_options"),
        secrets={"token": extra.get("token"), "username": conn.login, "password": conn.password},
        trust=_trust(conn, extra.get("trust")),
    )


def _trust(conn: Connection, options: Any) -> TrustPolicy | None:
    """The connection's ``trust`` extra ({"signatures": "key", "public_key": "/keys/models.pub", "pickles": "scan"})."""
    try:
        return TrustPolicy.from_options(options)
    except (TypeError, ValueError) as exc:
        msg = f"connection {conn.conn_id!r}: extra field 'trust': {exc}"
        raise PluginNotFoundError(msg) from None


def _mask_uri_password(uri: str | None) -> None:
    """A registry URI may carry a password (``postgresql://u:pw@db/mlflow``); keep it out of task logs."""
    if not uri:
        return
    try:
        password = urlsplit(uri).password
    except ValueError:
        return
    if password:
        try:
            from airflow.sdk.log import mask_secret
        except ImportError:  # Airflow 3.0's task SDK kept it here
            from airflow.sdk.execution_time.secrets_masker import mask_secret

        mask_secret(password)


class ModelRegistryHook(BaseHook):
    """Builds a ``ModelService`` (ref -> registry -> version -> files -> runtime -> scorer) from a connection.

    The caller owns the service: use it as a context manager so loaded scorers are closed.
    """

    conn_name_attr = "registry_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = CONN_TYPE
    hook_name = "ML model registry (ml-assets)"

    def __init__(self, registry_conn_id: str = DEFAULT_CONN_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.registry_conn_id = registry_conn_id

    def get_conn(self) -> ModelService:
        return self._service(self.get_connection(self.registry_conn_id))

    async def aget_conn(self) -> ModelService:
        """For triggers: the connection is read without blocking the triggerer's event loop."""
        if hasattr(self, "aget_connection"):
            return self._service(await self.aget_connection(self.registry_conn_id))
        # Task SDKs before aget_connection: the blocking lookup, off the loop.
        import asyncio

        return self._service(await asyncio.to_thread(self.get_connection, self.registry_conn_id))

    def _service(self, conn: Connection) -> ModelService:
        service = service_for(conn)  # registers the URI's password with the masker before it is logged
        kind = conn.extra_dejson.get("kind") or "mlflow"
        self.log.info("connection %s: %s registry at %s", conn.conn_id, kind, conn.host or "(default location)")
        return service

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["schema", "port"],
            "relabeling": {"host": "Registry URI", "login": "Runtime username", "password": "Runtime password"},
            "placeholders": {
                "host": "http://mlflow:5000 or sqlite:////data/mlflow.db or s3://bucket/models",
                "extra": '{"kind": "mlflow", "token": "...", "runtime_options": {"onnx": {"threads": 2}}}',
            },
        }
