"""Multi-label (CREMA-D / EMO-SUPERB style) metrics from per-class counts.

Labels are rater distributions and predictions are softmax outputs; both are binarised per class
at strictly more than 1/K (``llmfair.data.labels.binarize``; EMO-SUPERB ``expert.py``, IDI §4.3,
METHODS.md §1.2). Per-class counts are stored as ``(..., K, 4)`` arrays whose last axis is
``(tp, fp, fn, tn)`` (``STATES``), so — as for the single-label confusion tensor — one array built
once serves the whole set, every cell and every bootstrap replicate.

- Macro F1: the mean over all K classes of ``2 tp / (2 tp + fp + fn)`` (0 for a class with no
  positive label and no positive prediction): sklearn ``f1_score(Y, Ŷ, average="macro",
  zero_division=0)`` on the indicator matrices, computed once over the whole set (not per batch,
  METHODS.md §3 pitfall).
- Hamming accuracy: ``(1 / nK) Σ_i Σ_c 1[ŷ_ic = y_ic]`` = 1 − sklearn ``hamming_loss`` (IDI §4.3).
"""
from __future__ import annotations

import numpy as np

from llmfair.data.labels import binarize
from llmfair.errors import DataError
from llmfair.metrics.classification import _ratio, f1_per_class, fpr_from_counts, tpr_from_counts

STATES: tuple[str, ...] = ("tp", "fp", "fn", "tn")
"""Order of the last axis of multi-label count arrays."""


def binarize_labels(soft_labels: np.ndarray) -> np.ndarray:
    """(n, K) bool: y_c = 1[y_c > 1/K] (METHODS.md §1.2)."""
    return binarize(soft_labels)


def binarize_predictions(probs: np.ndarray) -> np.ndarray:
    """(n, K) bool: ŷ_c = 1[softmax_c > 1/K] — a threshold on softmax, not sigmoid (§1.2 pitfall)."""
    return binarize(probs)


def state_index(label_bin: np.ndarray, prediction_bin: np.ndarray) -> np.ndarray:
    """(n, K) int in 0..3: the position of each (row, class) in ``STATES``."""
    y = np.asarray(label_bin, dtype=bool)
    p = np.asarray(prediction_bin, dtype=bool)
    return 2 * (~p).astype(np.int64) + (~y).astype(np.int64)


def multilabel_counts(
    label_bin: np.ndarray, prediction_bin: np.ndarray, *, weights: np.ndarray | None = None
) -> np.ndarray:
    """(K, 4) counts ``(tp, fp, fn, tn)`` per class via one ``np.bincount``.

    Raises:
        DataError: the indicator matrices differ in shape or are not 2-D.
    """
    y = np.asarray(label_bin)
    p = np.asarray(prediction_bin)
    if y.shape != p.shape or y.ndim != 2:
        raise DataError(f"label {y.shape} and prediction {p.shape} indicator matrices must be equal-shape (n, K)")
    n, k = y.shape
    flat = (np.arange(k) * 4 + state_index(y, p)).ravel()
    w = None if weights is None else np.repeat(np.asarray(weights, dtype=np.float64), k)
    return np.bincount(flat, weights=w, minlength=4 * k).reshape(k, 4)


def split_counts(stats: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(..., K, 4)`` → (tp, fp, fn, tn), each ``(..., K)``."""
    stats = np.asarray(stats)
    return stats[..., 0], stats[..., 1], stats[..., 2], stats[..., 3]


def _rows(tp, fp, fn, tn) -> np.ndarray:
    """Number of rows: every class's four counts add up to it; read it from the first class."""
    return (np.asarray(tp) + fp + fn + tn)[..., 0]


def hamming_accuracy_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray) -> np.ndarray:
    """Σ_c (tp + tn) / Σ_c (tp + fp + fn + tn) over the last axis; NaN for an empty set."""
    correct = (np.asarray(tp) + tn).sum(axis=-1)
    return _ratio(correct, (np.asarray(tp) + fp + fn + tn).sum(axis=-1))


def macro_f1_from_multilabel_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray) -> np.ndarray:
    """Mean over all K classes of per-class F1 (0 where undefined); NaN for an empty set."""
    value = f1_per_class(tp, fp, fn).mean(axis=-1)
    return np.where(_rows(tp, fp, fn, tn) > 0, value, np.nan)


def weighted_f1_from_multilabel_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray) -> np.ndarray:
    """Support-weighted F1 (support = positives per class); 0 when a non-empty set has no
    positives (sklearn ``zero_division=0``), NaN for an empty set."""
    support = np.asarray(tp, dtype=np.float64) + fn
    value = np.nan_to_num(_ratio((f1_per_class(tp, fp, fn) * support).sum(axis=-1), support.sum(axis=-1)), nan=0.0)
    return np.where(_rows(tp, fp, fn, tn) > 0, value, np.nan)


# ------------------------------------------------------------ conveniences on soft label arrays
def _counts_of(soft_labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, ...]:
    soft_labels = np.asarray(soft_labels, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    if soft_labels.size == 0:
        raise DataError("cannot compute a metric on an empty set of predictions")
    if soft_labels.shape != probs.shape:
        raise DataError(f"soft labels {soft_labels.shape} and probabilities {probs.shape} differ in shape")
    return split_counts(multilabel_counts(binarize_labels(soft_labels), binarize_predictions(probs)))


def multilabel_macro_f1(soft_labels: np.ndarray, probs: np.ndarray) -> float:
    """Macro F1 after binarising both at > 1/K (IDI §4.3 "F1")."""
    return float(macro_f1_from_multilabel_counts(*_counts_of(soft_labels, probs)))


def multilabel_weighted_f1(soft_labels: np.ndarray, probs: np.ndarray) -> float:
    """Support-weighted F1 after binarising both at > 1/K."""
    return float(weighted_f1_from_multilabel_counts(*_counts_of(soft_labels, probs)))


def hamming_accuracy(soft_labels: np.ndarray, probs: np.ndarray) -> float:
    """Hamming accuracy after binarising both at > 1/K (IDI §4.3 "ACC")."""
    return float(hamming_accuracy_from_counts(*_counts_of(soft_labels, probs)))


def multilabel_tpr(soft_labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(K,) TPR_c = P(ŷ_c = 1 | y_c = 1); NaN for a class without positives."""
    tp, _, fn, _ = _counts_of(soft_labels, probs)
    return tpr_from_counts(tp, fn)


def multilabel_fpr(soft_labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(K,) FPR_c = P(ŷ_c = 1 | y_c = 0); NaN for a class without negatives."""
    _, fp, _, tn = _counts_of(soft_labels, probs)
    return fpr_from_counts(fp, tn)
