"""The run configuration of a speech-LLM recipe: one YAML file, validated section by section.

Every section is a dataclass; an unknown key anywhere raises ConfigError naming the key, the
section and the file. ``training`` holds ``FairTrainingArguments`` fields (Hugging Face names).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llmfair.data.labels import LANGUAGES, MODALITIES
from llmfair.errors import ConfigError
from llmfair.options import dataclass_from_mapping


class RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-4`` as a float.

    PyYAML follows YAML 1.1, whose floats need a dot (``1.0e-4``): ``learning_rate: 1e-4`` or
    ``--set training.learning_rate=1e-4`` would arrive as the string ``"1e-4"`` and fail deep inside
    the optimiser. YAML 1.2 (and every other YAML reader) takes it as a number.
    """


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


@dataclass
class ModelSection:
    """Which speech LLM and how to load it."""

    name_or_path: str = field(default="Qwen/Qwen2-Audio-7B-Instruct", metadata={"help": "hub id, local directory, or 'tiny'"})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 on CUDA, fp32 on CPU), bfloat16, float32"})
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa, eager or flash_attention_2"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "trade speed for memory"})
    quantization: str | None = field(default=None, metadata={"help": "None or 4bit (QLoRA; CUDA + bitsandbytes)"})


@dataclass
class DataSection:
    """Where the corpus is and which part of it a run sees."""

    root: str = field(default="", metadata={"help": "MELD-ST directory (the built-in corpus uses the same layout)"})
    synth_seed: int | None = field(default=None, metadata={"help": "generate the built-in corpus into root first (seed)"})
    synth_options: dict = field(default_factory=dict, metadata={"help": "SynthConfig knobs for the built-in corpus"})
    path_template: str = field(default="{pair}/{LANGUAGE}/{split}/{split}_{id}.wav", metadata={"help": "audio path template"})
    gender_table: str | None = field(default=None, metadata={"help": "CSV speaker,gender overriding the packaged table"})
    languages: list = field(default_factory=lambda: list(LANGUAGES), metadata={"help": "eng, deu, jpn"})
    modalities: list = field(default_factory=lambda: ["audio"], metadata={"help": "audio and/or audio_text"})
    train_split: str = "train"
    eval_split: str = "dev"
    predict_split: str = "test"
    max_train_examples: int | None = field(default=None, metadata={"help": "cap (seeded subsample) for smoke runs"})

    def __post_init__(self) -> None:
        bad = [x for x in self.languages if x not in LANGUAGES] + [x for x in self.modalities if x not in MODALITIES]
        if bad:
            raise ConfigError(f"data: unknown language/modality {bad}; languages {list(LANGUAGES)}, modalities {list(MODALITIES)}")


@dataclass
class ObjectiveSection:
    name: str = field(default="erm", metadata={"help": "a registered objective (llmfair.objectives.OBJECTIVES)"})
    options: dict = field(default_factory=dict, metadata={"help": "the objective's options"})
    group_keys: list = field(default_factory=lambda: ["language", "modality", "gender"], metadata={"help": "group attributes"})
    sampler: str = field(default="random", metadata={"help": "random or group_covering"})

    def __post_init__(self) -> None:
        if self.sampler not in ("random", "group_covering"):
            raise ConfigError(f"objective.sampler={self.sampler!r}; expected random or group_covering")


SECTIONS: dict[str, type] = {"model": ModelSection, "data": DataSection, "objective": ObjectiveSection}
FREE_SECTIONS = ("lora", "prompts", "verbalizer", "training", "encoder_cache")


@dataclass
class RunConfig:
    """A whole recipe. ``lora``, ``prompts``, ``verbalizer`` and ``training`` are validated by the
    components that own them (LoraOptions, PromptTemplate, Verbalizer, FairTrainingArguments)."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    objective: ObjectiveSection = field(default_factory=ObjectiveSection)
    lora: dict = field(default_factory=dict)
    prompts: dict = field(default_factory=dict)
    verbalizer: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    encoder_cache: bool = True
    source: str = "<dict>"

    @classmethod
    def from_mapping(cls, values: dict[str, Any], source: str = "<dict>") -> "RunConfig":
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: a recipe must be a mapping of sections, got {type(values).__name__}")
        unknown = sorted(k for k in values if k not in SECTIONS and k not in FREE_SECTIONS)
        if unknown:
            raise ConfigError(f"{source}: unknown section(s) {unknown}; known: {sorted([*SECTIONS, *FREE_SECTIONS])}")
        kwargs: dict[str, Any] = {"source": source}
        for name, section in SECTIONS.items():
            kwargs[name] = dataclass_from_mapping(section, values.get(name) or {}, source=f"{source} [{name}]")
        for name in FREE_SECTIONS:
            if name in values and values[name] is not None:
                kwargs[name] = values[name]
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> "RunConfig":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe not found: {path}")
        try:
            values = yaml.load(path.read_text(encoding="utf-8"), Loader=RecipeLoader) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        for dotted, value in (overrides or {}).items():
            section, _, key = dotted.partition(".")
            if not key:
                raise ConfigError(f"override {dotted!r} must be section.key=value")
            values.setdefault(section, {})
            if not isinstance(values[section], dict):
                raise ConfigError(f"override {dotted!r}: section {section!r} is not a mapping in {path}")
            values[section][key] = value
        return cls.from_mapping(values, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("source")
        return out


def parse_override(text: str) -> tuple[str, Any]:
    """``section.key=value`` with the value parsed as YAML (numbers, booleans, lists; ``1e-4`` is a float)."""
    key, sep, value = text.partition("=")
    if not sep:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    return key.strip(), yaml.load(value, Loader=RecipeLoader)
