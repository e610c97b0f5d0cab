"""examples/speech_recognition.ipynb, executed headless in a real Jupyter kernel (nbclient)
against a real server: tutorial statements unchanged, a tiny random base checkpoint."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

from ml_fixtures import tiny_checkpoint  # noqa: F401 - a fixture
from server_process import REPO, SHARED_DATA

NOTEBOOK = REPO / "examples" / "speech_recognition.ipynb"
TOKEN = "notebook-token"


def _text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(out["text"])
        for mime in ("text/plain", "text/html"):
            parts.append(str(out.get("data", {}).get(mime, "")))
    return "\n".join(parts)


def test_notebook_runs_headless(start_server, tiny_checkpoint, tmp_path, monkeypatch):  # noqa: F811
    server = start_server("--token", TOKEN, "--dataset-mirror", str(SHARED_DATA),
                          env={"THANOSQL_BASE_MODEL": tiny_checkpoint})
    monkeypatch.setenv("THANOSQL_URL", server.url)
    monkeypatch.setenv("THANOSQL_API_TOKEN", TOKEN)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), \
        "commit the notebook without outputs"
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()

    by_source = {cell.source: cell for cell in nb.cells if cell.cell_type == "code"}

    def output_of(fragment: str) -> str:
        return _text(next(c for s, c in by_source.items() if fragment in s))

    assert "120" in output_of("GET THANOSQL DATASET")
    assert "100 rows" in output_of("SELECT * FROM librispeech_train")
    assert output_of("PRINT AUDIO").count("<audio") == 3
    build = output_of("BUILD MODEL my_asr_model")
    assert "BUILD my_asr_model" in build and "13/13 steps" in build and "ready" in build
    assert "predict_result" in output_of('result[["text", "predict_result"]]')
    assert "wer" in output_of("EVALUATE USING my_asr_model")
    assert "learning_rate" in output_of("thanosql.training_info")
    assert "Mrs. Vickers" in output_of("PREDICT USING whisper_tiny_en")  # real weights, real words
    assert "normalizer" in output_of("EVALUATE USING whisper_tiny_en")
    assert not Path(tmp_path / "thanosql-data").exists()  # THANOSQL_URL was used, no local server
