"""Predictions tables in, corrected predictions tables out: the correction net's file-level API.

**Joining the two tables.** The correction net reads, for every utterance, the emotion model's
probabilities and the gender model's probabilities. Both come as predictions tables
(:mod:`llmfair.predictions`); they are joined on ``(id, modality)``, the table key. A gender
classifier hears only the audio, which both modalities of an utterance share, so its table may
instead hold **one row per id** (whatever its ``modality`` value, e.g. ``audio``): when every
``id`` of the gender table is unique, the join is on ``id`` alone and that row serves every
modality of the id in the emotion table. Otherwise the join is on ``(id, modality)``.

The join refuses (:class:`~llmfair.errors.DataError`, naming file, id and value):

- an emotion row of known speaker gender without a gender row (the tables cover different ids);
- joined rows whose ``split`` differs, or whose speaker gender (emotion table) differs from the
  gender table's ``label`` (the ids name different utterances);
- multi-label tables, and gender tables whose classes are not ``female``/``male``.

Emotion rows of **unknown** speaker gender without a gender row (llmfair's gender model leaves
them out: its table needs a true gender as label) have no gender-model input: they are left out
of fitting, and :func:`apply_correction` passes them through unchanged (column
``corrected = False``). Gender-table rows that match no emotion row are ignored.

**Never fitted on test rows.** :func:`fit_correction` refuses any table with a ``test`` row, and
the fitted model records the ids it saw (``fit_rows.csv``); :func:`apply_correction` refuses
tables that contain any of them. Fitting on ``train`` rows is allowed but warned about: the frozen
models are over-confident on their own training rows, so a correction learnt there does not
transfer (the official code's "FACES" figures are training-set numbers, METHODS.md §2.17).

**Files.** A fitted model directory holds ``model.safetensors`` (the state dict; never pickle),
``config.json`` (kind, options, classes, training summary, package versions), ``fit_rows.csv``
and ``figures.json`` / ``figures.md`` (before/after figures on the fitting rows). An applied
directory holds ``predictions_emotion.csv`` (the emotion table with corrected probabilities and
predictions, every other column kept, plus ``corrected``), ``predictions_gender.csv`` (corrected
gender predictions keyed like the emotion table, with the true emotion in ``true_emotion``) and
``figures.json`` / ``figures.md``.

**Figures** (METHODS.md §3 "Correction-net metrics", official ``calculate_accuracy_metrics``):
for each task, accuracy per (true gender, true emotion) cell, their mean (macro-average
accuracy), and the largest and average over emotions of |A_female,e − A_male,e|, before and after
correction — :func:`llmfair.metrics.correction_net_figures` on the uncorrected and corrected
tables. Missing cells are reported and left out (not zero-filled as in the reference code).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from llmfair._atomic import atomic_directory, atomic_path, check_replaceable, write_json, write_text
from llmfair.correction.network import (
    MODEL_KINDS,
    CorrectionModel,
    CorrectionOptions,
    build_correction_model,
    predict_probs,
    prepare_inputs,
)
from llmfair.errors import ConfigError, DataError
from llmfair.predictions import KEY_COLUMNS, LABEL_PREFIX, PROB_PREFIX, Predictions, read_predictions

logger = logging.getLogger(__name__)

GENDER_CLASSES: tuple[str, str] = ("female", "male")
UNKNOWN = "unknown"
FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FIT_ROWS_FILE = "fit_rows.csv"
FIGURES_JSON = "figures.json"
FIGURES_MD = "figures.md"
EMOTION_OUTPUT = "predictions_emotion.csv"
GENDER_OUTPUT = "predictions_gender.csv"
TRUE_EMOTION_COLUMN = "true_emotion"
"""Column of the gender tables written here holding each row's true emotion (the figures group by it)."""
CORRECTED_COLUMN = "corrected"
TEST_SPLIT = "test"
FIGURE_TASKS: tuple[str, ...] = ("gender", "emotion")
FIGURE_STAGES: tuple[str, ...] = ("before", "after")


@dataclass(frozen=True, eq=False)
class CorrectionData:
    """Emotion and gender predictions of the same utterances, row-aligned.

    Attributes:
        emotion: the emotion table's rows that have a gender row, in the emotion table's order.
        gender_probs: (n, 2) gender-model probabilities, columns (female, male).
        gender_labels: (n,) true gender, 0 = female, 1 = male (the gender table's ``label``).
        emotion_rows: (n,) row of each joined row in the full emotion table.
        unmatched_rows: rows of the emotion table without a gender row (all of unknown gender).
        join_on: ``("id",)`` or ``("id", "modality")``.
        emotion_table: the full emotion table (for writing corrected copies).
    """

    emotion: Predictions
    gender_probs: np.ndarray
    gender_labels: np.ndarray
    emotion_rows: np.ndarray
    unmatched_rows: np.ndarray
    join_on: tuple[str, ...]
    emotion_table: Predictions

    @property
    def n(self) -> int:
        """Number of joined rows."""
        return self.emotion.n

    @property
    def emotion_classes(self) -> tuple[str, ...]:
        return self.emotion.classes

    @property
    def emotion_probs(self) -> np.ndarray:
        return self.emotion.probs

    @property
    def emotion_labels(self) -> np.ndarray:
        return self.emotion.labels


def _female_male(gender: Predictions) -> tuple[np.ndarray, np.ndarray]:
    """(probs (n, 2), labels (n,)) of a gender table in (female, male) order."""
    if gender.multilabel:
        raise DataError(f"{gender.source}: a gender predictions table needs a single 'label' column (female/male), "
                        "not label_<class> columns")
    names = [c.lower() for c in gender.classes]
    if sorted(names) != sorted(GENDER_CLASSES):
        raise DataError(f"{gender.source}: a gender predictions table needs the classes {list(GENDER_CLASSES)} "
                        f"(prob_female, prob_male); it has {list(gender.classes)}")
    order = np.array([names.index(c) for c in GENDER_CLASSES])
    inverse = np.argsort(order)
    return gender.probs[:, order], inverse[gender.labels]


def join_tables(emotion: Predictions, gender: Predictions) -> CorrectionData:
    """Align the gender table's rows to the emotion table's (see the module docstring for the rules).

    Raises:
        DataError: multi-label tables, a gender table without female/male classes, emotion rows of
            known gender missing from the gender table, or joined rows whose split or gender disagree.
    """
    if emotion.multilabel:
        raise DataError(f"{emotion.source}: the correction net needs a single-label emotion table ('label' column); "
                        "multi-label (label_<class>) tables are not supported")
    gender_probs_all, gender_labels_all = _female_male(gender)
    ef, gf = emotion.frame, gender.frame
    keys = ["id"] if not gf["id"].duplicated().any() else ["id", "modality"]
    left = ef[keys].assign(_row=np.arange(len(ef)))
    right = gf[keys].assign(_grow=np.arange(len(gf)))
    merged = left.merge(right, on=keys, how="left", sort=False, validate="many_to_one")
    g_row = merged["_grow"].to_numpy(dtype=np.float64)
    matched = ~np.isnan(g_row)
    speaker_gender = ef["gender"].to_numpy(dtype=object)
    missing = ~matched & (speaker_gender != UNKNOWN)
    if missing.any():
        i = int(np.flatnonzero(missing)[0])
        raise DataError(
            f"{gender.source} has no row for {int(missing.sum())} of the {len(ef)} rows of {emotion.source} (first "
            f"id={ef['id'].iat[i]!r}, modality={ef['modality'].iat[i]!r}); the two tables must cover the same "
            f"utterances (joined on {' + '.join(keys)})")
    rows = np.flatnonzero(matched)
    g_idx = g_row[matched].astype(np.int64)
    if rows.size == 0:
        raise DataError(f"no row of {emotion.source} has a gender row in {gender.source}")
    e_split = ef["split"].to_numpy(dtype=object)[rows]
    g_split = gf["split"].to_numpy(dtype=object)[g_idx]
    bad = e_split != g_split
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{int(bad.sum())} joined row(s) have different splits: id={ef['id'].iat[rows[i]]!r} is split "
            f"{e_split[i]!r} in {emotion.source} but {g_split[i]!r} in {gender.source}; join tables of the same split")
    labels = gender_labels_all[g_idx]
    known = speaker_gender[rows] != UNKNOWN
    disagree = known & (speaker_gender[rows] != np.asarray(GENDER_CLASSES, dtype=object)[labels])
    if disagree.any():
        i = int(np.flatnonzero(disagree)[0])
        raise DataError(
            f"{int(disagree.sum())} joined row(s) disagree on the speaker's gender: id={ef['id'].iat[rows[i]]!r} is "
            f"{speaker_gender[rows[i]]!r} in {emotion.source} (column gender) but "
            f"{GENDER_CLASSES[labels[i]]!r} in {gender.source} (column label)")
    unused = len(gf) - np.unique(g_idx).size
    if unused:
        logger.info("%d row(s) of %s match no row of %s and are ignored", unused, gender.source, emotion.source)
    mask = np.zeros(len(ef), dtype=bool)
    mask[rows] = True
    return CorrectionData(
        emotion=emotion.subset(mask),
        gender_probs=gender_probs_all[g_idx],
        gender_labels=labels,
        emotion_rows=rows,
        unmatched_rows=np.flatnonzero(~matched),
        join_on=tuple(keys),
        emotion_table=emotion,
    )


def check_no_test_rows(*tables: Predictions) -> None:
    """Refuse tables holding any ``test`` row: the correction net is fitted on a validation split.

    Raises:
        DataError: naming the file, the number of test rows and the first id.
    """
    for table in tables:
        split = table.frame["split"].to_numpy(dtype=object)
        test = split == TEST_SPLIT
        if test.any():
            i = int(np.flatnonzero(test)[0])
            raise DataError(
                f"{table.source} has {int(test.sum())} row(s) of the test split (first id="
                f"{table.frame['id'].iat[i]!r}); fit the correction net on validation (dev) predictions and keep "
                "the test split for `llmfair correct apply`")


# ------------------------------------------------------------------------------------------- tables
def _emotion_table(data: CorrectionData, probs: np.ndarray) -> Predictions:
    """The joined emotion rows with ``probs`` and their argmax as prediction (in memory)."""
    frame = data.emotion.frame.copy()
    for j, c in enumerate(data.emotion_classes):
        frame[PROB_PREFIX + c] = probs[:, j]
    frame["prediction"] = np.asarray(data.emotion_classes, dtype=object)[probs.argmax(axis=1)]
    return Predictions.from_frame(frame, source=data.emotion.source)


def _gender_table(data: CorrectionData, probs: np.ndarray, source: str) -> Predictions:
    """Gender predictions keyed like the joined emotion rows; ``gender`` and ``label`` are the true
    gender and ``true_emotion`` the true emotion (the figures group gender accuracy by it)."""
    ef = data.emotion.frame
    genders = np.asarray(GENDER_CLASSES, dtype=object)
    frame = pd.DataFrame({c: ef[c].to_numpy() for c in KEY_COLUMNS})
    frame["gender"] = genders[data.gender_labels]
    frame["label"] = genders[data.gender_labels]
    for j, c in enumerate(GENDER_CLASSES):
        frame[PROB_PREFIX + c] = probs[:, j]
    frame["prediction"] = genders[probs.argmax(axis=1)]
    frame[TRUE_EMOTION_COLUMN] = np.asarray(data.emotion_classes, dtype=object)[data.emotion_labels]
    return Predictions.from_frame(frame, source=source)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _figures_dict(table: Predictions, emotion_column: str) -> dict[str, Any]:
    from llmfair.metrics import correction_net_figures

    fig = correction_net_figures(table, emotion_column=emotion_column)
    cells = fig["cells"].rename(columns={emotion_column: "emotion"})
    return _json_safe({
        "macro_average_accuracy": fig["macro_average_accuracy"],
        "largest_gap": fig["largest_gap"],
        "average_gap": fig["average_gap"],
        "gaps": fig["gaps"],
        "cells": cells.to_dict(orient="records"),
        "missing_cells": [list(c) for c in fig["missing_cells"]],
        "n_excluded": fig["n_excluded"],
    })


def correction_figures(
    data: CorrectionData, emotion_after: np.ndarray, gender_after: np.ndarray, *, source: str = "<correction>"
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{task: {"before"|"after": figures}}`` for tasks ``gender`` and ``emotion``.

    Each figures dict holds ``macro_average_accuracy``, ``largest_gap``, ``average_gap``, the
    per-emotion ``gaps``, the ``cells`` (gender, emotion, n, accuracy), ``missing_cells`` and
    ``n_excluded``, as :func:`llmfair.metrics.correction_net_figures` computes them from the
    uncorrected and corrected tables (both tasks grouped by true gender × true emotion).
    """
    tables = {
        "emotion": (data.emotion, _emotion_table(data, emotion_after), "emotion"),
        "gender": (_gender_table(data, data.gender_probs, source), _gender_table(data, gender_after, source),
                   TRUE_EMOTION_COLUMN),
    }
    return {task: {"before": _figures_dict(before, col), "after": _figures_dict(after, col)}
            for task, (before, after, col) in ((t, tables[t]) for t in FIGURE_TASKS)}


def figures_markdown(figures: Mapping[str, Mapping[str, Mapping[str, Any]]], title: str) -> str:
    """The slides' results table (percentages) plus the per-emotion gaps before → after."""

    def pct(value: Any) -> str:
        return "n/a" if value is None else f"{100.0 * float(value):.2f}"

    lines = [f"# {title}", "", "| task | correction | macro-avg acc (%) | largest gap (%) | average gap (%) |",
             "|---|---|---:|---:|---:|"]
    for task in FIGURE_TASKS:
        for stage, name in zip(FIGURE_STAGES, ("uncorrected", "corrected")):
            f = figures[task][stage]
            lines.append(f"| {task} | {name} | {pct(f['macro_average_accuracy'])} | {pct(f['largest_gap'])} | "
                         f"{pct(f['average_gap'])} |")
    for task in FIGURE_TASKS:
        before, after = figures[task]["before"], figures[task]["after"]
        lines += ["", f"Gender gap |A_female − A_male| per emotion, {task} task (%):", "",
                  "| emotion | uncorrected | corrected |", "|---|---:|---:|"]
        for emotion, gap in before["gaps"].items():
            lines.append(f"| {emotion} | {pct(gap)} | {pct(after['gaps'].get(emotion))} |")
        if before["missing_cells"]:
            lines.append("")
            lines.append("Cells without rows (left out): " + ", ".join(f"{g}/{e}" for g, e in before["missing_cells"]))
    return "\n".join(lines) + "\n"


def format_figures(figures: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """A short plain-text before → after summary for the terminal."""
    out = []
    for task in FIGURE_TASKS:
        b, a = figures[task]["before"], figures[task]["after"]
        parts = []
        for key, name in (("macro_average_accuracy", "macro-avg acc"), ("largest_gap", "largest gap"),
                          ("average_gap", "average gap")):
            fmt = [("n/a" if v is None else f"{100 * v:.2f}") for v in (b[key], a[key])]
            parts.append(f"{name} {fmt[0]} → {fmt[1]}")
        out.append(f"{task:<8}" + "; ".join(parts) + " (%)")
    return "\n".join(out)


# --------------------------------------------------------------------------------------- save / load
def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in ("llmfair", "torch", "numpy", "pandas", "safetensors"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def save_correction_model(model: CorrectionModel, out_dir: str | os.PathLike, config: Mapping[str, Any]) -> None:
    """Write ``model.safetensors`` (state dict) and ``config.json`` (``config`` plus what
    :func:`load_correction_model` needs: format, kind, classes, options) into ``out_dir``."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out_dir / MODEL_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": str(FORMAT_VERSION), "kind": model.kind})
    write_json(out_dir / CONFIG_FILE, {"format": FORMAT_VERSION, "kind": model.kind,
                                       "num_emotions": model.num_emotions, **config})


def load_correction_model(model_dir: str | os.PathLike) -> tuple[CorrectionModel, dict[str, Any]]:
    """The fitted model (eval mode, CPU) and its ``config.json``.

    Raises:
        DataError: missing or unreadable files, or weights that do not fit the configuration.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    config_path, weights_path = model_dir / CONFIG_FILE, model_dir / MODEL_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise DataError(f"{model_dir} is not a fitted correction model: {path.name} is missing "
                            "(write one with `llmfair correct fit`)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{config_path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT_VERSION:
        raise DataError(f"{config_path}: unsupported format {config.get('format') if isinstance(config, dict) else config!r}; "
                        f"expected {FORMAT_VERSION}")
    kind = config.get("kind")
    if kind not in MODEL_KINDS:
        raise DataError(f"{config_path}: unknown kind {kind!r}; expected one of {sorted(MODEL_KINDS)}")
    try:
        options = options_from_dict(config.get("options", {}), source=str(config_path))
        classes = tuple(config["emotion_classes"])
    except KeyError as exc:
        raise DataError(f"{config_path} lacks {exc}") from None
    model = build_correction_model(kind, len(classes), options)
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as exc:
        raise DataError(f"{weights_path} could not be read as safetensors: {exc}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise DataError(f"{weights_path} does not match {config_path} ({kind}, {len(classes)} emotions): "
                        f"{str(exc).splitlines()[0]}") from None
    model.eval()
    return model, config


def options_from_dict(values: Mapping[str, Any], *, source: str = "options") -> CorrectionOptions:
    """:class:`CorrectionOptions` from a mapping; unknown keys raise ConfigError naming them."""
    from llmfair.options import dataclass_from_mapping

    return dataclass_from_mapping(CorrectionOptions, dict(values), source=source)


def _fit_ids(model_dir: Path) -> set[str]:
    path = model_dir / FIT_ROWS_FILE
    if not path.is_file():
        raise DataError(f"{model_dir} lacks {FIT_ROWS_FILE} (the ids the model was fitted on); refit it with "
                        "`llmfair correct fit`")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "id" not in frame.columns:
        raise DataError(f"{path} has no 'id' column")
    return set(frame["id"].tolist())


# ------------------------------------------------------------------------------------------ fit / apply
def fit_correction(
    emotion_path: str | os.PathLike,
    gender_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    kind: str = "joint",
    options: CorrectionOptions | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Fit a correction model on validation-split predictions and write it to ``out_dir``.

    Args:
        emotion_path: the emotion model's predictions table (dev split).
        gender_path: the gender model's predictions table of the same rows (one row per id is
            enough, see the module docstring).
        out_dir: the model directory (``model.safetensors``, ``config.json``, ``fit_rows.csv``,
            ``figures.json``, ``figures.md``); built under a temporary name, then moved into place.
        kind: ``joint`` (the correction net) or ``independent`` (the ablation).
        options: network and training options (defaults: the official code).
        overwrite: replace an existing ``out_dir``.

    Returns:
        ``{"figures": ..., "train": TrainResult as a dict, "n_rows": ..., "out_dir": ...}``; the
        figures are computed on the fitting rows (training-set numbers).

    Raises:
        DataError: a table with test rows, or tables that do not join (see :func:`join_tables`).
        ConfigError: an unknown kind or invalid options.
    """
    from llmfair.correction.train import train_correction_net

    options = options or CorrectionOptions()
    if kind not in MODEL_KINDS:
        raise ConfigError(f"unknown correction model kind {kind!r}; expected one of {sorted(MODEL_KINDS)}")
    out_dir = Path(out_dir)
    check_replaceable(out_dir, what="correction model", overwrite=overwrite)
    emotion, gender = read_predictions(emotion_path), read_predictions(gender_path)
    check_no_test_rows(emotion, gender)
    data = join_tables(emotion, gender)
    splits = sorted(set(data.emotion.frame["split"]))
    if "train" in splits:
        logger.warning("fitting the correction net on train-split rows of %s: the frozen models are over-confident "
                       "on their own training data, so the correction may not transfer; prefer the dev split",
                       emotion.source)
    if data.unmatched_rows.size:
        logger.info("%d row(s) of unknown speaker gender have no gender-model row and are left out of fitting",
                    data.unmatched_rows.size)
    model = build_correction_model(kind, len(data.emotion_classes), options)
    inputs = prepare_inputs(data.emotion_probs, data.gender_probs, options.input)
    result = train_correction_net(model, inputs, data.emotion_labels, data.gender_labels, options, progress=progress)
    model.cpu()
    emotion_after, gender_after = predict_probs(model, inputs)
    figures = correction_figures(data, emotion_after, gender_after, source=str(gender_path))
    train_summary = dataclasses.asdict(result)
    config = {
        "emotion_classes": list(data.emotion_classes),
        "gender_classes": list(GENDER_CLASSES),
        "options": dataclasses.asdict(options),
        "fitted_on": {"emotion": str(emotion_path), "gender": str(gender_path), "splits": splits,
                      "rows": data.n, "left_out_unknown_gender": int(data.unmatched_rows.size),
                      "join_on": list(data.join_on)},
        "train": {k: v for k, v in train_summary.items() if k != "validation_history"},
        "provenance": {"python": platform.python_version(), "packages": _versions()},
    }
    with atomic_directory(out_dir, overwrite=overwrite, command="correct fit") as tmp:
        save_correction_model(model, tmp, config)
        fit_rows = data.emotion.frame[["id", "modality", "split"]]
        with atomic_path(tmp / FIT_ROWS_FILE) as path:
            fit_rows.to_csv(path, index=False)
        write_json(tmp / FIGURES_JSON, {"rows": "fitting rows (training-set figures)", **figures})
        write_json(tmp / "train_history.json", {"validation_loss": train_summary["validation_history"]})
        write_text(tmp / FIGURES_MD, figures_markdown(
            figures, f"Correction net ({kind}) on its fitting rows: {data.n} rows of {Path(emotion_path).name}"))
    logger.info("correction model (%s) written to %s", kind, out_dir)
    return {"figures": figures, "train": train_summary, "n_rows": data.n, "out_dir": str(out_dir)}


def apply_correction(
    model_dir: str | os.PathLike,
    emotion_path: str | os.PathLike,
    gender_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Correct held-out predictions with a fitted model; write the corrected tables and figures.

    Writes ``predictions_emotion.csv``, ``predictions_gender.csv``, ``figures.json`` and
    ``figures.md`` into ``out_dir`` (see the module docstring); both tables are ordinary
    predictions tables that ``llmfair report`` reads.

    Returns:
        ``{"figures": ..., "emotion": path, "gender": path, "n_corrected": ..., "n_passed_through": ...}``.

    Raises:
        DataError: tables that do not join, emotion classes other than the model's, or rows the
            model was fitted on.
    """
    from llmfair.predictions import write_predictions

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    check_replaceable(out_dir, what="corrected output", overwrite=overwrite)
    model, config = load_correction_model(model_dir)
    fit_ids = _fit_ids(model_dir)
    emotion, gender = read_predictions(emotion_path), read_predictions(gender_path)
    expected = tuple(config["emotion_classes"])
    if emotion.classes != expected:
        raise DataError(f"{emotion.source} has the classes {list(emotion.classes)}; the correction model in "
                        f"{model_dir} was fitted on {list(expected)} (same names, same order)")
    seen = np.isin(emotion.frame["id"].to_numpy(dtype=object), np.asarray(sorted(fit_ids), dtype=object))
    if seen.any():
        i = int(np.flatnonzero(seen)[0])
        raise DataError(f"{int(seen.sum())} row(s) of {emotion.source} were used to fit the correction model in "
                        f"{model_dir} (first id={emotion.frame['id'].iat[i]!r}); apply it to held-out rows only")
    data = join_tables(emotion, gender)
    options = options_from_dict(config["options"])
    inputs = prepare_inputs(data.emotion_probs, data.gender_probs, options.input)
    emotion_after, gender_after = predict_probs(model, inputs)
    figures = correction_figures(data, emotion_after, gender_after, source=str(out_dir / GENDER_OUTPUT))

    probs = emotion.probs.copy()
    probs[data.emotion_rows] = emotion_after
    predictions = emotion.predictions.copy()
    predictions[data.emotion_rows] = emotion_after.argmax(axis=1)
    corrected = np.zeros(emotion.n, dtype=bool)
    corrected[data.emotion_rows] = True
    frame = emotion.frame
    standard = set(KEY_COLUMNS) | {"label", "prediction"} | {PROB_PREFIX + c for c in emotion.classes} | {
        LABEL_PREFIX + c for c in emotion.classes}
    extra = {c: frame[c].to_numpy() for c in frame.columns if c not in standard and c != CORRECTED_COLUMN}
    extra[CORRECTED_COLUMN] = corrected
    gender_table = _gender_table(data, gender_after, str(out_dir / GENDER_OUTPUT))
    with atomic_directory(out_dir, overwrite=overwrite, command="correct apply") as tmp:
        write_predictions(tmp / EMOTION_OUTPUT, ids=frame["id"], split=frame["split"], language=frame["language"],
                          modality=frame["modality"], gender=frame["gender"], speaker=frame["speaker"],
                          classes=emotion.classes, probs=probs, labels=emotion.labels, predictions=predictions,
                          extra=extra)
        with atomic_path(tmp / GENDER_OUTPUT) as path:
            gender_table.frame.to_csv(path, index=False)
        write_json(tmp / FIGURES_JSON, {"rows": f"{data.n} corrected rows of {emotion.source}",
                                        "model": str(model_dir), **figures})
        write_text(tmp / FIGURES_MD, figures_markdown(
            figures, f"Correction ({config['kind']}) of {Path(emotion_path).name}: {data.n} rows"))
    if data.unmatched_rows.size:
        logger.warning("%d row(s) of %s (unknown speaker gender, no gender-model row) were passed through "
                       "uncorrected (column %r is False)", data.unmatched_rows.size, emotion.source, CORRECTED_COLUMN)
    return {"figures": figures, "emotion": str(out_dir / EMOTION_OUTPUT), "gender": str(out_dir / GENDER_OUTPUT),
            "n_corrected": data.n, "n_passed_through": int(data.unmatched_rows.size)}
