"""The PMML runtime against pypmml (the same pmml4s evaluator, reached through JSON) on the same rows.

Fixture PMMLs are made from scikit-learn models trained here, converted by sklearn2pmml.
Feature values have at most 4 decimals so that pypmml's JSON transfer carries them exactly
and predictions can be compared bit for bit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from ml_assets.resources.core.errors import ModelLoadError, SchemaMismatchError
from ml_assets.resources.core.formats import detect_format
from ml_assets.resources.core.models import ModelVersion
from ml_assets.resources.core.plugins import create_runtime
from ml_assets.resources.runtimes.pmml import PmmlRuntime

NUMERIC = [f"f{i}" for i in range(6)]


@dataclass(frozen=True)
class Pmmls:
    rf: Path
    lr: Path
    mixed: Path
    """Logistic regression over numbers and a one-hot encoded string column."""


def frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({c: np.round(rng.standard_normal(n), 4) for c in NUMERIC})
    df["channel"] = rng.choice(["web", "store", "phone"], size=n)
    return df


def labels(df: pd.DataFrame) -> np.ndarray:
    return ((df["f0"] - df["f1"] + 0.5 * df["f2"] + (df["channel"] == "web")) > 0.2).astype(int).to_numpy()


@pytest.fixture(scope="module")
def pmmls(tmp_path_factory: pytest.TempPathFactory) -> Pmmls:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import OneHotEncoder
    from sklearn2pmml import sklearn2pmml
    from sklearn2pmml.pipeline import PMMLPipeline

    root = tmp_path_factory.mktemp("pmml")
    train = frame(3_000, seed=0)
    y = labels(train)
    rf = PMMLPipeline([("m", RandomForestClassifier(n_estimators=15, max_depth=6, random_state=0))])
    rf.fit(train[NUMERIC], y)
    sklearn2pmml(rf, str(root / "rf.pmml"))
    lr = PMMLPipeline([("m", LogisticRegression())]).fit(train[NUMERIC], y)
    sklearn2pmml(lr, str(root / "lr.pmml"))
    encode = ColumnTransformer([("cat", OneHotEncoder(), ["channel"])], remainder="passthrough")
    mixed = PMMLPipeline([("enc", encode), ("m", LogisticRegression())]).fit(train[["channel", *NUMERIC]], y)
    sklearn2pmml(mixed, str(root / "mixed.pmml"))
    return Pmmls(root / "rf.pmml", root / "lr.pmml", root / "mixed.pmml")


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    """Rows with missing numbers, missing and unseen string levels."""
    df = frame(5_000, seed=9)
    rng = np.random.default_rng(1)
    df.loc[rng.random(len(df)) < 0.05, "f0"] = np.nan
    df.loc[rng.random(len(df)) < 0.03, "f3"] = np.nan
    df.loc[rng.random(len(df)) < 0.03, "channel"] = None
    df.loc[rng.random(len(df)) < 0.02, "channel"] = "fax"
    return df


def version(name: str) -> ModelVersion:
    return ModelVersion(name=name, version="1", format="pmml", artifact_uri=f"file:///{name}", registry="test")


def reference(path: Path, df: pd.DataFrame) -> pd.DataFrame:
    """pypmml's Model.predict(DataFrame) path, with the JSON read back exactly."""
    from pypmml import Model

    model = Model.fromFile(str(path))
    raw = json.loads(model.call("predict", df.to_json(orient="split", index=False, double_precision=15)))
    return pd.DataFrame(raw["data"], columns=raw["columns"]).astype(float)


def to_batch(df: pd.DataFrame, schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_pandas(df[schema.names], schema=schema, preserve_index=False)


def contract_name(pmml_name: str) -> str:
    """pypmml's ``probability(1)`` under the prediction contract: ``probability_1``."""
    return f"probability_{pmml_name[len('probability(') : -1]}"


def assert_identical(ours: pa.RecordBatch, theirs: pd.DataFrame) -> None:
    assert ours.schema.names == ["label", *map(contract_name, theirs.columns)]
    for name in theirs.columns:
        np.testing.assert_array_equal(ours[contract_name(name)].to_numpy(zero_copy_only=False), theirs[name].to_numpy())
    # No predicted-value field in these PMMLs: the label is the most probable class, as sklearn's predict.
    classes = np.array([int(contract_name(n).split("_")[1]) for n in theirs.columns])
    valid = ~np.isnan(theirs.to_numpy()).any(axis=1)
    expected = classes[np.argmax(theirs.to_numpy()[valid], axis=1)]
    np.testing.assert_array_equal(ours["label"].to_numpy(zero_copy_only=False)[valid], expected)


@pytest.mark.parametrize("engine", ["auto", "pmml4s"])
def test_random_forest_identical_to_pypmml(pmmls, data, engine):
    scorer = create_runtime("pmml", threads=2, engine=engine).load(version("rf"), pmmls.rf)
    try:
        assert scorer.engine == ("compiled" if engine == "auto" else "pmml4s")
        assert scorer.input_schema.names == NUMERIC
        assert scorer.output_schema.names == ["label", "probability_0", "probability_1"]
        assert scorer.classes == [0, 1]
        assert_identical(scorer.score(to_batch(data, scorer.input_schema)), reference(pmmls.rf, data[NUMERIC]))
    finally:
        scorer.close()


def test_logistic_regression_identical_to_pypmml(pmmls, data):
    scorer = PmmlRuntime(threads=2).load(version("lr"), pmmls.lr)
    try:
        assert scorer.engine == "pmml4s"
        assert_identical(scorer.score(to_batch(data, scorer.input_schema)), reference(pmmls.lr, data[NUMERIC]))
    finally:
        scorer.close()


def test_string_levels_identical_to_pypmml(pmmls, data):
    scorer = PmmlRuntime(threads=2).load(version("mixed"), pmmls.mixed)
    try:
        assert scorer.input_schema.field("channel").type == pa.string()
        ours = scorer.score(to_batch(data, scorer.input_schema))
        assert_identical(ours, reference(pmmls.mixed, data[["channel", *NUMERIC]]))
    finally:
        scorer.close()


def test_public_predict_agrees(pmmls, data):
    """The plain pypmml call (pandas JSON at 10 digits) agrees to rounding."""
    from pypmml import Model

    scorer = PmmlRuntime(threads=1).load(version("rf"), pmmls.rf)
    try:
        ours = scorer.score(to_batch(data, scorer.input_schema)).to_pandas()
    finally:
        scorer.close()
    theirs = Model.fromFile(str(pmmls.rf)).predict(data[NUMERIC])
    np.testing.assert_allclose(ours[["probability_0", "probability_1"]].to_numpy(), theirs.to_numpy(), rtol=1e-12)
    native = PmmlRuntime(threads=1, naming="native").load(version("rf"), pmmls.rf)
    try:
        assert native.output_schema.names == list(theirs.columns)
    finally:
        native.close()


def test_compiled_engine_refuses_a_non_tree_model(pmmls):
    with pytest.raises(ModelLoadError, match="engine='compiled'"):
        PmmlRuntime(engine="compiled").load(version("lr"), pmmls.lr)


def test_missing_fields_are_named(pmmls, data):
    scorer = PmmlRuntime(threads=1, engine="pmml4s").load(version("rf"), pmmls.rf)
    try:
        partial = pa.RecordBatch.from_pandas(data[["f0", "f1", "f2"]], preserve_index=False)
        with pytest.raises(SchemaMismatchError, match=r"\['f3', 'f4', 'f5'\]"):
            scorer.score(partial)
    finally:
        scorer.close()


def test_empty_batch(pmmls, data):
    for path in (pmmls.rf, pmmls.mixed):
        scorer = PmmlRuntime(threads=2).load(version(path.stem), path)
        try:
            out = scorer.score(to_batch(data.iloc[:0], scorer.input_schema))
            assert out.num_rows == 0
            assert out.schema == scorer.output_schema
        finally:
            scorer.close()


def test_format_detection(pmmls, tmp_path):
    assert detect_format(pmmls.rf) == "pmml"
    renamed = tmp_path / "model.xml"
    renamed.write_bytes(pmmls.lr.read_bytes())
    assert detect_format(renamed) == "pmml"
    assert detect_format(renamed, override="pyfunc") == "pyfunc"
    with pytest.raises(ModelLoadError, match="known"):
        detect_format(renamed, override="tensorflow")
