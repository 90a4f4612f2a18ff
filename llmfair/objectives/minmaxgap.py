"""ERM-MinMaxGAP: ERM plus an adaptively weighted penalty on the largest male–female loss gap.

Pang, Gao, Kawahara & Chen, arXiv 2603.21050. **Reconstruction**: only the abstract is available
("an adaptive fairness weight mechanism" and "a MinMaxGAP regularizer on the maximum male–female
loss gap within each language and modality"); the exact loss, the weight rule and λ are unknown.
llmfair implements METHODS.md §2.16:

- cells k = (language, modality); per cell and gender the mean per-sample loss L̄_{k,M}, L̄_{k,F}
  over the global batch (sums and counts all-reduced across data-parallel ranks before the max);
- GAP_k = |L̄_{k,M} − L̄_{k,F}|, only for cells where both genders are known;
- R = max_k GAP_k (``reduction="hard"``) or T·log Σ_k exp(GAP_k / T) (``reduction="lse"``);
- L = L_ERM + λ_t · R with λ_t ``fixed`` (λ0), ``ratio`` (λ0 · sg(R / L_ERM): fairness pressure
  tied to the relative size of the gap) or ``dual`` (λ ← max(0, λ + η (R − τ)) after every step).
- ``side``: which way the penalty's gradient pushes. ``both`` (the gap as written): the
  disadvantaged gender's loss is pushed down *and* the advantaged gender's loss is pushed up;
  ``worse``: the advantaged gender's mean is treated as a constant (stop-gradient), so the term
  only lowers the disadvantaged gender's loss in the worst cell(s) — a DRO-like step that never
  pushes a group's loss up. The value of R, λ and every logged figure are the same for both;
  llmfair's own variant, not from the paper.

Defaults (``weight: fixed``, ``side: worse``, ``reduction: hard``, λ0 = 1) are the setting with
the smallest worst-cell gap among those that never cost resolved weighted F1 in the sweep of
docs/minmaxgap.md. That sweep found **no** setting that shrinks the gap beyond its paired interval
against ERM on the built-in corpus; two-sided ``dual`` collapses the tiny model to uniform
predictions there.

A cell whose batch lacks one gender: with ``missing="running"`` (default) that gender's mean is an
exponential running estimate from earlier batches (no gradient flows to it; the present side
still gets its gradient); with ``missing="skip"`` the cell is left out of this step's max. Speakers
of ``unknown`` gender count towards ERM and never towards a gap.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from llmfair.errors import ConfigError
from llmfair.objectives._groups import gender_codes
from llmfair.objectives.base import (
    CrossRankReducer,
    GroupSpec,
    Objective,
    ObjectiveInputs,
    ObjectiveOutput,
    register_objective,
)


@dataclass
class MinMaxGapOptions:
    """Options of the MinMaxGAP regulariser (METHODS.md §2.16, reconstruction)."""

    cell_keys: str = field(default="language,modality", metadata={"help": "group attributes that define a cell, comma-separated"})
    reduction: str = field(default="hard", metadata={"help": "hard (max over cells) or lse (smooth log-sum-exp max)"})
    temperature: float = field(default=0.05, metadata={"help": "T of the lse reduction"})
    weight: str = field(default="fixed", metadata={"help": "weight rule: fixed (λ0), ratio (λ0·R/L_ERM) or dual (λ += η(R−τ)); "
                                                         "default from docs/minmaxgap.md"})
    lambda_init: float = field(default=1.0, metadata={"help": "λ0: the fixed weight, the ratio scale, or the dual start"})
    dual_lr: float = field(default=0.5, metadata={"help": "η of the dual update"})
    dual_target: float = field(default=0.0, metadata={"help": "τ: the gap the dual update tolerates"})
    lambda_max: float = field(default=10.0, metadata={"help": "upper bound on λ for every weight rule"})
    missing: str = field(default="running", metadata={"help": "a cell missing a gender in a batch: running (estimate) or skip"})
    momentum: float = field(default=0.9, metadata={"help": "momentum of the running per-cell, per-gender loss estimates"})
    side: str = field(default="worse", metadata={"help": "worse: the term only lowers the worse-off gender's loss; both: "
                                                         "the gap as written (also raises the better-off one's)"})

    def __post_init__(self) -> None:
        choices = {"reduction": ("hard", "lse"), "weight": ("fixed", "ratio", "dual"), "missing": ("running", "skip"),
                   "side": ("both", "worse")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"minmaxgap option {name}={getattr(self, name)!r}; expected one of {allowed}")
        if self.temperature <= 0 or not 0 <= self.momentum < 1 or self.lambda_init < 0 or self.lambda_max < 0:
            raise ConfigError("minmaxgap options: temperature > 0, 0 <= momentum < 1, lambda_init >= 0, lambda_max >= 0")


@register_objective("minmaxgap")
class MinMaxGap(Objective):
    """ERM + λ_t · max over (language × modality) cells of |L̄_male − L̄_female| (reconstruction)."""

    depends_only_on_per_sample_loss = True

    options_class = MinMaxGapOptions
    reconstructed = True

    def __init__(self, group_spec: GroupSpec, options: MinMaxGapOptions | None = None,
                 reducer: CrossRankReducer | None = None) -> None:
        super().__init__(group_spec, options, reducer)
        keys = [k.strip() for k in self.options.cell_keys.split(",") if k.strip()]
        cell_tuples = list(zip(*(group_spec.column(k) for k in keys))) if keys else [()] * group_spec.num_groups
        self.cell_names = sorted(set(cell_tuples))
        cell_index = {c: i for i, c in enumerate(self.cell_names)}
        genders = group_spec.column("gender")
        self.register_buffer("cell_of_group", torch.tensor([cell_index[c] for c in cell_tuples], dtype=torch.long), persistent=False)
        self.register_buffer("gender_of_group", torch.tensor(gender_codes(genders), dtype=torch.long), persistent=False)
        n_cells = len(self.cell_names)
        self.register_buffer("running_mean", torch.zeros(n_cells, 2, dtype=torch.float64))
        self.register_buffer("running_seen", torch.zeros(n_cells, 2, dtype=torch.bool))
        self.register_buffer("dual_lambda", torch.tensor(float(self.options.lambda_init), dtype=torch.float64))

    def cell_label(self, k: int) -> str:
        return "/".join(self.cell_names[k])

    def single_gender_cells(self, group_counts: np.ndarray) -> list[str]:
        """Cells with one known gender only, given training counts per group id (warn at start-up:
        their gap is never defined, so MinMaxGAP cannot act on them)."""
        counts = np.zeros((len(self.cell_names), 2))
        genders = self.gender_of_group.cpu().numpy()
        known = genders >= 0
        np.add.at(counts, (self.cell_of_group.cpu().numpy()[known], genders[known]), np.asarray(group_counts)[known])
        return [self.cell_label(k) for k in np.flatnonzero((counts > 0).sum(1) == 1)]

    def forward(self, inputs: ObjectiveInputs) -> ObjectiveOutput:
        opts = self.options
        loss_i = inputs.per_sample_loss
        erm, erm_value = self.global_mean(loss_i)

        gender = self.gender_of_group[inputs.group_ids]
        known = gender >= 0
        slot = self.cell_of_group[inputs.group_ids][known] * 2 + gender[known]
        n_cells = len(self.cell_names)
        local_sum = loss_i.new_zeros(n_cells * 2).index_add(0, slot, loss_i[known]).view(n_cells, 2)
        local_n = torch.bincount(slot, minlength=n_cells * 2).view(n_cells, 2).to(loss_i.dtype)
        global_sum = self.reducer.sum(local_sum).double()
        global_n = self.reducer.sum(local_n).double()
        present = global_n > 0
        batch_mean = torch.where(present, global_sum / global_n.clamp_min(1), torch.zeros_like(global_sum))

        if opts.missing == "running":
            estimate = torch.where(present, batch_mean, self.running_mean)
            usable = (present | self.running_seen).all(dim=1)
            if self.training:
                updated = torch.where(self.running_seen, opts.momentum * self.running_mean + (1 - opts.momentum) * batch_mean, batch_mean)
                self.running_mean.copy_(torch.where(present, updated, self.running_mean))
                self.running_seen |= present
        else:
            estimate = batch_mean
            usable = present.all(dim=1)
        # a gap needs at least one gender observed in this batch, or there is nothing to train
        usable &= present.any(dim=1)

        diff = estimate[:, 1] - estimate[:, 0]  # male − female
        gaps = diff.abs()
        usable_list, gaps_list, diff_list = usable.tolist(), gaps.tolist(), diff.tolist()  # one host transfer
        # Logged figures are averaged over a logging window: an undefined gap is left out rather than
        # logged as 0, and the signed diff/<cell> is logged beside the |gap| (whose window average is
        # biased upward by batch noise: a cell with no true gap still logs a positive mean |gap|).
        figures = {"erm_loss": erm_value, "usable_cells": float(sum(usable_list))}
        figures.update({f"gap/{self.cell_label(k)}": g for k, (u, g) in enumerate(zip(usable_list, gaps_list)) if u})
        figures.update({f"diff/{self.cell_label(k)}": d for k, (u, d) in enumerate(zip(usable_list, diff_list)) if u})
        if not any(usable_list):
            figures["lambda"] = float(self._weight(0.0, erm_value))
            return ObjectiveOutput(loss=erm, figures=figures)

        masked = torch.where(usable, gaps, torch.full_like(gaps, -torch.inf))
        if opts.reduction == "hard":
            worst = max((k for k, u in enumerate(usable_list) if u), key=gaps_list.__getitem__)
            coef = torch.zeros_like(gaps)
            coef[worst] = 1.0
            max_gap = gaps_list[worst]
        else:
            coef = torch.softmax(masked / opts.temperature, dim=0)
            max_gap = float(opts.temperature * torch.logsumexp(masked / opts.temperature, dim=0))
            worst = int(torch.argmax(masked))

        # d R = Σ_k coef_k · sign_k · (d L̄_{k,M} − d L̄_{k,F}); each mean's gradient is
        # Σ_local dℓ_i / n_global, scaled by W to undo DDP's gradient averaging.
        direction = (coef * torch.sign(diff)).to(loss_i.dtype)
        per_gender = torch.where(present, local_sum / global_n.clamp_min(1).to(loss_i.dtype), torch.zeros_like(local_sum))
        if opts.side == "worse":  # the better-off side counts as a constant: same value, gradient on the worse side only
            male_worse = (direction > 0).unsqueeze(1)
            worse_side = torch.cat([~male_worse, male_worse], dim=1)
            per_gender = torch.where(worse_side, per_gender, per_gender.detach())
        surrogate = (direction * (per_gender[:, 1] - per_gender[:, 0])).sum() * self.reducer.world_size

        lam = self._weight(max_gap, erm_value)
        if opts.weight == "dual" and self.training:
            self.dual_lambda.copy_(torch.clamp(self.dual_lambda + opts.dual_lr * (max_gap - opts.dual_target), 0.0, opts.lambda_max))
        figures.update({"max_gap": max_gap, "lambda": lam})
        # one indicator per cell (0 where the cell was not usable): averaged over a logging window it is
        # how often that cell was the worst, and the cells' frequencies sum to 1 (an average of cell
        # *indices* would mean nothing)
        figures.update({f"worst/{self.cell_label(k)}": float(k == worst) for k in range(len(usable_list))})
        return ObjectiveOutput(loss=erm + lam * surrogate, figures=figures)

    def _weight(self, max_gap: float, erm_value: float) -> float:
        opts = self.options
        if opts.weight == "fixed":
            lam = opts.lambda_init
        elif opts.weight == "ratio":
            lam = opts.lambda_init * max_gap / (erm_value + 1e-8)
        else:
            lam = float(self.dual_lambda)
        return float(min(max(lam, 0.0), opts.lambda_max))
