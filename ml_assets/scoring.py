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
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ml_assets.datasets import AtomicPartitionWriter, FileBatch, ParquetDataset, PartitionReader
from ml_assets.quarantine import (
    NO_FAILURES,
    OnRowError,
    RowErrorReport,
    RowErrorTally,
    Screened,
    error_budget,
    errors_dataset,
    errors_schema,
    score_rows,
    screen,
)
from ml_assets.reconcile import Conversion, NumericStrings, ValueRefused, cast, conversion, schema_problems
from ml_assets.resources.core.errors import CastError, DatasetError, MlAssetsError, SchemaMismatchError, ScoringError
from ml_assets.resources.core.models import ModelVersion, Scorer
from ml_assets.summary import Comparison, ScoreSummary

if TYPE_CHECKING:
    from ml_assets.ray_engine import RayEngine

NullPolicy = Literal["error", "pass"]
DEFAULT_CHUNK_ROWS = 65_536
# Unless asked for a number of rows, a chunk holds at most this many bytes of input columns: with 1,000
# float32 features, 65,536-row chunks (262 MB) took 2-3x the time and 2.5x the peak memory (3.1 GB) of
# 16,384-row ones (64 MB), the kernel mapping and zeroing fresh pages for every chunk (8-11 s of system
# CPU in a 6-7 s run). Narrow inputs keep DEFAULT_CHUNK_ROWS (20 float32 features: 5 MB).
CHUNK_BYTES = 64 * 2**20
# A partition that makes at least MANY_CHUNKS chunks of LARGE_CHUNK_ROWS (~8.4M rows) is scored in them: half the Python
# steps per row (lr with the default outputs on 20M rows, four alternating pairs: +5.5% rows/s), while enough
# chunks remain to keep every scoring thread busy to the end (rf on 2M rows lost 3% in 15 chunks instead of 31;
# on 20M rows it was the same). docs/columnar.md has the measurements.
LARGE_CHUNK_ROWS = 131_072
MANY_CHUNKS = 64
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
    chunk_rows: int
    """Rows per chunk: as asked for, else as ``auto_chunk_rows`` chose for the input's width."""
    summary: ScoreSummary = field(repr=False)
    prediction_schema: pa.Schema | None = field(default=None, repr=False)
    row_errors: RowErrorReport | None = None
    challengers: list[ScoringResult] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    reader: str = ""
    """The Parquet decoder that read the input (``polars``, or ``pyarrow: <why not Polars>``)."""

    @property
    def rows_per_second(self) -> float:
        return self.rows_out / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class _Chunk:
    index: int
    first_row: int
    num_rows: int
    passthrough: pa.RecordBatch
    # Where the chunk's rows come from: one file (None for a frame) and the row, in it, of the first.
    file: str | None = None
    file_row: int = 0

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
    """Which columns to read, and how each file's batch becomes model input and passthrough output.

    Every file is judged by its own footer's schema with ``ml_assets.reconcile``'s rules (the same
    ones the signature check applies): a file that lacks a model input, or holds one in a type that
    can never become the model's, fails here, naming the file, before any row is read. ``features``
    then casts each batch straight from its file's types to the model's.
    """

    def __init__(
        self,
        reader: PartitionReader | _Source,
        scorer: Scorer,
        version: ModelVersion,
        *,
        passthrough: Sequence[str],
        nulls: NullPolicy,
        version_column: str | None,
        numeric_strings: NumericStrings = "error",
    ) -> None:
        self.where = reader.where
        self.version = version
        self.nulls = nulls
        self.version_column = version_column
        self.numeric_strings = numeric_strings
        self.inputs = scorer.input_schema
        if isinstance(reader, PartitionReader):
            files: list[tuple[str | None, pa.Schema]] = [(f.path, f.schema) for f in reader.files]
            self._names: dict[str | None, str] = {f.path: f.name for f in reader.files}
        else:
            files, self._names = [(None, reader.schema)], {}
        named = [(self._names.get(path), schema) for path, schema in files]
        problems = schema_problems(named, self.inputs, numeric_strings=numeric_strings)
        if problems.missing:
            msg = f"{self.where}: {version.describe()} needs column(s) {problems.describe_missing()}"
            raise SchemaMismatchError(msg)
        if problems.refused:
            msg = f"{self.where}: {problems.describe_refused(version.describe())}"
            raise SchemaMismatchError(msg)
        rules: dict[pa.Schema, list[Conversion]] = {}
        self._rules = {
            path: rules.setdefault(
                schema,
                [conversion(schema.field(f.name).type, f.type, numeric_strings=numeric_strings) for f in self.inputs],
            )
            for path, schema in files
        }
        # A hive partition's key is in the path, not the files; passthrough of it is a constant.
        key = _partition_key(reader)
        self.constants: dict[str, str] = {}
        types: dict[str, pa.DataType] = {}
        for name in passthrough:
            lacking = [path for path, schema in files if name not in schema.names]
            if len(lacking) == len(files) and key is not None and name == key[0]:
                self.constants[name] = key[1]
            elif lacking:
                where = "the data" if lacking == [None] else f"file {self._names[lacking[0]]}"
                more = f" (nor {len(lacking) - 1} more file(s))" if len(lacking) > 1 else ""
                have = ", ".join(dict(files)[lacking[0]].names)
                msg = f"{self.where}: passthrough column {name!r} is not in {where}{more}; {where} has: {have}"
                raise SchemaMismatchError(msg)
            else:
                types[name] = self._passthrough_type(name, files)
        self.passthrough = [n for n in passthrough if n not in self.constants]
        self.read_columns = list(dict.fromkeys([*self.inputs.names, *self.passthrough]))
        outputs = scorer.output_schema
        clash = [n for n in outputs.names if n in passthrough or n == version_column]
        if clash:
            msg = f"{self.where}: prediction column(s) {clash} clash with passthrough/lineage columns of the same name"
            raise SchemaMismatchError(msg)
        fields = [pa.field(n, types[n]) for n in self.passthrough]
        fields += [pa.field(n, pa.dictionary(pa.int32(), pa.string())) for n in self.constants]
        fields += list(outputs)
        if version_column:
            fields.append(pa.field(version_column, pa.dictionary(pa.int32(), pa.string())))
        self.output_schema = pa.schema(fields)
        self.passthrough_schema = pa.schema(fields[: len(self.passthrough) + len(self.constants)])
        self._passthrough_rules = {
            path: [Conversion(schema.field(n).type, types[n], "same" if schema.field(n).type == types[n] else "checked")
                   for n in self.passthrough]
            for path, schema in files
        }  # fmt: skip

    def _passthrough_type(self, name: str, files: list[tuple[str | None, pa.Schema]]) -> pa.DataType:
        """One output type for a passthrough column the files hold in different types: the narrowest
        that holds every file's values (int32 and int64 -> int64; dictionary and plain text -> text)."""
        found = {schema.field(name).type: path for path, schema in files}
        if len(found) == 1:
            return next(iter(found))
        plain = [pa.schema([pa.field(name, _decoded(t))]) for t in found]
        try:
            return pa.unify_schemas(plain, promote_options="permissive").field(name).type
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            described = ", ".join(f"{t} in file {self._names.get(path)}" for t, path in found.items())
            msg = f"{self.where}: passthrough column {name!r} has types that do not unify: {described}"
            raise SchemaMismatchError(msg) from None

    def _at(self, piece: FileBatch, index: int, first_row: int) -> str:
        return f"{self.where}, chunk {index} (rows {first_row}-{first_row + piece.batch.num_rows - 1})"

    def _row(self, piece: FileBatch, row: int, first_row: int) -> str:
        """Row ``row`` of ``piece``: in the partition, and in its file."""
        if piece.file is None:
            return f"row {first_row + row}"
        return f"row {first_row + row} (file {self._names[piece.file]}, its row {piece.file_row + row})"

    def _cast(
        self, piece: FileBatch, column: pa.Array, name: str, rule: Conversion, index: int, first_row: int, what: str
    ) -> pa.Array:
        found = rule.found  # the file's own type, as its footer says: what messages name
        if column.type != found:
            # The reader's layout of the footer's type (Polars hands text as large_string): same values, same rule.
            rule = conversion(column.type, rule.expected, numeric_strings=self.numeric_strings)
            if rule.kind == "same":
                return column
        try:
            return cast(column, rule)
        except ValueRefused as exc:
            file = self._names.get(piece.file)
            msg = (
                f"{self._at(piece, index, first_row)}: column {name!r} ({found}) cannot be cast safely to "
                f"{rule.expected}, {what}: the first value that does not fit is at "
                f"{self._row(piece, exc.row, first_row)}: {exc.detail}"
            )
            raise CastError(
                msg,
                file=file,
                column=name,
                row=first_row + exc.row,
                file_row=piece.file_row + exc.row,
                found=str(found),
                expected=str(rule.expected),
            ) from None

    def conversions(self, piece: FileBatch) -> list[Conversion]:
        """How each model input of ``piece`` becomes the model's type: its file's rules, for the layout
        the reader handed the columns in (as ``_cast`` does)."""
        batch = piece.batch
        return [
            rule
            if batch.column(f.name).type == rule.found
            else conversion(batch.column(f.name).type, rule.expected, numeric_strings=self.numeric_strings)
            for f, rule in zip(self.inputs, self._rules[piece.file], strict=True)
        ]

    def features(self, piece: FileBatch, index: int, first_row: int) -> pa.RecordBatch:
        """The model's input columns of one file's batch, cast from that file's types to the model's.

        A pure function of the batch: the same batch gives the same columns or the same
        ``SchemaMismatchError`` (a ``CastError`` naming file, column, row and types for a value that
        does not fit), so a caller may set rows aside and call it again."""
        batch = piece.batch
        columns = []
        for f, rule in zip(self.inputs, self._rules[piece.file], strict=True):
            column = batch.column(f.name)
            if column.null_count and self.nulls == "error":
                row = pc.index(pc.is_null(column), True).as_py()
                msg = (
                    f"{self._at(piece, index, first_row)}: column {f.name!r} has {column.null_count} null(s), the "
                    f"first at {self._row(piece, row, first_row)}; the model expects no nulls (set nulls='pass' to "
                    "score them as missing values)"
                )
                raise SchemaMismatchError(msg)
            if rule.kind != "same" or column.type != rule.found:
                column = self._cast(piece, column, f.name, rule, index, first_row, "the model's type")
            columns.append(column)
        return pa.RecordBatch.from_arrays(columns, schema=self.inputs)

    def passthrough_batch(self, piece: FileBatch, index: int = 0, first_row: int = 0) -> pa.RecordBatch:
        batch = piece.batch
        columns = [
            self._cast(piece, batch.column(n), n, rule, index, first_row, "the column's type in the output")
            if rule.kind != "same" or batch.column(n).type != rule.found
            else batch.column(n)
            for n, rule in zip(self.passthrough, self._passthrough_rules[piece.file], strict=True)
        ]
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


def _decoded(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


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
    # With on_row_error="quarantine": the most rows of the partition that may fail (the error budget).
    quarantine_limit: int | None = None

    def submit(self, pool: ThreadPoolExecutor, piece: FileBatch, index: int, first_row: int) -> Future[Any]:
        """Start scoring one chunk: the model's predictions, or with quarantine a ``Screened`` chunk."""
        if self.quarantine_limit is None:
            return pool.submit(self.scorer.score, self.plan.features(piece, index, first_row))
        limit = self.quarantine_limit
        batch = piece.batch
        try:
            kept, keep, failures = screen(
                batch, self.plan.inputs, self.plan.conversions(piece), nulls=self.plan.nulls, limit=limit
            )
        except MlAssetsError as exc:
            rows = f"rows {first_row}-{first_row + batch.num_rows - 1}"
            raise type(exc)(f"{self.plan.where}, chunk {index} ({rows}): {exc}") from exc
        features = self.plan.features(FileBatch(kept, piece.file, piece.file_row), index, first_row)
        return pool.submit(self._screened, features, keep, failures, limit - failures.num_rows)

    def _screened(self, features: pa.RecordBatch, keep: np.ndarray | None, failures: pa.Table, limit: int) -> Screened:
        predictions, scored, model_failures = score_rows(
            self.scorer.score, features, self.scorer.output_schema, limit=limit
        )
        if scored is None:
            return Screened(predictions, keep, failures)
        kept_rows = np.arange(len(scored)) if keep is None else np.flatnonzero(keep)
        model_failures = model_failures.set_column(
            0, "row", pa.array(kept_rows[model_failures.column("row").to_numpy()], pa.int64())
        )
        if keep is None:
            keep = np.ones(len(scored), dtype=bool)
        keep = keep.copy()
        keep[kept_rows[~scored]] = False
        every = pa.concat_tables([failures, model_failures]).sort_by("row")
        return Screened(predictions, keep, every)

    def outcome(self, chunk: _Chunk, future: Future[Any]) -> Screened:
        """One chunk's predictions (checked), which rows they are of and the failures of the others."""
        if self.quarantine_limit is None:
            return Screened(self.predictions(chunk, future), None, NO_FAILURES)
        screened: Screened = self._result(chunk, future)
        return Screened(self._checked(chunk, screened.predictions), screened.keep, screened.failures)

    def predictions(self, chunk: _Chunk, future: Future[pa.RecordBatch]) -> pa.RecordBatch:
        return self._checked(chunk, self._result(chunk, future))

    def _result(self, chunk: _Chunk, future: Future[Any]) -> Any:
        where = f"{self.plan.where}, chunk {chunk.index} ({chunk.rows})"
        try:
            return future.result()
        except MlAssetsError as exc:
            raise type(exc)(f"{where}: {exc}") from exc
        except Exception as exc:  # a runtime's own error type: keep it, name the chunk
            msg = f"{where}: {self.version.describe()} failed: {exc}"
            raise ScoringError(msg) from exc

    def _checked(self, chunk: _Chunk, predictions: pa.RecordBatch) -> pa.RecordBatch:
        if predictions.schema != self.scorer.output_schema:
            predictions = _conform(predictions, self.scorer.output_schema, self.plan, chunk)
        return predictions


@dataclass(frozen=True)
class _Scored:
    """One chunk after every lane scored it: per lane, the raw predictions and the output batch."""

    chunk: _Chunk
    predictions: list[pa.RecordBatch]
    outputs: list[pa.RecordBatch]
    # Per lane, with quarantine: which rows of the chunk were scored and why the others were not.
    outcomes: list[Screened] = field(default_factory=list)

    def compared(self, lane: int) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        """The champion's and lane ``lane``'s predictions of the rows both scored."""
        first, other = self.predictions[0], self.predictions[lane]
        if not self.outcomes or (self.outcomes[0].keep is None and self.outcomes[lane].keep is None):
            return first, other
        n = self.chunk.num_rows
        keep_first = self.outcomes[0].keep if self.outcomes[0].keep is not None else np.ones(n, dtype=bool)
        keep_other = self.outcomes[lane].keep if self.outcomes[lane].keep is not None else np.ones(n, dtype=bool)
        both = keep_first & keep_other
        return first.filter(pa.array(both[keep_first])), other.filter(pa.array(both[keep_other]))


def score_partition(
    scorer: Scorer,
    version: ModelVersion,
    source: ParquetDataset,
    dest: ParquetDataset,
    *,
    partition: str | None = None,
    chunk_rows: int | None = None,
    passthrough: Sequence[str] = (),
    nulls: NullPolicy = "error",
    numeric_strings: NumericStrings = "error",
    version_column: str | None = None,
    challengers: Sequence[Challenger] = (),
    queue_depth: int | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    extra_metadata: dict[str, Any] | None = None,
    engine: RayEngine | None = None,
    on_row_error: OnRowError = "fail",
    max_error_rate: float | None = None,
    max_error_rows: int | None = None,
) -> ScoringResult:
    """Score one partition of ``source`` with ``scorer`` and commit the output to ``dest``.

    Args:
        partition: the partition value (``2026-11-01``); None scores the whole dataset.
        chunk_rows: rows per chunk handed to the model; memory grows with it, not with the partition.
            Default: ``DEFAULT_CHUNK_ROWS`` (``LARGE_CHUNK_ROWS`` for partitions of ~8.4M rows or more), fewer
            where the input columns of a row are wide (at most ``CHUNK_BYTES`` of them per chunk, by
            ``auto_chunk_rows``).
        passthrough: input columns copied to the output beside the predictions (e.g. keys).
        nulls: ``error`` rejects nulls in features; ``pass`` hands them to the model as missing values.
        numeric_strings: ``error`` refuses a text column where the model takes numbers (or booleans);
            ``parse`` parses it, and text that is not a number is an error naming file, column and row.
        version_column: if set, a column of that name holding the model version on every row.
        challengers: more models scored in the same pass, each into its own output; the result
            compares each with ``scorer`` (agreement, mean absolute difference).
        queue_depth: chunks in flight between reading and writing (default: 2 per scoring thread + 2).
        engine: None reads and scores in this process; a ``RayEngine`` reads and scores on Ray actors
            (each loads ``version``, pinned) and streams the results back, in order, to this process's
            writer: the same plan, atomic commit, lineage and summaries.
        on_row_error: ``fail`` fails the run on the first row that cannot be scored; ``quarantine`` sets such
            rows aside in the errors dataset beside each output (``<root>_errors``, same partitioning and
            lineage, committed before the output) and scores the rest, within the error budget.
        max_error_rate, max_error_rows: the error budget of ``quarantine`` (either or both): at most this
            fraction of the partition's rows, at most this many rows. Over it the run fails, nothing committed.
    """
    if chunk_rows is not None:
        check_chunk_rows(chunk_rows)
    budget = error_budget(on_row_error, max_error_rate=max_error_rate, max_error_rows=max_error_rows)
    if budget is not None and engine is not None:
        msg = "on_row_error='quarantine' scores in this process; the Ray engine does not quarantine rows"
        raise ValueError(msg)
    started = time.perf_counter()
    reader = PartitionReader(source, partition)
    if reader.num_rows == 0:
        msg = f"{reader.where}: the partition is empty (0 rows in {len(reader.files)} file(s)); nothing to score"
        raise DatasetError(msg)
    models = [(scorer, version, dest), *((c.scorer, c.version, c.dest) for c in challengers)]
    limit = None if budget is None else budget.allowed(reader.num_rows)
    lanes = [
        _Lane(
            s,
            v,
            _Plan(
                reader,
                s,
                v,
                passthrough=passthrough,
                nulls=nulls,
                numeric_strings=numeric_strings,
                version_column=version_column,
            ),
            quarantine_limit=limit,
        )
        for s, v, _ in models
    ]
    comparisons = [Comparison(lane.version) for lane in lanes[1:]]
    read_columns = list(dict.fromkeys(c for lane in lanes for c in lane.plan.read_columns))
    chunk_rows = chunk_rows or auto_chunk_rows(reader.row_bytes(read_columns), reader.num_rows)
    writers: list[AtomicPartitionWriter] = []
    # With quarantine, per output: its errors' writer and tally. Their commits come first.
    error_writers: list[AtomicPartitionWriter] = []
    tallies = [] if budget is None else [RowErrorTally(budget, reader.num_rows) for _ in lanes]
    commit_id = uuid.uuid4().hex
    chunks = 0
    try:
        for lane, (_, lane_version, lane_dest) in zip(lanes, models, strict=True):
            metadata = {
                **lane_version.lineage(),
                "partition": partition,
                "input": reader.where,
                **(extra_metadata or {}),
            }
            if budget is not None:
                errors = AtomicPartitionWriter(
                    errors_dataset(lane_dest),
                    partition,
                    errors_schema(lane.plan.passthrough_schema),
                    {**metadata, "commit_id": commit_id, "errors_of": lane_dest.partition_uri(partition)},
                )
                error_writers.append(errors)
                metadata = {**metadata, "commit_id": commit_id, "errors_uri": errors.uri}
            writers.append(AtomicPartitionWriter(lane_dest, partition, lane.plan.output_schema, metadata))
        if engine is None:
            batches = reader.batches(read_columns, chunk_rows)
            scored = _pipeline(batches, lanes, queue_depth=queue_depth, where=reader.where)
        else:
            scored = _scored_elsewhere(engine.scored_chunks(reader, [lane.plan for lane in lanes], chunk_rows), lanes)
        with contextlib.closing(scored):
            for item in scored:
                for writer, output in zip(writers, item.outputs, strict=True):
                    if output.num_rows:  # a chunk all quarantined leaves nothing to write
                        writer.write(output)
                for errors, tally, outcome in zip(error_writers, tallies, item.outcomes if budget else [], strict=True):
                    if outcome.failures.num_rows:
                        tally.add(outcome.failures, reader.where)
                        errors.write(_error_batch(item.chunk, outcome.failures, errors.schema))
                for lane_index, comparison in enumerate(comparisons, start=1):
                    comparison.update(*item.compared(lane_index))
                chunks += 1
                if on_progress is not None:
                    on_progress(Progress(chunks, writers[0].rows, reader.num_rows))
        for index, writer in enumerate(writers):
            quarantined = tallies[index].rows if tallies else 0
            if writer.rows + quarantined != reader.num_rows:
                msg = (
                    f"{reader.where}: wrote {writer.rows} rows and quarantined {quarantined} "
                    f"but the partition has {reader.num_rows}"
                )
                raise ScoringError(msg)
        # Errors first: whoever sees a new output can also see its errors (README, "Quarantine").
        errors_uris = [errors.commit() for errors in error_writers]
        uris = [writer.commit() for writer in writers]
    except BaseException:
        for writer in [*writers, *error_writers]:
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
            chunk_rows=chunk_rows,
            summary=lane.summary,
            prediction_schema=lane.scorer.output_schema,
            row_errors=tallies[index].report(errors_uris[index]) if tallies else None,
            reader=reader.reader_description if engine is None else "pyarrow: Ray actors read their row groups",
        )
        for index, (lane, writer, uri) in enumerate(zip(lanes, writers, uris, strict=True))
    ]
    results[0].challengers = results[1:]
    results[0].comparisons = comparisons
    return results[0]


def _error_batch(chunk: _Chunk, failures: pa.Table, schema: pa.Schema) -> pa.RecordBatch:
    """The errors dataset's rows for one chunk's failures: passthrough columns, file and row, stage, column, message."""
    rows = failures.column("row").to_numpy()
    passthrough = _rows_of(chunk.passthrough, rows)
    file = pa.DictionaryArray.from_arrays(pa.array(np.zeros(len(rows), np.int32)), pa.array([chunk.file], pa.string()))
    columns = [
        *passthrough.columns,
        file,
        pa.array(rows + chunk.file_row, pa.int64()),
        failures.column("stage").combine_chunks().dictionary_encode(),
        failures.column("column").combine_chunks(),
        failures.column("message").combine_chunks(),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=schema.remove_metadata())


def auto_chunk_rows(row_bytes: int, rows: int | None = None) -> int:
    """Rows per chunk when none are asked for: ``DEFAULT_CHUNK_ROWS`` (``LARGE_CHUNK_ROWS`` for a partition of
    ``rows`` that makes ``MANY_CHUNKS`` of those or more), fewer where ``row_bytes`` (the input columns of one
    row, decoded) would make a chunk larger than ``CHUNK_BYTES``."""
    many = rows is not None and rows >= MANY_CHUNKS * LARGE_CHUNK_ROWS
    return max(1, min(LARGE_CHUNK_ROWS if many else DEFAULT_CHUNK_ROWS, CHUNK_BYTES // max(1, row_bytes)))


def check_chunk_rows(chunk_rows: int) -> None:
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or not 1 <= chunk_rows <= MAX_CHUNK_ROWS:
        msg = f"chunk_rows must be an integer from 1 to {MAX_CHUNK_ROWS:,}, got {chunk_rows!r}"
        raise ValueError(msg)


_END = object()


def _pipeline(
    batches: Iterator[FileBatch],
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
                for piece in batches:
                    if stop.is_set():
                        return
                    futures = [lane.submit(pool, piece, index, first_row) for lane in lanes]
                    passthrough = lanes[0].plan.passthrough_batch(piece, index, first_row)
                    chunk = _Chunk(index, first_row, piece.batch.num_rows, passthrough, piece.file, piece.file_row)
                    if not put((chunk, futures)):
                        return
                    index += 1
                    first_row += piece.batch.num_rows
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
            outcomes = [lane.outcome(chunk, future) for lane, future in zip(lanes, futures, strict=True)]
            outputs = []
            for lane, outcome in zip(lanes, outcomes, strict=True):
                outputs.append(lane.plan.output_batch(_kept(chunk, outcome.keep), outcome.predictions))
                lane.summary.update(outcome.predictions)
            yield _Scored(chunk, [o.predictions for o in outcomes], outputs, outcomes)
        if failure:
            raise failure[0]
    finally:
        stop.set()
        _drain(in_flight)  # wakes a read-ahead blocked on a full queue
        reader.join()
        pool.shutdown(wait=True, cancel_futures=True)


def _kept(chunk: _Chunk, keep: np.ndarray | None) -> _Chunk:
    """The chunk's rows that were scored (all of them without quarantine)."""
    if keep is None:
        return chunk
    return _Chunk(chunk.index, chunk.first_row, int(keep.sum()), _rows_of(chunk.passthrough, keep), chunk.file)


def _rows_of(batch: pa.RecordBatch, rows: np.ndarray) -> pa.RecordBatch:
    """``batch`` filtered by a mask or taken at positions; a batch of no columns (no passthrough) stays one."""
    if not batch.num_columns:
        return batch
    return batch.filter(pa.array(rows)) if rows.dtype == np.bool_ else batch.take(pa.array(rows))


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


def _drain(q: queue.Queue[Any]) -> None:
    """Empty the queue so a producer blocked on put() wakes up and sees the failure."""
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return
