"""Resolving an MLflow model version without importing MLflow (``import mlflow`` and the client's first
call on a SQLite store cost seconds of every process's start-up).

- ``http(s)://`` registries: the registry's documented REST calls (``registered-models/alias``,
  ``model-versions/get``, ``model-versions/get-download-uri``) over our one HTTP layer, with
  MLflow's own authentication variables.
- ``sqlite:///`` registries: one read-only query of the registry tables, trusted only when the
  database records a schema revision whose tables we read as MLflow does (``KNOWN_SCHEMAS``).

Either answers with a ``VersionRecord``, or with None where it cannot be sure to answer as MLflow
would (an unknown schema, a version or alias that does not exist, an authentication scheme of
MLflow's plugins, workspaces): the caller then asks MLflow itself, which also words the errors.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from ml_assets.resources.core.errors import RegistryUnavailableError
from ml_assets.resources.core.http import RetryPolicy, new_session, redact, retry_after

# Alembic revisions of MLflow's database schema whose registry tables (model_versions,
# registered_model_aliases, model_version_tags, with a workspace column) were checked against
# MLflow's SqlAlchemyStore. A newer MLflow records a newer revision and is asked itself until
# its tables are checked and the revision added (tests/resources/test_mlflow_lookup.py fails first).
KNOWN_SCHEMAS = frozenset({"dc11669786a5"})
_DEFAULT_WORKSPACE = "default"
_DELETED_STAGE = "Deleted_Internal"  # MLflow's soft-deleted versions
# Set, these make MLflow authenticate, route or scope requests in ways only MLflow knows.
_MLFLOW_ONLY_SETTINGS = (
    "MLFLOW_TRACKING_AUTH",
    "MLFLOW_TRACKING_CLIENT_CERT_PATH",
    "MLFLOW_TRACKING_AWS_SIGV4",
    "MLFLOW_ENABLE_WORKSPACES",
    "MLFLOW_WORKSPACE",
)


@dataclass(frozen=True)
class VersionRecord:
    """What resolving needs of one model version, named as MLflow's ModelVersion names it."""

    name: str
    version: str
    artifact_uri: str
    run_id: str | None
    creation_timestamp: int | None
    current_stage: str | None
    tags: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()


def lookup_for(registry_uri: str | None, *, timeout_s: float, max_retries: int) -> Any:
    """The MLflow-free lookup for this registry URI, or None when only MLflow can serve it."""
    uri = registry_uri or os.environ.get("MLFLOW_REGISTRY_URI") or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri or any(os.environ.get(var) for var in _MLFLOW_ONLY_SETTINGS):
        return None
    if uri.startswith(("http://", "https://")):
        return RestLookup(uri, timeout_s=timeout_s, max_retries=max_retries)
    if uri.startswith("sqlite:///") and "?" not in uri:
        return SqliteLookup(unquote(uri.removeprefix("sqlite:///")))
    return None


class SqliteLookup:
    """Read-only queries of MLflow's registry tables in a SQLite file, as MLflow's SqlAlchemyStore
    makes them in its default (single-workspace) mode."""

    def __init__(self, path: str) -> None:
        # sqlite:///relative.db is relative to the working directory; sqlite:////abs.db is absolute.
        self.path = path

    def version(self, name: str, *, version: str | None = None, alias: str | None = None) -> VersionRecord | None:
        if alias is not None and alias.lower() == "latest":
            return None  # MLflow's reserved alias: the highest version, a search MLflow runs itself
        if not os.path.isfile(self.path):
            return None
        try:
            with _read_only(self.path) as db:
                if not self._schema_known(db):
                    return None
                if alias is not None:
                    row = db.execute(
                        "SELECT version FROM registered_model_aliases WHERE workspace = ? AND name = ? AND alias = ?",
                        (_DEFAULT_WORKSPACE, name, alias),
                    ).fetchone()
                    if row is None:
                        return None
                    number = int(row[0])
                else:
                    try:
                        number = int(str(version))
                    except ValueError:
                        return None
                return self._version(db, name, number)
        except sqlite3.Error as exc:
            msg = f"MLflow registry sqlite:///{self.path} cannot be read: {exc}"
            raise RegistryUnavailableError(msg) from exc

    @staticmethod
    def _schema_known(db: sqlite3.Connection) -> bool:
        try:
            revisions = {row[0] for row in db.execute("SELECT version_num FROM alembic_version")}
        except sqlite3.OperationalError:  # not an MLflow database, or one MLflow has not initialised
            return False
        return len(revisions) == 1 and revisions <= KNOWN_SCHEMAS

    @staticmethod
    def _version(db: sqlite3.Connection, name: str, number: int) -> VersionRecord | None:
        row = db.execute(
            "SELECT name, version, storage_location, source, run_id, creation_time, current_stage "
            "FROM model_versions WHERE workspace = ? AND name = ? AND version = ? AND current_stage != ?",
            (_DEFAULT_WORKSPACE, name, number, _DELETED_STAGE),
        ).fetchone()
        if row is None:
            return None
        found_name, found_version, storage_location, source, run_id, created, stage = row
        where = (_DEFAULT_WORKSPACE, name, number)
        tags = db.execute(
            "SELECT key, value FROM model_version_tags WHERE workspace = ? AND name = ? AND version = ?", where
        ).fetchall()
        aliases = db.execute(
            "SELECT alias FROM registered_model_aliases WHERE workspace = ? AND name = ? AND version = ?", where
        ).fetchall()
        return VersionRecord(
            name=found_name,
            version=str(found_version),
            artifact_uri=storage_location or source,  # what MLflow's get_model_version_download_uri answers
            run_id=run_id,
            creation_timestamp=created,
            current_stage=stage,
            tags=dict(tags),
            aliases=tuple(sorted(a for (a,) in aliases)),
        )


class _read_only:
    """A read-only connection (never creates or migrates the file; waits a little for a writer's lock)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __enter__(self) -> sqlite3.Connection:
        self.db = sqlite3.connect(f"file:{os.path.abspath(self.path)}?mode=ro", uri=True, timeout=10)
        return self.db

    def __exit__(self, *exc: object) -> None:
        self.db.close()


class RestLookup:
    """The MLflow REST API's model-version calls, over ``new_session`` and the shared retry policy."""

    def __init__(self, base_url: str, *, timeout_s: float, max_retries: int) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.policy = RetryPolicy(max_attempts=max_retries + 1, backoff_base=1.0, deadline_s=(max_retries + 1) * 60)
        self._session: Any = None

    @property
    def session(self) -> Any:
        if self._session is None:
            token = os.environ.get("MLFLOW_TRACKING_TOKEN")
            user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
            insecure = os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("true", "1")
            verify: bool | str = not insecure and (os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or True)
            self._session = new_session(
                verify=verify,
                token=token,
                basic_auth=(user, password) if user and password else None,
                headers={"User-Agent": "ml-assets"},
            )
        return self._session

    def version(self, name: str, *, version: str | None = None, alias: str | None = None) -> VersionRecord | None:
        if alias is not None:
            if alias.lower() == "latest":
                return None
            found = self._get("registered-models/alias", {"name": name, "alias": alias})
        else:
            found = self._get("model-versions/get", {"name": name, "version": str(version)})
        mv = (found or {}).get("model_version")
        if not mv:
            return None
        uri = self._get("model-versions/get-download-uri", {"name": mv["name"], "version": mv["version"]})
        if not uri or not uri.get("artifact_uri"):
            return None
        return VersionRecord(
            name=mv["name"],
            version=str(mv["version"]),
            artifact_uri=uri["artifact_uri"],
            run_id=mv.get("run_id") or None,
            creation_timestamp=int(mv["creation_timestamp"]) if mv.get("creation_timestamp") else None,
            current_stage=mv.get("current_stage"),
            tags={t["key"]: t.get("value", "") for t in mv.get("tags") or []},
            aliases=tuple(sorted(mv.get("aliases") or ())),
        )

    def _get(self, endpoint: str, params: dict[str, str]) -> dict[str, Any] | None:
        """The JSON answer; None for the registry's "no such model/version/alias" (MLflow words that error)."""
        import requests

        url = f"{self.base_url}/api/2.0/mlflow/{endpoint}"
        where = f"MLflow registry {redact(self.base_url)}"
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self.session.get(url, params=params, timeout=self.timeout_s)
            except requests.RequestException as exc:
                problem, wait = f"is unreachable: {type(exc).__name__}", self.policy.delay(attempt, started=started)
            else:
                if response.status_code in (400, 404):
                    return None
                if response.ok:
                    try:
                        return response.json()
                    except ValueError:
                        msg = f"{where} answered {endpoint} with a body that is not JSON"
                        raise RegistryUnavailableError(msg) from None
                problem = f"answered {endpoint} with HTTP {response.status_code}"
                wait = None
                if self.policy.retryable(response.status_code):
                    asked = retry_after(response.headers.get("Retry-After"))
                    wait = self.policy.delay(attempt, started=started, retry_after=asked)
            if wait is None:
                msg = f"{where} {problem} (after {attempt} attempt(s))"
                raise RegistryUnavailableError(msg)
            time.sleep(wait)


Columns = tuple[list[tuple[str, str, bool]], list[tuple[str, str]]]


def signature_columns(mlmodel: dict[str, Any], types: dict[str, str]) -> Columns | None:
    """``(inputs, outputs)`` of a column signature, read as MLflow reads it (``types``: MLflow type name
    -> ours); None for no signature, tensor specs, unnamed inputs or types without a column type."""
    signature = mlmodel.get("signature") or {}
    raw_inputs = signature.get("inputs")
    if not raw_inputs:
        return None
    inputs_spec = json.loads(raw_inputs)
    if not inputs_spec or any("name" not in s or s.get("type") not in types for s in inputs_spec):
        return None
    inputs = [(s["name"], types[s["type"]], bool(s.get("required", True))) for s in inputs_spec]
    raw_outputs = signature.get("outputs")
    outputs_spec = json.loads(raw_outputs) if raw_outputs else []
    outputs = []
    if outputs_spec and all("name" in s for s in outputs_spec):
        outputs = [(s["name"], types.get(s.get("type"), "double")) for s in outputs_spec]
    return inputs, outputs
