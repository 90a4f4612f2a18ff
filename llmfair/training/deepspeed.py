"""DeepSpeed configs: the shipped JSONs hold explicit values (DeepSpeed's own parser rejects
Hugging Face's ``"auto"``); the values the Trainer also owns are filled from the run's
``TrainingArguments`` so the two can never disagree."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmfair.errors import ConfigError


def deepspeed_config_for(path: str | Path, args: Any) -> dict[str, Any]:
    """Load ``path`` and set micro-batch size, accumulation, clipping and precision from ``args``
    (a ``TrainingArguments``). The result is passed as ``TrainingArguments(deepspeed=dict)``."""
    path = Path(path)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"DeepSpeed config not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"DeepSpeed config {path} is not valid JSON: {exc}") from None
    autos = [k for k, v in config.items() if v == "auto"]
    if autos:
        raise ConfigError(f"{path}: keys {autos} are 'auto'; llmfair fills them itself — remove them")
    config["train_micro_batch_size_per_gpu"] = int(args.per_device_train_batch_size)
    config["gradient_accumulation_steps"] = int(args.gradient_accumulation_steps)
    config["gradient_clipping"] = float(args.max_grad_norm)
    config.pop("train_batch_size", None)  # derived by DeepSpeed from the two above and the world size
    config.setdefault("bf16", {})["enabled"] = bool(args.bf16)
    config.setdefault("fp16", {})["enabled"] = bool(args.fp16)
    return config
