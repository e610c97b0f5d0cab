"""Client pieces without a server: the shared statement reader, the progress lines, the
EVALUATE alignment, and the learning-rate schedule every step of a BUILD trains with."""

from __future__ import annotations

import io
import math
import subprocess
import sys

import pytest

from thanosql import statements
from thanosql.pictures import TrainingCurve, align
from thanosql.progress import LogDisplay, Snapshot, describe


def test_client_and_server_read_options_alike():
    from planner.statements import parse
    sql = "BUILD MODEL m USING Wav2Vec2En OPTIONS (shift=-2, tags=['a','b'], max_steps=NULL) AS SELECT 1"
    seen = statements.describe(sql)
    assert seen.options == parse(sql).options == {"shift": -2, "tags": ["a", "b"], "max_steps": None}
    assert (seen.kind, seen.model, seen.query) == ("BUILD", "m", "SELECT 1")
    bad = statements.describe("PREDICT USING m OPTIONS (batch_size=1 + 1) AS SELECT 1")
    assert (bad.kind, bad.model) == ("PREDICT", None)  # the server will say what is wrong
    cancel = statements.describe("CANCEL MODEL m")
    assert (cancel.kind, cancel.model) == ("CANCEL", None)  # no progress display for it


def test_a_background_build_shows_no_progress(monkeypatch):
    """BUILD ... OPTIONS (wait=False) returns at once: no progress display is drawn for it."""
    from thanosql import client, progress
    shown = []
    monkeypatch.setattr(progress, "run_with_progress", lambda _client, statement, **_: shown.append(statement))
    monkeypatch.setattr(client.Client, "run", lambda _self, statement, **_: statement)
    c = client.Client.__new__(client.Client)
    assert c.execute("BUILD MODEL m USING Wav2Vec2En OPTIONS (WAIT=False) AS SELECT 1").kind == "BUILD"
    assert not shown
    c.execute("BUILD MODEL m USING Wav2Vec2En OPTIONS (wait=True) AS SELECT 1")
    assert len(shown) == 1


def test_the_client_imports_no_server_machinery():
    code = ("import sys, thanosql, thanosql.magic, thanosql.statements, thanosql.progress, thanosql.pictures\n"
            "thanosql.statements.describe('PREDICT USING m AS SELECT 1')\n"
            "print(sorted(m for m in ('datafusion', 'torch', 'transformers', 'ctranslate2', 'flight_server',"
            " 'ml', 'planner.engine') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_log_lines_are_plain_throttled_and_end_with_the_final_state():
    stream = io.StringIO()
    log = LogDisplay(stream, every=5.0)
    snap = Snapshot("BUILD m v1", 1, 13, "steps", "epoch 0.08/1, loss 9.1")
    log.update(snap, 0.5)
    log.update(Snapshot("BUILD m v1", 2, 13, "steps", "epoch 0.15/1, loss 8.7"), 1.0)  # too soon
    log.update(Snapshot("BUILD m v1", 7, 13, "steps", "epoch 0.54/1, loss 5.2"), 6.0)
    log.close(Snapshot("BUILD m v1", 13, 13, "steps", "epoch 1.00/1, loss 3.3", status="ready"), 41.0)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines == ["BUILD m v1: 1/13 steps, epoch 0.08/1, loss 9.1 [0.5 s]",
                     "BUILD m v1: 7/13 steps, epoch 0.54/1, loss 5.2 [6.0 s]",
                     "BUILD m v1: 13/13 steps, epoch 1.00/1, loss 3.3 [41.0 s]"]
    assert describe(Snapshot("PREDICT w", 8, None, "utterances"), 75) == "PREDICT w: 8 utterances [1:15]"
    assert describe(Snapshot("EVALUATE w", 3, 5, "utterances", status="failed"), 2) == \
        "EVALUATE w: 3/5 utterances [2.0 s] (failed)"


def test_alignment_marks_substitutions_deletions_and_insertions():
    from thanosql.pictures import aligned_html
    pairs = align("the cat sat on the mat", "the bat sat on mat today")
    assert pairs == [("the", "the", "equal"), ("cat", "bat", "sub"), ("sat", "sat", "equal"),
                     ("on", "on", "equal"), ("the", "", "del"), ("mat", "mat", "equal"), ("", "today", "ins")]
    shown = aligned_html(pairs)
    assert shown.count("display:inline-block") == 7 and "line-through\">the<" in shown
    assert 'background:#dfd">today<' in shown and 'background:#fdd">bat<' in shown


def test_training_curve_is_a_picture():
    curve = TrainingCurve("training m v1", [1, 2, 3], [9.0, 6.5, 4.0], [3e-5, 1e-4, 5e-5])
    svg = curve._repr_svg_()
    assert svg.startswith("<svg") and svg.count("<polyline") == 2
    assert repr(curve) == "training m v1: 3 steps, loss 9 -> 4 (min 4)"


@pytest.mark.parametrize("total", [1, 2, 13, 100])
def test_every_step_trains(total):
    from ml.training_loop import lr_factor
    warmup = math.ceil(0.1 * total)
    factors = [lr_factor(step, warmup, total) for step in range(total)]
    assert min(factors) > 0 and max(factors) == 1.0
    assert factors[:warmup + 1] == sorted(factors[:warmup + 1])  # up, then down
