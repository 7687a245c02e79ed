"""``ml-assets score`` under Dagster Pipes: a real ``PipesSubprocessClient`` materialization, as
``PipesK8sClient``/``PipesDatabricksClient`` would run the same command remotely."""

from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow.parquet as pq

from ml_assets.datasets import read_lineage
from tests.conftest import DATES, ROWS_PER_DAY, VENV_BIN, features_of

CLI = str(Path(VENV_BIN) / "ml-assets")
DAILY = dg.StaticPartitionsDefinition(DATES)


def pipes_asset(command: list[str]) -> dg.AssetsDefinition:
    @dg.asset(name="remote_scores", partitions_def=DAILY)
    def remote_scores(context: dg.AssetExecutionContext, pipes: dg.PipesSubprocessClient) -> dg.MaterializeResult:
        return pipes.run(command=command, context=context).get_materialize_result()

    return remote_scores


def test_score_reports_its_materialization_through_pipes(models, transactions, tmp_path):
    out = tmp_path / "scores"
    command = [
        CLI, "score", "models:/fraud@champion", str(transactions), str(out), "--partition", "date",
        "--passthrough", "transaction_id", "--registry-uri", models.tracking_uri, "--quiet",
    ]  # fmt: skip
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [pipes_asset(command)],
            partition_key=DATES[1],
            resources={"pipes": dg.PipesSubprocessClient()},
            instance=instance,
        )
    assert result.success
    (event,) = result.asset_materializations_for_node("remote_scores")
    meta = {k: v.value for k, v in event.metadata.items()}
    file = out / f"date={DATES[1]}" / "part-0.parquet"
    assert (meta["model_name"], meta["model_version"], meta["model_uri"]) == ("fraud", "1", "models:/fraud/1")
    assert meta["rows_in"] == meta["rows_out"] == meta["dagster/row_count"] == ROWS_PER_DAY
    assert meta["rows_per_second"] > 0
    assert meta["output"] == str(file)
    assert meta["engine"] == "local"
    assert event.tags["dagster/data_version"] == "fraud/1"
    source = pq.read_table(transactions / f"date={DATES[1]}")
    np.testing.assert_allclose(
        pq.read_table(file)["probability_1"].to_numpy(), models.lr.predict_proba(features_of(source))[:, 1], atol=1e-5
    )
    assert read_lineage(str(file))["partition"] == DATES[1]


def test_a_failed_score_fails_the_pipes_step_with_its_message(models, transactions, tmp_path):
    command = [
        CLI, "score", "models:/fraud@nope", str(transactions), str(tmp_path / "scores"), "--partition", "date",
        "--registry-uri", models.tracking_uri, "--quiet",
    ]  # fmt: skip
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [pipes_asset(command)],
            partition_key=DATES[0],
            resources={"pipes": dg.PipesSubprocessClient()},
            instance=instance,
            raise_on_error=False,
        )
        events = [entry.dagster_event for entry in instance.all_logs(result.run_id) if entry.dagster_event]
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "External execution process failed with code 1" in str(failure.event_specific_data.error)
    # The command's own error, reported through Pipes as it closed: an engine event with the error.
    (closed,) = [e for e in events if "pipes closed with exception" in (e.message or "")]
    assert "no alias 'nope'" in closed.event_specific_data.error.message
    assert not (tmp_path / "scores").exists() or not list((tmp_path / "scores").rglob("*.parquet"))
