"""What every model class's transcriber shares: its request checks, per-row failures, taking
turns on the cores (one forward pass or generate call at a time per model class), and the
loop over a statement's chunks of rows."""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterable, Iterator, Sequence

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


def transcribe_chunks(transcriber, chunks: Iterable[tuple[list, list | None, int]], batch_size: int, *,
                      should_stop: Callable[[], bool] | None = None, max_seconds: float | None = None,
                      options: dict | None = None) -> Iterator[tuple[list, dict]]:
    """(transcripts, stats) of each chunk of (paths, errors, first row number), in order.

    A transcriber here takes the chunks one by one, as they come; one whose replicas run
    elsewhere (``ml/ray_inference.py``) has ``transcribe_stream`` and takes the whole stream,
    so its pipeline stays full.  ``errors`` (or None) is each chunk's per-row error list, filled
    in place, as ``transcribe`` does.
    """
    stream = getattr(transcriber, "transcribe_stream", None)
    if stream is not None:
        yield from stream(chunks, batch_size, should_stop=should_stop, max_seconds=max_seconds, options=options)
        return
    for paths, errors, row_offset in chunks:
        stats: dict = {}
        texts = transcriber.transcribe(paths, batch_size, row_offset=row_offset, should_stop=should_stop,
                                       stats=stats, max_seconds=max_seconds, errors=errors, options=options)
        yield texts, stats
