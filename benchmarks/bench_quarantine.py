"""What on_row_error="quarantine" costs, beside on_row_error="fail", in one run (target: < 5% on a clean partition).

    python benchmarks/bench_quarantine.py [--rows 2000000] [--repeat 5]

The data and models of bench_onnx.py (``--rows`` x 20 float32 features, lr and rf as ONNX, in .bench/).
Each case is ``score_partition`` end to end (read Parquet -> score -> write key + probability_1), in one
process with the model loaded once; fail and quarantine runs alternate so machine load hits both alike,
and the best of ``--repeat`` is kept. A third row scores a copy of the partition with 0.1% of rows
poisoned (nulls in one feature), which only quarantine can score: the cost of setting rows aside.
Prints a Markdown table. Not a test.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_onnx import ROOT, make_data, make_models

PARTITION = "2026-01-01"


def poisoned_copy(data: Path, rate: float) -> Path:
    """The partition with ``rate`` of its rows null in f3 (made once, beside the clean one)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = data.parent / f"{data.name}-poisoned" / f"date={PARTITION}"
    file = target / "part-0.parquet"
    if file.exists():
        return target.parent
    target.mkdir(parents=True, exist_ok=True)
    table = pq.read_table(data / f"date={PARTITION}")
    rng = np.random.default_rng(5)
    mask = rng.random(table.num_rows) < rate
    index = table.schema.get_field_index("f3")
    table = table.set_column(index, "f3", pa.array(table["f3"].to_numpy(), mask=mask))
    pq.write_table(table, file.with_suffix(".tmp"), row_group_size=262_144)
    file.with_suffix(".tmp").rename(file)
    return target.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    from ml_assets.datasets import ParquetDataset
    from ml_assets.resources.registries.mlflow import MlflowRegistry
    from ml_assets.resources.runtimes.onnx import OnnxRuntime
    from ml_assets.scoring import score_partition

    data = make_data(args.rows)
    tracking_uri = make_models()
    poisoned = poisoned_copy(data, 0.001)
    registry = MlflowRegistry(tracking_uri)
    out = ROOT / "quarantine-out"
    rows = []
    for model in ("lr", "rf"):
        version = registry.resolve(f"models:/{model}_onnx/1")
        scorer = OnnxRuntime(outputs=["probability_1"]).load(version, registry.fetch(version))
        cases = {
            "fail (today)": (data, {}),
            "quarantine, clean": (data, {"on_row_error": "quarantine", "max_error_rate": 0.01}),
            "quarantine, 0.1% bad rows": (poisoned, {"on_row_error": "quarantine", "max_error_rate": 0.01}),
        }
        best: dict[str, float] = {}
        errors: dict[str, int] = {}
        for attempt in range(args.repeat + 1):  # the first round warms caches and is not counted
            for index, (name, (source, options)) in enumerate(cases.items()):
                result = score_partition(
                    scorer, version, ParquetDataset(str(source), partition_column="date"),
                    ParquetDataset(str(out / model / f"case{index}"), partition_column="date"),
                    partition=PARTITION, passthrough=["id"], **options,
                )  # fmt: skip
                if attempt:
                    best[name] = min(best.get(name, float("inf")), result.seconds)
                errors[name] = result.row_errors.rows if result.row_errors else 0
        if hasattr(scorer, "close"):
            scorer.close()
        base = args.rows / best["fail (today)"]
        for name in cases:
            rate = args.rows / best[name]
            rows.append(f"| {model} | {name} | {rate:,.0f} | {rate / base:.3f} | {errors[name]:,} |")
    cores, memory = len(os.sched_getaffinity(0)), os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import onnxruntime
    import pyarrow

    print(
        f"\nQuarantine vs fail, {date.today()}, {cores} cores, {memory:.0f} GiB, Python {platform.python_version()}, "
        f"pyarrow {pyarrow.__version__}, onnxruntime {onnxruntime.__version__}; {args.rows:,} rows, "
        f"best of {args.repeat} alternating runs\n"
    )
    print("| model | on_row_error | rows/s | vs fail | rows quarantined |")
    print("|---|---|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
