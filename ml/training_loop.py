"""The optimizer-step loop every model class trains with, on one machine or many.

A class's ``train`` loads its model and turns a batch into a loss (``forward``); this loop
does the rest the same way for all of them: AdamW with warm-up and linear decay, gradient
clipping, steps with a non-finite loss skipped (by every worker at once), progress after
each step, a cancel check before each, and the state a restarted worker continues from.
Which batches a worker trains on, and how workers agree, is its ``Team``
(``ml/distributed.py``): the local team is the one-worker case.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np

from .distributed import StepPlan, Team
from .errors import TrainingCancelled

#: What every class's train() writes beside the saved model: {"summary": ..., "options": ...}.
SUMMARY_FILE = "thanosql_training.json"
#: progress_callback(step, epoch, loss, learning_rate, audio_seconds, elapsed)
ProgressCallback = Callable[[int, float, float, float, float, float], None]


def lr_factor(step: int, warmup: int, total: int) -> float:
    """The learning rate's multiplier at `step` (0-based): linear warm-up over `warmup` steps
    that starts above zero (step 0 gets 1/(warmup+1)), then linear decay that stays above zero
    until the last step, so every step trains (transformers' schedule gives step 0 a zero
    rate: a one-step BUILD changed nothing). Warm-up is cut to at most total - 1 steps, so
    the peak rate is reached (a one-step run trains at the full rate)."""
    warmup = max(0, min(warmup, total - 1))
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (total - step) / max(1, total - warmup))


def adamw_schedule(model, opts: dict, total_steps: int, fused: bool = False):
    """AdamW over the trainable parameters (no weight decay on biases and norms) and
    lr_factor's schedule over the run's ``total_steps``: (optimizer, scheduler). With
    `fused`, one kernel for all parameters where torch has it (what Trainer uses)."""
    import torch
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    groups = [{"params": decay, "weight_decay": opts["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = None
    if fused:
        try:
            optimizer = torch.optim.AdamW(groups, lr=opts["learning_rate"], fused=True)
        except (RuntimeError, TypeError):
            optimizer = None
    if optimizer is None:
        optimizer = torch.optim.AdamW(groups, lr=opts["learning_rate"])
    warmup = math.ceil(opts["warmup_ratio"] * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, total_steps))
    return optimizer, scheduler


def optimizer_step(loss, optimizer, scheduler, scaler, params, max_grad_norm: float) -> None:
    """One step from a finite loss: backward (scaled under fp16), clip the gradients of
    `params`, step, advance the schedule, clear the gradients."""
    import torch
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


@dataclass
class LoopResult:
    """What the loop did: counters a restarted worker continues from, figures for the summary."""

    steps: int = 0
    skipped: int = 0
    last_finite: bool = True
    audio_seconds: float = 0.0
    epochs: float = 0.0
    epoch_losses: list[float] = field(default_factory=list)
    first_loss: float | None = None
    epoch: int = -1
    elapsed: float = 0.0
    resumed_at: list[int] = field(default_factory=list)  # the steps restarts continued from

    @property
    def final_loss(self) -> float | None:
        """Mean loss of the last epoch's steps."""
        return float(np.mean(self.epoch_losses)) if self.epoch_losses else None


def train_steps(model, forward: Callable, params: Sequence, optimizer, scheduler, scaler, plan: StepPlan,
                load: Callable[[int], np.ndarray], seconds: Sequence[float], max_grad_norm: float,
                team: Team, progress_callback: ProgressCallback | None = None,
                should_stop: Callable[[], bool] | None = None, started: float | None = None,
                prepare: Callable[[np.ndarray], np.ndarray] | None = None) -> LoopResult:
    """Train ``model`` through ``plan``: ``forward(module, batch, arrays)`` returns a batch's
    loss, ``load(i)`` decodes utterance ``i``, ``prepare`` (if any) turns decoded audio into
    the model's input (the team applies it wherever it decodes); ``params`` are clipped to
    ``max_grad_norm``.

    ``should_stop`` is polled before every step (TrainingCancelled); ``progress_callback``
    runs on the leader after every step that trained.  Audio seconds count each utterance of
    an epoch once (a batch repeated to fill a short last step is not counted again).
    """

    started = time.monotonic() if started is None else started
    net = team.wrap(model)
    result = LoopResult()
    state = team.resume_state()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        result = LoopResult(**state["loop"])
        result.resumed_at.append(result.steps)
        started = time.monotonic() - result.elapsed  # elapsed_seconds goes on from where it was

    def snapshot() -> dict:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": _rng_state(), "loop": asdict(result)}

    source = team.batches(plan, load, result.steps, prepare)
    try:
        for step, arrays in source:
            if should_stop is not None and should_stop():
                raise TrainingCancelled("training cancelled")
            batch = list(step.batches[team.rank])
            if step.epoch != result.epoch:
                result.epoch, result.epoch_losses = step.epoch, []
            lr_now = scheduler.get_last_lr()[0]
            loss = forward(net, batch, arrays)
            own_audio = sum(seconds[i] for i in batch) if team.rank < step.distinct else 0.0
            finite, loss_value, audio = team.step_figures(loss, own_audio)
            result.steps += 1
            result.last_finite = finite
            if not finite:
                result.skipped += 1
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
            else:
                optimizer_step(loss, optimizer, scheduler, scaler, params, max_grad_norm)
                result.first_loss = loss_value if result.first_loss is None else result.first_loss
                result.epoch_losses.append(loss_value)
                result.audio_seconds += audio
                result.epochs = step.position
            result.elapsed = time.monotonic() - started
            if finite and progress_callback is not None and team.leader:
                progress_callback(result.steps, round(step.position, 4), loss_value, lr_now,
                                  result.audio_seconds, result.elapsed)
            team.keep_state(result.steps, snapshot)
    finally:
        source.close()
    return result


def _rng_state() -> dict:
    """Every random generator training draws from (dropout, SpecAugment's masks, shuffles)."""
    import random

    import torch

    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import random

    import torch

    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
