"""The base loss L_SER: (class-balanced) soft cross-entropy (METHODS.md §1.3).

IDI trains with "class-balanced cross-entropy [Cui et al. 2019]" (IDI paper §4); its exact form is
EMO-SUPERB's ``class_balanced_softmax_cross_entropy_with_softtarget`` (``expert.py``)::

    N   = number of training utterances,        β = (N − 1) / N
    n_c = Σ_i 1[y_ic > 1/K]                     (binarised training labels)
    w_c = (1 − β) / (1 − β^{n_c}),              w ← K · w / Σ_c w   (weights sum to K)
    s_i = Σ_c w_c · y_ic                        (one scalar weight per sample)
    ℓ_i = − s_i · Σ_c y_ic · log softmax(z_i)_c

Compute the weights on the training subset actually used (after imbalance construction).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from llmfair.errors import ConfigError, DataError

_REDUCTIONS = ("none", "mean", "sum")


def class_balanced_weights(train_soft_labels: Any, *, class_names: Sequence[str] | None = None) -> torch.Tensor:
    """Class-balanced weights w (K,) float32 from the (N, K) training soft labels; Σ_c w_c = K.

    β = (N−1)/N and n_c counts the training rows whose label share of class c is strictly above
    1/K (EMO-SUPERB ``expert.py``; Cui et al. 2019 Eq. 3 with β tied to N). One-hot rows work too.

    Raises:
        DataError: the labels are not an (N, K) array, or a class has no positive training row
            (its weight (1 − β)/(1 − β⁰) would be infinite); the message names the class.
    """
    from llmfair.data.labels import binarize

    labels = train_soft_labels.detach().cpu().numpy() if isinstance(train_soft_labels, torch.Tensor) \
        else np.asarray(train_soft_labels, dtype=np.float64)
    if labels.ndim != 2 or labels.shape[0] == 0 or labels.shape[1] < 2:
        raise DataError(f"class-balanced weights need (N, K) training soft labels with N >= 1, K >= 2; "
                        f"got shape {labels.shape}")
    n, k = labels.shape
    counts = binarize(labels).sum(axis=0)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        names = [class_names[i] if class_names is not None else int(i) for i in empty]
        raise DataError(f"class-balanced weights: class(es) {names} have no positive training label "
                        f"(share > 1/{k}) among {n} rows; the weight would be infinite")
    beta = (n - 1) / n
    weights = (1.0 - beta) / (1.0 - np.power(beta, counts.astype(np.float64)))
    weights = weights * k / weights.sum()
    return torch.as_tensor(weights, dtype=torch.float32)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor | None = None,
                       reduction: str = "none") -> torch.Tensor:
    """Soft-target cross-entropy ℓ_i = −s_i Σ_c y_ic log softmax(z_i)_c, with s_i = Σ_c w_c y_ic
    when ``class_weights`` w are given (class-balanced, METHODS.md §1.3) and s_i = 1 otherwise.

    Args:
        logits: (B, K).
        targets: (B, K) label distributions, or (B,) class indices (taken as one-hot).
        class_weights: (K,) weights, e.g. from :func:`class_balanced_weights`.
        reduction: ``none`` (per-sample (B,)), ``mean`` or ``sum``.
    """
    if reduction not in _REDUCTIONS:
        raise ConfigError(f"soft_cross_entropy: reduction {reduction!r} is not one of {_REDUCTIONS}")
    if logits.ndim != 2:
        raise DataError(f"soft_cross_entropy: logits must be (B, K), got shape {tuple(logits.shape)}")
    if targets.ndim == 1:
        targets = F.one_hot(targets.long(), logits.shape[1]).to(logits.dtype)
    if targets.shape != logits.shape:
        raise DataError(f"soft_cross_entropy: targets {tuple(targets.shape)} do not match logits {tuple(logits.shape)}")
    targets = targets.to(logits.dtype)
    loss = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1)
    if class_weights is not None:
        if class_weights.shape != (logits.shape[1],):
            raise DataError(f"soft_cross_entropy: class_weights {tuple(class_weights.shape)} do not match "
                            f"K = {logits.shape[1]}")
        loss = loss * (targets @ class_weights.to(logits.device, logits.dtype))
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss
