"""Training in a separate process.

Why a process and not a thread: training saturates the CPU and holds the GIL in Python
stretches, a crash (out of memory, a native fault) must not take the server down, and
cancelling must be able to stop it at any point, which only terminating a process does.
The child is started with the ``spawn`` method (no forked copies of the server's threads,
sockets or locks), writes progress straight to the registry, and exits on its own if the
server disappears.  The parent waits, polling its cancel event, and publishes the model
(``finish_run``) only after the child reported success.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import threading
import time
import traceback

from . import errors as _errors
from .errors import MLError, TrainingCancelled, TrainingFailed
from .ray_cluster import RayCluster
from .registry import PROGRESS_ROWS_PER_RUN, ModelRegistry, RunInfo

log = logging.getLogger("thanosql.ml")

#: Seconds a terminated child gets to exit before it is killed.
TERMINATE_GRACE_S = 5.0


def _watch_parent(parent_pid: int) -> None:
    """Exit if the server that started us is gone (no orphaned trainer burning CPU)."""
    def watch():
        while True:
            if os.getppid() != parent_pid:
                os._exit(3)
            time.sleep(1.0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class _ProgressRecorder:
    """Records every optimizer step until a run has PROGRESS_ROWS_PER_RUN rows, then thins
    them to every 2nd step and records only those, then every 4th, ...: the history of a
    long run stays bounded and evenly spaced, and the latest step is always there."""

    def __init__(self, registry: ModelRegistry, run_id: str):
        self.registry, self.run_id = registry, run_id
        self.stride, self.rows, self.last, self.recorded = 1, 0, None, True

    def __call__(self, step, epoch, loss, lr, audio_seconds, elapsed):
        self.last, self.recorded = (step, epoch, loss, lr, audio_seconds, elapsed), False
        if step % self.stride:
            return
        self.registry.record_progress(self.run_id, *self.last)
        self.recorded = True
        self.rows += 1
        if self.rows >= PROGRESS_ROWS_PER_RUN:
            self.stride *= 2
            self.rows = self.registry.thin_progress(self.run_id, self.stride)

    def close(self):
        """Record the final step if the stride skipped it."""
        if not self.recorded and self.last is not None:
            self.registry.record_progress(self.run_id, *self.last)
            self.recorded = True


def _child_main(data_dir, run_id, base, rows, options, out_dir, conn, parent_pid, class_name="Wav2Vec2En",
                cluster=None):
    """Entry point of the training process: train (here, or as the driver of a Ray Train
    job on ``cluster``), report ('ok', summary) or the error."""
    _watch_parent(parent_pid)
    try:
        os.nice(5)  # the server's query threads come first when the CPU is contended
    except OSError:
        pass
    try:
        registry = ModelRegistry(data_dir)
        recorder = _ProgressRecorder(registry, run_id)
        if cluster is None:
            from .options import resolve_class

            summary = resolve_class(class_name).implementation().train(base, rows, options, recorder, None, out_dir)
        else:
            from .ray_training import train_on_ray

            summary = train_on_ray(cluster, class_name, base, rows, options, recorder, out_dir, run_id)
        recorder.close()
        conn.send(("ok", summary))
    except BaseException as exc:  # reported to the parent, which decides what to raise
        conn.send(("error", type(exc).__module__, type(exc).__name__, str(exc),
                   getattr(exc, "path", None), getattr(exc, "row", None), traceback.format_exc()))
    finally:
        conn.close()


def _rebuild_error(module, name, message, path, row) -> MLError:
    """The child's error as an exception of the same ml.errors class, else TrainingFailed."""
    cls = getattr(_errors, name, None) if module == _errors.__name__ else None
    if isinstance(cls, type) and issubclass(cls, MLError):
        if cls is _errors.AudioError:
            return cls(message, path=path, row=row)
        return cls(message)
    # The exception's class name means nothing to a SQL user (the traceback goes to the log).
    if name == "MemoryError":
        return TrainingFailed("training failed: out of memory; use a smaller batch_size or a lower max_duration")
    return TrainingFailed(f"training failed: {message or 'unexpected error (details in the server log)'}")


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "did not exit"
    if code < 0:
        try:
            sig = signal.Signals(-code).name
        except ValueError:
            sig = str(-code)
        hint = " (SIGKILL: killed, e.g. by the out-of-memory killer)" if -code == signal.SIGKILL else ""
        return f"was killed by signal {sig}{hint}"
    return f"exited with code {code}"


def _stop(proc) -> None:
    if proc.is_alive():
        proc.terminate()
        proc.join(TERMINATE_GRACE_S)
    if proc.is_alive():
        proc.kill()
        proc.join(TERMINATE_GRACE_S)


def run_training(registry: ModelRegistry, run: RunInfo, rows, options: dict,
                 cancel: threading.Event | None = None, poll_interval: float = 0.2,
                 cluster: RayCluster | None = None) -> dict:
    """Train ``run`` in a child process and publish it; returns the training summary.

    With ``cluster`` the child is the driver of a Ray Train job there (``ml/ray_training.py``);
    everything else (progress, cancel, failure, publishing) is the same.

    ``rows`` are (audio path, transcript) pairs, ``options`` validated BUILD/FIT options.
    Setting ``cancel`` terminates the child: the run is marked cancelled and
    TrainingCancelled raised.  A child that fails or dies marks the run failed and raises
    TrainingFailed (or the child's own MLError, e.g. AudioError naming path and row).
    Nothing becomes visible unless training succeeded.
    """
    ctx = mp.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=_child_main, name=f"thanosql-train-{run.name}-v{run.version}", daemon=True,
        args=(registry.data_dir, run.run_id, run.base, list(rows), dict(options), run.staging_dir,
              sender, os.getpid(), run.class_name or "Wav2Vec2En", cluster))
    try:
        proc.start()
    except BaseException as exc:
        registry.fail_run(run.run_id, f"could not start the training process: {exc}")
        raise TrainingFailed(f"could not start the training process: {exc}") from exc
    finally:
        sender.close()
    result = None
    try:
        registry.set_worker_pid(run.run_id, proc.pid)
        while True:
            if cancel is not None and cancel.is_set():
                _stop(proc)
                registry.fail_run(run.run_id, "cancelled by the client", status="cancelled")
                raise TrainingCancelled(f"training of model {run.name!r} (version {run.version}) was cancelled")
            if receiver.poll(poll_interval):
                try:
                    result = receiver.recv()
                except (EOFError, OSError):
                    result = None  # the child died without reporting
                break
            if not proc.is_alive() and not receiver.poll(0):
                break
        proc.join(60)
        _stop(proc)
    except TrainingCancelled:
        raise
    except BaseException as exc:  # the waiting thread itself was interrupted
        _stop(proc)
        registry.fail_run(run.run_id, f"training interrupted: {exc!r}")
        raise
    finally:
        receiver.close()

    if result is not None and result[0] == "ok":
        summary = result[1]
        try:
            registry.finish_run(run.run_id, summary)
        except BaseException as exc:
            registry.fail_run(run.run_id, f"could not publish the trained model: {exc}")
            raise TrainingFailed(f"could not publish the trained model {run.name!r}: {exc}") from exc
        return summary
    if result is not None:
        _, module, name, message, path, row, tb = result
        error = _rebuild_error(module, name, message, path, row)
        registry.fail_run(run.run_id, str(error))
        error.worker_traceback = tb
        if not isinstance(error, (_errors.AudioError, _errors.BadOptions, _errors.Cancelled)):
            log.error("training of model %r (version %s) failed in the worker process:\n%s",
                      run.name, run.version, tb)
        raise error
    message = (f"training worker process for model {run.name!r} (version {run.version}) "
               f"{_describe_exit(proc.exitcode)} before finishing; nothing was saved")
    registry.fail_run(run.run_id, message)
    raise TrainingFailed(message)
