"""The commit protocol as every reader sees it: a writer SIGKILLed at any point leaves the previous
output readable and unchanged for pyarrow datasets, Polars (directory and glob) and DuckDB (glob), on
local disk and on S3 (moto); the next run of the partition sweeps what the killed one left."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from ml_assets.datasets import AtomicPartitionWriter, ParquetDataset
from ml_assets.resources.core.errors import DatasetError
from tests.conftest import run_writer_script

WRITER = Path(__file__).with_name("commit_writer.py")
ROWS = 500_000  # 12 MB of incompressible doubles: a 5 MiB multipart part is out by the mid-write kill, two by the end
PARTITION = "2026-11-01"


def run_writer(spec: dict, *, pause_at: str | None = None, tmp_path: Path) -> None:
    run_writer_script(WRITER, spec, pause_at=pause_at, tmp_path=tmp_path)


class Store:
    """One place to write to and the four readers pointed at its output folder."""

    def __init__(self, root: str, storage_options: dict, polars_options: dict | None, fs=None) -> None:
        self.root, self.storage_options, self.polars_options, self.fs = root, storage_options, polars_options, fs

    def readers(self) -> dict[str, Callable[[], pa.Table]]:
        root = self.root.rstrip("/")
        pyarrow_fs = None
        path = root
        if self.fs is not None:
            self.fs.invalidate_cache()  # the test's own client must not answer from what it listed before
            pyarrow_fs = pa.fs.PyFileSystem(pa.fs.FSSpecHandler(self.fs))
            path = root.removeprefix("s3://")

        def duck() -> pa.Table:
            con = duckdb.connect()
            if self.fs is not None:
                con.register_filesystem(self.fs)
            return con.sql(f"select id, score from read_parquet('{root}/**/*.parquet')").to_arrow_table()

        return {
            "pyarrow.dataset": lambda: pads.dataset(path, filesystem=pyarrow_fs, partitioning="hive").to_table(),
            "polars directory": lambda: (
                pl.scan_parquet(f"{root}/", storage_options=self.polars_options).collect().to_arrow()
            ),
            "polars glob": lambda: (
                pl.scan_parquet(f"{root}/**/*.parquet", storage_options=self.polars_options).collect().to_arrow()
            ),
            "duckdb glob": duck,
        }

    def assert_every_reader_sees(self, value: float | None) -> None:
        """Each reader sees exactly one complete output whose every score is ``value`` (None: no output yet)."""
        for name, read in self.readers().items():
            if value is None:
                try:
                    table = read()
                except Exception:  # noqa: BLE001 -- each reader has its own "no files found" error
                    continue
                assert table.num_rows == 0, f"{name} read rows that were never committed"
                continue
            table = read()
            assert table.num_rows == ROWS, f"{name} read {table.num_rows} rows, expected {ROWS}"
            scores = set(table.column("score").to_pylist())
            assert scores == {value}, f"{name} read scores {sorted(scores)[:5]}, expected only {value}"
            ids = table.column("id").to_numpy()
            assert sorted(ids) == list(range(ROWS)), f"{name} read a mix of rows"


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> Store:
    if request.param == "local":
        return Store(str(tmp_path / "scores"), {}, None)
    return s3_store(request.getfixturevalue("s3_server"))


def s3_store(options: dict) -> Store:
    import s3fs

    bucket = f"commit-{time.monotonic_ns()}"
    fs = s3fs.S3FileSystem(**options, default_block_size=5 * 2**20, skip_instance_cache=True)
    fs.mkdir(bucket)
    polars_options = {
        "aws_endpoint_url": options["endpoint_url"],
        "aws_access_key_id": options["key"],
        "aws_secret_access_key": options["secret"],
        "aws_region": "us-east-1",
        "aws_allow_http": "true",
    }
    storage_options = {**options, "default_block_size": 5 * 2**20}
    return Store(f"s3://{bucket}/scores", storage_options, polars_options, fs)


def leftovers(store: Store, tmp_path: Path) -> list[str]:
    """What unfinished writes left anywhere: staging files on disk, open multipart uploads on S3."""
    if store.fs is None:
        staging = tmp_path / ".scores.ml-assets-staging"
        return (
            sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file()) if staging.exists() else []
        )
    bucket = store.root.removeprefix("s3://").split("/")[0]
    uploads = store.fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", [])
    return sorted(u["Key"] for u in uploads)


@pytest.mark.slow
def test_a_writer_killed_at_any_point_leaves_every_reader_the_previous_output(store, tmp_path):
    spec = {"uri": store.root, "partition": PARTITION, "rows": ROWS, "storage_options": store.storage_options}
    # Killed before anything was ever committed: no reader finds any file.
    run_writer({**spec, "value": 1.0}, pause_at="mid", tmp_path=tmp_path)
    store.assert_every_reader_sees(None)
    run_writer({**spec, "value": 1.0}, tmp_path=tmp_path)
    store.assert_every_reader_sees(1.0)
    assert leftovers(store, tmp_path) == []  # the run after the kill swept what it left
    for point in ("opened", "mid", "written"):
        run_writer({**spec, "value": 2.0}, pause_at=point, tmp_path=tmp_path)
        store.assert_every_reader_sees(1.0)
    # Killed writers leave staging files (outside the root); on S3, open uploads, invisible to readers.
    assert len(leftovers(store, tmp_path)) >= 2
    run_writer({**spec, "value": 3.0}, tmp_path=tmp_path)
    store.assert_every_reader_sees(3.0)
    assert leftovers(store, tmp_path) == []


def test_staging_is_outside_the_root_and_a_live_writer_is_not_swept(tmp_path):
    dataset = ParquetDataset(str(tmp_path / "scores"), partition_column="date")
    schema = pa.schema([("id", pa.int64())])
    first = AtomicPartitionWriter(dataset, PARTITION, schema, {})
    assert first.temp_path is not None
    assert Path(first.temp_path).parent == tmp_path / ".scores.ml-assets-staging" / f"date={PARTITION}"
    first.write(pa.record_batch([pa.array([1, 2])], schema=schema))
    # A second writer of the same partition starts while the first is alive: it leaves the first's file alone.
    second = AtomicPartitionWriter(dataset, PARTITION, schema, {})
    assert Path(first.temp_path).exists()
    assert first.commit() == f"{tmp_path}/scores/date={PARTITION}/part-0.parquet"
    second.write(pa.record_batch([pa.array([3])], schema=schema))
    second.commit()
    assert pq.read_table(tmp_path / "scores").column("id").to_pylist() == [3]
    assert list((tmp_path / ".scores.ml-assets-staging").rglob("*.*")) == []
    assert sorted(p.name for p in (tmp_path / "scores" / f"date={PARTITION}").iterdir()) == ["part-0.parquet"]


def test_the_next_run_removes_the_temporary_files_older_versions_left_in_the_output(tmp_path):
    folder = tmp_path / "scores" / f"date={PARTITION}"
    folder.mkdir(parents=True)
    legacy = folder / "_inprogress-0123456789ab-part-0.parquet"
    legacy.write_bytes(b"PAR1 truncated")  # what `kill -9` left before staging moved out of the root
    dataset = ParquetDataset(str(tmp_path / "scores"), partition_column="date")
    schema = pa.schema([("id", pa.int64())])
    writer = AtomicPartitionWriter(dataset, PARTITION, schema, {})
    writer.write(pa.record_batch([pa.array([7])], schema=schema))
    writer.commit()
    assert not legacy.exists()
    assert pl.read_parquet(f"{tmp_path}/scores/**/*.parquet")["id"].to_list() == [7]


def test_an_aborted_write_leaves_nothing_anywhere(tmp_path):
    dataset = ParquetDataset(str(tmp_path / "scores"), partition_column="date")
    schema = pa.schema([("id", pa.int64())])
    writer = AtomicPartitionWriter(dataset, PARTITION, schema, {})
    writer.write(pa.record_batch([pa.array([1])], schema=schema))
    writer.abort()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_staging_inside_the_root_or_on_another_filesystem_is_refused(tmp_path):
    schema = pa.schema([("id", pa.int64())])
    inside = ParquetDataset(str(tmp_path / "scores"), partition_column="date", staging_uri=str(tmp_path / "scores/.s"))
    with pytest.raises(DatasetError, match=r"staging folder .*/scores/\.s is inside the dataset root"):
        AtomicPartitionWriter(inside, PARTITION, schema, {})
    if os.stat("/dev/shm").st_dev != os.stat(tmp_path).st_dev:
        elsewhere = ParquetDataset(str(tmp_path / "scores"), partition_column="date", staging_uri="/dev/shm/mla-stage")
        with pytest.raises(DatasetError, match=r"is on another filesystem than .*; the commit must be one rename"):
            AtomicPartitionWriter(elsewhere, PARTITION, schema, {})


def test_object_stores_write_the_final_key_directly(s3_server):
    store = s3_store(s3_server)
    dataset = ParquetDataset(store.root, partition_column="date", storage_options=store.storage_options)
    schema = pa.schema([("id", pa.int64())])
    writer = AtomicPartitionWriter(dataset, PARTITION, schema, {})
    assert writer.temp_path is None
    writer.write(pa.record_batch([pa.array([1])], schema=schema))
    writer.abort()
    assert store.fs.find(store.root) == []
    writer = AtomicPartitionWriter(dataset, PARTITION, schema, {})
    writer.write(pa.record_batch([pa.array([2])], schema=schema))
    uri = writer.commit()
    store.fs.invalidate_cache()
    assert store.fs.find(store.root) == [uri.removeprefix("s3://")]


def test_output_is_encoded_as_measured_and_reads_back_exactly(tmp_path):
    """zstd but for the integers (delta-encoded), floats byte-stream-split, strings dictionary-encoded, a
    struct's fields each by their own kind (see output_encoding), row groups written by the encoding thread
    in the order the chunks came."""
    dataset = ParquetDataset(str(tmp_path / "scores"), partition_column="date")
    schema = pa.schema(
        [
            ("id", pa.int64()),
            ("probability_1", pa.float32()),
            ("segment", pa.string()),
            ("where", pa.struct([("x", pa.int32()), ("y", pa.float64())])),
        ]
    )
    writer = AtomicPartitionWriter(dataset, PARTITION, schema, {"model": "lr"})
    writer.ROW_GROUP_ROWS = 1_000
    rng = np.random.default_rng(0)
    expected = pa.table(
        {
            "id": rng.permutation(5_500).astype(np.int64),
            "probability_1": rng.random(5_500, dtype=np.float32),
            "segment": rng.choice(["a", "b", "c"], 5_500),
            "where": pa.StructArray.from_arrays(
                [pa.array(rng.integers(0, 9, 5_500), pa.int32()), pa.array(rng.random(5_500))], ["x", "y"]
            ),
        },
        schema=schema,
    )
    for batch in expected.to_batches(max_chunksize=700):
        writer.write(batch)
    pq_file = pq.ParquetFile(writer.commit())
    assert pq_file.read().cast(schema) == expected
    metadata = pq_file.metadata
    assert metadata.num_row_groups == 4  # 3 of 1,400 rows (two chunks of 700 reach 1,000) and the last 1,300
    group = metadata.row_group(0)
    column = {group.column(i).path_in_schema: group.column(i) for i in range(group.num_columns)}
    assert {path: c.compression for path, c in column.items()} == {
        "id": "UNCOMPRESSED",  # delta-packed: zstd found nothing left to take
        "probability_1": "ZSTD",
        "segment": "ZSTD",
        "where.x": "ZSTD",  # a struct's leaves are compressed, not left to the writer's default (none)
        "where.y": "ZSTD",
    }
    assert "DELTA_BINARY_PACKED" in column["id"].encodings
    assert "BYTE_STREAM_SPLIT" in column["probability_1"].encodings
    assert "RLE_DICTIONARY" in column["segment"].encodings


@pytest.mark.parametrize(
    ("compression", "parquet_codec"),
    [("zstd", "ZSTD"), ("lz4", "LZ4_RAW"), ("snappy", "SNAPPY"), ("none", "UNCOMPRESSED")],
)
def test_each_output_codec_compresses_all_but_the_integers_and_every_reader_reads_it(
    tmp_path, compression, parquet_codec
):
    """ParquetDataset.compression trades bytes for CPU: the codec named in the file (as DuckDB reads the footer:
    pyarrow's lz4 is LZ4_RAW), integers delta-packed and uncompressed whatever it is, and pyarrow, Polars and
    DuckDB read back exactly what was written."""
    dataset = ParquetDataset(str(tmp_path / "scores"), partition_column="date", compression=compression)
    schema = pa.schema(
        [("id", pa.int64()), ("label", pa.int64()), ("probability_1", pa.float32()), ("segment", pa.string())]
    )
    rng = np.random.default_rng(1)
    p1 = rng.random(3_000, dtype=np.float32)
    expected = pa.table(
        {
            "id": np.arange(3_000, dtype=np.int64),
            "label": (p1 > 0.5).astype(np.int64),
            "probability_1": p1,
            "segment": rng.choice(["a", "b"], 3_000),
        },
        schema=schema,
    )
    writer = AtomicPartitionWriter(dataset, PARTITION, schema, {"model": "lr"})
    writer.write(expected.to_batches()[0])
    path = writer.commit()
    footer = duckdb.sql(f"SELECT path_in_schema, compression FROM parquet_metadata('{path}')").fetchall()
    assert dict(footer) == {
        "id": "UNCOMPRESSED",
        "label": "UNCOMPRESSED",
        "probability_1": parquet_codec,
        "segment": parquet_codec,
    }
    assert pq.read_table(path).cast(schema) == expected
    assert pl.read_parquet(path).to_arrow().cast(schema) == expected
    assert (
        duckdb.sql(f"SELECT * FROM read_parquet('{path}', hive_partitioning = false) ORDER BY id")
        .to_arrow_table()
        .cast(schema)
        == expected
    )


def test_a_codec_it_does_not_know_is_refused_by_name():
    with pytest.raises(DatasetError, match=r"dataset s3://b/scores: compression 'brotli' is not one of zstd, lz4"):
        ParquetDataset("s3://b/scores", compression="brotli")  # type: ignore[arg-type]


def _cached_bytes(path: str) -> int:
    """Bytes of ``path`` in the page cache, as util-linux's ``fincore`` counts them."""
    out = subprocess.run(["fincore", "--bytes", "--raw", "--noheadings", "--output", "RES", path], capture_output=True)
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


def test_row_groups_go_to_the_disk_while_the_next_ones_are_scored(tmp_path):
    """After each row group the encoding thread starts the disk's write-back of the staging file and drops
    from the page cache what is already on the disk, so the commit's fsync finds little left to write."""
    dataset = ParquetDataset(str(tmp_path / "scores"), partition_column="date")
    schema = pa.schema([("score", pa.float64())])
    writer = AtomicPartitionWriter(dataset, PARTITION, schema, {})
    writer.ROW_GROUP_ROWS = 200_000
    rng = np.random.default_rng(0)
    for _ in range(3):  # three row groups of ~1.4 MB each, encoded and compressed
        writer.write(pa.record_batch([pa.array(rng.random(200_000))], schema=schema))
    staged = writer.temp_path
    deadline = time.monotonic() + 30
    while os.path.getsize(staged) < 3 * 1_300_000:  # the encoding thread has written all three
        assert time.monotonic() < deadline, "the encoding thread did not write three row groups in 30 s"
        time.sleep(0.01)
    fd = os.open(staged, os.O_RDONLY)
    try:
        os.fsync(fd)  # on the disk now; without write-back they would stay in the page cache too
    finally:
        os.close(fd)
    written = os.path.getsize(staged)
    writer.write(pa.record_batch([pa.array(rng.random(200_000))], schema=schema))  # its write-back drops them
    path = writer.commit()
    # What stays cached is the last row group and the footer, not the ~4 MB already on the disk.
    assert _cached_bytes(path) <= os.path.getsize(path) - written + 65_536
    assert pq.read_table(path).num_rows == 800_000
