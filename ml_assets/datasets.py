"""Parquet datasets on local disk or any fsspec URL: finding a partition, reading it in chunks,
and writing a partition's output so that readers see the old file or the new one, never half.
"""

from __future__ import annotations

import contextlib
import json
import os
import string
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ml_assets.resources.core.errors import DatasetError

METADATA_KEY = b"ml_assets"
OUTPUT_FILE = "part-0.parquet"
# Readers (pyarrow datasets, Spark, polars) skip names starting with "_" or ".".
TEMP_PREFIX = "_inprogress-"


def _filesystem(uri: str, storage_options: Mapping[str, Any]) -> tuple[pafs.FileSystem, str]:
    """Arrow's own local filesystem for paths (fastest); fsspec (s3fs, gcsfs, ...) for URLs."""
    if "://" not in uri or uri.startswith("file://"):
        path = uri.removeprefix("file://")
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri, **dict(storage_options))
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


@dataclass(frozen=True)
class ParquetDataset:
    """A Parquet dataset: a folder of Parquet files, partitioned hive-style or by a path template.

    Args:
        uri: a local path or fsspec URL. Either the root of a hive-partitioned dataset
            (``s3://bucket/events`` holding ``date=2026-11-01/...``) or a template with one
            placeholder (``/data/events/{date}/`` or ``.../{date}.parquet``).
        partition_column: the hive key (``date``); for templates, the placeholder's name.
        storage_options: passed to fsspec (e.g. ``{"endpoint_url": ..., "key": ...}`` for s3fs).
    """

    uri: str
    partition_column: str | None = None
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_template(self) -> bool:
        return any(name for _, name, _, _ in string.Formatter().parse(self.uri) if name is not None)

    def partition_uri(self, partition: str | None) -> str:
        """Where one partition lives; the dataset's own URI when ``partition`` is None."""
        if partition is None:
            if self.is_template:
                msg = f"dataset {self.uri} is a path template; name a partition to fill it in"
                raise DatasetError(msg)
            return self.uri
        if self.is_template:
            names = {name for _, name, _, _ in string.Formatter().parse(self.uri) if name}
            return self.uri.format(**dict.fromkeys(names, partition))
        if not self.partition_column:
            msg = f"dataset {self.uri} has no partition_column; cannot locate partition {partition!r}"
            raise DatasetError(msg)
        return f"{self.uri.rstrip('/')}/{self.partition_column}={partition}"

    def describe(self, partition: str | None) -> str:
        if partition is None:
            return f"dataset {self.uri}"
        return f"partition {self.partition_column or 'partition'}={partition} ({self.partition_uri(partition)})"


class PartitionReader:
    """One partition's Parquet files, checked up front and read as chunks of at most ``chunk_rows``.

    Opening reads every file's footer: a corrupt file fails here, naming the file, before
    anything is written; the total row count comes for free.
    """

    def __init__(self, dataset: ParquetDataset, partition: str | None) -> None:
        self.dataset = dataset
        self.partition = partition
        self.where = dataset.describe(partition)
        uri = dataset.partition_uri(partition)
        self.filesystem, self.path = _filesystem(uri, dataset.storage_options)
        info = self.filesystem.get_file_info(self.path)
        if info.type == pafs.FileType.NotFound:
            msg = f"{self.where}: not found"
            raise DatasetError(msg)
        try:
            self._dataset = pads.dataset(self.path, filesystem=self.filesystem, format="parquet")
        except (pa.ArrowInvalid, OSError) as exc:
            msg = f"{self.where}: cannot open as Parquet: {exc}"
            raise DatasetError(msg) from exc
        self.files = list(self._dataset.files)
        if not self.files:
            msg = f"{self.where}: holds no Parquet files"
            raise DatasetError(msg)
        self.num_rows = 0
        for fragment in self._dataset.get_fragments():
            try:
                self.num_rows += fragment.metadata.num_rows
            except (pa.ArrowInvalid, OSError) as exc:
                msg = f"{self.where}: file {fragment.path} is not readable Parquet: {exc}"
                raise DatasetError(msg) from exc

    @property
    def schema(self) -> pa.Schema:
        return self._dataset.schema

    def null_counts(self, columns: list[str]) -> dict[str, int]:
        """Nulls per column from the footers' statistics, without reading data (0 where none recorded)."""
        counts = dict.fromkeys(columns, 0)
        for fragment in self._dataset.get_fragments():
            metadata = fragment.metadata
            names = metadata.schema.names
            for i in range(metadata.num_row_groups):
                row_group = metadata.row_group(i)
                for name in columns:
                    if name in names:
                        stats = row_group.column(names.index(name)).statistics
                        if stats is not None and stats.has_null_count:
                            counts[name] += stats.null_count
        return counts

    def batches(self, columns: list[str], chunk_rows: int) -> Iterator[pa.RecordBatch]:
        """Chunks in file order. Read-ahead is bounded so memory follows chunk size, not partition size."""
        scanner = self._dataset.scanner(
            columns=columns,
            batch_size=chunk_rows,
            batch_readahead=4,
            fragment_readahead=2,
            use_threads=True,
            # pre_buffer caches every column chunk it read until the file is closed: memory would
            # grow with the file. Without it, Arrow reads row group by row group.
            fragment_scan_options=pads.ParquetFragmentScanOptions(pre_buffer=False),
        )
        for batch in scanner.to_batches():
            if batch.num_rows:
                yield batch


class AtomicPartitionWriter:
    """Writes one partition's output under a temporary name and commits it with one rename.

    Local files are renamed (atomic on POSIX); object stores get a server-side copy of the
    finished object (readers see the whole object or none). Until ``commit``, the final path
    keeps whatever it held before; ``abort`` removes the temporary file.
    """

    # Small chunks make small row groups; buffering to this many rows keeps reads of the output fast.
    ROW_GROUP_ROWS = 262_144

    def __init__(
        self, dataset: ParquetDataset, partition: str | None, schema: pa.Schema, metadata: Mapping[str, Any]
    ) -> None:
        uri = dataset.partition_uri(partition)
        self.filesystem, base = _filesystem(uri, dataset.storage_options)
        self.final_path = base if base.endswith(".parquet") else f"{base.rstrip('/')}/{OUTPUT_FILE}"
        folder, name = self.final_path.rsplit("/", 1)
        self.temp_path = f"{folder}/{TEMP_PREFIX}{uuid.uuid4().hex[:12]}-{name}"
        self.uri = uri if uri.endswith(".parquet") else f"{uri.rstrip('/')}/{OUTPUT_FILE}"
        self.filesystem.create_dir(folder, recursive=True)
        self.schema = schema.with_metadata({METADATA_KEY: json.dumps(dict(metadata), default=str).encode()})
        dictionary_columns = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_dictionary(f.type)]
        self._stream = self.filesystem.open_output_stream(self.temp_path)
        self._writer = pq.ParquetWriter(
            self._stream, self.schema, use_dictionary=dictionary_columns or False, compression="snappy"
        )
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self.rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        self._pending.append(batch)
        self._pending_rows += batch.num_rows
        self.rows += batch.num_rows
        if self._pending_rows >= self.ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            table = pa.Table.from_batches(self._pending, schema=self.schema)
            self._writer.write_table(table, row_group_size=max(self._pending_rows, 1))
            self._pending, self._pending_rows = [], 0

    def commit(self) -> str:
        self._flush()
        self._writer.close()
        self._stream.close()
        if isinstance(self.filesystem, pafs.LocalFileSystem):
            fd = os.open(self.temp_path, os.O_RDONLY)
            try:
                os.fsync(fd)  # the rename must not outrun the data on a crash
            finally:
                os.close(fd)
        self.filesystem.move(self.temp_path, self.final_path)
        return self.uri

    def abort(self) -> None:
        # Closing may fail again after a failed write; the temporary file goes either way.
        for close in (self._writer.close, self._stream.close):
            with contextlib.suppress(OSError, pa.ArrowException):
                close()
        with contextlib.suppress(OSError):
            self.filesystem.delete_file(self.temp_path)


def read_lineage(uri: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The model lineage recorded in an output file's Parquet metadata."""
    filesystem, path = _filesystem(uri, storage_options or {})
    schema = pq.read_schema(path, filesystem=filesystem)
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        msg = f"{uri} carries no ml_assets metadata; it was not written by this plugin"
        raise DatasetError(msg)
    return json.loads(raw)
