"""PREDICT: transcribing the shared LibriSpeech test and extra sets through the server vs.
transformers' ASR pipeline run file by file in-process, on the same random-weight
wav2vec2-base checkpoint (speed does not depend on the weights).

    python -m benchmarks.predict [--quick] [--repeats R] [--extra-repeats R] [--profile]

Contenders, per set:
- ``pipeline``: ``pipeline("automatic-speech-recognition", model=DIR)`` called once per
  file on ``{"raw": samples, "sampling_rate": rate}`` (files read with soundfile inside
  the timed loop: ffmpeg, which the pipeline needs for file names, is not installed),
  what a user would write without us;
- ``ours default``: ``PREDICT USING m AS SELECT * FROM <set>`` (default options);
- ``ours batch_size=1``: ``PREDICT USING m OPTIONS (batch_size=1) AS ...``.
The model is registered once with a zero-step BUILD MODEL (``max_steps`` can't be 0, so:
one step at a learning rate of 1e-12 on one utterance, which leaves the weights as they
are to float precision; the pipeline then runs on the registered model's own folder, so
both sides load the very same files). Model loading is outside the timings for both
(one untimed warm-up each). Throughput is audio seconds per wall second; divergence is
the CER between the two transcripts of each file (case-folded; the "clean" variant also
drops the tokenizer's special tokens, which the pipeline prints and PREDICT drops).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common as C

SETS = {"test": "librispeech_test.csv", "extra": "librispeech_extra.csv"}
PIPELINE = "pipeline, file by file"
OURS_DEFAULT = "ours: PREDICT (default options)"
OURS_BS1 = "ours: PREDICT batch_size=1"
_SPECIALS = re.compile(r"<pad>|<s>|</s>|<unk>")


def _norm(text: str | None, drop_specials: bool) -> str:
    text = (text or "").lower()
    if drop_specials:
        text = _SPECIALS.sub("", text)
    return " ".join(text.split())


def divergence(reference: list[str], other: list[str]) -> dict:
    """CER of ``other`` against ``reference`` (aggregate over files) and identical count."""
    import jiwer
    out = {}
    for key, drop in (("raw", False), ("clean", True)):
        refs = [_norm(r, drop) for r in reference]
        hyps = [_norm(h, drop) for h in other]
        pairs = [(r, h) for r, h in zip(refs, hyps) if r]
        cer = jiwer.cer([r for r, _ in pairs], [h for _, h in pairs]) if pairs else None
        out[f"cer_{key}"] = cer
        out[f"identical_{key}"] = sum(r == h for r, h in zip(refs, hyps))
    out["files"] = len(reference)
    return out


class Pipeline:
    def __init__(self, model_dir: str):
        from transformers import pipeline
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity_error()
        self.asr = pipeline("automatic-speech-recognition", model=model_dir)

    def transcribe(self, paths: list[str]) -> list[str]:
        import soundfile as sf
        out = []
        for p in paths:
            audio, rate = sf.read(p, dtype="float32")
            out.append(self.asr({"raw": audio, "sampling_rate": rate})["text"])
        return out


def run(args) -> dict:
    results: dict = {"loadavg_start": list(os.getloadavg()), "sets": {}}
    cache = Path(args.cache_dir)
    ckpt = C.checkpoint(cache, args.size)
    results["checkpoint"] = {"size": args.size, "path": str(ckpt)}
    tmp = Path(tempfile.mkdtemp(prefix="thanosql-bench-predict-"))
    profiles: dict = {}
    try:
        with C.our_server(tmp / "data", "--allow-path", str(ckpt)) as server:  # base_model is confined
            conn = C.connect(server.url)
            cur = conn.cursor()
            for name, csv_name in SETS.items():
                if name in args.sets:
                    cur.execute(f"COPY {name} FROM '{C.SHARED_DATA / csv_name}'")
            # Register the checkpoint as model m: one step at lr 1e-12 keeps its weights.
            first = next(iter(args.sets))
            t0 = time.perf_counter()
            cur.execute(f"BUILD MODEL m USING Wav2Vec2En OPTIONS (base_model='{ckpt}', epochs=1, "
                        f"max_steps=1, batch_size=1, learning_rate=1e-12, warmup_ratio=0.0) "
                        f"AS SELECT * FROM {first} LIMIT 1")
            cur.fetch_arrow_table()
            results["register_model_s"] = time.perf_counter() - t0
            model_dir = _model_dir(tmp / "data", "m")
            results["model_dir"] = str(model_dir)
            pipe = Pipeline(str(model_dir))

            for name in args.sets:
                limit = f" LIMIT {args.limit}" if args.limit else ""
                cur.execute(f"SELECT audio FROM {name}{limit}")
                paths = cur.fetch_arrow_table().column("audio").to_pylist()
                seconds_audio = C.audio_seconds(paths)
                repeats = args.repeats if name == "test" else args.extra_repeats
                C.log(f"{name}: {len(paths)} files, {seconds_audio:.0f} s of audio, {repeats} repeat(s)")
                # Warm-up: loads the model into the server's transcriber cache; first pipeline call.
                _predict(cur, name, " LIMIT 1", 1)
                pipe.transcribe(paths[:1])

                walls = {PIPELINE: [], OURS_DEFAULT: [], OURS_BS1: []}
                texts: dict = {}
                for r in range(repeats):
                    profile_this = args.profile and r == 0
                    seconds, texts[PIPELINE] = C.timed(lambda: pipe.transcribe(paths))
                    walls[PIPELINE].append(seconds)
                    C.log(f"  {name} round {r + 1}: pipeline {seconds:.1f} s")
                    out = tmp / f"predict-{name}-default.txt" if profile_this else None
                    with C.py_spy(server.proc.pid if profile_this else None, out, rate=25) as prof:
                        seconds, got = C.timed(lambda: _predict(cur, name, limit, None))
                    if prof:
                        profiles[f"{name}: {OURS_DEFAULT}"] = _keep_profile(prof, args, name, "default")
                    walls[OURS_DEFAULT].append(seconds)
                    texts[OURS_DEFAULT] = _in_order(got, paths)
                    C.log(f"  {name} round {r + 1}: ours default {seconds:.1f} s")
                    seconds, got = C.timed(lambda: _predict(cur, name, limit, 1))
                    walls[OURS_BS1].append(seconds)
                    texts[OURS_BS1] = _in_order(got, paths)
                    C.log(f"  {name} round {r + 1}: ours batch_size=1 {seconds:.1f} s")
                entry = {"files": len(paths), "audio_seconds": seconds_audio, "contenders": {}}
                for contender, values in walls.items():
                    entry["contenders"][contender] = {
                        "wall_s": C.summarize(values),
                        "wall_samples_s": values,
                        # Per round, pipeline time / this time: robust to load drifting between rounds.
                        "paired_speedup": C.summarize([p / v for p, v in zip(walls[PIPELINE], values)]),
                        "audio_s_per_s": C.summarize([seconds_audio / v for v in values]),
                        "divergence_vs_pipeline": (divergence(texts[PIPELINE], texts[contender])
                                                   if contender != PIPELINE else None),
                    }
                entry["first_file"] = {"path": paths[0], **{c: (t[0] or "")[:160] for c, t in texts.items()}}
                results["sets"][name] = entry
            cur.close()
            conn.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results["profiles"] = profiles
    return results


def _keep_profile(prof: dict, args, name: str, label: str) -> dict:
    if prof.get("profile"):
        dest_dir = Path(args.results_dir or C.RESULTS_DIR) / "profiles"
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / f"predict-{name}-{label}-{time.strftime('%Y-%m-%d')}.txt"
        shutil.copy(prof["profile"], dest)
        prof["profile"] = str(dest)
    return prof


def _model_dir(data_dir: Path, name: str) -> Path:
    """The newest version folder of model ``name`` (data_dir/models/<name>/v<N>)."""
    versions = sorted((data_dir / "models" / name).glob("v*"),
                      key=lambda p: int(p.name[1:]) if p.name[1:].isdigit() else -1)
    if not versions:
        raise RuntimeError(f"no version folder for model {name} under {data_dir / 'models'}")
    return versions[-1]


def _predict(cur, table: str, limit: str, batch_size: int | None):
    opts = f" OPTIONS (batch_size={batch_size})" if batch_size else ""
    cur.execute(f"PREDICT USING m{opts} AS SELECT * FROM {table}{limit}")
    return cur.fetch_arrow_table()


def _in_order(result, paths: list[str]) -> list[str]:
    by_path = dict(zip(result.column("audio").to_pylist(), result.column("predict_result").to_pylist()))
    return [by_path.get(p) for p in paths]


def report(results: dict) -> str:
    text = ""
    rows = []
    ratios = {}
    for name, entry in results["sets"].items():
        cs = entry["contenders"]
        base = cs[PIPELINE]["audio_s_per_s"]["median"]
        for contender, c in cs.items():
            a = c["audio_s_per_s"]
            r = C.ratio(a["median"], base)
            ratios[f"{name}: {contender}"] = r
            d = c["divergence_vs_pipeline"] or {}
            paired = c.get("paired_speedup") or {}
            ratios[f"{name}: {contender} (paired rounds)"] = paired.get("median")
            rows.append([name, contender, f"{entry['audio_seconds']:.0f}", C.fmt(c["wall_s"]["median"]),
                         C.fmt(a["median"]), C.fmt(a["min"]), C.fmt(a["max"]), C.fmt(r, "x"),
                         f"{C.fmt(paired.get('median'), 'x')} ({C.fmt(paired.get('min'), 'x')}-"
                         f"{C.fmt(paired.get('max'), 'x')})" if paired else "-",
                         C.fmt(d.get("cer_raw"), "%") if d else "-",
                         C.fmt(d.get("cer_clean"), "%") if d else "-",
                         f"{d['identical_clean']}/{d['files']}" if d else "-"])
    text += C.print_table(
        f"PREDICT vs pipeline (random wav2vec2-{results['checkpoint']['size']}; audio-seconds per second, "
        "repeats per set as run)",
        ["set", "contender", "audio s", "wall s (median)", "audio-s/s median", "min", "max", "vs pipeline",
         "per-round speed-up, median (min-max)",
         "CER raw", "CER clean", "identical (clean)"], rows)
    results["ratios"] = ratios
    results["targets"] = {
        f"{name}: default >= 1.5x pipeline (per-round median)":
            (ratios.get(f"{name}: {OURS_DEFAULT} (paired rounds)") or 0) >= 1.5
        for name in results["sets"]}
    results["targets"].update({
        f"{name}: batch_size=1 identical text": (results["sets"][name]["contenders"][OURS_BS1]
                                                 ["divergence_vs_pipeline"]["cer_clean"] == 0)
        for name in results["sets"]})
    for title, prof in results.get("profiles", {}).items():
        text += C.print_profile(f"server during {title}", prof)
    results["table_text"] = text
    return text


def main(argv=None) -> int:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--extra-repeats", type=int, default=None, help="repeats on the extra set (default 1)")
    p.add_argument("--sets", default=None, help="comma-separated: test,extra (quick: test)")
    p.add_argument("--limit", type=int, default=None, help="files per set (quick: 1)")
    p.add_argument("--size", default=None, choices=["tiny", "base"], help="checkpoint (default base; quick tiny)")
    p.add_argument("--cache-dir", default=str(C.REPO / "benchmarks" / ".cache"),
                   help="where random checkpoints are kept between runs")
    p.add_argument("--profile", action="store_true", help="py-spy the server during the first default PREDICT")
    args = p.parse_args(argv)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.extra_repeats = args.extra_repeats or 1
    args.sets = [s for s in (args.sets or ("test" if args.quick else "test,extra")).split(",") if s]
    args.limit = args.limit or (1 if args.quick else None)
    args.size = args.size or ("tiny" if args.quick else "base")
    results = run(args)
    report(results)
    C.write_result("predict", results, args.results_dir, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
