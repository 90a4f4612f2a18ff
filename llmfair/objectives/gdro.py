"""Group DRO (``gdro``) and group-adjusted DRO (``gadro``): the online algorithm of Sagawa et al.

Sagawa, Koh, Hashimoto & Liang, "Distributionally Robust Neural Networks for Group Shifts", ICLR
2020, Algorithm 1; the code is ``kohpangwei/group_DRO`` ``loss.py``
``LossComputer.compute_robust_loss`` (METHODS.md §2.4–2.5). The IDI paper writes GDRO as
L = max_g L^{(g)} (its Eq. 2, citing Ben-Tal et al. 2013) and GADRO as
L = max_g (L^{(g)} + λ_GD / √n_g) (its Eq. 3); both are trained with the online algorithm. Per step:

1. per-group batch means ℓ̄_g = Σ_{i∈B, g_i=g} ℓ_i / max(1, n_g^B) — a group absent from the batch
   gets ℓ̄_g = 0, as in the reference (its weight is then multiplied by exp(0) = 1, so after the
   renormalisation it usually shrinks relative to the groups that were present);
2. q_g ← q_g · exp(η · ℓ̃_g), q ← q / Σ_g q_g, with ℓ̃_g = ℓ̄_g (detached) for GDRO and
   ℓ̃_g = ℓ̄_g + C / √n_g for GADRO, where n_g is the *training-set* group count from
   :meth:`~llmfair.objectives.Objective.setup`; the adjustment applies only when C > 0, as in the
   reference (``if torch.all(self.adj > 0)``);
3. L = Σ_g q_g ℓ̄_g with the updated q.

Defaults (METHODS.md §2.4–2.5, §6): η = 0.01 (``robust_step_size``), C = 4 (λ_GD of the IDI paper),
groups = gender. The reference adds C/√n_g to the group losses in place, so its returned robust
loss contains that constant; llmfair logs Σ_g q_g ℓ̄_g *without* it (the gradient is the same).

Groups (option ``groups``): ``gender`` — the ``gender`` attribute of the GroupSpec when it has one
(other attributes such as language are collapsed; ``unknown`` is a group of its own), otherwise the
GroupSpec's groups as they are (inferred groups such as k-means clusters); ``class_gender`` —
(majority class c(x), group) pairs, Sagawa's (y, a) groups. q only changes in training mode.

Deviations where the reference is silent or would fail [I]: a group with no training example is
given q = 0 from :meth:`setup` on (the reference assumes every group has data) and no adjustment
(C/√0 would be infinite); the exponentiated update is computed as softmax(log q + η ℓ̃), which is
the same formula without overflow.

Data-parallel: per-group sums and counts are all-reduced in one call, so the means, q and the loss
are those of the global batch and q is identical on every rank; each rank's loss is scaled so that
DDP's gradient averaging gives the gradient of Σ_g q_g ℓ̄_g on the global batch. q, the training
counts and the logging EMA are buffers, so checkpoints carry them.

The machinery shared with ``pgdro`` — q, its update and the robust loss — is
:class:`llmfair.objectives._dro.ExponentiatedGroupWeights`; the group bookkeeping (:class:`GroupUnits`,
:func:`majority_class`) is :mod:`llmfair.objectives._groups`. Both are re-exported here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from llmfair.errors import ConfigError
from llmfair.objectives._dro import GROUPINGS, ExponentiatedGroupWeights, GroupDROOptions
from llmfair.objectives._groups import GroupUnits, majority_class
from llmfair.objectives._state import adopt_buffer_shapes
from llmfair.objectives.base import ObjectiveInputs, ObjectiveOutput, TrainingStats, register_objective

__all__ = [
    "GROUPINGS", "ExponentiatedGroupWeights", "GroupAdjustedDRO", "GroupAdjustedDROOptions", "GroupDRO",
    "GroupDROOptions", "GroupUnits", "adopt_buffer_shapes", "majority_class",
]


# ------------------------------------------------------------------------------------- options
@dataclass
class GroupAdjustedDROOptions(GroupDROOptions):
    """Options of group-adjusted DRO (METHODS.md §2.5)."""

    adjustment: float = field(
        default=4.0, metadata={"help": "C (λ_GD): ℓ̃_g = ℓ̄_g + C/√n_g in the update of q; 0 disables it"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.adjustment >= 0:
            raise ConfigError(f"gadro option adjustment must be >= 0, got {self.adjustment}")


# ------------------------------------------------------------------------------------- objectives
@register_objective("gdro")
class GroupDRO(ExponentiatedGroupWeights):
    """Group DRO, Sagawa et al.'s online algorithm: L = Σ_g q_g ℓ̄_g with q_g ∝ q_g·exp(η ℓ̄_g).

    See the module docstring for the equations, defaults and the handling of absent groups.
    """

    options_class = GroupDROOptions

    def setup(self, stats: TrainingStats) -> None:
        """Keep the training count per DRO group (GADRO's n_g) and size q for class × group DRO."""
        super().setup(stats)
        if self.options.groups == "gender":
            counts = self.units.collapse(stats.group_counts)
        else:
            self.num_classes = None
            self.adv_probs = self.adv_probs.new_zeros(0)
            self._ensure_groups(stats.num_classes)
            counts = self.units.collapse(stats.class_group_counts)  # (K, U), class-major like the ids
        self.setup_counts(counts)

    def dro_group_ids(self, inputs: ObjectiveInputs) -> torch.Tensor:
        """(B,) DRO group of each sample: its unit, or class · U + unit."""
        units = self.unit_of_group[inputs.group_ids.to(self.unit_of_group.device)]
        if self.options.groups == "gender":
            return units
        return self.class_of(inputs).to(units.device) * self.units.num_units + units

    def forward(self, inputs: ObjectiveInputs) -> ObjectiveOutput:
        self._ensure_groups(self.infer_num_classes(inputs))
        loss = inputs.per_sample_loss
        ids = self.dro_group_ids(inputs).to(loss.device)
        n = self.num_dro_groups
        local_sum = loss.new_zeros(n).index_add(0, ids, loss)
        local_count = torch.bincount(ids, minlength=n).to(loss.dtype)
        return self.robust_loss(loss, local_sum, local_count)


@register_objective("gadro")
class GroupAdjustedDRO(GroupDRO):
    """Group-adjusted DRO: group DRO with ℓ̃_g = ℓ̄_g + C/√n_g in the update of q (C = 4).

    IDI paper Eq. 3; ``kohpangwei/group_DRO`` ``--generalization_adjustment``. n_g are training
    counts (call :meth:`setup`). With 1:20 imbalance √n_g is small for the minority, so the
    adjustment favours it strongly — intended (METHODS.md §2.5).
    """

    options_class = GroupAdjustedDROOptions

    @property
    def adjustment_value(self) -> float:  # type: ignore[override]
        return float(self.options.adjustment)
