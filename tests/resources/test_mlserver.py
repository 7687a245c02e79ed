"""MLServer (Open Inference Protocol v2) with its scikit-learn runtime, in a virtualenv of its own.

MLServer pins older fastapi/starlette/protobuf than Airflow, so it cannot share the project's
virtualenv: the fixture builds one from the package index with uv, once per machine, in the model-environment
tests' cache (keyed by content hash, under a file lock; a fresh clone reuses it). If it cannot be built (no
index, no wheel), the test is skipped and says why.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from ml_assets.dev.services import free_ports
from ml_assets.resources.core.envs import EnvironmentStore
from ml_assets.resources.core.errors import EnvironmentBuildError
from ml_assets.resources.core.models import ColumnSpec, ModelVersion, Signature
from ml_assets.resources.runtimes.http import HttpRuntime
from tests.conftest import TEST_ENV_DIR

# The server's own pins: scikit-learn as in ours, so the pickled pipeline loads unchanged.
MLSERVER_REQUIREMENTS = ["mlserver==1.7.1", "mlserver-sklearn==1.7.1", "scikit-learn==1.9.0"]
INSTALL_TIMEOUT_S = 1500
NUMERIC = ["x0", "x1", "x2"]
FEATURES = [*NUMERIC, "color"]


def training(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({c: np.round(rng.standard_normal(n), 6) for c in NUMERIC})
    df["color"] = rng.choice(["red", "green", "blue"], size=n)
    return df


@pytest.fixture(scope="session")
def mlserver_bin() -> Path:
    store = EnvironmentStore(TEST_ENV_DIR, build_timeout_s=INSTALL_TIMEOUT_S)
    try:
        env = store.ensure(MLSERVER_REQUIREMENTS, what="MLServer")
    except EnvironmentBuildError as failed:
        pytest.skip(f"MLServer does not install from the package index: {str(failed)[-600:]}")
    return env.path / "bin" / "mlserver"


@pytest.fixture(scope="module")
def served_model(mlserver_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, str]]:
    """A scikit-learn pipeline (one-hot enum + numbers -> logistic regression) served by MLServer."""
    import joblib
    import requests
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    train = training(2_000, seed=0)
    y = np.where(train["x0"] - train["x1"] + (train["color"] == "red") > 0.3, "yes", "no")
    # handle_unknown="ignore": the one-row probe at load sends an empty string as the color.
    encode = ColumnTransformer([("enum", OneHotEncoder(handle_unknown="ignore"), ["color"])], remainder="passthrough")
    pipeline = Pipeline([("encode", encode), ("model", LogisticRegression())]).fit(train[FEATURES], y)
    root = tmp_path_factory.mktemp("mlserver")
    (root / "lr").mkdir()
    joblib.dump(pipeline, root / "lr" / "model.joblib")
    settings = {
        "name": "lr",
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib"},
    }
    (root / "lr" / "model-settings.json").write_text(json.dumps(settings))
    port, grpc, metrics = free_ports(3)
    server = {"host": "127.0.0.1", "http_port": port, "grpc_port": grpc, "metrics_port": metrics, "parallel_workers": 0}
    (root / "settings.json").write_text(json.dumps(server))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = f"{mlserver_bin.parent}{os.pathsep}{env.get('PATH', '')}"
    log = (root / "mlserver.log").open("wb")
    proc = subprocess.Popen(
        [str(mlserver_bin), "start", str(root)], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlserver exited with {proc.returncode}: {(root / 'mlserver.log').read_text()[-2000:]}")
            try:
                if requests.get(f"http://127.0.0.1:{port}/v2/models/lr/ready", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlserver not ready within 180 s: {(root / 'mlserver.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield pipeline, f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):  # it exited already: the failure above says why
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


def version() -> ModelVersion:
    inputs = (*(ColumnSpec(c, "double") for c in NUMERIC), ColumnSpec("color", "string"))
    return ModelVersion(
        name="lr", version="1", format="remote", artifact_uri="http://x", registry="test",
        signature=Signature(inputs=inputs),
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(INSTALL_TIMEOUT_S + 300)  # the first run builds the server's virtualenv
def test_mlserver_v2_gives_labels_and_probabilities(served_model) -> None:
    pipeline, url = served_model
    data = training(3_000, seed=5)
    runtime = HttpRuntime(url=url, endpoint="v2", classes=["no", "yes"], batch_rows=700)
    with runtime.load(version()) as scorer:
        assert scorer.output_schema.names == ["label", "probability_no", "probability_yes"]
        assert scorer.classes == ["no", "yes"]
        batch = pa.RecordBatch.from_pandas(data[FEATURES], schema=scorer.input_schema, preserve_index=False)
        out = scorer.score(batch)
    expected = pipeline.predict_proba(data[FEATURES])
    assert list(pipeline.classes_) == ["no", "yes"]
    np.testing.assert_allclose(out["probability_no"].to_numpy(), expected[:, 0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(out["probability_yes"].to_numpy(), expected[:, 1], rtol=0, atol=1e-12)
    assert out["label"].to_pylist() == list(pipeline.predict(data[FEATURES]))


@pytest.mark.slow
@pytest.mark.timeout(INSTALL_TIMEOUT_S + 300)
def test_mlserver_string_classes_need_their_names_and_labels_only_is_said(served_model) -> None:
    from ml_assets.resources.core.errors import ModelLoadError

    _, url = served_model
    with pytest.raises(ModelLoadError, match=r"predict gives strings; name the classes in model order"):
        HttpRuntime(url=url, endpoint="v2").load(version())
    # A server asked for predict alone gives labels only, and the scorer says so.
    with HttpRuntime(url=url, endpoint="v2", v2_outputs=["predict"]).load(version()) as scorer:
        assert scorer.output_schema.names == ["label"]
        assert scorer.output_note == "labels only"
