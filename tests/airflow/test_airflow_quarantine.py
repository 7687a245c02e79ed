"""ScorePartitionOperator with on_row_error="quarantine" under ``dag.test()``: the XCom and the asset event
carry the count, rate, top reasons and errors location; over the budget the task fails, nothing committed."""

from __future__ import annotations

from datetime import datetime

import pyarrow.parquet as pq
import pytest

from tests.airflow.test_airflow_dags import asset_events, xcoms
from tests.ml_assets.test_quarantine import DAY, ROWS, files_under, poisoned_transactions

NULLS = {3: "amount", 4_000: "amount"}


def quarantine_dag(source: str, out: str, max_error_rows: int):
    from airflow.sdk import Asset, dag

    from ml_assets.airflow import ScorePartitionOperator

    @dag(dag_id=f"quarantine_{max_error_rows}", schedule=None, start_date=datetime(2026, 11, 1))
    def quarantine() -> None:
        ScorePartitionOperator(
            task_id="score", model="models:/af@champion", input_dataset=source, output_dataset=out, partition=DAY,
            passthrough=["transaction_id"], on_row_error="quarantine", max_error_rows=max_error_rows,
            outlets=[Asset(f"file://{out}")],
        )  # fmt: skip

    return quarantine()


def test_operator_quarantines_and_reports_in_xcom_and_asset_event(
    dags_folder, connect, registry_uri, champion, tmp_path
):
    from airflow.utils.state import DagRunState

    poisoned_transactions(tmp_path / "in", nulls=NULLS, uncastable=[])
    connect("ml_assets_default", registry_uri)
    source, out = str(tmp_path / "in"), str(tmp_path / "scores")
    over = quarantine_dag(source, out, 1).test()
    assert over.state == DagRunState.FAILED
    assert files_under(tmp_path / "scores") == []
    assert files_under(tmp_path / "scores_errors") == []

    run = quarantine_dag(source, out, 2).test()
    assert run.state == DagRunState.SUCCESS
    (summary,) = xcoms(run, "score")
    errors = str(tmp_path / f"scores_errors/date={DAY}/part-0.parquet")
    assert summary["rows"] == ROWS - 2
    assert summary["row_errors"] == 2
    assert summary["row_error_rate"] == pytest.approx(2 / ROWS, abs=1e-6)
    assert summary["errors_uri"] == errors
    assert summary["row_error_top_reasons"][0].startswith("2 x null 'amount'")
    ((_, extra),) = asset_events(run)
    assert extra["row_errors"] == 2
    assert extra["errors_uri"] == errors
    assert pq.read_table(errors).num_rows == 2
