"""The transformers model inside a (peft-wrapped) speech LLM, and the positions a left-padded batch
needs (private).

Shared by :mod:`llmfair.speechllm.scoring` (which re-exports both) and
:mod:`llmfair.speechllm.encoder_cache`, so that neither has to import the other's caller: scoring
uses the encoder cache, the encoder cache uses only this module and the backbones.
"""
from __future__ import annotations

import torch

from llmfair.errors import ConfigError
from llmfair.speechllm.backbones import backbone_of
from llmfair.speechllm.backbones.base import position_ids_from_mask

__all__ = ["position_ids_from_mask", "unwrap_model"]


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside ``model`` (plain or peft-wrapped), e.g. a
    ``Qwen2AudioForConditionalGeneration``.

    Raises:
        ConfigError: for a DDP/DeepSpeed wrapper (score the wrapped module inside its forward
            instead) or a model of no registered speech-LLM family (names the supported ones).
    """
    if isinstance(model, torch.nn.parallel.DistributedDataParallel) or type(model).__name__ == "DeepSpeedEngine":
        raise ConfigError("score_batch received a DDP/DeepSpeed wrapper; call it on the wrapped module from inside "
                          "that module's forward, so the wrapper's gradient hooks stay in charge")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone_of(base)
    return base
