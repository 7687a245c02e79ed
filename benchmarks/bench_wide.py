"""Wide inputs, two kinds, each beside the Polars inline-expression peer of bench_columnar.py on the same file:

- ``floats``: 1,000 float32 features in row groups of 65,536 rows. ``ml-assets score`` with the chunk size it
  chooses (at most ``CHUNK_BYTES`` of input columns per chunk) beside the fixed 65,536-row chunk it used before.
- ``text``: 20 float32 features and ten text columns passed through, each 200 distinct values of ~225 bytes
  (user agents), as ``pq.write_table`` writes them: dictionary-encoded, row groups of 1,048,576 rows, a footer
  that counts almost nothing of the text. ``ml-assets score`` as chosen (pyarrow) beside ``--reader polars``.

    python benchmarks/bench_wide.py [--inputs floats,text] [--rows 400000] [--text-rows 3000000] [--repeat 3]

A logistic regression fit by scikit-learn and exported by skl2onnx (``zipmap=False``), the ``id`` key (and
the text) passed through. Each measurement is a fresh process: wall time, user and system CPU and peak RSS
(``os.wait4``), in rounds (ours, ours, Polars, ours, ...); medians of ``--repeat``. Prints Markdown tables.
Not a test.
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
from collections.abc import Callable
from pathlib import Path

from bench_onnx import warm_page_cache

ROOT = Path(__file__).resolve().parent.parent / ".bench"
VENV_BIN = Path(sys.executable).parent
PARTITION = "2026-01-01"


TEXT_COLUMNS, TEXT_FEATURES = 10, 20
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{k}.0 Safari/537.36 t{j} "


def _fit(root: Path, features: int) -> None:
    """A logistic regression on ``features`` float32 columns, as ONNX and as coefficients for the Polars peer."""
    import numpy as np
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.standard_normal((5_000, features)).astype(np.float32)
    model = LogisticRegression(max_iter=300).fit(x, (x[:, 0] + x[:, 1] > 0).astype(np.int64))
    (root / "model").mkdir(parents=True)
    (root / "model" / "model.onnx").write_bytes(
        to_onnx(model, x[:1], target_opset=17, options={"zipmap": False}).SerializeToString()
    )
    np.save(root / "model" / "coefficients.npy", np.append(model.intercept_, model.coef_[0]))


def _made(root: Path, features: int, write: Callable[[Path], None]) -> Path:
    """``root`` with its model and its one partition, which ``write`` fills: made once, then reused."""
    if (root / "done").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    _fit(root, features)
    day = root / "data" / f"date={PARTITION}"
    day.mkdir(parents=True)
    write(day)
    (root / "done").touch()
    return root


def make_wide(rows: int, features: int) -> Path:
    """The partition of float features and the model, made once per size."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    def write(day: Path) -> None:
        rng = np.random.default_rng(0)
        with pq.ParquetWriter(day / "part-0.parquet", _schema(features)) as writer:
            for start in range(0, rows, 65_536):
                n = min(65_536, rows - start)
                columns = {f"f{k}": rng.standard_normal(n).astype(np.float32) for k in range(features)}
                writer.write_table(pa.table({**columns, "id": np.arange(start, start + n)}), row_group_size=65_536)

    return _made(ROOT / f"wide-{features}x{rows}", features, write)


def make_text(rows: int) -> Path:
    """The partition of float features and long repeated text, and the model, made once per size."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    def write(day: Path) -> None:
        rng = np.random.default_rng(1)
        columns: dict = {"id": np.arange(rows)}
        columns |= {f"f{k}": rng.standard_normal(rows).astype(np.float32) for k in range(TEXT_FEATURES)}
        for j in range(TEXT_COLUMNS):
            agents = np.array([USER_AGENT.format(k=k, j=j) * 2 for k in range(200)], dtype=object)
            columns[f"t{j}"] = pa.array(agents[rng.integers(0, 200, rows)], pa.string())
        pq.write_table(pa.table(columns), day / "part-0.parquet")

    return _made(ROOT / f"text-{TEXT_COLUMNS}x{rows}", TEXT_FEATURES, write)


def _schema(features: int):
    import pyarrow as pa

    return pa.schema([*(pa.field(f"f{k}", pa.float32()) for k in range(features)), pa.field("id", pa.int64())])


def case_polars(root: Path, out: Path, passthrough: list[str]) -> None:
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
    scan.select(*passthrough, probability).sink_parquet(out / "polars.parquet")
    print(f"seconds: {time.perf_counter() - t0:.2f}")


def _passthrough(root: Path) -> list[str]:
    return ["id", *(f"t{j}" for j in range(TEXT_COLUMNS))] if root.name.startswith("text-") else ["id"]


def command(name: str, root: Path, out: Path, features: int) -> list[str]:
    passthrough = _passthrough(root)
    if name == "polars":
        return [
            sys.executable, __file__, "--case", "polars", "--root", str(root), "--out", str(out),
            "--passthrough", ",".join(passthrough),
        ]  # fmt: skip
    extra = {"fixed": ["--chunk-rows", "65536"], "polars-reader": ["--reader", "polars"]}.get(name, [])
    return [
        str(VENV_BIN / "ml-assets"), "score", f"file://{root / 'model' / 'model.onnx'}", str(root / "data"),
        str(out / "ours"), "--partition", f"date={PARTITION}", "--passthrough", ",".join(passthrough),
        "--features", ",".join(f"f{k}" for k in range(features)), "--outputs", "probability_1", "--quiet", *extra,
    ]  # fmt: skip


def run(name: str, root: Path, features: int) -> dict[str, float]:
    out = ROOT / "wide-out" / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    warm_page_cache(root)
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


def compare(root: Path, features: int, names: dict[str, str], repeat: int, title: str) -> None:
    for name in names:  # warms the page cache
        run(name, root, features)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for _ in range(repeat):
        for name in names:
            runs[name].append(run(name, root, features))
    load = os.getloadavg()[0]
    print(
        f"{title}; {platform.machine()}, {os.cpu_count()} cores, load average {load:.1f} at the end; "
        f"medians of {repeat} in rounds\n"
    )
    print("| path | in-process s | wall s | user CPU s | system CPU s | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, label in names.items():
        m = {key: statistics.median(r[key] for r in runs[name]) for key in runs[name][0]}
        print(
            f"| {label} | {m['seconds']:.2f} | {m['wall']:.2f} | {m['user']:.1f} | {m['system']:.1f} "
            f"| {m['rss_mib']:,.0f} |"
        )
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", default="floats,text")
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--features", type=int, default=1_000)
    parser.add_argument("--text-rows", type=int, default=3_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--case")
    parser.add_argument("--root")
    parser.add_argument("--out")
    parser.add_argument("--passthrough", default="id")
    args = parser.parse_args()
    if args.case == "polars":
        case_polars(Path(args.root), Path(args.out), args.passthrough.split(","))
        return
    if args.case == "make":
        make_wide(args.rows, args.features) if "floats" in args.inputs else make_text(args.text_rows)
        return
    for kind in args.inputs.split(","):
        # Made in a child process: a child forked from a parent that held the data would report the parent's
        # peak as its own (Linux keeps the peak RSS across fork and exec).
        make = [sys.executable, __file__, "--case", "make", "--inputs", kind, "--rows", str(args.rows)]
        subprocess.run([*make, "--features", str(args.features), "--text-rows", str(args.text_rows)], check=True)
    inputs = args.inputs.split(",")
    if "floats" in inputs:
        names = {
            "auto": "ours, chunk size chosen (at most 64 MiB of inputs a chunk)",
            "fixed": "ours, `--chunk-rows 65536` (the fixed default before)",
            "polars": "Polars inline expression",
        }
        title = f"{args.rows:,} rows x {args.features:,} float32 features, lr, one output column"
        compare(make_wide(args.rows, args.features), args.features, names, args.repeat, title)
    if "text" in inputs:
        names = {
            "auto": "ours, reader chosen (pyarrow, a chunk at a time)",
            "polars-reader": "ours, `--reader polars`",
            "polars": "Polars inline expression",
        }
        title = (
            f"{args.text_rows:,} rows x {TEXT_FEATURES} float32 features + {TEXT_COLUMNS} text columns of ~225 bytes "
            "passed through (dictionary-encoded, 1,048,576-row row groups), lr, one output column"
        )
        compare(make_text(args.text_rows), TEXT_FEATURES, names, args.repeat, title)


if __name__ == "__main__":
    main()
