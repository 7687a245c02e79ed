"""A read-only model registry over HTTP(S): one JSON index plus the model files it points to.

The index format is documented in ``docs/registries.md``; ``FileRegistry.index()`` builds it
from a file registry and ``ml_assets.resources.registries.server`` serves one. Every request has a
timeout and a bounded number of logged retries; the index is re-read with ``If-None-Match``
so a sensor polling it every few seconds costs a 304; files are verified against the sizes
and SHA-256 sums the index records, and again against the version's checksum by the cache.
Credentials (token, password) go only to the index's own origin and never into logs or errors.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from ml_assets.resources.core.cache import ArtifactCache
from ml_assets.resources.core.errors import ArtifactError, ModelNotFoundError, RegistryUnavailableError
from ml_assets.resources.core.http import RetryPolicy, new_session, redact, retry_after
from ml_assets.resources.core.models import ModelRef, ModelVersion
from ml_assets.resources.registries.manifests import (
    not_found_message,
    pick_version,
    safe_relative_path,
    validate_name,
    version_from_manifest,
)

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

INDEX_FORMAT_VERSION = 1


class HttpRegistry:
    """Models listed in a JSON index served over HTTP(S). Read-only.

    Args:
        url: the index URL (``https://models.example.com/index.json``) or the folder that holds
            ``index.json``.
        cache_dir: where fetched versions are cached (default ``$ML_ASSETS_CACHE_DIR``).
        token / token_env: a bearer token, or the environment variable holding one.
        username, password / password_env: HTTP basic auth.
        headers: extra request headers (their values are treated as secrets).
        timeout_s: read timeout of every request; ``connect_timeout_s`` for connecting.
        retries: extra attempts after a network error, a timeout, a retryable status
            (``ml_assets.resources.core.http.RETRY_STATUS``: 408/425/429/500/502/503/504), or a file
            whose size or SHA-256 does not match the index. Waits grow exponentially from
            ``backoff_s`` with full jitter, capped at 10 s, at least what ``Retry-After`` asks; no
            retry starts past ``retry_deadline_s``.
        verify: TLS verification: True, False or the path of a CA bundle.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        cache_dir: str | Path | None = None,
        token: str | None = None,
        token_env: str | None = None,
        username: str | None = None,
        password: str | None = None,
        password_env: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        retry_deadline_s: float = 120.0,
        verify: bool | str = True,
    ) -> None:
        if not url or urlsplit(url).scheme not in ("http", "https"):
            msg = f"the HTTP registry needs an http(s) URL of its index, got {redact(str(url))!r}"
            raise RegistryUnavailableError(msg)
        if retries < 0 or timeout_s <= 0 or connect_timeout_s <= 0:
            msg = "retries must be >= 0 and timeouts > 0"
            raise ValueError(msg)
        self.index_url = url if urlsplit(url).path.endswith(".json") else url.rstrip("/") + "/index.json"
        for attr, env in (("token", token_env), ("password", password_env)):
            if env is not None:
                if env not in os.environ:
                    msg = f"{attr}_env names the environment variable {env!r}, which is not set"
                    raise RegistryUnavailableError(msg)
                if attr == "token":
                    token = os.environ[env]
                else:
                    password = os.environ[env]
        self._token = token
        self._basic = (username, password or "") if username is not None else None
        self._headers = dict(headers or {})
        self.timeout = (connect_timeout_s, timeout_s)
        self.retries = retries
        self.retry_policy = RetryPolicy(
            max_attempts=retries + 1, backoff_base=backoff_s, backoff_max=10.0, deadline_s=retry_deadline_s
        )
        self.verify = verify
        self.cache = ArtifactCache(cache_dir)
        self._lock = threading.Lock()
        self._session: requests.Session | None = None
        self._index: dict[str, Any] | None = None
        self._etag: str | None = None
        self._last_modified: str | None = None
        self._files: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.requests_made = 0
        self.not_modified = 0

    @property
    def location(self) -> str:
        return redact(self.index_url)

    @property
    def registry_id(self) -> str:
        return f"http:{self.location}"

    @property
    def where(self) -> str:
        return f"HTTP registry {self.location}"

    def __repr__(self) -> str:
        return f"HttpRegistry({self.location!r})"

    # -- the Registry protocol -------------------------------------------------------------

    def list_models(self) -> list[str]:
        return sorted(self._models())

    def list_versions(self, name: str) -> list[ModelVersion]:
        validate_name(name)
        models = self._models()
        ref = ModelRef(raw=f"models:/{name}/latest", name=name, latest=True)
        if name not in models:
            raise ModelNotFoundError(
                not_found_message(self.where, ref, models=sorted(models), aliases={}, versions=[], stages={})
            )
        return [self._describe(name, v, ref, models[name]) for v in _sorted_versions(models[name])]

    def resolve(self, ref: ModelRef | str) -> ModelVersion:
        ref = ModelRef.parse(ref) if isinstance(ref, str) else ref
        if ref.direct_uri is not None:
            msg = f"{ref.raw!r} is a file, not a registry ref; it is scored without a registry"
            raise ModelNotFoundError(msg)
        validate_name(ref.name)
        models = self._models()
        model = models.get(ref.name)
        if model is None:
            raise ModelNotFoundError(
                not_found_message(self.where, ref, models=sorted(models), aliases={}, versions=[], stages={})
            )
        versions = _sorted_versions(model)
        chosen = pick_version(self.where, ref, versions, _aliases(model), _stages(model))
        return self._describe(ref.name, chosen, ref, model)

    def fetch(self, version: ModelVersion) -> Path:
        files = self._files.get((version.name, version.version))
        if files is None:
            model = self._models().get(version.name) or {}
            entry = (model.get("versions") or {}).get(version.version)
            if entry is None:
                msg = f"{version.describe()} is no longer listed in {self.where}"
                raise ArtifactError(msg)
            files = list(entry["files"])

        def download(dest: Path) -> None:
            for file in files:
                rel = safe_relative_path(str(file["path"]))
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                self._download(version, urljoin(self.index_url, str(file["url"])), target, rel, file)

        return self.cache.get_or_fetch(version, download)

    def promote(self, name: str, version: str, *, alias: str | None = None, stage: str | None = None) -> ModelVersion:
        msg = (
            f"{self.where} is read-only; promote {name!r} version {version} in the registry it is served from "
            "(e.g. `ml-assets models promote --registry file --registry-uri ROOT ...`)"
        )
        raise RegistryUnavailableError(msg)

    # -- the index ---------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Re-reads the index if it changed (a conditional GET); True when it did."""
        headers = {}
        if self._index is not None and self._etag:
            headers["If-None-Match"] = self._etag
        elif self._index is not None and self._last_modified:
            headers["If-Modified-Since"] = self._last_modified
        response = self._request(self.index_url, headers=headers, what="the index")
        try:
            if response.status_code == 304 and self._index is not None:
                self.not_modified += 1
                return False
            try:
                data = response.json()
            except ValueError as exc:
                msg = f"{self.where}: the index is not JSON ({response.headers.get('Content-Type', 'no content type')})"
                raise RegistryUnavailableError(msg) from exc
        finally:
            response.close()
        _check_index(data, self.where)
        with self._lock:
            self._index = data
            self._etag = response.headers.get("ETag")
            self._last_modified = response.headers.get("Last-Modified")
        return True

    def _models(self) -> dict[str, Any]:
        self.refresh()
        assert self._index is not None
        return self._index["models"]

    def _describe(self, name: str, number: str, ref: ModelRef, model: Mapping[str, Any]) -> ModelVersion:
        entry = model["versions"][number]
        manifest = {**entry, "name": name, "version": number}
        self._files[(name, number)] = list(entry["files"])
        return version_from_manifest(
            manifest,
            artifact_uri=urljoin(self.index_url, f"{name}/{number}/"),
            registry=self.registry_id,
            ref=ref.raw,
            aliases=_aliases(model),
            stages=_stages(model),
        )

    # -- HTTP --------------------------------------------------------------------------------

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            # No credentials on the session: they go only to the index's own origin (_auth_headers).
            self._session = new_session(verify=self.verify)
        return self._session

    def _auth_headers(self, url: str) -> dict[str, str]:
        """Credentials only for the index's own origin: file URLs may point at a CDN or object store."""
        if _origin(url) != _origin(self.index_url):
            return {}
        headers = dict(self._headers)
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        elif self._basic is not None:
            import base64

            pair = f"{self._basic[0]}:{self._basic[1]}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        return headers

    def _request(self, url: str, *, headers: Mapping[str, str], what: str, stream: bool = False) -> Any:
        """GET with a timeout and bounded retries; returns a 2xx or 304 response."""
        import requests

        shown = redact(url)
        policy = self.retry_policy
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            wait_at_least: float | None = None
            try:
                self.requests_made += 1
                response = self.session.get(
                    url, headers={**self._auth_headers(url), **headers}, timeout=self.timeout, stream=stream
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                problem = f"{type(exc).__name__}"
            except requests.RequestException as exc:
                msg = f"{self.where}: cannot GET {what} at {shown}: {type(exc).__name__}"
                raise RegistryUnavailableError(msg) from exc
            else:
                if response.status_code < 300 or response.status_code == 304:
                    return response
                status = response.status_code
                wait_at_least = retry_after(response.headers.get("Retry-After"))
                response.close()
                if status in (401, 403):
                    msg = f"{self.where}: GET {what} at {shown} was refused with HTTP {status}; check the credentials"
                    raise RegistryUnavailableError(msg)
                if status == 404:
                    error = ArtifactError if stream else RegistryUnavailableError
                    raise error(f"{self.where}: {what} not found at {shown} (HTTP 404)")
                if not policy.retryable(status):
                    msg = f"{self.where}: GET {what} at {shown} answered HTTP {status}"
                    raise RegistryUnavailableError(msg)
                problem = f"HTTP {status}"
            wait = policy.delay(attempt, started=started, retry_after=wait_at_least)
            if wait is None:
                msg = f"{self.where}: GET {what} at {shown} failed {attempt} times; last: {problem}"
                raise RegistryUnavailableError(msg)
            log.warning(
                "%s: GET %s at %s failed (%s); retry %d of %d in %.1fs",
                self.where, what, shown, problem, attempt, policy.max_attempts - 1, wait,
            )  # fmt: skip
            time.sleep(wait)

    def _download(self, version: ModelVersion, url: str, target: Path, rel: str, file: Mapping[str, Any]) -> None:
        """One file, streamed to disk and checked against the index; a bad copy is fetched again."""
        import requests

        size, sha = file.get("size"), file.get("sha256")
        problem = ""
        for attempt in range(self.retries + 1):
            digest = hashlib.sha256()
            try:
                response = self._request(url, headers={}, what=f"file {rel!r} of {version.describe()}", stream=True)
                with response, target.open("wb") as out:
                    for block in response.iter_content(1 << 20):
                        digest.update(block)
                        out.write(block)
            except RegistryUnavailableError as exc:
                raise ArtifactError(f"{version.describe()}: {exc}") from exc
            except (requests.RequestException, OSError) as exc:  # the body broke off mid-stream
                problem = f"the download broke off ({type(exc).__name__})"
            else:
                found = target.stat().st_size
                if size is not None and found != int(size):
                    problem = f"{found} bytes where the index records {size}"
                elif sha and digest.hexdigest() != sha:
                    problem = "its SHA-256 does not match the index"
                else:
                    return
            target.unlink(missing_ok=True)
            if attempt < self.retries:
                log.warning(
                    "%s: file %r of %s: %s; fetching it again (%d of %d)",
                    self.where, rel, version.describe(), problem, attempt + 1, self.retries,
                )  # fmt: skip
        msg = f"{version.describe()}: file {rel!r} from {redact(url)}: {problem} ({self.retries + 1} attempts)"
        raise ArtifactError(msg)


def _check_index(data: Any, where: str) -> None:
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        msg = f"{where}: the index has no 'models' object; see docs/registries.md for the format"
        raise RegistryUnavailableError(msg)
    found = data.get("format_version", INDEX_FORMAT_VERSION)
    if found != INDEX_FORMAT_VERSION:
        msg = f"{where}: index format_version {found!r} is not supported; expected {INDEX_FORMAT_VERSION}"
        raise RegistryUnavailableError(msg)
    for name, model in data["models"].items():
        versions = model.get("versions") if isinstance(model, dict) else None
        if not isinstance(versions, dict):
            msg = f"{where}: model {name!r} in the index has no 'versions' object"
            raise RegistryUnavailableError(msg)
        for number, entry in versions.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("format"), str) or not entry.get("files"):
                msg = f"{where}: model {name!r} version {number} in the index needs 'format' and 'files'"
                raise RegistryUnavailableError(msg)


def _sorted_versions(model: Mapping[str, Any]) -> list[str]:
    return sorted(
        (str(v) for v in model.get("versions") or {}), key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else 0, v)
    )


def _aliases(model: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in (model.get("aliases") or {}).items()}


def _stages(model: Mapping[str, Any]) -> dict[str, str]:
    return {str(n): str(e["stage"]) for n, e in (model.get("versions") or {}).items() if e.get("stage")}


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc.rsplit("@", 1)[-1]


__all__ = ["HttpRegistry"]
