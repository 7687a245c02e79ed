"""The Ray engine beside one process and beside a hand-written Ray Data pipeline, in one run.

    python benchmarks/bench_ray.py [--rows 2000000]

Data and models as in bench_onnx.py (.bench/): 2M rows x 20 float32; ONNX lr and sklearn rf logged
as an MLflow pyfunc, both trained on the first 50k rows. For each model, each in its own process:

- single: ``score_partition`` in one process (the default engine);
- ray-1 / ray-2: ``score_partition(..., engine=RayEngine(...))`` with 1 and 2 actors (1 CPU each),
  on a local ``ray.init(num_cpus=2)``;
- baseline: what a user writes by hand with Ray Data:
  ``read_parquet -> map_batches(actor class: onnxruntime / mlflow.pyfunc) -> write_parquet``
  (no pinned version, no atomic commit, no lineage; files named by Ray).

Times: ``seconds`` is the job itself after ``ray.init`` (actor start-up and model loads included,
because a Ray job pays them every time); ``steady`` is rows/s between the first and the last chunk
the driver received (ours only); with few row groups and 2 actors it reads high (the second actor's
first row group is done before the window opens), so take per-actor rates from the 1-actor runs.
``init`` is ``ray.init``.
Memory: peak of the sum over every process of the job (driver, GCS, raylet, workers), sampled
every 0.2 s from /proc: RSS (double-counts the shared object store) and PSS (shares it out).
Ray's own memory accounting only covers the object store and under-reports. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

# Read by Ray when imported: with it, a local Ray binds loopback, not the machine's interface address.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_onnx import FEATURES, ROOT, make_data, make_models

PARTITION = "2026-01-01"
MODELS = {"lr": "models:/lr_onnx/1", "rf": "models:/rf_sklearn/1"}


class TreeMemory:
    """Peak total RSS and PSS of this process and all its descendants (Ray's raylet, GCS, workers)."""

    def __init__(self) -> None:
        import psutil

        self.root = psutil.Process()
        self.peak_rss = self.peak_pss = 0.0
        self.processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import psutil

        while not self._stop.wait(0.2):
            rss = pss = 0
            processes = [self.root, *self.root.children(recursive=True)]
            for p in processes:
                try:
                    info = p.memory_full_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                rss += info.rss
                pss += info.pss
            self.peak_rss = max(self.peak_rss, rss / 2**20)
            self.peak_pss = max(self.peak_pss, pss / 2**20)
            self.processes = max(self.processes, len(processes))

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def start_ray() -> float:
    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    return time.perf_counter() - t0


def case_ours(data: Path, model: str, out: Path, actors: int) -> dict:
    from ml_assets.datasets import ParquetDataset
    from ml_assets.ray_engine import ModelServiceConfig, RayEngine
    from ml_assets.scoring import score_partition
    from ml_assets.service import ModelService

    tracking_uri = os.environ["BENCH_TRACKING_URI"]
    # One process: the runtime's defaults (1 thread a session, a session per core). Ray: the 2 cores
    # split between the actors, each scoring its chunks one after another.
    runtime_options = {"onnx": {"outputs": ["probability_1"], **({"threads": 2 // actors} if actors else {})}}
    init = start_ray() if actors else 0.0
    with TreeMemory() as memory:
        t0 = time.perf_counter()
        with ModelService.from_uri("mlflow", tracking_uri, runtime_options=runtime_options) as service:
            loaded = service.open(MODELS[model])
            load = time.perf_counter() - t0
            engine = None
            if actors:
                models = ModelServiceConfig("mlflow", tracking_uri, runtime_options=runtime_options)
                engine = RayEngine(models=models, min_actors=actors, max_actors=actors, cpus_per_actor=1)
            marks: list[tuple[float, int]] = []
            result = score_partition(
                loaded.scorer, loaded.version,
                ParquetDataset(str(data), partition_column="date"), ParquetDataset(str(out), partition_column="date"),
                partition=PARTITION, passthrough=["id"], engine=engine,
                on_progress=lambda p: marks.append((time.perf_counter(), p.rows_done)),
            )  # fmt: skip
    (t_first, rows_first), (t_last, rows_last) = marks[0], marks[-1]
    steady = (rows_last - rows_first) / (t_last - t_first) if t_last > t_first else 0.0
    return {
        "seconds": result.seconds, "rows": result.rows_out, "load": load, "init": init, "steady": steady,
        "peak_rss": memory.peak_rss, "peak_pss": memory.peak_pss, "processes": memory.processes,
        "output": result.output_uri,
    }  # fmt: skip


def case_baseline(data: Path, model: str, out: Path, actors: int) -> dict:
    """The hand-written Ray Data pipeline a user would start from."""
    import ray

    tracking_uri = os.environ["BENCH_TRACKING_URI"]
    init = start_ray()

    class OnnxPredictor:
        def __init__(self) -> None:
            import onnxruntime as ort

            from ml_assets.resources.registries.mlflow import MlflowRegistry

            registry = MlflowRegistry(tracking_uri)
            path = registry.fetch(registry.resolve(MODELS["lr"])) / "model.onnx"
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def __call__(self, batch: dict) -> dict:
            import numpy as np

            x = np.column_stack([batch[c] for c in FEATURES])
            (probabilities,) = self.session.run(["probabilities"], {"X": x})
            return {"id": batch["id"], "probability_1": probabilities[:, 1]}

    class PyfuncPredictor:
        def __init__(self) -> None:
            import mlflow

            mlflow.set_tracking_uri(tracking_uri)
            self.model = mlflow.pyfunc.load_model(MODELS["rf"])

        def __call__(self, batch):  # a pandas DataFrame
            import numpy as np
            import pandas as pd

            probabilities = np.asarray(self.model.predict(batch[FEATURES]))
            return pd.DataFrame({"id": batch["id"], "probability_1": probabilities[:, 1]})

    predictor, batch_format = (OnnxPredictor, "numpy") if model == "lr" else (PyfuncPredictor, "pandas")
    with TreeMemory() as memory:
        t0 = time.perf_counter()
        dataset = ray.data.read_parquet(str(data / f"date={PARTITION}"))
        dataset = dataset.map_batches(
            predictor, batch_format=batch_format, batch_size=65_536,
            compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=1,
        )  # fmt: skip
        dataset.write_parquet(str(out))
        seconds = time.perf_counter() - t0
    rows = sum(
        __import__("pyarrow.parquet", fromlist=["pq"]).ParquetFile(f).metadata.num_rows for f in out.glob("*.parquet")
    )
    return {
        "seconds": seconds, "rows": rows, "load": 0.0, "init": init, "steady": 0.0,
        "peak_rss": memory.peak_rss, "peak_pss": memory.peak_pss, "processes": memory.processes,
        "output": str(out),
    }  # fmt: skip


CASES = {"ours": case_ours, "baseline": case_baseline}


def run_case(case: str, data: Path, model: str, actors: int, timeout: float) -> dict:
    out = ROOT / "out-ray" / f"{case}-{model}-{actors}"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    t0 = time.perf_counter()
    # Its own session, so a case that times out is ended whole: driver, raylet, GCS and workers.
    process = subprocess.Popen(
        [sys.executable, __file__, "--case", case, "--data", str(data), "--model", model, "--actors", str(actors),
         "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    done = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    if done.returncode != 0:
        raise RuntimeError(f"{case} {model} {actors} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - t0
    return result


def same_predictions(a: dict, b: dict) -> str:
    import numpy as np
    import pyarrow.parquet as pq

    left = pq.read_table(a["output"]).sort_by("id")
    right = pq.read_table(b["output"]).sort_by("id")
    if left.num_rows != right.num_rows:
        return f"rows differ: {left.num_rows} vs {right.num_rows}"
    # The score of class 1: probability_1, the last column, under the prediction contract of every runtime.
    diff = np.abs(left.column(left.num_columns - 1).to_numpy() - right.column(right.num_columns - 1).to_numpy()).max()
    return "identical" if diff == 0 else f"max diff {diff:.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--timeout", type=float, default=180, help="Seconds a case may take (a hung case is ended).")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--actors", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:  # a child process: one measurement, printed as JSON
        print(json.dumps(CASES[args.case](Path(args.data), args.model, Path(args.out), args.actors)))
        return

    ROOT.mkdir(exist_ok=True)
    os.environ["BENCH_TRACKING_URI"] = make_models()
    os.environ.setdefault("ML_ASSETS_CACHE_DIR", str(ROOT / "cache"))
    data = make_data(args.rows)
    plan = [("single", "ours", 0), ("ray, 1 actor", "ours", 1), ("ray, 2 actors", "ours", 2)]
    plan += [("hand-written Ray Data, 1 actor", "baseline", 1), ("hand-written Ray Data, 2 actors", "baseline", 2)]
    results: dict[tuple[str, str], dict] = {}
    for model in MODELS:
        for label, case, actors in plan:
            try:
                results[model, label] = r = run_case(case, data, model, actors, args.timeout)
            except subprocess.TimeoutExpired:
                print(f"{model} {label}: no result within {args.timeout:.0f} s", file=sys.stderr)
                continue
            print(f"{model} {label:34s} {r['rows'] / r['seconds']:>12,.0f} rows/s", file=sys.stderr)

    import ray

    print(f"# Ray engine benchmark, {date.today()}")
    print(
        f"\n{os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
        f"Python {platform.python_version()}, ray {ray.__version__}; {args.rows:,} rows x 20 float32; "
        "local ray.init(num_cpus=2); shared machine: compare ratios within this table only.\n"
    )
    print("| model | path | rows/s end to end | vs single | steady rows/s | job s | ray.init s | "
          "peak RSS, all processes (MiB) | peak PSS (MiB) | processes | output |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for model in MODELS:
        single = results[model, "single"]
        for label, _, _ in plan:
            r = results.get((model, label))
            if r is None:
                print(f"| {model} | {label} | did not finish in {args.timeout:.0f} s | | | | | | | | |")
                continue
            rate = r["rows"] / r["seconds"]
            steady = f"{r['steady']:,.0f}" if r["steady"] else "-"
            check = "reference" if label == "single" else same_predictions(single, r)
            print(
                f"| {'lr (ONNX)' if model == 'lr' else 'rf (pyfunc)'} | {label} | {rate:,.0f} | "
                f"{rate / (single['rows'] / single['seconds']):.2f}x | {steady} | {r['seconds']:.1f} | "
                f"{r['init']:.1f} | {r['peak_rss']:,.0f} | {r['peak_pss']:,.0f} | {r['processes']} | {check} |"
            )


if __name__ == "__main__":
    main()
