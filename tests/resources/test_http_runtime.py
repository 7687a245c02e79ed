"""The HTTP runtime against a real ``mlflow models serve``, a reverse proxy with Databricks/Prinz
paths, an Open Inference Protocol v2 server, and a fault-injecting server, all on loopback."""

from __future__ import annotations

import http.client
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from ml_assets.dev.services import free_port
from ml_assets.resources.core.errors import ModelLoadError, ScoringError
from ml_assets.resources.core.models import ColumnSpec, ModelVersion, Signature
from ml_assets.resources.core.plugins import create_runtime
from ml_assets.resources.runtimes.http import HttpRuntime, decode, encode

VENV_BIN = Path(sys.executable).parent
FEATURES = [f"f{i}" for i in range(8)]
SECRET = "s3cr3t-t0ken-value"


def _version(
    name: str = "lr", version: str = "1", features: list[str] = FEATURES, type_: str = "float"
) -> ModelVersion:
    sig = Signature(inputs=tuple(ColumnSpec(f, type_) for f in features))
    return ModelVersion(
        name=name, version=version, format="pyfunc", artifact_uri="mem://", registry="test", signature=sig
    )


def _batch(rows: int, *, seed: int = 1, dtype: Any = np.float32, features: list[str] = FEATURES) -> pa.RecordBatch:
    x = np.random.default_rng(seed).standard_normal((rows, len(features))).astype(dtype)
    return pa.RecordBatch.from_arrays([pa.array(x[:, i]) for i in range(len(features))], names=features)


# sklearn's float32 predict_proba differs in the last bit with the batch size (vectorised tails),
# so remote and in-process scores of the same rows agree to float32 precision, not bit for bit.
def _matrix(batch: pa.RecordBatch) -> np.ndarray:
    """The score columns (the label the contract derives from them left out)."""
    return np.column_stack(
        [c.to_numpy() for n, c in zip(batch.schema.names, batch.columns, strict=True) if n != "label"]
    )


# ---------------------------------------------------------------------------------------------
# A real sklearn model, logged with MLflow and served by `mlflow models serve`


@pytest.fixture(scope="module")
def lr_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    import mlflow.sklearn
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    x = _matrix(_batch(3000, seed=0))
    y = (x @ np.linspace(-1, 1, len(FEATURES)) > 0).astype(int)
    frame = pd.DataFrame(x, columns=FEATURES)
    model = LogisticRegression().fit(frame, y)
    path = tmp_path_factory.mktemp("models") / "lr"
    mlflow.sklearn.save_model(
        model,
        str(path),
        pyfunc_predict_fn="predict_proba",
        signature=infer_signature(frame, model.predict_proba(frame)),
    )
    return model, path


def _wait_http(url: str, proc: subprocess.Popen[bytes] | None, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"{url} not up within {seconds}s")


@pytest.fixture(scope="module")
def mlflow_server(lr_model: tuple[Any, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    log_file = (tmp_path_factory.mktemp("serve") / "serve.log").open("wb")
    cmd = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", str(lr_model[1]), "-h", "127.0.0.1", "-p", str(port)]
    cmd += ["--env-manager", "local", "-w", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/ping", proc, 120)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log_file.close()


# ---------------------------------------------------------------------------------------------
# Small loopback servers: a reverse proxy, a v2 server and a fault injector


class _Server:
    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.paths: list[str] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass

    @property
    def owner(self) -> Any:
        return self.server.owner  # type: ignore[attr-defined]

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def answer(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(payload)


class _ProxyHandler(_Handler):
    """Databricks (/model/{name}/{version}/invocations) and Prinz (/model/{name}/invocations) paths."""

    def do_POST(self) -> None:
        owner = self.owner
        with owner.lock:
            owner.paths.append(self.path)
        body = self.body()
        if self.path not in owner.routes:
            self.answer(404, json.dumps({"message": f"no endpoint {self.path}"}).encode())
            return
        upstream = http.client.HTTPConnection("127.0.0.1", owner.upstream_port, timeout=30)
        try:
            upstream.request("POST", "/invocations", body, {"Content-Type": self.headers["Content-Type"]})
            response = upstream.getresponse()
            self.answer(response.status, response.read())
        finally:
            upstream.close()


def _predict_proba_json(model: Any, x: np.ndarray) -> list[float]:
    return model.predict_proba(x).astype(np.float64).ravel().tolist()


class _V2Handler(_Handler):
    """An Open Inference Protocol v2 server running the sklearn model in-process; like MLServer's
    sklearn runtime, it answers ``predict`` unless the request names outputs (``predict``,
    ``predict_proba``), and refuses other names with 400."""

    def do_POST(self) -> None:
        owner = self.owner
        with owner.lock:
            owner.paths.append(self.path)
        if self.path not in owner.routes:
            self.answer(404, b'{"error": "model not found"}')
            return
        doc = json.loads(self.body())
        inputs = doc["inputs"]
        if len(inputs) == 1 and len(inputs[0]["shape"]) == 2:
            n, k = inputs[0]["shape"]
            x = np.asarray(inputs[0]["data"], dtype=np.float32).reshape(n, k)
        else:
            x = np.column_stack([np.asarray(t["data"], dtype=np.float32) for t in inputs])
        import pandas as pd

        frame = pd.DataFrame(x, columns=FEATURES)
        wanted = [o["name"] for o in doc.get("outputs") or [{"name": "predict"}]]
        allowed = getattr(owner, "allowed_outputs", {"predict", "predict_proba"})
        if any(name not in allowed for name in wanted):
            self.answer(400, json.dumps({"error": f"outputs {wanted} not supported"}).encode())
            return
        outputs = []
        for name in wanted:
            if name == "predict_proba":
                data = _predict_proba_json(owner.model, frame)
                outputs.append({"name": name, "shape": [len(x), 2], "datatype": "FP64", "data": data})
            else:
                data = owner.model.predict(frame).astype(np.int64).tolist()
                outputs.append({"name": name, "shape": [len(x), 1], "datatype": "INT64", "data": data})
        self.answer(200, json.dumps({"model_name": "lr", "outputs": outputs}).encode())


class _FaultHandler(_Handler):
    """Answers CSV requests with [[a + b, a - b], ...] (a, b: the first two columns), unless the plan
    says otherwise."""

    def do_POST(self) -> None:
        owner = self.owner
        body = self.body()
        with owner.lock:
            owner.count += 1
            number = owner.count
            owner.headers.append(dict(self.headers))
            owner.sizes.append(len(body))
        if self.headers["Content-Type"] != "text/csv":
            self.answer(415, b'{"message": "only text/csv"}')
            return
        table = pacsv.read_csv(io.BytesIO(body))
        a, b = table.column(0).to_numpy(), table.column(1).to_numpy()
        predictions = np.column_stack([a + b, a - b]).tolist()
        action = owner.plan(number, table.num_rows) if owner.plan else None
        if action is None:
            self.answer(200, json.dumps({"predictions": predictions}).encode())
        elif action == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        elif isinstance(action, tuple) and action[0] == "sleep":
            time.sleep(action[1])
            self.answer(200, json.dumps({"predictions": predictions}).encode())
        elif action == "short":
            self.answer(200, json.dumps({"predictions": predictions[:-1]}).encode())
        elif action == "garbage":
            self.answer(200, b'{"predictions": [[1.0, 2.0], [3.0')
        elif action == "records":
            self.answer(200, json.dumps({"predictions": [{"x": p[0], "y": p[1]} for p in predictions]}).encode())
        else:
            status, headers, payload = action
            self.answer(status, payload, headers)


class FaultServer(_Server):
    def __init__(self) -> None:
        super().__init__(_FaultHandler)
        self.count = 0
        self.headers: list[dict[str, str]] = []
        self.sizes: list[int] = []
        self.plan: Callable[[int, int], Any] | None = None

    def after_probe(self, plan: Callable[[int, int], Any]) -> None:
        """Apply ``plan(request number counted from 1 after now, rows)``."""
        start = self.count
        self.plan = lambda number, rows: plan(number - start, rows)


@pytest.fixture
def fault_server() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server


FAULT_VERSION = _version("toy", "3", ["a", "b"], "double")
FAST_RETRIES = {"backoff_base": 0.01, "backoff_max": 0.05, "connect_timeout": 2.0, "read_timeout": 5.0}


def _expected_toy(batch: pa.RecordBatch) -> np.ndarray:
    a, b = batch.column(0).to_numpy(), batch.column(1).to_numpy()
    return np.column_stack([a + b, a - b])


def _toy_batch(rows: int, seed: int = 2) -> pa.RecordBatch:
    return _batch(rows, seed=seed, dtype=np.float64, features=["a", "b"])


# ---------------------------------------------------------------------------------------------
# Against the real MLflow scoring server


@pytest.mark.slow
@pytest.mark.parametrize("payload", [None, "csv", "parquet", "dataframe_split", "dataframe_records", "inputs"])
def test_mlflow_server_matches_in_process(mlflow_server: str, lr_model: tuple[Any, Path], payload: str | None) -> None:
    import mlflow.pyfunc

    batch = _batch(5000, seed=7)
    runtime = create_runtime("http", url=mlflow_server, payload=payload, batch_rows=700, max_in_flight=3)
    with runtime.load(_version(), lr_model[1]) as scorer:
        assert scorer.payload == (payload or "parquet")
        assert scorer.output_schema.names == ["label", "probability_0", "probability_1"]
        assert "bare [N, 2] matrix" in scorer.output_note
        out = scorer.score(batch)
        assert scorer.requests_sent > 5  # pipelined in several requests, reassembled in order
    got = _matrix(out)
    frame = batch.to_pandas()
    np.testing.assert_allclose(got, lr_model[0].predict_proba(frame), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got, mlflow.pyfunc.load_model(str(lr_model[1])).predict(frame), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_mlflow_server_many_threads_names_and_empty(mlflow_server: str, lr_model: tuple[Any, Path]) -> None:
    runtime = HttpRuntime(url=mlflow_server, output_names=["p0", "p1"], outputs=["p1"], concurrency=3, batch_rows=500)
    scorer = runtime.load(_version(), lr_model[1])
    try:
        batches = [_batch(1500 + 100 * i, seed=i) for i in range(6)]
        with __import__("concurrent.futures").futures.ThreadPoolExecutor(scorer.concurrency) as pool:
            outs = list(pool.map(scorer.score, batches))
        for batch, out in zip(batches, outs, strict=True):
            assert out.schema.names == ["p1"]
            expected = lr_model[0].predict_proba(batch.to_pandas())[:, 1]
            np.testing.assert_allclose(out.column(0).to_numpy(), expected, rtol=1e-6, atol=1e-6)
        empty = scorer.score(_batch(0))
        assert empty.num_rows == 0
        assert empty.schema == scorer.output_schema
    finally:
        scorer.close()


@pytest.mark.slow
def test_databricks_and_prinz_paths_follow_the_version(mlflow_server: str, lr_model: tuple[Any, Path]) -> None:
    with _Server(_ProxyHandler) as proxy:
        proxy.upstream_port = int(mlflow_server.rsplit(":", 1)[1])  # type: ignore[attr-defined]
        proxy.routes = {"/model/lr/1/invocations", "/model/lr/2/invocations", "/model/lr/invocations"}  # type: ignore[attr-defined]
        batch = _batch(1200, seed=3)
        expected = lr_model[0].predict_proba(batch.to_pandas())

        for version in ("1", "2"):  # a promotion to version 2 moves scoring to the new path
            with HttpRuntime(url=proxy.url, endpoint="databricks").load(_version(version=version)) as scorer:
                assert scorer.payload == "dataframe_split"
                np.testing.assert_allclose(_matrix(scorer.score(batch)), expected, rtol=1e-6, atol=1e-6)
            assert proxy.paths[-1] == f"/model/lr/{version}/invocations"

        with HttpRuntime(url=proxy.url, endpoint="prinz", payload="csv").load(_version()) as scorer:
            np.testing.assert_allclose(_matrix(scorer.score(batch)), expected, rtol=1e-6, atol=1e-6)
        assert proxy.paths[-1] == "/model/lr/invocations"

        template = "{base}/model/{name}/{version}/invocations"
        with HttpRuntime(url=proxy.url, endpoint="template", url_template=template).load(_version(version="2")) as s:
            np.testing.assert_allclose(_matrix(s.score(batch)), expected, rtol=1e-6, atol=1e-6)

        sent = len(proxy.paths)
        with pytest.raises(ModelLoadError, match=r"404.*no endpoint /model/lr/9/invocations"):
            HttpRuntime(url=proxy.url, endpoint="databricks").load(_version(version="9"))
        assert len(proxy.paths) == sent + 1  # a 404 is not retried


# ---------------------------------------------------------------------------------------------
# Open Inference Protocol v2


@pytest.mark.parametrize(("endpoint", "layout"), [("v2", "columns"), ("v2_versioned", "tensor")])
def test_open_inference_protocol_v2(lr_model: tuple[Any, Path], endpoint: str, layout: str) -> None:
    with _Server(_V2Handler) as server:
        server.model = lr_model[0]  # type: ignore[attr-defined]
        server.routes = {"/v2/models/lr/infer", "/v2/models/lr/versions/4/infer"}  # type: ignore[attr-defined]
        runtime = HttpRuntime(url=server.url, endpoint=endpoint, v2_layout=layout, batch_rows=300)  # type: ignore[arg-type]
        with runtime.load(_version(version="4")) as scorer:
            assert scorer.output_schema.names == ["label", "probability_0", "probability_1"]
            batch = _batch(1000, seed=5)
            out = scorer.score(batch)
        expected = lr_model[0].predict_proba(batch.to_pandas())
        np.testing.assert_allclose(_matrix(out), expected, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(out["label"].to_numpy(), lr_model[0].predict(batch.to_pandas()))
        assert server.paths[-1] == ("/v2/models/lr/infer" if endpoint == "v2" else "/v2/models/lr/versions/4/infer")


def test_v2_server_without_probabilities_gives_labels_only(lr_model: tuple[Any, Path]) -> None:
    with _Server(_V2Handler) as server:
        server.model = lr_model[0]  # type: ignore[attr-defined]
        server.routes = {"/v2/models/lr/infer"}  # type: ignore[attr-defined]
        server.allowed_outputs = {"predict"}  # type: ignore[attr-defined]
        with HttpRuntime(url=server.url, endpoint="v2", **FAST_RETRIES).load(_version()) as scorer:
            assert scorer.output_schema.names == ["label"]
            assert scorer.output_note.startswith("labels only: the server refused outputs ['predict', 'predict_proba']")
            batch = _batch(500, seed=6)
            out = scorer.score(batch)
        np.testing.assert_array_equal(out["label"].to_numpy(), lr_model[0].predict(batch.to_pandas()))


# ---------------------------------------------------------------------------------------------
# Faults


def test_500s_then_success(fault_server: FaultServer, caplog: pytest.LogCaptureFixture) -> None:
    scorer = HttpRuntime(url=fault_server.url, **FAST_RETRIES).load(FAULT_VERSION)
    assert scorer.payload == "csv"  # the server refused Parquet with 415 at the probe
    fault_server.after_probe(lambda n, rows: (500, {}, b'{"message": "boom"}') if n <= 3 else None)
    batch = _toy_batch(1000)
    with caplog.at_level(logging.WARNING, logger="ml_assets.resources.runtimes.http"):
        out = scorer.score(batch)
    scorer.close()
    np.testing.assert_array_equal(_matrix(out), _expected_toy(batch))
    retries = [r for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 3
    assert "HTTP 500" in retries[0].getMessage()


def test_429_honours_retry_after_and_pauses_everyone(fault_server: FaultServer) -> None:
    scorer = HttpRuntime(url=fault_server.url, batch_rows=200, max_in_flight=2, **FAST_RETRIES).load(FAULT_VERSION)
    fault_server.after_probe(lambda n, rows: (429, {"Retry-After": "1"}, b"slow down") if n == 1 else None)
    batch = _toy_batch(1000)
    started = time.monotonic()
    out = scorer.score(batch)
    elapsed = time.monotonic() - started
    scorer.close()
    np.testing.assert_array_equal(_matrix(out), _expected_toy(batch))
    assert elapsed >= 0.95


def test_slow_answers_time_out_and_are_retried_smaller(fault_server: FaultServer) -> None:
    options = {**FAST_RETRIES, "read_timeout": 0.5}
    scorer = HttpRuntime(url=fault_server.url, batch_rows=1000, max_in_flight=1, **options).load(FAULT_VERSION)
    fault_server.after_probe(lambda n, rows: ("sleep", 1.5) if n == 1 else None)
    batch = _toy_batch(1000)
    out = scorer.score(batch)
    np.testing.assert_array_equal(_matrix(out), _expected_toy(batch))
    assert scorer.retries == 1
    assert scorer.batch_rows < 1000  # a timeout shrinks the next requests
    scorer.close()


def test_dropped_connections_are_retried(fault_server: FaultServer) -> None:
    scorer = HttpRuntime(url=fault_server.url, batch_rows=250, **FAST_RETRIES).load(FAULT_VERSION)
    fault_server.after_probe(lambda n, rows: "drop" if n <= 2 else None)
    batch = _toy_batch(1000)
    out = scorer.score(batch)
    scorer.close()
    np.testing.assert_array_equal(_matrix(out), _expected_toy(batch))


def test_413_splits_the_request(fault_server: FaultServer) -> None:
    scorer = HttpRuntime(url=fault_server.url, batch_rows=4000, **FAST_RETRIES).load(FAULT_VERSION)
    fault_server.after_probe(lambda n, rows: (413, {}, b"too large") if rows > 300 else None)
    batch = _toy_batch(4000)
    out = scorer.score(batch)
    np.testing.assert_array_equal(_matrix(out), _expected_toy(batch))
    assert scorer.batch_rows <= 300
    again = _toy_batch(3000, seed=9)  # later chunks stay under the size refused: no more 413s
    before, size = fault_server.count, scorer.batch_rows
    np.testing.assert_array_equal(_matrix(scorer.score(again)), _expected_toy(again))
    assert fault_server.count - before == -(-3000 // size)
    scorer.close()


@pytest.mark.parametrize(
    ("action", "message"),
    [
        ("short", r"chunk 0 rows 0-999: unusable answer .* 999 predictions for 1000 rows"),
        ("garbage", r"chunk 0 rows 0-999: unusable answer .* not JSON"),
        ("records", r"chunk 0 rows 0-999: the answer has no column 'prediction_0'"),
    ],
)
def test_unusable_answers_fail_cleanly(fault_server: FaultServer, action: str, message: str) -> None:
    scorer = HttpRuntime(url=fault_server.url, batch_rows=1000, max_in_flight=2, **FAST_RETRIES).load(FAULT_VERSION)
    fault_server.after_probe(lambda n, rows: action)
    before = fault_server.count
    with pytest.raises(ScoringError, match=message):
        scorer.score(_toy_batch(1000))
    assert fault_server.count - before == 1  # not retried
    scorer.close()


def test_client_errors_fail_at_once_without_the_payload(fault_server: FaultServer) -> None:
    scorer = HttpRuntime(url=fault_server.url, batch_rows=1000, max_in_flight=2, **FAST_RETRIES).load(FAULT_VERSION)
    echo = json.dumps({"error_code": "BAD_REQUEST", "message": "Failed to predict data '0.123456789 0.98765'. bad"})
    fault_server.after_probe(lambda n, rows: (400, {}, echo.encode()))
    with pytest.raises(ScoringError) as info:
        scorer.score(_toy_batch(1000))
    text = str(info.value)
    assert "answered 400: BAD_REQUEST: Failed to predict data <omitted>. bad" in text
    assert "0.123456789" not in text
    assert fault_server.count == 3  # probe with Parquet (415), probe with CSV, one request
    scorer.close()


def test_circuit_breaker_stops_hammering(fault_server: FaultServer) -> None:
    options = {**FAST_RETRIES, "max_attempts": 50, "breaker_threshold": 4, "breaker_cooldown": 60.0}
    scorer = HttpRuntime(url=fault_server.url, batch_rows=100, max_in_flight=2, **options).load(FAULT_VERSION)
    fault_server.after_probe(lambda n, rows: (503, {}, b"down"))
    before = fault_server.count
    with pytest.raises(ScoringError, match=r"circuit open after \d+ failures .*HTTP 503"):
        scorer.score(_toy_batch(1000))
    sent = fault_server.count - before
    assert 4 <= sent <= 6  # 4 failures open it; requests already in flight may land
    with pytest.raises(ScoringError, match="circuit open"):
        scorer.score(_toy_batch(10))
    assert fault_server.count - before == sent  # while open, nothing is sent
    scorer.close()


def test_retries_are_bounded(fault_server: FaultServer) -> None:
    options = {**FAST_RETRIES, "max_in_flight": 2, "max_attempts": 3}
    scorer = HttpRuntime(url=fault_server.url, batch_rows=1000, **options).load(FAULT_VERSION)
    fault_server.after_probe(lambda n, rows: (502, {}, b"bad gateway"))
    with pytest.raises(ScoringError, match=r"chunk 0 rows 0-999: .* failed 3 time\(s\) within 120s; last: HTTP 502"):
        scorer.score(_toy_batch(1000))
    scorer.close()
    fault_server.plan = None
    scorer = HttpRuntime(url=fault_server.url, batch_rows=1000, **FAST_RETRIES).load(FAULT_VERSION)
    fault_server.after_probe(lambda n, rows: (503, {"Retry-After": "3600"}, b"maintenance"))
    started = time.monotonic()
    with pytest.raises(ScoringError, match=r"asks to wait 3600.0s, beyond the retry deadline"):
        scorer.score(_toy_batch(1000))
    assert time.monotonic() - started < 5
    scorer.close()


def test_connection_refused_fails_load_cleanly() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(ModelLoadError, match=r"probing http://127.0.0.1:\d+/invocations .* connection failed"):
        HttpRuntime(url=url, max_attempts=2, **FAST_RETRIES).load(FAULT_VERSION)
    assert time.monotonic() - started < 10


def test_auth_headers_and_secrets_stay_secret(fault_server: FaultServer, caplog: pytest.LogCaptureFixture) -> None:
    runtime = HttpRuntime(url=fault_server.url, token=SECRET, headers={"X-Api-Key": "k3y-" + SECRET}, **FAST_RETRIES)
    assert SECRET not in repr(runtime)
    scorer = runtime.load(FAULT_VERSION)
    assert SECRET not in repr(scorer)
    assert fault_server.headers[-1]["Authorization"] == f"Bearer {SECRET}"
    assert fault_server.headers[-1]["X-Api-Key"] == "k3y-" + SECRET
    fault_server.after_probe(lambda n, rows: (500, {}, f'{{"message": "bad token {SECRET}"}}'.encode()))
    with (
        caplog.at_level(logging.DEBUG, logger="ml_assets.resources.runtimes.http"),
        pytest.raises(ScoringError) as info,
    ):
        scorer.score(_toy_batch(10))
    assert SECRET not in str(info.value)
    assert all(SECRET not in r.getMessage() for r in caplog.records)
    scorer.close()

    fault_server.plan = None
    os.environ["ML_ASSETS_TEST_PASSWORD"] = SECRET
    try:
        basic = HttpRuntime(url=fault_server.url, username="scorer", password_env="ML_ASSETS_TEST_PASSWORD")
    finally:
        del os.environ["ML_ASSETS_TEST_PASSWORD"]
    assert SECRET not in repr(basic)
    with basic.load(FAULT_VERSION):
        assert fault_server.headers[-1]["Authorization"].startswith("Basic ")


def test_configuration_errors() -> None:
    with pytest.raises(ModelLoadError, match="unknown endpoint 'grpc'"):
        HttpRuntime(endpoint="grpc")  # type: ignore[arg-type]
    with pytest.raises(ModelLoadError, match="needs url_template"):
        HttpRuntime(endpoint="template")
    with pytest.raises(ModelLoadError, match="no alias"):
        HttpRuntime(endpoint="template", url_template="{base}/{name}/{alias}").endpoint_url(_version())
    aliased = ModelVersion(
        name="fraud x", version="7", format="remote", artifact_uri="", registry="t", ref="models:/fraud@champion"
    )
    url = HttpRuntime(url="https://h/", endpoint="template", url_template="{base}/m/{name}/{alias}/{version}")
    assert url.endpoint_url(aliased) == "https://h/m/fraud%20x/champion/7"
    bare = ModelVersion(name="m", version="1", format="remote", artifact_uri="", registry="t")
    with pytest.raises(ModelLoadError, match=r"features=\[\.\.\.\]"):
        HttpRuntime().load(bare)


def test_codec_round_trips() -> None:
    batch = pa.RecordBatch.from_pydict({"x": [1.5, None], "s": ["a", "b"]})
    body, content_type = encode(batch, "dataframe_split")
    assert content_type == "application/json"
    assert json.loads(body) == {"dataframe_split": {"columns": ["x", "s"], "data": [[1.5, "a"], [None, "b"]]}}
    assert json.loads(encode(batch, "inputs")[0]) == {"inputs": {"x": [1.5, None], "s": ["a", "b"]}}
    assert decode(b'{"predictions": [1, 0]}', "csv", 2) == {"": [1, 0]}
    assert decode(b'{"predictions": [{"a": 1}, {"a": 2}]}', "csv", 2) == {"a": [1, 2]}
    assert list(decode(b"[[0.1, 0.9], [0.2, 0.8]]", "csv", 2)) == ["#0", "#1"]


# ---------------------------------------------------------------------------------------------
# A real Dagster materialization through the asset factory


@pytest.fixture(scope="module")
def registered_remote_model(models: Any) -> tuple[str, Any]:
    """``fraud_remote`` v1 in the session's MLflow registry: sklearn, predict_proba, column signature."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    from ml_assets.dev.demo import FEATURES as DEMO_FEATURES
    from ml_assets.dev.demo import make_transactions

    train = make_transactions(3_000, seed=0).to_pandas()
    model = LogisticRegression(max_iter=500).fit(train[DEMO_FEATURES], train["is_fraud"])
    mlflow.set_tracking_uri(models.tracking_uri)
    with mlflow.start_run():
        mlflow.sklearn.log_model(
            model,
            name="model",
            pyfunc_predict_fn="predict_proba",
            signature=infer_signature(train[DEMO_FEATURES], model.predict_proba(train[DEMO_FEATURES])),
            registered_model_name="fraud_remote",
        )
    return models.tracking_uri, model


def _materialize_remote(tracking_uri: str, data: Path, output: Path, http_options: dict[str, Any]) -> Any:
    import dagster as dg

    from ml_assets.dagster.assets import build_scoring_asset
    from ml_assets.dagster.resources import ModelRegistryResource, ModelRuntimeResource

    asset = build_scoring_asset(
        name="remote_scores",
        model="models:/fraud_remote/1",
        input_dataset=str(data),
        output_dataset=str(output),
        partitions_def=dg.StaticPartitionsDefinition(["2026-11-01", "2026-11-02"]),
        passthrough=["row_id"],
        chunk_rows=3_000,
    )
    resources = {
        "model_registry": ModelRegistryResource(kind="mlflow", uri=tracking_uri),
        "model_runtime": ModelRuntimeResource(runtime="http", options={"http": http_options}),
    }
    with dg.instance_for_test() as instance:
        return dg.materialize(
            [asset], partition_key="2026-11-02", resources=resources, instance=instance, raise_on_error=False
        )


@pytest.fixture(scope="module")
def remote_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ml_assets.dev.demo import make_transactions, write_partitioned

    root = tmp_path_factory.mktemp("remote") / "transactions"

    def day(d: str) -> pa.Table:
        table = make_transactions(10_000, seed=int(d[-1])).drop_columns(["transaction_id", "customer_id", "is_fraud"])
        return table.append_column("row_id", pa.array(np.arange(table.num_rows, dtype=np.int64)))

    write_partitioned(day, root, ["2026-11-01", "2026-11-02"], row_group_rows=4_000)
    return root


@pytest.mark.slow
def test_dagster_materialize_through_a_served_registry_model(
    registered_remote_model: tuple[str, Any], remote_data: Path, tmp_path: Path
) -> None:
    import pyarrow.parquet as pq

    from ml_assets.dev.demo import FEATURES as DEMO_FEATURES

    tracking_uri, model = registered_remote_model
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    cmd = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", "models:/fraud_remote/1", "-h", "127.0.0.1"]
    cmd += ["-p", str(port), "--env-manager", "local", "-w", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/ping", proc, 120)
        options = {"url": f"http://127.0.0.1:{port}", "output_names": ["p0", "p1"], "outputs": ["p1"]}
        result = _materialize_remote(tracking_uri, remote_data, tmp_path / "out", options)
        # The same server from the shell: runtime options reach the runtime through --option.
        cli = subprocess.run(
            [str(VENV_BIN / "ml-assets"), "score", "models:/fraud_remote/1", str(remote_data), str(tmp_path / "cli"),
             "--partition", "date=2026-11-02", "--passthrough", "row_id", "--registry-uri", tracking_uri, "--quiet",
             "--runtime", "http", "--option", f"url=http://127.0.0.1:{port}", "--option", "max_in_flight=2",
             "--option", 'output_names=["p0", "p1"]', "--option", 'outputs=["p1"]'],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert result.success
    (event,) = result.asset_materializations_for_node("remote_scores")
    assert event.metadata["model_version"].value == "1"
    out = pq.read_table(tmp_path / "out" / "date=2026-11-02")
    source = pq.read_table(remote_data / "date=2026-11-02").to_pandas()
    assert out["row_id"].to_pylist() == source["row_id"].tolist()
    expected = model.predict_proba(source[DEMO_FEATURES])[:, 1]
    np.testing.assert_allclose(out["p1"].to_numpy(), expected, rtol=1e-6, atol=1e-6)
    assert cli.returncode == 0, cli.stderr
    from_shell = pq.read_table(tmp_path / "cli" / "date=2026-11-02")
    assert from_shell.column_names == ["row_id", "p1"]
    np.testing.assert_allclose(from_shell["p1"].to_numpy(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_dagster_partition_fails_cleanly_when_the_server_fails(
    registered_remote_model: tuple[str, Any], remote_data: Path, tmp_path: Path, fault_server: FaultServer
) -> None:
    fault_server.plan = lambda number, rows: None if rows == 1 else (503, {}, b"overloaded")  # the probe passes
    options = {"url": fault_server.url, **FAST_RETRIES, "max_attempts": 3, "breaker_threshold": 3}
    result = _materialize_remote(registered_remote_model[0], remote_data, tmp_path / "out", options)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error
    assert "HTTP 503" in failure.message or "HTTP 503" in str(failure.cause)
    assert not (tmp_path / "out" / "date=2026-11-02").exists() or not any(
        (tmp_path / "out" / "date=2026-11-02").iterdir()
    )
