"""The push path for promotions: MLflow 3 webhooks, verified, dropped into an inbox the sensor reads.

MLflow signs ``{delivery_id}.{timestamp}.{body}`` with HMAC-SHA256 and sends it base64-encoded
as ``X-MLflow-Signature: v1,<signature>``, with ``X-MLflow-Delivery-Id`` and
``X-MLflow-Timestamp``. A request with a bad signature, or older than ``max_age_s`` (a replay),
is refused. A verified ``model_version_alias.created`` event becomes one small JSON file in the
inbox folder; the promotion sensor reads and removes them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import time
import uuid
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


class WebhookRejected(MlAssetsError):
    """A webhook request that is not a genuine, fresh MLflow event."""


def sign(secret: str, delivery_id: str, timestamp: str, body: str) -> str:
    digest = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, headers: Mapping[str, str], body: bytes, *, max_age_s: float = 300.0) -> dict[str, Any]:
    """The event, if the signature is MLflow's and the timestamp is recent; else WebhookRejected."""
    signature = headers.get(SIGNATURE_HEADER, "")
    delivery_id = headers.get(DELIVERY_ID_HEADER, "")
    timestamp = headers.get(TIMESTAMP_HEADER, "")
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
    expected = sign(secret, delivery_id, timestamp, body.decode("utf-8", errors="replace"))
    if not hmac.compare_digest(expected, signature):
        msg = "signature does not match (wrong secret, or the body was altered)"
        raise WebhookRejected(msg)
    try:
        return json.loads(body)
    except ValueError:
        msg = "body is not JSON"
        raise WebhookRejected(msg) from None


class PromotionInbox:
    """A folder of pending promotion hints, written atomically, read and removed by the sensor."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def put(self, model: str, alias: str, version: str | None, delivery_id: str) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        event = {"model": model, "alias": alias, "version": version, "delivery_id": delivery_id, "at": time.time()}
        tmp = self.path / f".{uuid.uuid4().hex}.tmp"
        tmp.write_text(json.dumps(event))
        final = self.path / f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.json"
        tmp.replace(final)
        return final

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


def make_handler(secret: str, inbox: PromotionInbox, *, max_age_s: float = 300.0) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self._answer(413, "body too large")
                return
            body = self.rfile.read(length)
            try:
                event = verify(secret, self.headers, body, max_age_s=max_age_s)
            except WebhookRejected as exc:
                log.warning("webhook refused: %s", exc)
                self._answer(401, str(exc))
                return
            kind = (event.get("entity"), event.get("action"))
            data = event.get("data") or {}
            if kind in ALIAS_EVENTS and data.get("name") and data.get("alias"):
                inbox.put(str(data["name"]), str(data["alias"]), data.get("version"), self.headers[DELIVERY_ID_HEADER])
                log.info("promotion hint: %s@%s -> %s", data["name"], data["alias"], data.get("version"))
            self._answer(200, "ok")

        def _answer(self, status: int, text: str) -> None:
            payload = json.dumps({"status": text}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug(format, *args)

    return Handler


def serve(
    inbox: str | os.PathLike[str], secret: str, *, host: str = "127.0.0.1", port: int = 8787
) -> ThreadingHTTPServer:
    """A receiver for MLflow webhooks; call ``serve_forever()`` on it (``ml-assets webhook serve`` does)."""
    if not secret:
        msg = "a webhook receiver needs the shared secret the MLflow webhook was created with"
        raise WebhookRejected(msg)
    return ThreadingHTTPServer((host, port), make_handler(secret, PromotionInbox(inbox)))
