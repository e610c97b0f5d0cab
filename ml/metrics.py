"""WER and CER with jiwer, after a transcript normalisation applied to both sides.

jiwer is the metric implementation the ASR community uses offline (``evaluate.load('wer')``
needs the hub).  Both sides are normalised first; scores are corpus-level (total edits /
total reference words or characters), the way LibriSpeech results are reported.

Normalisers (``NORMALIZERS``): 'whisper' is Whisper's EnglishTextNormalizer (package
whisper-normalizer; case, punctuation, British/American spellings, numbers written out
or not, "mister"/"mr"), the one Whisper's published WERs use and what EVALUATE applies by
default, for every model class: without it Whisper's cased, punctuated output scores about
22 % WER on LibriSpeech instead of 5.5 %.  'basic' folds case and punctuation only (the
project's own ``text.normalize_for_metrics``); 'none' compares the raw strings
(whitespace collapsed).
"""

from __future__ import annotations

import functools
from typing import Sequence

import pyarrow as pa

from .text import normalize_for_metrics

NORMALIZERS = ("whisper", "basic", "none")
#: What EVALUATE's ``detail`` column says about each normaliser.
NORMALIZER_DETAIL = {
    "whisper": "Whisper EnglishTextNormalizer (whisper-normalizer) on references and transcripts",
    "basic": "case and punctuation folded",
    "none": "raw text (whitespace collapsed)",
}


@functools.lru_cache(maxsize=1)
def _english():
    from whisper_normalizer.english import EnglishTextNormalizer  # loaded on first use

    return EnglishTextNormalizer()


def normalizer_function(name: str):
    """The text -> text function of normaliser ``name`` (None -> '')."""
    if name == "whisper":
        english = _english()
        return lambda text: " ".join(english(text or "").split())
    if name == "basic":
        return normalize_for_metrics
    if name == "none":
        return lambda text: " ".join((text or "").split())
    raise ValueError(f"unknown normalizer {name!r}; one of {', '.join(NORMALIZERS)}")


def _prepare(references: Sequence[str | None], hypotheses: Sequence[str | None], normalizer: str = "basic"):
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    norm = normalizer_function(normalizer)
    return [norm(r) for r in references], [norm(h) for h in hypotheses]


def _rate(out, ref_len: int) -> float:
    errors = out.substitutions + out.deletions + out.insertions
    if ref_len == 0:  # nothing to recognise: perfect only if nothing was emitted
        return 0.0 if errors == 0 else 1.0
    return errors / ref_len


def error_counts(references, hypotheses, normalizer: str = "basic") -> dict:
    """Word and character edit counts (the numbers behind WER/CER)."""
    import jiwer  # loaded on first use: the server imports ml without it

    refs, hyps = _prepare(references, hypotheses, normalizer)
    if not refs:
        return {"utterances": 0, "words": 0, "word_errors": 0, "chars": 0, "char_errors": 0}
    words = jiwer.process_words(refs, hyps)
    chars = jiwer.process_characters(refs, hyps)
    n_words = sum(len(r.split()) for r in refs)
    n_chars = sum(len(r) for r in refs)
    return {
        "utterances": len(refs),
        "words": n_words,
        "word_errors": words.substitutions + words.deletions + words.insertions,
        "wer": _rate(words, n_words),
        "chars": n_chars,
        "char_errors": chars.substitutions + chars.deletions + chars.insertions,
        "cer": _rate(chars, n_chars),
    }


def wer(references, hypotheses, normalizer: str = "basic") -> float:
    """Corpus word error rate (0.0 = perfect; can exceed 1.0 with insertions)."""
    return error_counts(references, hypotheses, normalizer).get("wer", 0.0)


def cer(references, hypotheses) -> float:
    """Corpus character error rate (spaces count as characters, as in jiwer)."""
    return error_counts(references, hypotheses).get("cer", 0.0)


def score(references, hypotheses, audio_seconds: float | None = None, normalizer: str = "basic") -> dict:
    """The EVALUATE metrics: wer, cer, utterances (and audio_seconds when given)."""
    counts = error_counts(references, hypotheses, normalizer)
    out = {"wer": counts.get("wer", 0.0), "cer": counts.get("cer", 0.0),
           "utterances": counts["utterances"]}
    if audio_seconds is not None:
        out["audio_seconds"] = float(audio_seconds)
    return out


def metrics_table(scores: dict, normalizer: str | None = None) -> pa.Table:
    """A ``metric, score`` table from a dict of numbers; with ``normalizer`` (EVALUATE's
    shape) a ``detail`` column and a last ``normalizer`` row (score NULL) say which
    normalisation wer and cer were computed after."""
    if normalizer is None:
        return pa.table({
            "metric": pa.array(list(scores), pa.string()),
            "score": pa.array([float(v) for v in scores.values()], pa.float64()),
        })
    detail = {"wer": f"normalizer={normalizer}", "cer": f"normalizer={normalizer}"}
    names = list(scores) + ["normalizer"]
    return pa.table({
        "metric": pa.array(names, pa.string()),
        "score": pa.array([float(v) for v in scores.values()] + [None], pa.float64()),
        "detail": pa.array([detail.get(n) for n in scores] + [f"{normalizer}: {NORMALIZER_DETAIL[normalizer]}"],
                           pa.string()),
    })


UTTERANCE_SCHEMA = pa.schema([
    pa.field("row", pa.int64(), nullable=False), pa.field("audio", pa.string()),
    pa.field("reference", pa.string()), pa.field("transcript", pa.string()),
    pa.field("wer", pa.float64()), pa.field("word_errors", pa.int64()), pa.field("words", pa.int64()),
    pa.field("reference_normalized", pa.string()), pa.field("transcript_normalized", pa.string()),
])


def utterance_table(audio, references, hypotheses, normalizer: str = "basic") -> pa.Table:
    """EVALUATE OPTIONS (details=True): one row per utterance, worst WER first (then by row):
    the query's row number, its audio and texts, and its word errors after `normalizer`
    (the normalised texts too, which are what was compared)."""
    import jiwer

    refs, hyps = _prepare(references, hypotheses, normalizer)
    rows = []
    for i, (ref, hyp) in enumerate(zip(refs, hyps)):
        n_words = len(ref.split())
        if not ref.strip() or not hyp.strip():  # jiwer refuses empty texts: all insertions or deletions
            errors = len(hyp.split()) if not ref.strip() else n_words
        else:
            out = jiwer.process_words(ref, hyp)
            errors = out.substitutions + out.deletions + out.insertions
        rate = errors / n_words if n_words else (0.0 if errors == 0 else 1.0)
        rows.append({"row": i, "audio": audio[i], "reference": references[i], "transcript": hypotheses[i],
                     "wer": rate, "word_errors": errors, "words": n_words,
                     "reference_normalized": ref, "transcript_normalized": hyp})
    rows.sort(key=lambda r: (-r["wer"], r["row"]))
    return pa.Table.from_pylist(rows, schema=UTTERANCE_SCHEMA)
