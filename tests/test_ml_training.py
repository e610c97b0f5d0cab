"""ml.wav2vec2.train: learning is real (loss and CER fall), the model round-trips, errors are clear."""

from __future__ import annotations

import json
import os

import pytest

from ml.errors import AudioError, CheckpointUnavailable, TrainingCancelled
from ml.metrics import cer
from ml.wav2vec2 import SUMMARY_FILE, Transcriber, train
from ml_fixtures import shortest, tiny_checkpoint, train_rows  # noqa: F401

# 4 short utterances (9 s of audio) and a high learning rate: enough for the ~2M-parameter
# model to leave the all-blank CTC plateau and spell the words in about half a minute on 2
# cores (8 utterances need many more steps to get there).
LEARN_OPTIONS = {"epochs": 150, "batch_size": 4, "learning_rate": 1e-2, "warmup_ratio": 0.1, "seed": 42}


def test_training_lowers_loss_and_cer(tiny_checkpoint, train_rows, tmp_path, record_property):
    rows = shortest(train_rows, 4)
    paths, refs = [p for p, _ in rows], [t for _, t in rows]
    cer_before = cer(refs, Transcriber(tiny_checkpoint).transcribe(paths, 4))
    progress = []
    out = tmp_path / "trained"
    summary = train(tiny_checkpoint, rows, LEARN_OPTIONS, lambda *a: progress.append(a), None, str(out))

    steps = [p[0] for p in progress]
    assert steps == list(range(1, 151)) and summary["steps"] == 150 and summary["epochs"] == 150
    lrs = [p[3] for p in progress]
    # warm-up from above zero (every step trains; 15 warm-up steps: 1e-2 / 16), then decay
    assert lrs[0] == pytest.approx(1e-2 / 16) and max(lrs) == pytest.approx(1e-2) and lrs[-1] < 1e-3
    assert progress[-1][4] == pytest.approx(150 * summary["train_audio_seconds"], rel=1e-3)
    loss_before = sum(p[2] for p in progress[:5]) / 5
    loss_after = summary["final_loss"]
    after = Transcriber(str(out)).transcribe(paths, 4)
    cer_after = cer(refs, after)
    print(f"\ntraining loss {loss_before:.3f} -> {loss_after:.3f}; CER {cer_before:.3f} -> {cer_after:.3f}; "
          f"{summary['seconds']:.1f} s for {summary['steps']} steps")
    for ref, hyp in zip(refs, after):
        print(f"  {ref!r} -> {hyp!r}")
    record_property("loss_before", loss_before)
    record_property("loss_after", loss_after)
    record_property("cer_before", cer_before)
    record_property("cer_after", cer_after)
    assert loss_after < 0.25 * loss_before and loss_after < 1.5
    assert cer_after < 0.5 and cer_after < cer_before - 0.5  # it spells real words, not blanks
    assert {"config.json", "model.safetensors", "vocab.json", "tokenizer_config.json",
            "processor_config.json", SUMMARY_FILE} <= set(os.listdir(out))
    saved = json.load(open(out / SUMMARY_FILE))
    assert saved["summary"]["steps"] == 150 and saved["options"]["learning_rate"] == 1e-2
    assert summary["device"] == "cpu" and summary["mixed_precision"] == "no"


def test_bad_audio_is_reported_before_training(tiny_checkpoint, train_rows, tmp_path):
    rows = shortest(train_rows, 2) + [(str(tmp_path / "missing.flac"), "hello")]
    with pytest.raises(AudioError, match=r"missing\.flac.*row 2"):
        train(tiny_checkpoint, rows, {"epochs": 1}, None, None, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_should_stop_cancels(tiny_checkpoint, train_rows, tmp_path):
    with pytest.raises(TrainingCancelled):
        train(tiny_checkpoint, shortest(train_rows, 2), {"epochs": 1}, None, lambda: True, str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_unavailable_base_checkpoint_says_how_to_provide_one(train_rows, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-hf-home" / "hub"))
    rows = shortest(train_rows, 1)
    for base in ("facebook/wav2vec2-base-960h", str(tmp_path / "no-such-folder")):
        with pytest.raises(CheckpointUnavailable) as err:
            train(base, rows, {"epochs": 1}, None, None, str(tmp_path / "o"))
        message = str(err.value)
        assert base in message and "base_model='/path" in message and "THANOSQL_BASE_MODEL" in message
        assert "cache" in message
