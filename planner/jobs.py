"""The trainings running in this server: a small table of model name -> how to stop it.

BUILD / FIT add their run here while it trains, whether the statement waits for it (its
own CancelToken is the handle) or returned at once with OPTIONS (wait=False) (a background
thread with a token of its own: the statement, its connection and its table-version pin
are long gone). CANCEL MODEL sets the handle and waits for the run to be marked
cancelled; closing the engine (server shutdown, interpreter exit) cancels every run, so
no training process outlives the server that started it.
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger("thanosql.ml")

#: How long CANCEL MODEL (and shutdown) waits for a cancelled run to stop: the worker
#: polls its cancel every 0.2 s, then gives the training process 5 s to exit before it
#: kills it (ml/worker.py).
STOP_WAIT_S = 15.0

#: Trainings at once (waited for or in the background), unless the server says otherwise.
DEFAULT_MAX_TRAININGS = 4

CANCELLED_BY_STATEMENT = "cancelled by CANCEL MODEL"
CANCELLED_BY_SHUTDOWN = "cancelled: the server shut down during training"


@dataclass(eq=False)
class Training:
    """One run in training: its registry run, the event that stops it, when it ended."""
    name: str
    version: int
    run_id: str
    cancel: threading.Event
    background: bool = False
    reason: str = ""  # why it was cancelled, once it was (CANCEL MODEL, shutdown)
    done: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def stop(self, reason: str) -> None:
        if not self.reason:
            self.reason = reason
        self.cancel.set()


class TrainingJobs:
    """The engine's running trainings (thread-safe)."""

    def __init__(self, max_trainings: int = DEFAULT_MAX_TRAININGS):
        self.max_trainings = max_trainings
        self._lock = threading.Lock()
        self._running: list[Training] = []
        self._closed = False
        _open_tables.add(self)

    def add(self, name: str, version: int, run_id: str, cancel: threading.Event,
            background: bool = False) -> Training:
        """Track a run that is about to train; once the engine is closed it is cancelled
        at once (its trainer then stops before it starts)."""
        training = Training(name, version, run_id, cancel, background)
        with self._lock:
            self._running.append(training)
            closed = self._closed
        if closed:
            training.stop(CANCELLED_BY_SHUTDOWN)
        return training

    def finished(self, training: Training) -> None:
        """The run ended (its status is final in the registry)."""
        with self._lock:
            if training in self._running:
                self._running.remove(training)
        training.done.set()

    def start_background(self, training: Training, work: Callable[[], Any]) -> None:
        """Run `work` (the training) on a thread of its own; `finished` when it ends,
        whatever the outcome (the run's status and error are in the registry)."""
        def main():
            try:
                work()
            except Exception as exc:  # noqa: BLE001 - the run's failure is in the registry
                from ml.errors import MLError

                from planner.errors import PlannerError
                expected = isinstance(exc, (MLError, PlannerError))  # the trainer logged what it must
                log.log(logging.DEBUG if expected else logging.ERROR,
                        "background training of model %r (version %s) ended with an error",
                        training.name, training.version, exc_info=True)
            finally:
                self.finished(training)

        training.thread = threading.Thread(target=main, daemon=True,
                                           name=f"thanosql-train-{training.name}-v{training.version}")
        try:
            training.thread.start()
        except BaseException:
            self.finished(training)
            raise

    def check_room(self) -> None:
        """ResourceExhausted when max_trainings runs train already: a connection can start
        background runs one after another, each a process with a model in memory."""
        with self._lock:
            training = sum(1 for t in self._running if t.run_id)
        if training >= self.max_trainings:
            from planner.errors import ResourceExhausted
            raise ResourceExhausted(f"{training} trainings are running, the most this server runs at once "
                                    "(--max-trainings); wait for one to end, or CANCEL MODEL one")

    def running(self, name: str) -> list[Training]:
        with self._lock:
            return [t for t in self._running if t.name == name]

    def cancel(self, name: str, reason: str = CANCELLED_BY_STATEMENT) -> list[Training]:
        """Stop every run of `name` in training; returns them (wait on their `done`)."""
        trainings = self.running(name)
        for training in trainings:
            training.stop(reason)
        return trainings

    def close(self, timeout: float = STOP_WAIT_S) -> None:
        """Cancel every run and wait (up to `timeout`) for them to stop. Idempotent."""
        with self._lock:
            self._closed = True
            trainings = list(self._running)
        for training in trainings:
            training.stop(CANCELLED_BY_SHUTDOWN)
        for training in trainings:
            if not training.done.wait(timeout):
                log.warning("training of model %r (version %s) did not stop within %.0f s of the shutdown",
                            training.name, training.version, timeout)
        _open_tables.discard(self)


_open_tables: "weakref.WeakSet[TrainingJobs]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """At interpreter exit (after non-daemon threads ended, while the training threads,
    daemons, still run): cancel what still trains, so its run is marked cancelled and its
    training process stopped, rather than left to a restart to mark failed."""
    for jobs in list(_open_tables):
        jobs.close()
