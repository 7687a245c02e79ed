"""Rows that cannot be scored, set aside instead of failing the partition (``on_row_error="quarantine"``).

Each chunk is screened before the model sees it: rows with a null in a feature (``nulls="error"``) or a
value the file's conversion rules refuse (``ml_assets.reconcile``, the rules that fail a ``fail`` run)
leave the chunk with a row-level mask. If the model raises on the rest, or a remote server answers
400/422, the chunk is narrowed to the offending rows by bisection: ``2·k·log2(n)`` calls at most for
``k`` bad rows in ``n``, and never more than the error budget needs to be exceeded. Good rows are
scored as usual and keep their input order.

The rows set aside go to an errors dataset beside the output (``<root>_errors``, same partitioning and
lineage), committed before the output: whoever sees a new output can also see its errors. Over the budget
nothing is committed at all.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ml_assets.datasets import ParquetDataset
from ml_assets.reconcile import Conversion, ValueRefused, cast
from ml_assets.resources.core.errors import ErrorBudgetExceededError, MlAssetsError, RowsRejectedError

OnRowError = Literal["fail", "quarantine"]
Stage = Literal["cast", "null", "model", "remote"]
ERRORS_SUFFIX = "_errors"
# The errors dataset's own columns, after the passthrough columns.
ERROR_FIELDS = (
    pa.field("source_file", pa.dictionary(pa.int32(), pa.string())),
    pa.field("source_row", pa.int64()),
    pa.field("error_stage", pa.dictionary(pa.int32(), pa.string())),
    pa.field("error_column", pa.string()),
    pa.field("error_message", pa.string()),
)
TOP_REASONS = 5
# One chunk's failures before they get a file position: ``row`` is a position in the chunk.
_FAILURE_SCHEMA = pa.schema(
    [("row", pa.int64()), ("stage", pa.string()), ("column", pa.string()), ("message", pa.string())]
)


@dataclass(frozen=True)
class ErrorBudget:
    """How many rows of a partition may be quarantined before the run fails: at most ``max_error_rate``
    of its rows and at most ``max_error_rows`` rows (either or both)."""

    max_error_rate: float | None = None
    max_error_rows: int | None = None

    def __post_init__(self) -> None:
        if self.max_error_rate is None and self.max_error_rows is None:
            msg = "on_row_error='quarantine' needs an error budget: set max_error_rate and/or max_error_rows"
            raise ValueError(msg)
        if self.max_error_rate is not None and not 0.0 <= self.max_error_rate <= 1.0:
            msg = f"max_error_rate is a fraction of the partition's rows, 0 to 1; got {self.max_error_rate}"
            raise ValueError(msg)
        if self.max_error_rows is not None and self.max_error_rows < 0:
            msg = f"max_error_rows must be 0 or more, got {self.max_error_rows}"
            raise ValueError(msg)

    def allowed(self, rows: int) -> int:
        """The most rows of a partition of ``rows`` rows that may fail."""
        limits = []
        if self.max_error_rate is not None:
            # The rate is a fraction: 1e-9 keeps 0.07 * 100 (6.999...) at 7 rows.
            limits.append(int(self.max_error_rate * rows + 1e-9))
        if self.max_error_rows is not None:
            limits.append(self.max_error_rows)
        return min(limits)

    def describe(self) -> str:
        parts = []
        if self.max_error_rate is not None:
            parts.append(f"max_error_rate={self.max_error_rate:g}")
        if self.max_error_rows is not None:
            parts.append(f"max_error_rows={self.max_error_rows}")
        return " and ".join(parts)


def error_budget(
    on_row_error: OnRowError, *, max_error_rate: float | None, max_error_rows: int | None
) -> ErrorBudget | None:
    """The budget of a quarantine run; None for ``fail``, which takes no budget."""
    if on_row_error == "fail":
        if max_error_rate is not None or max_error_rows is not None:
            msg = "max_error_rate/max_error_rows apply only with on_row_error='quarantine'"
            raise ValueError(msg)
        return None
    if on_row_error != "quarantine":
        msg = f"on_row_error must be 'fail' or 'quarantine', got {on_row_error!r}"
        raise ValueError(msg)
    return ErrorBudget(max_error_rate, max_error_rows)


def errors_dataset(dest: ParquetDataset) -> ParquetDataset:
    """The errors dataset beside ``dest``: its root with ``_errors`` appended, the same layout and partitioning
    (``s3://b/scores/date=.../`` -> ``s3://b/scores_errors/date=.../``)."""
    root = dest.root.rstrip("/")
    uri = f"{root}{ERRORS_SUFFIX}{dest.uri[len(root) :]}"
    staging = f"{dest.staging_uri.rstrip('/')}/errors" if dest.staging_uri else None
    return ParquetDataset(
        uri,
        partition_column=dest.partition_column,
        storage_options=dest.storage_options,
        staging_uri=staging,
        compression=dest.compression,
    )


def errors_schema(passthrough: pa.Schema) -> pa.Schema:
    clash = [f.name for f in ERROR_FIELDS if f.name in passthrough.names]
    if clash:
        msg = f"passthrough column(s) {clash} clash with the errors dataset's own columns of the same name"
        raise ValueError(msg)
    return pa.schema([*passthrough, *ERROR_FIELDS])


@dataclass(frozen=True)
class Screened:
    """One lane's chunk after quarantine: the predictions of the rows kept, which rows were kept (None:
    all of them) and why the others were not."""

    predictions: pa.RecordBatch
    keep: np.ndarray | None
    failures: pa.Table


# Tables are immutable: one empty table serves every clean chunk.
NO_FAILURES = _FAILURE_SCHEMA.empty_table()


def screen(
    batch: pa.RecordBatch,
    inputs: pa.Schema,
    conversions: Sequence[Conversion],
    *,
    nulls: Literal["error", "pass"],
    limit: int,
) -> tuple[pa.RecordBatch, np.ndarray | None, pa.Table]:
    """``batch`` (rows of one file) without the rows the model cannot take: a null in a feature
    (``nulls="error"``) or a value that ``conversions`` (the file's rules, ``ml_assets.reconcile``) do
    not let become the model's type. Returns (kept rows, mask of kept rows or None when all are kept,
    failures). A row's first problem, in feature order, is the one recorded. A clean column costs
    what scoring costs anyway: its null count and one cast."""
    n = batch.num_rows
    bad = np.zeros(n, dtype=bool)
    found: list[pa.Table] = []
    for f, rule in zip(inputs, conversions, strict=True):
        column = batch.column(f.name)
        if nulls == "error" and column.null_count:
            rows = np.flatnonzero(pc.is_null(column).to_numpy(zero_copy_only=False) & ~bad)
            message = f"null in feature {f.name!r}; the model expects a value (nulls='pass' hands it over as missing)"
            found.append(_failures(rows, "null", f.name, [message] * len(rows)))
            bad[rows] = True
        if rule.kind != "same":
            refused = _refused_values(column, rule, limit=limit)
            fresh = [(row, detail) for row, detail in refused if not bad[row]]
            rows = np.array([row for row, _ in fresh], dtype=np.int64)
            messages = [f"{f.name!r} ({rule.found}) does not cast safely to {rule.expected}: {d}" for _, d in fresh]
            found.append(_failures(rows, "cast", f.name, messages))
            bad[rows] = True
    if not bad.any():
        return batch, None, NO_FAILURES
    _check_limit(int(bad.sum()), limit, found)
    keep = ~bad
    return batch.filter(pa.array(keep)), keep, pa.concat_tables(found)


def _refused_values(column: pa.Array, rule: Conversion, *, limit: int) -> list[tuple[int, str]]:
    """(row, why) of each value of ``column`` that ``rule`` refuses. ``reconcile.cast`` names the first
    refused value of what it is given: cast the rest after it, at most ``limit + 1`` times."""
    refused: list[tuple[int, str]] = []
    start = 0
    while start < len(column) and len(refused) <= limit:
        try:
            cast(column.slice(start), rule)
        except ValueRefused as exc:
            refused.append((start + exc.row, exc.detail))
            start += exc.row + 1
            continue
        break
    return refused


def score_rows(
    score: Callable[[pa.RecordBatch], pa.RecordBatch],
    features: pa.RecordBatch,
    output_schema: pa.Schema,
    *,
    limit: int,
) -> tuple[pa.RecordBatch, np.ndarray | None, pa.Table]:
    """Predictions of ``features``; if the model raises on the chunk (or a server refuses it), the rows it
    raises on are found by bisection and left out. Returns (predictions, mask of the rows scored or None
    when all were, failures). Failures of the service itself (timeouts, 5xx, a dead worker) are raised."""
    n = features.num_rows
    if n == 0:
        return _empty(output_schema), None, NO_FAILURES
    try:
        return score(features), None, NO_FAILURES
    except Exception as exc:
        if not is_row_failure(exc):
            raise
        first = exc
    parts: list[pa.RecordBatch] = []

    def attempt(lo: int, hi: int) -> BaseException | None:
        if lo == 0 and hi == n:
            return first  # already tried
        try:
            parts.append(score(features.slice(lo, hi - lo)))
        except Exception as exc:
            if not is_row_failure(exc):
                raise
            return exc
        return None

    failed = _bisect(n, attempt, limit=limit)
    keep = np.ones(n, dtype=bool)
    rows = np.array([row for row, _ in failed], dtype=np.int64)
    keep[rows] = False
    stages = [getattr(exc, "stage", "model") for _, exc in failed]
    failures = pa.table(
        {
            "row": pa.array(rows, pa.int64()),
            "stage": pa.array(stages, pa.string()),
            "column": pa.nulls(len(rows), pa.string()),
            "message": pa.array([_short(exc) for _, exc in failed], pa.string()),
        },
        schema=_FAILURE_SCHEMA,
    )
    predictions = pa.Table.from_batches(parts, schema=parts[0].schema).combine_chunks() if parts else None
    if predictions is None:
        return _empty(output_schema), keep, failures
    return predictions.to_batches()[0] if predictions.num_rows else _empty(output_schema), keep, failures


def is_row_failure(exc: BaseException) -> bool:
    """Something about the rows (a model exception, a 400/422), not the service (timeouts, 5xx, a dead
    worker, a circuit open) and not this plugin's own checks."""
    return isinstance(exc, RowsRejectedError) or (isinstance(exc, Exception) and not isinstance(exc, MlAssetsError))


@dataclass
class RowErrorTally:
    """Running count of one output's quarantined rows, by stage and column, against the budget."""

    budget: ErrorBudget
    rows_total: int
    rows: int = 0
    by_reason: Counter[tuple[str, str | None]] = field(default_factory=Counter)
    examples: dict[tuple[str, str | None], str] = field(default_factory=dict)

    @property
    def allowed(self) -> int:
        return self.budget.allowed(self.rows_total)

    def add(self, failures: pa.Table, where: str) -> None:
        stages = failures.column("stage").to_pylist()
        columns = failures.column("column").to_pylist()
        messages = failures.column("message").to_pylist()
        for stage, column, message in zip(stages, columns, messages, strict=True):
            self.by_reason[stage, column] += 1
            self.examples.setdefault((stage, column), message)
        self.rows += failures.num_rows
        if self.rows > self.allowed:
            msg = (
                f"{where}: {self.rows} or more of {self.rows_total} rows cannot be scored, more than the error budget "
                f"allows ({self.budget.describe()}: {self.allowed} rows); nothing was committed. "
                f"Top reasons: {'; '.join(self.reasons())}"
            )
            raise ErrorBudgetExceededError(msg)

    def reasons(self) -> list[str]:
        return [
            f"{count} x {stage}{f' {column!r}' if column else ''}: {self.examples[stage, column]}"
            for (stage, column), count in self.by_reason.most_common(TOP_REASONS)
        ]

    def report(self, uri: str) -> RowErrorReport:
        return RowErrorReport(
            uri=uri,
            rows=self.rows,
            rows_total=self.rows_total,
            allowed=self.allowed,
            budget=self.budget,
            top_reasons=tuple(self.reasons()),
            by_stage=dict(_by_stage(self.by_reason)),
        )


def _by_stage(by_reason: Counter[tuple[str, str | None]]) -> Counter[str]:
    stages: Counter[str] = Counter()
    for (stage, _), count in by_reason.items():
        stages[stage] += count
    return stages


@dataclass(frozen=True)
class RowErrorReport:
    """What a quarantine run set aside: committed at ``uri`` before the output."""

    uri: str
    rows: int
    rows_total: int
    allowed: int
    budget: ErrorBudget
    top_reasons: tuple[str, ...]
    by_stage: dict[str, int]

    @property
    def rate(self) -> float:
        return self.rows / self.rows_total if self.rows_total else 0.0

    def metadata(self) -> dict[str, Any]:
        """Plain values for a materialization, an XCom or a Pipes report."""
        return {
            "row_errors": self.rows,
            "row_error_rate": round(self.rate, 6),
            "row_errors_allowed": self.allowed,
            "row_error_budget": self.budget.describe(),
            "row_errors_by_stage": dict(self.by_stage),
            "row_error_top_reasons": list(self.top_reasons),
            "errors_uri": self.uri,
        }


def _bisect(
    n: int, attempt: Callable[[int, int], BaseException | None], *, limit: int
) -> list[tuple[int, BaseException]]:
    """The rows of ``range(n)`` on which ``attempt(lo, hi)`` fails, in order, by halving failed ranges.
    Stops (raising) once more than ``limit`` rows failed: the budget is spent, narrowing further is waste."""
    failed: list[tuple[int, BaseException]] = []

    def visit(lo: int, hi: int) -> None:
        exc = attempt(lo, hi)
        if exc is None:
            return
        if hi - lo == 1:
            failed.append((lo, exc))
            if len(failed) > limit:
                msg = (
                    f"more than {limit} row(s) of the chunk fail, more than the error budget allows; the first: "
                    f"row {failed[0][0]} of the chunk: {_short(failed[0][1])}"
                )
                raise ErrorBudgetExceededError(msg)
            return
        mid = (lo + hi) // 2
        visit(lo, mid)
        visit(mid, hi)

    visit(0, n)
    return failed


def _check_limit(rows: int, limit: int, found: list[pa.Table]) -> None:
    if rows > limit:
        first = pa.concat_tables(found).slice(0, 1).to_pylist()[0]
        msg = (
            f"more than {limit} row(s) of the chunk fail, more than the error budget allows; the first: row "
            f"{first['row']} of the chunk: {first['message']}"
        )
        raise ErrorBudgetExceededError(msg)


def _failures(rows: np.ndarray, stage: Stage, column: str, messages: list[str]) -> pa.Table:
    return pa.table(
        {
            "row": pa.array(rows, pa.int64()),
            "stage": pa.array([stage] * len(rows), pa.string()),
            "column": pa.array([column] * len(rows), pa.string()),
            "message": pa.array(messages, pa.string()),
        },
        schema=_FAILURE_SCHEMA,
    )


def _empty(schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array([], f.type) for f in schema], schema=schema)


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
