"""Voxtral (``VoxtralForConditionalGeneration``; ``mistralai/Voxtral-Mini-3B-2507``,
``mistralai/Voxtral-Small-24B-2507``): a Whisper-large-v3 encoder, a two-layer projector and a
Mistral/Llama decoder (Ministral-3B / Mistral-Small-24B). Its tokenizer is mistral-common's Tekken
(``tekken.json``), so this family needs the ``mistral-common`` package
(``pip install 'llmfair[voxtral]'``); everything else is transformers.

* **Checkpoints**: ``model_type: voxtral``. Voxtral Realtime (``voxtral_realtime``, a streaming
  model) is another architecture and is not supported.
* **Module tree** (transformers 5.x): ``model.{audio_tower, multi_modal_projector,
  language_model}`` + ``lm_head``, the layout of Qwen2-Audio; the decoder is a ``LlamaModel``
  with the same projection names (``q/k/v/o_proj``, ``gate/up/down_proj``).
* **Audio encoder**: Whisper-style over exactly ``2 * max_source_positions`` mel frames (3000 =
  30 s on the released models), **without an attention mask** (the encoder reads the zero padding
  too; ``VoxtralEncoder.forward`` ignores any mask), no average pooling; the projector reads four
  consecutive encoder frames at once (``reshape(-1, intermediate_size)``, ``intermediate_size =
  4 * d_model``), so every clip gives ``max_source_positions / 4`` audio tokens (375 per 30 s,
  12.5 per second) whatever its length. A clip's output therefore does not depend on the batch,
  which makes per-clip caching exact.
* **Cache boundary**: the tower's ``last_hidden_state`` (after its final layer norm) regrouped into
  those 4-frame rows, shape (375, 5120) per clip on the released models, before
  ``multi_modal_projector`` (``linear_1`` → GELU → ``linear_2``), so that
  ``lora.train_projector`` (peft ``modules_to_save=["multi_modal_projector"]``) can train it.
  A cached clip takes 375 × 5120 values (3.8 MB in bf16) for every clip, short or long.
* **Prompt format**: what mistral-common's chat encoder builds for one user message holding an
  audio chunk and a text chunk: ``<s>[INST][BEGIN_AUDIO][AUDIO]…[AUDIO]{instruction}[/INST]``,
  the answer after ``[/INST]`` and closed by ``</s>`` (:data:`VOXTRAL_CHAT`). There is no system
  turn: mistral-common (tokenizer V7) refuses a system message when audio is present, so a
  recipe's ``prompts.system`` must stay empty (refused in one line otherwise).
* **Processor**: ``_voxtral_processing.VoxtralAudioProcessor`` — the checkpoint's Tekken tokenizer
  (reading special tokens written in text) and Whisper feature extractor; each clip padded to the
  window as mistral-common and ``VoxtralProcessor`` pad it, the same tokens and features (tested
  against both).
* **QLoRA**: ``model.audio_tower``, ``model.multi_modal_projector`` and ``lm_head`` stay
  unquantised.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from llmfair.errors import ConfigError
from llmfair.speechllm.backbones._tiny import VOCAB_SIZE, save_tiny_model, seeded_init, tokenizer_training_text
from llmfair.speechllm.backbones.base import (
    LLM_TARGETS, SAMPLING_RATE, WHISPER_AUDIO_TARGETS, SpeechBackbone, check_common, position_ids_from_mask,
    register_backbone,
)
from llmfair.speechllm.prompts import ChatFormat

SPEC_VERSION = 1
VOXTRAL_CHAT = ChatFormat(system_prompt="", audio_placeholder="[BEGIN_AUDIO][AUDIO]", system_start=None,
                          user_start="[INST]", user_end="", answer_prefix="[/INST]", turn_end="</s>", bos="<s>")
"""Voxtral's (mistral-common's) prompt layout for one audio clip followed by text; no system turn."""

TEKKEN_PATTERN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
                  r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|"
                  r"\s*[\r\n]+|\s+(?!\S)|\s+")
"""Tekken's pre-tokenisation regex (mistral-common's ``tekken_240911.json``)."""
NUM_SPECIAL_TOKENS = 40
"""Special tokens of the tiny tokenizer (the released one reserves 1000)."""
NAMED_SPECIAL_TOKENS = {24: "[AUDIO]", 25: "[BEGIN_AUDIO]", 32: "[ARGS]", 33: "[CALL_ID]", 34: "[TRANSCRIBE]"}
"""Special tokens past mistral-common's first 20 (``Tekkenizer.DEPRECATED_SPECIAL_TOKENS``); ``[AUDIO]``
is 24, the id transformers' ``VoxtralProcessor`` hard-codes."""
FRAME_RATE = 12.5
"""Audio tokens per second (mistral-common's ``AudioConfig.frame_rate`` of Voxtral)."""


def _needs_mistral_common(exc: ImportError) -> ConfigError:
    return ConfigError(f"the Voxtral family needs the mistral-common package for its tokenizer: "
                       f"pip install 'llmfair[voxtral]' ({exc})")


def _processing():
    try:
        from llmfair.speechllm.backbones import _voxtral_processing
    except ImportError as exc:
        raise _needs_mistral_common(exc) from None
    return _voxtral_processing


def tokenizer_training_lines() -> list[str]:
    """The built-in training text in Voxtral's prompt format with every special token cut out
    (special tokens are never BPE-encoded; what lies between them is)."""
    import re

    specials = sorted({*NAMED_SPECIAL_TOKENS.values(), "<s>", "</s>", "[INST]", "[/INST]"}, key=len, reverse=True)
    split = re.compile("|".join(re.escape(s) for s in specials))
    return [piece for line in tokenizer_training_text(VOXTRAL_CHAT) for piece in split.split(line) if piece]


def tekken_json(lines: list[str], *, vocab_size: int, num_special: int, window_seconds: int) -> dict:
    """A Tekken tokenizer file (mistral-common's format, version v7 with an audio section): a
    byte-level BPE trained on ``lines`` with ``tokenizers`` and written as Tekken's ranks (the 256
    bytes, then the merges in training order), mistral-common's special tokens, and Voxtral's audio
    settings (16 kHz, 128 mel bins, hop 160, 12.5 tokens per second, clips padded to whole windows)."""
    import base64

    from tokenizers import Regex, Tokenizer, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    bpe = Tokenizer(BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(TEKKEN_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - num_special, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(lines, trainer)
    merges = json.loads(bpe.to_str())["model"]["merges"]
    byte_of = {c: b for b, c in bytes_to_unicode().items()}

    def raw(token: str) -> bytes:
        return bytes(byte_of[c] for c in token)

    pieces = [bytes([i]) for i in range(256)]
    pieces += [raw(a) + raw(b) for a, b in (m if isinstance(m, list) else m.split(" ") for m in merges)]

    def text_of(piece: bytes) -> str | None:
        try:
            return piece.decode("utf-8")
        except UnicodeDecodeError:
            return None

    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    specials = [dict(t) for t in Tekkenizer.DEPRECATED_SPECIAL_TOKENS]
    specials += [{"rank": i, "token_str": NAMED_SPECIAL_TOKENS.get(i, f"<SPECIAL_{i}>"), "is_control": True}
                 for i in range(len(specials), num_special)]
    return {
        "config": {"pattern": TEKKEN_PATTERN, "num_vocab_tokens": len(pieces),
                   "default_vocab_size": len(pieces) + num_special, "default_num_special_tokens": num_special,
                   "version": "v7"},
        "vocab": [{"rank": r, "token_bytes": base64.b64encode(p).decode("ascii"), "token_str": text_of(p)}
                  for r, p in enumerate(pieces)],
        "special_tokens": specials,
        "audio": {"sampling_rate": SAMPLING_RATE, "frame_rate": FRAME_RATE, "chunk_length_s": float(window_seconds),
                  "audio_encoding_config": {"num_mel_bins": 128, "hop_length": 160, "window_size": 400}},
    }


@register_backbone("voxtral")
class Voxtral(SpeechBackbone):
    """Voxtral Mini 3B / Small 24B: Whisper-large-v3 encoder (32 layers, d_model 1280, no attention
    mask, 4-frame stacking), a two-layer projector, Ministral-3B / Mistral-Small-24B."""

    title = "Voxtral"
    model_types = ("voxtral",)
    checkpoints = ("mistralai/Voxtral-Mini-3B-2507", "mistralai/Voxtral-Small-24B-2507")
    model_class_name = "VoxtralForConditionalGeneration"
    chat = VOXTRAL_CHAT
    target_presets = {"llm": LLM_TARGETS, "llm+audio": f"({LLM_TARGETS})|({WHISPER_AUDIO_TARGETS})"}
    projector_module = "multi_modal_projector"
    qlora_skip_modules = ("model.audio_tower", "model.multi_modal_projector", "lm_head")
    projector_path = "model.multi_modal_projector"

    # ------------------------------------------------------------------ loading
    def load_processor(self, source: str, **kwargs: Any):
        """:class:`~llmfair.speechllm.backbones._voxtral_processing.VoxtralAudioProcessor` over the
        checkpoint's ``tekken.json`` and ``preprocessor_config.json``."""
        from transformers import WhisperFeatureExtractor

        processing = _processing()
        options = {k: v for k, v in kwargs.items() if k in ("local_files_only", "revision")}
        try:
            tokenizer = processing.TekkenControlTokenizer.from_pretrained(source, **options)
        except (ValueError, FileNotFoundError) as exc:
            raise ConfigError(f"cannot load the Tekken tokenizer (tekken.json) of {source}: {exc}") from None
        feature_extractor = WhisperFeatureExtractor.from_pretrained(source, **kwargs)
        return processing.VoxtralAudioProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)

    def check_processor(self, model, processor, *, where: str = "") -> None:
        config = model.config
        at = f" ({where})" if where else ""
        check_common(processor, audio_token_id=config.audio_token_id, num_mel_bins=config.audio_config.num_mel_bins,
                     where=where, needs="Voxtral's processor (a Tekken tokenizer with an audio section and a Whisper "
                                        "feature extractor)", token_name="[AUDIO]")
        fe = processor.feature_extractor
        positions = config.audio_config.max_source_positions
        if fe.nb_max_frames != 2 * positions:
            raise ConfigError(f"processor{at}: {fe.chunk_length} s window = {fe.nb_max_frames} mel frames, but the "
                              f"audio encoder expects exactly {2 * positions}")
        audio = getattr(processor, "audio_config", None)
        if audio is None:
            raise ConfigError(f"processor{at} has no audio configuration; Voxtral's processor is needed")
        if audio.sampling_rate != SAMPLING_RATE:
            raise ConfigError(f"processor{at}: the tokenizer's audio section is at {audio.sampling_rate} Hz but the "
                              f"audio encoder expects {SAMPLING_RATE} Hz")
        stacked = config.audio_config.intermediate_size // config.audio_config.hidden_size
        if processor.tokens_per_window != positions // stacked:
            raise ConfigError(f"processor{at}: the tokenizer gives {processor.tokens_per_window} audio tokens per "
                              f"{fe.chunk_length} s window but the encoder produces {positions // stacked}")

    def encoder_width(self, config: Mapping[str, Any]) -> int | None:
        """The cached width: ``intermediate_size`` (four stacked encoder frames, 5120 on the
        released models)."""
        width = (config.get("audio_config") or {}).get("intermediate_size")
        return int(width) if width else None

    def tiny_encoder_width(self, spec: Mapping[str, Any]) -> int:
        return int(spec["encoder"]["ffn"])

    def audio_tokens_per_clip(self, seconds: float, window_seconds: float) -> int:
        """Every clip is padded to the window: ``12.5 * window`` tokens whatever its length."""
        return round(FRAME_RATE * window_seconds)

    def tiny_spec(self, *, seed: int, window_seconds: int) -> dict:
        import hashlib

        import transformers

        text_hash = hashlib.sha256("\x00".join(tokenizer_training_lines()).encode("utf-8")).hexdigest()
        return {
            "family": self.name, "spec_version": SPEC_VERSION, "seed": int(seed), "window_seconds": int(window_seconds),
            "encoder": {"d_model": 64, "layers": 2, "heads": 2, "ffn": 256, "num_mel_bins": 128},
            "llm": {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "head_dim": 16, "ffn": 128,
                    "vocab": VOCAB_SIZE},
            "tokenizer": {"special_tokens": NUM_SPECIAL_TOKENS, "format": "tekken v7"},
            "tokenizer_text_sha256": text_hash, "transformers": transformers.__version__,
        }

    def build_tiny(self, out_dir: Path, spec: Mapping[str, Any]) -> None:
        """A real ``VoxtralForConditionalGeneration`` (2-layer encoder, d_model 64, intermediate 256
        = 4 × 64 as the projector's 4-frame stacking requires; 2-layer Llama decoder, hidden 64,
        vocabulary 512), a Tekken ``tekken.json`` trained here (40 special tokens at mistral-common's
        ranks, ``[AUDIO]`` = 24) and a Whisper feature extractor; the encoder window is
        ``window_seconds`` (``max_source_positions = 50 * window``: 12.5 audio tokens per second,
        as on the released model)."""
        import torch
        from transformers import VoxtralConfig, VoxtralForConditionalGeneration, WhisperFeatureExtractor

        processing = _processing()
        window = int(spec["window_seconds"])
        enc, llm = spec["encoder"], spec["llm"]
        (out_dir / "tekken.json").write_text(json.dumps(tekken_json(
            tokenizer_training_lines(), vocab_size=llm["vocab"], num_special=spec["tokenizer"]["special_tokens"],
            window_seconds=window)), encoding="utf-8")
        tokenizer = processing.TekkenControlTokenizer.from_pretrained(str(out_dir))
        tekken = tokenizer.tokenizer.instruct_tokenizer.tokenizer
        config = VoxtralConfig(
            audio_config={
                "hidden_size": enc["d_model"], "intermediate_size": enc["ffn"], "num_hidden_layers": enc["layers"],
                "num_attention_heads": enc["heads"], "num_mel_bins": enc["num_mel_bins"],
                "max_source_positions": 50 * window,
            },
            text_config={
                "vocab_size": llm["vocab"], "hidden_size": llm["hidden"], "intermediate_size": llm["ffn"],
                "num_hidden_layers": llm["layers"], "num_attention_heads": llm["heads"],
                "num_key_value_heads": llm["kv_heads"], "head_dim": llm["head_dim"], "max_position_embeddings": 4096,
                "tie_word_embeddings": False, "pad_token_id": tekken.pad_id, "bos_token_id": tekken.bos_id,
                "eos_token_id": tekken.eos_id,
            },
            audio_token_id=tokenizer.convert_tokens_to_ids("[AUDIO]"),
        )
        model = seeded_init(lambda: VoxtralForConditionalGeneration(config).to(torch.float32).eval(), int(spec["seed"]))
        feature_extractor = WhisperFeatureExtractor(
            feature_size=enc["num_mel_bins"], sampling_rate=SAMPLING_RATE, hop_length=160, chunk_length=window,
            n_fft=400, padding_value=0.0, return_attention_mask=False,
        )
        save_tiny_model(model, out_dir)
        feature_extractor.save_pretrained(out_dir)

    # ------------------------------------------------------------------ forward pieces
    def encode_audio(self, model, input_features, feature_attention_mask) -> list:
        """The tower's ``last_hidden_state`` per clip, regrouped into rows of four frames
        (``VoxtralModel.get_audio_features`` up to the projector); the mask is not used (the
        encoder reads the whole window)."""
        tower = self.audio_tower(model)
        device = next(tower.parameters()).device
        hidden = tower(input_features.to(device)).last_hidden_state
        width = model.config.audio_config.intermediate_size
        return list(hidden.reshape(hidden.shape[0], -1, width).unbind(0))

    def hidden_states(self, model, batch: Mapping[str, Any]):
        """The inner model's forward (``VoxtralModel`` takes no ``feature_attention_mask``)."""
        device = model.get_input_embeddings().weight.device
        attention_mask = batch["attention_mask"].to(device)
        outputs = model.model(
            input_ids=batch["input_ids"].to(device), input_features=batch["input_features"],
            attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask), use_cache=False,
        )
        return outputs.last_hidden_state
