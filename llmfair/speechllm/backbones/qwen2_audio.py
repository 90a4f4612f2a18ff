"""Qwen2-Audio (``Qwen2AudioForConditionalGeneration``; e.g. ``Qwen/Qwen2-Audio-7B-Instruct``).

Module tree (transformers 5.x): ``model.{audio_tower, multi_modal_projector, language_model}`` +
``lm_head``. The Whisper-style tower takes exactly ``2 * max_source_positions`` mel frames (30 s
on the released model) and attends under the clip's mask; the cache boundary is the tower's
``last_hidden_state`` (after its final layer norm and average pooling), before the projector.
Prompt format: the processor's default chat template (``prompts.QWEN2_AUDIO_CHAT``).
Pitfalls and what llmfair does about each: QWEN2AUDIO.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from llmfair.errors import ConfigError
from llmfair.speechllm.backbones._tiny import (
    VOCAB_SIZE, save_tiny_model, seeded_init, tokenizer_training_text, train_tokenizer,
)
from llmfair.speechllm.backbones.base import (
    LLM_TARGETS, WHISPER_AUDIO_TARGETS, SpeechBackbone, check_common, register_backbone,
)
from llmfair.speechllm.prompts import QWEN2_AUDIO_CHAT

SPEC_VERSION = 1
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>",
)


def train_tiny_tokenizer():
    """The tiny Qwen2-Audio tokenizer (Qwen2-Audio-Instruct ends a turn with <|im_end|> and pads
    with <|endoftext|>)."""
    return train_tokenizer(tokenizer_training_text(QWEN2_AUDIO_CHAT), SPECIAL_TOKENS, eos_token="<|im_end|>",
                           pad_token="<|endoftext|>")


@register_backbone("qwen2_audio")
class Qwen2Audio(SpeechBackbone):
    """Qwen2-Audio-7B(-Instruct): Whisper-large-v3-style encoder (32 layers, d_model 1280), a linear
    projector, Qwen-7B."""

    title = "Qwen2-Audio"
    model_types = ("qwen2_audio",)
    checkpoints = ("Qwen/Qwen2-Audio-7B-Instruct", "Qwen/Qwen2-Audio-7B")
    model_class_name = "Qwen2AudioForConditionalGeneration"
    chat = QWEN2_AUDIO_CHAT
    target_presets = {"llm": LLM_TARGETS, "llm+audio": f"({LLM_TARGETS})|({WHISPER_AUDIO_TARGETS})"}
    projector_module = "multi_modal_projector"
    qlora_skip_modules = ("model.audio_tower", "model.multi_modal_projector", "lm_head")
    projector_path = "model.multi_modal_projector"

    # ------------------------------------------------------------------ loading
    def check_processor(self, model, processor, *, where: str = "") -> None:
        config = model.config
        check_common(processor, audio_token_id=config.audio_token_id, num_mel_bins=config.audio_config.num_mel_bins,
                     where=where, needs="a Qwen2AudioProcessor")
        fe = processor.feature_extractor
        frames = 2 * config.audio_config.max_source_positions
        if fe.nb_max_frames != frames:
            at = f" ({where})" if where else ""
            raise ConfigError(f"processor{at}: {fe.chunk_length} s window = {fe.nb_max_frames} mel frames, but the "
                              f"audio encoder expects exactly {frames}")

    def tiny_spec(self, *, seed: int, window_seconds: int) -> dict:
        import hashlib

        import transformers

        text_hash = hashlib.sha256("\x00".join(tokenizer_training_text(QWEN2_AUDIO_CHAT)).encode("utf-8")).hexdigest()
        return {
            "spec_version": SPEC_VERSION, "seed": int(seed), "window_seconds": int(window_seconds),
            "encoder": {"d_model": 64, "layers": 2, "heads": 2, "ffn": 128, "num_mel_bins": 128},
            "llm": {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "ffn": 128, "vocab": VOCAB_SIZE},
            "tokenizer_text_sha256": text_hash, "transformers": transformers.__version__,
        }

    def build_tiny(self, out_dir: Path, spec: Mapping[str, Any]) -> None:
        """A real ``Qwen2AudioForConditionalGeneration`` (2-layer encoder, d_model 64; 2-layer
        Qwen2, hidden 64, vocabulary 512) and a real ``Qwen2AudioProcessor``; the encoder window is
        ``window_seconds`` (``max_source_positions = 50 * window``), the same 25 tokens per second."""
        import torch
        from transformers import (
            Qwen2AudioConfig, Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor, WhisperFeatureExtractor,
        )

        window = int(spec["window_seconds"])
        tokenizer = train_tiny_tokenizer()
        audio_token_id = tokenizer.convert_tokens_to_ids("<|AUDIO|>")
        enc, llm = spec["encoder"], spec["llm"]
        config = Qwen2AudioConfig(
            audio_config={
                "model_type": "qwen2_audio_encoder", "d_model": enc["d_model"], "encoder_layers": enc["layers"],
                "encoder_attention_heads": enc["heads"], "encoder_ffn_dim": enc["ffn"],
                "num_mel_bins": enc["num_mel_bins"], "max_source_positions": 50 * window,
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
        model = seeded_init(lambda: Qwen2AudioForConditionalGeneration(config).to(torch.float32).eval(),
                            int(spec["seed"]))
        feature_extractor = WhisperFeatureExtractor(
            feature_size=enc["num_mel_bins"], sampling_rate=16_000, hop_length=160, chunk_length=window,
            n_fft=400, padding_value=0.0, return_attention_mask=True,
        )
        processor = Qwen2AudioProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)
        save_tiny_model(model, out_dir)
        processor.save_pretrained(out_dir)

    # ------------------------------------------------------------------ encoder cache
    def encode_audio(self, model, input_features, feature_attention_mask) -> list:
        """The tower's outputs per clip, with its attention mask built as ``Qwen2AudioModel.forward``
        builds it (transformers 5.23.0): the encoder attends only to the clip's valid frames."""
        import torch
        from transformers.masking_utils import create_bidirectional_mask

        from llmfair.speechllm.collator import audio_token_counts

        tower = self.audio_tower(model)
        device = next(tower.parameters()).device
        input_features = input_features.to(device)
        lengths = feature_attention_mask.to(device).sum(-1).long()
        feat_lengths = (lengths - 1) // 2 + 1
        max_len = (input_features.shape[-1] - 2) // 2 + 1
        mask_2d = (torch.arange(max_len, device=device)[None, :] < feat_lengths[:, None]).long()
        dummy = torch.zeros((input_features.shape[0], max_len, 1), dtype=next(tower.parameters()).dtype, device=device)
        attention = create_bidirectional_mask(config=tower.config, inputs_embeds=dummy, attention_mask=mask_2d)
        hidden = tower(input_features, attention_mask=attention).last_hidden_state
        counts = audio_token_counts(feature_attention_mask).tolist()
        return [hidden[i, :n] for i, n in enumerate(counts)]
