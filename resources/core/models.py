"""The nouns every registry and runtime speak: refs, versions, signatures, protocols.

Plain Python and pyarrow only: no Dagster, no MLflow, no runtime libraries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from ml_assets.resources.core.errors import ModelRefError
from ml_assets.resources.core.paths import check_relative, check_segment

if TYPE_CHECKING:
    import pyarrow as pa

ModelFormat = Literal["onnx", "pmml", "h2o_mojo", "pyfunc", "native", "remote"]
MODEL_FORMATS: tuple[str, ...] = ("onnx", "pmml", "h2o_mojo", "pyfunc", "native", "remote")

_NAME = r"[A-Za-z0-9][A-Za-z0-9_.\-]*"
_REGISTRY_REF = re.compile(rf"^(?:models:/)?(?P<name>{_NAME})(?:@(?P<alias>{_NAME})|/(?P<selector>[A-Za-z0-9_\-]+))$")
_DIRECT_SUFFIXES = {".onnx": "onnx", ".pmml": "pmml", ".xml": "pmml", ".zip": "h2o_mojo"}


@dataclass(frozen=True)
class ModelRef:
    """What a user writes to name a model.

    Registry refs: ``models:/fraud@champion`` (alias), ``models:/fraud/Production`` (stage),
    ``models:/fraud/7`` (version), ``models:/fraud/latest``, and the same without the
    ``models:/`` prefix. Direct refs: a URL or path of a model file
    (``file:///m/fraud.onnx``, ``s3://bucket/fraud.pmml``) that bypasses the registry.
    """

    raw: str
    name: str
    alias: str | None = None
    stage: str | None = None
    version: str | None = None
    latest: bool = False
    direct_uri: str | None = None

    @classmethod
    def parse(cls, raw: str) -> ModelRef:
        text = raw.strip()
        if not text:
            msg = "empty model reference; expected e.g. 'models:/fraud@champion'"
            raise ModelRefError(msg)
        suffix = Path(text.split("?", 1)[0]).suffix.lower()
        looks_like_file = suffix in _DIRECT_SUFFIXES or ("://" in text and not text.startswith("models:/"))
        if looks_like_file or text.startswith(("/", "./", "../")):
            return cls(raw=raw, name=Path(text.rstrip("/")).stem or text, direct_uri=text)
        match = _REGISTRY_REF.match(text)
        if match is None:
            msg = (
                f"cannot parse model reference {raw!r}; expected 'models:/NAME@ALIAS', "
                "'models:/NAME/STAGE', 'models:/NAME/VERSION', 'models:/NAME/latest' "
                "or the URL of a model file (.onnx, .pmml, .zip)"
            )
            raise ModelRefError(msg)
        name, alias, selector = match["name"], match["alias"], match["selector"]
        if alias is not None:
            return cls(raw=raw, name=name, alias=alias)
        if selector.isdigit():
            return cls(raw=raw, name=name, version=selector)
        if selector.lower() == "latest":
            return cls(raw=raw, name=name, latest=True)
        return cls(raw=raw, name=name, stage=selector)

    @property
    def direct_format(self) -> str | None:
        """The format implied by a direct file ref's extension, if any."""
        if self.direct_uri is None:
            return None
        return _DIRECT_SUFFIXES.get(Path(self.direct_uri.split("?", 1)[0]).suffix.lower())

    def __str__(self) -> str:
        return self.raw


@dataclass(frozen=True)
class ColumnSpec:
    """One named column of a model's input or output; ``type`` is an Arrow type name."""

    name: str
    type: str
    required: bool = True


@dataclass(frozen=True)
class Signature:
    inputs: tuple[ColumnSpec, ...] = ()
    outputs: tuple[ColumnSpec, ...] = ()

    @property
    def input_names(self) -> list[str]:
        return [c.name for c in self.inputs]


@dataclass(frozen=True)
class ModelVersion:
    """A registry's answer to a ref: one immutable version of one model."""

    name: str
    version: str
    format: str
    artifact_uri: str
    registry: str
    """Identifies the registry (kind and location, no credentials); part of the cache key."""
    ref: str = ""
    signature: Signature | None = None
    aliases: tuple[str, ...] = ()
    stage: str | None = None
    run_id: str | None = None
    created_at: datetime | None = None
    checksum: str | None = None
    """``sha256:<hex>`` of the model file(s), where the registry records one."""
    tags: dict[str, str] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)
    """Registry-specific facts a runtime may need (e.g. the model file inside the artifact)."""
    verification: dict[str, str] = field(default_factory=dict)
    """What the trust policy verified before loading (``ml_assets.resources.core.trust``); empty without one."""

    def __post_init__(self) -> None:
        # Versions and model files come from registries' metadata: they become cache folders and
        # paths inside the artifact, so they cross the one validating function here.
        check_segment(self.version, what=f"version of model {self.name!r}")
        model_file = self.extra.get("model_file")
        if model_file is not None:
            check_relative(model_file, what=f"model_file of {self.describe()}")

    @property
    def uri(self) -> str:
        """The canonical, version-pinned URI, e.g. ``models:/fraud/7``; a direct ref's file URL."""
        if self.registry == "direct":  # ml_assets.resources.registries.direct: the version is the file's content hash
            return self.artifact_uri
        return f"models:/{self.name}/{self.version}"

    def describe(self) -> str:
        return f"model {self.name!r} version {self.version}"

    def lineage(self) -> dict[str, str]:
        """What gets recorded next to every output this version produced."""
        facts = {
            "model_name": self.name,
            "model_version": self.version,
            "model_uri": self.uri,
            "model_ref": self.ref,
            "model_format": self.format,
            "registry": self.registry,
        }
        if self.run_id:
            facts["model_run_id"] = self.run_id
        if self.aliases:
            facts["model_aliases"] = ",".join(self.aliases)
        if self.stage:
            facts["model_stage"] = self.stage
        facts.update({f"model_{k}": v for k, v in self.verification.items()})
        return facts


@runtime_checkable
class Registry(Protocol):
    """Finds model versions and their files. Registered under the ``ml_assets.registries`` entry
    point group and built as ``Registry(uri, *, cache_dir=None, **options)``.

    A registry must be safe to call from several threads, raise ``ModelNotFoundError`` (naming the
    models, aliases, stages and versions that do exist) for an unknown ref, and
    ``RegistryUnavailableError`` when it cannot be reached, within a bounded time.
    """

    def resolve(self, ref: ModelRef | str) -> ModelVersion:
        """The version ``ref`` names right now (an alias or stage may move between two calls)."""
        ...

    def fetch(self, version: ModelVersion) -> Path:
        """Local path of the version's files: cached, verified, safe under concurrent runs."""
        ...

    def list_models(self) -> list[str]:
        """Every model name, sorted."""
        ...

    def list_versions(self, name: str) -> list[ModelVersion]:
        """``name``'s versions, oldest first, each with its aliases and stage."""
        ...


@runtime_checkable
class Scorer(Protocol):
    """A loaded model. ``score`` takes feature columns and returns prediction columns only.

    The scoring core hands ``score`` a batch holding exactly ``input_schema``'s columns,
    in order, already cast and null-checked, and expects exactly ``output_schema`` back
    with the same number of rows. ``concurrency`` is how many ``score`` calls the core may
    run at once from different threads (more than 1 only where the runtime releases the
    GIL or keeps its own worker pool).

    Output columns follow the prediction contract (``ml_assets.resources.core.predictions``):
    a classifier gives ``label`` (typed like the classes) and ``probability_<class>`` per class,
    in the model's order; a regressor ``prediction``; a multi-output model ``prediction_<name>``
    (``naming="native"`` keeps a runtime's own names). Checks, drift and champion/challenger read
    ``score_columns``: a binary classifier's last class, every class of a multiclass model. Optional
    attributes: ``classes`` (the model's class labels; the health check flags labels outside them)
    and ``output_note`` (how the outputs were named, e.g. a documented fallback or "labels only").
    """

    concurrency: int
    input_schema: pa.Schema
    """The columns (names and types) the model reads."""
    output_schema: pa.Schema
    """The prediction columns ``score`` returns, in order."""

    def score(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Predictions for ``batch``'s rows, in the same order; raise on failure, never return fewer rows."""
        ...

    def close(self) -> None:
        """Release what ``load`` acquired (sessions, worker processes, HTTP pools); idempotent."""
        ...


@runtime_checkable
class Runtime(Protocol):
    """Turns a model version's files into a Scorer. Registered under the ``ml_assets.runtimes``
    entry point group and built as ``Runtime(**options)``; the keyword arguments it takes are
    the options users can pass (``--option KEY=VALUE``, ``ModelRuntimeResource(options=...)``).
    A runtime that takes ``token``/``username``/``password`` receives the configured secrets."""

    def load(self, version: ModelVersion, path: Path) -> Scorer:
        """Load once; the scorer is reused across chunks and partitions. Errors: ``ModelLoadError``."""
        ...
