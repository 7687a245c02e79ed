"""The prediction contract every runtime follows, and the score column the checks read.

- Classifiers: ``label`` (typed like the classes: int64 or string) plus ``probability_<class>`` for
  each class, with the model's own class labels, in the model's order.
- Regressors: ``prediction``; models with several outputs: ``prediction_<name>``.
- A runtime that cannot know the classes (a bare ``[N, k]`` matrix from a pyfunc or a server) reads
  it as the probabilities of classes ``0..k-1`` in column order, derives ``label`` as the most
  probable class, and says so in its scorer's ``output_note``.
- ``naming="native"`` (a runtime option) keeps the runtime's own names instead.

Checks, drift and champion/challenger read ``score_columns``: for a binary classifier the positive
class, i.e. the last class in the model's order; for a multiclass model every class; unless
``score_column`` names one. Plain Python, pyarrow and numpy only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from ml_assets.resources.core.errors import ModelLoadError, SchemaMismatchError

Naming = Literal["contract", "native"]
NAMINGS: tuple[str, ...] = ("contract", "native")
LABEL = "label"
PREDICTION = "prediction"
PROBABILITY = "probability_"
_INTEGER = re.compile(r"^[+-]?\d{1,18}$")


def check_naming(naming: str) -> Naming:
    if naming not in NAMINGS:
        msg = f"naming must be 'contract' (label, probability_<class>, prediction) or 'native', got {naming!r}"
        raise ModelLoadError(msg)
    return naming  # type: ignore[return-value]


def probability_column(cls: Any) -> str:
    return f"{PROBABILITY}{cls}"


def typed_classes(classes: Sequence[Any]) -> tuple[list[Any], pa.DataType]:
    """The classes as the label column holds them: int64 when every class is an integer (or integer
    text, as H2O and PMML domains give them), else string."""
    values = list(classes)
    if values and all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in values):
        return [int(c) for c in values], pa.int64()
    texts = [str(c) for c in values]
    if texts and all(_INTEGER.match(t) for t in texts):
        return [int(t) for t in texts], pa.int64()
    return texts, pa.string()


@dataclass(frozen=True)
class OutputMap:
    """How a runtime's own output columns become the contract's.

    ``columns``: (source column of the runtime's batch, or None for the label derived from the
    probabilities, target field), in output order. ``probabilities``: source columns in class order
    (for a derived label). ``note``: what the scorer's metadata says about its outputs.
    """

    columns: tuple[tuple[str | None, pa.Field], ...]
    probabilities: tuple[str, ...] = ()
    classes: tuple[Any, ...] = ()
    label_type: pa.DataType | None = None
    note: str = ""

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([f for _, f in self.columns])

    @property
    def sources(self) -> list[str]:
        """The runtime's columns this map reads."""
        needed = [s for s, _ in self.columns if s is not None]
        if any(s is None for s, _ in self.columns):
            needed += [p for p in self.probabilities if p not in needed]
        return needed

    def keep(self, names: Sequence[str], *, what: str) -> OutputMap:
        """Only the columns ``names`` (contract names), in that order."""
        have = {f.name: (s, f) for s, f in self.columns}
        unknown = [n for n in names if n not in have]
        if unknown:
            msg = f"{what}: no output column(s) {unknown}; the model gives {list(have)}"
            raise SchemaMismatchError(msg)
        return OutputMap(tuple(have[n] for n in names), self.probabilities, self.classes, self.label_type, self.note)

    def required(self) -> OutputMap:
        """The columns read straight from the runtime's batch declared non-nullable, for a runtime whose
        outputs cannot hold nulls (tensors): Parquet then writes them without definition levels, 15-18%
        less CPU to encode (docs/outputs.md). A derived label keeps its nulls (rows with a NaN probability)."""
        columns = tuple((s, f if s is None else f.with_nullable(False)) for s, f in self.columns)
        return replace(self, columns=columns)

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        arrays = []
        for source, target in self.columns:
            if source is None:
                arrays.append(self._derived_label(batch))
                continue
            array = batch.column(source)
            arrays.append(array if array.type == target.type else array.cast(target.type))
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def _derived_label(self, batch: pa.RecordBatch) -> pa.Array:
        matrix = np.column_stack(
            [batch.column(p).to_numpy(zero_copy_only=False).astype(np.float64) for p in self.probabilities]
        )
        missing = np.isnan(matrix).any(axis=1)
        best = np.argmax(np.where(np.isnan(matrix), -np.inf, matrix), axis=1)
        labels = pa.array(list(self.classes), self.label_type).take(pa.array(best))
        if missing.any():
            labels = pa.array(labels.to_pylist(), self.label_type, mask=missing)
        return labels


def identity_map(schema: pa.Schema, *, note: str = "") -> OutputMap:
    """The runtime's own names (``naming="native"``)."""
    return OutputMap(tuple((f.name, f) for f in schema), note=note or "the runtime's own output names")


def classifier_map(
    classes: Sequence[Any],
    *,
    probabilities: Mapping[Any, pa.Field],
    label: str | None = None,
    others: Sequence[pa.Field] = (),
    note: str = "",
) -> OutputMap:
    """``label`` (the runtime's label column, else the most probable class), ``probability_<class>``
    from ``probabilities`` (class -> source field, whose type is kept) in the order of ``classes``,
    then ``others`` under their own names."""
    values, label_type = typed_classes(classes)
    by_text = {str(k): v for k, v in probabilities.items()}
    ordered = [by_text[str(c)].name for c in classes if str(c) in by_text]
    columns: list[tuple[str | None, pa.Field]] = [(label, pa.field(LABEL, label_type))]
    if label is None and len(ordered) != len(values):
        columns = []  # no label to give: neither the runtime's nor one derived from every class
    columns += [
        (by_text[str(c)].name, pa.field(probability_column(v), by_text[str(c)].type))
        for c, v in zip(classes, values, strict=True)
        if str(c) in by_text
    ]
    columns += [(f.name, f) for f in others]
    return OutputMap(tuple(columns), tuple(ordered), tuple(values), label_type, note)


def regressor_map(outputs: Sequence[pa.Field], *, note: str = "") -> OutputMap:
    """One output becomes ``prediction``; several become ``prediction_<name>``."""
    if len(outputs) == 1:
        return OutputMap(((outputs[0].name, pa.field(PREDICTION, outputs[0].type)),), note=note)
    return OutputMap(tuple((f.name, pa.field(f"{PREDICTION}_{f.name}", f.type)) for f in outputs), note=note)


BARE_MATRIX_NOTE = (
    "a bare [N, {k}] matrix without class labels: read as the probabilities of classes 0..{last} in column "
    "order, label = the most probable class (option classes=[...] names the classes; naming='native' keeps "
    "prediction_<j>)"
)


def bare_matrix_map(
    sources: Sequence[pa.Field], *, classes: Sequence[Any] | None = None, what: str = "the model"
) -> OutputMap:
    """The documented fallback for an unnamed ``[N, k]`` output (pyfunc, MLflow servers, v2 tensors)."""
    if classes is not None and len(classes) != len(sources):
        msg = f"{what}: classes names {len(classes)} classes but the output has {len(sources)} columns"
        raise SchemaMismatchError(msg)
    named = classes is not None
    classes = list(classes) if classes is not None else list(range(len(sources)))
    note = (
        f"a bare [N, {len(sources)}] matrix read as the probabilities of the classes {classes} given by option classes"
        if named
        else BARE_MATRIX_NOTE.format(k=len(sources), last=len(sources) - 1)
    )
    return classifier_map(classes, probabilities=dict(zip(classes, sources, strict=True)), note=note)


def score_columns(schema: pa.Schema, *, score_column: str | None = None) -> list[str]:
    """The columns checks, drift and champion/challenger compare.

    ``score_column`` if given; else a binary classifier's positive class (the last
    ``probability_*`` column: the contract orders them as the model orders its classes); every
    ``probability_*`` column of a multiclass model; else a regressor's first float column.
    """
    names = schema.names
    if score_column is not None:
        if score_column not in names:
            msg = f"score_column {score_column!r} is not among the prediction columns {names}"
            raise SchemaMismatchError(msg)
        return [score_column]
    probabilities = [n for n in names if n.startswith(PROBABILITY)]
    if len(probabilities) == 2:
        return probabilities[-1:]
    if probabilities:
        return probabilities
    return [f.name for f in schema if pa.types.is_floating(f.type)][:1]


__all__ = [
    "BARE_MATRIX_NOTE",
    "LABEL",
    "NAMINGS",
    "PREDICTION",
    "PROBABILITY",
    "Naming",
    "OutputMap",
    "bare_matrix_map",
    "check_naming",
    "classifier_map",
    "identity_map",
    "probability_column",
    "regressor_map",
    "score_columns",
    "typed_classes",
]
