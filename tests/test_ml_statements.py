"""The speech tutorial's statements over Flight SQL (ADBC), on real LibriSpeech audio.

A small Wav2Vec2ForCTC checkpoint is built from a config (no network) and given as
base_model; everything else is the real thing: server process, driver, audio, training
in a worker process.
"""

from __future__ import annotations

import threading
import time

import adbc_driver_flightsql.dbapi as flightsql
import psutil
import pytest

from ml.checkpoints import make_random_checkpoint
from ml_fixtures import execute
from server_process import training_worker_pids

TUTORIAL_OPTIONS = "audio_col='audio', text_col='text', epochs=1, batch_size=8"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    make_random_checkpoint(path, size="tiny")
    return path


def load_tables(url, librispeech):
    for name in ("train", "test"):
        execute(url, f"COPY librispeech_{name} OPTIONS (if_exists='replace') "
                     f"FROM '{librispeech / f'librispeech_{name}.csv'}'")


def test_tutorial_end_to_end(start_server, librispeech, checkpoint):
    server = start_server("--allow-path", str(checkpoint))  # base_model must lie in an allowed folder
    url = server.url
    load_tables(url, librispeech)
    assert execute(url, "SELECT * FROM librispeech_train").num_rows == 100

    built = execute(url, f"BUILD MODEL my_asr_model USING Wav2Vec2En OPTIONS ({TUTORIAL_OPTIONS}, "
                         f"base_model='{checkpoint}') AS SELECT * FROM librispeech_train")
    row = built.to_pylist()[0]
    assert row["model"] == "my_asr_model" and row["status"] == "ready" and row["version"] == 1
    assert row["steps"] == 13 and row["train_loss"] > 0  # 100 rows / batch 8, one epoch

    listed = execute(url, "LIST MODEL").to_pylist()
    assert [(m["name"], m["class_name"]) for m in listed] == [("my_asr_model", "Wav2Vec2En")]
    progress = execute(url, "SELECT step, epoch, loss FROM thanosql.training_info "
                            "WHERE model = 'my_asr_model' ORDER BY step")
    assert progress.num_rows >= 1 and progress.column("step").to_pylist()[-1] == 13

    predicted = execute(url, "PREDICT USING my_asr_model AS SELECT * FROM librispeech_test")
    assert predicted.schema.names == ["audio", "text", "predict_result"]
    assert predicted.num_rows == 20
    test_rows = execute(url, "SELECT * FROM librispeech_test")
    assert predicted.column("audio").to_pylist() == test_rows.column("audio").to_pylist()  # order kept

    custom = execute(url, "PREDICT USING my_asr_model OPTIONS (audio_col='audio', result_col='asr') "
                          "AS SELECT audio FROM librispeech_test LIMIT 3")
    assert custom.schema.names == ["audio", "asr"] and custom.num_rows == 3

    scores = {r["metric"]: r["score"] for r in execute(
        url, "EVALUATE USING my_asr_model AS SELECT * FROM librispeech_test").to_pylist()}
    assert {"wer", "cer", "utterances", "audio_seconds"} <= set(scores)
    assert scores["utterances"] == 20 and scores["audio_seconds"] > 200
    assert 0 <= scores["cer"] and scores["wer"] >= 0

    explained = execute(url, "EXPLAIN PREDICT USING my_asr_model AS SELECT * FROM librispeech_test "
                             "WHERE text LIKE 'a%'").column("plan").to_pylist()[0]
    lines = explained.splitlines()
    assert lines[0].startswith("Predict: model=my_asr_model")
    assert any("Filter" in line for line in lines[1:]) and any("TableScan" in line for line in lines[1:])

    fitted = execute(url, "FIT MODEL my_asr_model_v2 USING my_asr_model OPTIONS (max_epochs=1, "
                          "batch_size=8, learning_rate=1e-4) AS SELECT * FROM librispeech_train LIMIT 16")
    assert fitted.to_pylist()[0]["model"] == "my_asr_model_v2"
    again = execute(url, "FIT MODEL my_asr_model USING my_asr_model OPTIONS (epochs=1) "
                         "AS SELECT * FROM librispeech_train LIMIT 8")
    assert again.to_pylist()[0]["version"] == 2

    server.restart()
    names = {m["name"] for m in execute(server.url, "LIST MODEL").to_pylist()}
    assert names == {"my_asr_model", "my_asr_model_v2"}
    after = execute(server.url, "PREDICT USING my_asr_model AS SELECT * FROM librispeech_test LIMIT 2")
    assert after.num_rows == 2
    assert execute(server.url, "DELETE MODEL my_asr_model_v2").to_pylist() == [
        {"rows_affected": 1, "model_name": "my_asr_model_v2"}]
    assert {m["name"] for m in execute(server.url, "LIST MODEL").to_pylist()} == {"my_asr_model"}
    with pytest.raises(flightsql.Error, match="my_asr_model_v2"):
        execute(server.url, "PREDICT USING my_asr_model_v2 AS SELECT * FROM librispeech_test")


def test_prepared_ml_statements_and_bad_input(start_server, librispeech, checkpoint, tmp_path):
    server = start_server("--allow-path", str(checkpoint))  # base_model must lie in an allowed folder
    url = server.url
    load_tables(url, librispeech)
    base = f"base_model='{checkpoint}'"
    cases = [
        (f"BUILD MODEL m USING Wav2Vec2En OPTIONS (no_such_option=1, {base}) AS SELECT * FROM librispeech_train",
         ["no_such_option", "audio_col"]),
        (f"BUILD MODEL m USING Wav2Vec2En OPTIONS (epochs='three', {base}) AS SELECT * FROM librispeech_train",
         ["epochs"]),
        (f"BUILD MODEL m USING NoSuchClass OPTIONS ({base}) AS SELECT * FROM librispeech_train",
         ["NoSuchClass", "Wav2Vec2En"]),
        (f"BUILD MODEL m USING Wav2Vec2En OPTIONS (audio_col='wav', {base}) AS SELECT * FROM librispeech_train",
         ["wav", "audio, text"]),
        ("PREDICT USING no_such_model AS SELECT * FROM librispeech_test", ["no_such_model"]),
    ]
    for sql, words in cases:
        with pytest.raises(flightsql.Error) as info:
            execute(url, sql)
        message = str(info.value)
        assert "Traceback" not in message
        for word in words:
            assert word in message, message

    # Bad audio: the error names the file and row, and nothing is registered.
    (server.data_dir / "broken.wav").write_bytes(b"RIFF....not really a wav")
    execute(url, "CREATE TABLE bad_audio AS (SELECT * FROM librispeech_train LIMIT 3) "
                 f"UNION ALL SELECT '{server.data_dir / 'broken.wav'}' AS audio, 'hello' AS text")
    with pytest.raises(flightsql.Error) as info:
        execute(url, f"BUILD MODEL broken USING Wav2Vec2En OPTIONS ({base}, epochs=1) AS SELECT * FROM bad_audio")
    assert "broken.wav" in str(info.value)
    assert execute(url, "LIST MODEL").num_rows == 0
    status = execute(url, "SELECT name, status, error FROM thanosql.models").to_pylist()
    assert all(r["status"] != "ready" for r in status)

    # Prepared, with a parameter in the inner query.
    with flightsql.connect(url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f"BUILD MODEL small USING Wav2Vec2En OPTIONS ({base}, epochs=1, batch_size=4) "
                    "AS SELECT * FROM librispeech_train ORDER BY audio LIMIT 4")
        assert cur.fetch_arrow_table().to_pylist()[0]["status"] == "ready"
        cur.execute("PREDICT USING small OPTIONS (batch_size=2) AS SELECT * FROM librispeech_test "
                    "WHERE audio LIKE $1", parameters=("%3807%",))
        assert cur.fetch_arrow_table().num_rows == 1


def _training_step(url, name):
    rows = execute(url, f"SELECT max(step) AS s FROM thanosql.training_info WHERE model = '{name}'")
    return rows.column("s").to_pylist()[0] or 0


def _wait_for_training(url, name, server, timeout=180):
    """Until the worker process of `name` has taken its first optimizer step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if training_worker_pids(server) and _training_step(url, name) >= 1:
            return
        time.sleep(0.5)
    raise AssertionError(f"training of {name} did not start: {server.server_log()[-2000:]}")


def test_concurrent_query_cancel_and_killed_worker(start_server, librispeech, checkpoint):
    server = start_server("--allow-path", str(checkpoint))  # base_model must lie in an allowed folder
    url = server.url
    load_tables(url, librispeech)
    build = (f"BUILD MODEL {{name}} USING Wav2Vec2En OPTIONS (base_model='{checkpoint}', epochs=20, "
             "batch_size=4) AS SELECT * FROM librispeech_train")

    # 1. Another client's SELECT answers while BUILD trains; cancelling the statement stops it.
    conn = flightsql.connect(url, autocommit=True)
    cur = conn.cursor()
    outcome = []
    def execute_and_fetch():
        cur.execute(build.format(name="busy"))
        cur.fetch_arrow_table()  # ADBC may surface DoGet's outcome only here

    statement = threading.Thread(target=lambda: outcome.append(_error_of(execute_and_fetch)))
    statement.start()
    _wait_for_training(url, "busy", server)
    started = time.monotonic()
    assert execute(url, "SELECT count(*) AS c FROM librispeech_train").to_pylist() == [{"c": 100}]
    assert time.monotonic() - started < 5
    cur.adbc_cancel()
    statement.join(60)
    assert outcome and outcome[0] and "cancel" in outcome[0].lower(), outcome
    assert _wait_status(url, "busy") == "cancelled"
    assert not training_worker_pids(server)
    assert execute(url, "LIST MODEL").num_rows == 0
    cur.close()
    conn.close()

    # 2. A training worker killed mid-run: the run is failed, the server still serves.
    errors = []
    thread = threading.Thread(target=lambda: errors.append(_error_of(execute, url, build.format(name="doomed"))))
    thread.start()
    _wait_for_training(url, "doomed", server)
    for pid in training_worker_pids(server):
        psutil.Process(pid).kill()
    thread.join(120)
    assert errors and errors[0] and "doomed" in errors[0], errors
    assert _wait_status(url, "doomed") == "failed"
    assert server.alive()
    assert execute(url, "SELECT 1 AS one").to_pylist() == [{"one": 1}]
    assert execute(url, "LIST MODEL").num_rows == 0


def _error_of(call, *args):
    """The message of the exception `call` raises (None when it succeeds)."""
    try:
        call(*args)
    except Exception as exc:  # noqa: BLE001 - the test inspects the message
        return str(exc)
    return None


def test_killed_server_marks_training_failed(start_server, librispeech, checkpoint):
    server = start_server("--allow-path", str(checkpoint))  # base_model must lie in an allowed folder
    load_tables(server.url, librispeech)
    threading.Thread(target=lambda: _swallow(execute, server.url,
                     f"BUILD MODEL doomed USING Wav2Vec2En OPTIONS (base_model='{checkpoint}', epochs=20) "
                     "AS SELECT * FROM librispeech_train"), daemon=True).start()
    _wait_for_training(server.url, "doomed", server)
    workers = training_worker_pids(server)
    server.stop(kill=True)
    for pid in workers:  # the worker notices its parent is gone and exits
        psutil.wait_procs([psutil.Process(pid)], timeout=30) if psutil.pid_exists(pid) else None
    server.start()
    rows = execute(server.url, "SELECT status, error FROM thanosql.models WHERE name = 'doomed'").to_pylist()
    assert rows and rows[0]["status"] == "failed" and rows[0]["error"]
    assert execute(server.url, "LIST MODEL").num_rows == 0


def _swallow(call, *args):
    try:
        call(*args)
    except Exception:  # noqa: BLE001 - the test inspects the server's state instead
        pass


def _wait_status(url, name, until=None, timeout=120):
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        rows = execute(url, f"SELECT status FROM thanosql.models WHERE name = '{name}' ORDER BY version DESC")
        status = rows.column("status").to_pylist()[0] if rows.num_rows else None
        if (until is None and status not in (None, "training")) or (until is not None and status == until):
            return status
        time.sleep(0.5)
    return status
