"""A server subprocess on this machine, for when the user has not named one.

The notebook and `thanosql demo` must work from a fresh clone without a separate
terminal: this starts `python -m flight_server` on a free loopback port and the embedded
default data directory, reads the URL from its first line, and stops it when Python exits
(and when Python dies: the child watches a pipe from its parent and stops at its end).
"""

from __future__ import annotations

import atexit
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from thanosql.errors import ThanoSQLError

DEFAULT_DATA_DIR = "./thanosql-data"  # the server's own default (flight_server/cli.py)


def default_data_dir() -> Path:
    return Path(os.environ.get("THANOSQL_DATA_DIR") or DEFAULT_DATA_DIR).expanduser().resolve()


# The server, plus a thread that stops it when stdin (a pipe held by this process) closes:
# a kernel killed outright leaves no server behind holding the data directory.
BOOTSTRAP = """\
import os, signal, sys, threading
def _watch_parent():
    sys.stdin.buffer.read()
    os.kill(os.getpid(), signal.SIGTERM)
threading.Thread(target=_watch_parent, daemon=True).start()
from flight_server.cli import main
sys.exit(main(sys.argv[1:]))
"""


class LocalServer:
    """One `flight_server` child process; `url` once started."""

    def __init__(self, data_dir: str | Path | None = None, args: list[str] | None = None,
                 env: dict | None = None):
        self.data_dir = Path(data_dir).expanduser().resolve() if data_dir else default_data_dir()
        self.args = list(args or [])
        self.env = env or {}
        self.url = ""
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir / "server.log"

    def start(self, timeout: float = 120) -> "LocalServer":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        cmd = [sys.executable, "-c", BOOTSTRAP, "--host", "127.0.0.1", "--port", "0",
               "--data-dir", str(self.data_dir), *self.args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env=env,
                                     stdin=subprocess.PIPE)
        log.close()
        atexit.register(self.stop)
        found: list[str] = []
        reader = threading.Thread(target=self._read_url, args=(found,), daemon=True)
        reader.start()
        reader.join(timeout)
        if not found:
            self.stop()
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise ThanoSQLError(f"the local server did not start within {timeout:.0f} s; "
                                f"its log ({self.log_path}) ends with:\n{tail}")
        self.url = found[0]
        return self

    def _read_url(self, found: list[str]) -> None:
        proc = self.proc
        for line in proc.stdout:
            match = re.search(rb"listening on (\S+)", line)
            if match:
                found.append(match.group(1).decode())
                break
        # Keep draining stdout so the server never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        try:
            proc.stdin.close()
        except OSError:
            pass


_shared: LocalServer | None = None
_shared_lock = threading.Lock()


def shared_server(announce=print) -> LocalServer:
    """The process-wide local server, started on first use (and announced once)."""
    global _shared
    with _shared_lock:
        if _shared is None or not _shared.alive():
            started = time.monotonic()
            _shared = LocalServer().start()
            announce(f"thanosql: no server configured (THANOSQL_URL is not set), so a local one was "
                     f"started at {_shared.url} on data directory {_shared.data_dir} "
                     f"({time.monotonic() - started:.1f} s; log: {_shared.log_path}). "
                     f"Use %thanosql grpc://host:port to use another.")
        return _shared
