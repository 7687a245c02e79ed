"""The demo code location loaded by ``dagster dev -w workspace.yaml``.

Scores the demo's daily transactions with ``models:/fraud@champion`` from the SQLite MLflow
registry that ``ml-assets demo`` (``make demo``) seeds under ``$ML_ASSETS_DEMO_ROOT`` (``./.demo``).
"""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

from ml_assets.assets import build_scoring_asset
from ml_assets.demo import DEMO_DAYS, DEMO_START, DemoPaths, demo_root
from resources.dagster_resources import ModelRegistryResource, ModelRuntimeResource

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
)

defs = dg.Definitions(
    assets=[fraud_scores],
    resources={
        "model_registry": ModelRegistryResource(kind="mlflow", uri=paths.tracking_uri),
        "model_runtime": ModelRuntimeResource(),
    },
)
