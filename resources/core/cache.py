"""A local cache of model artifacts shared by every registry.

Keyed by registry, model name and version. A version is downloaded once into a temporary
folder next to its final place, checked, described in a manifest, then renamed into place,
so a reader never sees half a model. A file lock per version makes concurrent runs and
processes wait for one download instead of racing; a cached copy whose files no longer
match its manifest is deleted and fetched again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock, Timeout

from ml_assets.resources.core.errors import ArtifactError
from ml_assets.resources.core.models import ModelVersion
from ml_assets.resources.core.paths import check_tree, safe_join

MANIFEST = ".ml-assets-manifest.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")


def default_cache_dir() -> Path:
    configured = os.environ.get("ML_ASSETS_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ml-assets"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_checksum(path: Path) -> str:
    """``sha256:<hex>`` of a file, or of a folder's (relative path, file hash) list.

    Registries that record checksums compute them with this same function when publishing.
    """
    path = Path(path)
    if path.is_file():
        return f"sha256:{file_sha256(path)}"
    lines = [f"{rel}\0{sha}\n" for rel, (_, sha) in sorted(_describe(path).items())]
    return "sha256:" + hashlib.sha256("".join(lines).encode()).hexdigest()


def _describe(folder: Path) -> dict[str, tuple[int, str]]:
    files = {}
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        files[file.relative_to(folder).as_posix()] = (file.stat().st_size, file_sha256(file))
    return files


def _slug(text: str) -> str:
    slug = _UNSAFE.sub("_", text).strip("_")[:80]
    return slug if slug.strip(".") else "_"  # never "", "." or "..": a folder of its own


class ArtifactCache:
    def __init__(self, root: str | Path | None = None, *, lock_timeout_s: float = 900.0) -> None:
        self.root = Path(root).expanduser() if root else default_cache_dir()
        self.lock_timeout_s = lock_timeout_s

    def path_for(self, version: ModelVersion) -> Path:
        registry_key = f"{_slug(version.registry)}-{hashlib.sha256(version.registry.encode()).hexdigest()[:10]}"
        # Every part is slugged; the join still proves the folder lies inside the cache root, since
        # it is deleted and replaced whole.
        joined = safe_join(str(self.root), registry_key, _slug(version.name), _slug(version.version), what="cache path")
        return Path(joined)

    def cached(self, version: ModelVersion) -> Path | None:
        """The folder of ``version`` if a valid copy is cached (no lock, no download), else None."""
        folder = self.path_for(version)
        return folder if self._is_valid(folder, version) else None

    def get_or_fetch(self, version: ModelVersion, download: Callable[[Path], None]) -> Path:
        """The cached folder of ``version``; ``download(dest)`` fills ``dest`` when missing.

        ``download`` must put the model's files inside ``dest`` (an empty, existing folder).
        """
        final = self.path_for(version)
        final.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(final) + ".lock")
        try:
            with lock.acquire(timeout=self.lock_timeout_s):
                if self._is_valid(final, version):
                    return final
                if final.exists():
                    shutil.rmtree(final)  # inside the root: path_for proved it
                tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex}"
                tmp.mkdir()
                try:
                    download(tmp)
                    check_tree(str(tmp), what=f"download of {version.describe()}")
                    files = _describe(tmp)
                    if not files:
                        msg = f"{version.describe()}: the download from {version.artifact_uri} produced no files"
                        raise ArtifactError(msg)
                    self._check(version, tmp)
                    manifest = {
                        "files": {k: list(v) for k, v in files.items()},
                        "uri": version.uri,
                        "checksum": version.checksum,
                    }
                    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
                    os.replace(tmp, final)
                finally:
                    if tmp.exists():
                        shutil.rmtree(tmp, ignore_errors=True)
                return final
        except Timeout as exc:
            msg = (
                f"{version.describe()}: waited {self.lock_timeout_s:.0f}s for another process "
                f"downloading it into {final}; remove {final}.lock if no such process exists"
            )
            raise ArtifactError(msg) from exc

    @staticmethod
    def _check(version: ModelVersion, folder: Path) -> None:
        if not version.checksum:
            return
        model_file = version.extra.get("model_file")
        named = safe_join(str(folder), model_file, what=f"model_file of {version.describe()}") if model_file else None
        target = Path(named) if named is not None and Path(named).exists() else folder
        found = tree_checksum(target)
        if found != version.checksum:
            msg = (
                f"{version.describe()}: checksum mismatch for {version.artifact_uri}: "
                f"the registry records {version.checksum}, the download has {found}"
            )
            raise ArtifactError(msg)

    @staticmethod
    def _is_valid(folder: Path, version: ModelVersion | None = None) -> bool:
        """Cheap check on every use: the manifest exists and every file has its recorded size.

        A copy fetched when the registry recorded another checksum for this version (a
        version re-published under the same number) is stale.
        """
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            return False
        try:
            manifest = json.loads(manifest_path.read_text())
            files = manifest["files"]
        except (ValueError, KeyError):
            return False
        if version is not None and version.checksum and manifest.get("checksum") not in (None, version.checksum):
            return False
        for rel, (size, _sha) in files.items():
            file = folder / rel
            if not file.is_file() or file.stat().st_size != size:
                return False
        return True
