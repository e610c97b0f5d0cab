"""Shared pieces of the benchmarks: timing statistics, tables, result files, processes.

Every benchmark measures its contenders in one run, interleaved round by round where it
can, and reports ratios: the machine is shared and noisy, so absolute times alone mean
little. Results go to ``benchmarks/results/<name>-<date>.json`` with the machine and the
versions that produced them.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
SHARED_DATA = Path(os.environ.get("THANOSQL_TEST_DATA",
                                  REPO.parent / "shared" / "datasets" / "librispeech_data")).resolve()
SHARED_ROOT = SHARED_DATA.parent

_TESTS = str(REPO / "tests")
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
from server_process import ServerProcess, free_port  # noqa: E402  (tests/server_process.py)


# ----------------------------------------------------------------------------- statistics

def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of ``values``; NaN when empty."""
    data = sorted(values)
    if not data:
        return math.nan
    if len(data) == 1:
        return float(data[0])
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return float(data[lo] + (data[hi] - data[lo]) * (pos - lo))


def summarize(values: Sequence[float]) -> dict:
    """n, median, min, max, mean, p50, p90, p99 of ``values`` (seconds or any unit)."""
    data = [float(v) for v in values]
    if not data:
        return {"n": 0}
    return {"n": len(data), "median": percentile(data, 50), "min": min(data), "max": max(data),
            "mean": sum(data) / len(data), "p50": percentile(data, 50), "p90": percentile(data, 90),
            "p99": percentile(data, 99)}


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


# ----------------------------------------------------------------------------- output

def fmt(value: Any, unit: str = "", digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if unit == "ms":
            return f"{value * 1e3:.{digits}g}" if value * 1e3 < 10 ** digits else f"{value * 1e3:.0f}"
        if unit == "x":
            return f"{value:.2f}x"
        if unit == "%":
            return f"{value * 100:.1f}%"
        return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:.0f}"
    return str(value)


def table_text(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain monospace table (also valid Markdown)."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


def print_table(title: str, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    text = f"\n{title}\n{table_text(headers, rows)}\n"
    print(text, flush=True)
    return text


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- environment

def git_commit() -> str | None:
    """The checked-out commit, read from .git directly (no git process)."""
    git = REPO / ".git"
    try:
        if git.is_file():  # a worktree: "gitdir: PATH"
            git = Path(git.read_text().split(":", 1)[1].strip())
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head
        ref = head.split(None, 1)[1]
        for base in (git, Path(str(git).split("/worktrees/")[0]) if "/worktrees/" in str(git) else git):
            path = base / ref
            if path.exists():
                return path.read_text().strip()
            packed = base / "packed-refs"
            if packed.exists():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split()[0]
    except OSError:
        return None
    return None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def machine_info() -> dict:
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        affinity = None
    mem = None
    try:
        import psutil
        mem = round(psutil.virtual_memory().total / 2 ** 30, 1)
    except Exception:
        pass
    gpu = None
    try:
        import torch
        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except Exception:
        pass
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_available": affinity,
        "memory_gib": mem,
        "gpu": gpu,
        "python": platform.python_version(),
        "versions": {name: _version(dist) for name, dist in (
            ("pyarrow", "pyarrow"), ("datafusion", "datafusion"), ("torch", "torch"),
            ("transformers", "transformers"), ("adbc-driver-flightsql", "adbc-driver-flightsql"),
            ("adbc-driver-postgresql", "adbc-driver-postgresql"), ("accelerate", "accelerate"),
            ("jiwer", "jiwer"), ("numpy", "numpy"), ("thanosql-flight", "thanosql-flight"))},
        "git_commit": git_commit(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def write_result(name: str, payload: dict, results_dir: Path | None = None, quick: bool = False) -> Path:
    """benchmarks/results/<name>-<date>[-quick].json (written atomically); returns the path."""
    out_dir = Path(results_dir) if results_dir else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now(_dt.timezone.utc)
    doc = {"benchmark": name, "date": now.strftime("%Y-%m-%d"),
           "timestamp": now.isoformat(timespec="seconds"), "quick": quick,
           "command": " ".join([Path(sys.executable).name, "-m", f"benchmarks.{name}", *sys.argv[1:]]),
           "machine": machine_info(), **payload}
    path = out_dir / f"{name}-{now.strftime('%Y-%m-%d')}{'-quick' if quick else ''}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)
    print(f"results written to {path}", flush=True)
    return path


def _json_default(obj):
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true",
                   help="smoke mode: tiny sizes, one repeat, PostgreSQL skipped if not installed")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per contender")
    p.add_argument("--results-dir", type=Path, default=None,
                   help=f"where the JSON goes (default {RESULTS_DIR.relative_to(REPO)})")
    return p


# ----------------------------------------------------------------------------- our server

@contextlib.contextmanager
def our_server(data_dir: Path | None = None, *args: str, env: dict | None = None) -> Iterator[ServerProcess]:
    """A thanosql-server process on loopback (data in a temp dir unless given)."""
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="thanosql-bench-"))) / "data"
        server = ServerProcess(Path(data_dir), "--allow-path", str(SHARED_ROOT), "--log-level", "WARNING",
                               *args, env=env)
        server.start(timeout=120)
        try:
            yield server
        finally:
            server.stop()


def connect(url: str):
    import adbc_driver_flightsql.dbapi as flightsql
    return flightsql.connect(url, autocommit=True)


def process_tree(pid: int):
    import psutil
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


class PeakMemory:
    """Samples the summed RSS (and PSS, where readable) of a process tree in a thread.

    Kept cheap, since it shares the CPUs with what it measures: the process list is
    refreshed every second, RSS (/proc/PID/statm) read every ``interval`` seconds, PSS
    (/proc/PID/smaps_rollup, which walks page tables) every ``pss_interval`` seconds.
    """

    def __init__(self, pid: int, interval: float = 0.2, pss_interval: float = 2.0):
        self.pid, self.interval, self.pss_interval = pid, interval, pss_interval
        self.peak_rss = 0
        self.peak_pss = 0
        self.start_rss = 0
        self.samples = 0
        self._procs: list = []
        self._procs_at = -1e9
        self._cpu_start: dict[int, float] = {}  # pid -> CPU seconds when first seen at start
        self._cpu_last: dict[int, float] = {}   # pid -> CPU seconds last seen
        self._pss_at = -1e9
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-memory", daemon=True)

    def _tree(self) -> list:
        import psutil
        now = time.monotonic()
        if now - self._procs_at >= 1.0:
            try:
                self._procs = process_tree(self.pid)
            except psutil.Error:
                self._procs = []
            self._procs_at = now
        return self._procs

    def sample(self, with_pss: bool = True) -> tuple[int, int]:
        import psutil
        rss = pss = 0
        for proc in self._tree():
            try:
                rss += proc.memory_info().rss
                cpu = proc.cpu_times()
                self._cpu_last[proc.pid] = cpu.user + cpu.system
                if with_pss:
                    pss += _pss(proc.pid)
            except psutil.Error:
                continue
        return rss, pss

    @property
    def cpu_seconds(self) -> float:
        """CPU time the tree used while sampled (processes that lived under a second between
        two process-list refreshes are missed; their last second is missed too)."""
        return sum(v - self._cpu_start.get(pid, 0.0) for pid, v in self._cpu_last.items())

    def _run(self):
        while not self._stop.is_set():
            now = time.monotonic()
            with_pss = now - self._pss_at >= self.pss_interval
            if with_pss:
                self._pss_at = now
            rss, pss = self.sample(with_pss)
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_pss = max(self.peak_pss, pss)
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":
        self.start_rss = self.sample(with_pss=False)[0]
        self._cpu_start = dict(self._cpu_last)
        self._procs_at = -1e9
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample(with_pss=False)  # final CPU times of what is still alive
        self.wall = time.monotonic() - self._started

    def report(self) -> dict:
        return {"start_rss_mib": round(self.start_rss / 2 ** 20, 1),
                "peak_rss_mib": round(self.peak_rss / 2 ** 20, 1),
                "peak_pss_mib": round(self.peak_pss / 2 ** 20, 1) if self.peak_pss else None,
                "cpu_s": round(self.cpu_seconds, 2),
                "cpu_per_wall": round(self.cpu_seconds / self.wall, 3) if getattr(self, "wall", 0) else None,
                "samples": self.samples}


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# ----------------------------------------------------------------------------- PostgreSQL

def find_postgres_bin() -> Path | None:
    """The folder holding initdb/pg_ctl/postgres (Debian's /usr/lib/postgresql/N/bin or PATH)."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, reverse=True)
    for folder in candidates:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(os.path.realpath(initdb)).parent
    return None


class PostgresCluster:
    """A throwaway PostgreSQL cluster on loopback: initdb into a temp dir, start, stop, delete.

    PostgreSQL refuses to run as root, so as root the cluster belongs to the ``postgres``
    system user (Debian's package creates it) and its commands run through ``runuser``.
    """

    def __init__(self, bin_dir: Path | None = None, user: str = "postgres"):
        self.bin_dir = bin_dir or find_postgres_bin()
        if self.bin_dir is None:
            raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install -y postgresql)")
        self.os_user = user if os.geteuid() == 0 else None
        self.tmp = Path(tempfile.mkdtemp(prefix="thanosql-bench-pg-"))
        self.data = self.tmp / "data"
        self.port = free_port()
        self.uri = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.log_path = self.tmp / "postgres.log"
        self.started = False

    def _cmd(self, *args: str) -> list[str]:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self.os_user:
            cmd = ["runuser", "-u", self.os_user, "--", *cmd]
        return cmd

    def start(self) -> "PostgresCluster":
        if self.os_user:
            import pwd
            pw = pwd.getpwnam(self.os_user)
            os.chown(self.tmp, pw.pw_uid, pw.pw_gid)
        subprocess.run(self._cmd("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                                 "--encoding=UTF8", "--locale=C"),
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.tmp)
        # Loopback TCP only, socket in the temp dir; fsync off only speeds the load.
        opts = (f"-p {self.port} -k {self.tmp} -c listen_addresses=127.0.0.1 -c fsync=off "
                f"-c synchronous_commit=off -c full_page_writes=off")
        subprocess.run(self._cmd("pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-o", opts,
                                 "-w", "-t", "60", "start"),
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.tmp)
        self.started = True
        return self

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        try:
            if self.started:
                subprocess.run(self._cmd("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.tmp, timeout=60)
                self.started = False
        except subprocess.TimeoutExpired:
            pid = self.postmaster_pid()
            if pid:
                os.kill(pid, signal.SIGKILL)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def connect(self):
        import adbc_driver_postgresql.dbapi as pg
        return pg.connect(self.uri, autocommit=True)

    def __enter__(self) -> "PostgresCluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def postgres_available() -> bool:
    if find_postgres_bin() is None:
        return False
    try:
        import adbc_driver_postgresql  # noqa: F401
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------- ML helpers

def checkpoint(cache_dir: Path, size: str) -> Path:
    """A random-weight wav2vec2 checkpoint (cached under ``cache_dir``; seed 0, so stable)."""
    from ml.checkpoints import make_random_checkpoint
    path = Path(cache_dir) / f"random-{size}"
    if not (path / "config.json").exists():
        make_random_checkpoint(path, size=size)
    return path


def librispeech_rows(csv_name: str, limit: int | None = None) -> list[tuple[str, str]]:
    """(absolute audio path, transcript) rows of one of the shared CSVs."""
    import csv
    with open(SHARED_DATA / csv_name, newline="", encoding="utf-8") as f:
        rows = [(str(SHARED_DATA / r["audio"]), r["text"]) for r in csv.DictReader(f)]
    return rows[:limit] if limit else rows


def audio_seconds(paths: Iterable[str]) -> float:
    import soundfile as sf
    total = 0.0
    for p in paths:
        info = sf.info(p)
        total += info.frames / info.samplerate
    return total


# ----------------------------------------------------------------------------- profiling

def py_spy_path() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


@contextlib.contextmanager
def py_spy(pid: int | None, out: Path | None, rate: int = 100, subprocesses: bool = True,
           idle: bool = False) -> Iterator[dict]:
    """Sample ``pid`` (and its children) with py-spy into ``out`` (raw collapsed stacks)
    while the block runs; yields a dict that gets ``profile`` (the path) and ``top``
    (a summary) afterwards. Does nothing when ``pid`` or ``out`` is None."""
    info: dict = {}
    exe = py_spy_path()
    if pid is None or out is None or exe is None:
        if out is not None and exe is None:
            log("py-spy not installed: no profile")
        yield info
        return
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "-o", str(out),
           "--nonblocking"]
    if subprocesses:
        cmd.append("--subprocesses")
    if idle:
        cmd.append("--idle")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # let it attach
    try:
        yield info
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if out.exists():
            info["profile"] = str(out)
            info["top"] = collapsed_summary(out)
        else:
            info["error"] = err.decode(errors="replace")[-500:]
            log(f"py-spy failed: {info['error']}")


_PROCESS_FRAME = re.compile(r'process \d+:"(?:[^"\\]|\\.)*";?')


_LEAF_CATEGORIES = [  # (category, prefix of the innermost frame), checked first
    ("waiting for DataFusion's next batch (scan / Parquet decode)", "guarded.<locals>.gen (planner/plans.py"),
]
_CATEGORIES = [  # (category, substrings of any frame in the stack), first match wins
    ("imports", ("importlib._bootstrap",)),
    ("audio decoding", ("soundfile", "soxr", "load_audio", "sf.read")),
    ("model load / save", ("from_pretrained", "save_pretrained", "safetensors", "save_model")),
    ("backward", ("_engine_run_backward", "backward (")),
    ("optimizer step", ("optimizer", "Optimizer", "adamw", "clip_grad_norm")),
    ("model forward", ("Module._call_impl",)),
    ("DataFusion planning / stream start", ("datafusion", "__arrow_c_stream__")),
    ("Flight SQL handlers", ("flight_server/",)),
]
_PROJECT = ("ml/", "planner/", "flight_server/", "benchmarks/")


def collapsed_summary(path: Path, top: int = 15) -> dict:
    """Where the samples of py-spy's raw (collapsed) output went: by category, by function
    (self time), and by project function (inclusive time).

    Process frames (``process PID:"cmdline"``, which may contain ';') are stripped; a
    sample left with no Python frame counts as ``(native, no Python frame)``."""
    from collections import Counter
    self_c: Counter = Counter()
    incl: Counter = Counter()
    cats: Counter = Counter()
    total = 0
    for line in Path(path).read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        stack = _PROCESS_FRAME.sub("", stack)
        frames = [f for f in stack.split(";") if f and not f.startswith("thread (")]
        if not frames:
            frames = ["(native, no Python frame)"]
        self_c[frames[-1]] += n
        for f in set(frames):
            if any(f"({p}" in f for p in _PROJECT):
                incl[f] += n
        joined = ";".join(frames)
        category = next((c for c, prefix in _LEAF_CATEGORIES if frames[-1].startswith(prefix)), None)
        category = category or next((c for c, keys in _CATEGORIES if any(k in joined for k in keys)), "other")
        cats[category] += n
    share = lambda c, k=top: [(f, round(100.0 * v / total, 1)) for f, v in c.most_common(k)] if total else []
    return {"samples": total, "categories_pct": share(cats, None), "self_pct": share(self_c),
            "project_inclusive_pct": share(incl)}


def print_profile(title: str, info: dict, top: int = 12) -> str:
    if not info.get("top"):
        return ""
    summary = info["top"]
    text = print_table(f"{title}: py-spy, {summary['samples']} samples by category "
                       f"(raw stacks: {info.get('profile')})", ["%", "category"],
                       [[pct, c] for c, pct in summary["categories_pct"]])
    text += print_table(f"{title}: self time by function", ["self %", "function (file:line)"],
                        [[pct, f] for f, pct in summary["self_pct"][:top]])
    text += print_table(f"{title}: inclusive time in project code", ["incl %", "function (file:line)"],
                        [[pct, f] for f, pct in summary["project_inclusive_pct"][:top]])
    return text
