"""Arrow Flight SQL protobuf messages, declared in our own code.

pyarrow ships no Flight SQL messages (nor the core CancelFlightInfo / session
messages), so the subset the server needs is described here as compact tables and
turned into a ``FileDescriptorProto`` at import time; ``message_factory`` gives the
classes.  Names, numbers, types and proto3 ``optional`` markers follow the Arrow
Flight SQL specification (FlightSql.proto / Flight.proto), so the bytes on the wire
are the same as those of the upstream generated code.  A private descriptor pool
keeps us clear of any other copy of these messages a dependency might register.
"""

from __future__ import annotations

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.message import DecodeError, Message

SQL_PACKAGE = "arrow.flight.protocol.sql"
FLIGHT_PACKAGE = "arrow.flight.protocol"
TYPE_URL_PREFIX = "type.googleapis.com/"


class ProtocolError(ValueError):
    """Bytes that are not a (known, well-formed) Flight SQL message."""


# --- action type names (Action.type) ----------------------------------------------
# Flight SQL actions: body and result are Any-packed Flight SQL messages.
CREATE_PREPARED_STATEMENT = "CreatePreparedStatement"
CREATE_PREPARED_SUBSTRAIT_PLAN = "CreatePreparedSubstraitPlan"
CLOSE_PREPARED_STATEMENT = "ClosePreparedStatement"
BEGIN_TRANSACTION = "BeginTransaction"
BEGIN_SAVEPOINT = "BeginSavepoint"
END_TRANSACTION = "EndTransaction"
END_SAVEPOINT = "EndSavepoint"
CANCEL_QUERY = "CancelQuery"  # deprecated since Arrow 13 in favour of CancelFlightInfo
# Core Flight actions: body and result are the raw (not Any) serialized messages.
CANCEL_FLIGHT_INFO = "CancelFlightInfo"
RENEW_FLIGHT_ENDPOINT = "RenewFlightEndpoint"
SET_SESSION_OPTIONS = "SetSessionOptions"
GET_SESSION_OPTIONS = "GetSessionOptions"
CLOSE_SESSION = "CloseSession"

# --- declarations -----------------------------------------------------------------
# A message is (name, fields, nested messages, nested enums).  A field is
# (name, number, type, flag): type is a scalar name, "msg:X" / "enum:X" (X resolved
# against the enclosing scopes, innermost first) or "map<K,V>"; flag is "" (proto3
# implicit presence), "optional" (proto3 optional: synthetic oneof, HasField works),
# "repeated" or "oneof:<name>".  Enums list their value names; values number 0, 1, ...

_CATALOG_TABLE_REF = [("catalog", 1, "string", "optional"),
                      ("db_schema", 2, "string", "optional"),
                      ("table", 3, "string", "")]
_TXN = ("transaction_id", 2, "bytes", "optional")

_SQL_MESSAGES = [
    ("CommandGetSqlInfo", [("info", 1, "uint32", "repeated")], [], {}),
    ("CommandGetXdbcTypeInfo", [("data_type", 1, "int32", "optional")], [], {}),
    ("CommandGetCatalogs", [], [], {}),
    ("CommandGetDbSchemas", [("catalog", 1, "string", "optional"),
                             ("db_schema_filter_pattern", 2, "string", "optional")], [], {}),
    ("CommandGetTables", [("catalog", 1, "string", "optional"),
                          ("db_schema_filter_pattern", 2, "string", "optional"),
                          ("table_name_filter_pattern", 3, "string", "optional"),
                          ("table_types", 4, "string", "repeated"),
                          ("include_schema", 5, "bool", "")], [], {}),
    ("CommandGetTableTypes", [], [], {}),
    ("CommandGetPrimaryKeys", _CATALOG_TABLE_REF, [], {}),
    ("CommandGetExportedKeys", _CATALOG_TABLE_REF, [], {}),
    ("CommandGetImportedKeys", _CATALOG_TABLE_REF, [], {}),
    ("CommandGetCrossReference", [("pk_catalog", 1, "string", "optional"),
                                  ("pk_db_schema", 2, "string", "optional"),
                                  ("pk_table", 3, "string", ""),
                                  ("fk_catalog", 4, "string", "optional"),
                                  ("fk_db_schema", 5, "string", "optional"),
                                  ("fk_table", 6, "string", "")], [], {}),
    ("ActionCreatePreparedStatementRequest", [("query", 1, "string", ""), _TXN], [], {}),
    ("SubstraitPlan", [("plan", 1, "bytes", ""), ("version", 2, "string", "")], [], {}),
    ("ActionCreatePreparedSubstraitPlanRequest",
     [("plan", 1, "msg:SubstraitPlan", ""), _TXN], [], {}),
    ("ActionCreatePreparedStatementResult", [("prepared_statement_handle", 1, "bytes", ""),
                                             ("dataset_schema", 2, "bytes", ""),
                                             ("parameter_schema", 3, "bytes", ""),
                                             # Newer spec revisions: lets JDBC tell updates apart.
                                             ("is_update", 4, "bool", "optional")], [], {}),
    ("ActionClosePreparedStatementRequest",
     [("prepared_statement_handle", 1, "bytes", "")], [], {}),
    ("ActionBeginTransactionRequest", [], [], {}),
    ("ActionBeginSavepointRequest", [("transaction_id", 1, "bytes", ""),
                                     ("name", 2, "string", "")], [], {}),
    ("ActionBeginTransactionResult", [("transaction_id", 1, "bytes", "")], [], {}),
    ("ActionBeginSavepointResult", [("savepoint_id", 1, "bytes", "")], [], {}),
    ("ActionEndTransactionRequest", [("transaction_id", 1, "bytes", ""),
                                     ("action", 2, "enum:EndTransaction", "")], [],
     {"EndTransaction": ["END_TRANSACTION_UNSPECIFIED", "END_TRANSACTION_COMMIT",
                         "END_TRANSACTION_ROLLBACK"]}),
    ("ActionEndSavepointRequest", [("savepoint_id", 1, "bytes", ""),
                                   ("action", 2, "enum:EndSavepoint", "")], [],
     {"EndSavepoint": ["END_SAVEPOINT_UNSPECIFIED", "END_SAVEPOINT_RELEASE",
                       "END_SAVEPOINT_ROLLBACK"]}),
    ("CommandStatementQuery", [("query", 1, "string", ""), _TXN], [], {}),
    ("CommandStatementSubstraitPlan", [("plan", 1, "msg:SubstraitPlan", ""), _TXN], [], {}),
    ("TicketStatementQuery", [("statement_handle", 1, "bytes", "")], [], {}),
    ("CommandPreparedStatementQuery", [("prepared_statement_handle", 1, "bytes", "")], [], {}),
    ("CommandStatementUpdate", [("query", 1, "string", ""), _TXN], [], {}),
    ("CommandPreparedStatementUpdate", [("prepared_statement_handle", 1, "bytes", "")], [], {}),
    ("CommandStatementIngest",
     [("table_definition_options", 1, "msg:TableDefinitionOptions", ""),
      ("table", 2, "string", ""),
      ("schema", 3, "string", "optional"),
      ("catalog", 4, "string", "optional"),
      ("temporary", 5, "bool", ""),
      ("transaction_id", 6, "bytes", "optional"),
      ("options", 1000, "map<string,string>", "")],
     [("TableDefinitionOptions", [("if_not_exist", 1, "enum:TableNotExistOption", ""),
                                  ("if_exists", 2, "enum:TableExistsOption", "")], [],
       {"TableNotExistOption": ["TABLE_NOT_EXIST_OPTION_UNSPECIFIED",
                                "TABLE_NOT_EXIST_OPTION_CREATE",
                                "TABLE_NOT_EXIST_OPTION_FAIL"],
        "TableExistsOption": ["TABLE_EXISTS_OPTION_UNSPECIFIED", "TABLE_EXISTS_OPTION_FAIL",
                              "TABLE_EXISTS_OPTION_APPEND", "TABLE_EXISTS_OPTION_REPLACE"]})],
     {}),
    ("DoPutUpdateResult", [("record_count", 1, "int64", "")], [], {}),
    ("DoPutPreparedStatementResult",
     [("prepared_statement_handle", 1, "bytes", "optional")], [], {}),
    # `info` is a serialized FlightInfo (upstream declares it as bytes too).
    ("ActionCancelQueryRequest", [("info", 1, "bytes", "")], [], {}),
    ("ActionCancelQueryResult", [("result", 1, "enum:CancelResult", "")], [],
     {"CancelResult": ["CANCEL_RESULT_UNSPECIFIED", "CANCEL_RESULT_CANCELLED",
                       "CANCEL_RESULT_CANCELLING", "CANCEL_RESULT_NOT_CANCELLABLE"]}),
]

_SESSION_VALUE = "msg:SessionOptionValue"
_FLIGHT_MESSAGES = [
    # Upstream `info` is a FlightInfo message; as bytes it has the same wire encoding
    # (length-delimited), and pyarrow.flight.FlightInfo.deserialize decodes it.
    ("CancelFlightInfoRequest", [("info", 1, "bytes", "")], [], {}),
    ("CancelFlightInfoResult", [("status", 1, "enum:CancelStatus", "")], [], {}),
    ("SessionOptionValue", [("string_value", 1, "string", "oneof:option_value"),
                            ("bool_value", 2, "bool", "oneof:option_value"),
                            ("int64_value", 3, "sfixed64", "oneof:option_value"),
                            ("double_value", 4, "double", "oneof:option_value"),
                            ("string_list_value", 5, "msg:StringListValue",
                             "oneof:option_value")],
     [("StringListValue", [("values", 1, "string", "repeated")], [], {})], {}),
    ("SetSessionOptionsRequest", [("session_options", 1, f"map<string,{_SESSION_VALUE}>", "")],
     [], {}),
    ("SetSessionOptionsResult", [("errors", 1, "map<string,msg:Error>", "")],
     [("Error", [("value", 1, "enum:ErrorValue", "")], [], {})],
     {"ErrorValue": ["UNSPECIFIED", "INVALID_NAME", "INVALID_VALUE", "ERROR"]}),
    ("GetSessionOptionsRequest", [], [], {}),
    ("GetSessionOptionsResult", [("session_options", 1, f"map<string,{_SESSION_VALUE}>", "")],
     [], {}),
    ("CloseSessionRequest", [], [], {}),
    ("CloseSessionResult", [("status", 1, "enum:Status", "")], [],
     {"Status": ["UNSPECIFIED", "CLOSED", "CLOSING", "NOT_CLOSEABLE"]}),
]
_FLIGHT_ENUMS = {"CancelStatus": ["CANCEL_STATUS_UNSPECIFIED", "CANCEL_STATUS_CANCELLED",
                                  "CANCEL_STATUS_CANCELLING", "CANCEL_STATUS_NOT_CANCELLABLE"]}

# --- descriptor construction --------------------------------------------------------
_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {name: getattr(_F, "TYPE_" + name.upper()) for name in
            ("double", "float", "int64", "uint64", "int32", "fixed64", "fixed32", "bool",
             "string", "bytes", "uint32", "sfixed32", "sfixed64", "sint32", "sint64")}


def _names(decls, prefix, enums, out):
    """Collect the fully qualified names of all declared messages and enums."""
    out.update(f"{prefix}.{e}" for e in enums)
    for name, _, nested, nested_enums in decls:
        out.add(f"{prefix}.{name}")
        _names(nested, f"{prefix}.{name}", nested_enums, out)


def _resolve(ref, scope, known):
    """Protobuf-style lookup: the innermost enclosing scope that declares `ref`."""
    parts = scope.split(".")
    for i in range(len(parts), 0, -1):
        full = ".".join(parts[:i] + [ref])
        if full in known:
            return "." + full
    raise LookupError(f"unknown type {ref!r} in {scope}")


def _set_type(field, spec, scope, known):
    if spec in _SCALARS:
        field.type = _SCALARS[spec]
    else:
        kind, ref = spec.split(":", 1)
        field.type = _F.TYPE_MESSAGE if kind == "msg" else _F.TYPE_ENUM
        field.type_name = _resolve(ref, scope, known)


def _message(decl, scope, known):
    """DescriptorProto for one (name, fields, nested, enums) declaration."""
    name, fields, nested, enums = decl
    full = f"{scope}.{name}"
    msg = descriptor_pb2.DescriptorProto(name=name)
    for enum_name, values in enums.items():
        msg.enum_type.add(name=enum_name).value.extend(
            descriptor_pb2.EnumValueDescriptorProto(name=v, number=i) for i, v in enumerate(values))
    for sub in nested:
        msg.nested_type.append(_message(sub, full, known))
    real_oneofs = [f[3][6:] for f in fields if f[3].startswith("oneof:")]
    for oneof in dict.fromkeys(real_oneofs):  # real oneofs precede synthetic ones
        msg.oneof_decl.add(name=oneof)
    oneof_index = {o.name: i for i, o in enumerate(msg.oneof_decl)}
    for fname, number, spec, flag in fields:
        field = msg.field.add(name=fname, number=number, label=_F.LABEL_OPTIONAL)
        if spec.startswith("map<"):
            key, value = spec[4:-1].split(",", 1)
            entry = "".join(p.capitalize() for p in fname.split("_")) + "Entry"
            entry_msg = msg.nested_type.add(name=entry)
            entry_msg.options.map_entry = True
            for i, (ename, espec) in enumerate((("key", key), ("value", value)), 1):
                _set_type(entry_msg.field.add(name=ename, number=i, label=_F.LABEL_OPTIONAL),
                          espec, f"{full}.{entry}", known)
            field.label, field.type = _F.LABEL_REPEATED, _F.TYPE_MESSAGE
            field.type_name = f".{full}.{entry}"
            continue
        _set_type(field, spec, full, known)
        if flag == "repeated":
            field.label = _F.LABEL_REPEATED
        elif flag == "optional":
            field.proto3_optional = True
            field.oneof_index = len(msg.oneof_decl)
            msg.oneof_decl.add(name="_" + fname)
        elif flag.startswith("oneof:"):
            field.oneof_index = oneof_index[flag[6:]]
    return msg


def _build(file_name, package, decls, enums):
    """Register one proto3 file in `_POOL`; return {message name: class}."""
    known: set[str] = set()
    _names(decls, package, enums, known)
    fdp = descriptor_pb2.FileDescriptorProto(name=file_name, package=package, syntax="proto3")
    for enum_name, values in enums.items():
        fdp.enum_type.add(name=enum_name).value.extend(
            descriptor_pb2.EnumValueDescriptorProto(name=v, number=i) for i, v in enumerate(values))
    fdp.message_type.extend(_message(d, package, known) for d in decls)
    _POOL.AddSerializedFile(fdp.SerializeToString())
    return {d[0]: message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{package}.{d[0]}"))
            for d in decls}


_POOL = descriptor_pool.DescriptorPool()
SQL_MESSAGES: dict[str, type[Message]] = _build(
    "thanosql/flight_sql_subset.proto", SQL_PACKAGE, _SQL_MESSAGES, {})
FLIGHT_MESSAGES: dict[str, type[Message]] = _build(
    "thanosql/flight_core_subset.proto", FLIGHT_PACKAGE, _FLIGHT_MESSAGES, _FLIGHT_ENUMS)
globals().update(SQL_MESSAGES)
globals().update(FLIGHT_MESSAGES)
CancelStatus = EnumTypeWrapper(_POOL.FindEnumTypeByName(f"{FLIGHT_PACKAGE}.CancelStatus"))
globals().update(CancelStatus.items())  # CANCEL_STATUS_UNSPECIFIED ... as module ints

_BY_FULL_NAME = {cls.DESCRIPTOR.full_name: cls
                 for cls in (*SQL_MESSAGES.values(), *FLIGHT_MESSAGES.values())}


# --- encoding -------------------------------------------------------------------------
def pack(message: Message) -> bytes:
    """Serialize `message` wrapped in google.protobuf.Any, as Flight SQL commands,
    tickets and action bodies/results travel."""
    return any_pb2.Any(type_url=TYPE_URL_PREFIX + message.DESCRIPTOR.full_name,
                       value=message.SerializeToString()).SerializeToString()


def unpack(data: bytes) -> Message:
    """Decode an Any-packed message we know; raise ProtocolError otherwise."""
    wrapper = any_pb2.Any()
    try:
        wrapper.ParseFromString(bytes(data))
    except (DecodeError, TypeError) as exc:
        raise ProtocolError(f"not a protobuf Any-wrapped Flight SQL message: {exc}") from None
    if not wrapper.type_url:
        raise ProtocolError("not a protobuf Any-wrapped Flight SQL message (no type URL)")
    # Like upstream Any.Is<>(): only the part after the last '/' names the type.
    cls = _BY_FULL_NAME.get(wrapper.type_url.rsplit("/", 1)[-1])
    if cls is None:
        raise ProtocolError(f"unsupported Flight SQL message type {wrapper.type_url!r}")
    return parse(cls, wrapper.value)


def parse(cls: type[Message], data: bytes) -> Message:
    """Decode raw (not Any) bytes, as core Flight action bodies, DoPutUpdateResult
    and DoPutPreparedStatementResult travel; raise ProtocolError on bad bytes."""
    msg = cls()
    try:
        msg.ParseFromString(bytes(data))
    except (DecodeError, TypeError) as exc:
        raise ProtocolError(f"malformed {cls.DESCRIPTOR.full_name}: {exc}") from None
    return msg


def type_name(message: Message) -> str:
    """Short spec name of a message (e.g. 'CommandStatementQuery'), for dispatch/errors."""
    return message.DESCRIPTOR.name
