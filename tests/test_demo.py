"""`thanosql demo`: the console script, end to end on the shared mirror, offline."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from ml_fixtures import tiny_checkpoint  # noqa: F401 - a fixture
from server_process import REPO, SHARED_DATA

THANOSQL = Path(sys.executable).with_name("thanosql")  # the console script pyproject declares


def _demo(*args: str, data_dir: Path, env: dict | None = None, timeout: float = 900):
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("THANOSQL_BASE_MODEL", "THANOSQL_URL", "THANOSQL_DATASET_MIRROR")}
    environment.update({"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})})
    return subprocess.run([str(THANOSQL), "demo", "--data-dir", str(data_dir), *args], cwd=REPO,
                          env=environment, capture_output=True, text=True, timeout=timeout)


def test_without_a_checkpoint_it_says_how_to_provide_one(tmp_path):
    run = _demo(data_dir=tmp_path / "data")
    assert run.returncode == 2, run.stdout + run.stderr
    for hint in ("facebook/wav2vec2-base-960h", "THANOSQL_BASE_MODEL", "Hugging Face cache",
                 "--small-checkpoint", "garbage"):
        assert hint in run.stdout
    assert not (tmp_path / "data" / "catalog.sqlite").exists()  # stopped before starting anything


def test_demo_runs_the_tutorial_end_to_end_with_the_small_checkpoint(tmp_path):
    run = _demo("--small-checkpoint", data_dir=tmp_path / "data", env={"THANOSQL_DATASET_MIRROR": str(SHARED_DATA)})
    out, err = run.stdout, run.stderr
    assert run.returncode == 0, out + err[-3000:]
    assert "SMALL RANDOM CHECKPOINT" in out and "garbage" in out
    assert "BUILD MODEL my_asr_model USING Wav2Vec2En OPTIONS (audio_col='audio', text_col='text', " \
           "epochs=1, batch_size=8) AS SELECT * FROM librispeech_train" in out
    assert re.search(r"100\s+librispeech_train", out) and re.search(r"20\s+librispeech_test", out)
    assert "(100 rows; first 5 shown)" in out and "predict_result" in out
    assert re.search(r"status\s+ready", out) and re.search(r"\bwer\b", out)
    for phase in ("setup", "dataset", "BUILD", "PREDICT", "EVALUATE", "Whisper PREDICT", "Whisper EVALUATE", "total"):
        assert re.search(rf"{phase}:\s+\d+\.\d s", out), phase
    # Whisper's part is real speech recognition: a real transcript and a real WER.
    assert "Whisper PREDICT (real transcripts)" in out and "Mrs. Vickers" in out
    wer = float(re.search(r"EVALUATE \(WER.*?\n.*?\n.*?\bwer\s+([0-9.]+)", out, re.S).group(1))
    assert wer <= 0.10, out
    assert "13/13 steps" in err and "PREDICT my_asr_model" in err  # the progress bars
    audio = list((tmp_path / "data" / "thanosql-dataset" / "librispeech_data" / "audio").iterdir())
    assert len(audio) == 120


def test_a_local_checkpoint_is_used_as_it_is(tmp_path, tiny_checkpoint):  # noqa: F811
    from thanosql.base_checkpoint import choose
    chosen = choose(tmp_path, base_model=tiny_checkpoint)
    assert chosen.source == tiny_checkpoint and not chosen.random and "local folder" in chosen.note
