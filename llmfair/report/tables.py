"""Tables of an evaluation report: Markdown and CSV from the summary dict, and run comparisons.

Everything here reads the JSON-ready dict of :func:`llmfair.metrics.summary_dict` (one per run),
so the tables, the plots and ``metrics.json`` always show the same numbers.

- :func:`slices_frame`, :func:`gaps_frame`, :func:`overall_frame`, :func:`fairness_frame`: the
  summary's blocks as flat DataFrames (estimate, ``low``/``high`` interval columns) — what the CSV
  files hold.
- :func:`summary_markdown`: the ``metrics.md`` of one run.
- :func:`flatten_summary`: the summary as one flat ``{key: number}`` dict (the ``evaluate`` module's
  output; keys like ``eng/audio/female/weighted_f1`` and ``gap/eng/audio/weighted_f1``).
- :func:`comparison_frame` and :func:`comparison_markdown`: several runs side by side, each value
  and its delta against the first run (the reference), with IDI-style relative gains
  (:func:`llmfair.metrics.gain`, METHODS.md §3).
- :func:`paired_markdown`: the paired bootstrap differences of :func:`llmfair.metrics.paired_comparison`
  (Δ with its interval and p-value, marked resolved or not); the headline table's Δ rows carry
  the same paired intervals where a run and the reference are one-seed systems.

Every interval shown contains its estimate; absolute gaps and the fairness figures have intervals
built from their signed gaps (``docs/intervals.md``).

Every figure of a run's tables also shows its *resolvable difference* (``resolution`` in the
summary dict, :func:`llmfair.metrics.resolvable_difference`): the smallest difference to another
independent table of this size that an interval at the report's confidence would resolve.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from llmfair.errors import ConfigError
from llmfair.metrics import FAIRNESS_FIGURES, HEADLINE_METRICS, gain

SLICE_KEYS: tuple[str, ...] = ("language", "modality", "gender")
GAP_KEYS: tuple[str, ...] = ("language", "modality")
GAP_FIGURES: tuple[str, ...] = ("female", "male", "male_minus_female", "gap")
COMPARISON_KEYS: tuple[str, ...] = ("section", "language", "modality", "gender", "figure")
"""Row key of a comparison table; ``section`` is overall, fairness, slice or gap."""
ALL = "all"
GAP_GENDER = "male-female"
"""The ``gender`` of gap rows in a comparison (a gap is between the genders, not within one)."""


# ------------------------------------------------------------------------------ formatting
def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def format_value(value: Any, digits: int = 3, *, signed: bool = False) -> str:
    """A number as fixed-point text (``n/a`` for None/NaN); ``signed`` adds ``+`` to positive values."""
    if _is_missing(value):
        return "n/a"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{int(value):+d}" if signed else str(int(value))
    return f"{float(value):+.{digits}f}" if signed else f"{float(value):.{digits}f}"


def format_ci(value: Any, ci: Sequence[Any] | None = None, digits: int = 3, *, signed: bool = False) -> str:
    """``0.812 [0.790, 0.833]``; only the value when the interval is missing (no bootstrap)."""
    text = format_value(value, digits, signed=signed)
    if ci is None or len(ci) != 2 or any(_is_missing(v) for v in ci) or _is_missing(value):
        return text
    return f"{text} [{format_value(ci[0], digits, signed=signed)}, {format_value(ci[1], digits, signed=signed)}]"


def format_percent(value: Any, digits: int = 1) -> str:
    """A fraction as a signed percentage (``+16.7 %``); ``n/a`` for None/NaN."""
    if _is_missing(value):
        return "n/a"
    return f"{100.0 * float(value):+.{digits}f} %"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table; ``|`` inside cells is escaped. ``align``: ``l``/``r`` per column."""
    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    align = align or ["l"] * len(headers)
    if len(align) != len(headers):
        raise ConfigError(f"markdown_table: {len(align)} alignments for {len(headers)} columns")
    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "|" + "|".join("---:" if a == "r" else ":---" for a in align) + "|"]
    for row in rows:
        if len(row) != len(headers):
            raise ConfigError(f"markdown_table: a row has {len(row)} cells for {len(headers)} columns")
        lines.append("| " + " | ".join(cell(x) for x in row) + " |")
    return "\n".join(lines)


def _float(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _ci_pair(ci: Mapping[str, Any] | None, key: str) -> tuple[float, float]:
    pair = (ci or {}).get(key) or [None, None]
    return _float(pair[0]), _float(pair[1])


def _resolution(block: Mapping[str, Any], key: str) -> float:
    """A figure's resolvable difference from a summary block (NaN when absent)."""
    return _float((block.get("resolution") or {}).get(key))


# ------------------------------------------------------------------------------- frames
def overall_frame(summary: Mapping[str, Any]) -> pd.DataFrame:
    """One row per headline metric: ``metric, estimate, low, high, resolution`` (the resolvable
    difference)."""
    block = summary["overall"]
    rows = []
    for m in HEADLINE_METRICS:
        low, high = _ci_pair(block.get("ci"), m)
        rows.append({"metric": m, "estimate": _float(block[m]), "low": low, "high": high,
                     "resolution": _resolution(block, m)})
    return pd.DataFrame(rows)


def fairness_frame(summary: Mapping[str, Any]) -> pd.DataFrame:
    """One row per fairness figure (tpr_gap_rms ... worst_cell_gap): ``figure, estimate, low, high,
    resolution``."""
    block = summary["fairness"]
    rows = []
    for f in FAIRNESS_FIGURES:
        low, high = _ci_pair(block.get("ci"), f)
        rows.append({"figure": f, "estimate": _float(block[f]), "low": low, "high": high,
                     "resolution": _resolution(block, f)})
    return pd.DataFrame(rows)


def slices_frame(summary: Mapping[str, Any]) -> pd.DataFrame:
    """One row per (language, modality, gender) slice: ``n``, each metric and its ``<metric>_low``
    / ``<metric>_high`` interval (NaN without bootstrap). This is ``slices.csv``."""
    rows = []
    for s in summary["slices"]:
        row: dict[str, Any] = {k: s[k] for k in SLICE_KEYS}
        row["n"] = int(s["n"])
        for m in HEADLINE_METRICS:
            row[m] = _float(s[m])
            row[f"{m}_low"], row[f"{m}_high"] = _ci_pair(s.get("ci"), m)
        rows.append(row)
    columns = list(SLICE_KEYS) + ["n"] + [c for m in HEADLINE_METRICS for c in (m, f"{m}_low", f"{m}_high")]
    return pd.DataFrame(rows, columns=columns)


def gaps_frame(summary: Mapping[str, Any]) -> pd.DataFrame:
    """One row per (language, modality, metric) gap, plus the overall rows (``all``/``all``):
    ``female, male, male_minus_female, gap``, each with ``_low``/``_high``, and the gender counts
    ``n_female, n_male, n_unknown`` (unknown rows are excluded from the gap), then ``gap_resolution``
    (the resolvable difference of ``gap``). This is ``gaps.csv``."""
    rows = []
    for g in summary["gaps"]:
        row: dict[str, Any] = {"language": g["language"], "modality": g["modality"], "metric": g["metric"]}
        for f in GAP_FIGURES:
            row[f] = _float(g[f])
            row[f"{f}_low"], row[f"{f}_high"] = _ci_pair(g.get("ci"), f)
        for k in ("n_female", "n_male", "n_unknown"):
            row[k] = int(g[k])
        row["gap_resolution"] = _resolution(g, "gap")
        rows.append(row)
    columns = (list(GAP_KEYS) + ["metric"] + [c for f in GAP_FIGURES for c in (f, f"{f}_low", f"{f}_high")]
               + ["n_female", "n_male", "n_unknown", "gap_resolution"])
    return pd.DataFrame(rows, columns=columns)


# ----------------------------------------------------------------------------- flat dict
def flatten_summary(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The headline numbers of a summary dict as one flat dict.

    Keys: ``n``, ``n_unknown_gender``, the overall metrics (``accuracy``, ``weighted_f1``,
    ``macro_f1``), the fairness figures (``tpr_gap_rms`` ... ``worst_cell_gap``), per slice
    ``<language>/<modality>/<gender>/<metric>`` and ``.../n``, per gap cell
    ``gap/<language>/<modality>/<metric>`` (|male − female|) and
    ``male_minus_female/<language>/<modality>/<metric>`` (the overall gap has cell ``all/all``).
    When the summary has bootstrap intervals, every figure ``key`` also gets ``key/ci`` =
    ``[low, high]``. Undefined values are None.
    """
    with_ci = int(summary.get("bootstrap", {}).get("n_resamples", 0)) > 0
    out: dict[str, Any] = {"n": int(summary["n"]), "n_unknown_gender": int(summary["fairness"]["n_unknown_gender"])}

    def put(key: str, value: Any, ci: Mapping[str, Any] | None, ci_key: str) -> None:
        out[key] = value
        if with_ci:
            out[f"{key}/ci"] = list((ci or {}).get(ci_key) or [None, None])

    for m in HEADLINE_METRICS:
        put(m, summary["overall"][m], summary["overall"].get("ci"), m)
    for f in FAIRNESS_FIGURES:
        put(f, summary["fairness"][f], summary["fairness"].get("ci"), f)
    for s in summary["slices"]:
        prefix = "/".join(s[k] for k in SLICE_KEYS)
        out[f"{prefix}/n"] = int(s["n"])
        for m in HEADLINE_METRICS:
            put(f"{prefix}/{m}", s[m], s.get("ci"), m)
    for g in summary["gaps"]:
        cell = f"{g['language']}/{g['modality']}/{g['metric']}"
        put(f"gap/{cell}", g["gap"], g.get("ci"), "gap")
        put(f"male_minus_female/{cell}", g["male_minus_female"], g.get("ci"), "male_minus_female")
    return out


# ----------------------------------------------------------------------------- one run
def _interval_note(summary: Mapping[str, Any]) -> str:
    boot = summary.get("bootstrap", {})
    if not boot.get("n_resamples"):
        return "No bootstrap intervals (n_resamples = 0)."
    text = (f"Intervals: {100 * float(boot['confidence']):g} % {boot.get('method', 'percentile')} bootstrap, "
            f"{boot['n_resamples']} resamples of {boot['unit']}s, seed {boot['seed']}; "
            f"fewest usable replicates of any figure: {boot.get('min_usable', 'n/a')}.")
    if boot.get("interval_methods"):
        text += (" Absolute gaps and fairness figures get the interval of their signed male − female gaps, folded "
                 "(|gap|), in a simultaneous max-t box (worst cell) or in a bootstrap norm ball (RMS and DP figures), "
                 "not the percentile interval of resampled absolute values, which is biased away from 0; every "
                 "interval contains its estimate (docs/intervals.md).")
    return text


def _resolution_note(summary: Mapping[str, Any]) -> str | None:
    boot = summary.get("bootstrap", {})
    if not boot.get("n_resamples") or boot.get("resolution_z") is None:
        return None
    return (f"Resolvable difference: {float(boot['resolution_z']):.2f} · √2 · bootstrap SE, the smallest difference to "
            f"another independent table of this size whose {100 * float(boot['confidence']):g} % interval would exclude 0 "
            "(√2: both tables are noisy). Runs on the same rows resolve smaller differences in a paired comparison "
            "(`llmfair report` with several runs).")


def summary_markdown(summary: Mapping[str, Any], *, title: str = "Evaluation report", source: str | None = None) -> str:
    """``metrics.md``: overall metrics, fairness figures, per-slice metrics and gender gaps.

    Values carry their bootstrap interval, e.g. ``0.812 [0.790, 0.833]``. Gender gaps are
    male − female over rows of known gender; the unknown-gender count is stated.
    """
    space = summary["label_space"]
    fair = summary["fairness"]
    lines = [f"# {title}", ""]
    if source:
        lines.append(f"Predictions: `{source}`")
        lines.append("")
    lines += [
        f"- rows: {summary['n']}; label space: {space['name']} ({len(space['classes'])} classes"
        f"{', multi-label' if space['multilabel'] else ''}: {', '.join(space['classes'])})",
        f"- unknown gender: {fair['n_unknown_gender']} rows (kept in the slices, excluded from every gap)",
        f"- {_interval_note(summary)}",
    ]
    note = _resolution_note(summary)
    if note:
        lines.append(f"- {note}")
    lines += ["", "## Overall", ""]
    ov = summary["overall"]
    resolvable = "resolvable difference"
    lines.append(markdown_table(
        ["metric", "estimate", resolvable],
        [[m, format_ci(ov[m], ov.get("ci", {}).get(m)), format_value(_resolution(ov, m))] for m in HEADLINE_METRICS],
        ["l", "r", "r"]))
    lines += ["", "## Fairness (gender; unknown excluded)", ""]
    lines.append(markdown_table(
        ["figure", "estimate", resolvable],
        [[f, format_ci(fair[f], fair.get("ci", {}).get(f)), format_value(_resolution(fair, f))] for f in FAIRNESS_FIGURES],
        ["l", "r", "r"]))
    worst = fair.get("worst_cell") or {}
    notes = []
    if worst:
        notes.append(f"- worst cell ({fair.get('worst_cell_metric', 'weighted_f1')}): "
                     + "/".join(str(v) for v in worst.values()))
    skipped = {k: v for k, v in (fair.get("skipped_classes") or {}).items() if v}
    for kind, classes in skipped.items():
        notes.append(f"- {kind} gap: skipped {len(classes)} class(es) without positives/negatives in a group: {', '.join(classes)}")
    if notes:
        lines += [""] + notes
    lines += ["", "## Per slice", ""]
    rows = [[s["language"], s["modality"], s["gender"], s["n"]] + [format_ci(s[m], s.get("ci", {}).get(m)) for m in HEADLINE_METRICS]
            for s in summary["slices"]]
    lines.append(markdown_table(list(SLICE_KEYS) + ["n"] + list(HEADLINE_METRICS), rows, ["l", "l", "l", "r", "r", "r", "r"]))
    lines += ["", "## Gender gaps (male − female)", ""]
    rows = [[g["language"], g["modality"], g["metric"], f"{g['n_female']}/{g['n_male']}/{g['n_unknown']}",
             format_value(g["female"]), format_value(g["male"]),
             format_ci(g["male_minus_female"], g.get("ci", {}).get("male_minus_female"), signed=True),
             format_ci(g["gap"], g.get("ci", {}).get("gap")), format_value(_resolution(g, "gap"))]
            for g in summary["gaps"]]
    lines.append(markdown_table(["language", "modality", "metric", "n F/M/unknown", "female", "male", "male − female", "|gap|",
                                 "resolvable difference"],
                                rows, ["l", "l", "l", "r", "r", "r", "r", "r", "r"]))
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- comparison
def _long_rows(summary: Mapping[str, Any]) -> pd.DataFrame:
    """Every comparable figure of one run as rows ``COMPARISON_KEYS + (value, low, high)``."""
    rows: list[dict[str, Any]] = []

    def add(section: str, language: str, modality: str, gender: str, figure: str, value: Any, ci: Mapping | None, key: str) -> None:
        low, high = _ci_pair(ci, key)
        rows.append({"section": section, "language": language, "modality": modality, "gender": gender,
                     "figure": figure, "value": _float(value), "low": low, "high": high})

    for m in HEADLINE_METRICS:
        add("overall", ALL, ALL, ALL, m, summary["overall"][m], summary["overall"].get("ci"), m)
    for f in FAIRNESS_FIGURES:
        add("fairness", ALL, ALL, ALL, f, summary["fairness"][f], summary["fairness"].get("ci"), f)
    for s in summary["slices"]:
        for m in HEADLINE_METRICS:
            add("slice", s["language"], s["modality"], s["gender"], m, s[m], s.get("ci"), m)
    for g in summary["gaps"]:
        add("gap", g["language"], g["modality"], GAP_GENDER, f"{g['metric']}_gap", g["gap"], g.get("ci"), "gap")
        add("gap", g["language"], g["modality"], GAP_GENDER, f"{g['metric']}_male_minus_female",
            g["male_minus_female"], g.get("ci"), "male_minus_female")
    return pd.DataFrame(rows)


def _gain_column(figures: np.ndarray, values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """IDI gain per row (NaN where undefined: signed gaps, a zero or missing value/reference)."""
    out = np.full(len(values), np.nan)
    for figure in pd.unique(figures):
        if str(figure).endswith("_male_minus_female"):
            continue  # a signed difference has no "better" direction
        rows = (figures == figure) & np.isfinite(values) & np.isfinite(reference) & (reference != 0)
        if rows.any():
            out[rows] = gain(str(figure), values[rows], reference[rows])
    return out


def comparison_frame(summaries: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Several runs side by side; the first run is the reference.

    One row per figure (``COMPARISON_KEYS``: section ∈ overall / fairness / slice / gap; gap rows
    have figures ``<metric>_gap`` = |male − female| and ``<metric>_male_minus_female``), then for
    every run ``value_<run>``, ``low_<run>``, ``high_<run>``, and for every other run
    ``delta_<run>`` (= value − reference value) and ``gain_<run>`` (IDI relative gain:
    (M − ref)/ref for accuracy/F1, (ref − M)/ref for gaps, METHODS.md §3; NaN where undefined).
    Figures missing from a run (e.g. a slice it lacks) are NaN.
    """
    names = list(summaries)
    if len(names) < 2:
        raise ConfigError(f"a comparison needs at least two runs; got {names}")
    keys = list(COMPARISON_KEYS)
    per_run = {name: _long_rows(s) for name, s in summaries.items()}
    frame = pd.concat([f[keys] for f in per_run.values()], ignore_index=True).drop_duplicates().reset_index(drop=True)
    for name, rows in per_run.items():
        renamed = rows.rename(columns={"value": f"value_{name}", "low": f"low_{name}", "high": f"high_{name}"})
        frame = frame.merge(renamed, on=keys, how="left")
    ref = frame[f"value_{names[0]}"].to_numpy(dtype=np.float64)
    figures = frame["figure"].to_numpy(dtype=object)
    for name in names[1:]:
        values = frame[f"value_{name}"].to_numpy(dtype=np.float64)
        frame[f"delta_{name}"] = values - ref
        frame[f"gain_{name}"] = _gain_column(figures, values, ref)
    return frame


def _p_text(p: Any, usable: int) -> str:
    """``p=0.034``; ``p<0.002`` when no replicate fell on the other side of 0 (p = 0 of R replicates)."""
    if _is_missing(p):
        return "p=n/a"
    if float(p) == 0.0 and usable:
        return f"p<{2.0 / usable:.2g}"
    return f"p={float(p):.3f}"


def paired_markdown(paired: Mapping[str, Any]) -> str:
    """The "Paired differences" section of ``comparison.md`` from a :func:`llmfair.metrics.paired_comparison` dict.

    One table: every figure, the reference system's mean [interval], then per other system its
    mean [interval] and ``Δ [low, high] p=…`` marked **resolved** (the interval excludes 0) or
    "not resolved". Systems with several seeds show their seed count and the seed standard deviation.
    """
    ref = paired["reference"]
    systems = paired["systems"]
    names = list(systems)
    others = [n for n in names if n != ref]
    spk = paired["speakers"]
    conf = 100 * float(paired["confidence"])
    lines = [f"## Paired differences vs {ref} ({paired['unit']} bootstrap, {paired['n_resamples']} resamples; "
             f"{spk['female']} female / {spk['male']} male speakers)", ""]
    lines += [
        f"- Every replicate resamples the same {paired['unit']}s for every system ({paired['n_rows']} rows, "
        f"{paired['n_clusters']} {paired['unit']}s; {spk.get('unknown', 0)} speakers of unknown gender), so the "
        "interval of Δ holds only the noise in which the systems differ, not the noise they share.",
        f"- Δ = system − {ref} ({conf:g} % percentile interval, two-sided bootstrap p); **resolved**: the interval "
        "excludes 0.",
        "- A system's absolute gaps and fairness figures get intervals built from its signed male − female gaps, as in "
        "the runs' reports; every interval contains its estimate (docs/intervals.md).",
    ]
    if any(systems[n]["seeds"] > 1 for n in names):
        lines.append("- A system of several seeds shows the mean over its seeds; its interval resamples the rows and "
                     "the seeds (both kinds of noise), `sd` is the standard deviation over seeds (seed noise alone).")
    lines.append("")

    def label(name: str) -> str:
        seeds = systems[name]["seeds"]
        return name + (f" ({seeds} seeds)" if seeds > 1 else "")

    def value_cell(name: str, key: str) -> str:
        fig = systems[name]["figures"][key]
        text = format_ci(fig["mean"], [fig["ci_low"], fig["ci_high"]])
        if systems[name]["seeds"] > 1:
            text += f" sd {format_value(fig['seed_std'])}"
        return text

    def delta_cell(name: str, key: str) -> str:
        d = paired["paired"][name][key]
        if _is_missing(d["delta"]):
            return "n/a"
        verdict = "**resolved**" if d["resolved"] else "not resolved"
        return (f"{format_ci(d['delta'], [d['ci_low'], d['ci_high']], signed=True)} "
                f"{_p_text(d['p_value'], d['usable'])} {verdict}")

    headers = ["figure", label(ref) + " (reference)"]
    for name in others:
        headers += [label(name), f"Δ {name}"]
    rows = []
    for key in paired["figures"]:
        row = [key, value_cell(ref, key)]
        for name in others:
            row += [value_cell(name, key), delta_cell(name, key)]
        rows.append(row)
    lines.append(markdown_table(headers, rows, ["l"] + ["r"] * (len(headers) - 1)))
    return "\n".join(lines) + "\n"


def _paired_deltas(
    paired: Mapping[str, Any] | None, run: str, reference: str, systems: Mapping[str, str] | None
) -> dict[str, Mapping[str, Any]]:
    """The paired Δ of every figure of ``run`` against the reference run, when the paired comparison
    has it: both runs are one-seed systems, the reference run's system being the reference. Else {}."""
    if paired is None:
        return {}
    system = (systems or {}).get(run, run)
    ref_system = (systems or {}).get(reference, reference)
    found = paired.get("systems", {})
    if (ref_system != paired.get("reference") or system == ref_system or system not in paired.get("paired", {})
            or found.get(system, {}).get("seeds") != 1 or found.get(ref_system, {}).get("seeds") != 1):
        return {}
    return {k: d for k, d in paired["paired"][system].items() if not _is_missing(d.get("delta"))}


def comparison_markdown(
    summaries: Mapping[str, Mapping[str, Any]],
    frame: pd.DataFrame | None = None,
    *,
    sources: Mapping[str, str] | None = None,
    paired: Mapping[str, Any] | None = None,
    paired_note: str | None = None,
    systems: Mapping[str, str] | None = None,
) -> str:
    """``comparison.md``: a headline table in the IDI style (one row per run with intervals, then one
    Δ row — with its paired interval where the run and the reference are one-seed systems of
    ``paired`` — and one gain row per non-reference run), the paired differences (``paired``, from
    :func:`llmfair.metrics.paired_comparison`; else ``paired_note`` says why there are none), then
    per-slice and per-gap values of every run with deltas. ``systems`` maps run → system name
    (shown when given)."""
    names = list(summaries)
    frame = comparison_frame(summaries) if frame is None else frame
    ref = names[0]
    lines = [f"# Comparison of {len(names)} runs (reference: {ref})", ""]
    run_rows = []
    for name in names:
        s = summaries[name]
        run_rows.append([name + (" (reference)" if name == ref else "")]
                        + ([systems.get(name, name)] if systems else [])
                        + [s["n"], s["fairness"]["n_unknown_gender"],
                           f"`{(sources or {}).get(name, '')}`" if sources else ""])
    run_headers = ["run"] + (["system"] if systems else []) + ["rows", "unknown gender", "predictions"]
    lines.append(markdown_table(run_headers, run_rows, ["l"] + (["l"] if systems else []) + ["r", "r", "l"]))
    lines += ["", f"- {_interval_note(summaries[ref])}",
              "- Δ = run − reference; gain (IDI): (M − ref)/ref for accuracy and F1, (ref − M)/ref for gaps "
              "(positive = better).", "", "## Headline figures", ""]
    head = frame[frame["section"].isin(["overall", "fairness"])]
    figures = list(head["figure"])
    rows = []
    for name in names:
        rows.append([name] + [format_ci(v, [lo, hi]) for v, lo, hi in
                              zip(head[f"value_{name}"], head[f"low_{name}"], head[f"high_{name}"])])
    with_paired = False
    for name in names[1:]:
        deltas = _paired_deltas(paired, name, ref, systems)
        with_paired |= bool(deltas)
        rows.append([f"Δ {name}"] + [
            format_ci(deltas[f]["delta"], [deltas[f]["ci_low"], deltas[f]["ci_high"]], signed=True) if f in deltas
            else format_value(v, signed=True) for f, v in zip(figures, head[f"delta_{name}"])])
        rows.append([f"gain {name}"] + [format_percent(v) for v in head[f"gain_{name}"]])
    lines.append(markdown_table(["run"] + figures, rows, ["l"] + ["r"] * len(figures)))
    lines.append("")
    lines.append("Intervals of the runs' rows here are independent single-run intervals"
                 + ("; a Δ row with an interval carries the paired interval of the paired differences below "
                    "(the runs resampled jointly), the one that says whether two runs on the same rows differ."
                    if with_paired else
                    "; whether two runs on the same rows differ is answered by the paired differences below."))
    if paired is not None:
        lines += ["", paired_markdown(paired).rstrip("\n")]
    else:
        lines += ["", "## Paired differences", "",
                  f"Not computed: {paired_note or 'no paired comparison was requested'}."]

    for section, title, keys in (("slice", "Per slice", ["language", "modality", "gender", "figure"]),
                                 ("gap", "Gender gaps (|male − female| and male − female)", ["language", "modality", "figure"])):
        part = frame[frame["section"] == section]
        lines += ["", f"## {title}", ""]
        headers = keys + names + [f"Δ {n}" for n in names[1:]]
        rows = []
        for _, row in part.iterrows():
            signed = str(row["figure"]).endswith("_male_minus_female")
            cells = [row[k] for k in keys]
            cells += [format_ci(row[f"value_{n}"], [row[f"low_{n}"], row[f"high_{n}"]], signed=signed) for n in names]
            cells += [format_value(row[f"delta_{n}"], signed=True) for n in names[1:]]
            rows.append(cells)
        lines.append(markdown_table(headers, rows, ["l"] * len(keys) + ["r"] * (len(headers) - len(keys))))
    return "\n".join(lines) + "\n"


def frame_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """DataFrame rows as JSON-ready dicts (NaN → None, numpy scalars → Python)."""
    records = []
    for row in frame.to_dict(orient="records"):
        clean = {}
        for k, v in row.items():
            if isinstance(v, (np.integer,)):
                v = int(v)
            elif isinstance(v, (float, np.floating)):
                v = None if math.isnan(float(v)) else float(v)
            clean[str(k)] = v
        records.append(clean)
    return records
