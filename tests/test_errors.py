"""Bad input gets a clean message with the right gRPC status; the server keeps serving."""

from __future__ import annotations

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from google.protobuf import any_pb2

from flight_server import protocol as P


def assert_clean(message: str, *words: str) -> None:
    assert "Traceback" not in message and 'File "' not in message, message
    for word in words:
        assert word in message, message


def assert_still_serving(url: str) -> None:
    with flightsql.connect(url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT 42")
        assert cur.fetchone() == (42,)


@pytest.mark.parametrize("sql, status, words", [
    ("SELEC 1", "InvalidArgument", ["SELEC"]),
    ("SELECT * FROM no_such_table", "NotFound", ["no_such_table"]),
    ("SELECT 1; SELECT 2", "InvalidArgument", ["one statement"]),
    ("SELECT no_such_column FROM (SELECT 1 AS a)", "InvalidArgument", ["no_such_column"]),
    ("COPY t FROM '/etc/passwd'", "PermissionDenied", ["/etc/passwd", "allowed"]),
    ("SET datafusion.execution.batch_size = 1", "Unimplemented", ["SET"]),
    ("BUILD MODEL m USING Wav2Vec2En OPTIONS (epochs=) AS SELECT 1", "InvalidArgument", ["epochs"]),
    ("COPY t OPTIONS (if_exists='sometimes') FROM 'x.csv'", "InvalidArgument", ["if_exists"]),
])
def test_sql_errors_over_adbc(server, sql, status, words):
    with flightsql.connect(server.url, autocommit=True) as conn, conn.cursor() as cur:
        with pytest.raises(flightsql.Error) as info:
            cur.execute(sql)
    message = str(info.value)
    assert f"({status};" in message, message  # ADBC appends the gRPC status code name
    assert_clean(message, *words)
    assert_still_serving(server.url)


def test_wrong_parameter_count(server):
    with flightsql.connect(server.url, autocommit=True) as conn, conn.cursor() as cur:
        with pytest.raises(flightsql.Error) as info:
            cur.execute("SELECT $1 + $2", parameters=(1,))
    assert "(InvalidArgument;" in str(info.value)
    assert_clean(str(info.value), "2 parameter")


def test_garbage_and_unknown_commands(server):
    client = flight.connect(server.url)
    garbage = flight.FlightDescriptor.for_command(b"\x08\x96\x01this is not protobuf\xff")
    with pytest.raises(pa.ArrowInvalid) as info:
        client.get_flight_info(garbage)
    assert_clean(str(info.value), "Any")

    unknown = any_pb2.Any(type_url="type.googleapis.com/arrow.flight.protocol.sql.CommandNoSuchThing",
                          value=b"")
    with pytest.raises(pa.ArrowInvalid) as info:
        client.get_flight_info(flight.FlightDescriptor.for_command(unknown.SerializeToString()))
    assert_clean(str(info.value), "CommandNoSuchThing")

    ticket_for_update = flight.FlightDescriptor.for_command(P.pack(P.CommandPreparedStatementUpdate()))
    with pytest.raises(pa.ArrowNotImplementedError) as info:
        client.get_flight_info(ticket_for_update)
    assert_clean(str(info.value), "CommandPreparedStatementUpdate")

    with pytest.raises(pa.ArrowNotImplementedError) as info:
        list(client.do_action(flight.Action("NoSuchAction", b"")))
    assert_clean(str(info.value), "NoSuchAction")

    with pytest.raises(pa.ArrowInvalid):
        client.get_flight_info(flight.FlightDescriptor.for_path("some", "path"))

    with pytest.raises(pa.ArrowKeyError) as info:
        client.do_get(flight.Ticket(P.pack(P.TicketStatementQuery(statement_handle=b"nope")))).read_all()
    assert_clean(str(info.value), "ticket")
    assert_still_serving(server.url)
    assert server.alive()


def test_error_mid_stream_is_clean(server):
    """An error raised while batches stream (after the schema went out) is still clean."""
    with flightsql.connect(server.url, autocommit=True) as conn, conn.cursor() as cur:
        with pytest.raises(flightsql.Error) as info:
            cur.execute("SELECT CAST(CASE WHEN value > 900000 THEN 'x' ELSE '1' END AS INT) "
                        "FROM generate_series(1, 1000000)")
            cur.fetch_arrow_table()
    assert_clean(str(info.value), "x")
    assert_still_serving(server.url)
