"""The push path for promotions: MLflow 3 webhooks, verified, dropped into an inbox the sensor reads.

MLflow signs ``{delivery_id}.{timestamp}.{body}`` with HMAC-SHA256 and sends it base64-encoded
as ``X-MLflow-Signature: v1,<signature>``, with ``X-MLflow-Delivery-Id`` and
``X-MLflow-Timestamp``. A request with a bad signature, or older than ``max_age_s`` (a replay),
is refused. A verified ``model_version_alias.created`` event becomes one small JSON file in the
inbox folder; the promotion sensor reads and removes them.

The receiver runs on uvicorn (one event loop: a burst of connections costs sockets, not
threads). Whatever a request says about itself, it gets at most ``MAX_BODY_BYTES`` read,
``HEADER_TIMEOUT_S`` to send its headers and ``BODY_TIMEOUT_S`` to send its body; a signed but
malformed payload is answered 400; a delivery id seen before is answered 200 and not put twice.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml_assets.resources.core.errors import MlAssetsError

if TYPE_CHECKING:
    from ml_assets.resources.core.models import ModelRef

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
ALIAS_EVENTS = {("model_version_alias", "created"), ("model_version_alias", "deleted")}
MAX_BODY_BYTES = 64 * 1024
HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 1024


class WebhookRejected(MlAssetsError):
    """A webhook request that is not a genuine, fresh MLflow event."""


class MalformedEvent(WebhookRejected):
    """A genuinely signed request whose payload is not an event we can read (answered 400)."""


def sign(secret: str, delivery_id: str, timestamp: str, body: str) -> str:
    digest = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, headers: Mapping[str, str], body: bytes, *, max_age_s: float = 300.0) -> dict[str, Any]:
    """The event, if the signature is MLflow's and the timestamp is recent; else WebhookRejected
    (MalformedEvent when the signature holds but the body is not an event object)."""
    lowered = {str(k).lower(): str(v) for k, v in headers.items()}
    signature = lowered.get(SIGNATURE_HEADER.lower(), "")
    delivery_id = lowered.get(DELIVERY_ID_HEADER.lower(), "")
    timestamp = lowered.get(TIMESTAMP_HEADER.lower(), "")
    if not (signature and delivery_id and timestamp):
        msg = f"missing one of {SIGNATURE_HEADER}, {DELIVERY_ID_HEADER}, {TIMESTAMP_HEADER}"
        raise WebhookRejected(msg)
    try:
        age = abs(time.time() - int(timestamp))
    except ValueError:
        msg = f"{TIMESTAMP_HEADER} is not a Unix timestamp"
        raise WebhookRejected(msg) from None
    if age > max_age_s:
        msg = f"event timestamp is {age:.0f}s away from now (allowed: {max_age_s:.0f}s); refusing a possible replay"
        raise WebhookRejected(msg)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        msg = "body is not UTF-8"
        raise WebhookRejected(msg) from None
    expected = sign(secret, delivery_id, timestamp, text)
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        msg = "signature does not match (wrong secret, or the body was altered)"
        raise WebhookRejected(msg)
    try:
        event = json.loads(text)
    except ValueError:
        msg = "body is not JSON"
        raise MalformedEvent(msg) from None
    if not isinstance(event, dict) or not isinstance(event.get("data", {}), dict):
        msg = "expected a JSON object with 'entity', 'action' and an object 'data'"
        raise MalformedEvent(msg)
    return event


class PromotionInbox:
    """A folder of pending promotion hints, written atomically, read and removed by the sensor."""

    # Delivery ids are remembered this long: longer than any signed request stays fresh.
    REMEMBER_S = 3600.0

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._puts = 0

    def put(self, model: str, alias: str, version: str | None, delivery_id: str) -> Path | None:
        """The event's file, or None when ``delivery_id`` was put before (MLflow retries deliveries)."""
        seen = self.path / ".delivered"
        seen.mkdir(parents=True, exist_ok=True)
        marker = seen / hashlib.sha256(delivery_id.encode()).hexdigest()[:40]
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            return None
        self._puts += 1
        if self._puts % 256 == 1:
            self._forget_old(seen)
        event = {"model": model, "alias": alias, "version": version, "delivery_id": delivery_id, "at": time.time()}
        tmp = self.path / f".{uuid.uuid4().hex}.tmp"
        tmp.write_text(json.dumps(event))
        final = self.path / f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.json"
        tmp.replace(final)
        return final

    def _forget_old(self, seen: Path) -> None:
        horizon = time.time() - self.REMEMBER_S
        for marker in seen.iterdir():
            try:
                if marker.stat().st_mtime < horizon:
                    marker.unlink()
            except FileNotFoundError:
                continue

    def take(self, refs: Iterable[ModelRef]) -> set[str]:
        """The raw refs among ``refs`` that some pending event names; all pending events are consumed."""
        if not self.path.is_dir():
            return set()
        named: set[tuple[str, str]] = set()
        for file in sorted(self.path.glob("*.json")):
            try:
                event = json.loads(file.read_text())
                named.add((str(event["model"]), str(event["alias"])))
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("ignoring unreadable webhook event %s", file.name)
            file.unlink(missing_ok=True)
        # A stage ref is nudged by any event on its model: stages have no webhook of their own.
        return {r.raw for r in refs if (r.name, r.alias) in named or (r.stage and any(m == r.name for m, _ in named))}


def make_app(
    secret: str, inbox: PromotionInbox, *, max_age_s: float = 300.0, body_timeout_s: float = BODY_TIMEOUT_S
) -> Callable[..., Awaitable[None]]:
    """The receiver as an ASGI application (transport-free: any ASGI server can run it)."""

    async def answer(send: Callable[..., Awaitable[None]], status: int, text: str) -> None:
        payload = json.dumps({"status": text}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def read_body(receive: Callable[..., Awaitable[dict[str, Any]]]) -> bytes | int:
        """The body, or the status to answer: 413 past MAX_BODY_BYTES, 408 past the deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + body_timeout_s
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                return 408
            if message["type"] == "http.disconnect":
                return 499  # the client went away (nginx's code for it): nothing to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                return 413
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        if scope["method"] != "POST":
            await answer(send, 405, "POST only")
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            await answer(send, 413, f"body too large (at most {MAX_BODY_BYTES} bytes)")
            return
        body = await read_body(receive)
        if isinstance(body, int):
            if body != 499:
                await answer(send, body, "body too large" if body == 413 else "body not received in time")
            return
        try:
            event = verify(secret, headers, body, max_age_s=max_age_s)
        except MalformedEvent as exc:
            log.warning("webhook refused (signed, malformed): %s", exc)
            await answer(send, 400, str(exc))
            return
        except WebhookRejected as exc:
            log.warning("webhook refused: %s", exc)
            await answer(send, 401, str(exc))
            return
        kind = (event.get("entity"), event.get("action"))
        data = event.get("data") or {}
        name, alias, version = data.get("name"), data.get("alias"), data.get("version")
        if kind in ALIAS_EVENTS:
            if not (isinstance(name, str) and name and isinstance(alias, str) and alias):
                await answer(send, 400, "an alias event needs string 'data.name' and 'data.alias'")
                return
            if version is not None and not isinstance(version, (str, int)):
                await answer(send, 400, "'data.version' must be a string or an integer")
                return
            delivery = headers[DELIVERY_ID_HEADER.lower()]
            if inbox.put(name[:200], alias[:200], None if version is None else str(version)[:40], delivery) is None:
                log.info("webhook delivery %s seen before; not put twice", delivery[:80])
                await answer(send, 200, "duplicate")
                return
            log.info("promotion hint: %s@%s -> %s", name[:200], alias[:200], version)
        await answer(send, 200, "ok")

    return app


class WebhookReceiver:
    """``ml-assets webhook serve``: the ASGI app on uvicorn, bounded in connections, header and body
    time, and memory. ``serve_forever()`` blocks; ``start()``/``stop()`` run it in a thread."""

    def __init__(
        self, app: Callable[..., Awaitable[None]], *, host: str, port: int, header_timeout_s: float = HEADER_TIMEOUT_S
    ) -> None:
        import uvicorn

        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            http=_protocol_with_header_deadline(header_timeout_s),
            lifespan="off",
            log_config=None,
            access_log=False,
            backlog=2048,
            limit_concurrency=MAX_CONNECTIONS,
            timeout_keep_alive=5,
            h11_max_incomplete_event_size=16 * 1024,
        )
        self.server = uvicorn.Server(config)
        self.host, self.port = host, port
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def serve_forever(self) -> None:
        self.server.run()

    def start(self, *, timeout_s: float = 30.0) -> WebhookReceiver:
        self._thread = threading.Thread(target=self.server.run, daemon=True, name="webhook-receiver")
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                msg = f"the webhook receiver did not start listening on {self.url} within {timeout_s:.0f}s"
                raise WebhookRejected(msg)
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _protocol_with_header_deadline(timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol, plus what it lacks: a connection that has not sent a complete request
    head within ``timeout_s`` (idle, or trickling bytes) is closed. uvicorn's keep-alive timer
    only runs between requests and stops at the first byte."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadlineProtocol(H11Protocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_header_deadline()

        def _arm_header_deadline(self) -> None:
            self._header_deadline = self.loop.call_later(timeout_s, self._on_header_deadline)

        def _on_header_deadline(self) -> None:
            if self.cycle is not None and not self.cycle.response_complete:
                self._arm_header_deadline()  # a request is being answered (its body read is bounded)
                return
            self.transport.close()  # no complete request head in time: idle, or trickling bytes

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._header_deadline.cancel()
                self._arm_header_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            self._header_deadline.cancel()
            super().connection_lost(exc)

    return HeaderDeadlineProtocol


def serve(
    inbox: str | os.PathLike[str],
    secret: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8787,
    header_timeout_s: float = HEADER_TIMEOUT_S,
    body_timeout_s: float = BODY_TIMEOUT_S,
) -> WebhookReceiver:
    """A receiver for MLflow webhooks; ``serve_forever()`` on it (``ml-assets webhook serve`` does),
    or ``start()``/``stop()``."""
    if not secret:
        msg = "a webhook receiver needs the shared secret the MLflow webhook was created with"
        raise WebhookRejected(msg)
    app = make_app(secret, PromotionInbox(inbox), body_timeout_s=body_timeout_s)
    return WebhookReceiver(app, host=host, port=port, header_timeout_s=header_timeout_s)
