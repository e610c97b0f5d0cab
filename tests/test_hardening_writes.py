"""Writes are atomic and durable (issue 8): every acknowledged row stays, no statement is
half visible, a crash or a full disk leaves nothing behind. Real server processes, the
real ADBC driver.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import shutil
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import adbc_driver_flightsql.dbapi as flightsql
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from pyarrow import flight

from flight_server import protocol as P

# Kill -9 iterations: each write path is killed this many times at a random moment.
KILL_ROUNDS = int(os.environ.get("THANOSQL_KILL_ROUNDS", "2"))
CONCURRENT_SECONDS = float(os.environ.get("THANOSQL_CONCURRENT_SECONDS", "8"))


def connect(url):
    return flightsql.connect(url, autocommit=True)


def rows_of(cur, sql, parameters=None):
    cur.execute(sql, parameters)
    return cur.fetch_arrow_table().to_pylist()


def table_names(cur) -> set[str]:
    cur.execute("LIST TABLE")
    return set(cur.fetch_arrow_table().column("table_name").to_pylist())


def leftovers(data_dir: Path) -> list[str]:
    """Anything in data_dir/tables that is not a committed table file: staging, temp files."""
    found = []
    for child in (data_dir / "tables").iterdir():
        if child.name.startswith(".") or not child.is_dir():
            found.append(child.name)
            continue
        for entry in child.iterdir():
            if entry.name.startswith((".", "_")) or not entry.name.endswith(".parquet"):
                found.append(f"{child.name}/{entry.name}")
    return found


def table_folders(data_dir: Path) -> int:
    return sum(1 for c in (data_dir / "tables").iterdir() if c.is_dir())


def ids_table(ids) -> pa.Table:
    return pa.table({"id": pa.array(list(ids), pa.int64())})


# --- a bounded concurrent run ------------------------------------------------------------

def test_concurrent_writers_and_readers_lose_no_acknowledged_row(start_server):
    server = start_server()
    with connect(server.url) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE events (id BIGINT, src VARCHAR)")
    next_id = itertools.count(1)
    id_lock = threading.Lock()
    acked: set[int] = set()
    acked_lock = threading.Lock()
    errors: list[str] = []
    counts = {"statements": 0, "reads": 0, "replaces": 0}
    stop = time.monotonic() + CONCURRENT_SECONDS

    def take(n):
        with id_lock:
            return [next(next_id) for _ in range(n)]

    def ack(ids):
        with acked_lock:
            acked.update(ids)
            counts["statements"] += 1

    def single(cur, rng):
        ids = take(1)
        cur.execute(f"INSERT INTO events VALUES ({ids[0]}, 'single')")
        assert cur.rowcount == 1
        return ids

    def multi(cur, rng):
        ids = take(rng.randint(2, 6))
        cur.execute("INSERT INTO events VALUES " + ", ".join(f"({i}, 'multi')" for i in ids))
        assert cur.rowcount == len(ids)
        return ids

    def prepared(cur, rng):
        ids = take(rng.randint(1, 12))
        if len(ids) == 1:
            cur.execute("INSERT INTO events VALUES ($1, $2)", parameters=(ids[0], "prepared"))
        else:  # several parameter rows: one statement, committed together
            cur.executemany("INSERT INTO events (src, id) VALUES ($1, $2)", [("prepared", i) for i in ids])
        return ids

    def ingest(cur, rng):
        ids = take(rng.randint(20, 400))
        cur.adbc_ingest("events", pa.table({"id": pa.array(ids, pa.int64()),
                                            "src": pa.array(["ingest"] * len(ids))}), mode="append")
        return ids

    def replace_others(cur, rng):
        k = rng.randrange(3)
        if rng.random() < 0.5:
            cur.execute(f"CREATE OR REPLACE TABLE other_{k} AS SELECT value AS v FROM "
                        f"generate_series(1, {rng.randint(1, 5000)})")
        else:
            cur.adbc_ingest(f"other_{k}", ids_table(range(rng.randint(1, 5000))), mode="replace")
        with acked_lock:
            counts["replaces"] += 1

    def writer(kind, seed):
        rng = random.Random(seed)
        try:
            with connect(server.url) as conn, conn.cursor() as cur:
                while time.monotonic() < stop:
                    ids = kind(cur, rng)
                    if ids:
                        ack(ids)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(f"{kind.__name__}: {exc}")

    def reader(seed):
        try:
            with connect(server.url) as conn, conn.cursor() as cur:
                while time.monotonic() < stop:
                    with acked_lock:
                        floor = len(acked)
                    cur.execute("SELECT count(*) AS n, count(DISTINCT id) AS d FROM events")
                    n, d = cur.fetchone()
                    assert n == d, f"duplicate rows: {n} rows, {d} ids"
                    assert n >= floor, f"an acknowledged row is not visible: {n} < {floor}"
                    with acked_lock:
                        counts["reads"] += 1
        except Exception as exc:  # noqa: BLE001
            errors.append(f"reader: {exc}")

    kinds = [single, single, multi, prepared, prepared, ingest, ingest, replace_others]
    threads = [threading.Thread(target=writer, args=(k, i)) for i, k in enumerate(kinds)]
    threads += [threading.Thread(target=reader, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=CONCURRENT_SECONDS + 60)
    assert not errors, errors
    assert counts["statements"] > 50 and counts["reads"] > 10 and counts["replaces"] > 3, counts
    print(f"concurrent run: {counts['statements']} write statements, {len(acked)} rows acknowledged, "
          f"{counts['replaces']} replaces, {counts['reads']} counted reads")

    def stored_ids():
        with connect(server.url) as conn, conn.cursor() as cur:
            cur.execute("SELECT id FROM events")
            return cur.fetch_arrow_table().column("id").to_pylist()

    live = stored_ids()
    assert len(live) == len(acked) and set(live) == acked
    server.stop(kill=True)  # acknowledged means on disk: a crash right after loses nothing
    server.start()
    after = stored_ids()
    assert len(after) == len(acked) and set(after) == acked
    assert leftovers(server.data_dir) == []


# --- kill -9 at random points of every write path ------------------------------------------

N = 150_000  # rows per write: long enough for a kill to land inside it


class WritePath:
    """A write path, run as a sequence of statements on its own tables. `expected(k)` is
    what the tables hold after k statements: the state after a crash must be the one after
    every acknowledged statement, or after one more (committed, not yet acknowledged)."""

    def __init__(self, name, prefix):
        self.name, self.prefix = name, prefix

    def setup(self, cur):
        pass

    def op(self, cur, k):
        raise NotImplementedError

    def expected(self, k) -> dict:
        raise NotImplementedError


def summary(ids) -> tuple:
    ids = list(ids)
    return (len(ids), sum(ids))


class Insert(WritePath):
    def setup(self, cur):
        cur.execute(f"CREATE TABLE {self.prefix} AS SELECT value AS id FROM generate_series(1, 1000)")

    def _ids(self, k):
        if k % 2 == 0:
            return range(10_000_000 * (k + 1), 10_000_000 * (k + 1) + N)
        return range(10_000_000 * (k + 1), 10_000_000 * (k + 1) + 300)

    def op(self, cur, k):
        ids = self._ids(k)
        if k % 2 == 0:
            cur.execute(f"INSERT INTO {self.prefix} SELECT value FROM generate_series({ids[0]}, {ids[-1]})")
        else:
            cur.executemany(f"INSERT INTO {self.prefix} VALUES ($1)", [(i,) for i in ids])

    def expected(self, k):
        ids = list(range(1, 1001))
        for j in range(k):
            ids += list(self._ids(j))
        return {self.prefix: summary(ids)}


class IngestCreate(WritePath):
    def op(self, cur, k):
        cur.adbc_ingest(f"{self.prefix}_{k}", ids_table(range(k, k + N)), mode="create")

    def expected(self, k):
        return {f"{self.prefix}_{j}": summary(range(j, j + N)) for j in range(k)}


class IngestAppend(WritePath):
    def setup(self, cur):
        cur.adbc_ingest(self.prefix, ids_table(range(1000)), mode="create")

    def op(self, cur, k):
        cur.adbc_ingest(self.prefix, ids_table(range(N)), mode="append")

    def expected(self, k):
        return {self.prefix: (1000 + k * N, sum(range(1000)) + k * sum(range(N)))}


class IngestReplace(WritePath):
    def setup(self, cur):
        cur.adbc_ingest(self.prefix, ids_table(range(1000)), mode="create")

    def op(self, cur, k):
        cur.adbc_ingest(self.prefix, ids_table(range(k + 1, k + 1 + N)), mode="replace")

    def expected(self, k):
        return {self.prefix: summary(range(1000)) if k == 0 else summary(range(k, k + N))}


class Ctas(WritePath):
    def op(self, cur, k):
        cur.execute(f"CREATE TABLE {self.prefix}_{k} AS SELECT value AS id FROM generate_series({k}, {k + N - 1})")

    def expected(self, k):
        return {f"{self.prefix}_{j}": summary(range(j, j + N)) for j in range(k)}


class CreateOrReplace(WritePath):
    def setup(self, cur):
        cur.execute(f"CREATE TABLE {self.prefix} AS SELECT 0 AS id")

    def op(self, cur, k):
        cur.execute(f"CREATE OR REPLACE TABLE {self.prefix} AS SELECT value AS id "
                    f"FROM generate_series({k + 1}, {k + N})")

    def expected(self, k):
        return {self.prefix: (1, 0) if k == 0 else summary(range(k, k + N))}


class CopyCsv(WritePath):
    """COPY ... append from a CSV in the data directory (the first one creates the table)."""
    rows = 50_000

    def op(self, cur, k):
        cur.execute(f"COPY {self.prefix} OPTIONS (if_exists='append') FROM 'kill_src.csv'")

    def expected(self, k):
        return {self.prefix: (k * self.rows, k * sum(range(self.rows)))} if k else {}


class CopyParquet(WritePath):
    """COPY ... replace from two Parquet files in the data directory, in turn."""

    def op(self, cur, k):
        cur.execute(f"COPY {self.prefix} OPTIONS (if_exists='replace') FROM 'kill_src_{k % 2}.parquet'")

    def expected(self, k):
        return {self.prefix: summary(range((k - 1) % 2, (k - 1) % 2 + N))} if k else {}


PATHS = [Insert, IngestCreate, IngestAppend, IngestReplace, Ctas, CreateOrReplace, CopyCsv, CopyParquet]


def observe(cur, prefix) -> dict:
    state = {}
    for name in sorted(table_names(cur)):
        if name == prefix or name.startswith(prefix + "_"):
            cur.execute(f"SELECT count(*), COALESCE(sum(id), 0) FROM {name}")
            count, total = cur.fetchone()
            state[name] = (count, int(total))
    return state


# A client killed under its statement leaves ADBC cursors that complain when collected.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_kill_9_at_random_points_of_every_write_path(start_server, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    pacsv.write_csv(ids_table(range(CopyCsv.rows)), data_dir / "kill_src.csv")
    for k in (0, 1):
        pq.write_table(ids_table(range(k, k + N)), data_dir / f"kill_src_{k}.parquet")
    server = start_server(data_dir=data_dir)
    rng = random.Random(8)
    kills = []
    for round_ in range(KILL_ROUNDS):
        for path_class in PATHS:
            path = path_class(path_class.__name__, f"k{round_}_{path_class.__name__.lower()}")
            with connect(server.url) as conn, conn.cursor() as cur:
                path.setup(cur)
            acked = [0]
            started = threading.Event()

            def work():
                try:
                    with connect(server.url) as conn, conn.cursor() as cur:
                        started.set()
                        for k in itertools.count():
                            path.op(cur, k)
                            acked[0] = k + 1
                except Exception:  # noqa: BLE001 - the server was killed under it
                    pass

            thread = threading.Thread(target=work)
            thread.start()
            started.wait(10)
            delay = rng.uniform(0.0, 0.6)
            time.sleep(delay)
            server.stop(kill=True)
            thread.join(30)
            done = acked[0]
            server.start()
            assert leftovers(data_dir) == [], f"{path.name}: temp files after a restart"
            with connect(server.url) as conn, conn.cursor() as cur:
                state = observe(cur, path.prefix)
                # The tables hold exactly the acknowledged statements' rows, or also the whole
                # of the one in flight, never part of it.
                assert state in (path.expected(done), path.expected(done + 1)), \
                    f"{path.name} after {done} acknowledged statements, killed at {delay:.3f}s: {state}"
                assert table_folders(data_dir) == len(table_names(cur)), "unreferenced folders after a restart"
            kills.append((path.name, round(delay, 3), done, state == path.expected(done + 1)))
    print("kill -9 iterations (path, delay s, acknowledged, in-flight committed):", kills)
    assert len(kills) == KILL_ROUNDS * len(PATHS)


# --- full disk ---------------------------------------------------------------------------

@pytest.fixture
def small_tmpfs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {result.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_full_disk_is_resource_exhausted_and_leaves_nothing(small_tmpfs, start_server):
    server = start_server(data_dir=small_tmpfs)
    try:
        with connect(server.url) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE small AS SELECT value AS id, 'x' AS s FROM generate_series(1, 10)")
            # An INSERT that does not fit (~15 MB of poorly compressible rows on 8 MB).
            with pytest.raises(flightsql.Error) as info:
                cur.execute("INSERT INTO small SELECT value, CAST(random() AS VARCHAR) "
                            "FROM generate_series(1, 1000000)")
            assert "disk full" in str(info.value) and "Traceback" not in str(info.value)
            assert rows_of(cur, "SELECT count(*) AS n FROM small") == [{"n": 10}]
            # An ingest that does not fit, in many batches: no table is left behind.
            noise = np.random.default_rng(0).integers(0, 2**63, size=1_500_000, dtype=np.int64)
            with pytest.raises(flightsql.Error) as info:
                cur.adbc_ingest("huge", pa.Table.from_batches(
                    pa.table({"id": noise}).to_batches(max_chunksize=100_000)), mode="create")
            assert "disk full" in str(info.value)
            assert "huge" not in table_names(cur)
            # Space came back with the staging; the server still serves and writes.
            assert shutil.disk_usage(small_tmpfs).used < 2 * 2**20
            assert leftovers(small_tmpfs) == []
            cur.execute("INSERT INTO small VALUES (11, 'y')")
            cur.adbc_ingest("after", ids_table(range(5)), mode="create")
        server.stop(kill=True)
        server.start()
        with connect(server.url) as conn, conn.cursor() as cur:
            assert rows_of(cur, "SELECT count(*) AS n, max(id) AS m FROM small") == [{"n": 11, "m": 11}]
            assert "huge" not in table_names(cur)
            assert rows_of(cur, "SELECT count(*) AS n FROM after") == [{"n": 5}]
        assert leftovers(small_tmpfs) == []
    finally:
        server.stop()


# --- failed writes leave nothing ---------------------------------------------------------------

def test_oversize_single_batch_ingest_leaves_no_table(server):
    # One 40 MB batch: over the client's 16 MiB message limit, so the client gives up
    # the call; the server sees the stream end and must not commit.
    big = pa.table({"b": pa.array([b"x" * 1_000_000] * 40, pa.binary())}).combine_chunks()
    with connect(server.url) as conn, conn.cursor() as cur:
        with pytest.raises(flightsql.Error):
            cur.adbc_ingest("too_big", big, mode="create")
        cur.adbc_ingest("kept", pa.table({"b": pa.array([b"y"], pa.binary())}), mode="create")
        with pytest.raises(flightsql.Error):
            cur.adbc_ingest("kept", big, mode="append")
        time.sleep(0.2)  # the server side of the abandoned calls finishes
        assert "too_big" not in table_names(cur)
        assert rows_of(cur, "SELECT count(*) AS n FROM kept") == [{"n": 1}]
    server.stop(kill=True)
    server.start()
    with connect(server.url) as conn, conn.cursor() as cur:
        assert "too_big" not in table_names(cur)
    assert leftovers(server.data_dir) == []


def test_failed_insert_leaves_nothing(server):
    with connect(server.url) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE t (id BIGINT NOT NULL, name VARCHAR)")
        cur.execute("INSERT INTO t VALUES (1, 'a')")
        # Fails on a batch after the first ones were produced.
        with pytest.raises(flightsql.Error) as info:
            cur.execute("INSERT INTO t SELECT CAST(CASE WHEN value > 70000 THEN 'x' ELSE '1' END AS BIGINT), "
                        "'n' FROM generate_series(1, 100000)")
        assert "Cannot cast" in str(info.value)
        # Several parameter rows, one of them bad (NULL into NOT NULL): none is stored.
        with pytest.raises(flightsql.Error):
            cur.executemany("INSERT INTO t VALUES ($1, $2)", [(2, "b"), (None, "c"), (4, "d")])
        assert rows_of(cur, "SELECT id FROM t") == [{"id": 1}]
        # Column lists and multi-row parameter binds work, all rows in one statement.
        cur.executemany("INSERT INTO t (name, id) VALUES ($1, $2)", [("b", 2), ("c", 3)])
        assert cur.rowcount in (2, -1)
        cur.execute("INSERT INTO t (id) VALUES (4)")
        assert rows_of(cur, "SELECT id, name FROM t ORDER BY id") == [
            {"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}, {"id": 4, "name": None}]
        # DELETE / UPDATE stay unsupported (DataFusion's listing tables), with a clean error.
        for sql in ("DELETE FROM t WHERE id = 1", "UPDATE t SET name = 'z'"):
            with pytest.raises(flightsql.NotSupportedError):
                cur.execute(sql)
        cur.execute("CREATE VIEW v AS SELECT * FROM t")
        with pytest.raises(flightsql.Error):
            cur.execute("INSERT INTO v VALUES (9, 'v')")
    server.stop(kill=True)
    server.start()
    with connect(server.url) as conn, conn.cursor() as cur:
        assert [r["id"] for r in rows_of(cur, "SELECT id FROM t ORDER BY id")] == [1, 2, 3, 4]
    assert leftovers(server.data_dir) == []


def test_start_sweeps_temp_files_and_keeps_referenced_folders(server):
    with connect(server.url) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE kept AS SELECT value AS id FROM generate_series(1, 100)")
        cur.execute("INSERT INTO kept VALUES (101)")
    server.stop(kill=True)
    tables = server.data_dir / "tables"
    (folder,) = [c for c in tables.iterdir() if c.name.startswith("kept-")]
    (folder / ".part-0123456789ab.parquet.tmp").write_bytes(b"half a file")
    (folder / "part-x.parquet#1").write_bytes(b"object store staging")
    (tables / ".staging-kept-deadbeef0000").mkdir()
    (tables / ".staging-kept-deadbeef0000" / "part-00000.parquet").write_bytes(b"partial")
    (tables / ".staging-kept-0-part-1.parquet").write_bytes(b"partial append")
    (tables / "gone-0123456789ab").mkdir()
    (tables / "stray.tmp").write_bytes(b"?")
    server.start()
    assert leftovers(server.data_dir) == []
    assert sorted(c.name for c in tables.iterdir()) == [folder.name]
    with connect(server.url) as conn, conn.cursor() as cur:
        assert rows_of(cur, "SELECT count(*) AS n, max(id) AS m FROM kept") == [{"n": 101, "m": 101}]


# --- names, read-only external tables, CREATE TABLE (columns) AS, stored schemas ---------------

FOLDER = re.compile(r"[a-z0-9_]{1,40}-[0-9a-f]{12}")


def test_table_names_never_reach_the_file_system(server, tmp_path):
    # Names that were paths: '/', '..', staging prefixes, over 255 bytes, any case.
    names = ["a/b", "..", "../../outside/pwn", ".staging-x", "x" * 300, "Mixed Case é", "public.t"]
    with connect(server.url) as conn, conn.cursor() as cur:
        for i, name in enumerate(names):
            quoted = '"' + name + '"'
            cur.execute(f"CREATE TABLE {quoted} AS SELECT {i} AS a")
            cur.execute(f"INSERT INTO {quoted} VALUES ({i + 100})")
        # A streamed ingest whose name climbs out of the data directory through an
        # existing folder (the reproduction: a table named '.staging-k' made that folder).
        cur.adbc_ingest(".staging-k", ids_table([1]), mode="create")
        (folder,) = [c.name for c in (server.data_dir / "tables").iterdir() if "staging_k" in c.name]
        climbing = f"k-{folder.split('-')[-1]}/../../../outside/pwn"
        batches = (pa.record_batch({"id": pa.array(range(i * 10, i * 10 + 10), pa.int64())}) for i in range(3))
        cur.adbc_ingest(climbing, pa.RecordBatchReader.from_batches(ids_table([]).schema, batches), mode="create")
        for bad, words in ((f'"{"y" * 1100}"', "at most"), ('"a""b"', "double quote"),
                           ("other.t", "schema public"), ("t LIKE x", "unexpected 'LIKE'")):
            with pytest.raises(flightsql.ProgrammingError, match="INVALID_ARGUMENT") as info:
                cur.execute(f"CREATE TABLE {bad} AS SELECT 1 AS a" if "LIKE" not in bad else f"CREATE TABLE {bad}")
            assert words in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "data-server.log"]
    server.restart()
    with connect(server.url) as conn, conn.cursor() as cur:
        for i, name in enumerate(names):
            assert rows_of(cur, f'SELECT a FROM "{name}" ORDER BY a') == [{"a": i}, {"a": i + 100}]
        assert rows_of(cur, f'SELECT count(*) AS n FROM "{climbing}"') == [{"n": 30}]
        assert rows_of(cur, 'SELECT count(*) AS n FROM ".staging-k"') == [{"n": 1}]
        cur.execute('DROP TABLE "../../outside/pwn"')
    folders = [c.name for c in (server.data_dir / "tables").iterdir()]
    assert len(folders) == len(names) + 1 and all(FOLDER.fullmatch(f) for f in folders), folders
    assert leftovers(server.data_dir) == []


def test_old_folders_still_load_and_a_row_pointing_outside_is_refused(start_server, tmp_path):
    server = start_server()
    with connect(server.url) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE t AS SELECT 7 AS a")
    server.stop()
    tables = server.data_dir / "tables"
    (current,) = list(tables.iterdir())
    # Folders as older versions named them (`<name>-<id>`, the name verbatim), one of them
    # looking like staging, and a row whose folder lies outside tables/.
    old = {"Old Name": "Old Name-0123456789ab", ".staging-k": ".staging-k-0123456789ab",
           "evil": "../../outside-0123456789ab"}
    outside = tmp_path / "outside-0123456789ab"
    for folder in old.values():
        (tables / folder).mkdir(parents=True)
        shutil.copy(next(current.glob("*.parquet")), tables / folder / "part-00000.parquet")
    with sqlite3.connect(server.data_dir / "catalog.sqlite") as db:
        for seq, (name, folder) in enumerate(old.items(), start=10):
            db.execute("INSERT INTO planner_objects VALUES (?, 'table', ?, NULL, ?, '2024-01-01T00:00:00Z')",
                       (name, folder, seq))
    server.start()
    with connect(server.url) as conn, conn.cursor() as cur:
        assert rows_of(cur, 'SELECT a FROM "Old Name"') == [{"a": 7}]
        assert rows_of(cur, 'SELECT a FROM ".staging-k"') == [{"a": 7}]
        cur.execute('INSERT INTO ".staging-k" VALUES (8)')
        assert "evil" not in table_names(cur)
        cur.execute("DROP TABLE evil")  # its row goes; nothing outside tables/ is touched
    assert (outside / "part-00000.parquet").exists()
    server.restart()
    # The INSERT made ".staging-k" a new version, in a folder of today's form.
    kept = sorted(c.name for c in tables.iterdir())
    assert sorted(set(kept) - {current.name, old["Old Name"]}) == [
        f for f in kept if FOLDER.fullmatch(f) and f.startswith("staging_k-")], kept
    assert len(kept) == 3, kept
    with connect(server.url) as conn, conn.cursor() as cur:
        assert rows_of(cur, 'SELECT a FROM ".staging-k" ORDER BY a') == [{"a": 7}, {"a": 8}]
    assert leftovers(server.data_dir) == []  # the old-style staging-like folder went with its version


def test_external_tables_are_read_only(start_server, tmp_path):
    root = tmp_path / "ro"
    (root / "folder").mkdir(parents=True)
    (root / "single.csv").write_text("a,b\nx,y\n")
    (root / "folder" / "part.csv").write_text("a,b\nx,y\n")
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    server = start_server("--allow-path", str(root))
    with connect(server.url) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE EXTERNAL TABLE f STORED AS CSV LOCATION '{root}/folder/' "
                    "OPTIONS ('format.has_header' 'true')")
        cur.execute(f"CREATE UNBOUNDED EXTERNAL TABLE u (a VARCHAR, b VARCHAR) STORED AS CSV "
                    f"LOCATION '{root}/single.csv' OPTIONS ('format.has_header' 'true')")
        cur.execute("COPY (SELECT 1 AS a) TO 'exports/' STORED AS PARQUET")
        cur.execute("CREATE EXTERNAL TABLE mine STORED AS PARQUET LOCATION 'exports/'")
        cur.execute("CREATE TABLE t AS SELECT 1 AS a")
        cur.execute("CREATE VIEW v AS SELECT * FROM t")
        for sql in ("INSERT INTO f VALUES ('evil', 'evil')", "INSERT INTO u SELECT 'evil', 'bad'",
                    "INSERT INTO public.mine VALUES (2)", "INSERT INTO mine SELECT a FROM t"):
            with pytest.raises(flightsql.Error, match="PermissionDenied") as info:
                cur.execute(sql)
            assert "read-only" in str(info.value) and "CREATE TABLE" in str(info.value)
        with pytest.raises(flightsql.Error, match="view"):
            cur.execute("INSERT INTO v VALUES (2)")
        with pytest.raises(flightsql.Error, match="read-only"):
            cur.execute("INSERT INTO information_schema.tables SELECT * FROM information_schema.tables")
        with pytest.raises(flightsql.Error, match="read-only"):
            cur.execute("DELETE FROM mine")
        with pytest.raises(flightsql.NotSupportedError, match="append-only"):
            cur.execute("DELETE FROM t")
        assert rows_of(cur, "SELECT count(*) AS n FROM mine") == [{"n": 1}]
        cur.execute("CREATE TABLE copied AS SELECT * FROM f")  # the suggested way
        cur.execute("INSERT INTO copied VALUES ('z', 'z')")
        assert rows_of(cur, "SELECT count(*) AS n FROM copied") == [{"n": 2}]
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    assert len(list((server.data_dir / "exports").iterdir())) == 1


def test_create_table_with_columns_and_a_query_runs_in_the_engine(start_server):
    server = start_server("--statement-timeout", "1")
    with connect(server.url) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE src AS SELECT value AS v FROM generate_series(1, 5)")
        # The query sees the engine's tables (the old scratch context saw none) and its
        # columns take the declared names and types by position.
        cur.execute("CREATE TABLE x (a BIGINT NOT NULL, b VARCHAR) AS SELECT v, v * 2 FROM src")
        cur.execute("SELECT * FROM x ORDER BY a")
        result = cur.fetch_arrow_table()
        assert result.schema.names == ["a", "b"] and result.schema.field("b").type == pa.string()
        assert result.to_pylist()[-1] == {"a": 5, "b": "10"}
        cur.execute("CREATE TABLE vals (n INT) AS VALUES (1), (2)")
        assert rows_of(cur, "SELECT sum(n) AS s FROM vals") == [{"s": 3}]
        cur.execute("CREATE TABLE empty (a INT, b VARCHAR)")
        assert rows_of(cur, "SELECT count(*) AS n FROM empty") == [{"n": 0}]
        # The statement timeout applies (it ran unbounded in the scratch context).
        started = time.monotonic()
        with pytest.raises(flightsql.Error, match="DEADLINE_EXCEEDED|timeout"):
            cur.execute("CREATE TABLE slow (n BIGINT) AS SELECT count(*) FROM generate_series(1, 100000000000)")
        assert time.monotonic() - started < 10
        for sql, words in (("CREATE TABLE y (a BIGINT, b BIGINT) AS SELECT 1", "2 column(s) are declared"),
                           ("CREATE TABLE y (a BIGINT NOT NULL) AS SELECT NULL", "NOT NULL"),
                           ("CREATE TABLE y (a INT) AS SELECT 'nope'", "cannot store")):
            with pytest.raises(flightsql.ProgrammingError, match="INVALID_ARGUMENT") as info:
                cur.execute(sql)
            assert words in str(info.value)
        assert not {"slow", "y"} & table_names(cur)
    assert leftovers(server.data_dir) == []


def test_stored_schemas_are_plain_unique_and_exact(server):
    dictionary = pa.table({"d": pa.array(["x", "y", "x"]).dictionary_encode(), "n": [1, 2, 3]})
    pq.write_table(dictionary, server.data_dir / "dict.parquet")
    (server.data_dir / "dup.csv").write_text("a,a\n1,2\n")
    with connect(server.url) as conn, conn.cursor() as cur:
        # (a) dictionary columns are stored as their values, on every write path.
        cur.adbc_ingest("ingested", dictionary, mode="create")
        cur.adbc_ingest("ingested", dictionary.slice(0, 1), mode="append")
        cur.execute("COPY copied FROM 'dict.parquet'")
        cur.execute("CREATE TABLE ctas AS SELECT arrow_cast(d, 'Dictionary(Int32, Utf8)') AS d FROM copied")
        for table, n in (("ingested", 4), ("copied", 3), ("ctas", 3)):
            cur.execute(f"SELECT d FROM {table}")
            result = cur.fetch_arrow_table()
            assert result.schema.field("d").type == pa.string() and result.num_rows == n
        # (b) a quoted name keeps its case: created, appended to and read as written.
        cur.execute('CREATE TABLE "Mixed" AS SELECT 1 AS a')
        cur.execute('INSERT INTO "Mixed" VALUES (2)')
        cur.adbc_ingest("Mixed", ids_table([3]), mode="create")  # an ingest name folds like SQL
        assert rows_of(cur, 'SELECT a FROM "Mixed" ORDER BY a') == [{"a": 1}, {"a": 2}]
        assert rows_of(cur, "SELECT id FROM Mixed") == [{"id": 3}]
        # (c) duplicate column names are refused on every write path.
        duplicated = pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["a", "a"])
        for write in (lambda: cur.adbc_ingest("dup", duplicated, mode="create"),
                      lambda: cur.adbc_ingest("copied", duplicated, mode="append"),
                      lambda: cur.execute("COPY dup FROM 'dup.csv'"),
                      lambda: cur.execute("CREATE TABLE dup (a INT, a INT)")):
            with pytest.raises(flightsql.ProgrammingError, match="INVALID_ARGUMENT") as info:
                write()
            assert "more than once" in str(info.value) or "duplicate" in str(info.value)
        # (d) no columns: the ADBC driver sends no message at all, so the server never sees
        # the call (gRPC's 'Stream finished before first message sent'); nothing is made.
        with pytest.raises(flightsql.Error):
            cur.adbc_ingest("nothing", pa.table({}), mode="create")
        assert not {"dup", "nothing"} & table_names(cur)
    # A zero-column stream that does reach the server is INVALID_ARGUMENT.
    client = flight.connect(server.url)
    options = P.CommandStatementIngest.TableDefinitionOptions
    command = P.CommandStatementIngest(table="nothing", table_definition_options=options(
        if_not_exist=options.TABLE_NOT_EXIST_OPTION_CREATE, if_exists=options.TABLE_EXISTS_OPTION_FAIL))
    writer, reader = client.do_put(flight.FlightDescriptor.for_command(P.pack(command)), pa.schema([]))
    with pytest.raises(pa.ArrowException, match="INVALID_ARGUMENT.*no columns"):
        writer.done_writing()
        reader.read()
        writer.close()
    client.close()
    server.restart()
    with connect(server.url) as conn, conn.cursor() as cur:
        assert rows_of(cur, 'SELECT count(*) AS n FROM "Mixed"') == [{"n": 2}]
        assert rows_of(cur, "SELECT count(*) AS n FROM ingested") == [{"n": 4}]
