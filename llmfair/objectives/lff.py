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

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter

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
from llmfair.objectives.gdro import majority_class  # noqa: F401  (c(x); shared with gdro, rw, gr, disent)
from llmfair.ssl.losses import soft_cross_entropy

logger = logging.getLogger(__name__)

WEIGHT_EPS = 1e-8
"""The reference's additive constant in W = ê^B / (ê^B + ê^D + 1e-8)."""


# ------------------------------------------------------------------------------------- losses
def label_probability(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """p_y: softmax probability of the label, ``Σ_c y_c p_c`` for label distributions (B,)."""
    probs = torch.softmax(logits, dim=-1)
    if labels.ndim == 1:
        return probs.gather(1, labels.long().unsqueeze(1)).squeeze(1)
    return (labels.to(probs.dtype) * probs).sum(dim=-1)


def generalized_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, q: float = 0.7,
                              class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """GCE as implemented by LfF (``module/loss.py``): ``q · sg(p_y^q) · CE(logits, y)``, per sample (B,).

    With one-hot labels its gradient is q times that of Zhang & Sabuncu's (2018) GCE
    ``(1 − p_y^q) / q``: ``∇[(1 − p^q)/q] = −p^{q−1} ∇p = p^q ∇(−log p)``. It up-weights samples the
    model already fits (large p_y), which is what makes the biased model biased.

    Args:
        logits: (B, K).
        labels: (B,) class indices or (B, K) distributions (then CE is the soft cross-entropy and
            p_y = Σ_c y_c p_c — the multi-label adaptation of METHODS.md §2.7).
        q: the GCE exponent (0.7 in LfF and DisEnt).
        class_weights: optional (K,) class-balanced weights for the CE factor (METHODS.md §1.3).
    """
    if not 0 < q <= 1:
        raise ConfigError(f"generalized cross-entropy: q must be in (0, 1], got {q}")
    p_y = label_probability(logits, labels)
    return q * p_y.detach().pow(q) * soft_cross_entropy(logits, labels, class_weights=class_weights)


# ------------------------------------------------------------------------------------- state
class PerSampleLossEMA(nn.Module):
    """Exponential moving averages of per-sample losses over a dataset, for M tracked models.

    ``values`` (M, N) holds e_i per model, ``seen`` (N,) whether index i was visited, ``classes``
    (N,) its majority class. Update (LfF ``util.EMA``): ``e_i ← α e_i + (1 − α u_i) ℓ_i``.
    All buffers are persistent, so checkpoints carry them.
    """

    def __init__(self, num_tracks: int, num_examples: int, alpha: float) -> None:
        super().__init__()
        if num_examples < 1:
            raise ConfigError(f"per-sample EMA: the training set is empty (num_examples={num_examples})")
        self.alpha = float(alpha)
        self.register_buffer("values", torch.zeros(num_tracks, num_examples))
        self.register_buffer("seen", torch.zeros(num_examples, dtype=torch.bool))
        self.register_buffer("classes", torch.zeros(num_examples, dtype=torch.long))

    @property
    def num_examples(self) -> int:
        return self.seen.numel()

    def check_index(self, index: torch.Tensor) -> torch.Tensor:
        """``index`` as int64 on the buffers' device; DataError when outside [0, N)."""
        index = index.to(self.seen.device).long()
        if index.ndim != 1:
            raise DataError(f"sample_index must be (B,), got shape {tuple(index.shape)}")
        bad = (index < 0) | (index >= self.num_examples)
        if bool(bad.any()):
            raise DataError(f"sample_index values {sorted(set(index[bad].tolist()))[:8]} are outside the training set "
                            f"[0, {self.num_examples}); the batch must carry dataset indices of the training split")
        return index

    @torch.no_grad()
    def update(self, losses: torch.Tensor, index: torch.Tensor, classes: torch.Tensor,
               reducer: CrossRankReducer | None = None) -> None:
        """Fold one (global) batch of detached losses (M, B) into the averages.

        The batch is scattered into dense (N,) sums and counts and summed over ranks first, so all
        ranks apply the same update; an index present k times is updated once with its mean loss.
        """
        index = self.check_index(index)
        m, n = self.values.shape
        if losses.shape != (m, index.numel()):
            raise DataError(f"per-sample EMA: losses {tuple(losses.shape)} do not match ({m}, {index.numel()})")
        dense = self.values.new_zeros(m + 2, n)
        dense[:m].index_add_(1, index, losses.detach().to(dense.dtype))
        dense[m].index_add_(0, index, torch.ones_like(index, dtype=dense.dtype))
        dense[m + 1].index_add_(0, index, classes.to(index.device).to(dense.dtype))
        if reducer is not None:
            dense = reducer.sum(dense)
        count = dense[m]
        hit = count > 0
        mean = dense[:m] / count.clamp_min(1)
        updated = self.alpha * self.values + (1 - self.alpha * self.seen.to(self.values.dtype)) * mean
        self.values.copy_(torch.where(hit, updated, self.values))
        self.classes.copy_(torch.where(hit, torch.round(dense[m + 1] / count.clamp_min(1)).long(), self.classes))
        self.seen |= hit

    def class_max(self, num_classes: int) -> torch.Tensor:
        """(M, K): per class, the largest EMA over every training index of that class (0 when none).

        Unvisited indices hold e = 0 and losses are non-negative, so they never change a maximum.
        """
        m = self.values.shape[0]
        out = self.values.new_zeros(m, num_classes)
        return out.scatter_reduce(1, self.classes.unsqueeze(0).expand(m, -1), self.values, reduce="amax", include_self=True)

    def normalised(self, index: torch.Tensor, classes: torch.Tensor, num_classes: int) -> torch.Tensor:
        """ê (M, B): the batch's EMA divided by its class maximum (0 where the class maximum is 0)."""
        index = self.check_index(index)
        classes = classes.to(index.device).long()
        top = self.class_max(num_classes)[:, classes]
        return self.values[:, index] / top.clamp_min(torch.finfo(top.dtype).tiny)


# ------------------------------------------------------------------------------------- auxiliary models
class LazyLayerMLP(LazyModuleMixin, nn.Module):
    """An auxiliary model on frozen features whose input size is read from the first batch.

    ``x`` (B, L, D) per-layer features are combined by a learnable softmax layer weighting
    (s3prl style, initialised uniform, as in :class:`llmfair.ssl.head.EmoSuperbHead`); (B, D)
    features pass through (their single "layer" weight is softmax of one logit, constant 1).
    Then ``Linear(D → sizes[0])``, ``Linear(sizes[0] → sizes[1])`` ..., with ReLU between the
    linear layers when ``activation`` is set, and a LayerNorm on the output when ``output_norm`` is
    set. ``sizes = (256, K)`` without activation is a copy of the EMO-SUPERB head (LfF's biased
    model); ``(h, d)`` with activation and output norm is DisEnt's bias encoder E_b.

    Parameters are lazy until the first forward (or a ``load_state_dict``); an optimiser built
    before that holds the same parameter objects, which become ordinary parameters in place.
    """

    def __init__(self, sizes: Sequence[int], *, activation: bool = False, output_norm: bool = False) -> None:
        super().__init__()
        sizes = [int(s) for s in sizes]
        if not sizes or min(sizes) < 1:
            raise ConfigError(f"auxiliary model sizes must be positive, got {sizes}")
        self.layer_logits = UninitializedParameter()
        layers: list[nn.Module] = [nn.LazyLinear(sizes[0])]
        for before, after in zip(sizes[:-1], sizes[1:]):
            if activation:
                layers.append(nn.ReLU())
            layers.append(nn.Linear(before, after))
        if output_norm:
            layers.append(nn.LayerNorm(sizes[-1]))
        self.layers = nn.Sequential(*layers)

    def initialize_parameters(self, x: torch.Tensor) -> None:  # type: ignore[override]
        """Materialise the layer weighting for ``x``'s number of layers (uniform start)."""
        if self.has_uninitialized_params():
            with torch.no_grad():
                self.layer_logits.materialize((x.shape[1] if x.ndim == 3 else 1,))
                self.layer_logits.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:
            x = x.unsqueeze(1)
        if x.ndim != 3 or x.shape[1] != self.layer_logits.shape[0]:
            raise DataError(f"auxiliary model: expected (B, {self.layer_logits.shape[0]}, D) or (B, D) inputs, "
                            f"got {tuple(x.shape)}")
        weights = torch.softmax(self.layer_logits, dim=0)
        combined = torch.einsum("bld,l->bd", x.to(weights.dtype), weights)
        return self.layers(combined)


def auxiliary_input(inputs: torch.Tensor | None, features: torch.Tensor | None, method: str) -> torch.Tensor:
    """What an auxiliary model reads: the frozen ``inputs``, else the model's ``features`` detached."""
    if inputs is not None:
        return inputs.detach()
    if features is not None:
        return features.detach()
    raise DataError(f"{method}: the model returned neither 'inputs' (frozen input features) nor 'features'; "
                    "the auxiliary model has nothing to read")


def require_batch_fields(inputs: ObjectiveInputs, method: str, names: Sequence[str]) -> None:
    """DataError naming the first missing ObjectiveInputs field among ``names``."""
    for name in names:
        if getattr(inputs, name) is None:
            hint = {"sample_index": "the training dataset must return each row's index as 'sample_index'",
                    "labels": "the batch must carry 'labels'",
                    "features": "the model must return 'features'"}.get(name, "")
            raise DataError(f"{method} needs ObjectiveInputs.{name}: {hint}")


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
class LfF(Objective):
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

    def __init__(self, group_spec: GroupSpec, options: LfFOptions | None = None,
                 reducer: CrossRankReducer | None = None) -> None:
        super().__init__(group_spec, options, reducer)
        self.num_classes: int | None = None
        self.ema: PerSampleLossEMA | None = None
        self.biased: LazyLayerMLP | None = None
        # follows .to(device), so that modules built in setup() land where the objective was moved
        self.register_buffer("_device_anchor", torch.empty(0), persistent=False)

    def setup(self, stats: TrainingStats) -> None:
        """Size the EMA buffers (N = ``stats.num_examples``) and build f_B with K classes.

        Idempotent for the same N and K; ConfigError when called again with other sizes.
        """
        super().setup(stats)
        if self.ema is not None:
            if (self.ema.num_examples, self.num_classes) != (stats.num_examples, stats.num_classes):
                raise ConfigError(f"lff was set up for {self.ema.num_examples} examples and {self.num_classes} classes; "
                                  f"setup() again with {stats.num_examples} and {stats.num_classes}")
            return
        device = self._device_anchor.device
        self.num_classes = int(stats.num_classes)
        self.ema = PerSampleLossEMA(2, int(stats.num_examples), self.options.ema_alpha).to(device)
        self.biased = LazyLayerMLP((self.options.bias_hidden, self.num_classes)).to(device)
        self.register_buffer("aligned", aligned_cells(stats.class_group_counts).to(device), persistent=False)

    def _require_setup(self) -> None:
        if self.ema is None:
            raise ConfigError("lff: call setup(TrainingStats) before training (the per-sample EMA is sized by the "
                              "training set)")

    def forward(self, inputs: ObjectiveInputs) -> ObjectiveOutput:
        if not self.training:
            loss, value = self.global_mean(inputs.per_sample_loss)
            return ObjectiveOutput(loss=loss, figures={"debiased_loss": value})
        self._require_setup()
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
        self._require_setup()
        index = torch.arange(self.ema.num_examples, device=self.ema.seen.device)
        e_b, e_d = self.ema.normalised(index, self.ema.classes, self.num_classes)
        return e_b / (e_b + e_d + WEIGHT_EPS)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """As ``nn.Module.load_state_dict``; a clear error when :meth:`setup` has not built the state."""
        if self.ema is None and any(k.startswith(("ema.", "biased.")) for k in state_dict):
            raise ConfigError("lff: call setup(TrainingStats) before loading its state (the EMA buffers and the "
                              "biased model are built there)")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
