"""dagster-ml-assets: score registered models over partitioned Parquet, from Dagster, Airflow or the shell.

Everything a user needs is importable from here::

    from ml_assets import ModelService, ParquetDataset, score_partition             # the core, no Dagster
    from ml_assets import score_frame, iter_scored_batches                          # Polars / Arrow frames
    from ml_assets import build_scoring_asset, ModelRegistryResource, ModelRuntimeResource  # Dagster
    from ml_assets.airflow import ScorePartitionOperator, ModelPromotionEventTrigger  # Airflow provider

Names load on first use (PEP 562), so ``import ml_assets`` imports neither Dagster nor any
registry or runtime library; the Dagster names need the ``[dagster]`` extra.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> module that defines it
_EXPORTS = {
    # the scoring core
    "score_partition": "ml_assets.scoring",
    "ScoringResult": "ml_assets.scoring",
    "Challenger": "ml_assets.scoring",
    "Progress": "ml_assets.scoring",
    "DEFAULT_CHUNK_ROWS": "ml_assets.scoring",
    "ParquetDataset": "ml_assets.datasets",
    "read_lineage": "ml_assets.datasets",
    "ModelService": "ml_assets.service",
    "LoadedModel": "ml_assets.service",
    "ScoreSummary": "ml_assets.summary",
    "score_frame": "ml_assets.frames",
    "iter_scored_batches": "ml_assets.frames",
    # on_row_error="quarantine": the error budget and what a run set aside
    "ErrorBudget": "ml_assets.quarantine",
    "RowErrorReport": "ml_assets.quarantine",
    "errors_dataset": "ml_assets.quarantine",
    "ScoredFrame": "ml_assets.frames",
    "ScoredBatches": "ml_assets.frames",
    # the Ray engine (extra: ray; Ray itself is imported only when a job runs)
    "RayEngine": "ml_assets.ray_engine",
    "ModelServiceConfig": "ml_assets.ray_engine",
    "RayEngineError": "ml_assets.ray_engine",
    # checks (pure; the Dagster layer maps them to AssetCheckResults)
    "CheckSettings": "ml_assets.checks",
    "CheckOutcome": "ml_assets.checks",
    "DriftReference": "ml_assets.checks",
    "evaluate_checks": "ml_assets.checks",
    # promotion detection (pure; used by the Dagster sensor and the Airflow triggers)
    "PromotionCursor": "ml_assets.promotion",
    "PromotionWatch": "ml_assets.promotion",
    "Promotion": "ml_assets.promotion",
    # nouns and protocols
    "ModelRef": "ml_assets.resources.core.models",
    "ModelVersion": "ml_assets.resources.core.models",
    "Signature": "ml_assets.resources.core.models",
    "ColumnSpec": "ml_assets.resources.core.models",
    "Registry": "ml_assets.resources.core.models",
    "Runtime": "ml_assets.resources.core.models",
    "Scorer": "ml_assets.resources.core.models",
    # errors
    "MlAssetsError": "ml_assets.resources.core.errors",
    "MissingDependencyError": "ml_assets.resources.core.errors",
    "ModelRefError": "ml_assets.resources.core.errors",
    "ModelNotFoundError": "ml_assets.resources.core.errors",
    "RegistryUnavailableError": "ml_assets.resources.core.errors",
    "ArtifactError": "ml_assets.resources.core.errors",
    "PluginNotFoundError": "ml_assets.resources.core.errors",
    "ModelLoadError": "ml_assets.resources.core.errors",
    "SchemaMismatchError": "ml_assets.resources.core.errors",
    "ScoringError": "ml_assets.resources.core.errors",
    "DatasetError": "ml_assets.resources.core.errors",
    "RowsRejectedError": "ml_assets.resources.core.errors",
    "ErrorBudgetExceededError": "ml_assets.resources.core.errors",
    # the Dagster layer (extra: dagster)
    "build_scoring_asset": "ml_assets.dagster.assets",
    "build_frame_scoring_asset": "ml_assets.dagster.frames",
    "ModelRegistryResource": "ml_assets.dagster.resources",
    "ModelRuntimeResource": "ml_assets.dagster.resources",
    "RayEngineResource": "ml_assets.dagster.resources",
    "ScoringPipelineComponent": "ml_assets.dagster.components",
    "build_model_promotion_sensor": "ml_assets.sensors.promotion",
    "build_partition_schedule": "ml_assets.sensors.schedules",
}

__all__ = [
    "DEFAULT_CHUNK_ROWS",
    "ArtifactError",
    "Challenger",
    "CheckOutcome",
    "CheckSettings",
    "ColumnSpec",
    "DatasetError",
    "DriftReference",
    "ErrorBudget",
    "ErrorBudgetExceededError",
    "LoadedModel",
    "MissingDependencyError",
    "MlAssetsError",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelRef",
    "ModelRefError",
    "ModelRegistryResource",
    "ModelRuntimeResource",
    "ModelService",
    "ModelServiceConfig",
    "ModelVersion",
    "ParquetDataset",
    "PluginNotFoundError",
    "Progress",
    "Promotion",
    "PromotionCursor",
    "PromotionWatch",
    "RayEngine",
    "RayEngineError",
    "RayEngineResource",
    "Registry",
    "RegistryUnavailableError",
    "RowErrorReport",
    "RowsRejectedError",
    "Runtime",
    "SchemaMismatchError",
    "ScoreSummary",
    "ScoredBatches",
    "ScoredFrame",
    "Scorer",
    "ScoringError",
    "ScoringPipelineComponent",
    "ScoringResult",
    "Signature",
    "build_frame_scoring_asset",
    "build_model_promotion_sensor",
    "build_partition_schedule",
    "build_scoring_asset",
    "errors_dataset",
    "evaluate_checks",
    "iter_scored_batches",
    "read_lineage",
    "score_frame",
    "score_partition",
]

if TYPE_CHECKING:
    from ml_assets.checks import CheckOutcome, CheckSettings, DriftReference, evaluate_checks
    from ml_assets.dagster.assets import build_scoring_asset
    from ml_assets.dagster.components import ScoringPipelineComponent
    from ml_assets.dagster.frames import build_frame_scoring_asset
    from ml_assets.dagster.resources import ModelRegistryResource, ModelRuntimeResource, RayEngineResource
    from ml_assets.datasets import ParquetDataset, read_lineage
    from ml_assets.frames import ScoredBatches, ScoredFrame, iter_scored_batches, score_frame
    from ml_assets.promotion import Promotion, PromotionCursor, PromotionWatch
    from ml_assets.quarantine import ErrorBudget, RowErrorReport, errors_dataset
    from ml_assets.ray_engine import ModelServiceConfig, RayEngine, RayEngineError
    from ml_assets.resources.core.errors import (
        ArtifactError,
        DatasetError,
        ErrorBudgetExceededError,
        MissingDependencyError,
        MlAssetsError,
        ModelLoadError,
        ModelNotFoundError,
        ModelRefError,
        PluginNotFoundError,
        RegistryUnavailableError,
        RowsRejectedError,
        SchemaMismatchError,
        ScoringError,
    )
    from ml_assets.resources.core.models import ColumnSpec, ModelRef, ModelVersion, Registry, Runtime, Scorer, Signature
    from ml_assets.scoring import DEFAULT_CHUNK_ROWS, Challenger, Progress, ScoringResult, score_partition
    from ml_assets.sensors.promotion import build_model_promotion_sensor
    from ml_assets.sensors.schedules import build_partition_schedule
    from ml_assets.service import LoadedModel, ModelService
    from ml_assets.summary import ScoreSummary


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        msg = f"module 'ml_assets' has no attribute {name!r}"
        raise AttributeError(msg)
    try:
        value = getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != "dagster":
            raise
        msg = f"ml_assets.{name} is part of the Dagster layer: pip install 'dagster-ml-assets[dagster]'"
        raise ImportError(msg) from exc
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
