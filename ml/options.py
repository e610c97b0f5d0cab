"""Option schemas: which ``OPTIONS (...)`` each model class accepts per statement.

Options arrive as Python-like literals parsed by the planner.  Validating them here, against
one table per class and statement, gives every statement the same behaviour: unknown names
and wrong types are rejected with a message naming the option and listing the valid ones,
aliases (ThanoSQL 2022's ``epochs``, today's ``max_epochs``) map to one canonical name, and
the result carries every default, so the trainer never guesses.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from .errors import BadOptions, UnknownModelClass

STATEMENTS = ("build", "fit", "predict", "evaluate")
DEFAULT_BASE_MODEL = "facebook/wav2vec2-base-960h"
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
#: Bound of every integer option without a tighter one (they reach torch, numpy and
#: CTranslate2 as C int64s: a larger value overflows there, long after the statement started).
INT64_MAX = 2 ** 63 - 1
#: Smallest positive normal float32 (torch trains in float32): a positive option below it is 0
#: or denormal there, e.g. max_grad_norm=1e-320 would silently zero every gradient.
FLOAT32_TINY = 1.1754943508222875e-38


def default_base_model() -> str:
    """``THANOSQL_BASE_MODEL`` if set (a folder or hub id), else facebook/wav2vec2-base-960h."""
    return os.environ.get("THANOSQL_BASE_MODEL") or DEFAULT_BASE_MODEL


def _shown(value) -> str:
    """``repr(value)``, cut short: an error quotes a bad value, not all of it."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class Option:
    """One option: canonical name, type, default and the values it accepts."""

    name: str
    kind: str  # 'str' | 'int' | 'float' | 'bool' | 'precision' | 'resources'
    default: Any = None  # a value, or a zero-argument callable evaluated at validation time
    help: str = ""
    aliases: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    min_exclusive: bool = False
    nullable: bool = False  # None (SQL NULL) allowed: means "no limit" / the default
    choices: tuple[str, ...] = ()  # for 'str' options: the accepted values (case-insensitive)

    def default_value(self):
        return self.default() if callable(self.default) else self.default

    def type_name(self) -> str:
        return {"str": "a string", "int": "an integer", "float": "a number",
                "bool": "True or False",
                "precision": "True, False or one of " + ", ".join(repr(m) for m in MIXED_PRECISION),
                "resources": "a {'name': amount, ...} of Ray resources, e.g. {'CPU': 2, 'GPU': 1}",
                }[self.kind]

    def check(self, value, where: str):
        """Return the canonical value or raise BadOptions naming this option."""
        if value is None:
            if self.nullable:
                return None
            raise BadOptions(f"option '{self.name}'{where} must be {self.type_name()}, got NULL")
        ok = {
            "str": lambda v: isinstance(v, str),
            "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            "bool": lambda v: isinstance(v, bool),
            "precision": lambda v: isinstance(v, bool) or (isinstance(v, str) and v.lower() in MIXED_PRECISION),
            "resources": lambda v: isinstance(v, dict),
        }[self.kind](value)
        if not ok:
            raise BadOptions(f"option '{self.name}'{where} must be {self.type_name()}, "
                             f"got {type(value).__name__} {_shown(value)}")
        if self.kind == "float":
            try:
                value = float(value)
            except OverflowError:  # an int of hundreds of digits
                value = math.inf
            if not math.isfinite(value):
                raise BadOptions(f"option '{self.name}'{where} must be a finite number, got {_shown(value)}")
        if self.kind == "precision":
            value = ("auto" if value else "no") if isinstance(value, bool) else value.lower()
        if self.kind == "resources":
            return _resources(value, f"option '{self.name}'{where}")
        if self.kind == "str" and not value.strip():
            raise BadOptions(f"option '{self.name}'{where} must not be empty")
        if self.choices:
            if value.strip().lower() not in self.choices:
                raise BadOptions(f"option '{self.name}'{where} must be one of "
                                 + ", ".join(repr(c) for c in self.choices) + f", got {_shown(value)}")
            value = value.strip().lower()
        if self.minimum is not None and (value < self.minimum or (self.min_exclusive and value == self.minimum)):
            op = ">" if self.min_exclusive else ">="
            raise BadOptions(f"option '{self.name}'{where} must be {op} {self.minimum}, got {_shown(value)}")
        maximum = INT64_MAX if self.kind == "int" and self.maximum is None else self.maximum
        if maximum is not None and value > maximum:
            raise BadOptions(f"option '{self.name}'{where} must be <= {maximum}, got {_shown(value)}")
        if self.kind == "float" and self.min_exclusive and self.minimum == 0 and 0 < value < FLOAT32_TINY:
            raise BadOptions(f"option '{self.name}'{where} must be > 0 and at least {FLOAT32_TINY:.3g} "
                             f"(a smaller number is 0 in float32), got {_shown(value)}")
        return value


def _resources(value: dict, what: str) -> dict[str, float]:
    """A Ray resource request: names to finite amounts >= 0 (an amount over 1 is whole)."""
    out: dict[str, float] = {}
    for name, amount in value.items():
        if not isinstance(name, str) or not name.strip() or len(name) > 100:
            raise BadOptions(f"{what}: resource names are non-empty text, got {_shown(name)}")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not math.isfinite(amount) \
                or not 0 <= amount <= 1e15:
            raise BadOptions(f"{what}: the amount of {name!r} must be a number from 0 to 1e15 (memory is in "
                             f"bytes), got {_shown(amount)}")
        if amount > 1 and amount != int(amount):
            raise BadOptions(f"{what}: an amount over 1 must be whole (Ray's rule), got {name!r}: {amount!r}")
        out[name.strip()] = float(amount)
    return out


def _o(*args, **kwargs) -> Option:
    return Option(*args, **kwargs)


_AUDIO_COL = _o("audio_col", "str", "audio", "column holding audio file paths")
_TEXT_COL = _o("text_col", "str", "text", "column holding reference transcripts")
#: Where a statement runs on a server started with --ray (docs/scale-out.md); without Ray,
#: one worker on this machine is all there is.
_NUM_WORKERS = _o("num_workers", "int", 1,
                  "data-parallel training workers (Ray Train, DDP; a server started with --ray): each step "
                  "trains on num_workers x batch_size utterances", minimum=1, maximum=1024)
_USE_GPU = _o("use_gpu", "bool", False, "give each Ray worker one GPU (a server started with --ray)")
_RESOURCES = _o("resources_per_worker", "resources", None,
                "Ray resources of each worker, e.g. {'CPU': 4, 'GPU': 1} (NULL: 1 CPU, plus 1 GPU with "
                "use_gpu=True)", nullable=True)
_SCALE_OUT_TRAIN = (
    _NUM_WORKERS, _USE_GPU, _RESOURCES,
    _o("max_failures", "int", 0, "on Ray: restarts after a worker dies, each from the last checkpoint "
       "(0: a dead worker fails the run)", minimum=0, maximum=100),
    _o("checkpoint_steps", "int", 500, "on Ray with max_failures > 0: keep a checkpoint (model and optimizer "
       "state) every this many steps; a restart repeats at most this many", minimum=1),
)
_SCALE_OUT_INFER = (
    _o("num_workers", "int", None, "run on Ray Data with this many model replicas (an actor pool; a server "
       "started with --ray); NULL: in the server", minimum=1, maximum=1024, nullable=True),
    _USE_GPU, _RESOURCES,
)
_WAIT = _o("wait", "bool", True,
           "False: check the options and rows, register the run, start training in the background and "
           "return at once (status 'training'); follow it in thanosql.models / thanosql.training_info, stop "
           "it with CANCEL MODEL")

_TRAIN = (
    _AUDIO_COL,
    _TEXT_COL,
    _o("batch_size", "int", 16, "utterances per optimizer step", minimum=1),
    _o("epochs", "int", 5, "passes over the training rows", aliases=("max_epochs",), minimum=1),
    _o("learning_rate", "float", 1e-4, "peak AdamW learning rate, in (0, 1]", minimum=0.0, min_exclusive=True,
       maximum=1.0),
    _o("overwrite", "bool", False, "replace an existing model of the same name (as a new version)"),
    _o("seed", "int", 42, "random seed (batch order, dropout, SpecAugment), 0 to 2**32 - 1", minimum=0,
       maximum=2 ** 32 - 1),
    _o("warmup_ratio", "float", 0.1, "fraction of steps spent warming the learning rate up",
       minimum=0.0, maximum=1.0),
    _o("max_grad_norm", "float", 1.0, "gradient clipping norm", minimum=0.0, min_exclusive=True),
    _o("weight_decay", "float", 0.0, "AdamW weight decay, 0 to 1", minimum=0.0, maximum=1.0),
    _o("mixed_precision", "precision", "auto",
       "'auto' = bf16/fp16 autocast on a GPU, fp32 on CPU", aliases=("fp16",)),
    _o("freeze_feature_encoder", "bool", True, "keep the convolutional feature encoder fixed"),
    _o("max_steps", "int", None, "stop after this many optimizer steps (NULL = no limit)",
       minimum=1, nullable=True),
    _o("max_duration", "float", 30.0,
       "longest utterance to train on, in seconds (NULL = no limit); longer ones are refused "
       "or, with too_long='skip', left out", minimum=0.0, min_exclusive=True, nullable=True),
    _o("too_long", "str", "error",
       "what to do with an utterance over max_duration: 'error' (fail, naming the row and file) "
       "or 'skip' (leave it out; the result's skipped_rows counts them)", choices=("error", "skip")),
    _WAIT,
) + _SCALE_OUT_TRAIN
_BUILD = _TRAIN + (
    _o("base_model", "str", default_base_model,
       "checkpoint to fine-tune: a local folder or a Hugging Face hub id "
       "(default: env THANOSQL_BASE_MODEL or facebook/wav2vec2-base-960h)"),
)
#: Longest file PREDICT / EVALUATE accept by default (4 hours): long files are transcribed in
#: chunks in bounded memory, but a limit keeps one statement from running for days.
MAX_INFERENCE_SECONDS = 4 * 3600.0
_INFER_MAX_DURATION = _o("max_duration", "float", MAX_INFERENCE_SECONDS,
                         "longest audio file accepted, in seconds (default 4 hours; NULL = no limit); "
                         "files over 30 s are transcribed in 25 s chunks", minimum=0.0, min_exclusive=True,
                         nullable=True)
_PREDICT = (
    _AUDIO_COL,
    _o("batch_size", "int", 8, "utterances per forward pass", minimum=1),
    _o("result_col", "str", "predict_result", "name of the transcript column added to the input"),
    _INFER_MAX_DURATION,
    _o("on_error", "str", "fail",
       "a row whose audio cannot be transcribed (missing, unreadable, too short or too long): "
       "'fail' the statement naming the row and file, or 'null' (its transcript is NULL and "
       "error_col says why)", choices=("fail", "null")),
    _o("error_col", "str", "predict_error",
       "with on_error='null': name of the added column holding each row's error (NULL when fine)"),
) + _SCALE_OUT_INFER
_NORMALIZER = _o("normalizer", "str", "whisper",
                  "text normalisation applied to references and transcripts before WER/CER: 'whisper' "
                  "(Whisper's EnglishTextNormalizer: case, punctuation, spelling variants, numbers), "
                  "'basic' (case and punctuation only) or 'none' (raw WER)",
                  choices=("whisper", "basic", "none"))
_EVALUATE = (
    _AUDIO_COL,
    _TEXT_COL,
    _o("batch_size", "int", 8, "utterances per forward pass", minimum=1),
    _INFER_MAX_DURATION,
    _NORMALIZER,
    _o("details", "bool", False, "True: one row per utterance (row, audio, reference, transcript, wer, "
       "word_errors, words), worst first, instead of the corpus metrics"),
) + _SCALE_OUT_INFER

# Whisper (PREDICT / EVALUATE only): ThanoSQL's options plus decoding and compute settings.
_WHISPER_DECODE = (
    _o("language", "str", "auto",
       "spoken language code ('en', 'fr', ...) or 'auto' (detected per 30 s window; English-only "
       "models always use 'en')"),
    _o("task", "str", "transcribe", "'transcribe' (same language) or 'translate' (to English; "
       "multilingual models)", choices=("transcribe", "translate")),
    _o("beam_size", "int", 1, "beam search width (1 = greedy, fastest on a CPU)", minimum=1, maximum=16),
    _o("compute_type", "str", "auto",
       "CTranslate2 compute type: 'auto' = int8 on a CPU, float16 on a GPU; or int8, int8_float32, "
       "int16, float32, float16, ...",
       choices=("auto", "default", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16",
                "float16", "bfloat16", "float32")),
)
_WHISPER_PREDICT = _PREDICT[:1] + (
    _o("batch_size", "int", 8, "files decoded together (their 30 s windows share one encode/generate call)",
       minimum=1),) + _PREDICT[2:] + _WHISPER_DECODE
_WHISPER_EVALUATE = _EVALUATE + _WHISPER_DECODE

# Whisper fine-tuning (BUILD / FIT): the shared training options with defaults for a small
# pretrained seq2seq model (a low peak rate, few epochs), Whisper's 30 s window as the length
# limit, and what the decoder prompt says (language, task) for multilingual weights.
_WHISPER_TRAIN = (
    _AUDIO_COL,
    _TEXT_COL,
    _o("batch_size", "int", 8, "utterances per optimizer step", minimum=1),
    _o("epochs", "int", 3, "passes over the training rows", aliases=("max_epochs",), minimum=1),
    _o("learning_rate", "float", 1e-5, "peak AdamW learning rate, in (0, 1] (1e-5 suits tiny/base; "
       "higher rates forget what the pretrained model knew)", minimum=0.0, min_exclusive=True, maximum=1.0),
    _o("overwrite", "bool", False, "replace an existing model of the same name (as a new version)"),
    _o("seed", "int", 42, "random seed (batch order, dropout), 0 to 2**32 - 1", minimum=0, maximum=2 ** 32 - 1),
    _o("warmup_ratio", "float", 0.1, "fraction of steps warming the learning rate up (from above zero, so a "
       "one-step FIT trains)", minimum=0.0, maximum=1.0),
    _o("max_grad_norm", "float", 1.0, "gradient clipping norm", minimum=0.0, min_exclusive=True),
    _o("weight_decay", "float", 0.0, "AdamW weight decay, 0 to 1", minimum=0.0, maximum=1.0),
    _o("mixed_precision", "precision", "auto", "'auto' = bf16/fp16 autocast on a GPU, fp32 on CPU",
       aliases=("fp16",)),
    _o("freeze_encoder", "bool", False, "keep the audio encoder fixed and train the decoder only (faster, "
       "less memory; adapts vocabulary and style rather than acoustics)"),
    _o("max_steps", "int", None, "stop after this many optimizer steps (NULL = no limit)", minimum=1,
       nullable=True),
    _o("max_duration", "float", 30.0, "longest utterance to train on, in seconds, at most 30 (Whisper's "
       "window); longer ones are refused or, with too_long='skip', left out", minimum=0.0, min_exclusive=True,
       maximum=30.0),
    _o("too_long", "str", "error",
       "what to do with an utterance over max_duration: 'error' (fail, naming the row and file) "
       "or 'skip' (leave it out; the result's skipped_rows counts them)", choices=("error", "skip")),
    _o("language", "str", "en", "language code of the transcripts (the decoder prompt of multilingual "
       "models; English-only models take 'en' only)"),
    _o("timestamps", "bool", True, "train each utterance as one segment framed by timestamp tokens (the form "
       "PREDICT decodes in); False trains with <|notimestamps|>, as transformers' recipe does"),
    _WAIT,
) + _SCALE_OUT_TRAIN
_WHISPER_BUILD = _WHISPER_TRAIN + (
    _o("base_model", "str", "whisper_tiny_en",
       "weights to fine-tune: a packaged model (whisper_tiny_en, whisper_base), a CTranslate2 Whisper "
       "folder, a transformers Whisper checkpoint folder, or a Hugging Face hub id"),
)


@dataclass(frozen=True)
class ModelClass:
    """What LIST THANOSQL MODEL shows about a class, and its option schemas."""

    name: str
    task: str
    description: str
    options: dict[str, tuple[Option, ...]] = field(repr=False)
    module: str = ""  # the ml/ module implementing it: load_transcriber, transcriber_key[, train, ...]
    unsupported: str = ""  # why the statements it lacks are missing (said in their error)
    pretrained: tuple[str, ...] = ()  # what GET THANOSQL MODEL can fetch for it
    #: GET THANOSQL MODEL <class> OPTIONS (base_model=...) registers other weights (the
    #: module's ``install_base_model``)
    base_models: bool = False

    def implementation(self):
        """The class's module (imported on first use: torch, ctranslate2, ... load only then)."""
        import importlib

        return importlib.import_module(self.module)

    @property
    def statements(self) -> tuple[str, ...]:
        return tuple(s for s in STATEMENTS if s in self.options)


MODEL_CLASSES: dict[str, ModelClass] = {
    "Wav2Vec2En": ModelClass(
        name="Wav2Vec2En",
        task="speech-recognition",
        description="English speech recognition: fine-tunes a wav2vec2 CTC checkpoint "
                    "(default facebook/wav2vec2-base-960h) and transcribes audio files",
        options={"build": _BUILD, "fit": _TRAIN, "predict": _PREDICT, "evaluate": _EVALUATE},
        module="ml.wav2vec2",
    ),
    "Whisper": ModelClass(
        name="Whisper",
        task="speech-recognition",
        description="OpenAI Whisper speech recognition and translation to English on CTranslate2 (batched "
                    "across files; any length); pretrained weights with GET THANOSQL MODEL, fine-tuned "
                    "with transformers by BUILD / FIT (default base whisper_tiny_en)",
        options={"build": _WHISPER_BUILD, "fit": _WHISPER_TRAIN, "predict": _WHISPER_PREDICT,
                 "evaluate": _WHISPER_EVALUATE},
        module="ml.whisper",
        pretrained=("whisper_tiny_en", "whisper_base"),
        base_models=True,
    ),
}


def resolve_class(class_name: str) -> ModelClass:
    """The ModelClass for ``class_name`` (case-insensitive) or UnknownModelClass."""
    for name, cls in MODEL_CLASSES.items():
        if isinstance(class_name, str) and name.lower() == class_name.lower():
            return cls
    raise UnknownModelClass(f"unknown model class {class_name!r}; available classes: "
                            + ", ".join(MODEL_CLASSES))


def pretrained_class(name: str) -> ModelClass:
    """The class whose GET THANOSQL MODEL catalogue holds ``name`` (BadOptions otherwise)."""
    for cls in MODEL_CLASSES.values():
        if isinstance(name, str) and name.lower() in cls.pretrained:
            return cls
    known = [n for cls in MODEL_CLASSES.values() for n in cls.pretrained]
    for cls in MODEL_CLASSES.values():
        if cls.base_models and isinstance(name, str) and name.lower() == cls.name.lower():
            raise BadOptions(f"GET THANOSQL MODEL {name} needs OPTIONS (base_model='folder or hub id'); or name a "
                             "pretrained model: " + ", ".join(cls.pretrained))
    raise BadOptions(f"unknown pretrained model {name!r}; GET THANOSQL MODEL can fetch: " + ", ".join(known))


def base_model_class(name: str) -> ModelClass:
    """The class GET THANOSQL MODEL <name> OPTIONS (base_model=...) registers weights for:
    ``name`` is the class's name (case-insensitive)."""
    takers = [c for c in MODEL_CLASSES.values() if c.base_models]
    for cls in takers:
        if isinstance(name, str) and name.lower() == cls.name.lower():
            return cls
    raise BadOptions(f"GET THANOSQL MODEL {name} OPTIONS (base_model=...): base_model= goes with a model class "
                     "name: " + ", ".join(f"GET THANOSQL MODEL {c.name.lower()} OPTIONS (base_model='folder or hub "
                                          "id', model_name='mine')" for c in takers))


def schema(class_name: str, statement: str) -> tuple[Option, ...]:
    """The options ``class_name`` accepts in ``statement`` (build/fit/predict/evaluate)."""
    cls = resolve_class(class_name)
    stmt = statement.lower()
    if stmt not in cls.options:
        raise BadOptions(f"{cls.name} does not support {statement.upper()}; it supports "
                         + ", ".join(s.upper() for s in cls.statements)
                         + (f": {cls.unsupported}" if cls.unsupported else ""))
    return cls.options[stmt]


def validate(class_name: str, statement: str, options: dict | None) -> dict:
    """Check ``options`` and return them under canonical names with every default filled.

    Raises BadOptions naming the offending option (unknown name -> the valid names are
    listed; wrong type or value -> the expected type).  Ints are accepted for floats; bools
    must be bools.  Names are case-insensitive.
    """
    cls = resolve_class(class_name)
    opts = schema(cls.name, statement)
    by_name: dict[str, Option] = {}
    for opt in opts:
        by_name[opt.name] = opt
        for alias in opt.aliases:
            by_name[alias] = opt
    where = f" of {statement.upper()} with {cls.name}"
    given: dict[str, tuple[str, Any]] = {}
    for raw_key, value in (options or {}).items():
        key = str(raw_key).strip().lower()
        opt = by_name.get(key)
        if opt is None:
            valid = sorted(by_name)
            raise BadOptions(f"unknown option {raw_key!r}{where}; valid options: " + ", ".join(valid))
        if opt.name in given:
            raise BadOptions(f"option '{opt.name}'{where} given twice "
                             f"(as '{given[opt.name][0]}' and '{key}')")
        if key == "fp16" and isinstance(value, bool):  # HF Trainer's flag: True means fp16
            value = "fp16" if value else "no"
        given[opt.name] = (key, opt.check(value, where))
    return {opt.name: given[opt.name][1] if opt.name in given else opt.default_value()
            for opt in opts}


def model_classes_table() -> pa.Table:
    """LIST THANOSQL MODEL: the classes this server can build or use, with task, statements,
    options (per statement) and the pretrained models GET THANOSQL MODEL can fetch."""
    classes = list(MODEL_CLASSES.values())

    def options_of(c: ModelClass) -> str:
        return "; ".join(f"{s.upper()}: " + ", ".join(o.name for o in c.options[s]) for s in c.statements)

    def pretrained_of(c: ModelClass) -> str:
        if not c.pretrained:
            return ""
        catalogue = getattr(c.implementation(), "PRETRAINED", {})
        installed = getattr(c.implementation(), "pretrained_installed", lambda _n: False)
        out = []
        for name in c.pretrained:
            pre = catalogue.get(name)
            how = "installed" if installed(name) else "pip install " + " ".join(pre.packages) if pre else ""
            out.append(f"{name} ({pre.licence if pre else ''}; {how})")
        return ", ".join(out)

    return pa.table({
        "name": pa.array([c.name for c in classes], pa.string()),
        "task": pa.array([c.task for c in classes], pa.string()),
        "statements": pa.array([", ".join(s.upper() for s in c.statements) for c in classes], pa.string()),
        "options": pa.array([options_of(c) for c in classes], pa.string()),
        "pretrained": pa.array([pretrained_of(c) for c in classes], pa.string()),
        "description": pa.array([c.description for c in classes], pa.string()),
    })


def options_help(class_name: str, statement: str) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) rows, e.g. for DESCRIBE or error pages."""
    return [(o.name + "".join(f" / {a}" for a in o.aliases), o.kind, o.default_value(), o.help)
            for o in schema(class_name, statement)]
