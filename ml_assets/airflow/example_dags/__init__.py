"""Example DAGs: daily scoring, and re-scoring when the champion alias moves.

The model and the datasets are DAG params (a run's conf can change them), with defaults from
the environment, so the DAGs run against the embedded demo (``ml-assets demo --root .demo``)
or your own data without edits:

- ``ML_ASSETS_MODEL`` (default ``models:/fraud@champion``)
- ``ML_ASSETS_INPUT`` (default ``.demo/data/transactions``), ``ML_ASSETS_OUTPUT`` (default ``.demo/scores/fraud``)
- ``ML_ASSETS_POLL_INTERVAL_S`` (default 60): how often the promotion watcher polls the registry
- the ``ml_assets_default`` connection, e.g.
  ``AIRFLOW_CONN_ML_ASSETS_DEFAULT='{"conn_type": "ml_assets_registry", "host": "sqlite:////abs/.demo/mlflow.db"}'``
"""

from __future__ import annotations

import os
from pathlib import Path

from airflow.sdk import Asset

MODEL = os.environ.get("ML_ASSETS_MODEL", "models:/fraud@champion")
INPUT = os.environ.get("ML_ASSETS_INPUT", str(Path(".demo/data/transactions").resolve()))
OUTPUT = os.environ.get("ML_ASSETS_OUTPUT", str(Path(".demo/scores/fraud").resolve()))
POLL_INTERVAL_S = float(os.environ.get("ML_ASSETS_POLL_INTERVAL_S", "60"))
PASSTHROUGH = ["transaction_id", "customer_id"]
PARAMS = {"model": MODEL, "input_dataset": INPUT, "output_dataset": OUTPUT}

#: The scores, updated by both DAGs; the asset events carry the model version and the partition.
FRAUD_SCORES = Asset(name="fraud_scores", uri=Path(OUTPUT).as_uri() if "://" not in OUTPUT else OUTPUT)
