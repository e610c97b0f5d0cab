"""A Ray cluster that is not the server's: joined through Ray Client (``--ray ray://...``), and
running beside a ``--ray local`` server.

A real head node (``ray start --head``, with its Ray Client server and Ray 2.60's token
authentication) runs for the module; real server processes join it over loopback; the real
ADBC driver sends the statements; real LibriSpeech audio, a tiny Wav2Vec2 built from a config
and Whisper tiny.en's real weights.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from ml.checkpoints import make_random_checkpoint
from ml_fixtures import execute, read_rows, shortest
from server_process import SHARED_DATA, ServerProcess, free_port

pytest.importorskip("ray", reason="the Ray tests need the ray extra: pip install -e '.[ray]'")

#: A guard against hangs only: the head is waited for until its Ray Client port answers.
START_S = 120
#: Ray Client sends the cluster's token only when told the cluster uses tokens.
CLIENT_ENV = {"RAY_AUTH_MODE": "token"}


def _answers(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _client_connects(port: int) -> bool:
    if not _answers(port):
        return False
    probe = subprocess.run([sys.executable, "-c", f"import ray; ray.init('ray://127.0.0.1:{port}')"],
                           env={**os.environ, **CLIENT_ENV}, capture_output=True, timeout=START_S)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def head():
    """(GCS port, Ray Client port) of a head node of 2 CPUs, stopped with every process it started."""
    gcs, client = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="rh")  # short: Ray's socket paths live under it
    log = open(Path(temp_dir) / "head.log", "wb")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                             f"--port={gcs}", f"--ray-client-server-port={client}", "--num-cpus=2",
                             "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}"],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_S
    while not _client_connects(client):  # its port answers a few seconds before a client is served
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the Ray head did not start: {(Path(temp_dir) / 'head.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield gcs, client
    started = psutil.Process(proc.pid).children(recursive=True)
    proc.terminate()
    for p in started:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs([psutil.Process(proc.pid), *started], timeout=20)
    for p in alive:
        p.kill()
    log.close()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def rows():
    return shortest(read_rows("librispeech_train.csv"), 6)


def _server(tmp_path, ray_address: str, *allowed: Path, env: dict | None = None) -> ServerProcess:
    args = ["--allow-path", str(SHARED_DATA)]
    for folder in allowed:
        args += ["--allow-path", str(folder)]
    return ServerProcess(tmp_path / "data", *args, "--ray", ray_address,
                         env={**CLIENT_ENV, **(env or {})}).start(timeout=START_S)


def test_through_ray_client_a_server_trains_and_transcribes_as_locally(head, rows, tmp_path):
    """BUILD runs as a Ray Train job and registers its model; PREDICT on Ray Data (driven by an
    actor in the cluster: Ray Data cannot run in a Ray Client driver) equals local PREDICT, row
    errors included, and a bad file without on_error fails with local inference's message."""
    checkpoint = Path(make_random_checkpoint(tmp_path / "ckpt" / "tiny", size="tiny", seed=0))
    server = _server(tmp_path, f"ray://127.0.0.1:{head[1]}", checkpoint.parent)
    try:
        url = server.url
        values = ", ".join("('" + a.replace("'", "''") + "', '" + t.replace("'", "''") + "')" for a, t in rows)
        execute(url, f"CREATE TABLE six AS SELECT column1 AS audio, column2 AS text FROM (VALUES {values})")
        built = execute(url, "BUILD MODEL m USING Wav2Vec2En OPTIONS (audio_col='audio', text_col='text', "
                             f"batch_size=2, epochs=1, base_model='{checkpoint}') AS SELECT * FROM six").to_pylist()[0]
        assert built["status"] == "ready" and built["steps"] == 3 and built["train_loss"] > 0
        workers = execute(url, "SELECT workers, count(*) AS n FROM thanosql.training_info WHERE model = 'm' "
                               "GROUP BY workers").to_pylist()
        assert workers == [{"workers": 1, "n": 3}]

        execute(url, "GET THANOSQL MODEL whisper_tiny_en OPTIONS (model_name='tiny')")
        missing = SHARED_DATA / "no_such_file.flac"  # allowed, so the replica is the one to find it missing
        query = f"SELECT audio FROM six UNION ALL SELECT '{missing}' ORDER BY audio"
        local = execute(url, f"PREDICT USING tiny OPTIONS (batch_size=2, on_error='null') AS {query}")
        on_ray = execute(url, f"PREDICT USING tiny OPTIONS (batch_size=2, on_error='null', num_workers=1) AS {query}")
        assert on_ray.to_pylist() == local.to_pylist()
        assert on_ray.column("predict_error").null_count == 6
        assert len(" ".join(t for t in on_ray.column("predict_result").to_pylist() if t).split()) > 20

        messages = []
        for extra in ("", ", num_workers=1"):
            with pytest.raises(Exception) as failed:
                execute(url, f"PREDICT USING tiny OPTIONS (batch_size=2{extra}) AS {query}")
            messages.append(str(failed.value))
        assert messages[1] == messages[0] and "no_such_file.flac" in messages[0]
        assert server.alive()
    finally:
        server.stop()


def test_a_local_instance_is_the_servers_own_beside_a_running_cluster(head, tmp_path):
    """``--ray local`` starts its own instance even where RAY_ADDRESS names a running cluster
    (Ray's ray.init() without an address joins that one, and refuses the server's CPU count)."""
    server = _server(tmp_path, "local", env={"RAY_ADDRESS": f"127.0.0.1:{head[0]}"})
    try:
        gcs = [p for p in psutil.Process(server.proc.pid).children(recursive=True)
               if "gcs_server" in " ".join(p.cmdline())]
        assert gcs and not any(f"--gcs_server_port={head[0]}" in " ".join(p.cmdline()) for p in gcs)
        tables = execute(server.url, "SELECT count(*) AS n FROM thanosql.models").to_pylist()
        assert tables == [{"n": 0}]
    finally:
        server.stop()
