"""The demo code location loaded by ``dagster dev -w workspace.yaml``.

Scores the demo's daily transactions with ``models:/fraud@champion`` from the SQLite MLflow
registry that ``ml-assets demo`` (``make demo``) seeds under ``$ML_ASSETS_DEMO_ROOT`` (``./.demo``).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import dagster as dg

import ml_assets.dev.demo_defs
from ml_assets.dagster.assets import build_scoring_asset
from ml_assets.dagster.resources import ModelRegistryResource, ModelRuntimeResource
from ml_assets.datasets import ParquetDataset
from ml_assets.dev.demo import DEMO_DAYS, DEMO_START, DemoPaths, demo_root
from ml_assets.sensors import build_model_promotion_sensor, build_partition_schedule

paths = DemoPaths(demo_root())
daily = dg.DailyPartitionsDefinition(
    start_date=DEMO_START.isoformat(), end_date=(DEMO_START + timedelta(days=DEMO_DAYS)).isoformat()
)

fraud_scores = build_scoring_asset(
    name="fraud_scores",
    model="models:/fraud@champion",
    input_dataset=str(paths.transactions),
    output_dataset=str(paths.scores),
    partitions_def=daily,
    partition_column="date",
    passthrough=["transaction_id", "customer_id"],
    group_name="scoring",
    backfill_policy=dg.BackfillPolicy.single_run(),
)

# Promote in MLflow (or `ml-assets models promote fraud 2 --alias champion ...`): within ~15 s the
# partitions scored with the old version are re-scored in one run.
fraud_promotion = build_model_promotion_sensor(
    name="fraud_champion_promotion",
    watch=["models:/fraud@champion"],
    target=[fraud_scores],
    rescore="stale",
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
)

fraud_daily = build_partition_schedule(
    name="fraud_scores_daily",
    target=fraud_scores,
    partitions_def=daily,
    input_partition_uri=ParquetDataset(str(paths.transactions), partition_column="date").partition_uri,
)

# Dagster's loader accepts exactly one Definitions object at module scope, so the Python pipeline
# and the YAML one (ScoringPipelineComponent: champion and challenger in one pass) merge in place.
defs = dg.Definitions.merge(
    dg.Definitions(
        assets=[fraud_scores],
        sensors=[fraud_promotion],
        schedules=[fraud_daily],
        resources={
            "model_registry": ModelRegistryResource(kind="mlflow", uri=paths.tracking_uri),
            "model_runtime": ModelRuntimeResource(),
        },
    ),
    dg.load_defs(defs_root=ml_assets.dev.demo_defs, project_root=Path(__file__).resolve().parent),
)
