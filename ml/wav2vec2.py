"""Wav2Vec2En: fine-tuning and batched greedy-CTC transcription of English speech.

Training follows the recipe of Hugging Face's CTC fine-tuning examples: per-utterance
normalised audio, dynamic padding, batches grouped by length (little padding, so little
wasted compute), AdamW with linear warm-up and decay, gradient clipping, a frozen
convolutional feature encoder, mixed precision on a GPU, and a fixed seed.

Inference sorts utterances by length, keeps row order in the result, overlaps audio
decoding with compute, and respects how the model was trained to see padding:
- layer-norm feature encoders take an attention mask; each row's frames are trimmed to its
  own length, so batched output equals one-at-a-time output;
- group-norm encoders (wav2vec2-base) take no mask and zero padding changes their features,
  so only utterances of nearly equal length share a batch (``bucket_tolerance``), and a
  batch of one is exactly the per-utterance computation.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import queue
import random
import threading
import time
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from .audio import SAMPLE_RATE, audio_info, load_audio
from .errors import Cancelled, MLError, TrainingCancelled, TrainingFailed
from .text import charset_of, normalize

# libgomp threads spin while they wait at a barrier; when the CPUs are shared (a training
# worker beside the server's inference, other jobs) the spinning starves the thread everyone
# waits for and torch runs several times slower (measured here: 30 training steps of the tiny
# model took 55-92 s spinning vs 15 s passive on 2 busy cores).  Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# One forward pass at a time per process: concurrent PREDICTs take turns on the cores instead
# of oversubscribing them (audio decoding still overlaps).
_FORWARD_LOCK = threading.Lock()

CLASS_NAME = "Wav2Vec2En"
SUMMARY_FILE = "thanosql_training.json"

ProgressCallback = Callable[[int, float, float, float, float, float], None]


# ----------------------------------------------------------------------------- batching

def inference_batches(lengths: Sequence[int], batch_size: int,
                      bucket_tolerance: float | None = None) -> list[list[int]]:
    """Index batches over ``lengths``, longest first.

    ``bucket_tolerance=None``: consecutive chunks of the length-sorted order (right when
    padding is masked).  A number: a batch only takes utterances at least
    ``(1 - bucket_tolerance)`` times as long as its longest, so padding stays below that
    fraction (right for models that cannot mask padding).
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    if bucket_tolerance is None:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and (len(current) >= batch_size
                        or lengths[i] < lengths[current[0]] * (1.0 - bucket_tolerance)):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def training_batches(lengths: Sequence[float], batch_size: int, rng: random.Random,
                     megabatch_mult: int = 50) -> list[list[int]]:
    """Length-grouped random batches (the LengthGroupedSampler idea of HF's Trainer).

    Shuffle, cut into megabatches of ``megabatch_mult * batch_size``, sort each by length,
    chunk into batches, shuffle the batches; the batch with the longest utterance goes
    first so an out-of-memory shows up at step one, not hours in.
    """
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    mega = max(1, megabatch_mult * batch_size)
    batches: list[list[int]] = []
    for start in range(0, len(idx), mega):
        chunk = sorted(idx[start:start + mega], key=lambda i: -lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    longest = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]))
    batches.insert(0, batches.pop(longest))
    return batches


def prefetched(batches: Iterable[list[int]], load: Callable[[int], np.ndarray],
               depth: int = 2) -> Iterator[tuple[list[int], list[np.ndarray]]]:
    """Yield (batch, arrays) while a thread decodes the next batches (overlaps I/O and compute).

    Errors raised by ``load`` surface in the consumer, at the batch that caused them.
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for batch in batches:
                if not put((batch, [load(i) for i in batch], None)):
                    return
        except BaseException as exc:  # handed to the consumer
            put((None, None, exc))
            return
        put((None, None, None))

    thread = threading.Thread(target=work, name="ml-audio-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            batch, arrays, err = q.get()
            if err is not None:
                raise err
            if batch is None:
                return
            yield batch, arrays
    finally:
        stop.set()


def collate(arrays: Sequence[np.ndarray], feature_extractor, device=None):
    """(input_values, attention_mask, lengths) with each utterance normalised on its own.

    Normalising before padding (rather than the feature extractor's padded call, which for
    mask-less extractors normalises over the zeros too) makes a padded row's real samples
    identical to the unpadded utterance's.
    """
    import torch

    if getattr(feature_extractor, "do_normalize", False):
        arrays = [feature_extractor.zero_mean_unit_var_norm([np.asarray(a, np.float32)], None)[0]
                  for a in arrays]
    lengths = [len(a) for a in arrays]
    width = max(lengths)
    values = np.full((len(arrays), width), feature_extractor.padding_value, dtype=np.float32)
    mask = np.zeros((len(arrays), width), dtype=np.int64)
    for row, a in enumerate(arrays):
        values[row, :len(a)] = a
        mask[row, :len(a)] = 1
    values_t, mask_t = torch.from_numpy(values), torch.from_numpy(mask)
    if device is not None:
        values_t, mask_t = values_t.to(device), mask_t.to(device)
    return values_t, mask_t, lengths


def ctc_greedy_decode(ids: Sequence[int], tokenizer) -> str:
    """Collapse repeats, drop blanks and other specials, map the word delimiter to spaces.

    Done here rather than with ``tokenizer.batch_decode(skip_special_tokens=True)``, which
    drops blanks *before* collapsing repeats and so turns "HELLO" into "HELO".
    """
    cache = getattr(tokenizer, "_thanosql_ctc_tables", None)
    if cache is None:
        vocab = tokenizer.get_vocab()
        id_to_tok = {i: t for t, i in vocab.items()}
        drop = {tokenizer.pad_token_id, tokenizer.unk_token_id,
                getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)}
        delim = getattr(tokenizer, "word_delimiter_token", "|")
        cache = (id_to_tok, {d for d in drop if d is not None}, delim)
        tokenizer._thanosql_ctc_tables = cache
    id_to_tok, drop, delim = cache
    pieces = []
    for tok_id, _ in itertools.groupby(int(i) for i in ids):
        if tok_id in drop:
            continue
        tok = id_to_tok.get(tok_id, "")
        pieces.append(" " if tok == delim else tok)
    return " ".join("".join(pieces).split())


def _configure_threads() -> None:
    """Use every CPU this process may run on for intra-op parallelism (never fewer than torch's default)."""
    import torch

    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        available = os.cpu_count() or 1
    if torch.get_num_threads() < available:
        torch.set_num_threads(available)


def _pick_device(device=None):
    import torch

    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _lengths_16k(paths: Sequence[str], indices: Iterable[int], row_offset: int) -> dict[int, int]:
    lengths = {}
    for i in indices:
        frames, rate = audio_info(paths[i], row_offset + i)
        lengths[i] = max(1, round(frames * SAMPLE_RATE / rate))
    return lengths


# ----------------------------------------------------------------------------- inference

class Transcriber:
    """A loaded model ready for batched greedy-CTC transcription (thread-safe for reads)."""

    def __init__(self, model_dir: str, device=None, bucket_tolerance: float = 0.1):
        import torch
        from transformers import AutoModelForCTC, Wav2Vec2Processor
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        _configure_threads()
        self.model_dir = os.fspath(model_dir)
        self.device = _pick_device(device)
        try:
            self.processor = Wav2Vec2Processor.from_pretrained(self.model_dir, local_files_only=True)
            model = AutoModelForCTC.from_pretrained(self.model_dir, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise MLError(f"cannot load the model in {self.model_dir}: {exc}") from None
        self.model = model.to(self.device).eval()
        self.feature_extractor = self.processor.feature_extractor
        self.tokenizer = self.processor.tokenizer
        self.uses_attention_mask = bool(getattr(self.feature_extractor, "return_attention_mask", False))
        self.bucket_tolerance = bucket_tolerance
        self._torch = torch

    def _forward(self, arrays: Sequence[np.ndarray]) -> list[str]:
        torch = self._torch
        values, mask, lengths = collate(arrays, self.feature_extractor, self.device)
        with _FORWARD_LOCK, torch.inference_mode():
            logits = self.model(values, attention_mask=mask if self.uses_attention_mask else None).logits
            frames = self.model._get_feat_extract_output_lengths(torch.tensor(lengths))
            ids = logits.argmax(dim=-1).cpu()
        # Frames computed from padding are garbage whether or not they were masked.
        return [ctc_greedy_decode(ids[row, :int(frames[row])].tolist(), self.tokenizer)
                for row in range(len(arrays))]

    def transcribe_arrays(self, arrays: Sequence[np.ndarray]) -> list[str]:
        """Transcribe already-decoded 16 kHz mono arrays as one batch."""
        return self._forward(arrays) if len(arrays) else []

    def transcribe(self, paths: Sequence[str | None], batch_size: int, row_offset: int = 0,
                   should_stop: Callable[[], bool] | None = None, stats: dict | None = None) -> list[str | None]:
        """Transcripts of ``paths`` in input order (None for a None path).

        Rows are batched longest first (see the module docstring for how padding is kept
        harmless).  AudioError names the path and row ``row_offset + index``; ``should_stop``
        is polled between batches (raises Cancelled).  ``stats``, if given, receives
        audio_seconds, seconds and batches.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        started = time.monotonic()
        results: list[str | None] = [None] * len(paths)
        present = [i for i, p in enumerate(paths) if p is not None]
        lengths = _lengths_16k(paths, present, row_offset)
        keys = present
        plan = inference_batches([lengths[i] for i in keys], batch_size,
                                 None if self.uses_attention_mask else self.bucket_tolerance)
        batches = [[keys[j] for j in batch] for batch in plan]
        audio_total = 0
        done = 0
        for batch, arrays in prefetched(batches, lambda i: load_audio(paths[i], row_offset + i)):
            if should_stop is not None and should_stop():
                raise Cancelled("transcription cancelled")
            for i, text in zip(batch, self._forward(arrays)):
                results[i] = text
            audio_total += sum(len(a) for a in arrays)
            done += 1
        if stats is not None:
            stats.update(audio_seconds=audio_total / SAMPLE_RATE, seconds=time.monotonic() - started,
                         batches=done, utterances=len(present))
        return results


# ----------------------------------------------------------------------------- training

def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def _resolve_precision(requested: str, device) -> str:
    import torch

    if device.type == "cuda":
        if requested in ("auto", "bf16"):
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return requested
    # CPU autocast only pays off (and only works well) with bf16, and only when asked for.
    return "bf16" if requested == "bf16" else "no"


def train(base_dir_or_id: str, rows: Sequence[tuple[str, str]], options: dict,
          progress_callback: ProgressCallback | None = None,
          should_stop: Callable[[], bool] | None = None, out_dir: str | None = None) -> dict:
    """Fine-tune a CTC checkpoint on ``rows`` of (audio path, transcript); save to ``out_dir``.

    ``options`` are BUILD/FIT options (validated again here, so defaults fill in).
    ``progress_callback(step, epoch, loss, learning_rate, audio_seconds, elapsed)`` runs after
    every optimizer step (epoch is fractional, audio_seconds cumulative).  ``should_stop`` is
    polled before every step (raises TrainingCancelled).  Returns a summary dict.
    """
    import torch
    from transformers import get_linear_schedule_with_warmup

    from .checkpoints import load_base
    from .options import validate

    if out_dir is None:
        raise ValueError("out_dir is required")
    opts = validate(CLASS_NAME, "build", {k: v for k, v in options.items()})
    started = time.monotonic()
    rows = list(rows)
    if not rows:
        raise TrainingFailed("no training rows: the query returned nothing")
    for i, (_, text) in enumerate(rows):
        if text is None:
            raise TrainingFailed(f"row {i}: the transcript ({opts['text_col']}) is NULL")
    paths = [p for p, _ in rows]
    lengths = _lengths_16k(paths, range(len(rows)), 0)  # AudioError names path and row
    seconds = [lengths[i] / SAMPLE_RATE for i in range(len(rows))]

    _seed_everything(opts["seed"])
    _configure_threads()
    model, processor = load_base(base_dir_or_id, ctc_loss_reduction="mean", ctc_zero_infinity=True)
    tokenizer, extractor = processor.tokenizer, processor.feature_extractor
    if len(tokenizer.get_vocab()) > model.config.vocab_size:
        raise TrainingFailed(f"the tokenizer of {base_dir_or_id!r} has {len(tokenizer.get_vocab())} "
                             f"tokens but the model's CTC head only {model.config.vocab_size}")
    model.config.pad_token_id = tokenizer.pad_token_id  # the CTC blank
    charset = charset_of(tokenizer)
    labels = [tokenizer(normalize(text, charset)).input_ids for _, text in rows]
    frames = model._get_feat_extract_output_lengths(torch.tensor([lengths[i] for i in range(len(rows))]))
    infeasible = sum(1 for lab, f in zip(labels, frames.tolist()) if len(lab) > f)

    device = _pick_device()
    precision = _resolve_precision(opts["mixed_precision"], device)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    use_mask = bool(getattr(extractor, "return_attention_mask", False))
    model.to(device)
    model.train()
    if opts["freeze_feature_encoder"]:
        model.freeze_feature_encoder()

    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": opts["weight_decay"]},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=opts["learning_rate"])
    batch_size, epochs = opts["batch_size"], opts["epochs"]
    steps_per_epoch = math.ceil(len(rows) / batch_size)
    total_steps = epochs * steps_per_epoch
    if opts["max_steps"] is not None:
        total_steps = min(total_steps, opts["max_steps"])
    warmup = math.ceil(opts["warmup_ratio"] * total_steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    rng = random.Random(opts["seed"])

    step = 0
    skipped = 0
    audio_done = 0.0
    epoch_losses: list[float] = []
    first_loss = None
    epoch_pos = 0.0
    for epoch in range(epochs):
        if step >= total_steps:
            break
        epoch_losses = []
        batches = training_batches(seconds, batch_size, rng)
        for b_index, (batch, arrays) in enumerate(prefetched(batches, lambda i: load_audio(paths[i], i))):
            if step >= total_steps:
                break
            if should_stop is not None and should_stop():
                raise TrainingCancelled("training cancelled")
            values, mask, _ = collate(arrays, extractor, device)
            width = max(len(labels[i]) for i in batch)
            label_t = torch.full((len(batch), max(1, width)), -100, dtype=torch.long)
            for row, i in enumerate(batch):
                label_t[row, :len(labels[i])] = torch.tensor(labels[i], dtype=torch.long)
            label_t = label_t.to(device)
            lr_now = scheduler.get_last_lr()[0]
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                out = model(values, attention_mask=mask if use_mask else None, labels=label_t)
            loss = out.loss
            if not torch.isfinite(loss):
                skipped += 1
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step += 1
                continue
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), opts["max_grad_norm"])
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss_value = float(loss.detach())
            first_loss = loss_value if first_loss is None else first_loss
            epoch_losses.append(loss_value)
            audio_done += sum(seconds[i] for i in batch)
            epoch_pos = epoch + (b_index + 1) / len(batches)
            if progress_callback is not None:
                progress_callback(step, round(epoch_pos, 4), loss_value, lr_now, audio_done,
                                  time.monotonic() - started)
    if not epoch_losses and first_loss is None:
        raise TrainingFailed(f"every one of {step} training steps had a non-finite loss")

    model.eval()
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    summary = {
        "final_loss": float(np.mean(epoch_losses)) if epoch_losses else None,
        "first_loss": first_loss,
        "steps": step,
        "epochs": round(epoch_pos, 4),
        "utterances": len(rows),
        "train_audio_seconds": round(sum(seconds), 3),
        "audio_seconds": round(audio_done, 3),
        "seconds": round(time.monotonic() - started, 3),
        "device": device.type,
        "mixed_precision": precision,
        "skipped_steps": skipped,
        "infeasible_rows": infeasible,
        "base_model": str(base_dir_or_id),
    }
    with open(os.path.join(out_dir, SUMMARY_FILE), "w", encoding="utf-8") as f:
        json.dump({"summary": summary, "options": opts}, f, indent=2, default=str)
    return summary
