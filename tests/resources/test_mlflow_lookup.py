"""Resolving without MLflow answers exactly what MLflow answers, and imports no MLflow with a warm cache.

The same checks over HTTP run against ``mlflow server`` in test_mlflow_services.py."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from ml_assets.resources.core.errors import ModelNotFoundError
from ml_assets.resources.registries import mlflow_lookup
from ml_assets.resources.registries.mlflow import MlflowRegistry
from ml_assets.resources.registries.mlflow_lookup import KNOWN_SCHEMAS, SqliteLookup, VersionRecord


def mlflow_record(uri: str, name: str, *, version: str | None = None, alias: str | None = None) -> VersionRecord:
    """What MLflow's own client answers, in the lookup's terms."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    return VersionRecord(
        name=mv.name,
        version=str(mv.version),
        artifact_uri=client.get_model_version_download_uri(mv.name, mv.version),
        run_id=mv.run_id,
        creation_timestamp=mv.creation_timestamp,
        current_stage=mv.current_stage,
        tags=dict(mv.tags),
        aliases=tuple(sorted(mv.aliases)),
    )


def sqlite_path(uri: str) -> str:
    return uri.removeprefix("sqlite:///")


def test_the_sqlite_lookup_answers_what_mlflow_answers(models):
    import mlflow

    mlflow.MlflowClient(models.tracking_uri).set_model_version_tag("fraud", "2", "team", "risk")
    lookup = SqliteLookup(sqlite_path(models.tracking_uri))
    for selector in ({"alias": "champion"}, {"alias": "challenger"}, {"version": "1"}, {"version": "2"}):
        assert lookup.version("fraud", **selector) == mlflow_record(models.tracking_uri, "fraud", **selector)
    assert lookup.version("fraud", version="2").tags["team"] == "risk"
    # What it cannot answer as MLflow would, it leaves to MLflow (which words the error).
    assert lookup.version("fraud", alias="nope") is None
    assert lookup.version("fraud", version="99") is None
    assert lookup.version("nope", alias="champion") is None
    assert lookup.version("fraud", alias="latest") is None


def test_the_installed_mlflow_schema_is_one_the_lookup_knows():
    """Fails first when MLflow's schema moves: check the registry tables, then add the new revision."""
    import mlflow
    from alembic.script import ScriptDirectory

    migrations = Path(mlflow.__file__).parent / "store" / "db_migrations"
    heads = ScriptDirectory(str(migrations)).get_heads()
    assert set(heads) <= KNOWN_SCHEMAS, f"MLflow {mlflow.__version__} records schema {heads}; known: {KNOWN_SCHEMAS}"


def test_an_unknown_schema_revision_is_left_to_mlflow(models, tmp_path):
    copy = tmp_path / "mlflow.db"
    shutil.copy(sqlite_path(models.tracking_uri), copy)
    with sqlite3.connect(copy) as db:
        db.execute("UPDATE alembic_version SET version_num = 'f00dfeedbeef'")
    assert SqliteLookup(str(copy)).version("fraud", alias="champion") is None


def test_fast_and_mlflow_resolution_describe_the_same_version(models, monkeypatch):
    registry = MlflowRegistry(models.tracking_uri)
    registry.fetch(registry.resolve("models:/fraud/1"))  # warm cache: the MLmodel is read from it
    fast = [MlflowRegistry(models.tracking_uri).resolve(ref) for ref in ("models:/fraud@champion", "models:/fraud/2")]
    monkeypatch.setattr("ml_assets.resources.registries.mlflow.lookup_for", lambda *a, **kw: None)
    slow = [MlflowRegistry(models.tracking_uri).resolve(ref) for ref in ("models:/fraud@champion", "models:/fraud/2")]
    assert fast == slow
    assert fast[0].signature is not None
    assert fast[0].signature.input_names[:2] == ["amount", "hour_of_day"]
    with pytest.raises(ModelNotFoundError, match=r"no alias 'nope'.*aliases: .*champion"):
        MlflowRegistry(models.tracking_uri).resolve("models:/fraud@nope")


def test_resolving_an_alias_with_a_warm_cache_imports_no_mlflow(models):
    registry = MlflowRegistry(models.tracking_uri)
    expected = registry.resolve("models:/fraud@champion")
    registry.fetch(expected)
    script = (
        "import json, sys\n"
        "from ml_assets.resources.registries.mlflow import MlflowRegistry\n"
        f"registry = MlflowRegistry({models.tracking_uri!r})\n"
        "version = registry.resolve('models:/fraud@champion')\n"
        "path = registry.fetch(version)\n"
        "print(json.dumps([version.version, version.artifact_uri, str(path), 'mlflow' in sys.modules]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=dict(os.environ), check=True
    )
    number, artifact_uri, path, imported = json.loads(done.stdout.strip().splitlines()[-1])
    assert (number, artifact_uri, path) == (expected.version, expected.artifact_uri, str(registry.fetch(expected)))
    assert imported is False


def test_a_cache_miss_downloads_through_mlflow(models, tmp_path):
    registry = MlflowRegistry(models.tracking_uri, cache_dir=tmp_path / "cold")
    version = registry.resolve("models:/fraud@challenger")
    assert replace(version, ref="x") == replace(MlflowRegistry(models.tracking_uri).resolve("models:/fraud/2"), ref="x")
    assert (registry.fetch(version) / "MLmodel").is_file()


def test_mlflow_only_settings_send_the_lookup_to_mlflow(monkeypatch, models):
    assert mlflow_lookup.lookup_for(models.tracking_uri, timeout_s=5, max_retries=0) is not None
    monkeypatch.setenv("MLFLOW_TRACKING_AUTH", "my_plugin")
    assert mlflow_lookup.lookup_for("http://127.0.0.1:5000", timeout_s=5, max_retries=0) is None
    monkeypatch.delenv("MLFLOW_TRACKING_AUTH")
    assert mlflow_lookup.lookup_for("postgresql://db/mlflow", timeout_s=5, max_retries=0) is None
    assert mlflow_lookup.lookup_for("sqlite:///x.db?mode=ro", timeout_s=5, max_retries=0) is None
