"""Model selection on the development split, fairness-aware if asked (one rule for every trainer).

A trainer evaluates its model on the dev split at fixed points (every epoch, or every N steps),
computes a dict of figures per evaluation (``weighted_f1``, ``macro_f1``, ``worst_cell_gap``,
``dev_loss``, ...) and keeps the state of the evaluation this rule ranks first:

- ``last``: the final state (no selection);
- ``dev_loss``: the lowest ``dev_loss``;
- ``metric``: the highest ``metric`` (e.g. dev weighted F1);
- ``min_gap``: the smallest ``gap`` (e.g. dev worst-cell gap), ties broken by the higher ``metric``;
- ``constrained``: the highest ``metric`` among the evaluations whose ``gap`` is at most
  ``max_gap``; when none meets the bound, the smallest ``gap`` (so the rule never returns nothing,
  and the result says the bound was not met).

Undefined figures (NaN, e.g. a gap on a dev split with one gender) rank last. Ties go to the
earlier evaluation, so a selection is reproducible.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from llmfair.errors import ConfigError

CRITERIA: tuple[str, ...] = ("last", "dev_loss", "metric", "min_gap", "constrained")
SPEECH_SCORE_FIGURES: tuple[str, ...] = ("weighted_f1", "macro_f1", "accuracy")
"""Dev figures a speech-LLM rule may maximise (``selection.metric``; llmfair.speechllm.selection)."""
SPEECH_GAP_FIGURES: tuple[str, ...] = ("worst_cell_gap", "f1_gap_rms", "tpr_gap_rms", "fpr_gap_rms", "dp_gap_rms")
"""Dev gaps a speech-LLM rule may bound or minimise (``selection.gap``; see ``fairness_summary``)."""


@dataclass
class SelectionOptions:
    """Which dev evaluation's state a run keeps (see the module docstring)."""

    criterion: str = field(default="last", metadata={"help": f"one of {CRITERIA}"})
    metric: str = field(default="weighted_f1", metadata={"help": "the dev figure to maximise (metric, constrained)"})
    gap: str = field(default="worst_cell_gap", metadata={"help": "the dev gap to bound or minimise (min_gap, constrained)"})
    max_gap: float | None = field(default=None, metadata={"help": "the bound on the gap (constrained only)"})

    def __post_init__(self) -> None:
        if self.criterion not in CRITERIA:
            raise ConfigError(f"selection.criterion={self.criterion!r}; expected one of {list(CRITERIA)}")
        if self.criterion == "constrained":
            if isinstance(self.max_gap, bool) or not isinstance(self.max_gap, (int, float)) or not self.max_gap >= 0:
                raise ConfigError(f"selection.max_gap={self.max_gap!r}: the constrained criterion needs a bound >= 0 "
                                  "(e.g. 0.05)")
        elif self.max_gap is not None:
            raise ConfigError(f"selection.max_gap is only used by criterion 'constrained' (criterion is "
                              f"{self.criterion!r})")

    @property
    def active(self) -> bool:
        """Whether the rule needs dev evaluations at all."""
        return self.criterion != "last"

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None, *, source: str = "selection") -> "SelectionOptions":
        from llmfair.options import dataclass_from_mapping

        if values is None:
            return cls()
        if not isinstance(values, Mapping):
            raise ConfigError(f"{source}: selection must be a mapping (criterion, metric, gap, max_gap); got {values!r}")
        return dataclass_from_mapping(cls, dict(values), source=source)


def _value(figures: Mapping[str, Any], key: str) -> float:
    value = figures.get(key)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return value


def _rank_key(options: SelectionOptions, figures: Mapping[str, Any]) -> tuple:
    """A sort key, smaller is better; NaN figures sort after every defined one."""
    metric, gap = _value(figures, options.metric), _value(figures, options.gap)
    nan_metric, nan_gap = math.isnan(metric), math.isnan(gap)
    if options.criterion == "dev_loss":
        loss = _value(figures, "dev_loss")
        return (math.isnan(loss), loss if not math.isnan(loss) else 0.0)
    if options.criterion == "metric":
        return (nan_metric, -metric if not nan_metric else 0.0)
    if options.criterion == "min_gap":
        return (nan_gap, gap if not nan_gap else 0.0, nan_metric, -metric if not nan_metric else 0.0)
    feasible = not nan_gap and gap <= float(options.max_gap)  # constrained
    if feasible:
        return (0, nan_metric, -metric if not nan_metric else 0.0)
    return (1, nan_gap, gap if not nan_gap else 0.0, nan_metric, -metric if not nan_metric else 0.0)


def select_evaluation(options: SelectionOptions, history: Sequence[Mapping[str, Any]]) -> int | None:
    """Index of the evaluation ``options`` keeps (None for ``last`` or an empty history).

    Raises:
        ConfigError: an evaluation lacks a figure the rule reads (names the figure and the ones present).
    """
    if not options.active or not history:
        return None
    needed = {"dev_loss": ("dev_loss",), "metric": (options.metric,), "min_gap": (options.gap, options.metric),
              "constrained": (options.gap, options.metric)}[options.criterion]
    missing = [k for k in needed if k not in history[0]]
    if missing:
        raise ConfigError(f"selection.criterion={options.criterion!r} reads {missing}, which the dev evaluation does "
                          f"not compute; it has {sorted(history[0])}")
    keys = [_rank_key(options, figures) for figures in history]
    return min(range(len(keys)), key=lambda i: (keys[i], i))


def meets_bound(options: SelectionOptions, figures: Mapping[str, Any]) -> bool | None:
    """For ``constrained``: whether ``figures`` satisfies the gap bound (None for other rules)."""
    if options.criterion != "constrained":
        return None
    gap = _value(figures, options.gap)
    return not math.isnan(gap) and gap <= float(options.max_gap)
