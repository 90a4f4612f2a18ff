"""Tiny, randomly initialised speech LLMs built offline, one per backbone family, for tests and the
demo.

Each is a real transformers model of its family with a real processor (tokenizer + feature
extractor), so everything that runs on it runs unchanged on the released checkpoint. The default
family is Qwen2-Audio: a ``Qwen2AudioForConditionalGeneration`` (2-layer Whisper-style encoder
with d_model 64, 2-layer Qwen2 with hidden size 64, vocabulary 512) plus a ``Qwen2AudioProcessor``
(``WhisperFeatureExtractor`` with 128 mel bins and a ``Qwen2TokenizerFast``). Differences from the
released models:

* the encoder window is ``window_seconds`` (default 10 s) instead of 30 s: the same 25 audio tokens
  per second, a forward ~5x cheaper (ENVIRONMENT.md);
* the tokenizer is a byte-level BPE trained here on a built-in text that holds the prompt templates
  (in the family's chat format) in English, German and Japanese and every MELD and CREMA-D label
  word, so label words are short token sequences with distinct first tokens, as they are on the
  real tokenizers.

What each family builds is in its module under :mod:`llmfair.speechllm.backbones`
(``tiny_spec``, ``build_tiny``): the Qwen families train a Hugging Face BPE tokenizer, Voxtral a
Tekken ``tekken.json`` for mistral-common (``pip install 'llmfair[voxtral]'``). Building takes about a second; ``tiny_model_path`` builds once
per specification into a cache directory (``$LLMFAIR_CACHE`` or ``~/.cache/llmfair``) and reuses it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from llmfair._atomic import atomic_directory, files_under, write_json
from llmfair.errors import ConfigError
from llmfair.speechllm.backbones._tiny import VOCAB_SIZE, tokenizer_training_text  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)

DEFAULT_FAMILY = "qwen2_audio"
MARKER_FILE = "llmfair_tiny.json"
"""Written last into a built model directory; its presence marks the build as complete."""


def _backbone(family: str):
    from llmfair.speechllm.backbones import get_backbone

    return get_backbone(family)


def tiny_spec(*, seed: int = 0, window_seconds: int = 10, family: str = DEFAULT_FAMILY) -> dict:
    """Everything that determines the tiny model's files (its hash names the cache directory).

    Raises:
        ConfigError: a window that is not a whole number of seconds in 1..30, or an unknown family.
    """
    if int(window_seconds) != window_seconds or not 1 <= window_seconds <= 30:
        raise ConfigError(f"tiny model window_seconds must be a whole number of seconds in 1..30, got {window_seconds}")
    return _backbone(family).tiny_spec(seed=int(seed), window_seconds=int(window_seconds))


def build_tiny_model(out_dir: str | os.PathLike, *, seed: int = 0, window_seconds: int = 10,
                     family: str = DEFAULT_FAMILY) -> Path:
    """Write a tiny random model of ``family`` and its processor into ``out_dir``.

    Deterministic: the same family, seed and window give the same weights and tokenizer. ``out_dir``
    is created (parents included); files in it are overwritten. Returns ``out_dir`` as a Path.
    """
    spec = tiny_spec(seed=seed, window_seconds=window_seconds, family=family)
    backbone = _backbone(family)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    backbone.build_tiny(out, spec)
    missing = [name for name in ("config.json", "model.safetensors") if not (out / name).is_file()]
    if missing:  # never mark a build complete that a later load would fail on
        raise RuntimeError(f"the tiny {backbone.title} build in {out} wrote no {', '.join(missing)}")
    write_json(out / MARKER_FILE, spec)
    logger.info("built tiny %s in %s", backbone.title, out)
    return out


def default_cache_dir() -> Path:
    """``$LLMFAIR_CACHE`` or ``~/.cache/llmfair``."""
    env = os.environ.get("LLMFAIR_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "llmfair"


def is_complete(path: str | os.PathLike) -> bool:
    """True when ``path`` holds a finished tiny-model build (its marker file was written last)."""
    return (Path(path) / MARKER_FILE).is_file()


def tiny_model_path(cache_dir: str | os.PathLike | None = None, *, seed: int = 0, window_seconds: int = 10,
                    family: str = DEFAULT_FAMILY) -> Path:
    """The directory of the tiny model for this family and specification, built on first use.

    The directory is ``<cache_dir>/tiny-<family, dashed>-<spec hash>`` (``tiny-qwen2-audio-...``);
    it is built under a temporary name and renamed into place, so a concurrent or interrupted build
    never leaves a half-written model that a later call would trust.
    """
    spec = tiny_spec(seed=seed, window_seconds=window_seconds, family=family)
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = root / f"tiny-{family.replace('_', '-')}-{digest}"
    if is_complete(path):
        return path
    try:
        # everything under llmfair's own cache folder is llmfair's
        with atomic_directory(path, overwrite=path.exists(), command="tiny model",
                              owned=files_under(path) if path.is_dir() else ()) as tmp:
            build_tiny_model(tmp, seed=seed, window_seconds=window_seconds, family=family)
    except FileExistsError:
        # Another process finished the same build first; its result is identical.
        if not is_complete(path):
            raise
    return path
