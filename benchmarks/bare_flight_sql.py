"""The floor for a Python Flight SQL server: pyarrow.flight serving one in-memory table.

It speaks just enough Flight SQL for the ADBC driver's ``cursor.execute`` +
``fetch_arrow_table``: CreatePreparedStatement (returns the table's schema whatever the
SQL says), DoPut(CommandPreparedStatementQuery) for bound parameters, GetFlightInfo
(CommandPreparedStatementQuery) + DoGet, and ClosePreparedStatement. Without parameters
a statement returns the whole table; with parameters it returns the rows whose first
column equals the first bound value (a vectorised scan, like a query engine without an
index would do). No SQL parsing, planning, storage, cancellation or metadata.

    python -m benchmarks.bare_flight_sql --table FILE.arrow [--port 0]

prints ``bare-flight-sql listening on grpc://127.0.0.1:PORT`` once it serves.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import threading

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.flight as flight

from flight_server import protocol as P


class BareFlightSqlServer(flight.FlightServerBase):
    def __init__(self, location: str, table: pa.Table):
        super().__init__(location)
        self.table = table
        self.schema_bytes = table.schema.serialize().to_pybytes()
        self.statements: dict[bytes, pa.RecordBatch | None] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def do_action(self, context, action):
        body = action.body.to_pybytes() if action.body else b""
        if action.type == P.CREATE_PREPARED_STATEMENT:
            P.unpack(body)  # ActionCreatePreparedStatementRequest; the SQL is not looked at
            handle = str(next(self._ids)).encode()
            with self._lock:
                self.statements[handle] = None
            result = P.ActionCreatePreparedStatementResult(
                prepared_statement_handle=handle, dataset_schema=self.schema_bytes,
                parameter_schema=b"", is_update=False)
            return [P.pack(result)]
        if action.type == P.CLOSE_PREPARED_STATEMENT:
            with self._lock:
                self.statements.pop(P.unpack(body).prepared_statement_handle, None)
            return []
        raise NotImplementedError(action.type)

    def do_put(self, context, descriptor, reader, writer):
        command = P.unpack(descriptor.command)
        if not isinstance(command, P.CommandPreparedStatementQuery):
            raise NotImplementedError(P.type_name(command))
        params = reader.read_all()
        with self._lock:
            self.statements[command.prepared_statement_handle] = (
                params.combine_chunks().to_batches()[0] if params.num_columns and params.num_rows else None)
        writer.write(pa.py_buffer(P.DoPutPreparedStatementResult(
            prepared_statement_handle=command.prepared_statement_handle).SerializeToString()))

    def get_flight_info(self, context, descriptor):
        command = P.unpack(descriptor.command)
        if not isinstance(command, P.CommandPreparedStatementQuery):
            raise NotImplementedError(P.type_name(command))  # e.g. GetSqlInfo at connect: tolerated
        ticket = flight.Ticket(command.prepared_statement_handle)
        return flight.FlightInfo(self.table.schema, descriptor, [flight.FlightEndpoint(ticket, [])], -1, -1)

    def do_get(self, context, ticket):
        with self._lock:
            params = self.statements.get(ticket.ticket)
        if params is None:
            return flight.RecordBatchStream(self.table)
        key = params.column(0)[0]
        mask = pc.equal(self.table.column(0), key.cast(self.table.schema.field(0).type))
        return flight.RecordBatchStream(self.table.filter(mask))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--table", required=True, help="Arrow IPC file to serve (loaded into memory)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--batch-rows", type=int, default=None,
                   help="re-chunk the table into batches of this many rows (default: as in the file)")
    args = p.parse_args(argv)
    with pa.OSFile(args.table) as source:  # read into memory, not memory-mapped
        table = pa.ipc.open_file(source).read_all()
    if args.batch_rows:
        table = pa.Table.from_batches(table.to_batches(max_chunksize=args.batch_rows), table.schema)
    server = BareFlightSqlServer(f"grpc://{args.host}:{args.port}", table)
    print(f"bare-flight-sql listening on grpc://{args.host}:{server.port}", flush=True)
    server.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
