"""The benchmarks still run: each one's --quick mode (tiny sizes, one repeat), end to end.

Not a measurement: nothing here asserts speed. Together about a minute and a half on
two cores; PostgreSQL is used by query_serving when installed and skipped otherwise.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_quick(name: str, results_dir: Path, *extra: str, timeout: float = 240) -> dict:
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", "--quick", "--results-dir",
                           str(results_dir), *extra], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"benchmarks.{name} --quick failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    files = list(results_dir.glob(f"{name}-*-quick.json"))
    assert len(files) == 1, files
    doc = json.loads(files[0].read_text())
    assert doc["benchmark"] == name and doc["quick"] is True
    machine = doc["machine"]
    for key in ("platform", "cpu_count", "python", "versions", "git_commit"):
        assert key in machine
    for lib in ("pyarrow", "datafusion", "torch", "transformers"):
        assert machine["versions"][lib], lib
    assert "| median" in proc.stdout or "| p50" in proc.stdout or "median" in proc.stdout
    return doc


def test_query_serving_quick(tmp_path):
    doc = run_quick("query_serving", tmp_path)
    contenders = doc["contenders"]
    for name in ("datafusion in-process", "bare pyarrow.flight", "ours (thanosql-server)"):
        assert contenders[name]["full_fetch_s"]["n"] == 1
        assert contenders[name]["point_query_s"]["n"] == doc["point_queries"]
    assert doc["ratios"]["full_ours_over_bare"] > 0


def test_predict_quick(tmp_path):
    doc = run_quick("predict", tmp_path)
    entry = doc["sets"]["test"]
    assert entry["files"] == 1
    for contender in entry["contenders"].values():
        assert contender["audio_s_per_s"]["median"] > 0
    bs1 = entry["contenders"]["ours: PREDICT batch_size=1"]["divergence_vs_pipeline"]
    assert bs1["files"] == 1 and bs1["cer_clean"] is not None


def test_build_model_quick(tmp_path):
    doc = run_quick("build_model", tmp_path)
    entry = doc["sizes"]["tiny"]
    for name in ("ours: BUILD MODEL", "reference: Trainer script"):
        assert entry[name]["wall_s"]["median"] > 0
        assert entry[name]["peak_rss_mib"] > 0
        assert entry[name]["steps"] == 1


def test_responsiveness_quick(tmp_path):
    doc = run_quick("responsiveness", tmp_path)
    for phase in ("idle", "training", "idle after"):
        assert doc["phases"][phase]["SELECT 1"]["stats"]["n"] >= doc["n_small"]


def test_stats_and_profile_summary(tmp_path):
    sys.path.insert(0, str(REPO))
    from benchmarks import common as C

    s = C.summarize([3.0, 1.0, 2.0, 4.0])
    assert (s["median"], s["min"], s["max"]) == (2.5, 1.0, 4.0)
    assert C.percentile(list(range(101)), 99) == pytest.approx(99.0)
    raw = tmp_path / "raw.txt"
    raw.write_text('process 1:"python -c a;b";main (x.py:1);Module._call_impl (torch/m.py:2);conv (c.py:3) 3\n'
                   'process 1:"python -c a;b";main (x.py:1);_find_and_load (<frozen importlib._bootstrap>:1) 1\n')
    summary = C.collapsed_summary(raw)
    assert summary["samples"] == 4
    assert dict(summary["categories_pct"]) == {"model forward": 75.0, "imports": 25.0}
    assert summary["self_pct"][0] == ("conv (c.py:3)", 75.0)


def test_report_section(tmp_path):
    sys.path.insert(0, str(REPO))
    from benchmarks import report

    doc = {"benchmark": "query_serving", "date": "2026-01-01", "command": "python -m benchmarks.query_serving",
           "machine": {"cpu": "cpu", "versions": {}, "loadavg": [1.0, 1.0, 1.0]}, "targets": {"x <= 1": False},
           "table_text": "\ntitle\n| a |\n|---|\n| 1 |\n\nserver: py-spy, 3 samples\n| % |\n|---|\n| 9 |\n"}
    (tmp_path / "query_serving-2026-01-01.json").write_text(json.dumps(doc))
    (tmp_path / "query_serving-2026-01-02-quick.json").write_text(json.dumps({**doc, "date": "quick"}))
    text = report.section(tmp_path)
    assert "**title**" in text and "| 1 |" in text and "py-spy" not in text and "MISSED" in text
    assert "quick" not in text and "### predict" in text and "Not run yet." in text
