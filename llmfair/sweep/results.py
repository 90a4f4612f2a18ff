"""Collecting a feature sweep: every finished run's metrics record → ``results.csv`` /
``results.md`` in the IDI format (:func:`results_frame`, :func:`results_markdown`), the plots of
:mod:`llmfair.report.sweep_plots`, and the fairness–accuracy front of the runs (``front.csv`` /
``front.png``, :mod:`llmfair.report.front`, one panel per ratio; figures with speaker-bootstrap
intervals from :func:`front_figures`). :func:`collect_results` writes them all.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from llmfair._atomic import atomic_path, write_text
from llmfair.errors import DataError
from llmfair.sweep.config import OVERALL_FAMILIES, SUPERVISION_LEVELS
from llmfair.sweep.plan import RUNS_DIR, predictions_path

logger = logging.getLogger(__name__)

METRICS: tuple[str, ...] = ("f1", "acc", "tpr_gap_rms", "dp_gap_sum", "dp_gap_rms", "fpr_gap_rms", "f1_gap_rms")
TABLE_COLUMNS: dict[str, str] = {"f1": "F1", "acc": "ACC", "tpr_gap_rms": "TPRgap", "dp_gap_sum": "DPgap"}
"""Metric → column of the IDI-format Markdown table."""
RATER_METRICS: tuple[str, ...] = ("rater_dp_gap_sum", "rater_dp_gap_rms")
"""The rater side of a sweep with a ratings file (:mod:`llmfair.sweep.raters`): results.csv gains
their columns, and results.md a ``DPgap_rat`` column (``rater_dp_gap_sum``), when any run has them."""
_ORDER = {"true_gender": 0, "pseudo": 1, "unsupervised": 2, "none": 3}
"""Supervision levels in the order of the Overall rows (true gender, pseudo, clusters, none)."""


def _columns(metrics: Sequence[str]) -> list[str]:
    return (["ratio", "kind", "method", "supervision", "symbol", "K", "family", "objective", "reconstructed",
             "n_runs", "members"] + [f"{m}_{s}" for m in metrics for s in ("mean", "std")]
            + [f"gain_{m}" for m in metrics])


_COLUMNS = _columns(METRICS)
"""The columns of results.csv (then those of :data:`RATER_METRICS` when runs have them)."""


def _metrics_of(records: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """METRICS, plus RATER_METRICS when any run has a rater-side figure."""
    rated = any(r["metrics"].get(m) is not None for r in records for m in RATER_METRICS)
    return METRICS + RATER_METRICS if rated else METRICS


def read_run_records(out: str | os.PathLike) -> list[dict[str, Any]]:
    """Every finished run's metrics record under ``out/runs`` (sorted by run id)."""
    folder = Path(out) / RUNS_DIR
    records = []
    for path in sorted(folder.glob("metrics_*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{path} is not valid JSON: {exc}") from None
        missing = [k for k in ("method", "ratio", "symbol", "K", "metrics", "family") if k not in record]
        if missing:
            raise DataError(f"{path} lacks {missing}; it is not a sweep metrics record")
        records.append(record)
    return records


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan, math.nan
    return float(finite.mean()), float(finite.std(ddof=1)) if finite.size > 1 else math.nan


def results_frame(records: Sequence[Mapping[str, Any]], *, reference: str = "erm",
                  overall: Sequence[str] = OVERALL_FAMILIES):
    """The IDI-format rows as a DataFrame: method rows, then Overall and Gain rows per ratio.

    Method rows: mean and sample std (ddof 1) over the runs (folds × seeds) of each (method, K,
    ratio), with ``gain_<metric>`` against the reference method at the same ratio. Overall rows:
    per ratio × supervision level × K, the mean of the method rows whose family is in ``overall``
    (those present; ``members`` names them). Gain rows: :func:`llmfair.metrics.gain` of the Overall
    means against the reference's means.
    """
    import pandas as pd

    from llmfair.metrics import gain

    if not records:
        raise DataError("no finished runs to collect")
    metrics = _metrics_of(records)
    frame = pd.DataFrame(_method_rows(records, metrics))
    out_rows = []
    for ratio in sorted(frame["ratio"].unique()):
        block = frame[frame["ratio"] == ratio]
        ref = block[(block["method"] == reference) & block["K"].isna()]
        ref_means = {m: float(ref[f"{m}_mean"].iloc[0]) for m in metrics} if len(ref) else None
        if ref_means is None:
            logger.warning("ratio 1:%g: no %r runs; Gain rows are left out", ratio, reference)
        for _, row in block.iterrows():
            row = row.to_dict()
            for m in metrics:
                row[f"gain_{m}"] = _gain(gain, m, row[f"{m}_mean"], ref_means)
            out_rows.append(row)
        out_rows += _overall_rows(block, ratio, reference, overall, ref_means, gain, metrics)
    result = pd.DataFrame(out_rows)[_columns(metrics)]
    result["K"] = result["K"].astype("Int64")
    return result


def _method_rows(records: Sequence[Mapping[str, Any]], metrics: Sequence[str] = METRICS) -> list[dict[str, Any]]:
    """One row per (method, K, ratio): mean and sample std of every metric over its runs, ordered
    by ratio, then the methods' config order (recorded per run), then K."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["method"], r["K"], float(r["ratio"])), []).append(r)
    order: dict[str, tuple[int, str]] = {}
    for r in records:  # config order (recorded per run), then name
        order.setdefault(r["method"], (int(r.get("method_index", 10**6)), r["method"]))
    rows = []
    for (method, k, ratio), runs in sorted(groups.items(), key=lambda kv: (kv[0][2], order[kv[0][0]], kv[0][1] or 0)):
        first = runs[0]
        row = {"ratio": ratio, "kind": "method", "method": method, "supervision": first.get("supervision", ""),
               "symbol": first["symbol"], "K": k, "family": first["family"], "objective": first.get("objective"),
               "reconstructed": bool(first.get("reconstructed", False)), "n_runs": len(runs), "members": ""}
        for m in metrics:
            values = np.array([np.nan if r["metrics"].get(m) is None else r["metrics"][m] for r in runs], dtype=float)
            row[f"{m}_mean"], row[f"{m}_std"] = _mean_std(values)
        rows.append(row)
    return rows


def _overall_rows(block, ratio: float, reference: str, overall: Sequence[str],
                  ref_means: Mapping[str, float] | None, gain: Callable,
                  metrics: Sequence[str] = METRICS) -> list[dict[str, Any]]:
    """The Overall rows of one ratio's method rows (``block``), one per supervision level × K,
    each followed by its Gain row when the reference ran at this ratio."""
    import pandas as pd

    rows = []
    members_all = block[block["family"].isin(list(overall)) & (block["method"] != reference)]
    keys = sorted({(r["supervision"], None if pd.isna(r["K"]) else int(r["K"])) for _, r in members_all.iterrows()},
                  key=lambda t: (_ORDER.get(t[0], 9), t[1] or 0))
    for supervision, k in keys:
        sel = members_all[(members_all["supervision"] == supervision)
                          & (members_all["K"].isna() if k is None else members_all["K"] == k)]
        base = {"ratio": ratio, "supervision": supervision, "symbol": SUPERVISION_LEVELS.get(supervision, ""),
                "K": k, "family": "", "objective": "", "reconstructed": bool(sel["reconstructed"].any()),
                "n_runs": int(sel["n_runs"].sum()), "members": ",".join(sel["method"])}
        overall_row = {**base, "kind": "overall", "method": "Overall"}
        gain_row = {**base, "kind": "gain", "method": "Gain"}
        for m in metrics:
            overall_row[f"{m}_mean"] = float(sel[f"{m}_mean"].mean())
            overall_row[f"{m}_std"] = math.nan
            g = _gain(gain, m, overall_row[f"{m}_mean"], ref_means)
            overall_row[f"gain_{m}"] = g
            gain_row[f"{m}_mean"], gain_row[f"{m}_std"], gain_row[f"gain_{m}"] = g, math.nan, g
        rows.append(overall_row)
        if ref_means is not None:
            rows.append(gain_row)
    return rows


def _gain(gain_fn, metric: str, value: float, ref: Mapping[str, float] | None) -> float:
    if ref is None or not math.isfinite(value) or not math.isfinite(ref[metric]) or ref[metric] == 0:
        return math.nan
    return float(gain_fn(metric, value, ref[metric]))


def results_markdown(frame, *, reference: str = "erm") -> str:
    """results.md: one IDI-format table per ratio (F1, ACC, TPRgap, DPgap)."""
    import pandas as pd

    from llmfair.report.tables import format_percent, format_value, markdown_table

    lines = ["# Sweep results", "",
             "Mean ± sample standard deviation over folds × seeds (runs: their number). Supervision: ● true "
             "gender, ⦿ pseudo gender labels, ○ k-means clusters or no demographic labels. Overall = mean of the "
             "DS, RW, GDRO and GADRO rows present at that supervision level (members listed in results.csv); "
             f"Gain = relative change against {reference} (F1, ACC: (M − ERM)/ERM; gaps: (ERM − M)/ERM).", ""]
    any_reconstructed = False
    columns = dict(TABLE_COLUMNS)
    if "rater_dp_gap_sum_mean" in frame.columns:
        columns["rater_dp_gap_sum"] = "DPgap_rat"
    for ratio in sorted(frame["ratio"].unique()):
        block = frame[frame["ratio"] == ratio]
        lines += [f"## Gender imbalance 1:{ratio:g}", ""]
        rows = []
        for _, r in block.iterrows():
            k = "" if pd.isna(r["K"]) else str(int(r["K"]))
            if r["kind"] == "gain":
                cells = [format_percent(r[f"{m}_mean"], 2) for m in columns]
                rows.append(["Gain", r["symbol"], k, *cells, ""])
                continue
            name = r["method"] if r["kind"] == "method" else "Overall"
            if r["kind"] == "method" and r["reconstructed"]:
                name += " †"
                any_reconstructed = True
            cells = []
            for m in columns:
                text = format_value(r[f"{m}_mean"])
                if isinstance(r[f"{m}_std"], float) and math.isfinite(r[f"{m}_std"]):
                    text += f" ± {format_value(r[f'{m}_std'])}"
                cells.append(text)
            size = len(r["members"].split(","))
            runs = str(int(r["n_runs"])) if r["kind"] == "method" else f"{size} method{'s' if size > 1 else ''}"
            rows.append([name, r["symbol"], k, *cells, runs])
        lines += [markdown_table(["method", "sup.", "K", *columns.values(), "runs"], rows,
                                 ["l", "l", "r"] + ["r"] * (len(columns) + 1)), ""]
    notes = ["DPgap is `dp_gap_sum` = sqrt(Σ_c gap_c²) (IDI Eq. 4 literally, no 1/K); results.csv also has "
             "`dp_gap_rms`, `fpr_gap_rms` and `f1_gap_rms`. Fairness is measured on the true gender of the test "
             "speakers; the test split is untouched."]
    if "rater_dp_gap_sum" in columns:
        notes.append("DPgap_rat is `rater_dp_gap_sum` = sqrt(Σ_c ΔSP_rat,c²), the same statistic over the test "
                     "predictions repeated once per rater annotation, grouped by the rater's gender instead of the "
                     "speaker's (`runs/rater_predictions_<run>.csv`; results.csv also has `rater_dp_gap_rms`).")
    if any_reconstructed:
        notes.insert(0, "† reconstruction: the source paper does not define this method; llmfair implements the "
                        "reconstruction documented in its objective (METHODS.md §2).")
    return "\n".join(lines + notes) + "\n"


FRONT_RESAMPLES = 200
"""Speaker-bootstrap replicates per run for the front: enough for 95 % bars, and collecting a few
hundred runs stays a matter of seconds (``llmfair report`` uses 1000 for a single table)."""


def front_figures(pred: Any, *, n_resamples: int = FRONT_RESAMPLES, seed: int = 0,
                  confidence: float = 0.95) -> dict[str, float]:
    """The front figures of one feature-sweep run's test predictions with speaker-bootstrap
    intervals: :func:`llmfair.report.front.front_figures` with the worst-cell gap of macro F1.

    The table is multi-label (CREMA-D soft labels), binarised at > 1/K as everywhere in the sweep;
    CREMA-D has one language × modality cell (eng, audio), so the worst cell's gap is the overall
    gender gap of macro F1 (macro, not weighted: the F1 the IDI tables report).
    """
    from llmfair.report.front import front_figures as figures_of

    return figures_of(pred, n_resamples=n_resamples, seed=seed, confidence=confidence, worst_cell_metric="macro_f1")


def front_rows(out: str | os.PathLike, records: Sequence[Mapping[str, Any]], *, n_resamples: int = FRONT_RESAMPLES,
               seed: int = 0) -> list[dict[str, Any]]:
    """One :func:`llmfair.report.front.front_frame` row per finished run with a predictions table.

    ``objective`` is the method's name (so the sweep's reference method is the front's reference),
    ``options`` its objective options, then ``seed``, ``ratio``, ``fold``, ``K`` and
    :func:`front_figures` of ``runs/predictions_<run id>.csv``. A run without that file is left
    out (logged), as runs without metrics are left out of the results.
    """
    from tqdm.auto import tqdm

    from llmfair.predictions import read_predictions

    rows = []
    for record in tqdm(records, desc="front: bootstrap per run", unit="run", disable=None, leave=False):
        run_id = record.get("run_id")
        path = predictions_path(out, str(run_id))
        if run_id is None or not path.is_file():
            logger.warning("run %s: no predictions table %s; left out of the front", run_id, path)
            continue
        rows.append({"run_id": run_id, "objective": record["method"], "options": record.get("options") or {},
                     "seed": record.get("seed"), "ratio": record["ratio"], "fold": record.get("fold"),
                     "K": record["K"], **front_figures(read_predictions(path), n_resamples=n_resamples, seed=seed)})
    return rows


def collect_results(out: str | os.PathLike, *, reference: str = "erm", overall: Sequence[str] = OVERALL_FAMILIES,
                    plots: bool = True, front: bool = True, front_resamples: int = FRONT_RESAMPLES,
                    front_seed: int = 0) -> dict[str, Path]:
    """Write ``results.csv``, ``results.md`` and the plots from every finished run under ``out``,
    then (``front``) ``front.csv`` / ``front.png``: the fairness–accuracy front (weighted F1
    against worst-cell gap, one panel per ratio) of every run with a predictions table.

    Returns:
        ``{"csv": ..., "markdown": ..., "plots": [...], "front": [front.csv, front.png]}`` paths
        (``plots`` and ``front`` as lists; ``front`` absent when no run has predictions).
    """
    out = Path(out)
    records = read_run_records(out)
    frame = results_frame(records, reference=reference, overall=overall)
    with atomic_path(out / "results.csv") as tmp:
        frame.to_csv(tmp, index=False)
    write_text(out / "results.md", results_markdown(frame, reference=reference))
    paths: dict[str, Any] = {"csv": out / "results.csv", "markdown": out / "results.md"}
    if plots:
        from llmfair.report.sweep_plots import plot_results

        paths["plots"] = plot_results(frame, out, reference=reference)
    if front:
        from llmfair.report.front import front_frame, write_front

        rows = front_rows(out, records, n_resamples=front_resamples, seed=front_seed)
        if rows:
            paths["front"] = write_front(
                front_frame(rows, facet="ratio"), out, reference=reference, facet="ratio",
                title=f"Fairness–accuracy front per imbalance ratio (one point per run; bars: {front_resamples} "
                      "speaker-bootstrap replicates; ringed: on the front)")
        else:
            logger.warning("no run under %s has a predictions table; front.csv / front.png are not written", out)
    return paths
