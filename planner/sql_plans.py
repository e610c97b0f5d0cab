"""Plan nodes for plain SQL: queries and DML run by DataFusion, DDL persisted by the store."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Iterator

import pyarrow as pa
from datafusion import SQLOptions, SessionContext

from planner import copy as copy_source
from planner.errors import (
    AlreadyExists, InvalidInput, PermissionDenied, PlannerError, Unsupported, datafusion_error,
)
from planner.plans import EMPTY_SCHEMA, CancelToken, Plan, guarded, param_rows, reader_of
from planner.storage import conform, table_ref, utf8_schema
from planner.table_cache import MAX_BATCH_BYTES, slices_under

READ_ONLY = SQLOptions().with_allow_ddl(False).with_allow_dml(False).with_allow_statements(False)
DML_ONLY = SQLOptions().with_allow_ddl(False).with_allow_dml(True).with_allow_statements(False)
EXPLAIN_DDL = SQLOptions().with_allow_ddl(True).with_allow_dml(False).with_allow_statements(False)
CANCEL_POLL_SECONDS = 0.1  # how often a statement waiting for DataFusion checks its token


def stream_dataframe(df: Any, cancel: CancelToken) -> pa.RecordBatchReader:
    """Stream DataFusion's batches (never materialised whole), as plain utf8.

    The token is checked between batches. A statement with a timeout also waits for its
    first batch in a way the timeout can interrupt: an aggregation or a sort does all its
    work before that batch, and only dropping DataFusion's future stops it.
    """
    source_schema = df.schema()
    batches = _batches(df) if cancel.deadline is None else _interruptible_batches(df, cancel)
    schema = utf8_schema(source_schema)
    if schema != source_schema:
        batches = (b.cast(schema) for b in batches)
    return guarded(schema, _sized_for_grpc(batches), cancel)


def _batches(df: Any) -> Iterator[pa.RecordBatch]:
    """DataFusion's batches through `execute_stream`, which runs the partitions in parallel
    ahead of the reader (the Arrow C stream of a DataFrame reads them one after another:
    2M rows from Parquet took 229 ms that way, 50 ms this way, measured here)."""
    try:
        stream = df.execute_stream()
        for batch in stream:
            yield batch.to_pyarrow()
    except PlannerError:
        raise
    except Exception as exc:  # DataFusion's own errors, raised mid-stream
        raise datafusion_error(exc) from None


def _sized_for_grpc(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Batches over MAX_BATCH_BYTES (wide rows: audio, long text) sent as slices."""
    for batch in batches:
        yield from slices_under(batch, MAX_BATCH_BYTES)


def _interruptible_batches(df: Any, cancel: CancelToken) -> Iterator[pa.RecordBatch]:
    """The first batch awaited through DataFusion's async stream, the rest pulled directly.

    Awaiting costs about 0.2 ms a batch (measured), so only the first one is awaited.
    DataFusion's work stops when the stream and the awaited future are freed, so no frame
    that a raised error's traceback keeps may hold them (measured: 2 CPU-s/s go on until
    a garbage collection otherwise).
    """
    stream = df.execute_stream()
    loop = asyncio.new_event_loop()
    try:
        first = loop.run_until_complete(_first_batch(stream, cancel))
        if first is not _STOPPED:
            if first is not None:
                yield first.to_pyarrow()
                for batch in stream:
                    yield batch.to_pyarrow()
            return
    except PlannerError:
        raise
    except Exception as exc:  # DataFusion's own errors, raised mid-stream
        raise datafusion_error(exc) from None
    finally:
        loop.close()
        del stream
    raise cancel.error()


_STOPPED = object()


def collect_interruptible(df: Any, cancel: CancelToken) -> list[pa.RecordBatch]:
    """All of a statement's batches; a cancel, the client going away or the timeout stops
    it even while DataFusion is still working towards the first (a COPY, a DML)."""
    return list(_interruptible_batches(df, cancel))


async def _first_batch(stream: Any, cancel: CancelToken):
    """DataFusion's first batch (None when there is none), or _STOPPED once the token is set."""
    pending = asyncio.ensure_future(stream.__anext__())
    del stream
    try:
        while True:
            done, _ = await asyncio.wait({pending}, timeout=CANCEL_POLL_SECONDS)
            if done:
                try:
                    return pending.result()
                except StopAsyncIteration:
                    return None
            if cancel.is_set():
                pending.cancel()
                await asyncio.wait({pending})
                return _STOPPED
    finally:
        del pending


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass
class SqlQuery(Plan):
    """A query DataFusion plans and runs. Planned once: the plan made at prepare (kept
    only when it reads nothing but stored tables' versions: a system table's rows are
    taken when it is planned) runs as it is while no table, view or external table has
    changed since (`epoch`); otherwise the statement is planned again."""
    sql: str = ""
    reads: frozenset = frozenset()  # the tables it scans (asked into memory at each run)
    planned: Any = None
    epoch: int = -1

    def explain(self) -> str:
        return f"SqlQuery: {self.sql}"

    def run(self, engine, params, cancel):
        rows = param_rows(params, len(self.parameter_schema))
        if len(rows) != 1:
            raise InvalidInput(f"a query takes exactly one row of parameters; {len(rows)} were bound")
        if self.planned is not None and not rows[0] and engine.store.pins.epoch == self.epoch:
            df = self.planned
        else:
            self.planned = None  # it holds the versions of its time: let them go
            df = engine.run_datafusion(
                lambda: engine.ctx.sql_with_options(self.sql, READ_ONLY, param_values=rows[0]))
        engine.store.warm(self.reads)
        table = in_memory_rows(engine, df)
        if table is not None:
            return table
        return small_in_memory(stream_dataframe(df, cancel))


SMALL_RESULT_BYTES = 1 << 20


def small_in_memory(reader: pa.RecordBatchReader) -> pa.RecordBatchReader | pa.Table:
    """A result that ends within its first SMALL_RESULT_BYTES (a point query, an aggregate)
    as a table, sent by pyarrow with no Python per batch (a point query's p50 fell from
    2.9 to 2.0 ms through a raw Flight client, measured here); a longer one as a stream
    of the batches already read and then the rest."""
    head: list[pa.RecordBatch] = []
    size = 0
    schema = reader.schema
    for batch in reader:
        if batch.schema != schema:  # DataFusion's batches may differ in nullability from its plan
            batch = pa.RecordBatch.from_arrays(batch.columns, schema=schema)
        head.append(batch)
        size += batch.nbytes
        if size > SMALL_RESULT_BYTES:
            break
    else:
        return pa.Table.from_batches(head, schema)

    def rest():
        yield from head
        yield from reader
    return pa.RecordBatchReader.from_batches(reader.schema, rest())


_PASS_THROUGH = {"Projection", "SubqueryAlias"}


def in_memory_rows(engine, df: Any) -> pa.Table | None:
    """The fast path: a query that only reads a stored table's columns (SELECT * FROM t,
    SELECT b, a FROM t) whose version is in memory gets those columns as they are held,
    with no execution at all; None for any other query."""
    node = df.logical_plan()
    while type(node.to_variant()).__name__ in _PASS_THROUGH:
        inputs = node.inputs()
        if len(inputs) != 1:
            return None
        node = inputs[0]
    leaf = node.to_variant()
    if type(leaf).__name__ != "TableScan" or engine.store.in_memory(leaf.table_name()) is None:
        return None
    optimized = df.optimized_logical_plan()
    top = optimized.to_variant()
    scan = top
    if type(top).__name__ == "Projection":
        if any(e.variant_name() != "Column" for e in top.projections()):
            return None
        scan = optimized.inputs()[0].to_variant()
    if type(scan).__name__ != "TableScan" or scan.filters():
        return None
    table = _cached_table(engine, scan.table_name())
    schema = utf8_schema(df.schema())
    if table is None or any(name not in table.schema.names for name in schema.names):
        return None
    table = table.select(schema.names)
    if not table.schema.equals(schema):
        return None
    fetch = scan.fetch()
    return table.slice(0, fetch) if fetch is not None else table


def _cached_table(engine, shown: str) -> pa.Table | None:
    """The in-memory version of the stored table a scan names. DataFusion shows the name
    unquoted: only a name without a dot reads one way (the default schema's table); a
    dotted one ("public.t", "information_schema.tables") could be a table so named, and
    takes the ordinary path."""
    return None if "." in shown else engine.store.in_memory(shown)


@dataclass
class SqlDml(Plan):
    """INSERT (and DataFusion's other DML). An INSERT into a stored table is planned by
    DataFusion, whose DML plan's input is the source already cast and projected to the
    table's columns; the store writes the rows of every bound parameter row into one
    file and commits it with one rename, under its lock: all the statement's rows or none.
    Nothing else is ever written: DataFusion's own DML is never run (it would append to an
    external table's files, wherever they are), so DML on anything but a stored table is
    refused, naming why.
    """
    sql: str = ""

    def run(self, engine, params, cancel):
        rows = param_rows(params, len(self.parameter_schema))
        if not rows:
            return 0
        plans = []
        for values in rows:
            cancel.check()
            plans.append(engine.run_datafusion(
                lambda values=values: engine.ctx.sql_with_options(self.sql, DML_ONLY, param_values=values)))
        target = insert_target(engine, plans[0].logical_plan())
        sources = [engine.run_datafusion(
            lambda df=df: engine.ctx.create_dataframe_from_logical_plan(df.logical_plan().inputs()[0]))
            for df in plans]
        schema = utf8_schema(sources[0].schema())
        return engine.store.write_table(target, _source_batches(engine, sources, cancel), schema, "append")


_READ_ONLY_HINT = "use CREATE TABLE name AS SELECT ... to make a stored copy, or COPY (SELECT ...) TO 'path'"


def insert_target(engine, logical_plan) -> str:
    """The stored table an `INSERT INTO` plan appends to; any other DML is refused."""
    try:
        dml = logical_plan.to_variant()
        op = dml.op().name()
        shown = dml.table_name()
    except Exception:  # not a DmlStatement
        raise InvalidInput("this statement is not an INSERT, UPDATE or DELETE") from None
    obj = _dml_object(engine, dml, shown)
    kind = obj.kind if obj is not None else None
    if kind == "external":
        raise PermissionDenied(f"external table '{obj.name}' is read-only: {op.upper()} is refused; "
                               + _READ_ONLY_HINT)
    if kind == "view":
        raise InvalidInput(f"'{obj.name}' is a view; views are read-only ({op.upper()} is refused)")
    if kind is None:
        raise PermissionDenied(f"'{shown}' is not a stored table of this server (a system or information "
                               f"table is read-only): {op.upper()} is refused")
    if op != "Insert Into":
        raise Unsupported(f"{op.upper()} is not supported: stored tables are append-only (INSERT INTO); "
                          f"CREATE OR REPLACE TABLE {obj.name} AS SELECT ... rewrites one")
    return obj.name


def _dml_object(engine, dml, shown: str):
    """The catalog object a DML plan targets. DataFusion shows the target unquoted
    ('a.b' is table "a.b" or table b of schema a), so every reading of it that names an
    object of schema public is tried; several matches are told apart by their schema."""
    from planner.engine import DEFAULT_CATALOG, DEFAULT_SCHEMA
    parts = shown.split(".")
    candidates = [shown]
    for skip in range(1, min(len(parts), 3)):
        qualifier, rest = parts[:skip], ".".join(parts[skip:])
        if qualifier in ([DEFAULT_SCHEMA], [DEFAULT_CATALOG, DEFAULT_SCHEMA]):
            candidates.append(rest)
    found = [obj for obj in dict.fromkeys(engine.store.get(c) for c in candidates) if obj is not None]
    if len(found) > 1:
        target_schema = dml.target().schema()
        found = [obj for obj in found if engine.store.exists_in_session(obj.name)
                 and engine.ctx.table(table_ref(obj.name)).schema() == target_schema]
        if len(found) != 1:
            raise InvalidInput(f"'{shown}' could name more than one table; rename one of them")
    return found[0] if found else None


def _source_batches(engine, sources, cancel):
    """The batches of every source, in order; DataFusion errors met mid-way are planner errors."""
    for df in sources:
        batches = iter(engine.run_datafusion(lambda df=df: pa.RecordBatchReader.from_stream(df)))
        while True:
            cancel.check()
            batch = engine.run_datafusion(lambda: next(batches, None))
            if batch is None:
                break
            yield batch


@dataclass
class CreateTablePlan(Plan):
    """CREATE TABLE: the AS query runs in the engine's own (confined, timed) context and is
    streamed into the store; declared columns take the query's columns by position, cast
    to the declared types. Column definitions alone make an empty table."""
    statement: Any = None

    def run(self, engine, params, cancel):
        st = self.statement
        if table_exists(engine, st):
            return 0
        declared = declared_schema(engine, st.columns) if st.columns is not None else None
        if st.query is None:
            return write_created(engine, st, iter(()), declared, None)
        df = engine.run_datafusion(lambda: engine.ctx.sql_with_options(st.query, READ_ONLY))
        reader = stream_dataframe(df, cancel)
        return write_created(engine, st, reader, reader.schema, declared)


def write_created(engine, st, batches, schema: pa.Schema, declared: pa.Schema | None) -> int:
    """CREATE TABLE `st`'s rows into the store. Declared columns take the query's by
    position, cast to the declared types. The name is checked again when the rows are in
    (they are written without the store's lock): IF NOT EXISTS then does nothing if another
    statement created the table meanwhile."""
    mode = "replace" if st.or_replace else "create"
    try:
        if declared is None:
            return engine.store.write_table(st.name, batches, schema, mode)
        if len(schema) != len(declared):
            raise InvalidInput(f"CREATE TABLE {st.name}: {len(declared)} column(s) are declared but the "
                               f"query gives {len(schema)} ({', '.join(schema.names)})")
        converted = (conform(b.rename_columns(declared.names), declared, st.name) for b in batches)
        return engine.store.write_table(st.name, converted, declared, mode)
    except AlreadyExists:
        if st.if_not_exists:
            return 0
        raise


def table_exists(engine, st) -> bool:
    """Whether CREATE TABLE `st` has nothing to do (IF NOT EXISTS and the table is there);
    refuses a name already taken unless OR REPLACE."""
    if engine.store.get(st.name) is not None or engine.store.exists_in_session(st.name):
        if st.if_not_exists:
            return True
        if not st.or_replace:
            raise AlreadyExists(f"table '{st.name}' already exists (use CREATE OR REPLACE TABLE, "
                                "or DROP TABLE first)")
    return False


def declared_schema(engine, columns: str) -> pa.Schema:
    """The schema of `(column definitions)`, as DataFusion reads them. Only the parenthesised
    definitions reach DataFusion, in a scratch context that holds no table and reads no
    file, under a fixed name (the real one may be anything)."""
    scratch = SessionContext(engine.config)
    engine.run_datafusion(lambda: scratch.sql("CREATE TABLE t " + columns))
    return utf8_schema(engine.run_datafusion(lambda: scratch.table("t").schema()))


@dataclass
class CreateViewPlan(Plan):
    statement: Any = None

    def run(self, engine, params, cancel):
        st = self.statement
        with engine.store.lock:
            existing = engine.store.get(st.name)
            if existing is not None and existing.kind != "view":
                raise AlreadyExists(f"'{st.name}' is a {existing.kind}; drop it before creating a view")
            engine.run_datafusion(lambda: engine.ctx.sql(st.sql).collect())
            engine.store.remember(st.name, "view", st.sql)
        return 0


@dataclass
class CreateExternalPlan(Plan):
    statement: Any = None

    def run(self, engine, params, cancel):
        st = self.statement
        # The location and every file under it are checked (the policy, again in the
        # engine's ConfinedContext at each later scan); DataFusion gets the checked real path
        # at the literal's own token, and must read the statement the same way.
        _, literal = engine.policy.external_location(st.location)
        sql = st.sql_before_location + quote_literal(literal) + st.sql_after_location
        explained = engine.run_datafusion(lambda: engine.ctx.sql("EXPLAIN " + sql, options=EXPLAIN_DDL))
        inner = explained.logical_plan().to_variant().plan().to_variant()
        if type(inner).__name__ != "CreateExternalTable" or list(inner.locations()) != [literal]:
            raise PermissionDenied(f"CREATE EXTERNAL TABLE: the statement's LOCATION could not be confirmed "
                                   f"as '{literal}'; write it as LOCATION 'path' with a plain literal")
        with engine.store.lock:
            existing = engine.store.get(st.name)
            if existing is not None and not st.or_replace:
                if st.if_not_exists:
                    return 0
                raise AlreadyExists(f"'{st.name}' already exists")
            if existing is not None and engine.ctx.table_exist(st.name):
                engine.ctx.deregister_table(st.name)
            engine.run_datafusion(lambda: engine.ctx.sql(sql).collect())
            engine.store.remember(st.name, "external", sql)
            forget = getattr(engine.ctx, "forget_external_tables", None)
            if forget is not None:
                forget()  # the next statement reads the catalog's external tables again
        return 0


@dataclass
class DropPlan(Plan):
    statement: Any = None

    def run(self, engine, params, cancel):
        for name in self.statement.names:
            engine.store.drop(name, self.statement.kind, self.statement.if_exists)
        return 0  # DDL affects no rows


@dataclass
class CopyFromPlan(Plan):
    statement: Any = None
    mode: str = "create"

    def explain(self) -> str:
        return f"CopyFrom: table={self.statement.table} path={self.statement.path} mode={self.mode}"

    def run(self, engine, params, cancel):
        st = self.statement
        schema, batches = copy_source.open_source(st.path, st.options, engine.policy)
        try:
            return engine.store.write_table(st.table, batches, schema, self.mode)
        except AlreadyExists as exc:
            if self.mode == "create":
                raise AlreadyExists(f"table '{st.table}' already exists; use COPY {st.table} "
                                    "OPTIONS (if_exists='replace') or if_exists='append'") from None
            raise exc


@dataclass
class CopyToPlan(Plan):
    statement: Any = None

    def explain(self) -> str:
        return f"CopyTo: path={self.statement.path}"

    def run(self, engine, params, cancel):
        st = self.statement
        # The target literal's own token is replaced by the checked real path (never a text
        # search), then DataFusion's plan must name exactly that path before anything runs.
        target = engine.policy.write_target(st.path)
        literal = str(target) + ("/" if st.path.endswith("/") and str(target) != "/" else "")
        sql = st.sql_before_path + quote_literal(literal) + st.sql_after_path
        df = engine.run_datafusion(lambda: engine.ctx.sql(sql, options=DML_ONLY))
        node = df.logical_plan().to_variant()
        if type(node).__name__ != "CopyTo" or node.output_url() != literal:
            raise PermissionDenied(f"COPY ... TO: the statement's target could not be confirmed as "
                                   f"'{literal}'; write it as COPY (query) TO 'path' with a plain literal")
        batches = collect_interruptible(df, cancel)  # the writing happens before its one batch
        return sum(int(b.column(0)[0].as_py()) for b in batches if b.num_rows)


@dataclass
class StaticRows(Plan):
    """A small result computed at execute time (LIST ..., DESCRIBE MODEL)."""
    producer: Any = None
    label: str = ""

    def explain(self) -> str:
        return self.label or type(self).__name__

    def run(self, engine, params, cancel):
        table = self.producer()
        if table.schema != self.dataset_schema:
            table = table.cast(self.dataset_schema)
        return reader_of(table)


LIST_TABLES_SCHEMA = pa.schema([pa.field("table_name", pa.string(), nullable=False)])


def list_tables(engine) -> pa.Table:
    from planner.engine import table_names
    names = sorted(table_names(engine.ctx.catalog().schema("public")))
    return pa.table({"table_name": pa.array(names, pa.string())}, schema=LIST_TABLES_SCHEMA)


def update_plan(cls, **kwargs) -> Plan:
    return cls(dataset_schema=EMPTY_SCHEMA, is_update=True, **kwargs)
