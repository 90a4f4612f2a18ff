"""Benchmark speech LLMs per slice: base models zero-shot and fine-tuned runs on one corpus split,
one predictions table per system (and seed), one comparison report with paired differences.

A **system** is either

* a **base model** scored zero-shot (``tiny``, a local directory or a hub id): no adapter, the
  recipe's fixed per-language, per-modality prompts and verbalizer scoring (the label words'
  first-token logits at the answer position; no free-text generation, no LLM judge); or
* a **finished run** (``llmfair train``): its base model + its adapter, scored with the prompts
  and verbalizer it was trained with. A run trained with ``--seeds`` is one system with several
  seeds; several run directories given the same name are also seeds of one system.

Base models of several backbone families can be compared in one benchmark: ``--model`` takes
``[NAME=]MODEL[:FAMILY]``, e.g. ``--model omni=tiny:qwen2_5_omni`` (the tiny build of that family;
without ``:FAMILY`` the recipe's ``model.family``, and for a checkpoint its ``config.json`` decides,
a given family must match it). Each system is a (base model, family) pair: a run is accepted
beside ``--model`` values only when one of them is its own base model *of its own family* (a run
trained on the tiny Qwen2.5-Omni is not compared as a fine-tuned ``--model tiny`` of Qwen2-Audio).

Every system scores the same rows (the corpus split × languages × modalities), so the report can
compare them **paired**: one bootstrap resample of rows (or speakers) serves every system
(:mod:`llmfair.metrics.paired`). Encoder outputs go through the frozen-encoder cache, so systems
that share a base model's audio tower (a base model and its LoRA runs) encode each clip once.

Output directory::

    OUT/benchmark.json                          what ran: corpus, rows, speakers, systems, timings
    OUT/<system>/predictions_<split>.csv        one table per system ...
    OUT/<system>/seed-<s>/predictions_<split>.csv   ... or per seed of a multi-seed system
    OUT/report/                                 llmfair report of all tables (comparison.{md,json,csv})

Everything is validated (systems, base models, corpus, audio files) before any model is loaded.
``benchmark.json`` is written last; ``overwrite`` replaces only the files listed above.
"""
from __future__ import annotations

import copy
import gc
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from llmfair._atomic import write_json
from llmfair.data.example import Example
from llmfair.errors import ConfigError, DataError
from llmfair.training.config import RunConfig

logger = logging.getLogger(__name__)

BENCHMARK_FILE = "benchmark.json"
REPORT_DIR = "report"
ZERO_SHOT = "zero_shot"
FINETUNED = "finetuned"
_NAME = re.compile(r"^[\w.+-]+$")


@dataclass
class System:
    """One benchmarked system: ``kind`` zero_shot (``model`` only) or finetuned (one run per seed)."""

    name: str
    kind: str
    model: str
    family: str | None = None
    """The backbone family of ``model`` (None: a hub id not downloaded yet and no family given)."""
    runs: list[tuple[int | None, Path]] = field(default_factory=list)
    """(training seed, run directory) per seed; empty for a zero-shot system."""

    def base(self) -> str:
        """``model`` with its family, for messages (``tiny:qwen2_5_omni``)."""
        return f"{self.model}:{self.family}" if self.family else self.model

    def table_names(self) -> list[str]:
        """One report name per predictions table: the system name, or ``<name>.seed<s>`` per seed."""
        if len(self.runs) <= 1:
            return [self.name]
        return [f"{self.name}.seed{seed}" for seed, _ in self.runs]


def _split_name(spec: str) -> tuple[str | None, str]:
    """``"erm=runs/erm"`` → ("erm", "runs/erm"); a spec without a leading ``name=`` → (None, spec)."""
    name, sep, value = spec.partition("=")
    if sep and value and _NAME.match(name) and "/" not in name:
        return name, value
    return None, spec


_FAMILY = re.compile(r"^[a-z][a-z0-9_]*$")


def split_family(value: str) -> tuple[str, str | None]:
    """``"tiny:qwen2_5_omni"`` → ("tiny", "qwen2_5_omni"); ``"tiny"`` → ("tiny", None).

    The part after the last ``:`` is a family when it looks like a family name (lower-case
    letters, digits, ``_``) and the whole value is not an existing path; an unknown name is then
    refused by the family registry (naming the registered families).
    """
    head, sep, tail = value.rpartition(":")
    if sep and head and _FAMILY.match(tail) and not Path(value).exists():
        from llmfair.speechllm.backbones import get_backbone

        get_backbone(tail)
        return head, tail
    return value, None


def _run_family(run_dir: Path, config: RunConfig) -> str | None:
    """A finished run's family: its manifest's ``backbone.family``, else its recipe and checkpoint."""
    import json

    manifest = run_dir / "manifest.json"
    if manifest.is_file():
        try:
            family = (json.loads(manifest.read_text(encoding="utf-8")).get("backbone") or {}).get("family")
        except ValueError:
            family = None
        if family:
            return family
    from llmfair.speechllm.loading import checkpoint_family

    return checkpoint_family(config.model.name_or_path, config.model.family)


def _same_base(a: tuple[str, str | None], b: tuple[str, str | None]) -> bool:
    """Same base model and family (an unknown family matches on the model alone)."""
    return a[0] == b[0] and (a[1] is None or b[1] is None or a[1] == b[1])


def _run_seed(config: RunConfig) -> int | None:
    seed = config.training.get("seed")
    return int(seed) if isinstance(seed, int) and not isinstance(seed, bool) else None


def resolve_systems(models: Sequence[str], runs: Sequence[str], *, family: str | None = None) -> list[System]:
    """Systems from ``--model`` values (zero-shot) and run directories (fine-tuned).

    Both accept ``NAME=VALUE``; a model is ``MODEL[:FAMILY]`` (:func:`split_family`; ``family``,
    the recipe's ``model.family``, is the default). Default names: ``zero-shot`` for a single base
    model (else ``zero-shot-<last path part>``, and ``-<family>`` when one is named) and the run
    directory's name. Run directories given the same name are the seeds of one system.

    Raises:
        ConfigError: nothing to benchmark, a bad or repeated name, a run directory given twice, a
            run that has not finished, an unknown family or a family that is not the checkpoint's,
            a run whose base model and family are not one of ``models`` (when any are given), or
            two runs of one system with the same training seed.
    """
    from llmfair.speechllm.loading import checkpoint_family
    from llmfair.speechllm.run import finished_run_config, run_seed_dirs

    if not models and not runs:
        raise ConfigError("benchmark: nothing to evaluate; give --model BASE and/or finished run directories")
    systems: dict[str, System] = {}
    for spec in models:
        name, value = _split_name(spec)
        model, named_family = split_family(value)
        if name is None:
            name = "zero-shot" if len(models) == 1 else f"zero-shot-{Path(model.rstrip('/')).name}"
            name += f"-{named_family}" if named_family and len(models) > 1 else ""
        if not _NAME.match(name):
            raise ConfigError(f"benchmark: system name {name!r} may hold only letters, digits and ._+-")
        if name in systems:
            raise ConfigError(f"benchmark: system name {name!r} is given twice (--model {spec!r})")
        resolved = checkpoint_family(model, named_family or family)
        systems[name] = System(name=name, kind=ZERO_SHOT, model=model, family=resolved)
    base_models = [(s.model, s.family) for s in systems.values()]
    seen_dirs: dict[Path, str] = {}
    for spec in runs:
        name, value = _split_name(spec)
        path = Path(value)
        name = name or path.resolve().name
        if not _NAME.match(name):
            raise ConfigError(f"benchmark: system name {name!r} (from {spec!r}) may hold only letters, digits and ._+-; "
                              f"name it with NAME={value}")
        resolved = path.resolve()
        if resolved in seen_dirs:
            raise ConfigError(f"benchmark: run directory {value} is given twice ({seen_dirs[resolved]} and {spec})")
        seen_dirs[resolved] = spec
        system = systems.get(name)
        if system is not None and system.kind == ZERO_SHOT:
            raise ConfigError(f"benchmark: {name!r} names both a base model and the run {value}")
        for seed, run_dir in run_seed_dirs(path):
            config = finished_run_config(run_dir)
            base = (config.model.name_or_path, _run_family(run_dir, config))
            shown = f"{base[0]}:{base[1]}" if base[1] else base[0]
            if base_models and not any(_same_base(base, b) for b in base_models):
                given = sorted(f"{m}:{f}" if f else m for m, f in base_models)
                raise ConfigError(f"benchmark: run {run_dir} was trained on base model {shown!r}, which is not a "
                                  f"--model given ({given}); a fine-tuned run is compared with its own base "
                                  f"(add --model {shown})")
            seed = seed if seed is not None else _run_seed(config)
            if system is None:
                system = systems[name] = System(name=name, kind=FINETUNED, model=base[0], family=base[1])
            elif not _same_base((system.model, system.family), base):
                raise ConfigError(f"benchmark: system {name!r} mixes base models {system.base()!r} and {shown!r} "
                                  f"({run_dir})")
            if seed is not None and any(s == seed for s, _ in system.runs):
                raise ConfigError(f"benchmark: system {name!r} has training seed {seed} twice ({run_dir}); "
                                  "a repeated seed would count one run as two")
            system.runs.append((seed, run_dir))
    for system in systems.values():
        if len(system.runs) > 1 and any(seed is None for seed, _ in system.runs):
            missing = [str(d) for s, d in system.runs if s is None]
            raise ConfigError(f"benchmark: system {system.name!r} has several runs but no training.seed in {missing}")
    return list(systems.values())


def default_recipe() -> RunConfig:
    """The packaged demo recipe (tiny model, built-in corpus, default prompts)."""
    from importlib import resources

    with resources.as_file(resources.files("llmfair") / "resources" / "demo_tiny.yaml") as path:
        return RunConfig.from_yaml(path)


def corpus_languages(root: Path) -> list[str]:
    """English plus the target language of every pair folder present in a MELD-ST directory."""
    from llmfair.data.meld_st import PAIRS

    present = [code for pair, (code, _) in PAIRS.items() if (root / pair).is_dir()]
    return ["eng", *present] if present else []


def load_benchmark_examples(recipe: RunConfig, root: Path, split: str, languages: Sequence[str],
                            modalities: Sequence[str]) -> list[Example]:
    """The rows every system scores (audio files checked to exist).

    Raises:
        DataError: a missing corpus or audio, an empty selection.
    """
    from llmfair.data.meld_st import read_meld_st

    if not root.is_dir():
        raise DataError(f"benchmark corpus {root} is not a directory (pass --corpus, or set data.root in the recipe)")
    examples = read_meld_st(root, splits=[split], languages=list(languages), modalities=list(modalities),
                            path_template=recipe.data.path_template, gender_table=recipe.data.gender_table)
    if not examples:
        raise DataError(f"split {split!r} of {root} has no rows for languages {list(languages)} and modalities "
                        f"{list(modalities)}")
    genders = {e.gender for e in examples}
    for gender in ("female", "male"):
        if gender not in genders:
            logger.warning("split %r of %s has no %s speakers: every gender gap of this benchmark is undefined",
                           split, root, gender)
    return examples


def _speaker_counts(examples: Sequence[Example]) -> dict[str, int]:
    speakers: dict[str, set[str]] = {}
    for e in examples:
        speakers.setdefault(e.gender, set()).add(e.speaker)
    return {g: len(speakers.get(g, ())) for g in ("female", "male", "unknown")}


def _config_for(system: System, run_dir: Path | None, recipe: RunConfig, encoder_cache: bool) -> RunConfig:
    from llmfair.speechllm.run import finished_run_config

    if run_dir is None:
        config = copy.deepcopy(recipe)
        config.model.name_or_path = system.model
        config.model.family = system.family
    else:
        config = finished_run_config(run_dir)
    config.data.synth_seed = None  # the benchmark reads the corpus; it never writes into it
    if not encoder_cache:
        config.encoder_cache = False
    return config


def _check_prompts(recipe: RunConfig, systems: Sequence[System]) -> None:
    """The recipe's prompts in the chat format of every zero-shot system's family, before any model
    loads (a system prompt, for one, is refused for Voxtral)."""
    from llmfair.speechllm.backbones import get_backbone
    from llmfair.speechllm.prompts import PromptTemplate

    for family in sorted({s.family for s in systems if s.kind == ZERO_SHOT and s.family}):
        PromptTemplate.from_dict(recipe.prompts, source=f"{recipe.source} [prompts] ({family})",
                                 chat=get_backbone(family).chat)


def _check_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"benchmark output {out} exists and is not a directory")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if (out / BENCHMARK_FILE).is_file():
        if not overwrite:
            raise ConfigError(f"{out} already holds a benchmark; pass --overwrite to replace its files")
    else:
        first = sorted(p.name for p in out.iterdir())[0]
        raise ConfigError(f"{out} holds files that are not a benchmark's (e.g. {out / first}) and no "
                          f"{BENCHMARK_FILE}; choose a new or empty directory")


def run_benchmark(
    models: Sequence[str],
    runs: Sequence[str],
    out: str | Path,
    *,
    recipe: RunConfig | None = None,
    corpus: str | Path | None = None,
    split: str = "test",
    languages: Sequence[str] | None = None,
    modalities: Sequence[str] = ("audio", "audio_text"),
    reference: str | None = None,
    batch_size: int | None = None,
    encoder_cache: bool = True,
    n_resamples: int = 1000,
    unit: str = "utterance",
    seed: int = 0,
    plots: bool = True,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Score every system on the same rows and write predictions tables and the comparison report.

    Args:
        models: base models scored zero-shot (``[NAME=]tiny|DIR|HUB_ID[:FAMILY]``).
        runs: finished run directories (``[NAME=]DIR``); a multi-seed run is one system.
        out: output directory (layout in the module docstring).
        recipe: prompts, verbalizer, model loading options and data layout for the zero-shot
            systems (default: the packaged demo recipe); fine-tuned runs use their own recipe.
        corpus: the MELD-ST-layout directory (default: the recipe's ``data.root``).
        split: the corpus split every system scores.
        languages: default every language of the corpus; modalities: default both.
        reference: the system every other is compared with (default: the first base model, else
            the first run).
        batch_size: rows per forward (default: the recipe's ``per_device_eval_batch_size`` or 16).
        encoder_cache: reuse frozen audio-encoder outputs across systems and runs.
        n_resamples, unit, seed: the report's bootstrap (``unit`` utterance or speaker).

    Returns:
        The ``benchmark.json`` content plus ``report`` (the :func:`llmfair.report.write_report` result).
    """
    from llmfair.metrics import UNITS
    from llmfair.report import write_report
    from llmfair.speechllm.run import build_classifier, predict_examples

    recipe = recipe or default_recipe()
    if unit not in UNITS:
        raise ConfigError(f"unknown bootstrap unit {unit!r}; expected one of {list(UNITS)}")
    if n_resamples < 0:
        raise ConfigError(f"n_resamples must be non-negative; got {n_resamples}")
    batch_size = int(batch_size or recipe.training.get("per_device_eval_batch_size") or 16)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1; got {batch_size}")
    out = Path(out)
    systems = resolve_systems(models, runs, family=recipe.model.family)
    _check_prompts(recipe, systems)
    if reference is not None:
        names = [s.name for s in systems]
        if reference not in names:
            raise ConfigError(f"benchmark: reference {reference!r} is not one of the systems {names}")
        systems.sort(key=lambda s: s.name != reference)
    root = Path(corpus) if corpus is not None else Path(recipe.data.root)
    if not str(root) or not root.is_dir():
        raise DataError(f"benchmark corpus {root!s} is not a directory (pass --corpus, or set data.root in the recipe)")
    languages = list(languages) if languages else corpus_languages(root)
    examples = load_benchmark_examples(recipe, root, split, languages, modalities)
    from llmfair.check.preflight import check_examples

    audit = check_examples({split: examples}, source=str(root))  # every header, before any model loads
    for warning in audit.warnings:
        logger.warning("%s", warning)
    audit.raise_if_failed()
    _check_output(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)

    tables: list[Path] = []
    table_names: list[str] = []
    table_systems: list[str] = []
    records: list[dict[str, Any]] = []
    started = time.time()
    for system in systems:
        entries: list[tuple[int | None, Path | None]] = list(system.runs) or [(None, None)]
        names = system.table_names()
        seed_records = []
        for (run_seed, run_dir), table_name in zip(entries, names):
            config = _config_for(system, run_dir, recipe, encoder_cache)
            t0 = time.time()
            classifier, _, collator, _ = build_classifier(
                config, adapter=None if run_dir is None else run_dir / "adapter", trainable=False,
                zero_shot=run_dir is None)
            loaded = time.time()
            folder = out / system.name if len(entries) == 1 else out / system.name / f"seed-{run_seed}"
            path = predict_examples(classifier, collator, examples, folder / f"predictions_{split}.csv",
                                    batch_size=batch_size, progress=progress, desc=table_name)
            scored = time.time() - loaded
            cache = classifier.encoder_cache
            seed_records.append({
                "seed": run_seed, "run": None if run_dir is None else str(run_dir), "predictions": str(path),
                "seconds": {"load": loaded - t0, "score": scored}, "rows_per_second": len(examples) / max(scored, 1e-9),
                "encoder_cache": None if cache is None else {"hits": cache.hits, "misses": cache.misses},
            })
            tables.append(path)
            table_names.append(table_name)
            table_systems.append(system.name)
            logger.info("%s: %d rows in %.1f s", table_name, len(examples), scored)
            del classifier, collator
            gc.collect()
        records.append({"name": system.name, "kind": system.kind, "model": system.model, "family": system.family,
                        "seeds": [s for s, _ in entries] if system.runs else [], "tables": seed_records})

    report = write_report(tables, out / REPORT_DIR, names=table_names, systems=table_systems,
                          n_resamples=n_resamples, seed=seed, unit=unit, plots=plots)
    summary = {
        "corpus": str(root), "split": split, "languages": languages, "modalities": list(modalities),
        "rows": len(examples), "utterances": len({e.id for e in examples}), "speakers": _speaker_counts(examples),
        "batch_size": batch_size, "encoder_cache": encoder_cache,
        "bootstrap": {"unit": unit, "n_resamples": n_resamples, "seed": seed},
        "systems": records, "report": str(out / REPORT_DIR), "seconds": time.time() - started,
    }
    write_json(out / BENCHMARK_FILE, summary)
    return {**summary, "report_result": report}
