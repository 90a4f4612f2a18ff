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
from llmfair.training.recipe_schema import RecipeError, recipe_problems


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
    family: str | None = field(
        default=None, metadata={"help": "backbone family (qwen2_audio, qwen2_5_omni, ...); null: the checkpoint's "
                                        "model_type decides, and 'tiny' is Qwen2-Audio"})
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
    train_imbalance: dict | None = field(
        default=None, metadata={"help": "make train gender-imbalanced in one language: {language, ratio, majority, seed} "
                                        "(llmfair.data.imbalance.GenderImbalance)"})

    def __post_init__(self) -> None:
        if self.train_imbalance is not None:
            self.imbalance()  # validates keys and values at load time
        bad = [x for x in self.languages if x not in LANGUAGES] + [x for x in self.modalities if x not in MODALITIES]
        if bad:
            raise ConfigError(f"unknown language/modality {bad}; languages {list(LANGUAGES)}, modalities {list(MODALITIES)}")

    def imbalance(self):
        """The :class:`~llmfair.data.imbalance.GenderImbalance` of ``train_imbalance`` (None without one)."""
        from llmfair.data.imbalance import GenderImbalance

        if self.train_imbalance is None:
            return None
        if not isinstance(self.train_imbalance, dict):
            raise ConfigError(f"data.train_imbalance must be a mapping (language, ratio, majority, seed); got "
                              f"{self.train_imbalance!r}")
        return dataclass_from_mapping(GenderImbalance, self.train_imbalance, source="data.train_imbalance")


@dataclass
class ObjectiveSection:
    name: str = field(default="erm", metadata={"help": "a registered objective (llmfair.objectives.OBJECTIVES)"})
    options: dict = field(default_factory=dict, metadata={"help": "the objective's options"})
    group_keys: list = field(default_factory=lambda: ["language", "modality", "gender"], metadata={"help": "group attributes"})
    sampler: str = field(default="random", metadata={"help": "random or group_covering"})

    def __post_init__(self) -> None:
        if self.sampler not in ("random", "group_covering"):
            raise ConfigError(f"objective.sampler={self.sampler!r}; expected random or group_covering")
        if not isinstance(self.options, dict):
            raise ConfigError(f"objective.options must be a mapping of the objective's options; got {self.options!r}")
        self.resolved_options()  # unknown objective, unknown option keys and bad values fail at load time

    def resolved_options(self) -> dict[str, Any]:
        """Every option of the objective with its value (defaults filled in), as a plain dict."""
        from llmfair.objectives import OBJECTIVES

        if self.name not in OBJECTIVES:
            raise ConfigError(f"objective.name={self.name!r} is not a registered objective; registered: {sorted(OBJECTIVES)}")
        cls = OBJECTIVES[self.name].options_class
        options = dataclass_from_mapping(cls, dict(self.options), source=f"objective.options ({self.name})")
        return dataclasses.asdict(options) if dataclasses.is_dataclass(options) else dict(self.options)


SECTIONS: dict[str, type] = {"model": ModelSection, "data": DataSection, "objective": ObjectiveSection}
FREE_SECTIONS = ("lora", "prompts", "verbalizer", "training", "encoder_cache")
SELECTION_SECTION = "selection"


@dataclass
class RunConfig:
    """A whole recipe. ``lora``, ``prompts``, ``verbalizer`` and ``training`` are validated by the
    components that own them (LoraOptions, PromptTemplate, Verbalizer, FairTrainingArguments);
    ``selection`` (model selection on the dev split) is validated here and kept with its defaults
    filled in."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    objective: ObjectiveSection = field(default_factory=ObjectiveSection)
    lora: dict = field(default_factory=dict)
    prompts: dict = field(default_factory=dict)
    verbalizer: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    encoder_cache: bool = True
    selection: dict = field(
        default_factory=dict, metadata={"help": "model selection on the dev split "
                                                "(llmfair.training.selection.SelectionOptions); {} keeps the last state"})
    source: str = "<dict>"

    @classmethod
    def from_mapping(cls, values: dict[str, Any], source: str = "<dict>") -> "RunConfig":
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: a recipe must be a mapping of sections, got {type(values).__name__}")
        known = [*SECTIONS, *FREE_SECTIONS, SELECTION_SECTION]
        unknown = sorted(k for k in values if k not in known)
        if unknown:
            raise RecipeError([f"{source}: unknown section(s) {unknown}; known: {sorted(known)}"])
        problems = recipe_problems(values, source, SECTIONS)
        if values.get(SELECTION_SECTION) is not None:
            try:
                _selection_options(values[SELECTION_SECTION], source)
            except ConfigError as exc:
                problems.append(str(exc))
        if problems:
            raise RecipeError(problems)
        kwargs: dict[str, Any] = {"source": source}
        for name, section in SECTIONS.items():
            kwargs[name] = dataclass_from_mapping(section, values.get(name) or {}, source=f"{source} [{name}]")
        for name in FREE_SECTIONS:
            if name in values and values[name] is not None:
                kwargs[name] = values[name]
        if values.get(SELECTION_SECTION) is not None:
            # stored resolved (defaults filled in), so config.yaml says which rule a run used
            options = _selection_options(values[SELECTION_SECTION], source)
            kwargs[SELECTION_SECTION] = dataclasses.asdict(options) if values[SELECTION_SECTION] else {}
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
        apply_overrides(values, overrides or {}, source=str(path))
        return cls.from_mapping(values, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("source")
        return out

    def selection_options(self):
        """The :class:`~llmfair.training.selection.SelectionOptions` of the ``selection`` section
        (criterion ``last`` when the section is empty)."""
        return _selection_options(self.selection or None, self.source)


def _selection_options(values: Any, source: str):
    """``selection`` validated as SelectionOptions whose figures the speech-LLM dev evaluation computes."""
    from llmfair.training.selection import SPEECH_GAP_FIGURES as GAP_FIGURES
    from llmfair.training.selection import SPEECH_SCORE_FIGURES as SCORE_FIGURES
    from llmfair.training.selection import SelectionOptions

    where = f"{source} [{SELECTION_SECTION}]"
    try:
        options = SelectionOptions.from_mapping(values, source=where)
    except ConfigError as exc:  # the options' own value checks name the file too
        text = str(exc)
        raise ConfigError(text if text.startswith(source) else f"{where}: {text}") from None
    for key, value, allowed in (("metric", options.metric, SCORE_FIGURES), ("gap", options.gap, GAP_FIGURES)):
        if value not in allowed:
            raise ConfigError(f"{where}: selection.{key}={value!r}; the dev evaluation computes {list(allowed)}")
    return options


def apply_overrides(values: dict[str, Any], overrides: dict[str, Any], *, source: str = "recipe") -> None:
    """Set ``section.key[.subkey...]=value`` overrides into a recipe mapping, in place.

    Any depth is reached (``objective.options.lambda_init``); missing intermediate mappings are
    created, and the keys themselves are validated afterwards with the rest of the recipe, so an
    unknown key is named exactly as in the YAML.
    """
    for dotted, value in overrides.items():
        parts = [p.strip() for p in dotted.split(".")]
        if not all(parts):
            raise ConfigError(f"override {dotted!r} must be section.key=value (or section.key.subkey=value, or a "
                              "top-level key such as encoder_cache=false)")
        node = values
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[:depth + 1])
                raise ConfigError(f"override {dotted!r}: {where!r} is {child!r} in {source}, not a mapping of keys")
            node = child
        node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``section.key[.subkey]=value`` with the value parsed as YAML (numbers, booleans, lists; ``1e-4`` is a float)."""
    key, sep, value = text.partition("=")
    if not sep:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    return key.strip(), yaml.load(value, Loader=RecipeLoader)
