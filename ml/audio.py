"""Audio decoding: any file soundfile reads (wav, flac, ogg) -> float32, 16 kHz, mono.

wav2vec2 models only understand 16 kHz mono, so everything else is converted here, once,
with a proper resampler (soxr) rather than naive decimation.  Errors name the file (and the
row when the caller knows it) because a user with 10 000 rows needs to find the bad one.
"""

from __future__ import annotations

import os

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16_000


def _where(path, row: int | None) -> str:
    return f"audio file '{path}'" + (f" (row {row})" if row is not None else "")


def _fail(path, row, reason: str):
    from .errors import AudioError

    return AudioError(f"{_where(path, row)}: {reason}", path=str(path), row=row)


def _check_path(path, row):
    if path is None:
        raise _fail(path, row, "path is NULL")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise _fail(path, row, "file not found")
    if os.path.isdir(path):
        raise _fail(path, row, "is a directory, not an audio file")
    if os.path.getsize(path) == 0:
        raise _fail(path, row, "file is empty (0 bytes)")
    return path


def audio_info(path, row: int | None = None) -> tuple[int, int]:
    """(frames, sample rate) from the header only: cheap, used to plan length-sorted batches."""
    path = _check_path(path, row)
    try:
        info = sf.info(path)
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        raise _fail(path, row, f"unreadable ({exc})") from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise _fail(path, row, "contains no audio samples")
    return int(info.frames), int(info.samplerate)


def audio_seconds(path, row: int | None = None) -> float:
    """Duration in seconds from the file header (no decoding)."""
    frames, rate = audio_info(path, row)
    return frames / rate


def load_audio(path, row: int | None = None) -> np.ndarray:
    """Decode ``path`` to a 1-D float32 array at 16 kHz (channels averaged to mono).

    Raises AudioError naming the path (and ``row`` if given) for a missing, unreadable or
    empty file.
    """
    path = _check_path(path, row)
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except Exception as exc:
        raise _fail(path, row, f"unreadable ({exc})") from None
    if data.shape[0] == 0:
        raise _fail(path, row, "contains no audio samples")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
    mono = np.ascontiguousarray(mono, dtype=np.float32)
    if mono.size == 0:
        raise _fail(path, row, "too short to resample to 16 kHz")
    if not np.isfinite(mono).all():
        raise _fail(path, row, "contains NaN or infinite samples")
    return mono
