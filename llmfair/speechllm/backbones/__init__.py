"""Speech-LLM backbones: one module per model family, registered by name.

``get_backbone("qwen2_5_omni")`` returns a family's :class:`SpeechBackbone`;
:func:`backbone_for_model_type` and :func:`backbone_of` find it from a checkpoint's
``config.model_type`` or a loaded model, :func:`resolve_family` checks a recipe's
``model.family`` against the checkpoint. The interface and what each family implements:
``backbones/base.py`` and docs/backbones.md.

Adding a family is one module here (its class carries ``@register_backbone("<name>")``; every
module not starting with ``_`` is imported, so registered, by this package), one row of the family
table in ``tests/test_backbones.py`` and its name in ``training/recipe_schema.py``'s choices for
``model.family``.
"""
import importlib
import pkgutil

from llmfair.speechllm.backbones.base import (
    BACKBONES,
    LORA_PRESET_NAMES,
    SAMPLING_RATE,
    SpeechBackbone,
    backbone_for_model_type,
    backbone_of,
    family_names,
    get_backbone,
    position_ids_from_mask,
    register_backbone,
    resolve_family,
)


def _family_modules() -> list[str]:
    return sorted(info.name for info in pkgutil.iter_modules(__path__)
                  if not info.name.startswith("_") and info.name != "base")


for _name in _family_modules():
    importlib.import_module(f"{__name__}.{_name}")  # each registers its family
del _name

__all__ = [
    "BACKBONES", "LORA_PRESET_NAMES", "SAMPLING_RATE", "SpeechBackbone", "backbone_for_model_type", "backbone_of",
    "family_names", "get_backbone", "position_ids_from_mask", "register_backbone", "resolve_family",
]
