"""A lineage backend on loopback for the OpenLineage tests, and validation of what it received against
the OpenLineage JSON schema (a fixture: neither package ships it) and the mlModel facet's schema."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema

from ml_assets.openlineage import FACET_SCHEMA_URL, MODEL_FACET, facet_schema

SPEC = json.loads((Path(__file__).parent / "fixtures/openlineage/OpenLineage.json").read_text())


class Receiver:
    """A lineage backend on loopback: stores every POSTed event body."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.events.append({"path": self.path, **json.loads(body)})
                self.send_response(201)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def wait_for(self, count: int, timeout: float = 30.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.events) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.events)


def validate(event: dict) -> None:
    body = {k: v for k, v in event.items() if k != "path"}
    jsonschema.Draft202012Validator(SPEC, format_checker=jsonschema.FormatChecker()).validate(body)
    facet = body["run"]["facets"].get(MODEL_FACET)
    if facet is not None:
        jsonschema.Draft202012Validator(facet_schema(), format_checker=jsonschema.FormatChecker()).validate(facet)
        assert facet["_schemaURL"] == FACET_SCHEMA_URL
