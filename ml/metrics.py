"""WER and CER with jiwer, after the shared transcript normalisation.

jiwer is the metric implementation the ASR community uses offline (``evaluate.load('wer')``
needs the hub).  Both sides are normalised first, so case and punctuation never count as
errors; scores are corpus-level (total edits / total reference words or characters), the
way LibriSpeech results are reported.
"""

from __future__ import annotations

from typing import Sequence

import pyarrow as pa

from .text import normalize_for_metrics


def _prepare(references: Sequence[str | None], hypotheses: Sequence[str | None]):
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    return ([normalize_for_metrics(r) for r in references],
            [normalize_for_metrics(h) for h in hypotheses])


def _rate(out, ref_len: int) -> float:
    errors = out.substitutions + out.deletions + out.insertions
    if ref_len == 0:  # nothing to recognise: perfect only if nothing was emitted
        return 0.0 if errors == 0 else 1.0
    return errors / ref_len


def error_counts(references, hypotheses) -> dict:
    """Word and character edit counts (the numbers behind WER/CER)."""
    import jiwer  # loaded on first use: the server imports ml without it

    refs, hyps = _prepare(references, hypotheses)
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


def wer(references, hypotheses) -> float:
    """Corpus word error rate (0.0 = perfect; can exceed 1.0 with insertions)."""
    return error_counts(references, hypotheses).get("wer", 0.0)


def cer(references, hypotheses) -> float:
    """Corpus character error rate (spaces count as characters, as in jiwer)."""
    return error_counts(references, hypotheses).get("cer", 0.0)


def score(references, hypotheses, audio_seconds: float | None = None) -> dict:
    """The EVALUATE metrics: wer, cer, utterances (and audio_seconds when given)."""
    counts = error_counts(references, hypotheses)
    out = {"wer": counts.get("wer", 0.0), "cer": counts.get("cer", 0.0),
           "utterances": counts["utterances"]}
    if audio_seconds is not None:
        out["audio_seconds"] = float(audio_seconds)
    return out


def metrics_table(scores: dict) -> pa.Table:
    """A ``metric, score`` table (EVALUATE's result shape) from a dict of numbers."""
    return pa.table({
        "metric": pa.array(list(scores), pa.string()),
        "score": pa.array([float(v) for v in scores.values()], pa.float64()),
    })
