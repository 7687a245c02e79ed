"""The one HTTP layer for everything of ours that talks HTTP: the HTTP registry, the HTTP runtime and
MLflow's REST client (which retries inside urllib3, configured from the same policy).

- ``new_session``: a ``requests.Session`` that never reads proxies or credentials from the
  environment, verifies TLS as told, and never retries on its own: retries belong to the policy,
  so each one is bounded, logged and seen by the caller (circuit breaker, adaptive batch size).
- ``RetryPolicy``: which answers are retried (``RETRY_STATUS``), how long to wait (full-jitter
  exponential backoff, at least what ``Retry-After`` asks) and when to give up (attempts and a
  deadline).
- ``retry_after``: the seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date),
  parsed by urllib3.
- ``redact``: what of a URL or a message may reach logs, errors and metadata.

``requests`` is imported lazily: it comes with the ``http`` and ``mlflow`` extras.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import requests

# Retried: timeouts, "too early", throttling and the server-side errors a retry can cure.
# Not retried: other 4xx (the request is wrong), 413 (the caller splits), 501/505 (never cured).
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})

_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]*")
_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@")
# What a server may echo back: credential headers (any Authorization scheme, cookies) as
# "Name: value" or JSON "name": "value" (the whole value goes); a bare "<scheme> <credentials>"
# (a token68 or auth-params, as RFC 9110 writes them); credential parameters (name=value)
# outside URLs too.
_HEADERS = re.compile(
    r"(?i)(\b(?:proxy-authorization|authorization|set-cookie|cookie)\b[\"']?\s*[:=]\s*)"
    r"(?:'(?:\\'|[^'\r\n])*'|\"(?:\\\"|[^\"\r\n])*\"|[^\r\n]+)"
)
_PARAM = r"[A-Za-z0-9_\-]+=(?:\"[^\"]*\"|[^\s,\"]*)"
_SCHEME = re.compile(
    r"(?i)\b(Basic|Bearer|Digest|Negotiate|NTLM|Token|ApiKey|HOBA|Mutual|SCRAM-SHA-1|SCRAM-SHA-256|vapid"
    rf"|AWS4-HMAC-SHA256|DPoP|GSSAPI)\s+(?:{_PARAM}(?:\s*,\s*{_PARAM})*|[A-Za-z0-9._~+/\-]{{8,}}=*)"
)
_SECRET_NAMES = (
    r"x-api-key|api[_-]?key|apikey|x-auth-token|auth[_-]?token|access[_-]?token|refresh[_-]?token|id[_-]?token"
    r"|client[_-]?secret|password|passwd|secret|token|x-amz-security-token|x-amz-signature|x-amz-credential"
    r"|signature|sig"
)
_NAMED = re.compile(rf"(?i)(\b(?:{_SECRET_NAMES})\b[\"']?\s*[:=]\s*[\"']?)([^\"'\s&;,}}\]]+)")


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` fit for logs, errors and metadata: every URL in it loses its credentials
    (``//***@``), query string and fragment; credentials of every ``Authorization`` scheme,
    cookies and credential parameters become ``***``, and so does each of ``secrets``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")

    def clean(match: re.Match[str]) -> str:
        url = _USERINFO.sub(r"\1***@", match.group(0))
        return re.split(r"[?#]", url, maxsplit=1)[0]

    text = _URL.sub(clean, text)
    text = _HEADERS.sub(lambda m: m.group(1) + _quoted_stars(m.group(0)[len(m.group(1)) :]), text)
    text = _SCHEME.sub(r"\1 ***", text)
    return _NAMED.sub(r"\1***", text)


def _quoted_stars(value: str) -> str:
    """``***`` in the quotes the redacted value had, so JSON and reprs stay readable."""
    return f"{value[0]}***{value[0]}" if value[:1] in ("'", '"') else "***"


def join_url(base: str, template: str = "{base}", **fields: str) -> str:
    """``template`` filled with ``base`` (its path only) and ``fields``, then ``base``'s query string
    put back at the end: ``https://h/score?api_key=k`` + ``{base}/invocations`` is
    ``https://h/score/invocations?api_key=k``, not ``.../score?api_key=k/invocations``."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(base)
    path_only = urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")).rstrip("/")
    filled = urlsplit(template.format(base=path_only, **fields))
    query = "&".join(q for q in (filled.query, parts.query) if q)
    return urlunsplit((filled.scheme, filled.netloc, filled.path, query, ""))


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date); None when
    absent or unreadable."""
    if not value:
        return None
    from urllib3.exceptions import InvalidHeader
    from urllib3.util import Retry

    try:
        return max(0.0, float(Retry().parse_retry_after(value.strip())))
    except (InvalidHeader, ValueError, TypeError, OverflowError):
        return None


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to retry one request.

    Args:
        max_attempts: attempts in all, the first included.
        backoff_base / backoff_max: the n-th retry waits a random time in
            ``[0, min(backoff_max, backoff_base * 2**(n-1))]`` (full jitter: clients that failed
            together do not come back together), or longer if ``Retry-After`` asks.
        deadline_s: no retry starts, and no wait reaches, past this many seconds after the first
            attempt.
    """

    max_attempts: int = 5
    backoff_base: float = 0.5
    backoff_max: float = 20.0
    deadline_s: float = 120.0
    retry_status: frozenset[int] = RETRY_STATUS

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.backoff_base < 0 or self.backoff_max < 0 or self.deadline_s <= 0:
            msg = (
                f"retry policy: need max_attempts >= 1, backoffs >= 0 and deadline_s > 0; got {self.max_attempts}, "
                f"{self.backoff_base}, {self.backoff_max}, {self.deadline_s}"
            )
            raise ValueError(msg)

    def retryable(self, status: int) -> bool:
        return status in self.retry_status

    def delay(self, attempt: int, *, started: float, retry_after: float | None = None) -> float | None:
        """How long to wait before attempt ``attempt + 1`` after attempt ``attempt`` (1-based) failed;
        None when the attempts or the deadline (counted from ``started``, a ``time.monotonic()``)
        are spent, or ``Retry-After`` asks for a wait past the deadline."""
        remaining = started + self.deadline_s - time.monotonic()
        if attempt >= self.max_attempts or remaining <= 0:
            return None
        wait = max(random.uniform(0, min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))), retry_after or 0)
        return wait if wait <= remaining else None

    def mlflow_environment(self, timeout_s: float) -> dict[str, str]:
        """The same bounds for MLflow's REST client, which retries inside urllib3 and reads its
        settings from these environment variables at every call."""
        return {
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, round(timeout_s))),
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(self.max_attempts - 1),
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(max(1, round(self.backoff_base))),
            "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": str(self.backoff_base),
        }


def new_session(
    *,
    verify: bool | str = True,
    headers: Mapping[str, str] | None = None,
    token: str | None = None,
    basic_auth: tuple[str, str] | None = None,
    pool_size: int = 10,
) -> requests.Session:
    """A session for one client: no retries of its own, no proxies or netrc from the environment
    (they would see the credentials), TLS verified as told, credentials on every request."""
    import requests
    from requests.adapters import HTTPAdapter

    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.trust_env = False
    session.verify = verify
    session.headers.update(headers or {})
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    if basic_auth is not None:
        session.auth = basic_auth
    return session


__all__ = ["RETRY_STATUS", "RetryPolicy", "join_url", "new_session", "redact", "retry_after"]
