"""The streaming scoring core: one partition in, one committed output file per model out. No Dagster here.

    read (any iterator of record batches)
      -> prepare (select, cast, null check)        on a read-ahead thread
      -> score (up to scorer.concurrency at once)  on a thread pool; the runtimes release the GIL
      -> write (in chunk order)                     on the calling thread, behind a bounded queue

The queue between scoring and writing holds futures in input order, so output order is input
order and the number of chunks alive at once is bounded: memory follows chunk size, not
partition size. ``_pipeline`` is that part, shared by ``score_partition`` (Parquet partitions)
and ``ml_assets.frames`` (Polars and Arrow frames): it yields scored chunks in order and the
caller sinks them. ``score_partition`` writes under a temporary name and renames into place only
after the last chunk, so a failure or a kill leaves the final path as it was. Challengers ride
along in the same pass: each chunk is read once and scored by every model.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ml_assets.checks import schema_problems
from ml_assets.datasets import AtomicPartitionWriter, ParquetDataset, PartitionReader
from ml_assets.resources.core.errors import DatasetError, MlAssetsError, SchemaMismatchError, ScoringError
from ml_assets.resources.core.models import ModelVersion, Scorer
from ml_assets.summary import Comparison, ScoreSummary

if TYPE_CHECKING:
    from ml_assets.ray_engine import RayEngine

NullPolicy = Literal["error", "pass"]
DEFAULT_CHUNK_ROWS = 65_536
# One chunk is held in memory (several, in flight): past this a typo, not a tuning.
MAX_CHUNK_ROWS = 16_777_216
_POLL_S = 0.2


@dataclass(frozen=True)
class Progress:
    chunks: int
    rows_done: int
    rows_total: int


@dataclass
class ScoringResult:
    version: ModelVersion
    partition: str | None
    output_uri: str
    rows_in: int
    rows_out: int
    seconds: float
    chunks: int
    summary: ScoreSummary = field(repr=False)
    prediction_schema: pa.Schema | None = field(default=None, repr=False)
    challengers: list[ScoringResult] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        return self.rows_out / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class _Chunk:
    index: int
    first_row: int
    num_rows: int
    passthrough: pa.RecordBatch

    @property
    def rows(self) -> str:
        return f"rows {self.first_row}-{self.first_row + self.num_rows - 1}"


class _Source(Protocol):
    """What a plan needs of its input: a name for messages and the Arrow schema of its batches."""

    @property
    def where(self) -> str: ...

    @property
    def schema(self) -> pa.Schema: ...


class _Plan:
    """Which columns to read, and how each chunk becomes model input and passthrough output."""

    def __init__(
        self,
        reader: PartitionReader | _Source,
        scorer: Scorer,
        version: ModelVersion,
        *,
        passthrough: Sequence[str],
        nulls: NullPolicy,
        version_column: str | None,
    ) -> None:
        self.where = reader.where
        self.version = version
        self.nulls = nulls
        self.version_column = version_column
        self.inputs = scorer.input_schema
        data = reader.schema
        missing, incompatible = schema_problems(data, self.inputs)
        if missing:
            msg = (
                f"{self.where}: {version.describe()} needs column(s) {', '.join(missing)} that the data does not "
                f"have; the data has: {', '.join(data.names)}"
            )
            raise SchemaMismatchError(msg)
        if incompatible:
            msg = f"{self.where}: column {'; column '.join(incompatible)} ({version.describe()})"
            raise SchemaMismatchError(msg)
        # A hive partition's key is in the path, not the files; passthrough of it is a constant.
        key = _partition_key(reader)
        self.constants: dict[str, str] = {}
        for name in passthrough:
            if name not in data.names:
                if key is not None and name == key[0]:
                    self.constants[name] = key[1]
                    continue
                have = ", ".join(data.names)
                msg = f"{self.where}: passthrough column {name!r} is not in the data; the data has: {have}"
                raise SchemaMismatchError(msg)
        self.passthrough = [n for n in passthrough if n not in self.constants]
        self.read_columns = list(dict.fromkeys([*self.inputs.names, *self.passthrough]))
        outputs = scorer.output_schema
        clash = [n for n in outputs.names if n in passthrough or n == version_column]
        if clash:
            msg = f"{self.where}: prediction column(s) {clash} clash with passthrough/lineage columns of the same name"
            raise SchemaMismatchError(msg)
        fields = [data.field(n) for n in self.passthrough]
        fields += [pa.field(n, pa.dictionary(pa.int32(), pa.string())) for n in self.constants]
        fields += list(outputs)
        if version_column:
            fields.append(pa.field(version_column, pa.dictionary(pa.int32(), pa.string())))
        self.output_schema = pa.schema(fields)
        self.passthrough_schema = pa.schema(fields[: len(self.passthrough) + len(self.constants)])

    def features(self, batch: pa.RecordBatch, index: int, first_row: int) -> pa.RecordBatch:
        rows = f"chunk {index} (rows {first_row}-{first_row + batch.num_rows - 1})"
        columns = []
        for f in self.inputs:
            column = batch.column(f.name)
            if column.null_count and self.nulls == "error":
                row = first_row + pc.index(pc.is_null(column), True).as_py()
                msg = (
                    f"{self.where}, {rows}: column {f.name!r} has {column.null_count} null(s), the first at row "
                    f"{row}; the model expects no nulls (set nulls='pass' to score them as missing values)"
                )
                raise SchemaMismatchError(msg)
            if column.type != f.type:
                try:
                    column = pc.cast(column, f.type, safe=True)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    msg = (
                        f"{self.where}, {rows}: column {f.name!r} ({column.type}) cannot be cast safely "
                        f"to {f.type}: {exc}"
                    )
                    raise SchemaMismatchError(msg) from None
            columns.append(column)
        return pa.RecordBatch.from_arrays(columns, schema=self.inputs)

    def passthrough_batch(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        columns = [batch.column(n) for n in self.passthrough]
        columns += [_constant(v, batch.num_rows) for v in self.constants.values()]
        return pa.RecordBatch.from_arrays(columns, schema=self.passthrough_schema)

    def output_batch(self, chunk: _Chunk, predictions: pa.RecordBatch) -> pa.RecordBatch:
        if predictions.num_rows != chunk.num_rows:
            msg = (
                f"{self.where}, chunk {chunk.index} ({chunk.rows}): {self.version.describe()} returned "
                f"{predictions.num_rows} rows for {chunk.num_rows}"
            )
            raise ScoringError(msg)
        columns = [*chunk.passthrough.columns, *predictions.columns]
        if self.version_column:
            columns.append(_constant(self.version.version, predictions.num_rows))
        return pa.RecordBatch.from_arrays(columns, schema=self.output_schema)


def _partition_key(reader: PartitionReader | _Source) -> tuple[str, str] | None:
    """(column, value) of the hive partition being read, if any."""
    if isinstance(reader, PartitionReader) and reader.partition is not None and reader.dataset.partition_column:
        return reader.dataset.partition_column, reader.partition
    return None


def _constant(value: str, rows: int) -> pa.DictionaryArray:
    """A constant string column that costs 4 bytes a row, not a string a row."""
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, dtype=np.int32)), pa.array([value]))


@dataclass(frozen=True)
class Challenger:
    """A second model scored in the same pass over the input, into its own output."""

    scorer: Scorer
    version: ModelVersion
    dest: ParquetDataset


@dataclass
class _Lane:
    """One model's path through a pass: its plan and its running summary."""

    scorer: Scorer
    version: ModelVersion
    plan: _Plan
    summary: ScoreSummary = field(default_factory=ScoreSummary)

    def predictions(self, chunk: _Chunk, future: Future[pa.RecordBatch]) -> pa.RecordBatch:
        where = f"{self.plan.where}, chunk {chunk.index} ({chunk.rows})"
        try:
            predictions = future.result()
        except MlAssetsError as exc:
            raise type(exc)(f"{where}: {exc}") from exc
        except Exception as exc:  # a runtime's own error type: keep it, name the chunk
            msg = f"{where}: {self.version.describe()} failed: {exc}"
            raise ScoringError(msg) from exc
        if predictions.schema != self.scorer.output_schema:
            predictions = _conform(predictions, self.scorer.output_schema, self.plan, chunk)
        return predictions


@dataclass(frozen=True)
class _Scored:
    """One chunk after every lane scored it: per lane, the raw predictions and the output batch."""

    chunk: _Chunk
    predictions: list[pa.RecordBatch]
    outputs: list[pa.RecordBatch]


def score_partition(
    scorer: Scorer,
    version: ModelVersion,
    source: ParquetDataset,
    dest: ParquetDataset,
    *,
    partition: str | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    passthrough: Sequence[str] = (),
    nulls: NullPolicy = "error",
    version_column: str | None = None,
    challengers: Sequence[Challenger] = (),
    queue_depth: int | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    extra_metadata: dict[str, Any] | None = None,
    engine: RayEngine | None = None,
) -> ScoringResult:
    """Score one partition of ``source`` with ``scorer`` and commit the output to ``dest``.

    Args:
        partition: the partition value (``2026-11-01``); None scores the whole dataset.
        chunk_rows: rows per chunk handed to the model; memory grows with it, not with the partition.
        passthrough: input columns copied to the output beside the predictions (e.g. keys).
        nulls: ``error`` rejects nulls in features; ``pass`` hands them to the model as missing values.
        version_column: if set, a column of that name holding the model version on every row.
        challengers: more models scored in the same pass, each into its own output; the result
            compares each with ``scorer`` (agreement, mean absolute difference).
        queue_depth: chunks in flight between reading and writing (default: 2 per scoring thread + 2).
        engine: None reads and scores in this process; a ``RayEngine`` reads and scores on Ray actors
            (each loads ``version``, pinned) and streams the results back, in order, to this process's
            writer: the same plan, atomic commit, lineage and summaries.
    """
    check_chunk_rows(chunk_rows)
    started = time.perf_counter()
    reader = PartitionReader(source, partition)
    if reader.num_rows == 0:
        msg = f"{reader.where}: the partition is empty (0 rows in {len(reader.files)} file(s)); nothing to score"
        raise DatasetError(msg)
    models = [(scorer, version, dest), *((c.scorer, c.version, c.dest) for c in challengers)]
    lanes = [
        _Lane(s, v, _Plan(reader, s, v, passthrough=passthrough, nulls=nulls, version_column=version_column))
        for s, v, _ in models
    ]
    comparisons = [Comparison(lane.version) for lane in lanes[1:]]
    read_columns = list(dict.fromkeys(c for lane in lanes for c in lane.plan.read_columns))
    writers: list[AtomicPartitionWriter] = []
    chunks = 0
    try:
        for lane, (_, lane_version, lane_dest) in zip(lanes, models, strict=True):
            metadata = {
                **lane_version.lineage(),
                "partition": partition,
                "input": reader.where,
                **(extra_metadata or {}),
            }
            writers.append(AtomicPartitionWriter(lane_dest, partition, lane.plan.output_schema, metadata))
        if engine is None:
            batches = reader.batches(read_columns, chunk_rows)
            scored = _pipeline(batches, lanes, queue_depth=queue_depth, where=reader.where)
        else:
            scored = _scored_elsewhere(engine.scored_chunks(reader, [lane.plan for lane in lanes], chunk_rows), lanes)
        with contextlib.closing(scored):
            for item in scored:
                for writer, output in zip(writers, item.outputs, strict=True):
                    writer.write(output)
                for comparison, predictions in zip(comparisons, item.predictions[1:], strict=True):
                    comparison.update(item.predictions[0], predictions)
                chunks += 1
                if on_progress is not None:
                    on_progress(Progress(chunks, writers[0].rows, reader.num_rows))
        if writers[0].rows != reader.num_rows:
            msg = f"{reader.where}: wrote {writers[0].rows} rows but the partition has {reader.num_rows}"
            raise ScoringError(msg)
        uris = [writer.commit() for writer in writers]
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    seconds = time.perf_counter() - started
    results = [
        ScoringResult(
            version=lane.version,
            partition=reader.partition,
            output_uri=uri,
            rows_in=reader.num_rows,
            rows_out=writer.rows,
            seconds=seconds,
            chunks=chunks,
            summary=lane.summary,
            prediction_schema=lane.scorer.output_schema,
        )
        for lane, writer, uri in zip(lanes, writers, uris, strict=True)
    ]
    results[0].challengers = results[1:]
    results[0].comparisons = comparisons
    return results[0]


def check_chunk_rows(chunk_rows: int) -> None:
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or not 1 <= chunk_rows <= MAX_CHUNK_ROWS:
        msg = f"chunk_rows must be an integer from 1 to {MAX_CHUNK_ROWS:,}, got {chunk_rows!r}"
        raise ValueError(msg)


_END = object()


def _pipeline(
    batches: Iterator[pa.RecordBatch],
    lanes: Sequence[_Lane],
    *,
    queue_depth: int | None,
    where: str,
    read_errors: tuple[type[BaseException], ...] = (pa.ArrowInvalid, OSError),
) -> Iterator[_Scored]:
    """Score ``batches`` with every lane and yield them in input order, summaries updated.

    A read-ahead thread prepares each chunk and submits it to the scoring pool; the caller's
    thread waits for the chunks in order and sinks them (writes a file, builds a frame, hands a
    batch on). At most ``queue_depth`` chunks are in flight. Closing the generator early (a
    failed write, a consumer that stops) stops the read-ahead and the pool before it returns.
    ``read_errors`` are the source's own failures, raised as ``DatasetError`` naming the chunk.
    """
    workers = sum(max(1, int(getattr(lane.scorer, "concurrency", 1))) for lane in lanes)
    in_flight: queue.Queue[Any] = queue.Queue(maxsize=queue_depth or 2 * workers + 2)
    stop = threading.Event()
    failure: list[BaseException] = []

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                in_flight.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def read_ahead() -> None:
        index = first_row = 0
        try:
            try:
                for batch in batches:
                    if stop.is_set():
                        return
                    futures = [
                        pool.submit(lane.scorer.score, lane.plan.features(batch, index, first_row)) for lane in lanes
                    ]
                    chunk = _Chunk(index, first_row, batch.num_rows, lanes[0].plan.passthrough_batch(batch))
                    if not put((chunk, futures)):
                        return
                    index += 1
                    first_row += batch.num_rows
            except read_errors as exc:
                msg = f"{where}: reading chunk {index} (from row {first_row}) failed: {exc}"
                raise DatasetError(msg) from exc
        except BaseException as exc:  # noqa: BLE001 -- handed to the consuming thread, which re-raises it
            failure.append(exc)
        finally:
            put(_END)

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ml-assets-score")
    reader = threading.Thread(target=read_ahead, name="ml-assets-read-ahead", daemon=True)
    try:
        reader.start()
        while (item := in_flight.get()) is not _END:
            chunk, futures = item
            predictions = [lane.predictions(chunk, future) for lane, future in zip(lanes, futures, strict=True)]
            outputs = []
            for lane, lane_predictions in zip(lanes, predictions, strict=True):
                outputs.append(lane.plan.output_batch(chunk, lane_predictions))
                lane.summary.update(lane_predictions)
            yield _Scored(chunk, predictions, outputs)
        if failure:
            raise failure[0]
    finally:
        stop.set()
        _drain(in_flight)  # wakes a read-ahead blocked on a full queue
        reader.join()
        pool.shutdown(wait=True, cancel_futures=True)


def _scored_elsewhere(
    chunks: Iterator[tuple[_Chunk, list[pa.RecordBatch]]], lanes: Sequence[_Lane]
) -> Iterator[_Scored]:
    """Chunks an engine scored (Ray actors), arriving in input order, through the same checks,
    output batches and summaries as chunks scored here."""
    with contextlib.closing(chunks):
        for chunk, predictions in chunks:
            checked = [lane.predictions(chunk, _done(p)) for lane, p in zip(lanes, predictions, strict=True)]
            outputs = []
            for lane, lane_predictions in zip(lanes, checked, strict=True):
                outputs.append(lane.plan.output_batch(chunk, lane_predictions))
                lane.summary.update(lane_predictions)
            yield _Scored(chunk, checked, outputs)


def _done(predictions: pa.RecordBatch) -> Future[pa.RecordBatch]:
    future: Future[pa.RecordBatch] = Future()
    future.set_result(predictions)
    return future


def _conform(predictions: pa.RecordBatch, schema: pa.Schema, plan: _Plan, chunk: _Chunk) -> pa.RecordBatch:
    if predictions.schema.names != schema.names:
        msg = (
            f"{plan.where}, chunk {chunk.index} ({chunk.rows}): {plan.version.describe()} returned columns "
            f"{predictions.schema.names}; expected {schema.names}"
        )
        raise ScoringError(msg)
    try:
        return predictions.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        msg = f"{plan.where}, chunk {chunk.index} ({chunk.rows}): predictions do not fit {schema}: {exc}"
        raise ScoringError(msg) from exc


def _done(predictions: pa.RecordBatch) -> Future[pa.RecordBatch]:
    future: Future[pa.RecordBatch] = Future()
    future.set_result(predictions)
    return future


def _drain(q: queue.Queue[Any]) -> None:
    """Empty the queue so a producer blocked on put() wakes up and sees the failure."""
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return
