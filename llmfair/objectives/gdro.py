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

This module also holds the group bookkeeping shared by ``rw``, ``pgdro`` and ``gr``:
:class:`GroupUnits` and :func:`majority_class`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from llmfair.errors import ConfigError, DataError
from llmfair.objectives.base import (
    CrossRankReducer,
    GroupSpec,
    Objective,
    ObjectiveInputs,
    ObjectiveOutput,
    TrainingStats,
    register_objective,
)

logger = logging.getLogger(__name__)

GROUPINGS = ("gender", "class_gender")
"""Values of the ``groups`` option of the DRO objectives."""


# ------------------------------------------------------------------------------------- groups
def majority_class(labels: torch.Tensor | None, num_classes: int | None = None, *, method: str = "objective") -> torch.Tensor:
    """c(x) per sample: ``labels.argmax(-1)`` for (B, K) soft labels, the index for (B,) labels.

    Raises:
        DataError: no labels were given, or a class index is outside [0, ``num_classes``).
    """
    if labels is None:
        raise DataError(f"{method} needs the batch labels (the majority class of each sample); the batch has none")
    classes = labels.argmax(dim=-1) if labels.ndim == 2 else labels.long()
    if num_classes is not None and classes.numel() and bool(((classes < 0) | (classes >= num_classes)).any()):
        bad = sorted(set(classes[(classes < 0) | (classes >= num_classes)].tolist()))
        raise DataError(f"{method}: class index(es) {bad} are outside [0, {num_classes})")
    return classes


@dataclass(frozen=True)
class GroupUnits:
    """The units a method balances over, as a map from GroupSpec group ids.

    With a ``gender`` attribute in the spec the units are its values (other attributes collapsed);
    without one (inferred groups such as clusters) every spec group is a unit of its own.

    Attributes:
        unit_of_group: (G_spec,) int64 unit index of each spec group id.
        names: the units' names (gender values, or the spec's group descriptions).
    """

    unit_of_group: np.ndarray
    names: tuple[str, ...]

    @classmethod
    def from_spec(cls, spec: GroupSpec) -> "GroupUnits":
        if "gender" in spec.keys:
            genders = spec.column("gender").astype(str)
            names = tuple(sorted(set(genders.tolist())))
            index = {g: i for i, g in enumerate(names)}
            return cls(np.array([index[g] for g in genders], dtype=np.int64), names)
        return cls(np.arange(spec.num_groups, dtype=np.int64), tuple(spec.describe(i) for i in range(spec.num_groups)))

    @property
    def num_units(self) -> int:
        """U, the number of units."""
        return len(self.names)

    def collapse(self, per_group: np.ndarray) -> np.ndarray:
        """Sum counts over the last axis from spec groups (…, G_spec) to units (…, U)."""
        per_group = np.asarray(per_group, dtype=np.float64)
        if per_group.shape[-1] != len(self.unit_of_group):
            raise DataError(f"counts have {per_group.shape[-1]} groups, the GroupSpec has {len(self.unit_of_group)}")
        onehot = np.eye(self.num_units)[self.unit_of_group]  # (G_spec, U)
        return per_group @ onehot

    def dro_names(self, grouping: str, num_classes: int | None) -> list[str]:
        """Names of the DRO groups: units, or ``c<k>/<unit>`` in class-major order."""
        if grouping == "gender":
            return list(self.names)
        return [f"c{c}/{u}" for c in range(num_classes or 0) for u in self.names]


def adopt_buffer_shapes(module: torch.nn.Module, state_dict: dict[str, Any], prefix: str, names: Sequence[str]) -> None:
    """Resize buffers that are sized by ``setup`` (or lazily) to the shapes in a checkpoint, so a
    fresh objective can load a state without having seen the training statistics."""
    for name in names:
        key = prefix + name
        current = getattr(module, name)
        if key in state_dict and current is not None and current.shape != state_dict[key].shape:
            setattr(module, name, torch.empty_like(state_dict[key], dtype=current.dtype, device=current.device))


# ------------------------------------------------------------------------------------- options
@dataclass
class GroupDROOptions:
    """Options of group DRO (METHODS.md §2.4)."""

    step_size: float = field(default=0.01, metadata={"help": "η of the exponentiated update of q (robust_step_size)"})
    groups: str = field(default="gender", metadata={"help": f"DRO groups: one of {GROUPINGS}"})
    gamma: float = field(default=0.1, metadata={"help": "γ of the EMA of group losses (logging only)"})

    def __post_init__(self) -> None:
        if self.groups not in GROUPINGS:
            raise ConfigError(f"group DRO option groups={self.groups!r}; expected one of {GROUPINGS}")
        if not self.step_size > 0:
            raise ConfigError(f"group DRO option step_size must be positive, got {self.step_size}")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"group DRO option gamma must be in (0, 1], got {self.gamma}")


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
class ExponentiatedGroupWeights(Objective):
    """The shared machinery of ``gdro``, ``gadro`` and ``pgdro``: q, its update and the loss.

    Subclasses compute local per-group loss sums (differentiable) and counts (possibly soft) and
    call :meth:`robust_loss`.
    """

    adjustment_value: float = 0.0

    def __init__(self, group_spec: GroupSpec, options: Any = None, reducer: CrossRankReducer | None = None) -> None:
        super().__init__(group_spec, options, reducer)
        self.units = GroupUnits.from_spec(group_spec)
        self.register_buffer("unit_of_group", torch.as_tensor(self.units.unit_of_group), persistent=False)
        self.num_classes: int | None = None
        n = self.units.num_units if self.options.groups == "gender" else 0
        self.register_buffer("adv_probs", torch.full((n,), 1.0 / max(n, 1), dtype=torch.float64))
        self.register_buffer("exp_avg_loss", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("exp_avg_initialized", torch.zeros(n, dtype=torch.bool))
        self.register_buffer("train_counts", torch.zeros(0, dtype=torch.float64))
        # the loss depends on labels when groups are (class, group) pairs
        self.depends_only_on_per_sample_loss = self.options.groups == "gender"

    @property
    def num_dro_groups(self) -> int:
        """The length of q (0 until K is known for class × group DRO)."""
        return int(self.adv_probs.numel())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        adopt_buffer_shapes(self, state_dict, prefix, ("adv_probs", "exp_avg_loss", "exp_avg_initialized", "train_counts"))
        if self.options.groups == "class_gender" and self.num_classes is None and prefix + "adv_probs" in state_dict:
            self.num_classes = state_dict[prefix + "adv_probs"].numel() // self.units.num_units
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _allocate(self, num_groups: int) -> None:
        device = self.adv_probs.device
        self.adv_probs = torch.full((num_groups,), 1.0 / num_groups, dtype=torch.float64, device=device)
        self.exp_avg_loss = torch.zeros(num_groups, dtype=torch.float64, device=device)
        self.exp_avg_initialized = torch.zeros(num_groups, dtype=torch.bool, device=device)

    def _ensure_groups(self, num_classes: int | None) -> None:
        """Size q for class × group DRO once K is known (from setup, else from the first batch)."""
        if self.options.groups != "class_gender" or self.num_dro_groups:
            return
        if num_classes is None:
            raise ConfigError(f"{self.name} with groups='class_gender' needs the number of classes: call "
                              "setup(TrainingStats) before training or pass (B, K) logits or soft labels")
        self.num_classes = int(num_classes)
        self._allocate(self.num_classes * self.units.num_units)

    def setup_counts(self, counts: np.ndarray) -> None:
        """Keep the training count of every DRO group and start q uniform over the non-empty ones."""
        counts = np.asarray(counts, dtype=np.float64).reshape(-1)
        if counts.shape != (self.num_dro_groups,):
            raise DataError(f"{self.name}: {counts.size} training counts for {self.num_dro_groups} DRO groups")
        self.train_counts = torch.as_tensor(counts, dtype=torch.float64, device=self.adv_probs.device)
        nonempty = self.train_counts > 0
        if not bool(nonempty.any()):
            raise DataError(f"{self.name}: every DRO group is empty in the training set")
        if not bool(nonempty.all()):
            names = self.group_names()
            logger.warning("%s: DRO group(s) %s have no training example; they get q = 0", self.name,
                           [names[i] for i in torch.nonzero(~nonempty).flatten().tolist()])
        self.adv_probs = nonempty.double() / nonempty.sum()

    def group_names(self) -> list[str]:
        """Names of the DRO groups (for figures and warnings), in q's order."""
        return self.units.dro_names(self.options.groups, self.num_classes)

    def class_of(self, inputs: ObjectiveInputs) -> torch.Tensor:
        """The majority class of each sample (class × group DRO)."""
        return majority_class(inputs.labels, self.num_classes, method=self.name)

    def infer_num_classes(self, inputs: ObjectiveInputs) -> int | None:
        """K from the batch's (B, K) logits or soft labels, None when neither is there."""
        if inputs.logits is not None:
            return int(inputs.logits.shape[-1])
        if inputs.labels is not None and inputs.labels.ndim == 2:
            return int(inputs.labels.shape[-1])
        return None

    def adjustment(self) -> torch.Tensor:
        """C/√n_g per DRO group (0 for groups without training examples), or zeros when C = 0."""
        c = float(self.adjustment_value)
        if c <= 0:
            return torch.zeros_like(self.adv_probs)
        if self.train_counts.numel() != self.num_dro_groups:
            raise ConfigError(f"{self.name} needs the training group counts for its adjustment C/√n_g: call "
                              "setup(TrainingStats) before training")
        n = self.train_counts
        return torch.where(n > 0, c / n.clamp_min(1e-12).sqrt(), torch.zeros_like(n))

    def robust_loss(self, per_sample_loss: torch.Tensor, local_sum: torch.Tensor, local_count: torch.Tensor) -> ObjectiveOutput:
        """Steps 1–3 of the module docstring from this rank's per-group sums and counts.

        Args:
            per_sample_loss: (B,) this rank's per-sample losses (for the ERM figure).
            local_sum: (n,) differentiable Σ of (membership-weighted) losses per DRO group.
            local_count: (n,) (soft) sample counts per DRO group.
        """
        n = self.num_dro_groups
        dtype = local_sum.dtype
        packed = torch.cat([local_sum.detach().double(), local_count.detach().double(),
                            local_sum.new_tensor([float(per_sample_loss.numel())], dtype=torch.float64),
                            per_sample_loss.detach().sum().double().reshape(1)])
        total = self.reducer.sum(packed)
        group_sum, group_count = total[:n], total[n:2 * n]
        n_global, loss_total = float(total[2 * n]), float(total[2 * n + 1])
        denom = group_count + (group_count == 0).double()  # the reference's guard: absent → mean 0
        group_mean = group_sum / denom

        if self.training:
            adjusted = group_mean + self.adjustment()
            self.adv_probs = torch.softmax(torch.log(self.adv_probs) + self.options.step_size * adjusted, dim=0)
            present = group_count > 0
            keep = (1 - self.options.gamma * present.double()) * self.exp_avg_initialized.double()
            self.exp_avg_loss = self.exp_avg_loss * keep + group_mean * (1 - keep)
            self.exp_avg_initialized = self.exp_avg_initialized | present

        q = self.adv_probs
        surrogate = (q.to(dtype) * local_sum / denom.to(dtype)).sum() * self.reducer.world_size
        robust_value = float((q * group_mean).sum())
        names = self.group_names()
        figures = {"robust_loss": robust_value, "erm_loss": loss_total / max(n_global, 1.0)}
        q_list, mean_list, present_list = q.tolist(), group_mean.tolist(), (group_count > 0).tolist()  # one copy each
        for name, q_g, mean_g, present_g in zip(names, q_list, mean_list, present_list):
            figures[f"q/{name}"] = q_g
            if present_g:
                figures[f"group_loss/{name}"] = mean_g
        return ObjectiveOutput(loss=surrogate, figures=figures)


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
