"""Server-side handles (prepared statements, pending executions) that expire.

Clients that vanish without closing their statements must not leak plans or bound
parameters: every entry has a time-to-live, refreshed on use, and expired entries are
swept on each access.

Every handle belongs to the identity that created it (`flight_server.auth`): looked up
by anyone else, it does not exist -- the same answer as for an unknown handle, so a
handle leaked to another user neither runs nor tells that it exists.
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class HandleStore(Generic[T]):
    def __init__(self, ttl_seconds: float, kind: str):
        self.ttl = ttl_seconds
        self.kind = kind
        self._items: dict[bytes, tuple[float, str, T]] = {}
        self._lock = threading.Lock()

    def add(self, value: T, owner: str) -> bytes:
        handle = secrets.token_hex(16).encode()
        with self._lock:
            self._sweep()
            self._items[handle] = (time.monotonic() + self.ttl, owner, value)
        return handle

    def get(self, handle: bytes, owner: str) -> T | None:
        with self._lock:
            self._sweep()
            item = self._items.get(handle)
            if item is None or item[1] != owner:
                return None
            self._items[handle] = (time.monotonic() + self.ttl, owner, item[2])
            return item[2]

    def pop(self, handle: bytes, owner: str) -> T | None:
        with self._lock:
            item = self._items.get(handle)
            if item is None or item[1] != owner:
                return None
            del self._items[handle]
        return item[2]

    def __len__(self) -> int:
        with self._lock:
            self._sweep()
            return len(self._items)

    def values(self) -> list[Any]:
        with self._lock:
            return [v for _, _, v in self._items.values()]

    def _sweep(self) -> None:
        now = time.monotonic()
        for handle in [h for h, (expiry, _, _) in self._items.items() if expiry < now]:
            del self._items[handle]
