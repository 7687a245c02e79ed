"""The webhook receiver under attack: `ml-assets webhook serve` in its own process on loopback, its
threads and peak RSS read from /proc while unsigned floods, lying headers, idle sockets and a burst
of valid events hit it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from ml_assets.webhooks import DELIVERY_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from tests.conftest import free_port, wait_for_port

SECRET = "attack-test-secret"
TIMEOUT_S = 1.0  # the receiver's header and body timeouts in this test


class Receiver:
    def __init__(self, port: int, process: subprocess.Popen[bytes], inbox: Path) -> None:
        self.port, self.process, self.inbox = port, process, inbox
        self.url = f"http://127.0.0.1:{port}/"

    def status(self, field: str) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
        raise AssertionError(field)

    def events(self) -> list[Path]:
        return sorted(self.inbox.glob("*.json"))


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    inbox = tmp_path_factory.mktemp("attacks") / "inbox"
    port = free_port()
    log = (inbox.parent / "receiver.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "ml_assets.cli", "webhook", "serve", "--inbox", str(inbox), "--port", str(port),
         "--header-timeout", str(TIMEOUT_S), "--body-timeout", str(TIMEOUT_S)],
        env={**os.environ, "MLFLOW_WEBHOOK_SECRET": SECRET}, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for_port(port, process, what="webhook receiver", timeout_s=60)
        yield Receiver(port, process, inbox)
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
    # Not one request of this module may have ended in a traceback.
    assert "Traceback" not in (inbox.parent / "receiver.log").read_text()


def alias_event(name: str = "m", alias: str = "champion", version: object = "2") -> str:
    return json.dumps({"entity": "model_version_alias", "action": "created",
                       "data": {"name": name, "alias": alias, "version": version}})  # fmt: skip


def signed(body: str, delivery_id: str | None = None) -> dict[str, str]:
    delivery_id = delivery_id or uuid.uuid4().hex
    stamp = str(int(time.time()))
    return {SIGNATURE_HEADER: sign(SECRET, delivery_id, stamp, body), DELIVERY_ID_HEADER: delivery_id,
            TIMESTAMP_HEADER: stamp, "Content-Type": "application/json"}  # fmt: skip


def raw_exchange(port: int, head: bytes, body_chunks: Iterable[bytes] = (), *, timeout_s: float = 10) -> bytes:
    """Sends ``head`` and the chunks (stopping when the server hangs up); returns all it answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(head)
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not data:
                break
            answer += data
        return answer


def head(content_length: str | None, *, extra: str = "") -> bytes:
    lines = ["POST / HTTP/1.1", "Host: 127.0.0.1"]
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def megabytes(n: int) -> Iterator[bytes]:
    block = b"x" * (1 << 20)
    for _ in range(n):
        yield block


@pytest.mark.parametrize(
    ("content_length", "status"),
    [("-1", b" 400 "), ("abc", b" 400 "), ("300000000", b" 413 "), ("1, 2", b" 400 ")],
)
def test_a_lying_content_length_is_answered_without_reading_the_body(receiver, content_length, status):
    before = receiver.status("VmHWM")
    started = time.monotonic()
    answer = raw_exchange(receiver.port, head(content_length), megabytes(300))
    assert status in answer.split(b"\r\n", 1)[0], answer[:200]
    assert time.monotonic() - started < 10
    assert receiver.status("VmHWM") - before < 20_000  # kB: the 300 MB were never held


def test_a_chunked_body_past_the_limit_is_refused(receiver):
    def chunks() -> Iterator[bytes]:
        for block in megabytes(50):
            yield f"{len(block):x}\r\n".encode() + block + b"\r\n"
        yield b"0\r\n\r\n"

    before = receiver.status("VmHWM")
    answer = raw_exchange(receiver.port, head(None, extra="Transfer-Encoding: chunked\r\n"), chunks())
    assert b" 413 " in answer.split(b"\r\n", 1)[0]
    assert receiver.status("VmHWM") - before < 20_000


def test_idle_and_slow_connections_time_out_without_a_thread_each(receiver):
    threads_before = receiver.status("Threads")
    idle = [socket.create_connection(("127.0.0.1", receiver.port), timeout=10) for _ in range(300)]
    try:
        idle[0].sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")  # a head that never ends
        time.sleep(0.3)
        assert receiver.status("Threads") <= threads_before + 2  # sockets, not threads
        deadline = time.monotonic() + 10 * TIMEOUT_S
        for sock in idle:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            assert sock.recv(1024) == b"", "the receiver kept an idle connection open past its header timeout"
    finally:
        for sock in idle:
            sock.close()
    # A body that trickles in stops being waited for at the body timeout.
    body = alias_event()
    headers = "".join(f"{k}: {v}\r\n" for k, v in signed(body).items())
    started = time.monotonic()
    answer = raw_exchange(receiver.port, head(str(len(body)), extra=headers), [body[:10].encode()])
    assert b" 408 " in answer.split(b"\r\n", 1)[0]
    assert time.monotonic() - started < 5 * TIMEOUT_S


MALFORMED = [
    json.dumps([1, 2]),
    json.dumps("a string"),
    json.dumps({"entity": "model_version_alias", "action": "created", "data": "not an object"}),
    "{not json",
    alias_event(name=""),
    alias_event(version={"x": 1}),
]


@pytest.mark.parametrize(
    "body",
    MALFORMED,
    ids=["list", "string", "data-not-object", "not-json", "no-name", "version-object"],
)
def test_malformed_but_signed_payloads_get_400(receiver, body):
    answer = requests.post(receiver.url, data=body.encode(), headers=signed(body), timeout=10)
    assert answer.status_code == 400
    assert "status" in answer.json()


def test_unsigned_and_forged_requests_get_401(receiver):
    body = alias_event(name="forged")
    forged = {**signed(body), SIGNATURE_HEADER: "v1,AAAA"}
    assert requests.post(receiver.url, data=body, headers=forged, timeout=10).status_code == 401
    assert requests.post(receiver.url, data=body, timeout=10).status_code == 401
    assert requests.get(receiver.url, timeout=10).status_code == 405
    assert not [e for e in receiver.events() if "forged" in e.read_text()]


def test_a_delivery_is_put_once_however_often_it_is_sent(receiver):
    body = alias_event(name="dedup")
    headers = signed(body, delivery_id="delivery-42")
    answers = [requests.post(receiver.url, data=body, headers=headers, timeout=10) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [a.json()["status"] for a in answers] == ["ok", "duplicate", "duplicate"]
    assert len([e for e in receiver.events() if json.loads(e.read_text())["model"] == "dedup"]) == 1


@pytest.mark.slow
def test_a_burst_of_200_valid_events_is_answered_and_kept_whole(receiver):
    threads_before = receiver.status("Threads")
    bodies = [alias_event(name=f"burst-{i}") for i in range(200)]

    def post(body: str) -> int:
        return requests.post(receiver.url, data=body, headers=signed(body), timeout=30).status_code

    with ThreadPoolExecutor(max_workers=200) as pool:
        statuses = list(pool.map(post, bodies))
    assert statuses == [200] * 200
    burst = {json.loads(e.read_text())["model"] for e in receiver.events() if "burst-" in e.read_text()}
    assert burst == {f"burst-{i}" for i in range(200)}
    assert receiver.status("Threads") <= threads_before + 2
    assert receiver.status("VmHWM") < 300_000  # kB
