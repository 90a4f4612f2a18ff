"""Extract features once and cache them: one safetensors file per (extractor config, audio content).

Layout under ``cache_dir``::

    <extractor name>-<config hash[:16]>/extractor.json           what the hash covers (for people)
    <extractor name>-<config hash[:16]>/<sha[:2]>/<sha>.safetensors   tensor "features" + metadata

The key of a clip is the sha256 of its bytes: a file's raw bytes (no decoding needed to look it
up), or for an in-memory clip its float32 samples. The config hash
(:meth:`FeatureExtractor.config_hash`) covers the extractor's name, code version, options and
weights. Changing any of them, or a clip's bytes, misses the cache; renaming or moving a file
does not. Files are written atomically; a file that safetensors cannot read, or whose metadata
names another key, is reported with a warning and recomputed.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from llmfair._atomic import atomic_path, write_json
from llmfair.data.audio import load_audio
from llmfair.data.example import Example
from llmfair.errors import ConfigError, DataError
from llmfair.ssl.extractors import FeatureExtractor

logger = logging.getLogger(__name__)

CACHE_FORMAT = "1"
_TENSOR = "features"
AudioItem = Example | str | os.PathLike | np.ndarray


def _audio_source(item: AudioItem) -> tuple[Any, str]:
    """(path or array, a short description for messages)."""
    if isinstance(item, Example):
        return item.audio, f"example {item.id!r}"
    if isinstance(item, np.ndarray):
        return item, f"array of {item.size} samples"
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item), os.fspath(item)
    raise DataError(f"cannot extract features from a {type(item).__name__}; expected an Example, a path or an array")


def audio_sha256(item: AudioItem) -> str:
    """sha256 (hex) of a clip's content: a file's raw bytes, or an array's float32 samples."""
    source, what = _audio_source(item)
    digest = hashlib.sha256()
    if isinstance(source, np.ndarray):
        samples = np.ascontiguousarray(source, dtype="<f4")
        digest.update(b"float32-array:" + str(samples.shape).encode("ascii") + b"\0")
        digest.update(samples.tobytes())
        return digest.hexdigest()
    path = Path(source)
    if not path.is_file():
        raise DataError(f"audio file not found: {path} ({what})")
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def extractor_dir(extractor: FeatureExtractor, cache_dir: str | os.PathLike) -> Path:
    """The folder holding one extractor configuration's cached features."""
    return Path(cache_dir) / f"{extractor.name}-{extractor.config_hash()[:16]}"


def cache_path(extractor: FeatureExtractor, audio_sha: str, cache_dir: str | os.PathLike) -> Path:
    """Where the features of the clip with content hash ``audio_sha`` are stored."""
    return extractor_dir(extractor, cache_dir) / audio_sha[:2] / f"{audio_sha}.safetensors"


def _metadata(extractor: FeatureExtractor, audio_sha: str) -> dict[str, str]:
    return {"format": CACHE_FORMAT, "extractor": extractor.name, "config_hash": extractor.config_hash(),
            "audio_sha256": audio_sha}


def _read(path: Path, expected: dict[str, str]) -> np.ndarray | None:
    """The cached features, or None when absent; unreadable or mismatched files warn and return None."""
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as fh:
            meta = fh.metadata() or {}
            features = fh.get_tensor(_TENSOR)
    except Exception as exc:  # safetensors raises SafetensorError, OSError, KeyError ... for damaged files
        logger.warning("feature cache file %s is unreadable (%s: %s); recomputing it", path, type(exc).__name__, exc)
        return None
    wrong = {k: meta.get(k) for k, v in expected.items() if meta.get(k) != v}
    if wrong:
        logger.warning("feature cache file %s has mismatched metadata %s; recomputing it", path, wrong)
        return None
    return features


def _write(path: Path, features: np.ndarray, metadata: dict[str, str]) -> None:
    from safetensors.numpy import save_file

    with atomic_path(path) as tmp:
        save_file({_TENSOR: np.ascontiguousarray(features)}, str(tmp), metadata=metadata)


def _load_clip(source: Any) -> np.ndarray:
    if isinstance(source, np.ndarray):
        return np.ascontiguousarray(source, dtype=np.float32)
    return load_audio(source)


def _extract_batch(extractor: FeatureExtractor, batch_sources: Sequence[tuple[Any, str]]) -> np.ndarray:
    """One ``extractor.extract`` call on loaded clips; errors name the batch's clips."""
    clips = [_load_clip(source) for source, _ in batch_sources]
    try:
        features = np.asarray(extractor.extract(clips), dtype=np.float32)
    except DataError as exc:
        names = ", ".join(what for _, what in batch_sources[:5])
        raise DataError(f"{exc} (batch: {names}{' ...' if len(batch_sources) > 5 else ''})") from None
    if features.shape[0] != len(batch_sources):
        raise DataError(f"extractor {extractor.name!r} returned {features.shape[0]} rows for "
                        f"{len(batch_sources)} clips")
    return features


def extract_clips(extractor: FeatureExtractor, examples_or_paths: Iterable[AudioItem], batch_size: int = 16) -> np.ndarray:
    """Features of every clip, (N, ...) float32 in input order, computed without the cache.

    The same batches and checks as :func:`extract_features` (which adds the per-clip cache); the
    resumable corpus job (:mod:`llmfair.ssl.extract`) calls this per chunk when it has no cache.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    sources = [_audio_source(item) for item in examples_or_paths]
    if not sources:
        raise DataError("no audio to extract features from")
    parts = [_extract_batch(extractor, sources[i:i + batch_size]) for i in range(0, len(sources), batch_size)]
    shapes = {p.shape[1:] for p in parts}
    if len(shapes) > 1:
        raise DataError(f"extractor {extractor.name!r} produced features of several shapes {sorted(shapes)}")
    return np.concatenate(parts).astype(np.float32, copy=False)


def extract_features(
    extractor: FeatureExtractor,
    examples_or_paths: Iterable[AudioItem],
    cache_dir: str | os.PathLike,
    batch_size: int = 16,
    *,
    progress: bool = True,
) -> np.ndarray:
    """Features of every clip, (N, ...) float32 in input order, extracting only what the cache lacks.

    Args:
        extractor: a built extractor (:func:`llmfair.ssl.build_feature_extractor`).
        examples_or_paths: Examples, audio paths (16 kHz mono WAV, others resampled by
            :func:`llmfair.data.audio.load_audio`) or float32 arrays at 16 kHz.
        cache_dir: root of the cache (created when missing).
        batch_size: clips per ``extractor.extract`` call.
        progress: show a tqdm bar over the distinct clips.

    Clips with identical content are extracted once. See the module docstring for the keys.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    items: Sequence[AudioItem] = list(examples_or_paths)
    if not items:
        raise DataError("no audio to extract features from")
    sources = [_audio_source(item) for item in items]
    keys = [audio_sha256(item) for item in items]
    unique = list(dict.fromkeys(keys))
    first = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    folder = extractor_dir(extractor, cache_dir)
    if not (folder / "extractor.json").is_file():
        write_json(folder / "extractor.json", extractor.hashed_config())

    found: dict[str, np.ndarray] = {}
    missing: list[str] = []
    for key in unique:
        features = _read(cache_path(extractor, key, cache_dir), _metadata(extractor, key))
        if features is None:
            missing.append(key)
        else:
            found[key] = features
    logger.info("features %s: %d of %d distinct clips cached, %d to extract (cache %s)",
                extractor.name, len(found), len(unique), len(missing), folder)

    with tqdm(total=len(unique), initial=len(found), desc=f"features {extractor.name}", unit="clip",
              disable=not progress) as bar:
        for start in range(0, len(missing), batch_size):
            batch_keys = missing[start:start + batch_size]
            features = _extract_batch(extractor, [sources[first[k]] for k in batch_keys])
            for key, row in zip(batch_keys, features):
                _write(cache_path(extractor, key, cache_dir), row, _metadata(extractor, key))
                found[key] = row
            bar.update(len(batch_keys))

    shapes = {found[k].shape for k in unique}
    if len(shapes) > 1:
        raise DataError(f"extractor {extractor.name!r} produced features of several shapes {sorted(shapes)}; "
                        f"clear {folder}")
    return np.stack([found[k] for k in keys]).astype(np.float32, copy=False)
