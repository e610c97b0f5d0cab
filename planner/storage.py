"""The embedded catalog: persisted tables, views and external tables.

Tables live as Parquet folders under `data_dir/tables/`, registered in DataFusion as
listing tables (so DataFusion's own INSERT appends a file, staged and renamed by its
object store). The catalog rows live in `data_dir/catalog.sqlite`. A replace writes a
complete new folder and switches the catalog row in one transaction, so readers and a
restarted server see either the old table or the new one, never half of one.
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq
from datafusion import SessionContext

from planner.errors import AlreadyExists, InvalidInput, NotFound

# Row groups of 64k rows: both cores decode in parallel and min/max statistics prune
# point queries (1M-row fetch 72 -> 37 ms, `WHERE id = x` 28 -> 3 ms, measured here).
ROW_GROUP_ROWS = 65_536

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

    def __init__(self, data_dir: Path, ctx: SessionContext):
        self.data_dir = Path(data_dir)
        self.tables_dir = self.data_dir / "tables"
        self.tables_dir.mkdir(parents=True, exist_ok=True)
        self.ctx = ctx
        self.lock = threading.RLock()  # serialises catalog changes; queries never take it
        self.db_path = self.data_dir / "catalog.sqlite"
        with self._db() as db:
            db.execute(_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return _Closing(db)

    # --- start-up ----------------------------------------------------------------------

    def load(self) -> list[str]:
        """Register every stored object in DataFusion; returns the problems met (if any)."""
        problems = []
        with self._db() as db:
            rows = db.execute("SELECT name, kind, folder, sql FROM planner_objects ORDER BY seq").fetchall()
        referenced = set()
        for name, kind, folder, sql in rows:
            try:
                if kind == "table":
                    referenced.add(folder)
                    self._register_folder(name, self.tables_dir / folder)
                else:
                    self.ctx.sql(sql).collect()
            except Exception as exc:  # one broken object must not stop the server
                problems.append(f"{kind} {name}: {exc}")
        for child in self.tables_dir.iterdir():
            if child.name not in referenced:
                shutil.rmtree(child, ignore_errors=True)  # staging left by a crash, or a replaced table
        return problems

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
        return self.ctx.table_exist(name)

    def table_schema(self, name: str) -> pa.Schema:
        return utf8_schema(self.ctx.table(name).schema())

    # --- tables ------------------------------------------------------------------------

    def write_table(self, name: str, batches: Iterable[pa.RecordBatch], schema: pa.Schema,
                    mode: str) -> int:
        """Create, replace or append to table `name` from `batches`; returns rows written.

        mode: 'create' (fails if it exists), 'replace', 'append' (fails if missing),
        'create_append' (append, creating the table if needed).
        """
        schema = utf8_schema(schema)
        with self.lock:
            existing = self.get(name)
            if existing is None and self.ctx.table_exist(name):
                raise AlreadyExists(f"'{name}' is a system table and cannot be written")
            if existing is not None and existing.kind != "table" and mode != "replace":
                raise AlreadyExists(f"'{name}' is a {existing.kind}, not a table")
            if mode == "create" and existing is not None:
                raise AlreadyExists(f"table '{name}' already exists")
            if mode == "append" and existing is None:
                raise NotFound(f"table '{name}' does not exist")
            if existing is not None and existing.kind == "table" and mode in ("append", "create_append"):
                return self._append(existing, batches, schema)
            return self._write_new(name, existing, batches, schema)

    def _write_new(self, name: str, existing: StoredObject | None,
                   batches: Iterable[pa.RecordBatch], schema: pa.Schema) -> int:
        folder = f"{name}-{uuid.uuid4().hex[:12]}"
        staging = self.tables_dir / f".staging-{folder}"
        staging.mkdir()
        try:
            rows = _write_parquet(staging / "part-00000.parquet", batches, schema)
            staging.rename(self.tables_dir / folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._switch(name, "table", folder, None, existing)
        return rows

    def _append(self, existing: StoredObject, batches: Iterable[pa.RecordBatch], schema: pa.Schema) -> int:
        target = self.table_schema(existing.name)
        folder = self.tables_dir / existing.folder
        part = f"part-{uuid.uuid4().hex[:12]}.parquet"
        tmp = folder / f".{part}.tmp"
        try:
            rows = _write_parquet(tmp, (_conform(b, target, existing.name) for b in batches), target,
                                  source_schema=schema, table=existing.name)
            tmp.rename(folder / part)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        # DataFusion caches a listing table's file list: register it again to see the new file.
        self.ctx.deregister_table(existing.name)
        self._register_folder(existing.name, folder)
        return rows

    def _switch(self, name: str, kind: str, folder: str | None, sql: str | None,
                existing: StoredObject | None) -> None:
        """Make the new object current: catalog row first (the commit point), then DataFusion."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM planner_objects WHERE name = ?", (name,))
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM planner_objects").fetchone()[0]
            db.execute("INSERT INTO planner_objects VALUES (?, ?, ?, ?, ?, ?)",
                       (name, kind, folder, sql, seq, _now()))
            db.execute("COMMIT")
        if self.ctx.table_exist(name):
            self.ctx.deregister_table(name)
        if kind == "table":
            self._register_folder(name, self.tables_dir / folder)
        if existing is not None and existing.folder and existing.folder != folder:
            shutil.rmtree(self.tables_dir / existing.folder, ignore_errors=True)

    def _register_folder(self, name: str, folder: Path) -> None:
        self.ctx.register_parquet(name, str(folder) + "/")

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
                shutil.rmtree(self.tables_dir / existing.folder, ignore_errors=True)

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
            if self.ctx.table_exist(name):
                self.ctx.deregister_table(name)
            if existing.folder:
                shutil.rmtree(self.tables_dir / existing.folder, ignore_errors=True)
            return True


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


def _conform(batch: pa.RecordBatch, target: pa.Schema, table: str) -> pa.RecordBatch:
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
    return pa.RecordBatch.from_arrays(columns, schema=target)


def _write_parquet(path: Path, batches: Iterable[pa.RecordBatch], schema: pa.Schema,
                   source_schema: pa.Schema | None = None, table: str | None = None) -> int:
    """Stream batches into one Parquet file, in row groups of ROW_GROUP_ROWS rows."""
    rows = 0
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    with pq.ParquetWriter(path, schema) as writer:
        for batch in batches:
            if batch.schema != schema:
                batch = batch.cast(schema) if batch.schema.names == schema.names else \
                    _conform(batch, schema, table or path.parent.name)
            pending.append(batch)
            pending_rows += batch.num_rows
            rows += batch.num_rows
            if pending_rows >= ROW_GROUP_ROWS:
                writer.write_table(pa.Table.from_batches(pending, schema), row_group_size=ROW_GROUP_ROWS)
                pending, pending_rows = [], 0
        if pending or rows == 0:
            writer.write_table(pa.Table.from_batches(pending, schema), row_group_size=ROW_GROUP_ROWS)
    return rows
