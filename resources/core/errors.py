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


class NativeUnsupportedError(ModelLoadError):
    """A model of the sklearn, xgboost or lightgbm flavor built in a way the native runtime does not score
    (a ColumnTransformer picking columns by name, a multi-output classifier, non-numeric features); the
    pyfunc runtime can."""


class SchemaMismatchError(MlAssetsError):
    """The data does not fit the model's inputs (missing column, unsafe cast, nulls)."""


class CastError(SchemaMismatchError):
    """A value of one file's column that cannot become the model's input type.

    Says where: ``file`` (None for a frame), ``column``, ``row`` (in the partition or frame) and
    ``file_row`` (in the file), with both types, so a caller can set the row aside."""

    def __init__(
        self,
        msg: str,
        *,
        file: str | None = None,
        column: str = "",
        row: int = -1,
        file_row: int = -1,
        found: str = "",
        expected: str = "",
    ) -> None:
        super().__init__(msg)
        self.file, self.column, self.row, self.file_row = file, column, row, file_row
        self.found, self.expected = found, expected

    def __reduce__(self):  # type: ignore[no-untyped-def]  -- keyword-only fields survive pickling (Ray)
        fields = {k: getattr(self, k) for k in ("file", "column", "row", "file_row", "found", "expected")}
        return _rebuild_cast_error, (str(self), fields)


def _rebuild_cast_error(msg: str, fields: dict) -> CastError:  # type: ignore[type-arg]
    return CastError(msg, **fields)


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


class EnvironmentBuildError(MlAssetsError):
    """A model's environment could not be built; the message names the requirement that failed."""


class RowsRejectedError(ScoringError):
    """The model raised on these rows, or a remote server refused them (HTTP 4xx): something in the rows,
    not the service. With ``on_row_error="quarantine"`` the chunk is narrowed to the rows by bisection."""

    def __init__(self, message: str, *, stage: str = "model") -> None:
        super().__init__(message)
        self.stage = stage


class ErrorBudgetExceededError(ScoringError):
    """More rows could not be scored than the error budget allows; nothing was committed."""
