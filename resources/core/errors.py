"""One exception hierarchy for the whole plugin.

Messages name what was asked, what was found and what would have been valid:
the partition, chunk, row range, column and model version, never a payload or a secret.
"""

from __future__ import annotations


class MlAssetsError(Exception):
    """Base of every error this plugin raises on purpose."""


class ModelRefError(MlAssetsError):
    """A model reference that cannot be parsed."""


class RegistryUnavailableError(MlAssetsError):
    """The registry could not be reached (network, database, permissions)."""


class ModelNotFoundError(MlAssetsError):
    """The registry answered, but the model, version, alias or stage does not exist."""


class ArtifactError(MlAssetsError):
    """A model's files could not be fetched, or failed verification."""


class PluginNotFoundError(MlAssetsError):
    """No registry or runtime is registered under the asked name."""


class ModelLoadError(MlAssetsError):
    """A runtime could not load a model's files."""


class SchemaMismatchError(MlAssetsError):
    """The data does not fit the model's inputs (missing column, unsafe cast, nulls)."""


class ScoringError(MlAssetsError):
    """A model failed, or returned something unusable, on a chunk of data."""


class DatasetError(MlAssetsError):
    """The input dataset or partition is missing, empty or unreadable."""


class MissingDependencyError(MlAssetsError, ImportError):
    """An optional package is not installed; the message names the extra that installs it."""


class UnsafePathError(MlAssetsError):
    """A name from outside (partition value, manifest entry, version, alias) that would make a path
    outside its root."""


class ModelVerificationError(ArtifactError):
    """A model version refused by the trust policy: unsigned, signed by another key, modified after
    signing, or holding a pickle that calls dangerous globals."""
