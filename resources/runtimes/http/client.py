"""The HTTP runtime and its scorer: MLflow ``/invocations`` and the Open Inference Protocol v2.

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

import itertools
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, urlsplit

import pyarrow as pa

from ml_assets.resources.core.errors import (
    ModelLoadError,
    ModelRefError,
    RowsRejectedError,
    SchemaMismatchError,
    ScoringError,
)
from ml_assets.resources.core.formats import parse_mlmodel
from ml_assets.resources.core.http import RetryPolicy, join_url, new_session, redact, retry_after
from ml_assets.resources.core.models import ColumnSpec, ModelRef, ModelVersion
from ml_assets.resources.core.predictions import (
    LABEL,
    PREDICTION,
    Naming,
    OutputMap,
    bare_matrix_map,
    check_naming,
    classifier_map,
    identity_map,
)
from ml_assets.resources.runtimes.http.batching import BatchSizer, CircuitBreaker, split_in_two
from ml_assets.resources.runtimes.http.codecs import (
    PAYLOADS,
    BadResponse,
    Payload,
    arrow_type,
    decode,
    encode,
    infer_type,
)

if TYPE_CHECKING:
    import requests

# One logger for the runtime, whichever of its modules logs.
log = logging.getLogger("ml_assets.resources.runtimes.http")

Endpoint = Literal["mlflow", "databricks", "prinz", "v2", "v2_versioned", "template"]
V2Layout = Literal["columns", "tensor"]

ENDPOINTS: tuple[str, ...] = ("mlflow", "databricks", "prinz", "v2", "v2_versioned", "template")
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
# MLflow echoes the input frame in some error messages ("Failed to predict data '...'");
# we keep the server's words but never the data.
_ECHOED_DATA = re.compile(r"data\s+'.*?'(?=\s*(?:\.|with\b|$))", re.DOTALL)


def _shorten(text: str, limit: int = 300) -> str:
    text = _ECHOED_DATA.sub("data <omitted>", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
        v2_outputs: the named outputs a v2 request asks for. Default: ``predict`` and
            ``predict_proba`` (MLServer's scikit-learn runtime), then, if the server refuses them,
            ``predict`` alone (labels only, said in ``output_note``), then the server's default.
        classes: the class labels of an unnamed probability matrix (default ``0..k-1``).
        naming: ``contract`` (default): an unnamed ``[N, k]`` answer becomes ``probability_<class>``
            plus ``label`` (the most probable class), v2 ``predict``/``predict_proba`` become
            ``label``/``probability_<class>`` (a float ``predict`` alone: ``prediction``); named
            columns keep their names. ``native``: the server's names (unnamed:
            ``prediction``/``prediction_<j>``).
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
    v2_outputs: Sequence[str] | None = None
    classes: Sequence[Any] | None = None
    naming: Naming = "contract"

    def __post_init__(self) -> None:
        check_naming(self.naming)
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
            return join_url(self.url, template, **fields)  # the path goes before the url's query string
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
        doc = parse_mlmodel(mlmodel.read_text())
        specs = json.loads((doc.get("signature") or {}).get("inputs") or "[]")
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
    return [(name, arrow_type(type_name)) for name, type_name in pairs]


# What servers answer when the rows, not the service, are at fault (MLflow, KServe, Triton: 400; FastAPI: 422).
_ROWS_REJECTED = frozenset({400, 422})


class _UnsupportedMediaType(ScoringError):
    """The server does not take this body format (415)."""


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
        self.safe_url = redact(self.url)
        self.payload = runtime.payload or _DEFAULT_PAYLOAD[runtime.endpoint]
        # Without an explicit choice, the plain MLflow endpoint tries Parquet and falls back to CSV.
        self._fallback_payload = "csv" if runtime.payload is None and self.payload == "parquet" else None
        self.concurrency = runtime.concurrency
        self.input_schema = pa.schema([pa.field(n, t) for n, t in inputs])
        self._secrets = [s for s in (runtime.token, runtime.password, *(runtime.headers or {}).values()) if s]
        parts = urlsplit(self.url)
        if parts.password:
            self._secrets.append(parts.password)
        if parts.query:
            self._secrets.append(parts.query)
        self.retry_policy = RetryPolicy(
            max_attempts=runtime.max_attempts,
            backoff_base=runtime.backoff_base,
            backoff_max=runtime.backoff_max,
            deadline_s=runtime.retry_deadline,
        )
        self._sizer = BatchSizer(
            runtime.batch_rows, runtime.min_batch_rows, runtime.max_batch_rows, runtime.target_latency
        )
        self._breaker = CircuitBreaker(runtime.breaker_threshold, runtime.breaker_cooldown)
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
        contract_outputs = ("predict", "predict_proba")
        self._v2_outputs: list[str] = list(
            runtime.v2_outputs if runtime.v2_outputs is not None else contract_outputs if self.payload == "v2" else ()
        )
        self._v2_note = ""
        try:
            native, self._renames = self._learn_outputs()
            mapping = (
                identity_map(native) if runtime.naming == "native" or runtime.output_names else self._contract(native)
            )
            if runtime.outputs:
                mapping = mapping.keep(list(runtime.outputs), what=version.describe())
            self._map = mapping
            self._native_schema = pa.schema([native.field(n) for n in mapping.sources])
            self.output_schema = mapping.schema
            # A refusal already says "labels only"; otherwise both notes tell something.
            notes = [self._v2_note] if self._v2_note.startswith(mapping.note) else [mapping.note, self._v2_note]
            self.output_note = "; ".join(n for n in notes if n)
            self.classes = list(mapping.classes) or None
        except BaseException:
            self.close()
            raise

    # -- protocol ---------------------------------------------------------------------------

    @property
    def batch_rows(self) -> int:
        """The request size the adaptive sizer has settled on so far."""
        return self._sizer.rows

    def __repr__(self) -> str:
        return f"HttpScorer({self.version.describe()}, url={self.safe_url!r}, payload={self.payload!r})"

    def score(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if batch.schema.names != self.input_schema.names:
            msg = f"{self.version.describe()}: expected columns {self.input_schema.names}, got {batch.schema.names}"
            raise SchemaMismatchError(msg)
        chunk = next(self._chunks)
        n = batch.num_rows
        if n == 0:
            empty = [pa.array([], type=f.type) for f in self.output_schema]
            return pa.RecordBatch.from_arrays(empty, schema=self.output_schema)
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
        columns = [pa.concat_arrays([p[i] for p in parts]) for i in range(len(self._native_schema))]
        return self._map.apply(pa.RecordBatch.from_arrays(columns, schema=self._native_schema))

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
                else [(c.name, arrow_type(c.type)) for c in signature_outputs]
            )
            return pa.schema([pa.field(n, t) for n, t in specs]), {}
        probe = pa.RecordBatch.from_pylist([self._probe_row()], schema=self.input_schema)
        try:
            try:
                columns = self._probe(probe)
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
                columns = self._probe(probe)
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
            arrow = arrow_type(sig_types[name]) if name in sig_types else infer_type(values)
            specs.append((name, arrow))
        renames = dict(zip(server_names, names, strict=True))
        return pa.schema([pa.field(n, t) for n, t in specs]), renames

    def _probe(self, probe: pa.RecordBatch) -> dict[str, Any]:
        """One row through the server; a v2 server that refuses the outputs the contract asks for is
        asked for fewer (``predict`` alone: labels only), then for its default outputs."""
        while True:
            try:
                return self._request(probe, chunk=-1, start=0, abort=threading.Event())
            except _UnsupportedMediaType:
                raise
            except ScoringError as exc:
                if self.runtime.v2_outputs is not None or not self._v2_outputs:
                    raise
                refused = list(self._v2_outputs)
                self._v2_outputs = ["predict"] if len(refused) > 1 else []
                self._v2_note = f"the server refused outputs {refused} ({_shorten(str(exc), 160)})"
                if "predict_proba" in refused:
                    self._v2_note = f"labels only: {self._v2_note}"
                log.info(
                    "%s: %s; asking for %s", self.version.describe(), self._v2_note, self._v2_outputs or "defaults"
                )

    def _contract(self, native: pa.Schema) -> OutputMap:
        """The server's columns under the prediction contract (see ``HttpRuntime``'s ``naming``)."""
        what = self.version.describe()
        names = native.names
        floats = all(pa.types.is_floating(f.type) for f in native)
        bare = [f"prediction_{j}" for j in range(len(names))]
        if len(names) > 1 and names == bare and floats:
            return bare_matrix_map(list(native), classes=self.runtime.classes, what=what)
        proba = [f for f in native if f.name == "predict_proba" or f.name.startswith("predict_proba_")]
        predict = native.field("predict") if "predict" in names else None
        if proba:
            # MLServer's sklearn runtime: predict_proba's columns follow the model's classes_ order.
            if self.runtime.classes is not None:
                classes: list[Any] = list(self.runtime.classes)
            elif predict is not None and pa.types.is_string(predict.type):
                msg = (
                    f"{what}: the server's predict_proba has no class labels and predict gives strings; "
                    "name the classes in model order (runtime option classes=[...])"
                )
                raise ModelLoadError(msg)
            else:
                classes = list(range(len(proba)))
            if len(classes) != len(proba):
                msg = f"{what}: classes names {len(classes)} classes but predict_proba has {len(proba)} columns"
                raise SchemaMismatchError(msg)
            others = [f for f in native if f not in proba and f.name != "predict"]
            note = "v2 predict + predict_proba" + ("" if self.runtime.classes else f", classes {classes} by position")
            return classifier_map(
                classes,
                probabilities=dict(zip(classes, proba, strict=True)),
                label="predict" if predict is not None else None,
                others=others,
                note=note,
            )
        if predict is not None and self.payload == "v2":
            others = tuple((f.name, f) for f in native if f.name != "predict")
            if pa.types.is_floating(predict.type):
                return OutputMap((("predict", pa.field(PREDICTION, predict.type)), *others), note="a v2 regression")
            label_type = pa.int64() if pa.types.is_integer(predict.type) else pa.string()
            return OutputMap((("predict", pa.field(LABEL, label_type)), *others), note="labels only")
        return identity_map(native, note="the server's columns under their own names")

    def _probe_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for f in self.input_schema:
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
        for f in self._native_schema:
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
            rt = self.runtime
            # One connection per thread: the pool's threads never wait on each other for a socket.
            session = new_session(
                verify=rt.verify,
                headers=rt.headers,
                token=rt.token,
                basic_auth=(rt.username, rt.password or "") if rt.username is not None else None,
                pool_size=1,
            )
            self._local.session = session
            with self._sessions_lock:
                self._sessions.append(session)
        return session

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets)

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
            retry_after=retry_after(response.headers.get("Retry-After")),
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
        body, content_type = encode(
            rows, self.payload, v2_layout=rt.v2_layout, v2_input_name=rt.v2_input_name, v2_outputs=self._v2_outputs
        )
        policy = self.retry_policy
        started = time.monotonic()
        deadline = started + policy.deadline_s
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
                except BadResponse as exc:
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
                log.warning(
                    "%s: %s at %s: 413 request too large; splitting into %d + %d rows",
                    self.version.describe(), where, self.safe_url, n // 2, n - n // 2,
                )  # fmt: skip
                return split_in_two(
                    rows, lambda half, offset: self._request(half, chunk=chunk, start=start + offset, abort=abort)
                )
            if outcome.status > 0 and not policy.retryable(outcome.status):
                self._breaker.success()
                msg = (
                    f"{self.version.describe()}: {where}: {self.safe_url} answered {outcome.status}: "
                    f"{self._server_message(outcome) or 'no message'}"
                )
                if outcome.status in _ROWS_REJECTED:
                    raise RowsRejectedError(msg, stage="remote")
                raise (_UnsupportedMediaType if outcome.status == 415 else ScoringError)(msg)
            what = outcome.error or f"HTTP {outcome.status}: {self._server_message(outcome)[:120]}"
            if outcome.status != 429:  # 429 says the server is alive and asks us to slow down
                self._breaker.failure(what)
            if outcome.status == -1 or outcome.status in (408, 504):
                self._sizer.shrink(n)
            delay = policy.delay(attempt, started=started, retry_after=outcome.retry_after)
            if delay is None:
                if outcome.retry_after and attempt < policy.max_attempts:
                    msg = (
                        f"{self.version.describe()}: {where}: {self.safe_url} failed ({what}) and asks to wait "
                        f"{outcome.retry_after:.1f}s, beyond the retry deadline of {policy.deadline_s:g}s"
                    )
                else:
                    msg = (
                        f"{self.version.describe()}: {where}: {self.safe_url} failed {attempt} time(s) within "
                        f"{policy.deadline_s:g}s; last: {what}"
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
                policy.max_attempts - 1,
                delay,
            )
            if abort.wait(delay):
                continue  # loop top raises the abandonment error


__all__ = ["ENDPOINTS", "HttpRuntime", "HttpScorer"]
