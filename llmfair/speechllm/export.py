"""Publish a run: a standard peft adapter, optionally a merged checkpoint, and a model card.

``export_run(run_dir, out_dir, merge=False)`` writes::

    OUT/adapter_config.json, adapter_model.safetensors   plain ``PeftModel.from_pretrained(base, OUT)``
    OUT/merged/                                          with ``merge``: plain ``from_pretrained(OUT/merged)``
    OUT/README.md                                        the model card (recipe, objective, per-slice results)
    OUT/llmfair_run.json                                 run config + manifest, for provenance

Before anything is published the adapter is loaded back onto a fresh base model and must change
its logits on a fixed probe: an adapter that loads as a silent no-op (key renames across
transformers versions, QWEN2AUDIO.md §2) fails loudly instead of shipping.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmfair._atomic import atomic_directory, check_replaceable, write_json, write_text
from llmfair.errors import ConfigError
from llmfair.training.config import RunConfig

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
TESTED_STACKS = ("transformers + peft (this package's versions); vLLM is known not to serve Qwen2-Audio adapters on the "
                 "tower/projector and was not tested.")


def probe_records(n: int = 2, seconds: float = 1.5, seed: int = 0) -> list[dict[str, Any]]:
    """Deterministic noise clips used to check that an adapter changes the model."""
    rng = np.random.default_rng(seed)
    return [{"audio": (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32), "text": "probe",
             "language": "eng", "modality": "audio", "emotion": 0} for _ in range(n)]


@torch.no_grad()
def probe_logits(classifier, collator, records) -> torch.Tensor:
    classifier.eval()
    return classifier(**collator(records))["logits"].float()


def _model_card(config: RunConfig, manifest: dict[str, Any], summary: dict[str, Any] | None, merged: bool,
                backbone=None) -> str:
    from llmfair.report.tables import summary_markdown

    if backbone is None:
        from llmfair.speechllm.backbones import get_backbone

        backbone = get_backbone(config.model.family or "qwen2_audio")
    objective = manifest.get("objective", {})
    name = objective.get("name", config.objective.name)
    reconstructed = objective.get("reconstructed", False)
    lines = [
        "---", "library_name: peft", f"base_model: {config.model.name_or_path}", "tags: [llmfair, speech-emotion-recognition, fairness, lora]", "---", "",
        f"# {config.model.name_or_path} + LoRA, objective `{name}` (llmfair)", "",
        f"Backbone family: `{backbone.name}` ({backbone.title}).", "",
        "Speech emotion recognition by a speech LLM read through a verbalizer (the logits of each "
        "emotion word's first token at the answer position), LoRA-tuned with llmfair.", "",
        "## Objective", "",
    ]
    if name == "minmaxgap":
        lines += ["ERM-MinMaxGAP (Pang, Gao, Kawahara & Chen, arXiv 2603.21050). **Reconstruction**: the paper's "
                  "method section is not available; llmfair implements ERM + λ_t · max over (language × modality) "
                  "cells of |mean loss(male) − mean loss(female)| with the weight rule and side in the options "
                  "below (llmfair METHODS §2.16). llmfair's sweep on its built-in corpus found no setting that "
                  "shrinks the gap beyond its paired interval against ERM (docs/minmaxgap.md): compare this "
                  "adapter with an ERM run on your data (`llmfair benchmark`) before claiming a reduction.", ""]
    elif reconstructed:
        lines += [f"`{name}` is a **reconstruction**: its source does not define it fully.", ""]
    else:
        lines += [f"`{name}` (see llmfair's documentation of the objective).", ""]
    lines += ["Options: `" + json.dumps(config.objective.options) + "`; sampler: " + config.objective.sampler, "",
              "## Training recipe", "",
              f"- data: {config.data.root} — languages {config.data.languages}, modalities {config.data.modalities}",
              f"- LoRA: `{json.dumps(config.lora)}`; target modules ({len(manifest.get('lora_target_modules', []))}): "
              + ", ".join(f"`{t}`" for t in manifest.get("lora_target_modules", [])[:6])
              + (" …" if len(manifest.get("lora_target_modules", [])) > 6 else ""),
              f"- training: `{json.dumps(config.training)}`",
              f"- steps: {manifest.get('global_steps')}, seed {manifest.get('seed')}, git {manifest.get('git_commit')}",
              "- versions: " + ", ".join(f"{k} {v}" for k, v in manifest.get("packages", {}).items() if v), "",
              "## Usage", "", "```python"]
    lines += backbone.usage_lines(config.model.name_or_path)
    lines += ["```", ""]
    if merged:
        lines += ["A merged checkpoint (adapter folded into the base weights) is in `merged/`; load it with "
                  f"`{backbone.model_class_name}.from_pretrained('THIS_DIRECTORY/merged')`.", ""]
    lines += [f"Serving stacks tested: {TESTED_STACKS}", ""]
    if summary is not None:
        body = summary_markdown(summary, title="Per-slice results (test split)")
        lines += ["## Results", "", body.split("\n", 1)[1] if body.startswith("#") else body]
    else:
        lines += ["## Results", "", "No test predictions were found in the run directory.", ""]
    return "\n".join(lines) + "\n"


def export_run(run_dir: str | Path, out_dir: str | Path, *, merge: bool = False, overwrite: bool = False,
               n_resamples: int = 1000) -> Path:
    """Export a finished run (see the module docstring). Returns ``out_dir``."""
    from llmfair.speechllm.run import ADAPTER_DIR, CONFIG_FILE, build_classifier

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    adapter = run_dir / ADAPTER_DIR
    if not (run_dir / CONFIG_FILE).is_file() or not all((adapter / f).is_file() for f in ADAPTER_FILES):
        raise ConfigError(f"{run_dir} is not a finished llmfair run (needs {CONFIG_FILE} and {ADAPTER_DIR}/ with "
                          f"{', '.join(ADAPTER_FILES)})")
    check_replaceable(out_dir, what="export", overwrite=overwrite)
    config = RunConfig.from_yaml(run_dir / CONFIG_FILE)
    if merge and config.model.quantization:
        raise ConfigError("cannot merge a QLoRA adapter into 4-bit weights; export the adapter and merge it onto a "
                          "bf16 base (QWEN2AUDIO.md §11)")
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8")) if (run_dir / "manifest.json").is_file() else {}

    # the adapter must change the model: compare a fresh base with base + adapter on a probe
    from llmfair.speechllm.backbones import backbone_of

    classifier, processor, collator, _ = build_classifier(config, adapter=adapter, trainable=False)
    backbone = backbone_of(classifier.model)
    records = probe_records()
    with_adapter = probe_logits(classifier, collator, records)
    with classifier.model.disable_adapter():
        without = probe_logits(classifier, collator, records)
    if torch.allclose(with_adapter, without, atol=1e-7):
        raise ConfigError(f"the adapter in {adapter} does not change the model's logits on a probe: it loaded as a "
                          "no-op (module names of this transformers/peft version do not match the adapter?)")

    summary = None
    predictions = run_dir / f"predictions_{config.data.predict_split}.csv"
    if predictions.is_file():
        from llmfair.metrics import summary_dict
        from llmfair.predictions import read_predictions

        summary = summary_dict(read_predictions(predictions), n_resamples=n_resamples)

    with atomic_directory(out_dir, overwrite=True, command="export") as tmp:
        for name in ADAPTER_FILES:
            shutil.copy2(adapter / name, tmp / name)
        if merge:
            merged = classifier.model.merge_and_unload()
            merged.save_pretrained(str(tmp / "merged"), safe_serialization=True)
            backbone.save_processor(processor, tmp / "merged")
        write_text(tmp / "README.md", _model_card(config, manifest, summary, merge, backbone))
        write_json(tmp / "llmfair_run.json", {"config": config.to_dict(), "manifest": manifest,
                                              "probe_max_logit_change": float((with_adapter - without).abs().max()),
                                              "results": summary})
    return out_dir
