"""Hot table versions held in memory as Arrow, within a memory budget.

A version is immutable, so its decoded form never goes stale: the cache is keyed by the
version's folder, and a statement reads whichever form (memory or Parquet) of the very
version it pinned. Files are shared between versions (an append links the previous
version's files into the new folder), so decoded files are shared too, keyed by inode,
and counted once against the budget. Versions load in the background on first read or
after a write, and the least recently used go first when the budget is exceeded.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from datafusion import SessionContext

log = logging.getLogger(__name__)

# The ADBC Flight SQL driver refuses a message over 16 MiB: served batches stay well under.
MAX_BATCH_BYTES = 8 << 20
MAX_BATCH_ROWS = 65_536
MAX_OVERSIZED_REMEMBERED = 4096


@dataclass
class CachedVersion:
    table: pa.Table  # batches sliced for gRPC
    provider: Any  # a DataFusion MemTable over the same batches
    files: tuple  # inode keys of its files


@dataclass
class _File:
    table: pa.Table
    nbytes: int
    refs: int = 0


def parse_memory(text: str, total: int | None = None) -> int:
    """`--cache-memory`: bytes ('512MiB', '2GB', '1073741824'), a share of RAM ('25%'),
    or 0 (no cache)."""
    value = str(text).strip().upper().replace(" ", "")
    total = total if total is not None else physical_memory()
    units = {"": 1, "B": 1, "K": 1 << 10, "KB": 1000, "KIB": 1 << 10, "M": 1 << 20, "MB": 1000 ** 2,
             "MIB": 1 << 20, "G": 1 << 30, "GB": 1000 ** 3, "GIB": 1 << 30, "T": 1 << 40, "TB": 1000 ** 4,
             "TIB": 1 << 40}
    try:
        if value.endswith("%"):
            share = float(value[:-1])
            if not 0 <= share <= 100:
                raise ValueError
            return int(total * share / 100)
        digits = value.rstrip("KMGTIB")
        number = float(digits)
        unit = units[value[len(digits):]]
        if not 0 <= number < 2 ** 60:  # also NaN and infinity
            raise ValueError
        return int(number * unit)
    except (ValueError, KeyError, OverflowError):
        raise ValueError(f"cannot read {text!r} as a memory size: write e.g. 2GiB, 512MB, 25% or 0") from None


def physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def sized_for_grpc(table: pa.Table) -> pa.Table:
    """The same rows in batches of at most MAX_BATCH_ROWS rows and MAX_BATCH_BYTES bytes
    (but a single row larger than that)."""
    if table.num_rows == 0:
        return table
    batches = []
    for batch in table.to_batches(max_chunksize=MAX_BATCH_ROWS):
        batches.extend(slices_under(batch, MAX_BATCH_BYTES))
    return pa.Table.from_batches(batches, table.schema)


def slices_under(batch: pa.RecordBatch, limit: int):
    """Zero-copy slices of `batch` of at most `limit` bytes each (halved until they fit,
    so a few very wide rows among narrow ones still make small slices)."""
    if batch.num_rows <= 1 or batch.nbytes <= limit:
        yield batch
        return
    half = batch.num_rows // 2
    yield from slices_under(batch.slice(0, half), limit)
    yield from slices_under(batch.slice(half), limit)


class TableCache:
    def __init__(self, budget_bytes: int, config: Any = None, partitions: int | None = None):
        self.budget = max(0, int(budget_bytes))
        self._config = config
        self._partitions = partitions or os.cpu_count() or 1
        self._lock = threading.Lock()
        self._versions: OrderedDict[str, CachedVersion] = OrderedDict()  # least recent first
        self._files: dict[tuple, _File] = {}
        self._pending: set[str] = set()
        self._oversized: OrderedDict[str, None] = OrderedDict()  # versions that do not fit
        self._dropped: set[str] = set()
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="table-cache")
        self.loads = 0

    # --- lookups -------------------------------------------------------------------------

    def get(self, folder: str) -> CachedVersion | None:
        with self._lock:
            entry = self._versions.get(folder)
            if entry is not None:
                self._versions.move_to_end(folder)
            return entry

    def used_bytes(self) -> int:
        with self._lock:
            return sum(f.nbytes for f in self._files.values())

    def cached_versions(self) -> int:
        with self._lock:
            return len(self._versions)

    # --- loading -------------------------------------------------------------------------

    def request(self, folder: str, schema: pa.Schema) -> None:
        """Load `folder` in the background, unless it is cached, loading, known not to fit
        or the cache is off."""
        if self.budget <= 0:
            return
        with self._lock:
            if folder in self._versions or folder in self._pending or folder in self._oversized:
                return
            self._pending.add(folder)
        self._loader.submit(self._load_logged, folder, schema)

    def _load_logged(self, folder: str, schema: pa.Schema) -> None:
        try:
            self.load(folder, schema)
        except FileNotFoundError:
            pass  # replaced and collected before its turn came
        except Exception:
            log.exception("loading table version %s into memory failed; it is read from Parquet", folder)
        finally:
            with self._lock:
                self._pending.discard(folder)
                self._dropped.discard(folder)

    def load(self, folder: str, schema: pa.Schema) -> bool:
        """Decode the version in `folder` (reusing files other versions share) and cache it,
        if it fits the budget; returns whether it is cached."""
        paths = sorted(p for p in Path(folder).iterdir() if p.suffix == ".parquet" and not p.name.startswith("."))
        keys = []
        for path in paths:
            st = path.stat()  # size and time too: an inode number is reused once a file goes
            keys.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        with self._lock:
            known = {k: self._files[k] for k in keys if k in self._files}
        estimate = sum(_uncompressed_size(p) for p, k in zip(paths, keys) if k not in known)
        size = sum(f.nbytes for f in known.values())
        if estimate + size > self.budget:
            self._too_big(folder)
            return False
        decoded: dict[tuple, _File] = {}
        for path, key in zip(paths, keys):
            if key in known or key in decoded:
                continue
            table = pq.read_table(path, schema=schema) if schema is not None else pq.read_table(path)
            decoded[key] = _File(table, table.nbytes)
            size += table.nbytes
            if size > self.budget:  # Parquet's sizes undercount dictionary-encoded columns
                self._too_big(folder)
                return False
        tables = [(known.get(k) or decoded[k]).table for k in keys]
        table = pa.concat_tables(tables) if tables else schema.empty_table()
        if schema is not None and table.schema != schema:
            table = table.cast(schema)
        table = sized_for_grpc(table)
        provider = self._memtable(table)
        with self._lock:
            if folder in self._dropped or folder in self._versions:
                return folder in self._versions
            for key in keys:  # a shared file may have left the cache while this one loaded
                f = self._files.setdefault(key, known.get(key) or decoded[key])
                f.refs += 1
            self._versions[folder] = CachedVersion(table, provider, tuple(keys))
            self.loads += 1
            self._evict(keep=folder)
            return folder in self._versions

    def _too_big(self, folder: str) -> None:
        with self._lock:
            self._oversized[folder] = None
            while len(self._oversized) > MAX_OVERSIZED_REMEMBERED:
                self._oversized.popitem(last=False)

    def _memtable(self, table: pa.Table) -> Any:
        """A DataFusion MemTable over the batches, dealt round-robin into one partition per core."""
        batches = table.to_batches()
        parts = max(1, min(self._partitions, len(batches)))
        partitions = [batches[i::parts] for i in range(parts)] if batches else [[]]
        scratch = SessionContext(self._config) if self._config is not None else SessionContext()
        if batches:
            scratch.register_record_batches("t", partitions)
        else:
            scratch.register_record_batches("t", [[pa.RecordBatch.from_pylist([], schema=table.schema)]])
        return scratch.table_provider("t")

    # --- eviction ------------------------------------------------------------------------

    def drop(self, folder: str) -> None:
        """The version is gone (replaced and no longer read): forget it."""
        with self._lock:
            self._oversized.pop(folder, None)
            if folder in self._pending:
                self._dropped.add(folder)  # a load under way must not cache it
            entry = self._versions.pop(folder, None)
            if entry is not None:
                self._unref(entry)

    def _evict(self, keep: str) -> None:
        used = sum(f.nbytes for f in self._files.values())
        for folder in list(self._versions):
            if used <= self.budget:
                break
            if folder == keep:
                continue
            entry = self._versions.pop(folder)
            self._unref(entry)
            used = sum(f.nbytes for f in self._files.values())
        if used > self.budget:  # the new version alone does not fit
            entry = self._versions.pop(keep)
            self._unref(entry)

    def _unref(self, entry: CachedVersion) -> None:
        for key in entry.files:
            f = self._files.get(key)
            if f is not None:
                f.refs -= 1
                if f.refs <= 0:
                    del self._files[key]

    def close(self) -> None:
        self._loader.shutdown(wait=False, cancel_futures=True)


def _uncompressed_size(path: Path) -> int:
    """Parquet's own count of a file's uncompressed bytes: about its size as Arrow."""
    meta = pq.ParquetFile(path).metadata
    return sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
