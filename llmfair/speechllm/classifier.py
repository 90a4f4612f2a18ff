"""The speech LLM as a classifier module: ``forward(**batch)`` → per-sample loss, class logits and
the pooled answer state, which is the contract FairTrainer trains.

Going through this module's ``forward`` (not ``score_batch`` on the inner model) keeps DDP's
gradient hooks and DeepSpeed's engine in charge of the whole model. Only the trainable part (the
peft adapter, plus the projector when it is trained) is saved in checkpoints.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmfair.speechllm.scoring import score_batch
from llmfair.speechllm.verbalizer import Verbalizer

ADAPTER_WEIGHTS = "adapter_model.safetensors"


class SpeechLLMClassifier(nn.Module):
    """Wraps a (peft) speech LLM of a registered family with a verbalizer.

    Args:
        model: e.g. a ``Qwen2AudioForConditionalGeneration`` wrapped by peft.
        verbalizer: label words → first-token ids.
        answer_loss: ``verbalizer`` (cross-entropy over the K label-word logits) or ``lm`` (mean token
            cross-entropy over the answer; the collator must build ``labels``).
        encoder_cache: an ``EncoderCache`` used when the audio tower is frozen.
    """

    def __init__(self, model: nn.Module, verbalizer: Verbalizer, *, answer_loss: str = "verbalizer",
                 encoder_cache: Any = None) -> None:
        super().__init__()
        self.model = model
        self.verbalizer = verbalizer
        self.answer_loss = answer_loss
        self.encoder_cache = encoder_cache

    def forward(self, **batch: Any) -> dict[str, torch.Tensor]:
        out = score_batch(self.model, batch, self.verbalizer, answer_loss=self.answer_loss,
                          encoder_cache=self.encoder_cache)
        return out.as_dict()

    # -------------------------------------------------------------- what checkpoints hold
    def save_trainable(self, directory: str | os.PathLike, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Write the peft adapter (``adapter_config.json`` + ``adapter_model.safetensors``)."""
        if state_dict is not None:  # e.g. gathered by DeepSpeed ZeRO-3; keys carry our "model." prefix
            state_dict = {k[len("model."):] if k.startswith("model.") else k: v for k, v in state_dict.items()}
        self.model.save_pretrained(str(directory), state_dict=state_dict, safe_serialization=True)

    def load_trainable(self, directory: str | os.PathLike) -> None:
        """Load adapter weights saved by :meth:`save_trainable` into this model (resume)."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        path = Path(directory) / ADAPTER_WEIGHTS
        weights = load_file(str(path), device=str(next(self.model.parameters()).device))
        result = set_peft_model_state_dict(self.model, weights)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise RuntimeError(f"{path}: adapter keys not found in the model: {unexpected[:5]}")
