"""``ml_assets.resources``: the nouns and protocols (``core``), model registries (``registries``) and
runtimes (``runtimes``), all plain Python: nothing here imports Dagster or Airflow.

Importing this package imports no registry or runtime library: those load lazily.
"""

from ml_assets.resources.core.errors import (
    ArtifactError,
    DatasetError,
    MlAssetsError,
    ModelLoadError,
    ModelNotFoundError,
    ModelRefError,
    PluginNotFoundError,
    RegistryUnavailableError,
    SchemaMismatchError,
    ScoringError,
)
from ml_assets.resources.core.models import ColumnSpec, ModelRef, ModelVersion, Registry, Runtime, Scorer, Signature

__all__ = [
    "ArtifactError",
    "ColumnSpec",
    "DatasetError",
    "MlAssetsError",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelRef",
    "ModelRefError",
    "ModelVersion",
    "PluginNotFoundError",
    "Registry",
    "RegistryUnavailableError",
    "Runtime",
    "SchemaMismatchError",
    "Scorer",
    "ScoringError",
    "Signature",
]
