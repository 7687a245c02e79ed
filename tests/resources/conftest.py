"""Registry fixtures: one file registry holding the session's real ONNX models, served over HTTP
from loopback by the same bytes, so the file and HTTP registries are tested on the same models.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ml_assets.dev.demo import FEATURES
from ml_assets.resources.registries.file import FileRegistry
from ml_assets.resources.registries.server import RegistryServer

SIGNATURE = {"inputs": [{"name": f, "type": "float"} for f in FEATURES]}


def seed_file_registry(root: str, models, **storage_options) -> FileRegistry:
    """``fraud`` v1 (logistic regression, @champion, Production) and v2 (random forest, @challenger,
    Staging), as in the MLflow fixture; plus a half-written v3 (files, no manifest) and a v4 whose
    manifest was cut off mid-write: both must stay invisible."""
    registry = FileRegistry(root, storage_options=storage_options or None)
    registry.publish("fraud", models.lr_onnx, signature=SIGNATURE, tags={"algo": "lr"})
    registry.publish("fraud", models.rf_onnx, signature=SIGNATURE, tags={"algo": "rf"})
    registry.promote("fraud", "1", alias="champion", stage="Production")
    registry.promote("fraud", "2", alias="challenger", stage="Staging")
    fs = registry.fs

    def put(data: bytes, *parts: str) -> None:
        path = registry._path(*parts)
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        fs.pipe_file(path, data)

    put(models.lr_onnx.read_bytes(), "fraud", "3", "lr.onnx")
    manifest = json.loads(fs.cat_file(registry._path("fraud", "1", "manifest.json")))
    manifest["version"] = "4"
    put(models.lr_onnx.read_bytes(), "fraud", "4", "lr.onnx")
    put(json.dumps(manifest).encode()[:50], "fraud", "4", "manifest.json")
    return FileRegistry(root, storage_options=storage_options or None)


@pytest.fixture(scope="session")
def file_registry_root(models, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("file-registry")
    seed_file_registry(str(root), models)
    return root


@pytest.fixture
def writable_registry(models, tmp_path: Path) -> FileRegistry:
    """A registry of this test's own, free to promote in."""
    return seed_file_registry(str(tmp_path / "registry"), models)


@pytest.fixture(scope="session")
def registry_server(file_registry_root: Path) -> Iterator[RegistryServer]:
    """The session's file registry over HTTP on loopback, read-only, no auth."""
    with RegistryServer(FileRegistry(file_registry_root)) as server:
        yield server
