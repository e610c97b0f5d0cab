"""Table versions as DataFusion sees them: the current version of every name, and which
old versions running statements may still read.

Every write makes a new immutable version (a folder of Parquet files, see storage.py)
and switches the catalog to it. Two things make that safe for readers:

- `CurrentTables` is DataFusion's `public` schema. It maps each name to the provider of
  its current version; a switch is one dict assignment, so a statement planned at any
  instant finds the old version or the new one, never no table. The plan holds the
  provider it found, and reads that version to its end.
- `ReaderPins` decides when an old version's files may go. A version replaced at
  epoch r may be held by any statement that began at an epoch <= r; it is dropped once
  none of those is running. Epochs, rather than per-version counts, because DataFusion
  resolves tables inside its planner, where nothing says which statement asked.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Any, Callable

from datafusion.catalog import SchemaProvider

log = logging.getLogger(__name__)


class Pin:
    """A running statement's hold on the versions current when it began."""

    __slots__ = ("epoch", "_pins", "_released")

    def __init__(self, epoch: int, pins: "ReaderPins"):
        self.epoch = epoch
        self._pins = pins
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._pins._release(self)


class ReaderPins:
    """Epochs of running statements and the versions waiting for them to finish."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._epoch = 0
        self._running: Counter[int] = Counter()  # epoch -> statements begun then, still running
        self._retired: list[tuple[int, Callable[[], None]]] = []  # (epoch replaced, drop)

    @property
    def epoch(self) -> int:
        """Advances at every catalog change: a plan made at epoch e is current while it is e."""
        return self._epoch

    def begin(self) -> Pin:
        with self._lock:
            self._running[self._epoch] += 1
            return Pin(self._epoch, self)

    def changed(self, drop: Callable[[], None] | None = None) -> None:
        """The catalog has just changed; `drop` (the replaced version's clean-up) runs once
        no statement that began before the change is running."""
        with self._lock:
            if drop is not None:
                self._retired.append((self._epoch, drop))
            self._epoch += 1
            ready = self._collect()
        _run(ready)

    def running(self) -> int:
        with self._lock:
            return sum(self._running.values())

    def waiting(self) -> int:
        """Replaced versions still kept for running statements."""
        with self._lock:
            return len(self._retired)

    def _release(self, pin: Pin) -> None:
        with self._lock:
            self._running[pin.epoch] -= 1
            if self._running[pin.epoch] <= 0:
                del self._running[pin.epoch]
            ready = self._collect()
        _run(ready)

    def _collect(self) -> list[Callable[[], None]]:
        oldest = min(self._running) if self._running else None
        ready = [drop for epoch, drop in self._retired if oldest is None or oldest > epoch]
        if ready:
            self._retired = [(e, d) for e, d in self._retired if not (oldest is None or oldest > e)]
        return ready


def _run(drops: list[Callable[[], None]]) -> None:
    for drop in drops:
        try:
            drop()
        except Exception:  # a version that cannot be removed now is swept at the next start
            log.exception("dropping a replaced table version failed")


class CurrentTables(SchemaProvider):
    """DataFusion's `public` schema: name -> the provider of the current version.

    `resolve` lets the store serve a name from memory when its version is cached; views
    and external tables DataFusion creates itself arrive through `register_table`.
    """

    def __init__(self, resolve: Callable[[str, Any], Any] | None = None):
        self._tables: dict[str, Any] = {}
        self._resolve = resolve

    # DataFusion reads `table_names` as an attribute of a Python schema provider.
    @property
    def table_names(self) -> list[str]:  # type: ignore[override]
        return list(self._tables)

    def names(self) -> list[str]:
        return list(self._tables)

    def table(self, name: str) -> Any:
        provider = self._tables.get(name)
        if provider is None or self._resolve is None:
            return provider
        return self._resolve(name, provider)

    def table_exist(self, name: str) -> bool:
        return name in self._tables

    def register_table(self, name: str, table: Any) -> None:
        self._tables[name] = table

    def deregister_table(self, name: str, cascade: bool = True) -> None:
        self._tables.pop(name, None)

    def put(self, name: str, provider: Any) -> None:
        """Switch `name` to `provider` in one step (no moment without the name)."""
        self._tables[name] = provider

    def provider(self, name: str) -> Any:
        """The stored provider of `name` (the Parquet listing for a table), not resolved."""
        return self._tables.get(name)
