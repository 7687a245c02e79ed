"""Shared fixtures: a real MLflow registry in a SQLite file with real ONNX models, and real
hive-partitioned Parquet data. Built once per test session; every test gets its own output folder.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from ml_assets.dev.demo import FEATURES, make_transactions, register_onnx_model, to_onnx_classifier, write_partitioned
from ml_assets.dev.services import free_port, wait_for_port

# tests/airflow needs the [airflow] extra; without it they are left out, not failed. (Top-level
# find_spec imports nothing: Airflow must first be imported after tests/airflow/conftest.py sets its home.)
collect_ignore = [] if importlib.util.find_spec("airflow") else ["airflow"]

DATES = ["2026-11-01", "2026-11-02", "2026-11-03"]
ROWS_PER_DAY = 20_000
VENV_BIN = str(Path(sys.executable).parent)
# Environments built from the package index (model environments, MLServer's) and fixtures trained in them,
# by content hash: only the first suite run on a machine builds them.
TEST_CACHE = Path(os.environ.get("ML_ASSETS_TEST_ENV_DIR") or Path.home() / ".cache" / "ml-assets-test")
TEST_ENV_DIR = TEST_CACHE / "envs"


# pytest-xdist runs the suite on two workers (`-n 2 --dist loadscope`, pyproject.toml); a group runs whole on
# one worker. Each module is a group of its own, so its module-scoped servers, JVMs and Ray cluster start once;
# XDIST_GROUPS joins the modules that share a session fixture too costly to build twice. (Groups are made by
# the scheduler below, not by xdist_group marks: xdist 3.8's loadgroup renames node ids through an attribute
# pytest 9 no longer reads, so those marks group nothing.)
XDIST_GROUPS = {
    "tests/airflow/": "airflow",  # `airflow db migrate` of the session's Airflow home
}
# Groups that take longest (pytest --durations on the 2-core CI machine), handed out first: a long group
# started last would leave one worker idle while the other finishes it. Order only, never what runs.
HEAVIEST_FIRST = [
    "airflow",  # ~320 s, half of it the `airflow standalone` deployment test
    "tests/resources/test_http_runtime.py",
    "tests/ml_assets/test_dagster_dev.py",
    "tests/ml_assets/test_ray_engine.py",
    "tests/resources/test_mlflow_services.py",
    "tests/ml_assets/test_signals.py",
    "tests/resources/test_model_envs.py",
    "tests/ml_assets/test_prediction_contract.py",
    "tests/sensors/test_promotion.py",
    "tests/resources/test_pyfunc_runtime.py",
    "tests/ml_assets/test_inprocess_assets.py",
]


def xdist_group_of(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    return next((group for prefix, group in XDIST_GROUPS.items() if path.startswith(prefix)), path)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    if config.getvalue("dist") != "loadscope":
        return None  # another --dist given on the command line: xdist's own scheduler
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_group_of(nodeid)

    return GroupScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {group: index for index, group in enumerate(HEAVIEST_FIRST)}
    items.sort(key=lambda item: rank.get(xdist_group_of(item.nodeid), len(rank)))  # stable: the rest keep order


@pytest.fixture(scope="session", autouse=True)
def _isolated_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Artifact cache and MLflow state of this session only; the venv's bin on PATH for subprocesses."""
    saved = dict(os.environ)
    os.environ["ML_ASSETS_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["PATH"] = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield
    os.environ.clear()
    os.environ.update(saved)


@dataclass(frozen=True)
class Models:
    tracking_uri: str
    root: Path
    lr: object
    rf: object
    train_x: np.ndarray
    lr_onnx: Path
    rf_onnx: Path


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    """``fraud`` v1: logistic regression, zipmap off, @champion, Production.
    ``fraud`` v2: random forest, zipmap on, @challenger, Staging. Both logged with a column signature."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    root = tmp_path_factory.mktemp("mlflow")
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    train = make_transactions(5_000, seed=0)
    x = np.column_stack([train[c].to_numpy() for c in FEATURES])
    y = train["is_fraud"].to_numpy()
    lr = LogisticRegression(max_iter=500).fit(x, y)
    rf = RandomForestClassifier(n_estimators=10, max_depth=6, random_state=0).fit(x, y)
    lr_onnx, rf_onnx = to_onnx_classifier(lr, len(FEATURES)), to_onnx_classifier(rf, len(FEATURES), zipmap=True)
    (root / "lr.onnx").write_bytes(lr_onnx.SerializeToString())
    (root / "rf.onnx").write_bytes(rf_onnx.SerializeToString())
    artifacts = (root / "artifacts").as_uri()
    register_onnx_model(
        tracking_uri, "fraud", lr_onnx, FEATURES, artifact_location=artifacts, alias="champion", stage="Production"
    )
    register_onnx_model(
        tracking_uri, "fraud", rf_onnx, FEATURES, artifact_location=artifacts, alias="challenger", stage="Staging"
    )
    return Models(tracking_uri, root, lr, rf, x, root / "lr.onnx", root / "rf.onnx")


@pytest.fixture(scope="session")
def transactions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three daily hive partitions of 20k rows each, row groups of 8k rows."""
    root = tmp_path_factory.mktemp("data") / "transactions"
    write_partitioned(
        lambda day: make_transactions(ROWS_PER_DAY, seed=DATES.index(day) + 1), root, DATES, row_group_rows=8_192
    )
    return root


def codecs_of(path: str | Path) -> dict[str, str]:
    """The codec of each column of a Parquet file's first row group, by its path in the schema."""
    import pyarrow.parquet as pq

    group = pq.ParquetFile(path).metadata.row_group(0)
    return {group.column(i).path_in_schema: group.column(i).compression for i in range(group.num_columns)}


def features_of(table: pa.Table) -> np.ndarray:
    return np.column_stack([table[c].to_numpy() for c in FEATURES]).astype(np.float32)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[dict[str, str]]:
    """A real S3-compatible server (moto's server mode) on loopback; yields s3fs storage options."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process, what="moto S3 server")
        yield {"endpoint_url": f"http://127.0.0.1:{port}", "key": "testing", "secret": "testing"}
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextmanager
def component_defs(attributes: Mapping[str, object]) -> Iterator[tuple[object, object]]:
    """(component, Definitions) of a ScoringPipelineComponent scaffolded with ``attributes`` in a
    temporary Dagster project, as ``dg`` loads it."""
    import warnings

    from dagster.components.testing import create_defs_folder_sandbox

    from ml_assets.dagster.components import ScoringPipelineComponent

    with create_defs_folder_sandbox() as sandbox:
        path = sandbox.scaffold_component(
            component_cls=ScoringPipelineComponent,
            defs_yaml_contents={
                "type": "ml_assets.dagster.components.ScoringPipelineComponent",
                "attributes": dict(attributes),
            },
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with sandbox.load_component_and_build_defs(defs_path=path) as loaded:
                yield loaded


def run_writer_script(script: Path, spec: dict, *, pause_at: str | None, tmp_path: Path) -> None:
    """Runs a writer script (``script SPEC_JSON``) to completion, or until it touches the marker at
    ``pause_at``, and SIGKILLs it there: the kill-point tests of the commit protocol and the quarantine."""
    import json
    import signal
    import time

    marker = tmp_path / f"reached-{time.monotonic_ns()}"
    spec = {**spec, "pause_at": pause_at, "marker": str(marker)}
    process = subprocess.Popen([sys.executable, str(script), json.dumps(spec)], stderr=subprocess.PIPE)
    if pause_at is None:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err.decode()
        return
    deadline = time.monotonic() + 120
    try:
        while not marker.exists():
            assert process.poll() is None, f"the writer exited before {pause_at}: {process.stderr.read().decode()}"
            assert time.monotonic() < deadline, f"the writer did not reach {pause_at} within 120s"
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
