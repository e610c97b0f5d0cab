"""BUILD / FIT on Ray: Ray Train's TorchTrainer runs the class's own training loop on
``num_workers`` workers with DDP; Ray Data decodes the audio.

This runs in the run's worker process (``ml/worker.py``), which becomes a Ray driver:

- each worker calls the class's ``train`` with a ``RayTeam``: DDP over the process group Ray
  Train set up; its own batches of the run's step plan (the one the local loop follows, from
  the same seed) as Ray Datasets of whole epochs (at least WINDOW_STEPS steps each), in step
  order, whose Ray Data tasks decode and resample the audio; and, with ``max_failures`` > 0, a checkpoint every
  ``checkpoint_steps`` steps that a restarted run continues from (its datasets start at the
  step it continues from: nothing trained before is decoded again);
- rank 0 sends every step's figures through a Ray queue, which the driver writes to the
  registry (``thanosql.training_info``) as a local run does; an error of ours (a bad file, a
  diverged run) travels the same way and ends the run at once, with its own message, rather
  than after Ray's restarts; rank 0's saved model comes back as Ray Train's final checkpoint
  and is copied into the run's staging folder, so the server publishes it exactly as it
  publishes a local run.

Stopping the driver process (cancel, the client gone, the server stopping) ends the job:
Ray stops the actors of a driver that exits.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from typing import Callable, Iterator, Sequence

import numpy as np

from .audio import load_audio
from .distributed import Step, StepPlan, Team
from .errors import MLError, TrainingFailed
from .ray_cluster import RayCluster, carried_error, dataset_of, init, worker_resources
from .training_loop import SUMMARY_FILE

log = logging.getLogger("thanosql.ml")

STATE_FILE = "training_state.pt"
#: Steps a worker's data pipeline covers at least (whole epochs; see _windows).
WINDOW_STEPS = 1024
#: Folder of a run's Ray Train checkpoints under the storage path.
RUN_FOLDER_PREFIX = "thanosql-"


class RayTeam(Team):
    """A worker of a Ray Train run: its rank, its data pipeline, Ray Train's checkpoints."""

    def __init__(self, rows: Sequence[tuple], checkpoint_steps: int, keep_checkpoints: bool):
        import ray.data
        import ray.train

        context = ray.train.get_context()
        super().__init__(context.get_world_rank(), context.get_world_size())
        self.paths = [str(r[0]) for r in rows]
        self.row_of = [int(r[2]) if len(r) > 2 else i for i, r in enumerate(rows)]
        self.checkpoint_steps, self.keep_checkpoints = checkpoint_steps, keep_checkpoints
        ray.data.DataContext.get_current().execution_options.preserve_order = True

    def device(self):
        import ray.train.torch

        return ray.train.torch.get_device()

    def batches(self, plan: StepPlan, load, start: int = 0, prepare=None):
        # Ray Data tasks decode (load_audio, as the classes' ``load`` does); ``prepare`` runs here
        for steps in _windows(plan.epochs_from(start), WINDOW_STEPS):
            yield from self._pipeline(steps, prepare)

    def _pipeline(self, steps: list[Step], prepare):
        """This worker's batches of ``steps``, decoded by a Ray Data pipeline, in order."""
        import ray.data

        # paths joined by NUL (which no path holds): a plain string column, which Ray Data
        # stores as Arrow (a list of strings per row it pickled)
        items = [{"step": step.index, "paths": "\0".join(self.paths[i] for i in step.batches[self.rank]),
                  "rows": " ".join(str(self.row_of[i]) for i in step.batches[self.rank])} for step in steps]
        # Nothing here may wait for a CPU: the training workers hold theirs for the whole run,
        # and a task waiting for one they hold never starts (dataset_of). Decoding asks for no
        # CPU, one task at a time, a couple of batches ahead of the loop.
        decoded = dataset_of(items).map_batches(
            _decode, batch_size=1, num_cpus=0, compute=ray.data.TaskPoolStrategy(size=1))
        rows = decoded.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=2)
        for step, row in zip(steps, rows):
            if int(row["step"][0]) != step.index:
                raise TrainingFailed(f"worker {self.rank}: the data pipeline sent step {int(row['step'][0])} "
                                     f"where the plan has step {step.index}")
            audio = [np.asarray(a, dtype=np.float32) for a in row["audio"][0]]
            yield step, audio if prepare is None else [prepare(a) for a in audio]

    def resume_state(self) -> dict | None:
        import ray.train
        import torch

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            path = os.path.join(folder, STATE_FILE)
            if not os.path.exists(path):
                return None
            state = torch.load(path, map_location="cpu", weights_only=False)
        log.info("worker %d resumes at step %d", self.rank, state["loop"]["steps"])
        return state

    def keep_state(self, step: int, state: Callable[[], dict]) -> None:
        if not self.keep_checkpoints or step % self.checkpoint_steps:
            return
        import ray.train
        import torch

        with tempfile.TemporaryDirectory(prefix="thanosql-state-") as folder:
            checkpoint = None
            if self.leader:  # the models are identical: one copy is enough
                torch.save(state(), os.path.join(folder, STATE_FILE))
                checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report({"step": step}, checkpoint=checkpoint)

    def publish(self, out_dir: str) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(out_dir) if self.leader else None
        ray.train.report({"done": 1}, checkpoint=checkpoint)


def _windows(epochs: Iterator[list[Step]], size: int) -> Iterator[list[Step]]:
    """Whole epochs gathered until a window holds ``size`` steps (or the run ends): one
    pipeline per window, so short epochs do not each pay a pipeline's start (about a second)
    and long ones are not held more than one at a time."""
    window: list[Step] = []
    for steps in epochs:
        window += steps
        if len(window) >= size:
            yield window
            window = []
    if window:
        yield window


def _decode(batch: dict) -> dict:
    """Ray Data task: each row's batch of files, decoded and resampled to 16 kHz mono."""
    audio = np.empty(len(batch["paths"]), dtype=object)
    for k, (paths, rows) in enumerate(zip(batch["paths"], batch["rows"])):
        audio[k] = [load_audio(p, int(r)) for p, r in zip(str(paths).split("\0"), str(rows).split())]
    batch["audio"] = audio
    return batch


def _worker_loop(config: dict) -> None:
    """What each Ray Train worker runs: the class's own train() with a RayTeam."""
    from .options import resolve_class

    messages = config["messages"]
    try:
        team = RayTeam(config["rows"], config["checkpoint_steps"], config["max_failures"] > 0)

        def report(*figures):
            messages.put(("step", figures))

        train = resolve_class(config["class_name"]).implementation().train
        with tempfile.TemporaryDirectory(prefix="thanosql-model-") as out_dir:
            train(config["base"], config["rows"], config["options"], report if team.leader else None, None,
                  out_dir, team=team)
    except MLError as exc:  # ours: the same rows fail the same way after a restart
        messages.put(("error", exc))
        raise


def train_on_ray(cluster: RayCluster, class_name: str, base: str, rows: Sequence[tuple], options: dict,
                 progress_callback: Callable, out_dir: str, run_id: str) -> dict:
    """Train on the cluster; the saved model lands in ``out_dir``; returns the summary.

    ``rows`` are the statement's (path, transcript, row number), already screened."""
    import json

    from .options import validate

    opts = validate(class_name, "fit", {k: v for k, v in options.items() if k != "base_model"})
    init(cluster.address, log_to_driver=False, namespace="thanosql", configure_logging=False)
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    resources, use_gpu = worker_resources(opts)
    messages = Queue(maxsize=10_000)
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"class_name": class_name, "base": base, "rows": [tuple(r) for r in rows],
                           "options": opts, "messages": messages, "checkpoint_steps": opts["checkpoint_steps"],
                           "max_failures": opts["max_failures"]},
        scaling_config=ScalingConfig(num_workers=opts["num_workers"], use_gpu=use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=f"{RUN_FOLDER_PREFIX}{run_id}", storage_path=cluster.storage,
                             failure_config=FailureConfig(max_failures=opts["max_failures"]),
                             checkpoint_config=CheckpointConfig(num_to_keep=1)),
    )
    outcome: dict = {}

    def fit():
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            outcome["error"] = exc

    run_folder = os.path.join(cluster.storage, f"{RUN_FOLDER_PREFIX}{run_id}")
    try:
        thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
        thread.start()
        while thread.is_alive() or not messages.empty():
            thread.join(0.2)
            while not messages.empty():
                kind, payload = messages.get()
                if kind == "error":
                    raise payload  # ends this driver, and with it the Ray job: no restarts
                progress_callback(*payload)
        if "error" in outcome:
            raise carried_error(outcome["error"], "training", TrainingFailed)
        result = outcome["result"]
        if result.error is not None:
            raise carried_error(result.error, "training", TrainingFailed)
        if result.checkpoint is None:
            raise TrainingFailed("the Ray Train run ended without the trained model")
        os.makedirs(out_dir, exist_ok=True)
        result.checkpoint.to_directory(out_dir)
        with open(os.path.join(out_dir, SUMMARY_FILE), encoding="utf-8") as f:
            return json.load(f)["summary"]
    finally:
        # The model (if any) is in the staging folder now; its checkpoints are of no further
        # use, whatever the outcome. (A cloud storage URI is left to its lifecycle rules.)
        if "://" not in cluster.storage:
            shutil.rmtree(run_folder, ignore_errors=True)
