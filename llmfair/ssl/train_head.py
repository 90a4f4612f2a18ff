"""A lean training loop for the EMO-SUPERB head on cached frozen features, with any registered objective.

Why this exists beside :class:`llmfair.training.FairTrainer`: the IDI / EMO-Debias protocol
(METHODS.md §1.4, §1.6) trains a small head hundreds of times — 13 methods × 5 imbalance ratios
× 5 folds × seeds — on features that never change. A ``transformers.Trainer`` run costs a
DataLoader, collation, callbacks and checkpoint machinery per step; for a 200k-parameter head that
overhead dominates. This loop keeps the features as one tensor, draws mini-batches as seeded index
permutations (no DataLoader, no collate), and feeds the **same** objectives through the same
contract (:class:`~llmfair.objectives.ObjectiveInputs`), so a method behaves identically in both
trainers. Multi-process training, gradient accumulation and checkpoints stay with FairTrainer.

The recipe (IDI paper App. A; METHODS.md §1.3–1.4, defaults of :class:`HeadTrainingOptions`):
Adam, learning rate 1e-4, batch 32, 50 epochs, class-balanced soft cross-entropy as the base loss
(weights recomputed on the training rows actually used, §1.3 pitfall), and the kept model is the
one with the lowest dev class-balanced CE, evaluated after every epoch (the best state of the head
*and* of the objective — DisEnt predicts from its own classifier — is restored at the end).
``HeadTrainingOptions.selection`` swaps that rule for a fairness-aware one
(:mod:`llmfair.training.selection`: highest dev weighted F1, smallest dev gender gap, or highest F1
under a gap bound); the dev figures it reads are computed after every epoch (:func:`dev_figures`).

Per run:

1. a sampler from :data:`llmfair.training.group_sampling.SAMPLERS` when asked: a subset sampler
   (``ds``: it exposes ``indices``) restricts the training rows once, before everything else, so
   the class weights, the :class:`~llmfair.objectives.TrainingStats` and ``sample_index`` all refer
   to the rows actually trained on; any other sampler (``group_balanced``: weighted draws with
   replacement) is iterated once per epoch and its draws become that epoch's order;
2. ``objective.setup(TrainingStats)`` (RW's n_{c,g}, GADRO's n_g, LfF's set size ...), then
   ``objective.set_group_probabilities`` when soft groups are given (PGDRO);
3. Adam over the head's parameters plus the objective's own (LfF's biased model, DisEnt's
   encoder and classifiers, ADV's adversaries; lazily-sized ones are materialised in place by
   their first forward);
4. per step: ``model(x, y)`` → ``ObjectiveInputs(per_sample_loss, group_ids, logits, labels,
   features, sample_index, inputs=x)`` → ``objective(...).loss`` → backward → step;
5. predictions use ``objective.predict_logits`` on ``{"logits", "features", "inputs"}``.

Deterministic by ``seed``: the parameter initialisation, the epoch permutations, the sampler draws
and any randomness inside objectives (DisEnt's swap permutation) come from that seed, and torch's
global RNG state is restored afterwards. Results are bit-identical for a fixed thread count.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from llmfair.data.grouping import TrainingStats
from llmfair.data.sampling import build_sampler
from llmfair.errors import ConfigError, DataError
from llmfair.objectives.base import Objective, ObjectiveInputs
from llmfair.ssl.head import EmoSuperbHead, HeadOptions
from llmfair.ssl.losses import class_balanced_weights

logger = logging.getLogger(__name__)

PREDICT_CHUNK = 4096
"""Rows per forward pass when predicting or computing the dev loss."""


@dataclass
class HeadTrainingOptions:
    """Optimisation of the frozen-feature head (defaults: the IDI recipe, METHODS.md §1.4)."""

    epochs: int = field(default=50, metadata={"help": "passes over the training rows (IDI: 50)"})
    batch_size: int = field(default=32, metadata={"help": "rows per step (IDI: 32)"})
    learning_rate: float = field(default=1e-4, metadata={"help": "Adam learning rate (IDI: 1e-4)"})
    weight_decay: float = field(default=0.0, metadata={"help": "Adam L2 penalty (IDI: none stated)"})
    max_grad_norm: float | None = field(
        default=None, metadata={"help": "clip the global gradient norm (EMO-SUPERB: 1; IDI: not stated)"})
    seed: int = field(default=0, metadata={"help": "initialisation, batch order and sampler seed"})
    sampler: str | None = field(
        default=None, metadata={"help": "a registered sampler (ds, group_balanced) or none for a permutation"})
    sampler_options: dict = field(default_factory=dict, metadata={"help": "keyword options of the sampler"})
    select_on_dev: bool = field(
        default=True, metadata={"help": "keep the epoch with the lowest dev class-balanced CE (IDI); False keeps "
                                        "the last epoch (used only when 'selection' is empty)"})
    selection: dict = field(
        default_factory=dict, metadata={"help": "llmfair.training.selection.SelectionOptions (criterion, metric, gap, "
                                                "max_gap); empty: the IDI rule of select_on_dev"})
    device: str = field(default="cpu", metadata={"help": "torch device"})

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"head training: epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if not self.learning_rate > 0 or not self.weight_decay >= 0:
            raise ConfigError(f"head training: learning_rate must be > 0 and weight_decay >= 0, got "
                              f"{self.learning_rate}, {self.weight_decay}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ConfigError(f"head training: max_grad_norm must be positive, got {self.max_grad_norm}")
        if not isinstance(self.sampler_options, Mapping):
            raise ConfigError(f"head training: sampler_options must be a mapping, got {self.sampler_options!r}")
        self.selection_options()  # validates the keys and values

    def selection_options(self):
        """The :class:`~llmfair.training.selection.SelectionOptions` in force: ``selection`` when
        given, else ``dev_loss`` (``select_on_dev``) or ``last``."""
        from llmfair.training.selection import SelectionOptions

        if self.selection:
            return SelectionOptions.from_mapping(self.selection, source="head training: selection")
        return SelectionOptions(criterion="dev_loss" if self.select_on_dev else "last")


@dataclass
class HeadTrainingResult:
    """A trained head and what happened.

    Attributes:
        model: the head in eval mode, holding the selected (best dev loss) state.
        objective: the objective in eval mode, holding its state from the same epoch.
        best_epoch: 1-based epoch whose state was kept (the last epoch without dev selection).
        best_dev_loss: its dev class-balanced CE (NaN without dev data).
        history: one dict per epoch: ``epoch``, ``train_loss`` (mean objective loss), ``dev_loss``
            and, with dev rows, the :func:`dev_figures` (``weighted_f1``, ``macro_f1``,
            ``worst_cell_gap``; the gap NaN without dev genders).
        selection: the rule that chose ``best_epoch`` (``criterion`` ...) and, for
            ``constrained``, ``met_bound``: whether the kept epoch satisfies the gap bound.
        num_steps: optimiser steps taken.
        train_rows: indices (into the given training arrays) of the rows trained on — all of them,
            or the subset a subset sampler (``ds``) kept.
        figures: the objective's figures averaged over the last epoch (q, group losses, ...).
        seconds: wall time of the training.
    """

    model: EmoSuperbHead
    objective: Objective
    best_epoch: int
    best_dev_loss: float
    history: list[dict[str, float]]
    num_steps: int
    train_rows: np.ndarray
    figures: dict[str, float]
    seconds: float
    selection: dict[str, Any] = field(default_factory=dict)

    def predict_logits(self, features: Any) -> torch.Tensor:
        """(n, K) logits of ``objective.predict_logits`` for (n, D) or (n, L, D) features."""
        return predict_logits(self.model, self.objective, features)

    def predict_proba(self, features: Any) -> np.ndarray:
        """(n, K) float64 softmax probabilities (the multi-label predictions binarise them at > 1/K)."""
        return torch.softmax(self.predict_logits(features).double(), dim=-1).cpu().numpy()


# ------------------------------------------------------------------------------------- inputs
def _as_tensor(values: Any, dtype: torch.dtype, what: str) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.detach().to(dtype)
    try:
        return torch.as_tensor(np.asarray(values), dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise DataError(f"head training: {what} cannot be read as a {dtype} array: {exc}") from None


def _check_features(x: torch.Tensor, what: str) -> None:
    if x.ndim not in (2, 3) or x.shape[0] == 0:
        raise DataError(f"head training: {what} must be (N, D) or (N, L, D) with N >= 1; got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        bad = int(torch.nonzero(~torch.isfinite(x).reshape(x.shape[0], -1).all(1))[0])
        raise DataError(f"head training: {what} row {bad} contains NaN or infinite values")


def _check_labels(y: torch.Tensor, n: int, num_classes: int | None, what: str) -> None:
    if y.shape[0] != n:
        raise DataError(f"head training: {what} has {y.shape[0]} rows for {n} feature rows")
    if y.ndim == 2:
        if y.shape[1] < 2 or bool((y < 0).any()) or bool(((y.sum(1) - 1).abs() > 1e-3).any()):
            raise DataError(f"head training: {what} must be (N, K) label distributions (non-negative, rows summing "
                            f"to 1), K >= 2; got shape {tuple(y.shape)}")
        if num_classes is not None and y.shape[1] != num_classes:
            raise DataError(f"head training: {what} has {y.shape[1]} classes, the training labels {num_classes}")
    elif y.ndim != 1:
        raise DataError(f"head training: {what} must be (N,) class indices or (N, K) distributions; "
                        f"got shape {tuple(y.shape)}")


def _as_labels(values: Any, what: str) -> torch.Tensor:
    """(N, K) distributions as float32, (N,) class indices as int64."""
    arr = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    return _as_tensor(arr, torch.float32 if arr.ndim == 2 else torch.long, what)


def _majority(y: torch.Tensor) -> np.ndarray:
    return (y.argmax(-1) if y.ndim == 2 else y.long()).cpu().numpy().astype(np.int64)


def _one_hot_if_needed(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    return y if y.ndim == 2 else torch.nn.functional.one_hot(y.long(), num_classes).float()


# ------------------------------------------------------------------------------------- prediction
@torch.no_grad()
def _outputs(model: EmoSuperbHead, x: torch.Tensor) -> dict[str, torch.Tensor]:
    out = dict(model(x))
    out["inputs"] = x
    return out


@torch.no_grad()
def predict_logits(model: EmoSuperbHead, objective: Objective, features: Any) -> torch.Tensor:
    """(n, K) logits from ``objective.predict_logits`` (the model's own, or e.g. DisEnt's C_i),
    computed in chunks of :data:`PREDICT_CHUNK` rows with both modules in eval mode."""
    device = next(model.parameters()).device
    x = _as_tensor(features, torch.float32, "features").to(device)
    _check_features(x, "features")
    was = model.training, objective.training
    model.eval()
    objective.eval()
    try:
        parts = [objective.predict_logits(_outputs(model, chunk)) for chunk in x.split(PREDICT_CHUNK)]
    finally:
        model.train(was[0])
        objective.train(was[1])
    return torch.cat(parts).float()


def _f1_per_class(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class F1 (0 where undefined, sklearn's ``zero_division=0``) and support of (n, K)
    indicator matrices."""
    tp = (y & p).sum(0)
    fp = (~y & p).sum(0)
    fn = (y & ~p).sum(0)
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0), tp + fn


def dev_figures(probs: np.ndarray, labels: np.ndarray, genders: np.ndarray | None = None) -> dict[str, float]:
    """The figures a fairness-aware selection rule reads, on the dev rows.

    Labels and predictions become indicator matrices as in the sweep's metrics: (N, K) label
    distributions and the probabilities are binarised at > 1/K (multi-label), (N,) class indices
    against the argmax (single-label). ``weighted_f1`` / ``macro_f1`` are sklearn's
    ``f1_score(..., average="weighted" | "macro", zero_division=0)`` on those matrices;
    ``worst_cell_gap`` is |macro F1 of male rows − macro F1 of female rows| (a head sees one
    language × modality cell, so the worst cell's gap is the gender gap), NaN without both genders.
    """
    k = probs.shape[1]
    if labels.ndim == 2:
        y, p = labels > 1.0 / k, probs > 1.0 / k
    else:
        eye = np.eye(k, dtype=bool)
        y, p = eye[labels.astype(np.int64)], eye[probs.argmax(1)]
    f1, support = _f1_per_class(y, p)
    out = {"weighted_f1": float((f1 * support).sum() / support.sum()) if support.sum() else 0.0,
           "macro_f1": float(f1.mean()), "worst_cell_gap": math.nan}
    if genders is not None:
        male, female = genders == "male", genders == "female"
        if male.any() and female.any():
            out["worst_cell_gap"] = abs(float(_f1_per_class(y[male], p[male])[0].mean())
                                        - float(_f1_per_class(y[female], p[female])[0].mean()))
    return out


def _dev_evaluation(model: EmoSuperbHead, objective: Objective, x: torch.Tensor, y: torch.Tensor,
                    genders: np.ndarray | None) -> dict[str, float]:
    """``dev_loss`` — the mean base loss (class-balanced soft CE with the training class weights) of
    the predicting logits, IDI's model-selection criterion (METHODS.md §1.4) — and
    :func:`dev_figures`, from one forward pass."""
    logits = predict_logits(model, objective, x)
    out = {"dev_loss": float(model.loss(logits, y).double().mean())}
    probs = torch.softmax(logits.double(), dim=-1).cpu().numpy()
    out.update(dev_figures(probs, y.cpu().numpy(), genders))
    return out


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ------------------------------------------------------------------------------------- training
def _build_optimizer(params: Sequence[torch.nn.Parameter], options: HeadTrainingOptions) -> torch.optim.Optimizer:
    """Adam; the fused kernel where torch has one for the device (CPU since torch 2.4), else foreach."""
    kwargs = {"lr": options.learning_rate, "weight_decay": options.weight_decay}
    try:
        return torch.optim.Adam(params, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, foreach=True, **kwargs)


def _epoch_orders(sampler: Any, n: int, generator: torch.Generator, device: torch.device):
    """A callable giving one epoch's row order: a seeded permutation, or the sampler's draws."""
    if sampler is None:
        return lambda: torch.randperm(n, generator=generator).to(device)

    def draw() -> torch.Tensor:
        order = torch.as_tensor(list(iter(sampler)), dtype=torch.long)
        if order.numel() == 0:
            raise DataError("head training: the sampler drew no training rows")
        return order.to(device)

    return draw


def train_head(
    train_features: Any,
    train_labels: Any,
    train_groups: Any,
    objective: Objective,
    *,
    dev_features: Any = None,
    dev_labels: Any = None,
    dev_genders: Any = None,
    options: HeadTrainingOptions | None = None,
    head_options: HeadOptions | None = None,
    train_classes: Any = None,
    group_probabilities: Any = None,
    group_names: Sequence[str] | None = None,
) -> HeadTrainingResult:
    """Train an :class:`EmoSuperbHead` on frozen features with ``objective`` (module docstring).

    Args:
        train_features: (N, D) or (N, L, D) float features (per-layer features get the learnable
            layer weighting of the head).
        train_labels: (N, K) label distributions (soft labels, e.g. CREMA-D's) or (N,) class indices.
        train_groups: (N,) int group ids in ``objective.group_spec``.
        objective: a built objective (:func:`llmfair.objectives.build_objective`), not yet set up.
        dev_features, dev_labels: the development rows for model selection (both or neither).
        dev_genders: (N_dev,) gender per dev row (``female``/``male``/other), for the gap that a
            fairness-aware ``options.selection`` reads.
        options: :class:`HeadTrainingOptions` (the IDI recipe by default).
        head_options: :class:`HeadOptions` (default: projector 256, class-balanced soft CE).
        train_classes: (N,) single class per row for the counts and samplers (RW's n_{c,g}, DS's
            cells); default ``argmax`` of the labels; −1 marks a row without one.
        group_probabilities: (N, A) soft group memberships handed to
            ``objective.set_group_probabilities`` (PGDRO); rows follow the training arrays.
        group_names: names of the A membership columns.

    Returns:
        :class:`HeadTrainingResult`.

    Raises:
        DataError: shapes that do not fit, non-finite features, an empty training set, a
            diverging loss.
        ConfigError: bad options, an unknown sampler, soft groups for an objective that takes none.
    """
    options = options or HeadTrainingOptions()
    head_options = head_options or HeadOptions()
    device = torch.device(options.device)
    started = time.perf_counter()

    x_all, y_all, g_all, classes_all, num_classes, selection = _checked_inputs(
        train_features, train_labels, train_groups, train_classes, objective, dev_features, dev_labels, options)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        generator = torch.Generator().manual_seed(options.seed)
        sampler, rows = _training_rows(options, classes_all, g_all)
        index = torch.as_tensor(rows)
        x = x_all[index].to(device)
        y = y_all[index].to(device)
        groups = g_all[index].to(device)
        classes = classes_all[rows]

        model = _build_head(x, y, num_classes, head_options, device)
        objective = _set_up_objective(objective.to(device), groups, classes, num_classes, rows,
                                      group_probabilities, x_all.shape[0], group_names)
        dev = None if dev_features is None else _dev_rows(dev_features, dev_labels, dev_genders, x, num_classes,
                                                          device)
        history, best_epoch, steps, figures = _fit(model, objective, x, y, groups, sampler, generator, options, dev,
                                                   selection, device)
        best_loss = history[best_epoch - 1]["dev_loss"]
        chosen = _selection_record(selection, history, best_epoch, dev is not None)
    model.eval()
    objective.eval()
    seconds = time.perf_counter() - started
    logger.info("head trained with %s: %d rows, %d steps, best epoch %d (dev loss %.4f), %.1f s",
                objective.name, x.shape[0], steps, best_epoch, best_loss, seconds)
    return HeadTrainingResult(model=model, objective=objective, best_epoch=best_epoch, best_dev_loss=best_loss,
                              history=history, num_steps=steps, train_rows=rows, figures=figures, seconds=seconds,
                              selection=chosen)


def _training_arrays(train_features: Any, train_labels: Any, train_groups: Any, train_classes: Any,
                     num_groups: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray, int]:
    """The training arrays as tensors, checked against each other and the objective's
    ``num_groups``: features, labels, group ids, the (N,) single classes and the number of classes."""
    x_all = _as_tensor(train_features, torch.float32, "train_features")
    _check_features(x_all, "train_features")
    n_all = x_all.shape[0]
    y_all = _as_labels(train_labels, "train_labels")
    _check_labels(y_all, n_all, None, "train_labels")
    g_all = _as_tensor(train_groups, torch.long, "train_groups")
    if g_all.shape != (n_all,):
        raise DataError(f"head training: train_groups has shape {tuple(g_all.shape)}; expected ({n_all},)")
    if bool(((g_all < 0) | (g_all >= num_groups)).any()):
        raise DataError(f"head training: group ids must lie in [0, {num_groups}) (the objective's GroupSpec); got "
                        f"{sorted(set(g_all[(g_all < 0) | (g_all >= num_groups)].tolist()))[:8]}")
    classes_all = _majority(y_all) if train_classes is None else np.asarray(train_classes, dtype=np.int64)
    if classes_all.shape != (n_all,):
        raise DataError(f"head training: train_classes has shape {classes_all.shape}; expected ({n_all},)")
    num_classes = int(y_all.shape[1]) if y_all.ndim == 2 else int(max(int(y_all.max()) + 1, 2))
    return x_all, y_all, g_all, classes_all, num_classes


def _checked_inputs(train_features: Any, train_labels: Any, train_groups: Any, train_classes: Any,
                    objective: Objective, dev_features: Any, dev_labels: Any, options: HeadTrainingOptions):
    """:func:`_training_arrays` and the selection rule in force, the dev rows checked against it
    (both or neither given; a fairness-aware rule needs them)."""
    arrays = _training_arrays(train_features, train_labels, train_groups, train_classes,
                              objective.group_spec.num_groups)
    if (dev_features is None) != (dev_labels is None):
        raise DataError("head training: give both dev_features and dev_labels, or neither")
    selection = options.selection_options()
    if selection.active and dev_features is None and options.selection:
        raise ConfigError(f"head training: selection.criterion={selection.criterion!r} needs dev rows "
                          "(dev_features, dev_labels)")
    return (*arrays, selection)


def _training_rows(options: HeadTrainingOptions, classes_all: np.ndarray, g_all: torch.Tensor) -> tuple[Any, np.ndarray]:
    """``options.sampler`` built on the training rows, and the rows trained on (step 1 of the module
    docstring): a subset sampler (DS) keeps its rows and is dropped (they are reshuffled per epoch
    like unsampled rows); any other sampler is returned to draw each epoch's order from all rows."""
    n_all = classes_all.shape[0]
    rows = np.arange(n_all, dtype=np.int64)
    if options.sampler is None:
        return None, rows

    sampler = build_sampler(options.sampler, classes_all, g_all.numpy(), seed=options.seed,
                            **dict(options.sampler_options))
    subset = getattr(sampler, "indices", None)
    if subset is None:
        return sampler, rows
    rows = np.sort(np.asarray(list(subset), dtype=np.int64))
    if rows.size == 0:
        raise DataError(f"head training: sampler {options.sampler!r} kept no training row")
    logger.info("sampler %s: %d of %d training rows kept", options.sampler, rows.size, n_all)
    return None, rows


def _build_head(x: torch.Tensor, y: torch.Tensor, num_classes: int, head_options: HeadOptions,
                device: torch.device) -> EmoSuperbHead:
    """The head for ``x``'s shape, its class-balanced CE weighted by the rows actually trained on."""
    class_weights = None
    if head_options.loss == "cb_soft_ce":
        class_weights = class_balanced_weights(_one_hot_if_needed(y, num_classes).cpu())
    return EmoSuperbHead(x.shape[-1], num_classes, num_layers=x.shape[1] if x.ndim == 3 else None,
                         options=head_options, class_weights=class_weights).to(device)


def _set_up_objective(objective: Objective, groups: torch.Tensor, classes: np.ndarray, num_classes: int,
                      rows: np.ndarray, group_probabilities: Any, n_all: int,
                      group_names: Sequence[str] | None) -> Objective:
    """``objective.setup`` with the statistics of the rows trained on, then (PGDRO) their soft group
    memberships (step 2 of the module docstring)."""
    objective.setup(TrainingStats.from_arrays(groups.cpu().numpy(), classes, objective.group_spec.num_groups,
                                              num_classes))
    if group_probabilities is None:
        return objective
    if not hasattr(objective, "set_group_probabilities"):
        raise ConfigError(f"objective {objective.name!r} takes no soft group memberships "
                          "(group_probabilities are for pgdro)")
    probs = np.asarray(group_probabilities, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != n_all:
        raise DataError(f"head training: group_probabilities must be ({n_all}, A); got {probs.shape}")
    objective.set_group_probabilities(probs[rows], classes=classes, names=group_names)
    return objective


def _dev_rows(dev_features: Any, dev_labels: Any, dev_genders: Any, x: torch.Tensor, num_classes: int,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor, np.ndarray | None]:
    """The dev rows as (features, labels, genders or None), checked against the training features."""
    dx = _as_tensor(dev_features, torch.float32, "dev_features").to(device)
    _check_features(dx, "dev_features")
    dy = _as_labels(dev_labels, "dev_labels").to(device)
    _check_labels(dy, dx.shape[0], num_classes if dy.ndim == 2 else None, "dev_labels")
    if dx.shape[1:] != x.shape[1:]:
        raise DataError(f"head training: dev features {tuple(dx.shape[1:])} do not match training "
                        f"features {tuple(x.shape[1:])}")
    dg = None
    if dev_genders is not None:
        dg = np.asarray(dev_genders).astype(str)
        if dg.shape != (dx.shape[0],):
            raise DataError(f"head training: dev_genders has shape {dg.shape}; expected ({dx.shape[0]},)")
    return dx, dy, dg


def _fit(model: EmoSuperbHead, objective: Objective, x: torch.Tensor, y: torch.Tensor, groups: torch.Tensor,
         sampler: Any, generator: torch.Generator, options: HeadTrainingOptions, dev: tuple | None, selection: Any,
         device: torch.device) -> tuple[list[dict[str, float]], int, int, dict[str, float]]:
    """Adam over the head's and the objective's parameters for ``options.epochs`` epochs (steps 3
    and 4 of the module docstring), the dev rows evaluated after each. The state of the epoch the
    selection rule chooses (the last one without a rule or dev rows) is restored into ``model`` and
    ``objective``. Returns the history, that 1-based epoch, the steps taken and the last epoch's
    objective figures."""
    from llmfair.training.selection import select_evaluation  # lazy: llmfair.training pulls in transformers

    params = [p for p in model.parameters()] + [p for p in objective.parameters() if p.requires_grad]
    optimizer = _build_optimizer(params, options)
    next_order = _epoch_orders(sampler, x.shape[0], generator, device)
    history: list[dict[str, float]] = []
    best: tuple[int, Any, Any] | None = None  # (epoch, head state, objective state)
    steps = 0
    figures: dict[str, float] = {}
    model.train()
    objective.train()
    for epoch in range(1, options.epochs + 1):
        train_loss, figures, batches = _train_epoch(model, objective, optimizer, params, x, y, groups, next_order(),
                                                    options)
        steps += batches
        if not math.isfinite(train_loss):
            raise DataError(f"head training diverged: the objective {objective.name!r} loss is {train_loss} in "
                            f"epoch {epoch} (lower the learning rate, check the features for extreme values)")
        record = {"epoch": float(epoch), "train_loss": train_loss, "dev_loss": math.nan}
        if dev is not None:
            record.update(_dev_evaluation(model, objective, *dev))
        history.append(record)
        # the rule's choice over the epochs so far; ties go to the earlier epoch, so the running
        # choice ends where a choice over the whole history would
        if dev is not None and selection.active and select_evaluation(selection, history) == epoch - 1:
            best = (epoch, _snapshot(model), _snapshot(objective))
    if best is None:
        return history, options.epochs, steps, figures
    model.load_state_dict(best[1])
    objective.load_state_dict(best[2])
    return history, best[0], steps, figures


def _train_epoch(model: EmoSuperbHead, objective: Objective, optimizer: torch.optim.Optimizer,
                 params: Sequence[torch.nn.Parameter], x: torch.Tensor, y: torch.Tensor, groups: torch.Tensor,
                 order: torch.Tensor, options: HeadTrainingOptions) -> tuple[float, dict[str, float], int]:
    """One pass over the rows in ``order``, ``options.batch_size`` at a time (step 4 of the module
    docstring); returns the mean objective loss, the objective's mean figures and the steps taken."""
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    sums: dict[str, float] = {}
    batches = order.split(options.batch_size)
    for idx in batches:
        xb, yb = x[idx], y[idx]
        out = model(xb, yb)
        result = objective(ObjectiveInputs(
            per_sample_loss=out["per_sample_loss"], group_ids=groups[idx], logits=out["logits"],
            labels=yb, features=out["features"], sample_index=idx, inputs=xb))
        optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        if options.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, options.max_grad_norm)
        optimizer.step()
        loss_sum += result.loss.detach()
        for name, value in result.figures.items():
            sums[name] = sums.get(name, 0.0) + value
    return float(loss_sum) / len(batches), {k: v / len(batches) for k, v in sums.items()}, len(batches)


def _selection_record(selection: Any, history: list[dict[str, float]], best_epoch: int,
                      has_dev: bool) -> dict[str, Any]:
    """``HeadTrainingResult.selection``: the rule that chose ``best_epoch`` and, for
    ``constrained``, whether that epoch met the gap bound (a warning when none did)."""
    from llmfair.training.selection import meets_bound

    chosen: dict[str, Any] = {"criterion": selection.criterion if has_dev else "last"}
    if has_dev and selection.criterion == "constrained":
        chosen["met_bound"] = bool(meets_bound(selection, history[best_epoch - 1]))
        if not chosen["met_bound"]:
            logger.warning("no epoch met the dev bound %s <= %g; kept epoch %d, the smallest gap",
                           selection.gap, selection.max_gap, best_epoch)
    return chosen
