"""Machine learning over Arrow for the ThanoSQL-compatible server (no SQL, no gRPC here).

The planner uses: ``options.validate`` for OPTIONS, ``ModelRegistry`` for models and
versions, ``worker.run_training`` for BUILD/FIT, ``Transcriber`` for PREDICT/EVALUATE and
``metrics.score`` for EVALUATE.

Importing ``ml`` (or ``ml.registry`` for the ``thanosql.*`` tables) loads nothing heavy:
the names below resolve lazily (PEP 562), so soundfile, soxr, jiwer, torch and
transformers load only when audio is read, a metric computed or a model trained or loaded.
"""

from __future__ import annotations

import importlib
import os

# libgomp threads spin while they wait; set before torch can load (see ml/wav2vec2.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_EXPORTS = {
    "audio": ("SAMPLE_RATE", "audio_seconds", "load_audio", "stream_audio"),
    "errors": ("AudioError", "AudioTooLong", "BadOptions", "Cancelled", "CheckpointUnavailable", "MLError",
               "ModelBusy", "ModelExists", "ModelNotFound", "TrainingCancelled", "TrainingFailed",
               "UnknownModelClass"),
    "metrics": ("cer", "metrics_table", "score", "wer"),
    "options": ("MODEL_CLASSES", "default_base_model", "model_classes_table", "resolve_class", "validate"),
    "registry": ("ModelRegistry", "RunInfo"),
    "text": ("normalize", "normalize_for_metrics"),
    "wav2vec2": ("Transcriber", "train"),
    "worker": ("run_training",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'ml' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
