"""Read-only throughput of the input path: our PartitionReader on Polars' and on pyarrow's decoder, side
by side with plain Polars and plain pyarrow, in one run on the same file.

    python benchmarks/bench_read.py [--rows 20000000] [--repeat 3] [--chunk-rows 65536]

Each measurement runs in a fresh process (its peak RSS is its own) and times only the read loop: every
column of the standard benchmark partition (20 float32 features + an int64 key, one file, 256k-row groups,
made once in .bench/) decoded into Arrow record batches of at most ``chunk-rows`` rows. The median of
``--repeat`` runs is reported. Ours includes what the scoring pipeline gets: per-file batches (FileBatch)
in that file's own types, ready for the cast to the model's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_onnx import make_data, peak_rss_mib

if TYPE_CHECKING:
    from ml_assets.datasets import ReaderChoice

DAY = "2026-01-01"


# Each case sets up (imports, opens) and returns the read loop, which alone is timed.


def case_ours_polars(data: Path, chunk_rows: int) -> Callable[[], int]:
    return _ours(data, chunk_rows, "polars")


def case_ours_pyarrow(data: Path, chunk_rows: int) -> Callable[[], int]:
    return _ours(data, chunk_rows, "pyarrow")


def _ours(data: Path, chunk_rows: int, reader: ReaderChoice) -> Callable[[], int]:
    import polars  # noqa: F401 -- imported before timing, as for the plain Polars case

    from ml_assets.datasets import ParquetDataset, PartitionReader

    partition = PartitionReader(ParquetDataset(str(data), partition_column="date", reader=reader), DAY)
    assert partition.reader == reader, partition.reader_description
    columns = partition.files[0].schema.names
    return lambda: sum(piece.batch.num_rows for piece in partition.batches(columns, chunk_rows))


def case_plain_polars(data: Path, chunk_rows: int) -> Callable[[], int]:
    import polars as pl

    def read() -> int:
        lazy = pl.scan_parquet(data / f"date={DAY}" / "part-0.parquet")
        return sum(
            b.num_rows
            for frame in lazy.collect_batches(chunk_size=chunk_rows, maintain_order=True)
            for b in frame.to_arrow().to_batches()
        )

    return read


def case_plain_pyarrow(data: Path, chunk_rows: int) -> Callable[[], int]:
    import pyarrow.parquet as pq

    def read() -> int:
        file = pq.ParquetFile(data / f"date={DAY}" / "part-0.parquet")
        return sum(b.num_rows for b in file.iter_batches(batch_size=chunk_rows))

    return read


CASES = {
    "ours, Polars decoder": case_ours_polars,
    "ours, pyarrow decoder": case_ours_pyarrow,
    "plain Polars (scan_parquet().collect_batches())": case_plain_polars,
    "plain pyarrow (ParquetFile.iter_batches)": case_plain_pyarrow,
}


def run_case(name: str, data: Path, chunk_rows: int) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--case", name, "--data", str(data), "--chunk-rows", str(chunk_rows)],
        capture_output=True, text=True, check=False, timeout=1800,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--chunk-rows", type=int, default=65_536)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:  # a child process: one measurement, printed as JSON
        read = CASES[args.case](Path(args.data), args.chunk_rows)
        started = time.perf_counter()
        rows = read()
        seconds = time.perf_counter() - started
        print(json.dumps({"rows": rows, "seconds": seconds, "peak_rss_mib": peak_rss_mib()}))
        return

    import polars
    import pyarrow

    data = make_data(args.rows)
    results = {}
    for name in CASES:
        runs = [run_case(name, data, args.chunk_rows) for _ in range(args.repeat)]
        results[name] = {
            "rows_per_s": statistics.median(r["rows"] / r["seconds"] for r in runs),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
            "rows": runs[0]["rows"],
        }
        print(f"{name}: {results[name]['rows_per_s']:,.0f} rows/s", file=sys.stderr)
    fastest_floor = max(results[n]["rows_per_s"] for n in CASES if n.startswith("plain"))
    load = os.getloadavg()[0]
    print(
        f"\n{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()} {os.cpu_count()} cores, "
        f"load average {load:.1f} at the end (the machine is shared), Python {platform.python_version()}, "
        f"pyarrow {pyarrow.__version__}, polars {polars.__version__}; {args.rows:,} rows x 21 columns, "
        f"batches of {args.chunk_rows:,}, median of {args.repeat}\n"
    )
    print("| read path | rows/s | vs the faster plain floor | peak RSS MiB |")
    print("|---|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['rows_per_s']:,.0f} | {r['rows_per_s'] / fastest_floor:.2f} | {r['peak_rss_mib']:,.0f} |")


if __name__ == "__main__":
    main()
