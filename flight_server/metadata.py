"""Result schemas and tables for the Flight SQL metadata commands.

Clients compare these schemas exactly (ADBC's get_objects checks nullability too), so
they follow the Flight SQL specification field for field; where the spec comment and
the reference servers (C++ ``SqlSchema``, Go ``schema_ref``) differ, we follow the
servers, since that is what clients were tested against: primary keys put
``key_sequence`` before ``key_name``; the GetSqlInfo union children and ``value``
are non-nullable, and the list items are named ``item``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence

import pyarrow as pa

_s, _i32, _b = pa.utf8(), pa.int32(), pa.bool_()


def _f(name, type_, nullable=True):
    return pa.field(name, type_, nullable=nullable)


CATALOGS_SCHEMA = pa.schema([_f("catalog_name", _s, False)])
DB_SCHEMAS_SCHEMA = pa.schema([_f("catalog_name", _s), _f("db_schema_name", _s, False)])
TABLES_SCHEMA = pa.schema([_f("catalog_name", _s), _f("db_schema_name", _s),
                           _f("table_name", _s, False), _f("table_type", _s, False)])
TABLES_SCHEMA_WITH_SCHEMA = TABLES_SCHEMA.append(_f("table_schema", pa.binary(), False))
TABLE_TYPES_SCHEMA = pa.schema([_f("table_type", _s, False)])
PRIMARY_KEYS_SCHEMA = pa.schema([
    _f("catalog_name", _s), _f("db_schema_name", _s), _f("table_name", _s, False),
    _f("column_name", _s, False), _f("key_sequence", _i32, False), _f("key_name", _s)])
# GetImportedKeys, GetExportedKeys and GetCrossReference share one schema.
FOREIGN_KEYS_SCHEMA = pa.schema([
    _f("pk_catalog_name", _s), _f("pk_db_schema_name", _s),
    _f("pk_table_name", _s, False), _f("pk_column_name", _s, False),
    _f("fk_catalog_name", _s), _f("fk_db_schema_name", _s),
    _f("fk_table_name", _s, False), _f("fk_column_name", _s, False),
    _f("key_sequence", _i32, False), _f("fk_key_name", _s), _f("pk_key_name", _s),
    _f("update_rule", pa.uint8(), False), _f("delete_rule", pa.uint8(), False)])
IMPORTED_KEYS_SCHEMA = EXPORTED_KEYS_SCHEMA = CROSS_REFERENCE_SCHEMA = FOREIGN_KEYS_SCHEMA
XDBC_TYPE_INFO_SCHEMA = pa.schema([
    _f("type_name", _s, False), _f("data_type", _i32, False), _f("column_size", _i32),
    _f("literal_prefix", _s), _f("literal_suffix", _s),
    _f("create_params", pa.list_(_f("item", _s, False))),
    _f("nullable", _i32, False), _f("case_sensitive", _b, False),
    _f("searchable", _i32, False), _f("unsigned_attribute", _b),
    _f("fixed_prec_scale", _b, False), _f("auto_increment", _b),
    _f("local_type_name", _s), _f("minimum_scale", _i32), _f("maximum_scale", _i32),
    _f("sql_data_type", _i32, False), _f("datetime_subcode", _i32),
    _f("num_prec_radix", _i32), _f("interval_precision", _i32)])

# GetSqlInfo: value is a dense union with type codes 0..5 in this order.
SQL_INFO_VALUE_TYPE = pa.dense_union([
    _f("string_value", _s, False), _f("bool_value", _b, False),
    _f("bigint_value", pa.int64(), False), _f("int32_bitmask", _i32, False),
    _f("string_list", pa.list_(_s), False),
    _f("int32_to_int32_list_map", pa.map_(_i32, pa.list_(_i32)), False)],
    type_codes=[0, 1, 2, 3, 4, 5])
SQL_INFO_SCHEMA = pa.schema([_f("info_name", pa.uint32(), False),
                             _f("value", SQL_INFO_VALUE_TYPE, False)])


class SqlInfo(enum.IntEnum):
    """The spec's SqlInfo enum (CommandGetSqlInfo codes)."""
    FLIGHT_SQL_SERVER_NAME = 0
    FLIGHT_SQL_SERVER_VERSION = 1
    FLIGHT_SQL_SERVER_ARROW_VERSION = 2
    FLIGHT_SQL_SERVER_READ_ONLY = 3
    FLIGHT_SQL_SERVER_SQL = 4
    FLIGHT_SQL_SERVER_SUBSTRAIT = 5
    FLIGHT_SQL_SERVER_SUBSTRAIT_MIN_VERSION = 6
    FLIGHT_SQL_SERVER_SUBSTRAIT_MAX_VERSION = 7
    FLIGHT_SQL_SERVER_TRANSACTION = 8
    FLIGHT_SQL_SERVER_CANCEL = 9
    FLIGHT_SQL_SERVER_BULK_INGESTION = 10
    FLIGHT_SQL_SERVER_INGEST_TRANSACTIONS_SUPPORTED = 11
    FLIGHT_SQL_SERVER_STATEMENT_TIMEOUT = 100
    FLIGHT_SQL_SERVER_TRANSACTION_TIMEOUT = 101
    SQL_DDL_CATALOG = 500
    SQL_DDL_SCHEMA = 501
    SQL_DDL_TABLE = 502
    SQL_IDENTIFIER_CASE = 503
    SQL_IDENTIFIER_QUOTE_CHAR = 504
    SQL_QUOTED_IDENTIFIER_CASE = 505
    SQL_ALL_TABLES_ARE_SELECTABLE = 506
    SQL_NULL_ORDERING = 507
    SQL_KEYWORDS = 508
    SQL_NUMERIC_FUNCTIONS = 509
    SQL_STRING_FUNCTIONS = 510
    SQL_SYSTEM_FUNCTIONS = 511
    SQL_DATETIME_FUNCTIONS = 512
    SQL_SEARCH_STRING_ESCAPE = 513
    SQL_EXTRA_NAME_CHARACTERS = 514
    SQL_SUPPORTS_COLUMN_ALIASING = 515
    SQL_NULL_PLUS_NULL_IS_NULL = 516
    SQL_SUPPORTS_CONVERT = 517
    SQL_SUPPORTS_TABLE_CORRELATION_NAMES = 518
    SQL_SUPPORTS_DIFFERENT_TABLE_CORRELATION_NAMES = 519
    SQL_SUPPORTS_EXPRESSIONS_IN_ORDER_BY = 520
    SQL_SUPPORTS_ORDER_BY_UNRELATED = 521
    SQL_SUPPORTED_GROUP_BY = 522
    SQL_SUPPORTS_LIKE_ESCAPE_CLAUSE = 523
    SQL_SUPPORTS_NON_NULLABLE_COLUMNS = 524
    SQL_SUPPORTED_GRAMMAR = 525
    SQL_ANSI92_SUPPORTED_LEVEL = 526
    SQL_SUPPORTS_INTEGRITY_ENHANCEMENT_FACILITY = 527
    SQL_OUTER_JOINS_SUPPORT_LEVEL = 528
    SQL_SCHEMA_TERM = 529
    SQL_PROCEDURE_TERM = 530
    SQL_CATALOG_TERM = 531
    SQL_CATALOG_AT_START = 532
    SQL_SCHEMAS_SUPPORTED_ACTIONS = 533
    SQL_CATALOGS_SUPPORTED_ACTIONS = 534
    SQL_SUPPORTED_POSITIONED_COMMANDS = 535
    SQL_SELECT_FOR_UPDATE_SUPPORTED = 536
    SQL_STORED_PROCEDURES_SUPPORTED = 537
    SQL_SUPPORTED_SUBQUERIES = 538
    SQL_CORRELATED_SUBQUERIES_SUPPORTED = 539
    SQL_SUPPORTED_UNIONS = 540
    SQL_MAX_BINARY_LITERAL_LENGTH = 541
    SQL_MAX_CHAR_LITERAL_LENGTH = 542
    SQL_MAX_COLUMN_NAME_LENGTH = 543
    SQL_MAX_COLUMNS_IN_GROUP_BY = 544
    SQL_MAX_COLUMNS_IN_INDEX = 545
    SQL_MAX_COLUMNS_IN_ORDER_BY = 546
    SQL_MAX_COLUMNS_IN_SELECT = 547
    SQL_MAX_COLUMNS_IN_TABLE = 548
    SQL_MAX_CONNECTIONS = 549
    SQL_MAX_CURSOR_NAME_LENGTH = 550
    SQL_MAX_INDEX_LENGTH = 551
    SQL_DB_SCHEMA_NAME_LENGTH = 552
    SQL_MAX_PROCEDURE_NAME_LENGTH = 553
    SQL_MAX_CATALOG_NAME_LENGTH = 554
    SQL_MAX_ROW_SIZE = 555
    SQL_MAX_ROW_SIZE_INCLUDES_BLOBS = 556
    SQL_MAX_STATEMENT_LENGTH = 557
    SQL_MAX_STATEMENTS = 558
    SQL_MAX_TABLE_NAME_LENGTH = 559
    SQL_MAX_TABLES_IN_SELECT = 560
    SQL_MAX_USERNAME_LENGTH = 561
    SQL_DEFAULT_TRANSACTION_ISOLATION = 562
    SQL_TRANSACTIONS_SUPPORTED = 563
    SQL_SUPPORTED_TRANSACTIONS_ISOLATION_LEVELS = 564
    SQL_DATA_DEFINITION_CAUSES_TRANSACTION_COMMIT = 565
    SQL_DATA_DEFINITIONS_IN_TRANSACTIONS_IGNORED = 566
    SQL_SUPPORTED_RESULT_SET_TYPES = 567
    SQL_SUPPORTED_CONCURRENCIES_FOR_RESULT_SET_UNSPECIFIED = 568
    SQL_SUPPORTED_CONCURRENCIES_FOR_RESULT_SET_FORWARD_ONLY = 569
    SQL_SUPPORTED_CONCURRENCIES_FOR_RESULT_SET_SCROLL_SENSITIVE = 570
    SQL_SUPPORTED_CONCURRENCIES_FOR_RESULT_SET_SCROLL_INSENSITIVE = 571
    SQL_BATCH_UPDATES_SUPPORTED = 572
    SQL_SAVEPOINTS_SUPPORTED = 573
    SQL_NAMED_PARAMETERS_SUPPORTED = 574
    SQL_LOCATORS_UPDATE_COPY = 575
    SQL_STORED_FUNCTIONS_USING_CALL_SYNTAX_SUPPORTED = 576


SQL_INFO_CODES: dict[str, int] = {m.name: int(m) for m in SqlInfo}

# Codes whose spec type is int32 (ordinals, bitmasks, timeouts): a plain int given
# for them goes to int32_bitmask, as clients read them as int32 (ADBC reads
# FLIGHT_SQL_SERVER_TRANSACTION that way).
INT32_SQL_INFO_CODES = frozenset(map(int, (
    SqlInfo.FLIGHT_SQL_SERVER_TRANSACTION, SqlInfo.FLIGHT_SQL_SERVER_STATEMENT_TIMEOUT,
    SqlInfo.FLIGHT_SQL_SERVER_TRANSACTION_TIMEOUT, SqlInfo.SQL_IDENTIFIER_CASE,
    SqlInfo.SQL_QUOTED_IDENTIFIER_CASE, SqlInfo.SQL_NULL_ORDERING,
    SqlInfo.SQL_SUPPORTED_GROUP_BY, SqlInfo.SQL_SUPPORTED_GRAMMAR,
    SqlInfo.SQL_ANSI92_SUPPORTED_LEVEL, SqlInfo.SQL_OUTER_JOINS_SUPPORT_LEVEL,
    SqlInfo.SQL_SCHEMAS_SUPPORTED_ACTIONS, SqlInfo.SQL_CATALOGS_SUPPORTED_ACTIONS,
    SqlInfo.SQL_SUPPORTED_POSITIONED_COMMANDS, SqlInfo.SQL_SUPPORTED_SUBQUERIES,
    SqlInfo.SQL_SUPPORTED_UNIONS, SqlInfo.SQL_DEFAULT_TRANSACTION_ISOLATION,
    SqlInfo.SQL_SUPPORTED_TRANSACTIONS_ISOLATION_LEVELS,
    SqlInfo.SQL_SUPPORTED_RESULT_SET_TYPES,
    SqlInfo.SQL_SUPPORTED_CONCURRENCIES_FOR_RESULT_SET_UNSPECIFIED,
    SqlInfo.SQL_SUPPORTED_CONCURRENCIES_FOR_RESULT_SET_FORWARD_ONLY,
    SqlInfo.SQL_SUPPORTED_CONCURRENCIES_FOR_RESULT_SET_SCROLL_SENSITIVE,
    SqlInfo.SQL_SUPPORTED_CONCURRENCIES_FOR_RESULT_SET_SCROLL_INSENSITIVE)))


class Bitmask(int):
    """Marks an int as a GetSqlInfo int32 value (int32_bitmask member), not bigint."""


def _member(code: int, value) -> int:
    """Union type code for a Python value (bool before int: bool is an int)."""
    if isinstance(value, str):
        return 0
    if isinstance(value, bool):
        return 1
    if isinstance(value, Bitmask) or (isinstance(value, int) and code in INT32_SQL_INFO_CODES):
        return 3
    if isinstance(value, int):
        return 2
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return 4
    if isinstance(value, dict):
        return 5
    raise TypeError(f"SqlInfo {code}: unsupported value {value!r}")


def sql_info_table(values: dict[int, object], codes: Sequence[int] | None = None) -> pa.Table:
    """GetSqlInfo result for `codes` (all of `values`, by code, when empty/None).

    Codes we have no value for are left out, as the spec allows."""
    wanted = sorted(values) if not codes else [c for c in dict.fromkeys(codes) if c in values]
    children: list[list] = [[] for _ in range(6)]
    type_ids, offsets = [], []
    for code in wanted:
        member = _member(code, values[code])
        type_ids.append(member)
        offsets.append(len(children[member]))
        value = values[code]
        children[member].append(list(value.items()) if member == 5 else
                                list(value) if member == 4 else int(value) if member in (2, 3)
                                else value)
    arrays = [pa.array(vals, type=SQL_INFO_VALUE_TYPE.field(i).type)
              for i, vals in enumerate(children)]
    value = pa.Array.from_buffers(
        SQL_INFO_VALUE_TYPE, len(wanted),
        [None, pa.array(type_ids, pa.int8()).buffers()[1],
         pa.array(offsets, pa.int32()).buffers()[1]], children=arrays)
    value.validate(full=True)
    return pa.Table.from_arrays([pa.array(wanted, pa.uint32()), value], schema=SQL_INFO_SCHEMA)


# --- XdbcTypeInfo ---------------------------------------------------------------------
# JDBC/ODBC codes (XdbcDataType enum): the types the server emits.
XDBC_BIT, XDBC_TINYINT, XDBC_BIGINT, XDBC_VARBINARY = -7, -6, -5, -3
XDBC_DECIMAL, XDBC_INTEGER, XDBC_SMALLINT, XDBC_REAL, XDBC_DOUBLE = 3, 4, 5, 7, 8
XDBC_DATETIME, XDBC_VARCHAR, XDBC_DATE, XDBC_TIMESTAMP = 9, 12, 91, 93
_SUBCODE_DATE, _SUBCODE_TIMESTAMP = 1, 3  # XdbcDatetimeSubcode
_SEARCHABLE_BASIC, _SEARCHABLE_FULL = 2, 3  # Searchable enum
_NULLABLE = 1  # Nullable.NULLABILITY_NULLABLE

# (type_name, data_type, column_size, prefix, suffix, create_params, case_sensitive,
#  searchable, unsigned, fixed_prec_scale, min_scale, max_scale, sql_data_type,
#  datetime_subcode, num_prec_radix) -- sorted by data_type, then type_name.
_XDBC_ROWS = [
    ("BOOLEAN", XDBC_BIT, 1, None, None, None, False, _SEARCHABLE_BASIC, None, False,
     None, None, XDBC_BIT, None, None),
    ("TINYINT", XDBC_TINYINT, 3, None, None, None, False, _SEARCHABLE_BASIC, False, False,
     0, 0, XDBC_TINYINT, None, 10),
    ("BIGINT", XDBC_BIGINT, 19, None, None, None, False, _SEARCHABLE_BASIC, False, False,
     0, 0, XDBC_BIGINT, None, 10),
    ("VARBINARY", XDBC_VARBINARY, None, "X'", "'", None, False, _SEARCHABLE_BASIC, None,
     False, None, None, XDBC_VARBINARY, None, None),
    ("DECIMAL", XDBC_DECIMAL, 38, None, None, ["precision", "scale"], False,
     _SEARCHABLE_BASIC, False, False, 0, 38, XDBC_DECIMAL, None, 10),
    ("INTEGER", XDBC_INTEGER, 10, None, None, None, False, _SEARCHABLE_BASIC, False, False,
     0, 0, XDBC_INTEGER, None, 10),
    ("SMALLINT", XDBC_SMALLINT, 5, None, None, None, False, _SEARCHABLE_BASIC, False, False,
     0, 0, XDBC_SMALLINT, None, 10),
    ("REAL", XDBC_REAL, 24, None, None, None, False, _SEARCHABLE_BASIC, False, False,
     None, None, XDBC_REAL, None, 2),
    ("DOUBLE", XDBC_DOUBLE, 53, None, None, None, False, _SEARCHABLE_BASIC, False, False,
     None, None, XDBC_DOUBLE, None, 2),
    ("VARCHAR", XDBC_VARCHAR, None, "'", "'", None, True, _SEARCHABLE_FULL, None, False,
     None, None, XDBC_VARCHAR, None, None),
    ("DATE", XDBC_DATE, 10, "DATE '", "'", None, False, _SEARCHABLE_BASIC, None, False,
     None, None, XDBC_DATETIME, _SUBCODE_DATE, None),
    ("TIMESTAMP", XDBC_TIMESTAMP, 29, "TIMESTAMP '", "'", None, False, _SEARCHABLE_BASIC,
     None, False, 0, 9, XDBC_DATETIME, _SUBCODE_TIMESTAMP, None),
]


def xdbc_type_info(data_type: int | None = None) -> pa.Table:
    """GetXdbcTypeInfo result, optionally only the rows of one XDBC data_type."""
    rows = [r for r in _XDBC_ROWS if data_type is None or r[1] == data_type]
    (names, codes, sizes, prefixes, suffixes, params, case, search, unsigned, fixed,
     min_scale, max_scale, sql_types, subcodes, radix) = (list(c) for c in zip(*rows)) \
        if rows else [[] for _ in range(15)]
    n = len(rows)
    columns = [names, codes, sizes, prefixes, suffixes, params, [_NULLABLE] * n, case, search,
               unsigned, fixed, [False if u is not None else None for u in unsigned], names,
               min_scale, max_scale, sql_types, subcodes, radix, [None] * n]
    return pa.Table.from_arrays(
        [pa.array(c, f.type) for c, f in zip(columns, XDBC_TYPE_INFO_SCHEMA)],
        schema=XDBC_TYPE_INFO_SCHEMA)


XDBC_TYPE_INFO = xdbc_type_info


# --- catalog listings -----------------------------------------------------------------
def _table(schema: pa.Schema, rows: Iterable[Sequence]) -> pa.Table:
    cols = list(zip(*rows)) or [[] for _ in schema]
    return pa.Table.from_arrays([pa.array(list(c), f.type) for c, f in zip(cols, schema)],
                                schema=schema)


def catalogs_table(names: Iterable[str]) -> pa.Table:
    return _table(CATALOGS_SCHEMA, [(n,) for n in names])


def db_schemas_table(rows: Iterable[tuple[str | None, str]]) -> pa.Table:
    """Rows of (catalog_name, db_schema_name)."""
    return _table(DB_SCHEMAS_SCHEMA, rows)


def table_types_table(types: Iterable[str]) -> pa.Table:
    return _table(TABLE_TYPES_SCHEMA, [(t,) for t in types])


def tables_table(rows: Iterable[tuple], include_schema: bool) -> pa.Table:
    """Rows of (catalog, db_schema, table_name, table_type, pa.Schema | None);
    with include_schema the schema travels IPC-serialized (an empty one if None)."""
    rows = list(rows)
    if not include_schema:
        return _table(TABLES_SCHEMA, [r[:4] for r in rows])
    return _table(TABLES_SCHEMA_WITH_SCHEMA,
                  [(*r[:4], (r[4] if r[4] is not None else pa.schema([])).serialize().to_pybytes())
                   for r in rows])


def empty_primary_keys() -> pa.Table:
    """GetPrimaryKeys answer for a store without keys (better than UNIMPLEMENTED for BI tools)."""
    return PRIMARY_KEYS_SCHEMA.empty_table()


def empty_foreign_keys() -> pa.Table:
    """GetImportedKeys / GetExportedKeys / GetCrossReference answer without keys."""
    return FOREIGN_KEYS_SCHEMA.empty_table()
