"""Score in-memory frames, Polars or Arrow, with the same pipeline as Parquet partitions. No Dagster here.

    score_frame(model, polars.DataFrame | polars.LazyFrame) -> ScoredFrame holding a polars.DataFrame
    score_frame(model, pyarrow.Table | pyarrow.RecordBatchReader) -> ScoredFrame holding a pyarrow.Table
    iter_scored_batches(model, any of those) -> pyarrow.RecordBatch chunks, for callers that sink them

Every input is cut into chunks of exactly ``chunk_rows`` rows (the last one shorter) and goes
through ``ml_assets.scoring``'s pipeline: the same casts to the model's input types, null checks,
passthrough and version columns, scoring pool and summaries as ``score_partition``. A LazyFrame
runs on Polars' streaming engine (``collect_batches``) and only the columns the model and the
passthrough need are selected, so projections and filters reach the scan and memory follows
``chunk_rows``, not the data. Polars is imported only when a Polars frame is passed.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

import pyarrow as pa

from ml_assets.datasets import METADATA_KEY, FileBatch, fixed_widths
from ml_assets.reconcile import NumericStrings
from ml_assets.resources.core.errors import DatasetError, ScoringError
from ml_assets.resources.core.models import ModelVersion
from ml_assets.scoring import NullPolicy, _Lane, _pipeline, _Plan, auto_chunk_rows, check_chunk_rows
from ml_assets.service import LoadedModel
from ml_assets.summary import ScoreSummary

if TYPE_CHECKING:
    import polars as pl

Frame = TypeVar("Frame")
FrameFamily = Literal["polars", "arrow"]


@dataclass
class ScoredFrame(Generic[Frame]):
    """The scored frame (passthrough + prediction columns [+ version column]) and its lineage.

    ``frame`` is a ``polars.DataFrame`` for Polars input and a ``pyarrow.Table`` for Arrow input;
    an Arrow table carries the lineage in its schema metadata, so ``pyarrow.parquet.write_table``
    records it in the file for ``read_lineage``.
    """

    frame: Frame
    version: ModelVersion
    rows: int
    seconds: float
    chunks: int
    chunk_rows: int
    summary: ScoreSummary = field(repr=False)
    prediction_schema: pa.Schema = field(repr=False)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def lineage(self) -> dict[str, str]:
        """The model facts to keep next to the scores (name, version, URI, run id, aliases)."""
        return self.version.lineage()


@dataclass(frozen=True)
class _FrameSource:
    """A frame as the pipeline sees it: its Arrow schema and a way to read some of its columns in batches."""

    where: str
    schema: pa.Schema
    family: FrameFamily
    rows: int | None  # None where only reading tells (LazyFrame, RecordBatchReader)
    read: Callable[[list[str], int], Iterator[pa.RecordBatch]]  # columns, in batches of about this many rows
    row_bytes: Callable[[list[str]], int]  # of these columns (``auto_chunk_rows``)
    read_errors: tuple[type[BaseException], ...] = (pa.ArrowInvalid, OSError)


class ScoredBatches:
    """Scored chunks of a frame as ``pyarrow.RecordBatch``es, in input order, made as they are consumed.

    ``schema`` (with the model lineage in its metadata) is known before the first batch, so a
    sink can be opened first; ``rows``, ``chunks``, ``seconds`` and ``summary`` are complete once
    the iteration ends. Stopping early (``close()``, leaving a ``with`` block, ``break``) stops
    the read-ahead and the scoring threads. Get one from ``iter_scored_batches``.
    """

    def __init__(
        self,
        model: LoadedModel,
        frame: Any,
        *,
        chunk_rows: int | None,
        passthrough: Sequence[str],
        nulls: NullPolicy,
        version_column: str | None,
        queue_depth: int | None,
        name: str,
        numeric_strings: NumericStrings = "error",
    ) -> None:
        if chunk_rows is not None:
            check_chunk_rows(chunk_rows)
        self.version = model.version
        self._source = _open(frame, where=name)
        #: ``polars`` or ``arrow``: the kind of frame that came in.
        self.family: FrameFamily = self._source.family
        plan = _Plan(
            self._source,
            model.scorer,
            model.version,
            passthrough=passthrough,
            nulls=nulls,
            numeric_strings=numeric_strings,
            version_column=version_column,
        )
        self._lane = _Lane(model.scorer, model.version, plan)
        lineage = json.dumps(model.version.lineage()).encode()
        self.schema: pa.Schema = plan.output_schema.with_metadata({METADATA_KEY: lineage})
        self.prediction_schema: pa.Schema = model.scorer.output_schema
        self.rows = 0
        self.chunks = 0
        self.seconds = 0.0
        #: Rows per chunk: as asked for, else as ``auto_chunk_rows`` chose for the frame's width (for a
        #: LazyFrame or a RecordBatchReader, final once the first batch is read: see ``_measured``).
        self.chunk_rows = chunk_rows or auto_chunk_rows(self._source.row_bytes(plan.read_columns))
        self._measure_first = chunk_rows is None and self._source.rows is None
        self._queue_depth = queue_depth
        self._batches = self._run()

    @property
    def summary(self) -> ScoreSummary:
        return self._lane.summary

    def _run(self) -> Iterator[pa.RecordBatch]:
        started = time.perf_counter()
        plan = self._lane.plan
        read = self._source.read(plan.read_columns, self.chunk_rows)
        if self._measure_first:
            read, self.chunk_rows = _measured(read, self.chunk_rows)
        batches = (FileBatch(b, None, 0) for b in _rechunk(read, self.chunk_rows))
        pipeline = _pipeline(
            batches,
            [self._lane],
            queue_depth=self._queue_depth,
            where=self._source.where,
            read_errors=self._source.read_errors,
        )
        with contextlib.closing(pipeline) as scored:
            for item in scored:
                self.rows += item.chunk.num_rows
                self.chunks += 1
                self.seconds = time.perf_counter() - started
                yield item.outputs[0].replace_schema_metadata(self.schema.metadata)
        if self._source.rows is not None and self.rows != self._source.rows:
            msg = f"{self._source.where}: scored {self.rows} rows but the frame has {self._source.rows}"
            raise ScoringError(msg)
        self.seconds = time.perf_counter() - started

    def __iter__(self) -> ScoredBatches:
        return self

    def __next__(self) -> pa.RecordBatch:
        return next(self._batches)

    def close(self) -> None:
        """Stop scoring: the read-ahead and the scoring threads end before this returns."""
        self._batches.close()

    def __enter__(self) -> ScoredBatches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_scored_batches(
    model: LoadedModel,
    frame: pl.DataFrame | pl.LazyFrame | pa.Table | pa.RecordBatch | pa.RecordBatchReader,
    *,
    chunk_rows: int | None = None,
    passthrough: Sequence[str] = (),
    nulls: NullPolicy = "error",
    version_column: str | None = None,
    queue_depth: int | None = None,
    name: str = "frame",
    numeric_strings: NumericStrings = "error",
) -> ScoredBatches:
    """Score ``frame`` chunk by chunk, yielding Arrow record batches for a sink of the caller's.

    Arrow batches whatever the input, so any Arrow sink takes them, and ``pl.from_arrow`` makes
    a Polars frame of one without a copy. Nothing runs until the first batch is asked for.

    Example:
        ```python
        lazy = pl.scan_parquet("features/*.parquet").filter(pl.col("country") == "FR")
        with iter_scored_batches(model, lazy, passthrough=["id"]) as scored:
            with pq.ParquetWriter("scores.parquet", scored.schema) as writer:  # lineage in the footer
                for batch in scored:
                    writer.write_batch(batch)
        ```

    Args: see ``score_frame``.
    """
    return ScoredBatches(
        model,
        frame,
        chunk_rows=chunk_rows,
        passthrough=passthrough,
        nulls=nulls,
        version_column=version_column,
        queue_depth=queue_depth,
        name=name,
        numeric_strings=numeric_strings,
    )


@overload
def score_frame(
    model: LoadedModel,
    frame: pl.DataFrame | pl.LazyFrame,
    *,
    chunk_rows: int | None = ...,
    passthrough: Sequence[str] = ...,
    nulls: NullPolicy = ...,
    version_column: str | None = ...,
    queue_depth: int | None = ...,
    name: str = ...,
    numeric_strings: NumericStrings = ...,
) -> ScoredFrame[pl.DataFrame]: ...


@overload
def score_frame(
    model: LoadedModel,
    frame: pa.Table | pa.RecordBatch | pa.RecordBatchReader,
    *,
    chunk_rows: int | None = ...,
    passthrough: Sequence[str] = ...,
    nulls: NullPolicy = ...,
    version_column: str | None = ...,
    queue_depth: int | None = ...,
    name: str = ...,
    numeric_strings: NumericStrings = ...,
) -> ScoredFrame[pa.Table]: ...


def score_frame(
    model: LoadedModel,
    frame: Any,
    *,
    chunk_rows: int | None = None,
    passthrough: Sequence[str] = (),
    nulls: NullPolicy = "error",
    version_column: str | None = None,
    queue_depth: int | None = None,
    name: str = "frame",
    numeric_strings: NumericStrings = "error",
) -> ScoredFrame[Any]:
    """Score a Polars or Arrow frame with ``model`` and return the scores in the same kind of frame.

    Polars in (``DataFrame``, or ``LazyFrame`` streamed in chunks), a ``polars.DataFrame`` out;
    Arrow in (``Table``, ``RecordBatch``, ``RecordBatchReader``), a ``pyarrow.Table`` out. The output
    holds the passthrough columns, the model's prediction columns and, if asked, a version column,
    row for row in input order. Memory for the input follows ``chunk_rows`` for a LazyFrame or a
    RecordBatchReader; the output is kept whole (use ``iter_scored_batches`` to sink it instead).

    Example:
        ```python
        with ModelService.from_uri("mlflow", "sqlite:///mlflow.db") as models:
            scored = score_frame(models.open("models:/fraud@champion"), df, passthrough=["id"])
        scored.frame  # polars.DataFrame: id, label, probability_0, probability_1
        scored.version.version, scored.rows_per_second, scored.summary.as_dict()
        ```

    Args:
        model: a resolved and loaded model, e.g. ``ModelService(...).open("models:/fraud@champion")``.
        frame: the rows to score; the model's input columns are found by name and cast safely to
            the model's input types.
        chunk_rows: rows per chunk handed to the model. Default: 65,536, fewer for wide inputs (at most
            ``CHUNK_BYTES`` of the columns read per chunk: measured on an in-memory frame; for a LazyFrame
            or a RecordBatchReader, which tell no sizes before they are read, on its first batch).
        passthrough: input columns copied to the output beside the predictions (e.g. keys).
        nulls: ``error`` rejects nulls in features, naming chunk, row and column; ``pass`` hands
            them to the model as missing values.
        version_column: if set, a column of that name holding the model version on every row.
        queue_depth: chunks in flight between reading and collecting (default: 2 per scoring thread + 2).
        name: what error messages call the frame (``frame, chunk 2 (rows 4-5): column 'f0' ...``).
        numeric_strings: ``parse`` lets text columns feed numeric model inputs (see ``score_partition``).
    """
    scored = iter_scored_batches(
        model,
        frame,
        chunk_rows=chunk_rows,
        passthrough=passthrough,
        nulls=nulls,
        version_column=version_column,
        queue_depth=queue_depth,
        name=name,
        numeric_strings=numeric_strings,
    )
    with scored:
        table = pa.Table.from_batches(list(scored), schema=scored.schema)
    out: Any = table
    if scored.family == "polars":
        import polars as pl

        out = pl.from_arrow(table, rechunk=False)
    return ScoredFrame(
        frame=out,
        version=scored.version,
        rows=scored.rows,
        seconds=scored.seconds,
        chunks=scored.chunks,
        chunk_rows=scored.chunk_rows,
        summary=scored.summary,
        prediction_schema=scored.prediction_schema,
    )


def _open(frame: Any, *, where: str) -> _FrameSource:
    if isinstance(frame, pa.RecordBatch):
        frame = pa.Table.from_batches([frame])
    if isinstance(frame, pa.Table):
        table = frame
        return _FrameSource(
            where,
            table.schema,
            "arrow",
            table.num_rows,
            lambda c, _: iter(table.select(c).to_batches()),
            lambda c: table.select(c).nbytes // max(1, table.num_rows),
        )
    if isinstance(frame, pa.RecordBatchReader):
        reader = frame
        stream = (lambda c, _: (b.select(c) for b in reader), _streamed_row_bytes(reader.schema))
        return _FrameSource(where, reader.schema, "arrow", None, *stream)
    # A Polars frame exists only if Polars was imported: no import here otherwise.
    pl = sys.modules.get("polars")
    if pl is not None and isinstance(frame, pl.DataFrame | pl.LazyFrame):
        errors = (pa.ArrowInvalid, OSError, pl.exceptions.PolarsError)
        if isinstance(frame, pl.DataFrame):
            df = frame
            schema = pl.DataFrame(schema=df.schema).to_arrow().schema
            return _FrameSource(
                where,
                schema,
                "polars",
                df.height,
                lambda c, _: iter(df.select(c).to_arrow().to_batches()),
                lambda c: int(df.select(c).estimated_size()) // max(1, df.height),
                errors,
            )
        lazy = frame
        try:
            polars_schema = lazy.collect_schema()
        except pl.exceptions.PolarsError as exc:
            msg = f"{where}: the LazyFrame's query does not resolve: {exc}"
            raise DatasetError(msg) from exc

        def read_lazy(columns: list[str], chunk_rows: int) -> Iterator[pa.RecordBatch]:
            # Polars' streaming engine, buffering chunk_rows rows per batch.
            for df in lazy.select(columns).collect_batches(chunk_size=chunk_rows, maintain_order=True):
                yield from df.to_arrow().to_batches()

        schema = pl.DataFrame(schema=polars_schema).to_arrow().schema
        return _FrameSource(where, schema, "polars", None, read_lazy, _streamed_row_bytes(schema), errors)
    kinds = "polars.DataFrame, polars.LazyFrame, pyarrow.Table, pyarrow.RecordBatch or pyarrow.RecordBatchReader"
    msg = f"{where}: cannot score a {type(frame).__module__}.{type(frame).__qualname__}; expected a {kinds}"
    raise TypeError(msg)


def _streamed_row_bytes(schema: pa.Schema) -> Callable[[list[str]], int]:
    """A stream's width before it is read: its fixed-width columns only (text has no size until read)."""
    widths = fixed_widths(schema)
    return lambda columns: sum(widths.get(c, 0) for c in columns)


def _measured(batches: Iterator[pa.RecordBatch], chunk_rows: int) -> tuple[Iterator[pa.RecordBatch], int]:
    """A stream's chunk size from its first rows' own width: before it is read, its text counted as nothing, and
    ten columns of 225-byte values made chunks of 150 MB where 64 MiB was meant. The stream's batches are cut to
    that size; the stream itself was asked for ``chunk_rows`` rows a batch, so one of them may be larger."""
    first = next((batch for batch in batches if batch.num_rows), None)
    if first is None:
        return iter(()), chunk_rows
    return itertools.chain([first], batches), min(chunk_rows, auto_chunk_rows(-(-first.nbytes // first.num_rows)))


def _rechunk(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """Batches of exactly ``rows`` rows (the last one shorter): big ones sliced without a copy, small ones joined."""
    pending: list[pa.RecordBatch] = []
    have = 0
    for batch in batches:
        offset = 0
        while offset < batch.num_rows:
            take = min(rows - have, batch.num_rows - offset)
            pending.append(batch.slice(offset, take))
            have += take
            offset += take
            if have == rows:
                yield _concat(pending)
                pending, have = [], 0
    if have:
        yield _concat(pending)


def _concat(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    if len(batches) == 1:
        return batches[0]
    return pa.Table.from_batches(batches).combine_chunks().to_batches()[0]
