"""ONNX scoring side by side with its peers, in one run (see ../shared/BENCHMARKS.md).

    python benchmarks/bench_onnx.py [--rows 2000000] [--memory-rows 20000000] [--repeat 3]

Each measurement runs in a fresh process (so peak RSS is its own) and times its steady state:
start-up, imports and model loading are excluded and reported apart. Prints a Markdown table.
Not a test: nothing here fails on speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1] / ".bench"
FEATURES = [f"f{i}" for i in range(20)]
CHUNK = 65_536


# -- data and models (made once, kept in .bench/) ------------------------------------------------


def make_data(rows: int) -> Path:
    """rows x 20 float32 standard-normal features (seed 0) + an int64 key; one file, 256k-row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = ROOT / f"data-{rows}" / "date=2026-01-01"
    file = folder / "part-0.parquet"
    if file.exists():
        return folder.parent
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with pq.ParquetWriter(file.with_suffix(".tmp"), _schema()) as writer:
        for start in range(0, rows, 1_048_576):
            n = min(1_048_576, rows - start)
            x = rng.standard_normal((n, 20), dtype=np.float32)
            columns = [pa.array(np.arange(start, start + n, dtype=np.int64))] + [pa.array(x[:, i]) for i in range(20)]
            writer.write_table(pa.Table.from_arrays(columns, schema=_schema()), row_group_size=262_144)
    file.with_suffix(".tmp").rename(file)
    return folder.parent


def _schema():
    import pyarrow as pa

    return pa.schema([pa.field("id", pa.int64())] + [pa.field(f, pa.float32()) for f in FEATURES])


def make_models() -> str:
    """lr and rf trained on the first 50k rows, logged twice: ONNX (ours) and sklearn (the pyfunc peer)."""
    tracking_uri = f"sqlite:///{ROOT / 'mlflow.db'}"
    marker = ROOT / "models.done"
    if marker.exists():
        return tracking_uri
    import mlflow
    import pandas as pd
    import pyarrow.parquet as pq
    from mlflow.models import infer_signature
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    from ml_assets.dev.demo import register_onnx_model, to_onnx_classifier

    head = pq.read_table(make_data(2_000_000) / "date=2026-01-01", columns=FEATURES).slice(0, 50_000)
    x = np.column_stack([head[c].to_numpy() for c in FEATURES])
    w = np.random.default_rng(1).standard_normal(20)
    y = (x @ w + np.random.default_rng(2).standard_normal(len(x)) > 0).astype(int)
    trained = {
        "lr": LogisticRegression(max_iter=500).fit(x, y),
        "rf": RandomForestClassifier(n_estimators=50, max_depth=8, random_state=0, n_jobs=-1).fit(x, y),
    }
    artifacts = (ROOT / "artifacts").as_uri()
    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.create_experiment("bench", artifact_location=artifacts)
    frame = pd.DataFrame(x[:5], columns=FEATURES)
    for name, model in trained.items():
        register_onnx_model(tracking_uri, f"{name}_onnx", to_onnx_classifier(model, 20), FEATURES, experiment="bench")
        with mlflow.start_run(experiment_id=experiment):
            mlflow.sklearn.log_model(
                model,
                name="model",
                signature=infer_signature(frame),
                registered_model_name=f"{name}_sklearn",
                pyfunc_predict_fn="predict_proba",
                skops_trusted_types=["sklearn.tree._tree.Tree"] if name == "rf" else None,
            )
    marker.touch()
    return tracking_uri


# -- the measured cases (each in its own process) ----------------------------------------------


def case_io_floor(data: Path, model: str, out: Path) -> dict:
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    table = pq.read_table(data / "date=2026-01-01")
    pq.write_table(table.select(["id", "f0"]), out / "floor.parquet", use_dictionary=False)
    return {"seconds": time.perf_counter() - t0, "rows": table.num_rows}


def case_ort_compute(data: Path, model: str, out: Path) -> dict:
    import onnxruntime as ort
    import pyarrow.parquet as pq

    from ml_assets.resources.registries.mlflow import MlflowRegistry

    registry = MlflowRegistry(os.environ["BENCH_TRACKING_URI"])
    path = registry.fetch(registry.resolve(f"models:/{model}_onnx/1")) / "model.onnx"
    table = pq.read_table(data / "date=2026-01-01", columns=FEATURES)
    x = np.column_stack([table[c].to_numpy() for c in FEATURES])
    options = ort.SessionOptions()
    options.intra_op_num_threads = len(os.sched_getaffinity(0))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    t0 = time.perf_counter()
    for start in range(0, len(x), CHUNK):
        session.run(["probabilities"], {"X": x[start : start + CHUNK]})
    return {"seconds": time.perf_counter() - t0, "rows": len(x)}


def case_ours(data: Path, model: str, out: Path) -> dict:
    from ml_assets.datasets import ParquetDataset
    from ml_assets.resources.registries.mlflow import MlflowRegistry
    from ml_assets.resources.runtimes.onnx import OnnxRuntime
    from ml_assets.scoring import score_partition

    t_start = time.perf_counter()
    registry = MlflowRegistry(os.environ["BENCH_TRACKING_URI"])
    version = registry.resolve(f"models:/{model}_onnx@bench")
    scorer = OnnxRuntime(outputs=["probability_1"]).load(version, registry.fetch(version))
    # The reader is Polars' decoder: its one import per process (~0.1 s) is start-up, like the model load,
    # not part of the steady state (at 2M rows it would be a third of score_partition's time).
    import polars  # noqa: F401

    load = time.perf_counter() - t_start
    result = score_partition(
        scorer,
        version,
        ParquetDataset(str(data), partition_column="date"),
        ParquetDataset(str(out / "ours"), partition_column="date"),
        partition="2026-01-01",
        passthrough=["id"],
    )
    return {"seconds": result.seconds, "rows": result.rows_out, "load_seconds": load}


def _open_frame_model(model: str) -> tuple[object, float]:
    from ml_assets.resources.registries.mlflow import MlflowRegistry
    from ml_assets.service import ModelService

    t_start = time.perf_counter()
    service = ModelService(
        MlflowRegistry(os.environ["BENCH_TRACKING_URI"]), runtime_options={"onnx": {"outputs": ["probability_1"]}}
    )
    return service.open(f"models:/{model}_onnx@bench"), time.perf_counter() - t_start


def case_frame_eager(data: Path, model: str, out: Path) -> dict:
    """Parquet -> polars.DataFrame -> score_frame -> write_parquet: the whole frame in memory."""
    import polars as pl

    from ml_assets.frames import score_frame

    loaded, load = _open_frame_model(model)
    t0 = time.perf_counter()
    frame = pl.read_parquet(data / "date=2026-01-01" / "part-0.parquet")
    scored = score_frame(loaded, frame, passthrough=["id"])
    scored.frame.write_parquet(out / "frame.parquet")
    return {"seconds": time.perf_counter() - t0, "rows": scored.rows, "load_seconds": load}


def case_frame_lazy(data: Path, model: str, out: Path) -> dict:
    """polars.scan_parquet -> iter_scored_batches -> pyarrow ParquetWriter: streamed chunk by chunk."""
    import polars as pl
    import pyarrow.parquet as pq

    from ml_assets.frames import iter_scored_batches

    loaded, load = _open_frame_model(model)
    t0 = time.perf_counter()
    scored = iter_scored_batches(loaded, pl.scan_parquet(data / "date=2026-01-01" / "*.parquet"), passthrough=["id"])
    # No dictionary encoding of numeric columns, like score_partition's writer: it costs time and memory.
    with scored, pq.ParquetWriter(out / "lazy.parquet", scored.schema, use_dictionary=False) as writer:
        for batch in scored:
            writer.write_batch(batch)
    return {"seconds": time.perf_counter() - t0, "rows": scored.rows, "load_seconds": load}


def case_peer(data: Path, model: str, out: Path) -> dict:
    import mlflow
    import pandas as pd

    t_start = time.perf_counter()
    mlflow.set_tracking_uri(os.environ["BENCH_TRACKING_URI"])
    loaded = mlflow.pyfunc.load_model(f"models:/{model}_sklearn/1")
    load = time.perf_counter() - t_start
    t0 = time.perf_counter()
    frame = pd.read_parquet(data / "date=2026-01-01")
    probabilities = np.asarray(loaded.predict(frame[FEATURES]))
    pd.DataFrame({"id": frame["id"], "probability_1": probabilities[:, 1]}).to_parquet(out / "peer.parquet")
    return {"seconds": time.perf_counter() - t0, "rows": len(frame), "load_seconds": load}


def warm_page_cache(root: Path) -> None:
    """Read every file under ``root`` once, so the run that follows reads from memory. This machine's host takes
    back idle page cache (a 2.4 GB partition lost ~100 MB every 30 s while idle, by ``fincore``): without this, a
    case that follows a few minutes of other cases reads part of its input from disk (a 20M-row run at 3.6M rows/s
    against 12.3M warm, 2026-12-07), and so would whichever of ours and the peers came first."""
    buffer = bytearray(8 * 2**20)
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        with path.open("rb", buffering=0) as f:
            while f.readinto(buffer):
                pass


def peak_rss_mib() -> float:
    """This process's own peak RSS. (getrusage's ru_maxrss survives exec, so a child would report its parent's.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


CASES = {
    "io_floor": case_io_floor,
    "ort_compute": case_ort_compute,
    "ours": case_ours,
    "frame_eager": case_frame_eager,
    "frame_lazy": case_frame_lazy,
    "peer": case_peer,
}


def run_case(name: str, data: Path, model: str) -> dict:
    out = ROOT / "out" / name
    out.mkdir(parents=True, exist_ok=True)
    warm_page_cache(data)
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--case", name, "--data", str(data), "--model", model, "--out", str(out)],
        capture_output=True, text=True, check=False, timeout=3600,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{name} {model} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - t0
    return result


def best_of(repeat: int, name: str, data: Path, model: str) -> dict:
    runs = [run_case(name, data, model) for _ in range(repeat)]
    return min(runs, key=lambda r: r["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--memory-rows", type=int, default=20_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:  # a child process: one measurement, printed as JSON
        result = CASES[args.case](Path(args.data), args.model, Path(args.out))
        result["peak_rss_mib"] = peak_rss_mib()
        print(json.dumps(result))
        return

    ROOT.mkdir(exist_ok=True)
    os.environ["BENCH_TRACKING_URI"] = make_models()
    os.environ.setdefault("ML_ASSETS_CACHE_DIR", str(ROOT / "cache"))
    import mlflow

    client = mlflow.MlflowClient(os.environ["BENCH_TRACKING_URI"])
    for model in ("lr", "rf"):
        client.set_registered_model_alias(f"{model}_onnx", "bench", "1")
    data = make_data(args.rows)
    rows: list[tuple[str, ...]] = []
    results: dict[str, dict] = {}
    for model in ("lr", "rf"):
        for case in CASES:
            if case == "io_floor" and model == "rf":
                results[f"{case}/{model}"] = results[f"{case}/lr"]
                continue
            results[f"{case}/{model}"] = r = best_of(args.repeat, case, data, model)
            print(
                f"{case:12s} {model}: {r['rows'] / r['seconds']:>12,.0f} rows/s  rss {r['peak_rss_mib']:,.0f} MiB",
                file=sys.stderr,
            )
    memory: dict[tuple[str, int], dict] = {}
    for n in sorted({args.rows, args.memory_rows}):
        for case in ("ours", "frame_lazy"):
            memory[case, n] = r = run_case(case, make_data(n), "lr")
            print(f"memory {case} {n:,} rows: rss {r['peak_rss_mib']:,.0f} MiB", file=sys.stderr)

    def rate(key: str) -> float:
        return results[key]["rows"] / results[key]["seconds"]

    for model in ("lr", "rf"):
        ours = rate(f"ours/{model}")
        rows.append(
            (f"**ours** (ONNX, {model})", f"{ours:,.0f}", f"{results[f'ours/{model}']['peak_rss_mib']:,.0f}", "1.00")
        )
        for case, label in (
            ("frame_eager", f"ours, frames: Polars read_parquet -> score_frame -> write_parquet, {model}"),
            ("frame_lazy", f"ours, frames: Polars scan_parquet -> iter_scored_batches -> ParquetWriter, {model}"),
            ("peer", f"peer: pandas -> mlflow.pyfunc (sklearn) -> to_parquet, {model}"),
            ("ort_compute", f"onnxruntime compute only, {model}"),
            ("io_floor", "IO floor: pyarrow read all + write key + 1 float"),
        ):
            r = results[f"{case}/{model}"]
            rows.append(
                (
                    label,
                    f"{rate(f'{case}/{model}'):,.0f}",
                    f"{r['peak_rss_mib']:,.0f}",
                    f"{ours / rate(f'{case}/{model}'):.2f}",
                )
            )
    import onnxruntime
    import pyarrow

    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    print(
        f"\nONNX scoring, {args.rows:,} rows x 20 float32, steady state (best of {args.repeat}); "
        f"{date.today()}, {os.cpu_count()} cores, {memory_gib:.0f} GiB, Python {platform.python_version()}, "
        f"pyarrow {pyarrow.__version__}, onnxruntime {onnxruntime.__version__}, mlflow {mlflow.__version__}\n"
    )
    print("| path | rows/s | peak RSS MiB | ours / this |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print("\n| lr, rows | path | peak RSS MiB | seconds |")
    print("|---:|---|---:|---:|")
    labels = {"ours": "score_partition", "frame_lazy": "LazyFrame -> iter_scored_batches -> ParquetWriter"}
    for (case, n), r in memory.items():
        print(f"| {n:,} | {labels[case]} | {r['peak_rss_mib']:,.0f} | {r['seconds']:.2f} |")
    load = results["ours/lr"]["load_seconds"], results["peer/lr"]["load_seconds"]
    print(f"\nModel resolve + fetch + load (not in rows/s): ours {load[0]:.2f} s, peer {load[1]:.2f} s.")


if __name__ == "__main__":
    main()
