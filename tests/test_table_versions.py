"""Tables as versions: readers see one whole version while others replace, append and
ingest; views follow the current version; old versions go once no reader holds them.

Real server processes on loopback, the real ADBC driver, with the memory cache on (the
default) and off (every read from Parquet, the path with files to keep alive)."""

from __future__ import annotations

import threading
import time
from collections import Counter

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa
import pytest

from server_process import ServerProcess

BASE_ROWS = 20_000  # a few batches, so a slow reader is still reading when the table is replaced
APPEND_ROWS = 7
PAD = "x" * 120  # wide rows: more bytes than gRPC buffers ahead of a slow reader


def connect(url):
    return flightsql.connect(url, autocommit=True)


def version_rows(writer: int, step: int, rows: int) -> pa.Table:
    """One statement's rows, all tagged with the statement (writer, step)."""
    return pa.table({"tag": pa.array([f"{writer}:{step}"] * rows), "pad": pa.array([PAD] * rows)})


def replace_sql(tag: str, rows: int = BASE_ROWS) -> str:
    return (f"CREATE OR REPLACE TABLE hot AS SELECT '{tag}' AS tag, '{PAD}' AS pad "
            f"FROM unnest(range({rows}))")


def check_whole(counts: Counter, where: str) -> None:
    """A read saw whole statements: one base (a replace or replacing ingest: BASE_ROWS
    rows of one tag) and whole appends (APPEND_ROWS rows each)."""
    bases = [tag for tag, n in counts.items() if n == BASE_ROWS]
    parts = {tag: n for tag, n in counts.items() if n != BASE_ROWS}
    assert len(bases) == 1, f"{where}: not one whole base version: {dict(counts)}"
    assert all(n == APPEND_ROWS for n in parts.values()), f"{where}: a partial statement: {parts}"


@pytest.mark.parametrize("cache", ["on", "off"])
def test_reads_see_one_whole_version_while_others_replace_append_and_ingest(start_server, cache):
    server = start_server(*(["--cache-memory", "0"] if cache == "off" else []))
    with connect(server.url) as conn, conn.cursor() as cur:
        cur.execute(replace_sql("start"))
        cur.execute("CREATE VIEW hot_tags AS SELECT tag, count(*) AS n FROM hot GROUP BY tag")
    stop = threading.Event()
    failures: list[str] = []
    reads = Counter()

    def writer(number: int) -> None:
        try:
            with connect(server.url) as conn, conn.cursor() as cur:
                for step in range(20):
                    kind = step % 4
                    if kind == 0:
                        cur.execute(replace_sql(f"{number}:{step}"))
                    elif kind == 1:
                        cur.adbc_ingest("hot", version_rows(number, step, BASE_ROWS), mode="replace")
                    elif kind == 2:
                        cur.adbc_ingest("hot", version_rows(number, step, APPEND_ROWS), mode="append")
                    else:
                        values = ", ".join(f"('{number}:{step}', '{PAD}')" for _ in range(APPEND_ROWS))
                        cur.execute(f"INSERT INTO hot VALUES {values}")
        except Exception as exc:  # noqa: BLE001 - reported by the test
            failures.append(f"writer {number}: {exc}")

    def reader(kind: str) -> None:
        try:
            with connect(server.url) as conn, conn.cursor() as cur:
                while not stop.is_set():
                    if kind == "whole":
                        cur.execute("SELECT tag FROM hot")
                        counts = Counter(cur.fetch_arrow_table().column("tag").to_pylist())
                    elif kind == "slow":  # batch by batch, pausing: replaces land mid-stream
                        cur.execute("SELECT tag, pad FROM hot WHERE length(pad) > 0")
                        counts = Counter()
                        for batch in cur.fetch_record_batch():
                            counts.update(batch.column("tag").to_pylist())
                            time.sleep(0.02)
                    else:  # through the view, which must follow the current version
                        cur.execute("SELECT tag, n FROM hot_tags")
                        counts = Counter({r["tag"]: r["n"] for r in cur.fetch_arrow_table().to_pylist()})
                    check_whole(counts, kind)
                    reads[kind] += 1
        except Exception as exc:  # noqa: BLE001 - reported by the test
            failures.append(f"{kind} reader: {exc}")

    readers = [threading.Thread(target=reader, args=(k,)) for k in ("whole", "slow", "view")]
    writers = [threading.Thread(target=writer, args=(n,)) for n in (1, 2)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert not failures, failures[:5]
    assert all(reads[k] >= 2 for k in ("whole", "slow", "view")), reads

    with connect(server.url) as conn, conn.cursor() as cur:
        cur.execute("SELECT tag FROM hot")
        check_whole(Counter(cur.fetch_arrow_table().column("tag").to_pylist()), "final")
    # Old versions went once their readers finished: one folder for the one table.
    folders = [f for f in (server.data_dir / "tables").iterdir()]
    assert len(folders) == 1, folders


def test_a_stream_keeps_its_version_until_it_ends_and_a_restart_sweeps_nothing_current(start_server):
    rows = 400_000  # about 50 MB: more than gRPC buffers ahead of a reader that has taken one batch
    server = start_server("--cache-memory", "0")
    with connect(server.url) as conn, conn.cursor() as cur:
        cur.execute(replace_sql("old", rows))
        cur.execute("SELECT tag, pad FROM hot WHERE length(pad) > 0")
        stream = cur.fetch_record_batch()
        first = stream.read_next_batch()
        with connect(server.url) as other, other.cursor() as writer:
            writer.execute(replace_sql("new", rows))
            writer.execute("SELECT DISTINCT tag FROM hot")
            assert writer.fetch_arrow_table().column("tag").to_pylist() == ["new"]
        # Both versions are on disk while the first stream is open ...
        assert len(list((server.data_dir / "tables").iterdir())) == 2
        rest = stream.read_all()
        counts = Counter(first.column("tag").to_pylist() + rest.column("tag").to_pylist())
        assert counts == Counter({"old": rows})
    # ... and the old one goes when it ends.
    deadline = time.monotonic() + 10
    while len(list((server.data_dir / "tables").iterdir())) != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(list((server.data_dir / "tables").iterdir())) == 1
    server.restart()
    with connect(server.url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) AS n, min(tag) AS tag FROM hot")
        assert cur.fetch_arrow_table().to_pylist() == [{"n": rows, "tag": "new"}]


def test_views_follow_the_current_version_and_the_cache_serves_the_same_rows(tmp_path):
    cached = ServerProcess(tmp_path / "a").start()
    uncached = ServerProcess(tmp_path / "b", "--cache-memory", "0").start()
    try:
        results = []
        for server in (cached, uncached):
            with connect(server.url) as conn, conn.cursor() as cur:
                cur.execute("CREATE TABLE t AS SELECT 1 AS a, 'one' AS b")
                cur.execute("CREATE VIEW v AS SELECT a * 10 AS a10 FROM t")
                cur.execute("CREATE OR REPLACE TABLE t AS SELECT 2 AS a, 'two' AS b")
                cur.execute("INSERT INTO t VALUES (3, 'three')")
                time.sleep(0.3)  # the cache loads in the background
                seen = []
                for sql in ["SELECT * FROM t ORDER BY a", "SELECT b, a FROM t ORDER BY a", "SELECT a10 FROM v ORDER BY 1",
                            "SELECT * FROM t", "SELECT b FROM t"]:
                    cur.execute(sql)
                    table = cur.fetch_arrow_table()
                    seen.append((table.schema, sorted(table.to_pylist(), key=repr)))
                cur.execute("DROP TABLE t")
                with pytest.raises(flightsql.Error):
                    cur.execute("SELECT * FROM v")
                    cur.fetch_arrow_table()
                cur.execute("CREATE TABLE t AS SELECT 4 AS a, 'four' AS b")
                cur.execute("SELECT a10 FROM v")  # the view plans again once its table is back
                seen.append(cur.fetch_arrow_table().to_pylist())
                results.append(seen)
        assert results[0] == results[1]
        assert results[0][2][1] == [{"a10": 20}, {"a10": 30}]
        assert results[0][-1] == [{"a10": 40}]
    finally:
        cached.stop()
        uncached.stop()


def test_views_over_views_and_subqueries_follow_every_change(tmp_path):
    from planner.engine import Engine
    engine = Engine(tmp_path / "data")

    def run(sql):
        plan = engine.prepare(sql)
        if plan.is_update:
            return engine.execute_update(plan)
        return engine.execute_query(plan).read_all().to_pylist()

    run("CREATE TABLE t AS SELECT 1 AS a")
    run("CREATE VIEW v1 AS SELECT a FROM t")
    run("CREATE VIEW v2 AS SELECT a * 2 AS b FROM v1")
    run("CREATE VIEW v3 AS SELECT count(*) AS n FROM t WHERE a IN (SELECT a - 10 FROM v1)")
    assert (run("SELECT * FROM v2"), run("SELECT * FROM v3")) == ([{"b": 2}], [{"n": 0}])
    run("CREATE OR REPLACE VIEW v1 AS SELECT a + 10 AS a FROM t")  # v2, v3 read v1: re-planned after it
    assert (run("SELECT * FROM v2"), run("SELECT * FROM v3")) == ([{"b": 22}], [{"n": 1}])
    run("INSERT INTO t VALUES (2)")
    assert sorted(r["b"] for r in run("SELECT * FROM v2")) == [22, 24]
    assert run("SELECT * FROM v3") == [{"n": 2}]
    run("CREATE OR REPLACE TABLE t AS SELECT 5 AS a")
    assert run("SELECT * FROM v2") == [{"b": 30}]


def test_a_view_named_with_spaces_over_a_view_follows_its_table(tmp_path):
    from planner.engine import Engine
    engine = Engine(tmp_path / "data")

    def run(sql):
        plan = engine.prepare(sql)
        return engine.execute_update(plan) if plan.is_update else engine.execute_query(plan).read_all().to_pylist()

    run("CREATE TABLE t (a INT)")
    run("INSERT INTO t VALUES (1)")
    run('CREATE VIEW "inner v" AS SELECT a FROM t')
    run('CREATE VIEW outer_v AS SELECT * FROM "inner v"')
    run('CREATE OR REPLACE VIEW "inner v" AS SELECT a FROM t WHERE a > 0')
    run("DROP TABLE t")
    with pytest.raises(Exception, match="not found"):
        run("SELECT * FROM outer_v")
    run("CREATE TABLE t (a INT)")
    run("INSERT INTO t VALUES (42)")
    assert run("SELECT * FROM outer_v") == [{"a": 42}] == run('SELECT * FROM "inner v"')
    restarted = Engine(tmp_path / "data")
    assert restarted.load_problems == []
    plan = restarted.prepare("SELECT * FROM outer_v")
    assert restarted.execute_query(plan).read_all().to_pylist() == [{"a": 42}]


def test_metadata_tickets_can_be_fetched_again(server):
    from pyarrow import flight
    from flight_server import protocol as P
    client = flight.FlightClient(server.url)
    info = client.get_flight_info(flight.FlightDescriptor.for_command(P.pack(P.CommandGetTableTypes())))
    first = client.do_get(info.endpoints[0].ticket).read_all()
    again = client.do_get(info.endpoints[0].ticket).read_all()
    assert first.equals(again) and "TABLE" in first.column("table_type").to_pylist()


def test_a_long_write_does_not_hold_up_other_writes(server):
    """An ingest still streaming its rows commits nothing yet and blocks no one: an INSERT
    into another table, and an append to the same one, complete meanwhile."""
    started, release = threading.Event(), threading.Event()
    done: list[str] = []

    def slow_rows():
        schema = pa.schema([("k", pa.int64())])
        yield pa.record_batch([pa.array([1, 2])], schema=schema)
        started.set()
        release.wait(30)
        yield pa.record_batch([pa.array([3])], schema=schema)

    with connect(server.url) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE other (k BIGINT)")
        cur.execute("CREATE TABLE slow (k BIGINT)")

    def ingest():
        with connect(server.url) as conn, conn.cursor() as cur:
            reader = pa.RecordBatchReader.from_batches(pa.schema([("k", pa.int64())]), slow_rows())
            cur.adbc_ingest("slow", reader, mode="append")
        done.append("ingest")

    writer = threading.Thread(target=ingest)
    writer.start()
    assert started.wait(30)
    with connect(server.url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO other VALUES (7)")
        cur.execute("INSERT INTO slow VALUES (100)")
        done.append("inserts")
        cur.execute("SELECT count(*) AS n FROM slow")
        assert cur.fetch_arrow_table().to_pylist() == [{"n": 1}]  # the ingest is not visible yet
    release.set()
    writer.join(30)
    assert done == ["inserts", "ingest"]
    with connect(server.url) as conn, conn.cursor() as cur:
        cur.execute("SELECT k FROM slow ORDER BY k")
        assert cur.fetch_arrow_table().column("k").to_pylist() == [1, 2, 3, 100]


def test_a_statement_that_has_read_its_rows_lets_replaced_versions_go(tmp_path):
    """BUILD reads its rows, then trains for hours: its pin goes when the reading is done."""
    from planner.engine import Engine
    from planner.plans import EMPTY_SCHEMA, Plan

    engine = Engine(tmp_path / "data", cache_memory=0)
    seen = {}

    class ReadsThenWorks(Plan):
        def run(self, engine, params, cancel):
            seen["rows"] = engine.execute_query(engine.prepare("SELECT count(*) AS n FROM t")).read_all()
            seen["pinned"] = engine.store.pins.running()
            cancel.finished_reading()
            seen["after"] = engine.store.pins.running()
            write = engine.prepare("CREATE OR REPLACE TABLE t AS SELECT 2 AS a")
            engine.execute_update(write)  # the old version goes at once: nothing holds it
            seen["folders"] = len(list((tmp_path / "data" / "tables").iterdir()))
            return 0

    engine.execute_update(engine.prepare("CREATE TABLE t AS SELECT 1 AS a"))
    engine.execute_update(ReadsThenWorks(dataset_schema=EMPTY_SCHEMA, is_update=True))
    assert seen["rows"].to_pylist() == [{"n": 1}]
    assert (seen["pinned"], seen["after"], seen["folders"]) == (1, 0, 1)


def test_a_prepared_query_of_a_system_table_sees_new_rows(tmp_path):
    """Only plans that read nothing but table versions are kept from prepare to execute:
    a system table's rows are taken when it is planned."""
    from planner.engine import Engine
    engine = Engine(tmp_path / "data")
    plan = engine.prepare("SELECT count(*) AS n FROM information_schema.tables WHERE table_name = 'later'")
    assert engine.execute_query(plan).read_all().to_pylist() == [{"n": 0}]
    engine.execute_update(engine.prepare("CREATE VIEW later AS SELECT 1 AS a"))
    assert engine.execute_query(plan).read_all().to_pylist() == [{"n": 1}]
    assert engine.prepare("SELECT count(*) FROM thanosql.training_info").planned is None
    engine.execute_update(engine.prepare("CREATE TABLE t AS SELECT 1 AS a"))
    assert engine.prepare("SELECT * FROM t WHERE a IN (SELECT a FROM later)").planned is not None
