"""Data-parallel training: which batches each worker trains on at each step, and the few
collectives that keep the workers' models identical.

Every worker plans the same steps from the same seed, and training on one machine is the
one-worker case of the same plan: a local run and a one-worker run on a cluster see the
same batches in the same order, so their loss curves agree.  A step is one batch per worker;
gradients are averaged across workers (DistributedDataParallel), so a step of ``size``
workers trains on ``size`` x ``batch_size`` utterances.  When the batches of an epoch do not
divide evenly, the short last step repeats batches of that step on the workers left without
one (every worker must take part in every step).

This module knows ``torch.distributed``, not Ray: a runner that starts workers elsewhere
hands the training loop a subclass of ``Team`` (``ml/ray_training.py``).
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from .batching import prefetched, training_batches


@dataclass(frozen=True)
class Step:
    """One optimizer step: its number, its epoch, the epochs done after it, one batch per
    worker; the first ``distinct`` batches are the epoch's own, any after them repeat them."""

    index: int
    epoch: int
    position: float
    batches: tuple[tuple[int, ...], ...]
    distinct: int


class StepPlan:
    """Every step of a run: per epoch, length-grouped random batches (``training_batches``,
    one random generator seeded once for the whole run), dealt to ``workers`` in groups.

    Steps are generated epoch by epoch as they are needed, so a run of many epochs (a
    background BUILD told to train until cancelled) never holds them all.
    """

    def __init__(self, seconds: Sequence[float], batch_size: int, seed: int, epochs: int,
                 max_steps: int | None, workers: int):
        self.seconds, self.batch_size, self.seed = list(seconds), batch_size, seed
        self.epochs, self.workers = epochs, workers
        batches = math.ceil(len(self.seconds) / batch_size)  # what training_batches makes
        self.per_epoch = math.ceil(batches / workers)
        total = epochs * self.per_epoch
        self.total = total if max_steps is None else min(total, max_steps)

    def __len__(self) -> int:
        return self.total

    def epochs_from(self, start: int = 0) -> Iterator[list[Step]]:
        """The steps of each epoch that has steps from ``start`` on, epoch by epoch."""
        rng = random.Random(self.seed)
        for epoch in range(self.epochs):
            first = epoch * self.per_epoch
            if first >= self.total:
                return
            batches = training_batches(self.seconds, self.batch_size, rng)  # advances rng: always drawn
            if first + self.per_epoch <= start:
                continue
            groups = [batches[i:i + self.workers] for i in range(0, len(batches), self.workers)]
            steps = []
            for k, group in enumerate(groups):
                index = first + k
                if start <= index < self.total:
                    dealt = tuple(tuple(group[r % len(group)]) for r in range(self.workers))
                    steps.append(Step(index, epoch, epoch + (k + 1) / len(groups), dealt, len(group)))
            yield steps

    def steps_from(self, start: int = 0) -> Iterator[Step]:
        for steps in self.epochs_from(start):
            yield from steps


class Team:
    """This worker's place among the workers training one model: rank 0 of 1 on one machine.

    The training loop asks it for its batches, wraps the model with it, agrees with the
    other workers on each step's figures through it, and hands it checkpoints; the local
    team does the one-worker version of each (no collectives, no checkpoints to keep).
    """

    def __init__(self, rank: int = 0, size: int = 1):
        self.rank, self.size = rank, size

    @property
    def leader(self) -> bool:
        """Rank 0 reports progress and saves the model."""
        return self.rank == 0

    def device(self):
        """The torch device this worker trains on; None: the model class picks (CUDA if any)."""
        return None

    def batches(self, plan: StepPlan, load: Callable[[int], np.ndarray], start: int = 0,
                prepare: Callable[[np.ndarray], np.ndarray] | None = None
                ) -> Iterator[tuple[Step, list[np.ndarray]]]:
        """(step, model inputs of this worker's batch) of every step from ``start``: each
        utterance decoded by ``load`` and turned into the model's input by ``prepare`` (if
        any), in a thread ahead of the loop."""
        pending: deque[Step] = deque()

        def own_batches():
            for step in plan.steps_from(start):
                pending.append(step)
                yield list(step.batches[self.rank])

        decoded = prefetched(own_batches(), load if prepare is None else (lambda i: prepare(load(i))))
        try:
            for _, arrays in decoded:
                yield pending.popleft(), arrays
        finally:
            decoded.close()

    def wrap(self, model):
        """The module to run forward passes through: the model itself, or DDP over it.

        DDP is told to look for parameters without gradients only when the model drops layers
        at random (wav2vec2's layerdrop): the other workers' gradients for them still arrive.
        """
        if self.size == 1:
            return model
        import torch

        config = getattr(model, "config", None)
        drops = any(float(getattr(config, name, 0) or 0) > 0
                    for name in ("layerdrop", "encoder_layerdrop", "decoder_layerdrop"))
        return torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=drops)

    def step_figures(self, loss, audio_seconds: float) -> tuple[bool, float, float]:
        """(every worker's loss finite, mean loss, audio seconds of all workers) of a step.

        A step whose loss is not finite on any worker is skipped by all of them: one worker
        stepping alone would leave the models different.
        """
        import torch

        finite = bool(torch.isfinite(loss.detach()))
        value = float(loss.detach()) if finite else float("nan")
        if self.size == 1:
            return finite, value, audio_seconds
        import torch.distributed as dist

        # on the loss's device: NCCL (the backend of GPU workers) reduces CUDA tensors only
        figures = torch.tensor([0.0 if finite else 1.0, value if finite else 0.0, audio_seconds],
                               dtype=torch.float64, device=loss.device)
        dist.all_reduce(figures)
        all_finite = figures[0].item() == 0
        return all_finite, figures[1].item() / self.size, figures[2].item()

    def resume_state(self) -> dict | None:
        """The training state to continue from after a restart (none locally)."""
        return None

    def keep_state(self, step: int, state: Callable[[], dict]) -> None:
        """Called after every step; a team that restarts failed runs keeps ``state()``."""

    def publish(self, out_dir: str) -> None:
        """Called by every worker once the leader has saved the model into ``out_dir``."""
