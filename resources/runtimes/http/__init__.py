"""Scoring through HTTP model servers (MLflow ``/invocations``, Databricks, Prinz, Open Inference
Protocol v2): ``client`` (the runtime and its scorer), ``codecs`` (request and response bodies),
``batching`` (adaptive request size, 413 split, circuit breaker). HTTP itself (sessions, retry
policy, ``Retry-After``, redaction) is shared: ``ml_assets.resources.core.http``."""

from ml_assets.resources.runtimes.http.client import ENDPOINTS, HttpRuntime, HttpScorer
from ml_assets.resources.runtimes.http.codecs import PAYLOADS, decode, encode

__all__ = ["ENDPOINTS", "PAYLOADS", "HttpRuntime", "HttpScorer", "decode", "encode"]
