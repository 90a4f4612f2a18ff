"""Metrics: pure vectorised functions over per-cell statistics built once from a predictions table.

- :mod:`~llmfair.metrics.classification`: single-label metrics from confusion counts.
- :mod:`~llmfair.metrics.multilabel`: multi-label (binarised at > 1/K) metrics.
- :mod:`~llmfair.metrics.slicing`: :class:`SliceMetrics`, any metric for any grouping of rows.
- :mod:`~llmfair.metrics.fairness`: gender gaps, RMS TPR/FPR/F1 gaps, DP gaps, ΔSP,
  correction-net figures, gain.
- :mod:`~llmfair.metrics.bootstrap`: utterance and speaker (cluster) bootstrap intervals — each
  containing its estimate; absolute gaps folded from their signed differences
  (``docs/intervals.md``) — and the report's :func:`summary_dict` (with the resolvable difference
  of every figure).
- :mod:`~llmfair.metrics.paired`: paired bootstrap comparisons of systems on the same rows, seeds
  aggregated (:func:`paired_comparison`).
"""
from llmfair.metrics.bootstrap import (
    FAIRNESS_INTERVALS,
    UNITS,
    BootstrapResult,
    bootstrap_ci,
    cluster_ids,
    containing,
    fairness_components,
    folded_box_interval,
    folded_interval,
    norm_ball_interval,
    percentile_interval,
    resample_statistics,
    resolvable_difference,
    summary_dict,
)
from llmfair.metrics.classification import (
    accuracy,
    accuracy_from_confusion,
    class_counts,
    confusion_matrix,
    f1_per_class,
    fpr_from_counts,
    macro_f1,
    macro_f1_from_counts,
    per_class_fpr,
    per_class_tpr,
    precision_from_counts,
    selection_rate_from_counts,
    tpr_from_counts,
    weighted_f1,
    weighted_f1_from_counts,
)
from llmfair.metrics.fairness import (
    FAIRNESS_FIGURES,
    correction_net_figures,
    fairness_summary,
    gain,
    gender_gaps,
    per_class_gaps,
    statistical_parity,
    two_sided_parity,
)
from llmfair.metrics.multilabel import (
    binarize_labels,
    binarize_predictions,
    hamming_accuracy,
    hamming_accuracy_from_counts,
    macro_f1_from_multilabel_counts,
    multilabel_counts,
    multilabel_fpr,
    multilabel_macro_f1,
    multilabel_tpr,
    multilabel_weighted_f1,
    weighted_f1_from_multilabel_counts,
)
from llmfair.metrics.paired import (
    HEADLINE_FIGURES,
    PAIRED_METHOD,
    PairedFigures,
    align_runs,
    compare_systems,
    paired_comparison,
    paired_figures,
    seed_weights,
    speaker_counts,
)
from llmfair.metrics.slicing import (
    DEFAULT_BY,
    HEADLINE_METRICS,
    PER_CLASS_METRICS,
    SCALAR_METRICS,
    SliceMetrics,
    cell_index,
)

__all__ = [
    "BootstrapResult", "DEFAULT_BY", "FAIRNESS_FIGURES", "FAIRNESS_INTERVALS", "containing", "fairness_components",
    "folded_box_interval", "folded_interval", "norm_ball_interval", "HEADLINE_FIGURES", "HEADLINE_METRICS",
    "PAIRED_METHOD", "PER_CLASS_METRICS", "PairedFigures", "SCALAR_METRICS", "SliceMetrics", "UNITS",
    "accuracy", "accuracy_from_confusion", "align_runs", "binarize_labels", "binarize_predictions",
    "bootstrap_ci", "cell_index", "class_counts", "cluster_ids", "compare_systems", "confusion_matrix",
    "correction_net_figures", "f1_per_class", "fairness_summary", "fpr_from_counts", "gain", "gender_gaps",
    "hamming_accuracy", "hamming_accuracy_from_counts", "macro_f1", "macro_f1_from_counts",
    "macro_f1_from_multilabel_counts", "multilabel_counts", "multilabel_fpr", "multilabel_macro_f1",
    "multilabel_tpr", "multilabel_weighted_f1", "paired_comparison", "paired_figures", "per_class_fpr",
    "per_class_gaps", "per_class_tpr", "percentile_interval", "precision_from_counts",
    "resample_statistics", "resolvable_difference", "seed_weights", "selection_rate_from_counts",
    "speaker_counts", "statistical_parity", "summary_dict", "tpr_from_counts", "two_sided_parity",
    "weighted_f1", "weighted_f1_from_counts", "weighted_f1_from_multilabel_counts",
]
