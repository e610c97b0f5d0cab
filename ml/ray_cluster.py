"""The Ray cluster a server scales out on (``--ray ADDRESS`` / ``THANOSQL_RAY_ADDRESS``).

``local`` starts a Ray instance owned by the server (stopped with it); ``auto``, ``host:port``
and ``ray://host:port`` join a running cluster.  The server process connects once, for batch
inference on Ray Data; each training run's worker process connects again as its own Ray
driver (``ml/ray_training.py``), so cancelling a run is stopping that process: Ray then
ends the run's training workers with it.

Ray 2.60 turns token authentication on for clusters it starts.  A ``local`` instance keeps
it: Ray writes the token to ``~/.ray/auth_token``, which the training processes (same user,
same machine) read.  To join a cluster that uses tokens, give the server its token the way
Ray documents (``RAY_AUTH_TOKEN`` or the token file); a refused connection says so.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import MLError

log = logging.getLogger("thanosql.ml")

#: Ray Client connections tried before giving up on a failed per-client server (see init).
CLIENT_CONNECT_TRIES = 3
CLIENT_SERVER_FAILED = "Starting Ray client server failed"

INSTALL_HINT = "pip install -e '.[ray]' (or pip install 'ray[train,data]>=2.60')"


class RayUnavailable(MLError):
    """Ray is not installed, or the cluster cannot be reached."""


@dataclass(frozen=True)
class RayCluster:
    """Where to reach the cluster (``address``: what a training process passes to
    ``ray.init``), where Ray Train keeps checkpoints (``storage``: a folder every node
    sees, or a cloud URI, on a multi-node cluster), and, for the instance the server owns
    (``--ray local``: one machine, no autoscaler), its resources, which never change
    (``capacity``; None for a joined cluster, which may grow)."""

    address: str
    storage: str
    capacity: dict[str, float] | None = None


def import_ray():
    try:
        import ray
    except ImportError:
        raise RayUnavailable(f"Ray is not installed; {INSTALL_HINT}") from None
    return ray


def connect(address: str, data_dir: str | Path, storage: str | None = None,
            num_cpus: int | None = None) -> RayCluster:
    """Join (or, for ``local``, start) the cluster from this process; RayUnavailable when
    Ray is missing or the cluster refuses."""
    ray = import_ray()
    try:  # the extras, checked now rather than at the first BUILD
        import ray.data  # noqa: F401
        import ray.train.torch  # noqa: F401
    except ImportError as exc:
        raise RayUnavailable(f"Ray is installed without Train / Data ({exc}); {INSTALL_HINT}") from None
    address = address.strip()
    if not address:
        raise RayUnavailable("--ray needs an address: local, auto, host:port or ray://host:port")
    own_storage = storage is None
    storage = storage or str(Path(data_dir).resolve() / "ray_results")
    if "://" not in storage:
        storage = str(Path(storage).resolve())  # Ray Train wants an absolute path or a URI
        Path(storage).mkdir(parents=True, exist_ok=True)
    if own_storage:
        _forget_old_runs(Path(storage))
    kwargs = dict(include_dashboard=False, log_to_driver=False, namespace="thanosql",
                  configure_logging=False)
    if address == "local":  # "local", not None: None joins a cluster `ray start` left on this machine
        kwargs["num_cpus"] = num_cpus or os.cpu_count()
    try:
        init(address, **kwargs)
    except Exception as exc:  # noqa: BLE001 - Ray's connection errors have many classes
        client_mode = " and, through Ray Client, RAY_AUTH_MODE=token" if address.startswith("ray://") else ""
        raise RayUnavailable(f"cannot reach the Ray cluster at {address!r}: {str(exc).strip()[:500]} "
                             "(a cluster with token authentication needs its token: RAY_AUTH_TOKEN or "
                             f"~/.ray/auth_token{client_mode})") from None
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-dataset progress reports in the log
    if address.startswith("ray://"):
        driver_address = address  # Ray Client: training processes connect the same way
    else:
        driver_address = ray.get_runtime_context().gcs_address
    resources = ray.cluster_resources()
    log.info("joined Ray at %s (%s; %g CPUs, %g GPUs); checkpoints in %s", driver_address,
             "started here" if address == "local" else address, resources.get("CPU", 0),
             resources.get("GPU", 0), storage)
    return RayCluster(driver_address, storage, capacity=resources if address == "local" else None)


def init(address: str, **kwargs) -> None:
    """``ray.init(address=address, ...)`` in this process. Ray 2.60's Ray Client server at
    times fails to start the per-client server it forks (the child dies at once, and the
    client hears of it 30 s later: one connection in four, measured on a loaded 2-core
    machine, the first after the head starts most often); such a ``ray://`` connection is
    tried again, up to CLIENT_CONNECT_TRIES times."""
    ray = import_ray()
    for attempt in range(1, CLIENT_CONNECT_TRIES + 1):
        try:
            ray.init(address=address, **kwargs)
            return
        except Exception as exc:  # noqa: BLE001 - Ray Client reports it as a plain ConnectionAbortedError
            if not address.startswith("ray://") or CLIENT_SERVER_FAILED not in str(exc) \
                    or attempt == CLIENT_CONNECT_TRIES:
                raise
            log.warning("Ray Client at %s could not start this connection's server (try %d of %d); "
                        "trying again", address, attempt, CLIENT_CONNECT_TRIES)
            with contextlib.suppress(Exception):
                ray.shutdown()


def _forget_old_runs(storage: Path) -> None:
    """Checkpoints of runs that ended with their driver killed (no run trains at start: the
    registry marks such runs failed), in the server's own storage folder."""
    for folder in storage.glob("thanosql-*"):
        shutil.rmtree(folder, ignore_errors=True)


def disconnect(cluster: RayCluster | None) -> None:
    """Leave the cluster (a ``local`` instance stops with it)."""
    if cluster is None:
        return
    ray = import_ray()
    if ray.is_initialized():
        ray.shutdown()


def dataset_of(items: list[dict], blocks: int | None = None):
    """A Ray Dataset of ``items`` (one dict per row), made by putting its blocks into the object
    store from this process. ``ray.data.from_arrow`` reads each table's schema in a task that
    asks for a CPU: while training workers hold every CPU, that task never starts and the
    statement hangs (measured). ``blocks``: how many blocks to cut the rows into."""
    ray = import_ray()
    return ray.data.from_items(items, override_num_blocks=blocks)


def worker_resources(options: dict) -> tuple[dict[str, float], bool]:
    """(resources of each worker, whether it takes a GPU) from num_workers' companions:
    ``resources_per_worker`` as given, else 1 CPU, plus 1 GPU with ``use_gpu``."""
    resources = dict(options.get("resources_per_worker") or {"CPU": 1.0})
    use_gpu = bool(options.get("use_gpu")) or resources.get("GPU", 0) > 0
    if use_gpu and resources.get("GPU", 0) == 0:
        resources["GPU"] = 1.0
    return resources, use_gpu


def missing_room(per_worker: dict[str, float], workers: int, total: dict[str, float]) -> str | None:
    """What ``workers`` workers of ``per_worker`` resources need beyond the cluster's ``total``
    (as "1 GPU each: 2 GPU asked, 0 in the cluster"), or None when they fit in it."""
    short = [f"{amount:g} {name} each: {amount * workers:g} {name} asked, {total.get(name, 0):g} in the cluster"
             for name, amount in per_worker.items() if amount * workers > total.get(name, 0) + 1e-9]
    return "; ".join(short) or None


def carried_error(exc: BaseException, what: str, fallback: type[MLError] = MLError) -> MLError:
    """The ml error a worker or replica raised, when Ray carried it back inside its own
    wrappers (a bad file, a diverged run: the user's message), else ``fallback`` saying what
    Ray reported, in one line. (A RayTaskError that Ray made an instance of its cause's class
    is a wrapper too: its message is Ray's traceback.)"""
    wrapper = import_ray().exceptions.RayError
    seen: set[int] = set()
    waiting = [exc]
    while waiting:  # a breadth-first walk of what Ray wraps: causes, workers' failures
        current = waiting.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, MLError) and not isinstance(current, wrapper):
            return current
        cause = getattr(current, "cause", None)
        waiting += [cause if isinstance(cause, BaseException) else None, current.__cause__]
        failures = getattr(current, "worker_failures", None)  # Ray Train v2's WorkerGroupError
        if isinstance(failures, dict):
            waiting += [f for f in failures.values() if isinstance(f, BaseException)]
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return fallback(f"{what} on Ray failed: " + (_plain(lines[-1]) if lines else "a worker died"))


def _plain(line: str) -> str:
    """A line of Ray's error text without a leading Python exception name."""
    name, sep, rest = line.partition(": ")
    if sep and name.replace(".", "").replace("_", "").isalnum() and name[:1].isalpha() and " " not in name:
        line = rest
    return line[:500]
