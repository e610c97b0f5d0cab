"""Background trainings (BUILD / FIT ... OPTIONS (wait=False)) and CANCEL MODEL.

A real server process on loopback, the real ADBC driver, real LibriSpeech audio and a tiny
Wav2Vec2 checkpoint built from a config; training runs in the real worker process.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from pathlib import Path

import adbc_driver_flightsql.dbapi as flightsql
import psutil
import pytest

from ml.checkpoints import make_random_checkpoint
from ml_fixtures import execute, shortest
from server_process import SHARED_DATA, ServerProcess, training_worker_pids

#: A guard against hangs only: every wait below ends as soon as its condition holds.
HANG_S = 180


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """(folder allowed to the server, a tiny checkpoint, a copy of it with corrupt weights)."""
    root = tmp_path_factory.mktemp("jobs-ckpt")
    good = Path(make_random_checkpoint(root / "tiny", size="tiny", seed=0))
    bad = root / "corrupt"
    shutil.copytree(good, bad)
    weights = [p for p in bad.iterdir() if p.suffix in (".safetensors", ".bin")]
    assert weights, sorted(p.name for p in bad.iterdir())
    for path in weights:
        path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not a header")
    return root, good, bad


def _rows_table(url, name, rows):
    values = ", ".join("('" + a.replace("'", "''") + "', '" + t.replace("'", "''") + "')" for a, t in rows)
    execute(url, f"CREATE OR REPLACE TABLE {name} AS SELECT column1 AS audio, column2 AS text "
                 f"FROM (VALUES {values})")


@pytest.fixture(scope="module")
def server(tmp_path_factory, checkpoints):
    root, _, _ = checkpoints
    proc = ServerProcess(tmp_path_factory.mktemp("jobs") / "data", "--allow-path", str(SHARED_DATA),
                         "--allow-path", str(root)).start()
    from ml_fixtures import read_rows
    rows = shortest(read_rows("librispeech_train.csv"), 4)
    _rows_table(proc.url, "four", rows)
    _rows_table(proc.url, "two", rows[:2])
    yield proc
    proc.stop()


def failure(url, sql) -> tuple[str, str]:
    """(gRPC status, message) of a statement that must fail (the ADBC driver's text:
    "<ADBC status>: [FlightSQL] <message> (<gRPC code>; <RPC>)")."""
    with pytest.raises(flightsql.Error) as info:
        execute(url, sql)
    return _status(str(info.value))


def _status(text: str) -> tuple[str, str]:
    match = re.match(r"[A-Z_]+: (?:\[FlightSQL\] )?(.*) \((\w+); [^()]*\)\s*$", text, re.S)
    assert match, text
    assert "Traceback" not in text, text
    return re.sub(r"(?<!^)(?=[A-Z])", "_", match.group(2)).upper(), match.group(1)


def _models(url, name):
    return execute(url, f"SELECT version, status, error FROM thanosql.models WHERE name = '{name}' "
                        "ORDER BY version").to_pylist()


def _until(condition, what):
    deadline = time.monotonic() + HANG_S
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.2)


def _step(url, name):
    rows = execute(url, f"SELECT max(step) AS s FROM thanosql.training_info WHERE model = '{name}' "
                        "AND status = 'training'")
    return rows.column("s").to_pylist()[0] or 0


def _run_id(url, name):
    return execute(url, f"SELECT DISTINCT run_id FROM thanosql.training_info WHERE model = '{name}'"
                   ).column("run_id").to_pylist()[-1]


def _training_now(server, name):
    """Until the worker of `name` took an optimizer step: (its worker pids, the run id)."""
    _until(lambda: training_worker_pids(server) and _step(server.url, name) >= 1, f"{name} to train")
    return training_worker_pids(server), _run_id(server.url, name)


def _gone(pids):
    return all(not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE for p in pids)


def test_background_build_returns_at_once_and_becomes_ready(server, checkpoints):
    _, good, _ = checkpoints
    url = server.url
    result = execute(url, f"BUILD MODEL bg USING Wav2Vec2En OPTIONS (base_model='{good}', epochs=1, "
                          "batch_size=4, wait=False) AS SELECT * FROM four")
    assert result.schema.names == ["model", "version", "status", "epochs", "steps", "train_loss",
                                   "audio_seconds", "seconds", "skipped_rows"]
    row = result.to_pylist()[0]
    assert (row["model"], row["version"], row["status"]) == ("bg", 1, "training")
    assert row["epochs"] is row["steps"] is row["train_loss"] is row["seconds"] is None
    assert row["skipped_rows"] == 0
    assert _models(url, "bg")[0]["status"] in ("training", "ready")  # registered before it returned
    listed = {r["name"]: r for r in execute(url, "LIST MODEL").to_pylist()}
    assert listed["bg"]["class_name"] == "Wav2Vec2En" and listed["bg"]["status"] in ("training", "ready")

    _until(lambda: _models(url, "bg")[0]["status"] != "training", "bg to finish")
    assert _models(url, "bg") == [{"version": 1, "status": "ready", "error": None}]
    assert execute(url, "LIST MODEL").to_pylist()[0]["status"] == "ready"
    steps = execute(url, "SELECT step FROM thanosql.training_info WHERE model = 'bg'").column("step").to_pylist()
    assert steps and max(steps) == 1
    predicted = execute(url, "PREDICT USING bg AS SELECT * FROM two")
    assert predicted.num_rows == 2 and "predict_result" in predicted.schema.names

    # FIT too; CANCEL MODEL of a model with nothing training says its status.
    fitted = execute(url, "FIT MODEL bg USING bg OPTIONS (epochs=1, batch_size=2, max_steps=1, wait=False) "
                          "AS SELECT * FROM two").to_pylist()[0]
    assert (fitted["version"], fitted["status"]) == (2, "training")
    _until(lambda: _models(url, "bg")[-1]["status"] != "training", "the FIT to finish")
    assert [r["status"] for r in _models(url, "bg")] == ["ready", "ready"]
    status, message = failure(url, "CANCEL MODEL bg")
    assert status in ("FAILED_PRECONDITION", "UNAVAILABLE"), (status, message)  # pyarrow sends it as UNAVAILABLE
    assert "model 'bg' is not training (its latest version 2 is ready)" in message, message

    status, message = failure(url, "CANCEL MODEL no_such_model")
    assert status == "NOT_FOUND" and "no_such_model" in message, (status, message)


def test_cancel_model_stops_a_background_run(server, checkpoints):
    _, good, _ = checkpoints
    url = server.url
    row = execute(url, f"BUILD MODEL long_bg USING Wav2Vec2En OPTIONS (base_model='{good}', epochs=500, "
                       "batch_size=1, wait=False) AS SELECT * FROM two").to_pylist()[0]
    assert row["status"] == "training"
    workers, run_id = _training_now(server, "long_bg")
    staging = server.data_dir / "models" / ".staging" / run_id
    assert staging.is_dir()
    # While it trains: another BUILD of the name is refused, saying how to stop it.
    status, message = failure(url, f"BUILD MODEL long_bg USING Wav2Vec2En OPTIONS (base_model='{good}') "
                                   "AS SELECT * FROM two")
    assert "CANCEL MODEL long_bg" in message, message
    assert execute(url, "SELECT status FROM (LIST MODEL) x WHERE name = 'long_bg'").to_pylist() == [
        {"status": "training"}]

    assert execute(url, "CANCEL MODEL long_bg").to_pylist() == [{"rows_affected": 1, "model_name": "long_bg"}]
    rows = _models(url, "long_bg")
    assert [(r["version"], r["status"]) for r in rows] == [(1, "cancelled")]
    assert "CANCEL MODEL" in rows[0]["error"]
    assert _gone(workers), workers
    assert not staging.exists() and not (server.data_dir / "models" / "long_bg" / "v1").exists()
    assert "long_bg" not in {r["name"] for r in execute(url, "LIST MODEL").to_pylist()}
    status, message = failure(url, "CANCEL MODEL long_bg")
    assert "its latest version 1 was cancelled" in message, (status, message)
    assert execute(url, "DELETE MODEL long_bg").to_pylist() == [{"rows_affected": 1, "model_name": "long_bg"}]


def test_cancel_model_stops_a_waiting_build_on_another_connection(server, checkpoints):
    _, good, _ = checkpoints
    url = server.url
    outcome: list = []

    def build():
        try:
            with flightsql.connect(url, autocommit=True) as conn, conn.cursor() as cur:
                cur.execute(f"BUILD MODEL waited USING Wav2Vec2En OPTIONS (base_model='{good}', epochs=500, "
                            "batch_size=1) AS SELECT * FROM two")
                cur.fetch_arrow_table()  # ADBC may surface DoGet's outcome only here
            outcome.append(None)
        except Exception as exc:  # noqa: BLE001 - inspected below
            outcome.append(str(exc))

    thread = threading.Thread(target=build)
    thread.start()
    workers, _ = _training_now(server, "waited")
    assert execute(url, "CANCEL MODEL waited").to_pylist() == [{"rows_affected": 1, "model_name": "waited"}]
    thread.join(HANG_S)
    assert outcome and outcome[0], outcome
    status, message = _status(outcome[0])
    assert status == "CANCELED", (status, message)  # gRPC spells it CANCELLED, ADBC Canceled
    assert "training of model 'waited' (version 1) was cancelled by CANCEL MODEL" in message, message
    assert [r["status"] for r in _models(url, "waited")] == ["cancelled"]
    assert _gone(workers), workers


def test_failing_background_run_records_its_error(server, checkpoints):
    _, _, bad = checkpoints
    url = server.url
    row = execute(url, f"BUILD MODEL broken_bg USING Wav2Vec2En OPTIONS (base_model='{bad}', epochs=1, "
                       "wait=False) AS SELECT * FROM two").to_pylist()[0]
    assert (row["status"], row["version"]) == ("training", 1)
    _until(lambda: _models(url, "broken_bg")[0]["status"] != "training", "broken_bg to fail")
    rows = _models(url, "broken_bg")
    assert rows[0]["status"] == "failed" and rows[0]["error"], rows
    assert "Traceback" not in rows[0]["error"]
    assert "broken_bg" not in {r["name"] for r in execute(url, "LIST MODEL").to_pylist()}
    status, message = failure(url, "PREDICT USING broken_bg AS SELECT * FROM two")
    assert status == "NOT_FOUND" and "failed" in message, (status, message)
    # Bad input still fails the statement itself, wait=False or not, and registers nothing.
    status, message = failure(url, "BUILD MODEL never USING Wav2Vec2En OPTIONS (wait=False, text_col='nope') "
                                   "AS SELECT * FROM two")
    assert status == "INVALID_ARGUMENT" and "nope" in message, (status, message)
    status, message = failure(url, "BUILD MODEL never USING Wav2Vec2En OPTIONS (wait='no') AS SELECT * FROM two")
    assert status == "INVALID_ARGUMENT" and "wait" in message, (status, message)
    assert _models(url, "never") == []


def test_server_shutdown_cancels_background_training(tmp_path, checkpoints):
    """In process: FlightSqlServer.shutdown() stops the engine's trainings first; a server
    at its --max-trainings refuses one more."""
    from flight_server.server import FlightSqlServer
    from ml.registry import ModelRegistry
    from planner.engine import Engine

    root, good, _ = checkpoints
    engine = Engine(tmp_path / "data", allowed_roots=[SHARED_DATA, root], max_trainings=1)
    flight_server = FlightSqlServer(engine, "grpc://127.0.0.1:0")
    url = f"grpc://127.0.0.1:{flight_server.port}"
    try:
        from ml_fixtures import read_rows
        _rows_table(url, "two", shortest(read_rows("librispeech_train.csv"), 2))
        row = execute(url, f"BUILD MODEL bye USING Wav2Vec2En OPTIONS (base_model='{good}', epochs=500, "
                           "batch_size=1, wait=False) AS SELECT * FROM two").to_pylist()[0]
        assert row["status"] == "training"
        registry = ModelRegistry(tmp_path / "data")
        run = _until(lambda: [r for r in registry.models_table().to_pylist() if r["name"] == "bye"], "the run")
        assert run[0]["status"] == "training"
        pid = _until(lambda: engine.registry.latest_run("bye") and _worker_pid(engine, "bye"), "the worker")
        # --max-trainings 1: a second training is refused before it registers a run
        status, message = failure(url, f"BUILD MODEL two_at_once USING Wav2Vec2En OPTIONS (base_model='{good}', "
                                       "wait=False) AS SELECT * FROM two")
        # RESOURCE_EXHAUSTED, which pyarrow sends as UNAVAILABLE (README: errors)
        assert status == "UNAVAILABLE" and "--max-trainings" in message, (status, message)
        assert not [r for r in registry.models_table().to_pylist() if r["name"] == "two_at_once"]
    finally:
        flight_server.shutdown()
    rows = [r for r in registry.models_table().to_pylist() if r["name"] == "bye"]
    assert [r["status"] for r in rows] == ["cancelled"]
    assert "shut down" in rows[0]["error"]
    assert _gone([pid])
    assert not engine.jobs.running("bye")


def _worker_pid(engine, name):
    return engine.registry.get_run(engine.registry.latest_run(name)["run_id"])["worker_pid"]
