"""One prediction contract for every runtime, and one score column for the checks.

The same scikit-learn pipeline (one-hot encoded enum columns + numbers -> logistic regression) is
exported by each real toolchain: skl2onnx (one input per column), sklearn2pmml, MLflow's sklearn
flavor (pyfunc, predict_proba: a bare matrix) and that pyfunc behind ``mlflow models serve``; H2O
gives its own GBM on the same columns (the committed MOJO fixture). Every runtime must name its
outputs alike, match its toolchain's own predictions, and give the same check verdicts on the same
partitions: health passes, drift passes on a partition like the reference and fails on a shifted one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ml_assets.checks import CheckSettings, DriftReference, check_prediction_health, evaluate_checks
from ml_assets.datasets import ParquetDataset
from ml_assets.dev.demo import FEATURES as DEMO_FEATURES
from ml_assets.dev.demo import write_partitioned
from ml_assets.dev.services import free_port
from ml_assets.resources.core.errors import SchemaMismatchError
from ml_assets.resources.core.models import ModelVersion
from ml_assets.resources.core.predictions import score_columns
from ml_assets.scoring import score_partition
from ml_assets.summary import ScoreSummary
from tests.resources.fixtures.make_h2o_mojos import training_frame

NUMERIC = ["x0", "x1", "x2", "x3"]
ENUMS = ["color", "size"]
FEATURES = [*NUMERIC, *ENUMS]
DAYS = ["2026-11-01", "2026-11-02", "2026-11-03"]  # reference, like it, shifted
H2O_BINOMIAL = Path(__file__).parents[1] / "resources" / "fixtures" / "h2o" / "binomial.zip"
VENV_BIN = Path(sys.executable).parent


def features(n: int, seed: int, *, shift: float = 0.0) -> pd.DataFrame:
    df = training_frame(n, seed=seed)
    df["x1"] = df["x1"].fillna(0.0)
    df["x0"] = (df["x0"] + shift).round(6)
    return df


def version(name: str, fmt: str) -> ModelVersion:
    return ModelVersion(name=name, version="1", format=fmt, artifact_uri=f"file:///{name}", registry="test")


@contextmanager
def served(cmd: list[str], port: int, log: Path, *, timeout_s: float = 180.0) -> Iterator[str]:
    """A scoring server process on loopback until the block ends; its /ping must answer first."""
    import requests

    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"{cmd[0]} exited with {proc.returncode}: {log.read_text()[-2000:]}")
                try:
                    if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).ok:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"{cmd[0]} did not answer within {timeout_s:.0f} s: {log.read_text()[-2000:]}")
                time.sleep(0.5)
            yield f"http://127.0.0.1:{port}"
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@dataclass
class Exported:
    pipeline: Any
    onnx: Path
    pmml: Path
    pyfunc: Path
    data: Path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder
    from sklearn2pmml import sklearn2pmml
    from sklearn2pmml.pipeline import PMMLPipeline

    root = tmp_path_factory.mktemp("contract")
    train = features(4_000, seed=7)
    y = train["binary"].astype(int).to_numpy()

    def steps() -> list[tuple[str, Any]]:
        # handle_unknown="ignore": `mlflow models serve` is probed at load with one row of zeros and
        # empty strings, which an encoder that refuses unknown levels answers with an error.
        encode = ColumnTransformer([("enum", OneHotEncoder(handle_unknown="ignore"), ENUMS)], remainder="passthrough")
        return [("encode", encode), ("model", LogisticRegression(max_iter=500))]

    # The same pipeline fitted twice (deterministic): sklearn2pmml needs its own PMMLPipeline class,
    # skl2onnx and MLflow a plain scikit-learn one.
    pipeline = Pipeline(steps()).fit(train[FEATURES], y)
    sklearn2pmml(PMMLPipeline(steps()).fit(train[FEATURES], y), str(root / "lr.pmml"))
    initial = [(c, FloatTensorType([None, 1])) for c in NUMERIC] + [(c, StringTensorType([None, 1])) for c in ENUMS]
    onnx_model = convert_sklearn(pipeline, initial_types=initial, options={"zipmap": False})
    (root / "lr.onnx").write_bytes(onnx_model.SerializeToString())
    mlflow.sklearn.save_model(
        pipeline,
        str(root / "pyfunc"),
        pyfunc_predict_fn="predict_proba",
        signature=infer_signature(train[FEATURES], pipeline.predict_proba(train[FEATURES])),
    )
    tables = {
        DAYS[0]: features(4_000, seed=1),
        DAYS[1]: features(4_000, seed=2),
        DAYS[2]: features(4_000, seed=3, shift=2.5),
    }
    write_partitioned(
        lambda day: pa.Table.from_pandas(tables[day][FEATURES], preserve_index=False), root / "data", DAYS
    )
    return Exported(pipeline, root / "lr.onnx", root / "lr.pmml", root / "pyfunc", root / "data")


@pytest.fixture(scope="module")
def mlflow_serve(exported: Exported, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    cmd = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", str(exported.pyfunc), "-h", "127.0.0.1"]
    cmd += ["-p", str(port), "--env-manager", "local", "-w", "1"]
    with served(cmd, port, tmp_path_factory.mktemp("serve") / "serve.log") as url:
        yield url


def scorer_for(runtime: str, exported: Exported, mlflow_serve: str | None) -> Any:
    from ml_assets.resources.runtimes.h2o import H2oMojoRuntime
    from ml_assets.resources.runtimes.http import HttpRuntime
    from ml_assets.resources.runtimes.onnx import OnnxRuntime
    from ml_assets.resources.runtimes.pmml import PmmlRuntime
    from ml_assets.resources.runtimes.pyfunc import PyfuncRuntime

    if runtime == "onnx":
        return OnnxRuntime(threads=1, parallel=1).load(version("onnx", "onnx"), exported.onnx)
    if runtime == "pmml":
        return PmmlRuntime(threads=1).load(version("pmml", "pmml"), exported.pmml)
    if runtime == "h2o":
        return H2oMojoRuntime(threads=1).load(version("h2o", "h2o_mojo"), H2O_BINOMIAL)
    if runtime == "pyfunc":
        return PyfuncRuntime().load(version("pyfunc", "pyfunc"), exported.pyfunc)
    return HttpRuntime(url=mlflow_serve, batch_rows=4_000).load(version("remote", "remote"), exported.pyfunc)


def verdicts(scorer: Any, exported: Exported, out: Path) -> tuple[list[tuple[str, str, bool]], list[Any]]:
    """(day, check, passed) for every check of every day, drift against the first day; and the results."""
    source = ParquetDataset(str(exported.data), partition_column="date")
    dest = ParquetDataset(str(out), partition_column="date")
    found, results, reference = [], [], None
    for day in DAYS:
        result = score_partition(scorer, version("m", "onnx"), source, dest, partition=day)
        references = [] if reference is None else [reference]
        outcomes = evaluate_checks(result, references=references, classes=scorer.classes)
        found.extend((day, outcome.name, outcome.passed) for outcome in outcomes)
        if reference is None:
            reference = DriftReference.from_summary("previous_partition", day, result.summary.as_dict())
        results.append(result)
    return found, results


RUNTIMES = ["onnx", "pmml", "h2o", "pyfunc", "remote"]


@pytest.mark.slow
@pytest.mark.timeout(1500)  # five toolchains, two servers and two JVM runtimes, on a shared machine
def test_every_runtime_one_contract_and_the_same_verdicts(exported, mlflow_serve, tmp_path):
    expected = [
        (DAYS[0], "signature", True),
        (DAYS[0], "prediction_health", True),
        (DAYS[0], "score_drift", True),  # nothing to compare with yet
        (DAYS[1], "signature", True),
        (DAYS[1], "prediction_health", True),
        (DAYS[1], "score_drift", True),
        (DAYS[2], "signature", True),
        (DAYS[2], "prediction_health", True),
        (DAYS[2], "score_drift", False),  # x0 shifted by 2.5 standard deviations
    ]
    reference_day = pq.read_table(exported.data / f"date={DAYS[1]}").to_pandas()
    sklearn_proba = exported.pipeline.predict_proba(reference_day[FEATURES])
    for runtime in RUNTIMES:
        scorer = scorer_for(runtime, exported, mlflow_serve)
        try:
            assert scorer.output_schema.names == ["label", "probability_0", "probability_1"], runtime
            assert scorer.output_schema.field("label").type == pa.int64(), runtime
            assert scorer.classes == [0, 1], runtime
            assert score_columns(scorer.output_schema) == ["probability_1"]  # the positive class, every runtime
            found, results = verdicts(scorer, exported, tmp_path / runtime)
        finally:
            scorer.close()
        assert found == expected, runtime
        drift = next(o for o in evaluate_checks(results[2], references=[
            DriftReference.from_summary("previous_partition", DAYS[0], results[0].summary.as_dict())
        ]) if o.name == "score_drift")  # fmt: skip
        assert drift.metrics["column"] == "probability_1"
        assert drift.metrics["psi_vs_partition"] > 0.2, runtime
        if runtime == "h2o":
            continue  # H2O's own GBM: compared with H2O in tests/resources/test_h2o_runtime.py
        scored = pq.read_table(results[1].output_uri).to_pandas()
        tolerance = 1e-5 if runtime == "onnx" else 1e-9  # ONNX computes in float32
        np.testing.assert_allclose(scored["probability_1"], sklearn_proba[:, 1], atol=tolerance, err_msg=runtime)
        np.testing.assert_allclose(scored["probability_0"], sklearn_proba[:, 0], atol=tolerance, err_msg=runtime)
        agree = np.mean(scored["label"].to_numpy() == exported.pipeline.predict(reference_day[FEATURES]))
        assert agree > (0.999 if runtime == "onnx" else 0.9999999), runtime


@pytest.mark.slow
def test_pyfunc_and_remote_say_they_fell_back(exported, mlflow_serve):
    for runtime in ("pyfunc", "remote"):
        scorer = scorer_for(runtime, exported, mlflow_serve)
        try:
            assert "bare [N, 2] matrix" in scorer.output_note
            assert "classes 0..1" in scorer.output_note
        finally:
            scorer.close()
    from ml_assets.resources.runtimes.pyfunc import PyfuncRuntime

    named = PyfuncRuntime(classes=["no", "yes"]).load(version("pyfunc", "pyfunc"), exported.pyfunc)
    native = PyfuncRuntime(naming="native").load(version("pyfunc", "pyfunc"), exported.pyfunc)
    try:
        assert named.output_schema.names == ["label", "probability_no", "probability_yes"]
        assert named.output_schema.field("label").type == pa.string()
        assert native.output_schema.names == ["prediction_0", "prediction_1"]
    finally:
        named.close()
        native.close()


# -- the score column and prediction_health, on summaries --------------------------------------


def summary_of(columns: dict[str, Any]) -> ScoreSummary:
    summary = ScoreSummary()
    summary.update(pa.RecordBatch.from_pydict(columns))
    return summary


def test_prediction_health_tolerates_float_rounding_at_the_edges():
    ones = np.float32(1.0) + np.finfo(np.float32).eps  # 1.0000001, as float32 ONNX models give
    p = np.array([0.2, 0.7, ones, 1.0], dtype=np.float32)
    healthy = check_prediction_health(summary_of({"probability_0": p, "probability_1": 1 - p}), rows_in=4, rows_out=4)
    assert healthy.passed, healthy.description


def test_prediction_health_names_exact_extremes_and_count():
    p = np.array([0.5, 1.25, -0.000002, 0.3, 1.0000001], dtype=np.float64)
    outcome = check_prediction_health(summary_of({"probability_1": p}), rows_in=5, rows_out=5)
    assert not outcome.passed
    assert "probability_1: 2 of 5 values outside [0, 1] (tolerance 1e-06); min -2e-06, max 1.25" in outcome.description
    assert outcome.metrics["probability_1.out_of_range"] == 2


def test_score_columns_binary_multiclass_regression_and_override():
    binary = pa.schema([("label", pa.string()), ("probability_no", pa.float64()), ("probability_yes", pa.float64())])
    multi = pa.schema([("label", pa.string())] + [(f"probability_{c}", pa.float32()) for c in ("cat", "dog", "emu")])
    regression = pa.schema([("prediction", pa.float64())])
    assert score_columns(binary) == ["probability_yes"]  # the last class in the model's order
    assert score_columns(multi) == ["probability_cat", "probability_dog", "probability_emu"]
    assert score_columns(regression) == ["prediction"]
    assert score_columns(binary, score_column="probability_no") == ["probability_no"]
    with pytest.raises(SchemaMismatchError, match=r"score_column 'p1' is not among the prediction columns"):
        score_columns(binary, score_column="p1")


def test_multiclass_drift_looks_at_every_class():
    from ml_assets.checks import check_drift

    rng = np.random.default_rng(0)
    shares = rng.dirichlet([1, 1, 1], 5_000)
    reference = summary_of({f"probability_{c}": shares[:, i] for i, c in enumerate(("a", "b", "c"))})
    histograms = {f"probability_{c}": list(reference.columns[f"probability_{c}"].histogram) for c in ("a", "b", "c")}
    moved = dict(histograms)
    moved["probability_c"] = list(np.roll(histograms["probability_c"], 40))  # only one class moves
    outcome = check_drift(moved, {"previous partition 2026-11-01": histograms})
    assert not outcome.passed
    assert "probability_c vs previous partition 2026-11-01" in outcome.description
    assert "probability_a vs" not in outcome.description
    assert outcome.metrics["probability_a.psi_vs_partition"] == pytest.approx(0.0)


def test_evaluate_checks_takes_score_column_from_settings(models, transactions, tmp_path):
    from ml_assets.resources.runtimes.onnx import OnnxRuntime

    scorer = OnnxRuntime(threads=1, features=DEMO_FEATURES).load(version("lr", "onnx"), models.lr_onnx)
    source = ParquetDataset(str(transactions), partition_column="date")
    first = score_partition(
        scorer, version("lr", "onnx"), source, ParquetDataset(str(tmp_path), "date"), partition="2026-11-01"
    )
    reference = DriftReference.from_summary("previous_partition", "2026-11-01", first.summary.as_dict())
    default = evaluate_checks(first, references=[reference])
    chosen = evaluate_checks(first, references=[reference], settings=CheckSettings(score_column="probability_0"))
    assert [o.name for o in default] == ["signature", "prediction_health", "score_drift"]
    assert default[2].metrics["column"] == "probability_1"
    assert chosen[2].metrics["column"] == "probability_0"
    assert all(o.passed for o in default), [o.description for o in default]
