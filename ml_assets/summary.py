"""Streaming summaries of prediction columns, collected chunk by chunk while scoring.

Never re-reads the output: count, nulls/NaNs, mean, standard deviation, min, max, and a
fixed-bin histogram for columns whose values are probabilities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ml_assets.resources.core.predictions import PROBABILITY, score_columns

# Fine enough for drift statistics (PSI, KS) on probabilities; a person sees them re-binned to 10.
HISTOGRAM_BINS = 100
# How far outside [0, 1] a probability may be and still count as in range: float32 rounding of a
# probability next to 1 gives 1.0000001 (one float32 ulp at 1 is 1.2e-7).
PROBABILITY_EPSILON = 1e-6


@dataclass
class ColumnSummary:
    """Mergeable moments (count, mean, M2 as in Chan et al.) so a chunk is summarised in one pass."""

    count: int = 0
    nulls: int = 0
    nans: int = 0
    mean_: float = 0.0
    m2: float = 0.0
    minimum: float = math.inf
    maximum: float = -math.inf
    histogram: np.ndarray | None = None  # counts over [0, 1] in HISTOGRAM_BINS bins
    out_of_range: int = 0  # probabilities below -PROBABILITY_EPSILON or above 1 + PROBABILITY_EPSILON

    def update(self, column: pa.Array, *, probability: bool) -> None:
        # A few whole-array passes and no Python per value: this runs on every chunk of every run.
        self.nulls += column.null_count
        values = (column.drop_null() if column.null_count else column).to_numpy(zero_copy_only=False)
        if values.dtype.kind != "f":
            values = values.astype(np.float64)
        total = float(values.sum(dtype=np.float64))
        if not math.isfinite(total):
            finite = values[np.isfinite(values)]
            self.nans += len(values) - len(finite)
            values = finite
            total = float(values.sum(dtype=np.float64))
        n = len(values)
        if not n:
            return
        mean = total / n
        low, high = float(values.min()), float(values.max())
        # Deviations in the column's own type (one temporary), squared in place, summed in float64.
        deviations = values - values.dtype.type(mean)
        m2 = float(np.square(deviations, out=deviations).sum(dtype=np.float64))
        merged = self.count + n
        delta = mean - self.mean_
        self.mean_ += delta * n / merged
        self.m2 += m2 + delta * delta * self.count * n / merged
        self.count = merged
        self.minimum = min(self.minimum, low)
        self.maximum = max(self.maximum, high)
        if probability:
            inside = low >= -PROBABILITY_EPSILON and high <= 1.0 + PROBABILITY_EPSILON
            if not inside:
                outside = (values < -PROBABILITY_EPSILON) | (values > 1.0 + PROBABILITY_EPSILON)
                self.out_of_range += int(np.count_nonzero(outside))
            bins = np.multiply(values, HISTOGRAM_BINS, out=deviations).astype(np.intp)
            if low < 0.0 or high > 1.0:
                np.clip(bins, 0, HISTOGRAM_BINS, out=bins)
            counts = np.bincount(bins, minlength=HISTOGRAM_BINS + 1)
            counts[HISTOGRAM_BINS - 1] += counts[HISTOGRAM_BINS]  # 1.0 (and above) falls in the last bin
            counts = counts[:HISTOGRAM_BINS]
            self.histogram = counts if self.histogram is None else self.histogram + counts

    @property
    def mean(self) -> float | None:
        return self.mean_ if self.count else None

    @property
    def std(self) -> float | None:
        return math.sqrt(self.m2 / self.count) if self.count else None

    def as_dict(self) -> dict[str, Any]:
        facts: dict[str, Any] = {
            "count": self.count,
            "nulls": self.nulls,
            "nans": self.nans,
            "mean": self.mean,
            "std": self.std,
            "min": self.minimum if self.count else None,
            "max": self.maximum if self.count else None,
        }
        if self.histogram is not None:
            facts["histogram"] = [int(c) for c in self.histogram]
            facts["out_of_range"] = self.out_of_range
        return facts


@dataclass
class ScoreSummary:
    """Per prediction column; numeric columns get statistics, label columns get value counts."""

    columns: dict[str, ColumnSummary] = field(default_factory=dict)
    value_counts: dict[str, dict[str, int]] = field(default_factory=dict)

    MAX_DISTINCT = 50

    def update(self, predictions: pa.RecordBatch) -> None:
        for name, column in zip(predictions.schema.names, predictions.columns, strict=True):
            kind = column.type
            if pa.types.is_floating(kind) or (pa.types.is_integer(kind) and not _looks_like_label(name)):
                probability = pa.types.is_floating(kind) and name.startswith(PROBABILITY)
                self.columns.setdefault(name, ColumnSummary()).update(column, probability=probability)
            elif pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_boolean(kind):
                counts = self.value_counts.setdefault(name, {})
                if len(counts) > self.MAX_DISTINCT:
                    continue
                for value, count in _value_counts(column):
                    key = str(value)
                    counts[key] = counts.get(key, 0) + count

    def as_dict(self) -> dict[str, Any]:
        summary: dict[str, Any] = {name: s.as_dict() for name, s in self.columns.items()}
        for name, counts in self.value_counts.items():
            summary[name] = {"value_counts": dict(sorted(counts.items(), key=lambda kv: -kv[1])[: self.MAX_DISTINCT])}
        return summary

    def as_markdown(self) -> str:
        """A table a person reads at a glance in the Dagster UI."""
        lines = [
            "| column | count | nulls/NaN | mean | std | min | max | histogram [0,1] |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, s in self.columns.items():
            bars = _sparkline(s.histogram.reshape(10, -1).sum(axis=1)) if s.histogram is not None else ""
            lines.append(
                f"| {name} | {s.count:,} | {s.nulls + s.nans:,} | {_fmt(s.mean)} | {_fmt(s.std)} | "
                f"{_fmt(s.minimum if s.count else None)} | {_fmt(s.maximum if s.count else None)} | {bars} |"
            )
        for name, counts in self.value_counts.items():
            top = ", ".join(f"{k}: {v:,}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])[:5])
            lines.append(f"| {name} | {sum(counts.values()):,} | | | | | | {top} |")
        return "\n".join(lines)


# Integer labels spanning at most this many values (class labels) are counted by comparisons, which
# is ten times quicker than hashing them; wider ranges and strings are hashed.
COMPARED_RANGE = 16


def _value_counts(column: pa.Array) -> list[tuple[Any, int]]:
    """Each distinct value of ``column`` (None for nulls) and how often it occurs."""
    if pa.types.is_integer(column.type) and len(column) > column.null_count:
        values = (column.drop_null() if column.null_count else column).to_numpy()
        low, high = int(values.min()), int(values.max())
        if high - low < COMPARED_RANGE:
            counts = [(value, int(np.count_nonzero(values == value))) for value in range(low, high + 1)]
            if column.null_count:
                counts.append((None, column.null_count))
            return [(value, count) for value, count in counts if count]
    return [(entry["values"], entry["counts"]) for entry in pc.value_counts(column).to_pylist()]


def _looks_like_label(name: str) -> bool:
    return name in ("label", "predict", "prediction", "class") or name.endswith("_label")


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def _sparkline(counts: np.ndarray) -> str:
    blocks = " ▁▂▃▄▅▆▇█"
    top = counts.max() or 1
    return "".join(blocks[round(8 * c / top)] for c in counts)


def label_column(schema: pa.Schema) -> str | None:
    """The predicted class: a label-like name, else the first integer or string column."""
    named = [f.name for f in schema if _looks_like_label(f.name) and not pa.types.is_floating(f.type)]
    if named:
        return named[0]
    return next((f.name for f in schema if pa.types.is_integer(f.type) or pa.types.is_string(f.type)), None)


@dataclass
class Comparison:
    """Champion vs one challenger on the same rows: label agreement, and the mean absolute difference
    of every score column the two share (by name, else the score columns by position)."""

    challenger: Any  # the challenger's ModelVersion
    rows: int = 0
    label_rows: int = 0
    agreeing: int = 0
    abs_diffs: dict[str, float] = field(default_factory=dict)
    diff_rows: dict[str, int] = field(default_factory=dict)
    score_columns: list[str] = field(default_factory=list)
    """The champion's score columns (``ml_assets.resources.core.predictions.score_columns``)."""

    def update(self, champion: pa.RecordBatch, challenger: pa.RecordBatch) -> None:
        self.rows += champion.num_rows
        labels = label_column(champion.schema), label_column(challenger.schema)
        if all(labels):
            a = champion.column(labels[0])
            b = challenger.column(labels[1])
            if a.type != b.type:
                a, b = a.cast(pa.string()), b.cast(pa.string())
            equal = pc.equal(a, b)
            self.agreeing += pc.sum(equal).as_py() or 0
            self.label_rows += len(equal) - equal.null_count
        if not self.score_columns:
            self.score_columns = score_columns(champion.schema)
        for ours, theirs in _paired_scores(champion.schema, challenger.schema):
            diff = np.abs(
                champion.column(ours).to_numpy(zero_copy_only=False).astype(np.float64)
                - challenger.column(theirs).to_numpy(zero_copy_only=False)
            )
            diff = diff[np.isfinite(diff)]
            self.abs_diffs[ours] = self.abs_diffs.get(ours, 0.0) + float(diff.sum())
            self.diff_rows[ours] = self.diff_rows.get(ours, 0) + len(diff)

    @property
    def agreement(self) -> float | None:
        return self.agreeing / self.label_rows if self.label_rows else None

    @property
    def mean_abs_diff(self) -> float | None:
        """Over the champion's score columns (every class of a multiclass model)."""
        return self.mean_abs_diff_of(self.score_columns)

    def mean_abs_diff_of(self, columns: list[str]) -> float | None:
        means = [self.abs_diffs[c] / self.diff_rows[c] for c in columns if self.diff_rows.get(c)]
        return float(np.mean(means)) if means else None


def _paired_scores(champion: pa.Schema, challenger: pa.Schema) -> list[tuple[str, str]]:
    """Float columns both give under one name; else the two models' score columns by position."""
    theirs = {f.name for f in challenger if pa.types.is_floating(f.type)}
    shared = [(f.name, f.name) for f in champion if pa.types.is_floating(f.type) and f.name in theirs]
    if shared:
        return shared
    a, b = score_columns(champion), score_columns(challenger)
    return list(zip(a, b, strict=True)) if len(a) == len(b) else []
