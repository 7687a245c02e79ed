"""Committing a partition's output to S3: the old copy-then-delete commit vs a direct multipart upload.

- before (reproduced here as the writer had it): Parquet written to a temporary key
  ``_inprogress-<id>-part-0.parquet`` beside the final key, then ``move`` = a server-side copy to the
  final key and a delete. Readers that list the folder (Polars, DuckDB) saw the temporary key, and the
  object store wrote the data twice.
- after (``AtomicPartitionWriter``): the final key written directly as a multipart upload that is
  completed only on commit: nothing visible before, the data written once.

Both write the same table (standard workload: a key + 20 float32 columns) to moto's S3 server on
loopback, alternating, in one run; the table reports the median of ``--repeats``.

    .venv/bin/python benchmarks/bench_s3_commit.py --rows 2000000 --repeats 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from importlib.metadata import version as pkg_version
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml_assets.datasets import AtomicPartitionWriter, ParquetDataset
from ml_assets.dev.services import free_port, wait_for_port

FEATURES = [f"f{i}" for i in range(20)]
PARTITION = "2026-11-01"


def make_table(rows: int) -> pa.Table:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, len(FEATURES)), dtype=np.float32)
    return pa.table({"key": pa.array(np.arange(rows, dtype=np.int64)), **{f: x[:, i] for i, f in enumerate(FEATURES)}})


def batches(table: pa.Table, chunk_rows: int = 65_536) -> list[pa.RecordBatch]:
    return table.to_batches(max_chunksize=chunk_rows)


def old_commit(fs, final_path: str, schema: pa.Schema, chunks: list[pa.RecordBatch]) -> None:
    """The previous protocol: a temporary key in the output folder, then copy + delete."""
    filesystem = pafs.PyFileSystem(pafs.FSSpecHandler(fs))
    folder, name = final_path.rsplit("/", 1)
    temp_path = f"{folder}/_inprogress-{uuid.uuid4().hex[:12]}-{name}"
    stream = filesystem.open_output_stream(temp_path)
    writer = pq.ParquetWriter(stream, schema, use_dictionary=False, compression="snappy")
    for i in range(0, len(chunks), 4):  # the same 262,144-row row groups as the writer
        writer.write_table(pa.Table.from_batches(chunks[i : i + 4], schema=schema))
    writer.close()
    stream.close()
    filesystem.move(temp_path, final_path)


def new_commit(dataset: ParquetDataset, schema: pa.Schema, chunks: list[pa.RecordBatch]) -> None:
    writer = AtomicPartitionWriter(dataset, PARTITION, schema, {})
    for chunk in chunks:
        writer.write(chunk)
    writer.commit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import s3fs

    table = make_table(args.rows)
    chunks = batches(table)
    port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
    moto = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        wait_for_port(port, moto, what="moto S3 server")
        options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "bench", "secret": "bench"}
        fs = s3fs.S3FileSystem(**options)
        fs.mkdir("bench")
        dataset = ParquetDataset("s3://bench/new", partition_column="date", storage_options=options)
        old_final = f"bench/old/date={PARTITION}/part-0.parquet"
        timings: dict[str, list[float]] = {"before: temp key + copy + delete": [], "after: direct multipart upload": []}
        for _ in range(args.repeats):
            started = time.perf_counter()
            old_commit(fs, old_final, table.schema, chunks)
            timings["before: temp key + copy + delete"].append(time.perf_counter() - started)
            started = time.perf_counter()
            new_commit(dataset, table.schema, chunks)
            timings["after: direct multipart upload"].append(time.perf_counter() - started)
        size = fs.info(f"bench/new/date={PARTITION}/part-0.parquet")["size"]
        old_size = fs.info(old_final)["size"]
    finally:
        moto.terminate()
        moto.wait(timeout=30)

    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    print(f"\n### S3 output commit ({dt.date.today().isoformat()})\n")
    print(
        f"Machine: {os.cpu_count()} cores, {mem_gib:.0f} GiB, {platform.machine()}; "
        f"Python {platform.python_version()}, "
        f"pyarrow {pa.__version__}, s3fs {pkg_version('s3fs')}, moto {pkg_version('moto')} (server mode, loopback). "
        f"{args.rows:,} rows x (key + 20 float32) -> {size / 2**20:.0f} MiB Parquet "
        f"(old path: {old_size / 2**20:.0f} MiB); median of {args.repeats}.\n"
    )
    baseline = statistics.median(next(iter(timings.values())))
    print("| commit | seconds | rows/s | vs before |")
    print("|---|---:|---:|---:|")
    for name, values in timings.items():
        seconds = statistics.median(values)
        print(f"| {name} | {seconds:.2f} | {args.rows / seconds:,.0f} | {baseline / seconds:.2f}x |")


if __name__ == "__main__":
    main()
