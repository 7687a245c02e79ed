"""How much to send at once, and when to stop sending: the HTTP runtime's domain logic around the
shared retry policy (``ml_assets.resources.core.http``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from ml_assets.resources.runtimes.http.codecs import concat_columns


class BatchSizer:
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


class CircuitBreaker:
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


def split_in_two(rows: pa.RecordBatch, send: Callable[[pa.RecordBatch, int], dict[str, Any]]) -> dict[str, Any]:
    """A request the server refused as too large (413), sent as two halves, answers joined in order.
    ``send(rows, offset)`` sends one half; it may split again."""
    half = rows.num_rows // 2
    return concat_columns(send(rows.slice(0, half), 0), send(rows.slice(half), half))


__all__ = ["BatchSizer", "CircuitBreaker", "split_in_two"]
