"""Dagster Components of dagster-ml-assets (registered for `dg list components`)."""

from ml_assets.dagster.components.scoring_pipeline import ScoringPipelineComponent

__all__ = ["ScoringPipelineComponent"]
