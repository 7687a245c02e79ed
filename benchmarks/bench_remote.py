"""Remote scoring: our HTTP runtime vs the naive JSON client, against `mlflow models serve -w 2`.

Workload (../shared/BENCHMARKS.md): 20 float32 features f0..f19 (standard normal, seed 0), the
`lr` model (sklearn LogisticRegression trained on the first 50k rows, labels from a fixed random
linear rule) logged with MLflow (predict_proba) and served on loopback.

- naive: pandas reads the partition, then one JSON `dataframe_split` request of 10k rows at a
  time, sequentially (requests), predictions collected in memory.
- ours: `score_partition` (Parquet in -> HTTP scorer -> Parquet out, key passthrough + probability
  of class 1) with the `http` runtime, for each payload asked (default: parquet, csv).

Both are timed in the same run against the same server; model load and server start are excluded.

    .venv/bin/python benchmarks/bench_remote.py --rows 1000000 --naive-rows 200000
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib.metadata import version as pkg_version
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml_assets.datasets import ParquetDataset
from ml_assets.resources.core.models import ColumnSpec, ModelVersion, Signature
from ml_assets.resources.runtimes.http import HttpRuntime
from ml_assets.scoring import score_partition

FEATURES = [f"f{i}" for i in range(20)]
PARTITION = "2026-11-01"


def make_data(root: Path, rows: int) -> Path:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, len(FEATURES)), dtype=np.float32)
    table = pa.table({"key": pa.array(np.arange(rows, dtype=np.int64)), **{f: x[:, i] for i, f in enumerate(FEATURES)}})
    folder = root / "input" / f"date={PARTITION}"
    folder.mkdir(parents=True)
    pq.write_table(table, folder / "part-0.parquet", row_group_size=256 * 1024)
    return root / "input"


def train_lr(root: Path, data: Path) -> Path:
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    frame = pq.read_table(data / f"date={PARTITION}", columns=FEATURES).slice(0, 50_000).to_pandas()
    w = np.random.default_rng(42).standard_normal(len(FEATURES))
    y = (frame.to_numpy() @ w > 0).astype(int)
    model = LogisticRegression(max_iter=500).fit(frame, y)
    path = root / "lr"
    signature = infer_signature(frame.head(100), model.predict_proba(frame.head(100)))
    mlflow.sklearn.save_model(model, str(path), pyfunc_predict_fn="predict_proba", signature=signature)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(model: Path, workers: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", str(model), "-h", "127.0.0.1"]
    cmd += ["-p", str(port), "--env-manager", "local", "-w", str(workers)]
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"mlflow models serve exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.3)
    stop(proc)
    raise SystemExit("mlflow models serve did not come up within 120 s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def naive(url: str, data: Path, rows: int) -> tuple[float, np.ndarray]:
    import pandas as pd
    import requests

    session = requests.Session()
    started = time.perf_counter()
    frame = pd.read_parquet(data / f"date={PARTITION}").head(rows)
    out = []
    for start in range(0, len(frame), 10_000):
        part = frame.iloc[start : start + 10_000][FEATURES]
        payload = {"dataframe_split": part.to_dict(orient="split", index=False)}
        response = session.post(f"{url}/invocations", json=payload, timeout=(5, 120))
        response.raise_for_status()
        out.append(np.asarray(response.json()["predictions"])[:, 1])
    return time.perf_counter() - started, np.concatenate(out)


def cpu_seconds(proc: subprocess.Popen[bytes] | None) -> float:
    """CPU time of this process, or of the server process and its workers."""
    import psutil

    if proc is None:
        t = psutil.Process().cpu_times()
        return t.user + t.system
    root = psutil.Process(proc.pid)
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def ours(
    url: str, data: Path, out_root: Path, label: str, **options: object
) -> tuple[float, pa.Table, HttpRuntime, object]:
    version = ModelVersion(
        name="lr",
        version="1",
        format="pyfunc",
        artifact_uri="bench",
        registry="bench",
        signature=Signature(inputs=tuple(ColumnSpec(f, "float") for f in FEATURES)),
    )
    runtime = HttpRuntime(url=url, output_names=["p0", "probability"], outputs=["probability"], **options)  # type: ignore[arg-type]
    scorer = runtime.load(version)
    dest = ParquetDataset(str(out_root / label), partition_column="date")
    try:
        started = time.perf_counter()
        score_partition(
            scorer,
            version,
            ParquetDataset(str(data), partition_column="date"),
            dest,
            partition=PARTITION,
            passthrough=["key"],
        )
        seconds = time.perf_counter() - started
    finally:
        scorer.close()
    table = pq.read_table(out_root / label / f"date={PARTITION}")
    return seconds, table, runtime, scorer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows scored by our runtime")
    parser.add_argument("--naive-rows", type=int, default=200_000, help="rows scored by the naive client")
    parser.add_argument("--workers", type=int, default=2, help="mlflow models serve -w")
    parser.add_argument("--payloads", default="parquet,csv")
    parser.add_argument("--max-in-flight", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--batch-rows", type=int, default=16384)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-remote-") as tmp:
        root = Path(tmp)
        data = make_data(root, max(args.rows, args.naive_rows))
        model = train_lr(root, data)
        proc, url = serve(model, args.workers, root / "serve.log")
        try:
            naive(url, data, 20_000)  # warm both server workers
            cpu0 = (cpu_seconds(None), cpu_seconds(proc))
            naive_s, naive_pred = naive(url, data, args.naive_rows)
            naive_cpu = (cpu_seconds(None) - cpu0[0], cpu_seconds(proc) - cpu0[1])
            naive_rate = args.naive_rows / naive_s
            results = []
            for payload in args.payloads.split(","):
                cpu0 = (cpu_seconds(None), cpu_seconds(proc))
                seconds, table, _, scorer = ours(
                    url,
                    data,
                    root / "out",
                    payload,
                    payload=payload,
                    max_in_flight=args.max_in_flight,
                    concurrency=args.concurrency,
                    batch_rows=args.batch_rows,
                )
                assert table.num_rows == args.rows, table.num_rows
                table = table.sort_by("key")
                got = table["probability"].to_numpy()[: args.naive_rows]
                diff = float(np.abs(got - naive_pred[: len(got)]).max())
                cpu = (cpu_seconds(None) - cpu0[0], cpu_seconds(proc) - cpu0[1])
                results.append((payload, seconds, scorer, diff, cpu))
        finally:
            stop(proc)

    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    print(f"\n### Remote MLflow server, lr ({dt.date.today().isoformat()})\n")
    print(
        f"Machine: {os.cpu_count()} cores, {mem_gib:.0f} GiB, {platform.machine()}; "
        f"Python {platform.python_version()}, "
        f"mlflow {pkg_version('mlflow')}, pyarrow {pa.__version__}, requests {pkg_version('requests')}, "
        f"scikit-learn {pkg_version('scikit-learn')}. Server: `mlflow models serve -w {args.workers}` on loopback.\n"
    )
    print(
        "| client | rows | seconds | rows/s | x naive | requests | adaptive cap rows/request | "
        "client CPU s / 1M rows | server CPU s / 1M rows | max abs diff vs naive |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    per_m = 1e6 / args.naive_rows
    print(
        f"| naive: JSON dataframe_split, 10k rows/request, sequential | {args.naive_rows:,} | {naive_s:.2f} | "
        f"{naive_rate:,.0f} | 1.0 | {-(-args.naive_rows // 10_000)} | 10,000 | {naive_cpu[0] * per_m:.1f} | "
        f"{naive_cpu[1] * per_m:.1f} | - |"
    )
    for payload, seconds, scorer, diff, cpu in results:
        rate = args.rows / seconds
        per_m = 1e6 / args.rows
        print(
            f"| ours: http runtime, {payload}, {args.max_in_flight} in flight, Parquet in/out | {args.rows:,} | "
            f"{seconds:.2f} | {rate:,.0f} | {rate / naive_rate:.1f} | {scorer.requests_sent} | {scorer.batch_rows:,} | "
            f"{cpu[0] * per_m:.1f} | {cpu[1] * per_m:.1f} | {diff:.1e} |"
        )


if __name__ == "__main__":
    main()
