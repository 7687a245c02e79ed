"""The scoring asset in a real Dagster instance: partitions, metadata, failures, the demo location."""

from __future__ import annotations

import importlib
import sys

import dagster as dg
import numpy as np
import pyarrow.parquet as pq

from ml_assets.dagster.assets import MODEL_VERSION_TAG, build_scoring_asset
from ml_assets.dagster.resources import ModelRegistryResource, ModelRuntimeResource
from ml_assets.datasets import read_lineage
from tests.conftest import DATES, ROWS_PER_DAY, features_of

DAILY = dg.DailyPartitionsDefinition(start_date=DATES[0], end_date="2026-11-04")


def resources(models) -> dict:
    return {
        "model_registry": ModelRegistryResource(kind="mlflow", uri=models.tracking_uri),
        "model_runtime": ModelRuntimeResource(options={"onnx": {"threads": 1}}),
    }


def test_materializes_a_partition_with_lineage_metadata(models, transactions, tmp_path):
    asset = build_scoring_asset(
        name="fraud_scores",
        model="models:/fraud@champion",
        input_dataset=str(transactions),
        output_dataset=str(tmp_path / "scores"),
        partitions_def=DAILY,
        passthrough=["transaction_id"],
        chunk_rows=5_000,
    )
    with dg.instance_for_test() as instance:
        result = dg.materialize([asset], partition_key="2026-11-02", resources=resources(models), instance=instance)
        assert result.success
        (event,) = result.asset_materializations_for_node("fraud_scores")
        assert event.partition == "2026-11-02"
        meta = {k: v.value for k, v in event.metadata.items()}
        assert (meta["model_name"], meta["model_version"], meta["model_uri"]) == ("fraud", "1", "models:/fraud/1")
        assert meta["model_ref"] == "models:/fraud@champion"
        assert meta["rows_in"] == meta["rows_out"] == meta["dagster/row_count"] == ROWS_PER_DAY
        assert meta["seconds"] > 0
        assert meta["rows_per_second"] > 0
        output = str(tmp_path / "scores" / "date=2026-11-02" / "part-0.parquet")
        assert meta["output"] == output
        assert "| probability_1 | 20,000 |" in meta["score_summary"]
        assert event.tags[MODEL_VERSION_TAG] == "1"
        stored = instance.get_latest_materialization_event(dg.AssetKey("fraud_scores"))
        assert stored.asset_materialization.partition == "2026-11-02"
    out = pq.read_table(output)
    source = pq.read_table(transactions / "date=2026-11-02")
    np.testing.assert_allclose(
        out["probability_1"].to_numpy(), models.lr.predict_proba(features_of(source))[:, 1], atol=1e-5
    )
    assert read_lineage(output)["dagster_run_id"] == result.run_id


def test_promotion_changes_what_the_next_run_scores_with(models, transactions, tmp_path):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=models.tracking_uri)
    client.set_registered_model_alias("fraud", "shadow", "1")
    asset = build_scoring_asset(
        name="shadow_scores",
        model="models:/fraud@shadow",
        input_dataset=str(transactions),
        output_dataset=str(tmp_path / "scores"),
        partitions_def=DAILY,
    )
    defs_resources = resources(models)
    try:
        with dg.instance_for_test() as instance:
            first = dg.materialize([asset], partition_key=DATES[0], resources=defs_resources, instance=instance)
            client.set_registered_model_alias("fraud", "shadow", "2")
            second = dg.materialize([asset], partition_key=DATES[0], resources=defs_resources, instance=instance)
        versions = [
            r.asset_materializations_for_node("shadow_scores")[0].metadata["model_version"].value
            for r in (first, second)
        ]
        assert versions == ["1", "2"]
        assert read_lineage(str(tmp_path / "scores" / f"date={DATES[0]}" / "part-0.parquet"))["model_version"] == "2"
    finally:
        client.delete_registered_model_alias("fraud", "shadow")


def test_bad_input_fails_the_run_with_the_message_and_writes_nothing(models, transactions, tmp_path):
    asset = build_scoring_asset(
        name="fraud_scores",
        model="models:/fraud@champion",
        input_dataset=str(transactions),
        output_dataset=str(tmp_path / "scores"),
        partitions_def=dg.StaticPartitionsDefinition([*DATES, "2026-12-25"]),
    )
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [asset], partition_key="2026-12-25", resources=resources(models), instance=instance, raise_on_error=False
        )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "partition date=2026-12-25" in failure.event_specific_data.error.message
    assert "not found" in failure.event_specific_data.error.message
    assert not (tmp_path / "scores").exists() or not any((tmp_path / "scores").rglob("*.parquet"))


def test_unknown_alias_fails_naming_the_known_ones(models, transactions, tmp_path):
    asset = build_scoring_asset(
        name="fraud_scores",
        model="models:/fraud@nope",
        input_dataset=str(transactions),
        output_dataset=str(tmp_path / "scores"),
        partitions_def=DAILY,
    )
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [asset], partition_key=DATES[0], resources=resources(models), instance=instance, raise_on_error=False
        )
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "no alias 'nope'" in failure.event_specific_data.error.message
    assert "aliases: challenger, champion" in failure.event_specific_data.error.message


def test_single_run_backfill_scores_each_partition(models, transactions, tmp_path):
    asset = build_scoring_asset(
        name="fraud_scores",
        model="models:/fraud/2",
        input_dataset=str(transactions),
        output_dataset=str(tmp_path / "scores"),
        partitions_def=DAILY,
        backfill_policy=dg.BackfillPolicy.single_run(),
    )
    job = dg.define_asset_job("backfill", selection=[asset], partitions_def=DAILY)
    defs = dg.Definitions(assets=[asset], jobs=[job], resources=resources(models))
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("backfill").execute_in_process(
            instance=instance,
            tags={"dagster/asset_partition_range_start": DATES[0], "dagster/asset_partition_range_end": DATES[-1]},
        )
        assert result.success
        partitions = sorted(e.partition for e in result.asset_materializations_for_node("fraud_scores"))
    assert partitions == DATES
    for day in DATES:
        assert read_lineage(str(tmp_path / "scores" / f"date={day}" / "part-0.parquet"))["model_version"] == "2"


def test_demo_code_location_loads(monkeypatch, tmp_path):
    monkeypatch.setenv("ML_ASSETS_DEMO_ROOT", str(tmp_path / "demo"))
    sys.modules.pop("ml_assets.dev.definitions", None)
    module = importlib.import_module("ml_assets.dev.definitions")
    defs: dg.Definitions = module.defs
    assets = defs.resolve_asset_graph().get_all_asset_keys()
    assert dg.AssetKey("fraud_scores") in assets
    partitions = defs.resolve_assets_def("fraud_scores").partitions_def.get_partition_keys()
    assert partitions == ["2026-11-01", "2026-11-02", "2026-11-03"]
    assert (
        str(tmp_path / "demo")
        in defs.resolve_assets_def("fraud_scores").metadata_by_key[dg.AssetKey("fraud_scores")]["input_dataset"]
    )
