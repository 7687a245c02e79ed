"""Serves a file registry read-only over HTTP, in the format the HTTP registry reads.

``GET /index.json`` answers the index (``FileRegistry.index()``) with a strong ETag and
``304 Not Modified`` to a matching ``If-None-Match``; ``GET /<model>/<version>/<file>`` answers
a file listed in a published version's manifest, nothing else. Optional bearer or basic auth.

Meant for tests, demos and small teams; put it behind a TLS-terminating proxy for anything more.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import shutil
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from ml_assets.resources.core.errors import MlAssetsError
from ml_assets.resources.registries.file import FileRegistry

log = logging.getLogger(__name__)


class RegistryServer(ThreadingHTTPServer):
    """An HTTP server over ``registry``; ``url`` is what an ``HttpRegistry`` is pointed at.

    Args:
        registry: the file registry to serve (any root: local, NFS, s3://).
        host, port: where to listen (port 0 picks a free one).
        token: require ``Authorization: Bearer <token>``.
        username, password: require HTTP basic auth.
        fault: a hook ``fault(path) -> status or None`` answering a status instead of serving
            (for testing clients against outages).
    """

    daemon_threads = True

    def __init__(
        self,
        registry: FileRegistry,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        fault: Callable[[str], int | None] | None = None,
    ) -> None:
        super().__init__((host, port), _Handler)
        self.registry = registry
        self.fault = fault
        self._expected_auth: str | None = None
        if token:
            self._expected_auth = f"Bearer {token}"
        elif username is not None:
            self._expected_auth = "Basic " + base64.b64encode(f"{username}:{password or ''}".encode()).decode()
        self.log: list[tuple[str, int]] = []
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def authorized(self, header: str | None) -> bool:
        if self._expected_auth is None:
            return True
        return header is not None and hmac.compare_digest(header.encode(), self._expected_auth.encode())

    def start(self) -> RegistryServer:
        """Serves from a daemon thread; ``stop()`` ends it."""
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> RegistryServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    server: RegistryServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _answer(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.server.log.append((self.path, status))
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if status == HTTPStatus.UNAUTHORIZED:
            self.send_header("WWW-Authenticate", 'Bearer realm="ml-assets"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path = unquote(urlsplit(self.path).path)
        if self.server.fault is not None:
            status = self.server.fault(path)
            if status is not None:
                self._answer(status, b"injected fault\n")
                return
        if not self.server.authorized(self.headers.get("Authorization")):
            self._answer(HTTPStatus.UNAUTHORIZED)
            return
        if path in ("/", "/index.json"):
            self._index()
            return
        parts = path.strip("/").split("/", 2)
        if len(parts) != 3:
            self._answer(HTTPStatus.NOT_FOUND)
            return
        name, version, rel = parts
        try:
            handle = self.server.registry.open_file(name, version, rel)
        except (FileNotFoundError, MlAssetsError):
            self._answer(HTTPStatus.NOT_FOUND)
            return
        with handle:
            size = handle.size if hasattr(handle, "size") else None
            if size is None:
                handle.seek(0, 2)
                size = handle.tell()
                handle.seek(0)
            self.server.log.append((self.path, 200))
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            if self.command != "HEAD":
                shutil.copyfileobj(handle, self.wfile, 1 << 20)

    def _index(self) -> None:
        try:
            index = self.server.registry.index()
        except MlAssetsError as exc:
            log.warning("cannot build the index: %s", exc)
            self._answer(HTTPStatus.SERVICE_UNAVAILABLE, b"registry unavailable\n")
            return
        body = json.dumps(index, sort_keys=True, separators=(",", ":")).encode()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        asked = [t.strip() for t in (self.headers.get("If-None-Match") or "").split(",")]
        if etag in asked or "*" in asked:
            self._answer(HTTPStatus.NOT_MODIFIED, headers={"ETag": etag})
            return
        self._answer(HTTPStatus.OK, body, {"Content-Type": "application/json", "ETag": etag})


def serve(
    root: str, *, host: str = "127.0.0.1", port: int = 8080, token: str | None = None, **storage_options: Any
) -> None:
    """Serves the file registry at ``root`` until interrupted."""
    server = RegistryServer(FileRegistry(root, storage_options=storage_options), host=host, port=port, token=token)
    log.info("serving %s at %s", server.registry.location, server.url)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()


__all__ = ["RegistryServer", "serve"]
