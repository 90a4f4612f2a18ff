"""GR: gap regularisation (EMO-Debias's own method) — a **reconstruction**.

EMO-Debias (Lin, Chou, Li Liang & Lee, arXiv 2506.04652) names "a novel Gap Regularization (GR)
technique" but its definition was not retrieved [U]. llmfair implements METHODS.md §2.11 [I]:

    L = L_ERM + λ_GR · R,     L̄_g = batch mean of ℓ_i over gender g (global batch)

with ``form``:

- ``abs`` (default): R = |L̄_F − L̄_M|;
- ``square``:        R = (L̄_F − L̄_M)²;
- ``gdl``: fairlib's ``Group_Difference_Loss`` (DyBT "GDL", ``fairlib/src/networks/DyBT/gdl.py``),
  R = Σ_g s_g L̄_g with s_g = +1 for a group whose loss is above the reference loss, −1 below
  (s_g is a comparison, so no gradient flows through the reference). ``gdl_reference="overall"``
  compares each gender's mean with the whole batch's mean loss (fairlib ``DyBTObj="g"``);
  ``gdl_reference="class"`` compares every (class, gender) cell with its class's mean loss
  (fairlib ``DyBTObj="EO"``, equal-opportunity style), class = the majority class c(x).
  λ_GR plays fairlib's ``DyBTalpha``.

Only ``female`` and ``male`` enter R (``unknown`` counts in L_ERM and in the reference means).
When a gender is absent from the global batch the gap is undefined and the term is skipped
(METHODS.md §2.11 pitfall); with ``gdl_reference="class"``, classes lacking a gender are skipped.
λ_GR's value in EMO-Debias is unknown; the default 1.0 is a choice [I].

Data-parallel: per-gender (per-cell) sums and counts are all-reduced; R and its coefficients are
computed from the global means, and each rank back-propagates the linearisation
Σ_g (∂R/∂L̄_g) · Σ_{local i∈g} ℓ_i / n_g^global, scaled by the world size, so DDP's averaging gives
the gradient of R on the global batch; the loss value is L_ERM + λ_GR · R exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from llmfair.errors import ConfigError
from llmfair.objectives._groups import gender_codes, majority_class
from llmfair.objectives.base import (
    CrossRankReducer,
    GroupSpec,
    Objective,
    ObjectiveInputs,
    ObjectiveOutput,
    register_objective,
)

FORMS = ("abs", "square", "gdl")
GDL_REFERENCES = ("overall", "class")


@dataclass
class GapRegularisationOptions:
    """Options of GR (METHODS.md §2.11, reconstruction)."""

    lambda_gr: float = field(default=1.0, metadata={"help": "λ_GR, the weight of the gap term"})
    form: str = field(default="abs", metadata={"help": f"gap term: one of {FORMS}"})
    gdl_reference: str = field(
        default="overall",
        metadata={"help": f"form gdl: compare with the overall or the class mean loss; one of {GDL_REFERENCES}"})

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise ConfigError(f"gr option form={self.form!r}; expected one of {FORMS}")
        if self.gdl_reference not in GDL_REFERENCES:
            raise ConfigError(f"gr option gdl_reference={self.gdl_reference!r}; expected one of {GDL_REFERENCES}")
        if not self.lambda_gr >= 0:
            raise ConfigError(f"gr option lambda_gr must be >= 0, got {self.lambda_gr}")


@register_objective("gr")
class GapRegularisation(Objective):
    """L_ERM + λ_GR · gap between the female and male mean losses (reconstruction; module docstring)."""

    options_class = GapRegularisationOptions
    reconstructed = True

    def __init__(self, group_spec: GroupSpec, options: GapRegularisationOptions | None = None,
                 reducer: CrossRankReducer | None = None) -> None:
        super().__init__(group_spec, options, reducer)
        if "gender" not in group_spec.keys:
            raise ConfigError(f"gr regularises the female–male loss gap; the GroupSpec has no 'gender' attribute "
                              f"(keys {list(group_spec.keys)})")
        codes = gender_codes(group_spec.column("gender"))
        self.register_buffer("gender_of_group", torch.tensor(codes, dtype=torch.long), persistent=False)
        self.by_class = self.options.form == "gdl" and self.options.gdl_reference == "class"
        self.depends_only_on_per_sample_loss = not self.by_class

    def _num_classes(self, inputs: ObjectiveInputs) -> int:
        """K, identical on every rank: from the logits, soft labels or the training statistics."""
        if inputs.logits is not None:
            return int(inputs.logits.shape[-1])
        if inputs.labels is not None and inputs.labels.ndim == 2:
            return int(inputs.labels.shape[-1])
        stats = getattr(self, "training_stats", None)
        if stats is not None:
            return int(stats.num_classes)
        raise ConfigError("gr with gdl_reference='class' needs the number of classes: pass logits or call setup()")

    def forward(self, inputs: ObjectiveInputs) -> ObjectiveOutput:
        loss = inputs.per_sample_loss
        erm, erm_value = self.global_mean(loss)
        gender = self.gender_of_group[inputs.group_ids.to(self.gender_of_group.device)].to(loss.device)
        known = gender >= 0
        if self.by_class:
            k = self._num_classes(inputs)
            classes = majority_class(inputs.labels, k, method="gr").to(loss.device)
        else:
            classes = torch.zeros_like(gender)
            k = 1
        # slots: (class, gender) cells, then one per class for the reference mean
        cell = classes[known] * 2 + gender[known]
        local_cell = loss.new_zeros(k * 2).index_add(0, cell, loss[known])
        local_n = torch.bincount(cell, minlength=k * 2).to(loss.dtype)
        class_sum = loss.new_zeros(k).index_add(0, classes, loss.detach())
        class_n = torch.bincount(classes, minlength=k).to(loss.dtype)
        packed = torch.cat([local_cell.detach(), local_n, class_sum, class_n]).double()
        total = self.reducer.sum(packed)
        cell_sum, cell_n = total[:2 * k].view(k, 2), total[2 * k:4 * k].view(k, 2)
        ref = total[4 * k:5 * k] / total[5 * k:].clamp_min(1)  # per-class (or overall) mean loss
        usable = (cell_n > 0).all(dim=1)  # both genders present
        means = cell_sum / cell_n.clamp_min(1)

        figures = {"erm_loss": erm_value}
        if not bool(usable.any()):
            figures["gr_term"] = 0.0
            return ObjectiveOutput(loss=erm, figures=figures)
        diff = means[:, 0] - means[:, 1]  # female − male
        opts = self.options
        if opts.form == "abs":
            coef = torch.stack([torch.sign(diff), -torch.sign(diff)], dim=1)
            value = diff.abs()
        elif opts.form == "square":
            coef = torch.stack([2 * diff, -2 * diff], dim=1)
            value = diff**2
        else:
            coef = torch.sign(means - ref[:, None])
            value = (coef * means).sum(dim=1)
        coef = torch.where(usable[:, None], coef, torch.zeros_like(coef))
        term = float(value[usable].sum())
        local_means = local_cell.view(k, 2) / cell_n.clamp_min(1).to(loss.dtype)
        linear = (coef.to(loss.dtype) * local_means).sum() * self.reducer.world_size
        figures["gr_term"] = term
        if not self.by_class:  # male − female, the sign every other gap in llmfair uses
            figures["diff"] = -float(diff[0])
        penalty = term + (linear - linear.detach())  # value R, gradient dR
        return ObjectiveOutput(loss=erm + opts.lambda_gr * penalty, figures=figures)
