"""MLflow webhooks: signature checks, and a real `mlflow server` pushing an alias move to the sensor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import mlflow
import pytest
import requests

from ml_assets.dagster.assets import build_scoring_asset
from ml_assets.dagster.resources import ModelRegistryResource, ModelRuntimeResource
from ml_assets.sensors.promotion import REASON_TAG, build_model_promotion_sensor
from ml_assets.webhooks import (
    DELIVERY_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookRejected,
    serve,
    sign,
    verify,
)
from tests.conftest import DATES, free_port, wait_for_port

SECRET = "webhook-secret-for-tests"


def signed_headers(body: str, *, secret: str = SECRET, timestamp: int | None = None) -> dict[str, str]:
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    return {
        SIGNATURE_HEADER: sign(secret, "d-1", stamp, body),
        DELIVERY_ID_HEADER: "d-1",
        TIMESTAMP_HEADER: stamp,
        "Content-Type": "application/json",
    }


def test_verify_accepts_mlflow_signatures_and_refuses_the_rest():
    body = json.dumps(
        {"entity": "model_version_alias", "action": "created", "data": {"name": "m", "alias": "a", "version": "2"}}
    )
    assert verify(SECRET, signed_headers(body), body.encode())["data"]["version"] == "2"
    with pytest.raises(WebhookRejected, match="signature does not match"):
        verify(SECRET, signed_headers(body, secret="other"), body.encode())
    with pytest.raises(WebhookRejected, match="signature does not match"):
        verify(SECRET, signed_headers(body), body.replace('"2"', '"3"').encode())
    with pytest.raises(WebhookRejected, match="refusing a possible replay"):
        verify(SECRET, signed_headers(body, timestamp=int(time.time()) - 3600), body.encode())
    with pytest.raises(WebhookRejected, match="missing one of"):
        verify(SECRET, {}, body.encode())


@pytest.fixture
def receiver(tmp_path):
    port = free_port()
    with serve(tmp_path / "inbox", SECRET, port=port):
        yield f"http://127.0.0.1:{port}/", tmp_path / "inbox"


def test_receiver_refuses_unsigned_requests(receiver):
    url, inbox = receiver
    body = json.dumps({"entity": "model_version_alias", "action": "created", "data": {"name": "m", "alias": "a"}})
    refused = requests.post(url, data=body, headers=signed_headers(body, secret="guess"), timeout=10)
    assert refused.status_code == 401
    assert not inbox.exists() or not list(inbox.glob("*.json"))
    accepted = requests.post(url, data=body, headers=signed_headers(body), timeout=10)
    assert accepted.status_code == 200
    assert len(list(inbox.glob("*.json"))) == 1


@pytest.fixture
def mlflow_server(tmp_path, models):
    """`mlflow server` over a SQLite backend (webhooks need a SQL store), allowed to call loopback receivers."""
    import onnx

    from ml_assets.dev.demo import FEATURES, register_onnx_model

    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
        "MLFLOW_WEBHOOK_CACHE_TTL": "1",
        # MLflow 3.17 starts job workers that outlive a terminated server unless job execution is off.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    process = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
            "--default-artifact-root", (tmp_path / "artifacts").as_uri(), "--workers", "1",
        ],
        env=env, stdout=subprocess.DEVNULL, stderr=(tmp_path / "server.log").open("w"), start_new_session=True,
    )  # fmt: skip
    try:
        wait_for_port(port, process, what="mlflow server", timeout_s=120)
        uri = f"http://127.0.0.1:{port}"
        for path in (models.lr_onnx, models.rf_onnx):
            register_onnx_model(uri, "pushed", onnx.load(str(path)), FEATURES, experiment="webhooks")
        mlflow.MlflowClient(uri).set_registered_model_alias("pushed", "champion", "1")
        yield uri
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the server and its gunicorn/uvicorn workers
        process.wait(timeout=30)


@pytest.mark.slow
def test_alias_move_reaches_the_sensor_through_a_webhook(mlflow_server, receiver, transactions, tmp_path):
    url, inbox = receiver
    client = mlflow.MlflowClient(mlflow_server)
    client.create_webhook(name="to-dagster", url=url, events=["model_version_alias.created"], secret=SECRET)
    # The server caches the webhooks of each event for MLFLOW_WEBHOOK_CACHE_TTL (1 s here); the
    # fixture's alias move cached "none", so a promotion within that second would not be delivered.
    time.sleep(1.5)
    asset = build_scoring_asset(
        name="pushed_scores", model="models:/pushed@champion", input_dataset=str(transactions),
        output_dataset=str(tmp_path / "scores"), partitions_def=dg.StaticPartitionsDefinition(DATES),
    )  # fmt: skip
    # A one-hour poll interval: within this test only the webhook can make the sensor look again.
    sensor = build_model_promotion_sensor(
        name="pushed", watch=["models:/pushed@champion"], target=[asset], rescore="latest", latest_n=1,
        minimum_interval_seconds=3600, webhook_inbox=str(inbox),
    )  # fmt: skip
    resources = {
        "model_registry": ModelRegistryResource(kind="mlflow", uri=mlflow_server),
        "model_runtime": ModelRuntimeResource(),
    }
    defs = dg.Definitions(assets=[asset], sensors=[sensor], resources=resources)
    assert sensor.minimum_interval_seconds == 5

    def evaluate(instance, cursor):
        with dg.build_sensor_context(
            instance=instance, cursor=cursor, definitions=defs, resources=resources
        ) as context:
            return sensor(context)

    with dg.instance_for_test() as instance:
        baseline = evaluate(instance, None)
        quiet = evaluate(instance, baseline.cursor)
        assert "next registry poll is not due" in quiet.skip_reason.skip_message

        client.set_registered_model_alias("pushed", "champion", "2")
        deadline = time.monotonic() + 60
        while not list(Path(inbox).glob("*.json")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert list(Path(inbox).glob("*.json")), "MLflow delivered no webhook within 60s"
        pushed = evaluate(instance, baseline.cursor)
    (request,) = pushed.run_requests
    assert request.partition_key == DATES[-1]
    assert request.tags[REASON_TAG] == "promotion: models:/pushed@champion moved from version 1 to 2"
    assert list(Path(inbox).glob("*.json")) == []  # consumed
