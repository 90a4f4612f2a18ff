"""RW: reweighting by the inverse frequency of the group inside the emotion class.

Kamiran & Calders, "Data preprocessing techniques for classification without discrimination",
KAIS 2012, as modified by the IDI paper (Lin, Chou & Lee, Interspeech 2025, Eq. 1; METHODS.md §2.2):

    L_RW = Σ_c Σ_g (n_c / n_{c,g}) · L^{(c,g)},      n_c = Σ_g n_{c,g}   (training counts)

Kamiran–Calders' weight is n_c·n_g / (N·n_{c,g}); IDI drops n_g/N, so every non-empty (class, group)
cell carries the same total weight n_c. **Reconstruction** of the per-sample form [I]:
ω_i = n_{c(i)} / n_{c(i),g(i)} with c(i) the majority class (``labels.argmax(-1)`` for soft labels)
and

- ``normalise="weights"`` (default): L = Σ_{i∈B} ω_i ℓ_i / Σ_{i∈B} ω_i,
- ``normalise="batch"``:              L = Σ_{i∈B} ω_i ℓ_i / |B|,

both over the *global* batch (the denominator is all-reduced across data-parallel ranks, and each
rank's loss is scaled so DDP's gradient averaging yields the global-batch gradient). Empty training
cells (common with many inferred clusters) get weight 0 — the division is guarded; a batch whose
weights are all 0 contributes a zero loss.

Groups are the GroupSpec's ``gender`` values when the spec has that attribute (other attributes
collapsed), else its groups as given (inferred groups, e.g. clusters). Counts come from
:meth:`setup` (``TrainingStats.class_group_counts``: single-label rows) and are kept as the
``cell_weights`` buffer (K, G), so checkpoints carry them. At 1:20 the minority weight is about 21
against about 1.05 for the majority (e.g. angry-F: 252/12): keep the batch at 32 as in the paper.
The loss depends on the labels, so the trainer's exact gradient accumulation does not apply.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from llmfair.errors import ConfigError
from llmfair.objectives._groups import GroupUnits, majority_class
from llmfair.objectives._state import adopt_buffer_shapes
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

NORMALISATIONS = ("weights", "batch")


@dataclass
class ReweightingOptions:
    """Options of RW (METHODS.md §2.2)."""

    normalise: str = field(
        default="weights",
        metadata={"help": f"divide Σ ω_i ℓ_i by Σ ω_i (weights) or by the batch size (batch); one of {NORMALISATIONS}"})

    def __post_init__(self) -> None:
        if self.normalise not in NORMALISATIONS:
            raise ConfigError(f"rw option normalise={self.normalise!r}; expected one of {NORMALISATIONS}")


def reweighting_weights(class_group_counts: np.ndarray) -> np.ndarray:
    """(K, G) cell weights n_c / n_{c,g} (IDI Eq. 1), 0 for empty cells."""
    counts = np.asarray(class_group_counts, dtype=np.float64)
    n_c = counts.sum(axis=1, keepdims=True)
    return np.divide(np.broadcast_to(n_c, counts.shape), counts, out=np.zeros_like(counts), where=counts > 0)


@register_objective("rw")
class Reweighting(Objective):
    """L = Σ ω_i ℓ_i / Σ ω_i with ω_i = n_{c(i)} / n_{c(i),g(i)} (see the module docstring)."""

    options_class = ReweightingOptions
    depends_only_on_per_sample_loss = False

    def __init__(self, group_spec: GroupSpec, options: ReweightingOptions | None = None,
                 reducer: CrossRankReducer | None = None) -> None:
        super().__init__(group_spec, options, reducer)
        self.units = GroupUnits.from_spec(group_spec)
        self.register_buffer("unit_of_group", torch.as_tensor(self.units.unit_of_group), persistent=False)
        self.register_buffer("cell_weights", torch.zeros(0, self.units.num_units, dtype=torch.float64))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        adopt_buffer_shapes(self, state_dict, prefix, ("cell_weights",))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def setup(self, stats: TrainingStats) -> None:
        """Compute the cell weights n_c / n_{c,g} from the training counts."""
        super().setup(stats)
        counts = self.units.collapse(stats.class_group_counts)
        weights = reweighting_weights(counts)
        self.cell_weights = torch.as_tensor(weights, dtype=torch.float64, device=self.cell_weights.device)
        empty = [(c, self.units.names[g]) for c, g in zip(*np.nonzero((counts == 0) & (counts.sum(1, keepdims=True) > 0)))]
        if empty:
            logger.warning("rw: %d empty (class, group) training cell(s) get no weight: %s", len(empty), empty[:16])

    def sample_weights(self, inputs: ObjectiveInputs) -> torch.Tensor:
        """ω_i for the batch (float64)."""
        if self.cell_weights.shape[0] == 0:
            raise ConfigError("rw needs the training counts n_{c,g}: call setup(TrainingStats) before training")
        classes = majority_class(inputs.labels, self.cell_weights.shape[0], method="rw").to(self.cell_weights.device)
        units = self.unit_of_group[inputs.group_ids.to(self.unit_of_group.device)]
        return self.cell_weights[classes, units]

    def forward(self, inputs: ObjectiveInputs) -> ObjectiveOutput:
        loss = inputs.per_sample_loss
        weights = self.sample_weights(inputs).to(loss.device)
        weighted = (weights.to(loss.dtype) * loss).sum()
        packed = torch.stack([weights.sum(), weighted.detach().double(), loss.detach().sum().double(),
                              torch.tensor(float(loss.numel()), dtype=torch.float64, device=weights.device)])
        w_total, weighted_total, loss_total, n_global = self.reducer.sum(packed).tolist()
        denom = w_total if self.options.normalise == "weights" else n_global
        figures = {"erm_loss": loss_total / max(n_global, 1.0), "mean_weight": w_total / max(n_global, 1.0)}
        if denom <= 0:  # no weighted loss this batch: left out of the logged average, not logged as 0
            return ObjectiveOutput(loss=loss.sum() * 0.0, figures=figures)
        figures["rw_loss"] = weighted_total / denom
        return ObjectiveOutput(loss=weighted * (self.reducer.world_size / denom), figures=figures)
