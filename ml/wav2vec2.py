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

import contextlib
import itertools
import json
import math
import os
import random
import threading
import time
from typing import Callable, Sequence

import numpy as np

from .audio import SAMPLE_RATE, audio_info, check_duration, load_audio, samples_16k, stream_audio
from .batching import prefetched
from .cpus import usable_cpus
from .distributed import StepPlan, Team
from .errors import AudioError, AudioTooLong, BadOptions, Cancelled, MLError, TrainingFailed
from .text import charset_of, normalize
from .training_loop import SUMMARY_FILE, ProgressCallback, adamw_schedule, train_steps
from .transcription import check_request, failure_recorder, turn

# libgomp threads spin while they wait at a barrier; when the CPUs are shared (a training
# worker beside the server's inference, other jobs) the spinning starves the thread everyone
# waits for and torch runs several times slower (measured here: 30 training steps of the tiny
# model took 55-92 s spinning vs 15 s passive on 2 busy cores).  Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# One forward pass at a time per process: concurrent PREDICTs take turns on the cores instead
# of oversubscribing them (audio decoding still overlaps).
_FORWARD_LOCK = threading.Lock()

CLASS_NAME = "Wav2Vec2En"

#: Shortest input a standard wav2vec2 feature encoder turns into one frame (its receptive field).
MIN_SAMPLES = 400


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
    """Use the CPUs this process may use (``usable_cpus``: a Ray worker's share, else every
    CPU it may run on) for intra-op parallelism."""
    import torch

    available = usable_cpus()
    if torch.get_num_threads() != available:
        torch.set_num_threads(available)


def _pick_device(device=None):
    import torch

    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def screen_training_rows(paths: Sequence[str], rows: Sequence[int] | None = None, *,
                         max_seconds: float | None = 30.0, skip_long: bool = False,
                         min_samples: int = MIN_SAMPLES) -> tuple[list[int], dict[int, int], list[int]]:
    """Check every training file from its header before any training starts.

    Returns (kept indices, their 16 kHz lengths, skipped indices).  A missing, unreadable,
    empty or too short file raises AudioError naming the row (``rows[i]``, default ``i``) and
    the path; one longer than ``max_seconds`` raises AudioTooLong, or is skipped when
    ``skip_long``.
    """
    kept, lengths, skipped = [], {}, []
    how = " (OPTIONS max_duration; or too_long='skip' to leave such rows out)"
    for i, path in enumerate(paths):
        row = rows[i] if rows is not None else i
        frames, rate = audio_info(path, row)
        try:
            check_duration(path, row, frames, rate, min_samples=min_samples, max_seconds=max_seconds, what=how)
        except AudioTooLong:
            if not skip_long:
                raise
            skipped.append(i)
            continue
        kept.append(i)
        lengths[i] = samples_16k(frames, rate)
    return kept, lengths, skipped


# ----------------------------------------------------------------------------- inference

#: Files up to this long (16 kHz samples) are transcribed whole, in length-sorted batches.
LONG_AUDIO_SAMPLES = 30 * SAMPLE_RATE
#: Longer files are read as a stream and cut into chunks of this many samples, each seen
#: with ``CHUNK_CONTEXT_SAMPLES`` of the audio on either side (the frames computed from the
#: context are dropped, so words cut at a chunk edge are still heard whole): windows of 30 s,
#: memory independent of the file's length.  Both are multiples of wav2vec2's 320-sample frame.
CHUNK_SAMPLES = 25 * SAMPLE_RATE
CHUNK_CONTEXT_SAMPLES = int(2.5 * SAMPLE_RATE)


def receptive_field(config) -> int:
    """Samples the convolutional feature encoder needs to produce one frame."""
    length = 1
    for kernel, stride in reversed(list(zip(config.conv_kernel, config.conv_stride))):
        length = (length - 1) * stride + kernel
    return int(length)


def frame_stride(config) -> int:
    """Samples between consecutive frames (the product of the conv strides; 320 in wav2vec2)."""
    return int(math.prod(config.conv_stride))


class _StopHooks:
    """Forward pre-hooks that let a cancel stop a forward pass between layers.

    One batch of long windows through wav2vec2-base takes many seconds on a CPU; checking
    only between batches would keep the cores busy that long after the client left.  The
    hooks read a per-thread callback, so one cached model serves several statements.
    """

    def __init__(self, model):
        self._local = threading.local()
        pattern = ("conv_layers.", "layers.")
        for name, module in model.named_modules():
            tail = name.rsplit(".", 2)
            if len(tail) >= 2 and tail[-1].isdigit() and any(name.endswith(p + tail[-1]) for p in pattern):
                module.register_forward_pre_hook(self._check)

    def _check(self, module, args):
        should_stop = getattr(self._local, "should_stop", None)
        if should_stop is not None and should_stop():
            raise Cancelled("transcription cancelled")

    @contextlib.contextmanager
    def watching(self, should_stop):
        previous = getattr(self._local, "should_stop", None)
        self._local.should_stop = should_stop
        try:
            yield
        finally:
            self._local.should_stop = previous


def transcriber_key(options: dict) -> tuple:
    """What of a statement's options changes the loaded model: nothing, for this class."""
    return ()


def load_transcriber(model_dir: str, options: dict | None = None) -> "Transcriber":
    return Transcriber(model_dir)


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
        self.min_samples = receptive_field(model.config)
        self.frame_stride = frame_stride(model.config)
        self._hooks = _StopHooks(self.model)
        self._torch = torch

    def _ids(self, arrays: Sequence[np.ndarray], should_stop=None) -> list[np.ndarray]:
        """Per array, the argmax token id of each of its own frames (padding frames cut off)."""
        torch = self._torch
        values, mask, lengths = collate(arrays, self.feature_extractor, self.device)
        with turn(_FORWARD_LOCK, should_stop), self._hooks.watching(should_stop), torch.inference_mode():
            logits = self.model(values, attention_mask=mask if self.uses_attention_mask else None).logits
            frames = self.model._get_feat_extract_output_lengths(torch.tensor(lengths))
            ids = logits.argmax(dim=-1).cpu().numpy()
        del logits, values, mask
        # Frames computed from padding are garbage whether or not they were masked.
        return [ids[row, :int(frames[row])].astype(np.int32) for row in range(len(arrays))]

    def _forward(self, arrays: Sequence[np.ndarray], should_stop=None) -> list[str]:
        return [ctc_greedy_decode(ids, self.tokenizer) for ids in self._ids(arrays, should_stop)]

    def transcribe_arrays(self, arrays: Sequence[np.ndarray]) -> list[str]:
        """Transcribe already-decoded 16 kHz mono arrays as one batch."""
        return self._forward(arrays) if len(arrays) else []

    def transcribe(self, paths: Sequence[str | None], batch_size: int, row_offset: int = 0,
                   should_stop: Callable[[], bool] | None = None, stats: dict | None = None,
                   max_seconds: float | None = None, errors: list | None = None,
                   options: dict | None = None) -> list[str | None]:
        """Transcripts of ``paths`` in input order (None for a None path).

        Files up to 30 s are batched longest first (see the module docstring for how padding
        is kept harmless); longer ones are streamed and transcribed chunk by chunk
        (``transcribe_long``), in memory independent of their length.  A file longer than
        ``max_seconds`` or too short for the model is refused before any work.

        AudioError names the path and row ``row_offset + index``.  With ``errors`` (a list
        as long as ``paths``) a row's AudioError does not stop the others: its message goes
        to ``errors[i]`` and its transcript stays None.  ``should_stop`` is polled between
        batches, chunks and model layers (raises Cancelled).  ``stats``, if given, receives
        audio_seconds, seconds, batches and utterances.  ``options`` (the statement's) holds
        nothing more this class uses.
        """
        check_request(paths, batch_size, errors)
        started = time.monotonic()
        results: list[str | None] = [None] * len(paths)

        failed = failure_recorder(errors)

        lengths: dict[int, int] = {}
        for i, path in enumerate(paths):
            if path is None:
                continue
            try:
                frames, rate = audio_info(path, row_offset + i)
                check_duration(path, row_offset + i, frames, rate, min_samples=self.min_samples,
                               max_seconds=max_seconds, what=" (OPTIONS max_duration)")
                lengths[i] = samples_16k(frames, rate)
            except AudioError as exc:
                failed(i, exc)
        short = [i for i in lengths if lengths[i] <= LONG_AUDIO_SAMPLES]
        long = [i for i in lengths if lengths[i] > LONG_AUDIO_SAMPLES]
        plan = inference_batches([lengths[i] for i in short], batch_size,
                                 None if self.uses_attention_mask else self.bucket_tolerance)
        batches = [[short[j] for j in batch] for batch in plan]

        def load(i: int):
            try:
                return load_audio(paths[i], row_offset + i)
            except AudioError as exc:
                if errors is None:
                    raise
                return exc

        audio_total = 0
        done = 0
        for batch, arrays in prefetched(batches, load):
            if should_stop is not None and should_stop():
                raise Cancelled("transcription cancelled")
            good = [(i, a) for i, a in zip(batch, arrays) if not isinstance(a, AudioError)]
            for i, a in zip(batch, arrays):
                if isinstance(a, AudioError):
                    failed(i, a)
            if good:
                texts = self._forward([a for _, a in good], should_stop)
                for (i, _), text in zip(good, texts):
                    results[i] = text
                audio_total += sum(len(a) for _, a in good)
            done += 1
        for i in long:
            if should_stop is not None and should_stop():
                raise Cancelled("transcription cancelled")
            part: dict = {}
            try:
                results[i] = self.transcribe_long(paths[i], batch_size, row_offset + i, should_stop, part)
            except AudioError as exc:
                failed(i, exc)
            audio_total += part.get("samples", 0)
            done += part.get("batches", 0)
        if stats is not None:
            stats.update(audio_seconds=audio_total / SAMPLE_RATE, seconds=time.monotonic() - started,
                         batches=done, utterances=len(lengths))
        return results

    def transcribe_long(self, path: str, batch_size: int, row: int | None = None,
                        should_stop: Callable[[], bool] | None = None, stats: dict | None = None) -> str:
        """Transcribe one file of any length in bounded memory.

        The file is decoded and resampled block by block (``stream_audio``) and cut into
        windows of ``CHUNK_SAMPLES`` plus ``CHUNK_CONTEXT_SAMPLES`` on either side; on a GPU up
        to ``batch_size`` windows of equal length share a forward pass (on a CPU one); each window keeps the
        frame ids of its own chunk, and the ids of all chunks are CTC-decoded as one sequence
        (so a word or a repeated letter across a chunk edge is not doubled).  Memory holds a
        few windows and one int per 20 ms frame, whatever the file's length.
        """
        step, ctx, stride = CHUNK_SAMPLES, CHUNK_CONTEXT_SAMPLES, self.frame_stride
        # On a CPU a batch of 30 s windows is slower than one window at a time (measured: 10 min
        # of audio, tiny model, 2 cores: 23.7 s and +1.5 GB RSS at 8 windows per pass, 16.5 s
        # and +0.28 GB at 1), so windows share a pass only on an accelerator.
        per_pass = 1 if self.device.type == "cpu" else batch_size
        ids_parts: list[np.ndarray] = []
        pending: list[tuple[np.ndarray, int, int | None]] = []
        counters = {"samples": 0, "batches": 0}

        def flush() -> None:
            if not pending:
                return
            if should_stop is not None and should_stop():
                raise Cancelled("transcription cancelled")
            for (_, first, last), ids in zip(pending, self._ids([w for w, _, _ in pending], should_stop)):
                ids_parts.append(ids[first:last])
            counters["batches"] += 1
            pending.clear()

        blocks = stream_audio(path, row)
        buf = np.zeros(0, np.float32)
        buf_start = 0  # absolute index (16 kHz samples) of buf[0]
        eof = False
        k = 0
        try:
            while True:
                chunk_start = k * step
                window_start = max(0, chunk_start - ctx)
                window_end = chunk_start + step + ctx
                while not eof and buf_start + len(buf) < window_end:
                    try:
                        block = next(blocks)
                    except StopIteration:
                        eof = True
                        break
                    counters["samples"] += len(block)
                    buf = np.concatenate([buf, block])
                    if should_stop is not None and should_stop():
                        raise Cancelled("transcription cancelled")
                end = buf_start + len(buf)
                if chunk_start >= end:
                    break
                window = buf[window_start - buf_start:min(window_end, end) - buf_start].copy()
                final = eof and window_end >= end
                first = (chunk_start - window_start) // stride
                last = None if final else (chunk_start + step - window_start) // stride
                if len(window) < self.min_samples:  # a sliver at the very end: nothing to hear
                    break
                if pending and len(window) != len(pending[0][0]):
                    flush()  # equal lengths only: no padding, exact for mask-less models too
                pending.append((window, first, last))
                if len(pending) >= per_pass:
                    flush()
                next_start = max(0, (k + 1) * step - ctx)
                buf = buf[next_start - buf_start:]
                buf_start = next_start
                k += 1
                if final:
                    break
            flush()
        finally:
            blocks.close()
        if stats is not None:
            stats.update(counters)
        ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int32)
        return ctc_greedy_decode(ids, self.tokenizer)


# ----------------------------------------------------------------------------- training

def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def _check_finite(model, steps: int, skipped: int, last_finite: bool, opts: dict) -> None:
    """Refuse to save a diverged model: the last step's loss was NaN or infinite, or a trained
    weight is.  Steps with a non-finite loss are skipped (no update), so a run may recover from a
    few; one that ends on such a step, or with non-finite weights, produced nothing usable.

    BadOptions (INVALID_ARGUMENT): the same rows and options diverge again (the seed is fixed).
    """
    import torch

    bad_weights = [name for name, p in model.named_parameters()
                   if p.requires_grad and not bool(torch.isfinite(p.detach()).all())]
    if last_finite and not bad_weights:
        return
    if bad_weights:
        what = (f"{len(bad_weights)} trained weight tensor(s) hold NaN or infinite values "
                f"(e.g. {bad_weights[0]})")
    else:
        what = f"the loss of its last step (step {steps}) was NaN or infinite"
    raise BadOptions(f"training diverged: {what}; {skipped} of {steps} steps had a non-finite loss. "
                     "Nothing was saved: the run is marked failed. Try a lower learning_rate (it was "
                     f"{opts['learning_rate']:g}) or max_grad_norm ({opts['max_grad_norm']:g}), or check "
                     "that the base model's weights are finite")


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
          should_stop: Callable[[], bool] | None = None, out_dir: str | None = None,
          team: Team | None = None) -> dict:
    """Fine-tune a CTC checkpoint on ``rows`` of (audio path, transcript); save to ``out_dir``.

    ``options`` are BUILD/FIT options (validated again here, so defaults fill in).
    ``progress_callback(step, epoch, loss, learning_rate, audio_seconds, elapsed)`` runs after
    every optimizer step (epoch is fractional, audio_seconds cumulative).  ``should_stop`` is
    polled before every step (raises TrainingCancelled).  ``team`` is this worker's place in a
    data-parallel run (default: the only worker).  Returns a summary dict.
    """
    from .checkpoints import load_base, locate
    from .options import validate

    if out_dir is None:
        raise ValueError("out_dir is required")
    opts = validate(CLASS_NAME, "build", {k: v for k, v in options.items()})
    started = time.monotonic()
    given = [tuple(r) for r in rows]
    if not given:
        raise TrainingFailed("no training rows: the query returned nothing")
    numbers = [r[2] if len(r) > 2 else i for i, r in enumerate(given)]  # the query's row numbers
    for (_, text, *_), row in zip(given, numbers):
        if text is None:
            raise TrainingFailed(f"row {row}: the transcript ({opts['text_col']}) is NULL")
    kept, all_lengths, too_long = screen_training_rows(
        [r[0] for r in given], numbers, max_seconds=opts["max_duration"],
        skip_long=opts["too_long"] == "skip")  # AudioError names path and row
    if not kept:
        raise AudioTooLong(f"all {len(given)} training rows are longer than max_duration="
                           f"{opts['max_duration']:g} s; nothing to train on")
    rows = [(given[i][0], given[i][1]) for i in kept]
    row_of = [numbers[i] for i in kept]
    paths = [p for p, _ in rows]
    lengths = {j: all_lengths[i] for j, i in enumerate(kept)}
    seconds = [lengths[i] / SAMPLE_RATE for i in range(len(rows))]
    locate(base_dir_or_id)  # a missing checkpoint fails here, before torch is even imported

    import torch

    _seed_everything(opts["seed"])
    _configure_threads()
    try:
        model, processor = load_base(base_dir_or_id, ctc_loss_reduction="mean", ctc_zero_infinity=True)
    except MLError:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign checkpoint: the same every time
        raise BadOptions(f"cannot load the base checkpoint {base_dir_or_id!r}: "
                         f"{str(exc).strip() or type(exc).__name__}"[:500]) from None
    needed = receptive_field(model.config)
    for j, n in lengths.items():
        if n < needed:
            raise AudioError(f"audio file '{paths[j]}' (row {row_of[j]}): too short: {n} samples at 16 kHz; "
                             f"the model needs at least {needed}", path=paths[j], row=row_of[j])
    tokenizer, extractor = processor.tokenizer, processor.feature_extractor
    if len(tokenizer.get_vocab()) > model.config.vocab_size:
        raise TrainingFailed(f"the tokenizer of {base_dir_or_id!r} has {len(tokenizer.get_vocab())} "
                             f"tokens but the model's CTC head only {model.config.vocab_size}")
    model.config.pad_token_id = tokenizer.pad_token_id  # the CTC blank
    charset = charset_of(tokenizer)
    labels = [tokenizer(normalize(text, charset)).input_ids for _, text in rows]
    frames = model._get_feat_extract_output_lengths(torch.tensor([lengths[i] for i in range(len(rows))]))
    infeasible = sum(1 for lab, f in zip(labels, frames.tolist()) if len(lab) > f)

    team = team or Team()
    device = team.device() or _pick_device()
    precision = _resolve_precision(opts["mixed_precision"], device)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    use_mask = bool(getattr(extractor, "return_attention_mask", False))
    model.to(device)
    model.train()
    if opts["freeze_feature_encoder"]:
        model.freeze_feature_encoder()

    plan = StepPlan(seconds, opts["batch_size"], opts["seed"], opts["epochs"], opts["max_steps"], team.size)
    optimizer, scheduler = adamw_schedule(model, opts, len(plan))

    def forward(net, batch, arrays):
        values, mask, _ = collate(arrays, extractor, device)
        width = max(len(labels[i]) for i in batch)
        label_t = torch.full((len(batch), max(1, width)), -100, dtype=torch.long)
        for row, i in enumerate(batch):
            label_t[row, :len(labels[i])] = torch.tensor(labels[i], dtype=torch.long)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            return net(values, attention_mask=mask if use_mask else None, labels=label_t.to(device)).loss

    done = train_steps(model, forward, list(model.parameters()), optimizer, scheduler, scaler, plan,
                       lambda i: load_audio(paths[i], row_of[i]), seconds, opts["max_grad_norm"], team,
                       progress_callback, should_stop, started)
    _check_finite(model, done.steps, done.skipped, done.last_finite, opts)

    model.eval()
    if team.leader:
        os.makedirs(out_dir, exist_ok=True)
        model.save_pretrained(out_dir)
        processor.save_pretrained(out_dir)
    summary = {
        "final_loss": done.final_loss,
        "first_loss": done.first_loss,
        "steps": done.steps,
        "epochs": round(done.epochs, 4),
        "utterances": len(rows),
        "skipped_rows": len(too_long),
        "train_audio_seconds": round(sum(seconds), 3),
        "audio_seconds": round(done.audio_seconds, 3),
        "seconds": round(time.monotonic() - started, 3),
        "device": device.type,
        "mixed_precision": precision,
        "skipped_steps": done.skipped,
        "infeasible_rows": infeasible,
        "workers": team.size,
        "resumed_at_steps": done.resumed_at,  # where restarts after a failed worker continued
        "base_model": str(base_dir_or_id),
    }
    if team.leader:
        with open(os.path.join(out_dir, SUMMARY_FILE), "w", encoding="utf-8") as f:
            json.dump({"summary": summary, "options": opts}, f, indent=2, default=str)
    team.publish(out_dir)
    return summary
