"""The Flight SQL JDBC driver's RPC pattern, replayed with a raw pyarrow.flight client.

The JDBC jar cannot be fetched here (Maven Central is unreachable), so this test sends
what it sends: a Basic-auth handshake expecting a bearer token, a prepare of every
statement, GetFlightInfo + DoGet for queries, DoPut for updates, GetSqlInfo for all codes.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from flight_server import metadata as md
from flight_server import protocol as P


class BearerClient:
    """A raw Flight client that authenticates like JDBC: Basic handshake, then the bearer."""

    def __init__(self, url, user, password):
        self.client = flight.connect(url)
        key, value = self.client.authenticate_basic_token(user, password)
        self.bearer = value.decode()
        self.options = flight.FlightCallOptions(headers=[(key, value)])

    def __getattr__(self, name):
        method = getattr(self.client, name)
        return lambda *args: method(*args, options=self.options)

    def close(self):
        self.client.close()


@pytest.fixture
def jdbc(start_server):
    server = start_server("--user", "analyst:s3cret")
    client = BearerClient(server.url, "analyst", "s3cret")
    yield client, server
    client.close()


def test_wrong_password_and_no_credentials_are_refused(start_server):
    server = start_server("--user", "analyst:s3cret")
    with pytest.raises(flight.FlightUnauthenticatedError):
        flight.connect(server.url).authenticate_basic_token("analyst", "wrong")
    with pytest.raises(flight.FlightUnauthenticatedError, match="authentication required"):
        list(flight.connect(server.url).do_action(flight.Action(P.CLOSE_SESSION, b"")))


def prepare(client, sql):
    request = P.ActionCreatePreparedStatementRequest(query=sql)
    results = list(client.do_action(flight.Action(P.CREATE_PREPARED_STATEMENT, P.pack(request))))
    assert len(results) == 1
    return P.unpack(results[0].body.to_pybytes())


def test_handshake_prepare_query_update(jdbc):
    client, _ = jdbc
    assert client.bearer.startswith("Bearer ")

    ddl = prepare(client, "CREATE TABLE jt (id BIGINT, name VARCHAR)")
    assert ddl.is_update is True
    assert pa.ipc.read_schema(pa.py_buffer(ddl.dataset_schema)).names == []
    descriptor = flight.FlightDescriptor.for_command(
        P.pack(P.CommandPreparedStatementUpdate(prepared_statement_handle=ddl.prepared_statement_handle)))
    writer, reader = client.do_put(descriptor, pa.schema([]))
    writer.done_writing()
    result = P.parse(P.DoPutUpdateResult, reader.read().to_pybytes())
    writer.close()
    assert result.record_count == 0

    insert = prepare(client, "INSERT INTO jt VALUES ($1, $2)")
    assert insert.is_update is True
    params_schema = pa.ipc.read_schema(pa.py_buffer(insert.parameter_schema))
    assert params_schema.types == [pa.int64(), pa.string()]
    descriptor = flight.FlightDescriptor.for_command(
        P.pack(P.CommandPreparedStatementUpdate(prepared_statement_handle=insert.prepared_statement_handle)))
    batch = pa.record_batch([pa.array([1, 2], pa.int64()), pa.array(["a", "b"])], schema=params_schema)
    writer, reader = client.do_put(descriptor, params_schema)
    writer.write_batch(batch)
    writer.done_writing()
    assert P.parse(P.DoPutUpdateResult, reader.read().to_pybytes()).record_count == 2
    writer.close()

    query = prepare(client, "SELECT id, name FROM jt ORDER BY id")
    assert query.is_update is False
    schema = pa.ipc.read_schema(pa.py_buffer(query.dataset_schema))
    assert schema.names == ["id", "name"] and schema.field("name").type == pa.string()
    descriptor = flight.FlightDescriptor.for_command(
        P.pack(P.CommandPreparedStatementQuery(prepared_statement_handle=query.prepared_statement_handle)))
    info = client.get_flight_info(descriptor)
    assert info.schema == schema
    table = client.do_get(info.endpoints[0].ticket).read_all()
    assert table.to_pydict() == {"id": [1, 2], "name": ["a", "b"]}

    client.do_action(flight.Action(P.CLOSE_PREPARED_STATEMENT, P.pack(
        P.ActionClosePreparedStatementRequest(prepared_statement_handle=query.prepared_statement_handle))))
    with pytest.raises(pa.ArrowKeyError, match="prepared statement"):
        client.get_flight_info(descriptor)


def test_get_sql_info_all_codes(jdbc):
    client, _ = jdbc
    descriptor = flight.FlightDescriptor.for_command(P.pack(P.CommandGetSqlInfo()))
    info = client.get_flight_info(descriptor)
    assert info.schema == md.SQL_INFO_SCHEMA
    table = client.do_get(info.endpoints[0].ticket).read_all()
    values = dict(zip(table.column("info_name").to_pylist(), table.column("value").to_pylist()))
    assert values[md.SqlInfo.FLIGHT_SQL_SERVER_NAME] == "thanosql-flight"
    assert values[md.SqlInfo.FLIGHT_SQL_SERVER_READ_ONLY] is False
    assert values[md.SqlInfo.SQL_IDENTIFIER_QUOTE_CHAR] == '"'
    assert "BUILD" in values[md.SqlInfo.SQL_KEYWORDS]
    assert len(values) >= 30
    union = table.column("value").chunk(0)
    # Each value sits in the union member its type demands (spec layout).
    assert union.type.field(0).name == "string_value" and union.type.field(5).name == "int32_to_int32_list_map"
    some = client.do_get(client.get_flight_info(flight.FlightDescriptor.for_command(
        P.pack(P.CommandGetSqlInfo(info=[0, 504])))).endpoints[0].ticket).read_all()
    assert some.column("info_name").to_pylist() == [0, 504]


def test_keys_and_type_info_are_spec_shaped(jdbc):
    client, _ = jdbc
    for command, schema in [(P.CommandGetPrimaryKeys(table="x"), md.PRIMARY_KEYS_SCHEMA),
                            (P.CommandGetImportedKeys(table="x"), md.FOREIGN_KEYS_SCHEMA),
                            (P.CommandGetExportedKeys(table="x"), md.FOREIGN_KEYS_SCHEMA),
                            (P.CommandGetCrossReference(pk_table="x", fk_table="y"), md.FOREIGN_KEYS_SCHEMA)]:
        info = client.get_flight_info(flight.FlightDescriptor.for_command(P.pack(command)))
        table = client.do_get(info.endpoints[0].ticket).read_all()
        assert table.schema == schema and table.num_rows == 0
    info = client.get_flight_info(flight.FlightDescriptor.for_command(P.pack(P.CommandGetXdbcTypeInfo())))
    types = client.do_get(info.endpoints[0].ticket).read_all()
    assert types.schema == md.XDBC_TYPE_INFO_SCHEMA
    assert "VARCHAR" in types.column("type_name").to_pylist()
    schema = client.get_schema(flight.FlightDescriptor.for_command(P.pack(P.CommandGetTables(include_schema=True))))
    assert schema.schema == md.TABLES_SCHEMA_WITH_SCHEMA


def test_cancel_flight_info_and_close_session(jdbc):
    client, _ = jdbc
    descriptor = flight.FlightDescriptor.for_command(
        P.pack(P.CommandStatementQuery(query="SELECT * FROM generate_series(1, 10)")))
    info = client.get_flight_info(descriptor)
    request = P.CancelFlightInfoRequest(info=info.serialize())
    result = list(client.do_action(flight.Action(P.CANCEL_FLIGHT_INFO, request.SerializeToString())))
    status = P.parse(P.CancelFlightInfoResult, result[0].body.to_pybytes()).status
    assert status == P.CANCEL_STATUS_CANCELLED
    with pytest.raises(pa.ArrowKeyError, match="ticket"):
        client.do_get(info.endpoints[0].ticket).read_all()
    closed = list(client.do_action(flight.Action(P.CLOSE_SESSION, b"")))
    assert P.parse(P.CloseSessionResult, closed[0].body.to_pybytes()).status == P.CloseSessionResult.CLOSED


def test_statement_update_without_data(jdbc):
    client, _ = jdbc
    descriptor = flight.FlightDescriptor.for_command(
        P.pack(P.CommandStatementUpdate(query="CREATE TABLE su AS SELECT 1 AS x UNION ALL SELECT 2")))
    writer, reader = client.do_put(descriptor, pa.schema([]))
    result = P.parse(P.DoPutUpdateResult, reader.read().to_pybytes())
    writer.close()
    assert result.record_count == 2


def test_execute_update_of_copy_counts_the_rows_copied(jdbc):
    """JDBC's executeUpdate("COPY ...") gets the rows written, not the one result row."""
    client, server = jdbc
    (server.data_dir / "three.csv").write_text("a,b\n1,x\n2,y\n3,z\n")
    descriptor = flight.FlightDescriptor.for_command(
        P.pack(P.CommandStatementUpdate(query="COPY three FROM 'three.csv'")))
    writer, reader = client.do_put(descriptor, pa.schema([]))
    result = P.parse(P.DoPutUpdateResult, reader.read().to_pybytes())
    writer.close()
    assert result.record_count == 3
