"""Fairness–accuracy fronts: which runs of a sweep no other run beats on both accuracy and gap.

A sweep (frozen-feature heads over imbalance ratios, or speech-LLM objectives over their options)
gives one point per run: an accuracy figure (higher is better) and a fairness gap (lower is
better), each with a bootstrap interval. A run is on the *Pareto front* when no other run is at
least as accurate and at least as fair, and strictly better on one of the two. The front, not a
single "best" run, is what a method trades: a fairness objective that only moves along ERM's
front buys nothing an ERM checkpoint with another seed would not.

- :func:`front_figures`: a run's figures with their bootstrap intervals, from its predictions.
- :func:`pareto_mask`: the front of two arrays (vectorised, NaN rows never on it).
- :func:`front_frame`: the table of runs (one row per run, figures with their intervals) and its
  ``pareto`` column, per facet (e.g. per imbalance ratio) when one is given.
- :func:`write_front`: ``front.csv`` and ``front.png`` (gap against accuracy, interval bars on both
  axes, the front as a step line, the reference objective marked; one panel per facet value).

The figures are those of :data:`FRONT_FIGURES`; callers compute them (with ``<figure>_low`` and
``<figure>_high`` interval bounds, NaN where there is no interval) from their predictions tables.
"""
from __future__ import annotations

import io
import json
import logging
import math
import numbers
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from llmfair._atomic import write_bytes, write_text
from llmfair.errors import ConfigError

logger = logging.getLogger(__name__)

FRONT_FIGURES: tuple[str, ...] = ("weighted_f1", "macro_f1", "worst_cell_gap", "tpr_gap_rms")
"""The figures of a front row; each comes with ``<figure>_low`` and ``<figure>_high``."""
FRONT_KEYS: tuple[str, ...] = ("run_id", "objective", "options", "seed")
"""The keys every front row has, and the first columns of the front table."""
FIGURE_LABELS: dict[str, str] = {
    "weighted_f1": "weighted F1", "macro_f1": "macro F1", "worst_cell_gap": "worst-cell gap",
    "tpr_gap_rms": "TPR gap (RMS)"}
REFERENCE_COLOR = "#000000"
_CHUNK = 1024
"""Rows compared against all others at a time by :func:`pareto_mask` (bounds the (chunk, n) arrays)."""


# ------------------------------------------------------------------------------ the figures
def front_figures(pred: Any, *, n_resamples: int = 200, seed: int = 0, confidence: float = 0.95,
                  unit: str = "speaker", worst_cell_metric: str = "weighted_f1") -> dict[str, float]:
    """The :data:`FRONT_FIGURES` of one run's predictions table, each with a bootstrap interval:
    ``{f, f_low, f_high}`` for every figure f.

    All four come from :func:`llmfair.metrics.bootstrap_ci` (single- or multi-label tables; a
    multi-label table is binarised at > 1/K):

    - ``weighted_f1`` / ``macro_f1``: sklearn ``f1_score(..., average="weighted" | "macro",
      zero_division=0)``;
    - ``worst_cell_gap``: the largest |male − female| gap of ``worst_cell_metric`` over the
      (language, modality) cells (the speech LLM's: weighted F1, as the benchmark reports it);
    - ``tpr_gap_rms``: RMS over classes of the female/male TPR gap.

    Intervals: ``unit`` ``speaker`` draws speakers with replacement (all their utterances follow;
    utterances of one speaker are correlated), ``n_resamples`` replicates, nan-aware percentiles
    at ``confidence``; every figure from the same replicates, seeded by ``seed``. Bounds are NaN
    only where no replicate defines the figure.
    """
    from llmfair.metrics.bootstrap import bootstrap_ci

    result = bootstrap_ci(pred, unit=unit, n_resamples=n_resamples, seed=seed, confidence=confidence,
                          metrics=("weighted_f1", "macro_f1"), worst_cell_metric=worst_cell_metric)
    found: dict[str, float] = {}
    for table, key in ((result.overall, "metric"), (result.fairness, "figure")):
        for name, estimate, low, high in zip(table[key], table["estimate"], table["low"], table["high"]):
            found[name], found[f"{name}_low"], found[f"{name}_high"] = float(estimate), float(low), float(high)
    return {f"{f}{s}": found[f"{f}{s}"] for f in FRONT_FIGURES for s in ("", "_low", "_high")}


# ------------------------------------------------------------------------------ the front
def pareto_mask(accuracy: Sequence[float] | np.ndarray, gap: Sequence[float] | np.ndarray) -> np.ndarray:
    """(n,) bool: row i is on the front iff no row j has ``accuracy_j >= accuracy_i`` and
    ``gap_j <= gap_i`` with at least one of the two strict.

    Rows with NaN in either figure are never on the front (and dominate nothing); exact duplicates
    do not dominate each other, so both are on the front when one is. Vectorised: rows are
    compared with all others by broadcasting, ``_CHUNK`` rows at a time.

    Raises:
        ConfigError: the two arrays are not 1-D of the same length.
    """
    acc = np.asarray(accuracy, dtype=np.float64)
    gp = np.asarray(gap, dtype=np.float64)
    if acc.ndim != 1 or acc.shape != gp.shape:
        raise ConfigError(f"pareto_mask needs two 1-D arrays of one length; got shapes {acc.shape} and {gp.shape}")
    valid = ~(np.isnan(acc) | np.isnan(gp))
    a, g = acc[valid], gp[valid]
    on_front = np.ones(a.size, dtype=bool)
    for start in range(0, a.size, _CHUNK):
        ai, gi = a[start:start + _CHUNK, None], g[start:start + _CHUNK, None]
        at_least = (a[None, :] >= ai) & (g[None, :] <= gi)
        strictly = (a[None, :] > ai) | (g[None, :] < gi)
        on_front[start:start + _CHUNK] = ~(at_least & strictly).any(axis=1)
    out = np.zeros(acc.size, dtype=bool)
    out[valid] = on_front
    return out


def format_options(options: Mapping[str, Any] | str | None) -> str:
    """A stable compact rendering of an objective's options: ``reduction=lse,weight=dual``.

    Keys are sorted; strings appear bare, other values as compact JSON (``0.1``, ``true``,
    ``[1,2]``, nested mappings with sorted keys); ``{}`` and None give ``""``. A string is taken
    as already rendered (a front table read back from CSV).

    Raises:
        ConfigError: ``options`` is neither a mapping, a string nor None.
    """
    if options is None:
        return ""
    if isinstance(options, str):
        return options
    if not isinstance(options, Mapping):
        raise ConfigError(f"objective options must be a mapping; got {type(options).__name__} {options!r}")

    def render(value: Any) -> str:
        if isinstance(value, str):
            return value
        return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)

    return ",".join(f"{key}={render(options[key])}" for key in sorted(options, key=str))


def _figure_columns() -> list[str]:
    return [f"{f}{suffix}" for f in FRONT_FIGURES for suffix in ("", "_low", "_high")]


def _check_figures(accuracy: str, gap: str) -> None:
    for role, name in (("accuracy", accuracy), ("gap", gap)):
        if name not in FRONT_FIGURES:
            raise ConfigError(f"front {role} figure {name!r} is not one of {list(FRONT_FIGURES)}")
    if accuracy == gap:
        raise ConfigError(f"front accuracy and gap are the same figure {accuracy!r}")


def _number(value: Any, run_id: Any, key: str) -> float:
    """A figure as a float (None → NaN); ConfigError naming the run and key otherwise."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"front row of run {run_id!r}: {key!r} must be a number or None, got {value!r}")
    return float(value)


def _pareto_column(frame, accuracy: str, gap: str, facet: str | None) -> np.ndarray:
    """The ``pareto`` column: :func:`pareto_mask` over all rows, or within each facet value."""
    acc = frame[accuracy].to_numpy(dtype=np.float64)
    gp = frame[gap].to_numpy(dtype=np.float64)
    if facet is None:
        return pareto_mask(acc, gp)
    out = np.zeros(len(frame), dtype=bool)
    for rows in frame.groupby(facet, dropna=False, sort=False).indices.values():
        out[rows] = pareto_mask(acc[rows], gp[rows])
    return out


def front_frame(
    rows: Sequence[Mapping[str, Any]], *, accuracy: str = "weighted_f1", gap: str = "worst_cell_gap",
    facet: str | None = None,
):
    """The front table: one row per run, with a boolean ``pareto`` column.

    Args:
        rows: one mapping per run with ``run_id``, ``objective``, ``options`` (a mapping, rendered
            by :func:`format_options`), ``seed``, and for every figure f of :data:`FRONT_FIGURES`
            the keys ``f``, ``f_low`` and ``f_high`` (None or NaN allowed). Any other keys (e.g.
            ``imbalance``, ``ratio``, ``fold``) are kept as columns, in order of first appearance;
            a row without one of them gets NaN there.
        accuracy: the figure that is higher-is-better on the front.
        gap: the figure that is lower-is-better on the front.
        facet: a column (one of the extra keys) within each of whose values the front is computed
            separately, e.g. the imbalance ratio — runs trained at 1:20 do not compete with 1:1.

    Returns:
        DataFrame with columns ``run_id, objective, options, seed``, the extra keys, then ``f,
        f_low, f_high`` per figure, then ``pareto``. No rows give an empty table with the
        standard columns.

    Raises:
        ConfigError: a row lacks a key (naming the run and the key), a figure is not a number, a
            run id repeats, ``facet`` is not a column, or ``accuracy`` / ``gap`` is not a figure.
    """
    import pandas as pd

    _check_figures(accuracy, gap)
    figure_columns = _figure_columns()
    fixed = set(FRONT_KEYS) | set(figure_columns) | {"pareto"}
    extras: list[str] = []
    records = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ConfigError(f"front row {i} must be a mapping; got {type(row).__name__}")
        run_id = row.get("run_id", f"#{i}")
        missing = [k for k in (*FRONT_KEYS, *figure_columns) if k not in row]
        if missing:
            raise ConfigError(f"front row of run {run_id!r} lacks {missing[0]!r}"
                              + (f" (and {len(missing) - 1} more: {missing[1:]})" if len(missing) > 1 else ""))
        if "pareto" in row:
            raise ConfigError(f"front row of run {run_id!r} has a 'pareto' key; it is computed here")
        extras.extend(k for k in row if k not in fixed and k not in extras)
        record = {"run_id": str(row["run_id"]), "objective": str(row["objective"]),
                  "options": format_options(row["options"]), "seed": row["seed"]}
        record.update({k: row[k] for k in row if k not in fixed})
        record.update({k: _number(row[k], run_id, k) for k in figure_columns})
        records.append(record)
    columns = [*FRONT_KEYS, *extras, *figure_columns]
    frame = pd.DataFrame.from_records(records, columns=columns)
    duplicated = frame["run_id"].duplicated()
    if duplicated.any():
        raise ConfigError(f"front rows repeat run id {frame.loc[duplicated, 'run_id'].iloc[0]!r}")
    if facet is not None and facet not in extras:
        raise ConfigError(f"front facet {facet!r} is not a column of the rows; extra keys: {extras}")
    for column in figure_columns:
        frame[column] = frame[column].astype(np.float64)
    frame["pareto"] = _pareto_column(frame, accuracy, gap, facet)
    return frame


# ------------------------------------------------------------------------------ writing
def _facet_values(frame, facet: str | None) -> list[Any]:
    """The facet values in sorted order (numbers numerically), NaN last; ``[None]`` without a facet."""
    if facet is None:
        return [None]
    values = list(dict.fromkeys(frame[facet].tolist()))
    missing = [v for v in values if v is None or (isinstance(v, float) and math.isnan(v))]
    present = [v for v in values if v not in missing]
    try:
        present.sort()
    except TypeError:
        present.sort(key=str)
    return present + missing[:1]


def _facet_rows(frame, facet: str | None, value: Any) -> np.ndarray:
    if facet is None:
        return np.ones(len(frame), dtype=bool)
    column = frame[facet]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return column.isna().to_numpy()
    return (column == value).to_numpy()


def _facet_title(facet: str, value: Any) -> str:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = f"{float(value):g}"
    return f"{facet} = {value}"


def _interval_bars(values: np.ndarray, lows: np.ndarray, highs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows with a finite interval, their asymmetric (2, m) bar lengths)."""
    ok = np.isfinite(values) & np.isfinite(lows) & np.isfinite(highs)
    err = np.stack([np.clip(values[ok] - lows[ok], 0.0, None), np.clip(highs[ok] - values[ok], 0.0, None)])
    return ok, err


_MARKERS = ("o", "s", "^", "D", "v", "P")


def _render_front(frame, *, accuracy: str, gap: str, reference: str, facet: str | None, title: str | None,
                  color_by: str = "objective") -> bytes:
    """The PNG of :func:`write_front` as bytes (rendered before anything is written)."""
    from llmfair.report.plots import RUN_COLORS, _new_figure

    facets = _facet_values(frame, facet)
    objectives = list(dict.fromkeys(frame[color_by]))
    others = [o for o in objectives if o != reference]
    palette = [c for c in RUN_COLORS if c != REFERENCE_COLOR]
    colors = {o: palette[i % len(palette)] for i, o in enumerate(others)}
    markers = {o: _MARKERS[(i // len(palette)) % len(_MARKERS)] for i, o in enumerate(others)}
    colors[reference] = REFERENCE_COLOR
    fig = _new_figure(1.8 + 4.2 * len(facets), 4.4)
    axes = fig.subplots(1, len(facets), squeeze=False, sharex=True, sharey=True)[0]
    labelled: set[str] = set()
    for ax, value in zip(axes, facets):
        block = frame[_facet_rows(frame, facet, value)]
        for objective in objectives:
            sel = block[block[color_by] == objective]
            if sel.empty:
                continue
            x, y = sel[gap].to_numpy(dtype=np.float64), sel[accuracy].to_numpy(dtype=np.float64)
            is_ref = objective == reference
            color = colors[objective]
            label = f"{objective} (reference)" if is_ref else objective
            for axis, values, low, high in (("x", x, sel[f"{gap}_low"], sel[f"{gap}_high"]),
                                            ("y", y, sel[f"{accuracy}_low"], sel[f"{accuracy}_high"])):
                ok, err = _interval_bars(values, low.to_numpy(dtype=np.float64), high.to_numpy(dtype=np.float64))
                if ok.any():
                    ax.errorbar(x[ok], y[ok], **{f"{axis}err": err}, fmt="none", ecolor=color, elinewidth=0.8,
                                capsize=2, alpha=0.6, zorder=2)
            ax.scatter(x, y, s=110 if is_ref else 30, marker="*" if is_ref else markers[objective], color=color,
                       edgecolor="white" if is_ref else "none", linewidths=0.5, zorder=4 if is_ref else 3,
                       label=label if label not in labelled else None)
            labelled.add(label)
        front = block[block["pareto"].to_numpy(dtype=bool)].sort_values([gap, accuracy])
        if len(front):
            ax.step(front[gap].to_numpy(dtype=np.float64), front[accuracy].to_numpy(dtype=np.float64),
                    where="post", color="#555555", lw=1.1, ls="--", zorder=1,
                    label="Pareto front" if "Pareto front" not in labelled else None)
            ax.scatter(front[gap], front[accuracy], s=150, facecolor="none", edgecolor="#555555", linewidths=0.9,
                       zorder=5)
            labelled.add("Pareto front")
        if facet is not None:
            ax.set_title(_facet_title(facet, value), fontsize=10)
        ax.set_xlabel(f"{FIGURE_LABELS.get(gap, gap)}, lower is fairer\n(bars: 95% interval)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.set_axisbelow(True)
    axes[0].set_ylabel(f"{FIGURE_LABELS.get(accuracy, accuracy)} (bars: 95% interval)", fontsize=9)
    fig.legend(loc="outside right upper", frameon=False, fontsize=8, title=color_by, title_fontsize=9)
    fig.suptitle(title or f"Fairness–accuracy front: {FIGURE_LABELS.get(accuracy, accuracy)} against "
                          f"{FIGURE_LABELS.get(gap, gap)} (ringed: on the front)", fontsize=10, x=0.02, ha="left")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def write_front(
    frame, out_dir: str | os.PathLike, *, accuracy: str = "weighted_f1", gap: str = "worst_cell_gap",
    reference: str = "erm", facet: str | None = None, title: str | None = None, color_by: str = "objective",
) -> list[Path]:
    """Write ``front.csv`` and ``front.png`` of a :func:`front_frame` table into ``out_dir``.

    ``color_by`` is the column whose values get one colour (and marker) each, e.g. ``system``
    (objective + options) for a sweep over option values; ``reference`` is one of its values.

    The ``pareto`` column is recomputed for the given ``accuracy``, ``gap`` and ``facet``, so the
    CSV and the plot always agree with the axes drawn. The PNG plots x = ``gap`` against y =
    ``accuracy``: one point per run with its interval bars on both axes (where both bounds are
    finite), objectives in fixed colours, the ``reference`` objective's runs (ERM) as black stars,
    the front as a dashed step line through its (ringed) points sorted by gap; one panel per
    ``facet`` value, side by side. Both files are rendered first and then written atomically.

    Returns:
        ``[out_dir/front.csv, out_dir/front.png]``.

    Raises:
        ConfigError: an empty table, a missing column, or a bad figure name / facet.
    """
    _check_figures(accuracy, gap)
    if frame is None or len(frame) == 0:
        raise ConfigError("no runs to draw a fairness–accuracy front of (the front table is empty)")
    needed = [*FRONT_KEYS, *_figure_columns()] + ([facet] if facet is not None else [])
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ConfigError(f"front table lacks column(s) {missing}; build it with front_frame")
    frame = frame.drop(columns=["pareto"], errors="ignore").reset_index(drop=True)
    frame["pareto"] = _pareto_column(frame, accuracy, gap, facet)
    if color_by not in frame.columns:
        raise ConfigError(f"front color_by={color_by!r} is not a column of the front table")
    if reference not in set(frame[color_by]):
        logger.warning("front: no runs of the reference %s %r", color_by, reference)
    png = _render_front(frame, accuracy=accuracy, gap=gap, reference=reference, facet=facet, title=title,
                        color_by=color_by)
    csv = frame.to_csv(index=False)
    out_dir = Path(out_dir)
    paths = [out_dir / "front.csv", out_dir / "front.png"]
    write_text(paths[0], csv)
    write_bytes(paths[1], png)
    for path in paths:
        logger.info("wrote %s", path)
    return paths
