"""Slicing: per-cell statistics built once, then any metric for every cell at once.

A :class:`SliceMetrics` groups a predictions table by any columns (``language``, ``modality``,
``gender``, ``speaker``, the virtual ``emotion``, or an extra column such as ``rater_gender``). It
finds a cell index per row with ``np.unique(..., return_inverse=True)`` and counts once with
``np.bincount``:

- single-label: a confusion tensor ``(C, K, K)``, ``[cell, true, predicted]``;
- multi-label: per-class ``(tp, fp, fn, tn)`` counts ``(C, K, 4)`` of the binarised labels and
  predictions.

Every metric is then a vectorised function of that array. The array may carry leading axes — the
bootstrap builds ``(R, C, ...)`` replicate statistics and reuses the same object — and coarser
groupings are sums over cells (:meth:`SliceMetrics.merge`), never a new pass over the rows.

``unknown`` gender is an ordinary cell here (it is counted and reported); gender gaps exclude it
(``llmfair.metrics.fairness``).
"""
from __future__ import annotations

from typing import Collection, Sequence

import numpy as np
import pandas as pd

from llmfair.errors import ConfigError, DataError
from llmfair.metrics import classification as cls_metrics
from llmfair.metrics import multilabel as ml_metrics
from llmfair.predictions import Predictions

DEFAULT_BY: tuple[str, ...] = ("language", "modality", "gender")
"""The slice key of every per-slice figure (DESIGN.md)."""

HEADLINE_METRICS: tuple[str, ...] = ("accuracy", "weighted_f1", "macro_f1")
SCALAR_METRICS: tuple[str, ...] = ("accuracy", "weighted_f1", "macro_f1", "hamming_accuracy")
"""Per-cell scalar metrics. For multi-label tables ``accuracy`` is the Hamming accuracy (IDI's
"ACC", METHODS.md §5.1 note)."""
PER_CLASS_METRICS: tuple[str, ...] = ("tpr", "fpr", "f1", "precision", "selection_rate", "support")
"""Per-cell, per-class metrics (``support`` = number of positives)."""


def cell_index(pred: Predictions, by: Sequence[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """Cells of ``pred`` grouped by the columns ``by``: (keys, inverse).

    ``keys`` has one row per non-empty cell (sorted by the columns in order), ``inverse`` (n,) the
    cell of every row. ``by=()`` puts every row in one cell.
    """
    by = tuple(by)
    if len(set(by)) != len(by):
        raise ConfigError(f"grouping columns repeat: {list(by)}")
    if not by:
        return pd.DataFrame(index=pd.RangeIndex(1)), np.zeros(pred.n, dtype=np.int64)
    uniques, codes = [], []
    for col in by:
        # pandas' hash factorisation gives np.unique(..., return_inverse=True)'s sorted uniques and
        # inverse ~10x faster on string columns; the cells then come from np.unique on int codes.
        inv, u = pd.factorize(pred.column(col), sort=True)
        uniques.append(np.asarray(u, dtype=object).astype(str))
        codes.append(inv.astype(np.int64))
    dims = tuple(len(u) for u in uniques)
    combined = np.ravel_multi_index(tuple(codes), dims)
    cells, inverse = np.unique(combined, return_inverse=True)
    parts = np.unravel_index(cells, dims)
    keys = pd.DataFrame({col: uniques[j][parts[j]] for j, col in enumerate(by)})
    return keys, inverse.astype(np.int64)


def cell_shape(pred: Predictions) -> tuple[int, int]:
    """Shape of one cell's statistics: (K, K) confusion or (K, 4) multi-label counts."""
    k = pred.num_classes
    return (k, 4) if pred.multilabel else (k, k)


def row_stat_index(pred: Predictions, inverse: np.ndarray) -> np.ndarray:
    """(n, m) positions of each row's counts in the flattened ``(C, *cell_shape)`` statistics.

    Single-label rows add 1 at ``[cell, true, predicted]`` (m = 1); multi-label rows add 1 at
    ``[cell, c, state_c]`` for every class c (m = K). Summing ones at these positions — with
    ``np.bincount``, or a sparse matrix product for bootstrap weights — gives the statistics.
    """
    k = pred.num_classes
    inverse = np.asarray(inverse, dtype=np.int64)
    if pred.multilabel:
        state = ml_metrics.state_index(pred.label_bin, pred.prediction_bin)
        return (inverse[:, None] * k + np.arange(k)[None, :]) * 4 + state
    return ((inverse * k + pred.labels) * k + pred.predictions)[:, None]


class SliceMetrics:
    """Per-cell statistics of a predictions table and every metric derived from them.

    Attributes:
        keys: one row per cell with the grouping columns.
        stats: ``(*batch, C, K, K)`` confusion counts (single-label) or ``(*batch, C, K, 4)``
            per-class ``(tp, fp, fn, tn)`` (multi-label). ``batch`` is empty for one table and
            ``(R,)`` for bootstrap replicates.
        classes: class names in label space order.
        multilabel: which of the two layouts ``stats`` has.
    """

    def __init__(self, keys: pd.DataFrame, stats: np.ndarray, *, classes: Sequence[str], multilabel: bool) -> None:
        self.keys = keys.reset_index(drop=True)
        self.stats = np.asarray(stats)
        self.classes = tuple(classes)
        self.multilabel = bool(multilabel)
        k = len(self.classes)
        expected = (len(self.keys), k, 4 if multilabel else k)
        if self.stats.ndim < 3 or self.stats.shape[-3:] != expected:
            raise ConfigError(f"statistics of shape {self.stats.shape} do not end in {expected}")

    @classmethod
    def from_predictions(cls, pred: Predictions, by: Sequence[str] = DEFAULT_BY) -> "SliceMetrics":
        """Group ``pred`` by the columns ``by`` and count every cell in one ``np.bincount``."""
        keys, inverse = cell_index(pred, by)
        shape = cell_shape(pred)
        size = shape[0] * shape[1]
        idx = row_stat_index(pred, inverse)
        stats = np.bincount(idx.ravel(), minlength=len(keys) * size).reshape(len(keys), *shape)
        return cls(keys, stats, classes=pred.classes, multilabel=pred.multilabel)

    # ------------------------------------------------------------------------------- structure
    @property
    def by(self) -> tuple[str, ...]:
        """The grouping columns."""
        return tuple(self.keys.columns)

    @property
    def num_cells(self) -> int:
        """Number of cells C."""
        return len(self.keys)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Leading axes of ``stats``: ``()`` for one table, ``(R,)`` for bootstrap replicates."""
        return self.stats.shape[:-3]

    @property
    def n(self) -> np.ndarray:
        """``(*batch, C)`` number of rows per cell."""
        if self.multilabel:
            return self.stats[..., 0, :].sum(axis=-1)
        return self.stats.sum(axis=(-2, -1))

    def _with(self, keys: pd.DataFrame, stats: np.ndarray) -> "SliceMetrics":
        return SliceMetrics(keys, stats, classes=self.classes, multilabel=self.multilabel)

    def merge(self, by: Sequence[str]) -> "SliceMetrics":
        """Coarser cells: group the cells by a subset of the columns and sum their statistics.

        ``merge(())`` is the whole table (one cell).
        """
        by = tuple(by)
        unknown = [c for c in by if c not in self.by]
        if unknown:
            raise ConfigError(f"cannot merge by {unknown}: these statistics are grouped by {list(self.by)}")
        if by:
            sub = self.keys[list(by)].astype(str)
            uniques, codes = [], []
            for col in by:
                u, inv = np.unique(sub[col].to_numpy(), return_inverse=True)
                uniques.append(u)
                codes.append(inv)
            dims = tuple(len(u) for u in uniques)
            cells, target = np.unique(np.ravel_multi_index(tuple(codes), dims), return_inverse=True)
            parts = np.unravel_index(cells, dims)
            keys = pd.DataFrame({col: uniques[j][parts[j]] for j, col in enumerate(by)})
        else:
            keys = pd.DataFrame(index=pd.RangeIndex(1))
            target = np.zeros(self.num_cells, dtype=np.int64)
        onehot = np.zeros((len(keys), self.num_cells), dtype=self.stats.dtype)
        onehot[target, np.arange(self.num_cells)] = 1
        return self._with(keys, np.einsum("ij,...jkl->...ikl", onehot, self.stats))

    def where(self, **allowed: str | Collection[str]) -> "SliceMetrics":
        """The cells whose columns take the given value(s), e.g. ``where(gender=("female", "male"))``.

        Raises:
            DataError: no cell matches (an empty slice).
        """
        mask = np.ones(self.num_cells, dtype=bool)
        for col, values in allowed.items():
            if col not in self.by:
                raise ConfigError(f"cannot select on {col!r}: these statistics are grouped by {list(self.by)}")
            values = (values,) if isinstance(values, str) else tuple(values)
            mask &= self.keys[col].isin(values).to_numpy()
        if not mask.any():
            raise DataError(f"empty slice: no rows with {allowed} (cells: {self.keys.to_dict('records')})")
        return self._with(self.keys.loc[mask], self.stats[..., mask, :, :])

    # --------------------------------------------------------------------------------- metrics
    def counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One-vs-rest ``(tp, fp, fn, tn)`` per cell and class, each ``(*batch, C, K)``."""
        if self.multilabel:
            return ml_metrics.split_counts(self.stats)
        return cls_metrics.class_counts(self.stats)

    def metric(self, name: str) -> np.ndarray:
        """``(*batch, C)`` values of a scalar metric (one of ``SCALAR_METRICS``); NaN for empty cells."""
        tp, fp, fn, tn = self.counts()
        if name == "hamming_accuracy" or (name == "accuracy" and self.multilabel):
            return ml_metrics.hamming_accuracy_from_counts(tp, fp, fn, tn)
        if name == "accuracy":
            return cls_metrics.accuracy_from_confusion(self.stats)
        if name == "weighted_f1":
            if self.multilabel:
                return ml_metrics.weighted_f1_from_multilabel_counts(tp, fp, fn, tn)
            return cls_metrics.weighted_f1_from_counts(tp, fp, fn)
        if name == "macro_f1":
            if self.multilabel:
                return ml_metrics.macro_f1_from_multilabel_counts(tp, fp, fn, tn)
            return cls_metrics.macro_f1_from_counts(tp, fp, fn, present_only=True)
        raise ConfigError(f"unknown metric {name!r}; known: {list(SCALAR_METRICS)}")

    def per_class(self, name: str) -> np.ndarray:
        """``(*batch, C, K)`` values of a per-class metric (one of ``PER_CLASS_METRICS``)."""
        tp, fp, fn, tn = self.counts()
        if name == "tpr":
            return cls_metrics.tpr_from_counts(tp, fn)
        if name == "fpr":
            return cls_metrics.fpr_from_counts(fp, tn)
        if name == "f1":
            return np.where((tp + fp + fn + tn) > 0, cls_metrics.f1_per_class(tp, fp, fn), np.nan)
        if name == "precision":
            return cls_metrics.precision_from_counts(tp, fp)
        if name == "selection_rate":
            return cls_metrics.selection_rate_from_counts(tp, fp, fn, tn)
        if name == "support":
            return np.asarray(tp + fn)
        raise ConfigError(f"unknown per-class metric {name!r}; known: {list(PER_CLASS_METRICS)}")

    def table(self, metrics: Sequence[str] = HEADLINE_METRICS, per_class: Sequence[str] = ()) -> pd.DataFrame:
        """One row per cell: the grouping columns, ``n``, the metrics, then ``<metric>_<class>``.

        Raises:
            ConfigError: called on bootstrap replicates (take intervals instead).
        """
        if self.batch_shape:
            raise ConfigError(f"table() needs one set of statistics; these have replicate axes {self.batch_shape}")
        out = self.keys.copy()
        out["n"] = self.n.astype(np.int64)
        for name in metrics:
            out[name] = self.metric(name)
        for name in per_class:
            values = self.per_class(name)
            for j, c in enumerate(self.classes):
                out[f"{name}_{c}"] = values[:, j]
        return out

    def __repr__(self) -> str:
        return (
            f"SliceMetrics(by={list(self.by)}, cells={self.num_cells}, classes={len(self.classes)}, "
            f"multilabel={self.multilabel}, batch={self.batch_shape})"
        )
