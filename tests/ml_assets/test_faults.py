"""Fault injection, end to end, against real servers on loopback: a scoring server that fails in
every way a server can, and moto's S3 server behind a TCP proxy that cuts connections mid-read and
mid-write. Each case ends complete and equal to a clean run, or failed with a clear error and nothing
visible to any reader. docs/faults.md has the table of cases and outcomes."""

from __future__ import annotations

import contextlib
import io
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from ml_assets.datasets import ParquetDataset
from ml_assets.resources.core.errors import DatasetError, ScoringError
from ml_assets.resources.core.models import ColumnSpec, ModelVersion, Signature
from ml_assets.resources.runtimes.http import HttpRuntime
from ml_assets.scoring import score_partition

PARTITION = "2026-11-01"
VERSION = ModelVersion(
    name="toy",
    version="3",
    format="remote",
    artifact_uri="http://127.0.0.1/",
    registry="test",
    signature=Signature(inputs=(ColumnSpec("a", "double"), ColumnSpec("b", "double"))),
)
# Small requests and fast, bounded retries: every case ends within seconds.
RUNTIME = {
    "payload": "csv",
    "batch_rows": 1000,
    "min_batch_rows": 100,
    "max_batch_rows": 1000,
    "max_attempts": 3,
    "backoff_base": 0.01,
    "backoff_max": 0.05,
    "retry_deadline": 20.0,
    "connect_timeout": 2.0,
    "read_timeout": 1.0,
    # The server's [[a + b, a - b]] are not probabilities: keep its unnamed columns as they are.
    "naming": "native",
}

# -- a scoring server that misbehaves on request ------------------------------------------------


class _ScoringHandler(BaseHTTPRequestHandler):
    """Answers CSV bodies with [[a + b, a - b], ...] unless the plan names a fault for this request."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def answer(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)

    def do_POST(self) -> None:
        server: ScoringServer = self.server.owner  # type: ignore[attr-defined]
        table = pacsv.read_csv(io.BytesIO(self.rfile.read(int(self.headers["Content-Length"]))))
        a, b = table.column("a").to_numpy(), table.column("b").to_numpy()
        body = json.dumps({"predictions": np.column_stack([a + b, a - b]).tolist()}).encode()
        action = server.action(table.num_rows)
        if action is None:
            self.answer(200, body)
        elif action == "hang":
            time.sleep(3)  # past the client's read timeout
            self.answer(200, body)
        elif action == "cut":  # headers and half the body, then the connection drops
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        elif action == "short":
            self.answer(200, json.dumps({"predictions": np.column_stack([a + b, a - b])[:-1].tolist()}).encode())
        elif action == "garbage":
            self.answer(200, b"<html>502 Bad Gateway</html>")
        else:
            status, headers = action
            self.answer(status, b'{"message": "injected"}', headers)


class ScoringServer:
    def __init__(self) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _ScoringHandler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.plan: Callable[[int, int], Any] = lambda number, rows: None
        self.requests = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def action(self, rows: int) -> Any:
        with self._lock:
            self.requests += 1
            number = self.requests
        return self.plan(number, rows)

    def fail(self, plan: Callable[[int, int], Any]) -> None:
        """``plan(n, rows)`` for the n-th request from now on (the probe at load is already done)."""
        start = self.requests
        self.plan = lambda number, rows: plan(number - start, rows)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def scoring_server() -> Iterator[ScoringServer]:
    server = ScoringServer()
    try:
        yield server
    finally:
        server.close()


def make_input(root: Path, rows: int) -> ParquetDataset:
    rng = np.random.default_rng(7)
    folder = root / f"date={PARTITION}"
    folder.mkdir(parents=True)
    table = pa.table({"id": np.arange(rows), "a": rng.standard_normal(rows), "b": rng.standard_normal(rows)})
    pq.write_table(table, folder / "part-0.parquet", row_group_size=rows // 4)
    return ParquetDataset(str(root), partition_column="date")


def expected_scores(source: ParquetDataset) -> pa.Table:
    table = pq.read_table(Path(source.uri) / f"date={PARTITION}" / "part-0.parquet")
    a, b = table.column("a").to_numpy(), table.column("b").to_numpy()
    return pa.table({"id": table.column("id"), "prediction_0": a + b, "prediction_1": a - b})


def score(server: ScoringServer, source: ParquetDataset, dest: ParquetDataset, plan: Any = None) -> Any:
    with HttpRuntime(url=server.url, **RUNTIME).load(VERSION) as scorer:
        if plan is not None:
            server.fail(plan)  # after the probe at load: the faults hit the scoring itself
        return score_partition(scorer, VERSION, source, dest, partition=PARTITION, chunk_rows=4000, passthrough=["id"])


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()) if path.exists() else []


# Each case: the fault, and the error it must end in (None: it must end complete and equal).
SERVER_CASES = {
    "500 twice": (lambda n, rows: (500, {}) if n <= 2 else None, None),
    "503 with Retry-After": (lambda n, rows: (503, {"Retry-After": "1"}) if n == 1 else None, None),
    "429 with Retry-After": (lambda n, rows: (429, {"Retry-After": "1"}) if n == 2 else None, None),
    "413 above 300 rows": (lambda n, rows: (413, {}) if rows > 300 else None, None),
    "hangs once": (lambda n, rows: "hang" if n == 1 else None, None),
    "drops the connection mid-response": (lambda n, rows: "cut" if n in (1, 4) else None, None),
    "500 always": (
        lambda n, rows: (500, {}),
        r"(failed 3 time\(s\) within 20s|circuit open after \d+ failures in a row).*last: HTTP 500: injected",
    ),
    "hangs always": (
        lambda n, rows: "hang",
        r"(failed 3 time\(s\) within 20s|circuit open after \d+ failures in a row).*last: read timeout after 1s",
    ),
    "400 (a bad request)": (lambda n, rows: (400, {}) if n == 2 else None, r"answered 400: injected"),
    # One prediction short of the request; the request's size adapts to latency (a loaded machine halves it).
    "wrong row count": (
        lambda n, rows: "short" if n == 3 else None,
        r"returned (?P<answered>\d+) predictions for (?P<sent>\d+) rows",
    ),
    "garbage body": (lambda n, rows: "garbage" if n == 3 else None, r"unusable answer .*: the answer is not JSON"),
}


@pytest.mark.parametrize("case", list(SERVER_CASES))
def test_scoring_server_faults(case, scoring_server, tmp_path):
    source = make_input(tmp_path / "input", 20_000)
    clean = expected_scores(source)
    out = tmp_path / "scores"
    dest = ParquetDataset(str(out), partition_column="date")
    plan, error = SERVER_CASES[case]
    # A previous output that a failed run must leave exactly as it was.
    score(scoring_server, source, dest)
    before = (out / f"date={PARTITION}" / "part-0.parquet").read_bytes()
    if error is None:
        result = score(scoring_server, source, dest, plan)
        assert result.rows_out == 20_000
        assert pq.read_table(out, columns=clean.column_names).equals(clean)
    else:
        with pytest.raises(ScoringError, match=error) as failed:
            score(scoring_server, source, dest, plan)
        assert f"partition date={PARTITION}" in str(failed.value)
        assert "version 3" in str(failed.value)
        counts = re.search(error, str(failed.value)).groupdict()
        if counts:
            assert int(counts["answered"]) == int(counts["sent"]) - 1
            assert RUNTIME["min_batch_rows"] <= int(counts["sent"]) <= RUNTIME["max_batch_rows"]
        assert (out / f"date={PARTITION}" / "part-0.parquet").read_bytes() == before
    assert files_under(out) == [f"date={PARTITION}/part-0.parquet"]
    assert files_under(tmp_path / ".scores.ml-assets-staging") == []


# -- S3 behind a TCP proxy that cuts connections ---------------------------------------------------


class CuttingProxy:
    """A TCP proxy on loopback in front of the S3 server. While ``cuts`` remain, a connection that
    carries more than ``after_bytes`` in ``direction`` (``read``: server to client, ``write``:
    client to server) is cut there: both sockets closed mid-stream."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.direction = "read"
        self.after_bytes = 0
        self.cuts = 0
        self.cut = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def arm(self, direction: str, *, after_bytes: int, cuts: int) -> None:
        with self._lock:
            self.direction, self.after_bytes, self.cuts, self.cut = direction, after_bytes, cuts, 0

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=30)
            for src, dst, direction in ((client, upstream, "write"), (upstream, client, "read")):
                threading.Thread(target=self._pump, args=(src, dst, direction, (client, upstream)), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str, both: tuple[socket.socket, ...]) -> None:
        carried = 0
        try:
            while data := src.recv(65536):
                carried += len(data)
                with self._lock:
                    cut = direction == self.direction and carried > self.after_bytes and self.cut < self.cuts
                    if cut:
                        self.cut += 1
                if cut:
                    dst.sendall(data[: len(data) // 2])
                    break
                dst.sendall(data)
        except OSError:
            pass  # the other direction closed both sockets
        for sock in both:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.listener.close()


@pytest.fixture
def s3_proxy(s3_server) -> Iterator[tuple[CuttingProxy, dict[str, Any]]]:
    import s3fs

    port = int(s3_server["endpoint_url"].rsplit(":", 1)[1])
    proxy = CuttingProxy(port)
    options = {**s3_server, "endpoint_url": f"http://127.0.0.1:{proxy.port}", "skip_instance_cache": True}
    # Bounded retries of the S3 client itself (botocore's), so every case ends in seconds.
    options["config_kwargs"] = {"connect_timeout": 2, "read_timeout": 5, "retries": {"max_attempts": 2}}
    bucket = f"faults-{time.monotonic_ns()}"
    s3fs.S3FileSystem(**s3_server, skip_instance_cache=True).mkdir(bucket)
    try:
        yield proxy, {**options, "bucket": bucket}
    finally:
        proxy.close()


S3_CASES = {
    # direction, cuts, where the data lives, expected error (None: complete and equal)
    "input read cut once": ("read", 1, "input", None),
    "input read cut every time": (
        "read",
        1000,
        "input",
        r"partition date=2026-11-01 .*: reading failed after \d+ rows",
    ),
    "output write cut once": ("write", 1, "output", None),
    "output write cut every time": (
        "write",
        1000,
        "output",
        r"partition date=2026-11-01 .*: (writing|committing) the output s3://.* failed after \d+ rows",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(S3_CASES))
def test_s3_connection_cuts(case, scoring_server, s3_proxy, tmp_path):
    import s3fs

    proxy, options = s3_proxy
    bucket = options.pop("bucket")
    direct = s3fs.S3FileSystem(
        **{k: v for k, v in options.items() if k not in ("endpoint_url", "config_kwargs")},
        endpoint_url=f"http://127.0.0.1:{proxy.upstream_port}",
    )
    direction, cuts, where, error = S3_CASES[case]
    local = make_input(tmp_path / "input", 100_000)
    clean = expected_scores(local)
    if where == "input":
        direct.put(str(tmp_path / "input"), f"{bucket}/input", recursive=True)
        source = ParquetDataset(f"s3://{bucket}/input", partition_column="date", storage_options=options)
        dest = ParquetDataset(str(tmp_path / "scores"), partition_column="date")
    else:
        source = local
        dest = ParquetDataset(f"s3://{bucket}/scores", partition_column="date", storage_options=options)
    with HttpRuntime(url=scoring_server.url, **RUNTIME).load(VERSION) as scorer:
        proxy.arm(direction, after_bytes=256 * 1024, cuts=cuts)

        def run() -> Any:
            return score_partition(
                scorer, VERSION, source, dest, partition=PARTITION, chunk_rows=20_000, passthrough=["id"]
            )

        if error is None:
            run()
        else:
            with pytest.raises(DatasetError, match=error):
                run()
    assert proxy.cut >= 1, "the proxy never cut a connection: the case tested nothing"
    direct.invalidate_cache()
    if where == "input":
        written = files_under(tmp_path / "scores")
        leftovers = files_under(tmp_path / ".scores.ml-assets-staging")
    else:
        written = sorted(p.removeprefix(f"{bucket}/scores/") for p in direct.find(f"{bucket}/scores"))
        leftovers = [u["Key"] for u in direct.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", [])]
    assert leftovers == []
    if error is None:
        assert written == [f"date={PARTITION}/part-0.parquet"]
        out = (
            pq.read_table(tmp_path / "scores", columns=clean.column_names)
            if where == "input"
            else pq.read_table(f"{bucket}/scores", filesystem=direct, columns=clean.column_names)
        )
        assert out.equals(clean)
    else:
        assert written == []
