"""Evaluation reports: ``metrics.json``, Markdown and CSV tables, PNG plots, run comparisons.

- :func:`write_report` (``llmfair report``): the report directory of one or several predictions
  tables.
- :mod:`~llmfair.report.tables`: tables and the side-by-side comparison from
  :func:`llmfair.metrics.summary_dict`, and the paired differences of
  :func:`llmfair.metrics.paired_comparison`.
- :mod:`~llmfair.report.plots`: the PNG figures (matplotlib is imported only when plotting).
- :mod:`~llmfair.report.front`: fairness–accuracy fronts of a sweep (``front.csv``, ``front.png``).
"""
from llmfair.report.front import FRONT_FIGURES, format_options, front_figures, front_frame, pareto_mask, write_front
from llmfair.report.tables import (
    comparison_frame,
    comparison_markdown,
    flatten_summary,
    format_ci,
    gaps_frame,
    paired_markdown,
    slices_frame,
    summary_markdown,
)
from llmfair.report.writer import check_same_label_space, run_names, system_groups, write_report

__all__ = [
    "check_same_label_space", "comparison_frame", "comparison_markdown", "flatten_summary", "format_ci",
    "gaps_frame", "paired_markdown", "run_names", "slices_frame", "summary_markdown", "system_groups",
    "write_report",
]
__all__ += ["FRONT_FIGURES", "format_options", "front_figures", "front_frame", "pareto_mask", "write_front"]
