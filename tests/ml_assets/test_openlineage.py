"""OpenLineage events of real scoring runs, received by a loopback HTTP server (openlineage-python's
HTTP transport, configured by OPENLINEAGE_URL) and validated against the OpenLineage JSON schema and
the mlModel facet's own schema: the Dagster asset and `ml-assets score`."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from ml_assets.dagster.assets import build_scoring_asset
from ml_assets.dagster.resources import ModelRegistryResource, ModelRuntimeResource
from ml_assets.dev.demo import FEATURES
from ml_assets.openlineage import MODEL_FACET, transport_configured
from tests.conftest import DATES, ROWS_PER_DAY, VENV_BIN
from tests.openlineage_receiver import Receiver, validate

DAILY = dg.DailyPartitionsDefinition(start_date=DATES[0], end_date="2026-11-04")


@pytest.fixture
def receiver(monkeypatch) -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    monkeypatch.setenv("OPENLINEAGE_URL", r.url)
    monkeypatch.setenv("OPENLINEAGE_NAMESPACE", "tests")
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()


def registry_name(models) -> str:
    """The namespace of the model dataset: the registry as the version names it."""
    return ModelRegistryResource(kind="mlflow", uri=models.tracking_uri).resolve("models:/fraud/1").registry


def names(datasets: list[dict]) -> list[tuple[str, str]]:
    return [(d["namespace"], d["name"]) for d in datasets]


def test_no_transport_no_events(monkeypatch, tmp_path):
    for key in [k for k in os.environ if k.startswith("OPENLINEAGE")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert not transport_configured()
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__TYPE", "console")
    assert transport_configured()
    monkeypatch.setenv("OPENLINEAGE_DISABLED", "true")
    assert not transport_configured()


def test_the_dagster_asset_emits_start_and_complete_with_the_model_version(receiver, models, transactions, tmp_path):
    asset = build_scoring_asset(
        name="fraud_scores",
        model="models:/fraud@champion",
        input_dataset=str(transactions),
        output_dataset=str(tmp_path / "scores"),
        partitions_def=DAILY,
        backfill_policy=dg.BackfillPolicy.single_run(),
    )
    job = dg.define_asset_job("score", selection=[asset], partitions_def=DAILY)
    defs = dg.Definitions(
        assets=[asset],
        jobs=[job],
        resources={
            "model_registry": ModelRegistryResource(kind="mlflow", uri=models.tracking_uri),
            "model_runtime": ModelRuntimeResource(options={"onnx": {"threads": 1}}),
        },
    )
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("score").execute_in_process(
            instance=instance,
            tags={"dagster/asset_partition_range_start": DATES[0], "dagster/asset_partition_range_end": DATES[1]},
        )
    assert result.success
    start, complete = receiver.wait_for(2)
    for event in (start, complete):
        validate(event)
        assert event["path"] == "/api/v1/lineage"
        assert event["job"] == {**event["job"], "namespace": "tests", "name": "fraud_scores"}
        assert event["run"]["runId"] == start["run"]["runId"]
        assert names(event["inputs"]) == [("file", str(transactions)), (registry_name(models), "models/fraud/1")]
        assert names(event["outputs"]) == [("file", str(tmp_path / "scores"))]
        model = event["run"]["facets"][MODEL_FACET]
        assert (model["name"], model["version"], model["uri"], model["format"]) == (
            "fraud",
            "1",
            "models:/fraud/1",
            "onnx",
        )
        assert model["ref"] == "models:/fraud@champion"
        fields = [f["name"] for f in event["inputs"][0]["facets"]["schema"]["fields"]]
        assert fields == list(FEATURES)
    assert (start["eventType"], complete["eventType"]) == ("START", "COMPLETE")
    assert complete["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"] == 2 * ROWS_PER_DAY


def test_a_failed_dagster_run_emits_fail_with_the_error(receiver, models, transactions, tmp_path):
    asset = build_scoring_asset(
        name="fraud_scores",
        model="models:/fraud@champion",
        input_dataset=str(transactions),
        output_dataset=str(tmp_path / "scores"),
        partitions_def=dg.StaticPartitionsDefinition(["2026-12-25"]),
        checks=None,
    )
    resources = {
        "model_registry": ModelRegistryResource(kind="mlflow", uri=models.tracking_uri),
        "model_runtime": ModelRuntimeResource(options={"onnx": {"threads": 1}}),
    }
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [asset], partition_key="2026-12-25", resources=resources, instance=instance, raise_on_error=False
        )
    assert not result.success
    start, fail = receiver.wait_for(2)
    validate(start)
    validate(fail)
    assert (start["eventType"], fail["eventType"]) == ("START", "FAIL")
    assert "2026-12-25" in fail["run"]["facets"]["errorMessage"]["message"]
    assert fail["run"]["facets"][MODEL_FACET]["version"] == "1"


def test_ml_assets_score_emits_the_same_events(receiver, models, transactions, tmp_path):
    env = {**os.environ, "OPENLINEAGE_URL": receiver.url, "OPENLINEAGE_NAMESPACE": "tests"}
    done = subprocess.run(
        [
            str(Path(VENV_BIN) / "ml-assets"),
            "score",
            "models:/fraud@champion",
            str(transactions),
            str(tmp_path / "scores"),
            "--partition",
            f"date={DATES[0]}",
            "--registry-uri",
            models.tracking_uri,
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    start, complete = receiver.wait_for(2)
    for event in (start, complete):
        validate(event)
        assert event["job"]["name"] == "ml-assets.score.fraud"
        assert names(event["inputs"])[1] == (registry_name(models), "models/fraud/1")
    assert (start["eventType"], complete["eventType"]) == ("START", "COMPLETE")
    assert complete["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"] == ROWS_PER_DAY
