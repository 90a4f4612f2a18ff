"""Speech LLMs: registered backbone families (Qwen2-Audio, Qwen2.5-Omni's thinker, Voxtral; ``backbones/``),
each a hub id, a local path, or a tiny offline model, with LoRA, prompts, a verbalizer, a checked
collator, cheap per-sample scoring and a frozen-encoder cache.

The same code runs ``"tiny"`` in tests and ``Qwen/Qwen2-Audio-7B-Instruct`` (or
``Qwen/Qwen2.5-Omni-7B``) on a GPU::

    model, processor = load_speech_llm("tiny")                 # family="qwen2_5_omni" / "voxtral"
    backbone = backbone_of(model)
    model, targets = apply_lora(model, LoraOptions(targets="llm"))
    verbalizer = Verbalizer(MELD.classes, processor.tokenizer, answer_prefix=backbone.chat.answer_prefix)
    collate = SpeechLLMCollator(processor, PromptTemplate(chat=backbone.chat), verbalizer)
    out = score_batch(model, collate(records), verbalizer)   # per_sample_loss, class_logits, pooled

Submodules import torch/transformers lazily where they can; ``import llmfair`` does not import this
package.
"""
from __future__ import annotations

from llmfair.speechllm.backbones import (
    BACKBONES, SpeechBackbone, backbone_for_model_type, backbone_of, family_names, get_backbone, register_backbone,
)
from llmfair.speechllm.collator import (
    MODEL_INPUT_KEYS, SpeechLLMCollator, audio_token_counts, check_audio_tokens, model_inputs,
)
from llmfair.speechllm.encoder_cache import (
    EncoderCache, audio_tower_fingerprint, encode_audio, hidden_states_from_audio_features,
)
from llmfair.speechllm.loading import load_speech_llm, resolve_model_source
from llmfair.speechllm.lora import LoraOptions, TARGET_PRESETS, apply_lora, count_trainable, lora_module_names
from llmfair.speechllm.prompts import ChatFormat, PromptTemplate
from llmfair.speechllm.scoring import ScoreOutput, last_hidden_states, score_batch, unwrap_model
from llmfair.speechllm.tiny import build_tiny_model, tiny_model_path
from llmfair.speechllm.verbalizer import Verbalizer

__all__ = [
    "BACKBONES", "ChatFormat", "SpeechBackbone", "backbone_for_model_type", "backbone_of", "family_names",
    "get_backbone", "register_backbone",
    "EncoderCache", "LoraOptions", "MODEL_INPUT_KEYS", "PromptTemplate", "ScoreOutput", "SpeechLLMCollator",
    "TARGET_PRESETS", "Verbalizer", "apply_lora", "audio_token_counts", "audio_tower_fingerprint",
    "build_tiny_model", "check_audio_tokens", "count_trainable", "encode_audio", "hidden_states_from_audio_features",
    "last_hidden_states", "load_speech_llm", "lora_module_names", "model_inputs", "resolve_model_source",
    "score_batch", "tiny_model_path", "unwrap_model",
]
