"""The full MLflow environment: ``mlflow server`` on a fresh PostgreSQL database with ``s3://``
artifacts on moto's S3 server; models logged, registered and promoted over HTTP, then resolved,
fetched from S3 and scored by a Dagster materialization reading and writing S3 partitions."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from ml_assets.cli import main as cli
from ml_assets.dagster.assets import build_scoring_asset
from ml_assets.dagster.resources import ModelRegistryResource, ModelRuntimeResource
from ml_assets.datasets import ParquetDataset, read_lineage
from ml_assets.dev.demo import FEATURES, register_onnx_model, to_onnx_classifier
from ml_assets.dev.services import Services, free_ports, running_services
from ml_assets.resources.core.errors import RegistryUnavailableError
from ml_assets.resources.registries.mlflow import MlflowRegistry
from tests.conftest import DATES, features_of, free_port

SECRET = "ml-assets-secret-never-logged"
MODEL = "fraud_pg"


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    saved = dict(os.environ)
    os.environ.update({"AWS_ACCESS_KEY_ID": "ml-assets-key", "AWS_SECRET_ACCESS_KEY": SECRET})
    try:
        with running_services(workdir=tmp_path_factory.mktemp("services")) as running:
            os.environ.update(running.client_env)  # what a deployment sets through its configuration
            yield running
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def s3_data(services: Services, transactions) -> str:
    import s3fs

    fs = s3fs.S3FileSystem(**_s3fs_options(services))
    fs.mkdir("data")
    for day in DATES[:2]:
        fs.put_file(
            str(transactions / f"date={day}" / "part-0.parquet"), f"data/transactions/date={day}/part-0.parquet"
        )
    return "s3://data/transactions"


def _s3fs_options(services: Services) -> dict:
    options = services.storage_options
    return {
        "key": options["key"],
        "secret": options["secret"],
        "client_kwargs": {"endpoint_url": options["endpoint_url"]},
    }


@pytest.mark.slow
def test_log_register_promote_over_http_then_score_s3_partitions(services, s3_data, models, transactions, tmp_path):
    uri = services.tracking_uri
    v1 = register_onnx_model(uri, MODEL, to_onnx_classifier(models.lr, len(FEATURES)), FEATURES)
    v2 = register_onnx_model(uri, MODEL, to_onnx_classifier(models.rf, len(FEATURES)), FEATURES)
    registry = MlflowRegistry(uri, cache_dir=tmp_path / "cache")
    promoted = registry.promote(MODEL, v1, alias="champion", stage="Production")
    assert (promoted.version, promoted.aliases, promoted.stage) == (v1, ("champion",), "Production")

    version = registry.resolve(f"models:/{MODEL}@champion")
    assert version.artifact_uri.startswith("s3://mlflow/artifacts/")
    path = registry.fetch(version)
    assert (path / "model.onnx").is_file()

    opts = services.storage_options
    asset = build_scoring_asset(
        name="fraud_scores",
        model=f"models:/{MODEL}@champion",
        input_dataset=ParquetDataset(s3_data, partition_column="date", storage_options=opts),
        output_dataset=ParquetDataset("s3://data/scores", partition_column="date", storage_options=opts),
        partitions_def=dg.DailyPartitionsDefinition(start_date=DATES[0], end_date="2026-11-03"),
    )
    resources = {
        "model_registry": ModelRegistryResource(kind="mlflow", uri=uri, cache_dir=str(tmp_path / "cache")),
        "model_runtime": ModelRuntimeResource(options={"onnx": {"threads": 1}}),
    }
    output = f"s3://data/scores/date={DATES[1]}/part-0.parquet"
    source = pq.read_table(transactions / f"date={DATES[1]}")
    with dg.instance_for_test() as instance:
        first = dg.materialize([asset], partition_key=DATES[1], resources=resources, instance=instance)
        assert read_lineage(output, opts)["model_version"] == v1
        # A promotion through the CLI, against the same server, moves the next run to v2.
        result = CliRunner().invoke(cli, ["models", "promote", MODEL, v2, "--alias", "champion", "--registry-uri", uri])
        assert result.exit_code == 0, result.output
        second = dg.materialize([asset], partition_key=DATES[1], resources=resources, instance=instance)
        logs = " ".join(str(record.user_message) for record in instance.all_logs(second.run_id))
    assert [
        r.asset_materializations_for_node("fraud_scores")[0].metadata["model_version"].value for r in (first, second)
    ] == [v1, v2]
    lineage = read_lineage(output, opts)
    assert lineage["model_version"] == v2
    assert lineage["registry"] == f"mlflow:{uri}"

    import s3fs

    with s3fs.S3FileSystem(**_s3fs_options(services)).open(output, "rb") as f:
        scored = pq.read_table(f)
    np.testing.assert_allclose(
        scored["probability_1"].to_numpy(), models.rf.predict_proba(features_of(source))[:, 1], atol=1e-5
    )
    metadata = second.asset_materializations_for_node("fraud_scores")[0].metadata
    assert SECRET not in json.dumps({k: str(v.value) for k, v in metadata.items()})
    assert SECRET not in logs
    assert SECRET not in json.dumps(lineage)


@pytest.mark.slow
def test_the_server_lists_versions_with_aliases_and_stages(services, models):
    uri = services.tracking_uri
    name = "fraud_pg_listing"
    register_onnx_model(uri, name, to_onnx_classifier(models.lr, len(FEATURES)), FEATURES, alias="a", stage="Staging")
    register_onnx_model(uri, name, to_onnx_classifier(models.lr, len(FEATURES)), FEATURES, alias="b")
    registry = MlflowRegistry(uri)
    assert name in registry.list_models()
    assert [(v.version, v.aliases, v.stage) for v in registry.list_versions(name)] == [
        ("1", ("a",), "Staging"),
        ("2", ("b",), None),
    ]


def test_a_down_tracking_server_fails_within_bounded_time(monkeypatch):
    for var in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"):
        monkeypatch.delenv(var, raising=False)
    registry = MlflowRegistry(f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(RegistryUnavailableError, match=r"MLflow registry http://127\.0\.0\.1:\d+"):
        registry.resolve("models:/fraud@champion")
    assert time.monotonic() - started < 20
    # The bounds applied only while our call ran: the process environment is as it was.
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ


def test_explicit_request_bounds_override_the_environment_only_during_calls(monkeypatch):
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    registry = MlflowRegistry(f"http://127.0.0.1:{free_port()}", max_retries=0, request_timeout_s=5)
    seen = []
    registry.client = type(
        "Client",
        (),
        {  # records what MLflow's REST client would read
            "search_registered_models": lambda self, **kw: (
                seen.append((MLFLOW_HTTP_REQUEST_MAX_RETRIES.get(), MLFLOW_HTTP_REQUEST_TIMEOUT.get())) or []
            ),
        },
    )()
    assert registry.list_models() == []
    assert seen == [(0, 5)]
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "7"
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ or os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] != "5"


@pytest.mark.slow
def test_resolving_over_rest_answers_what_mlflow_answers_and_imports_no_mlflow(services, models, tmp_path):
    import subprocess
    import sys

    from ml_assets.resources.registries.mlflow_lookup import RestLookup
    from tests.resources.test_mlflow_lookup import mlflow_record

    uri = services.tracking_uri
    name = "fraud_pg_rest"
    register_onnx_model(uri, name, to_onnx_classifier(models.lr, len(FEATURES)), FEATURES, alias="champion")
    register_onnx_model(uri, name, to_onnx_classifier(models.rf, len(FEATURES)), FEATURES, stage="Staging")
    import mlflow

    mlflow.MlflowClient(uri).set_model_version_tag(name, "2", "team", "risk")
    lookup = RestLookup(uri, timeout_s=10, max_retries=1)
    for selector in ({"alias": "champion"}, {"version": "1"}, {"version": "2"}):
        assert lookup.version(name, **selector) == mlflow_record(uri, name, **selector)
    assert lookup.version(name, alias="nope") is None
    assert lookup.version("no_such_model", version="1") is None

    cache = tmp_path / "cache"
    registry = MlflowRegistry(uri, cache_dir=cache)
    expected = registry.resolve(f"models:/{name}@champion")
    registry.fetch(expected)  # warm: S3 download through MLflow
    script = (
        "import json, sys\n"
        "from ml_assets.resources.registries.mlflow import MlflowRegistry\n"
        f"registry = MlflowRegistry({uri!r}, cache_dir={str(cache)!r})\n"
        f"version = registry.resolve('models:/{name}@champion')\n"
        "registry.fetch(version)\n"
        "print(json.dumps([version.version, version.artifact_uri, version.signature.input_names, "
        "'mlflow' in sys.modules]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    number, artifact_uri, inputs, imported = json.loads(done.stdout.strip().splitlines()[-1])
    assert (number, artifact_uri, inputs) == (expected.version, expected.artifact_uri, FEATURES)
    assert imported is False


def test_free_ports_are_distinct_and_bindable():
    # A server given the same port twice (HTTP and metrics, say) fails to start: each port must differ.
    ports = free_ports(64)
    assert len(set(ports)) == 64
    with contextlib.ExitStack() as stack:
        for port in ports:
            stack.enter_context(socket.create_server(("127.0.0.1", port)))
