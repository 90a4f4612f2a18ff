"""The exponentiated group weights of the DRO objectives (private): ``gdro``, ``gadro`` and ``pgdro``.

:class:`ExponentiatedGroupWeights` holds q, its online update (Sagawa et al. 2020, Algorithm 1;
``kohpangwei/group_DRO`` ``loss.py``) and the robust loss; :mod:`llmfair.objectives.gdro` documents
the equations, defaults and deviations. :class:`GroupDROOptions` are the options the three share.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from llmfair.errors import ConfigError, DataError
from llmfair.objectives._groups import GroupUnits, majority_class
from llmfair.objectives._state import adopt_buffer_shapes
from llmfair.objectives.base import CrossRankReducer, GroupSpec, Objective, ObjectiveInputs, ObjectiveOutput

logger = logging.getLogger(__name__)

GROUPINGS = ("gender", "class_gender")
"""Values of the ``groups`` option of the DRO objectives."""


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
