"""ml.worker: training in a child process; success publishes, cancel and crashes publish nothing."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from ml.errors import AudioError, TrainingCancelled, TrainingFailed
from ml.options import validate
from ml.registry import ModelRegistry
from ml.wav2vec2 import Transcriber
from ml.worker import run_training
from ml_fixtures import shortest, tiny_checkpoint, train_rows  # noqa: F401


def _start(reg, name, base, rows, options):
    """Run run_training in a thread (as the planner does); returns (run, cancel, outcome, thread)."""
    opts = validate("Wav2Vec2En", "build", dict(options, base_model=base))
    run = reg.create_run(name, "Wav2Vec2En", opts, base, "SELECT * FROM t")
    cancel, outcome = threading.Event(), {}

    def target():
        try:
            outcome["summary"] = run_training(reg, run, rows, opts, cancel)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    return run, cancel, outcome, thread


def _wait_for_progress(reg, run, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if reg.training_info_table().num_rows:
            return reg.get_run(run.run_id)["worker_pid"]
        time.sleep(0.2)
    pytest.fail("the training worker recorded no progress")


def _assert_nothing_published(reg, tmp_path, name):
    assert not reg.exists(name)
    assert not (tmp_path / "models" / name).exists()
    assert not os.listdir(tmp_path / "models" / ".staging")


def test_success_publishes_a_usable_version(tmp_path, tiny_checkpoint, train_rows):
    reg = ModelRegistry(tmp_path)
    rows = shortest(train_rows, 2)
    run, _, outcome, thread = _start(reg, "asr", tiny_checkpoint, rows, {"epochs": 2, "batch_size": 1})
    thread.join(120)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["summary"]["steps"] == 4
    assert reg.get_run(run.run_id)["status"] == "ready" and reg.get_run(run.run_id)["metrics"]["steps"] == 4
    info = reg.training_info_table().to_pylist()
    assert [r["step"] for r in info] == [1, 2, 3, 4] and info[-1]["epoch"] == 2.0
    assert info[-1]["audio_seconds"] == pytest.approx(2 * outcome["summary"]["train_audio_seconds"])
    text = Transcriber(reg.model_dir("asr")).transcribe([rows[0][0]], 1)
    assert isinstance(text[0], str)


def test_cancel_terminates_the_worker(tmp_path, tiny_checkpoint, train_rows):
    reg = ModelRegistry(tmp_path)
    run, cancel, outcome, thread = _start(reg, "asr", tiny_checkpoint, shortest(train_rows, 2), {"epochs": 10_000})
    pid = _wait_for_progress(reg, run)
    started = time.monotonic()
    cancel.set()
    thread.join(30)
    assert not thread.is_alive() and time.monotonic() - started < 15
    assert isinstance(outcome.get("error"), TrainingCancelled)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the child is gone (and reaped)
    assert reg.get_run(run.run_id)["status"] == "cancelled"
    _assert_nothing_published(reg, tmp_path, "asr")


def test_killed_worker_marks_the_run_failed(tmp_path, tiny_checkpoint, train_rows):
    reg = ModelRegistry(tmp_path)
    run, _, outcome, thread = _start(reg, "asr", tiny_checkpoint, shortest(train_rows, 2), {"epochs": 10_000})
    pid = _wait_for_progress(reg, run)
    os.kill(pid, signal.SIGKILL)
    thread.join(30)
    error = outcome.get("error")
    assert isinstance(error, TrainingFailed) and "SIGKILL" in str(error) and "nothing was saved" in str(error)
    row = reg.get_run(run.run_id)
    assert row["status"] == "failed" and "SIGKILL" in row["error"]
    _assert_nothing_published(reg, tmp_path, "asr")


def test_errors_in_the_worker_come_back_as_themselves(tmp_path, tiny_checkpoint, train_rows):
    reg = ModelRegistry(tmp_path)
    rows = shortest(train_rows, 1) + [(str(tmp_path / "gone.wav"), "text")]
    run, _, outcome, thread = _start(reg, "asr", tiny_checkpoint, rows, {"epochs": 1})
    thread.join(120)
    error = outcome.get("error")
    assert isinstance(error, AudioError) and error.row == 1 and error.path.endswith("gone.wav")
    row = reg.get_run(run.run_id)
    assert row["status"] == "failed" and "gone.wav" in row["error"] and "row 1" in row["error"]
    _assert_nothing_published(reg, tmp_path, "asr")
