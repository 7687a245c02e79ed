"""How long a native model takes to load: through MLflow's flavor loader (what the native runtime did
before) against the flavor's files read directly (``_flavors.load_native``, what it does now).

    python benchmarks/bench_worker_start.py --tracking-uri sqlite:///PATH/mlflow.db [--models lgbm,xgb]

Run from the project's virtualenv. For each registered model (version 1) it finds (or builds) the
model's environment with uv, then times, as whole processes of that environment's interpreter
(``python -I``, start-up included):

- cold: the first start after a build, when no module has bytecode yet (``-X pycache_prefix`` pointing
  at a fresh folder: Python reads and writes bytecode only there);
- warm: bytecode in place (best of ``--repeat``);

and a worker of the native runtime starting in the environment (``NativeRuntime(env_path=...).load``:
process, imports, handshake; best of ``--repeat``). Then in this process, an sklearn forest (50 trees,
depth 10, 20 features, skops): model load through ``mlflow.sklearn.load_model`` against
``load_native`` (``mlflow`` already imported, as the registry has). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLAVORS = REPO / "resources" / "runtimes" / "_flavors.py"

OLD = """
import sys, time
started = time.perf_counter()
import importlib
flavor = importlib.import_module("mlflow." + sys.argv[2])
flavor.load_model(sys.argv[1])
print(time.perf_counter() - started)
"""
NEW = """
import importlib.util, json, sys, time
started = time.perf_counter()
spec = importlib.util.spec_from_file_location("_flavors", sys.argv[3])
flavors = importlib.util.module_from_spec(spec)
spec.loader.exec_module(flavors)
import numpy as np
flavors.load_native(json.loads(sys.argv[4]), input_dtype=np.dtype("float64"), threads=1, lean_imports=True)
assert "mlflow" not in sys.modules
print(time.perf_counter() - started)
"""


def run(python: Path, code: str, args: list[str], *, cold: bool) -> tuple[float, float]:
    """(wall seconds of the whole process, seconds inside it from the first import to the loaded model)."""
    with tempfile.TemporaryDirectory() as prefix:
        options = ["-X", f"pycache_prefix={prefix}"] if cold else []
        started = time.perf_counter()
        done = subprocess.run(
            [str(python), "-I", *options, "-c", code, *args], capture_output=True, text=True, timeout=900, check=True
        )
        return time.perf_counter() - started, float(done.stdout.strip().splitlines()[-1])


def environment_cases(
    tracking_uri: str, models: list[str], repeat: int, env_dir: Path
) -> list[tuple[str, str, float, float]]:
    from ml_assets.resources.core.envs import EnvironmentStore
    from ml_assets.resources.registries.mlflow import MlflowRegistry
    from ml_assets.resources.runtimes.native import NativeRuntime, native_files

    rows = []
    with tempfile.TemporaryDirectory() as cache:
        registry = MlflowRegistry(tracking_uri, cache_dir=cache)
        for name in models:
            version = registry.resolve(f"models:/{name}/1")
            model_dir = registry.fetch(version)
            env = EnvironmentStore(env_dir).for_model(model_dir, what=name)
            files = native_files(version, model_dir)
            old_args = [str(model_dir), files["flavor"]]
            new_args = [str(model_dir), files["flavor"], str(FLAVORS), json.dumps(files)]
            for label, code, args in (("mlflow flavor", OLD, old_args), ("_flavors direct", NEW, new_args)):
                wall, inside = run(env.python, code, args, cold=True)
                rows.append((name, f"{label}, cold", wall, inside))
                warm = min((run(env.python, code, args, cold=False) for _ in range(repeat + 1)), key=lambda r: r[0])
                rows.append((name, f"{label}, warm", *warm))
            starts = []
            for _ in range(repeat):
                started = time.perf_counter()
                NativeRuntime(env_path=str(env.python)).load(version, model_dir).close()
                starts.append(time.perf_counter() - started)
            rows.append((name, "native worker start (handshake), warm", min(starts), float("nan")))
    return rows


def in_process(repeat: int) -> list[tuple[str, str, float, float]]:
    import mlflow.sklearn
    import numpy as np
    from sklearn.ensemble import RandomForestClassifier

    from ml_assets.resources.core.models import ModelVersion
    from ml_assets.resources.runtimes._flavors import load_native
    from ml_assets.resources.runtimes.native import native_files

    rng = np.random.default_rng(1)
    x = rng.standard_normal((20_000, 20)).astype(np.float32)
    model = RandomForestClassifier(n_estimators=50, max_depth=10, random_state=0).fit(x, x[:, 0] > 0)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rf"
        mlflow.sklearn.save_model(
            model, str(path), skops_trusted_types=["sklearn.tree._tree.Tree"], pip_requirements=["scikit-learn"]
        )
        version = ModelVersion(name="rf", version="1", format="native", artifact_uri=path.as_uri(), registry="bench")
        for label, load in (
            ("mlflow.sklearn.load_model", lambda: mlflow.sklearn.load_model(str(path))),
            ("load_native", lambda: load_native(native_files(version, path), input_dtype=np.float32, threads=1)),
        ):
            times = []
            for _ in range(repeat + 1):
                started = time.perf_counter()
                load()
                times.append(time.perf_counter() - started)
            rows.append(("rf (sklearn, in process)", label, min(times), float("nan")))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tracking-uri", help="an MLflow registry holding the models (version 1 of each)")
    parser.add_argument("--models", default="lgbm,xgb,xgbreg")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--env-dir", default=str(Path.home() / ".cache" / "ml-assets-test" / "envs"))
    args = parser.parse_args()
    rows = in_process(args.repeat)
    if args.tracking_uri:
        rows += environment_cases(args.tracking_uri, args.models.split(","), args.repeat, Path(args.env_dir))
    print("| model | load | process wall, s | first import to loaded model, s |")
    print("|---|---|---|---|")
    for name, label, wall, inside in rows:
        print(f"| {name} | {label} | {wall:.2f} | {'' if inside != inside else f'{inside:.2f}'} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
