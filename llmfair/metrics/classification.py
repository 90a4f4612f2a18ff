"""Single-label classification metrics computed from confusion counts.

Every ``*_from_*`` function takes count arrays with any leading axes — ``(K, K)`` for one set,
``(C, K, K)`` for C cells, ``(R, C, K, K)`` for R bootstrap replicates — and returns the metric
with the same leading axes. So one confusion tensor, built once with ``np.bincount``, gives the
overall figures, every slice and every bootstrap replicate without re-reading the rows.

Conventions (checked against scikit-learn in ``tests/test_metrics.py``):

- ``confusion[..., t, p]`` counts rows with true class ``t`` predicted as ``p``.
- F1 of a class is ``2 tp / (2 tp + fp + fn)`` and 0 when that denominator is 0
  (sklearn ``f1_score(..., zero_division=0)``).
- Weighted F1 is support-weighted over the classes (a class with no support weighs 0 even when it
  is predicted; its false positives still lower the other classes' precision): sklearn
  ``average="weighted"`` with ``labels`` = the whole label space and ``zero_division=0``.
- Macro F1 (single-label) averages over the classes present in the true labels *or* the
  predictions of the evaluated set: sklearn ``average="macro"`` with its default ``labels``. A class
  absent from a slice in both truth and prediction does not count as an F1 of 0 there.
- A figure with an empty denominator (an empty cell; TPR of a class with no positives) is NaN.
"""
from __future__ import annotations

import numpy as np

from llmfair.errors import DataError


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den as float64, NaN where den == 0, without floating-point warnings."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast_shapes(num.shape, den.shape), np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def confusion_matrix(
    labels: np.ndarray, predictions: np.ndarray, num_classes: int, *, weights: np.ndarray | None = None
) -> np.ndarray:
    """(K, K) confusion counts via one ``np.bincount``: ``[t, p]`` = rows (or weight) true t, predicted p.

    Raises:
        DataError: labels or predictions outside ``[0, num_classes)`` or of different lengths.
    """
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    if labels.shape != predictions.shape or labels.ndim != 1:
        raise DataError(f"labels {labels.shape} and predictions {predictions.shape} must be equal-length 1-D arrays")
    for name, arr in (("label", labels), ("prediction", predictions)):
        bad = (arr < 0) | (arr >= num_classes)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{name} index {int(arr[i])} at row {i} is outside the label space of {num_classes} classes")
    flat = labels * num_classes + predictions
    counts = np.bincount(flat, weights=weights, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def class_counts(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One-vs-rest counts per class from ``(..., K, K)`` confusion: (tp, fp, fn, tn), each ``(..., K)``.

    For class c: y_c = 1[label == c] and ŷ_c = 1[prediction == c] (METHODS.md §3).
    """
    confusion = np.asarray(confusion)
    tp = np.diagonal(confusion, axis1=-2, axis2=-1)
    fp = confusion.sum(axis=-2) - tp
    fn = confusion.sum(axis=-1) - tp
    n = confusion.sum(axis=(-2, -1))[..., None]
    tn = n - tp - fp - fn
    return tp, fp, fn, tn


def accuracy_from_confusion(confusion: np.ndarray) -> np.ndarray:
    """Fraction of rows on the diagonal; NaN for an empty set."""
    confusion = np.asarray(confusion)
    return _ratio(np.trace(confusion, axis1=-2, axis2=-1), confusion.sum(axis=(-2, -1)))


def f1_per_class(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """F1_c = 2 tp / (2 tp + fp + fn); 0 where the denominator is 0 (sklearn ``zero_division=0``)."""
    den = 2 * np.asarray(tp, dtype=np.float64) + fp + fn
    return np.nan_to_num(_ratio(2 * np.asarray(tp, dtype=np.float64), den), nan=0.0)


def weighted_f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """Support-weighted mean of per-class F1 over the last axis; NaN where the support is 0."""
    support = np.asarray(tp, dtype=np.float64) + fn
    return _ratio((f1_per_class(tp, fp, fn) * support).sum(axis=-1), support.sum(axis=-1))


def macro_f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, *, present_only: bool = True) -> np.ndarray:
    """Unweighted mean of per-class F1 over the last axis.

    ``present_only=True`` (single-label): over classes with ``tp + fp + fn > 0`` — those in the true
    labels or the predictions, as sklearn does with its default ``labels``. ``False``
    (multi-label, METHODS.md §3 "averaged over the K classes"): over all K classes, a class with
    no positive label and no positive prediction counting as 0 (sklearn ``zero_division=0``).
    With ``present_only`` an empty set gives NaN; without it the caller masks empty sets (counts
    without ``tn`` cannot tell an empty set from one with no positives).
    """
    f1 = f1_per_class(tp, fp, fn)
    if not present_only:
        return f1.mean(axis=-1)
    present = (np.asarray(tp) + fp + fn) > 0
    return _ratio((f1 * present).sum(axis=-1), present.sum(axis=-1))


def tpr_from_counts(tp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """True positive rate (recall) per class; NaN for a class with no positives."""
    return _ratio(tp, np.asarray(tp) + fn)


def fpr_from_counts(fp: np.ndarray, tn: np.ndarray) -> np.ndarray:
    """False positive rate per class, P(ŷ_c = 1 | y_c = 0); NaN for a class with no negatives."""
    return _ratio(fp, np.asarray(fp) + tn)


def precision_from_counts(tp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """Precision per class; NaN for a class never predicted."""
    return _ratio(tp, np.asarray(tp) + fp)


def selection_rate_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray) -> np.ndarray:
    """P(ŷ_c = 1) per class: the demographic-parity quantity of IDI Eq. 4; NaN for an empty set."""
    return _ratio(np.asarray(tp) + fp, np.asarray(tp) + fp + fn + tn)


# ----------------------------------------------------------------- conveniences on label arrays
def _confusion_of(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    if np.asarray(labels).size == 0:
        raise DataError("cannot compute a metric on an empty set of predictions")
    return confusion_matrix(labels, predictions, num_classes)


def accuracy(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> float:
    """Accuracy of class-index arrays (``num_classes`` validates the indices)."""
    return float(accuracy_from_confusion(_confusion_of(labels, predictions, num_classes)))


def weighted_f1(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> float:
    """Support-weighted F1 (sklearn ``f1_score(average="weighted", zero_division=0)``)."""
    tp, fp, fn, _ = class_counts(_confusion_of(labels, predictions, num_classes))
    return float(weighted_f1_from_counts(tp, fp, fn))


def macro_f1(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> float:
    """Macro F1 over the classes present in labels or predictions (sklearn default ``labels``)."""
    tp, fp, fn, _ = class_counts(_confusion_of(labels, predictions, num_classes))
    return float(macro_f1_from_counts(tp, fp, fn, present_only=True))


def per_class_tpr(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """(K,) true positive rates; NaN for classes without positives."""
    tp, _, fn, _ = class_counts(_confusion_of(labels, predictions, num_classes))
    return tpr_from_counts(tp, fn)


def per_class_fpr(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """(K,) false positive rates; NaN for classes without negatives."""
    _, fp, _, tn = class_counts(_confusion_of(labels, predictions, num_classes))
    return fpr_from_counts(fp, tn)
