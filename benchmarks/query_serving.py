"""Query serving: a 1M-row table fetched as Arrow by the Python ADBC driver, and 1,000
point queries, from this server vs. a bare pyarrow.flight server vs. PostgreSQL, with
DataFusion in-process as the physical reference.

    python -m benchmarks.query_serving [--quick] [--rows N] [--repeats R] [--small N]

Contenders (all queried from this process; every server runs in its own process):
- ``datafusion``: DataFusion in-process over the in-memory table (no serving at all);
- ``bare``: benchmarks/bare_flight_sql.py, a pyarrow.flight server holding the table in
  memory and speaking just enough Flight SQL for ADBC (the floor for a Python server);
- ``ours``: thanosql-server, table bulk-ingested with ``adbc_ingest`` (stored as Parquet);
- ``postgres``: a throwaway PostgreSQL cluster on loopback through adbc-driver-postgresql,
  the table bulk-ingested then given a primary key on ``id`` (what a team would do).

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
        conn = C.connect(server.url)
        with conn.cursor() as cur:
            t0 = time.perf_counter()
            cur.adbc_ingest("t", table, mode="create")
            results["ours_ingest_s"] = time.perf_counter() - t0
        contenders.append(Adbc(OURS, "Parquet-backed table", conn))

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

        lat = {c.name: [] for c in contenders}
        block = 50
        for start in range(0, small, block):
            for c in contenders:
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
            entry["point_query_s"] = C.summarize(lat[c.name])
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


def report(results: dict) -> str:
    cs = results["contenders"]
    names = list(cs)
    ours, bare, pg = OURS, BARE, PG
    med = lambda n, k: cs[n][k]["median"] if n in cs else None
    ratios = {
        "full_ours_over_bare": C.ratio(med(ours, "full_fetch_s"), med(bare, "full_fetch_s")),
        "full_postgres_over_ours": C.ratio(med(pg, "full_fetch_s"), med(ours, "full_fetch_s")),
        "full_ours_over_datafusion": C.ratio(med(ours, "full_fetch_s"), med(DF, "full_fetch_s")),
        "full_ours_over_bare_8k": C.ratio(med(ours, "full_fetch_s"), med(BARE_8K, "full_fetch_s")),
        "full_engine_share": C.ratio(med(ENGINE, "full_fetch_s"), med(ours, "full_fetch_s")),
        "point_p50_ours_over_bare": C.ratio(med(ours, "point_query_s"), med(bare, "point_query_s")),
        "point_p99_ours_over_bare": C.ratio(cs[ours]["point_query_s"]["p99"], cs[bare]["point_query_s"]["p99"]),
        "point_p50_postgres_over_ours": C.ratio(med(pg, "point_query_s"), med(ours, "point_query_s")),
    }
    results["ratios"] = ratios
    results["targets"] = {
        "full_ours_over_bare <= 1.2": ratios["full_ours_over_bare"] is not None and ratios["full_ours_over_bare"] <= 1.2,
        "full_postgres_over_ours >= 5": (ratios["full_postgres_over_ours"] >= 5
                                         if ratios["full_postgres_over_ours"] is not None else None),
    }
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
        s = cs[n]["point_query_s"]
        rows.append([n, C.fmt(s["p50"], "ms"), C.fmt(s["p99"], "ms"), C.fmt(s["min"], "ms"), C.fmt(s["max"], "ms"),
                     C.fmt(C.ratio(s["p50"], med(ours, "point_query_s")), "x")])
    text += C.print_table(f"{results['point_queries']:,} point queries `{POINT_QUERY}` (ms per query)",
                          ["contender", "p50", "p99", "min", "max", "p50 vs ours"], rows)
    rows = [["ours / bare (full fetch)", C.fmt(ratios["full_ours_over_bare"], "x"), "<= 1.20x"],
            ["postgres / ours (full fetch)", C.fmt(ratios["full_postgres_over_ours"], "x"), ">= 5.00x"],
            ["ours / bare with 8k-row batches (full fetch)", C.fmt(ratios["full_ours_over_bare_8k"], "x"), ""],
            ["ours / datafusion in-process (full fetch)", C.fmt(ratios["full_ours_over_datafusion"], "x"), ""],
            ["ours' engine in-process / ours (full fetch)", C.fmt(ratios["full_engine_share"], "x"), ""],
            ["ours / bare (point p50)", C.fmt(ratios["point_p50_ours_over_bare"], "x"), ""],
            ["ours / bare (point p99)", C.fmt(ratios["point_p99_ours_over_bare"], "x"), ""],
            ["postgres / ours (point p50)", C.fmt(ratios["point_p50_postgres_over_ours"], "x"), ""]]
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
    p.add_argument("--profile", action="store_true",
                   help="after the timed rounds, py-spy our server during more fetches and point queries")
    args = p.parse_args(argv)
    args.rows = args.rows or (20_000 if args.quick else 1_000_000)
    args.repeats = args.repeats or (1 if args.quick else 20)
    args.small = args.small or (20 if args.quick else 1_000)
    results = run(args)
    report(results)
    C.write_result("query_serving", results, args.results_dir, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
