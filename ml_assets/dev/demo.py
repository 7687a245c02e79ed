"""The embedded demo environment: a local MLflow registry in a SQLite file, a registered ONNX
fraud model (alias ``champion``, stage ``Production``) and a daily-partitioned Parquet dataset.

Also the small toolkit the tests and benchmarks train and register real models with.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DEMO_MODEL = "fraud"
DEMO_START = date(2026, 11, 1)
DEMO_DAYS = 3
DEMO_ROWS_PER_DAY = 1_000_000
FEATURES = [
    "amount",
    "hour_of_day",
    "merchant_risk",
    "distance_km",
    "txn_count_24h",
    "avg_amount_30d",
    "is_foreign",
    "card_age_days",
    "device_score",
    "velocity_1h",
]
_WEIGHTS = np.array([0.9, 0.3, 1.4, 0.6, 0.8, -0.5, 1.1, -0.7, 1.2, 0.9])


def demo_root() -> Path:
    """``$ML_ASSETS_DEMO_ROOT``, or ``.demo`` in the current folder."""
    return Path(os.environ.get("ML_ASSETS_DEMO_ROOT", ".demo")).resolve()


@dataclass(frozen=True)
class DemoPaths:
    root: Path

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def artifacts(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def transactions(self) -> Path:
        return self.root / "data" / "transactions"

    @property
    def scores(self) -> Path:
        return self.root / "scores" / DEMO_MODEL


def demo_dates(days: int = DEMO_DAYS) -> list[str]:
    return [(DEMO_START + timedelta(days=i)).isoformat() for i in range(days)]


def make_transactions(rows: int, *, seed: int) -> pa.Table:
    """Card transactions with ten float32 features and a fraud label from a fixed noisy linear rule."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((rows, len(FEATURES)), dtype=np.float32)
    logits = features @ _WEIGHTS - 2.5 + rng.standard_normal(rows) * 0.5
    columns: dict[str, Any] = {
        "transaction_id": np.arange(seed * 10_000_000, seed * 10_000_000 + rows, dtype=np.int64),
        "customer_id": rng.integers(0, 50_000, rows, dtype=np.int64),
    }
    columns.update({name: features[:, i] for i, name in enumerate(FEATURES)})
    columns["is_fraud"] = (logits > 0).astype(np.int8)
    return pa.table(columns)


def write_partitioned(table_for_day: Any, root: Path, dates: list[str], *, row_group_rows: int = 262_144) -> None:
    for day in dates:
        folder = root / f"date={day}"
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "_part-0.parquet.tmp"
        pq.write_table(table_for_day(day), tmp, row_group_size=row_group_rows)
        tmp.replace(folder / "part-0.parquet")


def to_onnx_classifier(model: Any, n_features: int, *, zipmap: bool = False) -> Any:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    options = {id(model): {"zipmap": False}} if not zipmap else None
    return to_onnx(model, initial_types=[("X", FloatTensorType([None, n_features]))], options=options, target_opset=17)


def register_onnx_model(
    tracking_uri: str,
    name: str,
    onnx_model: Any,
    feature_names: list[str],
    *,
    artifact_location: str | None = None,
    alias: str | None = None,
    stage: str | None = None,
    experiment: str = "ml-assets",
) -> str:
    """Logs an ONNX model with a column signature, registers it; returns the new version."""
    import warnings

    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment, artifact_location)
    example = pd.DataFrame({c: np.zeros(2, dtype=np.float32) for c in feature_names})
    with mlflow.start_run(experiment_id=experiment_id):
        info = mlflow.onnx.log_model(
            onnx_model,
            name="model",
            signature=infer_signature(example),
            registered_model_name=name,
            save_as_external_data=False,
        )
    version = str(info.registered_model_version)
    if alias:
        client.set_registered_model_alias(name, alias, version)
    if stage:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            client.transition_model_version_stage(name, version, stage)
    return version


def seed_demo(
    root: Path | None = None, *, days: int = DEMO_DAYS, rows_per_day: int = DEMO_ROWS_PER_DAY, log: Any = print
) -> DemoPaths:
    """Creates (once) the registry, the two model versions and the dataset under ``root``."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    paths = DemoPaths(root or demo_root())
    paths.root.mkdir(parents=True, exist_ok=True)
    dates = demo_dates(days)
    missing = [d for d in dates if not (paths.transactions / f"date={d}" / "part-0.parquet").exists()]
    if missing:
        log(f"writing {len(missing)} day(s) x {rows_per_day:,} transactions under {paths.transactions}")
        write_partitioned(
            lambda day: make_transactions(rows_per_day, seed=dates.index(day) + 1), paths.transactions, missing
        )
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=paths.tracking_uri)
    if not client.search_registered_models(filter_string=f"name = '{DEMO_MODEL}'"):
        train = make_transactions(50_000, seed=0)
        x = np.column_stack([train[c].to_numpy() for c in FEATURES])
        y = train["is_fraud"].to_numpy()
        lr = LogisticRegression(max_iter=500).fit(x, y)
        rf = RandomForestClassifier(n_estimators=30, max_depth=8, random_state=0, n_jobs=1).fit(x, y)
        artifacts = paths.artifacts.as_uri()
        v1 = register_onnx_model(
            paths.tracking_uri, DEMO_MODEL, to_onnx_classifier(lr, len(FEATURES)), FEATURES,
            artifact_location=artifacts, alias="champion", stage="Production",
        )  # fmt: skip
        v2 = register_onnx_model(
            paths.tracking_uri, DEMO_MODEL, to_onnx_classifier(rf, len(FEATURES)), FEATURES,
            artifact_location=artifacts, alias="challenger", stage="Staging",
        )  # fmt: skip
        log(f"registered {DEMO_MODEL!r} v{v1} (logistic regression, @champion, Production) and "
            f"v{v2} (random forest, @challenger, Staging) in {paths.tracking_uri}")  # fmt: skip
    return paths
