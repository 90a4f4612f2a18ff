"""Model selection on the dev split for speech-LLM runs (the recipe's ``selection:`` section).

:class:`DevSelectionCallback` scores the dev split after every epoch with the current weights
(the scoring path of :func:`llmfair.speechllm.predicting.predict_probs`), appends the figures of
:func:`dev_figures` to a history, and keeps the trainable state (LoRA, projector, the objective's
state) of the evaluation that :func:`llmfair.training.selection.select_evaluation` ranks first.
At the end of training that state is loaded back, so the adapter ``train()`` saves, its
predictions and its manifest are those of the chosen evaluation.

On disk, in ``RUN/selection/`` (written by the main process, atomically):

- ``history.json``: the rule, every dev evaluation (``step``, ``epoch``, figures; NaN as null)
  and the step chosen so far;
- ``best.safetensors``: the chosen state (its step in the file's metadata);
- ``best-<step>.safetensors``: an earlier choice, kept only while a checkpoint that a resume may
  start from still chose it (the choice over a longer history is the same or a later one, so
  these are few).

A resume truncates the history to the checkpoint's step and reloads the state chosen over that
prefix, so a run killed at any point and resumed ends with the choice of an uninterrupted run.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from transformers import TrainerCallback

from llmfair._atomic import atomic_path, write_json
from llmfair.data.example import Example
from llmfair.data.labels import MELD
from llmfair.errors import ConfigError
from llmfair.training.selection import (
    SPEECH_GAP_FIGURES as GAP_FIGURES,
    SelectionOptions,
    meets_bound,
    select_evaluation,
)

logger = logging.getLogger(__name__)

SELECTION_DIR = "selection"
HISTORY_FILE = "history.json"
BEST_FILE = "best.safetensors"
_ROLLBACK = re.compile(r"^best-(\d+)\.safetensors$")


def dev_figures(examples: Sequence[Example], probs: np.ndarray) -> dict[str, float | None]:
    """The figures a selection rule reads, from the dev rows and their (n, K) class probabilities.

    ``weighted_f1``, ``macro_f1``, ``accuracy`` (llmfair.metrics, equal to scikit-learn's
    ``f1_score(average="weighted" | "macro")`` and ``accuracy_score``); the gaps of
    ``fairness_summary`` on the same rows as a predictions table (``worst_cell_gap``: the largest
    |male − female| weighted-F1 gap over (language, modality) cells); ``dev_loss``: mean
    −log p(true class). Undefined figures (a gap without both genders) are None.
    """
    from llmfair.metrics import accuracy, macro_f1, weighted_f1
    from llmfair.metrics.fairness import fairness_summary
    from llmfair.predictions import KEY_COLUMNS, PROB_PREFIX, Predictions

    probs = np.asarray(probs, dtype=np.float64)
    labels = np.array([e.emotion for e in examples], dtype=np.int64)
    columns = dict(zip(KEY_COLUMNS, ([e.id for e in examples], [e.split for e in examples],
                                     [e.language for e in examples], [e.modality for e in examples],
                                     [e.gender for e in examples], [e.speaker for e in examples])))
    classes = np.asarray(MELD.classes, dtype=object)
    frame = pd.DataFrame({**columns, "label": classes[labels],
                          **{PROB_PREFIX + c: probs[:, j] for j, c in enumerate(MELD.classes)},
                          "prediction": classes[probs.argmax(axis=1)]})
    table = Predictions.from_frame(frame, source="dev evaluation")
    k = len(table.classes)
    true_p = probs[np.arange(len(labels)), labels]
    figures = {
        "weighted_f1": weighted_f1(table.labels, table.predictions, k),
        "macro_f1": macro_f1(table.labels, table.predictions, k),
        "accuracy": accuracy(table.labels, table.predictions, k),
        # clipped: a float32 softmax can round a probability to 0
        "dev_loss": float(-np.log(np.maximum(true_p, np.finfo(np.float64).tiny)).mean()),
    }
    summary = fairness_summary(table)
    figures.update({name: summary[name] for name in GAP_FIGURES})
    return {name: float(v) if v is not None and math.isfinite(float(v)) else None for name, v in figures.items()}


def _same_on_every_rank(figures: dict[str, Any]) -> dict[str, Any]:
    """Rank 0's figures on every rank: devices may differ in the last bits, the choice must not."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return figures
    box = [figures]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


class DevSelectionCallback(TrainerCallback):
    """Scores the dev split after every epoch and keeps the state ``options`` chooses (module docstring).

    Args:
        options: the selection rule (must be active: not ``last``).
        classifier: the trained module (its ``requires_grad`` parameters are the kept state).
        objective: the run's objective (its state is kept too; it supplies the predicting logits).
        collator: builds the dev batches (a copy is used, so the run's truncation counts stay its own).
        examples: the dev rows; every rank scores all of them.
        run_dir: the run directory (``RUN/selection/`` is written there).
        batch_size: dev batch size.
    """

    def __init__(self, options: SelectionOptions, *, classifier: torch.nn.Module, objective: torch.nn.Module,
                 collator, examples: Sequence[Example], run_dir: str | Path, batch_size: int = 8) -> None:
        import copy

        if not options.active:
            raise ConfigError(f"selection.criterion={options.criterion!r} needs no dev evaluation")
        if not examples:
            raise ConfigError("selection: the dev split is empty; nothing to select on")
        self.options = options
        self.classifier = classifier
        self.objective = objective
        self.collator = copy.copy(collator)
        self.examples = list(examples)
        self.folder = Path(run_dir) / SELECTION_DIR
        self.batch_size = batch_size
        self.history: list[dict[str, Any]] = []
        self.best_step: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        # the step whose state best.safetensors holds, when this process wrote or loaded it; a
        # file left by a killed attempt after its last checkpoint is stale and never kept
        self._disk_step: int | None = None

    # ------------------------------------------------------------------ state
    def _snapshot(self) -> dict[str, torch.Tensor]:
        state = {f"model.{n}": p.detach().to("cpu", copy=True).contiguous()
                 for n, p in self.classifier.named_parameters() if p.requires_grad}
        state.update({f"objective.{k}": v.detach().to("cpu", copy=True).contiguous()
                      for k, v in self.objective.state_dict().items()})
        return state

    def _restore(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, param in self.classifier.named_parameters():
                if f"model.{name}" in state:
                    param.copy_(state[f"model.{name}"])
        self.objective.load_state_dict({k[len("objective."):]: v for k, v in state.items()
                                        if k.startswith("objective.")})

    def _chosen_index(self) -> int | None:
        if self.best_step is None:
            return None
        return next(i for i, h in enumerate(self.history) if h["step"] == self.best_step)

    # ------------------------------------------------------------------ files
    @staticmethod
    def _file_step(path: Path) -> int | None:
        from safetensors import safe_open

        if not path.is_file():
            return None
        with safe_open(str(path), framework="pt") as handle:
            step = (handle.metadata() or {}).get("step")
        return int(step) if step is not None and step.isdigit() else None

    def _needed_steps(self, output_dir: str) -> set[int]:
        """Steps whose state a resume may need: the current choice, and the choice at every
        checkpoint folder still on disk (a resume truncates the history to its step)."""
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        needed = {self.best_step} if self.best_step is not None else set()
        for path in Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
            suffix = path.name[len(PREFIX_CHECKPOINT_DIR) + 1:]
            if suffix.isdigit():
                prefix = [h for h in self.history if h["step"] <= int(suffix)]
                index = select_evaluation(self.options, prefix)
                if index is not None:
                    needed.add(prefix[index]["step"])
        return needed

    def _write(self, output_dir: str) -> None:
        """``best.safetensors`` (when the choice changed) and ``history.json``, in that order, so
        a history never names a state that is not on disk."""
        from safetensors.torch import save_file

        best = self.folder / BEST_FILE
        if self.best_state is not None and self._disk_step != self.best_step:
            if self._disk_step is not None and self._disk_step in self._needed_steps(output_dir):
                os.replace(best, self.folder / f"best-{self._disk_step}.safetensors")  # a checkpoint still chose it
            with atomic_path(best) as tmp:
                save_file(self.best_state, str(tmp), metadata={"step": str(self.best_step)})
            self._disk_step = self.best_step
        write_json(self.folder / HISTORY_FILE, {
            "options": self.rule(), "chosen_step": self.best_step, "history": self.history})

    def _prune(self, output_dir: str) -> None:
        needed = self._needed_steps(output_dir)
        for path in self.folder.glob("best-*.safetensors"):
            match = _ROLLBACK.match(path.name)
            if match and int(match.group(1)) not in needed:
                path.unlink(missing_ok=True)

    def _resume(self, output_dir: str, step: int) -> None:
        """History up to the checkpoint's ``step`` and the state chosen over it."""
        from safetensors.torch import load_file

        path = self.folder / HISTORY_FILE
        if not path.is_file():
            logger.warning("resuming at step %d without %s: the dev evaluations before it are not part of the choice",
                           step, path)
            return
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            history = [dict(h) for h in saved["history"] if int(h["step"]) <= step]
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path} is not a selection history written by llmfair: {exc}") from None
        self.history = history
        index = select_evaluation(self.options, history)
        if index is None:
            return
        chosen = int(history[index]["step"])
        best = self.folder / BEST_FILE
        source = best if self._file_step(best) == chosen else self.folder / f"best-{chosen}.safetensors"
        if not source.is_file():
            raise ConfigError(f"{self.folder}: no saved state for step {chosen}, which selection.criterion="
                              f"{self.options.criterion!r} chooses at the resumed step {step}; resume from the newest "
                              "checkpoint or start the run again")
        state = load_file(str(source))
        expected = set(self._snapshot())
        if set(state) != expected:
            raise ConfigError(f"{source} holds {len(state)} tensors that do not match this run's trainable state "
                              f"({len(expected)} tensors); was the recipe changed before resuming?")
        self.best_step, self.best_state = chosen, state
        self._disk_step = chosen if source == best else None
        logger.info("selection: %d dev evaluation(s) up to step %d restored from %s; chosen so far: step %d",
                    len(history), step, self.folder, chosen)

    # ------------------------------------------------------------------ callback events
    def on_train_begin(self, args, state, control, **kwargs):
        self.history, self.best_step, self.best_state, self._disk_step = [], None, None, None
        if state.global_step > 0:
            self._resume(args.output_dir, state.global_step)
        elif state.is_world_process_zero and self.folder.is_dir():  # a fresh run: an old choice is stale
            for path in [self.folder / HISTORY_FILE, *self.folder.glob("best*.safetensors")]:
                path.unlink(missing_ok=True)

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.history and self.history[-1]["step"] == state.global_step:
            return  # a resume at an epoch's end: that evaluation is in the history already
        from llmfair.speechllm.predicting import predict_probs

        probs = predict_probs(self.classifier, self.collator, self.examples, batch_size=self.batch_size,
                              objective=self.objective, desc="dev selection")
        figures = _same_on_every_rank(dev_figures(self.examples, probs))
        self.history.append({"step": int(state.global_step), "epoch": float(state.epoch or 0.0), **figures})
        kept = select_evaluation(self.options, self.history) == len(self.history) - 1
        if kept:
            self.best_step, self.best_state = int(state.global_step), self._snapshot()
        if state.is_world_process_zero:
            self._write(args.output_dir)
        logger.info("dev evaluation at step %d: %s%s", state.global_step,
                    ", ".join(f"{k} {v:.4f}" for k, v in figures.items() if v is not None),
                    "; chosen so far" if kept else "")

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._prune(args.output_dir)

    def on_train_end(self, args, state, control, **kwargs):
        if self.best_state is None:
            logger.warning("selection.criterion=%r: no dev evaluation ran; the last state is kept",
                           self.options.criterion)
            return
        self._restore(self.best_state)
        if state.is_world_process_zero:
            self._write(args.output_dir)
            self._prune(args.output_dir)

    # ------------------------------------------------------------------ results
    def rule(self) -> dict[str, Any]:
        """The resolved options (criterion, metric, gap, max_gap)."""
        import dataclasses

        return dataclasses.asdict(self.options)

    def summary(self) -> dict[str, Any]:
        """What the manifest records: the rule, the chosen step and epoch, its figures,
        ``met_bound`` (constrained only) and the whole history."""
        index = self._chosen_index()
        chosen = self.history[index] if index is not None else None
        out: dict[str, Any] = {**self.rule(), "step": None, "epoch": None, "figures": None}
        if chosen is not None:
            out.update(step=chosen["step"], epoch=chosen["epoch"],
                       figures={k: v for k, v in chosen.items() if k not in ("step", "epoch")})
        if self.options.criterion == "constrained":
            out["met_bound"] = bool(meets_bound(self.options, chosen)) if chosen is not None else False
        out["history"] = list(self.history)
        return out
