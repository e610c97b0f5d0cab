"""Transcript normalisation shared by training labels, decoding and metrics.

A CTC tokenizer maps every character outside its vocabulary to ``<unk>``: the tutorial's
lower-case transcripts fed to facebook/wav2vec2-base-960h's upper-case vocabulary would
become strings of ``<unk>`` and train the model to emit nothing useful.  So transcripts are
brought into the model's character set first (case folded the way the vocabulary is,
accents stripped, punctuation the vocabulary lacks turned into word breaks), and WER/CER
compare references and hypotheses after the same normalisation, so "then why" matches
"THEN WHY".
"""

from __future__ import annotations

import re
import string
import unicodedata
from typing import Iterable

# Characters of facebook/wav2vec2-base-960h's vocabulary (besides specials and "|").
DEFAULT_CHARSET = frozenset(string.ascii_uppercase + "'")

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})
_SPACES = re.compile(r"\s+")
# An apostrophe is kept only inside a word ("water's", "s'death"); quotes around words go.
_LONE_APOSTROPHE = re.compile(r"(?<![^\W_])'|'(?![^\W_])")


def charset_of(tokenizer) -> frozenset[str]:
    """The single characters a CTC tokenizer can emit, minus specials and the word delimiter."""
    specials = set(getattr(tokenizer, "all_special_tokens", []))
    delimiter = getattr(tokenizer, "word_delimiter_token", "|")
    return frozenset(
        tok for tok in tokenizer.get_vocab()
        if len(tok) == 1 and tok not in specials and tok != delimiter and not tok.isspace()
    )


def _case_fold(charset: Iterable[str]):
    letters = [c for c in charset if c.isalpha()]
    has_upper = any(c.isupper() for c in letters)
    has_lower = any(c.islower() for c in letters)
    if has_upper and not has_lower:
        return str.upper
    if has_lower and not has_upper:
        return str.lower
    return lambda s: s


def normalize(text: str | None, charset: Iterable[str] | None = None) -> str:
    """Bring ``text`` into ``charset`` (default: A-Z and the apostrophe).

    Case follows the charset; accents are stripped when the accented letter is missing;
    every other character outside the charset (punctuation, digits, symbols) becomes a
    word break; whitespace is collapsed.  Idempotent.
    """
    if text is None:
        return ""
    chars = DEFAULT_CHARSET if charset is None else frozenset(charset)
    text = _case_fold(chars)(unicodedata.normalize("NFC", str(text)).translate(_APOSTROPHES))
    out = []
    for ch in text:
        if ch in chars:
            out.append(ch)
            continue
        base = unicodedata.normalize("NFKD", ch)
        base = "".join(c for c in base if not unicodedata.combining(c))
        base = _case_fold(chars)(base)
        out.append(base if base and all(c in chars for c in base) else " ")
    text = "".join(out)
    if "'" in chars:
        text = _LONE_APOSTROPHE.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def normalize_for_metrics(text: str | None) -> str:
    """The normalisation WER/CER use: the default English charset, whatever the model."""
    return normalize(text, DEFAULT_CHARSET)
