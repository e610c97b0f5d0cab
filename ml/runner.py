"""Where ML statements run: on this machine, or on the Ray cluster the server joined.

The planner holds one Runner and calls it the same way whatever it is (architecture: the
runner is a choice made at server start, not per statement): ``check`` at prepare time,
``run_training`` for BUILD / FIT, ``transcriber`` for PREDICT / EVALUATE.

- Without Ray, training runs in a worker process here (``ml/worker.py``) and inference in
  the server; the scale-out options are refused with a message saying what they need.
- With Ray, every BUILD / FIT is a Ray Train job of ``num_workers`` workers (default 1),
  driven from the same worker process (so progress, cancel and publishing are unchanged);
  a PREDICT / EVALUATE runs on Ray Data when it asks for ``num_workers``, and in the server
  otherwise (a one-row transcribe() should not pay for a pipeline's start).
"""

from __future__ import annotations

import threading
from typing import Callable

from .errors import BadOptions
from .ray_cluster import RayCluster, disconnect, missing_room, worker_resources
from .registry import ModelRegistry, RunInfo

SCALE_OUT_DOC = "see docs/scale-out.md"


class Runner:
    def __init__(self, cluster: RayCluster | None = None):
        self.cluster = cluster

    def describe(self) -> str:
        return "this machine" if self.cluster is None else f"Ray at {self.cluster.address}"

    def check(self, statement: str, options: dict) -> None:
        """Refuse, before anything runs, what this runner cannot do (BadOptions)."""
        training = statement in ("build", "fit")
        if not training and options.get("num_workers") is None and (
                options.get("use_gpu") or options.get("resources_per_worker") is not None):
            raise BadOptions("use_gpu and resources_per_worker apply to the Ray replicas of a PREDICT / EVALUATE "
                             "with num_workers (a server started with --ray); without num_workers it runs in the "
                             "server, on its GPU if it has one")
        if self.cluster is not None:
            self._check_room(training, options)
            return
        asked = []
        workers = options.get("num_workers")
        if workers is not None and (workers > 1 or not training):
            asked.append(f"num_workers={workers}")
        if options.get("use_gpu"):
            asked.append("use_gpu=True")
        if options.get("resources_per_worker") is not None:
            asked.append("resources_per_worker")
        if training and options.get("max_failures", 0) > 0:
            asked.append(f"max_failures={options['max_failures']}")
        if asked:
            raise BadOptions(f"{', '.join(asked)} {'needs' if len(asked) == 1 else 'need'} a server started with "
                             f"--ray ADDRESS (Ray scale-out; {SCALE_OUT_DOC}); this server runs every statement "
                             "on this machine (on its GPU, when it has one, without use_gpu)")

    def _check_room(self, training: bool, options: dict) -> None:
        """On a Ray instance the server owns (``--ray local``: one machine, no autoscaler), a
        statement asking for more than the instance has would wait forever for its workers:
        refuse it now. A joined cluster may grow, so there the wait stays (docs/scale-out.md)."""
        workers = options.get("num_workers")
        if self.cluster.capacity is None or (workers is None and not training):
            return
        per_worker, _ = worker_resources(options)
        shortfall = missing_room(per_worker, workers or 1, self.cluster.capacity)
        if shortfall:
            raise BadOptions(f"num_workers={workers or 1} x {shortfall}; this server's Ray instance "
                             "(--ray local) can never place them: ask for less, or join a larger cluster "
                             f"with --ray ADDRESS ({SCALE_OUT_DOC})")

    def run_training(self, registry: ModelRegistry, run: RunInfo, rows, options: dict,
                     cancel: threading.Event | None = None) -> dict:
        """Train ``run`` and publish it (``worker.run_training``); returns the summary."""
        from .worker import run_training

        return run_training(registry, run, rows, options, cancel, cluster=self.cluster)

    def transcriber(self, local: Callable[[], object], model_dir: str, class_name: str, options: dict):
        """The transcriber of a PREDICT / EVALUATE: replicas on Ray Data when it asks for
        ``num_workers`` on a Ray server, else ``local()`` (the server's cached model)."""
        if self.cluster is not None and options.get("num_workers") is not None:
            from .ray_inference import RayTranscriber

            return RayTranscriber(self.cluster, class_name, model_dir, options)
        return local()

    def close(self) -> None:
        disconnect(self.cluster)
        self.cluster = None
