"""The biased auxiliary model of LfF and DisEnt (private; Nam et al. 2020, Lee et al. 2021).

- :func:`generalized_cross_entropy` (with :func:`label_probability`): the loss that makes the
  auxiliary model biased;
- :class:`PerSampleLossEMA`: per-sample loss EMAs over the training set and their class-wise
  normalisation, giving the relative-difficulty weight ``W = ê_b / (ê_b + ê_d + WEIGHT_EPS)``;
- :class:`LazyLayerMLP`: an auxiliary model on frozen (per-layer) features, sized on first use;
- :func:`auxiliary_input`: what an auxiliary model reads (the frozen inputs, else the detached
  features).

:mod:`llmfair.objectives.lff` documents the equations and the adaptation to frozen SSL features.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter

from llmfair.errors import ConfigError, DataError
from llmfair.objectives.base import CrossRankReducer
from llmfair.ssl.losses import soft_cross_entropy

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
