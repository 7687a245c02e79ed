"""Workers in a model environment: a process of that environment's interpreter per worker.

``EnvWorker`` has the shape of the pyfunc runtime's in-environment worker (``conn`` with
``send_bytes``/``recv_bytes``/``poll``, ``process`` with ``pid``/``is_alive``/``exitcode``/``join``,
``kill``, ``stop``), so the same pool (timeouts, dead-worker reports, retries) drives both. The
worker runs ``_env_worker.py`` under ``python -I`` (no ``PYTHON*`` variables, no user site, not
the script's folder on ``sys.path``): only the environment's own packages are importable.
Batches go as Arrow IPC both ways; no pandas on this side.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from ml_assets.resources.core.envs import ModelEnvironment
from ml_assets.resources.core.errors import ModelLoadError, NativeUnsupportedError
from ml_assets.resources.core.models import ModelVersion

WORKER_SCRIPT = Path(__file__).with_name("_env_worker.py")
CLASSES_KEY = b"ml_assets.classes"


class _Process:
    """The part of ``multiprocessing.Process`` the pool uses, over a ``subprocess.Popen``."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid

    def is_alive(self) -> bool:
        return self._popen.poll() is None

    @property
    def exitcode(self) -> int | None:
        return self._popen.poll()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._popen.kill()

    def join(self, timeout: float | None = None) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(timeout)


class EnvWorker:
    """One worker process inside ``environment``, with the model loaded (``predictor`` pyfunc or native).

    ``params``: the pyfunc model's ``predict`` params, or for the native predictor what
    ``native.native_files`` read from the MLmodel (paths already proven to lie inside the model folder)."""

    def __init__(
        self,
        environment: ModelEnvironment,
        model_dir: Path,
        version: ModelVersion,
        *,
        predictor: Literal["pyfunc", "native"],
        threads: int,
        input_dtype: str,
        load_timeout_s: float,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        parent, child = socket.socketpair()
        self.conn = Connection(parent.detach())
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the worker; kill() closes it
        try:
            command = [str(environment.python), "-I", str(WORKER_SCRIPT), str(child.fileno()), predictor]
            popen = subprocess.Popen(
                [*command, str(model_dir), str(threads), input_dtype, json.dumps(dict(params or {}))],
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=self._log,
                cwd=environment.path,
            )
        except OSError as exc:
            self.conn.close()
            msg = f"{version.describe()}: cannot start a worker with {environment.python}: {exc}"
            raise ModelLoadError(msg) from exc
        finally:
            child.close()
        self.process = _Process(popen)
        self.output_schema: pa.Schema | None = None
        self.classes: list[object] | None = None
        self._handshake(version, environment, load_timeout_s)

    def _handshake(self, version: ModelVersion, environment: ModelEnvironment, load_timeout_s: float) -> None:
        where = f"a worker in environment {environment.path}"
        deadline = time.monotonic() + load_timeout_s
        while not self.conn.poll(0.2):
            if not self.process.is_alive() or time.monotonic() > deadline:
                alive = self.process.is_alive()
                self.kill()
                if alive:
                    msg = f"{version.describe()}: {where} did not load the model within {load_timeout_s:.0f} s"
                else:
                    msg = (
                        f"{version.describe()}: {where} exited (code {self.process.exitcode}) while loading the "
                        f"model: {self.log_tail()}"
                    )
                raise ModelLoadError(msg)
        try:
            reply = self.conn.recv_bytes()
        except (EOFError, OSError) as exc:
            self.kill()
            msg = f"{version.describe()}: {where} died while loading the model: {self.log_tail()}"
            raise ModelLoadError(msg) from exc
        if not reply.startswith(b"ok"):
            self.kill()
            reason = reply[2:].decode(errors="replace")
            msg = f"{version.describe()}: {where} could not load the model: {reason}"
            # _flavors.NativeUnsupported: a model only pyfunc scores, as in this process (NativeScorer)
            unsupported = reason.split(":", 1)[0].endswith(".NativeUnsupported")
            raise (NativeUnsupportedError if unsupported else ModelLoadError)(msg)
        if len(reply) > 2:
            schema = pa.ipc.read_schema(pa.py_buffer(reply[2:]))
            metadata = schema.metadata or {}
            if CLASSES_KEY in metadata:
                self.classes = json.loads(metadata[CLASSES_KEY])
            self.output_schema = schema.remove_metadata()

    def log_tail(self, limit: int = 2000) -> str:
        """The end of what the worker wrote to stdout/stderr (an import error, a crash report)."""
        with contextlib.suppress(OSError, ValueError):
            self._log.seek(0, os.SEEK_END)
            size = self._log.tell()
            self._log.seek(max(0, size - limit))
            return self._log.read().decode(errors="replace").strip() or "(no output)"
        return "(no output)"

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=10)
        self.conn.close()
        with contextlib.suppress(OSError):
            self._log.close()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send_bytes(b"")
        self.process.join(timeout=5)
        self.kill()


__all__ = ["EnvWorker"]
