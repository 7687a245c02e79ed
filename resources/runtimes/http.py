"""Scoring through HTTP model servers: MLflow ``/invocations`` and the Open Inference Protocol v2.

Endpoints (the name and version come from the registry's answer, so a promotion moves scoring
to the new path):

=================  ==================================================================
``mlflow``         ``{base}/invocations`` (``mlflow models serve``)
``databricks``     ``{base}/model/{name}/{version}/invocations``
``prinz``          ``{base}/model/{name}/invocations``
``v2``             ``{base}/v2/models/{name}/infer``
``v2_versioned``   ``{base}/v2/models/{name}/versions/{version}/infer``
``template``       ``url_template`` with ``{base}``, ``{name}``, ``{version}``, ``{alias}``
=================  ==================================================================

Each chunk the core hands to ``score`` is cut into requests of an adaptive number of rows
that run on a bounded pool of connections and are put back together in order. A request
that fails on the network, times out or gets 429/5xx is retried with jittered exponential
backoff (honouring ``Retry-After``) within a bounded count and time; a 413 splits the rows
in two; a circuit breaker fails fast once the server keeps failing. Secrets (token,
password, extra header values, URL credentials and query) never reach logs or errors.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import math
import os
import random
import re
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

import pyarrow as pa

from ml_assets.resources.core.errors import ModelLoadError, ModelRefError, SchemaMismatchError, ScoringError
from ml_assets.resources.core.models import ColumnSpec, ModelRef, ModelVersion

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

Endpoint = Literal["mlflow", "databricks", "prinz", "v2", "v2_versioned", "template"]
Payload = Literal["csv", "parquet", "dataframe_split", "dataframe_records", "instances", "inputs", "v2"]
V2Layout = Literal["columns", "tensor"]

ENDPOINTS: tuple[str, ...] = ("mlflow", "databricks", "prinz", "v2", "v2_versioned", "template")
PAYLOADS: tuple[str, ...] = ("csv", "parquet", "dataframe_split", "dataframe_records", "instances", "inputs", "v2")
_PATHS = {
    "mlflow": "{base}/invocations",
    "databricks": "{base}/model/{name}/{version}/invocations",
    "prinz": "{base}/model/{name}/invocations",
    "v2": "{base}/v2/models/{name}/infer",
    "v2_versioned": "{base}/v2/models/{name}/versions/{version}/infer",
}
# MLflow's own server parses Parquet ~2x faster than CSV and exactly; older servers answer 415 to
# Parquet, and then the probe falls back to CSV. JSON dataframe_split is what every MLflow-like
# server (Databricks, proxies) accepts.
_DEFAULT_PAYLOAD = {
    "mlflow": "parquet",
    "databricks": "dataframe_split",
    "prinz": "dataframe_split",
    "template": "dataframe_split",
    "v2": "v2",
    "v2_versioned": "v2",
}
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_MLFLOW_TYPES = {"long": "int64", "integer": "int32", "boolean": "bool", "datetime": "timestamp[ns]"}
_V2_TYPES = {
    pa.float32(): "FP32",
    pa.float64(): "FP64",
    pa.float16(): "FP16",
    pa.int8(): "INT8",
    pa.int16(): "INT16",
    pa.int32(): "INT32",
    pa.int64(): "INT64",
    pa.uint8(): "UINT8",
    pa.uint16(): "UINT16",
    pa.uint32(): "UINT32",
    pa.uint64(): "UINT64",
    pa.bool_(): "BOOL",
    pa.string(): "BYTES",
    pa.large_string(): "BYTES",
}
_FROM_V2 = {
    "FP32": pa.float32(),
    "FP64": pa.float64(),
    "FP16": pa.float16(),
    "INT8": pa.int8(),
    "INT16": pa.int16(),
    "INT32": pa.int32(),
    "INT64": pa.int64(),
    "UINT8": pa.uint8(),
    "UINT16": pa.uint16(),
    "UINT32": pa.uint32(),
    "UINT64": pa.uint64(),
    "BOOL": pa.bool_(),
    "BYTES": pa.string(),
}
# MLflow echoes the input frame in some error messages ("Failed to predict data '...'");
# we keep the server's words but never the data.
_ECHOED_DATA = re.compile(r"data\s+'.*?'(?=\s*(?:\.|with\b|$))", re.DOTALL)


def _arrow_type(name: str) -> pa.DataType:
    try:
        return pa.type_for_alias(_MLFLOW_TYPES.get(name, name))
    except ValueError:
        msg = f"unknown column type {name!r}; expected an Arrow type name such as 'double', 'float', 'int64', 'string'"
        raise SchemaMismatchError(msg) from None


def _redact_url(url: str) -> str:
    """The URL without credentials, query or fragment: what may appear in logs and errors."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _shorten(text: str, limit: int = 300) -> str:
    text = _ECHOED_DATA.sub("data <omitted>", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _BatchSizer:
    """Rows per request: grows while answers come back under the latency target, halves on slow
    answers, timeouts and 413s. Shared by every thread of one scorer."""

    def __init__(self, start: int, low: int, high: int, target_seconds: float) -> None:
        self.low, self.high, self.target = low, high, target_seconds
        self._rows = min(max(start, low), high)
        self._ceiling = high  # lowered by 413s: never grow back to a size the server refused
        self._lock = threading.Lock()

    @property
    def rows(self) -> int:
        return self._rows

    def observe(self, rows: int, seconds: float) -> None:
        with self._lock:
            # A short tail request says little about what a full one would cost.
            if rows < self._rows // 2:
                return
            if seconds < self.target:
                self._rows = min(self._ceiling, max(self._rows + 1, int(self._rows * 1.5)))
            elif seconds > 2 * self.target:
                self._rows = max(self.low, self._rows // 2)

    def shrink(self, rows: int, *, too_large: bool = False) -> None:
        with self._lock:
            if too_large:
                # Half the refused size: the halves are what gets retried, and growing back
                # towards the refused size one 413 at a time would cost a request per step.
                self._ceiling = max(self.low, min(self._ceiling, rows // 2))
            self._rows = max(self.low, min(self._rows, rows) // 2)


class _CircuitBreaker:
    """Opens after ``threshold`` failed attempts in a row; while open, requests fail at once.
    After ``cooldown`` seconds one trial request may pass (half-open); its success closes it."""

    def __init__(self, threshold: int, cooldown: float) -> None:
        self.threshold, self.cooldown = threshold, cooldown
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_running = False
        self.last_failure = ""
        self._lock = threading.Lock()

    def allow(self) -> bool:
        with self._lock:
            if self._opened_at is None:
                return True
            if time.monotonic() - self._opened_at >= self.cooldown and not self._trial_running:
                self._trial_running = True
                return True
            return False

    def success(self) -> None:
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._trial_running = False

    def failure(self, what: str) -> None:
        with self._lock:
            self._failures += 1
            self.last_failure = what
            self._trial_running = False
            if self._failures >= self.threshold:
                self._opened_at = time.monotonic()

    @property
    def failures(self) -> int:
        return self._failures


@dataclass
class HttpRuntime:
    """Scores a model version through an HTTP scoring server.

    Args:
        url: the server's base URL, e.g. ``http://127.0.0.1:5000`` (no credentials in it).
        endpoint: the URL convention (see the module docstring).
        url_template: for ``endpoint="template"``: e.g. ``{base}/serving/{name}/{alias}/score``.
        payload: request body format; default per endpoint: for ``mlflow``, ``parquet`` when the
            server takes it (probed at load) else ``csv``; ``dataframe_split`` for Databricks,
            Prinz and templates; ``v2`` for v2 endpoints.
        v2_layout: ``columns`` (one tensor per column, MLServer's pandas codec) or ``tensor``
            (one ``[N, K]`` tensor named ``v2_input_name``, KServe/Triton style).
        features: input columns in order when the version has no signature; a mapping gives
            their Arrow types too (default ``double``).
        output_names: names for unnamed response columns (lists, lists of lists, v2 tensors);
            default ``prediction`` / ``prediction_0..k``.
        outputs: the response columns to keep (default all), in order.
        token: bearer token. ``username``/``password``: basic auth. ``headers``: extra headers.
            All treated as secrets. ``token_env``/``password_env``: read them from these
            environment variables instead (for ``dagster.EnvVar``-style configuration).
        verify: TLS verification (a CA bundle path, or False only for a test server).
        concurrency: ``score`` calls the core may run at once.
        max_in_flight: requests in flight at once for this scorer (its connection pool size).
        batch_rows / min_batch_rows / max_batch_rows / target_latency: the adaptive request size.
        connect_timeout / read_timeout: seconds, for every request.
        max_attempts / retry_deadline / backoff_base / backoff_max: retry bounds per request.
        breaker_threshold / breaker_cooldown: failures in a row that open the circuit, and how long
            it stays open.
        probe: at load, score one synthetic row to learn the output columns when neither
            ``output_names`` nor the signature gives them (and to fail early if the server is down).
    """

    url: str = "http://127.0.0.1:5000"
    endpoint: Endpoint = "mlflow"
    url_template: str | None = None
    payload: Payload | None = None
    v2_layout: V2Layout = "columns"
    v2_input_name: str = "input-0"
    features: Sequence[str] | Mapping[str, str] | None = None
    output_names: Sequence[str] | None = None
    outputs: Sequence[str] | None = None
    token: str | None = field(default=None, repr=False)
    token_env: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    password_env: str | None = None
    headers: Mapping[str, str] | None = field(default=None, repr=False)
    verify: bool | str = True
    concurrency: int = 2
    max_in_flight: int = 4
    batch_rows: int = 16384
    min_batch_rows: int = 64
    max_batch_rows: int = 131072
    target_latency: float = 1.0
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    max_attempts: int = 5
    retry_deadline: float = 120.0
    backoff_base: float = 0.5
    backoff_max: float = 20.0
    breaker_threshold: int = 8
    breaker_cooldown: float = 30.0
    probe: bool = True

    def __post_init__(self) -> None:
        # Secrets may come by name of an environment variable, read here and never echoed.
        for attr, env in (("token", self.token_env), ("password", self.password_env)):
            if env and getattr(self, attr) is None:
                if env not in os.environ:
                    msg = f"{attr}_env names the environment variable {env!r}, which is not set"
                    raise ModelLoadError(msg)
                setattr(self, attr, os.environ[env])
        if self.endpoint not in ENDPOINTS:
            msg = f"unknown endpoint {self.endpoint!r}; expected one of {', '.join(ENDPOINTS)}"
            raise ModelLoadError(msg)
        if self.endpoint == "template" and not self.url_template:
            msg = "endpoint='template' needs url_template, e.g. '{base}/model/{name}/{version}/invocations'"
            raise ModelLoadError(msg)
        if self.payload is not None and self.payload not in PAYLOADS:
            msg = f"unknown payload {self.payload!r}; expected one of {', '.join(PAYLOADS)}"
            raise ModelLoadError(msg)
        if self.endpoint.startswith("v2") and self.payload not in (None, "v2"):
            msg = f"endpoint {self.endpoint!r} speaks the Open Inference Protocol; payload must be 'v2'"
            raise ModelLoadError(msg)
        if (self.username is None) != (self.password is None):
            msg = "basic auth needs both username and password"
            raise ModelLoadError(msg)
        if self.token is not None and self.username is not None:
            msg = "give either token (bearer) or username/password (basic), not both"
            raise ModelLoadError(msg)
        if self.max_in_flight < 1 or self.concurrency < 1 or self.max_attempts < 1:
            msg = "concurrency, max_in_flight and max_attempts must be >= 1"
            raise ModelLoadError(msg)
        if not 1 <= self.min_batch_rows <= self.max_batch_rows:
            msg = f"need 1 <= min_batch_rows <= max_batch_rows, got {self.min_batch_rows}, {self.max_batch_rows}"
            raise ModelLoadError(msg)

    def endpoint_url(self, version: ModelVersion) -> str:
        """The URL scoring ``version`` goes to (name and version URL-quoted)."""
        template = self.url_template if self.endpoint == "template" else _PATHS[self.endpoint]
        assert template is not None
        fields = {
            "base": self.url.rstrip("/"),
            "name": quote(version.name, safe=""),
            "version": quote(str(version.version), safe=""),
        }
        if "{alias}" in template:
            alias = _alias_of(version)
            if alias is None:
                msg = f"{version.describe()}: url_template uses {{alias}} but the version has no alias"
                raise ModelLoadError(msg)
            fields["alias"] = quote(alias, safe="")
        try:
            return template.format(**fields)
        except (KeyError, IndexError, ValueError) as exc:
            msg = f"url_template {template!r} is not valid: only {{base}}, {{name}}, {{version}}, {{alias}} are known"
            raise ModelLoadError(msg) from exc

    def load(self, version: ModelVersion, path: Path | None = None) -> HttpScorer:
        inputs = _input_columns(version, self.features, path)
        return HttpScorer(self, version, inputs)


def _alias_of(version: ModelVersion) -> str | None:
    if version.ref:
        try:
            ref = ModelRef.parse(version.ref)
        except ModelRefError:
            ref = None
        if ref is not None and ref.alias:
            return ref.alias
    return version.aliases[0] if version.aliases else None


def _mlmodel_inputs(path: Path | None) -> tuple[ColumnSpec, ...]:
    """Column inputs from an ``MLmodel`` file next to the model, when the registry gave none."""
    if path is None:
        return ()
    mlmodel = Path(path) / "MLmodel" if Path(path).is_dir() else None
    if mlmodel is None or not mlmodel.is_file():
        return ()
    import yaml

    try:
        doc = yaml.safe_load(mlmodel.read_text())
        specs = json.loads(((doc or {}).get("signature") or {}).get("inputs") or "[]")
    except (OSError, ValueError, yaml.YAMLError, AttributeError):
        return ()
    if not specs or any("name" not in s or s.get("type") in (None, "tensor") for s in specs):
        return ()
    return tuple(ColumnSpec(s["name"], s["type"], bool(s.get("required", True))) for s in specs)


def _input_columns(
    version: ModelVersion, features: Sequence[str] | Mapping[str, str] | None, path: Path | None
) -> list[tuple[str, pa.DataType]]:
    signature = version.signature.inputs if version.signature is not None else ()
    signature = signature or _mlmodel_inputs(path)
    known = {c.name: c.type for c in signature}
    if features:
        if isinstance(features, Mapping):
            pairs = list(features.items())
        else:
            pairs = [(name, known.get(name, "double")) for name in features]
    elif signature:
        pairs = [(c.name, c.type) for c in signature]
    else:
        msg = (
            f"{version.describe()}: no input columns known; the version has no column signature, "
            "so give the runtime option features=[...]"
        )
        raise ModelLoadError(msg)
    return [(name, _arrow_type(type_name)) for name, type_name in pairs]


# --------------------------------------------------------------------------------------------
# Request bodies


def _json_value_columns(batch: pa.RecordBatch) -> list[list[Any]]:
    return [col.to_pylist() for col in batch.columns]


def _numeric_matrix_rows(batch: pa.RecordBatch) -> list[list[Any]] | None:
    """Row lists through numpy when every column is a null-free number column (10x faster)."""
    import numpy as np

    if not all(
        (pa.types.is_floating(c.type) or pa.types.is_integer(c.type)) and c.null_count == 0 for c in batch.columns
    ):
        return None
    if batch.num_columns == 0:
        return [[] for _ in range(batch.num_rows)]
    return np.column_stack([c.to_numpy() for c in batch.columns]).tolist()


def encode(
    batch: pa.RecordBatch, payload: str, *, v2_layout: str = "columns", v2_input_name: str = "input-0"
) -> tuple[bytes, str]:
    """The request body for ``batch`` and its content type."""
    names = batch.schema.names
    if payload == "csv":
        import pyarrow.csv as pacsv

        sink = io.BytesIO()
        pacsv.write_csv(batch, sink, pacsv.WriteOptions(include_header=True))
        return sink.getvalue(), "text/csv"
    if payload == "parquet":
        import pyarrow.parquet as pq

        sink = io.BytesIO()
        # Dictionary encoding and statistics cost 10x the encoding time of float columns and
        # buy nothing for a body read once.
        pq.write_table(
            pa.Table.from_batches([batch]), sink, compression="none", use_dictionary=False, write_statistics=False
        )
        return sink.getvalue(), "application/vnd.apache.parquet"
    if payload == "v2":
        return json.dumps(_v2_request(batch, v2_layout, v2_input_name)).encode(), "application/json"
    if payload in ("dataframe_split",):
        rows = _numeric_matrix_rows(batch)
        if rows is None:
            rows = [list(r) for r in zip(*_json_value_columns(batch), strict=True)]
        body: dict[str, Any] = {"dataframe_split": {"columns": names, "data": rows}}
    elif payload in ("dataframe_records", "instances"):
        rows = _numeric_matrix_rows(batch) or [list(r) for r in zip(*_json_value_columns(batch), strict=True)]
        body = {payload: [dict(zip(names, r, strict=True)) for r in rows]}
    elif payload == "inputs":
        body = {"inputs": dict(zip(names, _json_value_columns(batch), strict=True))}
    else:
        msg = f"unknown payload {payload!r}; expected one of {', '.join(PAYLOADS)}"
        raise ScoringError(msg)
    return json.dumps(body).encode(), "application/json"


def _v2_request(batch: pa.RecordBatch, layout: str, input_name: str) -> dict[str, Any]:
    n = batch.num_rows
    if layout == "tensor":
        types = {c.type for c in batch.columns}
        arrow = types.pop() if len(types) == 1 else pa.float64()
        datatype = _V2_TYPES.get(arrow, "FP64")
        rows = _numeric_matrix_rows(batch)
        if rows is None:
            msg = "v2_layout='tensor' needs null-free numeric columns; use v2_layout='columns'"
            raise SchemaMismatchError(msg)
        flat = [v for row in rows for v in row]
        tensor = {"name": input_name, "shape": [n, batch.num_columns], "datatype": datatype, "data": flat}
        return {"inputs": [tensor]}
    inputs = []
    for name, col in zip(batch.schema.names, batch.columns, strict=True):
        datatype = _V2_TYPES.get(col.type)
        if datatype is None:
            msg = f"column {name!r} of type {col.type} has no Open Inference Protocol datatype"
            raise SchemaMismatchError(msg)
        inputs.append({"name": name, "shape": [n], "datatype": datatype, "data": col.to_pylist()})
    return {"parameters": {"content_type": "pd"}, "inputs": inputs}


# --------------------------------------------------------------------------------------------
# Responses


class _UnsupportedMediaType(ScoringError):
    """The server does not take this body format (415)."""


class _BadResponse(Exception):
    """A 2xx answer we cannot use; becomes a ScoringError naming the rows."""


def decode(body: bytes, payload: str, rows: int) -> dict[str, list[Any] | Any]:
    """Named prediction columns (lists or numpy arrays), in the server's order.

    Unnamed columns are named ``""`` (one column) or ``"#0".."#k"`` and renamed by the scorer.
    """
    if payload != "v2":
        fast = _fast_numeric_predictions(body, rows)
        if fast is not None:
            return fast
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        msg = f"the answer is not JSON ({type(exc).__name__} at {getattr(exc, 'pos', '?')})"
        raise _BadResponse(msg) from None
    if payload == "v2":
        return _decode_v2(doc, rows)
    predictions = doc.get("predictions", doc.get("outputs")) if isinstance(doc, dict) else doc
    if predictions is None:
        keys = sorted(doc)[:8] if isinstance(doc, dict) else []
        msg = f"the answer has no 'predictions' (keys: {keys})"
        raise _BadResponse(msg)
    if isinstance(predictions, dict):  # columnar: {"col": [...], ...}
        columns = {str(k): v for k, v in predictions.items()}
        for name, values in columns.items():
            if not isinstance(values, list) or len(values) != rows:
                got = len(values) if isinstance(values, list) else type(values).__name__
                msg = f"column {name!r} has {got} values for {rows} rows"
                raise _BadResponse(msg)
        return columns
    if not isinstance(predictions, list):
        msg = f"'predictions' is a {type(predictions).__name__}, expected a list"
        raise _BadResponse(msg)
    if len(predictions) != rows:
        msg = f"the server returned {len(predictions)} predictions for {rows} rows"
        raise _BadResponse(msg)
    if rows == 0:
        return {}
    first = predictions[0]
    if isinstance(first, dict):
        keys = list(first)
        try:
            return {str(k): [r[k] for r in predictions] for k in keys}
        except (KeyError, TypeError):
            msg = f"records do not all have the keys {keys[:8]}"
            raise _BadResponse(msg) from None
    if isinstance(first, list):
        width = len(first)
        import numpy as np

        try:
            matrix = np.asarray(predictions, dtype=np.float64)
        except (ValueError, TypeError):
            if any(not isinstance(r, list) or len(r) != width for r in predictions):
                msg = f"rows of predictions have different lengths (first has {width})"
                raise _BadResponse(msg) from None
            return {f"#{i}": [r[i] for r in predictions] for i in range(width)}
        if matrix.ndim != 2:
            msg = f"predictions have {matrix.ndim} dimensions, expected a list or a list of lists"
            raise _BadResponse(msg)
        return {f"#{i}": matrix[:, i] for i in range(width)}
    return {"": predictions}


_PREDICTIONS_HEAD = b'{"predictions": ['
_NUMBER_BYTES = b"0123456789.eE+-, []"


def _fast_numeric_predictions(body: bytes, rows: int) -> dict[str, Any] | None:
    """MLflow's ``{"predictions": [[p, q], ...]}`` (or a flat list of floats) parsed by Arrow's CSV
    reader: 5x less CPU than ``json.loads`` + numpy. None when the body is anything else (NaN,
    nulls, records, strings, other keys, ints only); then the JSON path decides."""
    if rows == 0 or not body.startswith(_PREDICTIONS_HEAD) or not body.endswith(b"]}"):
        return None
    inner = body[len(_PREDICTIONS_HEAD) : -2]
    if inner.translate(None, _NUMBER_BYTES):
        return None
    if inner.startswith(b"["):
        if not inner.endswith(b"]"):
            return None
        text = inner[1:-1].replace(b"], [", b"\n")
        if b"[" in text or b"]" in text:
            return None
        first_line = text.split(b"\n", 1)[0]
        width = first_line.count(b",") + 1 if first_line.strip() else 0
        names = [f"#{i}" for i in range(width)]
    else:
        if b"." not in inner and b"e" not in inner:  # integers keep their own type via JSON
            return None
        text = inner.replace(b", ", b"\n")
        if b"," in text:
            return None
        names = [""]
    if not names:
        return None
    import pyarrow.csv as pacsv

    try:
        table = pacsv.read_csv(
            io.BytesIO(text),
            read_options=pacsv.ReadOptions(column_names=names, use_threads=False),
            parse_options=pacsv.ParseOptions(newlines_in_values=False),
            convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.float64())),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    if table.num_rows != rows or any(c.null_count for c in table.columns):
        return None
    return {name: table.column(name).to_numpy() for name in names}


def _decode_v2(doc: Any, rows: int) -> dict[str, Any]:
    import numpy as np

    outputs = doc.get("outputs") if isinstance(doc, dict) else None
    if not isinstance(outputs, list) or not outputs:
        msg = "the answer has no 'outputs' list (Open Inference Protocol v2)"
        raise _BadResponse(msg)
    columns: dict[str, Any] = {}
    for out in outputs:
        name = str(out.get("name", f"output_{len(columns)}"))
        shape = list(out.get("shape") or [])
        data = out.get("data")
        arrow = _FROM_V2.get(str(out.get("datatype", "FP64")).upper(), pa.float64())
        if not shape or shape[0] != rows or not isinstance(data, list):
            msg = f"output {name!r} has shape {shape} for {rows} rows"
            raise _BadResponse(msg)
        width = math.prod(shape[1:]) if len(shape) > 1 else 1
        if arrow == pa.string() or arrow == pa.bool_():
            flat = list(itertools.chain.from_iterable(data)) if data and isinstance(data[0], list) else data
            if len(flat) != rows * width:
                msg = f"output {name!r} has {len(flat)} values for shape {shape}"
                raise _BadResponse(msg)
            parts = [flat[i::width] for i in range(width)]
        else:
            try:
                matrix = np.asarray(data, dtype=arrow.to_pandas_dtype()).reshape(rows, width)
            except (ValueError, TypeError):
                msg = f"output {name!r} data do not fit shape {shape}"
                raise _BadResponse(msg) from None
            parts = [matrix[:, i] for i in range(width)]
        if width == 1:
            columns[name] = parts[0]
        else:
            columns.update({f"{name}_{i}": part for i, part in enumerate(parts)})
    return columns


def _infer_type(values: Any) -> pa.DataType:
    arr = pa.array(values)
    if pa.types.is_null(arr.type):
        return pa.float64()
    if pa.types.is_integer(arr.type):
        return pa.int64()
    if pa.types.is_floating(arr.type):
        return pa.float64()
    if pa.types.is_large_string(arr.type):
        return pa.string()
    return arr.type


# --------------------------------------------------------------------------------------------
# The scorer


class _Outcome:
    __slots__ = ("body", "error", "retry_after", "seconds", "status")

    def __init__(
        self,
        *,
        status: int = 0,
        body: bytes = b"",
        error: str = "",
        retry_after: float | None = None,
        seconds: float = 0.0,
    ) -> None:
        self.status, self.body, self.error, self.retry_after, self.seconds = status, body, error, retry_after, seconds


class HttpScorer:
    """A model behind an HTTP endpoint; thread-safe, ``concurrency`` calls of ``score`` at once."""

    def __init__(self, runtime: HttpRuntime, version: ModelVersion, inputs: list[tuple[str, pa.DataType]]) -> None:
        self.version = version
        self.runtime = runtime
        self.url = runtime.endpoint_url(version)
        self.safe_url = _redact_url(self.url)
        self.payload = runtime.payload or _DEFAULT_PAYLOAD[runtime.endpoint]
        # Without an explicit choice, the plain MLflow endpoint tries Parquet and falls back to CSV.
        self._fallback_payload = "csv" if runtime.payload is None and self.payload == "parquet" else None
        self.concurrency = runtime.concurrency
        self._input_schema = pa.schema([pa.field(n, t) for n, t in inputs])
        self._secrets = [s for s in (runtime.token, runtime.password, *(runtime.headers or {}).values()) if s]
        parts = urlsplit(self.url)
        if parts.password:
            self._secrets.append(parts.password)
        if parts.query:
            self._secrets.append(parts.query)
        self._sizer = _BatchSizer(
            runtime.batch_rows, runtime.min_batch_rows, runtime.max_batch_rows, runtime.target_latency
        )
        self._breaker = _CircuitBreaker(runtime.breaker_threshold, runtime.breaker_cooldown)
        self._pool = ThreadPoolExecutor(max_workers=runtime.max_in_flight, thread_name_prefix="ml-assets-http")
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()
        self._pause_until = 0.0  # set by Retry-After: every thread waits, not only the one told
        self._chunks = itertools.count()
        self._closed = False
        self._stats_lock = threading.Lock()
        self.requests_sent = 0
        self.retries = 0
        try:
            self._output_schema, self._renames = self._learn_outputs()
        except BaseException:
            self.close()
            raise

    # -- protocol ---------------------------------------------------------------------------

    @property
    def input_schema(self) -> pa.Schema:
        return self._input_schema

    @property
    def output_schema(self) -> pa.Schema:
        return self._output_schema

    @property
    def batch_rows(self) -> int:
        """The request size the adaptive sizer has settled on so far."""
        return self._sizer.rows

    def __repr__(self) -> str:
        return f"HttpScorer({self.version.describe()}, url={self.safe_url!r}, payload={self.payload!r})"

    def score(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if batch.schema.names != self._input_schema.names:
            msg = f"{self.version.describe()}: expected columns {self._input_schema.names}, got {batch.schema.names}"
            raise SchemaMismatchError(msg)
        chunk = next(self._chunks)
        n = batch.num_rows
        if n == 0:
            empty = [pa.array([], type=f.type) for f in self._output_schema]
            return pa.RecordBatch.from_arrays(empty, schema=self._output_schema)
        # Enough pieces that the core's `concurrency` calls together fill `max_in_flight`
        # requests, but none smaller than the minimum request size.
        spread = min(math.ceil(self.runtime.max_in_flight / self.concurrency), max(1, n // self.runtime.min_batch_rows))
        pieces = max(1, math.ceil(n / self._sizer.rows), spread)
        step = math.ceil(n / pieces)
        abort = threading.Event()
        futures: list[Future[list[pa.Array]]] = [
            self._pool.submit(self._score_rows, batch.slice(start, min(step, n - start)), chunk, start, abort)
            for start in range(0, n, step)
        ]
        parts: list[list[pa.Array]] = []
        try:
            parts.extend(f.result() for f in futures)
        except BaseException:
            abort.set()
            for f in futures:
                f.cancel()
            raise
        columns = [pa.concat_arrays([p[i] for p in parts]) for i in range(len(self._output_schema))]
        return pa.RecordBatch.from_arrays(columns, schema=self._output_schema)

    def close(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._sessions_lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()

    def __enter__(self) -> HttpScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- outputs ----------------------------------------------------------------------------

    def _learn_outputs(self) -> tuple[pa.Schema, dict[str, str]]:
        """The output schema, and how to rename the server's columns into it."""
        rt = self.runtime
        signature_outputs = self.version.signature.outputs if self.version.signature else ()
        if not rt.probe:
            if not rt.output_names and not signature_outputs:
                msg = (
                    f"{self.version.describe()}: output columns unknown with probe=False; "
                    "give output_names or register a signature with named outputs"
                )
                raise ModelLoadError(msg)
            specs = (
                [(n, pa.float64()) for n in rt.output_names]
                if rt.output_names
                else [(c.name, _arrow_type(c.type)) for c in signature_outputs]
            )
            return self._select(specs), {}
        probe = pa.RecordBatch.from_pylist([self._probe_row()], schema=self._input_schema)
        try:
            try:
                columns = self._request(probe, chunk=-1, start=0, abort=threading.Event())
            except _UnsupportedMediaType:
                if self._fallback_payload is None:
                    raise
                log.info(
                    "%s: %s does not take %s bodies; using %s",
                    self.version.describe(),
                    self.safe_url,
                    self.payload,
                    self._fallback_payload,
                )
                self.payload = self._fallback_payload
                columns = self._request(probe, chunk=-1, start=0, abort=threading.Event())
        except ScoringError as exc:
            msg = f"{self.version.describe()}: probing {self.safe_url} with one row failed: {exc}"
            raise ModelLoadError(msg) from exc
        server_names = list(columns)
        unnamed = all(n == "" or n.startswith("#") for n in server_names)
        named_signature = [c for c in signature_outputs if c.name]
        if rt.output_names:
            if len(rt.output_names) != len(server_names):
                msg = (
                    f"{self.version.describe()}: output_names has {len(rt.output_names)} names "
                    f"but the server returns {len(server_names)} columns ({server_names})"
                )
                raise ModelLoadError(msg)
            names = list(rt.output_names)
        elif unnamed and len(named_signature) == len(server_names):
            names = [c.name for c in named_signature]
        elif unnamed:
            names = ["prediction"] if server_names == [""] else [f"prediction_{n[1:]}" for n in server_names]
        else:
            names = server_names
        sig_types = {c.name: c.type for c in named_signature}
        specs = []
        for name, server_name in zip(names, server_names, strict=True):
            values = columns[server_name]
            arrow = _arrow_type(sig_types[name]) if name in sig_types else _infer_type(values)
            specs.append((name, arrow))
        renames = dict(zip(server_names, names, strict=True))
        return self._select(specs), renames

    def _select(self, specs: list[tuple[str, pa.DataType]]) -> pa.Schema:
        keep = self.runtime.outputs
        if keep:
            have = dict(specs)
            unknown = [c for c in keep if c not in have]
            if unknown:
                msg = f"{self.version.describe()}: no output column(s) {unknown}; the server gives {list(have)}"
                raise SchemaMismatchError(msg)
            specs = [(c, have[c]) for c in keep]
        return pa.schema([pa.field(n, t) for n, t in specs])

    def _probe_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for f in self._input_schema:
            if pa.types.is_string(f.type) or pa.types.is_large_string(f.type):
                row[f.name] = ""
            elif pa.types.is_boolean(f.type):
                row[f.name] = False
            elif pa.types.is_binary(f.type):
                row[f.name] = b""
            elif pa.types.is_timestamp(f.type):
                row[f.name] = 0
            else:
                row[f.name] = 0
        return row

    def _to_arrays(self, columns: dict[str, Any], chunk: int, start: int, rows: int) -> list[pa.Array]:
        renamed = {self._renames.get(k, k): v for k, v in columns.items()} if self._renames else columns
        arrays = []
        for f in self._output_schema:
            if f.name not in renamed:
                msg = (
                    f"{self.version.describe()}: {self._where(chunk, start, rows)}: the answer has no column "
                    f"{f.name!r} (got {list(renamed)[:8]})"
                )
                raise ScoringError(msg)
            values = renamed[f.name]
            try:
                arrays.append(pa.array(values, type=f.type))
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as exc:
                msg = (
                    f"{self.version.describe()}: {self._where(chunk, start, rows)}: column {f.name!r} "
                    f"does not convert to {f.type}: {_shorten(str(exc), 160)}"
                )
                raise ScoringError(msg) from None
            if len(arrays[-1]) != rows:
                msg = (
                    f"{self.version.describe()}: {self._where(chunk, start, rows)}: column {f.name!r} has "
                    f"{len(arrays[-1])} values for {rows} rows"
                )
                raise ScoringError(msg)
        return arrays

    # -- requests ---------------------------------------------------------------------------

    def _where(self, chunk: int, start: int, rows: int) -> str:
        if chunk < 0:
            return "probe row"
        return f"chunk {chunk} rows {start}-{start + rows - 1}"

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            import requests
            from requests.adapters import HTTPAdapter

            session = requests.Session()
            session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0))
            session.mount("https://", HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0))
            session.verify = self.runtime.verify
            session.trust_env = False  # proxies from the environment would see the bearer token
            session.headers.update(self.runtime.headers or {})
            if self.runtime.token:
                session.headers["Authorization"] = f"Bearer {self.runtime.token}"
            if self.runtime.username is not None:
                session.auth = (self.runtime.username, self.runtime.password or "")
            self._local.session = session
            with self._sessions_lock:
                self._sessions.append(session)
        return session

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _post(self, body: bytes, content_type: str) -> _Outcome:
        import requests

        started = time.perf_counter()
        try:
            response = self._session().post(
                self.url,
                data=body,
                headers={"Content-Type": content_type, "Accept": "application/json"},
                timeout=(self.runtime.connect_timeout, self.runtime.read_timeout),
            )
            content = response.content
        except requests.exceptions.ConnectTimeout:
            return _Outcome(error=f"connect timeout after {self.runtime.connect_timeout:g}s")
        except requests.exceptions.ReadTimeout:
            return _Outcome(error=f"read timeout after {self.runtime.read_timeout:g}s", status=-1)
        except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            reason = exc.args[0] if exc.args else exc
            reason = getattr(reason, "reason", reason)
            return _Outcome(
                error=f"connection failed ({type(exc).__name__}: {_shorten(self._redact(str(reason)), 120)})"
            )
        except requests.exceptions.RequestException as exc:
            msg = f"{self.version.describe()}: request to {self.safe_url} failed: {type(exc).__name__}"
            raise ScoringError(msg) from None
        return _Outcome(
            status=response.status_code,
            body=content,
            retry_after=_retry_after(response.headers.get("Retry-After")),
            seconds=time.perf_counter() - started,
        )

    def _server_message(self, outcome: _Outcome) -> str:
        text = outcome.body[:4000].decode("utf-8", "replace")
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            parts = [str(doc[k]) for k in ("error_code", "message", "error", "detail") if doc.get(k)]
            text = ": ".join(parts) or text
        return _shorten(self._redact(text))

    def _score_rows(self, rows: pa.RecordBatch, chunk: int, start: int, abort: threading.Event) -> list[pa.Array]:
        columns = self._request(rows, chunk=chunk, start=start, abort=abort)
        return self._to_arrays(columns, chunk, start, rows.num_rows)

    def _request(self, rows: pa.RecordBatch, *, chunk: int, start: int, abort: threading.Event) -> dict[str, Any]:
        """Send ``rows`` until the server answers usably: retry, split on 413, or raise ScoringError."""
        rt = self.runtime
        n = rows.num_rows
        where = self._where(chunk, start, n)
        body, content_type = encode(rows, self.payload, v2_layout=rt.v2_layout, v2_input_name=rt.v2_input_name)
        deadline = time.monotonic() + rt.retry_deadline
        attempt = 0
        while True:
            attempt += 1
            if abort.is_set() or self._closed:
                msg = f"{self.version.describe()}: {where}: abandoned because another request of the chunk failed"
                raise ScoringError(msg)
            if not self._breaker.allow():
                msg = (
                    f"{self.version.describe()}: {where}: circuit open after {self._breaker.failures} failures in a "
                    f"row at {self.safe_url} (last: {self._breaker.last_failure}); not sending more requests "
                    f"for {rt.breaker_cooldown:g}s"
                )
                raise ScoringError(msg)
            wait = self._pause_until - time.monotonic()
            if wait > 0:
                time.sleep(min(wait, max(0.0, deadline - time.monotonic())))
            with self._stats_lock:
                self.requests_sent += 1
            outcome = self._post(body, content_type)
            if outcome.status == 200:
                try:
                    columns = decode(outcome.body, self.payload, n)
                except _BadResponse as exc:
                    self._breaker.success()  # the server is up; the answer is unusable, no retry helps
                    msg = f"{self.version.describe()}: {where}: unusable answer from {self.safe_url}: {exc}"
                    raise ScoringError(msg) from None
                self._breaker.success()
                if chunk >= 0:
                    self._sizer.observe(n, outcome.seconds)
                return columns
            if outcome.status == 413 and n > 1:
                self._breaker.success()
                self._sizer.shrink(n, too_large=True)
                half = n // 2
                log.warning(
                    "%s: %s at %s: 413 request too large; splitting into %d + %d rows",
                    self.version.describe(),
                    where,
                    self.safe_url,
                    half,
                    n - half,
                )
                first = self._request(rows.slice(0, half), chunk=chunk, start=start, abort=abort)
                second = self._request(rows.slice(half), chunk=chunk, start=start + half, abort=abort)
                return _concat_columns(first, second)
            if outcome.status and outcome.status not in _RETRY_STATUS and outcome.status > 0:
                self._breaker.success()
                msg = (
                    f"{self.version.describe()}: {where}: {self.safe_url} answered {outcome.status}: "
                    f"{self._server_message(outcome) or 'no message'}"
                )
                raise (_UnsupportedMediaType if outcome.status == 415 else ScoringError)(msg)
            what = outcome.error or f"HTTP {outcome.status}: {self._server_message(outcome)[:120]}"
            if outcome.status != 429:  # 429 says the server is alive and asks us to slow down
                self._breaker.failure(what)
            if outcome.status == -1 or outcome.status in (408, 504):
                self._sizer.shrink(n)
            remaining = deadline - time.monotonic()
            if attempt >= rt.max_attempts or remaining <= 0:
                msg = (
                    f"{self.version.describe()}: {where}: {self.safe_url} failed {attempt} time(s) within "
                    f"{rt.retry_deadline:g}s; last: {what}"
                )
                raise ScoringError(msg)
            backoff = random.uniform(0, min(rt.backoff_max, rt.backoff_base * 2 ** (attempt - 1)))
            delay = max(backoff, outcome.retry_after or 0.0)
            if delay > remaining:
                msg = (
                    f"{self.version.describe()}: {where}: {self.safe_url} failed ({what}) and asks to wait "
                    f"{delay:.1f}s, beyond the retry deadline of {rt.retry_deadline:g}s"
                )
                raise ScoringError(msg)
            if outcome.retry_after:
                self._pause_until = max(self._pause_until, time.monotonic() + outcome.retry_after)
            with self._stats_lock:
                self.retries += 1
            log.warning(
                "%s: %s at %s: %s; retry %d/%d in %.2fs",
                self.version.describe(),
                where,
                self.safe_url,
                what,
                attempt,
                rt.max_attempts - 1,
                delay,
            )
            if abort.wait(delay):
                continue  # loop top raises the abandonment error


def _concat_columns(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    out: dict[str, Any] = {}
    for key in first:
        a, b = first[key], second.get(key)
        if b is None:
            out[key] = a
        elif hasattr(a, "dtype") and hasattr(b, "dtype"):
            out[key] = np.concatenate([a, b])
        else:
            out[key] = list(a) + list(b)
    for key in second:
        out.setdefault(key, second[key])
    return out


__all__ = ["ENDPOINTS", "PAYLOADS", "HttpRuntime", "HttpScorer", "decode", "encode"]
