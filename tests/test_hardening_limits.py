"""Statements that used to crash the server: deep expressions are refused or run, never fatal."""

from __future__ import annotations

import adbc_driver_flightsql.dbapi as flightsql
import pytest
from sqlglot.tokens import Tokenizer

from planner.limits import MAX_EXPRESSION_DEPTH, expression_depth


def depth(sql: str) -> int:
    return expression_depth(Tokenizer().tokenize(sql))


def test_depth_bound_never_below_the_chain():
    """A binary chain of N links is N deep and takes 2N tokens: the bound is at least that."""
    assert depth("SELECT " + "+".join(["1"] * 50)) >= 49
    assert depth("SELECT * FROM t WHERE " + " OR ".join(f"x = {i}" for i in range(100))) >= 99
    assert depth(" UNION ALL ".join(["SELECT 1"] * 30)) >= 29
    # operators no list names still count
    assert depth("SELECT 'a'" + " ~ 'a'" * 100) >= 100
    assert depth("SELECT now()" + " AT TIME ZONE 'UTC'" * 100) >= 100
    # nesting adds the chain around it; CASE ... END is one operand of the chain around it
    assert depth("SELECT 1 + 1 + (2 * (3 + 3 + 3))") >= 5
    assert depth("SELECT (" + "+".join(["1"] * 30) + ") + " + "+".join(["1"] * 30)) >= 59
    assert depth("SELECT " + " + ".join(["CASE WHEN x THEN 1 ELSE 2 END"] * 200)) >= 199
    assert depth("SELECT " + "[" * 300 + "1" + "]" * 300) >= 300


def test_depth_bound_of_wide_but_shallow_queries():
    wide = "SELECT " + ", ".join(f"a{i} + b{i}" for i in range(5000)) + " FROM t"
    assert depth(wide) <= 5
    in_list = "SELECT * FROM t WHERE x IN (" + ", ".join(str(i) for i in range(20000)) + ")"
    assert depth(in_list) <= 10
    cases = "SELECT CASE " + " ".join(f"WHEN x = {i} THEN {i}" for i in range(3000)) + " END FROM t"
    assert depth(cases) <= 10


def run(url: str, sql: str):
    with flightsql.connect(url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


@pytest.mark.parametrize("sql", [
    "SELECT " + "+".join(["1"] * 5000),                                   # was SIGSEGV
    "SELECT " + "||".join(["'a'"] * 3000),                                 # was SIGSEGV
    "SELECT 'a'" + " ~ 'a'" * 12000,                                       # was SIGSEGV
    "SELECT now()" + " AT TIME ZONE 'UTC'" * 12000,                        # was SIGSEGV
    "SELECT " + " + ".join(["CASE WHEN true THEN 1 END"] * 3000),
    # DataFusion reads E'\'' as one quote; the generic lexer would see one long string
    "SELECT E'\\'' AS e, " + "+".join(["1"] * 12000) + " AS y --'",  # was SIGSEGV
    "SELECT $$'$$ AS d, " + "+".join(["1"] * 12000) + " AS y --'",  # a dollar quote hiding a chain
    "SELECT 1" + " UNION ALL SELECT 1" * 3500,  # was SIGSEGV
    "WITH a0 AS (SELECT 1 AS x), "
    + ", ".join(f"a{i} AS (SELECT x FROM a{i - 1})" for i in range(1, 8000)) + " SELECT * FROM a7999",
    "SELECT t0.a FROM (SELECT 1 AS a) t0 "
    + " ".join(f"JOIN (SELECT 1 AS a) t{i} ON t{i}.a = t0.a" for i in range(1, 3000)),
    "SELECT * FROM (VALUES (1)) v(x) WHERE " + " OR ".join(f"x = {i}" for i in range(20000)),
    " UNION ALL ".join(["SELECT 1"] * 5000),
])
def test_too_deep_is_refused_and_the_server_lives(server, sql):
    with pytest.raises(flightsql.Error) as info:
        run(server.url, sql)
    message = str(info.value)
    assert "(InvalidArgument;" in message, message
    assert "the limit is" in message
    assert server.alive()
    assert run(server.url, "SELECT 42") == [(42,)]


def test_just_under_the_limit_runs(server):
    """The deepest chain allowed runs through the server's own threads (streamed result)."""
    n = MAX_EXPRESSION_DEPTH // 2  # n terms, 2n - 1 tokens: the longest chain allowed
    assert depth("SELECT " + "+".join(["1"] * n)) <= MAX_EXPRESSION_DEPTH
    assert run(server.url, "SELECT " + "+".join(["1"] * n)) == [(n,)]
    rows = run(server.url, "SELECT " + "||".join(["'a'"] * n))
    assert rows == [("a" * n,)]
    with pytest.raises(flightsql.Error) as info:  # planned this deep, then a type error
        run(server.url, "SELECT 'a'" + " ~ 'a'" * (n - 1))
    assert "(InvalidArgument;" in str(info.value) and "regex" in str(info.value)
    assert server.alive()


def test_deeply_nested_options_get_a_clean_error(server):
    sql = ("BUILD MODEL m USING Wav2Vec2En OPTIONS (epochs=" + "[" * 3000 + "1" + "]" * 3000
           + ") AS SELECT 1")
    with pytest.raises(flightsql.Error) as info:
        run(server.url, sql)
    assert "(InvalidArgument;" in str(info.value), str(info.value)
    assert "Recursion" not in str(info.value)
    sql = "BUILD MODEL m USING Wav2Vec2En OPTIONS (epochs=" + "[" * 900 + "1" + "]" * 900 + ") AS SELECT 1"
    with pytest.raises(flightsql.Error) as info:  # under the depth limit: the parser's own error
        run(server.url, sql)
    assert "(InvalidArgument;" in str(info.value), str(info.value)
    assert server.alive()


def test_nested_parentheses_get_a_clean_error(server):
    with pytest.raises(flightsql.Error) as info:
        run(server.url, "SELECT " + "(" * 200 + "1" + ")" * 200)
    assert "(InvalidArgument;" in str(info.value) or "(ResourceExhausted;" in str(info.value)
    assert "Traceback" not in str(info.value)
    assert server.alive()


def test_statement_timeout_stops_a_long_aggregation(start_server):
    """--statement-timeout interrupts DataFusion before its first batch, and its work stops."""
    import time

    import psutil

    server = start_server("--statement-timeout", "1.5")
    slow = "SELECT count(*), sum(value % 7) FROM generate_series(1, 100000000000)"
    started = time.monotonic()
    with pytest.raises(flightsql.Error) as info:
        run(server.url, slow)
    elapsed = time.monotonic() - started
    message = str(info.value)
    assert "(DeadlineExceeded;" in message, message
    assert "statement timeout (1.5 s)" in message
    assert elapsed < 30, elapsed  # generous: the aggregation alone would take many minutes
    process = psutil.Process(server.proc.pid)
    time.sleep(0.5)
    before = sum(process.cpu_times()[:2])
    time.sleep(2.0)
    busy = sum(process.cpu_times()[:2]) - before
    assert busy < 0.5, f"the server kept computing: {busy:.2f} CPU-seconds in 2 s"
    assert run(server.url, "SELECT 42") == [(42,)]  # fast statements are unaffected


def test_statement_timeout_is_reported_in_sql_info(start_server):
    import pyarrow.flight as flight

    from flight_server import protocol as P

    server = start_server("--statement-timeout", "2.5")
    client = flight.connect(server.url)
    command = P.pack(P.CommandGetSqlInfo(info=[100]))  # FLIGHT_SQL_SERVER_STATEMENT_TIMEOUT
    info = client.get_flight_info(flight.FlightDescriptor.for_command(command))
    table = client.do_get(info.endpoints[0].ticket).read_all()
    assert table.column("info_name").to_pylist() == [100]
    assert table.column("value").to_pylist() == [2500]  # milliseconds


def test_statement_timeout_stops_copy_to(start_server):
    """COPY ... TO runs to its one result batch: the timeout stops the writing itself."""
    import time

    server = start_server("--statement-timeout", "1.5")
    sql = ("COPY (SELECT value, repeat('x', 200) AS pad FROM generate_series(1, 100000000000)) "
           "TO 'big.csv' STORED AS CSV")
    with pytest.raises(flightsql.Error) as info:
        run(server.url, sql)
    assert "(DeadlineExceeded;" in str(info.value), str(info.value)

    def written() -> int:
        return sum(p.stat().st_size for p in server.data_dir.rglob("*") if p.is_file()
                   and "big" in p.name)
    time.sleep(0.5)
    size = written()
    time.sleep(1.5)
    assert written() == size, "the COPY went on writing after its timeout"
    assert run(server.url, "SELECT 42") == [(42,)]
