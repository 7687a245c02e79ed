"""SIGTERM handled like SIGINT by everything that starts or serves processes (the CLI, worker processes).

Python turns SIGINT (Ctrl-C) into ``KeyboardInterrupt``, so ``finally`` blocks stop children and
remove temporary files; SIGTERM (what systemd, Docker and process managers send) kills the process
outright and leaves both behind. Inside ``interrupt_on_signals()`` either signal raises
``Interrupted`` (a ``KeyboardInterrupt``) in the main thread; a repeat of either while the cleanup
runs is ignored, so the cleanup (bounded in time everywhere) finishes. The CLI exits with
``128 + signal``, as a shell reports a process killed by it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread by SIGINT or SIGTERM."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        super().__init__(f"stopped by {self.signal_name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextlib.contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise ``Interrupted`` within the block; the previous handlers come back after.

    Outside the main thread (where Python cannot install handlers) it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        for sig in STOP_SIGNALS:  # one signal starts the cleanup; more must not cut it short
            signal.signal(sig, signal.SIG_IGN)
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def ignore_stop_signals() -> None:
    """For worker processes: their parent stops them (or they see it die); a signal sent to the whole
    process group (Ctrl-C, ``kill -TERM -PGID``) must not kill them mid-batch or print tracebacks."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


__all__ = ["Interrupted", "ignore_stop_signals", "interrupt_on_signals"]
