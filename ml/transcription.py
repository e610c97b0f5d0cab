"""What every model class's transcriber shares: its request checks, per-row failures, and
taking turns on the cores (one forward pass or generate call at a time per model class)."""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Sequence

from .errors import AudioError, Cancelled


def check_request(paths: Sequence, batch_size: int, errors: list | None) -> None:
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if errors is not None and len(errors) != len(paths):
        raise ValueError("errors must be as long as paths")


def failure_recorder(errors: list | None) -> Callable[[int, AudioError], None]:
    """`failed(i, exc)`: raise, or with `errors` (PREDICT's on_error='null') note the reason."""
    def failed(i: int, exc: AudioError) -> None:
        if errors is None:
            raise exc
        errors[i] = str(exc)
    return failed


@contextlib.contextmanager
def turn(lock: threading.Lock, should_stop: Callable[[], bool] | None):
    """Take `lock`, giving up with Cancelled if the statement is cancelled meanwhile."""
    while not lock.acquire(timeout=0.2):
        if should_stop is not None and should_stop():
            raise Cancelled("transcription cancelled")
    try:
        yield
    finally:
        lock.release()
