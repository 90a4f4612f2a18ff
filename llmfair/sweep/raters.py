"""Per-rater rows in the feature sweep: the ratings file, training on one row per (utterance, rater)
(``groups: rater``, the layout ``two_sided`` needs), and the rater-side figures of every run.

Two-sided speaker/rater fairness (Chien, Upadhyay & Lee, ICASSP 2024; METHODS.md §2.15) needs, for
every label, the gender of the rater who gave it. The EMO-SUPERB label files hold vote shares only,
so a sweep that measures or balances the rater side names a **ratings file** (``ratings_file``): a
UTF-8 CSV with columns ``id`` (the utterance id the features are keyed by: a CREMA-D file name
without ``.wav``), ``rater``, ``rater_gender`` (female/male/unknown, or F/M/U) and ``emotion`` (a
class name of the corpus label space, any case). One row per annotation.

- :func:`load_ratings_file` reads it into a :class:`RatingsTable`, which attaches the annotations to
  Examples (:meth:`RatingsTable.attach`).
- :func:`per_rater_training` — a method with ``groups: rater`` trains on one row per annotation of
  its training utterances (:func:`llmfair.data.ratings.expand_ratings`): the features of the
  utterance, the rater's label as a soft label with EMO-SUPERB's smoothing for one vote
  (``y_c = 0.01 + (1 − 0.01·K)·1[c = rater's class]``: ``0.01`` and ``0.95`` for K = 6) and the
  groups (speaker gender × rater gender) of :func:`llmfair.data.ratings.rater_group_spec`.
  Development rows and the test split stay per utterance (consensus labels), as in every run.
- :func:`rater_side_table` and :func:`rater_side_figures` — for **every** run of a sweep with a
  ratings file, the test predictions are repeated once per annotation of each test utterance
  (``runs/rater_predictions_<run id>.csv``: the utterance's probabilities, the rater's label,
  columns ``utterance``, ``rater``, ``rater_gender``) and the rater side is measured on those rows
  like the speaker side is on the utterances: ``rater_dp_gap_sum`` / ``rater_dp_gap_rms``
  (√Σ_c ΔSP_rat,c² and √mean_c ΔSP_rat,c², where ΔSP_rat,c = |P(ŷ_c | rated by a man) −
  P(ŷ_c | rated by a woman)| over the per-rater rows, ŷ_c = p_c > 1/K) beside the speaker side's
  ``dp_gap_sum`` / ``dp_gap_rms``, and per class ``delta_sp_spk`` / ``delta_sp_rat``
  (:func:`llmfair.metrics.statistical_parity` over the speaker's and the rater's gender: the two
  columns of :func:`llmfair.metrics.two_sided_parity`).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from llmfair.data.example import Example, RaterAnnotation
from llmfair.data.labels import LabelSpace, normalise_gender
from llmfair.errors import DataError

logger = logging.getLogger(__name__)

RATINGS_COLUMNS: tuple[str, ...] = ("id", "rater", "rater_gender", "emotion")
"""The columns of a sweep's ratings file."""
RATER_PREDICTIONS_PREFIX = "rater_predictions_"
"""``runs/rater_predictions_<run id>.csv``: a run's test predictions, one row per annotation."""
RATER_FIGURES: tuple[str, ...] = ("rater_dp_gap_sum", "rater_dp_gap_rms")
"""The rater-side figures a run's metrics gain from a ratings file (NaN/None without one)."""
ONE_VOTE_FLOOR = 0.01
"""The smoothing floor of a one-vote soft label (EMO-SUPERB's ``y_c = 0.01 + 0.94·n_c/N`` at N = 1
for K = 6; for other K the scale is ``1 − 0.01·K`` so that the label sums to 1)."""


def rater_predictions_path(out: str | os.PathLike, run_id: str) -> Path:
    """``out/runs/rater_predictions_<run id>.csv``."""
    from llmfair.sweep.plan import RUNS_DIR

    return Path(out) / RUNS_DIR / f"{RATER_PREDICTIONS_PREFIX}{run_id}.csv"


@dataclass(frozen=True)
class RatingsTable:
    """Rater annotations per utterance id (a sweep's ``ratings_file``)."""

    source: str
    annotations: dict[str, tuple[RaterAnnotation, ...]]

    def attach(self, examples: Sequence[Example]) -> list[Example]:
        """Copies of ``examples`` carrying their annotations (an example without any keeps none)."""
        return [dataclasses.replace(e, annotations=self.annotations.get(e.id, ())) for e in examples]

    def rated(self, examples: Sequence[Example]) -> int:
        """How many of ``examples`` have at least one annotation."""
        return sum(1 for e in examples if e.id in self.annotations)


def load_ratings_file(path: str | os.PathLike, label_space: LabelSpace) -> RatingsTable:
    """Read a ratings file (columns :data:`RATINGS_COLUMNS`; see the module docstring).

    Raises:
        DataError: the file is missing or not UTF-8 CSV, lacks a column, has an empty id or rater, an
            unknown gender spelling or an emotion outside ``label_space`` (each named with its line),
            or the same rater twice for one utterance.
    """
    from llmfair.data._csv import read_csv_checked

    path = Path(path)
    frame = read_csv_checked(path, RATINGS_COLUMNS)
    for column in ("id", "rater", "emotion"):
        frame[column] = frame[column].str.strip()
        empty = frame[column].eq("")
        if empty.any():
            raise DataError(f"{path}, line {int(np.argmax(empty.to_numpy())) + 2}: empty {column!r}")
    genders = np.empty(len(frame), dtype=object)
    codes, uniques = frame["rater_gender"].factorize()
    for j, value in enumerate(uniques):
        line = int(np.argmax(codes == j)) + 2
        genders[codes == j] = normalise_gender(value, where=f"{path}, line {line}, column 'rater_gender'")
    lookup = {c.lower(): i for i, c in enumerate(label_space.classes)}
    emotion_codes, emotion_names = frame["emotion"].str.lower().factorize()
    unknown = [name for name in emotion_names if name not in lookup]
    if unknown:
        line = int(np.argmax(frame["emotion"].str.lower().eq(unknown[0]).to_numpy())) + 2
        raise DataError(f"{path}, line {line}: emotion {unknown[0]!r} is not a class of {label_space.name} "
                        f"{list(label_space.classes)}")
    emotions = np.array([lookup[name] for name in emotion_names], dtype=np.int64)[emotion_codes]
    repeated = frame.duplicated(["id", "rater"])
    if repeated.any():
        i = int(np.argmax(repeated.to_numpy()))
        raise DataError(f"{path}, line {i + 2}: rater {frame['rater'].iloc[i]!r} rates {frame['id'].iloc[i]!r} twice")
    out: dict[str, list[RaterAnnotation]] = {}
    for utterance, rater, gender, emotion in zip(frame["id"], frame["rater"], genders, emotions.tolist()):
        out.setdefault(utterance, []).append(RaterAnnotation(rater, gender, emotion))
    logger.info("ratings: %d annotations of %d utterances from %s", len(frame), len(out), path)
    return RatingsTable(str(path), {k: tuple(v) for k, v in out.items()})


def one_vote_labels(classes: np.ndarray, num_classes: int) -> np.ndarray:
    """(R, K) float32 soft labels of single votes: ``ONE_VOTE_FLOOR`` everywhere, ``1 − (K − 1)·floor``
    on the voted class."""
    labels = np.full((len(classes), num_classes), ONE_VOTE_FLOOR, dtype=np.float32)
    labels[np.arange(len(classes)), classes] = 1.0 - (num_classes - 1) * ONE_VOTE_FLOOR
    return labels


@dataclass(frozen=True)
class PerRaterTraining:
    """One training row per (utterance, rater) annotation.

    Attributes:
        example_index: (R,) index of each row's utterance in the training Examples.
        labels: (R, K) one-vote soft labels (:func:`one_vote_labels`).
        classes: (R,) the rater's class.
        spec: the GroupSpec over (``gender``, ``rater_gender``).
        ids: (R,) group ids in ``spec``.
    """

    example_index: np.ndarray
    labels: np.ndarray
    classes: np.ndarray
    spec: Any
    ids: np.ndarray

    @property
    def names(self) -> list[str]:
        return [self.spec.describe(i) for i in range(self.spec.num_groups)]


def per_rater_training(train: Sequence[Example], ratings: RatingsTable, num_classes: int) -> PerRaterTraining:
    """The per-rater training rows of ``train`` (Examples without annotations; ``ratings`` supplies them).

    Raises:
        DataError: a training utterance has no annotation in the ratings file (the message names the
            file, the count and a few ids).
    """
    from llmfair.data.ratings import expand_ratings

    missing = [e.id for e in train if e.id not in ratings.annotations]
    if missing:
        raise DataError(f"{ratings.source}: {len(missing)} of {len(train)} training utterances have no rater "
                        f"annotation (e.g. {missing[:5]}); groups: rater trains on one row per annotation")
    rows = expand_ratings(ratings.attach(train), num_classes=num_classes)
    spec, ids = rows.group_ids()
    return PerRaterTraining(example_index=rows.example_index, labels=one_vote_labels(rows.label, num_classes),
                            classes=rows.label, spec=spec, ids=ids)


def rater_side_table(pred: Any, examples: Sequence[Example], ratings: RatingsTable, path: str | os.PathLike):
    """Write and return the per-rater table of ``pred`` (a predictions table whose rows are
    ``examples``, in order): one row per annotation of each rated example, with the example's
    probabilities and prediction, the rater's label (a one-vote soft label in a multi-label table, the
    class in a single-label one) and the columns ``utterance``, ``rater`` and ``rater_gender`` (ids
    ``<utterance>|<rater>``). None when no example is rated."""
    from llmfair.data.ratings import expand_ratings
    from llmfair.predictions import write_predictions

    rated = [i for i, e in enumerate(examples) if e.id in ratings.annotations]
    if not rated:
        return None
    rows = expand_ratings(ratings.attach([examples[i] for i in rated]), num_classes=pred.num_classes)
    owner = np.asarray(rated, dtype=np.int64)[rows.example_index]
    frame = pred.frame
    utterance = frame["id"].to_numpy()[owner]
    return write_predictions(
        path, ids=[f"{u}|{r}" for u, r in zip(utterance, rows.rater)], split=frame["split"].to_numpy()[owner],
        language=frame["language"].to_numpy()[owner], modality=frame["modality"].to_numpy()[owner],
        gender=frame["gender"].to_numpy()[owner], speaker=frame["speaker"].to_numpy()[owner],
        classes=pred.classes, probs=pred.probs[owner], predictions=pred.predictions[owner],
        labels=one_vote_labels(rows.label, pred.num_classes) if pred.multilabel else rows.label,
        extra={"utterance": utterance, "rater": rows.rater, "rater_gender": rows.rater_gender})


def rater_side_figures(pred: Any, rater_table: Any) -> dict[str, Any]:
    """The rater-side figures of a run (module docstring): ``rater_dp_gap_sum``, ``rater_dp_gap_rms``,
    per class ``delta_sp_spk`` and ``delta_sp_rat``, and the row counts. The rater figures are None
    when the per-rater rows lack raters of either gender (and the speaker-side ΔSP when the
    utterances lack speakers of either gender)."""
    from llmfair.metrics import statistical_parity

    out: dict[str, Any] = {name: None for name in RATER_FIGURES}
    out.update({"delta_sp_spk": None, "delta_sp_rat": None, "n_rater_rows": 0, "rater_rows_by_gender": {}})
    try:
        spk = statistical_parity(pred, group_column="gender")["delta_sp"].to_numpy()
        out["delta_sp_spk"] = dict(zip(pred.classes, spk.tolist()))
    except DataError as exc:
        logger.warning("speaker-side ΔSP left out: %s", exc)
    if rater_table is None:
        return out
    genders, counts = np.unique(rater_table.column("rater_gender"), return_counts=True)
    out["n_rater_rows"] = int(rater_table.n)
    out["rater_rows_by_gender"] = dict(zip(genders.tolist(), counts.tolist()))
    try:
        rat = statistical_parity(rater_table, group_column="rater_gender")["delta_sp"].to_numpy()
    except DataError as exc:
        logger.warning("rater-side ΔSP left out: %s", exc)
        return out
    out["delta_sp_rat"] = dict(zip(rater_table.classes, rat.tolist()))
    out["rater_dp_gap_sum"] = float(np.sqrt(np.sum(rat * rat)))
    out["rater_dp_gap_rms"] = float(np.sqrt(np.mean(rat * rat)))
    return out


_LOADED: dict[tuple[str, int, int, str], RatingsTable] = {}


def cached_ratings(path: str | os.PathLike, label_space: LabelSpace) -> RatingsTable:
    """:func:`load_ratings_file`, read once per process while the file is unchanged (the runs of a
    sweep shard share it)."""
    resolved = Path(path).resolve()
    try:
        stat = resolved.stat()
    except OSError:
        return load_ratings_file(path, label_space)  # its error names the missing file
    key = (str(resolved), stat.st_mtime_ns, stat.st_size, label_space.name)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = load_ratings_file(path, label_space)
    return _LOADED[key]
