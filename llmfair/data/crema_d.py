"""CREMA-D reader for the EMO-SUPERB label files (``labels_consensus_{fold}.csv``, ``config.json``).

EMO-SUPERB ships CREMA-D as five speaker-disjoint folds; every fold file holds all 7,442 clips with
columns ``FileName, angry, sad, disgust, fear, neutral, happy, SpkrID, Gender, Split_Set``
(METHODS.md §1.5). The six class columns are **distributional labels** built from the voice-only
ratings: every row fits ``y_c = 0.01 + 0.94 · n_c / N`` with ``n_c`` votes for class ``c`` out of
``N`` raters (METHODS.md §1.2; recomputed from the files, no document states it). The reader keeps
the soft label as ``Example.emotion_dist`` and derives

- ``Example.emotion``: the strict-majority class (vote share ``n_c / N > 0.5``), ``-1`` when no
  class has more than half of the votes — the single label the controlled-imbalance protocol
  (METHODS.md §1.6, :mod:`llmfair.data.imbalance`) works on;
- :func:`binarized_labels`: the multi-label targets used for evaluation, ``y_c > 1/K`` strictly
  (EMO-SUPERB ``expert.py``; IDI paper §4.3).

Splits map ``Train`` → ``train``, ``Development`` → ``dev``, ``Test`` → ``test``. Audio stays a
path (``audio_dir / FileName``); file names from the CSV must be plain names, so a path can never
leave ``audio_dir``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from llmfair.data._csv import read_csv_checked
from llmfair.data.audio import check_audio_files
from llmfair.data.example import Example
from llmfair.data.labels import CREMA_D, binarize, normalise_gender
from llmfair.errors import DataError

logger = logging.getLogger(__name__)

LABEL_FLOOR = 0.01
"""Smoothing floor of the EMO-SUPERB soft labels: ``y_c = LABEL_FLOOR + LABEL_SCALE · n_c / N``."""
LABEL_SCALE = 0.94
"""``1 − K · LABEL_FLOOR`` for K = 6, so that every soft label sums to 1."""

SPLITS: dict[str, str] = {"train": "Train", "dev": "Development", "test": "Test"}
"""llmfair split name → the ``Split_Set`` value of the label files (and of ``config.json``)."""

CLASS_COLUMNS: tuple[str, ...] = CREMA_D.classes
ID_COLUMNS: tuple[str, ...] = ("FileName", "SpkrID", "Gender", "Split_Set")
CONFIG_FILE = "config.json"
FOLDS: tuple[int, ...] = (1, 2, 3, 4, 5)

SENTENCES: dict[str, str] = {
    "IEO": "It's eleven o'clock",
    "TIE": "That is exactly what happened",
    "IOM": "I'm on my way to the meeting",
    "IWW": "I wonder what this is about",
    "TAI": "The airplane is almost full",
    "MTI": "Maybe tomorrow it will be cold",
    "IWL": "I would like a new alarm clock",
    "ITH": "I think I have a doctor's appointment",
    "DFA": "Don't forget a jacket",
    "ITS": "I think I've seen this before",
    "TSI": "The surface is slick",
    "WSI": "We'll stop in a couple of minutes",
}
"""CREMA-D's 12 sentence codes (second field of a file name, ``1001_DFA_ANG_XX.wav``) → the text."""

_SUM_TOLERANCE = 1e-3  # the released rows sum to 1 within 2e-6; leave room for coarser rounding
_SHARE_DECIMALS = 6


def labels_path(labels_dir: str | Path, fold: int) -> Path:
    """``labels_dir/labels_consensus_{fold}.csv``."""
    return Path(labels_dir) / f"labels_consensus_{fold}.csv"


def available_folds(labels_dir: str | Path) -> list[int]:
    """Fold numbers that have a ``labels_consensus_{fold}.csv`` in ``labels_dir``, sorted."""
    folds = []
    for p in Path(labels_dir).glob("labels_consensus_*.csv"):
        suffix = p.stem.rsplit("_", 1)[-1]
        if suffix.isdigit():
            folds.append(int(suffix))
    return sorted(folds)


def vote_shares(soft: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Vote shares ``n_c / N`` from EMO-SUPERB soft labels: the inverse of ``y = 0.01 + 0.94 · n/N``.

    ``soft`` is (..., K) with K = 6; the result has the same shape (float64, not rounded: the files
    store the labels rounded to at most six decimals, so a share is off by up to about 5e-7).
    """
    return (np.asarray(soft, dtype=np.float64) - LABEL_FLOOR) / LABEL_SCALE


def strict_majority(soft: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Per row, the class with more than half of the votes, else ``-1`` (METHODS.md §1.6 step 1).

    Shares are rounded to 6 decimals before the strict comparison so that a tie at exactly one
    half (``y = 0.48``, e.g. 5 of 10 votes) is never lifted above 0.5 by float error.
    """
    shares = np.round(vote_shares(soft), _SHARE_DECIMALS)
    above = shares > 0.5
    return np.where(above.any(axis=-1), np.argmax(above, axis=-1), -1).astype(np.int64)


def binarized_labels(examples: Sequence[Example]) -> np.ndarray:
    """(n, K) boolean multi-label targets: class c is on when ``y_c > 1/K`` (strict).

    The evaluation labels of EMO-SUPERB and the IDI paper (§4.3; METHODS.md §1.2), computed with
    :func:`llmfair.data.labels.binarize` from each Example's ``emotion_dist``.

    Raises:
        DataError: an Example has no soft label or a label of another width.
    """
    k = CREMA_D.num_classes
    if not examples:
        return np.zeros((0, k), dtype=bool)
    bad = next((e.id for e in examples if e.emotion_dist is None or len(e.emotion_dist) != k), None)
    if bad is not None:
        raise DataError(f"example {bad!r} has no {k}-class soft label (emotion_dist); cannot binarise")
    return binarize(np.array([e.emotion_dist for e in examples], dtype=np.float64), k)


def _read_config(labels_dir: Path) -> dict[str, str]:
    """Check ``config.json`` (when present) against CREMA_D; return its split-name map."""
    path = labels_dir / CONFIG_FILE
    if not path.is_file():
        return dict(SPLITS)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is not valid UTF-8 JSON: {exc}") from None
    categorical = config.get("categorical") if isinstance(config, dict) else None
    classes = categorical.get("emo_type") if isinstance(categorical, dict) else None
    if not isinstance(classes, list):
        raise DataError(f"{path} has no 'categorical.emo_type' list of classes")
    classes = [str(c).strip().lower() for c in classes]
    if sorted(classes) != sorted(CREMA_D.classes):
        raise DataError(
            f"{path}: categorical.emo_type {classes} is not the CREMA-D label space {list(CREMA_D.classes)}"
        )
    if tuple(classes) != CREMA_D.classes:
        # columns are read by name, so the Examples keep the CREMA_D order whatever the file says
        logger.info("%s lists the classes in the order %s; Examples use %s", path, classes, list(CREMA_D.classes))
    splits = dict(SPLITS)
    split_types = config.get("data_split_type")
    if isinstance(split_types, dict):
        splits.update({k: str(v) for k, v in split_types.items() if k in SPLITS})
    return splits


def _check_file_names(names: pd.Series, path: Path) -> None:
    unsafe = (
        names.str.strip().eq("")
        | names.str.contains("/", regex=False)
        | names.str.contains("\\", regex=False)
        | names.str.contains("..", regex=False)
        | names.str.match(r"^[A-Za-z]:")
    )
    if unsafe.any():
        i = int(np.argmax(unsafe.to_numpy()))
        raise DataError(
            f"{path}, line {i + 2}: FileName {names.iloc[i]!r} is not a plain file name (absolute, '..' or a "
            "path separator); refused, audio paths must stay inside audio_dir"
        )
    dup = names.duplicated()
    if dup.any():
        raise DataError(f"{path}: FileName {names[dup].iloc[0]!r} appears more than once")


def _soft_labels(frame: pd.DataFrame, path: Path) -> np.ndarray:
    cols = list(CLASS_COLUMNS)
    numeric = frame[cols].apply(lambda s: pd.to_numeric(s.str.strip(), errors="coerce"))
    soft = numeric.to_numpy(dtype=np.float64)
    nan = np.isnan(soft)
    if nan.any():
        row, col = np.argwhere(nan)[0]
        raise DataError(
            f"{path}: column {cols[col]!r} of FileName {frame['FileName'].iloc[row]!r} is not a number: "
            f"{frame[cols[col]].iloc[row]!r}"
        )
    bad = ((soft < 0) | (soft > 1)).any(axis=1) | (np.abs(soft.sum(axis=1) - 1.0) > _SUM_TOLERANCE)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(
            f"{path}: {int(bad.sum())} row(s) have soft labels outside [0, 1] or not summing to 1 ± "
            f"{_SUM_TOLERANCE:g}; first: FileName {frame['FileName'].iloc[i]!r} with {soft[i].tolist()} "
            f"(sum {soft[i].sum():.4f})"
        )
    return soft


def _genders(values: pd.Series, path: Path) -> np.ndarray:
    """normalise_gender on each distinct value only (the error names the first row holding it)."""
    codes, uniques = pd.factorize(values)
    mapped = []
    for j, value in enumerate(uniques):
        first = int(np.argmax(codes == j))
        mapped.append(normalise_gender(value, where=f"{path}, line {first + 2}, column 'Gender'"))
    return np.asarray(mapped, dtype=object)[codes]


def read_crema_d(
    labels_dir: str | Path,
    fold: int,
    *,
    audio_dir: str | Path | None = None,
    splits: Sequence[str] = ("train", "dev", "test"),
    check_audio: bool = True,
) -> list[Example]:
    """Read one EMO-SUPERB CREMA-D fold into Examples, one per row of the requested splits.

    Args:
        labels_dir: the directory with ``labels_consensus_{1..5}.csv`` and (optionally)
            ``config.json``, whose ``categorical.emo_type`` must be the CREMA-D classes.
        fold: which fold file to read (EMO-SUPERB has 1–5; fold k's test is fold k−1's dev).
        audio_dir: the directory holding the clips (``1001_DFA_ANG_XX.wav``...). ``None`` reads
            labels only: ``Example.audio`` is then the bare file name.
        splits: any of ``train``, ``dev`` (``Development``), ``test``.
        check_audio: with ``audio_dir``, fail listing the first few missing clips and their count.

    Returns:
        Examples in file order with ``id`` the file name without extension, ``text`` the spoken
        sentence, ``language="eng"``, ``modality="audio"``, ``emotion_dist`` the soft label in
        CREMA_D order, ``emotion`` the strict-majority class or ``-1``, ``speaker`` the SpkrID and
        ``meta={"fold": fold, "file_name": FileName}``.

    Raises:
        DataError: missing directory or fold file (naming the folds present), missing columns,
            non-UTF-8 text, unknown split or gender values, soft labels outside [0, 1] or not
            summing to 1, unknown sentence codes, unsafe or duplicate file names, missing audio.
    """
    labels_dir = Path(labels_dir)
    path = _fold_file(labels_dir, fold, splits)
    split_names = _read_config(labels_dir)
    frame = read_csv_checked(path, ("FileName", *CLASS_COLUMNS, "SpkrID", "Gender", "Split_Set"))
    for col in ID_COLUMNS:
        frame[col] = frame[col].str.strip()
    split = _split_column(frame, split_names, path)
    names = frame["FileName"]
    _check_file_names(names, path)
    soft = _soft_labels(frame, path)
    genders = _genders(frame["Gender"], path)
    text = _sentences(names, path)
    emotions = strict_majority(soft)

    idx = np.flatnonzero(split.isin(list(splits)).to_numpy())
    ids = names.str.rsplit(".", n=1).str[0].to_numpy()
    kept_names = names.to_numpy()[idx]
    audio = _audio_paths(kept_names, audio_dir, check_audio)
    soft_rows = [tuple(r) for r in soft[idx].tolist()]
    speakers, texts, split_arr = frame["SpkrID"].to_numpy(), text.to_numpy(), split.to_numpy()
    examples = [
        Example(
            id=ids[i],
            audio=path_i,
            text=texts[i],
            language="eng",
            modality="audio",
            emotion=int(emotions[i]),
            gender=genders[i],
            speaker=speakers[i],
            split=split_arr[i],
            emotion_dist=dist,
            meta={"fold": fold, "file_name": str(name)},
        )
        for i, name, path_i, dist in zip(idx.tolist(), kept_names, audio, soft_rows)
    ]
    logger.info("CREMA-D fold %d: %d examples from %s (splits %s)", fold, len(examples), path, list(splits))
    return examples


def _fold_file(labels_dir: Path, fold: int, splits: Sequence[str]) -> Path:
    """The fold's label file, after checking the directory, the split names and that the file exists
    (the error names the folds present)."""
    if not labels_dir.is_dir():
        raise DataError(f"CREMA-D labels directory not found: {labels_dir}")
    bad_splits = [s for s in splits if s not in SPLITS]
    if bad_splits:
        raise DataError(f"unknown split(s) {bad_splits}; CREMA-D splits are {list(SPLITS)} ('Development' is 'dev')")
    path = labels_path(labels_dir, fold)
    if not path.is_file():
        present = available_folds(labels_dir)
        raise DataError(
            f"CREMA-D fold {fold} not found: {path} is missing; folds present in {labels_dir}: {present or 'none'}"
        )
    return path


def _split_column(frame: pd.DataFrame, split_names: dict[str, str], path: Path) -> pd.Series:
    """Each row's llmfair split (``train``/``dev``/``test``) from its ``Split_Set`` value."""
    to_split = {v: k for k, v in split_names.items()}
    split = frame["Split_Set"].map(to_split)
    unknown = split.isna()
    if unknown.any():
        i = int(np.argmax(unknown.to_numpy()))
        raise DataError(
            f"{path}, line {i + 2} (FileName {frame['FileName'].iloc[i]!r}): unknown Split_Set value "
            f"{frame['Split_Set'].iloc[i]!r}; expected one of {sorted(to_split)}"
        )
    return split


def _sentences(names: pd.Series, path: Path) -> pd.Series:
    """The spoken sentence of each clip, from the sentence code in its file name."""
    text = names.str.split("_").str[1].map(SENTENCES)
    if text.isna().any():
        i = int(np.argmax(text.isna().to_numpy()))
        raise DataError(
            f"{path}: FileName {names.iloc[i]!r} has no CREMA-D sentence code (expected e.g. 1001_DFA_ANG_XX.wav "
            f"with one of {sorted(SENTENCES)})"
        )
    return text


def _audio_paths(names: np.ndarray, audio_dir: str | Path | None, check_audio: bool) -> list[str]:
    """``audio_dir / name`` per clip (checked to exist with ``check_audio``), or the bare names
    without ``audio_dir``."""
    if audio_dir is None:
        return [str(n) for n in names]
    base = Path(audio_dir)
    audio = [str(base / n) for n in names]
    if check_audio:
        check_audio_files(audio, what=f"CREMA-D audio (under {base})")
    return audio
