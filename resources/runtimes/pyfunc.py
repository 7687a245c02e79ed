"""Any MLflow Python model, through ``mlflow.pyfunc.load_model``, with its signature enforced.

Two modes:

- ``isolation="none"``: the model is loaded in this process; ``threads`` score calls may run at
  once (worth more than 1 only for models that release the GIL).
- ``isolation="process"``: ``workers`` spawned processes each load the model once; a batch
  travels to a free worker as Arrow IPC over a pipe and back. A model that crashes, leaks or
  holds the GIL cannot take the run down: a dead or hung worker is reported with the rows it
  was scoring, and, with ``on_worker_failure="retry"``, replaced and given that batch again
  (at most ``max_retries`` times) before the run fails.

With ``env_manager="uv"`` (or ``"virtualenv"``), or ``env_path`` naming a prebuilt environment,
the model's recorded requirements are installed into an environment of their own (built once per
machine, ``ml_assets.resources.core.envs``) and the workers run that environment's interpreter:
this process needs none of the model's libraries.

The model's signature fixes the input columns (and types) and, where it names them, the
outputs; MLflow enforces it on every ``predict``. When the model's recorded requirements
(``requirements.txt`` beside ``MLmodel``) pin versions other than the installed ones, a
warning names the packages.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import queue
import threading
import time
import traceback
import warnings
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from ml_assets.resources.core.envs import ENV_MANAGERS, EnvManager, IndexSettings, ModelEnvironment, model_environment
from ml_assets.resources.core.errors import ModelLoadError, RowsRejectedError, ScoringError
from ml_assets.resources.core.models import ModelVersion
from ml_assets.resources.core.predictions import Naming, OutputMap, bare_matrix_map, check_naming, identity_map
from ml_assets.resources.core.signals import ignore_stop_signals
from ml_assets.resources.runtimes._common import available_cores, empty_batch
from ml_assets.resources.runtimes._flavors import predictions_to_columns

logger = logging.getLogger(__name__)

# MLflow signature type names -> Arrow types.
_MLFLOW_TYPES: dict[str, pa.DataType] = {
    "boolean": pa.bool_(),
    "integer": pa.int32(),
    "long": pa.int64(),
    "float": pa.float32(),
    "double": pa.float64(),
    "string": pa.string(),
    "binary": pa.binary(),
    "datetime": pa.timestamp("us"),
}
_NUMPY_KINDS = {"f": pa.float64(), "i": pa.int64(), "u": pa.int64(), "b": pa.bool_()}


class RequirementsMismatchWarning(UserWarning):
    """The model was logged with package versions other than the installed ones."""


def requirement_mismatches(model_dir: Path) -> list[str]:
    """``name: recorded X, installed Y`` for each pinned requirement that differs from what is installed."""
    from packaging.requirements import InvalidRequirement, Requirement

    req_file = Path(model_dir) / "requirements.txt"
    if not req_file.is_file():
        return []
    found = []
    for raw in req_file.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            found.append(f"{req.name}: recorded {req.specifier or 'any'}, not installed")
            continue
        if req.specifier and not req.specifier.contains(installed, prereleases=True):
            found.append(f"{req.name}: recorded {req.specifier}, installed {installed}")
    return found


def validated_params(params: Mapping[str, Any] | None, schema: Any, version: ModelVersion) -> dict[str, Any] | None:
    """``params`` checked against the model's ``ParamSchema`` (MLflow itself drops unknown ones with
    a warning): an unknown name or a value of the wrong type is an error naming the param."""
    if not params:
        return None
    if not isinstance(params, Mapping):
        msg = f"{version.describe()}: params must be a mapping of name -> value, got {type(params).__name__}"
        raise ModelLoadError(msg)
    if schema is None:
        msg = (
            f"{version.describe()}: the model takes no params (its signature has no ParamSchema), got {sorted(params)}"
        )
        raise ModelLoadError(msg)
    from mlflow.exceptions import MlflowException
    from mlflow.types import ParamSpec

    specs = {spec.name: spec for spec in schema.params}
    known = ", ".join(
        f"{n} ({_dtype(s)}{'' if s.shape is None else f', shape {list(s.shape)}'})" for n, s in specs.items()
    )
    unknown = sorted(set(params) - set(specs))
    if unknown:
        msg = f"{version.describe()}: unknown param(s) {unknown}; the model's ParamSchema has {known}"
        raise ModelLoadError(msg)
    checked = {}
    for name, value in params.items():
        spec = specs[name]
        try:
            checked[name] = ParamSpec.validate_param_spec(value, spec)
        except MlflowException as exc:
            shape = "" if spec.shape is None else f" of shape {list(spec.shape)}"
            msg = (
                f"{version.describe()}: param {name!r} = {value!r} ({type(value).__name__}) does not fit the "
                f"model's ParamSchema: expected {_dtype(spec)}{shape} ({exc.message})"
            )
            raise ModelLoadError(msg) from None
    return checked


def _dtype(spec: Any) -> str:
    return str(getattr(spec.dtype, "name", spec.dtype))


def _signature_schemas(model_dir: Path, version: ModelVersion) -> tuple[pa.Schema, pa.Schema | None, Any]:
    from mlflow.models import Model as MlflowModel

    try:
        meta = MlflowModel.load(str(model_dir))
    except Exception as exc:
        msg = f"{version.describe()}: cannot read MLmodel in {model_dir}: {exc}"
        raise ModelLoadError(msg) from exc
    signature = meta.signature
    if signature is None or signature.inputs is None or not signature.inputs.has_input_names():
        msg = (
            f"{version.describe()}: the pyfunc runtime needs a model signature with named input columns; "
            "log the model with signature=infer_signature(X, model.predict(X))"
        )
        raise ModelLoadError(msg)
    fields = []
    for spec in signature.inputs.inputs:
        type_name = getattr(getattr(spec, "type", None), "name", None)
        arrow_type = _MLFLOW_TYPES.get(type_name or "")
        if arrow_type is None:
            msg = f"{version.describe()}: input column {spec.name!r} has signature type {spec.type}, not supported"
            raise ModelLoadError(msg)
        fields.append(pa.field(spec.name, arrow_type))
    outputs = None
    if signature.outputs is not None and signature.outputs.has_input_names():
        out_fields = []
        for spec in signature.outputs.inputs:
            type_name = getattr(getattr(spec, "type", None), "name", None)
            out_fields.append(pa.field(spec.name, _MLFLOW_TYPES.get(type_name or "", pa.float64())))
        outputs = pa.schema(out_fields)
    elif signature.outputs is not None:
        spec = signature.outputs.inputs[0]
        dtype = getattr(spec, "type", None)
        kind = np.dtype(dtype).kind if isinstance(dtype, np.dtype) else None
        arrow_type = _MLFLOW_TYPES.get(getattr(dtype, "name", "") or "") or _NUMPY_KINDS.get(kind or "")
        shape = getattr(spec, "shape", None) or (-1,)
        if arrow_type is not None and len(shape) == 1:
            outputs = pa.schema([pa.field("prediction", arrow_type)])
        elif arrow_type is not None and len(shape) == 2 and shape[1] > 0:
            # A [N, k] tensor (e.g. predict_proba): the columns are known without a probe row.
            outputs = pa.schema([pa.field(f"prediction_{j}", arrow_type) for j in range(shape[1])])
    return pa.schema(fields), outputs, signature.params


def contract_map(native: pa.Schema, *, classes: Sequence[Any] | None, what: str) -> OutputMap:
    """pyfunc outputs under the prediction contract.

    A bare ``[N, k]`` matrix (columns ``prediction_0..k-1``) is read as class probabilities
    (``bare_matrix_map``: classes ``0..k-1`` unless ``classes`` names them); columns the model
    names itself (a DataFrame or dict) and a single ``prediction`` keep their names: pyfunc does not
    say whether one column is a label or a regressor's value.
    """
    bare = [f"prediction_{j}" for j in range(len(native))]
    if len(native) > 1 and native.names == bare and all(pa.types.is_floating(f.type) for f in native):
        return bare_matrix_map(list(native), classes=classes, what=what)
    if classes is not None:
        msg = f"{what}: option classes applies to a bare probability matrix; predict returns {native.names}"
        raise ModelLoadError(msg)
    return identity_map(native, note="the columns predict returns, under their own names")


def mlflow_model_folder(version: ModelVersion, path: Path) -> Path:
    """The folder holding ``MLmodel`` (a registry may hand over the folder or the file itself)."""
    model_dir = Path(path)
    if model_dir.is_file() and model_dir.name == "MLmodel":
        model_dir = model_dir.parent
    if not (model_dir / "MLmodel").is_file():
        msg = f"{version.describe()}: {model_dir} is not an MLflow model folder (no MLmodel file)"
        raise ModelLoadError(msg)
    return model_dir


class _LoadedModel:
    """A pyfunc model and what it takes to turn an Arrow batch into predictions."""

    def __init__(self, model_dir: str, params: dict[str, Any] | None = None) -> None:
        import mlflow.pyfunc

        self.model = mlflow.pyfunc.load_model(model_dir)
        self.params = params

    def predict_batch(self, batch: pa.RecordBatch) -> dict[str, Any]:
        frame = batch.to_pandas()
        prediction = self.model.predict(frame, params=self.params) if self.params else self.model.predict(frame)
        return predictions_to_columns(prediction, batch.num_rows)


def _worker_main(model_dir: str, conn: Any, params: dict[str, Any] | None = None) -> None:
    """Worker process: load once, then answer (batch -> predictions) requests until told to stop."""
    ignore_stop_signals()  # the parent stops it, or it sees the pipe close when the parent dies
    try:
        loaded = _LoadedModel(model_dir, params)
    except Exception as exc:  # noqa: BLE001 - any load failure is reported to the parent, which raises
        conn.send(("load_error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            message = conn.recv_bytes()
        except EOFError:
            return
        if not message:
            return
        try:
            batch = pa.ipc.open_stream(message).read_next_batch()
            columns = loaded.predict_batch(batch)
            table = pa.table({k: pa.array(v) for k, v in columns.items()})
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            conn.send_bytes(b"ok" + sink.getvalue().to_pybytes())
        except Exception as exc:  # noqa: BLE001 - the parent turns it into a ScoringError
            text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            conn.send_bytes(b"er" + text[-4000:].encode())


class _Worker:
    def __init__(
        self, model_dir: Path, version: ModelVersion, *, load_timeout_s: float, params: dict[str, Any] | None
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(str(model_dir), child, params), daemon=True)
        self.process.start()
        child.close()
        if not self.conn.poll(load_timeout_s):
            self.kill()
            msg = f"{version.describe()}: a pyfunc worker did not load the model within {load_timeout_s:.0f} s"
            raise ModelLoadError(msg)
        try:
            status, detail = self.conn.recv()
        except EOFError as exc:
            code = self.process.exitcode
            self.kill()
            msg = f"{version.describe()}: a pyfunc worker died while loading the model (exit code {code})"
            raise ModelLoadError(msg) from exc
        if status != "ready":
            self.kill()
            msg = f"{version.describe()}: a pyfunc worker could not load the model: {detail}"
            raise ModelLoadError(msg)

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=10)
        self.conn.close()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send_bytes(b"")
        self.process.join(timeout=5)
        self.kill()


class _WorkerDied(Exception):
    pass


class PyfuncScorer:
    def __init__(
        self,
        version: ModelVersion,
        model_dir: Path,
        *,
        isolation: Literal["none", "process"],
        workers: int,
        threads: int,
        on_worker_failure: Literal["fail", "retry"],
        max_retries: int,
        batch_timeout_s: float,
        load_timeout_s: float,
        params: Mapping[str, Any] | None = None,
        classes: Sequence[Any] | None = None,
        naming: Naming = "contract",
        environment: ModelEnvironment | None = None,
        predictor: Literal["pyfunc", "native"] = "pyfunc",
        native_files: Mapping[str, Any] | None = None,
        worker_threads: int = 1,
    ) -> None:
        self.version = version
        self.native_files = native_files
        self.environment = environment
        self.predictor = predictor
        self.worker_threads = worker_threads
        self.model_dir = model_dir
        self.isolation = isolation
        self.on_worker_failure = on_worker_failure
        self.max_retries = max_retries
        self.batch_timeout_s = batch_timeout_s
        self.load_timeout_s = load_timeout_s
        self.input_schema, native, param_schema = _signature_schemas(model_dir, version)
        self.params = validated_params(params, param_schema, version)
        self._local: _LoadedModel | None = None
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all: list[_Worker] = []
        self._lock = threading.Lock()
        if isolation == "none":
            self.concurrency = threads
            try:
                self._local = _LoadedModel(str(model_dir), self.params)
            except Exception as exc:
                msg = f"{version.describe()}: mlflow.pyfunc could not load {model_dir}: {exc}"
                raise ModelLoadError(msg) from exc
        else:
            self.concurrency = workers
            try:
                for _ in range(workers):
                    self._start_worker()
            except BaseException:
                self.close()
                raise
            if predictor == "native":  # the native predictor names its outputs (the contract) from the model itself
                native, naming = self._all[0].output_schema, "native"
        self._native_schema = native if native is not None else self._probe_outputs()
        self._map = (
            identity_map(self._native_schema)
            if naming == "native"
            else contract_map(self._native_schema, classes=classes, what=version.describe())
        )
        self.output_schema = self._map.schema
        self.output_note = self._map.note
        self.classes = list(self._map.classes) or None
        if predictor == "native":
            self.classes = self._all[0].classes

    def _start_worker(self) -> Any:
        if self.environment is None:
            worker: Any = _Worker(self.model_dir, self.version, load_timeout_s=self.load_timeout_s, params=self.params)
        else:
            from ml_assets.resources.runtimes.isolated import EnvWorker

            dtype = "float32" if all(pa.types.is_float32(f.type) for f in self.input_schema) else "float64"
            worker = EnvWorker(
                self.environment,
                self.model_dir,
                self.version,
                predictor=self.predictor,
                threads=self.worker_threads,
                input_dtype=dtype,
                load_timeout_s=self.load_timeout_s,
                params=self.native_files if self.predictor == "native" else self.params,
            )
        with self._lock:
            self._all.append(worker)
        self._idle.put(worker)
        return worker

    def _probe_outputs(self) -> pa.Schema:
        """Output columns of a model whose signature does not name them: predict on one empty-ish row."""
        example = pa.RecordBatch.from_arrays(
            [pa.array([None], f.type).fill_null(_zero(f.type)) for f in self.input_schema],
            schema=self.input_schema,
        )
        columns = self._predict(example)
        return pa.schema([pa.field(k, pa.array(v).type) for k, v in columns.items()])

    def _predict(self, batch: pa.RecordBatch) -> dict[str, Any]:
        if self._local is not None:
            try:
                return self._local.predict_batch(batch)
            except Exception as exc:
                msg = f"{self.version.describe()}: predict failed on a batch of {batch.num_rows} rows: {exc}"
                raise RowsRejectedError(msg) from exc
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, batch.schema) as writer:
            writer.write_batch(batch)
        payload = sink.getvalue().to_pybytes()
        attempts = 0
        while True:
            worker = self._next_worker(batch.num_rows)
            try:
                reply = self._ask(worker, payload, batch.num_rows)
            except _WorkerDied as died:
                self._retire(worker)
                attempts += 1
                if self.on_worker_failure == "retry" and attempts <= self.max_retries:
                    logger.warning("%s; retrying the batch (%d/%d)", died, attempts, self.max_retries)
                    self._start_worker()
                    continue
                if self.on_worker_failure == "retry":
                    self._start_worker()
                raise ScoringError(f"{self.version.describe()}: {died}") from None
            self._idle.put(worker)
            if reply.startswith(b"er"):
                reason = reply[2:].decode()
                msg = f"{self.version.describe()}: predict failed on a batch of {batch.num_rows} rows: {reason}"
                raise RowsRejectedError(msg)
            table = pa.ipc.open_stream(reply[2:]).read_all()
            return {name: table.column(name).combine_chunks() for name in table.column_names}

    def _next_worker(self, rows: int) -> _Worker:
        deadline = time.monotonic() + self.batch_timeout_s + self.load_timeout_s
        while time.monotonic() < deadline:
            try:
                return self._idle.get(timeout=0.5)
            except queue.Empty:
                with self._lock:
                    alive = bool(self._all)
                if not alive:
                    break
        msg = f"{self.version.describe()}: no pyfunc worker available to score a batch of {rows} rows"
        raise ScoringError(msg)

    def _ask(self, worker: _Worker, payload: bytes, rows: int) -> bytes:
        pid = worker.process.pid
        try:
            worker.conn.send_bytes(payload)
            deadline = time.monotonic() + self.batch_timeout_s
            while not worker.conn.poll(0.2):
                if not worker.process.is_alive():
                    break
                if time.monotonic() > deadline:
                    limit = self.batch_timeout_s
                    msg = f"pyfunc worker {pid} did not answer within {limit:.0f} s on a batch of {rows} rows"
                    raise _WorkerDied(msg)
            return worker.conn.recv_bytes()
        except (EOFError, OSError, BrokenPipeError):
            worker.process.join(timeout=5)
            code = worker.process.exitcode
            msg = f"pyfunc worker {pid} died (exit code {code}) while scoring a batch of {rows} rows"
            raise _WorkerDied(msg) from None

    def _retire(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            if worker in self._all:
                self._all.remove(worker)

    def score(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        n = batch.num_rows
        if n == 0:
            return empty_batch(self.output_schema)
        columns = self._predict(batch)
        if len(self._native_schema) == 1 and len(columns) == 1:
            # One unnamed output in the signature: a returned Series keeps its own name.
            columns = {self._native_schema.names[0]: next(iter(columns.values()))}
        arrays = []
        for field in self._native_schema:
            if field.name not in columns:
                msg = (
                    f"{self.version.describe()}: predict returned columns {sorted(columns)}, "
                    f"expected {self._native_schema.names}"
                )
                raise ScoringError(msg)
            values = columns[field.name]
            array = values if isinstance(values, pa.Array) else pa.array(values)
            if len(array) != n:
                msg = f"{self.version.describe()}: predict returned {len(array)} rows for a batch of {n}"
                raise ScoringError(msg)
            try:
                arrays.append(array.cast(field.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                msg = f"{self.version.describe()}: output {field.name!r} is {array.type}, expected {field.type}: {exc}"
                raise ScoringError(msg) from exc
        return self._map.apply(pa.RecordBatch.from_arrays(arrays, schema=self._native_schema))

    def close(self) -> None:
        with self._lock:
            workers, self._all = list(self._all), []
        for worker in workers:
            worker.stop()
        self._local = None


def _zero(arrow_type: pa.DataType) -> Any:
    if pa.types.is_string(arrow_type):
        return ""
    if pa.types.is_binary(arrow_type):
        return b""
    if pa.types.is_boolean(arrow_type):
        return False
    if pa.types.is_timestamp(arrow_type):
        return pa.scalar(0, arrow_type)
    return 0


class PyfuncRuntime:
    """Scores any MLflow Python model (``python_function`` flavor).

    Options: ``isolation`` ("none" or "process"), ``workers`` (processes; default the cores
    available), ``threads`` (concurrent calls in-process; default 1), ``on_worker_failure``
    ("fail" or "retry"), ``max_retries``, ``batch_timeout_s``, ``load_timeout_s``,
    ``check_requirements`` ("warn" or "ignore"); model environments: ``env_manager`` ("local":
    this process's packages; "uv" or "virtualenv": the model's own, built once per machine),
    ``env_path`` (a prebuilt environment: its folder or interpreter), ``env_dir`` (where built
    environments live), ``index_url`` / ``extra_index_urls`` / ``find_links`` (where they install from);
    ``params``: inference params passed to every
    ``predict`` (validated at load against the model's ``ParamSchema``: an unknown name or a
    mistyped value is refused); ``classes``: the class labels of a model that returns a bare
    probability matrix; ``naming``: ``"contract"`` (default, see ``contract_map``) or ``"native"``
    (the names ``predict`` gives: its DataFrame's columns, ``prediction``, ``prediction_<j>``).
    """

    def __init__(
        self,
        *,
        isolation: Literal["none", "process"] = "none",
        workers: int | None = None,
        threads: int = 1,
        on_worker_failure: Literal["fail", "retry"] = "fail",
        max_retries: int = 1,
        batch_timeout_s: float = 600.0,
        load_timeout_s: float = 300.0,
        check_requirements: Literal["warn", "ignore"] = "warn",
        env_manager: EnvManager = "local",
        env_path: str | None = None,
        env_dir: str | None = None,
        index_url: str | None = None,
        extra_index_urls: str | Sequence[str] = (),
        find_links: str | Sequence[str] = (),
        params: Mapping[str, Any] | None = None,
        classes: Sequence[Any] | None = None,
        naming: Naming = "contract",
    ) -> None:
        self.naming = check_naming(naming)
        self.params = dict(params) if params else None
        self.classes = list(classes) if classes is not None else None
        if isolation not in ("none", "process"):
            msg = f"isolation must be 'none' or 'process', got {isolation!r}"
            raise ValueError(msg)
        if on_worker_failure not in ("fail", "retry"):
            msg = f"on_worker_failure must be 'fail' or 'retry', got {on_worker_failure!r}"
            raise ValueError(msg)
        if env_manager not in ENV_MANAGERS:
            msg = f"env_manager must be one of {', '.join(ENV_MANAGERS)}, got {env_manager!r}"
            raise ValueError(msg)
        if (workers is not None and workers < 1) or threads < 1 or max_retries < 0:
            msg = "workers and threads must be >= 1 and max_retries >= 0"
            raise ValueError(msg)
        self.isolation = isolation
        self.workers = workers or available_cores()
        self.threads = threads
        self.on_worker_failure = on_worker_failure
        self.max_retries = max_retries
        self.batch_timeout_s = batch_timeout_s
        self.load_timeout_s = load_timeout_s
        self.check_requirements = check_requirements
        self.env_manager = env_manager
        self.env_path = env_path
        self.env_dir = env_dir
        self.index = IndexSettings.of(index_url, extra_index_urls, find_links)

    def load(self, version: ModelVersion, path: Path) -> PyfuncScorer:
        model_dir = mlflow_model_folder(version, path)
        environment = model_environment(
            model_dir,
            what=version.describe(),
            env_manager=self.env_manager,
            env_path=self.env_path,
            env_dir=self.env_dir,
            index=self.index,
        )
        # In a model environment the packages are the model's own: nothing to compare with this process's.
        if environment is None and self.check_requirements == "warn":
            mismatches = requirement_mismatches(model_dir)
            if mismatches:
                warnings.warn(
                    f"{version.describe()} was logged with other package versions than installed: "
                    + "; ".join(mismatches),
                    RequirementsMismatchWarning,
                    stacklevel=2,
                )
        return PyfuncScorer(
            version,
            model_dir,
            isolation="process" if environment is not None else self.isolation,
            workers=self.workers,
            threads=self.threads,
            on_worker_failure=self.on_worker_failure,
            max_retries=self.max_retries,
            batch_timeout_s=self.batch_timeout_s,
            load_timeout_s=self.load_timeout_s,
            params=self.params,
            classes=self.classes,
            naming=self.naming,
            environment=environment,
        )


__all__ = [
    "PyfuncRuntime",
    "PyfuncScorer",
    "RequirementsMismatchWarning",
    "contract_map",
    "requirement_mismatches",
    "validated_params",
]
