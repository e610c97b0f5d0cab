"""BUILD / FIT on Ray: Ray Train's TorchTrainer runs the class's own training loop on
``num_workers`` workers with DDP; Ray Data decodes the audio.

This runs in the run's worker process (``ml/worker.py``), which becomes a Ray driver:

- the driver plans the run's steps exactly as the loop will (``plan_steps``, same seed),
  and gives each worker a Ray Dataset of its own batches in step order; Ray Data tasks
  decode and resample the audio, so workers receive arrays, not paths;
- each worker calls the class's ``train`` with a ``RayTeam``: DDP over the process group
  Ray Train set up, its batches from its dataset, and (with ``max_failures`` > 0) a
  checkpoint every ``checkpoint_steps`` steps that a restarted run continues from;
- rank 0 sends every step's figures through a Ray queue, which the driver writes to the
  registry (``thanosql.training_info``) as a local run does; its saved model comes back as
  Ray Train's final checkpoint and is copied into the run's staging folder, so the server
  publishes it exactly as it publishes a local run.

Stopping the driver process (cancel, the client gone, the server stopping) ends the job:
Ray stops the actors of a driver that exits.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from typing import Callable, Sequence

import numpy as np

from .audio import SAMPLE_RATE, load_audio
from .distributed import Step, Team, plan_steps
from .errors import TrainingFailed
from .ray_cluster import RayCluster, carried_error, import_ray, worker_resources

log = logging.getLogger("thanosql.ml")

SUMMARY_FILE = "thanosql_training.json"  # what every class's train() writes beside the model
STATE_FILE = "training_state.pt"


class RayTeam(Team):
    """A worker of a Ray Train run: its rank, its dataset shard, Ray Train's checkpoints."""

    def __init__(self, checkpoint_steps: int, keep_checkpoints: bool):
        import ray.train

        context = ray.train.get_context()
        super().__init__(context.get_world_rank(), context.get_world_size())
        self.shard = ray.train.get_dataset_shard(f"rank{self.rank}")
        self.checkpoint_steps, self.keep_checkpoints = checkpoint_steps, keep_checkpoints

    def device(self):
        import ray.train.torch

        return ray.train.torch.get_device()

    def batches(self, steps: Sequence[Step], load, start: int = 0):
        for row in self.shard.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=2):
            index = int(row["step"][0])
            if index < start:
                continue  # already trained before a restart
            indices = [int(i) for i in row["indices"][0]]
            if indices != list(steps[index].batches[self.rank]):
                raise TrainingFailed(f"worker {self.rank}: the data pipeline sent batch {indices} for step "
                                     f"{index}, the plan has {list(steps[index].batches[self.rank])}")
            yield indices, [np.asarray(a, dtype=np.float32) for a in row["audio"][0]]

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


def _decode(batch: dict) -> dict:
    """Ray Data task: each row's batch of files, decoded and resampled to 16 kHz mono."""
    audio = np.empty(len(batch["paths"]), dtype=object)
    for k, (paths, rows) in enumerate(zip(batch["paths"], batch["rows"])):
        audio[k] = [load_audio(str(p), int(r)) for p, r in zip(paths, rows)]
    batch["audio"] = audio
    return batch


def _worker_loop(config: dict) -> None:
    """What each Ray Train worker runs: the class's own train() with a RayTeam."""
    from .options import resolve_class

    team = RayTeam(config["checkpoint_steps"], config["max_failures"] > 0)
    progress = config["progress"]

    def report(*figures):
        progress.put(figures)

    train = resolve_class(config["class_name"]).implementation().train
    with tempfile.TemporaryDirectory(prefix="thanosql-model-") as out_dir:
        train(config["base"], config["rows"], config["options"], report if team.leader else None, None,
              out_dir, team=team)


def _datasets(ray, plan: Sequence[Step], workers: int, paths: Sequence[str], row_of: Sequence[int]):
    """One ordered dataset per worker: a row per step, holding that worker's batch."""
    import pyarrow as pa

    datasets = {}
    for rank in range(workers):
        batches = [list(step.batches[rank]) for step in plan]
        table = pa.table({
            "step": pa.array(range(len(plan)), pa.int64()),
            "indices": pa.array(batches, pa.list_(pa.int64())),
            "paths": pa.array([[paths[i] for i in b] for b in batches], pa.list_(pa.string())),
            "rows": pa.array([[row_of[i] for i in b] for b in batches], pa.list_(pa.int64())),
        })
        # Decoding asks for no CPU of its own: the training workers hold theirs for the whole
        # run, and a task waiting for a CPU they hold would never start (a hang, measured).
        # One task at a time per worker, a few batches ahead of its loop.
        datasets[f"rank{rank}"] = ray.data.from_arrow(table).map_batches(
            _decode, batch_size=1, num_cpus=0, compute=ray.data.TaskPoolStrategy(size=1))
    return datasets


def train_on_ray(cluster: RayCluster, class_name: str, base: str, rows: Sequence[tuple], options: dict,
                 progress_callback: Callable, out_dir: str, run_id: str) -> dict:
    """Train on the cluster; the saved model lands in ``out_dir``; returns the summary."""
    from .options import resolve_class, validate

    ray = import_ray()
    opts = validate(class_name, "fit", {k: v for k, v in options.items() if k != "base_model"})
    workers = opts["num_workers"]
    impl = resolve_class(class_name).implementation()
    paths = [r[0] for r in rows]
    row_of = [r[2] if len(r) > 2 else i for i, r in enumerate(rows)]
    kept, lengths, _ = impl.screen_training_rows(paths, row_of, max_seconds=opts["max_duration"],
                                                 skip_long=opts["too_long"] == "skip")
    rows = [tuple(rows[i]) for i in kept]
    paths, row_of = [paths[i] for i in kept], [row_of[i] for i in kept]
    seconds = [lengths[i] / SAMPLE_RATE for i in kept]
    plan = plan_steps(seconds, opts["batch_size"], opts["seed"], opts["epochs"], opts["max_steps"], workers)

    ray.init(address=cluster.address, log_to_driver=False, namespace="thanosql", configure_logging=False)
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    ray.data.DataContext.get_current().execution_options.preserve_order = True
    resources, use_gpu = worker_resources(opts)
    progress = Queue(maxsize=10_000)
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"class_name": class_name, "base": base, "rows": rows, "options": opts,
                           "progress": progress, "checkpoint_steps": opts["checkpoint_steps"],
                           "max_failures": opts["max_failures"]},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources),
        datasets=_datasets(ray, plan, workers, paths, row_of),
        dataset_config=DataConfig(datasets_to_split=[]),  # each worker reads its own dataset whole
        run_config=RunConfig(name=f"thanosql-{run_id}", storage_path=cluster.storage,
                             failure_config=FailureConfig(max_failures=opts["max_failures"]),
                             checkpoint_config=CheckpointConfig(num_to_keep=1)),
    )
    outcome: dict = {}

    def fit():
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            outcome["error"] = exc

    run_folder = os.path.join(cluster.storage, f"thanosql-{run_id}")
    try:
        thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
        thread.start()
        while thread.is_alive() or not progress.empty():
            thread.join(0.2)
            while not progress.empty():
                progress_callback(*progress.get())
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
