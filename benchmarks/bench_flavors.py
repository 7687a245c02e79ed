"""The sklearn, LightGBM and XGBoost flavors side by side, in one run (see ../shared/BENCHMARKS.md).

    python benchmarks/bench_flavors.py [--rows 2000000] [--repeat 2]

Run from the project's virtualenv, which has neither LightGBM nor XGBoost. It builds (once, cached
by content hash under .bench/envs) a benchmark environment with both libraries, onnxmltools and
this project, and runs the comparison inside it, each case best of ``--repeat``, steady state
(imports and model loading reported apart):

- ours native: ``score_partition`` with the native runtime (Parquet -> Arrow -> numpy -> the
  library's predictor -> Parquet, atomic commit);
- ours pyfunc: ``score_partition`` with the pyfunc runtime (in-process);
- peer: pandas + ``mlflow.pyfunc`` (``read_parquet`` -> ``predict`` -> ``to_parquet``);
- compute only: the library's own predict on an in-memory float32 matrix (no I/O), on every core
  (a forest: chunks on one thread per core, as ours, exactly equal to one call);
- ONNX: the same model converted (skl2onnx / onnxmltools), ORT on the in-memory matrix, and its
  largest probability deviation from the library's.

Then, from the project's virtualenv, the model environments: the first build of the LightGBM model's
environment (uv, from the package index, warm uv cache), and what reusing it adds to a run
(lookup, and a worker starting in it). Prints Markdown tables. Not a test: nothing fails on speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / ".bench"
FEATURES = [f"f{i}" for i in range(20)]
PARTITION = "2026-01-01"
BENCH_REQUIREMENTS = [
    "mlflow==3.17.2",
    "lightgbm==4.7.0",
    "xgboost-cpu==3.2.0",
    "scikit-learn==1.9.0",
    "skl2onnx==1.20.0",
    "onnxmltools==1.16.0",
    "onnxruntime==1.31.1",
    "onnx==1.23.2",
    "pandas==3.1.1",
    "numpy==2.4.6",
    "pyarrow==25.0.1",
    f"-e {REPO}",
]


# -- inside the benchmark environment ------------------------------------------------------------


def make_data(rows: int) -> Path:
    """rows x 20 float32 standard-normal features (seed 0); one file, 256k-row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = ROOT / f"flavors-data-{rows}" / f"date={PARTITION}"
    file = folder / "part-0.parquet"
    if file.exists():
        return folder.parent
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    schema = pa.schema([pa.field(f, pa.float32()) for f in FEATURES])
    with pq.ParquetWriter(file.with_suffix(".tmp"), schema) as writer:
        for start in range(0, rows, 1_048_576):
            x = rng.standard_normal((min(1_048_576, rows - start), 20), dtype=np.float32)
            writer.write_table(pa.Table.from_arrays([pa.array(x[:, i]) for i in range(20)], schema=schema), 262_144)
    file.with_suffix(".tmp").rename(file)
    return folder.parent


def make_models() -> dict[str, tuple[Path, object]]:
    """rf (sklearn, 50 trees), lgbm (LGBMClassifier, 100 trees), xgb (XGBClassifier, 100 trees), on 50k rows."""
    import lightgbm as lgb
    import mlflow.lightgbm
    import mlflow.sklearn
    import mlflow.xgboost
    import pandas as pd
    import xgboost as xgb
    from mlflow.models import infer_signature
    from sklearn.ensemble import RandomForestClassifier

    flavors = {"rf": mlflow.sklearn, "lgbm": mlflow.lightgbm, "xgb": mlflow.xgboost}
    folder = ROOT / "flavors-models"
    if all((folder / name / "MLmodel").exists() for name in flavors):
        return {name: (folder / name, flavor.load_model(str(folder / name))) for name, flavor in flavors.items()}
    rng = np.random.default_rng(1)
    x = pd.DataFrame(rng.standard_normal((50_000, 20), dtype=np.float32), columns=FEATURES)
    y = ((x["f0"] + x["f1"] * x["f2"] - 0.5 * x["f3"] + rng.normal(0, 0.5, len(x))) > 0).astype(int).to_numpy()
    trained = {
        "rf": RandomForestClassifier(n_estimators=50, max_depth=10, random_state=0).fit(x, y),
        "lgbm": lgb.LGBMClassifier(n_estimators=100, num_leaves=31, verbose=-1, random_state=0).fit(x, y),
        "xgb": xgb.XGBClassifier(n_estimators=100, max_depth=6, random_state=0).fit(x, y),
    }
    models = {}
    for name, model in trained.items():
        path = ROOT / "flavors-models" / name
        if not (path / "MLmodel").exists():
            flavor = {"rf": mlflow.sklearn, "lgbm": mlflow.lightgbm, "xgb": mlflow.xgboost}[name]
            extra = {"skops_trusted_types": ["sklearn.tree._tree.Tree"]} if name == "rf" else {}
            library = {"rf": "scikit-learn==1.9.0", "lgbm": "lightgbm==4.7.0", "xgb": "xgboost-cpu==3.2.0"}[name]
            requirements = ["mlflow==3.17.2", "numpy==2.4.6", "pandas==3.1.1", "scikit-learn==1.9.0", library]
            signature = infer_signature(x, model.predict(x))
            pins = sorted(set(requirements))
            flavor.save_model(model, str(path), signature=signature, pip_requirements=pins, **extra)
        models[name] = (path, model)
    return models


def _version(name: str):
    from ml_assets.resources.core.models import ModelVersion

    return ModelVersion(name=name, version="1", format="native", artifact_uri=f"file:///{name}", registry="bench")


def ours(runtime: str, path: Path, data: Path, out: Path, **options) -> dict:
    from ml_assets.datasets import ParquetDataset
    from ml_assets.resources.core.plugins import create_runtime
    from ml_assets.scoring import score_partition

    started = time.perf_counter()
    scorer = create_runtime(runtime, **options).load(_version(path.name), path)
    load = time.perf_counter() - started
    started, cpu = time.perf_counter(), time.process_time()
    result = score_partition(
        scorer,
        _version(path.name),
        ParquetDataset(str(data), partition_column="date"),
        ParquetDataset(str(out), partition_column="date"),
        partition=PARTITION,
    )
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    scorer.close()
    return {"seconds": seconds, "cpu": cpu, "rows": result.rows_out, "load": load}


def peer(path: Path, data: Path, out: Path) -> dict:
    import mlflow.pyfunc
    import pandas as pd

    started = time.perf_counter()
    model = mlflow.pyfunc.load_model(str(path))
    load = time.perf_counter() - started
    started = time.perf_counter()
    frame = pd.read_parquet(data / f"date={PARTITION}")
    prediction = np.asarray(model.predict(frame))
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"prediction": prediction}).to_parquet(out / "part-0.parquet")
    return {"seconds": time.perf_counter() - started, "rows": len(frame), "load": load}


def compute_only(name: str, model, matrix: np.ndarray) -> tuple[dict, np.ndarray]:
    """The library's own predict_proba on the in-memory matrix, on every core: the ceiling for ours.

    LightGBM and XGBoost thread inside one call. A scikit-learn forest keeps its own ``n_jobs`` (more
    threads sum the trees in another order: other last bits), so, as the native runtime does, chunks of
    the scoring core's size go to one thread per core (its tree predict releases the GIL): the same
    rows, the same bits (checked against one single-threaded call), both cores busy.
    """
    from concurrent.futures import ThreadPoolExecutor

    from ml_assets.resources.runtimes._common import available_cores
    from ml_assets.scoring import DEFAULT_CHUNK_ROWS

    cores = available_cores()
    started, cpu = time.perf_counter(), time.process_time()
    if name == "rf":
        chunks = [matrix[i : i + DEFAULT_CHUNK_ROWS] for i in range(0, len(matrix), DEFAULT_CHUNK_ROWS)]
        with ThreadPoolExecutor(cores) as pool:
            proba = np.concatenate(list(pool.map(model.predict_proba, chunks)))
    elif name == "lgbm":
        proba = model.predict_proba(matrix, num_threads=cores)
    else:
        proba = model.set_params(n_jobs=cores).predict_proba(matrix)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"seconds": seconds, "cpu": cpu, "rows": len(matrix), "threads": cores}, proba[:, 1]


def onnx_case(name: str, model, matrix: np.ndarray, reference: np.ndarray) -> dict:
    import onnxruntime as ort

    if name == "rf":
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType

        onnx = convert_sklearn(model, initial_types=[("input", FloatTensorType([None, 20]))], options={"zipmap": False})
    else:
        import onnxmltools
        from onnxmltools.convert.common.data_types import FloatTensorType

        types = [("input", FloatTensorType([None, 20]))]
        if name == "lgbm":
            onnx = onnxmltools.convert_lightgbm(model, initial_types=types, zipmap=False)
        else:
            onnx = onnxmltools.convert_xgboost(model, initial_types=types)
    session = ort.InferenceSession(onnx.SerializeToString(), providers=["CPUExecutionProvider"])
    output = session.get_outputs()[1].name
    started = time.perf_counter()
    proba = np.concatenate(
        [session.run([output], {"input": matrix[i : i + 65_536]})[0][:, 1] for i in range(0, len(matrix), 65_536)]
    )
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "rows": len(matrix), "max_dev": float(np.max(np.abs(proba - reference)))}


def check_equal(out: Path, reference: np.ndarray) -> bool:
    import pyarrow.dataset as ds

    table = ds.dataset(str(out / f"date={PARTITION}"), format="parquet").to_table(columns=["probability_1"])
    return bool(np.array_equal(table["probability_1"].to_numpy(), reference))


def best(repeat: int, label: str, run) -> dict:
    import shutil

    runs = []
    for i in range(repeat):
        out = ROOT / "flavors-out" / f"{label}-{i}"
        shutil.rmtree(out, ignore_errors=True)
        runs.append({**run(out), "out": str(out)})
    return min(runs, key=lambda r: r["seconds"])


def inner(rows: int, repeat: int) -> None:
    import pyarrow.parquet as pq

    data = make_data(rows)
    models = make_models()
    matrix = np.ascontiguousarray(
        np.column_stack([c.to_numpy() for c in pq.read_table(data / f"date={PARTITION}").columns])
    )
    results = {}
    for name, (path, model) in models.items():
        cases: dict[str, dict] = {}
        if name == "rf":  # the forest's reference: one call, its own n_jobs (single-threaded, the model's bits)
            reference = model.predict_proba(matrix)[:, 1]
        compute, chunked = compute_only(name, model, matrix)
        if name == "rf" and not np.array_equal(chunked, reference):
            msg = "rf: predict_proba on chunks differs from one call; the compute-only ceiling would not be exact"
            raise AssertionError(msg)
        reference = chunked
        compute_runs = [compute] + [compute_only(name, model, matrix)[0] for _ in range(repeat - 1)]
        cases["compute"] = min(compute_runs, key=lambda r: r["seconds"])
        cases["native"] = best(repeat, f"{name}-native", lambda out, p=path: ours("native", p, data, out))
        cases["pyfunc"] = best(repeat, f"{name}-pyfunc", lambda out, p=path: ours("pyfunc", p, data, out))
        cases["peer"] = best(repeat, f"{name}-peer", lambda out, p=path: peer(p, data, out))
        cases["onnx"] = onnx_case(name, model, matrix, reference)
        cases["native"]["equal"] = check_equal(Path(cases["native"]["out"]), reference)
        results[name] = cases
        print(f"{name}: {json.dumps(cases)}", file=sys.stderr, flush=True)
    print(json.dumps(results))


# -- from the project's virtualenv -------------------------------------------------------------


def environment_reuse(lgbm_model: Path) -> dict:
    """First build of the model's environment (fresh folder), then what reusing it adds to a run."""
    import shutil

    from ml_assets.resources.core.envs import EnvironmentStore
    from ml_assets.resources.runtimes.native import NativeRuntime

    root = ROOT / "envs-reuse"
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    built = EnvironmentStore(root).for_model(lgbm_model, what="lgbm")
    first_build = time.perf_counter() - started
    lookups = []
    for _ in range(5):
        started = time.perf_counter()
        EnvironmentStore(root).for_model(lgbm_model, what="lgbm")
        lookups.append(time.perf_counter() - started)
    starts = []
    for _ in range(2):  # the first start in a fresh environment also writes the bytecode of what it imports
        started = time.perf_counter()
        scorer = NativeRuntime(env_manager="uv", env_dir=str(root)).load(_version("lgbm"), lgbm_model)
        starts.append(time.perf_counter() - started)
        scorer.close()
    return {
        "first_build": first_build,
        "recorded": built.build_seconds,
        "lookup": min(lookups),
        "worker": starts[0],
        "worker_again": starts[1],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        inner(args.rows, args.repeat)
        return
    from ml_assets.resources.core.envs import EnvironmentStore

    started = time.perf_counter()
    env = EnvironmentStore(ROOT / "envs").ensure(BENCH_REQUIREMENTS, what="bench_flavors")
    bench_env_seconds = time.perf_counter() - started
    done = subprocess.run(
        [str(env.python), __file__, "--inner", "--rows", str(args.rows), "--repeat", str(args.repeat)],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
        timeout=7200,
    )
    results = json.loads(done.stdout.strip().splitlines()[-1])
    reuse = environment_reuse(ROOT / "flavors-models" / "lgbm")

    def rate(case: dict) -> float:
        return case["rows"] / case["seconds"]

    cores = os.cpu_count()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    print(
        f"\nTree flavors, {date.today()}, {cores} cores, {memory:.0f} GiB, Python {platform.python_version()}, "
        f"{args.rows:,} rows x 20 float32, best of {args.repeat}; lightgbm 4.7.0, xgboost-cpu 3.2.0, "
        "scikit-learn 1.9.0, mlflow 3.17.2, onnxruntime 1.31.1. Machine shared with other jobs.\n"
    )
    print(
        "| model | ours native | ours pyfunc | pandas + mlflow.pyfunc | library compute only | ONNX (ORT) "
        "| native / peer | native / compute | CPU s: native / compute | ONNX max deviation | native == library |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, cases in results.items():
        native, pyfunc, peer_case, compute, onnx = (cases[k] for k in ("native", "pyfunc", "peer", "compute", "onnx"))
        print(
            f"| {name} | {rate(native):,.0f} rows/s | {rate(pyfunc):,.0f} | {rate(peer_case):,.0f} | "
            f"{rate(compute):,.0f} | {rate(onnx):,.0f} | {rate(native) / rate(peer_case):.2f}x | "
            f"{rate(native) / rate(compute):.0%} | {native['cpu']:.2f} / {compute['cpu']:.2f} | "
            f"{onnx['max_dev']:.2g} | {'yes' if native['equal'] else 'NO'} |"
        )
    print(
        f"\nModel environments (uv {_uv_version()}): first build of the LightGBM model's environment "
        f"{reuse['first_build']:.1f} s (warm uv cache; benchmark environment {bench_env_seconds:.1f} s, "
        f"{'built' if env.built else 'reused'}); once built, looking it up {reuse['lookup'] * 1000:.1f} ms; "
        f"a native worker starting in it (interpreter, imports, model load; an LGBMClassifier, so scikit-learn "
        f"is imported) {reuse['worker']:.1f} s the first time, {reuse['worker_again']:.1f} s the next."
    )


def _uv_version() -> str:
    from importlib.metadata import version

    return version("uv")


if __name__ == "__main__":
    main()
