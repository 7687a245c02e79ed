"""The native runtime on sklearn models in this process, against the estimator's own predict/predict_proba."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from ml_assets.resources.core.errors import ModelLoadError
from ml_assets.resources.core.models import ModelVersion
from ml_assets.resources.core.plugins import create_runtime

FEATURES = [f"x{i}" for i in range(5)]


def version(name: str) -> ModelVersion:
    return ModelVersion(name=name, version="1", format="native", artifact_uri=f"file:///{name}", registry="test")


def frame(n: int, seed: int, dtype: str = "float64") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(rng.standard_normal((n, len(FEATURES))).astype(dtype), columns=FEATURES)


@pytest.fixture(scope="module")
def sklearn_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, object, str]]:
    """A forest classifier (int classes, float32 features), a logistic regression with string classes,
    and a forest regressor; each saved with the sklearn flavor and a column signature."""
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.linear_model import LogisticRegression

    root = tmp_path_factory.mktemp("native")
    train32, train = frame(3_000, 0, "float32"), frame(3_000, 1)
    y = (train["x0"] + train["x1"] * train["x2"] > 0).to_numpy()
    trained = {
        "rf": (
            RandomForestClassifier(n_estimators=20, max_depth=8, random_state=0).fit(train32, y.astype(int)),
            "float32",
        ),
        "lr": (LogisticRegression(max_iter=500).fit(train, np.where(y, "fraud", "ok")), "float64"),
        "rfreg": (
            RandomForestRegressor(n_estimators=10, max_depth=6, random_state=0).fit(train, train["x3"] * 2),
            "float64",
        ),
    }
    saved = {}
    for name, (model, dtype) in trained.items():
        data = train32 if dtype == "float32" else train
        path = root / name
        mlflow.sklearn.save_model(
            model,
            str(path),
            signature=infer_signature(data, model.predict(data)),
            skops_trusted_types=["sklearn.tree._tree.Tree"] if name.startswith("rf") else None,
            pip_requirements=["scikit-learn==1.9.0"],  # inferring them loads the model in a subprocess: slow
        )
        saved[name] = (path, model, dtype)
    return saved


def scored(path: Path, name: str, data: pd.DataFrame, **options) -> tuple[pa.Table, object]:
    scorer = create_runtime("native", **options).load(version(name), path)
    try:
        batches = [
            scorer.score(b)
            for b in pa.Table.from_pandas(data, preserve_index=False).cast(scorer.input_schema).to_batches(1_000)
        ]
        return pa.Table.from_batches(batches, schema=scorer.output_schema), scorer
    finally:
        scorer.close()


def test_forest_classifier_equals_predict_proba_and_predict(sklearn_models):
    path, model, dtype = sklearn_models["rf"]
    data = frame(4_000, 7, dtype)
    output, scorer = scored(path, "rf", data, threads=2)
    assert scorer.input_schema.names == FEATURES
    assert output.column_names == ["label", "probability_0", "probability_1"]
    assert output.schema.field("label").type == pa.int64()
    assert scorer.classes == [0, 1]
    proba = model.predict_proba(data)
    assert np.array_equal(output["probability_0"].to_numpy(), proba[:, 0])
    assert np.array_equal(output["probability_1"].to_numpy(), proba[:, 1])
    assert np.array_equal(output["label"].to_numpy(), model.predict(data))


def test_string_classes_keep_their_labels_and_order(sklearn_models):
    path, model, _ = sklearn_models["lr"]
    data = frame(2_500, 8)
    output, _ = scored(path, "lr", data)
    assert output.column_names == ["label", "probability_fraud", "probability_ok"]
    assert output.schema.field("label").type == pa.string()
    proba = model.predict_proba(data)
    assert np.array_equal(output["probability_fraud"].to_numpy(), proba[:, 0])
    assert np.array_equal(output["probability_ok"].to_numpy(), proba[:, 1])
    assert output["label"].to_pylist() == model.predict(data).tolist()


def test_regressor_equals_predict(sklearn_models):
    path, model, _ = sklearn_models["rfreg"]
    data = frame(2_000, 9)
    output, _ = scored(path, "rfreg", data)
    assert output.column_names == ["prediction"]
    assert np.array_equal(output["prediction"].to_numpy(), model.predict(data))


def test_not_a_tree_or_sklearn_flavor_is_refused(tmp_path):
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    class Doubler(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input["x0"] * 2

    data = frame(10, 0)
    mlflow.pyfunc.save_model(str(tmp_path / "m"), python_model=Doubler(), signature=infer_signature(data))
    with pytest.raises(
        ModelLoadError, match=r"model 'custom' version 1: flavors .* include none of lightgbm, xgboost, sklearn"
    ):
        create_runtime("native").load(version("custom"), tmp_path / "m")


def test_unknown_env_manager_is_refused():
    with pytest.raises(ValueError, match="env_manager must be one of local, uv, virtualenv, got 'conda'"):
        create_runtime("native", env_manager="conda")


@pytest.mark.parametrize("serialization", ["cloudpickle", "pickle"])
def test_pickled_models_load_without_mlflow_as_mlflow_does(tmp_path, sklearn_models, serialization):
    import mlflow.sklearn

    _, model, _ = sklearn_models["lr"]
    path = tmp_path / serialization
    mlflow.sklearn.save_model(model, str(path), serialization_format=serialization, pip_requirements=["scikit-learn"])
    (path / "MLmodel").write_text((path / "MLmodel").read_text() + SIGNATURE)
    data = frame(1_500, 11)
    output, _ = scored(path, "lr", data)
    assert np.array_equal(output["probability_ok"].to_numpy(), model.predict_proba(data)[:, 1])
    assert output["label"].to_pylist() == mlflow.sklearn.load_model(str(path)).predict(data).tolist()


SIGNATURE = "signature:\n  inputs: '[" + ", ".join(f'{{"type": "double", "name": "{f}"}}' for f in FEATURES) + "]'\n"


def copy_with_mlmodel(source: Path, target: Path, edit) -> Path:
    import shutil

    import yaml

    shutil.copytree(source, target)
    meta = yaml.safe_load((target / "MLmodel").read_text())
    edit(meta["flavors"]["sklearn"])
    (target / "MLmodel").write_text(yaml.safe_dump(meta))
    return target


def test_mlmodel_paths_outside_the_model_folder_are_refused(tmp_path, sklearn_models):
    from ml_assets.resources.core.errors import UnsafePathError

    source = sklearn_models["lr"][0]
    (tmp_path / "outside.pkl").write_bytes(b"not loaded")
    escaping = copy_with_mlmodel(source, tmp_path / "m", lambda f: f.update(pickled_model="../outside.pkl"))
    with pytest.raises(UnsafePathError, match=r"sklearn model file in the MLmodel of model 'lr' version 1"):
        create_runtime("native").load(version("lr"), escaping)
    absolute = copy_with_mlmodel(source, tmp_path / "a", lambda f: f.update(code=str(tmp_path)))
    with pytest.raises(UnsafePathError, match=r"sklearn code folder .* it is absolute"):
        create_runtime("native").load(version("lr"), absolute)


def test_unreadable_flavor_files_are_named(tmp_path, sklearn_models, monkeypatch):
    source = sklearn_models["lr"][0]
    missing = copy_with_mlmodel(source, tmp_path / "m", lambda f: f.update(pickled_model="gone.skops"))
    with pytest.raises(ModelLoadError, match=r"'lr' version 1: the sklearn model file 'gone.skops' is missing"):
        create_runtime("native").load(version("lr"), missing)
    odd = copy_with_mlmodel(source, tmp_path / "o", lambda f: f.update(serialization_format="joblib"))
    with pytest.raises(ModelLoadError, match=r"'lr' version 1: .*serialization_format 'joblib'; expected one of skops"):
        create_runtime("native").load(version("lr"), odd)
    (tmp_path / "c").mkdir()
    corrupt = copy_with_mlmodel(source, tmp_path / "c" / "m", lambda f: f.update(serialization_format="pickle"))
    with pytest.raises(ModelLoadError, match=r"'lr' version 1: cannot load the sklearn model file 'model.skops'"):
        create_runtime("native").load(version("lr"), corrupt)
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    with pytest.raises(ModelLoadError, match=r"MLFLOW_ALLOW_PICKLE_DESERIALIZATION is false here"):
        create_runtime("native").load(version("lr"), source)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, sklearn_models) -> str:
    """A SQLite MLflow registry: ``rf`` (the forest), ``picked`` (a ColumnTransformer pipeline on numeric
    columns: native cannot hand it named columns) and ``custom`` (a pyfunc-only model)."""
    import mlflow
    import mlflow.pyfunc
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    class Doubler(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input["x0"] * 2

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("native", artifact_location=(root / "artifacts").as_uri())
    _, rf, _ = sklearn_models["rf"]
    train = frame(2_000, 3, "float32")
    picked = make_pipeline(
        ColumnTransformer([("scaled", StandardScaler(), ["x0", "x1"])], remainder="passthrough"), LogisticRegression()
    ).fit(train, train["x2"] > 0)
    logged = {"rf": rf, "picked": picked}
    try:
        for name, model in logged.items():
            with mlflow.start_run(experiment_id=experiment):
                mlflow.sklearn.log_model(
                    model,
                    name="model",
                    signature=infer_signature(train, model.predict(train)),
                    registered_model_name=name,
                    serialization_format="cloudpickle",
                    pip_requirements=["scikit-learn==1.9.0"],
                )
        with mlflow.start_run(experiment_id=experiment):
            mlflow.pyfunc.log_model(
                name="model", python_model=Doubler(), signature=infer_signature(train), registered_model_name="custom"
            )
    finally:
        mlflow.set_tracking_uri(None)
    return uri


def test_sklearn_models_are_native_by_default_and_pyfunc_on_request(registry, sklearn_models):
    from ml_assets.service import ModelService

    _, rf, _ = sklearn_models["rf"]
    data = frame(3_000, 12, "float32")
    batch = pa.RecordBatch.from_pandas(data, preserve_index=False)
    with ModelService.from_uri("mlflow", registry) as service:
        loaded = service.open("models:/rf/1")
        assert loaded.version.format == "native"
        output = loaded.scorer.score(batch)
        assert output.schema.names == ["label", "probability_0", "probability_1"]
        assert np.array_equal(output["probability_1"].to_numpy(), rf.predict_proba(data)[:, 1])
        assert np.array_equal(output["label"].to_numpy(), rf.predict(data))
        assert service.resolve("models:/custom/1").format == "pyfunc"
    with ModelService.from_uri("mlflow", registry, runtime="pyfunc") as service:
        output = service.open("models:/rf/1").scorer.score(batch)
        assert output.schema.names == ["prediction"]  # what pyfunc's predict gives a classifier: labels only
        assert np.array_equal(output["prediction"].to_numpy(), rf.predict(data))


def test_a_model_only_pyfunc_scores_falls_back_unless_native_was_asked_for(registry, caplog):
    from ml_assets.resources.core.errors import NativeUnsupportedError
    from ml_assets.service import ModelService

    data = frame(500, 13, "float32")
    with ModelService.from_uri("mlflow", registry) as service:
        loaded = service.open("models:/picked/1")
        assert loaded.version.format == "native"
        output = loaded.scorer.score(pa.RecordBatch.from_pandas(data, preserve_index=False))
    assert output.schema.names == ["prediction"]
    assert "'picked' version 1: a ColumnTransformer selects its columns by name" in caplog.text
    assert "scoring it with the pyfunc runtime" in caplog.text
    with (
        ModelService.from_uri("mlflow", registry, runtime="native") as service,
        pytest.raises(NativeUnsupportedError, match=r"'picked' version 1: a ColumnTransformer"),
    ):
        service.open("models:/picked/1")


def test_threads_go_across_chunks_in_process_and_across_rows_in_a_worker(sklearn_models):
    """In this process the core scores ``threads`` chunks at once; a worker (one request at a time) splits
    each matrix across its threads instead. Rows are independent: the same bits either way."""
    from ml_assets.resources.runtimes._flavors import load_native
    from ml_assets.resources.runtimes.native import native_files

    path, model, _ = sklearn_models["rf"]
    files = native_files(version("rf"), path)
    in_process = load_native(files, input_dtype=np.float32, threads=3)
    assert (in_process.concurrency, in_process.split) == (3, 1)
    worker = load_native(files, input_dtype=np.float32, threads=3, parallel="split")
    assert (worker.concurrency, worker.split) == (1, 3)
    data = frame(30_000, 14, "float32")
    output = worker.score(pa.RecordBatch.from_pandas(data, preserve_index=False))
    assert np.array_equal(output["probability_1"].to_numpy(), model.predict_proba(data)[:, 1])
    assert np.array_equal(output["label"].to_numpy(), model.predict(data))
    # a linear model gets a column-major matrix (see README); its row slices would reach BLAS strided
    lr = native_files(version("lr"), sklearn_models["lr"][0])
    linear = load_native(lr, input_dtype=np.float64, threads=3, parallel="split")
    assert (linear.order, linear.split) == ("F", 1)
