"""The embedded catalog: persisted tables, views and external tables, as versions.

Every write makes a new immutable version of the table: a folder of Parquet files under
`data_dir/tables/`, named by the table's row in `catalog.sqlite` (planner_objects.folder).
Readers and a restarted server see all of a statement's rows or none, and a statement
reads the version it planned against to its end. The rows are staged without the store's
lock; the checks and the commit are made under it:

- create / replace: a complete new folder is staged (`.staging-*`), fsynced and renamed
  into place;
- append (INSERT, ingest, COPY ... append): the new folder holds hard links to the current
  version's files (no data is copied) and one new Parquet file with all the statement's
  rows;
- then the catalog row is switched to the new folder in one durable SQLite transaction
  (the commit point), and DataFusion's `public` schema (versions.CurrentTables) to its
  provider in one step: no moment without the table. Views are re-planned against it.
- the replaced folder is deleted once no statement that could have planned against it
  is still running (versions.ReaderPins); a crash leaves it to the start-up sweep.

Nothing is acknowledged before the data and the catalog switch are on disk (fsync of the
files, their folders, and SQLite's WAL with synchronous=FULL). A full disk anywhere in a
write is ResourceExhausted and leaves nothing. Hot versions are also served from memory
(table_cache.TableCache), which never goes stale because a version never changes.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from datafusion import SessionContext

from planner.errors import AlreadyExists, InvalidInput, NotFound, ResourceExhausted
from planner.table_cache import TableCache
from planner.versions import CurrentTables, ReaderPins

log = logging.getLogger(__name__)

# Row groups of 64k rows: both cores decode in parallel and min/max statistics prune
# point queries (1M-row fetch 72 -> 37 ms, `WHERE id = x` 28 -> 3 ms, measured here).
ROW_GROUP_ROWS = 65_536
STAGING_PREFIX = ".staging-"
# A table's folder is `<slug>-<12 hex>`: the slug is the name reduced to [a-z0-9_] and cut
# short, so no name reaches the file system (no '/', '..', leading '.', length limits) and
# no folder can look like staging. Older data directories keep their folders: the catalog
# row names the folder, whatever its form.
# An append links the current version's files into its new folder; past this many files,
# the small ones are merged into the appended file instead (bounded links and scans).
MAX_FILES_PER_VERSION = 64
COMPACT_BELOW_BYTES = 8 << 20
SLUG_CHARS = 40
MAX_NAME_CHARS = 1024
_NOT_SLUG = re.compile(r"[^a-z0-9_]+")
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS planner_objects (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('table', 'view', 'external')),
    folder TEXT,
    sql TEXT,
    seq INTEGER NOT NULL,
    created_utc TEXT NOT NULL
)
"""


@dataclass(frozen=True)
class StoredObject:
    name: str
    kind: str  # 'table' | 'view' | 'external'
    folder: str | None
    sql: str | None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def table_ref(name: str) -> str:
    """`name` as DataFusion's table-reference parser must see it to keep it exact: quoted
    (an unquoted 'Mixed' would fold to 'mixed', 'a.b' would be schema a, table b)."""
    return '"' + name.replace('"', '""') + '"'


def check_table_name(name: str) -> None:
    """Any SQL identifier is a table name, within limits every client can handle."""
    if not name:
        raise InvalidInput("a table name cannot be empty")
    if len(name) > MAX_NAME_CHARS:
        raise InvalidInput(f"a table name is at most {MAX_NAME_CHARS} characters; this one has {len(name)}")
    if '"' in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidInput(f"table name {name[:80]!r} holds a double quote or a control character, "
                           "which table names cannot contain")


def folder_name(name: str) -> str:
    """A new folder for table `name`: a short [a-z0-9_] slug of the name and a unique id."""
    slug = _NOT_SLUG.sub("_", name.lower()).strip("_")[:SLUG_CHARS].strip("_") or "t"
    return f"{slug}-{uuid.uuid4().hex[:12]}"


def _plain_type(t: pa.DataType) -> pa.DataType:
    """The type a stored column has: dictionaries decoded (a Parquet table's schema holding
    a dictionary type cannot be read back through DataFusion's IPC stream), view types as
    plain utf8/binary; nested types likewise."""
    if pa.types.is_dictionary(t):
        return _plain_type(t.value_type)
    if t == pa.string_view():
        return pa.string()
    if t == pa.binary_view():
        return pa.binary()
    if pa.types.is_list(t):
        return pa.list_(t.value_field.with_type(_plain_type(t.value_type)))
    if pa.types.is_large_list(t):
        return pa.large_list(t.value_field.with_type(_plain_type(t.value_type)))
    if pa.types.is_fixed_size_list(t):
        return pa.list_(t.value_field.with_type(_plain_type(t.value_type)), t.list_size)
    if pa.types.is_map(t):
        return pa.map_(t.key_field.with_type(_plain_type(t.key_type)),
                       t.item_field.with_type(_plain_type(t.item_type)), t.keys_sorted)
    if pa.types.is_struct(t):
        return pa.struct([f.with_type(_plain_type(f.type)) for f in t])
    return t


def storage_schema(schema: pa.Schema, table: str) -> pa.Schema:
    """The schema a table is stored with; refuses what no table can hold."""
    if len(schema) == 0:
        raise InvalidInput(f"table '{table}': the rows have no columns; a table needs at least one")
    seen: set[str] = set()
    twice = [n for n in schema.names if n in seen or seen.add(n)]
    if twice:
        raise InvalidInput(f"table '{table}': column name(s) {', '.join(sorted(set(twice)))} appear more "
                           "than once; give every column its own name (e.g. SELECT a, a AS a2)")
    return pa.schema([f.with_type(_plain_type(f.type)) for f in schema], metadata=schema.metadata)


def utf8_schema(schema: pa.Schema) -> pa.Schema:
    """Plain utf8/binary instead of the view types, which older JDBC/BI clients cannot read."""
    fields = []
    for f in schema:
        if f.type == pa.string_view():
            f = f.with_type(pa.string())
        elif f.type == pa.binary_view():
            f = f.with_type(pa.binary())
        fields.append(f)
    return pa.schema(fields, metadata=schema.metadata)


class TableStore:
    """Owns `catalog.sqlite`'s table rows and keeps DataFusion's catalog in step with them."""

    def __init__(self, data_dir: Path, ctx: SessionContext, cache: TableCache | None = None,
                 schema_name: str = "public"):
        self.data_dir = Path(data_dir)
        self.tables_dir = self.data_dir / "tables"
        self.tables_dir.mkdir(parents=True, exist_ok=True)
        self.ctx = ctx
        self.lock = threading.RLock()  # serialises commits (catalog switches); rows are staged without it
        self.db_path = self.data_dir / "catalog.sqlite"
        self.cache = cache or TableCache(0)
        self.pins = ReaderPins()
        # name -> folder of the current version, for the stored tables of the schema.
        self._current: dict[str, Path] = {}
        self.schema = CurrentTables(resolve=self._resolve)
        self._planning_views = _Flag()
        self._view_reads: dict[str, set[str]] = {}  # view -> the names its plan reads
        ctx.catalog().register_schema(schema_name, self.schema)
        # Settings for the scratch contexts that build listing tables (copied before the
        # SET below: a config copied after a SET makes contexts without their catalog).
        self._scratch_config = ctx.copied_config()
        # Version folders never change, but an external table's folder does: DataFusion
        # lists a folder at every scan (microseconds on a local disk), so a file added
        # to an external table's folder is seen by the next query.
        ctx.sql("SET datafusion.runtime.list_files_cache_limit = '0'").collect()
        with self._db() as db:
            db.execute(_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: each commit syncs the WAL, so an acknowledged catalog switch survives a
        # power loss (NORMAL would only sync at checkpoints).
        db.execute("PRAGMA synchronous=FULL")
        return _Closing(db)

    # --- start-up ----------------------------------------------------------------------

    def _folder(self, folder: str) -> Path:
        """The path of a catalog row's folder: one entry of tables/, never anywhere else (a
        row written by an older version from an unchecked name may say otherwise)."""
        if not folder or folder in (".", "..") or "/" in folder or "\0" in folder:
            raise InvalidInput(f"its folder {folder!r} is not a folder of {self.tables_dir}; "
                               "the table is not loaded")
        return self.tables_dir / folder

    def _drop_folder(self, folder: str | None) -> None:
        if folder:
            with contextlib.suppress(InvalidInput):
                path = self._folder(folder)
                self.cache.drop(str(path))
                shutil.rmtree(path, ignore_errors=True)

    def _retire(self, folder: str | None) -> None:
        """The catalog no longer names `folder`: delete it once no running statement can
        read it (at once when none is running)."""
        self.pins.changed(drop=(lambda: self._drop_folder(folder)) if folder else None)

    def load(self) -> list[str]:
        """Register every stored object in DataFusion; returns the problems met (if any)."""
        problems = []
        with self._db() as db:
            rows = db.execute("SELECT name, kind, folder, sql FROM planner_objects ORDER BY seq").fetchall()
        self.sweep({folder for _, kind, folder, _ in rows if kind == "table"})
        view_problems = {}
        for name, kind, folder, sql in rows:
            try:
                if kind == "table":
                    self._show_table(name, self._folder(folder))
                else:
                    self.ctx.sql(sql).collect()
            except Exception as exc:  # one broken object must not stop the server
                if kind == "view":
                    view_problems[name] = f"{kind} {name}: {exc}"
                else:
                    problems.append(f"{kind} {name}: {exc}")
        # A view restored before an object it reads was (re)created plans now.
        hidden = self.refresh_views()
        return problems + [view_problems.get(name, f"view {name}: it does not plan") for name in hidden]

    def sweep(self, referenced: set[str]) -> None:
        """Remove what a crash or a failed write left: staging files and folders, folders
        no catalog row references (a replaced or dropped table), and anything inside a
        referenced folder that is not a committed Parquet file (`.part-*.tmp` written by
        older versions, object-store staging files)."""
        for child in self.tables_dir.iterdir():
            if child.name not in referenced:
                _remove(child)
                continue
            if child.is_symlink() or not child.is_dir():
                continue  # not a folder this store made: left for load() to report
            for entry in child.iterdir():
                if entry.name.startswith((".", "_")) or not entry.name.endswith(".parquet") \
                        or not entry.is_file():
                    _remove(entry)

    # --- lookups -----------------------------------------------------------------------

    def get(self, name: str) -> StoredObject | None:
        with self._db() as db:
            row = db.execute("SELECT name, kind, folder, sql FROM planner_objects WHERE name = ?",
                             (name,)).fetchone()
        return StoredObject(*row) if row else None

    def names(self) -> list[StoredObject]:
        with self._db() as db:
            rows = db.execute("SELECT name, kind, folder, sql FROM planner_objects ORDER BY name").fetchall()
        return [StoredObject(*r) for r in rows]

    def exists_in_session(self, name: str) -> bool:
        return self.ctx.table_exist(table_ref(name))

    def table_schema(self, name: str) -> pa.Schema:
        return utf8_schema(self.ctx.table(table_ref(name)).schema())

    # --- tables ------------------------------------------------------------------------

    def write_table(self, name: str, batches: Iterable[pa.RecordBatch], schema: pa.Schema,
                    mode: str) -> int:
        """Create, replace or append to table `name` from `batches`; returns rows written.

        mode: 'create' (fails if it exists), 'replace', 'append' (fails if missing),
        'create_append' (append, creating the table if needed).

        The rows are staged without the store's lock, so a long write (an ingest, a CTAS
        over PREDICT) never holds up the others; under the lock the checks are made again
        (another writer may have come first) and the new version is committed.
        """
        check_table_name(name)
        schema = storage_schema(schema, name)
        with disk_full_is_exhausted(f"writing table '{name}'"):
            with self.lock:
                existing = self._writable(name, mode)
            appending = existing is not None and existing.kind == "table" and mode in ("append", "create_append")
            target = self.table_schema(name) if appending else schema
            staging = self.tables_dir / f"{STAGING_PREFIX}{folder_name(name)}"
            staging.mkdir()
            try:
                if appending:
                    rows = _write_parquet(staging / f"part-{uuid.uuid4().hex[:12]}.parquet",
                                          (conform(b, target, name) for b in batches), target,
                                          source_schema=schema, table=name, skip_empty=True)
                else:
                    rows = _write_parquet(staging / "part-00000.parquet", batches, schema)
                with self.lock:
                    return self._commit(name, mode, staging, target, rows)
            finally:
                shutil.rmtree(staging, ignore_errors=True)  # gone already once committed

    def _writable(self, name: str, mode: str) -> StoredObject | None:
        """The object `name` now, after checking that `mode` may write it."""
        existing = self.get(name)
        if existing is None and self.exists_in_session(name):
            raise AlreadyExists(f"'{name}' is a system table and cannot be written")
        if existing is not None and existing.kind != "table" and mode != "replace":
            raise AlreadyExists(f"'{name}' is a {existing.kind}, not a table")
        if mode == "create" and existing is not None:
            raise AlreadyExists(f"table '{name}' already exists")
        if mode == "append" and existing is None:
            raise NotFound(f"table '{name}' does not exist")
        return existing

    def _commit(self, name: str, mode: str, staging: Path, written: pa.Schema, rows: int) -> int:
        """Under the lock: the staged rows become the table's new version. An append links
        the current version's files (read now, not when the rows were staged) beside them."""
        existing = self._writable(name, mode)
        if existing is not None and existing.kind == "table" and mode in ("append", "create_append"):
            if not rows:
                return 0
            now = self.table_schema(name)
            if [(f.name, f.type) for f in now] != [(f.name, f.type) for f in written]:
                raise InvalidInput(f"table '{name}' was replaced with other columns while these rows were "
                                   "written; nothing was added: run the statement again")
            self._link_current(existing, staging, written)
        folder = staging.name[len(STAGING_PREFIX):]
        _fsync(staging)
        staging.rename(self.tables_dir / folder)
        _fsync(self.tables_dir)
        try:
            self._commit_row(name, "table", folder, None)
        except BaseException:
            shutil.rmtree(self.tables_dir / folder, ignore_errors=True)
            raise
        self._publish(name, folder, existing)
        return rows

    def _link_current(self, existing: StoredObject, staging: Path, schema: pa.Schema) -> None:
        """Hard links to the current version's files in `staging` (no data copied). Past
        MAX_FILES_PER_VERSION files, the small ones (single-row INSERTs) are merged with
        the staged one instead, so a version stays a bounded number of files to link and
        to scan."""
        current = self._folder(existing.folder)
        parts = [p for p in sorted(current.iterdir())
                 if p.suffix == ".parquet" and not p.name.startswith(".") and p.is_file()]
        small = [p for p in parts if p.stat().st_size < COMPACT_BELOW_BYTES]
        if len(parts) + 1 > MAX_FILES_PER_VERSION and len(small) > 1:
            (new_part,) = staging.iterdir()
            _write_parquet(staging / f"part-{uuid.uuid4().hex[:12]}.parquet",
                           _file_batches([*small, new_part]), schema, table=existing.name)
            new_part.unlink()
            parts = [p for p in parts if p not in small]
        for part in parts:
            _link_or_copy(part, staging / part.name)

    def _commit_row(self, name: str, kind: str, folder: str | None, sql: str | None) -> None:
        """Make the new object current in the catalog: the commit point, durable on return."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM planner_objects WHERE name = ?", (name,))
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM planner_objects").fetchone()[0]
            db.execute("INSERT INTO planner_objects VALUES (?, ?, ?, ?, ?, ?)",
                       (name, kind, folder, sql, seq, _now()))
            db.execute("COMMIT")

    def _publish(self, name: str, folder: str, existing: StoredObject | None) -> None:
        """After the commit: switch DataFusion's name to the new version (in one step),
        re-plan the views that read it, and retire the old version. A table that was
        served from memory has its new version loaded too (it stays hot)."""
        old = self._current.get(name)
        hot = old is not None and self.cache.get(str(old)) is not None
        self._show_table(name, self._folder(folder))
        if hot:
            self.warm([name])
        self._catalog_changed({name})
        self._retire(existing.folder if existing is not None and existing.folder != folder else None)

    def _catalog_changed(self, names: set[str]) -> None:
        forget = getattr(self.ctx, "forget_external_tables", None)
        if forget is not None:
            forget()  # the next statement reads the catalog's external tables again
        self.refresh_views(names)

    def _show_table(self, name: str, folder: Path) -> None:
        provider = self._listing_table(folder)
        self._current[name] = folder
        self.schema.put(name, provider)

    def _listing_table(self, folder: Path):
        """A DataFusion listing table over `folder`, built in a scratch context with the
        shared context's settings (and scanned with the session that queries it)."""
        scratch = SessionContext(self._scratch_config)
        scratch.register_parquet("t", str(folder) + "/")
        return scratch.table_provider("t")

    def _resolve(self, name: str, provider):
        """What a statement planned now reads for `name`: the current version, from memory
        when it is cached. Views are planned over Parquet: a view keeps the providers it
        was planned with, and an evicted version held by a view would escape the budget."""
        folder = self._current.get(name)
        if folder is None or self._planning_views.active:
            return provider  # a view or an external table
        cached = self.cache.get(str(folder))
        return cached.provider if cached is not None else provider

    def warm(self, names: Iterable[str]) -> None:
        """Statements are reading these stored tables: load their current versions into
        memory (in the background) if they are not there yet."""
        for name in names:
            folder = self._current.get(name)
            if folder is not None and self.cache.get(str(folder)) is None:
                provider = self.schema.provider(name)
                if provider is not None:
                    self.cache.request(str(folder), provider.schema)

    def only_versioned(self, reads) -> bool:
        """Whether every name a plan reads (`scanned_names`) is a stored table's version:
        such a plan stays right until the catalog changes. A system table,
        information_schema or an external table is read as it is at planning."""
        return all(name in self._current for name in reads)

    def in_memory(self, name: str) -> pa.Table | None:
        """The current version of stored table `name` as Arrow, when it is in memory."""
        folder = self._current.get(name)
        cached = self.cache.get(str(folder)) if folder is not None else None
        return cached.table if cached is not None else None

    def refresh_views(self, changed: set[str] | None = None) -> list[str]:
        """Plan the views that read `changed` (all when None) again, against the current
        versions, each after the views it reads: a view planned once would read the
        versions its tables had then, for ever. A view that no longer plans (a table it
        reads was dropped) is hidden, and tried again at every change until it plans.
        Returns the hidden views."""
        with self._db() as db:
            views = dict(db.execute("SELECT name, sql FROM planner_objects WHERE kind = 'view' ORDER BY seq"))
        for gone in set(self._view_reads) - set(views):
            del self._view_reads[gone]
        stale = set(views) if changed is None else self._readers_of(changed, views)
        done: set[str] = set()
        hidden: set[str] = set()

        def refresh(name: str, seen: tuple[str, ...]) -> None:
            if name in done or name in seen:
                return
            planned = self._plan_view(name, views[name])
            if planned is not None:
                reads = scanned_names(planned)
                inner = [n for n in reads if n in stale and n != name]
                for dep in inner:
                    refresh(dep, seen + (name,))
                if inner:
                    planned = self._plan_view(name, views[name])
            done.add(name)
            if planned is None:
                hidden.add(name)
                self.schema.deregister_table(name)
            else:
                self._view_reads[name] = scanned_names(planned)
                hidden.discard(name)
                self.schema.put(name, planned.into_view())

        with self._planning_views.on():
            for _ in range(len(stale) + 1):  # again while a hidden view's inner one came back
                before = set(hidden)
                done.clear()
                for name in views:
                    if name in stale and (name not in done):
                        refresh(name, ())
                stale = set(hidden)
                if not hidden or hidden == before:
                    break
        return sorted(hidden)

    def _readers_of(self, changed: set[str], views: dict[str, str]) -> set[str]:
        """The views that read any of `changed`, directly or through other views, and
        every view not planned yet (hidden or new: what they read is not known)."""
        stale = {v for v in views if v not in self._view_reads or v in changed}
        frontier = set(changed) | stale
        while frontier:
            frontier = {v for v, reads in self._view_reads.items()
                        if v in views and v not in stale and reads & frontier}
            stale |= frontier
        return stale

    def _plan_view(self, name: str, sql: str):
        """The view's query planned now, as a DataFrame (None when it no longer plans)."""
        from datafusion.plan import LogicalPlan
        try:
            explained = self.ctx.sql("EXPLAIN " + sql)
            node = explained.logical_plan().to_variant().plan().to_variant()
            return self.ctx.create_dataframe_from_logical_plan(LogicalPlan(node.input()[0]))
        except Exception as exc:
            log.warning("view %s is hidden until it plans again: %s", name, str(exc).splitlines()[0])
            return None

    # --- views and external tables ------------------------------------------------------

    def remember(self, name: str, kind: str, sql: str) -> None:
        """Record a view / external table DataFusion has just created, for restarts."""
        with self.lock:
            existing = self.get(name)
            with self._db() as db:
                db.execute("BEGIN IMMEDIATE")
                db.execute("DELETE FROM planner_objects WHERE name = ?", (name,))
                seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM planner_objects").fetchone()[0]
                db.execute("INSERT INTO planner_objects VALUES (?, ?, NULL, ?, ?, ?)",
                           (name, kind, sql, seq, _now()))
                db.execute("COMMIT")
            if existing is not None and existing.folder:
                self._current.pop(name, None)
            self._catalog_changed({name})  # views over a replaced view or external table follow it
            self._retire(existing.folder if existing is not None else None)

    def drop(self, name: str, kind: str, if_exists: bool) -> bool:
        with self.lock:
            existing = self.get(name)
            matches = existing is not None and (existing.kind == kind or
                                                (kind == "table" and existing.kind == "external"))
            if not matches:
                if existing is not None:
                    raise InvalidInput(f"'{name}' is a {existing.kind}; use DROP "
                                       f"{'VIEW' if existing.kind == 'view' else 'TABLE'}")
                if if_exists:
                    return False
                raise NotFound(f"{kind} '{name}' does not exist")
            with self._db() as db:
                db.execute("DELETE FROM planner_objects WHERE name = ?", (name,))
            self._current.pop(name, None)
            self.schema.deregister_table(name)
            self._catalog_changed({name})
            self._retire(existing.folder)
            return True


class _Flag(threading.local):
    """A per-thread switch, on for the duration of a `with flag.on():` block."""
    active = False

    @contextlib.contextmanager
    def on(self):
        self.active = True
        try:
            yield
        finally:
            self.active = False


class _Closing:
    """sqlite3 connections as context managers that close (sqlite3's own only commits)."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        return self.db

    def __exit__(self, *exc) -> None:
        if exc[0] is not None and self.db.in_transaction:
            self.db.execute("ROLLBACK")
        self.db.close()


def conform(batch: pa.RecordBatch, target: pa.Schema, table: str) -> pa.RecordBatch:
    """Match an appended batch to the table's columns, by name, casting where safe."""
    names = set(batch.schema.names)
    missing = [f.name for f in target if f.name not in names and not f.nullable]
    extra = [n for n in batch.schema.names if n not in target.names]
    if missing or extra:
        raise InvalidInput(
            f"the rows do not match table '{table}' (columns {', '.join(target.names)})"
            + (f"; missing: {', '.join(missing)}" if missing else "")
            + (f"; unknown: {', '.join(extra)}" if extra else "")
        )
    columns = []
    for f in target:
        if f.name in names:
            col = batch.column(f.name)
            try:
                columns.append(col.cast(f.type) if col.type != f.type else col)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise InvalidInput(f"column '{f.name}' of table '{table}' is {f.type}; "
                                   f"cannot store {col.type} values in it: {exc}") from None
        else:
            columns.append(pa.nulls(batch.num_rows, f.type))
        if not f.nullable and columns[-1].null_count:
            raise InvalidInput(f"column '{f.name}' of table '{table}' is NOT NULL; the rows hold "
                               f"{columns[-1].null_count} null value(s) for it")
    return pa.RecordBatch.from_arrays(columns, schema=target)


def _write_parquet(path: Path, batches: Iterable[pa.RecordBatch], schema: pa.Schema,
                   source_schema: pa.Schema | None = None, table: str | None = None,
                   skip_empty: bool = False) -> int:
    """Stream batches into one Parquet file, in row groups of ROW_GROUP_ROWS rows, and
    fsync it. With `skip_empty`, no file is made when there are no rows."""
    rows = 0
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    writer = None
    try:
        for batch in batches:
            if batch.schema != schema:
                batch = _cast(batch, schema, table or path.parent.name)
            if batch.num_rows == 0:
                continue
            pending.append(batch)
            pending_rows += batch.num_rows
            rows += batch.num_rows
            if pending_rows >= ROW_GROUP_ROWS:
                writer = writer or pq.ParquetWriter(path, schema)
                writer.write_table(pa.Table.from_batches(pending, schema), row_group_size=ROW_GROUP_ROWS)
                pending, pending_rows = [], 0
        if pending or (rows == 0 and not skip_empty):
            writer = writer or pq.ParquetWriter(path, schema)
            writer.write_table(pa.Table.from_batches(pending, schema), row_group_size=ROW_GROUP_ROWS)
    finally:
        if writer is not None:
            writer.close()
    if writer is not None:
        _fsync(path)
    return rows


def _cast(batch: pa.RecordBatch, schema: pa.Schema, table: str) -> pa.RecordBatch:
    if batch.schema.names != schema.names:
        return conform(batch, schema, table)
    try:
        return batch.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
        raise InvalidInput(f"the rows do not fit table '{table}': {exc}") from None


def scanned_names(df, aliases: bool = True) -> set[str]:
    """The names a DataFrame's plan reads: its table scans, and (with `aliases`) its views,
    which DataFusion inlines as `SubqueryAlias: name` (subqueries in expressions included)."""
    names = set()
    for line in df.logical_plan().display_indent().splitlines():
        line = line.strip()
        if line.startswith("SubqueryAlias: ") and aliases:
            name = line[len("SubqueryAlias: "):]
        elif line.startswith("TableScan: "):
            name = re.split(r" (?:projection|partial_filters|full_filters|fetch)=", line[len("TableScan: "):])[0]
        else:
            continue
        for prefix in ("datafusion.public.", "public."):
            if name.startswith(prefix):
                names.add(name[len(prefix):])
        names.add(name)
    return names


def _file_batches(paths: list[Path]) -> Iterator[pa.RecordBatch]:
    for path in paths:
        yield from pq.ParquetFile(path).iter_batches(batch_size=ROW_GROUP_ROWS)


def _link_or_copy(source: Path, target: Path) -> None:
    """A new name for an immutable file: a hard link (no data copied); a copy where the
    file system has no hard links."""
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        shutil.copyfile(source, target)
        _fsync(target)


def _fsync(path: Path) -> None:
    """Flush a file, or a folder's entries (after a rename into it), to stable storage."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return True
    if isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
        return True
    text = str(exc)
    return "No space left on device" in text or "Disk quota exceeded" in text \
        or "database or disk is full" in text


@contextlib.contextmanager
def disk_full_is_exhausted(what: str, outcome: str = "nothing of the statement was written") -> Iterator[None]:
    """ENOSPC (from Python, Arrow, SQLite or DataFusion) -> ResourceExhausted."""
    try:
        yield
    except ResourceExhausted:
        raise
    except Exception as exc:
        if is_disk_full(exc):
            raise ResourceExhausted(f"disk full while {what}: {outcome}; free space in the data "
                                    "directory and run it again") from None
        raise
