"""`Client`: one statement in, one pandas DataFrame out; what the magic stands on.

Statements that return rows come back as their table (COPY, GET THANOSQL ... and DELETE
MODEL too: the server returns `rows_affected` and the table or model name); other updates
(CREATE, INSERT, DROP) as a one-row `rows_affected` frame. Long statements (BUILD, FIT,
PREDICT, EVALUATE) show the server's progress while they run (thanosql.progress), read on a
second connection.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

import pyarrow as pa

from thanosql import statements
from thanosql.connection import check_url, connect, resolve_token, resolve_url
from thanosql.errors import ThanoSQLError, from_driver

UPDATE_COLUMN = "rows_affected"


@dataclass
class Result:
    statement: statements.Statement
    table: pa.Table
    is_update: bool = False

    def to_pandas(self):
        return self.table.to_pandas()


class Client:
    """A lazily opened connection to one server; `url`/`token` may change between statements."""

    def __init__(self, url: str | None = None, token: str | None = None, announce=None):
        self.url = check_url(url) if url else None
        self.token = token
        self.announce = announce
        self._conn = None
        self._lock = threading.Lock()
        self._chosen_for_us = False  # url came from THANOSQL_URL / a local server, not the user

    # --- configuration ---------------------------------------------------------------------

    def set_server(self, url: str) -> None:
        self.url = check_url(url)
        self._chosen_for_us = False
        self.close()

    def set_token(self, token: str) -> None:
        self.token = token
        self.close()

    def server_url(self) -> str:
        """The URL statements go to (resolving THANOSQL_URL or starting a local server)."""
        if self.url is None:
            self.url = resolve_url(None, self.announce)
            self._chosen_for_us = True
        return self.url

    def connection(self):
        with self._lock:
            if self._conn is None:
                self._conn = self.new_connection()
            return self._conn

    def new_connection(self):
        """Another connection to the same server (e.g. to watch progress while one works)."""
        return connect(self.server_url(), resolve_token(self.token))

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    # --- statements ------------------------------------------------------------------------

    def query(self, sql: str, progress: bool = True):
        """Run one statement; its rows (or `rows_affected`) as a pandas DataFrame."""
        return self.execute(sql, progress=progress).to_pandas()

    def query_arrow(self, sql: str, progress: bool = False) -> pa.Table:
        return self.execute(sql, progress=progress).table

    def execute(self, sql: str, progress: bool = True) -> Result:
        statement = statements.single(sql)
        background = any(str(k).lower() == "wait" and v is False for k, v in statement.options.items())
        if progress and statement.model and not background:  # wait=False returns at once
            from thanosql import progress as bars
            if statement.kind in bars.LONG_STATEMENTS:
                return bars.run_with_progress(self, statement)
        return self.run(statement)

    def check(self) -> str:
        """Ask the server something at once: ThanoSQLError if it cannot be reached; a note
        if it answers but wants a token (set with API_TOKEN next)."""
        try:
            conn = self.new_connection()
            try:
                cursor = conn.cursor()
                cursor.execute("SELECT 1")
                cursor.fetchall()
                cursor.close()
            finally:
                conn.close()
        except ThanoSQLError as exc:
            if exc.code == "UNAUTHENTICATED":
                return "it answers and requires an API token: %thanosql API_TOKEN=<token>"
            raise
        except Exception as exc:  # noqa: BLE001 - a driver error
            error = from_driver(exc, self.url or "")
            if error.code == "UNAUTHENTICATED":
                return "it answers and requires an API token: %thanosql API_TOKEN=<token>"
            raise error from None
        return "it answers"

    def run(self, statement: statements.Statement, on_rows: Callable[[int], None] | None = None,
            on_cursor: Callable[[object], None] | None = None) -> Result:
        """Execute on this client's connection, reading rows batch by batch (`on_rows(n)`)."""
        try:
            cursor = self.connection().cursor()
        except ThanoSQLError:
            raise
        except Exception as exc:
            raise from_driver(exc, self.url or "") from None
        if on_cursor is not None:
            on_cursor(cursor)
        try:
            cursor.execute(statement.sql)
            if not cursor.description:  # an update: no result columns, rowcount is the count
                table = pa.table({UPDATE_COLUMN: pa.array([cursor.rowcount], pa.int64())})
                return Result(statement, table, is_update=True)
            reader = cursor.fetch_record_batch()
            batches = []
            for batch in reader:
                batches.append(batch)
                if on_rows is not None:
                    on_rows(batch.num_rows)
            return Result(statement, pa.Table.from_batches(batches, schema=reader.schema))
        except ThanoSQLError:
            raise
        except Exception as exc:
            error = from_driver(exc, self.url or "")
            if error.code == "UNAVAILABLE":
                self.close()  # reconnect next time: the server may be back
                if self._chosen_for_us:
                    self.url = None  # (a local server that died is started again)
            raise error from None
        finally:
            try:
                cursor.close()
            except Exception:
                pass

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
