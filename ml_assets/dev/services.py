"""The full MLflow environment on loopback: an S3-compatible server (moto's server mode), a fresh
PostgreSQL database as MLflow's backend store, and ``mlflow server`` with an ``s3://`` artifact root.

Clients talk to the tracking server over HTTP and read/write artifacts in S3 themselves
(``--no-serve-artifacts``), as in the Prinz environment. ``ml-assets services up`` (or
``make services``) runs it until interrupted and prints the environment variables a client
needs; tests use ``running_services``.

Credentials: the S3 keys come from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` when set
(moto accepts any), are passed to the children through their environment, and are never printed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ml_assets.resources.core.errors import RegistryUnavailableError

DEFAULT_PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


@dataclass(frozen=True)
class Services:
    tracking_uri: str
    s3_endpoint_url: str
    artifact_root: str
    database: str
    backend_store_uri: str
    client_env: Mapping[str, str] = field(repr=False)
    """What a client process needs: MLFLOW_TRACKING_URI, MLFLOW_S3_ENDPOINT_URL, AWS_* (secrets)."""

    @property
    def storage_options(self) -> dict[str, str]:
        """s3fs options for the same S3 server (for datasets and file registries on it)."""
        return {
            "endpoint_url": self.s3_endpoint_url,
            "key": self.client_env["AWS_ACCESS_KEY_ID"],
            "secret": self.client_env["AWS_SECRET_ACCESS_KEY"],
        }


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free ports. Every socket stays bound until all are chosen: one closed before the next
    bind can be handed out again, and a server given the same port twice fails to start."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]


def wait_for_port(port: int, process: subprocess.Popen[bytes], *, what: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            msg = f"{what} exited with code {process.returncode} before listening on 127.0.0.1:{port}"
            raise RegistryUnavailableError(msg)
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    msg = f"{what} did not listen on 127.0.0.1:{port} within {timeout_s:.0f}s"
    raise RegistryUnavailableError(msg)


def wait_for_http(url: str, process: subprocess.Popen[bytes], *, what: str, timeout_s: float = 120.0) -> None:
    """Until ``url`` answers 200: the MLflow server listens before its database migrations finish."""
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            msg = f"{what} exited with code {process.returncode} before answering {url}"
            raise RegistryUnavailableError(msg)
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    msg = f"{what} did not answer {url} within {timeout_s:.0f}s"
    raise RegistryUnavailableError(msg)


def _connect_postgres(pg: Mapping[str, object], dbname: str = "postgres"):
    import psycopg2

    connection = psycopg2.connect(dbname=dbname, connect_timeout=10, **pg)
    connection.autocommit = True
    return connection


def create_database(name: str | None = None, *, pg: Mapping[str, object] = DEFAULT_PG) -> str:
    """A fresh, empty database (``ml_assets_<random>`` unless named); returns its name."""
    name = name or f"ml_assets_{uuid.uuid4().hex[:12]}"
    if not name.replace("_", "").isalnum():
        msg = f"database name {name!r}: use letters, digits and '_'"
        raise ValueError(msg)
    with contextlib.closing(_connect_postgres(pg)) as connection, connection.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cursor.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_database(name: str, *, pg: Mapping[str, object] = DEFAULT_PG) -> None:
    with contextlib.closing(_connect_postgres(pg)) as connection, connection.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def create_bucket(endpoint_url: str, bucket: str, env: Mapping[str, str]) -> None:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
        client.create_bucket(Bucket=bucket)


def _stop(process: subprocess.Popen[bytes], *, group: bool = False, timeout_s: float = 20.0) -> None:
    """Terminates ``process`` (and its process group when it leads one), then kills what is left."""

    def signal_all(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(process.pid, sig)
            else:
                process.send_signal(sig)

    if process.poll() is None:
        signal_all(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            signal_all(signal.SIGKILL)
            process.wait(timeout=timeout_s)
    if group:
        signal_all(signal.SIGKILL)  # workers still running after their parent exited


@contextlib.contextmanager
def running_services(
    *,
    workdir: Path,
    mlflow_port: int | None = None,
    s3_port: int | None = None,
    bucket: str = "mlflow",
    database: str | None = None,
    keep_database: bool = False,
    pg: Mapping[str, object] = DEFAULT_PG,
) -> Iterator[Services]:
    """Starts moto's S3 server, creates a fresh database and starts ``mlflow server``; stops all after."""
    workdir.mkdir(parents=True, exist_ok=True)
    venv_bin = str(Path(sys.executable).parent)
    env = dict(os.environ)
    env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '')}"  # mlflow server execs uvicorn
    env.setdefault("AWS_ACCESS_KEY_ID", "testing")
    env.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    picked = iter(free_ports(2))
    s3_port = s3_port or next(picked)
    mlflow_port = mlflow_port or next(picked)
    s3_endpoint = f"http://127.0.0.1:{s3_port}"
    env["MLFLOW_S3_ENDPOINT_URL"] = s3_endpoint
    processes: list[subprocess.Popen[bytes]] = []
    created_db: str | None = None
    try:
        with (workdir / "s3.log").open("wb") as s3_log:
            moto = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)],
                stdout=s3_log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        processes.append(moto)
        wait_for_port(s3_port, moto, what="the S3 server (moto)")
        create_bucket(s3_endpoint, bucket, env)
        created_db = create_database(database, pg=pg)
        # psycopg2 named: SQLAlchemy 2.1 defaults to psycopg 3, which is not a dependency.
        backend = f"postgresql+psycopg2://{pg['user']}@{pg['host']}:{pg['port']}/{created_db}"
        artifact_root = f"s3://{bucket}/artifacts"
        with (workdir / "mlflow.log").open("wb") as mlflow_log:
            command = [
                shutil.which("mlflow", path=env["PATH"]) or "mlflow",
                *("server", "--backend-store-uri", backend, "--default-artifact-root", artifact_root),
                *("--no-serve-artifacts", "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"),
            ]
            # The server's job runner (huey consumers, 7 processes) is not needed to log, register
            # and serve models, and would outlive a terminated server.
            server_env = {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
            server = subprocess.Popen(
                command,
                stdout=mlflow_log,
                stderr=subprocess.STDOUT,
                env=server_env,
                cwd=workdir,
                start_new_session=True,  # its own process group: stopping it stops its workers too
            )
        processes.append(server)
        tracking_uri = f"http://127.0.0.1:{mlflow_port}"
        wait_for_http(f"{tracking_uri}/health", server, what=f"mlflow server (log: {workdir / 'mlflow.log'})")
        client_env = {
            "MLFLOW_TRACKING_URI": tracking_uri,
            "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
            "AWS_ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"],
            "AWS_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"],
            "AWS_DEFAULT_REGION": env["AWS_DEFAULT_REGION"],
        }
        yield Services(tracking_uri, s3_endpoint, artifact_root, created_db, backend, client_env)
    finally:
        for process in reversed(processes):
            _stop(process, group=process is not processes[0])
        if created_db and not keep_database:
            with contextlib.suppress(Exception):  # the database server may be gone; nothing to clean then
                drop_database(created_db, pg=pg)
