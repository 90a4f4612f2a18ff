"""PNG plots of an evaluation report (matplotlib, Agg canvas, no pyplot global state).

- :func:`plot_slices`: per-slice bars with bootstrap CI whiskers, grouped by language, one bar
  per gender; one panel per (metric, modality).
- :func:`plot_gap_heatmap`: male − female gap per language × modality, diverging colormap centred
  at 0, annotated with the value and its interval; one panel per metric.
- :func:`plot_confusion_by_gender`: row-normalised confusion matrices, one per gender.
- :func:`plot_comparison_slices` and :func:`plot_comparison_gaps`: several runs side by side.

matplotlib is imported inside each function so ``import llmfair`` stays light. Every PNG is
written atomically (temporary file, then rename).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from llmfair._atomic import atomic_path
from llmfair.data.labels import GENDERS, LANGUAGES, MODALITIES
from llmfair.errors import DataError
from llmfair.metrics import HEADLINE_METRICS
from llmfair.predictions import Predictions

logger = logging.getLogger(__name__)

GENDER_COLORS: dict[str, str] = {"female": "#E69F00", "male": "#0072B2", "unknown": "#999999"}
"""Okabe–Ito colours (colour-blind safe)."""
RUN_COLORS: tuple[str, ...] = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
METRIC_LABELS: dict[str, str] = {"accuracy": "accuracy", "weighted_f1": "weighted F1", "macro_f1": "macro F1"}
DPI = 130


def _new_figure(width: float, height: float):
    """A Figure on an Agg canvas (no pyplot: nothing global is touched, nothing is shown)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    logger.info("wrote %s", path)
    return path


def _ordered(values: Sequence[str], order: Sequence[str]) -> list[str]:
    """The distinct ``values`` in the vocabulary ``order`` first, then any others sorted."""
    present = list(dict.fromkeys(values))
    return [v for v in order if v in present] + sorted(v for v in present if v not in order)


def _value(x: Any) -> float:
    return float("nan") if x is None else float(x)


def _whiskers(values: np.ndarray, lows: np.ndarray, highs: np.ndarray) -> np.ndarray | None:
    """Asymmetric error bars (2, n) from intervals; None when no interval is defined."""
    ok = np.isfinite(values) & np.isfinite(lows) & np.isfinite(highs)
    if not ok.any():
        return None
    err = np.zeros((2, values.size))
    err[0, ok] = np.clip(values[ok] - lows[ok], 0.0, None)
    err[1, ok] = np.clip(highs[ok] - values[ok], 0.0, None)
    return err


def _ci_of(entry: Mapping[str, Any], key: str) -> tuple[float, float]:
    pair = (entry.get("ci") or {}).get(key) or [None, None]
    return _value(pair[0]), _value(pair[1])


def _interval_label(summary: Mapping[str, Any]) -> str:
    boot = summary.get("bootstrap", {})
    if not boot.get("n_resamples"):
        return "no bootstrap intervals"
    return f"{100 * float(boot['confidence']):g} % bootstrap CI ({boot['n_resamples']} resamples of {boot['unit']}s)"


# ------------------------------------------------------------------------------ per slice
def plot_slices(
    summary: Mapping[str, Any], path: str | os.PathLike, *, metrics: Sequence[str] = HEADLINE_METRICS,
    title: str | None = None,
) -> Path:
    """Per-slice bars with CI whiskers: panels = metrics (rows) × modalities (columns); within a
    panel, groups = languages and one bar per gender (unknown in grey, when present)."""
    slices = summary["slices"]
    if not slices:
        raise DataError("no slices to plot")
    languages = _ordered([s["language"] for s in slices], LANGUAGES)
    modalities = _ordered([s["modality"] for s in slices], MODALITIES)
    genders = _ordered([s["gender"] for s in slices], GENDERS)
    lookup = {(s["language"], s["modality"], s["gender"]): s for s in slices}
    fig = _new_figure(1.2 + 0.55 * len(languages) * len(genders) * len(modalities) + 0.4 * len(modalities),
                      0.6 + 2.3 * len(metrics))
    axes = fig.subplots(len(metrics), len(modalities), squeeze=False, sharey=True)
    width = 0.8 / len(genders)
    x = np.arange(len(languages))
    for r, metric in enumerate(metrics):
        for c, modality in enumerate(modalities):
            ax = axes[r, c]
            for gi, gender in enumerate(genders):
                entries = [lookup.get((lang, modality, gender)) for lang in languages]
                values = np.array([_value(e[metric]) if e else np.nan for e in entries])
                ci = np.array([_ci_of(e, metric) if e else (np.nan, np.nan) for e in entries]).reshape(-1, 2)
                pos = x - 0.4 + width * (gi + 0.5)
                ax.bar(pos, np.nan_to_num(values), width * 0.92, color=GENDER_COLORS.get(gender, "#666666"),
                       label=gender if (r == 0 and c == 0) else None,
                       yerr=_whiskers(values, ci[:, 0], ci[:, 1]), ecolor="#222222", capsize=2.5,
                       error_kw={"elinewidth": 0.9})
                for p, v in zip(pos, values):
                    if not np.isfinite(v):
                        ax.text(p, 0.02, "n/a", ha="center", va="bottom", fontsize=7, rotation=90, color="#555555")
            ax.set_xticks(x, languages)
            ax.set_ylim(0.0, 1.06)
            ax.set_yticks(np.linspace(0.0, 1.0, 6))
            ax.grid(axis="y", alpha=0.3)
            ax.set_axisbelow(True)
            if r == 0:
                ax.set_title(modality, fontsize=11)
            if c == 0:
                ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    fig.legend(loc="outside right upper", frameon=False, fontsize=9, title="gender", title_fontsize=9)
    fig.suptitle(title or f"Per-slice metrics — {_interval_label(summary)}", fontsize=10, x=0.02, ha="left")
    return _save(fig, path)


# ------------------------------------------------------------------------------ gap heatmap
def plot_gap_heatmap(
    summary: Mapping[str, Any], path: str | os.PathLike, *, metrics: Sequence[str] = HEADLINE_METRICS,
    title: str | None = None,
) -> Path:
    """Male − female gap per language × modality cell, one panel per metric; a diverging colormap
    centred at 0 (red: male higher, blue: female higher) on one shared symmetric scale; each cell
    annotated with the gap and its interval (``n/a`` where a gender is absent)."""
    gaps = [g for g in summary["gaps"] if g["language"] != "all"]
    if not gaps:
        raise DataError("no per-cell gaps to plot")
    languages = _ordered([g["language"] for g in gaps], LANGUAGES)
    modalities = _ordered([g["modality"] for g in gaps], MODALITIES)
    lookup = {(g["language"], g["modality"], g["metric"]): g for g in gaps}
    overall = {g["metric"]: g for g in summary["gaps"] if g["language"] == "all"}
    grids = {}
    for metric in metrics:
        grid = np.full((len(languages), len(modalities)), np.nan)
        low, high = grid.copy(), grid.copy()
        for i, lang in enumerate(languages):
            for j, mod in enumerate(modalities):
                g = lookup.get((lang, mod, metric))
                if g:
                    grid[i, j] = _value(g["male_minus_female"])
                    low[i, j], high[i, j] = _ci_of(g, "male_minus_female")
        grids[metric] = (grid, low, high)
    finite = np.concatenate([np.abs(v[0][np.isfinite(v[0])]) for v in grids.values()])
    vmax = float(finite.max()) if finite.size and finite.max() > 0 else 0.05
    from matplotlib.colors import TwoSlopeNorm

    norm = TwoSlopeNorm(vcenter=0.0, vmin=-vmax, vmax=vmax)
    fig = _new_figure(1.2 + (1.9 * len(modalities) + 0.5) * len(metrics), 1.3 + 0.85 * len(languages))
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    image = None
    for ax, metric in zip(axes, metrics):
        grid, low, high = grids[metric]
        image = ax.imshow(np.ma.masked_invalid(grid), cmap="RdBu_r", norm=norm, aspect="auto")
        ax.set_facecolor("#dddddd")
        for i in range(len(languages)):
            for j in range(len(modalities)):
                v = grid[i, j]
                if not np.isfinite(v):
                    ax.text(j, i, "n/a", ha="center", va="center", fontsize=9, color="#444444")
                    continue
                color = "white" if abs(v) > 0.6 * vmax else "black"
                text = f"{v:+.3f}"
                if np.isfinite(low[i, j]) and np.isfinite(high[i, j]):
                    text += f"\n[{low[i, j]:+.3f}, {high[i, j]:+.3f}]"
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color=color)
        ax.set_xticks(range(len(modalities)), modalities)
        ax.set_yticks(range(len(languages)), languages)
        ax.tick_params(length=0)
        o = overall.get(metric)
        sub = f"\noverall {_value(o['male_minus_female']):+.3f}" if o and o["male_minus_female"] is not None else ""
        ax.set_title(f"{METRIC_LABELS.get(metric, metric)}{sub}", fontsize=10)
    bar = fig.colorbar(image, ax=list(axes), shrink=0.9)
    bar.set_label("male − female", fontsize=9)
    fig.suptitle(title or f"Gender gap per language × modality — {_interval_label(summary)}", fontsize=10, x=0.02, ha="left")
    return _save(fig, path)


# ------------------------------------------------------------------------------ confusion
def confusion_by_gender(pred: Predictions) -> dict[str, np.ndarray]:
    """(K, K) confusion counts (rows: true class, columns: predicted class) per gender present.

    Single-label tables use ``label`` × ``prediction``. Multi-label tables use the strict-majority
    class (soft label > 0.5) × ``prediction``; rows without a majority class are left out.
    """
    k = pred.num_classes
    if pred.multilabel:
        true_idx = pred.labels.argmax(axis=1).astype(np.int64)
        keep = pred.labels[np.arange(pred.n), true_idx] > 0.5  # as Predictions.column("emotion")
    else:
        keep = np.ones(pred.n, dtype=bool)
        true_idx = pred.labels
    genders = pred.column("gender")
    out = {}
    for gender in _ordered(list(genders), GENDERS):
        rows = keep & (genders == gender)
        flat = true_idx[rows] * k + pred.predictions[rows]
        out[gender] = np.bincount(flat, minlength=k * k).reshape(k, k)
    return out


def plot_confusion_by_gender(pred: Predictions, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Row-normalised confusion matrices (true class → share of predictions), one panel per
    gender, annotated with the shares; a true class with no rows in a gender is shown as ``–``."""
    matrices = confusion_by_gender(pred)
    k = pred.num_classes
    classes = list(pred.classes)
    side = 0.9 + 0.5 * k
    fig = _new_figure(1.2 + side * len(matrices), 2.1 + 0.5 * k)
    axes = fig.subplots(1, len(matrices), squeeze=False)[0]
    image = None
    font = 8 if k <= 7 else 6
    for ax, (gender, counts) in zip(axes, matrices.items()):
        totals = counts.sum(axis=1, keepdims=True)
        share = np.divide(counts, totals, out=np.full(counts.shape, np.nan), where=totals > 0)
        image = ax.imshow(np.ma.masked_invalid(share), cmap="Blues", vmin=0.0, vmax=1.0)
        ax.set_facecolor("#eeeeee")
        for i in range(k):
            for j in range(k):
                v = share[i, j]
                ax.text(j, i, "–" if not np.isfinite(v) else f"{v:.2f}", ha="center", va="center", fontsize=font,
                        color="white" if np.isfinite(v) and v > 0.6 else "black")
        ax.set_xticks(range(k), classes, rotation=45, ha="right", rotation_mode="anchor", fontsize=8)
        ax.set_yticks(range(k), classes if ax is axes[0] else [""] * k, fontsize=8)
        ax.set_xlabel("predicted", fontsize=9)
        if ax is axes[0]:
            ax.set_ylabel("true" + (" (majority class)" if pred.multilabel else ""), fontsize=9)
        ax.set_title(f"{gender} (n = {int(counts.sum())})", fontsize=10)
    bar = fig.colorbar(image, ax=list(axes), shrink=0.8)
    bar.set_label("share of the true class", fontsize=9)
    fig.suptitle(title or "Confusion matrices by gender (row-normalised)", fontsize=10, x=0.02, ha="left")
    return _save(fig, path)


# ------------------------------------------------------------------------------ comparison
def plot_comparison_slices(
    summaries: Mapping[str, Mapping[str, Any]], path: str | os.PathLike, *, metric: str = "weighted_f1",
    title: str | None = None,
) -> Path:
    """Grouped bars of every run per slice (one panel per modality; groups = language × gender),
    with CI whiskers; the first run is the reference."""
    names = list(summaries)
    all_slices = [s for summary in summaries.values() for s in summary["slices"]]
    languages = _ordered([s["language"] for s in all_slices], LANGUAGES)
    modalities = _ordered([s["modality"] for s in all_slices], MODALITIES)
    genders = _ordered([s["gender"] for s in all_slices], GENDERS)
    groups = [(lang, g) for lang in languages for g in genders]
    lookups = {n: {(s["language"], s["modality"], s["gender"]): s for s in summaries[n]["slices"]} for n in names}
    width = 0.8 / len(names)
    fig = _new_figure(max(7.0, 1.5 + 0.32 * len(groups) * len(names)), 0.9 + 2.6 * len(modalities))
    axes = fig.subplots(len(modalities), 1, squeeze=False, sharey=True)[:, 0]
    x = np.arange(len(groups))
    for ax, modality in zip(axes, modalities):
        for ri, name in enumerate(names):
            entries = [lookups[name].get((lang, modality, g)) for lang, g in groups]
            values = np.array([_value(e[metric]) if e else np.nan for e in entries])
            ci = np.array([_ci_of(e, metric) if e else (np.nan, np.nan) for e in entries]).reshape(-1, 2)
            ax.bar(x - 0.4 + width * (ri + 0.5), np.nan_to_num(values), width * 0.92,
                   color=RUN_COLORS[ri % len(RUN_COLORS)], label=name if ax is axes[0] else None,
                   yerr=_whiskers(values, ci[:, 0], ci[:, 1]), ecolor="#222222", capsize=2, error_kw={"elinewidth": 0.8})
        ax.set_xticks(x, [f"{lang}\n{g}" for lang, g in groups], fontsize=8)
        for boundary in np.arange(len(genders), len(groups), len(genders)) - 0.5:
            ax.axvline(boundary, color="#bbbbbb", lw=0.8)
        ax.set_ylim(0.0, 1.06)
        ax.set_yticks(np.linspace(0.0, 1.0, 6))
        ax.set_ylabel(f"{METRIC_LABELS.get(metric, metric)}\n({modality})", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    fig.legend(loc="outside right upper", frameon=False, fontsize=9, title="run", title_fontsize=9)
    fig.suptitle(title or f"{METRIC_LABELS.get(metric, metric)} per slice, runs side by side\n"
                 f"{_interval_label(summaries[names[0]])}", fontsize=10, x=0.02, ha="left")
    return _save(fig, path)


def plot_comparison_gaps(
    summaries: Mapping[str, Mapping[str, Any]], path: str | os.PathLike, *, metric: str = "weighted_f1",
    title: str | None = None,
) -> Path:
    """Grouped bars of every run's |male − female| gap per language × modality cell and overall,
    with CI whiskers."""
    names = list(summaries)
    all_gaps = [g for s in summaries.values() for g in s["gaps"] if g["metric"] == metric]
    cells = [(lang, mod) for lang in _ordered([g["language"] for g in all_gaps if g["language"] != "all"], LANGUAGES)
             for mod in _ordered([g["modality"] for g in all_gaps if g["modality"] != "all"], MODALITIES)]
    cells.append(("all", "all"))
    lookups = {n: {(g["language"], g["modality"]): g for g in summaries[n]["gaps"] if g["metric"] == metric} for n in names}
    width = 0.8 / len(names)
    fig = _new_figure(max(7.0, 1.5 + 0.32 * len(cells) * len(names)), 3.6)
    ax = fig.subplots()
    x = np.arange(len(cells))
    top = 0.0
    for ri, name in enumerate(names):
        entries = [lookups[name].get(c) for c in cells]
        values = np.array([_value(e["gap"]) if e else np.nan for e in entries])
        ci = np.array([_ci_of(e, "gap") if e else (np.nan, np.nan) for e in entries]).reshape(-1, 2)
        ax.bar(x - 0.4 + width * (ri + 0.5), np.nan_to_num(values), width * 0.92, color=RUN_COLORS[ri % len(RUN_COLORS)],
               label=name, yerr=_whiskers(values, ci[:, 0], ci[:, 1]), ecolor="#222222", capsize=2, error_kw={"elinewidth": 0.8})
        candidates = np.concatenate([values[np.isfinite(values)], ci[:, 1][np.isfinite(ci[:, 1])]])
        top = max(top, float(candidates.max()) if candidates.size else 0.0)
    ax.set_xticks(x, ["overall" if c == ("all", "all") else f"{c[0]}\n{c[1]}" for c in cells], fontsize=8)
    ax.axvline(len(cells) - 1.5, color="#bbbbbb", lw=0.8)
    ax.set_ylim(0.0, max(0.05, top * 1.12))
    ax.set_ylabel(f"|male − female| {METRIC_LABELS.get(metric, metric)}", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    fig.legend(loc="outside right upper", frameon=False, fontsize=9, title="run", title_fontsize=9)
    fig.suptitle(title or f"Gender gap per cell, runs side by side\n{_interval_label(summaries[names[0]])}",
                 fontsize=10, x=0.02, ha="left")
    return _save(fig, path)


def plot_objective_trace(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Per-step objective figures (:mod:`llmfair.training.trace`): ERM loss and max gap on the left
    axis, λ on the right, and the worst cell of every step as a coloured strip underneath."""
    steps = np.array([float(r["step"]) for r in rows])
    fig = _new_figure(8.0, 4.2)
    grid = fig.add_gridspec(2, 1, height_ratios=(5, 1))
    ax = fig.add_subplot(grid[0])
    for key, color in (("erm_loss", RUN_COLORS[0]), ("max_gap", RUN_COLORS[1])):
        values = np.array([_value(r.get(key)) for r in rows])
        if np.isfinite(values).any():
            ax.plot(steps, values, color=color, lw=1.2, label=key.replace("_", " "))
    ax.set_ylabel("loss / gap")
    handles, labels = ax.get_legend_handles_labels()
    lam = np.array([_value(r.get("lambda")) for r in rows])
    if np.isfinite(lam).any():
        right = ax.twinx()
        right.plot(steps, lam, color=RUN_COLORS[2], lw=1.2, label="λ")
        right.set_ylabel("λ")
        h2, l2 = right.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if handles:
        ax.legend(handles, labels, loc="upper right", fontsize=8)
    ax.set_title(title or "objective per optimiser step")
    strip = fig.add_subplot(grid[1], sharex=ax)
    cells = [r.get("worst_cell") for r in rows]
    names = sorted({c for c in cells if c})
    for i, name in enumerate(names):
        at = steps[[c == name for c in cells]]
        strip.scatter(at, np.full(at.shape, i), s=6, marker="s", color=RUN_COLORS[i % len(RUN_COLORS)])
    strip.set_yticks(range(len(names)), names, fontsize=7)
    strip.set_ylim(-0.5, max(len(names), 1) - 0.5)
    strip.set_xlabel("optimiser step")
    strip.set_ylabel("worst cell", fontsize=8)
    return _save(fig, path)
