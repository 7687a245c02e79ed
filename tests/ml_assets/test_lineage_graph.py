"""The model in Dagster's graph, through the instance API: one materialization per partition of a ranged
run, check evaluations naming their partition, the model and the input as upstream assets, Dagster's
own staleness after a promotion, Declarative Automation, and `stale` from the committed outputs."""

from __future__ import annotations

import dagster as dg
import mlflow
import pyarrow.parquet as pq
import pytest
from dagster._core.definitions.data_version import StaleStatus
from dagster._core.definitions.observe import observe
from dagster._utils.test.data_versions import get_stale_status_resolver

from ml_assets.dagster.assets import build_scoring_asset
from ml_assets.dagster.models import build_model_asset, model_asset_key, rescore_on_new_model_version
from ml_assets.dagster.resources import ModelRegistryResource, ModelRuntimeResource
from ml_assets.sensors import build_model_promotion_sensor
from tests.conftest import DATES, ROWS_PER_DAY

REF = "models:/fraud@lineage"
MODEL_KEY = dg.AssetKey(["models", "fraud", "lineage"])
KEY = dg.AssetKey("fraud_scores")
CHECKS = {"signature", "prediction_health", "score_drift"}
# Two of the three days in the test partitions, so a day outside the ranged run stays unscored.
DAILY = dg.DailyPartitionsDefinition(start_date=DATES[0], end_date="2026-11-04")


@pytest.fixture
def graph(models, transactions, tmp_path):
    client = mlflow.MlflowClient(tracking_uri=models.tracking_uri)
    client.set_registered_model_alias("fraud", "lineage", "1")
    asset = build_scoring_asset(
        name="fraud_scores",
        model=REF,
        input_dataset=str(transactions),
        output_dataset=str(tmp_path / "scores"),
        partitions_def=DAILY,
        backfill_policy=dg.BackfillPolicy.single_run(),
        automation_condition=rescore_on_new_model_version([MODEL_KEY]),
    )
    sensor = build_model_promotion_sensor(name="promotion", watch=[REF], target=[asset])
    model = build_model_asset(REF)
    defs = dg.Definitions(
        assets=[model, asset],
        sensors=[sensor],
        jobs=[dg.define_asset_job("score", selection=[KEY], partitions_def=DAILY)],
        resources={
            "model_registry": ModelRegistryResource(kind="mlflow", uri=models.tracking_uri),
            "model_runtime": ModelRuntimeResource(options={"onnx": {"threads": 1}}),
        },
    )
    try:
        yield {
            "defs": defs,
            "client": client,
            "sensor": sensor,
            "model": model,
            "asset": asset,
            "out": tmp_path / "scores",
        }
    finally:
        client.delete_registered_model_alias("fraud", "lineage")


def score_range(defs: dg.Definitions, instance: dg.DagsterInstance, first: str, last: str) -> dg.ExecuteInProcessResult:
    result = defs.resolve_job_def("score").execute_in_process(
        instance=instance,
        tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last},
    )
    assert result.success
    return result


def tick(graph, instance: dg.DagsterInstance, cursor: str | None) -> dg.SensorResult:
    defs = graph["defs"]
    with dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources=defs.resources) as ctx:
        return graph["sensor"](ctx)


def stale(defs: dg.Definitions, instance: dg.DagsterInstance) -> dict[str, StaleStatus]:
    """What the UI shows per partition (Dagster's own resolver; the GraphQL test reads it from a server)."""
    resolver = get_stale_status_resolver(instance, list(defs.assets or []))
    return {day: resolver.get_status(KEY, day) for day in DATES}


def test_model_ref_keys():
    assert model_asset_key("models:/fraud@champion") == dg.AssetKey(["models", "fraud", "champion"])
    assert model_asset_key("models:/fraud/Production") == dg.AssetKey(["models", "fraud", "Production"])
    assert model_asset_key("models:/fraud/7") == dg.AssetKey(["models", "fraud", "7"])
    assert model_asset_key("file:///m/fraud-v2.onnx") == dg.AssetKey(["models", "fraud_v2"])


def test_the_graph_has_the_model_and_the_input_upstream(graph):
    asset_graph = graph["defs"].resolve_asset_graph()
    assert asset_graph.get(KEY).parent_keys == {MODEL_KEY, dg.AssetKey(["datasets", "transactions"])}
    assert asset_graph.get(MODEL_KEY).is_observable


def test_a_ranged_run_records_each_partition_and_each_check_names_it(graph):
    with dg.instance_for_test() as instance:
        result = score_range(graph["defs"], instance, DATES[0], DATES[1])
        events = {e.partition: e for e in result.asset_materializations_for_node("fraud_scores")}
        assert sorted(events) == DATES[:2]
        outputs = set()
        for day, event in events.items():
            meta = {k: v.value for k, v in event.metadata.items()}
            assert meta["rows_in"] == meta["rows_out"] == meta["dagster/row_count"] == ROWS_PER_DAY
            assert meta["output"] == str(graph["out"] / f"date={day}" / "part-0.parquet")
            assert list(meta["score_stats"]) == [day]
            assert meta["score_summary"].startswith("| column | count |")
            assert f"| {ROWS_PER_DAY:,} |" in meta["score_summary"]
            assert meta["model_version"] == "1"
            histogram = event.metadata["score_histogram"]
            assert isinstance(histogram, dg.TableMetadataValue)
            assert sum(r.data["rows"] for r in histogram.records) == ROWS_PER_DAY
            outputs.add(meta["output"])
            probabilities = pq.read_table(meta["output"], columns=["probability_1"]).column(0).to_numpy()
            assert abs(meta["score_mean"] - probabilities.mean()) < 1e-5
        assert len(outputs) == 2
        # The commits left no empty staging folder beside the output root.
        assert not (graph["out"].parent / ".scores.ml-assets-staging").exists()
        # The stored records agree with what the run returned (what the UI and its plots read).
        for day in DATES[:2]:
            (record,) = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=KEY, asset_partitions=[day]), limit=5
            ).records
            assert record.asset_materialization.metadata["rows_in"].value == ROWS_PER_DAY
        evaluations = result.get_asset_check_evaluations()
        assert {(e.check_name, e.partition) for e in evaluations} == {(c, d) for c in CHECKS for d in DATES[:2]}
        for evaluation in evaluations:
            assert evaluation.metadata["partition"].value == evaluation.partition
            target = evaluation.target_materialization_data
            assert target is not None
            assert target.run_id == result.run_id
        # The second day's drift is against the first day (its previous partition), the first day's has none.
        drift = {e.partition: e for e in evaluations if e.check_name == "score_drift"}
        assert f"previous partition {DATES[0]}" in (drift[DATES[1]].description or "")
        assert "nothing to compare with" in (drift[DATES[0]].description or "")
        # The plot of the second day shows the first day beside it.
        columns = [c.name for c in events[DATES[1]].metadata["score_histogram"].schema.columns]
        assert columns[-2:] == ["reference_pct", "reference_bar"]


def test_staleness_marks_exactly_the_partitions_scored_with_another_version(graph):
    defs, client = graph["defs"], graph["client"]
    with dg.instance_for_test() as instance:
        baseline = tick(graph, instance, None)
        assert not baseline.run_requests
        score_range(defs, instance, DATES[0], DATES[1])
        # The run observed the model it resolved: the model asset's data version is version 1.
        observation = instance.fetch_observations(MODEL_KEY, limit=1).records[0].asset_observation
        assert observation.tags["dagster/data_version"] == "1"
        assert stale(defs, instance) == {
            DATES[0]: StaleStatus.FRESH,
            DATES[1]: StaleStatus.FRESH,
            DATES[2]: StaleStatus.MISSING,
        }

        client.set_registered_model_alias("fraud", "lineage", "2")
        promoted = tick(graph, instance, baseline.cursor)
        (request,) = promoted.run_requests
        assert (request.partition_key_range.start, request.partition_key_range.end) == (DATES[0], DATES[1])
        # The tick observes the model at the new version; the daemon stores its asset events.
        (event,) = promoted.asset_events
        assert event.asset_key == MODEL_KEY
        assert event.tags["dagster/data_version"] == "2"
        instance.report_runless_asset_event(event)
        assert stale(defs, instance) == {
            DATES[0]: StaleStatus.STALE,
            DATES[1]: StaleStatus.STALE,
            DATES[2]: StaleStatus.MISSING,
        }

        dg.materialize([graph["asset"]], partition_key=DATES[0], instance=instance, resources=defs.resources)
        assert stale(defs, instance) == {
            DATES[0]: StaleStatus.FRESH,
            DATES[1]: StaleStatus.STALE,
            DATES[2]: StaleStatus.MISSING,
        }


def test_a_run_that_resolves_an_unobserved_version_records_it_first(graph):
    """A backfill started by hand after a promotion nobody observed: the run's partitions are not stale."""
    defs, client = graph["defs"], graph["client"]
    with dg.instance_for_test() as instance:
        score_range(defs, instance, DATES[0], DATES[0])
        client.set_registered_model_alias("fraud", "lineage", "2")
        score_range(defs, instance, DATES[1], DATES[1])
        versions = [
            r.asset_observation.tags["dagster/data_version"]
            for r in instance.fetch_observations(MODEL_KEY, limit=5).records
        ]
        assert versions == ["2", "1"]
        assert stale(defs, instance) == {
            DATES[0]: StaleStatus.STALE,
            DATES[1]: StaleStatus.FRESH,
            DATES[2]: StaleStatus.MISSING,
        }


def test_declarative_automation_requests_the_partitions_a_promotion_left_behind(graph):
    defs, client = graph["defs"], graph["client"]
    with dg.instance_for_test() as instance:
        score_range(defs, instance, DATES[0], DATES[1])
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert first.get_requested_partitions(KEY) == set()
        client.set_registered_model_alias("fraud", "lineage", "2")
        observe([graph["model"]], instance=instance, resources=defs.resources)
        second = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
        assert second.get_requested_partitions(KEY) == set(DATES[:2])
        # Requested once: the next tick does not ask again while nothing changed.
        third = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=second.cursor)
        assert third.get_requested_partitions(KEY) == set()


def test_stale_finds_outputs_scored_outside_this_instance(graph):
    """`make demo` scored with the CLI; `dagster dev` starts with an empty instance: the files' lineage
    still says version 1, so a promotion re-scores them."""
    defs, client = graph["defs"], graph["client"]
    with dg.instance_for_test() as elsewhere:
        score_range(defs, elsewhere, DATES[0], DATES[1])
    with dg.instance_for_test() as fresh:
        baseline = tick(graph, fresh, None)
        client.set_registered_model_alias("fraud", "lineage", "2")
        (request,) = tick(graph, fresh, baseline.cursor).run_requests
        assert (request.partition_key_range.start, request.partition_key_range.end) == (DATES[0], DATES[1])
