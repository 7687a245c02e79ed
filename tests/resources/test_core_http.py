"""The shared HTTP layer: one redaction, one Retry-After parser, one retry policy (also MLflow's)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from ml_assets.resources.core.http import RETRY_STATUS, RetryPolicy, new_session, redact, retry_after


def test_redact_removes_credentials_queries_and_named_secrets_from_every_url_in_a_message():
    text = (
        "GET https://alice:hunter2@models.example.com/index.json?sig=abc#frag failed; "
        "s3://KEY:SECRET@bucket/x?versionId=1 too, token tok-123 in a header"
    )
    assert redact(text, ["tok-123", None, ""]) == (
        "GET https://***@models.example.com/index.json failed; s3://***@bucket/x too, token *** in a header"
    )
    assert redact("http://127.0.0.1:5000/invocations") == "http://127.0.0.1:5000/invocations"


def test_retry_after_reads_seconds_and_http_dates_and_ignores_garbage():
    assert retry_after("3") == 3.0
    assert retry_after(" 0 ") == 0.0
    when = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 25 <= retry_after(when) <= 30
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past: no wait
    assert retry_after("soon") is None
    assert retry_after(None) is None


def test_the_policy_bounds_attempts_and_deadline_and_honours_retry_after():
    policy = RetryPolicy(max_attempts=3, backoff_base=0.1, backoff_max=0.2, deadline_s=5)
    started = time.monotonic()
    delays = [policy.delay(attempt, started=started) for attempt in (1, 2)]
    assert all(0 <= d <= 0.2 for d in delays)
    assert policy.delay(3, started=started) is None  # attempts spent
    assert policy.delay(1, started=started, retry_after=2.0) == 2.0
    assert policy.delay(1, started=started, retry_after=60.0) is None  # asks past the deadline
    assert policy.delay(1, started=started - 10) is None  # deadline spent
    assert [s for s in (408, 413, 400, 425, 429, 500, 501, 503) if policy.retryable(s)] == [408, 425, 429, 500, 503]
    assert policy.retry_status == RETRY_STATUS
    with pytest.raises(ValueError, match="need max_attempts >= 1"):
        RetryPolicy(max_attempts=0)


def test_mlflow_gets_the_same_bounds():
    env = RetryPolicy(max_attempts=3, backoff_base=1.0).mlflow_environment(30)
    assert env == {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "1.0",
    }


def test_sessions_never_retry_on_their_own_nor_read_the_environment():
    session = new_session(token="t0k", pool_size=3)
    adapter = session.get_adapter("http://127.0.0.1/")
    assert adapter.max_retries.total == 0
    assert session.trust_env is False
    assert session.headers["Authorization"] == "Bearer t0k"
    assert session.get_adapter("https://example.invalid/") is adapter
