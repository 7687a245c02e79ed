"""Promotion sensor and partition schedule against a real Dagster instance and a real MLflow registry."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import dagster as dg
import mlflow
import pytest

from ml_assets.dagster.assets import build_scoring_asset
from ml_assets.dagster.resources import ModelRegistryResource, ModelRuntimeResource
from ml_assets.datasets import ParquetDataset, read_lineage
from ml_assets.dev.demo import FEATURES, register_onnx_model
from ml_assets.resources.core.errors import ModelRefError
from ml_assets.sensors.promotion import MODEL_VERSION_TAG, REASON_TAG, PromotionCursor, build_model_promotion_sensor
from ml_assets.sensors.schedules import build_partition_schedule
from tests.conftest import DATES, free_port

DAILY = dg.DailyPartitionsDefinition(start_date=DATES[0], end_date="2026-11-04")


@pytest.fixture(scope="module")
def registry_uri(models, tmp_path_factory) -> str:
    """Its own registry ('promo' v1 = lr, v2 = rf; @champion on v1), so moving aliases disturbs no other test."""
    import onnx

    root = tmp_path_factory.mktemp("promo")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    for path in (models.lr_onnx, models.rf_onnx):
        register_onnx_model(uri, "promo", onnx.load(str(path)), FEATURES, artifact_location=(root / "a").as_uri())
    client = mlflow.MlflowClient(uri)
    client.set_registered_model_alias("promo", "champion", "1")
    client.transition_model_version_stage("promo", "1", "Production")
    return uri


@pytest.fixture
def setup(registry_uri, transactions, tmp_path):
    client = mlflow.MlflowClient(registry_uri)
    client.set_registered_model_alias("promo", "champion", "1")
    asset = build_scoring_asset(
        name="promo_scores",
        model="models:/promo@champion",
        input_dataset=str(transactions),
        output_dataset=str(tmp_path / "scores"),
        partitions_def=DAILY,
        backfill_policy=dg.BackfillPolicy.single_run(),
    )
    sensor = build_model_promotion_sensor(name="promo_sensor", watch=["models:/promo@champion"], target=[asset])
    resources = {
        "model_registry": ModelRegistryResource(kind="mlflow", uri=registry_uri),
        "model_runtime": ModelRuntimeResource(options={"onnx": {"threads": 1}}),
    }
    defs = dg.Definitions(assets=[asset], sensors=[sensor], resources=resources)
    with dg.instance_for_test() as instance:
        yield {
            "defs": defs,
            "asset": asset,
            "sensor": sensor,
            "instance": instance,
            "client": client,
            "out": tmp_path / "scores",
        }


def tick(s, cursor: str | None, *, resources=None) -> dg.SensorResult:
    return evaluate(s["sensor"], s, cursor, resources=resources)


def evaluate(sensor, s, cursor: str | None, *, resources=None) -> dg.SensorResult:
    with dg.build_sensor_context(
        instance=s["instance"], cursor=cursor, definitions=s["defs"], resources=resources or s["defs"].resources
    ) as context:
        return sensor(context)


def execute(s, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
    """Runs a request the way the daemon would: a single partition, or a partition range in one run."""
    tags = dict(request.tags)
    if request.partition_key:
        return dg.materialize(
            [s["asset"]],
            partition_key=request.partition_key,
            resources=s["defs"].resources,
            instance=s["instance"],
            tags=tags,
        )
    job = dg.define_asset_job("rescore", selection=[s["asset"]])
    defs = dg.Definitions(assets=[s["asset"]], jobs=[job], resources=s["defs"].resources)
    return defs.resolve_job_def("rescore").execute_in_process(instance=s["instance"], tags=tags)


def versions_on_disk(out: Path) -> list[str]:
    return [read_lineage(str(out / f"date={d}" / "part-0.parquet"))["model_version"] for d in DATES]


def test_promotion_rescores_stale_partitions_once(setup):
    s = setup
    first = execute(
        s,
        dg.RunRequest(
            tags={"dagster/asset_partition_range_start": DATES[0], "dagster/asset_partition_range_end": DATES[-1]}
        ),
    )
    assert first.success
    assert versions_on_disk(s["out"]) == ["1", "1", "1"]

    baseline = tick(s, None)
    assert baseline.run_requests == []
    assert "baseline recorded at version 1" in baseline.skip_reason.skip_message
    cursor = baseline.cursor

    s["client"].set_registered_model_alias("promo", "champion", "2")
    promoted = tick(s, cursor)
    (request,) = promoted.run_requests  # the three stale days are contiguous: one ranged run
    assert request.partition_key_range == dg.PartitionKeyRange(DATES[0], DATES[-1])
    assert request.tags[MODEL_VERSION_TAG] == "2"
    assert request.tags[REASON_TAG] == "promotion: models:/promo@champion moved from version 1 to 2"
    assert "promo_sensor:models:/promo@champion:1:2:promo_scores" in request.run_key
    assert execute(s, request).success
    assert versions_on_disk(s["out"]) == ["2", "2", "2"]
    records = s["instance"].fetch_materializations(dg.AssetKey("promo_scores"), limit=3).records
    assert {r.asset_materialization.partition for r in records} == set(DATES)
    assert {r.asset_materialization.tags[MODEL_VERSION_TAG] for r in records} == {"2"}

    again = tick(s, promoted.cursor)
    assert again.run_requests == []
    assert PromotionCursor.decode(again.cursor).versions == {"models:/promo@champion": "2"}


def test_the_daemons_path_evaluate_tick(setup):
    """The daemon calls evaluate_tick, which hands resources over on the context only."""
    s = setup
    assert execute(s, dg.RunRequest(partition_key=DATES[0])).success
    with dg.build_sensor_context(
        instance=s["instance"], definitions=s["defs"], resources=s["defs"].resources
    ) as context:
        baseline = s["sensor"].evaluate_tick(context)
    s["client"].set_registered_model_alias("promo", "champion", "2")
    with dg.build_sensor_context(
        instance=s["instance"], cursor=baseline.cursor, definitions=s["defs"], resources=s["defs"].resources
    ) as context:
        data = s["sensor"].evaluate_tick(context)
    (request,) = data.run_requests
    assert request.partition_key_range == dg.PartitionKeyRange(DATES[0], DATES[0])
    assert request.tags[MODEL_VERSION_TAG] == "2"


def test_rollback_is_a_promotion_with_new_run_keys(setup):
    s = setup
    for day in DATES[:2]:
        assert execute(s, dg.RunRequest(partition_key=day)).success
    cursor = tick(s, None).cursor
    s["client"].set_registered_model_alias("promo", "champion", "2")
    forward = tick(s, cursor)
    assert [r.partition_key_range for r in forward.run_requests] == [dg.PartitionKeyRange(DATES[0], DATES[1])]
    for request in forward.run_requests:
        assert execute(s, request).success
    s["client"].set_registered_model_alias("promo", "champion", "1")
    back = tick(s, forward.cursor)
    (request,) = back.run_requests
    assert request.tags[REASON_TAG].endswith("moved from version 2 to 1")
    assert request.run_key != forward.run_requests[0].run_key
    assert execute(s, request).success
    assert [read_lineage(str(s["out"] / f"date={d}" / "part-0.parquet"))["model_version"] for d in DATES[:2]] == [
        "1",
        "1",
    ]


def test_only_partitions_on_another_version_are_stale(setup):
    s = setup
    assert execute(s, dg.RunRequest(partition_key=DATES[0])).success
    cursor = tick(s, None).cursor
    s["client"].set_registered_model_alias("promo", "champion", "2")
    assert execute(s, dg.RunRequest(partition_key=DATES[2])).success  # scored with v2 already
    result = tick(s, cursor)
    assert [(r.partition_key_range.start, r.partition_key_range.end) for r in result.run_requests] == [
        (DATES[0], DATES[0])
    ]


def test_registry_down_skips_and_keeps_the_cursor(setup, monkeypatch):
    s = setup
    cursor = tick(s, None).cursor
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    down = {"model_registry": ModelRegistryResource(kind="mlflow", uri=f"http://127.0.0.1:{free_port()}")}
    result = tick(s, cursor, resources={**s["defs"].resources, **down})
    assert result.run_requests == []
    assert "registry unavailable, nothing requested" in result.skip_reason.skip_message
    assert result.cursor is None  # Dagster keeps the previous cursor


def test_slow_registry_ends_the_tick_within_its_budget(setup, monkeypatch):
    """A server that accepts connections but never answers: the tick gives up at its budget, cursor kept."""
    import socket
    import time

    s = setup
    cursor = tick(s, None).cursor
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        port = silent.getsockname()[1]
        sensor = build_model_promotion_sensor(
            name="impatient", watch=["models:/promo@champion"], target=[s["asset"]], tick_budget_s=2.0
        )
        slow = {
            **s["defs"].resources,
            "model_registry": ModelRegistryResource(kind="mlflow", uri=f"http://127.0.0.1:{port}"),
        }
        started = time.monotonic()
        result = evaluate(sensor, s, cursor, resources=slow)
        elapsed = time.monotonic() - started
    finally:
        silent.close()
    assert elapsed < 10
    assert result.run_requests == []
    assert (
        "registry unavailable, nothing requested (models:/promo@champion: timed out)" in result.skip_reason.skip_message
    )
    assert result.cursor is None


def test_undecodable_cursor_starts_fresh_without_runs(setup):
    s = setup
    assert execute(s, dg.RunRequest(partition_key=DATES[0])).success
    s["client"].set_registered_model_alias("promo", "champion", "2")
    result = tick(s, "{not json")
    assert result.run_requests == []
    assert PromotionCursor.decode(result.cursor).versions == {"models:/promo@champion": "2"}


def test_latest_and_window_scopes_and_stage_watch(setup, registry_uri):
    s = setup
    for scope, extra, expected in (
        ("latest", {"latest_n": 2}, [(DATES[1], DATES[2])]),
        ("window", {"window": (DATES[0], DATES[1])}, [(DATES[0], DATES[1])]),
    ):
        sensor = build_model_promotion_sensor(
            name=f"by_{scope}", watch=["models:/promo/Production"], target=[s["asset"]], rescore=scope, **extra
        )
        cursor = evaluate(sensor, s, None).cursor
        s["client"].transition_model_version_stage("promo", "2", "Production", archive_existing_versions=True)
        try:
            result = evaluate(sensor, s, cursor)
        finally:
            s["client"].transition_model_version_stage("promo", "1", "Production", archive_existing_versions=True)
        assert [(r.partition_key_range.start, r.partition_key_range.end) for r in result.run_requests] == expected


def test_a_watch_without_alias_or_stage_is_refused():
    with pytest.raises(ModelRefError, match="names no alias or stage"):
        build_model_promotion_sensor(name="bad", watch=["models:/promo/3"], target=["x"])


def test_schedule_scores_the_new_partition_or_says_why_not(transactions, tmp_path):
    data = tmp_path / "landing"
    shutil.copytree(transactions / f"date={DATES[0]}", data / f"date={DATES[0]}")
    dataset = ParquetDataset(str(data), partition_column="date")
    schedule = build_partition_schedule(
        name="daily_scores", target="promo_scores", partitions_def=DAILY, input_partition_uri=dataset.partition_uri
    )
    assert schedule.cron_schedule == "0 0 * * *"
    with dg.instance_for_test() as instance:
        landed = schedule(
            dg.build_schedule_context(
                instance=instance, scheduled_execution_time=dt.datetime(2026, 11, 2, tzinfo=dt.timezone.utc)
            )
        )
        missing = schedule(
            dg.build_schedule_context(
                instance=instance, scheduled_execution_time=dt.datetime(2026, 11, 3, tzinfo=dt.timezone.utc)
            )
        )
    assert landed.partition_key == DATES[0]
    assert landed.run_key == f"daily_scores:{DATES[0]}"
    assert isinstance(missing, dg.SkipReason)
    assert f"input partition {DATES[1]} is not there yet" in missing.skip_message
