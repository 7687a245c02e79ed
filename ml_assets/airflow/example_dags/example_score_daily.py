"""Score each day's partition with the current champion, as the day's data lands."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag

from ml_assets.airflow import ScorePartitionOperator
from ml_assets.airflow.example_dags import FRAUD_SCORES, PARAMS, PASSTHROUGH


@dag(
    schedule="@daily",
    start_date=datetime(2026, 11, 1),
    catchup=False,
    params=PARAMS,
    tags=["ml-assets", "example"],
)
def ml_assets_score_daily() -> None:
    ScorePartitionOperator(
        task_id="score",
        model="{{ params.model }}",
        input_dataset="{{ params.input_dataset }}",
        output_dataset="{{ params.output_dataset }}",
        partition="{{ ds }}",
        passthrough=PASSTHROUGH,
        runtime_options={"threads": 2},
        outlets=[FRAUD_SCORES],
        retries=2,
    )


ml_assets_score_daily()
