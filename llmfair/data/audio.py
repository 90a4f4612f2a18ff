"""Audio loading and validation: 16 kHz mono float32, with clear errors for bad files.

Stereo is downmixed; other sample rates are resampled (polyphase, exact rational ratio) and a
warning is logged once per rate, not once per file.
"""
from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from llmfair.errors import DataError

logger = logging.getLogger(__name__)

TARGET_SAMPLE_RATE = 16_000
_warned_rates: set[int] = set()


def resample(audio: np.ndarray, orig_sr: int, target_sr: int = TARGET_SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling by the exact rational ratio target_sr/orig_sr (deterministic)."""
    if orig_sr == target_sr:
        return audio
    from scipy.signal import resample_poly

    ratio = Fraction(target_sr, orig_sr)
    return resample_poly(audio, ratio.numerator, ratio.denominator, axis=0).astype(np.float32)


def load_audio(path: str | os.PathLike, target_sr: int = TARGET_SAMPLE_RATE) -> np.ndarray:
    """Read ``path`` as mono float32 at ``target_sr``.

    Raises:
        DataError: the file is missing, unreadable or empty.
    """
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise DataError(f"audio file not found: {path}")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types for corrupt files
        raise DataError(f"audio file unreadable: {path} ({exc})") from None
    if data.shape[0] == 0:
        raise DataError(f"audio file is empty (0 samples): {path}")
    audio = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if sr != target_sr:
        if sr not in _warned_rates:
            _warned_rates.add(sr)
            logger.warning("audio at %d Hz (first seen: %s) is resampled to %d Hz", sr, path, target_sr)
        audio = resample(audio, sr, target_sr)
    return np.ascontiguousarray(audio, dtype=np.float32)


def write_wav(path: str | os.PathLike, audio: np.ndarray, sample_rate: int = TARGET_SAMPLE_RATE) -> None:
    """Write 16-bit PCM WAV atomically (deterministic bytes for identical input)."""
    import soundfile as sf

    from llmfair._atomic import atomic_path

    with atomic_path(path) as tmp:
        sf.write(str(tmp), audio, sample_rate, subtype="PCM_16", format="WAV")


def _describe(paths: Sequence[str], limit: int = 5) -> str:
    head = ", ".join(paths[:limit])
    more = f" (and {len(paths) - limit} more)" if len(paths) > limit else ""
    return f"{head}{more}"


def check_audio_files(paths: Iterable[str | os.PathLike], *, what: str = "audio", read: bool = False) -> None:
    """Fail with one message listing the first few missing (or, with ``read``, unreadable or
    empty) files and their count. Cheap existence check by default; ``read`` opens headers."""
    paths = [str(p) for p in paths]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(f"{len(missing)} of {len(paths)} {what} files are missing: {_describe(missing)}")
    if not read:
        return
    import soundfile as sf

    bad: list[str] = []
    for p in paths:
        try:
            info = sf.info(p)
            if info.frames == 0:
                bad.append(f"{p} (empty)")
        except Exception:
            bad.append(f"{p} (unreadable)")
    if bad:
        raise DataError(f"{len(bad)} of {len(paths)} {what} files are unreadable or empty: {_describe(bad)}")
