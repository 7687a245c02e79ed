"""SIGTERM (what systemd, Docker and process managers send) is handled like Ctrl-C by every command
that starts or serves processes: children stopped, temporary files removed, a non-zero exit code."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from ml_assets.dev.demo import make_transactions, write_partitioned
from ml_assets.dev.services import free_port, free_ports
from tests.ml_assets.test_cli import CLI

DEADLINE_S = 120


def start(*args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)


def wait_until(condition, what: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"exited with {process.returncode} before {what}: {process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"not {what} within {DEADLINE_S}s")
        time.sleep(0.1)


def terminate(process: subprocess.Popen[str], sig: signal.Signals) -> tuple[int, str, list[psutil.Process]]:
    """Sends ``sig`` to the command alone (not its group), as a process manager does; returns its exit
    code, its stderr and the descendants still alive a few seconds later."""
    descendants = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(sig)
    try:
        _, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    _, alive = psutil.wait_procs(descendants, timeout=10)
    for orphan in alive:  # never leave them running, whatever the test finds
        orphan.kill()
    return process.returncode, err, alive


def listening(port: int) -> bool:
    return any(c.laddr.port == port and c.status == psutil.CONN_LISTEN for c in psutil.net_connections("tcp"))


@pytest.mark.slow
def test_services_up_stops_mlflow_its_workers_and_moto(tmp_path):
    sig = signal.SIGTERM  # SIGINT takes the same path (test_score_... runs both)
    mlflow_port, s3_port = free_ports(2)
    process = start(
        "services", "up", "--workdir", str(tmp_path / "services"),
        "--mlflow-port", str(mlflow_port), "--s3-port", str(s3_port),
    )  # fmt: skip
    wait_until(lambda: listening(mlflow_port) and listening(s3_port), "listening", process)
    time.sleep(1)  # past the health check: the command is in its wait loop
    assert len(psutil.Process(process.pid).children(recursive=True)) >= 3  # moto, mlflow server, its uvicorn
    code, err, alive = terminate(process, sig)
    assert code == 128 + sig, err
    assert f"stopped by {sig.name}" in err
    assert alive == []
    assert not listening(mlflow_port)
    assert not listening(s3_port)


@pytest.mark.parametrize("command", ["registry", "webhook"])
def test_servers_exit_non_zero_and_release_their_port_on_sigterm(command, tmp_path, monkeypatch):
    port = free_port()
    if command == "registry":
        (tmp_path / "registry").mkdir()
        process = start("registry", "serve", str(tmp_path / "registry"), "--port", str(port))
    else:
        monkeypatch.setenv("MLFLOW_WEBHOOK_SECRET", "s3cret")
        process = start("webhook", "serve", "--inbox", str(tmp_path / "inbox"), "--port", str(port))
    wait_until(lambda: listening(port), "listening", process)
    code, err, _ = terminate(process, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err
    assert "Traceback" not in err
    assert not listening(port)


@pytest.fixture(scope="module")
def pyfunc_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file registry holding an sklearn model as an MLflow pyfunc (scored in worker processes)."""
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    from ml_assets.dev.demo import FEATURES
    from ml_assets.resources.registries.file import FileRegistry

    root = tmp_path_factory.mktemp("pyfunc-registry")
    train = make_transactions(2_000, seed=0).select(FEATURES).to_pandas()
    model = LogisticRegression(max_iter=200).fit(train, (train[FEATURES[0]] > 0).astype(int))
    path = root / "model"
    mlflow.sklearn.save_model(model, str(path), signature=infer_signature(train, model.predict(train)))
    FileRegistry(str(root / "registry")).publish("slow", path, format="pyfunc")
    return root / "registry"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_score_stops_its_pyfunc_workers_and_removes_its_staging_file(sig, pyfunc_registry, tmp_path):
    data = tmp_path / "data"
    write_partitioned(lambda day: make_transactions(600_000, seed=3), data, ["2026-11-05"])
    out = tmp_path / "scores"
    staging = tmp_path / ".scores.ml-assets-staging"
    process = start(
        "score", "slow/1", str(data), str(out), "--partition", "date=2026-11-05", "--chunk-rows", "500",
        "--registry", "file", "--registry-uri", str(pyfunc_registry),
        "--option", "isolation=process", "--option", "workers=2", "--quiet",
    )  # fmt: skip
    wait_until(
        lambda: (
            staging.exists()
            and any(staging.rglob("*.inprogress"))
            and len(psutil.Process(process.pid).children(recursive=True)) >= 2
        ),
        "scoring in worker processes",
        process,
    )
    code, err, alive = terminate(process, sig)
    assert code == 128 + sig, err
    assert f"stopped by {sig.name}" in err
    assert alive == []  # the pyfunc workers
    assert [p for p in staging.rglob("*") if p.is_file()] == []
    assert not (out / "date=2026-11-05" / "part-0.parquet").exists()
