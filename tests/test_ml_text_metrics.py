"""ml.text normalisation and ml.metrics WER/CER."""

from __future__ import annotations

import pytest

from ml.checkpoints import make_processor
from ml.metrics import cer, metrics_table, score, wer
from ml.text import charset_of, normalize


def test_lower_case_tutorial_text_fits_the_english_ctc_vocab():
    assert normalize("then why indulge in prophetic phantasies") == "THEN WHY INDULGE IN PROPHETIC PHANTASIES"
    assert normalize("s'death cried my great-grandfather, 'hello'!") == "S'DEATH CRIED MY GREAT GRANDFATHER HELLO"
    assert normalize("water\u2019s edge  café, naïve") == "WATER'S EDGE CAFE NAIVE"
    assert normalize(None) == "" and normalize(" ?! ") == ""
    text = "Chapter 7: the END."
    assert normalize(normalize(text)) == normalize(text) == "CHAPTER THE END"


def test_normalised_text_tokenises_without_unknowns():
    tokenizer = make_processor().tokenizer
    charset = charset_of(tokenizer)
    assert charset == frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ'")
    ids = tokenizer(normalize("a beautiful pebbly beach extended almost to the water's edge", charset)).input_ids
    assert tokenizer.unk_token_id not in ids
    assert ids.count(tokenizer.word_delimiter_token_id) == 9  # ten words


def test_lower_case_vocab_keeps_lower_case():
    assert normalize("Hello, World", set("abcdefghijklmnopqrstuvwxyz")) == "hello world"


def test_wer_cer_after_normalisation():
    refs = ["then why indulge in prophetic phantasies", "Hello, world!"]
    hyps = ["THAN WHY INDULGE IN PROPHETIC PHANTASIES", "HELLO WORLD"]
    assert wer(refs, hyps) == pytest.approx(1 / 8)
    assert cer(refs, hyps) == pytest.approx(1 / (len(refs[0]) + len("HELLO WORLD")))
    assert wer(["a b c"], ["a b c"]) == 0.0
    assert wer(["a b"], [""]) == 1.0
    assert cer(["ab"], ["abxyz"]) == pytest.approx(1.5)  # insertions can push rates above 1
    assert wer([""], [""]) == 0.0 and wer([""], ["x"]) == 1.0
    with pytest.raises(ValueError):
        wer(["a"], [])


def test_score_and_metrics_table():
    s = score(["a b", "c"], ["a b", "d"], audio_seconds=3.5)
    assert s == {"wer": pytest.approx(1 / 3), "cer": pytest.approx(1 / 4), "utterances": 2, "audio_seconds": 3.5}
    table = metrics_table(s)
    assert table.column_names == ["metric", "score"]
    assert table.column("metric").to_pylist() == ["wer", "cer", "utterances", "audio_seconds"]
    assert score([], []) == {"wer": 0.0, "cer": 0.0, "utterances": 0}
