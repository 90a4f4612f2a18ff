"""Where Qwen2-Audio keeps its parts, and the positions a left-padded batch needs (private).

Shared by :mod:`llmfair.speechllm.scoring` (which re-exports both) and
:mod:`llmfair.speechllm.encoder_cache`, so that neither has to import the other's caller: scoring
uses the encoder cache, the encoder cache uses only this module.
"""
from __future__ import annotations

import torch

from llmfair.errors import ConfigError


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The ``Qwen2AudioForConditionalGeneration`` inside ``model`` (plain or peft-wrapped).

    Raises:
        ConfigError: for a DDP/DeepSpeed wrapper (score the wrapped module inside its forward
            instead) or a model that is not Qwen2-Audio shaped.
    """
    if isinstance(model, torch.nn.parallel.DistributedDataParallel) or type(model).__name__ == "DeepSpeedEngine":
        raise ConfigError("score_batch received a DDP/DeepSpeed wrapper; call it on the wrapped module from inside "
                          "that module's forward, so the wrapper's gradient hooks stay in charge")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(base, "model", None)
    if inner is None or not all(hasattr(inner, a) for a in ("audio_tower", "multi_modal_projector", "language_model")):
        raise ConfigError(f"expected a Qwen2AudioForConditionalGeneration (or a peft model around one), got "
                          f"{type(base).__name__}")
    return base


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Rotary positions that start at 0 on each row's first real token (left padding)."""
    position_ids = attention_mask.long().cumsum(-1) - 1
    return position_ids.masked_fill(attention_mask == 0, 1)
