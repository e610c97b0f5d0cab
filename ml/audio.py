"""Audio decoding: any file soundfile reads (wav, flac, ogg, mp3) -> float32, 16 kHz, mono.

MP3 comes from libsndfile itself (>= 1.1; soundfile >= 0.12 bundles 1.2), so every format
is read, streamed and checked by the same code; no second decoder.

wav2vec2 models only understand 16 kHz mono, so everything else is converted here, once,
with a proper resampler (soxr) rather than naive decimation.  Errors name the file (and the
row when the caller knows it) because a user with 10 000 rows needs to find the bad one.

Only regular files are ever opened: a FIFO would block the reading thread forever and a
device could be read without end.  The check is made on the descriptor that is then read
(opened non-blocking, ``fstat``-ed), so swapping the file for a FIFO between a check and
the read does not help.  ``stream_audio`` reads a file block by block and resamples as it
goes, so a long recording is transcribed in bounded memory.

soundfile and soxr are imported on first use: the server imports ``ml`` to list models
without loading native audio libraries.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from typing import Iterator

import numpy as np

SAMPLE_RATE = 16_000
#: Native-rate frames decoded per read when streaming (5 s at 16 kHz).
STREAM_BLOCK_FRAMES = 80_000


def _where(path, row: int | None) -> str:
    return f"audio file '{path}'" + (f" (row {row})" if row is not None else "")


def _fail(path, row, reason: str, cls=None):
    from .errors import AudioError

    return (cls or AudioError)(f"{_where(path, row)}: {reason}", path=None if path is None else str(path), row=row)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def _not_regular(mode: int) -> str:
    kind = _kind(mode)
    return ("is not a regular file" if kind == "not a regular file" else f"is {kind}, not an audio file") \
        + "; only regular files are read"


def _check_path(path, row):
    if path is None:
        raise _fail(path, row, "path is NULL")
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise _fail(path, row, "file not found") from None
    except OSError as exc:
        raise _fail(path, row, f"cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise _fail(path, row, _not_regular(st.st_mode))
    if st.st_size == 0:
        raise _fail(path, row, "file is empty (0 bytes)")
    return path


@contextlib.contextmanager
def _open(path, row):
    """A soundfile.SoundFile on a descriptor proven to be a non-empty regular file."""
    import soundfile as sf

    path = _check_path(path, row)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise _fail(path, row, f"cannot be opened ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _fail(path, row, _not_regular(st.st_mode))
        if st.st_size == 0:
            raise _fail(path, row, "file is empty (0 bytes)")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        try:
            handle = sf.SoundFile(fd, closefd=True)
        except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError / TypeError
            raise _fail(path, row, f"unreadable: {_reason(exc)}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise
    try:
        yield handle
    finally:
        handle.close()


def _reason(exc: Exception) -> str:
    """libsndfile's own words ("Format not recognised.") without soundfile's '<fd 7>' prefix."""
    text = getattr(exc, "error_string", None) or str(exc)
    return text.strip() or "not a supported audio format"


def _duration_text(frames: int, rate: int) -> str:
    seconds = frames / rate
    if seconds < 1:
        return f"{frames} sample{'s' if frames != 1 else ''} ({seconds * 1000:.2f} ms)"
    return f"{seconds:.1f} s"


def audio_info(path, row: int | None = None) -> tuple[int, int]:
    """(frames, sample rate) from the header only: cheap, used to plan length-sorted batches."""
    with _open(path, row) as f:
        frames, rate = int(f.frames), int(f.samplerate)
    if frames <= 0 or rate <= 0:
        raise _fail(path, row, "contains no audio samples")
    return frames, rate


def samples_16k(frames: int, rate: int) -> int:
    """How many 16 kHz samples ``frames`` at ``rate`` become."""
    return max(1, round(frames * SAMPLE_RATE / rate))


def audio_seconds(path, row: int | None = None) -> float:
    """Duration in seconds from the file header (no decoding)."""
    frames, rate = audio_info(path, row)
    return frames / rate


def check_duration(path, row: int | None, frames: int, rate: int, *, min_samples: int = 0,
                   max_seconds: float | None = None, what: str = "") -> None:
    """AudioError if the audio is shorter than ``min_samples`` at 16 kHz, AudioTooLong if it
    lasts more than ``max_seconds`` (None: no limit).  ``what`` ends the too-long message
    (which option raises the limit)."""
    from .errors import AudioTooLong

    if min_samples and samples_16k(frames, rate) < min_samples:
        raise _fail(path, row, f"too short: {_duration_text(frames, rate)}; the model needs at least "
                               f"{min_samples} samples ({min_samples * 1000 / SAMPLE_RATE:g} ms) at 16 kHz")
    if max_seconds is not None and frames / rate > max_seconds:
        raise _fail(path, row, f"too long: {_duration_text(frames, rate)}, over the limit of "
                               f"{max_seconds:g} s{what}", cls=AudioTooLong)


def _to_mono(data: np.ndarray) -> np.ndarray:
    return data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]


def load_audio(path, row: int | None = None) -> np.ndarray:
    """Decode ``path`` to a 1-D float32 array at 16 kHz (channels averaged to mono).

    Raises AudioError naming the path (and ``row`` if given) for a missing, unreadable,
    empty or non-regular file.  For long files use ``stream_audio``.
    """
    import soxr

    with _open(path, row) as f:
        rate = int(f.samplerate)
        try:
            data = f.read(dtype="float32", always_2d=True)
        except Exception as exc:
            raise _fail(path, row, f"unreadable: {_reason(exc)}") from None
    if data.shape[0] == 0:
        raise _fail(path, row, "contains no audio samples")
    mono = _to_mono(data)
    del data
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
    mono = np.ascontiguousarray(mono, dtype=np.float32)
    if mono.size == 0:
        raise _fail(path, row, "too short to resample to 16 kHz")
    if not np.isfinite(mono).all():
        raise _fail(path, row, "contains NaN or infinite samples")
    return mono


def stream_audio(path, row: int | None = None,
                 block_frames: int = STREAM_BLOCK_FRAMES) -> Iterator[np.ndarray]:
    """Yield ``path`` as consecutive 1-D float32 16 kHz mono blocks, decoding and resampling
    block by block (soxr's streaming resampler), so memory does not grow with the file.

    The concatenated blocks equal ``load_audio(path)`` up to the resampler's float noise.
    Errors (unreadable part, NaN samples) raise AudioError naming the file and row.
    """
    import soxr

    with _open(path, row) as f:
        rate = int(f.samplerate)
        resampler = None if rate == SAMPLE_RATE else soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32",
                                                                          quality="HQ")
        produced = 0
        while True:
            try:
                data = f.read(block_frames, dtype="float32", always_2d=True)
            except Exception as exc:
                raise _fail(path, row, f"unreadable: {_reason(exc)}") from None
            last = data.shape[0] < block_frames
            mono = np.ascontiguousarray(_to_mono(data), dtype=np.float32) if data.shape[0] else \
                np.zeros(0, np.float32)
            if resampler is not None:
                mono = resampler.resample_chunk(mono, last=last)
            if mono.size:
                if not np.isfinite(mono).all():
                    raise _fail(path, row, "contains NaN or infinite samples")
                produced += mono.size
                yield mono
            if last:
                break
    if produced == 0:
        raise _fail(path, row, "contains no audio samples")
