"""The shipped accelerate and DeepSpeed configs load with the libraries' own parsers, and the
copies inside the package (:mod:`llmfair.launch_configs`, what an installed llmfair prints and
copies) are the repository's files byte for byte."""
from __future__ import annotations

from pathlib import Path

import pytest
from transformers import TrainingArguments

from llmfair import launch_configs
from llmfair.errors import ConfigError
from llmfair.training.deepspeed import deepspeed_config_for

ROOT = Path(__file__).resolve().parents[1]
DS_JSONS = sorted((ROOT / "recipes" / "deepspeed").glob("zero*.json"))
ACCELERATE = [ROOT / "accelerate_config.yaml", *sorted((ROOT / "recipes" / "accelerate").glob("*.yaml"))]
REPO_FILES = {p.relative_to(ROOT).as_posix(): p for p in (*ACCELERATE, *DS_JSONS)}
"""Every launch config of the repository by its name in :mod:`llmfair.launch_configs`."""


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


# ------------------------------------------------------------------ the copies inside the package
def test_packaged_configs_are_the_repository_files() -> None:
    packaged = Path(launch_configs.__file__).parent
    files = sorted(p.relative_to(packaged).as_posix() for p in packaged.rglob("*") if p.suffix in (".yaml", ".json"))
    assert files == sorted(launch_configs.names()) == sorted(REPO_FILES)
    for name, repo_file in REPO_FILES.items():
        assert launch_configs.path(name).read_bytes() == repo_file.read_bytes(), f"{name} drifted from {repo_file}"
        assert launch_configs.read_text(name) == repo_file.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", launch_configs.names())
def test_every_name_resolves(name: str) -> None:
    file_name = name.rsplit("/", 1)[-1]
    assert launch_configs.resolve(file_name) == launch_configs.resolve(name) == name
    assert launch_configs.path(file_name) == launch_configs.path(name) and launch_configs.path(name).is_file()
    assert launch_configs.DESCRIPTIONS[name]


def test_unknown_name_is_refused_listing_the_configs() -> None:
    with pytest.raises(ConfigError, match=r"'zero4\.yaml'.*recipes/accelerate/zero2\.yaml"):
        launch_configs.path("zero4.yaml")


def test_copy_to_writes_a_launchable_layout(tmp_path: Path) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    written = launch_configs.copy_to(tmp_path, ["zero3.yaml"])  # brings the DeepSpeed JSON it names
    assert [p.relative_to(tmp_path).as_posix() for p in written] == ["recipes/accelerate/zero3.yaml",
                                                                    "recipes/deepspeed/zero3.json"]
    config = load_config_from_file(str(written[0]))
    ds_file = tmp_path / config.deepspeed_config["deepspeed_config_file"]  # relative to the launch directory
    assert ds_file == written[1] and ds_file.read_bytes() == REPO_FILES["recipes/deepspeed/zero3.json"].read_bytes()

    assert len(launch_configs.copy_to(tmp_path)) == len(REPO_FILES)  # same content already there: fine
    written[1].write_text("{}")
    (tmp_path / "accelerate_config.yaml").unlink()
    with pytest.raises(ConfigError, match="zero3.json.*overwrite"):
        launch_configs.copy_to(tmp_path)
    assert written[1].read_text() == "{}" and not (tmp_path / "accelerate_config.yaml").exists()  # nothing written
    launch_configs.copy_to(tmp_path, overwrite=True)
    for name, repo_file in REPO_FILES.items():
        assert (tmp_path / name).read_bytes() == repo_file.read_bytes()


def test_cli_lists_prints_and_copies_the_shipped_configs(tmp_path, capsys):
    from llmfair import launch_configs
    from llmfair.cli import main

    assert main(["configs"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in launch_configs.names())
    assert main(["configs", "--show", "zero3.json"]) == 0
    assert capsys.readouterr().out == launch_configs.read_text("recipes/deepspeed/zero3.json")
    assert main(["configs", "--copy", str(tmp_path), "zero2.yaml"]) == 0
    assert (tmp_path / "recipes/deepspeed/zero2.json").read_bytes() == launch_configs.path(
        "recipes/deepspeed/zero2.json").read_bytes()
    assert main(["configs", "--show", "nope.yaml"]) == 1
    assert "nope.yaml" in capsys.readouterr().err
