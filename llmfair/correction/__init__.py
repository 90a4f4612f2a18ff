"""Post-hoc cross-modal correction (METHODS.md §2.17): a small network re-predicts emotion and
speaker gender from two frozen models' outputs, without retraining either model and without a
fairness term (Dominguez-Catena, Paternain, Jurio & Galar, IEEE CAI; correction-net slides).

- :mod:`~llmfair.correction.network`: :class:`JointCorrectionNet`, the :class:`IndependentCorrection`
  ablation, :class:`CorrectionOptions`, inputs and loss.
- :mod:`~llmfair.correction.train`: the fast trainer (:func:`train_correction_net`).
- :mod:`~llmfair.correction.io`: join predictions tables, fit / apply on files, save / load,
  before/after figures.
- :mod:`~llmfair.correction.gender`: an offline speaker-gender classifier that writes the gender
  predictions table.

Command line: ``llmfair correct gender-model | fit | apply``. The names below are imported on first
use, so ``import llmfair.correction.options`` (the command line's ``--help``) does not load torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "CorrectionOptions": "options", "MODEL_KIND_NAMES": "options",
    "MODEL_KINDS": "network", "CorrectionModel": "network", "IndependentCorrection": "network",
    "JointCorrectionNet": "network", "build_correction_model": "network", "correction_loss": "network",
    "predict_probs": "network", "prepare_inputs": "network",
    "TrainResult": "train", "epoch_plan": "train", "stratified_holdout": "train", "train_correction_net": "train",
    "CorrectionData": "io", "apply_correction": "io", "check_no_test_rows": "io", "correction_figures": "io",
    "figures_markdown": "io", "fit_correction": "io", "join_tables": "io", "load_correction_model": "io",
    "save_correction_model": "io",
    "GenderClassifier": "gender", "GenderModelOptions": "gender", "train_gender_model": "gender",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"llmfair.correction.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'llmfair.correction' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
