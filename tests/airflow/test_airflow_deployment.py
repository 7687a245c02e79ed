"""The shipped DAGs in a running Airflow (``airflow standalone``: API server, scheduler, DAG processor,
triggerer, LocalExecutor) on its own Postgres database: ``airflow backfill`` scores the days, a moved
alias re-scores them through the ``AssetWatcher``, and a promotion made while Airflow is down is
re-scored once after the restart (the watcher's cursor lives in Airflow's asset state store).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ml_assets.datasets import read_lineage
from ml_assets.dev.services import free_ports
from tests.conftest import DATES

EXAMPLES = Path(__file__).parents[2] / "ml_assets" / "airflow" / "example_dags"
BIN = Path(sys.executable).parent
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


def wait_for(condition: Callable[[], object], *, timeout_s: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            tail = log.read_text()[-4000:] if log and log.exists() else ""
            pytest.fail(f"no {what} within {timeout_s}s\n{tail}")
        time.sleep(0.5)


@pytest.fixture
def postgres_db() -> Iterator[str]:
    """A database of its own on the local Postgres, dropped afterwards."""
    import psycopg2

    name = f"ml_assets_airflow_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(dbname="postgres", **PG)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name}")
        yield name
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        admin.close()


def query(db: str, sql: str) -> list[tuple]:
    import psycopg2

    conn = psycopg2.connect(dbname=db, **PG)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    except psycopg2.errors.UndefinedTable:
        return []  # not migrated yet
    finally:
        conn.close()


class Standalone:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("a") as out:
            self.process = subprocess.Popen(
                [str(BIN / "airflow"), "standalone"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started = self.log.read_text().count("Airflow is ready")
        wait_for(
            lambda: self.log.read_text().count("Airflow is ready") > started or self.process.poll() is not None,
            timeout_s=240,
            what="airflow standalone",
            log=self.log,
        )
        assert self.process.poll() is None, self.log.read_text()[-4000:]

    def stop(self) -> None:
        """Stops every component: they share the process group, and may outlive the standalone parent."""
        if self.process is None:
            return
        group = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and _group_alive(group):
            self.process.poll()  # reaps the parent once it exits
            time.sleep(0.5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_backfill_then_promotions_rescore_through_the_asset_watcher_across_a_restart(
    airflow_db, postgres_db, registry_uri, champion, transactions, tmp_path
):
    home, dags, out = tmp_path / "home", tmp_path / "dags", tmp_path / "scores"
    dags.mkdir()
    for example in EXAMPLES.glob("example_*.py"):
        shutil.copy(example, dags)
    connection = {"conn_type": "ml_assets_registry", "host": registry_uri}
    api_port, worker_log_port, trigger_log_port = free_ports(3)
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://postgres@127.0.0.1:5432/{postgres_db}",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(worker_log_port),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(trigger_log_port),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "AIRFLOW_CONN_ML_ASSETS_DEFAULT": json.dumps(connection),
        "ML_ASSETS_MODEL": "models:/af@champion",
        "ML_ASSETS_INPUT": str(transactions),
        "ML_ASSETS_OUTPUT": str(out),
        "ML_ASSETS_POLL_INTERVAL_S": "2",
    }
    airflow = Standalone(env, tmp_path / "standalone.log")

    def versions() -> list[str | None]:
        files = [out / f"date={day}" / "part-0.parquet" for day in DATES]
        return [read_lineage(str(f))["model_version"] if f.exists() else None for f in files]

    def cursor() -> dict:
        rows = query(postgres_db, "SELECT value FROM asset_state_store WHERE key = 'ml_assets.promotion_cursor'")
        value = rows[0][0] if rows else "{}"
        while isinstance(value, str):  # a JSON string holding the encoded cursor
            value = json.loads(value)
        return value

    def rescore_runs() -> int:
        rows = query(postgres_db, "SELECT count(*) FROM dag_run WHERE dag_id = 'ml_assets_rescore_on_promotion'")
        return rows[0][0] if rows else 0

    try:
        airflow.start()
        wait_for(lambda: cursor().get("versions"), timeout_s=120, what="watcher baseline", log=airflow.log)
        assert cursor()["versions"] == {"models:/af@champion": "1"}

        backfill = subprocess.run(
            [str(BIN / "airflow"), "backfill", "create", "--dag-id", "ml_assets_score_daily",
             "--from-date", DATES[0], "--to-date", DATES[-1]],
            env=env, capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
        assert backfill.returncode == 0, backfill.stdout[-3000:] + backfill.stderr[-3000:]
        wait_for(lambda: versions() == ["1", "1", "1"], timeout_s=180, what="backfill", log=airflow.log)
        assert rescore_runs() == 0  # the baseline fired nothing

        champion("2")
        wait_for(lambda: versions() == ["2", "2", "2"], timeout_s=180, what="re-scoring on promotion", log=airflow.log)
        assert rescore_runs() == 1
        assert cursor()["promotions"] == {"models:/af@champion": 1}

        airflow.stop()
        champion("1")  # a rollback while Airflow is down
        airflow.start()
        wait_for(lambda: versions() == ["1", "1", "1"], timeout_s=180, what="re-scoring after restart", log=airflow.log)
        time.sleep(6)  # three polls: a storm of runs would show by now
        assert rescore_runs() == 2
        assert cursor()["promotions"] == {"models:/af@champion": 2}
    finally:
        airflow.stop()
