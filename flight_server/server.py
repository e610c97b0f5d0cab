"""The Arrow Flight SQL endpoint: decodes commands and hands them to the planner.

This module knows the protocol (commands, tickets, handles, result encodings) and
nothing of SQL or ML. Every handler leaves through `translated`, so clients get a
clean message with the right gRPC status and the server keeps serving.

Handles (prepared statements, tickets) belong to the identity that made them (see
`flight_server.auth`); SQL text over `max_statement_bytes` is refused before planning.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.flight as flight

from flight_server import metadata as md
from flight_server import protocol as P
from flight_server.auth import ANONYMOUS, AuthMiddlewareFactory, Authenticator, HeaderHandshake
from flight_server.errors import translated, translated_batches
from flight_server.handles import HandleStore
from planner.engine import Engine
from planner.errors import InvalidInput, NotFound, Unsupported
from planner.plans import CancelToken, Plan

log = logging.getLogger("thanosql.server")

SERVER_NAME = "thanosql-flight"
SERVER_VERSION = "0.1.0"
DEFAULT_HANDLE_TTL = 15 * 60.0
DEFAULT_MAX_STATEMENT_BYTES = 1 << 20
UPDATE_RESULT_SCHEMA = pa.schema([("count", pa.int64())])


@dataclass
class Prepared:
    plan: Plan
    params: pa.RecordBatch | None = None


@dataclass
class Execution:
    """A planned statement waiting for DoGet, and the token that cancels it."""
    plan: Plan
    params: pa.RecordBatch | None
    cancel: CancelToken = field(default_factory=CancelToken)


def _sql_info_values() -> dict[int, object]:
    S = md.SqlInfo
    keywords = ["BUILD", "FIT", "PREDICT", "EVALUATE", "MODEL", "OPTIONS", "COPY", "LIST", "THANOSQL",
                "DATASET", "PRINT", "AUDIO", "EXTERNAL", "LOCATION", "STORED"]
    return {
        S.FLIGHT_SQL_SERVER_NAME: SERVER_NAME,
        S.FLIGHT_SQL_SERVER_VERSION: SERVER_VERSION,
        S.FLIGHT_SQL_SERVER_ARROW_VERSION: pa.__version__,
        S.FLIGHT_SQL_SERVER_READ_ONLY: False,
        S.FLIGHT_SQL_SERVER_SQL: True,
        S.FLIGHT_SQL_SERVER_SUBSTRAIT: False,
        S.FLIGHT_SQL_SERVER_TRANSACTION: 0,  # SQL_SUPPORTED_TRANSACTION_NONE
        S.FLIGHT_SQL_SERVER_CANCEL: True,
        S.FLIGHT_SQL_SERVER_BULK_INGESTION: True,
        S.FLIGHT_SQL_SERVER_INGEST_TRANSACTIONS_SUPPORTED: False,
        S.FLIGHT_SQL_SERVER_STATEMENT_TIMEOUT: 0,
        S.FLIGHT_SQL_SERVER_TRANSACTION_TIMEOUT: 0,
        S.SQL_DDL_CATALOG: False,
        S.SQL_DDL_SCHEMA: False,
        S.SQL_DDL_TABLE: True,
        S.SQL_IDENTIFIER_CASE: 3,  # SQL_CASE_SENSITIVITY_LOWERCASE: unquoted names fold to lower case
        S.SQL_IDENTIFIER_QUOTE_CHAR: '"',
        S.SQL_QUOTED_IDENTIFIER_CASE: 0,  # case-sensitive: no enum value, so UNKNOWN
        S.SQL_ALL_TABLES_ARE_SELECTABLE: True,
        S.SQL_NULL_ORDERING: 0,  # SQL_NULLS_SORTED_HIGH: last ascending, first descending
        S.SQL_KEYWORDS: keywords,
        S.SQL_NUMERIC_FUNCTIONS: ["abs", "ceil", "floor", "round", "sqrt", "power", "ln", "log", "exp"],
        S.SQL_STRING_FUNCTIONS: ["lower", "upper", "length", "substr", "concat", "trim", "replace"],
        S.SQL_SYSTEM_FUNCTIONS: ["version"],
        S.SQL_DATETIME_FUNCTIONS: ["now", "date_trunc", "date_part", "to_timestamp"],
        S.SQL_SEARCH_STRING_ESCAPE: "\\",
        S.SQL_EXTRA_NAME_CHARACTERS: "",
        S.SQL_SUPPORTS_COLUMN_ALIASING: True,
        S.SQL_NULL_PLUS_NULL_IS_NULL: True,
        S.SQL_SUPPORTS_TABLE_CORRELATION_NAMES: True,
        S.SQL_SUPPORTS_EXPRESSIONS_IN_ORDER_BY: True,
        S.SQL_SUPPORTS_ORDER_BY_UNRELATED: True,
        S.SQL_SUPPORTS_LIKE_ESCAPE_CLAUSE: True,
        S.SQL_SUPPORTS_NON_NULLABLE_COLUMNS: True,
        S.SQL_SUPPORTS_INTEGRITY_ENHANCEMENT_FACILITY: False,
        S.SQL_CATALOG_TERM: "catalog",
        S.SQL_SCHEMA_TERM: "schema",
        S.SQL_PROCEDURE_TERM: "procedure",
        S.SQL_CATALOG_AT_START: True,
        S.SQL_SELECT_FOR_UPDATE_SUPPORTED: False,
        S.SQL_STORED_PROCEDURES_SUPPORTED: False,
        S.SQL_CORRELATED_SUBQUERIES_SUPPORTED: True,
        S.SQL_MAX_COLUMN_NAME_LENGTH: 0,
        S.SQL_MAX_TABLE_NAME_LENGTH: 0,
        S.SQL_TRANSACTIONS_SUPPORTED: False,
        S.SQL_BATCH_UPDATES_SUPPORTED: True,
        S.SQL_SAVEPOINTS_SUPPORTED: False,
        S.SQL_NAMED_PARAMETERS_SUPPORTED: False,
        S.SQL_LOCATORS_UPDATE_COPY: False,
        S.SQL_STORED_FUNCTIONS_USING_CALL_SYNTAX_SUPPORTED: False,
    }


# The RPC handlers pyarrow calls; each must go through `translated` (checked at start).
_RPC_METHODS = ("list_flights", "get_flight_info", "get_schema", "do_get", "do_put",
                "do_exchange", "list_actions", "do_action")


class FlightSqlServer(flight.FlightServerBase):
    def __init__(self, engine: Engine, location: str = "grpc://127.0.0.1:31337",
                 authenticator: Authenticator | None = None, tls_certificates=None,
                 handle_ttl: float = DEFAULT_HANDLE_TTL,
                 max_statement_bytes: int = DEFAULT_MAX_STATEMENT_BYTES):
        # pyarrow appends `traceback.format_exception(...)` of any non-Flight exception a
        # handler raises to the gRPC message; with this it is one line without frames
        # (flight_server.errors explains; our own logs format tracebacks explicitly).
        # Process-wide, so set here for library use too, not only by the CLI.
        sys.tracebacklimit = 0
        for name in _RPC_METHODS:
            if not getattr(getattr(self, name), "translated", False):
                raise TypeError(f"FlightSqlServer.{name} must be wrapped in @translated")
        # Always installed: it authenticates when `authenticator` is enabled and tells
        # every handler who is calling (context.get_middleware("auth").identity).
        middleware = {"auth": AuthMiddlewareFactory(authenticator)}
        super().__init__(location, auth_handler=HeaderHandshake(), tls_certificates=tls_certificates,
                         middleware=middleware)
        self.engine = engine
        self.max_statement_bytes = max_statement_bytes
        self.prepared: HandleStore[Prepared] = HandleStore(handle_ttl, "prepared statement")
        self.pending: HandleStore[Execution] = HandleStore(handle_ttl, "ticket")
        self._running: dict[bytes, tuple[str, CancelToken]] = {}
        self._running_lock = threading.Lock()
        self.sql_info = _sql_info_values()
        self._metadata_results = RecentResults()
        # Flight SQL reports the statement timeout in milliseconds (0: none).
        self.sql_info[md.SqlInfo.FLIGHT_SQL_SERVER_STATEMENT_TIMEOUT] = int(engine.statement_timeout * 1000)

    def shutdown(self):
        """Stop the engine's trainings first (background ones, and waiting BUILDs, which
        would otherwise hold their calls open until trained), then the server."""
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()
        super().shutdown()

    @staticmethod
    def _identity(context) -> str:
        call = context.get_middleware("auth")
        return call.identity if call is not None else ANONYMOUS

    def _prepare_sql(self, query: str) -> Plan:
        """Plan SQL text from the client, refusing oversize text before the planner sees it."""
        size = len(query.encode("utf-8", "surrogatepass"))
        if size > self.max_statement_bytes:
            raise InvalidInput(f"statement is {size} bytes; the limit is {self.max_statement_bytes} "
                               "bytes (server option --max-statement-bytes)")
        return self.engine.prepare(query)

    # --- RPCs Flight SQL does not use ----------------------------------------------------

    @translated
    def list_flights(self, context, criteria):
        raise Unsupported("ListFlights is not supported: this is a Flight SQL server")

    @translated
    def do_exchange(self, context, descriptor, reader, writer):
        raise Unsupported("DoExchange is not supported: this is a Flight SQL server")

    # --- GetFlightInfo / GetSchema -----------------------------------------------------

    @translated
    def get_flight_info(self, context, descriptor):
        command = self._command(descriptor)
        schema, ticket = self._plan_command(command, self._identity(context), context)
        endpoint = flight.FlightEndpoint(ticket, [])
        return flight.FlightInfo(schema, descriptor, [endpoint], -1, -1)

    @translated
    def get_schema(self, context, descriptor):
        command = self._command(descriptor)
        if isinstance(command, P.CommandStatementQuery):
            plan = self._prepare_sql(command.query)
            return flight.SchemaResult(UPDATE_RESULT_SCHEMA if plan.is_update else plan.dataset_schema)
        if isinstance(command, P.CommandPreparedStatementQuery):
            prepared = self._prepared(command.prepared_statement_handle, self._identity(context))
            return flight.SchemaResult(prepared.plan.dataset_schema)
        schema = _METADATA_SCHEMAS.get(P.type_name(command))
        if schema is None:
            raise Unsupported(f"GetSchema does not apply to {P.type_name(command)}")
        if isinstance(command, P.CommandGetTables) and command.include_schema:
            schema = md.TABLES_SCHEMA_WITH_SCHEMA
        return flight.SchemaResult(schema)

    def _command(self, descriptor):
        if descriptor.descriptor_type != flight.DescriptorType.CMD:
            raise InvalidInput("this server takes Flight SQL commands (CMD descriptors), not paths")
        return P.unpack(descriptor.command)

    def _plan_command(self, command, owner: str, context=None) -> tuple[pa.Schema, flight.Ticket]:
        """The result schema and ticket of a command; nothing runs yet (but a write that
        reports rows, see _ticket_for)."""
        if isinstance(command, P.CommandStatementQuery):
            plan = self._prepare_sql(command.query)
            return self._ticket_for(plan, None, owner, context)
        if isinstance(command, P.CommandPreparedStatementQuery):
            prepared = self._prepared(command.prepared_statement_handle, owner)
            return self._ticket_for(prepared.plan, prepared.params, owner, context)
        if P.type_name(command) in _METADATA_SCHEMAS:
            # Computed once: the first DoGet of the ticket sends this very table; the
            # ticket is the command itself, so a later DoGet computes it again.
            ticket = P.pack(command)
            table = self._metadata(command)
            self._metadata_results.put((owner, ticket), table)
            return table.schema, flight.Ticket(ticket)
        raise Unsupported(f"GetFlightInfo does not support {P.type_name(command)}")

    def _ticket_for(self, plan: Plan, params, owner: str, context=None) -> tuple[pa.Schema, flight.Ticket]:
        if getattr(plan, "runs_at_once", False):
            # A write reported as rows (COPY, GET THANOSQL ..., DELETE MODEL) is done here, as
            # an update would be: ADBC and JDBC fetch a result lazily, and a client that
            # executes and moves on must still get its write. DoGet then sends the row.
            plan = plan.run_now(self.engine, params,
                                CancelToken(context.is_cancelled if context is not None else None))
        handle = self.pending.add(Execution(plan, params), owner)
        schema = UPDATE_RESULT_SCHEMA if plan.is_update else plan.dataset_schema
        return schema, flight.Ticket(P.pack(P.TicketStatementQuery(statement_handle=handle)))

    def _prepared(self, handle: bytes, owner: str) -> Prepared:
        prepared = self.prepared.get(handle, owner)
        if prepared is None:
            raise NotFound("unknown or expired prepared statement handle; prepare the statement again")
        return prepared

    # --- DoGet --------------------------------------------------------------------------

    @translated
    def do_get(self, context, ticket):
        command = P.unpack(ticket.ticket)
        if isinstance(command, P.TicketStatementQuery):
            return self._execute(context, command.statement_handle)
        if P.type_name(command) in _METADATA_SCHEMAS:
            table = self._metadata_results.pop((self._identity(context), ticket.ticket))
            return flight.RecordBatchStream(table if table is not None else self._metadata(command))
        raise Unsupported(f"DoGet does not support {P.type_name(command)}")

    def _execute(self, context, handle: bytes):
        owner = self._identity(context)
        execution = self.pending.pop(handle, owner)
        if execution is None:
            raise NotFound("unknown or expired ticket; run the statement again")
        execution.cancel.probe = context.is_cancelled
        with self._running_lock:
            self._running[handle] = (owner, execution.cancel)
        try:
            if execution.plan.is_update:
                count = self.engine.execute_update(execution.plan, execution.params, execution.cancel)
                return flight.RecordBatchStream(pa.table({"count": [count]}, schema=UPDATE_RESULT_SCHEMA))
            result = self.engine.execute(execution.plan, execution.params, execution.cancel)
        except BaseException:
            self._finished(handle)
            raise
        if isinstance(result, pa.Table):
            # Rows already in memory (a cached table version, a metadata result): pyarrow
            # sends them without Python in the loop, as a bare Flight server would.
            self._finished(handle)
            return flight.RecordBatchStream(_conforming_table(result, execution.plan.dataset_schema))
        reader = result
        schema = _announced(reader.schema, execution.plan.dataset_schema)
        # A GeneratorStream, not a RecordBatchStream over a Python-backed reader: pyarrow
        # sends a FlightError raised by a generator with its own status, while one raised
        # inside a reader becomes UNKNOWN with a Python detail. Python runs once per
        # batch either way.
        return flight.GeneratorStream(schema, self._stream(context, handle, reader, schema))

    def _stream(self, context, handle: bytes, reader, schema: pa.Schema):
        try:
            yield from translated_batches(_conforming(reader, schema), context)
        finally:
            self._finished(handle)

    def _finished(self, handle: bytes) -> None:
        with self._running_lock:
            self._running.pop(handle, None)

    # --- DoPut --------------------------------------------------------------------------

    @translated
    def do_put(self, context, descriptor, reader, writer):
        command = self._command(descriptor)
        if isinstance(command, P.CommandStatementUpdate):
            # ADBC sends no data message here: reading would wait for one.
            plan = self._prepare_sql(command.query)
            count = self.engine.execute_update(plan, None, CancelToken(context.is_cancelled))
            self._write_update_result(writer, count)
        elif isinstance(command, P.CommandPreparedStatementUpdate):
            prepared = self._prepared(command.prepared_statement_handle, self._identity(context))
            params = _read_params(reader)
            count = self.engine.execute_update(prepared.plan, params if params is not None else prepared.params,
                                               CancelToken(context.is_cancelled))
            self._write_update_result(writer, count)
        elif isinstance(command, P.CommandPreparedStatementQuery):
            prepared = self._prepared(command.prepared_statement_handle, self._identity(context))
            params = _read_params(reader)
            self.engine.check_parameters(prepared.plan, params)  # fail at execute, not at fetch
            prepared.params = params
            result = P.DoPutPreparedStatementResult(prepared_statement_handle=command.prepared_statement_handle)
            writer.write(pa.py_buffer(result.SerializeToString()))
        elif isinstance(command, P.CommandStatementIngest):
            count = self._ingest(command, reader, context)
            self._write_update_result(writer, count)
        else:
            raise Unsupported(f"DoPut does not support {P.type_name(command)}")

    @staticmethod
    def _write_update_result(writer, count: int) -> None:
        writer.write(pa.py_buffer(P.DoPutUpdateResult(record_count=count).SerializeToString()))

    def _ingest(self, command, reader, context=None) -> int:
        if command.temporary:
            raise Unsupported("temporary tables are not supported: ingest into a persisted table")
        if command.HasField("transaction_id"):
            raise Unsupported("transactions are not supported")
        opts = command.table_definition_options
        TD = P.CommandStatementIngest.TableDefinitionOptions
        create = opts.if_not_exist != TD.TABLE_NOT_EXIST_OPTION_FAIL
        exists = opts.if_exists
        if exists == TD.TABLE_EXISTS_OPTION_REPLACE:
            if not create and not self.engine.object_exists(command.table.lower()):
                raise NotFound(f"table '{command.table}' does not exist")
            mode = "replace"
        elif exists == TD.TABLE_EXISTS_OPTION_APPEND:
            mode = "create_append" if create else "append"
        else:
            mode = "create" if create else "append"
        # The client's cancel (or a failed send, which gRPC turns into a cancel) must not
        # commit: the stream then ends as if complete, with what had arrived.
        cancel = CancelToken(context.is_cancelled if context is not None else None)
        return self.engine.ingest(command.table, reader.to_reader(), mode, cancel)

    # --- DoAction -----------------------------------------------------------------------

    @translated
    def list_actions(self, context):
        return [(P.CREATE_PREPARED_STATEMENT, "Prepare a SQL or ThanoSQL statement"),
                (P.CLOSE_PREPARED_STATEMENT, "Release a prepared statement"),
                (P.CANCEL_FLIGHT_INFO, "Cancel a running statement"),
                (P.CLOSE_SESSION, "End the session")]

    @translated
    def do_action(self, context, action):
        kind, body = action.type, action.body.to_pybytes() if action.body else b""
        if kind == P.CREATE_PREPARED_STATEMENT:
            request = P.unpack(body)
            if not isinstance(request, P.ActionCreatePreparedStatementRequest):
                raise InvalidInput("CreatePreparedStatement expects ActionCreatePreparedStatementRequest")
            if request.HasField("transaction_id"):
                raise Unsupported("transactions are not supported")
            plan = self._prepare_sql(request.query)
            handle = self.prepared.add(Prepared(plan), self._identity(context))
            result = P.ActionCreatePreparedStatementResult(
                prepared_statement_handle=handle,
                dataset_schema=plan.dataset_schema.serialize().to_pybytes(),
                parameter_schema=plan.parameter_schema.serialize().to_pybytes(),
                is_update=plan.is_update)
            return [P.pack(result)]
        if kind == P.CLOSE_PREPARED_STATEMENT:
            request = P.unpack(body)
            if not isinstance(request, P.ActionClosePreparedStatementRequest):
                raise InvalidInput("ClosePreparedStatement expects ActionClosePreparedStatementRequest")
            # Unknown, expired or another user's handle: nothing to close, as before.
            self.prepared.pop(request.prepared_statement_handle, self._identity(context))
            return []
        if kind in (P.CANCEL_FLIGHT_INFO, P.CANCEL_QUERY):
            return [self._cancel(kind, body, self._identity(context))]
        if kind == P.CLOSE_SESSION:
            return [P.CloseSessionResult(status=P.CloseSessionResult.CLOSED).SerializeToString()]
        if kind in (P.BEGIN_TRANSACTION, P.END_TRANSACTION, P.BEGIN_SAVEPOINT, P.END_SAVEPOINT):
            raise Unsupported("transactions are not supported: every statement commits on its own")
        raise Unsupported(f"unknown action '{kind}'")

    def _cancel(self, kind: str, body: bytes, owner: str) -> bytes:
        if kind == P.CANCEL_FLIGHT_INFO:
            info_bytes = P.parse(P.CancelFlightInfoRequest, body).info
        else:
            request = P.unpack(body)
            if not isinstance(request, P.ActionCancelQueryRequest):
                raise InvalidInput("CancelQuery expects ActionCancelQueryRequest")
            info_bytes = request.info
        try:
            info = flight.FlightInfo.deserialize(info_bytes)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for bad bytes
            raise InvalidInput(f"{kind}: the FlightInfo does not parse") from exc
        cancelled = False
        for endpoint in info.endpoints:
            command = P.unpack(endpoint.ticket.ticket)
            if not isinstance(command, P.TicketStatementQuery):
                continue
            handle = command.statement_handle
            with self._running_lock:
                running_owner, token = self._running.get(handle, (None, None))
            if running_owner != owner:
                token = None  # another user's statement: as if unknown
            pending = self.pending.pop(handle, owner)
            for target in (token, pending.cancel if pending else None):
                if target is not None:
                    target.set()
                    cancelled = True
        if kind == P.CANCEL_FLIGHT_INFO:
            status = P.CANCEL_STATUS_CANCELLED if cancelled else P.CANCEL_STATUS_NOT_CANCELLABLE
            return P.CancelFlightInfoResult(status=status).SerializeToString()
        R = P.ActionCancelQueryResult
        return P.pack(R(result=R.CANCEL_RESULT_CANCELLED if cancelled else R.CANCEL_RESULT_NOT_CANCELLABLE))

    # --- metadata -----------------------------------------------------------------------

    def _metadata(self, command) -> pa.Table:
        e = self.engine
        if isinstance(command, P.CommandGetSqlInfo):
            return md.sql_info_table(self.sql_info, list(command.info))
        if isinstance(command, P.CommandGetCatalogs):
            return md.catalogs_table(e.catalogs())
        if isinstance(command, P.CommandGetDbSchemas):
            return md.db_schemas_table(e.db_schemas(_opt(command, "catalog"),
                                                    _opt(command, "db_schema_filter_pattern")))
        if isinstance(command, P.CommandGetTables):
            infos = e.tables(_opt(command, "catalog"), _opt(command, "db_schema_filter_pattern"),
                             _opt(command, "table_name_filter_pattern"), list(command.table_types),
                             include_schema=command.include_schema)
            rows = [(t.catalog, t.db_schema, t.name, t.table_type, t.schema) for t in infos]
            return md.tables_table(rows, command.include_schema)
        if isinstance(command, P.CommandGetTableTypes):
            return md.table_types_table(e.table_types())
        if isinstance(command, P.CommandGetXdbcTypeInfo):
            return md.xdbc_type_info(command.data_type if command.HasField("data_type") else None)
        if isinstance(command, P.CommandGetPrimaryKeys):
            return md.empty_primary_keys()
        if isinstance(command, (P.CommandGetImportedKeys, P.CommandGetExportedKeys,
                                P.CommandGetCrossReference)):
            return md.empty_foreign_keys()
        raise Unsupported(f"unsupported metadata command {P.type_name(command)}")


class RecentResults:
    """Metadata results computed in GetFlightInfo, kept for the DoGet that follows: a few,
    for a short time (a client that never fetches leaves nothing behind for long)."""

    def __init__(self, size: int = 64, ttl: float = 30.0):
        self._items: OrderedDict[tuple, tuple[float, pa.Table]] = OrderedDict()
        self._lock = threading.Lock()
        self._size, self._ttl = size, ttl

    def put(self, key: tuple, table: pa.Table) -> None:
        with self._lock:
            self._items[key] = (time.monotonic(), table)
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def pop(self, key: tuple) -> pa.Table | None:
        with self._lock:
            item = self._items.pop(key, None)
        if item is None or time.monotonic() - item[0] > self._ttl:
            return None
        return item[1]


def _opt(message, name: str):
    return getattr(message, name) if message.HasField(name) else None


def _announced(actual: pa.Schema, announced: pa.Schema) -> pa.Schema:
    """The schema GetFlightInfo announced, when the rows have its names and types: a
    statement planned again at DoGet (a table was written in between) may differ in
    nullability only, and clients refuse a stream whose schema is not the announced one.
    A column announced NOT NULL that may now hold nulls keeps the rows' own schema: the
    client then reports the change rather than reading nulls where none can be."""
    if len(actual) == len(announced) and all(
            a.name == b.name and a.type == b.type and (b.nullable or not a.nullable)
            for a, b in zip(actual, announced)):
        return announced
    return actual


def _conforming(reader, schema: pa.Schema):
    """The reader's batches, each with exactly `schema`: GeneratorStream refuses a batch
    whose schema differs (e.g. in nullability); the old RecordBatchStream path sent it as
    is. Zero-copy."""
    for batch in reader:
        if batch.schema != schema:
            batch = pa.RecordBatch.from_arrays(batch.columns, schema=schema)
        yield batch


def _conforming_table(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """The table with exactly the schema announced in GetFlightInfo (nullability aside,
    the cached version's columns are that schema's)."""
    if table.schema == schema or _announced(table.schema, schema) is not schema:
        return table
    return pa.Table.from_batches([pa.RecordBatch.from_arrays(b.columns, schema=schema)
                                  for b in table.to_batches()], schema)


def _read_params(reader) -> pa.RecordBatch | None:
    """The bound parameter rows of a DoPut (None when the client sent no columns)."""
    table = reader.read_all()
    if table.num_columns == 0:
        return None
    table = table.combine_chunks()
    batches = table.to_batches()
    return batches[0] if batches else pa.RecordBatch.from_pylist([], schema=table.schema)


_METADATA_SCHEMAS = {
    "CommandGetSqlInfo": md.SQL_INFO_SCHEMA,
    "CommandGetCatalogs": md.CATALOGS_SCHEMA,
    "CommandGetDbSchemas": md.DB_SCHEMAS_SCHEMA,
    "CommandGetTables": md.TABLES_SCHEMA,
    "CommandGetTableTypes": md.TABLE_TYPES_SCHEMA,
    "CommandGetXdbcTypeInfo": md.XDBC_TYPE_INFO_SCHEMA,
    "CommandGetPrimaryKeys": md.PRIMARY_KEYS_SCHEMA,
    "CommandGetImportedKeys": md.FOREIGN_KEYS_SCHEMA,
    "CommandGetExportedKeys": md.FOREIGN_KEYS_SCHEMA,
    "CommandGetCrossReference": md.FOREIGN_KEYS_SCHEMA,
}
