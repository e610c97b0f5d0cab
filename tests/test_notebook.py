"""examples/speech_recognition.ipynb, executed headless in a real Jupyter kernel (nbclient)
the way a new user runs it offline: no THANOSQL_URL (the magic starts a local server), no
model hub (so the notebook falls back to the small random checkpoint, as the demo does),
the dataset from the local mirror. The checks are on what a reader sees in the saved
notebook: one progress line per long statement, no stderr, a picture for the loss curve."""

from __future__ import annotations

import nbformat
from nbclient import NotebookClient

from server_process import REPO, SHARED_DATA

NOTEBOOK = REPO / "examples" / "speech_recognition.ipynb"
LONG = {"BUILD MODEL my_asr_model": "BUILD my_asr_model v1: 13/13 steps, epoch 1.00/1, loss ",
        "PREDICT USING my_asr_model": "PREDICT my_asr_model: 20/20 utterances [",
        "EVALUATE USING my_asr_model": "EVALUATE my_asr_model: 20/20 utterances [",
        "PREDICT USING whisper_tiny_en": "PREDICT whisper_tiny_en: 3/3 utterances [",
        "text_col='text')\nAS SELECT * FROM librispeech_test LIMIT 5": "EVALUATE whisper_tiny_en: 5/5 utterances [",
        "details=True)": "EVALUATE whisper_tiny_en: 5/5 utterances [",
        "FIT MODEL my_whisper_tuned": "FIT my_whisper_tuned v1: 2/2 steps",
        "PREDICT USING my_whisper_tuned": "PREDICT my_whisper_tuned: 3/3 utterances ["}


def _text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(out["text"])
        for mime in ("text/plain", "text/html"):
            parts.append(str(out.get("data", {}).get(mime, "")))
    return "\n".join(parts)


def _progress_outputs(cell) -> list[str]:
    """The progress displays a reader sees in the saved cell (their final state)."""
    return [out["data"]["text/plain"] for out in cell.get("outputs", [])
            if out.get("output_type") == "display_data" and "<progress" in out.get("data", {}).get("text/html", "")]


def test_notebook_runs_offline_and_reads_well(tmp_path, monkeypatch):
    for var in ("THANOSQL_URL", "THANOSQL_API_TOKEN", "THANOSQL_BASE_MODEL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("THANOSQL_DATA_DIR", str(tmp_path / "thanosql-data"))
    monkeypatch.setenv("THANOSQL_DATASET_MIRROR", str(SHARED_DATA))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no hub, an empty cache: the offline route
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), \
        "commit the notebook without outputs"
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [cell for cell in nb.cells if cell.cell_type == "code"]

    def cell_of(fragment: str):
        return next(c for c in code if fragment in c.source)

    def output_of(fragment: str) -> str:
        return _text(cell_of(fragment))

    # Notices and statuses are normal output; nothing a reader sees is on stderr.
    stderr = [out["text"] for c in code for out in c.outputs if out.get("name") == "stderr"]
    assert stderr == []
    assert "SMALL RANDOM CHECKPOINT" in output_of("base_checkpoint.choose")
    assert "a local one was started" in output_of("GET THANOSQL DATASET")
    assert "librispeech_train" in output_of("GET THANOSQL DATASET")
    assert "100 rows" in output_of("SELECT * FROM librispeech_train")
    players = output_of("PRINT AUDIO")
    assert players.count("<audio") == 3 and players.count(">text</span>") == 3  # a transcript under each
    # One progress output per long statement, left as one final line.
    for fragment, final in LONG.items():
        shown = _progress_outputs(cell_of(fragment))
        assert len(shown) == 1 and shown[0].startswith(final), (fragment, shown)
    build = cell_of("BUILD MODEL my_asr_model")
    assert any("image/svg+xml" in out.get("data", {}) for out in build.outputs), "no loss curve"
    assert "<polyline" in next(out["data"]["image/svg+xml"] for out in build.outputs
                               if "image/svg+xml" in out.get("data", {}))
    assert "ready" in _text(build)
    assert "predict_result" in output_of('result[["text", "predict_result"]]')
    assert "wer" in output_of("EVALUATE USING my_asr_model")
    assert "Mrs. Vickers" in output_of("PREDICT USING whisper_tiny_en")  # real weights, real words
    assert "normalizer" in output_of("text_col='text')\nAS SELECT * FROM librispeech_test LIMIT 5")
    assert "Worst 5 of 5 utterances" in output_of("details=True)")
    assert "word_errors" in output_of('details[["row"')
    assert "learning_rate" in output_of("thanosql.training_info")
    assert "ready" in _text(cell_of("FIT MODEL my_whisper_tuned"))
    assert "Mrs. Vickers" in output_of("PREDICT USING my_whisper_tuned")  # two steps keep Whisper's words
