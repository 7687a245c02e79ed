"""The MLflow registry against a real SQLite-backed MLflow registry."""

from __future__ import annotations

import multiprocessing
import warnings
from pathlib import Path

import mlflow
import pytest

from ml_assets.resources.core.cache import MANIFEST
from ml_assets.resources.core.errors import ModelNotFoundError, ModelRefError, RegistryUnavailableError
from ml_assets.resources.core.models import ModelRef
from ml_assets.resources.core.plugins import create_registry
from ml_assets.resources.registries.mlflow import MlflowRegistry


@pytest.mark.parametrize(
    ("ref", "version", "fmt"),
    [
        ("models:/fraud@champion", "1", "onnx"),
        ("models:/fraud@challenger", "2", "onnx"),
        ("models:/fraud/Production", "1", "onnx"),
        ("models:/fraud/Staging", "2", "onnx"),
        ("models:/fraud/1", "1", "onnx"),
        ("models:/fraud/latest", "2", "onnx"),
        ("fraud@champion", "1", "onnx"),
    ],
)
def test_resolves_every_ref_form(models, ref, version, fmt):
    resolved = MlflowRegistry(models.tracking_uri).resolve(ref)
    assert (resolved.name, resolved.version, resolved.format) == ("fraud", version, fmt)
    assert resolved.ref == ref
    assert resolved.uri == f"models:/fraud/{version}"
    assert resolved.signature is not None
    assert resolved.signature.input_names[:2] == ["amount", "hour_of_day"]
    assert resolved.run_id


def test_resolution_reports_aliases_and_stage(models):
    v1 = MlflowRegistry(models.tracking_uri).resolve("models:/fraud/1")
    assert v1.aliases == ("champion",)
    assert v1.stage == "Production"
    assert v1.lineage()["model_aliases"] == "champion"


def test_found_through_entry_point(models):
    registry = create_registry("mlflow", models.tracking_uri)
    assert isinstance(registry, MlflowRegistry)
    assert "fraud" in registry.list_models()
    assert [v.version for v in registry.list_versions("fraud")] == ["1", "2"]


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("models:/fraud@nope", r"no alias 'nope'.*aliases: challenger, champion"),
        ("models:/fraud/Archived", r"no a version in stage 'Archived'.*stages: Production, Staging"),
        ("models:/fraud/42", r"no version 42.*versions: 1, 2"),
        ("models:/frau@champion", r"no model named 'frau'.*models: fraud"),
    ],
)
def test_unknown_things_name_what_exists(models, ref, expected):
    with pytest.raises(ModelNotFoundError, match=expected):
        MlflowRegistry(models.tracking_uri).resolve(ref)


def test_malformed_ref():
    with pytest.raises(ModelRefError, match="cannot parse model reference"):
        ModelRef.parse("models:/fraud@@x")


def test_unreachable_tracking_server_is_a_clear_error(monkeypatch):
    from tests.conftest import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    uri = f"http://user:secret@127.0.0.1:{free_port()}"
    with pytest.raises(RegistryUnavailableError, match=r"127\.0\.0\.1") as caught:
        MlflowRegistry(uri).resolve("models:/fraud@champion")
    assert "secret" not in str(caught.value)


def test_fetch_downloads_once_and_caches(models, tmp_path):
    registry = MlflowRegistry(models.tracking_uri, cache_dir=tmp_path)
    version = registry.resolve("models:/fraud@champion")
    path = registry.fetch(version)
    assert (path / "MLmodel").is_file()
    assert (path / "model.onnx").is_file()
    assert (path / MANIFEST).is_file()
    mtime = (path / "model.onnx").stat().st_mtime_ns
    assert registry.fetch(version) == path
    assert (path / "model.onnx").stat().st_mtime_ns == mtime  # not downloaded again


def test_corrupt_cached_copy_is_fetched_again(models, tmp_path):
    registry = MlflowRegistry(models.tracking_uri, cache_dir=tmp_path)
    version = registry.resolve("models:/fraud/1")
    path = registry.fetch(version)
    original = (path / "model.onnx").read_bytes()
    (path / "model.onnx").write_bytes(original[: len(original) // 2])  # a truncated file
    again = registry.fetch(version)
    assert (again / "model.onnx").read_bytes() == original


def _fetch_in_process(tracking_uri: str, cache_dir: str, queue: multiprocessing.Queue) -> None:
    registry = MlflowRegistry(tracking_uri, cache_dir=cache_dir)
    path = registry.fetch(registry.resolve("models:/fraud/2"))
    queue.put(str(path))


def test_concurrent_fetches_from_several_processes_agree(models, tmp_path):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    workers = [
        ctx.Process(target=_fetch_in_process, args=(models.tracking_uri, str(tmp_path), queue)) for _ in range(3)
    ]
    for w in workers:
        w.start()
    paths = {queue.get(timeout=120) for _ in workers}
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    assert len(paths) == 1
    folder = Path(paths.pop())
    assert (folder / "model.onnx").is_file()
    leftovers = [p.name for p in folder.parent.iterdir() if p.name.startswith(".tmp-")]
    assert leftovers == []


def test_alias_moves_are_seen_by_the_next_resolve(models):
    registry = MlflowRegistry(models.tracking_uri)
    client = mlflow.MlflowClient(tracking_uri=models.tracking_uri)
    client.set_registered_model_alias("fraud", "canary", "1")
    assert registry.resolve("models:/fraud@canary").version == "1"
    client.set_registered_model_alias("fraud", "canary", "2")
    try:
        assert registry.resolve("models:/fraud@canary").version == "2"
    finally:
        client.delete_registered_model_alias("fraud", "canary")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert registry.resolve("models:/fraud/Staging").version == "2"
