"""A hand-crafted acoustic feature set: pitch, energy and log-mel statistics, duration, voicing.

Everything is numpy and vectorised: the frames of *all* clips of a batch are stacked into one
array, the per-frame work (FFTs, the YIN search, the mel filterbank) runs once over that array, and
the per-clip statistics are segment reductions (``np.add.reduceat``, a sort for percentiles).

Pitch is estimated with YIN (de Cheveigné & Kawahara 2002, JASA 111(4)): the difference function
d(τ) (their Eq. 6), its cumulative-mean normalisation d'(τ) (Eq. 8), the first local minimum of
d' below an absolute threshold (step 4, else the global minimum) and parabolic interpolation
(step 5). A frame is *voiced* when d' at the chosen lag is below ``voicing_threshold`` and the
frame's RMS is within ``silence_db`` of the clip's loudest frame.

Frames are centred: frame t is centred on sample t·hop (zero padding at both ends), so a clip of n
samples has 1 + n // hop frames for every frame length.

Feature order (:func:`feature_names`; 91 values with the default 40 mel bands):

==========================  ===================================================================
``f0_mean``, ``f0_std``      mean and standard deviation of F0 (Hz) over voiced frames
``f0_median``                median F0 (Hz) over voiced frames
``f0_p05``, ``f0_p95``       5th and 95th percentiles of F0 (Hz) over voiced frames
``rms_mean``, ``rms_std``    mean and standard deviation of the frame RMS (linear, full scale 1)
``rms_db_mean``, ...std      the same in dBFS (20·log10 RMS, floored at -100 dB)
``logmel_mean_00`` ...       per-band mean of the natural-log mel power (HTK mel, 0 Hz–sr/2)
``logmel_std_00`` ...        per-band standard deviation of the same
``duration_s``               clip length in seconds
``voiced_fraction``          voiced frames / frames
==========================  ===================================================================

A clip without a voiced frame gets 0 for the five F0 statistics (and ``voiced_fraction`` 0).
Standard deviations are population ones (ddof = 0).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from llmfair.errors import ConfigError
from llmfair.ssl.extractors import SAMPLE_RATE, ExtractorOptions, FeatureExtractor, check_clips, register_feature_extractor

_PITCH_STATS = ("f0_mean", "f0_std", "f0_median", "f0_p05", "f0_p95")
_ENERGY_STATS = ("rms_mean", "rms_std", "rms_db_mean", "rms_db_std")
_TAIL = ("duration_s", "voiced_fraction")
_DB_FLOOR = 1e-5  # -100 dBFS
_LOG_FLOOR = 1e-10
_FRAME_CHUNK = 8192  # frames per YIN chunk: bounds memory at ~100 MB for 1024-sample frames


@dataclass
class AcousticOptions(ExtractorOptions):
    """Options of the ``acoustic`` extractor."""

    hop_length: int = field(default=160, metadata={"help": "samples between frame centres (10 ms at 16 kHz)"})
    pitch_frame_length: int = field(
        default=1024, metadata={"help": "YIN frame in samples; half of it is the integration window"})
    fmin: float = field(default=60.0, metadata={"help": "lowest F0 searched (Hz)"})
    fmax: float = field(default=500.0, metadata={"help": "highest F0 searched (Hz)"})
    trough_threshold: float = field(
        default=0.1, metadata={"help": "YIN absolute threshold: the first d' trough below it gives the period"})
    voicing_threshold: float = field(
        default=0.4, metadata={"help": "a frame is voiced when d' at the chosen period is below this"})
    silence_db: float = field(
        default=30.0, metadata={"help": "frames quieter than the clip's loudest frame by more than this are unvoiced"})
    win_length: int = field(default=400, metadata={"help": "energy / mel frame in samples (25 ms at 16 kHz)"})
    n_fft: int = field(default=512, metadata={"help": "FFT size of the mel spectrogram"})
    n_mels: int = field(default=40, metadata={"help": "mel bands"})

    def __post_init__(self) -> None:
        if self.hop_length < 1 or self.win_length < 1 or self.n_mels < 1:
            raise ConfigError("acoustic extractor: hop_length, win_length and n_mels must be positive")
        if self.n_fft < self.win_length:
            raise ConfigError(f"acoustic extractor: n_fft ({self.n_fft}) must be >= win_length ({self.win_length})")
        if not 0 < self.fmin < self.fmax <= SAMPLE_RATE / 2:
            raise ConfigError(f"acoustic extractor: need 0 < fmin < fmax <= {SAMPLE_RATE // 2}, "
                              f"got fmin={self.fmin}, fmax={self.fmax}")
        if SAMPLE_RATE / self.fmin + 2 > self.pitch_frame_length // 2:
            raise ConfigError(f"acoustic extractor: pitch_frame_length {self.pitch_frame_length} is too short for "
                              f"fmin {self.fmin} Hz (needs > 2·({SAMPLE_RATE}/fmin + 2) samples)")


def feature_names(options: AcousticOptions | None = None) -> tuple[str, ...]:
    """The names of the acoustic features, in output order."""
    n_mels = (options or AcousticOptions()).n_mels
    mel = tuple(f"logmel_mean_{i:02d}" for i in range(n_mels)) + tuple(f"logmel_std_{i:02d}" for i in range(n_mels))
    return _PITCH_STATS + _ENERGY_STATS + mel + _TAIL


FEATURE_NAMES: tuple[str, ...] = feature_names()
"""Feature names for the default options."""


# ------------------------------------------------------------------------------------- framing
def frame_signal(audio: np.ndarray, frame_length: int, hop_length: int) -> np.ndarray:
    """Centred frames (1 + n // hop, frame_length); zero padding at both ends. A copy, not a view."""
    left = frame_length // 2
    padded = np.pad(audio, (left, frame_length - left))
    n_frames = 1 + audio.size // hop_length
    windows = np.lib.stride_tricks.sliding_window_view(padded, frame_length)
    return np.ascontiguousarray(windows[: (n_frames - 1) * hop_length + 1 : hop_length])


def _stack_frames(clips: Sequence[np.ndarray], frame_length: int, hop_length: int) -> np.ndarray:
    return np.concatenate([frame_signal(c, frame_length, hop_length) for c in clips])


# ------------------------------------------------------------------------------------- YIN
def yin_frames(frames: np.ndarray, sr: int, fmin: float, fmax: float,
               trough_threshold: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """YIN on each row of ``frames`` (F, W): (f0 in Hz, d' at the chosen lag), both (F,).

    The integration window is w = W // 2; lags run from floor(sr/fmax) to
    min(ceil(sr/fmin), W − w − 2) (de Cheveigné & Kawahara 2002, steps 2–5).
    """
    frames = np.asarray(frames, dtype=np.float64)
    n_frames, width = frames.shape
    w = width // 2
    tau_min = max(int(np.floor(sr / fmax)), 2)
    tau_max = min(int(np.ceil(sr / fmin)), width - w - 2)
    if tau_min >= tau_max:
        raise ConfigError(f"YIN: empty lag range [{tau_min}, {tau_max}] for fmin={fmin}, fmax={fmax}, W={width}")
    lags = tau_max + 2  # d' at 0 .. tau_max + 1 (one beyond the range for the local-minimum test)
    f0 = np.empty(n_frames)
    aperiodicity = np.empty(n_frames)
    for start in range(0, n_frames, _FRAME_CHUNK):
        x = frames[start:start + _FRAME_CHUNK]
        # r(τ) = Σ_{j<w} x_j x_{j+τ}: circular cross-correlation of length W has no wrap for τ ≤ W − w.
        spec = np.fft.rfft(x, n=width, axis=1)
        head = np.fft.rfft(x[:, :w], n=width, axis=1)
        r = np.fft.irfft(np.conj(head) * spec, n=width, axis=1)[:, :lags]
        # E(τ) = Σ_{τ ≤ j < τ+w} x_j²; d(τ) = E(0) + E(τ) − 2 r(τ)   (Eq. 7)
        csum = np.concatenate([np.zeros((x.shape[0], 1)), np.cumsum(x * x, axis=1)], axis=1)
        energy = csum[:, w:w + lags] - csum[:, :lags]
        d = np.maximum(energy[:, :1] + energy - 2.0 * r, 0.0)
        # d'(τ) = d(τ) τ / Σ_{k=1..τ} d(k), d'(0) = 1   (Eq. 8)
        running = np.cumsum(d[:, 1:], axis=1)
        taus = np.arange(1, lags, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            dn = np.where(running > 0, d[:, 1:] * taus / running, 1.0)
        dn = np.concatenate([np.ones((x.shape[0], 1)), dn], axis=1)
        # first local minimum below the threshold in [tau_min, tau_max], else the global minimum (step 4)
        mid = dn[:, tau_min:tau_max + 1]
        is_trough = (mid < dn[:, tau_min - 1:tau_max]) & (mid <= dn[:, tau_min + 1:tau_max + 2])
        below = is_trough & (mid < trough_threshold)
        idx = np.where(below.any(axis=1), below.argmax(axis=1), mid.argmin(axis=1)) + tau_min
        rows = np.arange(x.shape[0])
        a, b, c = dn[rows, idx - 1], dn[rows, idx], dn[rows, idx + 1]
        # parabolic interpolation of d' around the chosen lag (step 5)
        denom = a - 2.0 * b + c
        with np.errstate(divide="ignore", invalid="ignore"):
            shift = np.where(np.abs(denom) > 1e-12, 0.5 * (a - c) / denom, 0.0)
        shift = np.clip(shift, -1.0, 1.0)
        f0[start:start + x.shape[0]] = sr / (idx + shift)
        aperiodicity[start:start + x.shape[0]] = b
    return f0, aperiodicity


def pitch_track(audio: np.ndarray, options: AcousticOptions | None = None,
                sr: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """F0 (Hz) and a voiced flag per centred frame of one clip: two arrays of 1 + n // hop values."""
    opts = options or AcousticOptions()
    f0, voiced, _ = _pitch_all([np.asarray(audio, dtype=np.float32)], np.zeros(1, dtype=np.int64), opts, sr)
    return f0, voiced


def _pitch_all(clips: Sequence[np.ndarray], starts: np.ndarray, opts: AcousticOptions,
               sr: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(f0, voiced, frame RMS) over the stacked centred pitch frames of all clips."""
    frames = _stack_frames(clips, opts.pitch_frame_length, opts.hop_length)
    f0, aperiodicity = yin_frames(frames, sr, opts.fmin, opts.fmax, opts.trough_threshold)
    rms = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))
    loudest = np.maximum.reduceat(rms, starts)
    counts = np.diff(np.append(starts, rms.size))
    floor = np.repeat(loudest, counts) * 10.0 ** (-opts.silence_db / 20.0)
    voiced = (aperiodicity < opts.voicing_threshold) & (rms > floor) & (rms > 0)
    return f0, voiced, rms


# ------------------------------------------------------------------------------------- mel
def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: 2595 · log10(1 + f / 700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """Triangular HTK-mel filters (n_mels, n_fft // 2 + 1), peak 1, edges equally spaced in mel."""
    fmax = sr / 2.0 if fmax is None else fmax
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    bins = np.linspace(0.0, sr / 2.0, n_fft // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lower) / (centre - lower)
    falling = (upper - bins[None, :]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling))


def _hann(n: int) -> np.ndarray:
    """Periodic Hann window (the STFT convention)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


# ------------------------------------------------------------------------------------- statistics
def _segment_mean_std(values: np.ndarray, seg: np.ndarray, n_seg: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-segment count, mean and population std of 1-D ``values`` labelled by ``seg`` (two passes)."""
    counts = np.bincount(seg, minlength=n_seg).astype(np.float64)
    safe = np.maximum(counts, 1.0)
    mean = np.bincount(seg, weights=values, minlength=n_seg) / safe
    var = np.bincount(seg, weights=(values - mean[seg]) ** 2, minlength=n_seg) / safe
    return counts, mean, np.sqrt(var)


def _segment_percentiles(values: np.ndarray, seg: np.ndarray, n_seg: int, qs: Sequence[float]) -> np.ndarray:
    """Per-segment percentiles (linear interpolation, numpy's default) → (n_seg, len(qs)); 0 where empty."""
    order = np.lexsort((values, seg))
    v, s = values[order], seg[order]
    counts = np.bincount(s, minlength=n_seg)
    starts = np.cumsum(counts) - counts
    out = np.zeros((n_seg, len(qs)))
    has = counts > 0
    if not has.any():
        return out
    for j, q in enumerate(qs):
        pos = starts[has] + q * (counts[has] - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, starts[has] + counts[has] - 1)
        out[has, j] = v[lo] + (pos - lo) * (v[hi] - v[lo])
    return out


def acoustic_features(audios: Sequence[np.ndarray], options: AcousticOptions | None = None,
                      sr: int = SAMPLE_RATE) -> np.ndarray:
    """The acoustic feature set of each clip, float32 (len(audios), len(feature_names(options))).

    See the module docstring for the definitions and the order.
    """
    opts = options or AcousticOptions()
    clips = check_clips(audios, min_samples=1, who="acoustic extractor")
    n = len(clips)
    lengths = np.array([c.size for c in clips], dtype=np.int64)
    frames_per_clip = 1 + lengths // opts.hop_length
    starts = np.cumsum(frames_per_clip) - frames_per_clip
    seg = np.repeat(np.arange(n), frames_per_clip)

    # pitch
    f0, voiced, _ = _pitch_all(clips, starts, opts, sr)
    vseg = seg[voiced]
    _, f0_mean, f0_std = _segment_mean_std(f0[voiced], vseg, n)
    f0_pct = _segment_percentiles(f0[voiced], vseg, n, (0.5, 0.05, 0.95))
    n_voiced = np.bincount(vseg, minlength=n)

    # energy and log-mel on win_length frames
    frames = _stack_frames(clips, opts.win_length, opts.hop_length).astype(np.float64)
    rms = np.sqrt(np.mean(frames * frames, axis=1))
    rms_db = 20.0 * np.log10(np.maximum(rms, _DB_FLOOR))
    _, rms_mean, rms_std = _segment_mean_std(rms, seg, n)
    _, db_mean, db_std = _segment_mean_std(rms_db, seg, n)
    power = np.abs(np.fft.rfft(frames * _hann(opts.win_length), n=opts.n_fft, axis=1)) ** 2
    logmel = np.log(np.maximum(power @ mel_filterbank(sr, opts.n_fft, opts.n_mels).T, _LOG_FLOOR))
    sums = np.add.reduceat(logmel, starts, axis=0)
    mel_mean = sums / frames_per_clip[:, None]
    mel_var = np.add.reduceat((logmel - mel_mean[seg]) ** 2, starts, axis=0) / frames_per_clip[:, None]

    columns = [f0_mean, f0_std, f0_pct[:, 0], f0_pct[:, 1], f0_pct[:, 2],
               rms_mean, rms_std, db_mean, db_std]
    out = np.concatenate([
        np.stack(columns, axis=1), mel_mean, np.sqrt(mel_var),
        np.stack([lengths / sr, n_voiced / frames_per_clip], axis=1),
    ], axis=1)
    return out.astype(np.float32)


@register_feature_extractor("acoustic")
class AcousticExtractor(FeatureExtractor):
    """Pitch, energy, log-mel statistics, duration and voiced fraction (see the module docstring)."""

    options_class = AcousticOptions

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Names of the output columns, in order."""
        return feature_names(self.options)

    def extract(self, audios: Sequence[np.ndarray]) -> np.ndarray:
        """Acoustic features, float32 (B, len(feature_names))."""
        return acoustic_features(audios, self.options)
