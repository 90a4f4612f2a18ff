"""Named feature extractors: the frozen front ends whose outputs the head trains on.

An extractor maps a batch of 16 kHz mono clips to one fixed-shape array per clip. Each one is a
class registered by name (``@register_feature_extractor("wavlm")``); its options are a dataclass
whose fields feed YAML validation and ``--help``. The cache (:mod:`llmfair.ssl.cache`) keys every
stored feature by the extractor's name, a hash of its options (:meth:`FeatureExtractor.config_hash`)
and the audio's content, so changing any of them re-extracts.

Option fields that do not change the numbers (a device, a batch size) carry
``metadata={"hash": False}`` and stay out of the hash.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np

from llmfair._registry import Registry
from llmfair.errors import ConfigError

SAMPLE_RATE = 16_000


@dataclass
class ExtractorOptions:
    """Options shared by every extractor (subclasses add their own)."""


class FeatureExtractor:
    """Base class: turns clips into features of one fixed shape.

    Subclasses set ``options_class``, are registered with :func:`register_feature_extractor` and
    implement :meth:`extract`. Bump ``version`` when a change to the code changes the numbers, so
    that caches written by the old code are not reused.
    """

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    options_class: ClassVar[type] = ExtractorOptions

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.options_class()
        self._config_hash: str | None = None

    # ------------------------------------------------------------------ identity
    def hashed_config(self) -> dict[str, Any]:
        """Everything that determines the numbers: name, code version, the hashed options and the
        :meth:`fingerprint` of external weights. Serialised (sorted JSON) into the cache key."""
        fields = {f.name: getattr(self.options, f.name) for f in dataclasses.fields(self.options)
                  if f.metadata.get("hash", True)}
        return {"name": self.name, "class": type(self).__qualname__, "version": self.version,
                "options": fields, "fingerprint": self.fingerprint()}

    def fingerprint(self) -> str:
        """Identity of the weights the extractor loads (empty when it loads none)."""
        return ""

    def config_hash(self) -> str:
        """sha256 (hex) of :meth:`hashed_config`; computed once per instance."""
        if self._config_hash is None:
            text = json.dumps(self.hashed_config(), sort_keys=True, default=str)
            self._config_hash = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return self._config_hash

    # ------------------------------------------------------------------ work
    def extract(self, audios: Sequence[np.ndarray]) -> np.ndarray:  # pragma: no cover - abstract
        """Features of each 16 kHz mono float32 clip, stacked: shape (len(audios), ...)."""
        raise TypeError(f"{type(self).__name__} must implement extract")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options!r})"


FEATURE_EXTRACTORS: Registry[type[FeatureExtractor]] = Registry("feature extractor")
"""The registered extractors by name (a read-only mapping; :func:`register_feature_extractor` adds to it)."""


def _set_name(name: str, cls: type[FeatureExtractor]) -> None:
    cls.name = name


def register_feature_extractor(name: str) -> Callable[[type[FeatureExtractor]], type[FeatureExtractor]]:
    """Class decorator: register an extractor under ``name``; a name used twice raises ConfigError."""
    return FEATURE_EXTRACTORS.decorator(name, on_register=_set_name)


def build_feature_extractor(
    name: str,
    options: Mapping[str, Any] | Any | None = None,
    *,
    source: str = "feature extractor options",
) -> FeatureExtractor:
    """Instantiate a registered extractor; unknown names and unknown option keys raise ConfigError."""
    from llmfair.options import dataclass_from_mapping

    cls = FEATURE_EXTRACTORS.lookup(name)
    if options is None or isinstance(options, Mapping):
        options = dataclass_from_mapping(cls.options_class, dict(options or {}), source=source)
    elif not isinstance(options, cls.options_class):
        raise ConfigError(f"{source}: options for {name!r} must be a mapping or {cls.options_class.__name__}")
    return cls(options)


def check_clips(audios: Sequence[np.ndarray], *, min_samples: int = 1, who: str = "extractor") -> list[np.ndarray]:
    """The clips as contiguous 1-D float32 arrays; empty or multi-dimensional ones raise DataError."""
    from llmfair.errors import DataError

    out = []
    for i, audio in enumerate(audios):
        arr = np.ascontiguousarray(audio, dtype=np.float32)
        if arr.ndim != 1:
            raise DataError(f"{who}: clip {i} has shape {arr.shape}; expected mono 1-D samples at 16 kHz")
        if arr.size < min_samples:
            raise DataError(f"{who}: clip {i} has {arr.size} samples; at least {min_samples} are needed")
        if not np.isfinite(arr).all():
            raise DataError(f"{who}: clip {i} contains NaN or infinite samples")
        out.append(arr)
    return out
