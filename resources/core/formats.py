"""Which runtime a model needs: from its MLflow flavors, its file extension or its content.

``detect_format(path)`` answers one of ``onnx``, ``pmml``, ``h2o_mojo``, ``pyfunc``; a user's
explicit choice (``override``) always wins and is only checked against the known formats.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from ml_assets.resources.core.errors import ModelLoadError
from ml_assets.resources.core.models import MODEL_FORMATS

_BY_SUFFIX = {".onnx": "onnx", ".pmml": "pmml"}
# Flavors with a runtime of their own (the MLflow registry writes "pmml" and "h2o_mojo" flavors
# for model files it registers); any other flavor that has python_function goes to pyfunc.
_NATIVE_FLAVORS = {"onnx": "onnx", "pmml": "pmml", "h2o_mojo": "h2o_mojo"}


def _from_mlmodel(mlmodel: Path) -> str:
    import yaml

    try:
        meta = yaml.safe_load(mlmodel.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        msg = f"cannot read {mlmodel}: {exc}"
        raise ModelLoadError(msg) from exc
    flavors = meta.get("flavors") or {}
    for flavor, fmt in _NATIVE_FLAVORS.items():
        if flavor in flavors:
            return fmt
    if "python_function" in flavors:
        return "pyfunc"
    msg = f"{mlmodel} has flavors {sorted(flavors)}; none is loadable (no python_function flavor)"
    raise ModelLoadError(msg)


def _from_content(path: Path) -> str | None:
    with path.open("rb") as f:
        head = f.read(4096)
    if head[:2] == b"PK":
        try:
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
        except zipfile.BadZipFile:
            return None
        if "model.ini" in names:
            return "h2o_mojo"
        if "MLmodel" in names:
            return "pyfunc"
        return None
    text = head.lstrip(b"\xef\xbb\xbf").lstrip()
    if text.startswith(b"<") and b"<PMML" in head:
        return "pmml"
    # An ONNX ModelProto starts with field 1 (ir_version, varint): tag byte 0x08.
    if head[:1] == b"\x08" and (b"onnx" in head.lower() or b"pytorch" in head.lower() or b"skl2onnx" in head):
        return "onnx"
    return None


def detect_format(path: str | Path, *, override: str | None = None) -> str:
    """The model format at ``path`` (a model file or folder); ``override`` wins when given."""
    if override is not None:
        if override not in MODEL_FORMATS:
            msg = f"unknown model format {override!r}; known: {', '.join(MODEL_FORMATS)}"
            raise ModelLoadError(msg)
        return override
    path = Path(path)
    if path.is_dir():
        if (path / "MLmodel").is_file():
            return _from_mlmodel(path / "MLmodel")
        candidates = [p for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith(".")]
        formats = {fmt for p in candidates if (fmt := _detect_file(p)) is not None}
        if len(formats) == 1:
            return formats.pop()
        msg = f"cannot tell the model format of folder {path}: found {sorted(formats) or 'no model files'}"
        raise ModelLoadError(msg)
    if not path.is_file():
        msg = f"model path {path} does not exist"
        raise ModelLoadError(msg)
    if path.name == "MLmodel":
        return _from_mlmodel(path)
    fmt = _detect_file(path)
    if fmt is None:
        msg = f"cannot tell the model format of {path}; pass one of {', '.join(MODEL_FORMATS)} explicitly"
        raise ModelLoadError(msg)
    return fmt


def _detect_file(path: Path) -> str | None:
    by_content = _from_content(path)
    if by_content is not None:
        return by_content
    return _BY_SUFFIX.get(path.suffix.lower())


__all__ = ["detect_format"]
