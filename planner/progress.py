"""Progress of the statements running now, published as `thanosql.progress`.

PREDICT and EVALUATE count the utterances they have transcribed as each batch finishes;
a client (the notebook's progress display) reads them on a second connection with plain
SQL, the way BUILD's progress is read from `thanosql.training_info`:

    SELECT done, total, status FROM thanosql.progress WHERE kind = 'EVALUATE' AND model = 'm'

Held in this server process's memory only (the last finished statements are kept a little
while, so a client polling slower than a statement runs still sees it end).  `total` is
NULL until known: PREDICT streams its input and knows it when the input is exhausted.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict

import pyarrow as pa

KEEP_FINISHED = 32

SCHEMA = pa.schema([
    pa.field("id", pa.int64(), nullable=False), pa.field("kind", pa.string(), nullable=False),
    pa.field("model", pa.string()), pa.field("done", pa.int64(), nullable=False),
    pa.field("total", pa.int64()), pa.field("unit", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False), pa.field("elapsed", pa.float64(), nullable=False),
])

_lock = threading.Lock()
_ids = itertools.count(1)
_entries: "OrderedDict[int, Tracker]" = OrderedDict()


class Tracker:
    """One statement's counter; `finish` when it ends (any way)."""

    def __init__(self, kind: str, model: str | None, total: int | None = None, unit: str = "utterances"):
        self.kind, self.model, self.total, self.unit = kind, model, total, unit
        self.done = 0
        self.status = "running"
        self.started = time.monotonic()
        self.ended: float | None = None
        with _lock:
            self.id = next(_ids)
            _entries[self.id] = self

    def add(self, n: int) -> None:
        with _lock:
            self.done += int(n)

    def set_total(self, total: int) -> None:
        with _lock:
            self.total = int(total)

    def finish(self, status: str = "done") -> None:
        with _lock:
            if self.status != "running":
                return
            self.status, self.ended = status, time.monotonic()
            finished = [k for k, t in _entries.items() if t.status != "running"]
            for key in finished[:max(0, len(finished) - KEEP_FINISHED)]:
                del _entries[key]

    def row(self) -> dict:
        end = self.ended if self.ended is not None else time.monotonic()
        return {"id": self.id, "kind": self.kind, "model": self.model, "done": self.done, "total": self.total,
                "unit": self.unit, "status": self.status, "elapsed": round(end - self.started, 3)}


def table() -> pa.Table:
    """A snapshot of the running (and recently finished) statements."""
    with _lock:
        rows = [t.row() for t in _entries.values()]
    return pa.Table.from_pylist(rows, schema=SCHEMA)
