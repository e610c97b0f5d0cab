"""Ray scale-out: BUILD MODEL epoch time and PREDICT audio-seconds per second on a local Ray
instance (``--ray local``) with 1 worker (1 or 2 CPUs) and 2 workers vs. the local path, side by
side in one run.

    python -m benchmarks.ray_scaling [--quick] [--repeats R] [--train-rows N] [--predict-rows N]

Two real server processes on loopback, each with its own data directory, driven through the
ADBC Flight SQL driver: one without Ray (BUILD trains in a local worker process, PREDICT runs
in the server), one started with ``--ray local`` (BUILD is a Ray Train TorchTrainer job of
``num_workers`` DDP workers, PREDICT with ``num_workers`` an actor pool of that many model
replicas on Ray Data). They never measure at the same time: the local server is stopped
before the Ray one starts, so neither's idle processes share the cores with the other's work.

BUILD: a random-weight tiny Wav2Vec2 checkpoint (``make_random_checkpoint(size='tiny')``, the
only small size there is) on the N shortest training utterances, 2 epochs, same batch size,
learning rate, schedule and seed everywhere. Per run: the statement's wall time, the summary's
``seconds`` (the worker's train(), model load to save), the steps, and from
``thanosql.training_info`` (elapsed seconds at every optimizer step): the second epoch's time
(steady state: last step minus the last step of epoch 1) and the training loop's time (first
to last step, extrapolated by one mean step for the first one). Overhead = wall - loop:
what a statement costs beyond its training steps (process start, imports, Ray Train's
start-up, model load, saving and publishing). With 2 workers a step trains on 2 x batch_size
utterances, so an epoch has half the steps.

PREDICT: Whisper tiny.en (``GET THANOSQL MODEL whisper_tiny_en``, int8 on CPU, language 'en')
on the N first files of librispeech_test + librispeech_extra, same batch_size everywhere:
local (no num_workers), Ray num_workers=1 (1 CPU, or resources_per_worker={'CPU': 2}: a worker
computes with the CPUs it reserves), Ray num_workers=2. Per configuration: the first
1-row statement (cold: model load, Ray Data's first use), a second 1-row statement (the fixed
cost every statement pays: on Ray an actor pool is started and the model loaded per
statement), then R timed runs over the set (median reported); audio seconds from the files'
soundfile headers over wall seconds; transcripts compared row by row with the local ones.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common as C

TRAIN_CSV = "librispeech_train.csv"
PREDICT_CSVS = ("librispeech_test.csv", "librispeech_extra.csv")
LOCAL = "local"
RAY1 = "ray, num_workers=1"
RAY1_2CPU = "ray, num_workers=1, 2 CPUs"
RAY2 = "ray, num_workers=2"
WORKERS = {LOCAL: None, RAY1: 1, RAY1_2CPU: 1, RAY2: 2}
#: Each configuration's options: a worker computes with the CPUs it reserves (1 by default),
#: so one worker that reserves both cores is the fair comparison with the local process.
EXTRA = {LOCAL: "", RAY1: ", num_workers=1", RAY1_2CPU: ", num_workers=1, resources_per_worker={'CPU': 2}",
         RAY2: ", num_workers=2"}
CONFIG_TAG = {LOCAL: "local", RAY1: "ray1", RAY1_2CPU: "ray1cpu2", RAY2: "ray2"}


def _values(rows: list[tuple[str, str]]) -> str:
    q = lambda s: "'" + s.replace("'", "''") + "'"  # noqa: E731
    return ", ".join(f"({q(a)}, {q(t)})" for a, t in rows)


def _execute(cur, sql: str):
    cur.execute(sql)
    return cur.fetch_arrow_table()


def _durations(paths) -> dict[str, float]:
    import soundfile as sf
    out = {}
    for p in paths:
        info = sf.info(p)
        out[p] = info.frames / info.samplerate
    return out


# ----------------------------------------------------------------------------- BUILD

def _build(args, cur, server, ckpt: Path, config: str, r: int) -> dict:
    name = f"m_{CONFIG_TAG[config]}_{r}"
    extra = EXTRA[config]
    sql = (f"BUILD MODEL {name} USING Wav2Vec2En OPTIONS (base_model='{ckpt}', epochs={args.epochs}, "
           f"batch_size={args.batch_size}, learning_rate=1e-4, warmup_ratio=0.1, seed=42{extra}) "
           "AS SELECT * FROM train_rows")
    load = os.getloadavg()[0]
    with C.PeakMemory(server.proc.pid, pss_interval=1e9) as mem:
        t0 = time.perf_counter()
        row = _execute(cur, sql).to_pylist()[0]
        wall = time.perf_counter() - t0
    info = _execute(cur, f"SELECT step, epoch, elapsed_seconds, workers FROM thanosql.training_info "
                         f"WHERE model = '{name}' ORDER BY step").to_pylist()
    steps = len(info)
    first, last = info[0]["elapsed_seconds"], info[-1]["elapsed_seconds"]
    loop = (last - first) * steps / (steps - 1) if steps > 1 else None
    ends = [p for p in info if p["epoch"] is not None and abs(p["epoch"] - round(p["epoch"])) < 1e-6]
    epoch_times = [b["elapsed_seconds"] - a["elapsed_seconds"] for a, b in zip(ends, ends[1:])]
    out = {"round": r, "model": name, "wall_s": wall, "train_s": row.get("seconds"), "steps": row.get("steps"),
           "recorded_steps": steps, "workers": info[-1]["workers"], "train_loss": row.get("train_loss"),
           "first_to_last_step_s": last - first, "loop_s": loop,
           "last_epoch_s": epoch_times[-1] if epoch_times else None,
           "overhead_s": wall - loop if loop is not None else None,
           "outside_train_s": wall - row["seconds"] if row.get("seconds") is not None else None,
           "loadavg_1m_before": load, **mem.report()}
    C.log(f"  BUILD {config} round {r + 1}: wall {wall:.1f} s, train() {row.get('seconds')} s, "
          f"{steps} steps, last epoch {C.fmt(out['last_epoch_s'])} s, overhead {C.fmt(out['overhead_s'])} s, "
          f"CPU {mem.cpu_seconds:.0f} s (load before {load:.1f})")
    return out


# ----------------------------------------------------------------------------- PREDICT

def _predict(args, cur, config: str, limit: str = "") -> tuple[float, dict[str, str]]:
    extra = EXTRA[config]
    sql = (f"PREDICT USING whisper_tiny_en OPTIONS (batch_size={args.predict_batch_size}, language='en'{extra}) "
           f"AS SELECT * FROM predict_rows{limit}")
    t0 = time.perf_counter()
    table = _execute(cur, sql)
    wall = time.perf_counter() - t0
    return wall, dict(zip(table.column("audio").to_pylist(), table.column("predict_result").to_pylist()))


def _predict_config(args, cur, server, config: str, audio_s: float, results: dict) -> None:
    entry = results.setdefault(config, {"runs": []})
    entry["cold_1row_s"], _ = _predict(args, cur, config, " LIMIT 1")
    entry["warm_1row_s"], _ = _predict(args, cur, config, " LIMIT 1")
    C.log(f"  PREDICT {config}: 1 row cold {entry['cold_1row_s']:.1f} s, warm {entry['warm_1row_s']:.1f} s")


def _predict_round(args, cur, server, config: str, audio_s: float, results: dict, r: int) -> None:
    load = os.getloadavg()[0]
    with C.PeakMemory(server.proc.pid, pss_interval=1e9) as mem:
        wall, texts = _predict(args, cur, config)
    results[config]["runs"].append({"round": r, "wall_s": wall, "audio_s_per_s": audio_s / wall,
                                    "loadavg_1m_before": load, **mem.report()})
    results[config]["texts"] = texts
    results[config].setdefault("texts_per_run", []).append(texts)
    C.log(f"  PREDICT {config} round {r + 1}: {wall:.1f} s, {audio_s / wall:.1f} audio-s/s, "
          f"CPU {mem.cpu_seconds:.0f} s (load before {load:.1f})")


# ----------------------------------------------------------------------------- phases

def _phase(args, tmp: Path, label: str, server_args: list[str], configs: list[str], ckpt: Path,
           train_rows, predict_rows, audio_s: float, builds: dict, predicts: dict, timings: dict,
           leftover: list) -> None:
    t_start = time.perf_counter()
    with C.our_server(tmp / f"data-{label}", "--allow-path", str(ckpt.parent), *server_args) as server:
        timings[f"{label}: server start s"] = time.perf_counter() - t_start
        conn = C.connect(server.url)
        cur = conn.cursor()
        try:
            _execute(cur, "CREATE TABLE train_rows AS SELECT column1 AS audio, column2 AS text "
                          f"FROM (VALUES {_values(train_rows)})")
            _execute(cur, "CREATE TABLE predict_rows AS SELECT column1 AS audio, column2 AS text "
                          f"FROM (VALUES {_values(predict_rows)})")
            t0 = time.perf_counter()
            _execute(cur, "GET THANOSQL MODEL whisper_tiny_en")
            timings[f"{label}: GET THANOSQL MODEL s"] = time.perf_counter() - t0
            if not args.skip_build:
                for r in range(args.repeats):
                    for config in configs:
                        builds.setdefault(config, []).append(_build(args, cur, server, ckpt, config, r))
            if not args.skip_predict:
                for config in configs:
                    _predict_config(args, cur, server, config, audio_s, predicts)
                for r in range(args.repeats):
                    for config in configs:
                        _predict_round(args, cur, server, config, audio_s, predicts, r)
        finally:
            cur.close()
            conn.close()
        procs = _tree(server.proc.pid)
        timings[f"{label}: processes in the server's tree"] = len(procs)
        t_stop = time.perf_counter()
    timings[f"{label}: server stop s"] = time.perf_counter() - t_stop
    deadline = time.monotonic() + 30
    while _still_alive(procs) and time.monotonic() < deadline:
        time.sleep(0.5)
    leftover.extend(_still_alive(procs))


def _tree(pid: int) -> list:
    import psutil
    try:
        return C.process_tree(pid)
    except psutil.Error:
        return []


def _still_alive(procs: list) -> list[str]:
    """Those of ``procs`` (the server's process tree just before it stopped) still running."""
    import psutil
    left = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
        except psutil.Error:
            continue
    return left


def run(args) -> dict:
    t_run = time.perf_counter()
    ckpt = C.checkpoint(Path(args.cache_dir), "tiny")
    train_all = C.librispeech_rows(TRAIN_CSV)
    lengths = _durations([p for p, _ in train_all])
    train_rows = sorted(train_all, key=lambda r: (lengths[r[0]], r[0]))[:args.train_rows]
    predict_rows = [r for csv_name in PREDICT_CSVS for r in C.librispeech_rows(csv_name)][:args.predict_rows]
    predict_seconds = _durations([p for p, _ in predict_rows])
    audio_s = sum(predict_seconds.values())
    results: dict = {
        "loadavg_start": list(os.getloadavg()),
        "build": {"checkpoint": "random wav2vec2 tiny (ml.checkpoints.make_random_checkpoint size='tiny')",
                  "utterances": len(train_rows), "audio_seconds": sum(lengths[p] for p, _ in train_rows),
                  "epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": 1e-4, "seed": 42},
        "predict": {"model": "whisper_tiny_en", "files": len(predict_rows), "audio_seconds": audio_s,
                    "batch_size": args.predict_batch_size},
        "repeats": args.repeats, "cpus": len(os.sched_getaffinity(0)),
    }
    C.log(f"BUILD: {len(train_rows)} shortest training utterances ({results['build']['audio_seconds']:.0f} s), "
          f"{args.epochs} epochs, batch {args.batch_size}; PREDICT: {len(predict_rows)} files ({audio_s:.0f} s); "
          f"{args.repeats} repeat(s)")
    builds: dict = {}
    predicts: dict = {}
    timings: dict = {}
    leftover: list = []
    tmp = Path(tempfile.mkdtemp(prefix="thanosql-bench-ray-"))
    try:
        C.log("phase 1: server without Ray")
        _phase(args, tmp, "local", [], [LOCAL], ckpt, train_rows, predict_rows, audio_s, builds, predicts, timings,
               leftover)
        C.log("phase 2: server with --ray local")
        _phase(args, tmp, "ray", ["--ray", "local"], [RAY1, RAY1_2CPU, RAY2], ckpt, train_rows, predict_rows, audio_s,
               builds, predicts, timings, leftover)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results["leftover_processes"] = leftover
    if results["leftover_processes"]:
        C.log(f"WARNING: processes left running: {results['leftover_processes']}")
    results["timings"] = timings
    results["build"]["configs"] = {}
    for config, runs in builds.items():
        summary = {k: C.summarize([x[k] for x in runs if x[k] is not None])
                   for k in ("wall_s", "train_s", "last_epoch_s", "loop_s", "overhead_s", "outside_train_s",
                             "first_to_last_step_s", "cpu_s")}
        results["build"]["configs"][config] = {"runs": runs, **summary, "steps": runs[0]["steps"],
                                               "workers": runs[0]["workers"], "train_loss": runs[0]["train_loss"]}
    results["predict"]["configs"] = {}
    reference = (predicts.get(LOCAL) or {}).get("texts") or {}
    for config, entry in predicts.items():
        texts = entry.pop("texts")
        per_run = entry.pop("texts_per_run")
        results["predict"]["configs"][config] = {
            **entry, "wall_s": C.summarize([x["wall_s"] for x in entry["runs"]]),
            "audio_s_per_s": C.summarize([x["audio_s_per_s"] for x in entry["runs"]]),
            "differing_rows_vs_local": sum(texts.get(p) != reference.get(p) for p in predict_seconds)
            if reference else None,
            "differing_rows_between_runs": sum(len({run.get(p) for run in per_run}) > 1 for p in predict_seconds),
            "rows": len(texts)}
    results["run_seconds"] = time.perf_counter() - t_run
    return results


def report(results: dict) -> str:
    text = ""
    ratios: dict = {}
    b = results["build"]
    if b.get("configs"):
        base = b["configs"].get(LOCAL, {})
        rows = []
        for config, e in b["configs"].items():
            med = lambda k: (e.get(k) or {}).get("median")  # noqa: E731
            bmed = lambda k: (base.get(k) or {}).get("median")  # noqa: E731
            ratios[f"BUILD {config} / local (wall)"] = C.ratio(med("wall_s"), bmed("wall_s"))
            ratios[f"BUILD {config} / local (epoch)"] = C.ratio(med("last_epoch_s"), bmed("last_epoch_s"))
            rows.append([config, e["workers"], e["steps"], C.fmt(med("wall_s")),
                         f"{C.fmt(e['wall_s']['min'])}-{C.fmt(e['wall_s']['max'])}",
                         C.fmt(ratios[f"BUILD {config} / local (wall)"], "x"), C.fmt(med("train_s")),
                         C.fmt(med("last_epoch_s")), C.fmt(ratios[f"BUILD {config} / local (epoch)"], "x"),
                         C.fmt(med("loop_s")), C.fmt(med("overhead_s")), C.fmt(med("outside_train_s")),
                         C.fmt(med("cpu_s")), f"{max(x['peak_rss_mib'] for x in e['runs']):.0f}",
                         C.fmt(e["train_loss"])])
        text += C.print_table(
            f"BUILD MODEL, random wav2vec2 tiny, {b['utterances']} shortest train utterances "
            f"({b['audio_seconds']:.0f} s audio), {b['epochs']} epochs, batch_size {b['batch_size']} per worker, "
            f"seed 42; medians of {results['repeats']} run(s); {results['cpus']} CPUs",
            ["config", "workers", "steps", "wall s", "min-max", "wall vs local", "train() s", "epoch s (last)",
             "epoch vs local", "loop s", "overhead s (wall - loop)", "outside train() s", "CPU s", "peak RSS MiB", "loss"], rows)
    p = results["predict"]
    if p.get("configs"):
        base = p["configs"].get(LOCAL, {})
        rows = []
        for config, e in p["configs"].items():
            a = e["audio_s_per_s"]
            r = C.ratio(a.get("median"), (base.get("audio_s_per_s") or {}).get("median"))
            ratios[f"PREDICT {config} / local (audio-s/s)"] = r
            rows.append([config, C.fmt(e["cold_1row_s"]), C.fmt(e["warm_1row_s"]), C.fmt(e["wall_s"]["median"]),
                         C.fmt(a["median"]), f"{C.fmt(a['min'])}-{C.fmt(a['max'])}", C.fmt(r, "x"),
                         C.fmt((e["runs"][0].get("cpu_s"))), f"{max(x['peak_rss_mib'] for x in e['runs']):.0f}",
                         f"{e['differing_rows_vs_local']}/{e['rows']}" if e["differing_rows_vs_local"] is not None
                         else "-", e["differing_rows_between_runs"]])
        text += C.print_table(
            f"PREDICT whisper_tiny_en (int8, CPU), {p['files']} files ({p['audio_seconds']:.0f} s audio), "
            f"batch_size {p['batch_size']}; medians of {results['repeats']} run(s)",
            ["config", "1 row, cold s", "1 row, warm s", "wall s", "audio-s/s", "min-max", "vs local",
             "CPU s (run 1)", "peak RSS MiB", "rows differing from local", "rows differing between runs"], rows)
    results["ratios"] = ratios
    text += C.print_table("Servers: start, stop (s) and processes", ["what", "value"],
                          [[k, C.fmt(v)] for k, v in results.get("timings", {}).items()]
                          + [["whole run", C.fmt(results.get("run_seconds"))]])
    results["table_text"] = text
    return text


def main(argv=None) -> int:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--train-rows", type=int, default=None, help="shortest training utterances (default 32)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4, help="BUILD batch_size per worker (default 4)")
    p.add_argument("--predict-rows", type=int, default=None,
                   help="first N files of test + extra (default 40; all: 151)")
    p.add_argument("--predict-batch-size", type=int, default=8)
    p.add_argument("--skip-build", action="store_true")
    p.add_argument("--skip-predict", action="store_true")
    p.add_argument("--cache-dir", default=str(C.REPO / "benchmarks" / ".cache"))
    p.add_argument("--report", type=Path, default=None, metavar="JSON",
                   help="print the tables of a result file again (and refresh its table_text) instead of running")
    args = p.parse_args(argv)
    if args.report:
        import json
        doc = json.loads(args.report.read_text())
        report(doc)
        args.report.write_text(json.dumps(doc, indent=2) + "\n")
        return 0
    args.repeats = args.repeats or (1 if args.quick else 2)
    args.train_rows = args.train_rows or (8 if args.quick else 32)
    args.predict_rows = args.predict_rows or (4 if args.quick else 40)
    results = run(args)
    report(results)
    C.write_result("ray_scaling", results, args.results_dir, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
