"""Input that a user, a registry or the network controls, tried as an attacker would: partition
values, manifest and index entries, version strings and aliases, symlinks in a served or published
registry, credentials echoed by a server, URLs with query strings, absurd chunk sizes. Every case
runs on real files and real servers on loopback."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
from click.testing import CliRunner

from ml_assets.cli import main
from ml_assets.datasets import ParquetDataset
from ml_assets.dev.demo import FEATURES, make_transactions, to_onnx_classifier, write_partitioned
from ml_assets.resources.core.cache import ArtifactCache
from ml_assets.resources.core.errors import ArtifactError, ModelLoadError, ScoringError, UnsafePathError
from ml_assets.resources.core.http import join_url, redact
from ml_assets.resources.core.models import ColumnSpec, ModelVersion, Signature
from ml_assets.resources.core.paths import safe_join
from ml_assets.resources.registries.file import FileRegistry
from ml_assets.resources.registries.http import HttpRegistry
from ml_assets.resources.runtimes.http import HttpRuntime
from ml_assets.scoring import score_partition
from tests.conftest import DATES, free_port, wait_for_port

DAY = DATES[0]


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sklearn.linear_model import LogisticRegression

    train = make_transactions(1_000, seed=0)
    x = np.column_stack([train[c].to_numpy() for c in FEATURES])
    model = LogisticRegression(max_iter=200).fit(x, train["is_fraud"].to_numpy())
    path = tmp_path_factory.mktemp("model") / "lr.onnx"
    path.write_bytes(to_onnx_classifier(model, len(FEATURES)).SerializeToString())
    return path


def _cli(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


# -- partition values --------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["../../../escape", "..", ".", "a/b", "a\\b", "x\0y"])
def test_partition_values_cannot_leave_the_dataset_roots(onnx_file, tmp_path, value):
    data = tmp_path / "area" / "in" / "tx"
    write_partitioned(lambda day: make_transactions(200, seed=1), data, [DAY])
    # What the attack reached: a Parquet file outside the input root.
    escape = tmp_path / "escape"
    escape.mkdir()
    pq.write_table(make_transactions(50, seed=2), escape / "part-0.parquet")
    out = tmp_path / "area" / "out" / "scores"
    code, text = _cli("score", onnx_file.as_uri(), data, out, "--partition", f"date={value}", "--quiet",
                      "--features", ",".join(FEATURES))  # fmt: skip
    assert code == 1
    assert "unsafe partition value" in text
    assert "Traceback" not in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["area", "escape"]
    assert not out.exists()
    assert sorted(p.name for p in escape.iterdir()) == ["part-0.parquet"]


def test_templates_and_object_stores_validate_partitions_too():
    for dataset in (
        ParquetDataset("/data/events/{date}.parquet", partition_column="date"),
        ParquetDataset("s3://bucket/events", partition_column="date"),
    ):
        with pytest.raises(UnsafePathError, match="unsafe partition value"):
            dataset.partition_uri("../../x")
        assert dataset.partition_uri("2026-11-01").endswith("2026-11-01.parquet") or "date=2026-11-01" in (
            dataset.partition_uri("2026-11-01")
        )
    assert safe_join("bucket/root", "a/b.onnx", filesystem="object_store") == "bucket/root/a/b.onnx"
    with pytest.raises(UnsafePathError, match=r"'\.\.' are not names"):
        safe_join("bucket/root", "a/../../y", filesystem="object_store")
    with pytest.raises(UnsafePathError, match="it is absolute"):
        safe_join("s3://bucket/root", "/etc/passwd")


def test_a_local_link_out_of_the_root_is_refused(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "date=2026-11-01").symlink_to(outside)
    with pytest.raises(UnsafePathError, match="resolves outside"):
        ParquetDataset(str(root), partition_column="date").partition_uri("2026-11-01")


# -- registry metadata ------------------------------------------------------------------------


def _edit_manifest(root: Path, name: str, version: str, **changes: Any) -> None:
    path = root / name / version / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("model_file", ["/etc/passwd", "../../../../outside/evil.onnx", "a/../../evil.onnx"])
def test_a_manifest_model_file_outside_the_version_is_refused(onnx_file, tmp_path, model_file):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "evil.onnx").write_bytes(onnx_file.read_bytes())
    registry = FileRegistry(tmp_path / "registry", cache_dir=tmp_path / "cache")
    registry.publish("fraud", onnx_file)
    _edit_manifest(tmp_path / "registry", "fraud", "1", model_file=model_file)
    registry = FileRegistry(tmp_path / "registry", cache_dir=tmp_path / "cache")
    with pytest.raises(UnsafePathError, match=r"unsafe model_file of model 'fraud' version 1"):
        registry.resolve("models:/fraud/1")


def test_a_manifest_on_s3_is_held_to_the_same_rules(onnx_file, s3_server, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": s3_server["endpoint_url"]})
    bucket = f"untrusted-{os.getpid()}"
    fs.mkdir(bucket)
    registry = FileRegistry(f"s3://{bucket}/models", cache_dir=tmp_path / "cache", storage_options=s3_server)
    registry.publish("fraud", onnx_file)
    manifest = json.loads(fs.cat_file(f"{bucket}/models/fraud/1/manifest.json"))
    manifest["files"] = [{**manifest["files"][0], "path": "../../../secrets/key.onnx"}]
    fs.pipe_file(f"{bucket}/models/fraud/1/manifest.json", json.dumps(manifest).encode())
    registry = FileRegistry(f"s3://{bucket}/models", cache_dir=tmp_path / "cache", storage_options=s3_server)
    version = registry.resolve("models:/fraud/1")
    with pytest.raises(UnsafePathError, match="unsafe file path in a model manifest"):
        registry.fetch(version)
    assert not list((tmp_path / "cache").rglob("*.onnx"))


class _IndexHandler(BaseHTTPRequestHandler):
    """A hostile HTTP registry: its index names versions '..' and '.', reached through aliases."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        body = json.dumps(self.server.index).encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def hostile_index() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _IndexHandler)
    entry = {"format": "onnx", "files": [{"path": "m.onnx", "url": "m.onnx", "size": 1}]}
    server.index = {  # type: ignore[attr-defined]
        "format_version": 1,
        "models": {
            "m": {"aliases": {"up": "..", "here": "."}, "versions": {"..": entry, ".": entry, "1": entry}},
        },
    }
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.mark.parametrize("ref", ["models:/m@up", "models:/m@here", "models:/m/latest"])
def test_version_strings_from_an_index_never_touch_the_cache(hostile_index, tmp_path, ref):
    cache = tmp_path / "cache"
    registry = HttpRegistry(f"http://127.0.0.1:{hostile_index.server_address[1]}/", cache_dir=cache, retries=0)
    sentinel = cache / "keep-me"
    sentinel.parent.mkdir(parents=True)
    sentinel.write_text("other registries' models")
    with pytest.raises(UnsafePathError, match=r"unsafe version of model 'm' '\.{1,2}'"):
        registry.fetch(registry.resolve(ref))
    assert sentinel.read_text() == "other registries' models"


def test_the_cache_refuses_links_in_a_download_and_keeps_nothing(tmp_path):
    cache = ArtifactCache(tmp_path / "cache")
    version = ModelVersion(name="m", version="1", format="onnx", artifact_uri="x", registry="test")
    (tmp_path / "secret").write_text("s")

    def download(dest: Path) -> None:
        (dest / "model.onnx").symlink_to(tmp_path / "secret")

    with pytest.raises(UnsafePathError, match=r"'model\.onnx' is a symbolic link"):
        cache.get_or_fetch(version, download)
    assert not cache.path_for(version).exists()
    with pytest.raises(UnsafePathError):
        ModelVersion(name="m", version="..", format="onnx", artifact_uri="x", registry="test")


# -- registry serve and models publish --------------------------------------------------------


def test_registry_serve_skips_a_bad_model_and_never_serves_outside_root(onnx_file, tmp_path, caplog):
    root = tmp_path / "registry"
    registry = FileRegistry(root)
    registry.publish("good", onnx_file)
    registry.publish("linked", onnx_file)
    registry.publish("escaping", onnx_file)
    secret = tmp_path / "secret.onnx"
    secret.write_bytes(b"\x08" + b"s" * (onnx_file.stat().st_size - 1))
    (root / "linked" / "1" / "lr.onnx").unlink()
    (root / "linked" / "1" / "lr.onnx").symlink_to(secret)  # a file in ROOT that is a link to outside
    _edit_manifest(root, "escaping", "1", model_file="../../../secret.onnx")
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "ml_assets.cli", "registry", "serve", str(root), "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for_port(port, server, what="registry server", timeout_s=60)
        base = f"http://127.0.0.1:{port}"
        index = requests.get(f"{base}/index.json", timeout=10)
        assert index.status_code == 200
        assert {m: sorted(e["versions"]) for m, e in index.json()["models"].items()} == {
            "escaping": [], "good": ["1"], "linked": [],
        }  # fmt: skip
        assert requests.get(f"{base}/linked/1/lr.onnx", timeout=10).status_code == 404
        assert requests.get(f"{base}/good/1/lr.onnx", timeout=10).content == onnx_file.read_bytes()
        assert requests.get(f"{base}/good/1/..%2f..%2flinked%2f1%2flr.onnx", timeout=10).status_code == 404
    finally:
        server.terminate()
        server.wait(timeout=30)
    text = log.read_text()
    assert "leaving model 'escaping' version 1 out of the index" in text
    assert "'linked' version 1" in text


def test_models_publish_refuses_symlinks_unless_asked(onnx_file, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "lr.onnx").symlink_to(onnx_file)
    root = tmp_path / "registry"
    code, text = _cli("models", "publish", "fraud", folder, "--registry", "file", "--registry-uri", root)
    assert code == 1
    assert "is a symbolic link" in text
    assert "--follow-symlinks" in text
    assert not (root / "fraud" / "1").exists() or not any((root / "fraud" / "1").iterdir())
    code, text = _cli("models", "publish", "fraud", folder, "--registry", "file", "--registry-uri", root,
                      "--follow-symlinks")  # fmt: skip
    assert code == 0, text
    copied = root / "fraud" / "1" / "lr.onnx"
    assert not copied.is_symlink()
    assert copied.read_bytes() == onnx_file.read_bytes()


# -- credentials and URLs ---------------------------------------------------------------------


class _EchoHandler(BaseHTTPRequestHandler):
    """Answers 400 quoting the request's credentials back, as some proxies and frameworks do."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.paths.append(self.path)  # type: ignore[attr-defined]
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "cookie")}
        body = json.dumps({"message": f"bad request; got headers {headers} for {self.path}"}).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Set-Cookie", "session=abcdef0123456789; HttpOnly")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def echo_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
    server.paths = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_credentials_echoed_by_a_server_never_reach_our_errors(echo_server, caplog):
    import base64

    version = ModelVersion(
        name="toy", version="1", format="pyfunc", artifact_uri="mem://", registry="test",
        signature=Signature(inputs=(ColumnSpec("a", "double"),)),
    )  # fmt: skip
    base = f"http://127.0.0.1:{echo_server.server_address[1]}/score?api_key=k3y-VALUE&region=eu"
    runtime = HttpRuntime(url=base, username="scorer", password="hunter2-secret", max_attempts=1)
    caplog.set_level(logging.DEBUG)
    with pytest.raises((ScoringError, ModelLoadError)) as info:
        runtime.load(version).score(pa.record_batch([pa.array([1.0, 2.0])], names=["a"]))
    message = str(info.value)
    basic = base64.b64encode(b"scorer:hunter2-secret").decode()
    for leaked in (basic, "hunter2-secret", "k3y-VALUE"):
        assert leaked not in message
        # Ours; urllib3's own DEBUG line of the request is not (it logs the URL as sent).
        assert all(leaked not in r.getMessage() for r in caplog.records if r.name.startswith("ml_assets"))
    # The path went before the query string, and the query string was kept.
    assert echo_server.paths[0] == "/score/invocations?api_key=k3y-VALUE&region=eu"


def test_redact_covers_every_authorization_scheme_cookies_and_credential_parameters():
    quoted = (
        "Authorization: Basic dXNlcjpzZWNyZXQ=\n{'authorization': 'Digest username=\"bob\", response=\"6629fae4\"'}\n"
        "Proxy-Authorization: Negotiate YIIGhgYGKwYBBQUCoIIGejCCBnagMDAu\nCookie: session=abc123; theme=dark\n"
        "Set-Cookie: sid=31d4d96e407aad42; Path=/\nAWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/2026/eu/s3/aws4_request\n"
        "retry with access_token=eyJhbGciOi&x=1 or X-Amz-Signature=abcdef0123 and password=pw1; "
        "url https://u:p@h/p?token=t0k#frag"
    )
    cleaned = redact(quoted)
    for secret in ("dXNlcjpzZWNyZXQ=", "6629fae4", "YIIGhgYGKwYBBQUC", "abc123", "dark", "31d4d96e407aad42",
                   "AKIAEXAMPLE", "eyJhbGciOi", "abcdef0123", "pw1", "t0k", "u:p"):  # fmt: skip
        assert secret not in cleaned, secret
    assert redact("Basic auth failed for column amount") == "Basic auth failed for column amount"
    assert join_url("https://h/score?api_key=k", "{base}/invocations") == "https://h/score/invocations?api_key=k"
    assert join_url("http://h:5000/", "{base}/v2/models/{name}/infer", name="a") == "http://h:5000/v2/models/a/infer"


# -- chunk sizes -----------------------------------------------------------------------------


def test_absurd_chunk_sizes_are_refused_cleanly(onnx_file, tmp_path):
    data = tmp_path / "tx"
    write_partitioned(lambda day: make_transactions(100, seed=1), data, [DAY])
    code, text = _cli("score", onnx_file.as_uri(), data, tmp_path / "out", "--partition", f"date={DAY}",
                      "--chunk-rows", 10**12)  # fmt: skip
    assert code == 2
    assert "--chunk-rows" in text
    assert "Traceback" not in text
    with pytest.raises(ValueError, match="chunk_rows must be an integer from 1 to 16,777,216"):
        score_partition(None, None, ParquetDataset(str(data)), ParquetDataset(str(tmp_path / "o")), chunk_rows=10**12)  # type: ignore[arg-type]


def test_artifact_errors_still_name_the_version(onnx_file, tmp_path):
    registry = FileRegistry(tmp_path / "registry", cache_dir=tmp_path / "cache")
    registry.publish("fraud", onnx_file)
    (tmp_path / "registry" / "fraud" / "1" / "lr.onnx").write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match=r"model 'fraud' version 1: file 'lr\.onnx' has 8 bytes"):
        registry.fetch(registry.resolve("models:/fraud/1"))
