"""on_row_error="quarantine" where users set it: the Dagster asset (metadata, the row_errors check, a
challenger beside), the YAML Component and the CLI, against the session's MLflow registry."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ml_assets import build_scoring_asset
from ml_assets.dagster.resources import ModelRegistryResource, ModelRuntimeResource
from tests.conftest import component_defs, features_of
from tests.ml_assets.test_cli import run_cli
from tests.ml_assets.test_quarantine import DAY, ROWS, files_under, poisoned_transactions

NULLS = {11: "amount", 2_500: "merchant_risk", 5_000: "amount"}
UNCASTABLE = [42]
BAD = sorted({*NULLS, *UNCASTABLE})
DAYS = dg.StaticPartitionsDefinition([DAY])


def resources(models) -> dict:
    return {
        "model_registry": ModelRegistryResource(uri=models.tracking_uri),
        "model_runtime": ModelRuntimeResource(options={"onnx": {"threads": 1}}),
    }


def reference(models, table: pa.Table, rows: np.ndarray) -> np.ndarray:
    kept = table.take(pa.array(rows))
    index = kept.schema.get_field_index("txn_count_24h")
    kept = kept.set_column(index, "txn_count_24h", kept["txn_count_24h"].cast(pa.float32()))
    return models.lr.predict_proba(features_of(kept))[:, 1]


def test_asset_records_the_quarantine_and_warns_then_fails_over_the_budget(models, tmp_path):
    table = poisoned_transactions(tmp_path / "in", nulls=NULLS, uncastable=UNCASTABLE)
    out, challenger = tmp_path / "scores", tmp_path / "challenger"

    def asset(max_error_rows: int) -> dg.AssetsDefinition:
        return build_scoring_asset(
            name="fraud_scores", model="models:/fraud@champion", input_dataset=str(tmp_path / "in"),
            output_dataset=str(out), partitions_def=DAYS, passthrough=["transaction_id"],
            challenger="models:/fraud@challenger", challenger_output=str(challenger),
            on_row_error="quarantine", max_error_rows=max_error_rows,
        )  # fmt: skip

    with dg.instance_for_test() as instance:
        over = dg.materialize(
            [asset(3)], partition_key=DAY, resources=resources(models), instance=instance, raise_on_error=False
        )
        assert not over.success
        (check,) = over.get_asset_check_evaluations()
        assert (check.check_name, check.passed, check.severity) == ("row_errors", False, dg.AssetCheckSeverity.ERROR)
        assert "4 or more of 6000 rows cannot be scored" in check.metadata["description"].value
        for root in (out, challenger, tmp_path / "scores_errors", tmp_path / "challenger_errors"):
            assert files_under(root) == [], root

        result = dg.materialize([asset(4)], partition_key=DAY, resources=resources(models), instance=instance)
    assert result.success
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert {name: c.passed for name, c in checks.items()} == {
        "signature": True,  # nulls are quarantined row by row: they do not block the partition
        "prediction_health": True,  # rows in = rows scored + rows quarantined
        "score_drift": True,
        "champion_challenger": True,
        "row_errors": False,
    }
    assert checks["row_errors"].severity == dg.AssetCheckSeverity.WARN
    assert checks["row_errors"].metadata["row_errors"].value == len(BAD)
    (materialization, challenger_materialization) = result.asset_materializations_for_node("fraud_scores")
    metadata = materialization.metadata
    assert metadata["row_errors"].value == len(BAD)
    assert metadata["row_error_rate"].value == pytest.approx(len(BAD) / ROWS, abs=1e-6)
    assert metadata["errors"].value == str(tmp_path / f"scores_errors/date={DAY}/part-0.parquet")
    assert metadata["row_error_top_reasons"].value[0].startswith("2 x null 'amount'")
    assert metadata["rows_out"].value == ROWS - len(BAD)
    assert challenger_materialization.metadata["errors"].value.startswith(str(tmp_path / "challenger_errors"))
    good = np.setdiff1d(np.arange(ROWS), BAD)
    scored = pq.read_table(out / f"date={DAY}")
    np.testing.assert_allclose(scored["probability_1"].to_numpy(), reference(models, table, good), atol=1e-5)
    errors = pq.read_table(tmp_path / "scores_errors" / f"date={DAY}")
    ids = table["transaction_id"].to_numpy()
    assert errors["transaction_id"].to_pylist() == [int(ids[row]) for row in BAD]
    assert pq.read_table(tmp_path / "challenger_errors").num_rows == len(BAD)


def test_component_yaml_quarantines(models, tmp_path):
    poisoned_transactions(tmp_path / "in", nulls=NULLS, uncastable=UNCASTABLE)
    attributes = {
        "name": "yaml_scores",
        "model": "models:/fraud@champion",
        "registry": {"kind": "mlflow", "uri": models.tracking_uri},
        "runtime": {"options": {"onnx": {"threads": 1}}},
        "input": {"uri": str(tmp_path / "in"), "partition_column": "date"},
        "output": {"uri": str(tmp_path / "scores")},
        "partitions": {"static": [DAY]},
        "passthrough": ["transaction_id"],
        "on_row_error": "quarantine",
        "max_error_rate": 0.001,
    }
    with component_defs(attributes) as (_, defs):
        job = defs.resolve_implicit_global_asset_job_def()
        with dg.instance_for_test() as instance:
            result = job.execute_in_process(instance=instance, partition_key=DAY)
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["row_errors"] is False
    assert pq.read_table(tmp_path / "scores_errors").num_rows == len(BAD)
    assert pq.read_table(tmp_path / "scores").num_rows == ROWS - len(BAD)


def test_cli_quarantines_and_says_so(models, tmp_path):
    poisoned_transactions(tmp_path / "in", nulls=NULLS, uncastable=UNCASTABLE)
    args = ["score", "models:/fraud@champion", str(tmp_path / "in"), str(tmp_path / "scores"),
            "--partition", f"date={DAY}", "--passthrough", "transaction_id", "--registry-uri", models.tracking_uri,
            "--quiet", "--on-row-error", "quarantine"]  # fmt: skip
    done = run_cli(*args, "--max-error-rows", "4")
    assert done.returncode == 0, done.stderr
    errors = tmp_path / f"scores_errors/date={DAY}/part-0.parquet"
    assert f"row errors: {len(BAD)} (0.067%, max_error_rows=4)" in done.stdout
    assert f"errors: {errors}" in done.stdout
    assert "2 x null 'amount'" in done.stdout
    assert pq.read_table(errors).num_rows == len(BAD)
    over = run_cli(*args, "--max-error-rows", "3")
    assert over.returncode == 1
    assert "more than the error budget allows" in over.stderr
    assert "Traceback" not in over.stderr
    no_budget = run_cli(*args)
    assert no_budget.returncode == 2
    assert "needs an error budget" in no_budget.stderr
