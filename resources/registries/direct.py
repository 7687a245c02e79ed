"""Direct refs: a model file named by its URL (``file:///m/fraud.onnx``, ``s3://b/fraud.pmml``), no registry.

The file's content is its identity: the version is the first 12 hex digits of its SHA-256, so
lineage still says exactly which model produced an output, and a changed file is a new version.
Files are read through fsspec (s3fs for ``s3://``) and kept in the shared artifact cache.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ml_assets.resources.core.cache import ArtifactCache, file_sha256
from ml_assets.resources.core.errors import ArtifactError, ModelNotFoundError
from ml_assets.resources.core.formats import detect_format
from ml_assets.resources.core.models import ModelRef, ModelVersion

REGISTRY_ID = "direct"


class DirectFiles:
    def __init__(
        self, *, cache_dir: str | Path | None = None, storage_options: Mapping[str, Any] | None = None
    ) -> None:
        self.cache = ArtifactCache(cache_dir)
        self.storage_options = dict(storage_options or {})

    def _open(self, uri: str) -> tuple[Any, str]:
        import fsspec

        return fsspec.core.url_to_fs(uri, **self.storage_options)

    def resolve(self, ref: ModelRef | str) -> ModelVersion:
        ref = ModelRef.parse(ref) if isinstance(ref, str) else ref
        if ref.direct_uri is None:
            msg = f"{ref.raw!r} is a registry ref, not a model file's URL"
            raise ModelNotFoundError(msg)
        fs, path = self._open(ref.direct_uri)
        if not fs.isfile(path):
            msg = f"no model file at {ref.direct_uri}"
            raise ModelNotFoundError(msg)
        name = os.path.basename(path.rstrip("/"))
        with tempfile.TemporaryDirectory(prefix="ml-assets-direct-") as tmp:
            local = Path(tmp) / name
            try:
                fs.get(path, str(local))
            except OSError as exc:
                msg = f"cannot read {ref.direct_uri}: {exc}"
                raise ArtifactError(msg) from exc
            digest = file_sha256(local)
            version = ModelVersion(
                name=ref.name,
                version=f"sha256-{digest[:12]}",
                format=ref.direct_format or detect_format(local),
                artifact_uri=ref.direct_uri,
                registry=REGISTRY_ID,
                ref=ref.raw,
                checksum=f"sha256:{digest}",
                extra={"model_file": name},
            )
            self.cache.get_or_fetch(version, lambda dest: shutil.move(str(local), dest / name))
        return version

    def fetch(self, version: ModelVersion) -> Path:
        """The cached folder holding the file; fetched again (and checked) if the cache lost it."""

        def download(dest: Path) -> None:
            fs, path = self._open(version.artifact_uri)
            fs.get(path, str(dest / version.extra["model_file"]))

        return self.cache.get_or_fetch(version, download) / version.extra["model_file"]
