"""Flight SQL protobuf declarations (protocol.py) and metadata schemas (metadata.py)."""

import pyarrow as pa
import pyarrow.flight  # noqa: F401  (pa.flight)
import pytest
from google.protobuf import any_pb2

from flight_server import metadata as M
from flight_server import protocol as P

URL = "type.googleapis.com/arrow.flight.protocol.sql."


# --- a hand-written wire encoder, independent of the protobuf library ---------------
def varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64 -> two's complement, 10 bytes
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def tag(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


def ld(field: int, payload: bytes) -> bytes:  # length-delimited (wire type 2)
    return tag(field, 2) + varint(len(payload)) + payload


def any_bytes(name: str, payload: bytes) -> bytes:
    return ld(1, (URL + name).encode()) + ld(2, payload)


# --- field numbers and presence, restated from the Flight SQL spec -------------------
# name -> {field: (number, "opt" | "rep" | "")}
SPEC = {
    "CommandGetSqlInfo": {"info": (1, "rep")},
    "CommandGetXdbcTypeInfo": {"data_type": (1, "opt")},
    "CommandGetCatalogs": {},
    "CommandGetDbSchemas": {"catalog": (1, "opt"), "db_schema_filter_pattern": (2, "opt")},
    "CommandGetTables": {"catalog": (1, "opt"), "db_schema_filter_pattern": (2, "opt"),
                         "table_name_filter_pattern": (3, "opt"), "table_types": (4, "rep"),
                         "include_schema": (5, "")},
    "CommandGetTableTypes": {},
    **{k: {"catalog": (1, "opt"), "db_schema": (2, "opt"), "table": (3, "")}
       for k in ("CommandGetPrimaryKeys", "CommandGetExportedKeys", "CommandGetImportedKeys")},
    "CommandGetCrossReference": {"pk_catalog": (1, "opt"), "pk_db_schema": (2, "opt"),
                                 "pk_table": (3, ""), "fk_catalog": (4, "opt"),
                                 "fk_db_schema": (5, "opt"), "fk_table": (6, "")},
    "ActionCreatePreparedStatementRequest": {"query": (1, ""), "transaction_id": (2, "opt")},
    "ActionCreatePreparedStatementResult": {"prepared_statement_handle": (1, ""),
                                            "dataset_schema": (2, ""),
                                            "parameter_schema": (3, ""),
                                            "is_update": (4, "opt")},
    "ActionClosePreparedStatementRequest": {"prepared_statement_handle": (1, "")},
    "ActionCancelQueryRequest": {"info": (1, "")},
    "ActionCancelQueryResult": {"result": (1, "")},
    "CommandStatementQuery": {"query": (1, ""), "transaction_id": (2, "opt")},
    "CommandStatementUpdate": {"query": (1, ""), "transaction_id": (2, "opt")},
    "CommandStatementIngest": {"table_definition_options": (1, ""), "table": (2, ""),
                               "schema": (3, "opt"), "catalog": (4, "opt"),
                               "temporary": (5, ""), "transaction_id": (6, "opt"),
                               "options": (1000, "rep")},
    "TicketStatementQuery": {"statement_handle": (1, "")},
    "CommandPreparedStatementQuery": {"prepared_statement_handle": (1, "")},
    "CommandPreparedStatementUpdate": {"prepared_statement_handle": (1, "")},
    "DoPutUpdateResult": {"record_count": (1, "")},
    "DoPutPreparedStatementResult": {"prepared_statement_handle": (1, "opt")},
    "ActionBeginTransactionRequest": {},
    "ActionBeginTransactionResult": {"transaction_id": (1, "")},
    "ActionEndTransactionRequest": {"transaction_id": (1, ""), "action": (2, "")},
    "ActionBeginSavepointRequest": {"transaction_id": (1, ""), "name": (2, "")},
    "ActionBeginSavepointResult": {"savepoint_id": (1, "")},
    "ActionEndSavepointRequest": {"savepoint_id": (1, ""), "action": (2, "")},
}


@pytest.mark.parametrize("name", sorted(SPEC))
def test_fields_match_spec(name):
    desc = getattr(P, name).DESCRIPTOR
    assert desc.full_name == "arrow.flight.protocol.sql." + name
    got = {f.name: (f.number, "rep" if f.is_repeated
                    else "opt" if f.has_presence and f.containing_oneof else "")
           for f in desc.fields}
    assert got == SPEC[name]


def _sample(msg):
    """`msg` with every field set to a non-default value."""
    for f in msg.DESCRIPTOR.fields:
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            getattr(msg, f.name)["k"] = "v"
        elif f.message_type is not None:
            _sample(getattr(msg, f.name))
        else:
            value = {f.TYPE_STRING: "s", f.TYPE_BYTES: b"\x00b", f.TYPE_BOOL: True,
                     f.TYPE_ENUM: 1}.get(f.type, 7)
            if f.is_repeated:
                getattr(msg, f.name).extend([value, value])
            else:
                setattr(msg, f.name, value)
    return msg


@pytest.mark.parametrize("name", sorted(P.SQL_MESSAGES))
def test_round_trip_every_command(name):
    cls = P.SQL_MESSAGES[name]
    for msg in (cls(), _sample(cls())):
        data = P.pack(msg)
        assert any_pb2.Any.FromString(data).type_url == URL + name
        back = P.unpack(data)
        assert type(back) is cls and back == msg


def test_statement_query_exact_bytes():
    data = P.pack(P.CommandStatementQuery(query="SELECT 1"))
    expected = (b"\x0a\x43" + (URL + "CommandStatementQuery").encode()
                + b"\x12\x0a" + b"\x0a\x08SELECT 1")
    assert data == expected == any_bytes("CommandStatementQuery", ld(1, b"SELECT 1"))


def test_optional_presence_on_the_wire():
    # proto3 optional: an explicitly empty catalog is sent (0a 00) and seen by HasField.
    msg = P.CommandGetTables(catalog="", include_schema=True)
    assert msg.SerializeToString() == b"\x0a\x00\x28\x01"
    back = P.unpack(P.pack(msg))
    assert back.HasField("catalog") and not back.HasField("db_schema_filter_pattern")
    assert P.CommandGetXdbcTypeInfo(data_type=0).SerializeToString() == b"\x08\x00"
    assert P.CommandStatementQuery(query="q").SerializeToString() == ld(1, b"q")
    txn = P.CommandStatementQuery(query="q", transaction_id=b"")
    assert txn.SerializeToString() == ld(1, b"q") + ld(2, b"")


def test_more_exact_bytes():
    # repeated uint32 is packed in proto3; 508 = fc 03.
    assert P.CommandGetSqlInfo(info=[0, 8, 508]).SerializeToString() == ld(1, b"\x00\x08\xfc\x03")
    assert P.DoPutUpdateResult(record_count=-1).SerializeToString() == tag(1, 0) + varint(-1)
    assert len(varint(-1)) == 10
    opts = P.CommandStatementIngest.TableDefinitionOptions
    ingest = P.CommandStatementIngest(
        table="t", options={"k": "v"},
        table_definition_options=opts(if_not_exist=opts.TABLE_NOT_EXIST_OPTION_CREATE,
                                      if_exists=opts.TABLE_EXISTS_OPTION_APPEND))
    assert ingest.SerializeToString() == (
        ld(1, tag(1, 0) + b"\x01" + tag(2, 0) + b"\x02") + ld(2, b"t")
        + ld(1000, ld(1, b"k") + ld(2, b"v")))
    assert tag(1000, 2) == b"\xc2\x3e"
    result = P.ActionCreatePreparedStatementResult(prepared_statement_handle=b"h",
                                                   dataset_schema=b"S")
    assert P.pack(result) == any_bytes("ActionCreatePreparedStatementResult",
                                       ld(1, b"h") + ld(2, b"S"))
    value = P.SessionOptionValue(int64_value=5)  # sfixed64: wire type 1, little endian
    assert value.SerializeToString() == tag(3, 1) + (5).to_bytes(8, "little")
    assert P.CancelFlightInfoResult(status=P.CANCEL_STATUS_CANCELLED).SerializeToString() \
        == b"\x08\x01"
    assert P.CloseSessionResult(status=P.CloseSessionResult.CLOSED).SerializeToString() \
        == b"\x08\x01"


def test_enums_match_spec():
    opts = P.CommandStatementIngest.TableDefinitionOptions
    assert (opts.TABLE_NOT_EXIST_OPTION_CREATE, opts.TABLE_NOT_EXIST_OPTION_FAIL) == (1, 2)
    assert (opts.TABLE_EXISTS_OPTION_FAIL, opts.TABLE_EXISTS_OPTION_APPEND,
            opts.TABLE_EXISTS_OPTION_REPLACE) == (1, 2, 3)
    assert (P.ActionEndTransactionRequest.END_TRANSACTION_COMMIT,
            P.ActionEndTransactionRequest.END_TRANSACTION_ROLLBACK) == (1, 2)
    assert P.ActionCancelQueryResult.CANCEL_RESULT_NOT_CANCELLABLE == 3
    assert P.CancelStatus.Value("CANCEL_STATUS_NOT_CANCELLABLE") == 3
    assert P.CloseSessionResult.NOT_CLOSEABLE == 3


def test_core_flight_messages():
    assert P.CancelFlightInfoRequest.DESCRIPTOR.full_name == \
        "arrow.flight.protocol.CancelFlightInfoRequest"
    info = pa.flight.FlightInfo(pa.schema([("a", pa.int32())]),
                                pa.flight.FlightDescriptor.for_command(b"cmd"),
                                [pa.flight.FlightEndpoint(b"tkt", [])], -1, -1)
    body = P.CancelFlightInfoRequest(info=info.serialize()).SerializeToString()
    req = P.parse(P.CancelFlightInfoRequest, body)
    assert pa.flight.FlightInfo.deserialize(req.info).endpoints[0].ticket.ticket == b"tkt"
    assert P.parse(P.CloseSessionRequest, b"") == P.CloseSessionRequest()
    with pytest.raises(P.ProtocolError):
        P.parse(P.DoPutUpdateResult, b"\x08")


def test_action_names():
    assert (P.CREATE_PREPARED_STATEMENT, P.CLOSE_PREPARED_STATEMENT, P.CANCEL_FLIGHT_INFO,
            P.CLOSE_SESSION, P.BEGIN_TRANSACTION, P.END_TRANSACTION) == (
        "CreatePreparedStatement", "ClosePreparedStatement", "CancelFlightInfo",
        "CloseSession", "BeginTransaction", "EndTransaction")


@pytest.mark.parametrize("data", [b"", b"garbage", b"\xff\xff\xff", b"\x0a\x05ab"])
def test_garbage_is_protocol_error(data):
    with pytest.raises(P.ProtocolError, match="Any"):
        P.unpack(data)


def test_unknown_type_url():
    with pytest.raises(P.ProtocolError, match="unsupported.*CommandNope"):
        P.unpack(any_bytes("CommandNope", b""))
    empty = any_pb2.Any(type_url="type.googleapis.com/google.protobuf.Empty")
    with pytest.raises(P.ProtocolError, match="unsupported"):
        P.unpack(empty.SerializeToString())


@pytest.mark.parametrize("payload", [b"\x0a\x05ab", b"\xff", b"\x0a\x01\xff"])
def test_payload_that_does_not_parse(payload):
    with pytest.raises(P.ProtocolError, match="CommandStatementQuery"):
        P.unpack(any_bytes("CommandStatementQuery", payload))  # short / bad tag / bad utf-8


def test_protocol_error_is_value_error():
    assert issubclass(P.ProtocolError, ValueError)


# --- metadata --------------------------------------------------------------------------
def test_sql_info_union_layout():
    value = M.SQL_INFO_SCHEMA.field("value")
    assert M.SQL_INFO_SCHEMA.field("info_name").type == pa.uint32()
    assert not M.SQL_INFO_SCHEMA.field("info_name").nullable and not value.nullable
    union = value.type
    assert union.mode == "dense" and union.type_codes == [0, 1, 2, 3, 4, 5]
    assert [(f.name, f.type) for f in union] == [
        ("string_value", pa.utf8()), ("bool_value", pa.bool_()), ("bigint_value", pa.int64()),
        ("int32_bitmask", pa.int32()), ("string_list", pa.list_(pa.utf8())),
        ("int32_to_int32_list_map", pa.map_(pa.int32(), pa.list_(pa.int32())))]


def test_sql_info_values_of_each_kind():
    values = {M.SqlInfo.FLIGHT_SQL_SERVER_NAME: "thanosql",
              M.SqlInfo.FLIGHT_SQL_SERVER_READ_ONLY: False,
              M.SqlInfo.SQL_MAX_COLUMNS_IN_TABLE: 1 << 40,
              M.SqlInfo.SQL_SUPPORTED_UNIONS: M.Bitmask(3),
              M.SqlInfo.FLIGHT_SQL_SERVER_TRANSACTION: 0,  # spec int32: coerced
              M.SqlInfo.SQL_KEYWORDS: ["BUILD", "PREDICT"],
              M.SqlInfo.SQL_SUPPORTS_CONVERT: {7: [0, 19]}}
    table = M.sql_info_table(values, [])
    assert table.schema.equals(M.SQL_INFO_SCHEMA)
    assert table.column("info_name").to_pylist() == [0, 3, 8, 508, 517, 540, 548]
    union = table.column("value").chunk(0)
    rows = dict(zip(table.column("info_name").to_pylist(), union.type_codes.to_pylist()))
    assert rows == {0: 0, 3: 1, 548: 2, 540: 3, 8: 3, 508: 4, 517: 5}
    got = dict(zip(table.column("info_name").to_pylist(), table.column("value").to_pylist()))
    assert got == {0: "thanosql", 3: False, 548: 1 << 40, 540: 3, 8: 0,
                   508: ["BUILD", "PREDICT"], 517: [(7, [0, 19])]}
    # Through IPC, as a client receives it.
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    assert pa.ipc.open_stream(sink.getvalue()).read_all().equals(table)


def test_sql_info_requested_codes():
    values = {0: "a", 1: "b", 2: "c"}
    table = M.sql_info_table(values, [2, 0, 99, 2])
    assert table.column("info_name").to_pylist() == [2, 0]  # order kept, unknown dropped
    assert M.sql_info_table(values, None).column("info_name").to_pylist() == [0, 1, 2]
    assert M.sql_info_table({}, None).num_rows == 0
    with pytest.raises(TypeError):
        M.sql_info_table({0: 1.5}, None)


def test_sql_info_codes():
    c = M.SQL_INFO_CODES
    assert (c["FLIGHT_SQL_SERVER_NAME"], c["FLIGHT_SQL_SERVER_TRANSACTION"],
            c["FLIGHT_SQL_SERVER_BULK_INGESTION"], c["FLIGHT_SQL_SERVER_STATEMENT_TIMEOUT"],
            c["SQL_DDL_CATALOG"], c["SQL_EXTRA_NAME_CHARACTERS"],
            c["SQL_STORED_FUNCTIONS_USING_CALL_SYNTAX_SUPPORTED"]) == (0, 8, 10, 100, 500, 514, 576)
    assert len(c) == 12 + 2 + 77


def test_xdbc_type_info():
    assert M.XDBC_TYPE_INFO_SCHEMA.names == [
        "type_name", "data_type", "column_size", "literal_prefix", "literal_suffix",
        "create_params", "nullable", "case_sensitive", "searchable", "unsigned_attribute",
        "fixed_prec_scale", "auto_increment", "local_type_name", "minimum_scale",
        "maximum_scale", "sql_data_type", "datetime_subcode", "num_prec_radix",
        "interval_precision"]
    nullable = {f.name for f in M.XDBC_TYPE_INFO_SCHEMA if not f.nullable}
    assert nullable == {"type_name", "data_type", "nullable", "case_sensitive", "searchable",
                        "fixed_prec_scale", "sql_data_type"}
    table = M.xdbc_type_info()
    assert table.schema.equals(M.XDBC_TYPE_INFO_SCHEMA)
    codes = table.column("data_type").to_pylist()
    assert codes == sorted(codes)
    by_name = dict(zip(table.column("type_name").to_pylist(), codes))
    assert by_name == {"BOOLEAN": -7, "TINYINT": -6, "BIGINT": -5, "VARBINARY": -3,
                       "DECIMAL": 3, "INTEGER": 4, "SMALLINT": 5, "REAL": 7, "DOUBLE": 8,
                       "VARCHAR": 12, "DATE": 91, "TIMESTAMP": 93}
    ts = M.xdbc_type_info(93).to_pylist()
    assert len(ts) == 1 and ts[0]["sql_data_type"] == 9 and ts[0]["datetime_subcode"] == 3
    assert M.xdbc_type_info(2).num_rows == 0 and M.XDBC_TYPE_INFO is M.xdbc_type_info


def test_listing_schemas_and_tables():
    assert str(M.CATALOGS_SCHEMA) == "catalog_name: string not null"
    assert [f.nullable for f in M.TABLES_SCHEMA_WITH_SCHEMA] == [True, True, False, False, False]
    schema = pa.schema([pa.field("a", pa.int64(), nullable=False)])
    rows = [("c", None, "t", "TABLE", schema), ("c", "s", "v", "VIEW", None)]
    with_schema = M.tables_table(rows, include_schema=True)
    assert with_schema.schema.equals(M.TABLES_SCHEMA_WITH_SCHEMA)
    blobs = with_schema.column("table_schema").to_pylist()
    assert pa.ipc.read_schema(pa.py_buffer(blobs[0])).equals(schema)
    assert len(pa.ipc.read_schema(pa.py_buffer(blobs[1]))) == 0
    assert M.tables_table(rows, include_schema=False).schema.equals(M.TABLES_SCHEMA)
    assert M.tables_table([], include_schema=True).num_rows == 0
    assert M.db_schemas_table([(None, "public")]).schema.equals(M.DB_SCHEMAS_SCHEMA)
    assert M.table_types_table(["TABLE"]).schema.equals(M.TABLE_TYPES_SCHEMA)
    assert M.catalogs_table(["c"]).column(0).to_pylist() == ["c"]


def test_key_tables_are_empty_and_spec_shaped():
    pk = M.empty_primary_keys()
    assert pk.num_rows == 0 and pk.schema.names == [
        "catalog_name", "db_schema_name", "table_name", "column_name", "key_sequence",
        "key_name"]
    fk = M.empty_foreign_keys()
    assert fk.num_rows == 0 and fk.schema.equals(M.IMPORTED_KEYS_SCHEMA)
    assert fk.schema.field("update_rule").type == pa.uint8()
    assert {f.name for f in fk.schema if not f.nullable} == {
        "pk_table_name", "pk_column_name", "fk_table_name", "fk_column_name", "key_sequence",
        "update_rule", "delete_rule"}
