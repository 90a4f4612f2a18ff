"""What a speech-LLM run reads before any model loads: the corpus (generated when the recipe asks
for the built-in one and may), the Examples of every split the run touches, and the Trainer's
arguments. ``llmfair train`` and ``llmfair check`` (:mod:`llmfair.check`) both read them from here,
so the checks see exactly what the run will see."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from llmfair.data.example import Example
from llmfair.errors import ConfigError, DataError
from llmfair.training.config import RunConfig

logger = logging.getLogger(__name__)


def synth_config(config: RunConfig):
    """The :class:`~llmfair.data.synth.SynthConfig` a recipe asks for (None without ``synth_seed``)."""
    from llmfair.data.synth import SynthConfig
    from llmfair.options import dataclass_from_mapping

    data = config.data
    if data.synth_seed is None:
        return None
    return dataclass_from_mapping(SynthConfig, {**data.synth_options, "seed": data.synth_seed},
                                  source=f"{config.source} [data.synth_options]")


def corpus_generation(config: RunConfig) -> tuple[bool, str | None]:
    """(whether the run generates the built-in corpus into ``data.root``, the reason it may not).

    A recipe with ``data.synth_seed`` writes into ``data.root`` only when that folder is empty (or
    missing), or holds this very corpus with files missing; a folder holding another corpus, or
    files the generator did not write, is never written to, and the reason names the way out.
    """
    from llmfair.data.synth import corpus_state

    synth = synth_config(config)
    if synth is None:
        return False, None
    data, where = config.data, f"{config.source} [data]"
    state = corpus_state(data.root, synth)
    if state.kind == "current":
        return False, None
    if state.kind in ("absent", "incomplete"):
        return True, None
    if state.kind == "foreign":
        return False, (f"{where}: root {data.root} {state.detail}, and the recipe's synth_seed={data.synth_seed} "
                       "would generate the built-in corpus into it; llmfair never writes there. To train on that "
                       "corpus set data.synth_seed: null (--set data.synth_seed=null); to generate the built-in "
                       "one, point data.root at a new folder")
    return False, (f"{where}: root {data.root} {state.detail} than the recipe's synth_seed={data.synth_seed} and "
                   f"synth_options ask for; llmfair does not replace it from a recipe: point data.root at a new "
                   f"folder, or regenerate it with `llmfair data synth --out {data.root} --overwrite`")


def prepare_corpus(config: RunConfig) -> None:
    """Generate the built-in corpus into ``data.root`` when the recipe asks for it and may
    (:func:`corpus_generation`); raise ConfigError where it may not."""
    if not config.data.root:
        raise ConfigError(f"{config.source} [data]: 'root' (the MELD-ST directory) is required")
    generate, refusal = corpus_generation(config)
    if refusal:
        raise ConfigError(refusal)
    if generate:
        from llmfair.data.synth import generate_corpus

        generate_corpus(config.data.root, synth_config(config), overwrite=True)


def read_examples(config: RunConfig, *, check_audio: bool = True) -> dict[str, list[Example]]:
    """The run's splits as Examples, as the run will see them (train imbalance and the
    ``max_train_examples`` cap applied); nothing is written."""
    from llmfair.data.meld_st import read_meld_st

    data = config.data
    if not data.root:
        raise ConfigError(f"{config.source} [data]: 'root' (the MELD-ST directory) is required")
    splits = list(dict.fromkeys([data.train_split, data.eval_split, data.predict_split]))
    examples = read_meld_st(data.root, splits=splits, languages=data.languages, modalities=data.modalities,
                            path_template=data.path_template, gender_table=data.gender_table,
                            check_audio=check_audio)
    by_split = {s: [e for e in examples if e.split == s] for s in splits}
    imbalance = data.imbalance()
    if imbalance is not None:
        before = len(by_split[data.train_split])
        by_split[data.train_split] = imbalance.apply(by_split[data.train_split])
        logger.info("train imbalance 1:%g in %s: %d of %d train rows kept", imbalance.ratio, imbalance.language,
                    len(by_split[data.train_split]), before)
    if data.max_train_examples is not None and len(by_split[data.train_split]) > data.max_train_examples:
        rng = np.random.default_rng(int(config.training.get("seed", 42)))
        keep = np.sort(rng.choice(len(by_split[data.train_split]), data.max_train_examples, replace=False))
        by_split[data.train_split] = [by_split[data.train_split][i] for i in keep]
    for split, rows in by_split.items():
        if not rows:
            raise DataError(f"split {split!r} of {data.root} is empty for languages {data.languages} "
                            f"and modalities {data.modalities}")
    return by_split


def load_examples(config: RunConfig) -> dict[str, list[Example]]:
    """The run's splits as Examples (generating the built-in corpus first when asked and allowed)."""
    prepare_corpus(config)
    return read_examples(config)


def training_arguments(config: RunConfig, run_dir: Path):
    """The run's ``FairTrainingArguments``: llmfair's defaults, the recipe's ``training`` section, and
    a DeepSpeed config with the Trainer-owned values filled in."""
    from llmfair.options import dataclass_from_mapping
    from llmfair.training import FairTrainingArguments

    defaults = {
        "output_dir": str(run_dir / "checkpoints"),
        "report_to": ["tensorboard"], "ddp_find_unused_parameters": False, "save_strategy": "epoch",
        "save_total_limit": 2, "logging_steps": 10, "remove_unused_columns": False,
        "use_cpu": not torch.cuda.is_available(), "dataloader_num_workers": 0,
    }
    values = {**defaults, **config.training}
    for key in ("output_dir",):
        if key in config.training:
            raise ConfigError(f"{config.source} [training]: {key!r} is set by llmfair from the run directory")
    deepspeed = values.pop("deepspeed", None)
    args = dataclass_from_mapping(FairTrainingArguments, values, source=f"{config.source} [training]")
    if deepspeed:
        # DeepSpeed's own parser rejects "auto": fill the Trainer-owned values from these arguments
        from llmfair.training.deepspeed import deepspeed_config_for

        values["deepspeed"] = deepspeed_config_for(deepspeed, args)
        args = dataclass_from_mapping(FairTrainingArguments, values, source=f"{config.source} [training]")
    return args
