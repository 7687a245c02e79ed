"""One JVM per process, shared by the JVM-backed runtimes (PMML, H2O MOJO), reached through JPype.

Why JPype: the JVM lives in this process, so a batch crosses as one copy of a numpy buffer
into a Java ``double[]`` (no JSON, no CSV, no socket), and JPype releases the GIL for the
duration of each Java call, so Java threads score while Python reads and writes Parquet.

Each runtime gets its own class loader over its jars (pypmml's jars, the H2O jar) plus a
small helper class of ours, so libraries with clashing dependencies never meet. The helper
sources ship in ``resources/runtimes/java/`` and are compiled with ``javac`` at first use into the
artifact cache (keyed by the hash of the sources and jars), under a file lock, then renamed
into place so concurrent processes never see half a build.

``ML_ASSETS_JVM_OPTIONS`` (space separated) replaces the default JVM options.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ml_assets.resources.core.errors import ModelLoadError

JAVA_SOURCES = Path(__file__).parent / "java"
DEFAULT_JVM_OPTIONS = ("-Xmx1g", "-XX:+UseSerialGC", "-Xss8m")
_JAVAC_TIMEOUT_S = 300.0
_lock = threading.Lock()
_loaders: dict[tuple[str, ...], Any] = {}


def _jpype() -> Any:
    try:
        import jpype
    except ImportError as exc:
        msg = "the PMML and H2O MOJO runtimes need JPype; install the extra: pip install 'dagster-ml-assets[jvm]'"
        raise ModelLoadError(msg) from exc
    return jpype


def jvm_options() -> list[str]:
    configured = os.environ.get("ML_ASSETS_JVM_OPTIONS")
    return configured.split() if configured else list(DEFAULT_JVM_OPTIONS)


def ensure_jvm() -> Any:
    """The ``jpype`` module with the JVM started (once per process)."""
    jpype = _jpype()
    with _lock:
        if not jpype.isJVMStarted():
            java_home = os.environ.get("JAVA_HOME")
            if java_home is None and shutil.which("java") is None:
                msg = "no Java found: the PMML and H2O MOJO runtimes need Java 11+ on PATH or JAVA_HOME set"
                raise ModelLoadError(msg)
            try:
                jpype.startJVM(*jvm_options(), convertStrings=False)
            except (OSError, RuntimeError) as exc:
                msg = f"could not start the JVM ({exc}); check JAVA_HOME and ML_ASSETS_JVM_OPTIONS"
                raise ModelLoadError(msg) from exc
    return jpype


def _sources(names: Sequence[str]) -> list[Path]:
    return [JAVA_SOURCES / "mlassets" / f"{name}.java" for name in names]


def _build_key(sources: Sequence[Path], jars: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for source in sources:
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    for jar in jars:
        stat = jar.stat()
        digest.update(f"{jar.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def compiled_classes(helper_names: Sequence[str], jars: Sequence[Path], *, cache_root: Path | None = None) -> Path:
    """A folder of compiled helper classes, built once per (sources, jars) and reused."""
    from filelock import FileLock, Timeout

    from ml_assets.resources.core.cache import default_cache_dir

    sources = _sources(helper_names)
    root = (cache_root or default_cache_dir()) / "jvm-classes"
    final = root / _build_key(sources, jars)
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    javac = shutil.which("javac") or (
        str(Path(os.environ["JAVA_HOME"]) / "bin" / "javac") if os.environ.get("JAVA_HOME") else None
    )
    if javac is None or not Path(javac).exists():
        msg = "no javac found: a JDK (11+) is needed once to compile the JVM runtimes' helper classes"
        raise ModelLoadError(msg)
    try:
        with FileLock(str(final) + ".lock", timeout=_JAVAC_TIMEOUT_S):
            if final.is_dir():
                return final
            staging = root / f".{final.name}.{uuid.uuid4().hex}"
            cmd = [javac, "-nowarn", "-d", str(staging), "-cp", os.pathsep.join(str(j) for j in jars)]
            cmd += ["--release", "11", *[str(s) for s in sources]]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=_JAVAC_TIMEOUT_S, check=False)
            except subprocess.TimeoutExpired as exc:
                shutil.rmtree(staging, ignore_errors=True)
                msg = f"javac did not finish within {_JAVAC_TIMEOUT_S:.0f} s compiling {', '.join(helper_names)}"
                raise ModelLoadError(msg) from exc
            if done.returncode != 0:
                shutil.rmtree(staging, ignore_errors=True)
                msg = f"javac failed compiling {', '.join(helper_names)}: {done.stderr.strip()[-2000:]}"
                raise ModelLoadError(msg)
            staging.rename(final)
    except Timeout as exc:
        msg = f"timed out waiting for another process compiling the JVM helper classes in {root}"
        raise ModelLoadError(msg) from exc
    return final


def helper_class(class_name: str, helper_names: Sequence[str], jars: Sequence[Path]) -> Any:
    """The JPype class ``mlassets.<class_name>`` loaded over ``jars`` in its own class loader."""
    jars = [Path(j) for j in jars]
    missing = [str(j) for j in jars if not j.is_file()]
    if missing:
        msg = f"JVM runtime jar(s) not found: {', '.join(missing)}"
        raise ModelLoadError(msg)
    classes = compiled_classes(helper_names, jars)
    jpype = ensure_jvm()
    key = (str(classes), *map(str, jars))
    with _lock:
        loader = _loaders.get(key)
        if loader is None:
            url_class = jpype.JClass("java.net.URL")
            # A folder's URL must end in "/" or URLClassLoader reads it as a jar.
            urls = [url_class(classes.resolve().as_uri() + "/")] + [url_class(j.resolve().as_uri()) for j in jars]
            url_loader = jpype.JClass("java.net.URLClassLoader")
            # Parent: the platform loader, so nothing on the JVM's own classpath leaks in.
            parent = jpype.JClass("java.lang.ClassLoader").getPlatformClassLoader()
            loader = url_loader(jpype.JArray(url_class)(urls), parent)
            _loaders[key] = loader
    return jpype.JClass(f"mlassets.{class_name}", loader=loader)


def java_error_message(exc: BaseException) -> str:
    """A one-line description of a Java exception raised through JPype."""
    message = getattr(exc, "message", None)
    text = message() if callable(message) else str(exc)
    java_class = getattr(exc, "getClass", None)
    name = java_class().getName() if callable(java_class) else type(exc).__name__
    return f"{name}: {text}"


def direct_buffer(array: Any) -> Any:
    """A ``java.nio.ByteBuffer`` over a C-contiguous, writable numpy array's memory (no copy).

    The array must stay alive (and unresized) until the Java call using the buffer returns.
    """
    ensure_jvm()
    import jpype.nio

    if not array.flags.c_contiguous or not array.flags.writeable:
        msg = "direct_buffer needs a C-contiguous, writable array"
        raise ValueError(msg)
    return jpype.nio.convertToDirectBuffer(memoryview(array).cast("B"))


class DirectArrays:
    """Reusable float64 numpy buffers, each with the direct ``ByteBuffer`` Java sees it through.

    A ``ByteBuffer`` made by JPype keeps its numpy memory alive until the JVM collects it, and
    a JVM that allocates little collects rarely: fresh buffers per batch would pile up in RSS.
    So each named buffer is allocated once (grown when a batch needs more) and reused; callers
    copy results out before the next call and serialize calls.
    """

    def __init__(self) -> None:
        self._arrays: dict[str, tuple[Any, Any]] = {}

    def get(self, name: str, shape: tuple[int, ...]) -> tuple[Any, Any]:
        """(a C-contiguous float64 array of ``shape``, the ByteBuffer over its whole allocation)."""
        import numpy as np

        size = int(np.prod(shape))
        held = self._arrays.get(name)
        if held is None or held[0].size < size:
            backing = np.empty(max(size, 1), dtype=np.float64)
            held = (backing, direct_buffer(backing))
            self._arrays[name] = held
        return held[0][:size].reshape(shape), held[1]

    def clear(self) -> None:
        self._arrays.clear()
