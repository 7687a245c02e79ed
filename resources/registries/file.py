"""A model registry that is a folder: local disk, NFS, or any fsspec URL (``s3://`` through s3fs).

Layout::

    <root>/
      <model>/
        model.json            aliases and stages, rewritten whole on every promotion
        <version>/            a positive integer: 1, 2, ...
          manifest.json       written last: a version without it is invisible
          <model files>       e.g. model.onnx, or an MLflow model folder's files

``manifest.json``::

    {"format_version": 1, "name": "fraud", "version": "3", "format": "onnx",
     "files": [{"path": "model.onnx", "size": 1234, "sha256": "..."}],
     "model_file": "model.onnx",            # only when the version is one file
     "checksum": "sha256:...",              # ml_assets.resources.core.cache.tree_checksum of the file(s)
     "signature": {"inputs": [{"name": "amount", "type": "float", "required": true}],
                   "outputs": [{"name": "probability_1", "type": "float"}]},
     "created_at": "2026-11-01T12:00:00+00:00", "tags": {"team": "risk"}}

``model.json``::

    {"format_version": 1, "name": "fraud", "aliases": {"champion": "3"},
     "stages": {"3": "Production", "2": "Archived"}, "revision": 7, "updated_at": "..."}

``model.json`` is replaced atomically: a temporary file and a rename on a local or NFS
folder (under a file lock, so concurrent promotions do not lose each other's changes), a
single PUT on an object store (last writer wins). Publishing writes the model files first and
the manifest last, so readers never see half a version.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ml_assets.resources.core.cache import ArtifactCache, tree_checksum
from ml_assets.resources.core.errors import (
    ArtifactError,
    MlAssetsError,
    ModelNotFoundError,
    ModelRefError,
    RegistryUnavailableError,
    UnsafePathError,
)
from ml_assets.resources.core.http import redact
from ml_assets.resources.core.models import ModelRef, ModelVersion, Signature
from ml_assets.resources.core.paths import safe_join
from ml_assets.resources.registries.manifests import (
    ARCHIVED,
    FORMAT_VERSION,
    NAME_PATTERN,
    as_signature,
    is_complete_manifest,
    not_found_message,
    now_iso,
    pick_version,
    safe_relative_path,
    signature_to_json,
    stage_matches,
    validate_name,
    validate_version,
    version_from_manifest,
)

if TYPE_CHECKING:
    import fsspec

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MODEL_MANIFEST = "model.json"


# -- the registry ------------------------------------------------------------------------------


class FileRegistry:
    """Models in a folder tree (see the module docstring for the layout).

    Args:
        root: a local path, ``file://`` URL, or any fsspec URL (``s3://bucket/models``).
        cache_dir: where fetched versions are cached (default ``$ML_ASSETS_CACHE_DIR``).
        storage_options: passed to fsspec, e.g. ``{"endpoint_url": ..., "key": ..., "secret": ...}``
            for s3fs; by default s3fs reads the usual AWS environment variables and config.

    Example:
        ```python
        registry = FileRegistry("/mnt/models")
        registry.publish("fraud", "model.onnx", signature={"inputs": {"amount": "float"}})
        registry.promote("fraud", "1", alias="champion")
        registry.resolve("models:/fraud@champion")
        ```
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        cache_dir: str | Path | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        if root is None or not str(root).strip():
            msg = "the file registry needs a root folder or URL (e.g. /mnt/models or s3://bucket/models)"
            raise RegistryUnavailableError(msg)
        text = os.fspath(root)
        self.is_local = "://" not in text or text.startswith("file://")
        if self.is_local:
            text = os.path.abspath(os.path.expanduser(text.removeprefix("file://")))
        self.root = text.rstrip("/") or "/"
        self.storage_options = dict(storage_options or {})
        self.cache = ArtifactCache(cache_dir)
        self._manifests: dict[tuple[str, str], dict[str, Any]] = {}

    @property
    def location(self) -> str:
        return redact(self.root)

    @property
    def registry_id(self) -> str:
        return f"file:{self.location}"

    @property
    def where(self) -> str:
        return f"file registry {self.location}"

    def __repr__(self) -> str:
        return f"FileRegistry({self.location!r})"

    # -- filesystem --------------------------------------------------------------------------

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        fs = self.__dict__.get("_fs")
        if fs is None:
            import fsspec

            if self.is_local:
                fs = fsspec.filesystem("file")
                self._root_path = self.root
            else:
                fs, self._root_path = fsspec.core.url_to_fs(self.root, **self.storage_options)
            self.__dict__["_fs"] = fs
        return fs

    def _path(self, *parts: str) -> str:
        """A path under the root, proven to stay there (on local disk: its real location, links
        followed), whatever a manifest or a ref put into ``parts``."""
        _ = self.fs
        kind = "local" if self.is_local else "object_store"
        return safe_join(self._root_path, *parts, what=f"path in {self.where}", filesystem=kind)

    def _uri(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    @contextlib.contextmanager
    def _storage(self, doing: str) -> Iterator[None]:
        """Storage failures (network, permissions, a missing mount) become RegistryUnavailableError."""
        try:
            yield
        except (ModelNotFoundError, ModelRefError, ArtifactError, UnsafePathError):
            raise
        except (OSError, ValueError) as exc:
            msg = f"{self.where}: cannot {doing}: {type(exc).__name__}: {redact(str(exc))[:300]}"
            raise RegistryUnavailableError(msg) from exc
        except Exception as exc:
            # botocore/aiohttp errors surface unwrapped from s3fs when the store is unreachable.
            if type(exc).__module__.split(".")[0] in ("botocore", "aiohttp", "aiobotocore", "s3fs", "gcsfs", "adlfs"):
                msg = f"{self.where}: cannot {doing}: {type(exc).__name__}: {redact(str(exc))[:300]}"
                raise RegistryUnavailableError(msg) from exc
            raise

    def _read_json(self, *parts: str) -> Any | None:
        """The parsed JSON file, or None when it is missing or not (yet) valid JSON."""
        path = self._path(*parts)
        try:
            with self.fs.open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return None

    def _check_root(self) -> None:
        with self._storage("open the root"):
            if self.is_local and not self.fs.isdir(self._path()):
                msg = f"{self.where}: the root folder does not exist (is the share mounted?)"
                raise RegistryUnavailableError(msg)

    def _children(self, *parts: str) -> list[str]:
        path = self._path(*parts)
        if not self.is_local:
            self.fs.invalidate_cache(path)  # polling must see new versions, not s3fs's cached listing
        try:
            entries = self.fs.ls(path, detail=True)
        except FileNotFoundError:
            return []
        return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory")

    # -- model-level state -----------------------------------------------------------------

    def _model_state(self, name: str) -> dict[str, Any]:
        data = self._read_json(name, MODEL_MANIFEST)
        if not isinstance(data, dict):
            data = {}
        return {
            "aliases": {str(k): str(v) for k, v in (data.get("aliases") or {}).items()},
            "stages": {str(k): str(v) for k, v in (data.get("stages") or {}).items()},
            "revision": int(data.get("revision") or 0),
        }

    def _manifest(self, name: str, version: str) -> dict[str, Any] | None:
        # A complete manifest never changes, so it is read once per registry object.
        cached = self._manifests.get((name, version))
        if cached is not None:
            return cached
        try:
            data = self._read_json(name, version, MANIFEST)
        except UnsafePathError as exc:
            log.warning("%s: model %r version %s is invisible: %s", self.where, name, version, exc)
            return None
        if not is_complete_manifest(data, name, version):
            return None
        self._manifests[(name, version)] = data
        return data

    def _visible_versions(self, name: str) -> list[str]:
        numbers = [v for v in self._children(name) if v.isdigit() and v == str(int(v)) and int(v) > 0]
        return [v for v in sorted(numbers, key=int) if self._manifest(name, v) is not None]

    # -- the Registry protocol -------------------------------------------------------------

    def list_models(self) -> list[str]:
        self._check_root()
        with self._storage("list models"):
            names = self._children()
            return [n for n in names if NAME_PATTERN.match(n) and ".." not in n and self._visible_versions(n)]

    def list_versions(self, name: str) -> list[ModelVersion]:
        validate_name(name)
        self._check_root()
        with self._storage(f"list the versions of {name!r}"):
            state = self._model_state(name)
            ref = ModelRef(raw=f"models:/{name}/latest", name=name, latest=True)
            return [self._describe(name, v, ref, state) for v in self._visible_versions(name)]

    def resolve(self, ref: ModelRef | str) -> ModelVersion:
        ref = ModelRef.parse(ref) if isinstance(ref, str) else ref
        if ref.direct_uri is not None:
            msg = f"{ref.raw!r} is a file, not a registry ref; it is scored without a registry"
            raise ModelNotFoundError(msg)
        validate_name(ref.name)
        self._check_root()
        with self._storage(f"resolve {ref.raw!r}"):
            versions = self._visible_versions(ref.name)
            if not versions:
                models = self.list_models()
                if ref.name not in models:
                    msg = not_found_message(self.where, ref, models=models, aliases={}, versions=[], stages={})
                    raise ModelNotFoundError(msg)
            state = self._model_state(ref.name)
            chosen = pick_version(self.where, ref, versions, state["aliases"], state["stages"])
            return self._describe(ref.name, chosen, ref, state)

    def fetch(self, version: ModelVersion) -> Path:
        name, number = validate_name(version.name), validate_version(version.version)

        def download(dest: Path) -> None:
            with self._storage(f"download {version.describe()}"):
                manifest = self._manifest(name, number)
                if manifest is None:
                    msg = f"{version.describe()}: its manifest in {self.where} vanished or is incomplete"
                    raise ArtifactError(msg)
                for entry in manifest["files"]:
                    rel = safe_relative_path(entry["path"])
                    target = dest / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        self.fs.get_file(self._path(name, number, *rel.split("/")), str(target))
                    except FileNotFoundError as exc:
                        msg = f"{version.describe()}: file {rel!r} listed in its manifest is missing from {self.where}"
                        raise ArtifactError(msg) from exc
                    _check_file(version, target, rel, entry)

        return self.cache.get_or_fetch(version, download)

    # -- writing: publish and promote --------------------------------------------------------

    def publish(
        self,
        name: str,
        path_or_file: str | os.PathLike[str],
        *,
        format: str | None = None,
        signature: Signature | Mapping[str, Any] | Any | None = None,
        tags: Mapping[str, str] | None = None,
        version: str | None = None,
        symlinks: Literal["refuse", "copy_content"] = "refuse",
        model_file: str | None = None,
    ) -> ModelVersion:
        """Adds a new version of ``name`` from a model file or folder; returns it.

        The version number is the next integer unless given. Files are copied first and the
        manifest written last, so the version appears whole or not at all. ``format`` is
        detected from the files when not given. A symbolic link among the files (or the file
        itself) is refused: its target may be anything on this machine. ``symlinks="copy_content"``
        copies what the links point to instead, and logs each one. ``model_file`` names the model
        file inside a folder (e.g. beside its ``model.sig``); the checksum is then that file's.
        """
        from ml_assets.resources.core.formats import detect_format

        validate_name(name)
        source = Path(path_or_file)
        if not source.exists():
            msg = f"cannot publish {source}: no such file or folder"
            raise ArtifactError(msg)
        links = [source] if source.is_symlink() else [p for p in sorted(source.rglob("*")) if p.is_symlink()]
        for link in links:
            if symlinks == "refuse":
                msg = (
                    f"cannot publish {source}: {link} is a symbolic link (to {os.path.realpath(link)}); "
                    "publish the real files, or copy what the links point to with symlinks='copy_content' "
                    "(ml-assets models publish --follow-symlinks)"
                )
                raise ArtifactError(msg)
            log.warning("publishing %s: copying the content of the link %s -> %s", name, link, os.path.realpath(link))
        files = (
            {source.name: source}
            if source.is_file()
            else {p.relative_to(source).as_posix(): p for p in sorted(source.rglob("*")) if p.is_file()}
        )
        if not files:
            msg = f"cannot publish {source}: the folder holds no files"
            raise ArtifactError(msg)
        if MANIFEST in files:
            msg = f"cannot publish {source}: {MANIFEST!r} is reserved for the registry's own manifest"
            raise ArtifactError(msg)
        fmt = detect_format(source, override=format)
        manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "name": name,
            "format": fmt,
            "files": [{"path": rel, "size": p.stat().st_size, "sha256": _sha256(p)} for rel, p in files.items()],
            "checksum": tree_checksum(source),
            "signature": signature_to_json(as_signature(signature)),
            "created_at": now_iso(),
            "tags": {str(k): str(v) for k, v in (tags or {}).items()},
        }
        if source.is_file():
            manifest["model_file"] = source.name
        elif model_file is not None:
            named = Path(safe_join(str(source), model_file, what=f"model_file of {name!r}"))
            if not named.is_file():
                msg = f"cannot publish {source}: model_file {model_file!r} is not a file in it"
                raise ArtifactError(msg)
            manifest["model_file"] = model_file
            manifest["checksum"] = tree_checksum(named)
        with self._storage(f"publish a version of {name!r}"):
            if self.is_local:
                os.makedirs(self._path(name), exist_ok=True)
            number = self._reserve_version(name, version)
            manifest["version"] = number
            try:
                for rel, local in files.items():
                    if self.is_local:
                        os.makedirs(os.path.dirname(self._path(name, number, *rel.split("/"))), exist_ok=True)
                    self.fs.put_file(str(local), self._path(name, number, *rel.split("/")))
                self._write_json(self._path(name, number, MANIFEST), manifest)
            except BaseException:
                if self.is_local:
                    shutil.rmtree(self._path(name, number), ignore_errors=True)
                raise
        ref = ModelRef(raw=f"models:/{name}/{number}", name=name, version=number)
        return self._describe(name, number, ref, self._model_state(name))

    def promote(self, name: str, version: str, *, alias: str | None = None, stage: str | None = None) -> ModelVersion:
        """Points ``alias`` at ``version`` and/or moves ``version`` into ``stage``.

        A stage holds one version: the version that held it before is moved to ``Archived``.
        ``stage="None"`` takes the version out of any stage.
        """
        validate_name(name)
        number = validate_version(version)
        if alias is None and stage is None:
            msg = "promote needs an alias, a stage or both"
            raise ValueError(msg)
        if alias is not None:
            validate_name(alias, what="alias")
        if stage is not None:
            validate_name(stage, what="stage")
        self._check_root()
        with self._storage(f"promote {name!r} version {number}"), self._model_lock(name):
            versions = self._visible_versions(name)
            if number not in versions:
                ref = ModelRef(raw=f"models:/{name}/{number}", name=name, version=number)
                self.resolve(ref)  # raises, naming the models or the model's versions and aliases
            state = self._model_state(name)
            aliases, stages = state["aliases"], state["stages"]
            if alias is not None:
                aliases[alias] = number
            if stage is not None:
                if stage.lower() == "none":
                    stages.pop(number, None)
                else:
                    for other, held in list(stages.items()):
                        if other != number and stage_matches(held, stage):
                            stages[other] = ARCHIVED
                    stages[number] = stage
            document = {
                "format_version": FORMAT_VERSION,
                "name": name,
                "aliases": dict(sorted(aliases.items())),
                "stages": dict(sorted(stages.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0)),
                "revision": state["revision"] + 1,
                "updated_at": now_iso(),
            }
            self._write_json(self._path(name, MODEL_MANIFEST), document)
        ref = ModelRef(raw=f"models:/{name}/{number}", name=name, version=number)
        return self._describe(name, number, ref, self._model_state(name))

    def delete_alias(self, name: str, alias: str) -> None:
        validate_name(name)
        validate_name(alias, what="alias")
        with self._storage(f"delete alias {alias!r} of {name!r}"), self._model_lock(name):
            state = self._model_state(name)
            if state["aliases"].pop(alias, None) is None:
                return
            document = {
                "format_version": FORMAT_VERSION,
                "name": name,
                "aliases": state["aliases"],
                "stages": state["stages"],
                "revision": state["revision"] + 1,
                "updated_at": now_iso(),
            }
            self._write_json(self._path(name, MODEL_MANIFEST), document)

    # -- the JSON index the HTTP registry reads -------------------------------------------------

    def index(self) -> dict[str, Any]:
        """Every visible model and version as the HTTP registry's index; file URLs are relative."""
        models: dict[str, Any] = {}
        for name in self.list_models():
            state = self._model_state(name)
            versions = {}
            for number in self._visible_versions(name):
                try:
                    versions[number] = self._index_entry(name, number, state)
                except (MlAssetsError, OSError, KeyError, TypeError, ValueError) as exc:
                    # One bad version is left out (and said so), the rest of the registry is served.
                    log.warning("%s: leaving model %r version %s out of the index: %s", self.where, name, number, exc)
            aliases = {a: v for a, v in state["aliases"].items() if v in versions}
            models[name] = {"aliases": aliases, "versions": versions}
        return {"format_version": FORMAT_VERSION, "models": models}

    def _index_entry(self, name: str, number: str, state: Mapping[str, Any]) -> dict[str, Any]:
        """One version as the index lists it, once every path it names is proven to lie inside the
        root (real locations: a file that is a link to outside is refused)."""
        manifest = self._manifest(name, number)
        if manifest is None:
            msg = "its manifest vanished"
            raise ArtifactError(msg)
        self._describe(name, number, ModelRef(raw=f"models:/{name}/{number}", name=name, version=number), state)
        entry = {k: manifest.get(k) for k in ("format", "checksum", "signature", "created_at", "tags")}
        if manifest.get("model_file"):
            entry["model_file"] = manifest["model_file"]
        if state["stages"].get(number):
            entry["stage"] = state["stages"][number]
        entry["files"] = []
        for f in manifest["files"]:
            rel = safe_relative_path(f["path"])
            self._path(name, number, rel)
            entry["files"].append({**f, "url": "/".join([name, number, rel])})
        return entry

    def open_file(self, name: str, version: str, rel: str) -> Any:
        """An open binary file of a published version (for serving); refuses anything else."""
        validate_name(name)
        validate_version(version)
        manifest = self._manifest(name, version)
        if manifest is None or rel not in {f["path"] for f in manifest["files"]}:
            raise FileNotFoundError(f"{name}/{version}/{rel}")
        return self.fs.open(self._path(name, version, safe_relative_path(rel)), "rb")

    # -- helpers -----------------------------------------------------------------------------

    def _describe(self, name: str, number: str, ref: ModelRef, state: Mapping[str, Any]) -> ModelVersion:
        manifest = self._manifest(name, number)
        if manifest is None:
            raise ModelNotFoundError(f"model {name!r} version {number} in {self.where} is not (completely) published")
        return version_from_manifest(
            manifest,
            artifact_uri=self._uri(name, number),
            registry=self.registry_id,
            ref=ref.raw,
            aliases=state["aliases"],
            stages=state["stages"],
        )

    def _reserve_version(self, name: str, asked: str | None) -> str:
        """A version folder of our own: ``mkdir`` is atomic on local disks and NFS."""
        if asked is not None:
            number = validate_version(asked)
            if self.fs.exists(self._path(name, number)) and self.fs.ls(self._path(name, number)):
                msg = f"model {name!r} version {number} already exists in {self.where}"
                raise ArtifactError(msg)
            if self.is_local:
                os.makedirs(self._path(name, number), exist_ok=True)
            return number
        existing = [int(v) for v in self._children(name) if v.isdigit()]
        candidate = max(existing, default=0) + 1
        if not self.is_local:
            return str(candidate)  # object stores have no atomic mkdir: one publisher at a time
        for _ in range(1000):
            try:
                os.mkdir(self._path(name, str(candidate)))
                return str(candidate)
            except FileExistsError:
                candidate += 1
        msg = f"cannot find a free version number for {name!r} in {self.where}"
        raise ArtifactError(msg)

    def _write_json(self, path: str, document: Mapping[str, Any]) -> None:
        payload = (json.dumps(document, indent=1, sort_keys=False) + "\n").encode()
        if not self.is_local:
            self.fs.pipe_file(path, payload)  # one PUT: the object is replaced whole
            return
        folder = os.path.dirname(path)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    @contextlib.contextmanager
    def _model_lock(self, name: str) -> Iterator[None]:
        if not self.is_local:
            yield
            return
        from filelock import FileLock

        os.makedirs(self._path(name), exist_ok=True)
        with FileLock(self._path(name, f".{MODEL_MANIFEST}.lock"), timeout=60):
            yield


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_file(version: ModelVersion, path: Path, rel: str, entry: Mapping[str, Any]) -> None:
    """Per-file size and hash from the manifest, so a bad file is named, not just the version."""
    size, sha = entry.get("size"), entry.get("sha256")
    if size is not None and path.stat().st_size != int(size):
        msg = f"{version.describe()}: file {rel!r} has {path.stat().st_size} bytes, the manifest records {size}"
        raise ArtifactError(msg)
    if sha and _sha256(path) != sha:
        msg = f"{version.describe()}: file {rel!r} does not match the sha256 its manifest records"
        raise ArtifactError(msg)


__all__ = ["FileRegistry", "validate_name"]
