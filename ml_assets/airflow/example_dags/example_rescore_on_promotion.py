"""Re-score the partitions an older model version scored, as soon as the champion alias moves.

The ``fraud_champion`` asset is watched by a ``ModelPromotionEventTrigger`` in the triggerer;
each promotion (a rollback too) is an asset event that starts one run of this DAG. The run finds
the stale partitions from the outputs' lineage and scores them in a mapped task, one task per
partition (none when every partition already carries the new version).
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Asset, AssetWatcher, dag

from ml_assets.airflow import ModelPromotionEventTrigger, ScorePartitionOperator, StalePartitionsOperator
from ml_assets.airflow.example_dags import FRAUD_SCORES, MODEL, PARAMS, PASSTHROUGH, POLL_INTERVAL_S

FRAUD_CHAMPION = Asset(
    name="fraud_champion",
    watchers=[
        AssetWatcher(
            name="fraud_champion_promotions",
            trigger=ModelPromotionEventTrigger(watch=[MODEL], poll_interval_s=POLL_INTERVAL_S),
        ),
    ],
)


@dag(
    schedule=[FRAUD_CHAMPION],
    start_date=datetime(2026, 11, 1),
    catchup=False,
    params=PARAMS,
    tags=["ml-assets", "example"],
)
def ml_assets_rescore_on_promotion() -> None:
    stale = StalePartitionsOperator(
        task_id="stale_partitions", model="{{ params.model }}", output_dataset="{{ params.output_dataset }}"
    )
    ScorePartitionOperator.partial(
        task_id="rescore",
        model="{{ params.model }}",
        input_dataset="{{ params.input_dataset }}",
        output_dataset="{{ params.output_dataset }}",
        passthrough=PASSTHROUGH,
        outlets=[FRAUD_SCORES],
        retries=2,
    ).expand(partition=stale.output)


ml_assets_rescore_on_promotion()
