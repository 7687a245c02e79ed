"""The H2O MOJO runtime against H2O's own scorer (h2o.mojo_predict_pandas) on the same rows.

The MOJOs in fixtures/h2o/ were made by fixtures/make_h2o_mojos.py with h2o==3.46.0.11.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from ml_assets.resources.core.errors import ModelLoadError, SchemaMismatchError
from ml_assets.resources.core.formats import detect_format
from ml_assets.resources.core.models import ModelVersion
from ml_assets.resources.core.plugins import create_runtime
from ml_assets.resources.runtimes.h2o import H2oMojoRuntime, genmodel_jar, probability_column_name
from tests.resources.fixtures.make_h2o_mojos import training_frame

MOJOS = Path(__file__).parent / "fixtures" / "h2o"
FEATURES = ["x0", "x1", "x2", "x3", "color", "size"]


def version(name: str) -> ModelVersion:
    return ModelVersion(name=name, version="1", format="h2o_mojo", artifact_uri=f"file:///{name}", registry="test")


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    """Rows with nulls in numbers and enums, and enum levels the MOJOs never saw."""
    df = training_frame(6_000, seed=11)[FEATURES]
    for col in ("x0", "x1", "x2", "x3"):
        df[col] = df[col].round(6)  # short decimals: the CSV the reference reads is then exact
    rng = np.random.default_rng(3)
    df.loc[rng.random(len(df)) < 0.05, "x0"] = np.nan
    df.loc[rng.random(len(df)) < 0.05, "color"] = None
    df.loc[rng.random(len(df)) < 0.03, "color"] = "purple"
    df.loc[rng.random(len(df)) < 0.03, "size"] = "XXL"
    return df


def to_batch(df: pd.DataFrame, schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_pandas(df[schema.names], schema=schema, preserve_index=False)


def reference(df: pd.DataFrame, mojo: Path) -> pd.DataFrame:
    import h2o

    return h2o.mojo_predict_pandas(df, str(mojo), genmodel_jar_path=str(genmodel_jar()))


@pytest.mark.parametrize(
    ("name", "columns"),
    [
        ("binomial", ["label", "probability_0", "probability_1"]),
        ("multinomial", ["label", "probability_cat", "probability_dog", "probability_fish"]),
        ("regression", ["prediction"]),
    ],
)
def test_predictions_identical_to_h2o(frame, name, columns):
    mojo = MOJOS / f"{name}.zip"
    scorer = create_runtime("h2o_mojo", threads=2).load(version(name), mojo)
    try:
        assert scorer.input_schema.names == FEATURES
        assert scorer.input_schema.field("color").type == pa.string()
        assert scorer.output_schema.names == columns
        ours = scorer.score(to_batch(frame, scorer.input_schema)).to_pandas()
    finally:
        scorer.close()
    theirs = reference(frame, mojo)
    assert len(theirs.columns) == len(columns)  # H2O's predict, then its classes in domain order
    if name == "regression":
        np.testing.assert_array_equal(ours["prediction"].to_numpy(), theirs["predict"].to_numpy())
    else:
        assert (ours["label"].astype(str) == theirs["predict"].astype(str)).all()
        for ours_col, their_col in zip(columns[1:], theirs.columns[1:], strict=True):
            np.testing.assert_array_equal(ours[ours_col].to_numpy(), theirs[their_col].to_numpy())


@pytest.mark.parametrize(
    ("name", "columns"),
    [
        ("numeric_binomial", ["label", "probability_0", "probability_1"]),
        ("numeric_multinomial_drf", ["label", "probability_cat", "probability_dog", "probability_fish"]),
    ],
)
def test_compiled_trees_identical_to_h2o(frame, name, columns):
    """Numeric-only trees are walked as flat arrays; outputs still bit-identical to H2O's, NaNs included."""
    mojo = MOJOS / f"{name}.zip"
    data = frame[["x0", "x1", "x2", "x3"]]
    compiled = H2oMojoRuntime(threads=2).load(version(name), mojo)
    genmodel = H2oMojoRuntime(threads=1, engine="genmodel").load(version(name), mojo)
    try:
        assert (compiled.engine, genmodel.engine) == ("compiled", "genmodel")
        assert compiled.output_schema.names == columns
        batch = to_batch(data, compiled.input_schema)
        ours = compiled.score(batch)
        assert ours.equals(genmodel.score(batch))
    finally:
        compiled.close()
        genmodel.close()
    theirs = reference(data, mojo)
    assert [str(v) for v in ours["label"].to_pylist()] == theirs["predict"].astype(str).tolist()
    for ours_col, their_col in zip(columns[1:], theirs.columns[1:], strict=True):
        np.testing.assert_array_equal(ours[ours_col].to_numpy(), theirs[their_col].to_numpy())


def test_compiled_engine_refuses_categorical_splits():
    with pytest.raises(ModelLoadError, match=r"engine='compiled'.*categorical"):
        H2oMojoRuntime(engine="compiled").load(version("binomial"), MOJOS / "binomial.zip")


def test_threads_preserve_row_order(frame):
    one = H2oMojoRuntime(threads=1).load(version("binomial"), MOJOS / "binomial.zip")
    three = H2oMojoRuntime(threads=3).load(version("binomial"), MOJOS / "binomial.zip")
    try:
        batch = to_batch(frame, one.input_schema)
        assert one.score(batch).equals(three.score(batch))
    finally:
        one.close()
        three.close()


def test_empty_batch_and_folder_path(tmp_path, frame):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "gbm.zip").write_bytes((MOJOS / "binomial.zip").read_bytes())
    scorer = H2oMojoRuntime().load(version("binomial"), folder)
    try:
        out = scorer.score(to_batch(frame.iloc[:0], scorer.input_schema))
        assert out.num_rows == 0
        assert out.schema == scorer.output_schema
    finally:
        scorer.close()


def test_unseen_levels_can_be_refused(frame):
    scorer = H2oMojoRuntime(unseen_levels="error").load(version("binomial"), MOJOS / "binomial.zip")
    try:
        with pytest.raises(SchemaMismatchError, match=r"'color'.*purple"):
            scorer.score(to_batch(frame, scorer.input_schema))
    finally:
        scorer.close()


def test_native_naming_follows_h2o():
    assert [probability_column_name(x) for x in ["0", "1", "-1", "yes", "1.5"]] == ["p0", "p1", "p-1", "yes", "1.5"]
    scorer = H2oMojoRuntime(threads=1, naming="native").load(version("multinomial"), MOJOS / "multinomial.zip")
    try:
        assert scorer.output_schema.names == ["predict", "cat", "dog", "fish"]
    finally:
        scorer.close()


def test_format_detected_from_content(tmp_path):
    renamed = tmp_path / "model.bin"
    renamed.write_bytes((MOJOS / "regression.zip").read_bytes())
    assert detect_format(MOJOS / "regression.zip") == "h2o_mojo"
    assert detect_format(renamed) == "h2o_mojo"
