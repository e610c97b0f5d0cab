"""Writes are atomic and durable (issue 8): every acknowledged row stays, no statement is
half visible, a crash or a full disk leaves nothing behind. Real server processes, the
real ADBC driver.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
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
