"""Qwen2.5-Omni through its thinker (``Qwen2_5OmniThinkerForConditionalGeneration``; e.g.
``Qwen/Qwen2.5-Omni-7B``, ``Qwen/Qwen2.5-Omni-3B``): audio in, text out — no talker, no
token2wav, no video.

* **Checkpoints**: a released Omni checkpoint (``model_type: qwen2_5_omni``, thinker + talker +
  token2wav) loads its thinker only: transformers 5.x reads ``thinker_config`` and renames the
  ``thinker.*`` weights (``conversion_mapping.py``); the talker's and token2wav's are skipped. A
  saved thinker (``qwen2_5_omni_thinker``, what the tiny build writes) loads the same way.
* **Module tree**: ``model.{audio_tower, visual, language_model}`` + ``lm_head``. The projector is
  the tower's last layer, ``model.audio_tower.proj`` (d_model → the LLM width); the vision tower is
  loaded but never called (and never quantised, never given adapters).
* **Audio encoder**: Whisper-style, but it takes only the clip's valid mel frames (concatenated),
  cuts them into chunks of ``2 * n_window`` frames (2 s) and attends within a chunk, so there is
  no fixed 30 s window; clips are still independent, and a clip's output alone equals its output
  in a batch. Tokens per clip: ``((L-1)//2 + 1 - 2)//2 + 1`` over ``L`` mel frames, as Qwen2-Audio.
* **Cache boundary**: the tower's output *before* ``proj`` (after its final layer norm and
  pooling; width d_model = 1280 on 7B/3B), so that ``lora.train_projector`` (peft
  ``modules_to_save=["audio_tower.proj"]``) can still train the projection.
* **Positions**: for audio-only input the thinker's own ``get_rope_index`` gives every row
  ``cumsum(mask) - 1`` on all three M-RoPE axes (transformers 5.23.0), i.e. what llmfair passes.
* **Processor**: audio only — the checkpoint's tokenizer and Whisper feature extractor, with
  ``<|AUDIO|>`` expanded to one token per encoder frame exactly as ``Qwen2_5OmniProcessor`` does
  (tested against its code). transformers builds ``Qwen2_5OmniProcessor`` itself only with
  torchvision installed (for its video processor), which an audio-only run does not need. One
  difference, for speed: ``Qwen2_5OmniProcessor`` pads every clip's waveform to the feature
  extractor's whole window (300 s on the released checkpoints: ~6 s of log-mel work per batch of 8
  on a CPU core) although the encoder drops the padding; llmfair pads a batch to its longest clip
  plus 1 s (rounded up to whole seconds; never past the window), which leaves every valid mel
  frame, the masks, the token counts and the model's outputs unchanged (tested).
* **Prompt format**: the released chat template: ``<|audio_bos|><|AUDIO|><|audio_eos|>`` with no
  "Audio 1:" prefix and no newline before the instruction, and the system prompt Qwen documents for
  Qwen2.5-Omni (:data:`SYSTEM_PROMPT`).
* **QLoRA**: ``model.audio_tower``, ``model.visual`` and ``lm_head`` stay unquantised (GPTQModel
  does the same for ``thinker.audio_tower``).
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
from llmfair.speechllm.prompts import ChatFormat

SPEC_VERSION = 1
SYSTEM_PROMPT = ("You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving "
                 "auditory and visual inputs, as well as generating text and speech.")
OMNI_CHAT = ChatFormat(system_prompt=SYSTEM_PROMPT, audio_placeholder="<|audio_bos|><|AUDIO|><|audio_eos|>")
"""Qwen2.5-Omni's prompt layout for one audio clip followed by text."""

SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>",
    "<|IMAGE|>", "<|VIDEO|>", "<|vision_bos|>", "<|vision_eos|>",
)
NAMED_TOKENS = {
    "audio_token": "<|AUDIO|>", "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>",
    "image_token": "<|IMAGE|>", "video_token": "<|VIDEO|>", "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
}
"""The tokenizer attributes Qwen2.5-Omni's tokenizer declares (``tokenizer.audio_token`` ...)."""

CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    + SYSTEM_PROMPT + "<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>{% elif item['type'] == 'text' %}"
    "{{ item['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""The audio and text part of the released chat template (what the tiny build ships)."""


def _batch_padded_processor_class():
    """``Qwen2AudioProcessor`` whose feature extractor pads a batch to its longest clip + 1 s."""
    from transformers import Qwen2AudioProcessor

    class BatchPaddedAudioProcessor(Qwen2AudioProcessor):
        def _process_audio(self, audio, **kwargs):
            fe = self.feature_extractor
            longest = max(len(a) for a in audio)
            seconds = -(-(longest + fe.sampling_rate) // fe.sampling_rate)  # ceil, with >= 1 s of zeros after
            kwargs["max_length"] = int(min(fe.n_samples, seconds * fe.sampling_rate))
            return super()._process_audio(audio, **kwargs)

    return BatchPaddedAudioProcessor


def train_tiny_tokenizer():
    """The tiny Qwen2.5-Omni tokenizer: trained on prompts in Omni's format, with Omni's named tokens."""
    tokenizer = train_tokenizer(tokenizer_training_text(OMNI_CHAT), SPECIAL_TOKENS, eos_token="<|im_end|>",
                                pad_token="<|endoftext|>", named_tokens=NAMED_TOKENS)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@register_backbone("qwen2_5_omni")
class Qwen25Omni(SpeechBackbone):
    """Qwen2.5-Omni-7B / -3B thinker: Whisper-style encoder (32 layers, d_model 1280, chunked
    attention, its own output projection), a vision tower (unused here), Qwen2.5-7B / -3B."""

    title = "Qwen2.5-Omni (thinker)"
    model_types = ("qwen2_5_omni_thinker", "qwen2_5_omni")
    checkpoints = ("Qwen/Qwen2.5-Omni-7B", "Qwen/Qwen2.5-Omni-3B")
    model_class_name = "Qwen2_5OmniThinkerForConditionalGeneration"
    chat = OMNI_CHAT
    target_presets = {"llm": LLM_TARGETS, "llm+audio": f"({LLM_TARGETS})|({WHISPER_AUDIO_TARGETS})"}
    projector_module = "audio_tower.proj"
    qlora_skip_modules = ("model.audio_tower", "model.visual", "lm_head")
    projector_path = "model.audio_tower.proj"

    # ------------------------------------------------------------------ loading
    def load_processor(self, source: str, **kwargs: Any):
        """The audio-only processor (see the module docstring): ``Qwen2AudioProcessor``'s audio
        path over Omni's tokenizer, feature extractor and chat template, each batch padded to its
        longest clip."""
        from transformers import AutoTokenizer, WhisperFeatureExtractor

        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        feature_extractor = WhisperFeatureExtractor.from_pretrained(source, **kwargs)
        if not hasattr(tokenizer, "audio_token"):
            raise ConfigError(f"the tokenizer of {source} declares no audio_token; is it a Qwen2.5-Omni checkpoint?")
        return _batch_padded_processor_class()(feature_extractor=feature_extractor, tokenizer=tokenizer,
                                               chat_template=getattr(tokenizer, "chat_template", None) or CHAT_TEMPLATE)

    def save_processor(self, processor, directory: str | Path) -> None:
        """Tokenizer and feature extractor, the files a released Omni checkpoint has for audio."""
        processor.tokenizer.save_pretrained(str(directory))
        processor.feature_extractor.save_pretrained(str(directory))

    def check_processor(self, model, processor, *, where: str = "") -> None:
        config = model.config
        check_common(processor, audio_token_id=config.audio_token_id, num_mel_bins=config.audio_config.num_mel_bins,
                     where=where, needs="Qwen2.5-Omni's tokenizer and feature extractor")

    def encoder_width(self, config: Mapping[str, Any]) -> int | None:
        thinker = config.get("thinker_config") or config
        width = (thinker.get("audio_config") or {}).get("d_model")
        return int(width) if width else None

    def tiny_spec(self, *, seed: int, window_seconds: int) -> dict:
        import hashlib

        import transformers

        text_hash = hashlib.sha256("\x00".join(tokenizer_training_text(OMNI_CHAT)).encode("utf-8")).hexdigest()
        return {
            "family": self.name, "spec_version": SPEC_VERSION, "seed": int(seed), "window_seconds": int(window_seconds),
            "encoder": {"d_model": 64, "layers": 2, "heads": 2, "ffn": 128, "num_mel_bins": 128, "n_window": 100},
            "vision": {"depth": 1, "hidden": 16, "heads": 2, "ffn": 16},
            "llm": {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "ffn": 128, "vocab": VOCAB_SIZE,
                    "mrope_section": [2, 3, 3]},
            "tokenizer_text_sha256": text_hash, "transformers": transformers.__version__,
        }

    def build_tiny(self, out_dir: Path, spec: Mapping[str, Any]) -> None:
        """A real ``Qwen2_5OmniThinkerForConditionalGeneration`` (2-layer audio encoder, d_model 64;
        1-block vision tower; 2-layer Qwen2.5 decoder with M-RoPE, hidden 64, vocabulary 512), its
        tokenizer (Omni's named tokens and chat template) and Whisper feature extractor (window
        ``window_seconds``: the padding the feature extractor applies)."""
        import torch
        from transformers import (
            Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration, WhisperFeatureExtractor,
        )

        tokenizer = train_tiny_tokenizer()
        ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in NAMED_TOKENS.items()}
        enc, vis, llm = spec["encoder"], spec["vision"], spec["llm"]
        config = Qwen2_5OmniThinkerConfig(
            audio_config={
                "d_model": enc["d_model"], "encoder_layers": enc["layers"], "encoder_attention_heads": enc["heads"],
                "encoder_ffn_dim": enc["ffn"], "num_mel_bins": enc["num_mel_bins"], "n_window": enc["n_window"],
                "max_source_positions": 1500, "output_dim": llm["hidden"],
            },
            vision_config={
                "depth": vis["depth"], "hidden_size": vis["hidden"], "num_heads": vis["heads"],
                "intermediate_size": vis["ffn"], "out_hidden_size": llm["hidden"], "fullatt_block_indexes": [0],
            },
            text_config={
                "vocab_size": llm["vocab"], "hidden_size": llm["hidden"], "intermediate_size": llm["ffn"],
                "num_hidden_layers": llm["layers"], "num_attention_heads": llm["heads"],
                "num_key_value_heads": llm["kv_heads"], "max_position_embeddings": 4096, "tie_word_embeddings": False,
                "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0,
                                    "mrope_section": list(llm["mrope_section"])},
                "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
            },
            audio_token_index=ids["audio_token"], image_token_index=ids["image_token"],
            video_token_index=ids["video_token"], audio_start_token_id=ids["audio_bos_token"],
            audio_end_token_id=ids["audio_eos_token"],
            # not fields of the thinker config, but the released config.json carries them and the
            # thinker's get_rope_index reads vision_start_token_id on every call
            vision_start_token_id=ids["vision_bos_token"], vision_end_token_id=ids["vision_eos_token"],
        )
        model = seeded_init(lambda: Qwen2_5OmniThinkerForConditionalGeneration(config).to(torch.float32).eval(),
                            int(spec["seed"]))
        feature_extractor = WhisperFeatureExtractor(
            feature_size=enc["num_mel_bins"], sampling_rate=16_000, hop_length=160,
            chunk_length=int(spec["window_seconds"]), n_fft=400, padding_value=0.0, return_attention_mask=True,
        )
        save_tiny_model(model, out_dir)
        tokenizer.save_pretrained(out_dir)
        feature_extractor.save_pretrained(out_dir)

    # ------------------------------------------------------------------ encoder cache
    def encoder_parameters(self, model):
        return ((n, p) for n, p in self.audio_tower(model).named_parameters() if not n.startswith("proj."))

    def encoder_state(self, model) -> dict[str, Any]:
        return {k: v for k, v in self.audio_tower(model).state_dict().items() if not k.startswith("proj.")}

    def encode_audio(self, model, input_features, feature_attention_mask) -> list:
        """The tower's output before ``proj`` per clip, from the clips' valid frames (as
        ``Qwen2_5OmniThinkerModel.get_audio_features`` feeds the tower)."""
        tower = self.audio_tower(model)
        device = next(tower.parameters()).device
        mask = feature_attention_mask.to(device)
        lengths = mask.sum(-1).long()
        flat = input_features.to(device).permute(0, 2, 1)[mask.bool()].permute(1, 0)
        after_cnn, counts = tower._get_feat_extract_output_lengths(lengths)
        captured = []
        hook = tower.proj.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
        try:
            tower(flat, feature_lens=lengths, aftercnn_lens=after_cnn)
        finally:
            hook.remove()
        return list(captured[0].split(counts.tolist()))
