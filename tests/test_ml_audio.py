"""ml.audio: wav / flac / ogg, stereo and 44.1 kHz converted, bad files named with their row."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import soxr

from ml.audio import SAMPLE_RATE, audio_seconds, load_audio
from ml.errors import AudioError
from ml_fixtures import test_rows, train_rows  # noqa: F401  (fixtures)


def test_wav_and_flac_load_as_16k_mono_float32(train_rows, test_rows):
    for path, _ in (train_rows[0], test_rows[0]):  # flac, wav
        audio = load_audio(path)
        info = sf.info(path)
        assert audio.dtype == np.float32 and audio.ndim == 1
        assert len(audio) == info.frames  # already 16 kHz: untouched length
        assert audio_seconds(path) == pytest.approx(len(audio) / SAMPLE_RATE)
        assert 0.001 < float(np.abs(audio).mean()) < 1.0


def test_stereo_44k_is_resampled_to_16k_mono(tmp_path, test_rows):
    reference = load_audio(test_rows[0][0])
    at_44k = soxr.resample(reference, SAMPLE_RATE, 44_100)
    stereo = np.stack([at_44k, 0.5 * at_44k], axis=1)  # channels differ: mono is their mean
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, 44_100, subtype="FLOAT")
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - len(reference)) <= 2
    n = min(len(audio), len(reference))
    corr = np.corrcoef(audio[:n], 0.75 * reference[:n])[0, 1]
    assert corr > 0.99
    assert np.abs(audio[:n] - 0.75 * reference[:n]).max() < 0.05
    assert audio_seconds(path) == pytest.approx(len(reference) / SAMPLE_RATE, abs=1e-3)


def test_ogg_vorbis(tmp_path, test_rows):
    reference = load_audio(test_rows[0][0])[: 2 * SAMPLE_RATE]
    path = tmp_path / "clip.ogg"
    sf.write(path, reference, SAMPLE_RATE, format="OGG", subtype="VORBIS")
    audio = load_audio(path)
    assert abs(len(audio) - len(reference)) < 100
    n = min(len(audio), len(reference))
    assert np.corrcoef(audio[:n], reference[:n])[0, 1] > 0.95


@pytest.mark.parametrize("make, reason", [
    (lambda p: None, "not found"),
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: p.write_bytes(b"this is not audio at all" * 10), "unreadable"),
    (lambda p: sf.write(p, np.zeros(0, np.float32), SAMPLE_RATE), "no audio samples"),
])
def test_bad_files_name_path_and_row(tmp_path, make, reason):
    path = tmp_path / "bad.wav"
    make(path)
    for call in (load_audio, audio_seconds):
        with pytest.raises(AudioError) as err:
            call(path, row=7)
        assert str(path) in str(err.value) and "row 7" in str(err.value) and reason in str(err.value)
        assert err.value.path == str(path) and err.value.row == 7
    with pytest.raises(AudioError, match="bad.wav"):
        load_audio(str(path))
