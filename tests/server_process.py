"""A real `thanosql-server` process on loopback, for tests (and benchmarks)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("THANOSQL_TEST_DATA",
                                  REPO.parent / "shared" / "datasets" / "librispeech_data")).resolve()


def free_port() -> int:
    """A loopback port free now (for a process that needs its port given)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """Starts the server with `python -m flight_server`, waits for its listening line."""

    def __init__(self, data_dir: Path, *args: str, env: dict | None = None):
        self.data_dir = Path(data_dir)
        self.args = list(args)
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-server.log"

    def start(self, timeout: float = 60) -> "ServerProcess":
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flight_server", "--port", "0", "--data-dir", str(self.data_dir),
             *self.args], stdout=subprocess.PIPE, stderr=self.log, env=env, cwd=REPO)
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line:
                match = re.search(rb"listening on (\S+)", line)
                if match:
                    self.url = match.group(1).decode()
                    return self
            elif self.proc.poll() is not None:
                break
        raise RuntimeError(f"server did not start: {line!r}; log: {self.log_path.read_text()[-3000:]}")

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.log.close()
        self.proc = None

    def restart(self) -> "ServerProcess":
        self.stop()
        return self.start()

    def server_log(self) -> str:
        return self.log_path.read_text(errors="replace")


def training_worker_pids(server: ServerProcess) -> list[int]:
    """The server's training worker processes: spawned children (not multiprocessing's
    resource tracker)."""
    import psutil

    pids = []
    for child in psutil.Process(server.proc.pid).children(recursive=True):
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                pids.append(child.pid)
        except psutil.NoSuchProcess:
            pass
    return pids
