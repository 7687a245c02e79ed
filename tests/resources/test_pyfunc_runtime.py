"""The pyfunc runtime against mlflow.pyfunc's own predict, in-process and in worker processes."""

from __future__ import annotations

import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from ml_assets.resources.core.errors import ModelLoadError, ScoringError
from ml_assets.resources.core.formats import detect_format
from ml_assets.resources.core.models import ModelVersion
from ml_assets.resources.core.plugins import create_runtime
from ml_assets.resources.runtimes.pyfunc import PyfuncRuntime, RequirementsMismatchWarning
from tests.resources.fixtures.scorecard import customers, register_scorecard, save_scorecard

FEATURES = ["amount", "age"]

CRASHY = textwrap.dedent(
    '''
    """Doubles `amount`; dies on amount == -1000, and on -999 once per marker file."""
    import os

    import mlflow
    from mlflow.pyfunc import PythonModel


    class Crashy(PythonModel):
        def predict(self, context, model_input, params=None):
            if (model_input["amount"] == -1000).any():
                os._exit(3)
            marker = os.environ.get("CRASHY_MARKER")
            if marker and (model_input["amount"] == -999).any() and not os.path.exists(marker):
                open(marker, "w").close()
                os._exit(4)
            return model_input["amount"] * 2.0


    mlflow.models.set_model(Crashy())
    '''
)


def frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"amount": rng.gamma(2.0, 50.0, n), "age": rng.integers(18, 90, n).astype(np.float64)})


def version(name: str) -> ModelVersion:
    return ModelVersion(name=name, version="1", format="pyfunc", artifact_uri=f"file:///{name}", registry="test")


@pytest.fixture(scope="module")
def sklearn_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    train = frame(2_000, seed=0)
    y = (train["amount"] > 100).astype(int)
    model = LogisticRegression(max_iter=500).fit(train, y)
    path = tmp_path_factory.mktemp("pyfunc") / "lr"
    mlflow.sklearn.save_model(model, str(path), signature=infer_signature(train, model.predict(train)))
    return path


@pytest.fixture(scope="module")
def crashy_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    root = tmp_path_factory.mktemp("crashy")
    code = root / "crashy.py"
    code.write_text(CRASHY)
    signature = ModelSignature(
        inputs=Schema([ColSpec("double", "amount"), ColSpec("double", "age")]), outputs=Schema([ColSpec("double")])
    )
    mlflow.pyfunc.save_model(str(root / "model"), python_model=str(code), signature=signature)
    return root / "model"


def to_batch(df: pd.DataFrame, schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_pandas(df[schema.names], schema=schema, preserve_index=False)


def reference(path: Path, df: pd.DataFrame) -> np.ndarray:
    import mlflow.pyfunc

    return np.asarray(mlflow.pyfunc.load_model(str(path)).predict(df))


def test_in_process_identical_to_mlflow(sklearn_model):
    data = frame(3_000, seed=5)
    scorer = create_runtime("pyfunc").load(version("lr"), sklearn_model)
    try:
        assert scorer.input_schema.names == FEATURES
        assert scorer.output_schema.names == ["prediction"]
        out = scorer.score(to_batch(data, scorer.input_schema))
        np.testing.assert_array_equal(out["prediction"].to_numpy(), reference(sklearn_model, data))
        empty = scorer.score(to_batch(data.iloc[:0], scorer.input_schema))
        assert empty.num_rows == 0
        assert empty.schema == scorer.output_schema
    finally:
        scorer.close()


@pytest.mark.slow
def test_worker_processes_keep_order(sklearn_model):
    chunks = [frame(700 + 50 * i, seed=i) for i in range(8)]
    scorer = PyfuncRuntime(isolation="process", workers=2).load(version("lr"), sklearn_model)
    try:
        assert scorer.concurrency == 2
        with ThreadPoolExecutor(4) as pool:
            outs = list(pool.map(lambda df: scorer.score(to_batch(df, scorer.input_schema)), chunks))
    finally:
        scorer.close()
    for df, out in zip(chunks, outs, strict=True):
        np.testing.assert_array_equal(out["prediction"].to_numpy(), reference(sklearn_model, df))


@pytest.mark.slow
def test_crashed_worker_fails_the_batch_cleanly(crashy_model):
    scorer = PyfuncRuntime(isolation="process", workers=1).load(version("crashy"), crashy_model)
    try:
        good = frame(100, seed=1)
        np.testing.assert_array_equal(
            scorer.score(to_batch(good, scorer.input_schema))["prediction"].to_numpy(), good["amount"] * 2
        )
        bad = good.copy()
        bad.loc[10, "amount"] = -1000.0
        with pytest.raises(ScoringError, match=r"died \(exit code 3\) while scoring a batch of 100 rows"):
            scorer.score(to_batch(bad, scorer.input_schema))
    finally:
        scorer.close()


@pytest.mark.slow
def test_crashed_worker_is_replaced_and_the_batch_retried(crashy_model, tmp_path, monkeypatch):
    monkeypatch.setenv("CRASHY_MARKER", str(tmp_path / "crashed-once"))
    scorer = PyfuncRuntime(isolation="process", workers=1, on_worker_failure="retry").load(
        version("crashy"), crashy_model
    )
    try:
        data = frame(50, seed=2)
        data.loc[0, "amount"] = -999.0
        out = scorer.score(to_batch(data, scorer.input_schema))
        assert (tmp_path / "crashed-once").exists()
        np.testing.assert_array_equal(out["prediction"].to_numpy(), data["amount"] * 2)
    finally:
        scorer.close()


def test_requirement_mismatch_warns_naming_packages(sklearn_model, tmp_path):
    import shutil

    copy = tmp_path / "lr"
    shutil.copytree(sklearn_model, copy)
    with (copy / "requirements.txt").open("a") as f:
        f.write("\nnumpy==1.0.0\nnot-a-real-package-xyz==1.0\n")
    with pytest.warns(RequirementsMismatchWarning, match=r"numpy: recorded ==1\.0\.0, installed .*not-a-real-package"):
        PyfuncRuntime().load(version("lr"), copy).close()


def test_model_without_signature_is_refused(tmp_path):
    import mlflow.sklearn
    from sklearn.linear_model import LinearRegression

    data = frame(100, seed=3)
    mlflow.sklearn.save_model(LinearRegression().fit(data, data["amount"]), str(tmp_path / "m"))
    with pytest.raises(ModelLoadError, match="signature"):
        PyfuncRuntime().load(version("nosig"), tmp_path / "m")


def test_format_detection(sklearn_model, models):
    # sklearn models are scored natively by default (labels and probabilities); pyfunc on request
    assert detect_format(sklearn_model) == "native"
    assert detect_format(sklearn_model / "MLmodel") == "native"
    assert detect_format(sklearn_model, override="pyfunc") == "pyfunc"
    assert detect_format(models.lr_onnx) == "onnx"


# -- a custom pyfunc with int/string/double columns and an inference param ----------------------


@pytest.fixture(scope="module")
def scorecard_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_scorecard(tmp_path_factory.mktemp("scorecard"))


@pytest.mark.parametrize("isolation", ["none", "process"])
def test_custom_pyfunc_with_a_param_equals_mlflow(scorecard_model, isolation):
    import mlflow.pyfunc

    data = customers(2_000, seed=4)
    scorer = PyfuncRuntime(params={"k": 3}, isolation=isolation, workers=1).load(version("card"), scorecard_model)
    try:
        assert scorer.input_schema == pa.schema([("visits", pa.int64()), ("plan", pa.string()), ("debt", pa.float64())])
        assert scorer.output_schema.names == ["label", "probability_stay", "probability_churn"]
        out = scorer.score(to_batch(data, scorer.input_schema)).to_pandas()
    finally:
        scorer.close()
    theirs = mlflow.pyfunc.load_model(str(scorecard_model)).predict(data, params={"k": 3})
    pd.testing.assert_frame_equal(out, theirs, check_exact=True)
    default = mlflow.pyfunc.load_model(str(scorecard_model)).predict(data)
    assert not np.allclose(default["probability_churn"], theirs["probability_churn"])  # k changes the scores


def test_unknown_or_mistyped_params_are_refused(scorecard_model, sklearn_model):
    with pytest.raises(ModelLoadError, match=r"unknown param\(s\) \['depth'\]; the model's ParamSchema has k \(long\)"):
        PyfuncRuntime(params={"depth": 3}).load(version("card"), scorecard_model)
    with pytest.raises(
        ModelLoadError, match=r"param 'k' = 'three' \(str\) does not fit the model's ParamSchema: expected long"
    ):
        PyfuncRuntime(params={"k": "three"}).load(version("card"), scorecard_model)
    with pytest.raises(ModelLoadError, match=r"the model takes no params \(its signature has no ParamSchema\)"):
        PyfuncRuntime(params={"k": 3}).load(version("lr"), sklearn_model)


def test_params_from_the_shell(scorecard_model, tmp_path):
    """``ml-assets score --option params='{"k": 3}'`` reaches predict, validated."""
    import mlflow.pyfunc
    import pyarrow.parquet as pq
    from click.testing import CliRunner

    from ml_assets.cli import main

    data = customers(500, seed=8)
    (tmp_path / "in").mkdir()
    pq.write_table(pa.Table.from_pandas(data, preserve_index=False), tmp_path / "in" / "part-0.parquet")
    uri = register_scorecard(tmp_path / "registry")
    args = ["score", "models:/card/1", str(tmp_path / "in"), str(tmp_path / "out"), "--registry-uri", uri, "--quiet"]
    runner = CliRunner()
    done = runner.invoke(main, [*args, "--option", 'params={"k": 3}'])
    assert done.exit_code == 0, done.output
    out = pq.read_table(tmp_path / "out").to_pandas()
    theirs = mlflow.pyfunc.load_model(str(scorecard_model)).predict(data, params={"k": 3})
    np.testing.assert_array_equal(out["probability_churn"].to_numpy(), theirs["probability_churn"].to_numpy())
    refused = runner.invoke(main, [*args, "--option", 'params={"kk": 3}'])
    assert refused.exit_code != 0
    assert "unknown param(s) ['kk']" in refused.output
