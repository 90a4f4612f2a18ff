"""Audio loading: the real clip, downmixing, resampling (warned once), and bad files."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from llmfair.data import audio as audio_mod
from llmfair.data.audio import check_audio_files, load_audio, resample
from llmfair.errors import DataError


def test_real_clip(real_clip: Path) -> None:
    x = load_audio(real_clip)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) / 16000 - 2.28) < 0.02
    assert 0.01 < np.sqrt(np.mean(x**2)) < 0.5


def test_stereo_is_downmixed(tmp_path: Path) -> None:
    left = np.full(1600, 0.5, dtype=np.float32)
    right = np.full(1600, -0.1, dtype=np.float32)
    sf.write(str(tmp_path / "s.wav"), np.stack([left, right], 1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(tmp_path / "s.wav"), 0.2, atol=1e-6)


def test_resampled_with_one_warning(tmp_path: Path, caplog, monkeypatch) -> None:
    monkeypatch.setattr(audio_mod, "_warned_rates", set())
    sr = 44100
    t = np.arange(sr) / sr
    for i in range(3):
        sf.write(str(tmp_path / f"{i}.wav"), 0.3 * np.sin(2 * np.pi * 440 * t), sr, subtype="FLOAT")
    with caplog.at_level(logging.WARNING):
        clips = [load_audio(tmp_path / f"{i}.wav") for i in range(3)]
    assert caplog.text.count("44100 Hz") == 1
    x = clips[0]
    assert len(x) == 16000
    # the tone survives: its spectral peak stays at 440 Hz
    spectrum = np.abs(np.fft.rfft(x))
    assert abs(np.argmax(spectrum) * 16000 / len(x) - 440) <= 1


def test_resample_matches_exact_ratio() -> None:
    x = np.random.default_rng(0).standard_normal(22050).astype(np.float32)
    assert len(resample(x, 22050, 16000)) == 16000
    assert resample(x, 16000, 16000) is x


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="audio file not found"):
        load_audio(tmp_path / "nope.wav")
    (tmp_path / "junk.wav").write_bytes(b"not a wav at all")
    with pytest.raises(DataError, match="unreadable"):
        load_audio(tmp_path / "junk.wav")
    sf.write(str(tmp_path / "empty.wav"), np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(DataError, match="empty"):
        load_audio(tmp_path / "empty.wav")
    sf.write(str(tmp_path / "ok.wav"), np.zeros(10, dtype=np.float32), 16000)
    with pytest.raises(DataError, match=r"2 of 3 audio files are unreadable or empty: .*junk\.wav \(unreadable\)"):
        check_audio_files([tmp_path / "junk.wav", tmp_path / "empty.wav", tmp_path / "ok.wav"], read=True)
    paths = [tmp_path / f"missing{i}.wav" for i in range(7)]
    with pytest.raises(DataError, match=r"7 of 7 audio files are missing: .*\(and 2 more\)"):
        check_audio_files(paths)
