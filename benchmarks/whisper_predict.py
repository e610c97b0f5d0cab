"""Whisper PREDICT: our batched CTranslate2 decoding vs faster-whisper's ``WhisperModel.transcribe``
file by file, on the same weights and compute type, side by side in one run.

    python -m benchmarks.whisper_predict [--quick] [--models whisper_tiny_en,whisper_base]
                                         [--sets test,extra] [--batch-size 8]

Per model (the packaged weights GET THANOSQL MODEL registers) and for the shared test set
(librispeech_test + librispeech_extra: 151 files, 1,911 s):
- ``faster-whisper``: ``WhisperModel(dir, compute_type='int8').transcribe(path, beam_size=1,
  language='en')`` once per file, segments joined (what a user writes without us);
- ``ours batch_size=B``: ``PREDICT USING m OPTIONS (batch_size=B) AS SELECT * FROM files`` run by
  the engine in process (the server's code path without the network);
- ``ours batch_size=1``: the same, one file at a time: transcripts should equal faster-whisper's.
Throughput is audio seconds per wall second (model loading outside the timings: one untimed
warm-up each); WER is corpus WER after Whisper's EnglishTextNormalizer on both sides.
"""

from __future__ import annotations

import csv
import os
import tempfile
import time
from pathlib import Path

from benchmarks import common as C

SETS = {"test": "librispeech_test.csv", "extra": "librispeech_extra.csv"}


def _rows(data: Path, sets: list[str], quick: bool) -> list[tuple[str, str]]:
    rows = []
    for name in sets:
        with open(data / SETS[name], newline="", encoding="utf-8") as f:
            rows += [(str(data / r["audio"]), r["text"]) for r in csv.DictReader(f)]
    return rows[:6] if quick else rows


def main(argv=None) -> int:
    p = C.base_parser(__doc__.split("\n")[0])
    p.add_argument("--models", default="whisper_tiny_en,whisper_base")
    p.add_argument("--sets", default="test,extra")
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args(argv)
    import soundfile as sf
    from faster_whisper import WhisperModel

    from ml.metrics import wer
    from planner.engine import Engine

    data = C.SHARED_DATA
    rows = _rows(Path(data), args.sets.split(","), args.quick)
    paths, refs = [r[0] for r in rows], [r[1] for r in rows]
    audio_s = sum(sf.info(p).duration for p in paths)
    C.log(f"{len(rows)} files, {audio_s:.0f} s of audio")
    results, table = {}, []
    with tempfile.TemporaryDirectory(prefix="thanosql-bench-") as tmp:
        engine = Engine(Path(tmp) / "data", allowed_roots=[str(data)])

        def q(sql):
            plan = engine.prepare(sql)
            return engine.execute_update(plan) if plan.is_update else engine.execute_query(plan).read_all()

        csv_path = Path(tmp) / "data" / "files.csv"
        with open(csv_path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["audio", "text"])
            w.writerows(rows)
        q(f"COPY files FROM '{csv_path}'")
        for model in args.models.split(","):
            q(f"GET THANOSQL MODEL {model}")
            folder = engine.registry.model_dir(model)
            out = {}
            fw = WhisperModel(folder, device="cpu", compute_type="int8", cpu_threads=len(os.sched_getaffinity(0)))

            def faster_whisper():
                return ["".join(s.text for s in fw.transcribe(p, beam_size=1, language="en")[0]).strip()
                        for p in paths]

            def ours(bs):
                return q(f"PREDICT USING {model} OPTIONS (batch_size={bs}, language='en') "
                         "AS SELECT * FROM files").column("predict_result").to_pylist()

            fw.transcribe(paths[0], beam_size=1, language="en")  # warm-up
            ours(1) if args.quick else q(f"PREDICT USING {model} AS SELECT * FROM files LIMIT 1")
            for label, fn in (("faster-whisper, file by file", faster_whisper),
                              (f"ours: PREDICT batch_size={args.batch_size}", lambda: ours(args.batch_size)),
                              ("ours: PREDICT batch_size=1", lambda: ours(1))):
                C.log(f"{model}: {label}")
                started = time.perf_counter()
                texts = fn()
                seconds = time.perf_counter() - started
                out[label] = {"seconds": seconds, "audio_s_per_s": audio_s / seconds,
                              "wer": wer(refs, texts, normalizer="whisper"),
                              "texts": texts}
            base = out["faster-whisper, file by file"]
            for label, r in out.items():
                r["ratio_vs_faster_whisper"] = r["audio_s_per_s"] / base["audio_s_per_s"]
                r["identical_to_faster_whisper"] = sum(a == b for a, b in zip(r["texts"], base["texts"]))
                table.append([model, label, C.fmt(r["audio_s_per_s"]), C.fmt(r["ratio_vs_faster_whisper"], "x"),
                              C.fmt(r["wer"], "%"), f"{r['identical_to_faster_whisper']}/{len(paths)}"])
            diverging = [(p, a, b) for p, a, b in zip(paths, out["ours: PREDICT batch_size=1"]["texts"],
                                                      base["texts"]) if a != b]
            out["diverging_at_batch_size_1"] = [{"file": p, "ours": a, "faster_whisper": b} for p, a, b in diverging]
            results[model] = out
    C.print_table(f"Whisper PREDICT, {len(paths)} files ({audio_s:.0f} s), int8, beam 1, CPU",
                  ["model", "how", "audio-s/s", "vs faster-whisper", "WER (normalised)", "identical"], table)
    C.write_result("whisper_predict", {"files": len(paths), "audio_seconds": audio_s,
                                       "batch_size": args.batch_size, "results": results}, args.results_dir,
                   quick=args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
