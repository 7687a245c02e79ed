"""Wide inputs: ``ml-assets score`` on a 1,000-feature partition with the chunk size it chooses (at most
``CHUNK_BYTES`` of input columns per chunk) beside the fixed 65,536-row chunk it used before, and the Polars
inline-expression peer of bench_columnar.py on the same file.

    python benchmarks/bench_wide.py [--rows 400000] [--features 1000] [--repeat 3]

A logistic regression fit by scikit-learn and exported by skl2onnx (``zipmap=False``), float32 features in
row groups of 65,536 rows as pyarrow writes them, the ``id`` key passed through. Each measurement is a fresh
process: wall time, user and system CPU and peak RSS (``os.wait4``), in rounds (auto, fixed, Polars, auto,
...); medians of ``--repeat``. Prints a Markdown table. Not a test.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / ".bench"
VENV_BIN = Path(sys.executable).parent
PARTITION = "2026-01-01"


def make_wide(rows: int, features: int) -> Path:
    """The partition and the model, made once per size."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    root = ROOT / f"wide-{features}x{rows}"
    if (root / "done").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5_000, features)).astype(np.float32)
    model = LogisticRegression(max_iter=300).fit(x, (x[:, 0] + x[:, 1] > 0).astype(np.int64))
    (root / "model").mkdir(parents=True)
    (root / "model" / "model.onnx").write_bytes(
        to_onnx(model, x[:1], target_opset=17, options={"zipmap": False}).SerializeToString()
    )
    np.save(root / "model" / "coefficients.npy", np.append(model.intercept_, model.coef_[0]))
    day = root / "data" / f"date={PARTITION}"
    day.mkdir(parents=True)
    with pq.ParquetWriter(day / "part-0.parquet", _schema(features)) as writer:
        for start in range(0, rows, 65_536):
            n = min(65_536, rows - start)
            columns = {f"f{k}": rng.standard_normal(n).astype(np.float32) for k in range(features)}
            writer.write_table(pa.table({**columns, "id": np.arange(start, start + n)}), row_group_size=65_536)
    (root / "done").touch()
    return root


def _schema(features: int):
    import pyarrow as pa

    return pa.schema([*(pa.field(f"f{k}", pa.float32()) for k in range(features)), pa.field("id", pa.int64())])


def case_polars(root: Path, out: Path) -> None:
    """The Polars inline-expression peer: the sigmoid of the linear model written as one expression."""
    import numpy as np
    import polars as pl

    weights = np.load(root / "model" / "coefficients.npy")
    logit = pl.lit(float(weights[0]))
    for k, w in enumerate(weights[1:]):
        logit = logit + pl.col(f"f{k}") * float(w)
    probability = (1 / (1 + (-logit).exp())).cast(pl.Float32).alias("probability_1")
    t0 = time.perf_counter()
    scan = pl.scan_parquet(root / "data" / f"date={PARTITION}" / "*.parquet")
    scan.select(pl.col("id"), probability).sink_parquet(out / "polars.parquet")
    print(f"seconds: {time.perf_counter() - t0:.2f}")


def command(name: str, root: Path, out: Path, features: int) -> list[str]:
    if name == "polars":
        return [sys.executable, __file__, "--case", "polars", "--root", str(root), "--out", str(out)]
    chunk = ["--chunk-rows", "65536"] if name == "fixed" else []
    return [
        str(VENV_BIN / "ml-assets"), "score", f"file://{root / 'model' / 'model.onnx'}", str(root / "data"),
        str(out / "ours"), "--partition", f"date={PARTITION}", "--passthrough", "id",
        "--features", ",".join(f"f{k}" for k in range(features)), "--outputs", "probability_1", "--quiet", *chunk,
    ]  # fmt: skip


def run(name: str, root: Path, features: int) -> dict[str, float]:
    out = ROOT / "wide-out" / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    process = subprocess.Popen(command(name, root, out, features), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - t0
    stdout, stderr = process.stdout.read().decode(), process.stderr.read().decode()
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{name} failed:\n{stderr[-3000:]}")
    seconds = next(float(line.split()[1]) for line in stdout.splitlines() if line.startswith("seconds:"))
    return {
        "wall": wall,
        "seconds": seconds,
        "user": usage.ru_utime,
        "system": usage.ru_stime,
        "rss_mib": usage.ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--features", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--case")
    parser.add_argument("--root")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.case == "polars":
        case_polars(Path(args.root), Path(args.out))
        return
    root = make_wide(args.rows, args.features)
    names = {
        "auto": "ours, chunk size chosen (at most 64 MiB of inputs a chunk)",
        "fixed": "ours, `--chunk-rows 65536` (the fixed default before)",
        "polars": "Polars inline expression",
    }
    for name in names:  # warms the page cache
        run(name, root, args.features)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for _ in range(args.repeat):
        for name in names:
            runs[name].append(run(name, root, args.features))
    load = os.getloadavg()[0]
    print(
        f"{args.rows:,} rows x {args.features:,} float32 features, lr, one output column; {platform.machine()}, "
        f"{os.cpu_count()} cores, load average {load:.1f} at the end; medians of {args.repeat} in rounds"
    )
    print("| path | in-process s | wall s | user CPU s | system CPU s | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, label in names.items():
        m = {key: statistics.median(r[key] for r in runs[name]) for key in runs[name][0]}
        print(
            f"| {label} | {m['seconds']:.2f} | {m['wall']:.2f} | {m['user']:.1f} | {m['system']:.1f} "
            f"| {m['rss_mib']:,.0f} |"
        )


if __name__ == "__main__":
    main()
