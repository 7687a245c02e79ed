"""The HTTP registry against a real HTTP server on loopback serving the file-registry fixture."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest

from ml_assets.dagster.assets import build_scoring_asset
from ml_assets.dagster.resources import ModelRegistryResource, ModelRuntimeResource
from ml_assets.resources.core.cache import MANIFEST as CACHE_MANIFEST
from ml_assets.resources.core.errors import ArtifactError, ModelNotFoundError, RegistryUnavailableError
from ml_assets.resources.core.plugins import create_registry
from ml_assets.resources.registries.file import FileRegistry
from ml_assets.resources.registries.http import HttpRegistry
from ml_assets.resources.registries.server import RegistryServer
from tests.conftest import DATES, features_of, free_port, wait_for_port


@pytest.mark.parametrize(
    ("ref", "version"),
    [
        ("models:/fraud@champion", "1"),
        ("models:/fraud@challenger", "2"),
        ("models:/fraud/Production", "1"),
        ("models:/fraud/Staging", "2"),
        ("models:/fraud/2", "2"),
        ("models:/fraud/latest", "2"),
    ],
)
def test_resolves_like_the_file_registry_it_serves(registry_server, file_registry_root, ref, version):
    over_http = HttpRegistry(registry_server.url).resolve(ref)
    on_disk = FileRegistry(file_registry_root).resolve(ref)
    assert over_http.version == version
    for field in ("name", "version", "format", "signature", "aliases", "stage", "checksum", "tags", "extra"):
        assert getattr(over_http, field) == getattr(on_disk, field), field
    assert over_http.registry == f"http:{registry_server.url}index.json"


def test_found_through_entry_point_lists_and_names_what_exists(registry_server):
    registry = create_registry("http", registry_server.url)
    assert isinstance(registry, HttpRegistry)
    assert registry.list_models() == ["fraud"]
    assert [(v.version, v.aliases) for v in registry.list_versions("fraud")] == [
        ("1", ("champion",)),
        ("2", ("challenger",)),
    ]
    with pytest.raises(ModelNotFoundError, match=r"HTTP registry http://127\.0\.0\.1:\d+/index\.json has no alias"):
        registry.resolve("fraud@nope")
    with pytest.raises(ModelNotFoundError, match=r"has no alias 'nope'.*aliases: challenger, champion"):
        registry.resolve("fraud@nope")
    with pytest.raises(ModelNotFoundError, match=r"no model named 'frau' .*models: fraud"):
        registry.resolve("frau@champion")
    with pytest.raises(RegistryUnavailableError, match="read-only"):
        registry.promote("fraud", "2", alias="champion")


def test_polling_an_unchanged_index_costs_a_304(registry_server):
    registry = HttpRegistry(registry_server.url)
    before = len(registry_server.log)
    for _ in range(5):
        registry.resolve("models:/fraud@champion")
    statuses = [status for path, status in registry_server.log[before:] if path == "/index.json"]
    assert statuses == [200, 304, 304, 304, 304]
    assert registry.not_modified == 4


def test_a_promotion_is_seen_at_the_next_resolve(writable_registry):
    with RegistryServer(writable_registry) as server:
        registry = HttpRegistry(server.url)
        assert registry.resolve("fraud@champion").version == "1"
        writable_registry.promote("fraud", "2", alias="champion")
        assert registry.resolve("fraud@champion").version == "2"
        assert [s for p, s in server.log if p == "/index.json"] == [200, 200]


def test_fetch_downloads_once_verifies_and_refetches_a_corrupt_copy(registry_server, tmp_path):
    registry = HttpRegistry(registry_server.url, cache_dir=tmp_path)
    version = registry.resolve("models:/fraud@challenger")
    path = registry.fetch(version)
    assert sorted(p.name for p in path.iterdir()) == [CACHE_MANIFEST, "rf.onnx"]
    downloads = [p for p, _ in registry_server.log if p == "/fraud/2/rf.onnx"]
    assert registry.fetch(version) == path
    assert [p for p, _ in registry_server.log if p == "/fraud/2/rf.onnx"] == downloads  # cached
    original = (path / "rf.onnx").read_bytes()
    (path / "rf.onnx").write_bytes(original[:10])
    assert (registry.fetch(version) / "rf.onnx").read_bytes() == original


def test_a_corrupt_served_file_is_fetched_again_then_refused(writable_registry, tmp_path, caplog):
    model_file = Path(writable_registry.root) / "fraud" / "1" / "lr.onnx"
    data = bytearray(model_file.read_bytes())
    data[-1] ^= 0xFF
    model_file.write_bytes(bytes(data))
    with RegistryServer(writable_registry) as server:
        registry = HttpRegistry(server.url, cache_dir=tmp_path, retries=2, backoff_s=0.01)
        version = registry.resolve("models:/fraud/1")
        with caplog.at_level(logging.WARNING), pytest.raises(ArtifactError) as caught:
            registry.fetch(version)
        assert [s for p, s in server.log if p == "/fraud/1/lr.onnx"] == [200, 200, 200]
    assert "file 'lr.onnx'" in str(caught.value)
    assert "SHA-256 does not match the index (3 attempts)" in str(caught.value)
    assert "fetching it again (1 of 2)" in caplog.text
    assert not registry.cache.path_for(version).exists()


def test_transient_server_errors_are_retried_and_logged(registry_server, writable_registry, caplog):
    failures = {"left": 2}

    def flaky(path: str) -> int | None:
        if path == "/index.json" and failures["left"] > 0:
            failures["left"] -= 1
            return 503
        return None

    with RegistryServer(writable_registry, fault=flaky) as server:
        registry = HttpRegistry(server.url, retries=3, backoff_s=0.01)
        with caplog.at_level(logging.WARNING):
            assert registry.resolve("fraud@champion").version == "1"
    assert caplog.text.count("retry") == 2
    assert "failed (HTTP 503); retry 1 of 3" in caplog.text


def test_a_failing_server_fails_within_bounded_time(writable_registry):
    with RegistryServer(writable_registry, fault=lambda path: 502) as server:
        registry = HttpRegistry(server.url, retries=2, backoff_s=0.05)
        started = time.monotonic()
        with pytest.raises(RegistryUnavailableError, match=r"failed 3 times; last: HTTP 502"):
            registry.resolve("fraud@champion")
        assert time.monotonic() - started < 5


def test_an_unreachable_server_is_a_clear_error_without_credentials():
    url = f"http://user:hunter2@127.0.0.1:{free_port()}/models/"
    registry = HttpRegistry(url, retries=1, backoff_s=0.01, connect_timeout_s=1)
    with pytest.raises(RegistryUnavailableError, match=r"127\.0\.0\.1.*ConnectionError") as caught:
        registry.list_models()
    assert "hunter2" not in str(caught.value)


def test_bearer_and_basic_auth(writable_registry, monkeypatch):
    monkeypatch.setenv("ML_ASSETS_TEST_TOKEN", "t0ken-value")
    with RegistryServer(writable_registry, token="t0ken-value") as server:
        assert HttpRegistry(server.url, token_env="ML_ASSETS_TEST_TOKEN").resolve("fraud@champion").version == "1"
        with pytest.raises(RegistryUnavailableError, match="refused with HTTP 401; check the credentials") as caught:
            HttpRegistry(server.url, token="wrong").resolve("fraud@champion")
        assert "wrong" not in str(caught.value)
    with RegistryServer(writable_registry, username="ml", password="pw") as server:
        registry = HttpRegistry(server.url, username="ml", password="pw")
        assert registry.fetch(registry.resolve("fraud@challenger")).is_dir()
    with pytest.raises(RegistryUnavailableError, match="'NOT_SET_ANYWHERE', which is not set"):
        HttpRegistry("http://127.0.0.1:1/", token_env="NOT_SET_ANYWHERE")


def test_credentials_go_only_to_the_index_origin(registry_server):
    registry = HttpRegistry(registry_server.url, token="secret")
    assert registry._auth_headers(registry_server.url + "fraud/1/lr.onnx") == {"Authorization": "Bearer secret"}
    assert registry._auth_headers("https://cdn.example.com/fraud/1/lr.onnx") == {}


def test_served_by_the_cli_command(file_registry_root, tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "ml_assets.cli", "registry", "serve", str(file_registry_root), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, server, what="registry server")
        from click.testing import CliRunner

        from ml_assets.cli import main as cli

        result = CliRunner().invoke(
            cli, ["models", "versions", "fraud", "--registry", "http", "--registry-uri", f"http://127.0.0.1:{port}/"]
        )
        assert result.exit_code == 0, result.output
        assert [line.split("\t")[:4] for line in result.output.splitlines()[1:]] == [
            ["1", "onnx", "champion", "Production"],
            ["2", "onnx", "challenger", "Staging"],
        ]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_materializes_a_partition_with_a_model_from_the_http_registry(models, transactions, registry_server, tmp_path):
    asset = build_scoring_asset(
        name="fraud_scores",
        model="models:/fraud/Production",
        input_dataset=str(transactions),
        output_dataset=str(tmp_path / "scores"),
        partitions_def=dg.DailyPartitionsDefinition(start_date=DATES[0], end_date="2026-11-04"),
    )
    resources = {
        "model_registry": ModelRegistryResource(
            kind="http", uri=registry_server.url, cache_dir=str(tmp_path / "cache"), options={"timeout_s": 10}
        ),
        "model_runtime": ModelRuntimeResource(options={"onnx": {"threads": 1}}),
    }
    with dg.instance_for_test() as instance:
        result = dg.materialize([asset], partition_key=DATES[2], resources=resources, instance=instance)
    (event,) = result.asset_materializations_for_node("fraud_scores")
    assert event.metadata["model_version"].value == "1"
    assert event.metadata["model_stage"].value == "Production"
    assert event.metadata["registry"].value == f"http:{registry_server.url}index.json"
    output = tmp_path / "scores" / f"date={DATES[2]}" / "part-0.parquet"
    expected = models.lr.predict_proba(features_of(pq.read_table(transactions / f"date={DATES[2]}")))[:, 1]
    np.testing.assert_allclose(pq.read_table(output)["probability_1"].to_numpy(), expected, atol=1e-5)
