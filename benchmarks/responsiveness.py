"""Responsiveness: latency of ``SELECT 1`` and of a 100k-row query from a second client
while a BUILD MODEL trains, vs. the same server idle.

    python -m benchmarks.responsiveness [--quick] [--small N] [--big N] [--size tiny|base]

Phases, one server: idle (before), training (a BUILD MODEL from another connection, past
its first optimizer step, so the worker is really computing), idle again (after the
training is cancelled: shows how much the machine's noise moved). In each phase the
measuring client interleaves ``SELECT 1`` and ``SELECT * FROM big`` (100,000 rows of int64,
float64, utf8 fetched as Arrow) back to back; each latency is execute + fetch_arrow_table.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks import common as C
from benchmarks.query_serving import make_table

SMALL = "SELECT 1"
BIG = "SELECT * FROM big"
PHASES = ("idle", "training", "idle after")


def measure(cur, n_small: int, n_big: int, still_ok=None, seconds: float = 0.0) -> dict:
    """Latencies of SELECT 1 and of the big query, interleaved n_small : n_big, until at
    least n_small and n_big were measured and at least ``seconds`` have passed."""
    lat = {SMALL: [], BIG: []}
    per_big = max(1, n_small // max(1, n_big))
    start = time.monotonic()
    while len(lat[SMALL]) < n_small or len(lat[BIG]) < n_big or time.monotonic() - start < seconds:
        for _ in range(per_big):
            t0 = time.perf_counter()
            cur.execute(SMALL)
            cur.fetch_arrow_table()
            lat[SMALL].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        cur.execute(BIG)
        cur.fetch_arrow_table()
        lat[BIG].append(time.perf_counter() - t0)
        if still_ok is not None:
            still_ok()
    return lat


class ServerCounters:
    """CPU time and run-queue wait of the server process itself (not its training worker)
    and this client's CPU time over a phase: if latency grows while the CPU time per query
    stays flat and the run-queue wait grows, the queries were waiting for a core."""

    def __init__(self, pid: int):
        import psutil
        self.server = psutil.Process(pid)
        self.client = psutil.Process()

    def _read(self):
        s_cpu, c_cpu = self.server.cpu_times(), self.client.cpu_times()
        worker = 0.0
        for proc in _training_workers(self.server.pid):
            try:
                t = proc.cpu_times()
                worker += t.user + t.system
            except Exception:
                pass
        return (s_cpu.user + s_cpu.system, _runqueue_wait(self.server.pid),
                c_cpu.user + c_cpu.system, time.monotonic(), worker)

    def __enter__(self):
        self.start = self._read()
        return self

    def __exit__(self, *exc):
        self.end = self._read()

    def report(self, queries: int) -> dict:
        d = [_wait_delta_s(a, b) if isinstance(a, dict) else b - a for a, b in zip(self.start, self.end)]
        return {"wall_s": d[3], "server_cpu_s": d[0], "server_cpu_share": d[0] / d[3] if d[3] else None,
                "server_cpu_ms_per_query": 1e3 * d[0] / queries if queries else None,
                "server_runqueue_wait_ms_per_query": 1e3 * d[1] / queries if queries else None,
                "client_cpu_share": d[2] / d[3] if d[3] else None,
                "worker_cpu_share": d[4] / d[3] if d[3] and d[4] > 0 else None}


def _runqueue_wait(pid: int) -> dict[str, int]:
    """Nanoseconds each live thread of ``pid`` spent runnable but waiting for a CPU
    (field 2 of /proc/PID/task/TID/schedstat), by thread id."""
    out = {}
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            out[stat.parent.name] = int(stat.read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return out


def _wait_delta_s(before: dict[str, int], after: dict[str, int]) -> float:
    """Run-queue wait accrued between two snapshots by the threads alive at the end (a
    lower bound: threads that ended in between are not counted)."""
    return sum(v - before.get(tid, 0) for tid, v in after.items()) / 1e9


def _phase(results, name, server_pid, fn):
    with ServerCounters(server_pid) as counters:
        lat = fn()
    results["phases"][name] = lat
    results.setdefault("counters", {})[name] = counters.report(sum(len(v) for v in lat.values()))


def run(args) -> dict:
    results: dict = {"loadavg_start": list(os.getloadavg()), "big_rows": args.rows,
                     "n_small": args.small, "n_big": args.big, "seconds_per_phase": args.seconds,
                     "phases": {}}
    tmp = Path(tempfile.mkdtemp(prefix="thanosql-bench-resp-"))
    try:
        ckpt = C.checkpoint(Path(args.cache_dir), args.size)
        with C.our_server(tmp / "data", "--allow-path", str(ckpt)) as server:  # base_model is confined
            conn = C.connect(server.url)
            cur = conn.cursor()
            cur.adbc_ingest("big", make_table(args.rows), mode="create")
            cur.execute(f"COPY train FROM '{C.SHARED_DATA / 'librispeech_train.csv'}'")
            limit = f" LIMIT {args.limit}" if args.limit else ""
            # Warm-up: connection, first plans, page cache.
            measure(cur, 10, 3)

            C.log("phase: idle")
            _phase(results, "idle", server.proc.pid, lambda: measure(cur, args.small, args.big, seconds=args.seconds))

            trainer_conn = C.connect(server.url)
            trainer_cur = trainer_conn.cursor()
            build_error: list = []
            build = (f"BUILD MODEL busy USING Wav2Vec2En OPTIONS (base_model='{ckpt}', epochs={args.epochs}, "
                     f"batch_size=8) AS SELECT * FROM train{limit}")

            def train():
                try:
                    trainer_cur.execute(build)
                    trainer_cur.fetch_arrow_table()
                except Exception as exc:  # noqa: BLE001 - cancelled at the end, as intended
                    build_error.append(str(exc))

            thread = threading.Thread(target=train, name="build-model", daemon=True)
            thread.start()
            started = time.monotonic()
            step = _wait_training(cur, started, timeout=args.start_timeout)
            results["training_started_after_s"] = time.monotonic() - started
            C.log(f"phase: training (step {step} reached after {results['training_started_after_s']:.1f} s)")
            if args.renice_worker is not None:  # an experiment from outside: the server is not changed
                for proc in _training_workers(server.proc.pid):
                    proc.nice(args.renice_worker)
                results["worker_reniced_to"] = args.renice_worker
            results["worker_nice"] = [p.nice() for p in _training_workers(server.proc.pid)]

            def still_training():
                if not thread.is_alive():
                    raise RuntimeError(f"BUILD MODEL ended during the measurement: {build_error or 'finished'}; "
                                       "raise --epochs")

            with C.PeakMemory(server.proc.pid) as mem:
                _phase(results, "training", server.proc.pid,
                       lambda: measure(cur, args.small, args.big, still_training, args.seconds))
            results["training_server_memory"] = mem.report()
            cur.execute("SELECT max(step) AS s FROM thanosql.training_info WHERE model = 'busy'")
            results["training_steps_during_measurement"] = (cur.fetch_arrow_table().column("s")[0].as_py() or 0) - step
            # A statement-level cancel (CancelFlightInfo); the connection-level adbc_cancel of
            # the Flight SQL driver does not reach a statement already streaming.
            t0 = time.monotonic()
            trainer_cur.adbc_cancel()
            thread.join(120)
            _wait_no_worker(server.proc.pid)
            results["cancel_took_s"] = time.monotonic() - t0
            C.log("phase: idle after")
            _phase(results, "idle after", server.proc.pid,
                   lambda: measure(cur, args.small, args.big, seconds=args.seconds))
            for obj in (trainer_cur, trainer_conn, cur, conn):
                try:
                    obj.close()
                except Exception:
                    pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for phase, lat in results["phases"].items():
        results["phases"][phase] = {q: {"stats": C.summarize(v), "samples_s": v} for q, v in lat.items()}
    return results


def _wait_training(cur, started: float, timeout: float) -> int:
    """Until the run has recorded its first optimizer step; returns that step."""
    while time.monotonic() - started < timeout:
        cur.execute("SELECT max(step) AS s FROM thanosql.training_info WHERE model = 'busy'")
        step = cur.fetch_arrow_table().column("s")[0].as_py()
        if step:
            return step
        time.sleep(0.5)
    raise RuntimeError(f"BUILD MODEL recorded no training step within {timeout:.0f} s")


def _training_workers(pid: int) -> list:
    """The server's spawned training processes (not multiprocessing's resource tracker)."""
    out = []
    for proc in C.process_tree(pid)[1:]:
        try:
            cmd = " ".join(proc.cmdline())
        except Exception:
            continue
        if "spawn_main" in cmd and "resource_tracker" not in cmd:
            out.append(proc)
    return out


def _wait_no_worker(pid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _training_workers(pid):
        time.sleep(0.2)


def report(results: dict) -> str:
    """Ratios are against both idle phases pooled (before and after the training), so a
    drift of the shared machine's load over the run does not pass for an effect."""
    rows = []
    ratios = {}
    for q in (SMALL, BIG):
        pooled = C.summarize(results["phases"]["idle"][q]["samples_s"] + results["phases"]["idle after"][q]["samples_s"])
        results.setdefault("idle_pooled", {})[q] = pooled
        label = q if q == SMALL else f"{q} ({results['big_rows']:,} rows)"
        for phase, s in [(p, results["phases"][p][q]["stats"]) for p in PHASES] + [("idle, pooled", pooled)]:
            r50, r99 = C.ratio(s["p50"], pooled["p50"]), C.ratio(s["p99"], pooled["p99"])
            if phase == "training":
                ratios[f"{q} [training/idle] p50"] = r50
                ratios[f"{q} [training/idle] p99"] = r99
            rows.append([label, phase, s["n"], C.fmt(s["p50"], "ms"), C.fmt(s["p99"], "ms"),
                         C.fmt(s["min"], "ms"), C.fmt(s["max"], "ms"), C.fmt(r50, "x"), C.fmt(r99, "x")])
    text = C.print_table("Latency from a second client while BUILD MODEL trains (ms)",
                         ["query", "phase", "n", "p50", "p99", "min", "max", "p50 vs idle (pooled)",
                          "p99 vs idle (pooled)"], rows)
    rows = [[phase, C.fmt(c["server_cpu_ms_per_query"]), C.fmt(c["server_cpu_share"], "%"),
             C.fmt(c["server_runqueue_wait_ms_per_query"]), C.fmt(c["client_cpu_share"], "%"),
             C.fmt(c["worker_cpu_share"], "%")]
            for phase, c in results.get("counters", {}).items()]
    text += C.print_table(f"Where the time goes: the server process (without its worker) per phase; "
                          f"training steps during the measurement: {results.get('training_steps_during_measurement')}",
                          ["phase", "server CPU ms / query", "server CPU share", "server waiting for a CPU, ms / query",
                           "client CPU share", "training worker CPU share"], rows)
    results["ratios"] = ratios
    results["targets"] = {f"{q}: p99 training/idle <= 2": (ratios[f"{q} [training/idle] p99"] or 99) <= 2.0
                          for q in (SMALL, BIG)}
    results["table_text"] = text
    return text


def main(argv=None) -> int:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=None, help="rows of the big query (default 100,000)")
    p.add_argument("--small", type=int, default=None, help="at least this many SELECT 1 per phase "
                   "(default 500; quick 20)")
    p.add_argument("--big", type=int, default=None, help="at least this many big queries per phase "
                   "(default 100; quick 5)")
    p.add_argument("--seconds", type=float, default=None, help="at least this long per phase (default 30; quick 0)")
    p.add_argument("--size", default="tiny", choices=["tiny", "base"], help="checkpoint that trains")
    p.add_argument("--epochs", type=int, default=None, help="epochs of the BUILD (long enough to outlast the "
                   "measurement; it is cancelled after)")
    p.add_argument("--limit", type=int, default=None, help="training rows (quick: 8)")
    p.add_argument("--start-timeout", type=float, default=300)
    p.add_argument("--renice-worker", type=int, default=None, metavar="N",
                   help="experiment: set the training worker's nice value to N once it trains "
                        "(the server's own is 5), to see what a lower priority would give")
    p.add_argument("--cache-dir", default=str(C.REPO / "benchmarks" / ".cache"))
    args = p.parse_args(argv)
    args.rows = args.rows or (10_000 if args.quick else 100_000)
    args.small = args.small or (20 if args.quick else 500)
    args.seconds = args.seconds if args.seconds is not None else (0.0 if args.quick else 30.0)
    args.big = args.big or (5 if args.quick else 100)
    args.limit = args.limit or (8 if args.quick else None)
    args.epochs = args.epochs or (500 if args.quick else 50)
    results = run(args)
    report(results)
    C.write_result("responsiveness", results, args.results_dir, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
