"""Model environments: a model's recorded requirements installed once into a cached virtualenv.

MLflow records what a model needs beside ``MLmodel`` (``requirements.txt``, ``python_env.yaml``).
``EnvironmentStore.ensure`` installs those requirements with uv (or the standard library's venv
and pip where uv is absent) into ``<root>/<key>``, where ``key`` is a content hash of the
requirements, the interpreter's version and the index settings: every later run, process and
partition on the machine that asks for the same content gets the same environment, built once.

One file lock per key serialises concurrent first builds (one builds, the others wait and reuse
it). An environment counts as built only once its marker file (written last) exists: a build
that fails is deleted and names the requirement that failed; a build killed half-way leaves a
folder without a marker, which the next build removes before starting again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from filelock import FileLock, Timeout

from ml_assets.resources.core.cache import default_cache_dir
from ml_assets.resources.core.errors import EnvironmentBuildError, ModelLoadError
from ml_assets.resources.core.http import redact

logger = logging.getLogger(__name__)

EnvManager = Literal["local", "uv", "virtualenv"]
ENV_MANAGERS: tuple[str, ...] = ("local", "uv", "virtualenv")
MARKER = ".ml-assets-env.json"
# What the worker itself imports inside the environment (Arrow IPC with the scoring core).
WORKER_REQUIREMENTS = ("pyarrow",)
_PYTHON_LINE = re.compile(r"^python:\s*['\"]?(?P<version>[0-9]+\.[0-9]+)(?:\.[0-9]+)?['\"]?\s*$", re.MULTILINE)
_FAILURE_HINTS = (
    "not found",
    "no version",
    "no solution",
    "satisfies the requirement",
    "no matching distribution",
    "failed to",
    "error",
)


class EnvironmentMismatchWarning(UserWarning):
    """The model was logged with a Python version this host cannot provide."""


@dataclass(frozen=True)
class IndexSettings:
    """Where environments install from: pip's ``--index-url`` / ``--extra-index-url`` / ``--find-links``."""

    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()

    @classmethod
    def of(
        cls,
        index_url: str | None = None,
        extra_index_urls: str | Sequence[str] = (),
        find_links: str | Sequence[str] = (),
    ) -> IndexSettings:
        """From runtime options; a string (as the CLI's ``--option`` gives) may hold several URLs, comma-separated."""

        def urls(value: str | Sequence[str]) -> tuple[str, ...]:
            items = value.split(",") if isinstance(value, str) else value
            return tuple(u.strip() for u in items if u and u.strip())

        return cls(index_url or None, urls(extra_index_urls), urls(find_links))

    def arguments(self) -> list[str]:
        args: list[str] = []
        if self.index_url:
            args += ["--index-url", self.index_url]
        for url in self.extra_index_urls:
            args += ["--extra-index-url", url]
        for url in self.find_links:
            args += ["--find-links", url]
        return args

    def secrets(self) -> list[str]:
        return [u for u in (self.index_url, *self.extra_index_urls, *self.find_links) if u]


@dataclass(frozen=True)
class EnvironmentSpec:
    """What an environment holds: requirement lines (as pip reads them) and the Python version."""

    requirements: tuple[str, ...]
    python: str
    """``major.minor`` of the interpreter the environment runs."""
    index: IndexSettings = field(default_factory=IndexSettings)

    @property
    def key(self) -> str:
        content = {
            "requirements": sorted(self.requirements),
            "python": self.python,
            "index": [self.index.index_url, list(self.index.extra_index_urls), list(self.index.find_links)],
        }
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class ModelEnvironment:
    """A ready environment: its folder and the interpreter that runs the model's workers."""

    path: Path
    python: Path
    key: str
    built: bool = False
    """True when this call built it; False when it was reused (or prebuilt)."""
    build_seconds: float = 0.0


def model_requirements(model_dir: Path, *, what: str) -> tuple[list[str], str | None]:
    """The requirement lines recorded beside ``MLmodel`` and the recorded Python ``major.minor``.

    A model's files come from outside: a line that is a pip option (``--index-url``, ``-e``,
    ``-r``) could point the install anywhere, so it is refused; index settings are the caller's.
    """
    from packaging.requirements import InvalidRequirement, Requirement

    model_dir = Path(model_dir)
    req_file = model_dir / "requirements.txt"
    if not req_file.is_file():
        msg = f"{what}: {model_dir} records no requirements.txt; a model environment needs one"
        raise ModelLoadError(msg)
    lines = []
    for number, raw in enumerate(req_file.read_text().splitlines(), start=1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            msg = (
                f"{what}: requirements.txt line {number} is a pip option ({line[:80]!r}); "
                "a model's requirements must be package names with versions (index settings are the runtime's options)"
            )
            raise ModelLoadError(msg)
        try:
            Requirement(line)
        except InvalidRequirement as exc:
            msg = f"{what}: requirements.txt line {number} is not a requirement ({line[:80]!r}): {exc}"
            raise ModelLoadError(msg) from exc
        lines.append(line)
    python = None
    env_file = model_dir / "python_env.yaml"
    if env_file.is_file():
        match = _PYTHON_LINE.search(env_file.read_text())
        python = match["version"] if match else None
    return lines, python


def requirement_name(line: str) -> str:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    return canonicalize_name(Requirement(line).name)


def with_worker_requirements(lines: Sequence[str]) -> list[str]:
    """``lines`` plus what the worker imports, unless the model names it already (its pin wins)."""
    named = {requirement_name(line) for line in lines}
    return [*lines, *(r for r in WORKER_REQUIREMENTS if r not in named)]


def host_interpreter(version: str | None, *, what: str) -> tuple[Path, str]:
    """An interpreter of ``version`` (``major.minor``) on this host and its version; this process's own
    interpreter, with a warning, when the host has none of that version."""
    own = f"{sys.version_info.major}.{sys.version_info.minor}"
    base = Path(getattr(sys, "_base_executable", None) or sys.executable)
    if version is None or version == own:
        return base, own
    found = shutil.which(f"python{version}")
    if found:
        return Path(found), version
    warnings.warn(
        f"{what} was logged with Python {version}; this host has none, its environment runs Python {own}",
        EnvironmentMismatchWarning,
        stacklevel=3,
    )
    return base, own


def uv_binary() -> str | None:
    """uv from its Python package (the [pyfunc] extra), else from PATH."""
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


def default_env_dir() -> Path:
    configured = os.environ.get("ML_ASSETS_ENV_DIR")
    return Path(configured).expanduser() if configured else default_cache_dir() / "envs"


def prebuilt_environment(path: str | Path, *, what: str) -> ModelEnvironment:
    """An environment someone built already: its folder (with ``bin/python``) or its interpreter."""
    given = Path(path).expanduser()
    python = given / "bin" / "python" if given.is_dir() else given
    if not python.is_file():
        msg = f"{what}: the prebuilt environment {given} has no interpreter (expected {python})"
        raise ModelLoadError(msg)
    root = python.parent.parent
    return ModelEnvironment(path=root, python=python, key="prebuilt")


def model_environment(
    model_dir: Path,
    *,
    what: str,
    env_manager: EnvManager,
    env_path: str | Path | None = None,
    env_dir: str | Path | None = None,
    index: IndexSettings | None = None,
) -> ModelEnvironment | None:
    """The environment a runtime scores ``model_dir`` in: None for ``local`` (this process), the
    prebuilt one at ``env_path``, else the model's own, built at the first call on this machine."""
    if env_manager not in ENV_MANAGERS:
        msg = f"env_manager must be one of {', '.join(ENV_MANAGERS)}, got {env_manager!r}"
        raise ValueError(msg)
    if env_path is not None:
        return prebuilt_environment(env_path, what=what)
    if env_manager == "local":
        return None
    return EnvironmentStore(env_dir, manager=env_manager, index=index).for_model(model_dir, what=what)


class EnvironmentStore:
    """Environments under ``root`` (default ``$ML_ASSETS_ENV_DIR`` or ``<cache dir>/envs``), one per key."""

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        manager: Literal["uv", "virtualenv"] = "uv",
        index: IndexSettings | None = None,
        build_timeout_s: float = 1800.0,
    ) -> None:
        if manager not in ("uv", "virtualenv"):
            msg = f"manager must be 'uv' or 'virtualenv', got {manager!r}"
            raise ValueError(msg)
        self.root = Path(root).expanduser() if root else default_env_dir()
        self.manager = manager
        self.index = index or IndexSettings()
        self.build_timeout_s = build_timeout_s

    def for_model(self, model_dir: Path, *, what: str) -> ModelEnvironment:
        """The environment of the model in ``model_dir``, built at the first call on this machine."""
        lines, recorded_python = model_requirements(model_dir, what=what)
        return self.ensure(with_worker_requirements(lines), python=recorded_python, what=what)

    def ensure(self, requirements: Sequence[str], *, python: str | None = None, what: str) -> ModelEnvironment:
        """The environment holding ``requirements`` (and Python ``python``, where the host has it)."""
        interpreter, version = host_interpreter(python, what=what)
        spec = EnvironmentSpec(tuple(requirements), version, self.index)
        target = self.root / spec.key
        ready = self._ready(target, spec)
        if ready is not None:
            return ready
        self.root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.root / f"{spec.key}.lock"), timeout=self.build_timeout_s)
        try:
            with lock:
                ready = self._ready(target, spec)  # another process built it while this one waited
                if ready is not None:
                    return ready
                return self._build(target, spec, interpreter, what=what)
        except Timeout:
            msg = f"{what}: waited {self.build_timeout_s:.0f} s for another process to build environment {target}"
            raise EnvironmentBuildError(msg) from None

    def _ready(self, target: Path, spec: EnvironmentSpec) -> ModelEnvironment | None:
        python = target / "bin" / "python"
        if (target / MARKER).is_file() and python.exists():
            return ModelEnvironment(path=target, python=python, key=spec.key)
        return None

    def _build(self, target: Path, spec: EnvironmentSpec, interpreter: Path, *, what: str) -> ModelEnvironment:
        if target.exists():  # a build killed half-way: never used, removed before starting again
            shutil.rmtree(target)
        started = time.monotonic()
        logger.info("%s: building its environment %s (%s)", what, target, self.manager)
        try:
            self._install(target, spec, interpreter, what=what)
            seconds = time.monotonic() - started
            facts = {
                "requirements": list(spec.requirements),
                "python": spec.python,
                "manager": self.manager,
                "build_seconds": round(seconds, 3),
                "built_by_pid": os.getpid(),
                "built_at": time.time(),
            }
            (target / MARKER).write_text(json.dumps(facts, indent=2))
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        logger.info("%s: environment %s built in %.1f s", what, target, seconds)
        python = target / "bin" / "python"
        return ModelEnvironment(path=target, python=python, key=spec.key, built=True, build_seconds=seconds)

    def _install(self, target: Path, spec: EnvironmentSpec, interpreter: Path, *, what: str) -> None:
        requirements_file = target / "requirements.txt"  # inside the folder: deleted with it if the build fails
        python = str(target / "bin" / "python")
        if self.manager == "uv" and uv_binary() is None:
            logger.warning("%s: uv is not installed; building its environment with venv and pip", what)
        if self.manager == "uv" and uv_binary() is not None:
            uv = str(uv_binary())
            # Never download an interpreter (the host's own, or the fallback chosen above); no uv.toml
            # of the working directory: the index settings are this store's. No --compile-bytecode: it
            # compiles every module of every package (minutes); the first worker's imports write the
            # bytecode of what they use, once, into the environment.
            env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_NO_CONFIG": "1", "VIRTUAL_ENV": str(target)}
            self._run([uv, "venv", "--quiet", "--python", str(interpreter), str(target)], env, spec, what=what)
            requirements_file.write_text("\n".join(spec.requirements) + "\n")
            install = [uv, "pip", "install", "--python", python, "-r", str(requirements_file)]
            self._run([*install, *self.index.arguments()], env, spec, what=what)
        else:
            env = dict(os.environ)
            self._run([str(interpreter), "-m", "venv", str(target)], env, spec, what=what)
            requirements_file.write_text("\n".join(spec.requirements) + "\n")
            pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "-q", "-r", str(requirements_file)]
            self._run([*pip, *self.index.arguments()], env, spec, what=what)

    def _run(self, command: list[str], env: dict[str, str], spec: EnvironmentSpec, *, what: str) -> None:
        try:
            done = subprocess.run(
                command, env=env, capture_output=True, text=True, timeout=self.build_timeout_s, check=False
            )
        except subprocess.TimeoutExpired:
            msg = f"{what}: building its environment took longer than {self.build_timeout_s:.0f} s; nothing was kept"
            raise EnvironmentBuildError(msg) from None
        if done.returncode == 0:
            return
        output = redact(f"{done.stderr}\n{done.stdout}", self.index.secrets())
        failed = failed_requirements(output, spec.requirements)
        tail = "\n".join(line for line in output.strip().splitlines()[-12:] if line.strip())
        named = f"requirement {', '.join(repr(r) for r in failed)}" if failed else "a requirement"
        msg = (
            f"{what}: {self.manager} could not install {named} into its environment (exit code {done.returncode}); "
            f"nothing was kept. {self.manager} said:\n{tail[-3000:]}"
        )
        raise EnvironmentBuildError(msg)


def failed_requirements(output: str, requirements: Sequence[str]) -> list[str]:
    """The requirement lines that the installer's complaint lines name (by normalized package name)."""
    complaints = [
        line.lower().replace("_", "-")
        for line in output.splitlines()
        if any(hint in line.lower() for hint in _FAILURE_HINTS)
    ]
    found = []
    for line in requirements:
        name = requirement_name(line)
        if any(re.search(rf"(?<![a-z0-9.\-]){re.escape(name)}(?![a-z0-9\-])", c) for c in complaints):
            found.append(line)
    return found


__all__ = [
    "ENV_MANAGERS",
    "EnvManager",
    "EnvironmentMismatchWarning",
    "EnvironmentSpec",
    "EnvironmentStore",
    "IndexSettings",
    "ModelEnvironment",
    "model_environment",
    "model_requirements",
    "prebuilt_environment",
]
