"""A tiny, randomly initialised Qwen2-Audio built offline, for tests and the demo.

It is a real ``Qwen2AudioForConditionalGeneration`` (2-layer Whisper-style encoder with d_model 64,
2-layer Qwen2 with hidden size 64, vocabulary 512) plus a real ``Qwen2AudioProcessor``
(``WhisperFeatureExtractor`` with 128 mel bins and a ``Qwen2TokenizerFast``), so everything that
runs on it runs unchanged on ``Qwen/Qwen2-Audio-7B-Instruct``. Differences from the real model:

* the encoder window is ``window_seconds`` (default 10 s, ``max_source_positions = 50 * window``)
  instead of 30 s: the same 25 audio tokens per second, a forward ~5x cheaper (ENVIRONMENT.md);
* the tokenizer is a byte-level BPE trained here on a built-in text that holds the prompt templates
  in English, German and Japanese and every MELD and CREMA-D label word, so label words are short
  token sequences with distinct first tokens, as they are on the real tokenizer.

Building takes about a second; ``tiny_model_path`` builds once per specification into a cache
directory (``$LLMFAIR_CACHE`` or ``~/.cache/llmfair``) and reuses it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from llmfair._atomic import atomic_directory, files_under, write_json
from llmfair.data.labels import CREMA_D, LANGUAGES, MELD, MODALITIES
from llmfair.errors import ConfigError

logger = logging.getLogger(__name__)

SPEC_VERSION = 1
MARKER_FILE = "llmfair_tiny.json"
"""Written last into a built model directory; its presence marks the build as complete."""

SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>",
)
VOCAB_SIZE = 512

_EXTRA_SENTENCES = (
    "I can't believe you did that!", "Oh my God, that is wonderful news.", "Please leave me alone.",
    "We were on a break.", "What are you talking about?", "That is the worst thing I have ever heard.",
    "Ich kann nicht glauben, dass du das getan hast!", "Das ist eine wunderbare Nachricht.",
    "Lass mich bitte in Ruhe.", "Wovon redest du?", "Das ist das Schlimmste, was ich je gehört habe.",
    "しんじられない！", "それはすばらしいニュースです。", "ひとりにしてください。", "なにをいっているの？",
    "The weather is nice today.", "Das Wetter ist heute schön.", "きょうはいいてんきです。",
)


def tokenizer_training_text() -> list[str]:
    """The built-in text the tiny tokenizer is trained on.

    It holds every default prompt rendered for both label spaces in every language and modality,
    a few dialogue sentences in each language, and the label words, repeated so that each becomes
    a short token sequence (what the verbalizer needs: distinct first tokens).
    """
    from llmfair.speechllm.prompts import PromptTemplate

    template = PromptTemplate()
    lines: list[str] = []
    for space in (MELD, CREMA_D):
        for language in LANGUAGES:
            for modality in MODALITIES:
                lines.append(template.render(language, modality, text=_EXTRA_SENTENCES[0], labels=space.classes))
    lines.extend(template.words())
    lines.extend(_EXTRA_SENTENCES)
    words = sorted(set(MELD.classes) | set(CREMA_D.classes))
    # The answer follows "assistant\n" with no leading space; words also occur after spaces.
    lines.extend(["assistant\n" + w + "<|im_end|>" for w in words] * 40)
    lines.extend([" ".join(words)] * 40)
    return lines


def _train_tokenizer():
    """A Qwen2TokenizerFast from a byte-level BPE trained on ``tokenizer_training_text``."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers import Qwen2TokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=list(SPECIAL_TOKENS), min_frequency=1, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(tokenizer_training_text(), trainer)
    state = json.loads(bpe.to_str())
    vocab = state["model"]["vocab"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["model"]["merges"]]
    tokenizer = Qwen2TokenizerFast(vocab=vocab, merges=merges, errors="replace", padding_side="left")
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    # Qwen2-Audio-Instruct ends an assistant turn with <|im_end|> and pads with <|endoftext|>.
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.padding_side = "left"
    if len(tokenizer) > VOCAB_SIZE:
        raise RuntimeError(f"tiny tokenizer has {len(tokenizer)} tokens, more than the model's {VOCAB_SIZE}")
    return tokenizer


def tiny_spec(*, seed: int = 0, window_seconds: int = 10) -> dict:
    """Everything that determines the tiny model's files (its hash names the cache directory)."""
    import transformers

    if int(window_seconds) != window_seconds or not 1 <= window_seconds <= 30:
        raise ConfigError(f"tiny model window_seconds must be a whole number of seconds in 1..30, got {window_seconds}")
    text_hash = hashlib.sha256("\x00".join(tokenizer_training_text()).encode("utf-8")).hexdigest()
    return {
        "spec_version": SPEC_VERSION, "seed": int(seed), "window_seconds": int(window_seconds),
        "encoder": {"d_model": 64, "layers": 2, "heads": 2, "ffn": 128, "num_mel_bins": 128},
        "llm": {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "ffn": 128, "vocab": VOCAB_SIZE},
        "tokenizer_text_sha256": text_hash, "transformers": transformers.__version__,
    }


def build_tiny_model(out_dir: str | os.PathLike, *, seed: int = 0, window_seconds: int = 10) -> Path:
    """Write a tiny random Qwen2-Audio model and its processor into ``out_dir``.

    Deterministic: the same seed and window give the same weights and tokenizer. ``out_dir`` is
    created (parents included); files in it are overwritten. Returns ``out_dir`` as a Path.
    """
    import torch
    from transformers import (
        Qwen2AudioConfig, Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor, WhisperFeatureExtractor,
    )

    spec = tiny_spec(seed=seed, window_seconds=window_seconds)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer()
    audio_token_id = tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    enc, llm = spec["encoder"], spec["llm"]
    config = Qwen2AudioConfig(
        audio_config={
            "model_type": "qwen2_audio_encoder", "d_model": enc["d_model"], "encoder_layers": enc["layers"],
            "encoder_attention_heads": enc["heads"], "encoder_ffn_dim": enc["ffn"],
            "num_mel_bins": enc["num_mel_bins"], "max_source_positions": 50 * int(window_seconds),
        },
        text_config={
            "model_type": "qwen2", "vocab_size": llm["vocab"], "hidden_size": llm["hidden"],
            "intermediate_size": llm["ffn"], "num_hidden_layers": llm["layers"],
            "num_attention_heads": llm["heads"], "num_key_value_heads": llm["kv_heads"],
            "max_position_embeddings": 4096, "tie_word_embeddings": False, "use_sliding_window": False,
            "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id, "bos_token_id": None,
        },
        audio_token_index=audio_token_id,
    )
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = Qwen2AudioForConditionalGeneration(config).to(torch.float32).eval()
    finally:
        torch.random.set_rng_state(generator_state)
    feature_extractor = WhisperFeatureExtractor(
        feature_size=enc["num_mel_bins"], sampling_rate=16_000, hop_length=160, chunk_length=int(window_seconds),
        n_fft=400, padding_value=0.0, return_attention_mask=True,
    )
    processor = Qwen2AudioProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    write_json(out / MARKER_FILE, spec)
    logger.info("built tiny Qwen2-Audio (%d parameters) in %s", sum(p.numel() for p in model.parameters()), out)
    return out


def default_cache_dir() -> Path:
    """``$LLMFAIR_CACHE`` or ``~/.cache/llmfair``."""
    env = os.environ.get("LLMFAIR_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "llmfair"


def is_complete(path: str | os.PathLike) -> bool:
    """True when ``path`` holds a finished tiny-model build (its marker file was written last)."""
    return (Path(path) / MARKER_FILE).is_file()


def tiny_model_path(cache_dir: str | os.PathLike | None = None, *, seed: int = 0, window_seconds: int = 10) -> Path:
    """The directory of the tiny model for this specification, built on first use.

    The directory is ``<cache_dir>/tiny-qwen2-audio-<spec hash>``; it is built under a temporary
    name and renamed into place, so a concurrent or interrupted build never leaves a half-written
    model that a later call would trust.
    """
    spec = tiny_spec(seed=seed, window_seconds=window_seconds)
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = root / f"tiny-qwen2-audio-{digest}"
    if is_complete(path):
        return path
    try:
        # everything under llmfair's own cache folder is llmfair's
        with atomic_directory(path, overwrite=path.exists(), command="tiny model",
                              owned=files_under(path) if path.is_dir() else ()) as tmp:
            build_tiny_model(tmp, seed=seed, window_seconds=window_seconds)
    except FileExistsError:
        # Another process finished the same build first; its result is identical.
        if not is_complete(path):
            raise
    return path
