"""BUILD MODEL: one epoch on the shared LibriSpeech train set through the server vs. the
plain reference script written with transformers' Trainer (benchmarks/reference_trainer.py),
same random-weight checkpoint, batch size, learning rate and schedule.

    python -m benchmarks.build_model [--quick] [--sizes tiny,base] [--repeats R] [--profile]

Both sides are timed end to end as a user sees them: the BUILD MODEL statement from
execute to its result row (reading the table, the spawned training process with its
imports, model load, audio decoding, the epoch, saving and registering the model), and
the reference script as a process (its imports, model load, audio decoding, the epoch,
saving). Each side's own figure is reported beside it ("own figure": the result row's
``seconds``, i.e. ml's train() from model load to save, and the Trainer's
``train_runtime``, the training loop only). CPU s is the CPU time the process tree used
(server + worker, or the script); CPU/wall near the number of cores means it had them,
well below means it waited (other load, or the worker's lower priority). Peak memory is
the summed RSS (and PSS, which counts shared pages once) of the server and its worker
processes vs. the script's process (RSS sampled every 0.2 s, PSS every 2 s). Rounds
alternate who goes first (``--order``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common as C

TRAIN_CSV = "librispeech_train.csv"
OURS = "ours: BUILD MODEL"
REF = "reference: Trainer script"


def run(args) -> dict:
    results: dict = {"loadavg_start": list(os.getloadavg()), "batch_size": args.batch_size,
                     "learning_rate": args.learning_rate, "epochs": 1, "sizes": {}}
    tmp = Path(tempfile.mkdtemp(prefix="thanosql-bench-build-"))
    profiles: dict = {}
    try:
        rows = C.librispeech_rows(TRAIN_CSV, args.limit)
        csv_path = C.SHARED_DATA / TRAIN_CSV
        results["utterances"] = len(rows)
        results["audio_seconds"] = C.audio_seconds(p for p, _ in rows)
        # base_model must lie in a folder the server allows (the checkpoint cache)
        with C.our_server(tmp / "data", "--allow-path", str(args.cache_dir)) as server:
            conn = C.connect(server.url)
            cur = conn.cursor()
            cur.execute(f"COPY train FROM '{csv_path}'")
            limit = f" LIMIT {args.limit}" if args.limit else ""
            for size in args.sizes:
                ckpt = C.checkpoint(Path(args.cache_dir), size)
                repeats = args.repeats if size == "tiny" else args.base_repeats
                C.log(f"{size}: {len(rows)} utterances ({results['audio_seconds']:.0f} s of audio), "
                      f"batch {args.batch_size}, lr {args.learning_rate}, {repeats} repeat(s)")
                entry: dict = {"checkpoint": str(ckpt), "contenders": {OURS: [], REF: []}}
                for r in range(repeats):
                    profile_this = args.profile and r == 0
                    reference_first = (args.order == "reference-first"
                                       or (args.order == "alternate" and r % 2 == 1))
                    steps = [_ref_round, _ours_round] if reference_first else [_ours_round, _ref_round]
                    for step in steps:
                        step(args, size, r, ckpt, csv_path, limit, server, cur, entry, profiles, tmp, profile_this)
                for name, runs in entry["contenders"].items():
                    entry[name] = {
                        "wall_s": C.summarize([x["wall_s"] for x in runs]),
                        "inner_s": C.summarize([x["inner_s"] for x in runs]),
                        "peak_rss_mib": max(x["peak_rss_mib"] for x in runs),
                        "peak_pss_mib": max((x["peak_pss_mib"] or 0) for x in runs) or None,
                        "cpu_s": C.summarize([x["cpu_s"] for x in runs]),
                        "cpu_per_wall": C.summarize([x["cpu_per_wall"] or 0 for x in runs]),
                        "steps": runs[0]["steps"],
                        "train_loss": runs[0]["train_loss"],
                    }
                results["sizes"][size] = entry
            cur.close()
            conn.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results["profiles"] = profiles
    return results


def _ours_round(args, size, r, ckpt, csv_path, limit, server, cur, entry, profiles, tmp, profile_this):
    idle = C.PeakMemory(server.proc.pid).sample(with_pss=False)
    sql = (f"BUILD MODEL m_{size} USING Wav2Vec2En OPTIONS (base_model='{ckpt}', epochs=1, "
           f"batch_size={args.batch_size}, learning_rate={args.learning_rate}, "
           f"warmup_ratio=0.1, seed=42, overwrite=True) AS SELECT * FROM train{limit}")
    prof_out = tmp / f"build-{size}-ours.txt" if profile_this else None
    load = os.getloadavg()[0]
    with C.PeakMemory(server.proc.pid) as mem, \
            C.py_spy(server.proc.pid if profile_this else None, prof_out, rate=25) as prof:
        t0 = time.perf_counter()
        cur.execute(sql)
        row = cur.fetch_arrow_table().to_pylist()[0]
        wall = time.perf_counter() - t0
    if prof:
        profiles[f"{size}: {OURS}"] = _keep(prof, args, f"build-{size}-ours")
    entry["contenders"][OURS].append({
        "round": r, "wall_s": wall, "inner_s": row["seconds"], "steps": row["steps"],
        "train_loss": row["train_loss"], "idle_rss_mib": round(idle[0] / 2 ** 20, 1),
        "loadavg_1m_before": load, **mem.report()})
    C.log(f"  {size} round {r + 1}: ours {wall:.1f} s, CPU {mem.cpu_seconds:.0f} s, "
          f"peak RSS {mem.peak_rss / 2 ** 20:.0f} MiB (load before {load:.1f})")


def _ref_round(args, size, r, ckpt, csv_path, limit, server, cur, entry, profiles, tmp, profile_this):
    out_dir = tmp / f"ref-{size}-{r}"
    result_file = tmp / f"ref-{size}-{r}.json"
    cmd = [sys.executable, "-m", "benchmarks.reference_trainer", "--model", str(ckpt),
           "--csv", str(csv_path), "--out", str(out_dir), "--epochs", "1",
           "--batch-size", str(args.batch_size), "--learning-rate", str(args.learning_rate),
           "--result", str(result_file)]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=C.REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    prof_out = tmp / f"build-{size}-ref.txt" if profile_this else None
    with C.PeakMemory(proc.pid) as mem, C.py_spy(proc.pid if profile_this else None, prof_out, rate=25,
                                                 subprocesses=False) as prof:
        _, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"reference script failed:\n{err.decode(errors='replace')[-3000:]}")
    if prof:
        profiles[f"{size}: {REF}"] = _keep(prof, args, f"build-{size}-ref")
    ref = json.loads(result_file.read_text())
    entry["contenders"][REF].append({
        "round": r, "wall_s": wall, "inner_s": ref["train_runtime"], "steps": ref["steps"],
        "train_loss": ref["final_loss"], "script": ref, "loadavg_1m_before": load, **mem.report()})
    shutil.rmtree(out_dir, ignore_errors=True)
    C.log(f"  {size} round {r + 1}: reference {wall:.1f} s, CPU {mem.cpu_seconds:.0f} s, "
          f"peak RSS {mem.peak_rss / 2 ** 20:.0f} MiB (load before {load:.1f})")


def _keep(prof: dict, args, label: str) -> dict:
    if prof.get("profile"):
        dest_dir = Path(args.results_dir or C.RESULTS_DIR) / "profiles"
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / f"{label}-{time.strftime('%Y-%m-%d')}.txt"
        shutil.copy(prof["profile"], dest)
        prof["profile"] = str(dest)
    return prof


def report(results: dict) -> str:
    rows = []
    ratios = {}
    for size, entry in results["sizes"].items():
        ref_wall = entry[REF]["wall_s"]["median"]
        ref_mem = entry[REF]["peak_rss_mib"]
        # Per round, ours / the reference run right after it: robust to load drifting between rounds.
        paired = C.summarize([o["wall_s"] / r["wall_s"] for o, r in zip(entry["contenders"][OURS],
                                                                         entry["contenders"][REF])])
        entry["paired_ratio"] = paired
        for name in (OURS, REF):
            e = entry[name]
            w = e["wall_s"]
            r = C.ratio(w["median"], ref_wall)
            if name == OURS:
                ratios[f"{size}: ours / reference (s per epoch)"] = r
                ratios[f"{size}: ours / reference (s per epoch, per-round median)"] = paired["median"]
                ratios[f"{size}: ours / reference (peak RSS)"] = C.ratio(e["peak_rss_mib"], ref_mem)
            pr = (f"{C.fmt(paired['median'], 'x')} ({C.fmt(paired['min'], 'x')}-{C.fmt(paired['max'], 'x')})"
                  if name == OURS else "-")
            rows.append([size, name, C.fmt(w["median"]), C.fmt(w["min"]), C.fmt(w["max"]), C.fmt(r, "x"), pr,
                         C.fmt(e["inner_s"]["median"]), e["steps"], C.fmt(e["train_loss"]),
                         f"{e['peak_rss_mib']:.0f}", f"{e['peak_pss_mib']:.0f}" if e["peak_pss_mib"] else "-",
                         C.fmt((e.get("cpu_s") or {}).get("median")),
                         C.fmt((e.get("cpu_per_wall") or {}).get("median"))])
    text = C.print_table(
        f"BUILD MODEL vs Trainer script: 1 epoch, {results['utterances']} utterances "
        f"({results['audio_seconds']:.0f} s audio), batch {results['batch_size']}, lr {results['learning_rate']}",
        ["model", "contender", "s/epoch median", "min", "max", "vs reference", "per-round ratio, median (min-max)",
         "own figure s", "steps", "loss", "peak RSS MiB", "peak PSS MiB", "CPU s", "CPU/wall"], rows)
    results["ratios"] = ratios
    results["targets"] = {
        f"{size}: ours <= reference per epoch (per-round median)":
            (ratios[f"{size}: ours / reference (s per epoch, per-round median)"] or 99) <= 1.0
        for size in results["sizes"]}
    for title, prof in results.get("profiles", {}).items():
        text += C.print_profile(title, prof)
    results["table_text"] = text
    return text


def main(argv=None) -> int:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", default=None, help="comma-separated checkpoints: tiny,base (default tiny)")
    p.add_argument("--base-repeats", type=int, default=1, help="repeats for the base model (default 1)")
    p.add_argument("--batch-size", type=int, default=None, help="default 8 (quick: 4)")
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--limit", type=int, default=None, help="first N training rows (quick: 4)")
    p.add_argument("--cache-dir", default=str(C.REPO / "benchmarks" / ".cache"))
    p.add_argument("--profile", action="store_true", help="py-spy both sides during the first round")
    p.add_argument("--order", default="alternate", choices=["alternate", "ours-first", "reference-first"],
                   help="who goes first in a round (default: ours in odd rounds, the reference in even ones)")
    args = p.parse_args(argv)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.sizes = [s for s in (args.sizes or "tiny").split(",") if s]
    args.limit = args.limit or (4 if args.quick else None)
    args.batch_size = args.batch_size or (4 if args.quick else 8)
    results = run(args)
    report(results)
    C.write_result("build_model", results, args.results_dir, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
