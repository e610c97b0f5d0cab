"""The %thanosql magic through IPython's InteractiveShell against a real server process."""

from __future__ import annotations

import os

import pandas as pd
import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.display import Audio

import thanosql
from ml_fixtures import tiny_checkpoint  # noqa: F401 - a fixture
from server_process import SHARED_DATA, ServerProcess

TOKEN = "magic-test-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_checkpoint):  # noqa: F811
    """One server for the module (training is the slow part): token, mirror, tiny base model."""
    root = tmp_path_factory.mktemp("magic")
    proc = ServerProcess(root / "data", "--allow-path", str(SHARED_DATA), "--token", TOKEN,
                         "--dataset-mirror", str(SHARED_DATA),
                         env={"THANOSQL_BASE_MODEL": tiny_checkpoint}).start()
    yield proc
    proc.stop()


@pytest.fixture
def shell(monkeypatch):
    """The InteractiveShell with a fresh %thanosql (its own client state)."""
    for var in ("THANOSQL_URL", "THANOSQL_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    ip = InteractiveShell.instance()
    thanosql.load_ipython_extension(ip)
    yield ip
    ip.magics_manager.registry["ThanoSQLMagics"].client.close()


@pytest.fixture
def connected(shell, server):
    shell.run_line_magic("thanosql", server.url)
    shell.run_line_magic("thanosql", f"API_TOKEN={TOKEN}")
    return shell


@pytest.fixture(scope="module")
def tables(server):
    with thanosql.Client(server.url, token=TOKEN) as client:
        client.query("GET THANOSQL DATASET librispeech_data OPTIONS (overwrite=True)")


def test_statements_are_split_by_sqlglot_tokens_not_text():
    from thanosql.statements import describe, split
    assert split("SELECT ';' AS a; -- x; y\n") == ["SELECT ';' AS a"]
    assert split("EXPLAIN SELECT 1; SELECT 2") == ["EXPLAIN SELECT 1", "SELECT 2"]
    assert split(";; /* ; */ SELECT 1 ;") == ["/* ; */ SELECT 1"]
    assert split("SELECT 'unterminated; x") == ["SELECT 'unterminated; x"]  # left to the server
    build = describe("BUILD MODEL My_Model USING Wav2Vec2En OPTIONS (audio_col='a', epochs=2, "
                     "overwrite=True) AS SELECT * FROM t WHERE x = 'AS'")
    assert (build.kind, build.model, build.query) == ("BUILD", "my_model", "SELECT * FROM t WHERE x = 'AS'")
    assert build.options == {"audio_col": "a", "epochs": 2, "overwrite": True}
    fit = describe('FIT MODEL "New" USING old OPTIONS (epochs=1) AS SELECT 1')
    assert (fit.model, fit.options, fit.query) == ("New", {"epochs": 1}, "SELECT 1")
    assert describe("PRINT AUDIO AS SELECT audio FROM t").query == "SELECT audio FROM t"


def test_token_is_required_and_checked(shell, server, capsys):
    shell.run_line_magic("thanosql", server.url)
    with pytest.raises(thanosql.ThanoSQLError) as err:
        shell.run_line_magic("thanosql", "SELECT 1")
    assert err.value.code == "UNAUTHENTICATED" and "API_TOKEN" in str(err.value)
    shell.run_line_magic("thanosql", "API_TOKEN=wrong")
    with pytest.raises(thanosql.ThanoSQLError, match="API_TOKEN"):
        shell.run_line_magic("thanosql", "SELECT 1")
    shell.run_line_magic("thanosql", f"API_TOKEN={TOKEN}")
    assert shell.run_line_magic("thanosql", "SELECT 1 AS one")["one"].tolist() == [1]
    assert "API token set" in capsys.readouterr().out


def test_select_and_updates_return_dataframes(connected, tables):
    frame = connected.run_cell_magic("thanosql", "", "SELECT * FROM librispeech_train")
    assert isinstance(frame, pd.DataFrame) and frame.shape == (100, 2)
    update = connected.run_cell_magic("thanosql", "", "CREATE TABLE magic_t AS SELECT 1 AS a")
    assert list(update.columns) == ["rows_affected"]
    result = connected.run_cell("n = %thanosql SELECT count(*) AS n FROM librispeech_test")
    assert result.success and connected.user_ns["n"]["n"].tolist() == [20]
    # A semicolon inside a string or a trailing one is not a second statement.
    assert connected.run_cell_magic("thanosql", "", "SELECT 'a;b' AS s; -- done")["s"].tolist() == ["a;b"]


def test_two_statements_are_refused(connected, capsys):
    result = connected.run_cell("%%thanosql\nCREATE TABLE never AS SELECT 1 AS a;\nSELECT 2")
    assert isinstance(result.error_in_exec, thanosql.ThanoSQLError)
    out = capsys.readouterr()
    assert "Multiple Queries are not supported" in out.out + out.err
    assert "Traceback" not in out.out + out.err
    assert connected.run_line_magic("thanosql", "LIST TABLE")["table_name"].isin(["never"]).sum() == 0


def test_server_error_is_shown_cleanly(connected, capsys):
    result = connected.run_cell("%thanosql SELECT * FROM no_such_table")
    assert isinstance(result.error_in_exec, thanosql.ThanoSQLError)
    shown = "".join(capsys.readouterr())
    assert "ThanoSQL error:" in shown and "no_such_table" in shown
    for noise in ("Traceback", "[FlightSQL]", "Detail:", "adbc_driver", "(NotFound"):
        assert noise not in shown
    result = connected.run_cell("%thanosql BUILD MODEL m USING NoSuchClass AS SELECT * FROM librispeech_train")
    assert "NoSuchClass" in str(result.error_in_exec)


def test_build_shows_progress_then_predict_and_print_audio(connected, tables, capsys):
    connected.run_cell_magic(
        "thanosql", "",
        "BUILD MODEL magic_asr USING Wav2Vec2En OPTIONS (audio_col='audio', text_col='text', epochs=1, "
        "batch_size=8) AS SELECT * FROM librispeech_train ORDER BY audio LIMIT 16")
    err = capsys.readouterr().err
    # Not a terminal: plain lines, never carriage returns; the last one is the final state.
    assert "\r" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("BUILD magic_asr v1: 2/2 steps, epoch 1.00/1, loss "), err
    result = connected.run_cell(
        "result = %thanosql PREDICT USING magic_asr OPTIONS (audio_col='audio', result_col='predict_result') "
        "AS SELECT * FROM librispeech_test LIMIT 4")
    assert result.success, result.error_in_exec
    predicted = connected.user_ns["result"]
    assert list(predicted.columns) == ["audio", "text", "predict_result"] and len(predicted) == 4
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("PREDICT magic_asr: 4/4 utterances [")
    models = connected.run_line_magic("thanosql", "SELECT name, status FROM thanosql.models")
    assert models.values.tolist() == [["magic_asr", "ready"]]

    players = connected.run_cell_magic(
        "thanosql", "", "PRINT AUDIO OPTIONS (audio_col='audio') AS SELECT audio, text FROM librispeech_test LIMIT 3")
    assert len(players) == 3 and all(isinstance(p, Audio) for p in players)
    assert all(os.path.isfile(path) for path in players.paths)
    assert players[0].data == open(players.paths[0], "rb").read()
    shown = connected.run_cell("%thanosql PRINT AUDIO AS SELECT * FROM librispeech_test LIMIT 1")
    assert shown.success and isinstance(shown.result, list)
    assert "librispeech_data/audio/" in capsys.readouterr().out  # each player is labelled with its path


def test_without_configuration_a_local_server_is_started_once(shell, tmp_path, monkeypatch, capsys):
    from thanosql import local_server
    monkeypatch.setenv("THANOSQL_DATA_DIR", str(tmp_path / "default-data"))
    monkeypatch.setattr(local_server, "_shared", None)
    try:
        assert shell.run_line_magic("thanosql", "SELECT 1 AS x")["x"].tolist() == [1]
        shell.run_line_magic("thanosql", "SELECT 2 AS x")
        out = capsys.readouterr()
        assert out.out.count("a local one was started at grpc://127.0.0.1:") == 1  # a notice, not stderr
        assert "local one" not in out.err
        assert (tmp_path / "default-data" / "catalog.sqlite").exists()
    finally:
        if local_server._shared is not None:
            local_server._shared.stop()


def test_thanosql_url_is_used_when_set(shell, server, monkeypatch):
    monkeypatch.setenv("THANOSQL_URL", server.url)
    monkeypatch.setenv("THANOSQL_API_TOKEN", TOKEN)
    thanosql.load_ipython_extension(shell)
    assert shell.run_line_magic("thanosql", "SELECT 3 AS x")["x"].tolist() == [3]
    conn = thanosql.connect()  # the plain Python API reads the same variables
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT 4 AS x")
        assert cursor.fetch_arrow_table().column("x").to_pylist() == [4]
    finally:
        conn.close()


def test_the_local_server_does_not_outlive_a_killed_client(tmp_path):
    """A kernel killed outright (SIGKILL) must not leave its server holding the data directory."""
    import signal
    import subprocess
    import sys
    import time
    script = ("from thanosql.local_server import LocalServer\n"
              f"s = LocalServer({str(tmp_path / 'data')!r}).start()\n"
              "print(s.proc.pid, flush=True)\n"
              "import time; time.sleep(600)\n")
    client = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(client.stdout.readline())
        client.send_signal(signal.SIGKILL)
        client.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and _running(server_pid):
            time.sleep(0.2)
        if _running(server_pid):
            os.kill(server_pid, signal.SIGKILL)
            raise AssertionError("the server kept running after its client was killed")
    finally:
        client.kill()
        client.stdout.close()


def _running(pid: int) -> bool:
    """Alive and not a zombie (an exited child waits there until init reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_a_server_url_is_checked_at_once(shell, server, capsys):
    with pytest.raises(thanosql.ThanoSQLError) as err:
        shell.run_line_magic("thanosql", "grpc://127.0.0.1:1")  # nothing listens there
    assert err.value.code == "UNAVAILABLE" and "127.0.0.1:1" in str(err.value)
    shell.run_line_magic("thanosql", server.url)  # it answers, and wants a token
    assert "requires an API token" in capsys.readouterr().out


def test_problems_are_reported_before_any_progress(connected, tables, capsys):
    for sql, words in (("PREDICT USING no_such_model AS SELECT * FROM librispeech_test", ["no_such_model"]),
                       ("EVALUATE USING magic_asr OPTIONS (batch_sise=2) AS SELECT * FROM librispeech_test",
                        ["batch_sise"])):
        result = connected.run_cell(f"%thanosql {sql}")
        assert isinstance(result.error_in_exec, thanosql.ThanoSQLError)
        assert all(w in str(result.error_in_exec) for w in words)
        out = capsys.readouterr()
        assert sql.split()[0] not in out.err, out.err  # no progress line was drawn


def test_copy_get_and_delete_return_a_row_over_adbc(server, tables):
    import adbc_driver_flightsql.dbapi as flightsql
    with flightsql.connect(server.url, autocommit=True, db_kwargs={
            "adbc.flight.sql.authorization_header": f"Bearer {TOKEN}"}) as conn, conn.cursor() as cur:
        cur.execute("COPY magic_copy OPTIONS (if_exists='replace') "
                    "FROM 'thanosql-dataset/librispeech_data/librispeech_test.csv'")
        assert [d[0] for d in cur.description] == ["rows_affected", "table_name"]
        cur.execute("DELETE MODEL IF EXISTS never_built")  # the COPY's result was never read:
        assert cur.fetchall() == [(0, "never_built")]
        cur.execute("SELECT count(*) FROM magic_copy")  # ...it was done all the same
        assert cur.fetchall() == [(20,)]


def test_evaluate_details_rows_and_the_worst_utterances(connected, tables, capsys):
    frame = connected.run_cell_magic(
        "thanosql", "", "EVALUATE USING magic_asr OPTIONS (details=True, normalizer='basic') "
                        "AS SELECT * FROM librispeech_test ORDER BY audio LIMIT 3")
    assert list(frame.columns) == ["row", "audio", "reference", "transcript", "wer", "word_errors", "words",
                                   "reference_normalized", "transcript_normalized"]
    assert sorted(frame["row"]) == [0, 1, 2] and list(frame["wer"]) == sorted(frame["wer"], reverse=True)
    assert "worst 3 of 3 utterances" in capsys.readouterr().out
    from thanosql.pictures import WorstUtterances
    shown = WorstUtterances(frame)._repr_html_()
    assert shown.count("<tr>") == 4 and "background:#fdd" in shown  # a random model gets words wrong
