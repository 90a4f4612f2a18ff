"""The shipped accelerate and DeepSpeed configs load with the libraries' own parsers."""
from __future__ import annotations

from pathlib import Path

import pytest
from transformers import TrainingArguments

from llmfair.errors import ConfigError
from llmfair.training.deepspeed import deepspeed_config_for

ROOT = Path(__file__).resolve().parents[1]
DS_JSONS = sorted((ROOT / "recipes" / "deepspeed").glob("zero*.json"))
ACCELERATE = [ROOT / "accelerate_config.yaml", *sorted((ROOT / "recipes" / "accelerate").glob("*.yaml"))]


def test_all_configs_are_shipped() -> None:
    assert [p.name for p in DS_JSONS] == ["zero2.json", "zero3.json"]
    assert {p.name for p in ACCELERATE} == {"accelerate_config.yaml", "multi_gpu.yaml", "zero2.yaml", "zero3.yaml", "qlora.yaml"}


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.name)
def test_accelerate_configs_parse(path: Path) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    assert config.num_machines == 1
    if "zero" in path.name:
        ds_file = ROOT / config.deepspeed_config["deepspeed_config_file"]
        assert ds_file.is_file() and ds_file.name == path.stem + ".json"


@pytest.mark.parametrize("path", DS_JSONS, ids=lambda p: p.name)
def test_deepspeed_parser_accepts_shipped_and_filled_configs(path: Path, tmp_path: Path) -> None:
    from deepspeed.runtime.config import DeepSpeedConfig

    stage = int(path.stem[-1])
    assert DeepSpeedConfig(str(path)).zero_optimization_stage == stage
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=3, gradient_accumulation_steps=4,
                             max_grad_norm=0.5, use_cpu=True, report_to=[])
    filled = deepspeed_config_for(path, args)
    parsed = DeepSpeedConfig(filled)
    assert (parsed.train_micro_batch_size_per_gpu, parsed.gradient_accumulation_steps) == (3, 4)
    assert parsed.train_batch_size == 12 and parsed.gradient_clipping == 0.5
    assert filled["bf16"]["enabled"] is False  # follows args.bf16, so HF's consistency check passes


def test_auto_values_refused(tmp_path: Path) -> None:
    bad = tmp_path / "ds.json"
    bad.write_text('{"train_micro_batch_size_per_gpu": "auto", "zero_optimization": {"stage": 2}}')
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    with pytest.raises(ConfigError, match=r"\['train_micro_batch_size_per_gpu'\] are 'auto'"):
        deepspeed_config_for(bad, args)
    with pytest.raises(ConfigError, match="not found"):
        deepspeed_config_for(tmp_path / "nope.json", args)
