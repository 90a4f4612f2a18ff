"""One speech-LLM run, end to end: corpus → Examples → groups → model + LoRA → FairTrainer →
adapter, predictions table and manifest in the run directory.

Run directory layout::

    RUN/config.yaml            the resolved recipe
    RUN/checkpoints/           Trainer checkpoints (adapter + optimizer + objective state)
    RUN/adapter/               the final peft adapter (what `llmfair export` publishes)
    RUN/selection/             dev history and the chosen state (recipe section ``selection``)
    RUN/predictions_<split>.csv
    RUN/manifest.json          config, seed, git commit, versions, backbone family, LoRA targets, peak memory, timings
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import yaml

from llmfair._atomic import write_text
from llmfair.data.example import Example
from llmfair.data.labels import MELD
from llmfair.data.grouping import GroupSpec, TrainingStats
from llmfair.errors import ConfigError
from llmfair.objectives import build_objective
from llmfair.speechllm.predicting import predict_probs
from llmfair.training.config import RunConfig
from llmfair.training.run_inputs import (  # noqa: F401  (the run's inputs; re-exported for callers of run)
    corpus_generation,
    load_examples,
    prepare_corpus,
    read_examples,
    synth_config,
    training_arguments,
)

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
ADAPTER_DIR = "adapter"


# ------------------------------------------------------------------------------------ data
def preflight(config: RunConfig, run_dir: str | Path | None = None, *, splits: Sequence[str] | None = None,
              training: bool = True) -> None:
    """The checks of ``llmfair check`` (:func:`llmfair.check.check_run`) before a model loads: raise
    :class:`~llmfair.check.CheckFailed` listing every problem; log the warnings."""
    from llmfair.check import check_run

    report = check_run(config, run_dir=run_dir, splits=splits, training=training)
    for warning in report.warnings:
        logger.warning("%s", warning)
    report.raise_if_failed()


def to_records(examples: Sequence[Example], spec: GroupSpec, keys: Sequence[str]) -> list[dict[str, Any]]:
    """Collator records: audio path, text, slice keys, label, group id, dataset index."""
    index = {g: i for i, g in enumerate(spec.groups)}
    return [{
        "audio": e.audio, "text": e.text, "language": e.language, "modality": e.modality, "emotion": e.emotion,
        "group_ids": index[tuple(str(getattr(e, k)) for k in keys)], "sample_index": i, "example_ids": e.id,
    } for i, e in enumerate(examples)]


# ------------------------------------------------------------------------------------ model
def build_classifier(config: RunConfig, *, adapter: str | Path | None = None, trainable: bool = True,
                     zero_shot: bool = False):
    """(classifier, processor, collator, lora target names) for ``config``; with ``adapter`` the
    trained adapter is loaded instead of fresh LoRA weights; ``zero_shot`` scores the base model
    as it is (no LoRA, every parameter frozen, no target names)."""
    from llmfair.options import dataclass_from_mapping
    from llmfair.speechllm.backbones import backbone_of
    from llmfair.speechllm.classifier import SpeechLLMClassifier
    from llmfair.speechllm.collator import SpeechLLMCollator
    from llmfair.speechllm.encoder_cache import EncoderCache
    from llmfair.speechllm.loading import load_speech_llm
    from llmfair.speechllm.lora import LoraOptions, apply_lora, lora_module_names
    from llmfair.speechllm.prompts import PromptTemplate
    from llmfair.speechllm.tiny import default_cache_dir
    from llmfair.speechllm.verbalizer import Verbalizer

    m = config.model
    model, processor = load_speech_llm(m.name_or_path, family=m.family, dtype=m.dtype,
                                       attn_implementation=m.attn_implementation,
                                       gradient_checkpointing=m.gradient_checkpointing, quantization=m.quantization)
    backbone = backbone_of(model)
    lora = dataclass_from_mapping(LoraOptions, config.lora, source=f"{config.source} [lora]")
    if zero_shot:
        if adapter is not None:
            raise ConfigError("a zero-shot classifier takes no adapter")
        model.requires_grad_(False)
        targets: list[str] = []
    elif adapter is None:
        model, targets = apply_lora(model, lora)
    else:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=trainable)
        targets = lora_module_names(model)
    verbalizer = Verbalizer(MELD.classes, processor.tokenizer, words=config.verbalizer.get("words"),
                            answer_prefix=backbone.chat.answer_prefix)
    template = PromptTemplate.from_dict(config.prompts, source=f"{config.source} [prompts]", chat=backbone.chat)
    answer_loss = config.verbalizer.get("answer_loss", "verbalizer")
    cache = None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if config.encoder_cache and not backbone.encoder_trainable(base):
        cache = EncoderCache.for_model(default_cache_dir() / "encoder", model, processor, in_memory=True)
    classifier = SpeechLLMClassifier(model, verbalizer, answer_loss=answer_loss, encoder_cache=cache)
    collator = SpeechLLMCollator(processor, template, verbalizer, answer_loss=answer_loss)
    return classifier, processor, collator, targets


def _zero_stage(config: RunConfig) -> int | None:
    """The ZeRO stage of the recipe's ``training.deepspeed`` config (None without one, or when it
    cannot be read: building the arguments names that problem)."""
    value = config.training.get("deepspeed")
    if not value:
        return None
    if not isinstance(value, dict):
        import json

        try:
            value = json.loads(Path(value).read_text(encoding="utf-8"))
        except (OSError, ValueError, TypeError):
            return None
    stage = (value.get("zero_optimization") or {}).get("stage") if isinstance(value, dict) else None
    return int(stage) if isinstance(stage, int) else None


# ------------------------------------------------------------------------------------ train
def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The newest ``checkpoint-<step>`` folder in ``output_dir`` whose save finished, or None.

    Trainer writes a checkpoint in place, file by file; a process killed while saving leaves a
    folder without its optimizer or trainer state, which ``get_last_checkpoint`` would still pick
    (the resume then fails). FairTrainer writes the objective state after everything else, so a
    folder holding it and ``trainer_state.json`` is complete.
    """
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    from llmfair.training.trainer import OBJECTIVE_STATE_FILE

    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    steps = {}
    for path in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        suffix = path.name[len(PREFIX_CHECKPOINT_DIR) + 1:]
        if path.is_dir() and suffix.isdigit():
            steps[int(suffix)] = path
    for step in sorted(steps, reverse=True):
        path = steps[step]
        if (path / "trainer_state.json").is_file() and (path / OBJECTIVE_STATE_FILE).is_file():
            return str(path)
        logger.warning("skipping incomplete checkpoint %s (interrupted while saving)", path)
    return None


def train(config: RunConfig, run_dir: str | Path, *, resume: bool | str = False, overwrite: bool = False,
          predict_splits: Sequence[str] | None = None) -> dict[str, Any]:
    """Train one run and write adapter, predictions and manifest into ``run_dir``.

    ``resume=True`` continues from the newest complete checkpoint in ``run_dir/checkpoints``
    (:func:`last_complete_checkpoint`); a path resumes from that checkpoint folder. An active
    ``selection`` rule keeps the state of the dev evaluation it chooses
    (:class:`~llmfair.speechllm.selection.DevSelectionCallback`): adapter, predictions and manifest
    are that state's.
    """
    from llmfair.training import FairTrainer, GroupCoveringSampler
    from llmfair.training.manifest import write_manifest

    run_dir = Path(run_dir)
    if (run_dir / ADAPTER_DIR).exists() and not (resume or overwrite):
        raise ConfigError(f"{run_dir} already holds a finished run; pass --overwrite to replace it or --resume")
    selection = config.selection_options()
    if selection.active and _zero_stage(config) == 3:
        raise ConfigError(f"{config.source} [selection]: selection.criterion={selection.criterion!r} needs the whole "
                          "model on every rank, but DeepSpeed ZeRO-3 shards the parameters; use ZeRO-2 or "
                          "criterion 'last'")
    prepare_corpus(config)
    preflight(config, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = config.to_dict()
    resolved["objective"]["options"] = config.objective.resolved_options()  # defaults filled: the run says what it ran
    write_text(run_dir / CONFIG_FILE, yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))
    started = time.time()

    splits = read_examples(config)
    train_examples = splits[config.data.train_split]
    keys = list(config.objective.group_keys)
    all_examples = [e for rows in splits.values() for e in rows]
    spec, _ = GroupSpec.from_records([{k: getattr(e, k) for k in keys} for e in all_examples], keys)
    records = to_records(train_examples, spec, keys)
    group_ids = np.array([r["group_ids"] for r in records])
    stats = TrainingStats.from_arrays(group_ids, np.array([e.emotion for e in train_examples]),
                                      spec.num_groups, MELD.num_classes)

    args = training_arguments(config, run_dir)
    torch.manual_seed(args.seed)
    classifier, processor, collator, targets = build_classifier(config)
    objective = build_objective(config.objective.name, spec, config.objective.options,
                                source=f"{config.source} [objective.options]")
    objective.setup(stats)
    if hasattr(objective, "single_gender_cells"):
        lonely = objective.single_gender_cells(stats.group_counts)
        if lonely:
            logger.warning("cells with one gender only in the training set (no gap can be measured there): %s",
                           ", ".join(lonely))
    sampler = None
    if config.objective.sampler == "group_covering":
        cells = ["/".join(str(getattr(e, k)) for k in ("language", "modality")) for e in train_examples]
        sampler = GroupCoveringSampler(cells, [e.gender for e in train_examples],
                                       args.per_device_train_batch_size, seed=args.seed)

    trainer = FairTrainer(model=classifier, args=args, train_dataset=records, data_collator=collator,
                          objective=objective, train_sampler=sampler, label_key="emotion")
    selector = None
    if selection.active:
        from llmfair.speechllm.selection import DevSelectionCallback

        selector = DevSelectionCallback(selection, classifier=classifier, objective=objective, collator=collator,
                                        examples=splits[config.data.eval_split], run_dir=run_dir,
                                        batch_size=args.per_device_eval_batch_size)
        trainer.add_callback(selector)
    if resume is True:
        resume = last_complete_checkpoint(args.output_dir) or False
        if not resume:
            raise ConfigError(f"--resume: no complete checkpoint in {args.output_dir}")
    # with a selection rule, the callback has loaded the chosen state back when train() returns
    result = trainer.train(resume_from_checkpoint=resume or None)
    trainer.save_model(str(run_dir / ADAPTER_DIR))  # gathers ZeRO-3 shards; writes on the main process only
    train_seconds = time.time() - started
    if not trainer.is_world_process_zero():
        return {"global_steps": result.global_step, "predictions": {}}
    from llmfair.report.plots import plot_objective_trace
    from llmfair.training.trace import TRACE_PLOT, write_trace

    tensorboard = "tensorboard" in (args.report_to or [])  # beside the Trainer's own event files
    trace_rows = trainer.trace_rows()
    if write_trace(run_dir, trace_rows, tensorboard_dir=Path(args.output_dir) / "runs" / "objective_trace"
                   if tensorboard else None):
        plot_objective_trace(trace_rows, run_dir / TRACE_PLOT, title=f"{objective.name}: objective per optimiser step")

    chosen = selector.summary() if selector is not None else {"criterion": "last", "step": result.global_step}
    if selector is not None and chosen["step"] is not None:
        figures = ", ".join(f"{k} {v:.4f}" for k, v in chosen["figures"].items() if v is not None)
        bound = ("" if chosen.get("met_bound", True)
                 else f"; no evaluation met {selection.gap} <= {selection.max_gap:g}")
        logger.info("selection %s: kept step %d (epoch %.2f) of %d dev evaluations (%s)%s", selection.criterion,
                    chosen["step"], chosen["epoch"], len(chosen["history"]), figures, bound)

    outputs = {}
    zero3 = bool(args.deepspeed) and "zero_optimization" in (args.deepspeed if isinstance(args.deepspeed, dict) else {}) \
        and args.deepspeed["zero_optimization"].get("stage") == 3
    if zero3:  # parameters are sharded over ranks: a single-process forward would hang
        logger.warning("ZeRO-3 run: predict afterwards with `llmfair predict %s --split SPLIT`", run_dir)
        predict_splits = []
    for split in predict_splits if predict_splits is not None else [config.data.eval_split, config.data.predict_split]:
        outputs[split] = str(predict_examples(classifier, collator, splits[split], run_dir / f"predictions_{split}.csv",
                                              batch_size=args.per_device_eval_batch_size, objective=objective))
    cache = classifier.encoder_cache
    from dataclasses import asdict

    from llmfair.speechllm.backbones import backbone_of

    backbone = backbone_of(classifier.model)
    manifest = write_manifest(
        run_dir, config=resolved, seed=args.seed, lora_target_modules=targets,
        backbone={"family": backbone.name, "model_class": backbone.model_class_name,
                  "chat_format": asdict(backbone.chat)},
        objective={"name": objective.name, "reconstructed": objective.reconstructed,
                   "options": config.objective.resolved_options()},
        group_spec={"keys": list(spec.keys), "groups": ["/".join(g) for g in spec.groups]},
        train_examples=len(train_examples), global_steps=result.global_step,
        train_loss=result.training_loss, seconds={"train_and_setup": train_seconds,
                                                  "total": time.time() - started},
        encoder_cache=None if cache is None else {"hits": cache.hits, "misses": cache.misses},
        audio_truncated=collator.num_truncated, predictions=outputs, selection=chosen,
    )
    return manifest


# ------------------------------------------------------------------------------------ predict
def predict_examples(classifier, collator, examples: Sequence[Example], out_path: str | Path, *,
                     batch_size: int = 8, objective=None, progress: bool = False, desc: str = "predicting") -> Path:
    """Score ``examples`` (:func:`predict_probs`) and write the predictions table."""
    from llmfair.predictions import write_predictions

    probs = predict_probs(classifier, collator, examples, batch_size=batch_size, objective=objective,
                          progress=progress, desc=desc)
    write_predictions(
        out_path, ids=[e.id for e in examples], split=[e.split for e in examples],
        language=[e.language for e in examples], modality=[e.modality for e in examples],
        gender=[e.gender for e in examples], speaker=[e.speaker for e in examples], classes=MELD.classes,
        probs=probs, labels=np.array([e.emotion for e in examples]),
    )
    return Path(out_path)


def is_finished_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a finished run (its resolved recipe and its adapter)."""
    return (Path(run_dir) / CONFIG_FILE).is_file() and (Path(run_dir) / ADAPTER_DIR).is_dir()


def finished_run_config(run_dir: str | Path) -> RunConfig:
    """The resolved recipe of a finished run whose adapter alone can predict.

    Raises:
        ConfigError: ``run_dir`` is not a finished run, or its objective predicts with a classifier
            of its own (LfF, DisEnt) that the adapter does not hold.
    """
    run_dir = Path(run_dir)
    if not is_finished_run(run_dir):
        raise ConfigError(f"{run_dir} is not a finished llmfair run (needs {CONFIG_FILE} and {ADAPTER_DIR}/)")
    config = RunConfig.from_yaml(run_dir / CONFIG_FILE)
    from llmfair.objectives import OBJECTIVES, Objective

    cls = OBJECTIVES.get(config.objective.name)
    if cls is not None and cls.predict_logits is not Objective.predict_logits:
        raise ConfigError(f"{run_dir}: objective {config.objective.name!r} predicts with its own classifier, which the "
                          f"adapter does not hold; use the predictions written at training time in {run_dir}")
    return config


def predict(run_dir: str | Path, split: str = "test", out: str | Path | None = None, *,
            batch_size: int = 8) -> Path:
    """Predictions of a finished run on ``split`` (the run's adapter on a fresh base model)."""
    run_dir = Path(run_dir)
    config = finished_run_config(run_dir)
    config.data.synth_seed = None  # the corpus exists already
    # the split below is read as the train split too: the train-only subsample and imbalance must not touch it
    config.data.max_train_examples = None
    config.data.train_imbalance = None
    original = (config.data.train_split, config.data.eval_split, config.data.predict_split)
    config.data.train_split = config.data.eval_split = config.data.predict_split = split
    try:
        preflight(config, splits=[split], training=False)
        examples = read_examples(config)[split]
    finally:
        config.data.train_split, config.data.eval_split, config.data.predict_split = original
    classifier, _, collator, _ = build_classifier(config, adapter=run_dir / ADAPTER_DIR, trainable=False)
    return predict_examples(classifier, collator, examples, out or run_dir / f"predictions_{split}.csv",
                            batch_size=batch_size)


# ------------------------------------------------------------------------------------ seeds
SEEDS_FILE = "seeds.json"


def seed_run_dir(run_dir: str | Path, seed: int) -> Path:
    """Where seed ``seed`` of a multi-seed run lives: ``RUN/seed-<seed>``."""
    return Path(run_dir) / f"seed-{int(seed)}"


def parse_seeds(text: str | Sequence[int] | None, *, what: str = "--seeds") -> list[int] | None:
    """``"0,1,2"`` (or a list) → ``[0, 1, 2]``; None stays None.

    Raises:
        ConfigError: a value that is not a non-negative integer, an empty list, or a repeated seed
            (it would train the same run twice and count it as two).
    """
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")] if isinstance(text, str) else list(text)
    seeds: list[int] = []
    for part in parts:
        if isinstance(part, bool) or not (isinstance(part, int) or (isinstance(part, str) and part.isdigit())):
            raise ConfigError(f"{what}: {part!r} is not a non-negative integer seed (expected e.g. 0,1,2)")
        seeds.append(int(part))
    if not seeds:
        raise ConfigError(f"{what}: no seed given")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ConfigError(f"{what}: seed(s) {repeated} given more than once in {text!r}")
    return seeds


def run_seed_dirs(run_dir: str | Path) -> list[tuple[int | None, Path]]:
    """The finished runs of ``run_dir``: ``[(None, run_dir)]`` for a single run, or
    ``[(seed, RUN/seed-<seed>), ...]`` for a run trained with several seeds (``seeds.json``).

    Raises:
        ConfigError: ``run_dir`` is neither, or a seed listed in ``seeds.json`` has not finished.
    """
    run_dir = Path(run_dir)
    if is_finished_run(run_dir):
        return [(None, run_dir)]
    listing = run_dir / SEEDS_FILE
    if not listing.is_file():
        raise ConfigError(f"{run_dir} is not a finished llmfair run (needs {CONFIG_FILE} and {ADAPTER_DIR}/, "
                          f"or {SEEDS_FILE} of a run trained with several seeds)")
    import json

    try:
        seeds = parse_seeds(json.loads(listing.read_text(encoding="utf-8"))["seeds"], what=str(listing))
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{listing} is not a seeds listing written by llmfair: {exc}") from None
    out = []
    for seed in seeds or []:
        path = seed_run_dir(run_dir, seed)
        if not is_finished_run(path):
            raise ConfigError(f"{run_dir}: seed {seed} has not finished ({path} has no {CONFIG_FILE} and {ADAPTER_DIR}/); "
                              f"rerun `llmfair train ... --seeds` with --resume")
        out.append((seed, path))
    return out


def train_seeds(config: RunConfig, run_dir: str | Path, seeds: Sequence[int], *, resume: bool = False,
                overwrite: bool = False, predict_splits: Sequence[str] | None = None) -> dict[str, Any]:
    """Train the same recipe once per seed into ``RUN/seed-<seed>/`` and list them in ``RUN/seeds.json``.

    The seed sets ``training.seed`` (initialisation, data order, dropout); the corpus (and its
    ``synth_seed``) stays the same, so every seed is evaluated on the same rows and a report can
    separate seed noise from row noise. Seeds that already finished are kept when ``resume`` is set.

    Returns:
        ``{"seeds": [...], "runs": {seed: manifest}}``.
    """
    import copy
    import json

    seeds = parse_seeds(list(seeds)) or []
    run_dir = Path(run_dir)
    if (run_dir / CONFIG_FILE).is_file() and not overwrite:
        raise ConfigError(f"{run_dir} holds a single-seed run; choose another --out for a multi-seed run")
    manifests: dict[int, Any] = {}
    for seed in seeds:
        seed_config = copy.deepcopy(config)
        seed_config.training = {**seed_config.training, "seed": seed}
        seed_dir = seed_run_dir(run_dir, seed)
        if resume and is_finished_run(seed_dir) and (seed_dir / "manifest.json").is_file():
            logger.info("seed %d already finished in %s", seed, seed_dir)
            manifests[seed] = json.loads((seed_dir / "manifest.json").read_text(encoding="utf-8"))
            continue
        has_checkpoint = resume and last_complete_checkpoint(seed_dir / "checkpoints") is not None
        manifests[seed] = train(seed_config, seed_dir, resume=has_checkpoint, overwrite=overwrite,
                                predict_splits=predict_splits)
    from llmfair._atomic import write_json

    write_json(run_dir / SEEDS_FILE, {"seeds": seeds, "runs": [seed_run_dir(run_dir, s).name for s in seeds]})
    return {"seeds": seeds, "runs": manifests}
