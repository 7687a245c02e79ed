"""The one place where a name from outside becomes a path: partition values, manifest and index
entries (``model_file``, ``files[].path``), version strings, aliases, cache and staging paths.

``safe_join(root, *parts)`` is a join that proves containment, as pip's archive extraction and
Werkzeug's ``safe_join`` do: every part must be relative and free of ``..``, ``.``, empty
segments, backslashes and NUL, and the joined path must still lie inside ``root``. On local disk
the proof is made on real locations (symlinks followed), so a link inside the root that points
outside is refused too; on fsspec object stores (no symlinks) it is made on the normalized key.
"""

from __future__ import annotations

import os
import posixpath
from typing import Literal

from ml_assets.resources.core.errors import UnsafePathError

_LOCAL_SCHEMES = ("file://", "local://")


def is_local(root: str) -> bool:
    return "://" not in root or root.startswith(_LOCAL_SCHEMES)


def check_segment(value: object, *, what: str) -> str:
    """``value`` if it is usable as ONE path segment (a partition value, a version, an alias);
    else UnsafePathError naming ``what``."""
    text = value if isinstance(value, str) else None
    problem = None
    if text is None:
        problem = f"expected a string, got {type(value).__name__}"
    elif text in ("", ".", ".."):
        problem = "empty, '.' and '..' are not names"
    elif "/" in text or "\\" in text:
        problem = "it holds a path separator"
    elif "\0" in text or any(ord(c) < 32 for c in text):
        problem = "it holds a NUL or control character"
    elif len(text) > 255:
        problem = f"it is {len(text)} characters long (at most 255)"
    if problem is not None:
        msg = f"unsafe {what} {str(value)[:80]!r}: {problem}"
        raise UnsafePathError(msg)
    return text  # type: ignore[return-value]


def check_relative(value: object, *, what: str) -> str:
    """``value`` if it is a relative POSIX path (``a/b.onnx``) whose every segment passes
    ``check_segment``; refuses absolute paths, drive letters and ``..`` anywhere."""
    if not isinstance(value, str) or not value:
        msg = f"unsafe {what} {str(value)[:80]!r}: expected a relative path"
        raise UnsafePathError(msg)
    if value.startswith("/") or (len(value) > 1 and value[1] == ":"):
        msg = f"unsafe {what} {value[:80]!r}: it is absolute; expected a path relative to its folder"
        raise UnsafePathError(msg)
    for segment in value.split("/"):
        check_segment(segment, what=what)
    return value


def safe_join(
    root: str, *parts: str, what: str = "path", filesystem: Literal["auto", "local", "object_store"] = "auto"
) -> str:
    """``root/part/...`` once proven to lie inside ``root``; else UnsafePathError.

    ``root`` is trusted (it comes from our own configuration); each of ``parts`` is not, and may
    hold several segments (``a/b``). Local roots are compared on real paths, following links.
    ``filesystem`` says what a scheme-less root is (fsspec strips ``s3://`` from its paths);
    ``auto`` takes a root without a scheme, or with ``file://``, as local.
    """
    for part in parts:
        check_relative(part, what=what)
    joined = "/".join([root.rstrip("/") or "/", *parts]) if parts else root
    local = is_local(root) if filesystem == "auto" else filesystem == "local"
    if local:
        prefix = next((s for s in _LOCAL_SCHEMES if root.startswith(s)), "")
        real_root = os.path.realpath(root.removeprefix(prefix) or "/")
        real = os.path.realpath(joined.removeprefix(prefix))
        inside = real == real_root or real.startswith(real_root.rstrip("/") + "/")
    else:
        key_root = root.partition("://")[2].rstrip("/") if "://" in root else root.rstrip("/")
        key = posixpath.normpath(joined.partition("://")[2] if "://" in joined else joined)
        inside = key == key_root or key.startswith(key_root + "/")
    if not inside:
        msg = f"unsafe {what} {'/'.join(parts)[:120]!r}: it resolves outside {root}"
        raise UnsafePathError(msg)
    return joined


def check_tree(folder: str, *, what: str) -> None:
    """Every entry under the local ``folder`` is a regular file or folder, none a symlink:
    a downloaded artifact must not point anywhere else on this machine."""
    for dirpath, dirnames, filenames in os.walk(folder):
        for entry in (*dirnames, *filenames):
            full = os.path.join(dirpath, entry)
            if os.path.islink(full):
                rel = os.path.relpath(full, folder)
                msg = f"unsafe {what}: {rel!r} is a symbolic link; artifacts must hold only regular files"
                raise UnsafePathError(msg)


__all__ = ["check_relative", "check_segment", "check_tree", "is_local", "safe_join"]
