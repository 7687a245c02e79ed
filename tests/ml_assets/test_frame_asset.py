"""The frame-scoring asset in a real Dagster instance: an upstream asset's Polars frame, through a real IO manager.

Dagster's FilesystemIOManager (pickles). dagster-polars' PolarsParquetIOManager would be the natural one, but
its last release (0.27.12) passes scan_parquet arguments that Polars 2 removed (rechunk, retries), so it
cannot load any input with our Polars pin.
"""

import dagster as dg
import numpy as np
import onnxruntime as ort
import polars as pl
import pyarrow.parquet as pq
import pytest

from ml_assets import build_frame_scoring_asset
from ml_assets.dagster.resources import ModelRegistryResource, ModelRuntimeResource
from ml_assets.sensors.promotion import MODEL_NAME_TAG, MODEL_VERSION_TAG
from tests.conftest import DATES, ROWS_PER_DAY, features_of

DAILY = dg.StaticPartitionsDefinition(DATES)


def model_resources(models) -> dict:
    return {
        "model_registry": ModelRegistryResource(kind="mlflow", uri=models.tracking_uri),
        "model_runtime": ModelRuntimeResource(options={"onnx": {"threads": 1}}),
    }


def upstream_asset(transactions, *, partitions_def: dg.PartitionsDefinition | None = DAILY) -> dg.AssetsDefinition:
    """A Polars DataFrame per day."""

    @dg.asset(name="transactions", partitions_def=partitions_def)
    def transactions_frame(context: dg.AssetExecutionContext) -> pl.DataFrame:
        day = context.partition_key if partitions_def is not None else DATES[0]
        return pl.read_parquet(transactions / f"date={day}" / "*.parquet")

    return transactions_frame


def store(tmp_path) -> dg.FilesystemIOManager:
    return dg.FilesystemIOManager(base_dir=str(tmp_path / "store"))


def onnx_reference(models, transactions, day: str) -> tuple[np.ndarray, np.ndarray]:
    source = pq.read_table(transactions / f"date={day}")
    labels, probabilities = ort.InferenceSession(str(models.lr_onnx)).run(None, {"X": features_of(source)})
    return labels, probabilities[:, 1]


def test_scores_a_partition_of_an_upstream_lazy_polars_asset(models, transactions, tmp_path):
    @dg.asset(name="transactions", partitions_def=DAILY)
    def upstream(context: dg.AssetExecutionContext) -> pl.LazyFrame:
        """A lazy scan: stored as its query plan, read by the scoring asset in chunks."""
        return pl.scan_parquet(transactions / "**/*.parquet", hive_partitioning=True).filter(
            pl.col("date").cast(pl.String) == context.partition_key
        )

    scores = build_frame_scoring_asset(
        name="fraud_scores",
        model="models:/fraud@champion",
        upstream=upstream,
        load_as="LazyFrame",
        partitions_def=DAILY,
        passthrough=["transaction_id"],
        chunk_rows=6_000,
    )
    resources = {"io_manager": store(tmp_path), **model_resources(models)}
    with dg.instance_for_test() as instance:
        result = dg.materialize([upstream, scores], partition_key=DATES[1], resources=resources, instance=instance)
        assert result.success
        (event,) = result.asset_materializations_for_node("fraud_scores")
        stored = instance.get_latest_materialization_event(dg.AssetKey("fraud_scores"))
    assert event.partition == DATES[1]
    meta = {k: v.value for k, v in event.metadata.items()}
    assert (meta["model_name"], meta["model_version"], meta["model_uri"]) == ("fraud", "1", "models:/fraud/1")
    assert meta["rows_in"] == meta["rows_out"] == meta["dagster/row_count"] == ROWS_PER_DAY
    assert meta["chunks"] == 4
    assert meta["seconds"] > 0
    assert meta["rows_per_second"] > 0
    assert meta["score_stats"][DATES[1]]["probability_1"]["count"] == ROWS_PER_DAY
    assert "| probability_1 | 20,000 |" in meta["score_summary"]
    assert (event.tags[MODEL_NAME_TAG], event.tags[MODEL_VERSION_TAG]) == ("fraud", "1")
    assert stored.asset_materialization.tags[MODEL_VERSION_TAG] == "1"
    # What the IO manager stored is the scored frame, equal to onnxruntime on the same rows.
    out = (
        dg.FilesystemIOManager(base_dir=str(tmp_path / "store"))
        .create_io_manager(None)
        .load_input(dg.build_input_context(asset_key=dg.AssetKey("fraud_scores"), partition_key=DATES[1]))
    )
    assert isinstance(out, pl.DataFrame)
    assert out.columns == ["transaction_id", "label", "probability_0", "probability_1"]
    labels, probabilities = onnx_reference(models, transactions, DATES[1])
    np.testing.assert_array_equal(out["label"].to_numpy(), labels)
    np.testing.assert_array_equal(out["probability_1"].to_numpy(), probabilities)


def test_any_io_manager_that_stores_frames(models, transactions, tmp_path):
    upstream = upstream_asset(transactions, partitions_def=None)
    scores = build_frame_scoring_asset(
        name="fraud_scores",
        model="models:/fraud@champion",
        upstream="transactions",
        passthrough=["transaction_id"],
        version_column="model_version",
        key_prefix="ml",
    )
    resources = {"io_manager": store(tmp_path), **model_resources(models)}
    with dg.instance_for_test() as instance:
        result = dg.materialize([upstream, scores], resources=resources, instance=instance)
    assert result.success
    out = result.output_for_node("ml__fraud_scores")
    assert isinstance(out, pl.DataFrame)
    assert out["model_version"].cast(pl.String).unique().to_list() == ["1"]
    np.testing.assert_array_equal(out["probability_1"].to_numpy(), onnx_reference(models, transactions, DATES[0])[1])


def test_bad_upstream_rows_fail_the_run_naming_asset_chunk_and_column(models, transactions, tmp_path):
    @dg.asset(name="transactions", partitions_def=DAILY)
    def with_a_null(context: dg.AssetExecutionContext) -> pl.DataFrame:
        df = pl.read_parquet(transactions / f"date={context.partition_key}" / "*.parquet")
        return df.with_columns(
            pl.when(pl.int_range(pl.len()) == 7_000).then(None).otherwise(pl.col("amount")).alias("amount")
        )

    scores = build_frame_scoring_asset(
        name="fraud_scores",
        model="models:/fraud@champion",
        upstream=with_a_null,
        partitions_def=DAILY,
        chunk_rows=4_096,
    )
    resources = {"io_manager": store(tmp_path), **model_resources(models)}
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [with_a_null, scores], partition_key=DATES[0], resources=resources, instance=instance, raise_on_error=False
        )
    assert not result.success
    (failure,) = result.get_step_failure_events()
    assert failure.step_key == "fraud_scores"
    message = failure.event_specific_data.error.message
    assert (
        f"asset transactions (partition {DATES[0]}), chunk 1 (rows 4096-8191): column 'amount' has 1 null(s), "
        "the first at row 7000" in message
    )
    assert not list((tmp_path / "store").rglob("fraud_scores/*"))


def test_upstream_must_name_one_asset():
    @dg.multi_asset(specs=[dg.AssetSpec("a"), dg.AssetSpec("b")])
    def two():
        yield dg.MaterializeResult(asset_key="a")
        yield dg.MaterializeResult(asset_key="b")

    with pytest.raises(ValueError, match=r"upstream defines 2 assets \(a, b\); pass the key of the one to score"):
        build_frame_scoring_asset(name="scores", model="models:/fraud@champion", upstream=two)
