"""llmfair: measure and reduce gender bias in speech emotion recognition.

The public API — every job the command line runs, as the functions it calls — is importable from
the package itself; each name is imported on first use (PEP 562), so ``import llmfair`` stays fast
and loads neither torch nor transformers::

    import llmfair

    config = llmfair.RunConfig.from_yaml("recipes/configs/demo_tiny.yaml")
    manifest = llmfair.train(config, "runs/tiny")                          # llmfair train
    llmfair.write_report([manifest["predictions"]["test"]], "runs/tiny/report")   # llmfair report

``docs/python_api.md`` shows every command-line job as these calls. The names, by stage:

- data: :func:`read_meld_st`, :func:`read_crema_d`, :class:`Example`, the label spaces :data:`MELD`
  and :data:`CREMA_D`, :func:`generate_corpus` and :class:`SynthConfig` (the built-in corpus),
  :func:`corpus_stats`, :func:`format_stats`, :func:`build_imbalanced_splits`, :class:`GroupSpec`,
  :class:`TrainingStats`, :func:`build_sampler`;
- features and the head: :func:`extract_features`, :func:`build_feature_extractor`,
  :class:`EmoSuperbHead`, :func:`train_head`, :class:`HeadTrainingOptions`;
- objectives: :func:`build_objective`, :func:`register_objective`, :func:`available_objectives`,
  :class:`Objective`, :class:`ObjectiveInputs`;
- speech LLM and training: :class:`RunConfig`, :func:`train`, :func:`train_seeds`,
  :func:`predict`, :func:`export_run`, :func:`load_speech_llm`, :class:`FairTrainer`,
  :class:`FairTrainingArguments`, :func:`parse_override`, :func:`check_recipe`, :func:`check_run`;
- evaluation: :class:`Predictions`, :func:`read_predictions`, :func:`write_predictions`,
  :func:`summary_dict`, :func:`paired_comparison`, :func:`fairness_summary`, :class:`SliceMetrics`,
  :func:`write_report`, :func:`run_benchmark`, :func:`run_demo`;
- post-hoc correction: :class:`CorrectionOptions`, :func:`fit_correction`,
  :func:`apply_correction`, :class:`JointCorrectionNet`, :class:`GenderModelOptions`,
  :func:`train_gender_model`;
- sweeps: :class:`SweepConfig`, :func:`run_sweep`, :func:`collect_results` (frozen features and
  head), :class:`SpeechSweepConfig`, :func:`run_speech_sweep`, :func:`collect_speech_results`
  (speech LLM).
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, tuple[str, str]] = {
    # data
    "Example": ("llmfair.data.example", "Example"),
    "MELD": ("llmfair.data.labels", "MELD"),
    "CREMA_D": ("llmfair.data.labels", "CREMA_D"),
    "read_meld_st": ("llmfair.data.meld_st", "read_meld_st"),
    "read_crema_d": ("llmfair.data.crema_d", "read_crema_d"),
    "SynthConfig": ("llmfair.data.synth", "SynthConfig"),
    "generate_corpus": ("llmfair.data.synth", "generate_corpus"),
    "corpus_stats": ("llmfair.data.stats", "corpus_stats"),
    "format_stats": ("llmfair.data.stats", "format_stats"),
    "build_imbalanced_splits": ("llmfair.data.imbalance", "build_imbalanced_splits"),
    "GroupSpec": ("llmfair.data.grouping", "GroupSpec"),
    "TrainingStats": ("llmfair.data.grouping", "TrainingStats"),
    "build_sampler": ("llmfair.data.sampling", "build_sampler"),
    # frozen features and the head
    "extract_features": ("llmfair.ssl.cache", "extract_features"),
    "build_feature_extractor": ("llmfair.ssl.extractors", "build_feature_extractor"),
    "EmoSuperbHead": ("llmfair.ssl.head", "EmoSuperbHead"),
    "train_head": ("llmfair.ssl.train_head", "train_head"),
    "HeadTrainingOptions": ("llmfair.ssl.train_head", "HeadTrainingOptions"),
    # objectives
    "Objective": ("llmfair.objectives", "Objective"),
    "ObjectiveInputs": ("llmfair.objectives", "ObjectiveInputs"),
    "available_objectives": ("llmfair.objectives", "available_objectives"),
    "build_objective": ("llmfair.objectives", "build_objective"),
    "register_objective": ("llmfair.objectives", "register_objective"),
    # speech LLM runs and the trainer
    "RunConfig": ("llmfair.training.config", "RunConfig"),
    "parse_override": ("llmfair.training.config", "parse_override"),
    "FairTrainer": ("llmfair.training.trainer", "FairTrainer"),
    "FairTrainingArguments": ("llmfair.training.trainer", "FairTrainingArguments"),
    "load_speech_llm": ("llmfair.speechllm.loading", "load_speech_llm"),
    "train": ("llmfair.speechllm.run", "train"),
    "train_seeds": ("llmfair.speechllm.run", "train_seeds"),
    "predict": ("llmfair.speechllm.run", "predict"),
    "export_run": ("llmfair.speechllm.export", "export_run"),
    "check_recipe": ("llmfair.check.preflight", "check_recipe"),
    "check_run": ("llmfair.check.preflight", "check_run"),
    # predictions, metrics, reports, benchmark
    "Predictions": ("llmfair.predictions", "Predictions"),
    "read_predictions": ("llmfair.predictions", "read_predictions"),
    "write_predictions": ("llmfair.predictions", "write_predictions"),
    "SliceMetrics": ("llmfair.metrics", "SliceMetrics"),
    "fairness_summary": ("llmfair.metrics", "fairness_summary"),
    "summary_dict": ("llmfair.metrics", "summary_dict"),
    "paired_comparison": ("llmfair.metrics", "paired_comparison"),
    "write_report": ("llmfair.report", "write_report"),
    "run_benchmark": ("llmfair.benchmark", "run_benchmark"),
    "run_demo": ("llmfair.demo", "run_demo"),
    # post-hoc correction
    "CorrectionOptions": ("llmfair.correction", "CorrectionOptions"),
    "JointCorrectionNet": ("llmfair.correction", "JointCorrectionNet"),
    "fit_correction": ("llmfair.correction", "fit_correction"),
    "apply_correction": ("llmfair.correction", "apply_correction"),
    "GenderModelOptions": ("llmfair.correction", "GenderModelOptions"),
    "train_gender_model": ("llmfair.correction", "train_gender_model"),
    # sweeps
    "SweepConfig": ("llmfair.sweep", "SweepConfig"),
    "run_sweep": ("llmfair.sweep", "run_sweep"),
    "collect_results": ("llmfair.sweep", "collect_results"),
    "SpeechSweepConfig": ("llmfair.speechllm.sweep", "SpeechSweepConfig"),
    "run_speech_sweep": ("llmfair.speechllm.sweep", "run_sweep"),
    "collect_speech_results": ("llmfair.speechllm.sweep", "collect_results"),
}
"""Public name → (module, attribute): what ``llmfair.<name>`` imports on first use."""

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'llmfair' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
