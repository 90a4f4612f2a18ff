"""One schema for every value of a speech-LLM recipe: declared types and ranges, checked when the
recipe loads.

The YAML file and ``--set`` overrides meet in one mapping before anything reads it, so both give
the same message: the file, the section, the key, the value and what is expected. Every problem
is collected (not only the first), so ``llmfair check`` can list them all; loading a recipe raises
:class:`RecipeError` carrying the list.

Types come from the owners' dataclasses (``ModelSection``, ``LoraOptions``,
``FairTrainingArguments``, the objective's options); ranges are declared here, in :data:`BOUNDS`,
because the Hugging Face arguments do not declare theirs (``num_train_epochs: -1`` is accepted
there and trains zero steps).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping

from llmfair.errors import ConfigError
from llmfair.options import scalar_type_problems


class RecipeError(ConfigError):
    """A recipe with one or more invalid values; ``problems`` holds one line per value."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        head = self.problems[0] if len(self.problems) == 1 else (
            f"{len(self.problems)} problems in the recipe: " + "; ".join(self.problems))
        super().__init__(head)


@dataclass(frozen=True)
class Bound:
    """A numeric range: ``low``/``high`` (None: unbounded), open or closed, plus special values
    that are allowed outside it (``max_steps: -1`` means "use epochs")."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    also: tuple = ()
    null: bool = False

    def admits(self, value: Any) -> bool:
        if value is None:
            return self.null
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return True  # the type check names it
        if value in self.also:
            return True
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            text = f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        elif self.low is not None:
            text = f"{'>' if self.low_open else '>='} {self.low:g}"
        else:
            text = f"{'<' if self.high_open else '<='} {self.high:g}"
        extra = [repr(v) for v in self.also] + (["null"] if self.null else [])
        return "a number " + text + (f" (or {' or '.join(extra)})" if extra else "")


POSITIVE = Bound(low=0, low_open=True)
AT_LEAST_ONE = Bound(low=1)
NON_NEGATIVE = Bound(low=0)
UNIT = Bound(low=0, high=1)

BOUNDS: dict[str, Bound] = {
    "training.learning_rate": POSITIVE,
    "training.num_train_epochs": POSITIVE,
    "training.max_steps": Bound(low=1, also=(-1,)),
    "training.per_device_train_batch_size": AT_LEAST_ONE,
    "training.per_device_eval_batch_size": AT_LEAST_ONE,
    "training.gradient_accumulation_steps": AT_LEAST_ONE,
    "training.seed": NON_NEGATIVE,
    "training.data_seed": Bound(low=0, null=True),
    "training.warmup_ratio": UNIT,
    "training.warmup_steps": NON_NEGATIVE,
    "training.weight_decay": NON_NEGATIVE,
    "training.max_grad_norm": NON_NEGATIVE,
    "training.adam_beta1": Bound(low=0, high=1, high_open=True),
    "training.adam_beta2": Bound(low=0, high=1, high_open=True),
    "training.adam_epsilon": POSITIVE,
    "training.logging_steps": POSITIVE,
    "training.save_steps": POSITIVE,
    "training.eval_steps": Bound(low=0, low_open=True, null=True),
    "training.save_total_limit": Bound(low=1, null=True),
    "training.dataloader_num_workers": NON_NEGATIVE,
    "data.max_train_examples": Bound(low=1, null=True),
    "lora.r": AT_LEAST_ONE,
    "lora.alpha": POSITIVE,
    "lora.dropout": Bound(low=0, high=1, high_open=True),
}

MODEL_FAMILIES = ("qwen2_audio", "qwen2_5_omni", "voxtral")
"""The registered speech-LLM backbone families (``llmfair.speechllm.backbones``; tests/test_backbones.py
checks that this list and the registry agree)."""

CHOICES: dict[str, tuple] = {
    "model.family": (None, *MODEL_FAMILIES),
    "model.dtype": ("auto", "bfloat16", "float32", "float16"),
    "model.attn_implementation": ("sdpa", "eager", "flash_attention_2"),
    "model.quantization": (None, "4bit"),
    "objective.sampler": ("random", "group_covering"),
    "verbalizer.answer_loss": ("verbalizer", "lm"),
}

VERBALIZER_KEYS = ("words", "answer_loss")
TRAINING_SET_BY_LLMFAIR = ("output_dir",)


def _unknown(values: Mapping[str, Any], known, where: str, owner: str) -> list[str]:
    unknown = sorted(k for k in values if k not in known)
    if not unknown:
        return []
    if len(known) <= 20:
        return [f"{where}: unknown key(s) {unknown} for {owner}; known: {sorted(known)}"]
    import difflib  # a long list of known keys (the Trainer's arguments) helps less than the nearest ones

    near = sorted({m for k in unknown for m in difflib.get_close_matches(k, known, n=3)})
    hint = f"; did you mean {near}?" if near else f"; see the fields of {owner}"
    return [f"{where}: unknown key(s) {unknown} for {owner}{hint}"]


def _value_problems(section: str, values: Mapping[str, Any], where: str) -> list[str]:
    problems = []
    for key, value in values.items():
        dotted = f"{section}.{key}"
        bound = BOUNDS.get(dotted)
        if bound is not None and not bound.admits(value):
            problems.append(f"{where}: {key}={value!r}; expected {bound.describe()}")
        choices = CHOICES.get(dotted)
        if choices is not None and value not in choices:
            problems.append(f"{where}: {key}={value!r}; expected one of {list(choices)}")
    return problems


def _init_fields(cls: type) -> set[str]:
    return {f.name for f in fields(cls) if f.init}


def _typed_section(values: Any, cls: type, section: str, source: str) -> list[str]:
    """Unknown keys, wrong scalar types and out-of-range values of one dataclass-backed section."""
    where = f"{source} [{section}]"
    if values is None:
        return []
    if not isinstance(values, Mapping):
        return [f"{where}: expected a mapping of keys, got {values!r}"]
    problems = _unknown(values, _init_fields(cls), where, cls.__name__)
    problems += scalar_type_problems(cls, values, where)
    typed_bad = {p.split(": ", 1)[1].split("=", 1)[0] for p in problems}
    problems += _value_problems(section, {k: v for k, v in values.items() if k not in typed_bad}, where)
    return problems


def _construct(build: Callable[[], Any], where: str) -> list[str]:
    """The owner's own checks (``__post_init__``), once the generic ones passed."""
    try:
        build()
    except ConfigError as exc:
        text = str(exc)
        return [text if text.startswith(where.split(" [")[0]) else f"{where}: {text}"]
    except (TypeError, ValueError) as exc:
        return [f"{where}: {exc}"]
    return []


def recipe_problems(values: Mapping[str, Any], source: str, sections: Mapping[str, type]) -> list[str]:
    """Every problem of a recipe mapping, one line each (an empty list: the recipe is valid).

    ``sections`` maps the dataclass-backed section names (model, data, objective) to their classes;
    ``lora``, ``training``, ``verbalizer`` and ``prompts`` are checked against their owners here.
    """
    from llmfair.options import dataclass_from_mapping

    problems: list[str] = []
    for name, cls in sections.items():
        section_problems = _typed_section(values.get(name) or {}, cls, name, source)
        if not section_problems:
            section_problems = _construct(
                lambda cls=cls, name=name: dataclass_from_mapping(cls, values.get(name) or {},
                                                                  source=f"{source} [{name}]"),
                f"{source} [{name}]")
        problems += section_problems

    lora = values.get("lora")
    if lora is not None:
        from llmfair.speechllm.lora import LoraOptions

        lora_problems = _typed_section(lora, LoraOptions, "lora", source)
        if not lora_problems:
            lora_problems = _construct(lambda: dataclass_from_mapping(LoraOptions, lora, source=f"{source} [lora]"),
                                       f"{source} [lora]")
        problems += lora_problems

    training = values.get("training")
    if training is not None:
        from llmfair.training.trainer import FairTrainingArguments

        where = f"{source} [training]"
        if isinstance(training, Mapping):
            problems += [f"{where}: {key!r} is set by llmfair from the run directory"
                         for key in TRAINING_SET_BY_LLMFAIR if key in training]
            training = {k: v for k, v in training.items() if k not in TRAINING_SET_BY_LLMFAIR}
        problems += _typed_section(training, FairTrainingArguments, "training", source)

    verbalizer = values.get("verbalizer")
    if verbalizer is not None:
        where = f"{source} [verbalizer]"
        if not isinstance(verbalizer, Mapping):
            problems.append(f"{where}: expected a mapping of keys, got {verbalizer!r}")
        else:
            problems += _unknown(verbalizer, VERBALIZER_KEYS, where, "the verbalizer")
            problems += _value_problems("verbalizer", {k: v for k, v in verbalizer.items() if k == "answer_loss"},
                                        where)
            words = verbalizer.get("words")
            if words is not None and not (isinstance(words, (list, Mapping))):
                problems.append(f"{where}: words={words!r}; expected a list of label words or a mapping "
                                "class -> word")

    prompts = values.get("prompts")
    if prompts is not None:
        from llmfair.speechllm.prompts import PromptTemplate

        where = f"{source} [prompts]"
        if not isinstance(prompts, Mapping):
            problems.append(f"{where}: expected a mapping of keys, got {prompts!r}")
        else:
            problems += _construct(lambda: PromptTemplate.from_dict(prompts, source=where), where)

    cache = values.get("encoder_cache")
    if cache is not None and not isinstance(cache, bool):
        problems.append(f"{source}: encoder_cache={cache!r}; expected true or false")
    return problems
