"""LoRA / QLoRA on a speech LLM: options, target-module presets and their resolution.

peft has no ``qwen2_audio`` entry in its default target table, and ``"all-linear"`` selects every
linear layer of the Whisper-style audio tower and the projector too (QWEN2AUDIO.md §7). llmfair
therefore names its targets with regexes over the transformers 5.x module tree; each backbone
family declares its presets (``SpeechBackbone.target_presets``) under the same two names. On
Qwen2-Audio (``model.{audio_tower,multi_modal_projector,language_model}`` + ``lm_head``; the
Qwen2.5-Omni thinker and Voxtral have the same paths, Omni's projector being
``model.audio_tower.proj``):

* ``"llm"`` (default): the language model's attention and MLP projections,
  ``model.language_model.layers.N.(self_attn.(q|k|v|o)_proj|mlp.(gate|up|down)_proj)``;
  7 per layer (14 on the tiny model, 196 on the 28-layer 7B model);
* ``"llm+audio"``: adds the audio tower's ``self_attn.(q|k|v|out)_proj``, ``fc1`` and ``fc2``
  (this makes the encoder trainable, so its outputs can no longer be cached);
* any other string is a regex that must match whole module names (peft's ``re.fullmatch``);
  a list names module-name suffixes (peft's list semantics: ``["q_proj"]`` also hits the tower).

The projector is made trainable with peft's ``modules_to_save=[<the family's projector>]``
(``multi_modal_projector`` on Qwen2-Audio, ``audio_tower.proj`` on Qwen2.5-Omni; peft matches it as
a module-name suffix and keeps a trainable copy that is saved with the adapter).
``apply_lora`` returns the resolved module names; record them in run manifests and adapter cards,
because key renames across transformers versions silently break adapters (§2).
"""
from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from llmfair.errors import ConfigError
from llmfair.speechllm.backbones.base import LLM_TARGETS, LORA_PRESET_NAMES
from llmfair.speechllm.backbones.base import WHISPER_AUDIO_TARGETS as AUDIO_TARGETS

logger = logging.getLogger(__name__)

TARGET_PRESETS: dict[str, str] = {
    "llm": LLM_TARGETS,
    "llm+audio": f"({LLM_TARGETS})|({AUDIO_TARGETS})",
}
"""Qwen2-Audio's presets (each family's are ``get_backbone(family).target_presets``, same names)."""
PROJECTOR_MODULE = "multi_modal_projector"
"""Qwen2-Audio's projector (each family's is ``SpeechBackbone.projector_module``)."""
BIAS_CHOICES = ("none", "all", "lora_only")


@dataclass
class LoraOptions:
    """LoRA hyper-parameters and where the adapters go (Hu et al., 2021, "LoRA", eq. 3:
    h = W0 x + (alpha / r) B A x)."""

    r: int = field(default=8, metadata={"help": "LoRA rank r"})
    alpha: float = field(default=16, metadata={"help": "LoRA scaling alpha (the update is scaled by alpha / r)"})
    dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA branch input"})
    targets: Any = field(
        default="llm",
        metadata={"help": "'llm' (language-model attention + MLP projections), 'llm+audio' (adds the audio "
                          "tower's attention and MLP), a regex over full module names, or a list of name suffixes"},
    )
    train_projector: bool = field(
        default=False, metadata={"help": "train the audio->text projector fully (peft modules_to_save)"})
    bias: str = field(default="none", metadata={"help": "which biases to train: none, all, lora_only"})

    def __post_init__(self) -> None:
        if not isinstance(self.r, int) or self.r < 1:
            raise ConfigError(f"lora.r must be a positive integer, got {self.r!r}")
        if not self.alpha > 0:
            raise ConfigError(f"lora.alpha must be positive, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout!r}")
        if self.bias not in BIAS_CHOICES:
            raise ConfigError(f"lora.bias must be one of {list(BIAS_CHOICES)}, got {self.bias!r}")
        if isinstance(self.targets, str):
            if self.targets not in LORA_PRESET_NAMES:
                try:
                    re.compile(self.targets)
                except re.error as exc:
                    raise ConfigError(f"lora.targets {self.targets!r} is neither a preset {list(LORA_PRESET_NAMES)} "
                                      f"nor a valid regex: {exc}") from None
        elif isinstance(self.targets, Sequence) and self.targets and all(isinstance(t, str) for t in self.targets):
            self.targets = list(self.targets)
        else:
            raise ConfigError(f"lora.targets must be a preset, a regex or a non-empty list of names, got {self.targets!r}")

    def target_modules(self, presets: dict[str, str] | None = None) -> str | list[str]:
        """What peft's ``LoraConfig.target_modules`` receives (a regex or a list of suffixes);
        ``presets`` is the family's (default: Qwen2-Audio's)."""
        if isinstance(self.targets, str):
            return (presets or TARGET_PRESETS).get(self.targets, self.targets)
        return list(self.targets)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lora_config(options: LoraOptions, backbone=None):
    """The peft ``LoraConfig`` for ``options`` on a model of ``backbone``'s family (default Qwen2-Audio)."""
    from peft import LoraConfig

    presets = backbone.target_presets if backbone is not None else TARGET_PRESETS
    projector = backbone.projector_module if backbone is not None else PROJECTOR_MODULE
    return LoraConfig(
        r=options.r, lora_alpha=options.alpha, lora_dropout=options.dropout, bias=options.bias,
        target_modules=options.target_modules(presets),
        modules_to_save=[projector] if options.train_projector else None,
    )


def lora_module_names(model) -> list[str]:
    """Names (relative to the base model, e.g. ``model.language_model.layers.0.self_attn.q_proj``)
    of the modules that carry LoRA adapters, in module order."""
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return [name for name, module in base.named_modules() if isinstance(module, LoraLayer)]


def apply_lora(model, options: LoraOptions | None = None):
    """Wrap ``model`` with LoRA adapters; returns ``(peft_model, resolved_target_names)``. The
    presets and the projector are those of the model's family (``backbones.backbone_of``).

    Every base weight is frozen; LoRA matrices (and the projector with ``train_projector``) train.

    Raises:
        ConfigError: the targets match no module of the model, or the model is of no registered family.
    """
    from peft import get_peft_model

    from llmfair.speechllm.backbones import backbone_of

    options = options or LoraOptions()
    backbone = backbone_of(model)
    try:
        peft_model = get_peft_model(model, lora_config(options, backbone))
    except ValueError as exc:
        raise ConfigError(f"lora.targets {options.targets!r} match no module of the model ({exc})") from None
    names = lora_module_names(peft_model)
    if not names:
        raise ConfigError(f"lora.targets {options.targets!r} match no module of the model")
    trainable, total = count_trainable(peft_model)
    logger.info("LoRA on %d modules (targets %r, projector %s): %d of %d parameters trainable (%.3f%%)",
                len(names), options.targets, "trained" if options.train_projector else "frozen",
                trainable, total, 100.0 * trainable / max(total, 1))
    return peft_model, names


def count_trainable(model) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (4-bit packed weights count their stored elements)."""
    trainable = total = 0
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total
