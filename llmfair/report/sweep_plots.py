"""The feature sweep's plots (``llmfair sweep``; :func:`llmfair.sweep.collect_results` draws them):
TPR gap and F1 against the gender-imbalance ratio, and F1 against TPR gap per ratio.

Both read the IDI-format frame of :func:`llmfair.sweep.results_frame` (method, Overall and Gain
rows per ratio). matplotlib is imported inside the functions; PNGs are written atomically.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from llmfair.report.plots import _new_figure, _save

_OVERALL_MARKERS = ("s", "D", "^", "v", "P", "X")
_PLOT_SYMBOL = {"⦿": "◉"}
"""Matplotlib's default font (DejaVu Sans) has no ⦿ (U+29BF); plots draw ◉ instead."""


def plot_results(frame, out: str | os.PathLike, *, reference: str = "erm") -> list[Path]:
    """``tpr_gap_vs_ratio.png`` (TPR gap and F1 against the ratio, one line per method row, the
    reference black and dashed) and ``f1_vs_tpr_gap.png`` (one panel per ratio; squares: Overall)."""
    import pandas as pd
    from matplotlib import colormaps

    out = Path(out)
    methods = frame[frame["kind"] == "method"]
    labels = [r["method"] + (f" K={int(r['K'])}" if not pd.isna(r["K"]) else "")
              + (f" {_PLOT_SYMBOL.get(r['symbol'], r['symbol'])}" if r["symbol"] else "")
              + (" †" if r["reconstructed"] else "") for _, r in methods.iterrows()]
    methods = methods.assign(label=labels)
    names = list(dict.fromkeys(methods["label"]))
    ref_labels = set(methods.loc[(methods["method"] == reference) & methods["K"].isna(), "label"])
    palette = [colormaps["tab10"](i) for i in range(10)] + [colormaps["Dark2"](i) for i in range(8)]
    others = [n for n in names if n not in ref_labels]
    colors = {n: palette[i % len(palette)] for i, n in enumerate(others)}
    colors.update({n: "black" for n in ref_labels})
    return [_plot_against_ratio(methods, names, ref_labels, colors, out / "tpr_gap_vs_ratio.png"),
            _plot_f1_vs_tpr_gap(methods, frame[frame["kind"] == "overall"], ref_labels, colors,
                                out / "f1_vs_tpr_gap.png")]


def _plot_against_ratio(methods, names: list[str], ref_labels: set[str], colors: dict[str, Any], path: Path) -> Path:
    """TPR gap and F1 (mean ± std) against the ratio on a log axis, one line per method row."""
    ratios = sorted(methods["ratio"].unique())
    # spread the lines a little along the (log) ratio axis so that error bars do not hide each other
    dodge = {n: 1.0 + 0.012 * (i - (len(names) - 1) / 2) for i, n in enumerate(names)}
    fig = _new_figure(11.5, 4.6)
    axes = fig.subplots(1, 2)
    for ax, metric, title in ((axes[0], "tpr_gap_rms", "TPR gap (RMS), lower is fairer"), (axes[1], "f1", "macro F1")):
        for name in names:
            sel = methods[methods["label"] == name].sort_values("ratio")
            std = sel[f"{metric}_std"].to_numpy(dtype=float)
            is_ref = name in ref_labels
            ax.errorbar(sel["ratio"].to_numpy(dtype=float) * dodge[name], sel[f"{metric}_mean"],
                        yerr=np.where(np.isfinite(std), std, 0.0), marker="o", ms=3.5, lw=2.2 if is_ref else 1.2,
                        ls="--" if is_ref else "-", capsize=2, color=colors[name], zorder=4 if is_ref else 3,
                        label=name if ax is axes[0] else None)
        ax.set_xscale("log")
        ax.set_xticks(ratios, [f"1:{r:g}" for r in ratios])
        ax.minorticks_off()
        ax.set_xlabel("gender imbalance of train/dev (test untouched)")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", frameon=False, fontsize=8, title="method", title_fontsize=9)
    fig.suptitle("TPR gap and F1 against the imbalance ratio (mean ± std over folds × seeds; dashed: reference)",
                 fontsize=10, x=0.02, ha="left")
    return _save(fig, path)


def _plot_f1_vs_tpr_gap(methods, overall, ref_labels: set[str], colors: dict[str, Any], path: Path) -> Path:
    """F1 against TPR gap, one panel per ratio: a point per method row, hollow black markers for
    the Overall rows (one marker per supervision level × K)."""
    import pandas as pd

    ratios = sorted(methods["ratio"].unique())
    cols = min(len(ratios), 3)
    rows_n = int(math.ceil(len(ratios) / cols))
    fig = _new_figure(4.2 * cols + 2.6, 3.7 * rows_n)
    axes = np.atleast_1d(fig.subplots(rows_n, cols, squeeze=False)).ravel()
    overall_markers: dict[tuple, str] = {}
    labelled: set[str] = set()
    for ax, ratio in zip(axes, ratios):
        for _, r in methods[methods["ratio"] == ratio].iterrows():
            is_ref = r["label"] in ref_labels
            ax.scatter(r["tpr_gap_rms_mean"], r["f1_mean"], s=70 if is_ref else 30, marker="*" if is_ref else "o",
                       color=colors[r["label"]], label=r["label"] if ratio == ratios[0] else None, zorder=3)
        for _, r in overall[overall["ratio"] == ratio].iterrows():
            key = (r["supervision"], None if pd.isna(r["K"]) else int(r["K"]))
            if key not in overall_markers:
                overall_markers[key] = _OVERALL_MARKERS[len(overall_markers) % len(_OVERALL_MARKERS)]
            level = {"true_gender": "true gender", "pseudo": "pseudo", "unsupervised": "clusters"}.get(key[0], key[0])
            label = f"Overall ({level}{'' if key[1] is None else f', K={key[1]}'})"
            ax.scatter(r["tpr_gap_rms_mean"], r["f1_mean"], s=52, marker=overall_markers[key], facecolor="none",
                       edgecolor="black", linewidths=1.2, zorder=4, label=label if label not in labelled else None)
            labelled.add(label)
        ax.set_title(f"1:{ratio:g}", fontsize=10)
        ax.set_xlabel("TPR gap (RMS), lower is fairer")
        ax.set_ylabel("macro F1")
        ax.grid(alpha=0.3)
    for ax in axes[len(ratios):]:
        ax.set_visible(False)
    fig.legend(loc="outside right upper", frameon=False, fontsize=8, title="method", title_fontsize=9)
    fig.suptitle("Accuracy against fairness per ratio (star: reference; hollow black: Overall rows)", fontsize=10,
                 x=0.02, ha="left")
    return _save(fig, path)
