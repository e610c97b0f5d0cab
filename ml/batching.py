"""Batches: length-grouped random batches for training, and decoding ahead in a thread.

Shared by every model class's training loop and by the data-parallel step plan
(``ml/distributed.py``): one place decides which utterances train together.
"""

from __future__ import annotations

import queue
import random
import threading
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np


def training_batches(lengths: Sequence[float], batch_size: int, rng: random.Random,
                     megabatch_mult: int = 50) -> list[list[int]]:
    """Length-grouped random batches (the LengthGroupedSampler idea of HF's Trainer).

    Shuffle, cut into megabatches of ``megabatch_mult * batch_size``, sort each by length,
    chunk into batches, shuffle the batches; the batch with the longest utterance goes
    first so an out-of-memory shows up at step one, not hours in.
    """
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    mega = max(1, megabatch_mult * batch_size)
    batches: list[list[int]] = []
    for start in range(0, len(idx), mega):
        chunk = sorted(idx[start:start + mega], key=lambda i: -lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    longest = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]))
    batches.insert(0, batches.pop(longest))
    return batches


def prefetched(batches: Iterable[list[int]], load: Callable[[int], np.ndarray],
               depth: int = 2) -> Iterator[tuple[list[int], list[np.ndarray]]]:
    """Yield (batch, arrays) while a thread decodes the next batches (overlaps I/O and compute).

    Errors raised by ``load`` surface in the consumer, at the batch that caused them.
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for batch in batches:
                if not put((batch, [load(i) for i in batch], None)):
                    return
        except BaseException as exc:  # handed to the consumer
            put((None, None, exc))
            return
        put((None, None, None))

    thread = threading.Thread(target=work, name="ml-audio-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            batch, arrays, err = q.get()
            if err is not None:
                raise err
            if batch is None:
                return
            yield batch, arrays
    finally:
        stop.set()
