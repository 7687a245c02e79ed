"""Small helpers shared by the in-process runtimes."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa

from ml_assets.resources.core.errors import ModelLoadError
from ml_assets.resources.core.models import ModelVersion


def available_cores() -> int:
    """Cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def resolve_parallelism(requested: int | None, *, what: str) -> int:
    if requested is None:
        return available_cores()
    if requested < 1:
        msg = f"{what} must be >= 1, got {requested}"
        raise ValueError(msg)
    return requested


def find_model_file(path: Path, suffixes: Iterable[str], version: ModelVersion) -> Path:
    """The model file at ``path``: the file itself, or the one file with a matching suffix in the folder.

    A registry may name the file through ``version.extra["model_file"]`` (relative to the folder).
    """
    path = Path(path)
    suffixes = tuple(s.lower() for s in suffixes)
    if path.is_file():
        return path
    if not path.is_dir():
        msg = f"{version.describe()}: model path {path} does not exist"
        raise ModelLoadError(msg)
    named = version.extra.get("model_file")
    if named:
        candidate = path / named
        if not candidate.is_file():
            msg = f"{version.describe()}: the registry names model file {named!r}, not found in {path}"
            raise ModelLoadError(msg)
        return candidate
    found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if len(found) == 1:
        return found[0]
    listed = ", ".join(p.relative_to(path).as_posix() for p in found[:10]) or "none"
    msg = (
        f"{version.describe()}: expected exactly one {'/'.join(suffixes)} file in {path}, found {len(found)}"
        f" ({listed}); name it with the version's extra 'model_file'"
    )
    raise ModelLoadError(msg)


def empty_batch(schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array([], f.type) for f in schema], schema=schema)
