"""LfF: Learning from Failure (Nam, Cha, Ahn, Lee & Shin, NeurIPS 2020), for a head on frozen features.

Two models train side by side: the objective's own *biased* model f_B, trained with the
generalized cross-entropy (GCE) so that it latches on to whatever is easiest (the shortcut), and the
debiased model f_D — the model being trained — whose per-sample loss is re-weighted towards the
samples f_B finds hard. No bias labels are needed. Per step (METHODS.md §2.7; ``alinlab/LfF``
``train.py``, ``util.py``, ``module/loss.py``):

1. per-sample losses of both models, detached: ℓ^B_i (soft CE of f_B) and ℓ^D_i (the model's
   ``per_sample_loss``);
2. per-sample EMA over the training set, indexed by the dataset index ``sample_index``:
   ``e_i ← α·e_i + (1 − α·u_i)·ℓ_i`` with u_i = 0 on the first visit (so e_i = ℓ_i), then 1; α = 0.7;
3. class-wise normalisation ``ê_i = e_i / max_{j: c(j) = c(i)} e_j`` over *all* training indices
   of the class (a vectorised scatter-max over the EMA buffer: exact, O(N) on-device per step);
4. ``W_i = ê^B_i / (ê^B_i + ê^D_i + 1e-8)``, detached;
5. ``L = mean_i GCE(f_B(x_i), y_i) + mean_i W_i · ℓ^D_i`` — one backward pass; f_B's parameters
   belong to this objective and join the optimiser through :class:`llmfair.training.FairTrainer`;
6. GCE as implemented in the reference: ``q · sg(p_y^q) · CE`` with q = 0.7, whose gradient is q times
   that of the GCE of Zhang & Sabuncu 2018, ``(1 − p_y^q) / q``.

Adaptation to frozen SSL features and distributional labels (METHODS.md §2.7, [I]):

- f_B copies the EMO-SUPERB head: learnable softmax layer weighting (per-layer inputs (B, L, D)),
  ``Linear(D → 256)``, ``Linear(256 → K)``. It reads ``ObjectiveInputs.inputs`` (the frozen input
  features the model returns as ``outputs["inputs"]``); when the model does not return them, it
  reads the model's ``features`` *detached* (so f_B cannot shape the debiased representation).
  The input size is inferred on the first batch (lazy parameters).
- Soft labels: CE is the soft cross-entropy ``−Σ_c y_c log p_c`` and ``p_y := Σ_c y_c p_c``; the
  class-wise maximum uses the majority class ``c(x) = argmax_c y_c``. f_B's CE is not class-balanced
  (the reference uses plain CE for both models); ℓ^D is whatever the model's base loss is
  (class-balanced soft CE on the EMO-SUPERB head).

Defaults: q = 0.7, α = 0.7 (reference ``config.py`` and ``train.py``; METHODS.md §6). The reference
uses Adam, learning rate 1e-3, batch 256; llmfair leaves optimisation to the trainer. Predictions
come from the debiased model (the model itself).

Implementation notes:

- The EMA needs stable dataset indices: the batch must carry ``sample_index`` in
  ``[0, num_examples)``; :meth:`LfF.setup` sizes the buffers from ``TrainingStats.num_examples``.
- Data-parallel: the batch's losses are scattered into a dense (N,) buffer and summed over ranks
  before the EMA update, so every rank holds the same EMA (an index seen twice in one global step
  — samplers with replacement — is updated once with the mean of its losses). The loss is scaled
  like :meth:`Objective.global_mean`.
- In evaluation mode (dev loss) the EMA is neither read nor updated — dev indices are not training
  indices — and the loss is the debiased model's mean base loss.
- The EMA buffers and f_B are registered state, so checkpoints carry them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from llmfair.errors import ConfigError
from llmfair.objectives._bias_model import (
    WEIGHT_EPS,
    LazyLayerMLP,
    PerSampleLossEMA,
    auxiliary_input,
    generalized_cross_entropy,
    label_probability,
)
from llmfair.objectives._groups import majority_class
from llmfair.objectives._state import SizedBySetup, require_batch_fields
from llmfair.objectives.base import (
    CrossRankReducer,
    GroupSpec,
    ObjectiveInputs,
    ObjectiveOutput,
    TrainingStats,
    register_objective,
)
from llmfair.ssl.losses import soft_cross_entropy

__all__ = [
    "WEIGHT_EPS", "LazyLayerMLP", "LfF", "LfFOptions", "PerSampleLossEMA", "aligned_cells", "auxiliary_input",
    "generalized_cross_entropy", "label_probability", "majority_class", "require_batch_fields",
]


# ------------------------------------------------------------------------------------- objective
@dataclass
class LfFOptions:
    """Options of LfF (Nam et al. 2020; METHODS.md §2.7)."""

    q: float = field(default=0.7, metadata={"help": "GCE exponent q of the biased model (reference: 0.7)"})
    ema_alpha: float = field(default=0.7, metadata={"help": "α of the per-sample loss EMA (reference: 0.7)"})
    bias_hidden: int = field(default=256, metadata={"help": "projector size of the biased model (EMO-SUPERB head: 256)"})

    def __post_init__(self) -> None:
        if not 0 < self.q <= 1:
            raise ConfigError(f"lff option q={self.q}: expected 0 < q <= 1")
        if not 0 <= self.ema_alpha < 1:
            raise ConfigError(f"lff option ema_alpha={self.ema_alpha}: expected 0 <= ema_alpha < 1")
        if self.bias_hidden < 1:
            raise ConfigError(f"lff option bias_hidden={self.bias_hidden}: expected a positive size")


def aligned_cells(class_group_counts: Any) -> torch.Tensor:
    """(K, G) bool: cell (c, g) is bias-aligned when g is the most frequent group of class c in
    training (ties: every tied group); the rest of a class's cells are bias-conflicting."""
    counts = torch.as_tensor(class_group_counts, dtype=torch.float64)
    return (counts == counts.max(dim=1, keepdim=True).values) & (counts > 0)


@register_objective("lff")
class LfF(SizedBySetup):
    """Learning from Failure: GCE-trained biased model re-weights the model's per-sample loss.

    ``L = mean_i q·sg(p_{B,y}^q)·CE(f_B(x_i), y_i) + mean_i W_i ℓ^D_i`` with
    ``W_i = ê^B_i / (ê^B_i + ê^D_i + 1e-8)`` from class-normalised per-sample loss EMAs (see the
    module docstring; Nam et al. 2020, Algorithm 1 and Eq. 3, ``alinlab/LfF`` ``train.py``).
    Needs ``sample_index`` and ``labels`` in the batch, and :meth:`setup` before training.

    Figures: ``w_mean``, ``w_aligned`` / ``w_conflicting`` (mean W over the batch's samples whose
    group is / is not the most frequent group of their class in training, when present),
    ``bias_loss`` (mean CE of f_B), ``debiased_loss`` (mean ℓ^D), ``gce_loss``.
    """

    options_class = LfFOptions
    setup_builds = "the per-sample EMA and the biased model are built there"
    setup_state_prefixes = ("ema.", "biased.")

    def __init__(self, group_spec: GroupSpec, options: LfFOptions | None = None,
                 reducer: CrossRankReducer | None = None) -> None:
        super().__init__(group_spec, options, reducer)
        self.ema: PerSampleLossEMA | None = None
        self.biased: LazyLayerMLP | None = None

    def build(self, stats: TrainingStats, device: torch.device) -> None:
        """Size the EMA buffers (N = ``stats.num_examples``) and build f_B with K classes
        (:meth:`setup` calls this once; a second setup with the same N and K changes nothing)."""
        self.ema = PerSampleLossEMA(2, int(stats.num_examples), self.options.ema_alpha).to(device)
        self.biased = LazyLayerMLP((self.options.bias_hidden, self.num_classes)).to(device)
        self.register_buffer("aligned", aligned_cells(stats.class_group_counts).to(device), persistent=False)

    def forward(self, inputs: ObjectiveInputs) -> ObjectiveOutput:
        if not self.training:
            loss, value = self.global_mean(inputs.per_sample_loss)
            return ObjectiveOutput(loss=loss, figures={"debiased_loss": value})
        self.require_setup()
        require_batch_fields(inputs, "lff", ("labels", "sample_index"))
        labels = inputs.labels.to(inputs.per_sample_loss.device)
        classes = majority_class(labels)

        logits_b = self.biased(auxiliary_input(inputs.inputs, inputs.features, "lff"))
        gce = generalized_cross_entropy(logits_b, labels, self.options.q)
        ce_b = soft_cross_entropy(logits_b.detach(), labels)
        ce_d = inputs.per_sample_loss

        index = inputs.sample_index.to(self.ema.seen.device)
        self.ema.update(torch.stack([ce_b, ce_d.detach()]), index, classes, self.reducer)
        e_b, e_d = self.ema.normalised(index, classes, self.num_classes).to(ce_d.dtype)
        weight = (e_b / (e_b + e_d + WEIGHT_EPS)).detach()

        loss, _ = self.global_mean(gce + weight * ce_d)
        figures = self._figures(weight, inputs.group_ids, classes)
        figures.update({"gce_loss": float(gce.detach().mean()), "bias_loss": float(ce_b.mean()),
                        "debiased_loss": float(ce_d.detach().mean())})
        return ObjectiveOutput(loss=loss, figures=figures)

    def _figures(self, weight: torch.Tensor, group_ids: torch.Tensor, classes: torch.Tensor) -> dict[str, float]:
        figures = {"w_mean": float(weight.mean())}
        aligned = self.aligned[classes.to(self.aligned.device), group_ids.to(self.aligned.device)].to(weight.device)
        for name, mask in (("w_aligned", aligned), ("w_conflicting", ~aligned)):
            if bool(mask.any()):
                figures[name] = float(weight[mask].mean())
        return figures

    def sample_weights(self) -> torch.Tensor:
        """W_i (N,) for every training index from the current EMAs (0 for unvisited indices).

        Useful to inspect which training samples LfF up-weights (bias-conflicting ones should).
        """
        self.require_setup()
        index = torch.arange(self.ema.num_examples, device=self.ema.seen.device)
        e_b, e_d = self.ema.normalised(index, self.ema.classes, self.num_classes)
        return e_b / (e_b + e_d + WEIGHT_EPS)
