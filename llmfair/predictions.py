"""The predictions table: the one interface between models and evaluation.

Any model — llmfair's or a user's — is evaluated by writing this table. One row per example:

``id, split, language, modality, gender, speaker``, then either ``label`` (a class name) or, for
multi-label corpora (CREMA-D style distributional labels), one ``label_<class>`` soft value per
class, then ``prob_<class>`` for every class of the label space (each row sums to 1), then
``prediction`` (a class name). Class columns follow the label space order. Extra columns (e.g.
``rater_gender``, ``utterance_id``, ``fold``) are allowed and preserved; ``gender`` and, when
present, ``rater_gender`` are normalised to female/male/unknown (F/M/U and similar spellings).

The file is CSV; a ``.parquet`` path is read and written with pandas/pyarrow when pyarrow is
installed. ``(id, modality)`` is the row key: the same utterance appears once per modality.

Everything downstream (``llmfair.metrics``) works on the :class:`Predictions` object, whose arrays
are parsed and validated once here.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from llmfair._atomic import atomic_path
from llmfair.data._csv import read_csv_checked
from llmfair.data.labels import LABEL_SPACES, LANGUAGES, MODALITIES, LabelSpace, binarize, normalise_gender
from llmfair.errors import DataError

logger = logging.getLogger(__name__)

KEY_COLUMNS: tuple[str, ...] = ("id", "split", "language", "modality", "gender", "speaker")
"""The columns every predictions table starts with, in this order."""

PROB_PREFIX = "prob_"
LABEL_PREFIX = "label_"
PROB_TOLERANCE = 1e-3
"""Largest allowed |sum of a row's probabilities − 1|."""

NO_MAJORITY = "none"
"""The ``emotion`` of a multi-label row whose soft label has no class above one half."""


@dataclass(frozen=True, eq=False)
class Predictions:
    """A validated predictions table.

    Attributes:
        frame: the table as read (key columns as strings, ``gender`` normalised to
            female/male/unknown, numeric columns as floats, extra columns untouched).
        classes: class names in label space order (the order of the ``prob_<class>`` columns).
        multilabel: True when labels are ``label_<class>`` soft values (binarised at > 1/K for
            metrics, METHODS.md §1.2), False for a single ``label`` column.
        probs: (n, K) float64 class probabilities; rows sum to 1 within ``PROB_TOLERANCE``.
        labels: single-label: (n,) int64 class indices; multi-label: (n, K) float64 soft labels.
        predictions: (n,) int64 predicted class indices (the ``prediction`` column).
        source: the file the table came from, for error messages.
    """

    frame: pd.DataFrame
    classes: tuple[str, ...]
    multilabel: bool
    probs: np.ndarray
    labels: np.ndarray
    predictions: np.ndarray
    source: str = "<predictions>"

    def __len__(self) -> int:
        return int(self.probs.shape[0])

    @property
    def n(self) -> int:
        """Number of rows."""
        return len(self)

    @property
    def num_classes(self) -> int:
        """Number of classes K."""
        return len(self.classes)

    @property
    def label_space(self) -> LabelSpace:
        """The known label space with these classes in this order, else a ``custom`` one."""
        for space in LABEL_SPACES.values():
            if space.classes == self.classes:
                return space
        return LabelSpace("custom", self.classes)

    @property
    def label_bin(self) -> np.ndarray:
        """(n, K) bool: y_c. One-hot for single-label; ``y_c > 1/K`` for multi-label (§1.2)."""
        if self.multilabel:
            return binarize(self.labels)
        return np.eye(self.num_classes, dtype=bool)[self.labels]

    @property
    def prediction_bin(self) -> np.ndarray:
        """(n, K) bool: ŷ_c. One-hot of ``prediction`` for single-label; ``p_c > 1/K`` for multi-label."""
        if self.multilabel:
            return binarize(self.probs)
        return np.eye(self.num_classes, dtype=bool)[self.predictions]

    def column(self, name: str) -> np.ndarray:
        """Values of a grouping column as a string array.

        Besides the table's own columns, ``emotion`` names the true class of each row: the
        ``label`` for single-label tables, and for multi-label tables the strict-majority class
        (soft label above 0.5, as in METHODS.md §1.6) or ``"none"`` when no class has a majority.
        """
        if name in self.frame.columns:
            return self.frame[name].astype(str).to_numpy()
        if name == "emotion":
            names = np.asarray(self.classes + (NO_MAJORITY,), dtype=object)
            if self.multilabel:
                best = self.labels.argmax(axis=1)
                has_majority = self.labels[np.arange(self.n), best] > 0.5
                return names[np.where(has_majority, best, self.num_classes)].astype(str)
            return names[self.labels].astype(str)
        raise DataError(
            f"{self.source} has no column {name!r} to group by; columns: {list(self.frame.columns)}"
            " (plus the virtual column 'emotion')"
        )

    def subset(self, mask: np.ndarray) -> "Predictions":
        """The rows where the boolean ``mask`` is true (e.g. one split or one language)."""
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (self.n,):
            raise DataError(f"subset mask has shape {mask.shape}; expected ({self.n},)")
        return Predictions(
            frame=self.frame.loc[mask].reset_index(drop=True),
            classes=self.classes,
            multilabel=self.multilabel,
            probs=self.probs[mask],
            labels=self.labels[mask],
            predictions=self.predictions[mask],
            source=self.source,
        )

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, *, source: str = "<predictions>") -> "Predictions":
        """Validate a table (as read from CSV/Parquet or built in memory) and parse its arrays.

        Raises:
            DataError: naming ``source`` and the offending column / id / value when the table is
                empty, lacks columns, has probabilities outside [0, 1] or not summing to 1 within
                1e-3, labels or predictions outside the label space, unknown language / modality /
                gender values, or duplicate ``(id, modality)`` rows.
        """
        frame = frame.copy()
        frame.columns = [str(c).strip() for c in frame.columns]
        if len(frame.columns) != len(set(frame.columns)):
            dup = sorted({c for c in frame.columns if list(frame.columns).count(c) > 1})
            raise DataError(f"{source} has duplicate column(s) {dup}")
        classes = tuple(c[len(PROB_PREFIX):] for c in frame.columns if c.startswith(PROB_PREFIX))
        label_classes = tuple(c[len(LABEL_PREFIX):] for c in frame.columns if c.startswith(LABEL_PREFIX))
        multilabel = bool(label_classes)
        required = list(KEY_COLUMNS) + ([] if multilabel else ["label"]) + ["prediction"]
        missing = [c for c in required if c not in frame.columns]
        if not classes:
            missing.append("prob_<class> (one per class)")
        if missing:
            raise DataError(f"{source} is missing column(s) {missing}; it has {list(frame.columns)}")
        if multilabel and "label" in frame.columns:
            raise DataError(
                f"{source} has both a 'label' column and label_<class> columns; use 'label' for "
                "single-label tables or label_<class> soft values for multi-label ones, not both"
            )
        if any(not c for c in classes) or len({c.lower() for c in classes}) != len(classes):
            raise DataError(f"{source} has empty or duplicate class names in its prob_ columns: {list(classes)}")
        if multilabel and set(label_classes) != set(classes):
            raise DataError(
                f"{source}: label_<class> columns {list(label_classes)} do not match the prob_<class> "
                f"columns {list(classes)}"
            )
        if len(frame) == 0:
            raise DataError(f"{source} has no rows")

        for col in KEY_COLUMNS:
            frame[col] = frame[col].astype(str).str.strip()
        ids = frame["id"].to_numpy(dtype=object)
        _check_vocabulary(frame, "language", LANGUAGES, source)
        _check_vocabulary(frame, "modality", MODALITIES, source)
        frame["gender"] = _normalised_genders(frame, "gender", source)
        if "rater_gender" in frame.columns:
            frame["rater_gender"] = _normalised_genders(frame, "rater_gender", source)
        dup = frame.duplicated(["id", "modality"], keep=False).to_numpy()
        if dup.any():
            i = int(np.flatnonzero(dup)[0])
            raise DataError(
                f"{source} has {int(dup.sum())} rows sharing an (id, modality) key, first "
                f"id={ids[i]!r} modality={frame['modality'].iat[i]!r}; (id, modality) must be unique"
            )

        probs = _numeric_block(frame, [PROB_PREFIX + c for c in classes], source, ids)
        _check_unit_interval(probs, [PROB_PREFIX + c for c in classes], source, ids)
        sums = probs.sum(axis=1)
        bad = np.abs(sums - 1.0) > PROB_TOLERANCE
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{source}: probabilities of {int(bad.sum())} row(s) do not sum to 1 (tolerance "
                f"{PROB_TOLERANCE}); first id={ids[i]!r} sums to {sums[i]:.6g}"
            )
        if multilabel:
            label_cols = [LABEL_PREFIX + c for c in classes]
            labels = _numeric_block(frame, label_cols, source, ids)
            _check_unit_interval(labels, label_cols, source, ids)
        else:
            labels = _class_indices(frame["label"], classes, "label", source, ids)
        predictions = _class_indices(frame["prediction"], classes, "prediction", source, ids)
        return cls(
            frame=frame.reset_index(drop=True),
            classes=classes,
            multilabel=multilabel,
            probs=probs,
            labels=labels,
            predictions=predictions,
            source=source,
        )


def _check_vocabulary(frame: pd.DataFrame, column: str, allowed: Sequence[str], source: str) -> None:
    values = frame[column].to_numpy()
    bad = ~np.isin(values, np.asarray(allowed, dtype=object))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{source}: unknown {column} value {values[i]!r} (id={frame['id'].iat[i]!r}); "
            f"expected one of {list(allowed)}"
        )


def _normalised_genders(frame: pd.DataFrame, column: str, source: str) -> np.ndarray:
    """Gender spellings (F/M/U, Female, woman, empty...) mapped to GENDERS via normalise_gender."""
    values = frame[column].astype(str).str.strip().to_numpy()
    uniq, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    mapped = np.array(
        [normalise_gender(v, where=f"{source} column {column!r} (id={frame['id'].iat[i]!r})") for v, i in zip(uniq, first)],
        dtype=object,
    )
    return mapped[inverse]


def _numeric_block(frame: pd.DataFrame, columns: list[str], source: str, ids: np.ndarray) -> np.ndarray:
    """The columns as an (n, len(columns)) float64 array; non-numeric or non-finite cells are errors."""
    out = np.empty((len(frame), len(columns)), dtype=np.float64)
    for j, col in enumerate(columns):
        values = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{source}: column {col!r} has a missing or non-numeric value {frame[col].iat[i]!r} "
                f"at id={ids[i]!r}"
            )
        out[:, j] = values
        frame[col] = values
    return out


def _check_unit_interval(values: np.ndarray, columns: list[str], source: str, ids: np.ndarray) -> None:
    bad = (values < 0.0) | (values > 1.0)
    if bad.any():
        i, j = (int(a[0]) for a in np.nonzero(bad))
        raise DataError(
            f"{source}: column {columns[j]!r} has {float(values[i, j])!r} at id={ids[i]!r}; values must lie in [0, 1]"
        )


def _class_indices(values: pd.Series, classes: Sequence[str], column: str, source: str, ids: np.ndarray) -> np.ndarray:
    """Class names (case-insensitive, trimmed) → int64 indices; unknown names are errors."""
    lookup = {c.lower(): i for i, c in enumerate(classes)}
    keys = values.astype(str).str.strip().str.lower()
    idx = keys.map(lookup)
    bad = idx.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{source}: {column} {values.iat[i]!r} at id={ids[i]!r} is not in the label space {list(classes)}"
        )
    return idx.to_numpy(dtype=np.int64)


def read_predictions(path: str | os.PathLike) -> Predictions:
    """Read and validate a predictions table (CSV, or Parquet by the ``.parquet`` suffix).

    Raises:
        DataError: the file is missing, empty or invalid (see :meth:`Predictions.from_frame`).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"predictions file not found: {path}")
    if path.stat().st_size == 0:
        raise DataError(f"predictions file {path} is empty")
    if path.suffix.lower() == ".parquet":
        try:
            frame = pd.read_parquet(path)
        except ImportError as exc:
            raise DataError(f"reading {path} needs pyarrow ({exc}); write the table as CSV instead") from None
        except Exception as exc:  # pyarrow raises its own error types for corrupt files
            raise DataError(f"{path} could not be read as Parquet: {exc}") from None
    else:
        frame = read_csv_checked(path)
    return Predictions.from_frame(frame, source=str(path))


def _as_str(values) -> np.ndarray:
    """An object array of Python ``str`` (so messages show 'x', not np.str_('x'))."""
    arr = np.asarray(values, dtype=object)
    if arr.ndim != 1:
        raise DataError(f"write_predictions: expected a one-dimensional column; got shape {arr.shape}")
    return pd.Series(arr, dtype=object).astype(str).to_numpy(dtype=object)


def _broadcast(name: str, value: str | Sequence[str] | np.ndarray, n: int) -> np.ndarray:
    if isinstance(value, str):
        return np.full(n, value, dtype=object)
    arr = np.asarray(value, dtype=object)
    if arr.shape != (n,):
        raise DataError(f"write_predictions: {name} has shape {arr.shape}; expected ({n},) or a single string")
    return _as_str(arr)


def _as_class_names(name: str, values, classes: tuple[str, ...], ids: np.ndarray) -> np.ndarray:
    arr = np.asarray(values)
    if arr.shape != ids.shape:
        raise DataError(f"write_predictions: {name} has shape {arr.shape}; expected {ids.shape}")
    if arr.dtype.kind in "iu":
        bad = (arr < 0) | (arr >= len(classes))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"write_predictions: {name} index {int(arr[i])} at id={ids[i]!r} is outside the label "
                f"space {list(classes)}"
            )
        return np.asarray(classes, dtype=object)[arr]
    return _as_str(arr)


def write_predictions(
    path: str | os.PathLike,
    *,
    ids: Sequence[str],
    split: str | Sequence[str],
    language: str | Sequence[str],
    modality: str | Sequence[str],
    gender: str | Sequence[str],
    speaker: str | Sequence[str],
    classes: Sequence[str] | LabelSpace,
    probs: np.ndarray,
    labels: np.ndarray | Sequence,
    predictions: np.ndarray | Sequence | None = None,
    extra: Mapping[str, Sequence] | None = None,
) -> Predictions:
    """Write a predictions table atomically (CSV, or Parquet by the ``.parquet`` suffix).

    Args:
        ids, split, language, modality, gender, speaker: one value per row; a single string is
            repeated for every row.
        classes: the label space (its order fixes the column order).
        probs: (n, K) class probabilities, rows summing to 1.
        labels: (n,) class indices or names (single-label), or (n, K) soft labels (multi-label,
            written as ``label_<class>`` columns).
        predictions: (n,) class indices or names; ``None`` means argmax of ``probs``.
        extra: additional columns, written after ``prediction``.

    Returns:
        The validated :class:`Predictions` that was written (what reading the file gives back).

    Raises:
        DataError: any value the table would reject on reading; nothing is written then.
    """
    classes = tuple(classes.classes if isinstance(classes, LabelSpace) else classes)
    ids_arr = _as_str(ids)
    n = ids_arr.shape[0]
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (n, len(classes)):
        raise DataError(f"write_predictions: probs has shape {probs.shape}; expected ({n}, {len(classes)})")
    columns: dict[str, np.ndarray] = {"id": ids_arr}
    for name, value in (("split", split), ("language", language), ("modality", modality), ("gender", gender), ("speaker", speaker)):
        columns[name] = _broadcast(name, value, n)
    labels_arr = np.asarray(labels)
    if labels_arr.ndim == 2:
        if labels_arr.shape != probs.shape:
            raise DataError(f"write_predictions: soft labels have shape {labels_arr.shape}; expected {probs.shape}")
        for j, c in enumerate(classes):
            columns[LABEL_PREFIX + c] = labels_arr[:, j].astype(np.float64)
    else:
        columns["label"] = _as_class_names("labels", labels_arr, classes, ids_arr)
    for j, c in enumerate(classes):
        columns[PROB_PREFIX + c] = probs[:, j]
    if predictions is None:
        predictions = probs.argmax(axis=1) if n > 0 else np.zeros(0, dtype=np.int64)
    columns["prediction"] = _as_class_names("predictions", predictions, classes, ids_arr)
    for name, value in (extra or {}).items():
        if name in columns:
            raise DataError(f"write_predictions: extra column {name!r} clashes with a table column")
        columns[name] = np.asarray(value)
        if columns[name].shape != (n,):
            raise DataError(f"write_predictions: extra column {name!r} has shape {columns[name].shape}; expected ({n},)")
    frame = pd.DataFrame(columns)
    path = Path(path)
    table = Predictions.from_frame(frame, source=str(path))
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".parquet":
            table.frame.to_parquet(tmp, index=False)
        else:
            table.frame.to_csv(tmp, index=False)
    logger.info("wrote %d predictions to %s", table.n, path)
    return table
