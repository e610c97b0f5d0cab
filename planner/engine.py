"""The Engine: the one object the Flight SQL server talks to.

It owns the shared DataFusion session (DataFusion's context is thread-safe for queries;
catalog changes go through the store's lock), the embedded catalog and the model
registry, and turns SQL text into plan nodes and plan nodes into Arrow results.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import pyarrow as pa
import pyarrow.compute  # pa.compute
from datafusion import SessionConfig

from planner import statements as st
from planner import copy as copy_source
from planner import limits
from planner.errors import Cancelled, InvalidInput, PlannerError, datafusion_error
from planner.paths import ConfinedContext, PathPolicy, external_tables_of
from planner.plans import (
    EMPTY_SCHEMA, CancelToken, Plan, explain_table, param_rows, parameter_schema_of, reader_of,
)
from planner.sql_plans import (
    DML_ONLY, LIST_TABLES_SCHEMA, READ_ONLY, CopyFromPlan, CopyToPlan, CreateExternalPlan, CreateTablePlan,
    CreateViewPlan, DropPlan, SqlDml, SqlQuery, StaticRows, list_tables, update_plan,
)
from planner.jobs import DEFAULT_MAX_TRAININGS, TrainingJobs
from planner.storage import ROW_GROUP_ROWS, TableStore, disk_full_is_exhausted, scanned_names, utf8_schema
from planner.table_cache import TableCache, parse_memory

DEFAULT_CATALOG = "datafusion"
DEFAULT_SCHEMA = "public"
SYSTEM_SCHEMA = "thanosql"
TRANSCRIBER_CACHE_SIZE = 2
INGEST_MODES = ("create", "append", "replace", "create_append")
DEFAULT_CACHE_MEMORY = "25%"  # of physical memory: hot tables served as Arrow


@dataclass(frozen=True)
class TableInfo:
    catalog: str
    db_schema: str
    name: str
    table_type: str
    schema: pa.Schema | None


def session_config() -> SessionConfig:
    return (SessionConfig()
            .with_information_schema(True)
            .set("datafusion.sql_parser.map_string_types_to_utf8view", "false")
            .set("datafusion.execution.parquet.schema_force_view_types", "false")
            .set("datafusion.execution.parquet.max_row_group_size", str(ROW_GROUP_ROWS))
            .set("datafusion.catalog.default_catalog", DEFAULT_CATALOG)
            .set("datafusion.catalog.default_schema", DEFAULT_SCHEMA))


class Engine:
    def __init__(self, data_dir: str | Path, allowed_roots: Iterable[str | Path] = (),
                 dataset_mirror: str | Path | None = None, statement_timeout: float = 0.0,
                 cache_memory: int | str = DEFAULT_CACHE_MEMORY, runner=None,
                 max_trainings: int = DEFAULT_MAX_TRAININGS):
        limits.use_large_thread_stacks()  # before DataFusion starts its threads
        self.statement_timeout = statement_timeout
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config = session_config()
        self.policy = PathPolicy(self.data_dir, tuple(allowed_roots))
        # Every statement DataFusion plans has the external tables it reads checked, per file.
        self.ctx = ConfinedContext(self.config, self.policy,
                                   lambda: external_tables_of(getattr(self, "store", None)))
        self.dataset_mirror = Path(dataset_mirror) if dataset_mirror else None
        budget = cache_memory if isinstance(cache_memory, int) else parse_memory(cache_memory)
        self.store = TableStore(self.data_dir, self.ctx, TableCache(budget, self.config))
        from planner import system_tables
        system_tables.register(self)
        from planner import ml_functions
        ml_functions.register(self.ctx, self)  # transcribe(), wer(), ... in every query
        self.load_problems = self.store.load()
        self._transcribers: dict[str, Any] = {}
        self._transcribers_lock = threading.Lock()
        self.jobs = TrainingJobs(max_trainings)  # the trainings running now: CANCEL MODEL, shutdown
        self._runner = runner  # ml.runner.Runner: this machine (default) or a Ray cluster

    def close(self) -> None:
        """Stop what runs beyond a statement: every training (waited for or in the
        background) is cancelled and its training process stopped. Idempotent."""
        self.jobs.close()
        if self._runner is not None:
            self._runner.close()

    @property
    def runner(self):
        """Where training and batch inference run (ml.runner): given at start, else this machine."""
        if self._runner is None:
            from ml.runner import Runner
            self._runner = Runner()
        return self._runner

    @functools.cached_property
    def registry(self):
        """The model registry (ml/); created on first use so plain SQL never imports torch."""
        from ml.registry import ModelRegistry
        registry = ModelRegistry(self.data_dir)
        registry.recover()
        return registry

    def transcriber(self, model_dir: str, class_name: str = "Wav2Vec2En", options: dict | None = None):
        """The transcriber of a PREDICT / EVALUATE: the runner's (replicas on a cluster when
        the statement asks for workers there), else the server's own (``local_transcriber``)."""
        return self.runner.transcriber(lambda: self.local_transcriber(model_dir, class_name, options),
                                       model_dir, class_name, options or {})

    def local_transcriber(self, model_dir: str, class_name: str = "Wav2Vec2En", options: dict | None = None):
        """A loaded inference model, kept for the next PREDICT (the last few are cached).

        The model class's module loads it (``load_transcriber``); the options that change
        what is loaded (``transcriber_key``, e.g. Whisper's compute_type) are part of the key."""
        from ml.options import resolve_class
        impl = resolve_class(class_name).implementation()
        key = model_dir + "\0" + repr(impl.transcriber_key(options or {}))
        with self._transcribers_lock:
            cached = self._transcribers.pop(key, None) or impl.load_transcriber(model_dir, options or {})
            self._transcribers[key] = cached
            while len(self._transcribers) > TRANSCRIBER_CACHE_SIZE:
                self._transcribers.pop(next(iter(self._transcribers)))
            return cached

    def forget_transcribers(self, model_name: str) -> None:
        marker = f"{os.sep}models{os.sep}{model_name}{os.sep}"
        with self._transcribers_lock:
            for key in [k for k in self._transcribers if marker in k]:
                del self._transcribers[key]

    # --- planning ------------------------------------------------------------------------

    def prepare(self, sql: str) -> Plan:
        """Plan `sql` without side effects: DDL, DML and ML work happen only in execute."""
        statement = st.parse(sql)
        from planner import composition
        composed = composition.plan(self, statement)  # ML statements nested in SQL, ML functions
        if composed is not None:
            return composed
        if isinstance(statement, st.Query):
            epoch = self.store.pins.epoch
            df = self.run_datafusion(lambda: self.ctx.sql_with_options(sql, READ_ONLY))
            reads = frozenset(scanned_names(df, aliases=False))
            # Announced nullable: a table written between this GetFlightInfo and the DoGet
            # may hold nulls where its current version declares NOT NULL.
            return SqlQuery(dataset_schema=nullable_schema(utf8_schema(df.schema())),
                            parameter_schema=parameter_schema_of(df.logical_plan()), sql=sql,
                            reads=reads, planned=df if self.store.only_versioned(reads) else None,
                            epoch=epoch)
        if isinstance(statement, st.Dml):
            df = self.run_datafusion(lambda: self.ctx.sql_with_options(sql, DML_ONLY))
            return SqlDml(dataset_schema=EMPTY_SCHEMA, is_update=True,
                          parameter_schema=parameter_schema_of(df.logical_plan()), sql=sql)
        if isinstance(statement, st.CreateTable):
            return update_plan(CreateTablePlan, statement=statement)
        if isinstance(statement, st.CreateView):
            return update_plan(CreateViewPlan, statement=statement)
        if isinstance(statement, st.CreateExternalTable):
            self.policy.resolve(statement.location)  # refuse early, before anything reads it
            return update_plan(CreateExternalPlan, statement=statement)
        if isinstance(statement, st.Drop):
            return update_plan(DropPlan, statement=statement)
        if isinstance(statement, st.CopyFrom):
            mode = copy_source.copy_mode(statement.options)
            self.policy.resolve(statement.path)
            return copy_source.affected_rows(update_plan(CopyFromPlan, statement=statement, mode=mode),
                                             statement.table)
        if isinstance(statement, st.CopyTo):
            self.policy.write_target(statement.path)
            return update_plan(CopyToPlan, statement=statement)
        if isinstance(statement, st.ListTables):
            return StaticRows(dataset_schema=LIST_TABLES_SCHEMA, producer=lambda: list_tables(self),
                              label="ListTables")
        from planner import ml_plans
        if isinstance(statement, st.Explain):
            node = ml_plans.plan(self, statement.statement)
            text = node.explain()
            return StaticRows(dataset_schema=explain_table("").schema, producer=lambda: explain_table(text),
                              label=f"Explain: {text}")
        return ml_plans.plan(self, statement)

    def run_datafusion(self, call: Callable[[], Any]) -> Any:
        """Run a DataFusion call, turning its errors into planner errors with clean messages."""
        try:
            return call()
        except PlannerError:
            raise
        except Exception as exc:  # DataFusion raises plain Exception/ValueError subclasses
            raise datafusion_error(exc) from None

    # --- execution -----------------------------------------------------------------------

    def execute_query(self, plan: Plan, params: pa.RecordBatch | None = None,
                      cancel: CancelToken | None = None) -> pa.RecordBatchReader:
        result = self.execute(plan, params, cancel)
        return reader_of(result) if isinstance(result, pa.Table) else result

    def execute(self, plan: Plan, params: pa.RecordBatch | None = None,
                cancel: CancelToken | None = None) -> pa.RecordBatchReader | pa.Table:
        """A query's rows: a reader, or a table when they are already in memory (a stored
        table's cached version), which the server sends without Python in the loop.

        The statement pins the table versions it plans against until its reader ends."""
        if plan.is_update:
            raise InvalidInput("this statement returns no rows; execute it as an update")
        cancel = self._timed(cancel)
        pin = self.store.pins.begin()
        cancel.release_tables = pin.release
        try:
            with _timeout_reported(cancel):
                result = plan.run(self, params, cancel)
        except BaseException:
            pin.release()
            raise
        if isinstance(result, pa.Table):
            pin.release()  # the rows are in memory: no file of the version is read any more
            return result
        return released_at_end(result, pin)

    def execute_update(self, plan: Plan, params: pa.RecordBatch | None = None,
                       cancel: CancelToken | None = None) -> int:
        cancel = self._timed(cancel)
        pin = self.store.pins.begin()
        cancel.release_tables = pin.release
        try:
            with _timeout_reported(cancel):
                if not plan.is_update:
                    # A query sent as an update (e.g. CommandStatementUpdate with a SELECT): run
                    # it, report its row count, as other Flight SQL servers do.
                    result = plan.run(self, params, cancel)
                    batches = result.to_batches() if isinstance(result, pa.Table) else result
                    if "rows_affected" in result.schema.names:  # COPY, GET ...: the rows they wrote
                        return sum(int(pa.compute.sum(b.column("rows_affected")).as_py() or 0) for b in batches)
                    return sum(b.num_rows for b in batches)
                # Writes through the store are all-or-nothing and say so; this catches a full
                # disk met by what DataFusion writes itself (COPY ... TO, external tables).
                with disk_full_is_exhausted("running the statement", "what it wrote may be incomplete"):
                    return int(plan.run(self, params, cancel))
        finally:
            pin.release()

    def _timed(self, cancel: CancelToken | None) -> CancelToken:
        """The statement's token, its timeout started (the server's --statement-timeout)."""
        cancel = cancel or CancelToken()
        cancel.start_timer(self.statement_timeout)
        return cancel

    def check_parameters(self, plan: Plan, params: pa.RecordBatch | None) -> None:
        """Refuse a wrong number of bound values as soon as they are bound."""
        param_rows(params, len(plan.parameter_schema))

    def ingest(self, table: str, reader: pa.RecordBatchReader, mode: str,
               cancel: CancelToken | None = None) -> int:
        """Bulk ingest: all the stream's rows are committed, or none (nor the table, in the
        create modes). `cancel` is asked after each batch and at the end of the stream:
        a call the client abandoned (e.g. a batch over its message size limit) ends like
        a clean stream on the server, and must not commit what arrived."""
        if mode not in INGEST_MODES:
            raise InvalidInput(f"ingest mode must be one of {', '.join(INGEST_MODES)}")
        if not table:
            raise InvalidInput("bulk ingest needs a target table name")
        cancel = cancel or CancelToken()

        def batches():
            for batch in reader:
                cancel.check()
                yield batch
            cancel.check()

        return self.store.write_table(table.lower(), batches(), reader.schema, mode)

    def object_exists(self, name: str) -> bool:
        return self.store.get(name) is not None or self.ctx.table_exist(name)

    # --- metadata ------------------------------------------------------------------------

    def catalogs(self) -> list[str]:
        return sorted(self.ctx.catalog_names())

    def db_schemas(self, catalog: str | None = None, pattern: str | None = None) -> list[tuple[str, str]]:
        result = []
        for cat in self.catalogs():
            if catalog is not None and cat != catalog:
                continue
            for schema in sorted(self.ctx.catalog(cat).schema_names()):
                if like(schema, pattern):
                    result.append((cat, schema))
        return result

    def tables(self, catalog: str | None = None, schema_pattern: str | None = None,
               table_pattern: str | None = None, types: list[str] | None = None,
               include_schema: bool = False) -> list[TableInfo]:
        wanted = {t.upper() for t in types} if types else None
        result = []
        for cat, schema in self.db_schemas(catalog, schema_pattern):
            for name in sorted(table_names(self.ctx.catalog(cat).schema(schema))):
                if not like(name, table_pattern):
                    continue
                kind = self._table_type(schema, name)
                if wanted is not None and kind not in wanted:
                    continue
                arrow_schema = None
                if include_schema:
                    arrow_schema = utf8_schema(self.ctx.table(f'"{cat}"."{schema}"."{name}"').schema())
                result.append(TableInfo(cat, schema, name, kind, arrow_schema))
        return result

    def table_types(self) -> list[str]:
        return ["SYSTEM TABLE", "TABLE", "VIEW"]

    def _table_type(self, schema: str, name: str) -> str:
        if schema in ("information_schema", SYSTEM_SCHEMA):
            return "SYSTEM TABLE"
        stored = self.store.get(name) if schema == DEFAULT_SCHEMA else None
        return "VIEW" if stored is not None and stored.kind == "view" else "TABLE"


def nullable_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f.with_nullable(True) for f in schema], metadata=schema.metadata)


def table_names(schema) -> list[str]:
    """The names in a DataFusion schema; a Python schema provider has them as an attribute."""
    names = schema.table_names
    return list(names() if callable(names) else names)


def released_at_end(reader: pa.RecordBatchReader, pin) -> pa.RecordBatchReader:
    """`reader`, releasing `pin` when it is exhausted, fails, or is dropped (even unread)."""
    return pa.RecordBatchReader.from_batches(reader.schema, _Releasing(reader, pin))


class _Releasing:
    """An iterator over a reader's batches that releases a pin at its end, on an error,
    and when it is freed: a generator's `finally` never runs if it never started."""

    def __init__(self, reader: pa.RecordBatchReader, pin):
        self._batches = iter(reader)
        self._pin = pin

    def __iter__(self):
        return self

    def __next__(self) -> pa.RecordBatch:
        try:
            return next(self._batches)
        except BaseException:
            self._pin.release()
            raise

    def __del__(self):
        self._pin.release()


@contextlib.contextmanager
def _timeout_reported(cancel: CancelToken):
    """A statement stopped by its timeout says so (DEADLINE_EXCEEDED), not 'cancelled'."""
    try:
        yield
    except Cancelled:
        if cancel.timed_out:
            raise cancel.error() from None
        raise


_ANY_RUN, _ANY_ONE = object(), object()


def like(value: str, pattern: str | None) -> bool:
    """SQL LIKE with % (any run of characters, none included) and _ (exactly one character),
    the special characters of Flight SQL's filter patterns, and `\\` before either (or
    before itself) for the character itself: the escape GetSqlInfo advertises
    (SQL_SEARCH_STRING_ESCAPE), which JDBC tools put before the `_` of table names. Case
    sensitive, whole value. A client sends the pattern, so matching must stay cheap whatever
    it holds: the greedy two-pointer wildcard match, O(len(value) * len(pattern)) at worst
    and linear in practice, never a backtracking regex (`'%' * 14 + '!'` took minutes there,
    holding the GIL)."""
    if pattern is None or pattern == "%":
        return True
    tokens = _like_tokens(pattern)
    v = p = 0
    star = -1  # index in `tokens` just after the last % seen
    resume = 0  # where in `value` that % currently ends its run
    while v < len(value):
        if p < len(tokens) and tokens[p] is _ANY_RUN:
            star, resume = p + 1, v
            p += 1
        elif p < len(tokens) and (tokens[p] is _ANY_ONE or tokens[p] == value[v]):
            v += 1
            p += 1
        elif star >= 0:  # let the last % take one more character, and retry after it
            resume += 1
            v, p = resume, star
        else:
            return False
    while p < len(tokens) and tokens[p] is _ANY_RUN:
        p += 1
    return p == len(tokens)


def _like_tokens(pattern: str) -> list:
    """The pattern as wildcards and literal characters, escapes applied."""
    tokens, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            tokens.append(pattern[i + 1])
            i += 2
            continue
        tokens.append(_ANY_RUN if c == "%" else _ANY_ONE if c == "_" else c)
        i += 1
    return tokens

