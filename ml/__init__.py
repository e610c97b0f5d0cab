"""Machine learning over Arrow for the ThanoSQL-compatible server (no SQL, no gRPC here).

The planner uses: ``options.validate`` for OPTIONS, ``ModelRegistry`` for models and
versions, ``worker.run_training`` for BUILD/FIT, ``Transcriber`` for PREDICT/EVALUATE and
``metrics.score`` for EVALUATE.  Heavy imports (torch, transformers) happen only when a
model is trained or loaded, so importing ``ml`` stays cheap for the server.
"""

from . import wav2vec2 as _wav2vec2  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch loads)
from .audio import SAMPLE_RATE, audio_seconds, load_audio
from .errors import (AudioError, BadOptions, Cancelled, CheckpointUnavailable, MLError, ModelBusy,
                     ModelExists, ModelNotFound, TrainingCancelled, TrainingFailed, UnknownModelClass)
from .metrics import cer, metrics_table, score, wer
from .options import MODEL_CLASSES, default_base_model, model_classes_table, resolve_class, validate
from .registry import ModelRegistry, RunInfo
from .text import normalize, normalize_for_metrics
from .wav2vec2 import Transcriber, train
from .worker import run_training

__all__ = [
    "SAMPLE_RATE", "audio_seconds", "load_audio",
    "AudioError", "BadOptions", "Cancelled", "CheckpointUnavailable", "MLError", "ModelBusy",
    "ModelExists", "ModelNotFound", "TrainingCancelled", "TrainingFailed", "UnknownModelClass",
    "cer", "metrics_table", "score", "wer",
    "MODEL_CLASSES", "default_base_model", "model_classes_table", "resolve_class", "validate",
    "ModelRegistry", "RunInfo", "normalize", "normalize_for_metrics",
    "Transcriber", "train", "run_training",
]
