"""Model environments built with uv from the package index, and models scored inside them.

The LightGBM and XGBoost models are trained and logged with their MLflow flavors by a script run
in an environment of its own (tests/resources/fixtures/train_tree_flavors.py): this virtualenv has
neither library, and the test proves it. Environments and the trained fixtures are cached by
content hash under ``$ML_ASSETS_TEST_ENV_DIR`` (default ``~/.cache/ml-assets-test``), so only the
first suite run on a machine builds them; the tests of building itself use fresh folders.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from filelock import FileLock

from ml_assets.datasets import ParquetDataset
from ml_assets.resources.core.envs import (
    MARKER,
    EnvironmentSpec,
    EnvironmentStore,
    model_requirements,
)
from ml_assets.resources.core.errors import EnvironmentBuildError, ModelLoadError
from ml_assets.scoring import score_partition
from ml_assets.service import ModelService
from tests.conftest import TEST_CACHE, TEST_ENV_DIR

# The first run on a machine builds three environments (minutes on a loaded host); later runs reuse them.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

CACHE, ENV_DIR = TEST_CACHE, TEST_ENV_DIR
TRAINER = Path(__file__).parent / "fixtures" / "train_tree_flavors.py"
# The trainer's environment; the same pins as constraints.txt, so uv's cache serves both it and the models'.
TRAINER_REQUIREMENTS = [
    "mlflow==3.17.2",
    "lightgbm==4.7.0",
    "xgboost-cpu==3.2.0",
    "scikit-learn==1.9.0",
    "pandas==3.1.1",
    "numpy==2.4.6",
    "scipy==1.17.1",
    "pyarrow==25.0.1",
    "onnxmltools==1.16.0",
    "onnx==1.23.2",
]
# Small and already in uv's cache after the first build: the tests of building itself.
SMALL = ["numpy==2.4.6", "pyarrow==25.0.1"]
PARTITION = "2026-11-01"


def test_neither_tree_library_is_installed_here():
    assert importlib.util.find_spec("lightgbm") is None
    assert importlib.util.find_spec("xgboost") is None


@pytest.fixture(scope="module")
def tree_models() -> Path:
    """The trained, logged models and reference predictions; trained once per machine (by content hash)."""
    store = EnvironmentStore(ENV_DIR)
    trainer = store.ensure(TRAINER_REQUIREMENTS, what="the tree-flavor fixture trainer")
    key = hashlib.sha256(TRAINER.read_bytes() + trainer.key.encode()).hexdigest()[:24]
    out = CACHE / "fixtures" / key
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock", timeout=1200):
        if not (out / "done").is_file():
            if out.exists():
                import shutil

                shutil.rmtree(out)
            out.mkdir()
            subprocess.run([str(trainer.python), "-I", str(TRAINER), str(out)], check=True, timeout=900)
            (out / "done").touch()
    return out


def score(tree_models: Path, tmp_path: Path, model: str, runtime: str) -> tuple[pa.Table, object]:
    # A first worker in a fresh environment writes the bytecode of everything it imports: minutes on a loaded host.
    options = {runtime: {"env_manager": "uv", "env_dir": str(ENV_DIR), "load_timeout_s": 1200}}
    tracking = f"sqlite:///{tree_models / 'mlflow.db'}"
    with ModelService.from_uri("mlflow", tracking, runtime=runtime, runtime_options=options) as service:
        loaded = service.open(f"models:/{model}/1")
        source = ParquetDataset(str(tree_models / "data"), partition_column="date")
        dest = ParquetDataset(str(tmp_path / f"{model}-{runtime}"), partition_column="date")
        result = score_partition(loaded.scorer, loaded.version, source, dest, partition=PARTITION, chunk_rows=1000)
    output = ds.dataset(str(tmp_path / f"{model}-{runtime}" / f"date={PARTITION}"), format="parquet").to_table()
    return output, result


def test_lightgbm_native_in_its_environment_equals_lightgbm(tree_models, tmp_path):
    output, result = score(tree_models, tmp_path, "lgbm", "native")
    reference = pq.read_table(tree_models / "reference.parquet")
    p1 = reference["lgbm_probability_1"].to_numpy()
    assert result.rows_out == len(p1) == 3000
    assert output.schema.field("label").type == pa.int64()
    assert np.array_equal(output["probability_1"].to_numpy(), p1)
    assert np.array_equal(output["probability_0"].to_numpy(), 1.0 - p1)
    assert np.array_equal(output["label"].to_numpy(), (p1 > 0.5).astype(np.int64))


def test_xgboost_native_in_its_environment_equals_xgboost(tree_models, tmp_path):
    output, _ = score(tree_models, tmp_path, "xgb", "native")
    reference = pq.read_table(tree_models / "reference.parquet")
    for k in range(3):
        assert np.array_equal(output[f"probability_{k}"].to_numpy(), reference[f"xgb_probability_{k}"].to_numpy())
    assert np.array_equal(output["label"].to_numpy(), reference["xgb_label"].to_numpy())

    regression, _ = score(tree_models, tmp_path, "xgbreg", "native")
    assert regression.column_names == ["prediction"]
    assert np.array_equal(regression["prediction"].to_numpy(), reference["xgbreg_prediction"].to_numpy())


def test_lightgbm_through_onnxmltools_scores_as_onnxruntime_and_near_lightgbm(tree_models):
    """The usual workaround for a host without LightGBM: the booster converted by onnxmltools (in the
    trainer's environment). Our ONNX runtime equals onnxruntime exactly; LightGBM itself differs a little."""
    import onnxruntime as ort

    from ml_assets.resources.core.models import ModelVersion
    from ml_assets.resources.runtimes.onnx import OnnxRuntime

    data = pq.read_table(tree_models / "data" / f"date={PARTITION}" / "part-0.parquet")
    x = np.column_stack([data[f"f{i}"].to_numpy() for i in range(6)]).astype(np.float32)
    path = tree_models / "lgbm.onnx"
    scorer = OnnxRuntime(threads=1, features=[f"f{i}" for i in range(6)]).load(
        ModelVersion(name="lgbm_onnx", version="1", format="onnx", artifact_uri=path.as_uri(), registry="direct"), path
    )
    assert scorer.output_schema.names == ["label", "probability_0", "probability_1"]
    columns = [pa.array(x[:, j]) for j in range(x.shape[1])]
    out = scorer.score(pa.RecordBatch.from_arrays(columns, schema=scorer.input_schema))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # like our runtime here, so tree sums run in the same order
    maps = ort.InferenceSession(str(path), options).run(None, {"input": x})[1]
    np.testing.assert_array_equal(out["probability_1"].to_numpy(), np.array([m[1] for m in maps], np.float32))
    # LightGBM's thresholds are doubles, ONNX's float32: rows on a threshold may take the other branch.
    lightgbm = pq.read_table(tree_models / "reference.parquet")["lgbm_probability_1"].to_numpy()
    np.testing.assert_allclose(out["probability_1"].to_numpy(), lightgbm, atol=0.03)
    assert np.mean(out["label"].to_numpy() == (lightgbm > 0.5)) > 0.99


@pytest.mark.parametrize(("model", "column"), [("lgbm", "lgbm_pyfunc"), ("xgb", "xgb_pyfunc")])
def test_pyfunc_in_its_environment_equals_mlflow_pyfunc(tree_models, tmp_path, model, column):
    output, _ = score(tree_models, tmp_path, model, "pyfunc")
    reference = pq.read_table(tree_models / "reference.parquet")
    assert np.array_equal(output["prediction"].to_numpy(), reference[column].to_numpy())


def test_tree_flavor_in_process_without_its_library_names_the_way_out(tree_models):
    tracking = f"sqlite:///{tree_models / 'mlflow.db'}"
    with ModelService.from_uri("mlflow", tracking) as service:  # native: the default of the lightgbm flavor
        assert service.resolve("models:/lgbm/1").format == "native"
        with pytest.raises(ModelLoadError, match=r"'lgbm' version 1: .*'lightgbm'.*env_manager='uv'"):
            service.open("models:/lgbm/1")


BUILD = textwrap.dedent(
    """
    import json, os, sys
    from ml_assets.resources.core.envs import EnvironmentStore
    env = EnvironmentStore(sys.argv[1]).ensure(json.loads(sys.argv[2]), what="concurrent")
    print(json.dumps({"pid": os.getpid(), "built": env.built, "python": str(env.python)}))
    """
)


def test_concurrent_first_builds_build_once(tmp_path):
    root = tmp_path / "envs"
    builds = [
        subprocess.Popen([sys.executable, "-c", BUILD, str(root), json.dumps(SMALL)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    answers = [json.loads(p.communicate(timeout=600)[0]) for p in builds]
    assert all(p.returncode == 0 for p in builds)
    assert sorted(a["built"] for a in answers) == [False, True]
    assert answers[0]["python"] == answers[1]["python"]
    builder = next(a for a in answers if a["built"])
    env = Path(answers[0]["python"]).parent.parent
    assert json.loads((env / MARKER).read_text())["built_by_pid"] == builder["pid"]
    version = subprocess.run(
        [answers[0]["python"], "-I", "-c", "import pyarrow; print(pyarrow.__version__)"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert version.stdout.strip() == "25.0.1"
    assert sorted(p.name for p in root.iterdir()) == sorted([env.name, f"{env.name}.lock"])


def test_uninstallable_requirement_is_named_and_nothing_is_kept(tmp_path):
    store = EnvironmentStore(tmp_path / "envs")
    missing = "ml-assets-no-such-package-zq==1.0"
    with pytest.raises(
        EnvironmentBuildError,
        match=r"uv could not install requirement 'ml-assets-no-such-package-zq==1.0'.*nothing was kept",
    ):
        store.ensure([*SMALL, missing], what="model 'broken' version 3")
    assert [p.name for p in (tmp_path / "envs").iterdir()] == [
        f"{EnvironmentSpec((*SMALL, missing), f'{sys.version_info.major}.{sys.version_info.minor}').key}.lock"
    ]


def test_a_model_requirement_that_cannot_be_installed_fails_the_load(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "MLmodel").write_text("flavors:\n  python_function:\n    loader_module: mlflow.sklearn\n")
    (model / "requirements.txt").write_text("numpy==2.4.6\nml-assets-no-such-package-zq==1.0\n")
    from ml_assets.resources.core.models import ModelVersion
    from ml_assets.resources.runtimes.pyfunc import PyfuncRuntime

    version = ModelVersion(name="broken", version="3", format="pyfunc", artifact_uri="file:///m", registry="test")
    runtime = PyfuncRuntime(env_manager="uv", env_dir=str(tmp_path / "envs"))
    with pytest.raises(
        EnvironmentBuildError,
        match=r"model 'broken' version 3: uv could not install requirement 'ml-assets-no-such-package-zq==1.0'",
    ):
        runtime.load(version, model)
    assert [p.suffix for p in (tmp_path / "envs").iterdir()] == [".lock"]


def test_a_build_killed_half_way_is_rebuilt(tmp_path):
    store = EnvironmentStore(tmp_path / "envs")
    spec = EnvironmentSpec(tuple(SMALL), f"{sys.version_info.major}.{sys.version_info.minor}")
    leftover = tmp_path / "envs" / spec.key
    (leftover / "bin").mkdir(parents=True)
    (leftover / "bin" / "python").write_text("half-built")
    env = store.ensure(SMALL, what="rebuilt")
    assert env.built
    assert env.path == leftover
    assert (leftover / MARKER).is_file()
    again = store.ensure(SMALL, what="rebuilt")
    assert not again.built
    assert again.python == env.python


def test_requirement_lines_that_are_pip_options_are_refused(tmp_path):
    (tmp_path / "requirements.txt").write_text("numpy==2.4.6\n--index-url https://evil.example/simple\n")
    with pytest.raises(ModelLoadError, match=r"model 'x' version 1: requirements.txt line 2 is a pip option"):
        model_requirements(tmp_path, what="model 'x' version 1")
    (tmp_path / "requirements.txt").write_text("mlflow==3.17.2 # pinned\nlightgbm==4.7.0\n")
    (tmp_path / "python_env.yaml").write_text("python: 3.11.7\nbuild_dependencies:\n- pip\n")
    assert model_requirements(tmp_path, what="m") == (["mlflow==3.17.2", "lightgbm==4.7.0"], "3.11")


def test_a_prebuilt_environment_is_used_as_is(tree_models, tmp_path):
    from ml_assets.resources.registries.mlflow import MlflowRegistry
    from ml_assets.resources.runtimes.native import NativeRuntime

    registry = MlflowRegistry(f"sqlite:///{tree_models / 'mlflow.db'}", cache_dir=tmp_path / "cache")
    version = registry.resolve("models:/lgbm/1")
    model_dir = registry.fetch(version)
    built = EnvironmentStore(ENV_DIR).for_model(model_dir, what="lgbm")  # the one the tests above built
    scorer = NativeRuntime(env_path=str(built.python), env_dir=str(tmp_path / "never-used")).load(version, model_dir)
    try:
        data = pq.read_table(tree_models / "data" / f"date={PARTITION}").cast(scorer.input_schema)
        output = scorer.score(data.to_batches()[0])
    finally:
        scorer.close()
    reference = pq.read_table(tree_models / "reference.parquet")["lgbm_probability_1"].to_numpy()[: output.num_rows]
    assert np.array_equal(output.column("probability_1").to_numpy(), reference)
    assert not (tmp_path / "never-used").exists()


def test_index_credentials_never_reach_the_error(tmp_path):
    from ml_assets.resources.core.envs import IndexSettings

    index = IndexSettings.of("http://builder:s3cret@127.0.0.1:9/simple", "http://127.0.0.1:9/a, http://127.0.0.1:9/b")
    assert index.extra_index_urls == ("http://127.0.0.1:9/a", "http://127.0.0.1:9/b")
    store = EnvironmentStore(tmp_path / "envs", index=index, build_timeout_s=300)
    with pytest.raises(EnvironmentBuildError) as failed:
        store.ensure(["ml-assets-no-such-package-zq==1.0"], what="model 'private' version 1")
    assert "s3cret" not in str(failed.value)
    assert "model 'private' version 1: uv could not install" in str(failed.value)


def test_a_native_worker_imports_no_mlflow_and_a_booster_no_sklearn(tree_models, tmp_path):
    """What a worker start costs is mostly imports: the native worker reads the model file without MLflow,
    and a Booster's library is imported without scikit-learn and pandas (both in these environments)."""
    from ml_assets.resources.registries.mlflow import MlflowRegistry
    from ml_assets.resources.runtimes.native import native_files

    registry = MlflowRegistry(f"sqlite:///{tree_models / 'mlflow.db'}", cache_dir=tmp_path / "cache")
    probe = textwrap.dedent(
        """
        import importlib.util, json, sys
        spec = importlib.util.spec_from_file_location("_flavors", sys.argv[1])
        flavors = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(flavors)
        import numpy as np
        flavors.load_native(json.loads(sys.argv[2]), input_dtype=np.dtype("float64"), threads=2, lean_imports=True)
        print(json.dumps(sorted(m for m in ("mlflow", "sklearn", "pandas") if m in sys.modules)))
        """
    )
    imported = {}
    for name in ("lgbm", "xgbreg", "xgb"):
        version = registry.resolve(f"models:/{name}/1")
        model_dir = registry.fetch(version)
        env = EnvironmentStore(ENV_DIR).for_model(model_dir, what=name)
        assert subprocess.run([str(env.python), "-I", "-c", "import sklearn, pandas"], timeout=300).returncode == 0
        flavors = Path(__file__).parents[2] / "resources" / "runtimes" / "_flavors.py"
        files = json.dumps(native_files(version, model_dir))
        done = subprocess.run(
            [str(env.python), "-I", "-c", probe, str(flavors), files], capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr[-2000:]
        imported[name] = json.loads(done.stdout.strip().splitlines()[-1])
    assert imported["lgbm"] == imported["xgbreg"] == []  # Boosters
    assert "mlflow" not in imported["xgb"]
    assert "sklearn" in imported["xgb"]  # an XGBClassifier is a scikit-learn estimator
