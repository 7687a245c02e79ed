"""Where the native runtime's time goes beyond the forest's own predict_proba, in CPU seconds.

    python benchmarks/profile_native.py [--rows 1000000] [--repeat 2]

From the project's virtualenv (scikit-learn is there). An sklearn forest as in bench_flavors (50 trees,
depth 10, 20 float32 features, trained on 50k rows) scores a partition of ``--rows`` through
``score_partition`` in this process. The CPU time of every thread is summed (process CPU) and split:
inside ``predict_proba``, building the matrix, the rest of the scorer (output columns), and outside the
scorer (Parquet read and write, the plan, the summary, the pipeline). Beside it, the ceiling
bench_flavors calls "compute only": ``predict_proba`` on the in-memory matrix in 64k-row chunks, one
thread per core. CPU seconds, unlike wall time, mean something on a machine shared with other jobs.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FEATURES = [f"f{i}" for i in range(20)]


def main() -> None:
    import mlflow.sklearn
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.ensemble import RandomForestClassifier

    from ml_assets.datasets import ParquetDataset
    from ml_assets.resources.core.models import ModelVersion
    from ml_assets.resources.runtimes import _flavors
    from ml_assets.resources.runtimes._common import available_cores
    from ml_assets.resources.runtimes.native import NativeRuntime
    from ml_assets.scoring import DEFAULT_CHUNK_ROWS, score_partition

    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="profile-native-"))
    try:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((args.rows, 20), dtype=np.float32)
        (root / "data" / "date=2026-01-01").mkdir(parents=True)
        columns = [pa.array(x[:, i]) for i in range(20)]
        pq.write_table(pa.table(columns, names=FEATURES), root / "data" / "date=2026-01-01" / "p.parquet", 262_144)
        train = pd.DataFrame(np.random.default_rng(1).standard_normal((50_000, 20), dtype=np.float32), columns=FEATURES)
        y = (train["f0"] + train["f1"] * train["f2"] - 0.5 * train["f3"] > 0).astype(int).to_numpy()
        model = RandomForestClassifier(n_estimators=50, max_depth=10, random_state=0).fit(train, y)
        path = root / "rf"
        signature = infer_signature(train, model.predict(train))
        trusted = ["sklearn.tree._tree.Tree"]
        mlflow.sklearn.save_model(model, str(path), signature=signature, skops_trusted_types=trusted)
        version = ModelVersion(name="rf", version="1", format="native", artifact_uri=path.as_uri(), registry="p")
        scorer = NativeRuntime().load(version, path)

        spent = {"predict_proba": 0.0, "matrix": 0.0, "scorer": 0.0}
        lock = threading.Lock()

        def counted(function, key):
            def run(*a, **k):
                started = time.thread_time()
                try:
                    return function(*a, **k)
                finally:
                    with lock:
                        spent[key] += time.thread_time() - started

            return run

        predictor = scorer._predictor
        predictor._predict = counted(predictor._predict, "predict_proba")
        predictor.score = counted(predictor.score, "scorer")
        _flavors.to_matrix = counted(_flavors.to_matrix, "matrix")
        print(f"{args.rows:,} rows, {available_cores()} cores; CPU seconds (wall)")
        for _ in range(args.repeat):
            shutil.rmtree(root / "out", ignore_errors=True)
            spent.update(dict.fromkeys(spent, 0.0))
            wall, cpu = time.perf_counter(), time.process_time()
            source = ParquetDataset(str(root / "data"), partition_column="date")
            dest = ParquetDataset(str(root / "out"), partition_column="date")
            score_partition(scorer, version, source, dest, partition="2026-01-01")
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            rest = spent["scorer"] - spent["predict_proba"] - spent["matrix"]
            print(
                f"ours native: {cpu:.2f} ({wall:.2f} wall) = predict_proba {spent['predict_proba']:.2f} + matrix "
                f"{spent['matrix']:.3f} + output columns {rest:.3f} + outside the scorer {cpu - spent['scorer']:.2f}"
            )
        scorer.close()
        _flavors._forget_feature_names(model)  # a matrix has no names; as the runtime does
        chunks = [x[i : i + DEFAULT_CHUNK_ROWS] for i in range(0, len(x), DEFAULT_CHUNK_ROWS)]
        for _ in range(args.repeat):
            wall, cpu = time.perf_counter(), time.process_time()
            with ThreadPoolExecutor(available_cores()) as pool:
                list(pool.map(model.predict_proba, chunks))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(f"compute only (chunks on {available_cores()} threads): {cpu:.2f} ({wall:.2f} wall)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
