"""A real Airflow 3 for the provider's tests: its home and SQLite database in this session's temp folder.

Airflow reads its configuration when first imported, so the environment is set here, before any
test module imports it; ``airflow db migrate`` builds the metadata database once per session.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

if "airflow" in sys.modules:
    msg = "Airflow was imported before tests/airflow/conftest.py set AIRFLOW_HOME; it would use ~/airflow"
    raise RuntimeError(msg)
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="ml-assets-airflow-"))
# Also when no Airflow test runs in this process (an xdist worker given other modules, --collect-only).
atexit.register(shutil.rmtree, AIRFLOW_HOME, ignore_errors=True)
DAGS_FOLDER = AIRFLOW_HOME / "dags"
DAGS_FOLDER.mkdir()
os.environ.update(
    {
        "AIRFLOW_HOME": str(AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}",
    }
)
AIRFLOW = str(Path(sys.executable).parent / "airflow")


@pytest.fixture(scope="session")
def airflow_db() -> Iterator[Path]:
    """The migrated metadata database; the whole Airflow home is removed at the end of the session."""
    done = subprocess.run([AIRFLOW, "db", "migrate"], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"airflow db migrate failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    yield AIRFLOW_HOME
    shutil.rmtree(AIRFLOW_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def dags_folder(airflow_db) -> Path:
    return DAGS_FOLDER


@pytest.fixture
def connect(monkeypatch) -> Callable[..., None]:
    """Defines an ``ml_assets_registry`` connection for this test, as Airflow reads it from the environment."""

    def define(conn_id: str, host: str, *, login: str | None = None, password: str | None = None, **extra: object):
        value = {"conn_type": "ml_assets_registry", "host": host, "login": login, "password": password, "extra": extra}
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(value))

    return define


@pytest.fixture(scope="session")
def registry_uri(models, tmp_path_factory) -> str:
    """Its own MLflow registry: 'af' v1 = logistic regression, v2 = random forest."""
    import onnx

    from ml_assets.dev.demo import FEATURES, register_onnx_model

    root = tmp_path_factory.mktemp("af-registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    for path in (models.lr_onnx, models.rf_onnx):
        register_onnx_model(uri, "af", onnx.load(str(path)), FEATURES, artifact_location=(root / "a").as_uri())
    return uri


@pytest.fixture
def champion(registry_uri) -> Callable[[str], None]:
    """Moves ``models:/af@champion``; every test starts with it on version 1."""
    import mlflow

    client = mlflow.MlflowClient(registry_uri)

    def move(version: str) -> None:
        client.set_registered_model_alias("af", "champion", version)

    move("1")
    return move
