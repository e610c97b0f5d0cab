"""Query serving: a 1M-row table fetched as Arrow by the Python ADBC driver and by a raw
pyarrow.flight client, 1,000 point queries, 4 and 16 concurrent clients, and a 10M-row
fetch, from this server vs. a bare pyarrow.flight server vs. PostgreSQL and DuckDB, with
DataFusion in-process as the physical reference.

    python -m benchmarks.query_serving [--quick] [--rows N] [--repeats R] [--small N]
                                       [--big-rows N] [--clients 4,16]

Contenders (all queried from this process; every server runs in its own process):
- ``datafusion``: DataFusion in-process over the in-memory table (no serving at all);
- ``bare``: benchmarks/bare_flight_sql.py, a pyarrow.flight server holding the table in
  memory and speaking just enough Flight SQL for ADBC (the floor for a Python server);
- ``ours``: thanosql-server, table bulk-ingested with ``adbc_ingest`` (stored as Parquet);
- ``postgres``: a throwaway PostgreSQL cluster on loopback through adbc-driver-postgresql,
  the table bulk-ingested then given a primary key on ``id`` (what a team would do);
- ``duckdb``: DuckDB in this process (no serving: like ``datafusion``, a physical
  reference; no maintained Flight SQL server for DuckDB installs from PyPI here);
- ``raw``: the same bare and ours servers read with pyarrow.flight's own client (a
  prepared statement, then GetFlightInfo + DoGet per fetch): no ADBC in the way.
Concurrency: N threads, each with its own ADBC connection, fetch the whole table in
turn; aggregate rows per second, ours against bare. The 10M-row fetch runs last, on
fresh servers. Our server's memory (RSS) is read before and after the table is cached.

Rounds are interleaved (each repeat runs every contender once) so noise on the shared
machine hits all of them alike.
"""

from __future__ import annotations

import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from benchmarks import common as C

FULL_QUERY = "SELECT * FROM t"
POINT_QUERY = "SELECT * FROM t WHERE id = $1"


BATCH_ROWS = 65_536
DATAFUSION_BATCH_ROWS = 8_192  # datafusion.execution.batch_size's default
BARE = "bare pyarrow.flight"
BARE_8K = "bare, 8k-row batches"
OURS = "ours (thanosql-server)"
RAW_BARE = "bare, raw pyarrow.flight client"
RAW_OURS = "ours, raw pyarrow.flight client"
DUCK = "duckdb in-process"
PG = "postgresql"
DF = "datafusion in-process"
ENGINE = "ours: engine in-process"


def make_table(rows: int, seed: int = 0, batch_rows: int = BATCH_ROWS) -> pa.Table:
    """int64 id (0..rows-1), float64 value, utf8 name: about 30 bytes a row, in batches of
    ``batch_rows`` (the ADBC Flight SQL driver refuses to send a message over 16 MiB, so a
    1M-row table cannot be ingested as one batch)."""
    rng = np.random.default_rng(seed)
    ids = pa.array(np.arange(rows, dtype=np.int64))
    names = pc.binary_join_element_wise("name-", pc.cast(ids, pa.string()), "")
    table = pa.table({"id": ids, "value": pa.array(rng.random(rows)), "name": names})
    return pa.Table.from_batches(table.to_batches(max_chunksize=batch_rows))


class Contender:
    name = ""
    note = ""

    def fetch_all(self) -> pa.Table:
        raise NotImplementedError

    def point(self, key: int) -> pa.Table:
        raise NotImplementedError

    def close(self) -> None:
        pass


class DataFusionInProcess(Contender):
    name = DF
    note = "physical reference: no serving"

    def __init__(self, table: pa.Table):
        from datafusion import SessionContext
        self.ctx = SessionContext()
        self.ctx.register_record_batches("t", [table.to_batches()])

    def fetch_all(self):
        return self.ctx.sql(FULL_QUERY).to_arrow_table()

    def point(self, key):
        return self.ctx.sql(POINT_QUERY, param_values={"1": key}).to_arrow_table()


class EngineInProcess(Contender):
    """Our planner.Engine in this process, on its own data directory (the table ingested
    the same way): storage + SQL + our Python layers without Flight, gRPC or ADBC. With
    the bare server's time (the wire) it splits where our server's time goes."""
    name = ENGINE
    note = "our Engine in-process: Parquet + DataFusion + planner, no Flight"

    def __init__(self, table: pa.Table, data_dir: Path):
        from planner.engine import Engine
        from planner.plans import CancelToken
        self._cancel = CancelToken
        self.engine = Engine(data_dir)
        self.engine.ingest("t", table.to_reader(), "create")
        self.full_plan = self.engine.prepare(FULL_QUERY)
        self.point_plan = self.engine.prepare(POINT_QUERY)

    def fetch_all(self):
        # What a DoGet does per statement: prepare, execute, drain the reader.
        plan = self.engine.prepare(FULL_QUERY)
        return self.engine.execute_query(plan, None, self._cancel()).read_all()

    def point(self, key):
        params = pa.record_batch([pa.array([key], pa.int64())], names=["$1"])
        return self.engine.execute_query(self.point_plan, params, self._cancel()).read_all()


class DuckDbInProcess(Contender):
    name = DUCK
    note = "physical reference: no serving"

    def __init__(self, table: pa.Table):
        import duckdb
        self.con = duckdb.connect()
        self.con.register("source", table)
        self.con.execute("CREATE TABLE t AS SELECT * FROM source")  # DuckDB's own storage (zone maps)
        self.con.unregister("source")

    def fetch_all(self):
        return self.con.execute(FULL_QUERY).to_arrow_table()

    def point(self, key):
        return self.con.execute(POINT_QUERY.replace("$1", "?"), [key]).to_arrow_table()


class RawFlight(Contender):
    """pyarrow.flight's own client: one prepared statement, then GetFlightInfo + DoGet
    per fetch (what ADBC does, without ADBC's C++ layers in the way)."""

    def __init__(self, name: str, note: str, url: str):
        from pyarrow import flight
        from flight_server import protocol as P
        self.name, self.note, self._flight, self._P = name, note, flight, P
        self.client = flight.FlightClient(url)
        request = P.ActionCreatePreparedStatementRequest(query=FULL_QUERY)
        body = next(iter(self.client.do_action(flight.Action(P.CREATE_PREPARED_STATEMENT, P.pack(request)))))
        self.handle = P.unpack(body.body.to_pybytes()).prepared_statement_handle

    def fetch_all(self):
        P, flight = self._P, self._flight
        command = P.CommandPreparedStatementQuery(prepared_statement_handle=self.handle)
        info = self.client.get_flight_info(flight.FlightDescriptor.for_command(P.pack(command)))
        return self.client.do_get(info.endpoints[0].ticket).read_all()

    def point(self, key):
        return None  # the point queries are measured through ADBC

    def close(self):
        self.client.close()


class Adbc(Contender):
    """Any ADBC connection: one cursor for the full fetch, one for the point queries
    (so the driver re-binds its prepared statement, as an application would)."""

    def __init__(self, name: str, note: str, conn):
        self.name, self.note, self.conn = name, note, conn
        self.full = conn.cursor()
        self.points = conn.cursor()

    def fetch_all(self):
        self.full.execute(FULL_QUERY)
        return self.full.fetch_arrow_table()

    def point(self, key):
        self.points.execute(POINT_QUERY, parameters=(key,))
        return self.points.fetch_arrow_table()

    def close(self):
        for obj in (self.full, self.points, self.conn):
            try:
                obj.close()
            except Exception:
                pass


def start_bare(table_file: Path, batch_rows: int | None = None) -> tuple[subprocess.Popen, str]:
    extra = ["--batch-rows", str(batch_rows)] if batch_rows else []
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.bare_flight_sql", "--table", str(table_file),
                             *extra], stdout=subprocess.PIPE, cwd=C.REPO)
    line = proc.stdout.readline().decode()
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"bare Flight SQL server did not start: {line!r}")
    return proc, line.split("listening on", 1)[1].split()[0]


def run(args) -> dict:
    rows, repeats, small = args.rows, args.repeats, args.small
    C.log(f"query_serving: {rows:,} rows, {repeats} repeats, {small} point queries")
    table = make_table(rows)
    contenders: list[Contender] = []
    cleanups = []
    tmp = Path(tempfile.mkdtemp(prefix="thanosql-bench-qs-"))
    results: dict = {"rows": rows, "repeats": repeats, "point_queries": small,
                     "table_bytes": table.nbytes, "contenders": {}}
    try:
        contenders.append(DataFusionInProcess(table))
        try:
            contenders.append(DuckDbInProcess(table))
        except ImportError:  # the bench extra installs it
            C.log("DuckDB skipped (pip install -e '.[bench]')")
        contenders.append(EngineInProcess(table, tmp / "engine-data"))

        table_file = tmp / "t.arrow"
        with pa.OSFile(str(table_file), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        bare_proc, bare_url = start_bare(table_file)
        cleanups.append(lambda: (bare_proc.terminate(), bare_proc.wait(20)))
        contenders.append(Adbc(BARE, f"in-memory table in {BATCH_ROWS:,}-row batches (as ingested), no SQL",
                               C.connect(bare_url)))
        # The same floor sending DataFusion's default 8,192-row batches, as our server does:
        # separates the cost of batch size from the cost of storage and SQL.
        bare8k_proc, bare8k_url = start_bare(table_file, DATAFUSION_BATCH_ROWS)
        cleanups.append(lambda: (bare8k_proc.terminate(), bare8k_proc.wait(20)))
        contenders.append(Adbc(BARE_8K, "in-memory table in 8,192-row batches, no SQL", C.connect(bare8k_url)))

        server_ctx = C.our_server(tmp / "data")
        server = server_ctx.__enter__()
        cleanups.append(lambda: server_ctx.__exit__(None, None, None))
        results["ours_rss_started_bytes"] = rss(server.proc.pid)
        conn = C.connect(server.url)
        with conn.cursor() as cur:
            t0 = time.perf_counter()
            cur.adbc_ingest("t", table, mode="create")
            results["ours_ingest_s"] = time.perf_counter() - t0
        contenders.append(Adbc(OURS, "Parquet-backed table, cached in memory", conn))
        contenders.append(RawFlight(RAW_BARE, "bare server, pyarrow.flight client", bare_url))
        contenders.append(RawFlight(RAW_OURS, "our server, pyarrow.flight client", server.url))

        if args.no_postgres or (args.quick and not C.postgres_available()):
            C.log("PostgreSQL skipped" + ("" if args.no_postgres else " (not installed)"))
            results["postgres"] = "skipped"
        else:
            cluster = C.PostgresCluster().__enter__()
            cleanups.append(cluster.stop)
            pg = cluster.connect()
            with pg.cursor() as cur:
                t0 = time.perf_counter()
                cur.adbc_ingest("t", table, mode="create")
                cur.execute("ALTER TABLE t ADD PRIMARY KEY (id)")
                cur.execute("VACUUM ANALYZE t")
                results["postgres_ingest_s"] = time.perf_counter() - t0
                cur.execute("SELECT version()")
                results["postgres_version"] = cur.fetchone()[0]
            contenders.append(Adbc(PG, "primary key on id", pg))

        rng = random.Random(1)
        keys = [rng.randrange(rows) for _ in range(small)]
        # Warm-up (connections, caches, first-query planning), and a correctness check.
        for c in contenders:
            got = c.fetch_all()
            if got.num_rows != rows or got.column_names != table.column_names:
                raise AssertionError(f"{c.name}: got {got.num_rows} rows {got.column_names}")
            for k in keys[:5] or [0]:
                hit = c.point(k)
                if hit is None:
                    break
                if hit.num_rows != 1 or hit.column(0)[0].as_py() != k:
                    raise AssertionError(f"{c.name}: point query for {k} returned {hit.num_rows} rows")
            results["contenders"][c.name] = {"note": c.note, "batches_received": got.column(0).num_chunks,
                                             "schema": str(got.schema).replace("\n", "; ")}

        full = {c.name: [] for c in contenders}
        for r in range(repeats):
            for c in contenders:
                seconds, _ = C.timed(c.fetch_all)
                full[c.name].append(seconds)
            C.log(f"round {r + 1}/{repeats}: " + ", ".join(f"{n} {v[-1] * 1e3:.0f} ms" for n, v in full.items()))

        results["ours_rss_cached_bytes"] = rss(server.proc.pid)
        lat = {c.name: [] for c in contenders}
        pointed = [c for c in contenders if c.point(keys[0]) is not None]
        block = 50
        for start in range(0, small, block):
            for c in pointed:
                for k in keys[start:start + block]:
                    seconds, _ = C.timed(lambda: c.point(k))
                    lat[c.name].append(seconds)
        if args.profile:  # after the timed rounds, so the timings carry no profiler
            ours = next(c for c in contenders if c.name == OURS)
            results["profiles"] = {}
            out_dir = Path(args.results_dir or C.RESULTS_DIR) / "profiles"
            day = time.strftime("%Y-%m-%d")
            with C.py_spy(server.proc.pid, out_dir / f"query_serving-full-{day}.txt", rate=250) as prof:
                for _ in range(max(5, repeats)):
                    ours.fetch_all()
            results["profiles"][f"ours: {rows:,}-row fetch x{max(5, repeats)}"] = prof
            with C.py_spy(server.proc.pid, out_dir / f"query_serving-point-{day}.txt", rate=250) as prof:
                for k in keys[:300]:
                    ours.point(k)
            results["profiles"][f"ours: {min(300, small)} point queries"] = prof
        for c in contenders:
            entry = results["contenders"][c.name]
            entry["full_fetch_s"] = C.summarize(full[c.name])
            entry["full_fetch_samples_s"] = full[c.name]
            if lat[c.name]:
                entry["point_query_s"] = C.summarize(lat[c.name])
        results["concurrent"] = {}
        for clients in args.clients:
            rounds = max(2, 32 // clients) if not args.quick else 1
            results["concurrent"][clients] = {
                name: concurrent_fetch(url, clients, rounds, rows)
                for name, url in [(BARE, bare_url), (OURS, server.url)]}
            C.log(f"{clients} clients: " + ", ".join(
                f"{n} {v['rows_per_s'] / 1e6:.1f} M rows/s" for n, v in results["concurrent"][clients].items()))
        if args.big_rows:
            for c in contenders:
                c.close()
            contenders = []
            for cleanup in reversed(cleanups):
                cleanup()
            cleanups = []
            results["big"] = big_fetch(args, tmp)
    finally:
        for c in contenders:
            c.close()
        for cleanup in reversed(cleanups):
            try:
                cleanup()
            except Exception as exc:  # keep cleaning up
                C.log(f"cleanup failed: {exc}")
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def rss(pid: int) -> int:
    import psutil
    return psutil.Process(pid).memory_info().rss


def concurrent_fetch(url: str, clients: int, rounds: int, rows: int) -> dict:
    """`clients` threads, each with its own ADBC connection, fetch the whole table
    `rounds` times; the aggregate rate over the wall time of all of them."""
    import threading
    conns = [C.connect(url) for _ in range(clients)]
    for conn in conns:  # connected and warm before the clock starts
        with conn.cursor() as cur:
            cur.execute(FULL_QUERY)
            cur.fetch_arrow_table()
    failures: list[str] = []
    start = threading.Barrier(clients + 1)

    def client(conn):
        start.wait()
        try:
            with conn.cursor() as cur:
                for _ in range(rounds):
                    cur.execute(FULL_QUERY)
                    if cur.fetch_arrow_table().num_rows != rows:
                        failures.append("short read")
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(str(exc))

    threads = [threading.Thread(target=client, args=(conn,)) for conn in conns]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    for conn in conns:
        conn.close()
    if failures:
        raise AssertionError(f"concurrent fetch from {url}: {failures[:3]}")
    return {"clients": clients, "rounds": rounds, "wall_s": seconds,
            "rows_per_s": clients * rounds * rows / seconds}


def big_fetch(args, tmp: Path) -> dict:
    """The 10M-row fetch through ADBC: fresh bare and ours servers, the table ingested."""
    rows = args.big_rows
    table = make_table(rows, seed=2)
    table_file = tmp / "big.arrow"
    with pa.OSFile(str(table_file), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    out: dict = {"rows": rows, "table_bytes": table.nbytes, "fetch_s": {}}
    bare_proc, bare_url = start_bare(table_file)
    try:
        with C.our_server(tmp / "big-data") as server:
            with C.connect(server.url) as conn, conn.cursor() as cur:
                t0 = time.perf_counter()
                cur.adbc_ingest("t", table, mode="create")
                out["ours_ingest_s"] = time.perf_counter() - t0
            del table
            samples = {BARE: [], OURS: []}
            with C.connect(bare_url) as bare, C.connect(server.url) as ours:
                for name, conn in ((BARE, bare), (OURS, ours)):  # warm-up (and our cache load)
                    with conn.cursor() as cur:
                        cur.execute(FULL_QUERY)
                        if cur.fetch_arrow_table().num_rows != rows:
                            raise AssertionError(f"{name}: short 10M read")
                time.sleep(2)
                for r in range(args.big_repeats):
                    for name, conn in ((BARE, bare), (OURS, ours)):
                        with conn.cursor() as cur:
                            seconds, got = C.timed(lambda: (cur.execute(FULL_QUERY), cur.fetch_arrow_table())[1])
                            samples[name].append(seconds)
                            del got
                    C.log(f"{rows:,} rows round {r + 1}: " + ", ".join(f"{n} {v[-1]:.2f} s" for n, v in samples.items()))
            out["ours_rss_bytes"] = rss(server.proc.pid)
        out["fetch_s"] = {n: C.summarize(v) for n, v in samples.items()}
    finally:
        bare_proc.terminate()
        bare_proc.wait(20)
    return out


def report(results: dict) -> str:
    cs = results["contenders"]
    names = list(cs)
    ours, bare, pg = OURS, BARE, PG
    med = lambda n, k: cs[n][k]["median"] if n in cs and k in cs[n] else None
    conc = results.get("concurrent", {})

    def conc_ratio(clients):  # ours' time for the same work over bare's: 1/throughput
        c = conc.get(clients) or conc.get(str(clients))
        return C.ratio(c[BARE]["rows_per_s"], c[OURS]["rows_per_s"]) if c else None

    big = results.get("big") or {}
    ratios = {
        "full_ours_over_bare": C.ratio(med(ours, "full_fetch_s"), med(bare, "full_fetch_s")),
        "full_raw_ours_over_raw_bare": C.ratio(med(RAW_OURS, "full_fetch_s"), med(RAW_BARE, "full_fetch_s")),
        "full_postgres_over_ours": C.ratio(med(pg, "full_fetch_s"), med(ours, "full_fetch_s")),
        "full_ours_over_datafusion": C.ratio(med(ours, "full_fetch_s"), med(DF, "full_fetch_s")),
        "full_ours_over_duckdb": C.ratio(med(ours, "full_fetch_s"), med(DUCK, "full_fetch_s")),
        "full_ours_over_bare_8k": C.ratio(med(ours, "full_fetch_s"), med(BARE_8K, "full_fetch_s")),
        "full_engine_share": C.ratio(med(ENGINE, "full_fetch_s"), med(ours, "full_fetch_s")),
        "concurrent_4_ours_over_bare": conc_ratio(4),
        "concurrent_16_ours_over_bare": conc_ratio(16),
        "big_ours_over_bare": C.ratio(big["fetch_s"][OURS]["median"], big["fetch_s"][BARE]["median"])
        if big.get("fetch_s") else None,
        "point_p50_ours_over_bare": C.ratio(med(ours, "point_query_s"), med(bare, "point_query_s")),
        "point_p99_ours_over_bare": C.ratio(cs[ours]["point_query_s"]["p99"], cs[bare]["point_query_s"]["p99"]),
        "point_p50_postgres_over_ours": C.ratio(med(pg, "point_query_s"), med(ours, "point_query_s")),
    }
    results["ratios"] = ratios
    targets = [("full_ours_over_bare", "<=", 1.1), ("full_raw_ours_over_raw_bare", "<=", 1.2),
               ("concurrent_4_ours_over_bare", "<=", 1.3), ("point_p50_ours_over_bare", "<=", 1.5),
               ("full_postgres_over_ours", ">=", 8.0)]
    results["targets"] = {f"{k} {op} {v}": (None if ratios[k] is None else
                                            ratios[k] <= v if op == "<=" else ratios[k] >= v)
                          for k, op, v in targets}
    text = ""
    rows = []
    for n in names:
        s = cs[n]["full_fetch_s"]
        r_bare = C.ratio(s["median"], med(bare, "full_fetch_s"))
        r_ours = C.ratio(s["median"], med(ours, "full_fetch_s"))
        rows.append([n, C.fmt(s["median"], "ms"), C.fmt(s["min"], "ms"), C.fmt(s["max"], "ms"),
                     C.fmt(r_bare, "x"), C.fmt(r_ours, "x")])
    text += C.print_table(f"{results['rows']:,}-row fetch as Arrow (ms; {results['repeats']} repeats)",
                          ["contender", "median", "min", "max", "vs bare", "vs ours"], rows)
    rows = []
    for n in names:
        if "point_query_s" not in cs[n]:
            continue
        s = cs[n]["point_query_s"]
        rows.append([n, C.fmt(s["p50"], "ms"), C.fmt(s["p99"], "ms"), C.fmt(s["min"], "ms"), C.fmt(s["max"], "ms"),
                     C.fmt(C.ratio(s["p50"], med(ours, "point_query_s")), "x")])
    text += C.print_table(f"{results['point_queries']:,} point queries `{POINT_QUERY}` (ms per query)",
                          ["contender", "p50", "p99", "min", "max", "p50 vs ours"], rows)
    if conc:
        rows = []
        for clients, by in conc.items():
            rows.append([clients, by[BARE]["rounds"], C.fmt(by[BARE]["rows_per_s"] / 1e6, ""),
                         C.fmt(by[OURS]["rows_per_s"] / 1e6, ""),
                         C.fmt(C.ratio(by[BARE]["rows_per_s"], by[OURS]["rows_per_s"]), "x")])
        text += C.print_table("concurrent clients, each fetching the whole table (M rows/s, aggregate)",
                              ["clients", "fetches each", "bare", "ours", "ours' time / bare's"], rows)
    if big.get("fetch_s"):
        rows = [[n, C.fmt(v["median"], "s"), C.fmt(v["min"], "s"), C.fmt(v["max"], "s")]
                for n, v in big["fetch_s"].items()]
        text += C.print_table(f"{big['rows']:,}-row fetch through ADBC (s; ingest into ours "
                              f"{big.get('ours_ingest_s', 0):.1f} s)", ["contender", "median", "min", "max"], rows)
    mib = lambda b: f"{b / 2**20:,.0f} MiB" if b else "-"
    rows = [["table as Arrow", mib(results.get("table_bytes"))],
            ["our server after start", mib(results.get("ours_rss_started_bytes"))],
            ["our server with the table cached", mib(results.get("ours_rss_cached_bytes"))]]
    if big.get("ours_rss_bytes"):
        rows += [[f"{big['rows']:,}-row table as Arrow", mib(big.get("table_bytes"))],
                 ["our server with it cached", mib(big.get("ours_rss_bytes"))]]
    text += C.print_table("memory (RSS)", ["", "bytes"], rows)
    rows = [["ours / bare, ADBC (full fetch)", C.fmt(ratios["full_ours_over_bare"], "x"), "<= 1.10x"],
            ["ours / bare, raw pyarrow.flight client", C.fmt(ratios["full_raw_ours_over_raw_bare"], "x"), "<= 1.20x"],
            ["ours / bare, 4 clients (time for the same work)", C.fmt(ratios["concurrent_4_ours_over_bare"], "x"),
             "<= 1.30x"],
            ["ours / bare, 16 clients", C.fmt(ratios["concurrent_16_ours_over_bare"], "x"), ""],
            ["ours / bare, 10M rows", C.fmt(ratios["big_ours_over_bare"], "x"), ""],
            ["ours / bare (point p50)", C.fmt(ratios["point_p50_ours_over_bare"], "x"), "<= 1.50x"],
            ["ours / bare (point p99)", C.fmt(ratios["point_p99_ours_over_bare"], "x"), ""],
            ["postgres / ours (full fetch)", C.fmt(ratios["full_postgres_over_ours"], "x"), ">= 8.00x"],
            ["postgres / ours (point p50)", C.fmt(ratios["point_p50_postgres_over_ours"], "x"), ""],
            ["ours / bare with 8k-row batches (full fetch)", C.fmt(ratios["full_ours_over_bare_8k"], "x"), ""],
            ["ours / datafusion in-process (full fetch)", C.fmt(ratios["full_ours_over_datafusion"], "x"), ""],
            ["ours / duckdb in-process (full fetch)", C.fmt(ratios["full_ours_over_duckdb"], "x"), ""],
            ["ours' engine in-process / ours (full fetch)", C.fmt(ratios["full_engine_share"], "x"), ""]]
    text += C.print_table("ratios", ["ratio", "value", "target"], rows)
    for title, prof in results.get("profiles", {}).items():
        text += C.print_profile(f"server during {title}", prof)
    results["table_text"] = text
    return text


def main(argv=None) -> int:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=None, help="table rows (default 1,000,000; quick 20,000)")
    p.add_argument("--small", type=int, default=None, help="point queries (default 1,000; quick 20)")
    p.add_argument("--no-postgres", action="store_true", help="leave PostgreSQL out")
    p.add_argument("--big-rows", type=int, default=None,
                   help="rows of the large fetch (default 10,000,000; 0 leaves it out; quick: left out)")
    p.add_argument("--clients", default=None, help="concurrent client counts (default 4,16; quick 2)")
    p.add_argument("--profile", action="store_true",
                   help="after the timed rounds, py-spy our server during more fetches and point queries")
    args = p.parse_args(argv)
    args.rows = args.rows or (20_000 if args.quick else 1_000_000)
    args.repeats = args.repeats or (1 if args.quick else 20)
    args.small = args.small or (20 if args.quick else 1_000)
    args.big_rows = 0 if args.big_rows is None and args.quick else (args.big_rows or 10_000_000)
    args.big_repeats = 3
    args.clients = [int(n) for n in args.clients.split(",") if n] if args.clients else ([2] if args.quick else [4, 16])
    results = run(args)
    report(results)
    C.write_result("query_serving", results, args.results_dir, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
