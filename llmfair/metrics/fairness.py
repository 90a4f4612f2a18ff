"""Fairness figures derived from per-cell statistics (METHODS.md §3).

Every figure here is a function of a :class:`~llmfair.metrics.slicing.SliceMetrics` built once;
the private ``_*_values`` functions accept statistics with leading bootstrap axes, so the
intervals in ``llmfair.metrics.bootstrap`` reuse exactly the code of the point estimates.

Definitions (``y_c``/``ŷ_c``: single-label ``1[label == c]`` / ``1[prediction == c]``;
multi-label: binarised at > 1/K, METHODS.md §1.2). ``unknown`` gender is excluded from every gap
and counted.

- Metric gaps per (language, modality) cell: ``male_minus_female = metric(male) − metric(female)``,
  ``gap = |male_minus_female|``; the overall gap is the same on all rows with known gender;
  ``worst_cell_gap`` = the largest cell gap (ERM-MinMaxGAP reports gender gaps per language and
  modality; its exact aggregation is unknown, METHODS.md §2.16 — reconstruction).
- Per-class gaps between groups: TPR_{g,c}, FPR_{g,c}, F1_{g,c}; ``gap_c = max_{g1≠g2} |·|``
  (= the absolute difference for two genders). A class is used only when every group has
  positives for it (negatives, for FPR); skipped classes are counted (METHODS.md §3, [I]).
  ``tpr_gap_rms = sqrt(mean_c gap_c²)`` (IDI "RMS of the gap in TPR"), likewise ``fpr_gap_rms``
  and ``f1_gap_rms`` (EMO-Debias names them; formulas reconstructed).
- Demographic parity: DP(g, c) = P(ŷ_c = 1 | g); ``dp_gap_sum = sqrt(Σ_c gapDP_c²)`` (IDI Eqs. 4–5
  literally, no 1/K) and ``dp_gap_rms = sqrt(mean_c gapDP_c²)``; they differ by √K.
- Statistical parity ΔSP per class = |P(ŷ = c | male) − P(ŷ = c | female)| (two-sided paper,
  Yang & Stoyanovich 2017), with speaker or rater gender as the group.
- Correction-net figures: A_{g,e} = accuracy in the cell (true gender g, true emotion e);
  macro-average accuracy = mean over the gender × emotion cells, Gap_e = |A_{F,e} − A_{M,e}|,
  largest = max_e, average = mean_e (``arin-upna/crossmodal_bias_mitigation``
  ``calculate_accuracy_metrics``).
- ``gain``: relative change against a reference run as in the IDI tables.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from llmfair.errors import ConfigError, DataError
from llmfair.metrics.slicing import HEADLINE_METRICS, SliceMetrics
from llmfair.predictions import NO_MAJORITY, Predictions

GENDER_PAIR: tuple[str, str] = ("female", "male")
UNKNOWN = "unknown"
DEFAULT_CELLS: tuple[str, ...] = ("language", "modality")
ALL = "all"
"""The cell label of the overall (all known-gender rows) gap row."""

HIGHER_IS_BETTER: frozenset[str] = frozenset(
    {"accuracy", "acc", "weighted_f1", "w_f1", "macro_f1", "f1", "hamming_accuracy", "macro_average_accuracy"}
)


# --------------------------------------------------------------------------- array utilities
def _nanmean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean over defined entries; NaN (without a warning) when none is defined."""
    x = np.asarray(x, dtype=np.float64)
    ok = ~np.isnan(x)
    count = ok.sum(axis=axis)
    total = np.where(ok, x, 0.0).sum(axis=axis)
    out = np.full(count.shape, np.nan)
    np.divide(total, count, out=out, where=count > 0)
    return out


def _nanmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Max over defined entries; NaN (without a warning) when none is defined."""
    return np.fmax.reduce(np.asarray(x, dtype=np.float64), axis=axis)


def _spread(values: np.ndarray) -> np.ndarray:
    """max − min over the group axis (-2), NaN unless every group is defined: ``(..., G, K) → (..., K)``."""
    return values.max(axis=-2) - values.min(axis=-2)


def _match(rows: pd.DataFrame, table: pd.DataFrame) -> np.ndarray:
    """Position in ``table`` of each row of ``rows`` (same columns; every row must occur)."""
    cols = list(rows.columns)
    lookup = table[cols].astype(str).reset_index(drop=True).reset_index()
    merged = rows[cols].astype(str).merge(lookup, on=cols, how="left")
    return merged["index"].to_numpy(dtype=np.int64)


def _check_by(sm: SliceMetrics, needed: Sequence[str]) -> None:
    missing = [c for c in needed if c not in sm.by]
    if missing:
        raise ConfigError(f"these statistics are grouped by {list(sm.by)}; the figure needs {missing} too")


# ----------------------------------------------------------- metric gaps per (language, modality)
def _gap_values(
    sm: SliceMetrics, metrics: Sequence[str], cells: Sequence[str], group_column: str = "gender"
) -> tuple[pd.DataFrame, np.ndarray]:
    """Per-cell female and male values of each metric, plus the overall (known-gender) row.

    Returns:
        (cell_keys, values): ``cell_keys`` has the P cells then an ``all`` row; ``values`` is
        ``(*batch, P + 1, 2, M)`` with axis -2 = (female, male); NaN where a gender is absent.
    """
    cells = tuple(cells)
    _check_by(sm, cells + (group_column,))
    known = sm.where(**{group_column: GENDER_PAIR})
    found = set(known.keys[group_column])
    if found != set(GENDER_PAIR):
        raise DataError(
            f"gender gaps need rows of both female and male {group_column!r}; found only {sorted(found)}"
        )
    per = known.merge(cells + (group_column,))
    overall = known.merge((group_column,))
    cell_keys = known.merge(cells).keys if cells else pd.DataFrame(index=pd.RangeIndex(0))
    p = len(cell_keys)
    out = np.full(sm.batch_shape + (p + 1, 2, len(metrics)), np.nan)
    if cells:
        p_idx = _match(per.keys[list(cells)], cell_keys)
        g_idx = (per.keys[group_column] == "male").to_numpy().astype(np.int64)
        out[..., p_idx, g_idx, :] = np.stack([per.metric(m) for m in metrics], axis=-1)
    g_idx = (overall.keys[group_column] == "male").to_numpy().astype(np.int64)
    out[..., p, g_idx, :] = np.stack([overall.metric(m) for m in metrics], axis=-1)
    all_row = pd.DataFrame({c: [ALL] for c in cells}, index=pd.RangeIndex(1))
    keys = pd.concat([cell_keys, all_row], ignore_index=True) if cells else all_row
    return keys, out


def _group_counts(sm: SliceMetrics, cells: Sequence[str], group_column: str, cell_keys: pd.DataFrame) -> pd.DataFrame:
    """Rows per gender (female, male, unknown) for every cell of ``cell_keys`` (point statistics)."""
    cells = tuple(cells)
    per = sm.merge(cells + (group_column,))
    counts = np.zeros((len(cell_keys), 3), dtype=np.int64)
    col = {"female": 0, "male": 1, UNKNOWN: 2}
    g = per.keys[group_column].map(col).fillna(-1).to_numpy(dtype=np.int64)
    n = per.n[g >= 0]
    per_keys = per.keys.loc[g >= 0]
    g = g[g >= 0]
    if cells:
        p_idx = _match(per_keys[list(cells)], cell_keys.iloc[:-1])
        np.add.at(counts, (p_idx, g), n)
    np.add.at(counts, (np.full(len(g), len(cell_keys) - 1), g), n)
    return pd.DataFrame(counts, columns=["n_female", "n_male", "n_unknown"])


def gender_gaps(
    pred: Predictions,
    metrics: Sequence[str] = HEADLINE_METRICS,
    cells: Sequence[str] = DEFAULT_CELLS,
    *,
    group_column: str = "gender",
) -> pd.DataFrame:
    """Male − female gap of each metric per cell, plus one overall row (cells = ``"all"``).

    Returns:
        One row per (cell, metric): the cell columns, ``metric``, ``female``, ``male``,
        ``male_minus_female``, ``gap`` (= its absolute value; NaN where a gender is absent from the
        cell), ``n_female``, ``n_male``, ``n_unknown`` (rows excluded from the gap).

    Raises:
        DataError: the table has no female or no male rows at all.
    """
    cells = tuple(cells)
    sm = SliceMetrics.from_predictions(pred, cells + (group_column,))
    keys, values = _gap_values(sm, metrics, cells, group_column)
    counts = _group_counts(sm, cells, group_column, keys)
    rows = []
    for i in range(len(keys)):
        for j, m in enumerate(metrics):
            female, male = values[i, 0, j], values[i, 1, j]
            rows.append(
                {**keys.iloc[i].to_dict(), "metric": m, "female": female, "male": male,
                 "male_minus_female": male - female, "gap": abs(male - female), **counts.iloc[i].to_dict()}
            )
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------ per-class group gaps
def _groups_of(sm: SliceMetrics, group_column: str) -> tuple[str, ...]:
    values = sorted(set(sm.keys[group_column]) - {UNKNOWN})
    if len(values) < 2:
        raise DataError(
            f"per-class gaps need at least two known {group_column!r} groups with rows; found {values}"
        )
    return tuple(values)


def _class_gap_values(sm: SliceMetrics, group_column: str = "gender") -> tuple[tuple[str, ...], dict[str, np.ndarray]]:
    """Per-group, per-class rates and their gaps over groups.

    Returns:
        (groups, values) where ``values`` has ``tpr``, ``fpr``, ``f1``, ``selection_rate``
        ``(*batch, G, K)`` and ``tpr_gap``, ``fpr_gap``, ``f1_gap``, ``dp_gap`` ``(*batch, K)``
        (NaN for a class some group has no positives — or no negatives, for FPR — for).
    """
    _check_by(sm, (group_column,))
    merged = sm.merge((group_column,))
    groups = _groups_of(merged, group_column)
    g = merged.where(**{group_column: groups})
    support = g.per_class("support")
    values = {
        "tpr": g.per_class("tpr"),
        "fpr": g.per_class("fpr"),
        "f1": np.where(support > 0, g.per_class("f1"), np.nan),
        "selection_rate": g.per_class("selection_rate"),
    }
    for name, key in (("tpr", "tpr_gap"), ("fpr", "fpr_gap"), ("f1", "f1_gap"), ("selection_rate", "dp_gap")):
        values[key] = _spread(values[name])
    return groups, values


def _rms(gaps: np.ndarray) -> np.ndarray:
    """sqrt(mean over defined classes of gap²); NaN when no class is defined."""
    return np.sqrt(_nanmean(np.square(gaps), axis=-1))


def per_class_gaps(pred: Predictions, *, group_column: str = "gender") -> pd.DataFrame:
    """One row per class: per-group TPR, FPR, F1, selection rate and positives, and the gaps.

    Columns: ``class``, ``<rate>_<group>`` for rate in tpr/fpr/f1/selection_rate and
    ``support_<group>``, then ``tpr_gap``, ``fpr_gap``, ``f1_gap``, ``dp_gap`` (NaN = skipped).
    """
    sm = SliceMetrics.from_predictions(pred, (group_column,))
    groups, values = _class_gap_values(sm, group_column)
    support = sm.where(**{group_column: groups}).per_class("support")
    out = pd.DataFrame({"class": list(pred.classes)})
    for name in ("tpr", "fpr", "f1", "selection_rate"):
        for gi, group in enumerate(groups):
            out[f"{name}_{group}"] = values[name][gi]
    for gi, group in enumerate(groups):
        out[f"support_{group}"] = support[gi].astype(np.int64)
    for key in ("tpr_gap", "fpr_gap", "f1_gap", "dp_gap"):
        out[key] = values[key]
    return out


def _summary_values(
    class_values: dict[str, np.ndarray], gap_values: np.ndarray, worst_metric: int
) -> dict[str, np.ndarray]:
    """The headline fairness scalars, ``(*batch,)`` each, from the per-class and per-cell gaps."""
    dp2 = np.square(class_values["dp_gap"])
    cell_gaps = np.abs(gap_values[..., :-1, 1, worst_metric] - gap_values[..., :-1, 0, worst_metric])
    overall_gap = np.abs(gap_values[..., -1, 1, worst_metric] - gap_values[..., -1, 0, worst_metric])
    worst = _nanmax(cell_gaps, axis=-1) if cell_gaps.shape[-1] else overall_gap
    return {
        "tpr_gap_rms": _rms(class_values["tpr_gap"]),
        "fpr_gap_rms": _rms(class_values["fpr_gap"]),
        "f1_gap_rms": _rms(class_values["f1_gap"]),
        "dp_gap_sum": np.sqrt(dp2.sum(axis=-1)),
        "dp_gap_rms": np.sqrt(dp2.mean(axis=-1)),
        "worst_cell_gap": worst,
    }


FAIRNESS_FIGURES: tuple[str, ...] = (
    "tpr_gap_rms", "fpr_gap_rms", "f1_gap_rms", "dp_gap_sum", "dp_gap_rms", "worst_cell_gap"
)


def fairness_summary(
    pred: Predictions,
    *,
    cells: Sequence[str] = DEFAULT_CELLS,
    worst_cell_metric: str = "weighted_f1",
    group_column: str = "gender",
) -> dict[str, Any]:
    """The headline fairness figures of a predictions table.

    Per-class gaps (TPR, FPR, F1, DP) are taken over all rows with a known group, pooled over
    languages and modalities; ``worst_cell_gap`` is the largest |male − female| gap of
    ``worst_cell_metric`` over the ``cells`` (default: (language, modality)).

    Returns:
        ``tpr_gap_rms``, ``fpr_gap_rms``, ``f1_gap_rms``, ``dp_gap_sum``, ``dp_gap_rms``,
        ``worst_cell_gap`` (floats, NaN when undefined), ``worst_cell`` (the cell's keys),
        ``worst_cell_metric``, ``skipped_classes`` ({"tpr"|"fpr"|"f1": [class names skipped for
        lack of positives / negatives]}), ``n_skipped`` (their counts), ``groups`` and
        ``n_unknown_gender`` (rows excluded).
    """
    cells = tuple(cells)
    sm = SliceMetrics.from_predictions(pred, cells + (group_column,))
    groups, class_values = _class_gap_values(sm, group_column)
    keys, gap_values = _gap_values(sm, (worst_cell_metric,), cells, group_column)
    figures = {k: float(v) for k, v in _summary_values(class_values, gap_values, 0).items()}
    skipped = {
        name: [c for c, gap in zip(pred.classes, class_values[f"{name}_gap"]) if np.isnan(gap)]
        for name in ("tpr", "fpr", "f1")
    }
    cell_gaps = np.abs(gap_values[:-1, 1, 0] - gap_values[:-1, 0, 0])
    worst_cell: dict[str, str] = {}
    if cell_gaps.size and not np.all(np.isnan(cell_gaps)):
        worst_cell = keys.iloc[int(np.nanargmax(cell_gaps))].to_dict()
    n_unknown = int(sm.n[(sm.keys[group_column] == UNKNOWN).to_numpy()].sum())
    return {
        **figures,
        "worst_cell": worst_cell,
        "worst_cell_metric": worst_cell_metric,
        "skipped_classes": skipped,
        "n_skipped": {k: len(v) for k, v in skipped.items()},
        "groups": list(groups),
        "n_unknown_gender": n_unknown,
    }


# ------------------------------------------------------------------------- statistical parity
def statistical_parity(pred: Predictions, *, group_column: str = "gender") -> pd.DataFrame:
    """ΔSP per class: |P(ŷ = c | male) − P(ŷ = c | female)| (two-sided paper, Table 2–3).

    ``group_column`` is the speaker's ``gender`` or, for the rater side, a column such as
    ``rater_gender`` in a table with one row per (utterance, rater). Rows with ``unknown`` group
    are excluded. Returns columns ``class``, ``p_female``, ``p_male``, ``delta_sp``.
    """
    sm = SliceMetrics.from_predictions(pred, (group_column,))
    found = set(sm.keys[group_column]) - {UNKNOWN}
    if found != set(GENDER_PAIR):
        raise DataError(f"statistical parity needs female and male {group_column!r} rows; found {sorted(found)}")
    rates = sm.where(**{group_column: GENDER_PAIR}).per_class("selection_rate")
    return pd.DataFrame(
        {"class": list(pred.classes), "p_female": rates[0], "p_male": rates[1], "delta_sp": np.abs(rates[1] - rates[0])}
    )


def two_sided_parity(
    speaker_side: Predictions,
    rater_side: Predictions | None = None,
    *,
    speaker_group: str = "gender",
    rater_group: str = "rater_gender",
) -> pd.DataFrame:
    """Speaker- and rater-side ΔSP per class with the two-sided paper's joint figures (Table 3).

    ΔSP_spk uses ``speaker_group`` of ``speaker_side``; ΔSP_rat uses ``rater_group`` of
    ``rater_side`` (default: the same table, which then needs that column). Returns ``class``,
    ``delta_sp_spk``, ``delta_sp_rat``, ``product`` (ΔSP_spk × ΔSP_rat) and ``abs_difference``
    (|ΔSP_spk − ΔSP_rat|).
    """
    rater_side = speaker_side if rater_side is None else rater_side
    if rater_side.classes != speaker_side.classes:
        raise DataError(f"speaker-side classes {speaker_side.classes} differ from rater-side {rater_side.classes}")
    spk = statistical_parity(speaker_side, group_column=speaker_group)["delta_sp"].to_numpy()
    rat = statistical_parity(rater_side, group_column=rater_group)["delta_sp"].to_numpy()
    return pd.DataFrame(
        {"class": list(speaker_side.classes), "delta_sp_spk": spk, "delta_sp_rat": rat,
         "product": spk * rat, "abs_difference": np.abs(spk - rat)}
    )


# ------------------------------------------------------------------------ correction network
def correction_net_figures(
    pred: Predictions,
    *,
    group_column: str = "gender",
    emotion_column: str = "emotion",
    fill_missing: float | None = None,
) -> dict[str, Any]:
    """Accuracy per (true gender, true emotion) cell and the correction-net summary figures.

    A_{g,e} is the accuracy of the rows with group g and emotion e (for the default virtual
    ``emotion`` column of a single-label table it equals TPR_{g,e}; for multi-label tables the
    emotion is the strict-majority class and the accuracy the Hamming accuracy — a
    reconstruction). Rows with ``unknown`` group or no majority emotion are left out and counted.

    The reference code fills a missing cell with 0 (``.fillna(0)``), which biases the
    macro-average down; here missing cells are reported and left out unless ``fill_missing`` is
    given (``fill_missing=0.0`` reproduces the reference).

    Returns:
        ``cells`` (DataFrame: group, emotion, n, accuracy), ``macro_average_accuracy``,
        ``gaps`` ({emotion: |A_F,e − A_M,e|}), ``largest_gap``, ``average_gap``,
        ``missing_cells`` ([(group, emotion)]), ``n_excluded``.
    """
    sm = SliceMetrics.from_predictions(pred, (group_column, emotion_column))
    emotions = list(pred.classes) if emotion_column == "emotion" else sorted(set(sm.keys[emotion_column]) - {NO_MAJORITY})
    grid = pd.DataFrame(
        [(g, e) for g in GENDER_PAIR for e in emotions], columns=[group_column, emotion_column]
    )
    keep = sm.keys[group_column].isin(GENDER_PAIR) & sm.keys[emotion_column].isin(emotions)
    n_excluded = int(sm.n[~keep.to_numpy()].sum())
    if not keep.any():
        raise DataError(f"no rows with female/male {group_column!r} and a known {emotion_column!r}")
    present = sm.where(**{group_column: GENDER_PAIR, emotion_column: emotions})
    acc = np.full(len(grid), np.nan)
    n = np.zeros(len(grid), dtype=np.int64)
    pos = _match(present.keys, grid)
    acc[pos] = present.metric("accuracy")
    n[pos] = present.n
    missing = [tuple(r) for r in grid.loc[n == 0].itertuples(index=False)]
    filled = acc if fill_missing is None else np.where(n == 0, float(fill_missing), acc)
    table = grid.assign(n=n, accuracy=acc)
    a = filled.reshape(2, len(emotions))
    gaps = np.abs(a[0] - a[1])
    return {
        "cells": table,
        "macro_average_accuracy": float(_nanmean(filled)),
        "gaps": dict(zip(emotions, gaps.tolist())),
        "largest_gap": float(_nanmax(gaps)),
        "average_gap": float(_nanmean(gaps)),
        "missing_cells": missing,
        "n_excluded": n_excluded,
    }


# ------------------------------------------------------------------------------------- gain
def _is_gap(metric: str) -> bool:
    name = metric.lower()
    return "gap" in name or name.startswith("delta_sp") or name.startswith("dp")


def gain(metric: str, value: float | np.ndarray, reference: float | np.ndarray) -> float | np.ndarray:
    """Relative change against a reference run (e.g. ERM) as the IDI tables define "Gain".

    Higher-is-better metrics (accuracy, F1s): (M − ref) / ref. Gaps (any name containing
    ``gap``, ``delta_sp*``, ``dp*``): (ref − M) / ref, so a smaller gap is a positive gain.
    Example (IDI Table 2, K = 16, race TPR): ``gain("tpr_gap", 0.1525, 0.183)`` = 0.1667.

    Raises:
        ConfigError: an unknown metric name or a zero reference.
    """
    ref = np.asarray(reference, dtype=np.float64)
    val = np.asarray(value, dtype=np.float64)
    if np.any(ref == 0):
        raise ConfigError(f"gain of {metric!r} is undefined for a reference of 0")
    if _is_gap(metric):
        out = (ref - val) / ref
    elif metric.lower() in HIGHER_IS_BETTER:
        out = (val - ref) / ref
    else:
        raise ConfigError(
            f"gain: unknown metric {metric!r}; use a gap name (containing 'gap') or one of {sorted(HIGHER_IS_BETTER)}"
        )
    return float(out) if out.ndim == 0 else out
