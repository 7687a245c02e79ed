"""The ONNX runtime against onnxruntime run directly on the same data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pytest
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LinearRegression

from ml_assets.dev.demo import FEATURES, make_transactions
from ml_assets.resources.core.errors import SchemaMismatchError
from ml_assets.resources.core.models import ColumnSpec, ModelVersion, Signature
from ml_assets.resources.core.plugins import create_runtime
from ml_assets.resources.runtimes.onnx import COLUMNS_SUFFIX, OnnxRuntime
from tests.conftest import features_of

SIGNATURE = Signature(inputs=tuple(ColumnSpec(c, "float") for c in FEATURES))


def version(signature: Signature | None = SIGNATURE) -> ModelVersion:
    return ModelVersion(
        name="m", version="1", format="onnx", artifact_uri="file:///m", registry="test", signature=signature
    )


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return make_transactions(3_000, seed=7)


def reference(path: Path, x: np.ndarray) -> list:
    """onnxruntime itself, single-threaded like our default, so tree sums run in the same order."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options)
    return session.run(None, {session.get_inputs()[0].name: x})


def ulps(values: np.ndarray, count: int) -> float:
    """``count`` float32 steps at the largest magnitude in ``values``: rounding, not a different model."""
    return count * float(np.spacing(np.float32(np.abs(values).max())))


def batch_of(table: pa.Table, schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([table[n].combine_chunks() for n in schema.names], schema=schema)


def test_classifier_without_zipmap(models, table):
    scorer = create_runtime("onnx").load(version(), models.lr_onnx)
    assert scorer.output_schema.names == ["label", "probability_0", "probability_1"]
    out = scorer.score(batch_of(table, scorer.input_schema))
    labels, probabilities = reference(models.lr_onnx, features_of(table))
    np.testing.assert_array_equal(out["label"].to_numpy(), labels)
    np.testing.assert_array_equal(out["probability_1"].to_numpy(), probabilities[:, 1])


def test_classifier_with_zipmap_is_cut_to_a_tensor(models, table):
    scorer = OnnxRuntime().load(version(), models.rf_onnx)
    assert scorer.output_schema.names == ["label", "probability_0", "probability_1"]
    assert scorer.output_schema.field("probability_1").type == pa.float32()
    out = scorer.score(batch_of(table, scorer.input_schema))
    labels, maps = reference(models.rf_onnx, features_of(table))
    np.testing.assert_array_equal(out["label"].to_numpy(), labels)
    np.testing.assert_allclose(out["probability_1"].to_numpy(), [m[1] for m in maps], rtol=0, atol=1e-7)
    sklearn = models.rf.predict_proba(features_of(table))[:, 1]
    np.testing.assert_allclose(out["probability_1"].to_numpy(), sklearn, atol=1e-5)


def test_outputs_can_be_narrowed(models, table):
    """Fewer columns, and a graph cut to what they need: onnxruntime would compute every output."""
    labels, probabilities = reference(models.lr_onnx, features_of(table))
    scorer = OnnxRuntime(outputs=["probability_1"]).load(version(), models.lr_onnx)
    assert scorer.output_schema.names == ["probability_1"]
    assert [o.name for o in scorer.session.get_outputs()] == ["probabilities"]  # no arg-max for the label
    out = scorer.score(batch_of(table, scorer.input_schema))
    np.testing.assert_array_equal(out["probability_1"].to_numpy(), probabilities[:, 1])
    scorer = OnnxRuntime(outputs=["label"]).load(version(), models.lr_onnx)
    assert [o.name for o in scorer.session.get_outputs()] == ["label"]  # no sigmoid for the probabilities
    np.testing.assert_array_equal(scorer.score(batch_of(table, scorer.input_schema))["label"].to_numpy(), labels)
    with pytest.raises(SchemaMismatchError, match=r"no output column\(s\) \['score'\]"):
        OnnxRuntime(outputs=["score"]).load(version(), models.lr_onnx)


def test_regressor_and_empty_batch(tmp_path, table):
    x = features_of(table)
    target = x @ np.arange(len(FEATURES), dtype=np.float32)
    model = LinearRegression().fit(x, target)
    path = tmp_path / "reg.onnx"
    path.write_bytes(to_onnx(model, initial_types=[("X", FloatTensorType([None, len(FEATURES)]))]).SerializeToString())
    scorer = OnnxRuntime(threads=1).load(version(), path)
    assert scorer.output_schema.names == ["prediction"]
    out = scorer.score(batch_of(table, scorer.input_schema))
    expected = reference(path, x)[0][:, 0]
    # Computed on the columns (``_linear_on_columns``): the one-target sum runs in another order.
    np.testing.assert_allclose(out["prediction"].to_numpy(), expected, rtol=0, atol=ulps(expected, 8))
    native = OnnxRuntime(threads=1, naming="native").load(version(), path)
    assert native.output_schema.names == ["variable"]
    empty = scorer.score(batch_of(table.slice(0, 0), scorer.input_schema))
    assert empty.num_rows == 0
    assert empty.schema == scorer.output_schema


def test_one_input_per_feature_is_mapped_by_name(models, tmp_path, table):
    """A graph with one named input per column needs no signature, whatever the data's column order."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(models.lr_onnx))
    graph = model.graph
    (matrix,) = graph.input
    graph.input.remove(matrix)
    graph.input.extend(helper.make_tensor_value_info(c, TensorProto.FLOAT, [None, 1]) for c in FEATURES)
    graph.node.insert(0, helper.make_node("Concat", FEATURES, [matrix.name], axis=1))
    path = tmp_path / "named.onnx"
    path.write_bytes(model.SerializeToString())

    scorer = OnnxRuntime().load(version(signature=None), path)
    assert scorer.input_schema.names == FEATURES
    shuffled = table.select(list(reversed(table.column_names)))
    out = scorer.score(batch_of(shuffled, scorer.input_schema))
    expected = reference(models.lr_onnx, features_of(table))[1][:, 1]
    np.testing.assert_array_equal(out["probability_1"].to_numpy(), expected)


def test_matrix_input_is_fed_column_major(models, table):
    """A graph's one [N, K] input is fed as Arrow's columns end to end ([K, N]) and transposed by the graph
    itself (cheaper than building rows in Arrow): the predictions are the untouched graph's, bit for bit."""
    scorer = OnnxRuntime(threads=1).load(version(), models.lr_onnx)
    (node,) = scorer.session.get_inputs()
    original = ort.InferenceSession(str(models.lr_onnx)).get_inputs()[0]
    assert (node.name, node.shape) == (original.name + COLUMNS_SUFFIX, [len(FEATURES), original.shape[0]])
    out = scorer.score(batch_of(table, scorer.input_schema))
    labels, probabilities = reference(models.lr_onnx, features_of(table))
    np.testing.assert_array_equal(out["label"].to_numpy(), labels)
    np.testing.assert_array_equal(out["probability_0"].to_numpy(), probabilities[:, 0])
    np.testing.assert_array_equal(out["probability_1"].to_numpy(), probabilities[:, 1])


def test_single_tensor_without_signature_asks_for_features(models):
    with pytest.raises(SchemaMismatchError, match="runtime option 'features'"):
        OnnxRuntime().load(version(signature=None), models.lr_onnx)
    scorer = OnnxRuntime(features=FEATURES).load(version(signature=None), models.lr_onnx)
    assert scorer.input_schema.names == FEATURES


def test_signature_width_mismatch_is_named(models):
    narrow = Signature(inputs=tuple(ColumnSpec(c, "float") for c in FEATURES[:4]))
    with pytest.raises(SchemaMismatchError, match=r"takes 10 features per row but 4 columns"):
        OnnxRuntime().load(version(signature=narrow), models.lr_onnx)


def test_concurrent_calls_on_one_session(models, table):
    from concurrent.futures import ThreadPoolExecutor

    scorer = OnnxRuntime(parallel=2, threads=1).load(version(), models.rf_onnx)
    assert scorer.concurrency == 2
    batches = [batch_of(table.slice(i * 500, 500), scorer.input_schema) for i in range(6)]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(scorer.score, batches))
    serial = [scorer.score(b) for b in batches]
    for got, want in zip(results, serial, strict=True):
        assert got.equals(want)


# -- real toolchains under the prediction contract ---------------------------------------------


def test_multiclass_forest_with_string_classes(table, tmp_path):
    from sklearn.ensemble import RandomForestClassifier

    x = features_of(table)
    y = np.array(["low", "mid", "high"])[np.digitize(x[:, 0] + 0.5 * x[:, 1], [-0.5, 0.5])]
    forest = RandomForestClassifier(n_estimators=8, max_depth=5, random_state=0).fit(x, y)
    path = tmp_path / "forest.onnx"
    path.write_bytes(to_onnx(forest, x[:1]).SerializeToString())  # ZipMap on, as skl2onnx makes it
    scorer = OnnxRuntime(threads=1).load(version(), path)
    classes = list(forest.classes_)  # sorted: high, low, mid
    assert scorer.classes == classes
    assert scorer.output_schema.names == ["label", *(f"probability_{c}" for c in classes)]
    assert scorer.output_schema.field("label").type == pa.string()
    out = scorer.score(batch_of(table, scorer.input_schema))
    assert out["label"].to_pylist() == list(forest.predict(x))
    np.testing.assert_allclose(
        np.column_stack([out[f"probability_{c}"].to_numpy() for c in classes]), forest.predict_proba(x), atol=1e-6
    )


def test_double_pipeline_with_zipmap_loads_and_equals_sklearn(table, tmp_path):
    """skl2onnx to_onnx on float64 data: probabilities are doubles; the ZipMap cut keeps them double."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = features_of(table).astype(np.float64)
    y = (x[:, 0] - x[:, 2] > 0).astype(np.int64)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
    path = tmp_path / "double.onnx"
    path.write_bytes(to_onnx(pipeline, x[:1]).SerializeToString())
    signature = Signature(inputs=tuple(ColumnSpec(c, "double") for c in FEATURES))
    scorer = OnnxRuntime(threads=1).load(version(signature), path)
    assert scorer.output_schema.field("probability_1").type == pa.float64()
    columns = [pa.array(x[:, j]) for j in range(len(FEATURES))]
    out = scorer.score(pa.RecordBatch.from_arrays(columns, schema=scorer.input_schema))
    np.testing.assert_allclose(out["probability_1"].to_numpy(), pipeline.predict_proba(x)[:, 1], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(out["label"].to_numpy(), pipeline.predict(x))


@pytest.mark.parametrize("classes", [[0, 1, 2], ["high", "low", "mid"]])
def test_double_classifier_without_zipmap_keeps_the_contract(classes, table, tmp_path):
    """skl2onnx on float64 data with zipmap=False writes the classifier in standard ops (no classifier node,
    no ZipMap): its classes come from the ArrayFeatureExtractor constant, not regressor naming. Compared with
    onnxruntime on the file as exported."""
    from sklearn.linear_model import LogisticRegression

    x = features_of(table).astype(np.float64)
    y = np.array(classes, dtype=object)[np.digitize(x[:, 0] + 0.5 * x[:, 1], [-0.5, 0.5])]
    model = LogisticRegression(max_iter=500).fit(x, y.astype(type(classes[0])))
    path = tmp_path / "double.onnx"
    path.write_bytes(to_onnx(model, x[:1], options={"zipmap": False}).SerializeToString())
    signature = Signature(inputs=tuple(ColumnSpec(c, "double") for c in FEATURES))
    scorer = OnnxRuntime(threads=1).load(version(signature), path)
    assert scorer.output_schema.names == ["label", *(f"probability_{c}" for c in classes)]
    out = scorer.score(
        pa.RecordBatch.from_arrays([pa.array(x[:, j]) for j in range(len(FEATURES))], schema=scorer.input_schema)
    )
    labels, probabilities = ort.InferenceSession(str(path)).run(None, {"X": x})
    assert out["label"].to_pylist() == labels.tolist()
    np.testing.assert_array_equal(np.column_stack([out[f"probability_{c}"].to_numpy() for c in classes]), probabilities)


def test_column_transformer_with_one_input_per_column(tmp_path):
    """skl2onnx's ColumnTransformer pipeline, a strict OneHotEncoder (unknown levels are errors, so the
    load-time probe row cannot run: the outputs come from the graph's declared types)."""
    import pandas as pd
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    rng = np.random.default_rng(3)
    df = pd.DataFrame({"amount": rng.gamma(2.0, 20.0, 2_000).astype(np.float32), "age": rng.integers(18, 90, 2_000)})
    df["age"] = df["age"].astype(np.float32)
    df["channel"] = rng.choice(["web", "store", "phone"], 2_000)
    y = np.where((df["amount"] > 40) & (df["channel"] != "store"), "fraud", "ok")
    encode = ColumnTransformer([("enum", OneHotEncoder(), ["channel"])], remainder="passthrough")
    pipeline = Pipeline([("encode", encode), ("model", LogisticRegression(max_iter=500))]).fit(df, y)
    initial = [("amount", FloatTensorType([None, 1])), ("age", FloatTensorType([None, 1]))]
    initial.append(("channel", StringTensorType([None, 1])))
    path = tmp_path / "ct.onnx"
    path.write_bytes(convert_sklearn(pipeline, initial_types=initial).SerializeToString())
    scorer = OnnxRuntime(threads=1).load(version(None), path)
    assert scorer.input_schema.names == ["amount", "age", "channel"]
    assert scorer.output_schema.names == ["label", "probability_fraud", "probability_ok"]
    batch = pa.RecordBatch.from_pandas(df, schema=scorer.input_schema, preserve_index=False)
    out = scorer.score(batch)
    assert out["label"].to_pylist() == list(pipeline.predict(df))
    np.testing.assert_allclose(out["probability_fraud"].to_numpy(), pipeline.predict_proba(df)[:, 0], atol=1e-5)


def linear_exports(x: np.ndarray) -> dict[str, tuple[Any, np.ndarray]]:
    """skl2onnx's linear exports as users make them, each with the target it is fit on."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    binary = (x[:, 0] - x[:, 2] > 0).astype(np.int64)
    three = np.digitize(x[:, 0] + 0.5 * x[:, 1], [-0.5, 0.5])
    return {
        "logistic, ZipMap, labels through Cast": (LogisticRegression(), binary),
        "logistic, string classes": (LogisticRegression(), np.where(binary, "fraud", "ok")),
        "multinomial logistic, softmax + Normalizer": (LogisticRegression(), three),
        "scaler + logistic pipeline": (make_pipeline(StandardScaler(), LogisticRegression()), three),
        "linear SVC, raw scores": (LinearSVC(), three),
        "ridge, two targets": (Ridge(), x[:, :2] @ np.array([[1.0, -2.0], [0.5, 3.0]], dtype=np.float32)),
    }


def exported_linear(kind: str, x: np.ndarray, tmp_path: Path) -> tuple[Any, Path, Any]:
    """The estimator ``kind`` of ``linear_exports`` fit on ``x``, its skl2onnx file, and that graph as
    ``OnnxRuntime.load`` rewrites it (ZipMap cut; None in place of the graph where it is not rewritten)."""
    import onnx

    from ml_assets.resources.runtimes.onnx import _linear_on_columns, _strip_zipmap

    estimator, y = linear_exports(x)[kind]
    estimator.fit(x, y)
    path = tmp_path / "linear.onnx"
    path.write_bytes(to_onnx(estimator, x[:1], target_opset=17).SerializeToString())
    model = onnx.load(str(path))
    _strip_zipmap(model)
    return estimator, path, model if _linear_on_columns(model) else None


@pytest.mark.parametrize("kind", list(linear_exports(np.zeros((4, 3), np.float32))))
def test_linear_models_are_computed_on_the_columns_with_the_kernels_results(kind, table, tmp_path):
    """The graph is rewritten to read the [K, N] feed itself, and gives onnxruntime's own predictions."""
    x = features_of(table)
    _, path, rewritten = exported_linear(kind, x, tmp_path)
    assert rewritten is not None, kind
    assert not {n.op_type for n in rewritten.graph.node} & {"LinearClassifier", "LinearRegressor", "Scaler"}

    scorer = OnnxRuntime(threads=1, naming="native").load(version(), path)
    assert scorer.session.get_inputs()[0].name.endswith(COLUMNS_SUFFIX)
    out = scorer.score(batch_of(table, scorer.input_schema))
    expected = reference(path, x)
    for name, values in zip([o.name for o in ort.InferenceSession(str(path)).get_outputs()], expected, strict=True):
        if isinstance(values, list):  # ZipMap: one dict per row
            values = np.array([[row[c] for c in sorted(values[0])] for row in values], dtype=np.float32)
        if values.dtype.kind in "iOU":
            assert out[name].to_pylist() == values.tolist(), kind
            continue
        columns = [c for c in out.schema.names if c == name or c.startswith(("probability_", f"{name}_"))]
        got = np.column_stack([out[c].to_numpy() for c in columns])
        np.testing.assert_allclose(got, values.reshape(len(x), -1), rtol=0, atol=ulps(values, 2), err_msg=kind)


def test_linear_rewrite_leaves_other_graphs_alone(models):
    """An input that feeds more than the linear node, or a one-row classifier, keeps the general path."""
    import onnx
    from onnx import helper

    from ml_assets.resources.runtimes.onnx import _linear_on_columns

    shared = onnx.load(str(models.lr_onnx))
    source = shared.graph.input[0].name
    shared.graph.node.append(helper.make_node("Identity", [source], ["copy"]))
    shared.graph.output.append(helper.make_tensor_value_info("copy", onnx.TensorProto.FLOAT, None))
    assert not _linear_on_columns(shared)

    one_row = onnx.load(str(models.lr_onnx))
    (node,) = [n for n in one_row.graph.node if n.op_type == "LinearClassifier"]
    attributes = {a.name: a for a in node.attribute}
    width = len(attributes["coefficients"].floats) // len(attributes["intercepts"].floats)
    del attributes["coefficients"].floats[width:]
    del attributes["intercepts"].floats[1:]
    assert not _linear_on_columns(one_row)


def keep_only_ml_ops(model: Any) -> None:
    """The graph's ai.onnx.ml nodes and opset only, as old converters wrote them."""
    nodes = [n for n in model.graph.node if n.domain == "ai.onnx.ml"]
    opsets = [o for o in model.opset_import if o.domain == "ai.onnx.ml"]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.opset_import[:]
    model.opset_import.extend(opsets)


def test_a_pure_ml_graph_in_an_old_ir_version_still_loads_and_scores(models, table, tmp_path):
    """No default-domain opset and IR version 3 (old converters): opset 13 cannot be imported into it, so the
    graph is fed row-major, untouched, and still gives onnxruntime's predictions."""
    import onnx

    model = onnx.load(str(models.lr_onnx))
    keep_only_ml_ops(model)
    model.ir_version = 3
    path = tmp_path / "old.onnx"
    path.write_bytes(model.SerializeToString())
    scorer = OnnxRuntime(threads=1).load(version(), path)
    assert not scorer.session.get_inputs()[0].name.endswith(COLUMNS_SUFFIX)
    out = scorer.score(batch_of(table, scorer.input_schema))
    labels, probabilities = reference(path, features_of(table))
    np.testing.assert_array_equal(out["label"].to_numpy(), labels)
    np.testing.assert_array_equal(out["probability_1"].to_numpy(), probabilities[:, 1])


@pytest.mark.parametrize("kind", ["logistic, string classes", "scaler + logistic pipeline"])
def test_a_narrowed_graph_keeps_only_the_nodes_its_outputs_need(kind, table, tmp_path):
    import onnx

    from ml_assets.resources.runtimes.onnx import _pruned

    x = features_of(table)
    estimator, path, model = exported_linear(kind, x, tmp_path)
    assert model is not None, kind
    pruned = _pruned(model, ["probabilities"])
    assert pruned is not None
    assert [o.name for o in pruned.graph.output] == ["probabilities"]
    assert {"ArgMax", "Greater"}.isdisjoint(n.op_type for n in pruned.graph.node), kind  # the label's
    assert len(pruned.graph.node) < len(model.graph.node)
    if "string" in kind:  # the table of class names went with the label
        assert [i.data_type for i in model.graph.initializer].count(onnx.TensorProto.STRING) == 1
        assert onnx.TensorProto.STRING not in [i.data_type for i in pruned.graph.initializer]
    assert _pruned(model, [o.name for o in model.graph.output]) is None  # every node needed: nothing to cut
    classes = [str(c) for c in estimator.classes_]
    scorer = OnnxRuntime(threads=1, outputs=[f"probability_{classes[-1]}"]).load(version(), path)
    out = scorer.score(batch_of(table, scorer.input_schema))
    expected = estimator.predict_proba(x)[:, -1]
    np.testing.assert_allclose(out[f"probability_{classes[-1]}"].to_numpy(), expected, rtol=0, atol=1e-5)


def test_a_graph_with_a_subgraph_is_not_narrowed():
    """A subgraph may read any name of the graph around it: which nodes it needs is not told by its inputs."""
    from onnx import TensorProto, helper

    from ml_assets.resources.runtimes.onnx import _pruned

    def value(name: str) -> Any:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [1])

    branch = helper.make_graph([helper.make_node("Identity", ["doubled"], ["picked"])], "branch", [], [value("picked")])
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["x", "x"], ["doubled"]),
            helper.make_node("Greater", ["x", "x"], ["flag"]),
            helper.make_node("If", ["flag"], ["chosen"], then_branch=branch, else_branch=branch),
            helper.make_node("Neg", ["x"], ["negated"]),
        ],
        "g",
        [value("x")],
        [value("chosen"), value("negated")],
    )
    model = helper.make_model(graph)
    assert _pruned(model, ["chosen"]) is None  # by its inputs, the If needs only "flag", not "doubled"
    del model.graph.node[2]  # without the If, the same graph is cut down to what "negated" needs
    cut = _pruned(model, ["negated"])
    assert [n.op_type for n in cut.graph.node] == ["Neg"]


@pytest.mark.parametrize("zeroed", [False, True], ids=["fitted", "every score tied"])
def test_a_binary_label_on_ties_and_nan_rows_is_the_kernels(zeroed, tmp_path):
    """The rewritten binary label (second score > first) picks the first class on a tie and on NaN,
    as LinearClassifier's own arg-max does."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 3)).astype(np.float32)
    model = LogisticRegression().fit(x, np.where(x[:, 0] > 0, "fraud", "ok"))
    if zeroed:
        model.coef_[:], model.intercept_[:] = 0.0, 0.0
    path = tmp_path / "binary.onnx"
    path.write_bytes(to_onnx(model, x[:1], target_opset=17).SerializeToString())
    x[:10, 1] = np.nan  # rows scored with nulls="pass"
    names = ["a", "b", "c"]
    scorer = OnnxRuntime(threads=1).load(version(Signature(tuple(ColumnSpec(c, "float") for c in names))), path)
    out = scorer.score(pa.record_batch([pa.array(x[:, i]) for i in range(3)], names=names))
    expected = reference(path, x)[0]
    assert out["label"].to_pylist() == expected.tolist()
    assert set(expected[:10]) == {"fraud"}


def test_tensor_outputs_are_required_and_a_derived_label_keeps_its_nulls():
    """Columns read straight from tensors are non-nullable (Parquet writes them without definition levels);
    a label derived from the probabilities stays nullable: a row with a NaN probability has none."""
    from ml_assets.resources.core.predictions import classifier_map

    probabilities = {0: pa.field("p0", pa.float32()), 1: pa.field("p1", pa.float32())}
    derived = classifier_map([0, 1], probabilities=probabilities).required()
    assert [(f.name, f.nullable) for f in derived.schema] == [
        ("label", True), ("probability_0", False), ("probability_1", False),
    ]  # fmt: skip
    out = derived.apply(pa.RecordBatch.from_pydict({"p0": pa.array([0.8, np.nan], pa.float32()), "p1": [0.2, 0.1]}))
    assert out["label"].to_pylist() == [0, None]
    assert out.schema == derived.schema


def test_an_onnx_scorer_declares_its_outputs_required(models, table):
    scorer = create_runtime("onnx").load(version(), models.lr_onnx)
    assert [f.nullable for f in scorer.output_schema] == [False, False, False]
    assert scorer.score(batch_of(table, scorer.input_schema)).schema == scorer.output_schema


def test_probabilities_come_back_by_class_and_reach_arrow_without_a_copy(models, table):
    """The rewritten linear graph ends in [C, N] scores: onnxruntime no longer transposes them into rows, and
    each class's column is one contiguous row of that block, handed to Arrow as it is. Same values, bit for bit."""
    scorer = OnnxRuntime(threads=1).load(version(), models.lr_onnx)
    assert {o.name: o.shape[0] for o in scorer.session.get_outputs()}["probabilities"] == 2
    batch = batch_of(table, scorer.input_schema)
    out = scorer.score(batch)
    labels, probabilities = reference(models.lr_onnx, features_of(table))
    np.testing.assert_array_equal(out["label"].to_numpy(), labels)
    np.testing.assert_array_equal(out["probability_0"].to_numpy(), probabilities[:, 0])
    np.testing.assert_array_equal(out["probability_1"].to_numpy(), probabilities[:, 1])
    first, second = (out[c].buffers()[1] for c in ("probability_0", "probability_1"))
    assert second.address - first.address == 4 * batch.num_rows  # rows of one [2, N] block: not copied


@pytest.mark.parametrize("case", ["final", "its input read elsewhere", "its output read elsewhere"])
def test_only_a_final_transpose_nothing_else_reads_is_dropped(case, tmp_path):
    """``_outputs_by_class`` drops a Transpose(perm=[1, 0]) that only turns a result into the graph's output;
    the scorer's columns are those of the untouched graph either way."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from ml_assets.resources.runtimes.onnx import _outputs_by_class

    nodes = [
        helper.make_node("Transpose", ["X"], ["XT"], perm=[1, 0]),
        helper.make_node("MatMul", ["W", "XT"], ["scores"]),  # [2, N]
        helper.make_node("Transpose", ["scores"], ["out"], perm=[1, 0]),
    ]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 2])]
    if case != "final":
        read, axis = ("scores", 0) if case == "its input read elsewhere" else ("out", 1)
        nodes.append(helper.make_node("ArgMax", [read], ["best"], axis=axis, keepdims=0))
        outputs.append(helper.make_tensor_value_info("best", TensorProto.INT64, ["N"]))
    weights = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3) / 7, "W")
    x_info = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 3])
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x_info], outputs, [weights]),
        opset_imports=[helper.make_opsetid("", 17)],
        ir_version=8,
    )
    path = tmp_path / "t.onnx"
    path.write_bytes(model.SerializeToString())
    assert _outputs_by_class(onnx.load(str(path))) == ({"out"} if case == "final" else set())

    x = np.random.default_rng(1).standard_normal((50, 3)).astype(np.float32)
    names = ["a", "b", "c"]
    signature = Signature(tuple(ColumnSpec(c, "float") for c in names))
    scorer = OnnxRuntime(threads=1, naming="native").load(version(signature), path)
    out = scorer.score(pa.record_batch([pa.array(x[:, i]) for i in range(3)], names=names))
    expected = reference(path, x)
    np.testing.assert_array_equal(np.column_stack([out["out_0"].to_numpy(), out["out_1"].to_numpy()]), expected[0])
    if case != "final":
        np.testing.assert_array_equal(out["best"].to_numpy(), expected[1])
