"""Fine-tuning Whisper (BUILD / FIT ... USING Whisper) with transformers, in the training worker.

The recipe is the one of transformers' ``run_speech_recognition_seq2seq.py``, written as a
plain loop so that progress, cancel and versions work as for Wav2Vec2En (``ml/worker.py``):

- the base weights become a ``WhisperForConditionalGeneration``: a packaged CTranslate2
  model (``whisper_tiny_en``, ``whisper_base``) or a CTranslate2 folder is converted
  (``ml/whisper_convert.py``), a version trained here is read from its ``transformers/``
  folder, a transformers checkpoint folder or hub id is loaded as it is;
- inputs are the log-mel features PREDICT computes (faster-whisper's extractor, padded to the
  30 s window), computed in a thread while the previous batch trains;
- labels are the decoder prompt (``<|lang|><|transcribe|>`` for multilingual weights), the
  transcript as one segment framed by timestamp tokens (``<|0.00|>`` ... the utterance's end:
  the form PREDICT decodes in; ``timestamps=False`` uses ``<|notimestamps|>`` instead, as
  transformers' recipe does), and ``<|endoftext|>``; the model prepends ``<|startoftranscript|>`` to make its decoder input
  (shifting right), and padding is -100 so the loss ignores it;
- AdamW, linear warm-up that starts above zero (so a one-step FIT trains) and linear decay,
  gradient clipping, optionally a frozen encoder, mixed precision on a GPU, a fixed seed;
  batches grouped by length and shuffled, the longest first.

The version folder gets the transformers checkpoint in ``transformers/`` (what a further FIT
starts from) and, beside it, the same weights exported to CTranslate2 float16 with
``ctranslate2.converters.TransformersConverter``: PREDICT and EVALUATE stay on the fast path.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence

import numpy as np

from .audio import SAMPLE_RATE, load_audio
from .distributed import StepPlan, Team
from .errors import AudioTooLong, BadOptions, CheckpointUnavailable, MLError, TrainingFailed
from .training_loop import SUMMARY_FILE, ProgressCallback, adamw_schedule, train_steps

CLASS_NAME = "Whisper"
#: The transformers checkpoint inside a version folder (the CTranslate2 files sit beside it).
TRANSFORMERS_DIR = "transformers"
WINDOW_FRAMES = 3000   # the encoder's 30 s input, always
MAX_LABEL_TOKENS = 448 - 1  # decoder positions, less <|startoftranscript|>
MULTILINGUAL_VOCAB = 51865  # English-only Whisper models have 51864 tokens

# ----------------------------------------------------------------------------- base weights

def load_base(base: str):
    """(model, tokenizer, where it came from) for BUILD's base_model or FIT's version folder.

    Order: a packaged pretrained name; a version folder trained here (``transformers/``); a
    CTranslate2 Whisper folder (converted); a transformers Whisper checkpoint folder; a hub
    id (the Hugging Face cache offline, the hub online).  The model is float32.
    """
    from . import whisper, whisper_convert

    base = os.fspath(base)
    if base.lower() in whisper.PRETRAINED:
        sources = whisper._sources(whisper.PRETRAINED[base.lower()])
        folder = os.path.dirname(sources["tokenizer.json"][0])
        model, tokenizer, _ = whisper_convert.to_transformers(folder, sources["model.bin"])
        return model, tokenizer, f"{base.lower()} (packaged CTranslate2 weights, converted)"
    if os.path.isdir(os.path.join(base, TRANSFORMERS_DIR)):
        return (*_from_pretrained(os.path.join(base, TRANSFORMERS_DIR), local=True), "transformers checkpoint")
    if os.path.isdir(base):
        if os.path.isfile(os.path.join(base, "model.bin")):
            model, tokenizer, _ = whisper_convert.to_transformers(base)
            return model, tokenizer, "CTranslate2 folder (converted)"
        return (*_from_pretrained(base, local=True), "transformers checkpoint")
    if os.path.lexists(base):
        raise BadOptions(f"base_model '{base}' is not a folder")
    return (*_from_pretrained(base, local=False), "hub id")


def _from_pretrained(source: str, local: bool):
    from transformers import WhisperForConditionalGeneration, WhisperTokenizer

    if local:
        from .whisper import require_transformers_whisper
        require_transformers_whisper(source)
    try:
        model = WhisperForConditionalGeneration.from_pretrained(source, local_files_only=local)
        tokenizer = WhisperTokenizer.from_pretrained(source, local_files_only=local)
    except (OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:300]
        if local:
            raise BadOptions(f"cannot load the Whisper checkpoint in '{source}': {reason}") from None
        raise CheckpointUnavailable(
            f"base_model '{source}' is neither a packaged model (whisper_tiny_en, whisper_base), nor a folder "
            f"inside the server's allowed folders, and as a Hugging Face hub id it cannot be loaded ({reason})"
        ) from None
    return model.float(), tokenizer


def multilingual_hint(base: str) -> bool | None:
    """Whether the weights ``base`` names are multilingual, from their metadata alone (no weights
    read), so a wrong ``language`` fails before anything heavy loads; None when unknown (a hub id)."""
    from . import whisper

    base = os.fspath(base)
    if base.lower() in whisper.PRETRAINED:
        return whisper.PRETRAINED[base.lower()].multilingual
    folder = os.path.join(base, TRANSFORMERS_DIR) if os.path.isdir(os.path.join(base, TRANSFORMERS_DIR)) else base
    try:
        if os.path.isfile(os.path.join(folder, "model.bin")):
            if os.path.isfile(os.path.join(folder, "vocabulary.json")):
                with open(os.path.join(folder, "vocabulary.json"), encoding="utf-8") as f:
                    size = len(json.load(f))
            else:
                with open(os.path.join(folder, "vocabulary.txt"), encoding="utf-8") as f:
                    size = sum(1 for _ in f)
        else:
            with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
                size = int(json.load(f)["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return size >= MULTILINGUAL_VOCAB


# ----------------------------------------------------------------------------- labels and features

def check_language(multilingual: bool | None, language: str) -> None:
    if multilingual is False and language.strip().lower() != "en":
        raise BadOptions(f"these Whisper weights are English-only: language={language.strip().lower()!r} needs "
                         "multilingual weights (base_model='whisper_base')")


def prompt_tokens(tokenizer, multilingual: bool, language: str, timestamps: bool = True) -> list[int]:
    """The decoder prompt after <|startoftranscript|>: [<|lang|>, <|transcribe|>] for multilingual
    weights, then <|notimestamps|> unless ``timestamps``."""
    vocab = tokenizer.get_vocab()
    language = language.strip().lower()
    check_language(multilingual, language)
    tail = [] if timestamps else [vocab["<|notimestamps|>"]]
    if not multilingual:
        return tail
    lang = vocab.get(f"<|{language}|>")
    if lang is None:
        raise BadOptions(f"unknown language {language!r} for Whisper; use a code such as 'en', 'fr', 'de'")
    return [lang, vocab["<|transcribe|>"], *tail]


def timestamp_begin(tokenizer) -> int:
    """Id of <|0.00|>: the timestamp tokens follow <|notimestamps|> (they are not in tokenizer.json)."""
    return tokenizer.get_vocab()["<|notimestamps|>"] + 1


def label_ids(tokenizer, text: str, prompt: Sequence[int], eot: int, seconds: float | None = None,
              first_timestamp: int | None = None) -> list[int]:
    """Labels of one transcript: prompt, the text's tokens (with Whisper's leading space), eot.

    With ``first_timestamp`` (the id of <|0.00|>) the text is one segment framed by timestamps,
    <|0.00|> ... <|end|>, the end being the utterance's length (20 ms steps, at most 30 s):
    the form PREDICT decodes in (timestamps drive its move through long files)."""
    text_ids = tokenizer.encode(" " + text.strip(), add_special_tokens=False)
    if first_timestamp is None:
        return [*prompt, *text_ids, eot]
    end = first_timestamp + round(min(float(seconds or 0.0), 30.0) / 0.02)
    return [*prompt, first_timestamp, *text_ids, end, eot]


class Features:
    """Log-mel features exactly as PREDICT computes them (faster-whisper's extractor), padded or
    trimmed to the encoder's 30 s window."""

    def __init__(self, n_mels: int):
        from faster_whisper.feature_extractor import FeatureExtractor

        self.extractor = FeatureExtractor(feature_size=int(n_mels))

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        from faster_whisper.audio import pad_or_trim

        return pad_or_trim(self.extractor(np.asarray(audio, np.float32))).astype(np.float32)


# ----------------------------------------------------------------------------- training

def _collate_labels(batch_labels: list[list[int]]):
    import torch

    width = max(len(lab) for lab in batch_labels)
    out = torch.full((len(batch_labels), width), -100, dtype=torch.long)
    for row, lab in enumerate(batch_labels):
        out[row, :len(lab)] = torch.tensor(lab, dtype=torch.long)
    return out


def export_ctranslate2(hf_dir: str, out_dir: str) -> None:
    """Convert the transformers checkpoint in ``hf_dir`` to CTranslate2 float16 files in
    ``out_dir`` (model.bin, config.json, vocabulary.json, tokenizer.json, preprocessor_config.json)."""
    import ctranslate2.converters

    from .whisper import CONVERT_QUANTIZATION

    work = os.path.join(out_dir, ".ct2")
    copy = [f for f in ("tokenizer.json", "preprocessor_config.json") if os.path.isfile(os.path.join(hf_dir, f))]
    ctranslate2.converters.TransformersConverter(hf_dir, copy_files=copy or None).convert(
        work, quantization=CONVERT_QUANTIZATION, force=True)
    for name in os.listdir(work):
        os.replace(os.path.join(work, name), os.path.join(out_dir, name))
    os.rmdir(work)


def train(base: str, rows: Sequence[tuple], options: dict, progress_callback: ProgressCallback | None = None,
          should_stop: Callable[[], bool] | None = None, out_dir: str | None = None,
          team: Team | None = None) -> dict:
    """Fine-tune Whisper on ``rows`` of (audio path, transcript[, query row]); save to ``out_dir``.

    The contract is ``ml.wav2vec2.train``'s: ``options`` are BUILD/FIT options (validated
    again, so defaults fill in), ``progress_callback(step, epoch, loss, learning_rate,
    audio_seconds, elapsed)`` runs after every optimizer step, ``should_stop`` is polled before
    every step (TrainingCancelled), ``team`` places this worker in a data-parallel run, the
    summary dict is returned.
    """
    from . import wav2vec2 as shared
    from .options import validate
    from .whisper import screen_training_rows

    if out_dir is None:
        raise ValueError("out_dir is required")
    opts = validate(CLASS_NAME, "fit", {k: v for k, v in options.items() if k != "base_model"})
    started = time.monotonic()
    given = [tuple(r) for r in rows]
    if not given:
        raise TrainingFailed("no training rows: the query returned nothing")
    numbers = [r[2] if len(r) > 2 else i for i, r in enumerate(given)]
    for (_, text, *_), row in zip(given, numbers):
        if text is None:
            raise TrainingFailed(f"row {row}: the transcript ({opts['text_col']}) is NULL")
    kept, lengths, too_long = screen_training_rows(
        [r[0] for r in given], numbers, max_seconds=opts["max_duration"], skip_long=opts["too_long"] == "skip")
    if not kept:
        raise AudioTooLong(f"all {len(given)} training rows are longer than max_duration="
                           f"{opts['max_duration']:g} s; nothing to train on")
    check_language(multilingual_hint(base), opts["language"])  # before anything heavy loads
    paths = [given[i][0] for i in kept]
    texts = [given[i][1] for i in kept]
    row_of = [numbers[i] for i in kept]
    seconds = [lengths[i] / SAMPLE_RATE for i in kept]

    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    shared._seed_everything(opts["seed"])
    shared._configure_threads()
    try:
        model, tokenizer, origin = load_base(base)
    except MLError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise BadOptions(f"cannot load the Whisper weights {base!r}: {exc}") from None
    loaded_at = time.monotonic()
    config = model.config
    multilingual = config.vocab_size >= MULTILINGUAL_VOCAB
    prompt = prompt_tokens(tokenizer, multilingual, opts["language"], opts["timestamps"])
    eot = config.eos_token_id
    first = timestamp_begin(tokenizer) if opts["timestamps"] else None
    labels = [label_ids(tokenizer, t, prompt, eot, s, first) for t, s in zip(texts, seconds)]
    for lab, row, path in zip(labels, row_of, paths):
        if len(lab) > MAX_LABEL_TOKENS:
            raise BadOptions(f"row {row}: the transcript of '{path}' is {len(lab)} tokens; Whisper's decoder "
                             f"takes at most {MAX_LABEL_TOKENS} (split the utterance)")
    features = Features(config.num_mel_bins)

    team = team or Team()
    device = team.device() or shared._pick_device()
    precision = shared._resolve_precision(opts["mixed_precision"], device)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    model.config.use_cache = False  # no key/value cache while training
    model.to(device)
    model.train()
    if opts["freeze_encoder"]:
        model.freeze_encoder()

    plan = StepPlan(seconds, opts["batch_size"], opts["seed"], opts["epochs"], opts["max_steps"], team.size)
    optimizer, scheduler = adamw_schedule(model, opts, len(plan), fused=True)

    def forward(net, batch, feats):
        inputs = torch.from_numpy(np.stack(feats)).to(device)
        label_t = _collate_labels([labels[i] for i in batch]).to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            return net(input_features=inputs, labels=label_t).loss

    done = train_steps(model, forward, [p for p in model.parameters() if p.requires_grad], optimizer, scheduler,
                       scaler, plan, lambda i: load_audio(paths[i], row_of[i]), seconds, opts["max_grad_norm"], team,
                       progress_callback, should_stop, started, prepare=features)
    shared._check_finite(model, done.steps, done.skipped, done.last_finite, opts)
    trained_at = time.monotonic()

    model.eval()
    model.config.use_cache = True
    from .whisper_convert import feature_extractor, save_checkpoint

    if team.leader:
        os.makedirs(out_dir, exist_ok=True)
        hf_dir = os.path.join(out_dir, TRANSFORMERS_DIR)
        save_checkpoint(model.to("cpu"), tokenizer, feature_extractor(config.num_mel_bins), hf_dir)
        del model, optimizer
        export_ctranslate2(hf_dir, out_dir)
    summary = {
        "final_loss": done.final_loss,
        "first_loss": done.first_loss,
        "steps": done.steps,
        "epochs": round(done.epochs, 4),
        "utterances": len(paths),
        "skipped_rows": len(too_long),
        "train_audio_seconds": round(sum(seconds), 3),
        "audio_seconds": round(done.audio_seconds, 3),
        "seconds": round(time.monotonic() - started, 3),
        # where the time went: reading the base weights (and converting them), the training
        # loop, saving the transformers checkpoint and exporting it to CTranslate2
        "seconds_load": round(loaded_at - started, 3),
        "seconds_train": round(trained_at - loaded_at, 3),
        "seconds_save_export": round(time.monotonic() - trained_at, 3),
        "device": device.type,
        "mixed_precision": precision,
        "skipped_steps": done.skipped,
        "workers": team.size,
        "resumed_at_steps": done.resumed_at,  # where restarts after a failed worker continued
        "base_model": str(base),
        "base_format": origin,
        "exported": "ctranslate2 float16",
    }
    if team.leader:
        with open(os.path.join(out_dir, SUMMARY_FILE), "w", encoding="utf-8") as f:
            json.dump({"summary": summary, "options": opts}, f, indent=2, default=str)
    team.publish(out_dir)
    return summary
