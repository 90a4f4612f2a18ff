"""Deterministic, thread-safe speech synthesis with eSpeak NG through ``ctypes``.

The library and its voice data come from the ``espeakng-loader`` wheel (``libespeak-ng.so`` 1.52
and ``espeak-ng-data``), so nothing is installed system-wide and nothing is downloaded.

Two properties of eSpeak NG shape this module (measured on this project's machine, see
``ENVIRONMENT.md``):

* **Determinism is not free.** The library seeds its internal random generator from the clock and
  keeps state between calls, so even identical calls in one process differ by a few samples. What
  gives byte-identical output across calls, call orders and processes is a fresh library per
  utterance: load it, ``espeak_Initialize``, ``espeak_ng_SetRandSeed(seed)``, set the voice and
  *all* prosody parameters (they persist across ``espeak_SetVoiceByName``), synthesise,
  ``espeak_Terminate`` and unload it with ``dlclose``. That costs about 5 ms per utterance instead
  of 2 ms and keeps memory flat.
* **It is not thread-safe** (four threads without a lock segfaulted) and it calls ``exit(1)`` —
  killing Python — when its data directory is missing. Every call therefore holds a module lock,
  the data directory is checked before initialising, and ``espeakINITIALIZE_DONT_EXIT`` is passed.
"""
from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmfair.errors import ConfigError, LlmfairError


ESPEAK_SAMPLE_RATE = 22_050
"""Sample rate of eSpeak NG's output (Hz)."""

# speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE, _PARAM_WORDGAP = 1, 2, 3, 4, 7
_EE_OK = 0

RATE_LIMITS = (80, 450)
"""Speaking rate in words per minute accepted by :func:`synthesize`."""
PITCH_LIMITS = (0, 99)
"""eSpeak base pitch (0–99; 50 is the voice's default; 0→99 moves F0 from about 129 to 323 Hz
for the default English voice)."""
RANGE_LIMITS = (0, 100)
"""Pitch range (0 = monotone, 50 = default, 100 = widest contour)."""
VOLUME_LIMITS = (0, 200)
"""Amplitude (100 = default)."""
WORD_GAP_LIMITS = (0, 100)
"""Extra pause between words, in units of 10 ms."""

_lock = threading.Lock()
_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class EspeakUnavailableError(LlmfairError, RuntimeError):
    """The eSpeak NG library or its voice data cannot be found or initialised."""


@dataclass(frozen=True)
class EspeakPaths:
    """Where the shared library and the voice data directory are."""

    library: Path
    data: Path


def espeak_paths() -> EspeakPaths:
    """Locate ``libespeak-ng`` and ``espeak-ng-data`` in the ``espeakng-loader`` package.

    The data directory is checked for ``phontab`` *before* the library ever sees it: with a missing
    data directory eSpeak NG calls ``exit(1)`` and takes the Python process with it.

    Raises:
        EspeakUnavailableError: the package is not installed, or its library or data is missing.
    """
    try:
        import espeakng_loader
    except ImportError:
        raise EspeakUnavailableError(
            "the built-in corpus needs eSpeak NG from the 'espeakng-loader' package; "
            "install it with: pip install espeakng-loader"
        ) from None
    library = Path(espeakng_loader.get_library_path())
    if not library.is_file():
        raise EspeakUnavailableError(f"eSpeak NG library not found at {library}; reinstall espeakng-loader")
    try:
        data = Path(espeakng_loader.get_data_path())
    except RuntimeError as exc:
        raise EspeakUnavailableError(f"eSpeak NG voice data missing ({exc}); reinstall espeakng-loader") from None
    if not (data / "phontab").is_file():
        raise EspeakUnavailableError(
            f"eSpeak NG voice data at {data} lacks 'phontab' (incomplete install); reinstall espeakng-loader"
        )
    return EspeakPaths(library=library, data=data)


def _check_range(name: str, value: int, limits: tuple[int, int]) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"eSpeak parameter {name} must be an integer, got {value!r}")
    if not limits[0] <= int(value) <= limits[1]:
        raise ConfigError(f"eSpeak parameter {name}={value} is outside [{limits[0]}, {limits[1]}]")
    return int(value)


def _dlclose(handle: int) -> None:
    import _ctypes

    _ctypes.dlclose(handle)


def _initialise(lib, paths, seed: int) -> int:
    """Initialise a fresh library instance for synchronous output; returns its sample rate."""
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, os.fsencode(paths.data), _INITIALIZE_DONT_EXIT)
    if sample_rate <= 0:
        raise EspeakUnavailableError(f"eSpeak NG failed to initialise with data at {paths.data}")
    if hasattr(lib, "espeak_ng_SetRandSeed"):
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed.restype = None
        lib.espeak_ng_SetRandSeed(int(seed) & 0x7FFF_FFFF)
    return int(sample_rate)


def _speak(lib, voice: str, params, encoded: bytes) -> None:
    """Select ``voice``, set ``params`` and synthesise ``encoded`` (samples go to the callback)."""
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    if lib.espeak_SetVoiceByName(voice.encode("utf-8")) != _EE_OK:
        raise ConfigError(f"unknown eSpeak NG voice {voice!r} (e.g. 'en', 'de+m2', 'ja+f1')")
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    for key, value in params:
        lib.espeak_SetParameter(key, value, 0)
    lib.espeak_Synth.argtypes = [
        ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
        ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
    ]
    status = lib.espeak_Synth(encoded, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
    if status != _EE_OK:
        raise EspeakUnavailableError(f"eSpeak NG synthesis failed (status {status}) for voice {voice!r}")
    lib.espeak_Synchronize()


def synthesize(
    text: str,
    voice: str,
    *,
    rate: int = 175,
    pitch: int = 50,
    range_: int = 50,
    volume: int = 100,
    word_gap: int = 0,
    seed: int = 0,
) -> tuple[np.ndarray, int]:
    """Speak ``text`` with eSpeak NG and return ``(samples, sample_rate)``.

    The same arguments give the same samples, bit for bit, in any process and in any call order
    (see the module docstring for why a fresh library instance is loaded per call).

    Args:
        text: UTF-8 text. Japanese must be kana: eSpeak NG reads kanji as "Chinese letter".
        voice: an eSpeak voice name with an optional variant, e.g. ``"en+f3"``, ``"de+m2"``,
            ``"ja+f1"``.
        rate: words per minute, 80–450.
        pitch: base pitch 0–99 (relative to the voice/variant's own pitch; 50 = unchanged).
        range_: pitch range 0–100 (0 = monotone).
        volume: amplitude 0–200 (100 = default).
        word_gap: extra pause between words in units of 10 ms, 0–100.
        seed: seeds eSpeak NG's internal random generator (used for its pitch/amplitude variation).

    Returns:
        A 1-D ``int16`` array (possibly empty for text with nothing to speak) and 22,050.

    Raises:
        ConfigError: an unknown voice or a parameter out of range.
        EspeakUnavailableError: the library or its data cannot be loaded or initialised.
    """
    params = (
        (_PARAM_RATE, _check_range("rate", rate, RATE_LIMITS)),
        (_PARAM_VOLUME, _check_range("volume", volume, VOLUME_LIMITS)),
        (_PARAM_PITCH, _check_range("pitch", pitch, PITCH_LIMITS)),
        (_PARAM_RANGE, _check_range("range", range_, RANGE_LIMITS)),
        (_PARAM_WORDGAP, _check_range("word_gap", word_gap, WORD_GAP_LIMITS)),
    )
    if not isinstance(text, str):
        raise ConfigError(f"text to synthesise must be a string, got {type(text).__name__}")
    if not voice or not isinstance(voice, str) or "\0" in voice:
        raise ConfigError(f"invalid eSpeak voice name {voice!r}")
    paths = espeak_paths()
    encoded = text.replace("\0", " ").encode("utf-8") + b"\0"
    chunks: list[np.ndarray] = []

    def collect(wav, numsamples, events):  # called by eSpeak NG for each block of samples
        if numsamples > 0 and wav:
            chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
        return 0

    callback = _SynthCallback(collect)
    with _lock:
        try:
            lib = ctypes.CDLL(str(paths.library), mode=ctypes.RTLD_LOCAL)
        except OSError as exc:
            raise EspeakUnavailableError(f"cannot load eSpeak NG from {paths.library}: {exc}") from None
        initialised = False
        try:
            sample_rate = _initialise(lib, paths, seed)
            initialised = True
            lib.espeak_SetSynthCallback(callback)
            _speak(lib, voice, params, encoded)
        finally:
            if initialised:
                lib.espeak_Terminate()
            _dlclose(lib._handle)
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    return samples.astype(np.int16, copy=False), int(sample_rate)


def espeak_available() -> bool:
    """True when :func:`synthesize` can run (library and voice data present)."""
    try:
        espeak_paths()
    except EspeakUnavailableError:
        return False
    return True
