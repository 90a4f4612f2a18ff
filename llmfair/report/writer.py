"""Write an evaluation report directory from one or more predictions tables.

One file::

    OUT/metrics.json  metrics.md  slices.csv  gaps.csv  plots/{slices,gap_heatmap,confusion_by_gender}.png

Several files (e.g. ERM and MinMaxGAP on the same test set)::

    OUT/<run>/...                      the single-run report of every run
    OUT/comparison.{md,csv,json}       every figure side by side, deltas and gains vs the first run
    OUT/plots/comparison_{slices,gaps}.png

``metrics.json`` is :func:`llmfair.metrics.summary_dict` plus a ``run`` block (name, source); every
figure carries its interval and its resolvable difference (``resolution``).

Paired differences. When every table holds the same rows (same ``(id, modality)`` keys with the
same label, language, gender and speaker), ``comparison.json`` also holds the paired bootstrap
comparison of :func:`llmfair.metrics.paired_comparison` — ``"paired"`` (per non-reference system,
per figure: ``delta, ci_low, ci_high, p_value, resolved, usable``), ``"systems"`` (seed-aggregated
means with intervals), ``"speakers"`` (distinct speakers per gender) and the method fields
``reference_system``, ``method``, ``n_rows``, ``n_clusters``, ``figures`` (next to ``unit``,
``n_resamples``, ``seed``, ``confidence``, always present; ``reference`` stays the reference *run*)
— and ``comparison.md`` a "Paired differences vs <reference>" table (the headline table's Δ rows
carry the same paired intervals where a run and the reference are one-seed systems).
Tables that share a system name (``systems=``) are that system's seeds. When the rows differ, or
without resamples, there is no paired block (``"paired_skipped"`` says why, and so does
``comparison.md``).
Everything is computed before anything is written, files are written atomically (an existing
directory is reused and its files replaced), and ``metrics.json`` is written last, so a failure
never leaves a half-written or inconsistent ``metrics.json``.
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from llmfair._atomic import write_text
from llmfair.errors import ConfigError, DataError
from llmfair.metrics import UNITS, align_runs, paired_comparison, summary_dict
from llmfair.predictions import Predictions, read_predictions
from llmfair.report.tables import (
    comparison_frame,
    comparison_markdown,
    frame_records,
    gaps_frame,
    slices_frame,
    summary_markdown,
)

logger = logging.getLogger(__name__)

RESERVED_NAMES: frozenset[str] = frozenset({"plots"})
"""Run names that would collide with the top-level entries of a comparison directory."""
_UNSAFE = re.compile(r"[^\w.+-]+")


def run_names(paths: Sequence[str | os.PathLike], names: Sequence[str] | None = None) -> list[str]:
    """One directory-safe, unique name per predictions file.

    ``names`` (e.g. from ``--names ERM,MinMaxGAP``) or else the file stems; characters other than
    letters, digits and ``._+-`` become ``_``; repeats (and the reserved name ``plots``) get
    ``-2``, ``-3``... appended.

    Raises:
        ConfigError: ``names`` has a different length than ``paths`` or an empty name.
    """
    if names is not None:
        names = list(names)
        if len(names) != len(paths):
            raise ConfigError(f"got {len(names)} run name(s) {names} for {len(paths)} predictions file(s)")
        raw = names
    else:
        raw = [Path(p).stem for p in paths]
    out: list[str] = []
    taken = set(RESERVED_NAMES)
    for name in raw:
        clean = _UNSAFE.sub("_", str(name).strip()).strip(".")
        if not clean:
            raise ConfigError(f"run name {name!r} is empty once made safe for a directory name")
        candidate, k = clean, 2
        while candidate in taken:
            candidate, k = f"{clean}-{k}", k + 1
        taken.add(candidate)
        out.append(candidate)
    return out


def check_same_label_space(tables: Mapping[str, Predictions]) -> None:
    """Refuse to compare runs whose classes (names, order) or label kind (single/multi) differ.

    Raises:
        DataError: naming both files and their label spaces.
    """
    items = list(tables.items())
    ref_name, ref = items[0]
    for name, table in items[1:]:
        if table.classes != ref.classes or table.multilabel != ref.multilabel:
            raise DataError(
                f"runs have different label spaces and cannot be compared: {ref.source} ({ref_name}) has "
                f"{list(ref.classes)}{' multi-label' if ref.multilabel else ''}, {table.source} ({name}) has "
                f"{list(table.classes)}{' multi-label' if table.multilabel else ''}"
            )


def _warn_if_rows_differ(tables: Mapping[str, Predictions]) -> None:
    items = list(tables.items())
    ref_name, ref = items[0]
    ref_keys = pd.MultiIndex.from_frame(ref.frame[["id", "modality"]])
    for name, table in items[1:]:
        keys = pd.MultiIndex.from_frame(table.frame[["id", "modality"]])
        if len(keys) != len(ref_keys) or not keys.sort_values().equals(ref_keys.sort_values()):
            logger.warning(
                "%s (%s) and %s (%s) do not hold the same (id, modality) rows; deltas compare different test sets",
                ref.source, ref_name, table.source, name,
            )


def system_groups(labels: Sequence[str], systems: Sequence[str] | None) -> dict[str, list[str]]:
    """System name → its runs (in input order); by default every run is its own system.

    Raises:
        ConfigError: ``systems`` has a different length than the runs or an empty name.
    """
    if systems is None:
        return {name: [name] for name in labels}
    systems = [str(s).strip() for s in systems]
    if len(systems) != len(labels):
        raise ConfigError(f"got {len(systems)} system name(s) {systems} for {len(labels)} predictions file(s)")
    if not all(systems):
        raise ConfigError(f"system names must not be empty: {systems}")
    groups: dict[str, list[str]] = {}
    for name, system in zip(labels, systems):
        groups.setdefault(system, []).append(name)
    return groups


def _paired_block(
    tables: Mapping[str, Predictions], groups: Mapping[str, Sequence[str]], *, n_resamples: int, seed: int, unit: str,
) -> tuple[dict[str, Any] | None, str | None]:
    """The paired comparison of the runs, or None and the reason it was not computed."""
    if n_resamples == 0:
        return None, "no bootstrap resamples (n_resamples = 0)"
    try:
        aligned = dict(zip(tables, align_runs(list(tables.values()))))
    except DataError as exc:
        logger.warning("no paired comparison: %s", exc)
        return None, f"the runs do not hold the same rows ({exc}); the Δ above compare different test sets"
    paired = paired_comparison(
        {system: [aligned[run] for run in runs] for system, runs in groups.items()},
        unit=unit, n_resamples=n_resamples, seed=seed, run_names={system: list(runs) for system, runs in groups.items()},
    )
    return paired, None


def _json_text(obj: Any) -> str:
    # allow_nan=False: a NaN that slipped through would make invalid JSON; fail before writing
    return json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def _run_texts(name: str, table: Predictions, summary: dict[str, Any]) -> dict[str, str]:
    """Every text file of one run's report, rendered in memory."""
    return {
        "metrics.md": summary_markdown(summary, title=f"Evaluation report: {name}", source=table.source),
        "slices.csv": slices_frame(summary).to_csv(index=False),
        "gaps.csv": gaps_frame(summary).to_csv(index=False),
        "metrics.json": _json_text(summary),
    }


def _run_plots(table: Predictions, summary: Mapping[str, Any], plot_dir: Path) -> list[Path]:
    from llmfair.report import plots

    return [
        plots.plot_slices(summary, plot_dir / "slices.png"),
        plots.plot_gap_heatmap(summary, plot_dir / "gap_heatmap.png"),
        plots.plot_confusion_by_gender(table, plot_dir / "confusion_by_gender.png"),
    ]


def _write_run(run_dir: Path, texts: Mapping[str, str]) -> list[Path]:
    written = []
    for filename in ("metrics.md", "slices.csv", "gaps.csv", "metrics.json"):  # metrics.json last
        path = run_dir / filename
        write_text(path, texts[filename])
        written.append(path)
    return written


def _check_options(paths: Sequence[Path], out: Path, *, unit: str, n_resamples: int) -> None:
    if not paths:
        raise ConfigError("write_report needs at least one predictions file")
    if unit not in UNITS:
        raise ConfigError(f"unknown bootstrap unit {unit!r}; expected one of {list(UNITS)}")
    if n_resamples < 0:
        raise ConfigError(f"n_resamples must be non-negative; got {n_resamples}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"report output {out} exists and is not a directory")


def _comparison(tables: Mapping[str, Predictions], summaries: Mapping[str, dict[str, Any]], labels: Sequence[str],
                groups: Mapping[str, Sequence[str]] | None, *, paired: dict[str, Any] | None, paired_note: str | None,
                unit: str, n_resamples: int, seed: int) -> tuple[dict[str, Any], dict[str, str]]:
    """The comparison of several runs: the returned block and the texts of comparison.{md,csv,json}."""
    frame = comparison_frame(summaries)
    sources = {name: str(t.source) for name, t in tables.items()}
    run_system = {run: system for system, runs in groups.items() for run in runs} if groups is not None else None
    markdown = comparison_markdown(summaries, frame, sources=sources, paired=paired, paired_note=paired_note,
                                   systems=run_system)
    reference = labels[0]
    doc: dict[str, Any] = {
        "reference": reference,
        "runs": [{"name": n, "source": sources[n], "n": summaries[n]["n"], "dir": n,
                  **({"system": run_system[n]} if run_system else {})} for n in tables],
        "label_space": summaries[reference]["label_space"],
        "bootstrap": summaries[reference]["bootstrap"],
        "rows": frame_records(frame),
    }
    doc.update(unit=unit, n_resamples=n_resamples, seed=seed, confidence=summaries[reference]["bootstrap"]["confidence"])
    if paired is not None:
        doc.update({"reference_system": paired["reference"],
                    **{k: paired[k] for k in ("method", "n_rows", "n_clusters", "figures")},
                    "speakers": paired["speakers"], "systems": paired["systems"], "paired": paired["paired"]})
    else:
        doc["paired_skipped"] = paired_note
    texts = {"comparison.md": markdown, "comparison.csv": frame.to_csv(index=False), "comparison.json": _json_text(doc)}
    return {"reference": reference, "frame": frame, "markdown": markdown, "paired": paired}, texts


def write_report(
    prediction_paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    names: Sequence[str] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    unit: str = "utterance",
    plots: bool = True,
    systems: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Evaluate predictions tables and write the report (see the module docstring for the layout).

    Args:
        prediction_paths: one or more predictions tables (CSV or Parquet); with several, the first
            is the reference of the comparison.
        out_dir: the report directory (created; existing files are replaced).
        names: run names (default: the file stems), made unique.
        n_resamples: bootstrap replicates for the intervals (0: none).
        seed: bootstrap seed.
        unit: bootstrap unit, ``utterance`` or ``speaker`` (cluster bootstrap).
        plots: also write the PNG plots.
        systems: a system name per table; tables sharing one are that system's seeds in the
            paired comparison (default: every table is its own system). The reference system is
            the first table's.

    Returns:
        ``{"runs": {name: {"source", "dir", "summary"}}, "comparison": {"reference", "frame",
        "markdown", "paired"} or None, "markdown": the Markdown to show (the run's or the
        comparison's), "files": [written paths]}``; ``paired`` is the
        :func:`llmfair.metrics.paired_comparison` dict or None (rows differ, or no resamples).

    Raises:
        ConfigError: no files, a bad ``unit``/``n_resamples``/``names``/``systems``.
        DataError: a missing or invalid predictions file, runs with different label spaces, or a
            system listing the same predictions twice.
    """
    paths = [Path(p) for p in prediction_paths]
    out = Path(out_dir)
    _check_options(paths, out, unit=unit, n_resamples=n_resamples)
    labels = run_names(paths, names)
    groups = system_groups(labels, systems)
    tables = {name: read_predictions(p) for name, p in zip(labels, paths)}
    paired: dict[str, Any] | None = None
    paired_note: str | None = None
    if len(tables) > 1:
        check_same_label_space(tables)
        _warn_if_rows_differ(tables)
        paired, paired_note = _paired_block(tables, groups, n_resamples=n_resamples, seed=seed, unit=unit)

    summaries: dict[str, dict[str, Any]] = {}
    texts: dict[str, dict[str, str]] = {}
    for name, table in tables.items():
        logger.info("evaluating %s (%d rows, %d bootstrap resamples)", table.source, table.n, n_resamples)
        summary = summary_dict(table, n_resamples=n_resamples, seed=seed, unit=unit)
        summary["run"] = {"name": name, "source": str(table.source)}
        summaries[name] = summary
        texts[name] = _run_texts(name, table, summary)

    single = len(tables) == 1
    run_dirs = {name: out if single else out / name for name in tables}
    comparison: dict[str, Any] | None = None
    comparison_texts: dict[str, str] = {}
    if not single:
        comparison, comparison_texts = _comparison(tables, summaries, labels, groups if systems is not None else None,
                                                   paired=paired, paired_note=paired_note, unit=unit,
                                                   n_resamples=n_resamples, seed=seed)

    files: list[Path] = []
    if plots:
        from llmfair.report import plots as plotting

        for name, table in tables.items():
            files += _run_plots(table, summaries[name], run_dirs[name] / "plots")
        if not single:
            files.append(plotting.plot_comparison_slices(summaries, out / "plots" / "comparison_slices.png"))
            files.append(plotting.plot_comparison_gaps(summaries, out / "plots" / "comparison_gaps.png"))
    for name in tables:
        files += _write_run(run_dirs[name], texts[name])
    for filename, text in comparison_texts.items():
        write_text(out / filename, text)
        files.append(out / filename)
    logger.info("report of %d run(s) written to %s", len(tables), out)
    return {
        "runs": {name: {"source": str(tables[name].source), "dir": str(run_dirs[name]), "summary": summaries[name]}
                 for name in tables},
        "comparison": comparison,
        "markdown": texts[labels[0]]["metrics.md"] if single else comparison["markdown"],
        "files": [str(f) for f in files],
    }
