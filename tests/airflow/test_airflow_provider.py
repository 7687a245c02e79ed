"""The provider as Airflow sees it: discovery through the entry point, the connection type, secrets masked."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

AIRFLOW = str(Path(sys.executable).parent / "airflow")


def airflow_cli(*args: str) -> str:
    done = subprocess.run([AIRFLOW, *args], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"airflow {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_airflow_providers_list_finds_the_provider_and_its_connection_type(airflow_db):
    providers = json.loads(airflow_cli("providers", "list", "--output", "json"))
    (ours,) = [p for p in providers if p["package_name"] == "dagster-ml-assets"]
    assert ours["version"] == "0.1.0"
    hooks = json.loads(airflow_cli("providers", "hooks", "--output", "json"))
    (registry,) = [h for h in hooks if h["connection_type"] == "ml_assets_registry"]
    assert registry["class"] == "ml_assets.airflow.hooks.ModelRegistryHook"
    assert registry["package_name"] == "dagster-ml-assets"


def test_provider_info_and_the_promotion_core_import_neither_airflow_nor_dagster():
    """``airflow providers list`` reads get_provider_info in every Airflow process: it must stay cheap.
    The promotion logic both integrations share is core: no scheduler in it."""
    code = (
        "import sys, ml_assets.promotion; from ml_assets.airflow import get_provider_info; info = get_provider_info(); "
        "print(info['connection-types'][0]['connection-type'], "
        "sorted(m for m in ('airflow', 'dagster', 'mlflow') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "ml_assets_registry []"


def test_connection_builds_the_service_and_refuses_unknown_fields(registry_uri):
    from airflow.sdk import Connection

    from ml_assets.airflow.hooks import service_for
    from ml_assets.resources.core.errors import PluginNotFoundError

    conn = Connection(
        conn_id="m",
        conn_type="ml_assets_registry",
        host=registry_uri,
        login="scorer",
        password="pw",
        extra=json.dumps({"token": "t0k", "runtime_options": {"onnx": {"threads": 1}}}),
    )
    with service_for(conn) as service:
        assert service.resolve("models:/af/2").version == "2"
        assert service.runtime_options == {"onnx": {"threads": 1}}
    bad = Connection(conn_id="bad", conn_type="ml_assets_registry", host=registry_uri, extra='{"threads": 2}')
    with pytest.raises(
        PluginNotFoundError,
        match="unknown extra field\\(s\\) threads; a ml_assets_registry connection takes: kind, token",
    ):
        service_for(bad)


STALE_DAG = textwrap.dedent(
    """
    from datetime import datetime

    from airflow.sdk import dag

    from ml_assets.airflow.operators import StalePartitionsOperator


    @dag(schedule=None, start_date=datetime(2026, 11, 1))
    def masked_registry():
        StalePartitionsOperator(task_id="stale", model="{model}", output_dataset="{output}", registry_conn_id="pg")


    masked_registry()
    """
)


def test_registry_uri_password_is_masked_in_task_logs(dags_folder, connect, models, tmp_path, monkeypatch):
    """A registry URI with a password (MLflow on Postgres) is logged with *** in its place.

    The model is a direct file ref, so the task never needs to reach the database it names.
    """
    secret = "pw-9f3c1e7a"
    dag = STALE_DAG.format(model=models.lr_onnx.as_uri(), output=tmp_path / "out")
    (dags_folder / "masked_registry.py").write_text(dag)
    connect("pg", f"postgresql://mlflow:{secret}@127.0.0.1:5432/mlflow", token="tok-5b2d")
    done = subprocess.run(
        [AIRFLOW, "tasks", "test", "masked_registry", "stale", "2026-11-01"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert "connection pg: mlflow registry at postgresql://mlflow:***@127.0.0.1:5432/mlflow" in log
    assert secret not in log
    assert "0 partition(s)" in log


def test_the_connection_carries_a_trust_policy(registry_uri, tmp_path):
    from airflow.sdk import Connection

    from ml_assets.airflow.hooks import service_for
    from ml_assets.resources.core.errors import PluginNotFoundError
    from ml_assets.resources.core.trust import TrustPolicy

    key = tmp_path / "team.pub"
    key.write_text("-----BEGIN PUBLIC KEY-----\n")  # only its existence is checked up front
    trust = {"signatures": "key", "public_key": str(key), "pickles": "scan"}
    conn = Connection(
        conn_id="t", conn_type="ml_assets_registry", host=registry_uri, extra=json.dumps({"trust": trust})
    )
    with service_for(conn) as service:
        assert service.trust == TrustPolicy(signatures="key", public_key=str(key), pickles="scan")
    bad = Connection(
        conn_id="bad", conn_type="ml_assets_registry", host=registry_uri, extra='{"trust": {"signatures": "key"}}'
    )
    with pytest.raises(
        PluginNotFoundError, match="extra field 'trust': trust policy: signatures='key' needs public_key"
    ):
        service_for(bad)


def test_operator_passes_pyfunc_params(connect, tmp_path):
    """``runtime_options={"params": {"k": 3}}`` on the operator reaches predict; a wrong one is refused. The
    output's codec is the operator's to choose; one that is not one fails the DAG's parse."""
    import mlflow.pyfunc
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ml_assets.airflow.operators import ScorePartitionOperator
    from ml_assets.dev.demo import write_partitioned
    from ml_assets.resources.core.errors import DatasetError, ModelLoadError
    from tests.conftest import codecs_of
    from tests.resources.fixtures.scorecard import customers, register_scorecard, save_scorecard

    connect("card_registry", register_scorecard(tmp_path / "registry"))
    data = customers(600, seed=2)
    write_partitioned(lambda day: pa.Table.from_pandas(data, preserve_index=False), tmp_path / "in", ["2026-11-01"])

    class TaskInstance:
        dag_id, run_id, task_id, map_index, try_number = "d", "r", "score", -1, 1

    def operator(params: dict, compression: str = "zstd") -> ScorePartitionOperator:
        return ScorePartitionOperator(
            task_id="score", model="models:/card/1", input_dataset=str(tmp_path / "in"),
            output_dataset=str(tmp_path / "out"), partition="2026-11-01", registry_conn_id="card_registry",
            runtime_options={"params": params}, compression=compression,
        )  # fmt: skip

    summary = operator({"k": 3}, "none").execute({"ti": TaskInstance()})
    assert set(codecs_of(summary["output"]).values()) == {"UNCOMPRESSED"}
    with pytest.raises(DatasetError, match="compression 'gzip' is not one of"):
        operator({"k": 3}, "gzip")
    scored = pq.read_table(summary["output"]).to_pandas()
    theirs = mlflow.pyfunc.load_model(str(save_scorecard(tmp_path / "local"))).predict(data, params={"k": 3})
    np.testing.assert_array_equal(scored["probability_churn"].to_numpy(), theirs["probability_churn"].to_numpy())
    with pytest.raises(ModelLoadError, match=r"param 'k' = 2.5 \(float\) does not fit the model's ParamSchema"):
        operator({"k": 2.5}).execute({"ti": TaskInstance()})
