"""In-process runtimes (PMML, H2O MOJO, MLflow pyfunc) beside their obvious ways, in one run.

    python benchmarks/bench_inprocess.py [--rows 2000000] [--peer-rows 100000] [--repeat 2]

Data and training follow ../shared/BENCHMARKS.md (the same files as bench_onnx.py, in .bench/):
rf = sklearn RandomForestClassifier(50 trees, depth 8) -> PMML (sklearn2pmml); gbm = H2O GBM
(50 trees, depth 5, binomial, h2o==3.46.0.11) -> MOJO; both trained on the first 50k rows.

- ours: ``score_partition`` end to end (read Parquet -> score -> write key + predictions) on
  ``--rows`` rows, steady state (start-up and model load reported apart).
- peers, on ``--peer-rows`` rows because they are slow (rows/s is what compares):
  pypmml ``Model.predict(DataFrame)``; ``h2o.mojo_predict_pandas`` (CSV + a java process per call,
  with the h2o-genmodel.jar H2O hands out); pandas -> ``mlflow.pyfunc`` -> ``to_parquet``.
  Each includes reading the Parquet and writing the result, like ours.
- Predictions of ours and the peer are compared on the peer's rows.

Each measurement runs in its own process. Prints a Markdown table. Not a test.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_onnx import FEATURES, ROOT, make_data, make_models, peak_rss_mib

HERE = ROOT / "inprocess"
PARTITION = "2026-01-01"


# -- models (made once, kept in .bench/inprocess/) ---------------------------------------------


def training_set() -> tuple[np.ndarray, np.ndarray]:
    import pyarrow.parquet as pq

    head = pq.read_table(make_data(2_000_000) / f"date={PARTITION}", columns=FEATURES).slice(0, 50_000)
    x = np.column_stack([head[c].to_numpy() for c in FEATURES])
    w = np.random.default_rng(1).standard_normal(20)
    y = (x @ w + np.random.default_rng(2).standard_normal(len(x)) > 0).astype(int)
    return x, y


def make_pmml() -> Path:
    target = HERE / "rf.pmml"
    if target.exists():
        return target
    import pandas as pd
    from sklearn.ensemble import RandomForestClassifier
    from sklearn2pmml import sklearn2pmml
    from sklearn2pmml.pipeline import PMMLPipeline

    x, y = training_set()
    pipeline = PMMLPipeline([("m", RandomForestClassifier(n_estimators=50, max_depth=8, random_state=0, n_jobs=-1))])
    pipeline.fit(pd.DataFrame(x, columns=FEATURES), y)
    sklearn2pmml(pipeline, str(target.with_suffix(".tmp")))
    target.with_suffix(".tmp").rename(target)
    return target


def make_mojo() -> tuple[Path, Path]:
    """The gbm MOJO and the h2o-genmodel.jar the H2O node hands out with it."""
    mojo, jar = HERE / "gbm.zip", HERE / "h2o-genmodel.jar"
    if mojo.exists() and jar.exists():
        return mojo, jar
    import h2o
    import pandas as pd
    from h2o.estimators import H2OGradientBoostingEstimator

    x, y = training_set()
    h2o.init(ip="127.0.0.1", nthreads=-1, max_mem_size="2G")
    try:
        frame = pd.DataFrame(x.astype(np.float64), columns=FEATURES)
        frame["y"] = y.astype(str)
        hf = h2o.H2OFrame(frame)
        hf["y"] = hf["y"].asfactor()
        model = H2OGradientBoostingEstimator(ntrees=50, max_depth=5, seed=1, model_id="gbm_bench")
        model.train(x=FEATURES, y="y", training_frame=hf)
        saved = Path(model.download_mojo(path=str(HERE), get_genmodel_jar=True, genmodel_name=jar.name))
        saved.rename(mojo)
    finally:
        h2o.cluster().shutdown()
    return mojo, jar


def version(name: str, fmt: str):
    from ml_assets.resources.core.models import ModelVersion

    return ModelVersion(name=name, version="1", format=fmt, artifact_uri=f"file:///{name}", registry="bench")


# -- the measured cases (each in its own process) ----------------------------------------------


def _ours(scorer, model_version, data: Path, out: Path, load: float, **options) -> dict:
    from ml_assets.datasets import ParquetDataset
    from ml_assets.scoring import score_partition

    result = score_partition(
        scorer,
        model_version,
        ParquetDataset(str(data), partition_column="date"),
        ParquetDataset(str(out / "ours"), partition_column="date"),
        partition=PARTITION,
        passthrough=["id"],
        **options,
    )
    scorer.close()
    return {"seconds": result.seconds, "rows": result.rows_out, "load_seconds": load}


def case_pmml_ours(data: Path, out: Path, engine: str) -> dict:
    from ml_assets.resources.runtimes.pmml import PmmlRuntime

    t0 = time.perf_counter()
    scorer = PmmlRuntime(engine=engine).load(version("rf_pmml", "pmml"), make_pmml())
    load = time.perf_counter() - t0
    result = _ours(scorer, version("rf_pmml", "pmml"), data, out, load)
    result["engine"] = scorer.engine
    return result


def case_pmml_peer(data: Path, out: Path) -> dict:
    import pandas as pd
    from pypmml import Model

    t0 = time.perf_counter()
    model = Model.fromFile(str(make_pmml()))
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    frame = pd.read_parquet(data / f"date={PARTITION}")
    predicted = model.predict(frame[FEATURES])
    seconds = time.perf_counter() - t0
    # Untimed: pmml4s's own output, sent and read back as exact JSON (pandas' to_json rounds
    # inputs to 10 digits and read_json parses outputs imprecisely); this is what ours must match.
    values = frame[FEATURES].to_numpy(np.float64).tolist()
    raw = json.loads(model.call("predict", json.dumps({"columns": FEATURES, "data": values})))
    exact = [row[raw["columns"].index("probability(1)")] for row in raw["data"]]
    pd.DataFrame({"id": frame["id"], "p1": exact, "p1_dataframe": predicted["probability(1)"]}).to_parquet(
        out / "peer.parquet"
    )
    return {"seconds": seconds, "rows": len(frame), "load_seconds": load}


def case_h2o_ours(data: Path, out: Path, engine: str) -> dict:
    from ml_assets.resources.runtimes.h2o import H2oMojoRuntime

    t0 = time.perf_counter()
    scorer = H2oMojoRuntime(engine=engine or "auto").load(version("gbm", "h2o_mojo"), make_mojo()[0])
    load = time.perf_counter() - t0
    result = _ours(scorer, version("gbm", "h2o_mojo"), data, out, load)
    result["engine"] = scorer.engine
    return result


def case_h2o_peer(data: Path, out: Path) -> dict:
    import h2o
    import pandas as pd

    mojo, jar = make_mojo()
    t0 = time.perf_counter()
    frame = pd.read_parquet(data / f"date={PARTITION}")
    predicted = h2o.mojo_predict_pandas(frame[FEATURES], str(mojo), genmodel_jar_path=str(jar))
    pd.DataFrame({"id": frame["id"], "p1": predicted["p1"]}).to_parquet(out / "peer.parquet")
    return {"seconds": time.perf_counter() - t0, "rows": len(frame), "load_seconds": 0.0}


def case_pyfunc_ours(data: Path, out: Path, isolation: str) -> dict:
    from ml_assets.resources.registries.mlflow import MlflowRegistry
    from ml_assets.resources.runtimes.pyfunc import PyfuncRuntime

    t0 = time.perf_counter()
    registry = MlflowRegistry(os.environ["BENCH_TRACKING_URI"])
    model_version = registry.resolve("models:/rf_sklearn/1")
    scorer = PyfuncRuntime(isolation=isolation).load(model_version, registry.fetch(model_version))
    load = time.perf_counter() - t0
    return _ours(scorer, model_version, data, out, load)


def case_pyfunc_peer(data: Path, out: Path) -> dict:
    import mlflow
    import pandas as pd

    t0 = time.perf_counter()
    mlflow.set_tracking_uri(os.environ["BENCH_TRACKING_URI"])
    loaded = mlflow.pyfunc.load_model("models:/rf_sklearn/1")
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    frame = pd.read_parquet(data / f"date={PARTITION}")
    probabilities = np.asarray(loaded.predict(frame[FEATURES]))
    pd.DataFrame({"id": frame["id"], "p1": probabilities[:, 1]}).to_parquet(out / "peer.parquet")
    return {"seconds": time.perf_counter() - t0, "rows": len(frame), "load_seconds": load}


CASES = {
    "pmml_ours": case_pmml_ours,
    "pmml_peer": case_pmml_peer,
    "h2o_ours": case_h2o_ours,
    "h2o_peer": case_h2o_peer,
    "pyfunc_ours": case_pyfunc_ours,
    "pyfunc_peer": case_pyfunc_peer,
}


def run_case(name: str, data: Path, option: str = "") -> dict:
    out = ROOT / "out" / f"inprocess-{name}-{option or 'default'}"
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--case", name, "--data", str(data), "--out", str(out), "--option", option]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["out"] = str(out)
    return result


def best_of(repeat: int, name: str, data: Path, option: str = "") -> dict:
    runs = [run_case(name, data, option) for _ in range(repeat)]
    best = min(runs, key=lambda r: r["seconds"])
    print(f"{name:12s} {option:8s}: {best['rows'] / best['seconds']:>12,.0f} rows/s", file=sys.stderr)
    return best


def agreement(ours: dict, peer: dict, ours_column: str) -> str:
    """Exactly equal rows, and the largest difference, over the peer's rows."""
    import pyarrow.parquet as pq

    theirs = pq.read_table(Path(peer["out"]) / "peer.parquet")
    mine = pq.read_table(Path(ours["out"]) / "ours" / f"date={PARTITION}").slice(0, theirs.num_rows)
    assert mine["id"].to_pylist() == theirs["id"].to_pylist()
    a, b = mine[ours_column].to_numpy(zero_copy_only=False), theirs["p1"].to_numpy(zero_copy_only=False)
    same = int(np.sum((a == b) | (np.isnan(a) & np.isnan(b))))
    note = f"{same:,}/{len(a):,} identical, max diff {np.nanmax(np.abs(a - b)):.1e}"
    if "p1_dataframe" in theirs.column_names:
        c = theirs["p1_dataframe"].to_numpy(zero_copy_only=False)
        note += f" (vs pmml4s's exact output; vs pypmml's DataFrame: max diff {np.nanmax(np.abs(a - c)):.1e})"
    return note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--peer-rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--option", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        function = CASES[args.case]
        params = (Path(args.data), Path(args.out)) + ((args.option,) if args.case.endswith("_ours") else ())
        result = function(*params)
        result["peak_rss_mib"] = peak_rss_mib()
        print(json.dumps(result))
        return

    HERE.mkdir(parents=True, exist_ok=True)
    os.environ["BENCH_TRACKING_URI"] = make_models()
    os.environ.setdefault("ML_ASSETS_CACHE_DIR", str(ROOT / "cache"))
    make_pmml()
    make_mojo()
    big, small = make_data(args.rows), make_data(args.peer_rows)
    r: dict[str, dict] = {}
    r["pmml"] = best_of(args.repeat, "pmml_ours", big, "auto")
    r["pmml_pmml4s"] = best_of(1, "pmml_ours", small, "pmml4s")
    r["h2o_genmodel"] = best_of(1, "h2o_ours", big, "genmodel")
    r["pmml_small"] = run_case("pmml_ours", small, "auto")
    r["pmml_peer"] = best_of(1, "pmml_peer", small)
    r["h2o"] = best_of(args.repeat, "h2o_ours", big)
    r["h2o_small"] = run_case("h2o_ours", small)
    r["h2o_peer"] = best_of(1, "h2o_peer", small)
    r["pyfunc"] = best_of(1, "pyfunc_ours", big, "none")
    r["pyfunc_proc"] = best_of(1, "pyfunc_ours", big, "process")
    r["pyfunc_peer"] = best_of(1, "pyfunc_peer", big)

    def rate(key: str) -> float:
        return r[key]["rows"] / r[key]["seconds"]

    def line(label: str, key: str, versus: str, note: str = "") -> str:
        x = r[key]
        return (
            f"| {label} | {x['rows']:,} | {rate(key):,.0f} | {rate(key) / rate(versus):.1f}x | "
            f"{x['peak_rss_mib']:,.0f} | {x.get('load_seconds', 0):.1f} | {note} |"
        )

    import h2o
    import jpype
    import mlflow
    import pyarrow
    import pypmml
    import sklearn2pmml

    cores = len(os.sched_getaffinity(0))
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    java = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False).stderr.splitlines()[0]
    print(
        f"\nIn-process runtimes, {date.today()}, {cores} cores, {memory:.0f} GiB, Python {platform.python_version()}, "
        f"{java}, pyarrow {pyarrow.__version__}, pypmml {pypmml.__version__}, sklearn2pmml {sklearn2pmml.__version__}, "
        f"h2o {h2o.__version__}, JPype {jpype.__version__}, mlflow {mlflow.__version__}. "
        f"Steady state, best of {args.repeat} for ours at full size; peers on {args.peer_rows:,} rows.\n"
    )
    print("| path | rows | rows/s | vs peer | peak RSS MiB | load s | note |")
    print("|---|---|---|---|---|---|---|")
    pmml_note = agreement(r["pmml_small"], r["pmml_peer"], "probability_1")
    print(line(f"**ours** PMML rf, engine {r['pmml']['engine']}", "pmml", "pmml_peer", pmml_note))
    print(line("ours PMML rf, engine pmml4s (pypmml's evaluator, columnar, threads)", "pmml_pmml4s", "pmml_peer"))
    print(line("peer: pypmml Model.predict(DataFrame)", "pmml_peer", "pmml_peer"))
    h2o_note = agreement(r["h2o_small"], r["h2o_peer"], "probability_1")
    print(line(f"**ours** H2O MOJO gbm, engine {r['h2o']['engine']}", "h2o", "h2o_peer", h2o_note))
    print(line("ours H2O MOJO gbm, engine genmodel (GenModel.score0 per row)", "h2o_genmodel", "h2o_peer"))
    print(line("peer: h2o.mojo_predict_pandas", "h2o_peer", "h2o_peer"))
    pyfunc_note = agreement(r["pyfunc"], r["pyfunc_peer"], "prediction_1")
    print(line("**ours** pyfunc rf (sklearn), in-process", "pyfunc", "pyfunc_peer", pyfunc_note))
    print(line("ours pyfunc rf (sklearn), worker processes", "pyfunc_proc", "pyfunc_peer"))
    print(line("peer: pandas -> mlflow.pyfunc -> to_parquet, rf", "pyfunc_peer", "pyfunc_peer"))


if __name__ == "__main__":
    main()
