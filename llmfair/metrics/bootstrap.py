"""Bootstrap confidence intervals for every headline figure, vectorised over replicates.

Two resampling units:

- ``utterance``: resample utterances with replacement. Rows sharing an ``id`` (the modalities of
  one utterance) move together, so paired audio / audio+text comparisons stay paired.
- ``speaker`` (cluster bootstrap): resample speakers with replacement; all their rows follow.
  Utterances of one speaker are correlated, and an utterance-level interval is then too narrow
  (``tests/test_bootstrap.py`` shows it). Rows with an empty ``speaker`` are their own cluster.

How it is vectorised: each row adds ones at fixed positions of the flattened per-cell statistics
(:func:`llmfair.metrics.slicing.row_stat_index`), so a cluster is a sparse vector of counts and a
replicate's statistics are ``Σ_s w_s · cluster_s`` with w the draw counts. Identical clusters are
merged into *types* first: drawing S clusters uniformly with replacement gives type counts
``Multinomial(S, multiplicity_t / S)`` — exactly the distribution of the per-row resample
weights summed by type — so we draw an ``(R, T)`` count matrix and multiply it by the sparse
``(T, D)`` type statistics. For a single-label table T ≤ cells·K², however many rows there are.
Then every metric and gap is computed for all R replicates at once by the same functions that give
the point estimates (:mod:`llmfair.metrics.fairness`).

A replicate in which a cell (or a class's positives) is empty gives NaN for the figures that need
it; intervals are nan-aware (``confidence`` 0.95 → 2.5 and 97.5 % percentiles) and every interval
reports how many replicates were ``usable``.

Intervals (``docs/intervals.md``). Every reported interval contains its point estimate.

- Metrics, per-gender values and the signed ``male_minus_female``: the percentile interval,
  extended to the estimate in the rare case it excludes it (:func:`containing`).
- ``gap`` = |male − female|: the :func:`folded_interval` of the ``male_minus_female`` interval.
  The percentile interval of the replicates ``|d*|`` is not used: ``|·|`` is biased away from 0
  under resampling, so near a zero gap it lies above both the estimate and the truth.
- Fairness figures, each a norm of a vector of signed gaps (:func:`fairness_components`): the RMS
  and DP figures by :func:`norm_ball_interval` (the bootstrap ball of the signed per-class gaps
  mapped through the figure), ``worst_cell_gap`` by :func:`folded_box_interval` (a simultaneous
  max-t box of the signed cell gaps, folded, maximised).

Resolution. Next to its interval every figure of :func:`summary_dict` carries the smallest
difference this table can resolve: ``resolvable_difference = z_{(1+confidence)/2} · √2 · SE``, SE
being the bootstrap standard error of the figure (nan-aware standard deviation of the replicates,
ddof = 1). Two *independent* tables of this size with figures differing by less than that have a
difference whose interval ``Δ ± z · √(SE_A² + SE_B²) = Δ ± z · √2 · SE`` contains 0 — the √2 is the
second table's noise. It answers "could this report tell apart a run that is 0.01 better?" before
anyone compares. Runs scored on the *same* rows are compared by the paired bootstrap of
:mod:`llmfair.metrics.paired`, which removes the noise the runs share and resolves smaller
differences — which is why paired comparisons exist.
"""
from __future__ import annotations

import logging
import math
import warnings
from statistics import NormalDist
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
from scipy import sparse

from llmfair.errors import ConfigError
from llmfair.metrics.fairness import (
    DEFAULT_CELLS,
    FAIRNESS_FIGURES,
    _class_gap_values,
    _gap_values,
    _nanmax,
    _rms,
    _summary_values,
    fairness_summary,
    gender_gaps,
)
from llmfair.metrics.slicing import DEFAULT_BY, HEADLINE_METRICS, SliceMetrics, cell_index, cell_shape, row_stat_index
from llmfair.predictions import Predictions

logger = logging.getLogger(__name__)

UNITS: tuple[str, ...] = ("utterance", "speaker")
GAP_FIGURES: tuple[str, ...] = ("female", "male", "male_minus_female", "gap")
_SIGNATURE_LIMIT = 4_000_000
"""Largest clusters × rows-per-cluster array built to merge identical clusters."""
_CHUNK_ENTRIES = 4_000_000
"""Draw-count entries (replicates × cluster types) generated at a time."""


def cluster_ids(pred: Predictions, unit: str) -> np.ndarray:
    """(n,) cluster of every row for the bootstrap ``unit`` (``utterance``: ``id``; ``speaker``)."""
    if unit not in UNITS:
        raise ConfigError(f"unknown bootstrap unit {unit!r}; expected one of {list(UNITS)}")
    column = "id" if unit == "utterance" else "speaker"
    values = pred.frame[column].astype(str).to_numpy()
    codes, uniques = pd.factorize(values)
    codes = codes.astype(np.int64)
    if unit == "speaker":
        empty = values == ""
        if empty.any():
            logger.warning("%d rows of %s have no speaker; each is its own bootstrap cluster", int(empty.sum()), pred.source)
            codes[empty] = len(uniques) + np.arange(int(empty.sum()))
            _, codes = np.unique(codes, return_inverse=True)
    return codes.astype(np.int64)


def _cluster_type_map(
    idx: np.ndarray, clusters: np.ndarray, n_stats: int
) -> tuple[sparse.csr_matrix, np.ndarray, np.ndarray]:
    """Merge identical clusters: (type statistics (T, D) sparse, multiplicity (T,), type of every
    cluster (num_clusters,)).

    ``idx`` is an ``(n, m)`` stat index (:func:`~llmfair.metrics.slicing.row_stat_index`, or
    several runs' indices side by side with offsets, as in :mod:`llmfair.metrics.paired`) and
    ``clusters`` the ``(n,)`` cluster of every row. Clusters whose rows add ones at the same
    positions are one type; the type map lets explicit per-cluster draw counts be summed by type.
    """
    n, m = idx.shape
    num_clusters = int(clusters.max()) + 1
    if m == 1:
        row_code = idx[:, 0]
    else:
        _, row_code = np.unique(idx, axis=0, return_inverse=True)
        row_code = row_code.reshape(-1)
    sizes = np.bincount(clusters, minlength=num_clusters)
    width = int(sizes.max())
    if num_clusters * width <= _SIGNATURE_LIMIT:
        order = np.lexsort((row_code, clusters))
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        position = np.arange(n) - starts[clusters[order]]
        signature = np.full((num_clusters, width), -1, dtype=np.int64)
        signature[clusters[order], position] = row_code[order]
        _, representative, type_of_cluster, multiplicity = np.unique(
            signature, axis=0, return_index=True, return_inverse=True, return_counts=True
        )
        type_of_cluster = type_of_cluster.reshape(-1)
    else:
        representative = np.arange(num_clusters)
        type_of_cluster = np.arange(num_clusters)
        multiplicity = np.ones(num_clusters, dtype=np.int64)
    is_rep = np.zeros(num_clusters, dtype=bool)
    is_rep[representative] = True
    rows = np.flatnonzero(is_rep[clusters])
    type_rows = np.repeat(type_of_cluster[clusters[rows]], m)
    stats = sparse.csr_matrix(
        (np.ones(rows.size * m, dtype=np.int64), (type_rows, idx[rows].ravel())),
        shape=(len(multiplicity), n_stats),
    )
    return stats, multiplicity.astype(np.int64), type_of_cluster.astype(np.int64)


def _cluster_types(idx: np.ndarray, clusters: np.ndarray, n_stats: int) -> tuple[sparse.csr_matrix, np.ndarray]:
    """Merge identical clusters: (type statistics (T, D) sparse, multiplicity (T,))."""
    stats, multiplicity, _ = _cluster_type_map(idx, clusters, n_stats)
    return stats, multiplicity


def _multinomial_type_counts(
    multiplicity: np.ndarray, n_resamples: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """Type counts of ``n_resamples`` replicates, ``Multinomial(S, multiplicity / S)`` each (S = the
    number of clusters), in chunks of at most ``_CHUNK_ENTRIES`` entries: ``(chunk, T)`` arrays."""
    num_clusters = int(multiplicity.sum())
    pvals = multiplicity / num_clusters
    chunk = max(1, _CHUNK_ENTRIES // max(1, len(multiplicity)))
    for start in range(0, n_resamples, chunk):
        yield rng.multinomial(num_clusters, pvals, size=min(n_resamples, start + chunk) - start)


def _uniform_type_counts(
    type_of_cluster: np.ndarray, num_types: int, n_resamples: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """The same distribution as :func:`_multinomial_type_counts`, drawn as S uniform cluster indices
    per replicate and counted by type: O(S) per replicate instead of O(T) binomial draws, the
    cheaper way when almost every cluster is its own type (e.g. several runs side by side)."""
    num_clusters = len(type_of_cluster)
    chunk = max(1, _CHUNK_ENTRIES // max(1, num_clusters, num_types))
    for start in range(0, n_resamples, chunk):
        size = min(n_resamples, start + chunk) - start
        drawn = type_of_cluster[rng.integers(0, num_clusters, size=(size, num_clusters))]
        drawn += (np.arange(size, dtype=np.int64) * num_types)[:, None]
        yield np.bincount(drawn.ravel(), minlength=size * num_types).reshape(size, num_types)


def _replicate_statistics(
    type_stats: sparse.csr_matrix, count_chunks: Iterable[np.ndarray], n_resamples: int
) -> np.ndarray:
    """``(R, D)`` replicate statistics ``Σ_t counts_t · type_t`` from chunks of ``(chunk, T)`` type counts."""
    out = np.empty((n_resamples, type_stats.shape[1]), dtype=np.int64)
    stats_t = type_stats.T.tocsr()
    start = 0
    for draws in count_chunks:
        stop = start + len(draws)
        out[start:stop] = (stats_t @ draws.T).T
        start = stop
    if start != n_resamples:
        raise ConfigError(f"got type counts for {start} replicates; expected {n_resamples}")
    return out


def resample_statistics(
    pred: Predictions,
    by: Sequence[str] = DEFAULT_BY,
    *,
    unit: str = "utterance",
    n_resamples: int = 1000,
    seed: int = 0,
) -> SliceMetrics:
    """Per-cell statistics of ``n_resamples`` bootstrap replicates: a SliceMetrics with batch ``(R,)``.

    The cells are those of ``SliceMetrics.from_predictions(pred, by)`` (a cell may be empty in a
    replicate). Seeded with ``numpy.random.default_rng(seed)``.
    """
    if n_resamples < 1:
        raise ConfigError(f"n_resamples must be at least 1; got {n_resamples}")
    keys, inverse = cell_index(pred, by)
    shape = cell_shape(pred)
    n_stats = len(keys) * shape[0] * shape[1]
    idx = row_stat_index(pred, inverse)
    clusters = cluster_ids(pred, unit)
    type_stats, multiplicity = _cluster_types(idx, clusters, n_stats)
    num_clusters = int(multiplicity.sum())
    rng = np.random.default_rng(seed)
    out = _replicate_statistics(type_stats, _multinomial_type_counts(multiplicity, n_resamples, rng), n_resamples)
    logger.debug("bootstrap: %d %s clusters in %d types, %d replicates", num_clusters, unit, len(multiplicity), n_resamples)
    return SliceMetrics(keys, out.reshape(n_resamples, len(keys), *shape), classes=pred.classes, multilabel=pred.multilabel)


def percentile_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nan-aware percentile interval over axis 0: (low, high, usable replicates).

    The plain percentile interval of the replicates, as it is; the report's intervals add
    :func:`containing` (and fold absolute gaps, :func:`folded_interval`).
    """
    _check_confidence(confidence)
    values = np.asarray(values, dtype=np.float64)
    alpha = 100.0 * (1.0 - confidence) / 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN figures give NaN intervals
        low, high = np.nanpercentile(values, [alpha, 100.0 - alpha], axis=0)
    return low, high, (~np.isnan(values)).sum(axis=0)


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must lie in (0, 1); got {confidence}")


def containing(low: np.ndarray, high: np.ndarray, point: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The interval ``[low, high]`` extended, where needed, to contain ``point``.

    A percentile interval excludes its point estimate only when fewer than (1 − confidence)/2 of
    the replicates fall on one side of it — a figure whose bootstrap distribution is strongly
    skewed or median-biased (a ratio such as F1 on a handful of rows). Extending the interval to
    the estimate only widens it (coverage cannot drop, and a paired Δ is never newly
    ``resolved`` by it), and every reported interval contains its estimate. NaN bounds (no usable
    replicate) and NaN points (an undefined figure) are left as they are. ``docs/intervals.md``.
    """
    low, high, point = (np.asarray(a, dtype=np.float64) for a in (low, high, point))
    defined = ~np.isnan(point)
    low = np.where(defined & ~np.isnan(low), np.fmin(low, point), low)
    high = np.where(defined & ~np.isnan(high), np.fmax(high, point), high)
    return low, high


def folded_interval(low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The interval of ``|d|`` from an interval ``[low, high]`` of the signed ``d``: its image
    under ``|·|``, ``[0, max(|low|, |high|)]`` when it contains 0, else
    ``[min(|low|, |high|), max(|low|, |high|)]``.

    Why not the percentile interval of the replicates ``|d*|``: ``|·|`` is not smooth at 0, and
    ``E|d̂ + e| > |d̂|`` for any noise e, so near a zero gap every replicate ``|d*|`` lies above
    ``|d̂|`` and the interval excludes both the estimate and the truth (a gap of 0.002 reported
    with [0.003, 0.234]). The signed difference is a smooth figure whose percentile interval is
    valid at 0, and ``d ∈ [low, high]`` implies that ``|d|`` lies in the folded interval, so the
    folded interval has at least the coverage of the signed one and contains ``|d̂|`` whenever ``[low, high]``
    contains ``d̂`` (:func:`containing`). NaN stays NaN.
    """
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    a, b = np.abs(low), np.abs(high)
    with np.errstate(invalid="ignore"):
        straddles = (low <= 0.0) & (high >= 0.0)
    lower = np.where(straddles, 0.0, np.minimum(a, b))
    upper = np.maximum(a, b)
    missing = np.isnan(low) | np.isnan(high)
    return np.where(missing, np.nan, lower), np.where(missing, np.nan, upper)


# --------------------------------------------------------------------- absolute (norm) figures
def _per_class(magnitudes: np.ndarray) -> np.ndarray:
    """``(..., pairs, K) → (..., K)``: the largest gap over group pairs (for two groups, the one)."""
    return np.max(magnitudes, axis=-2)


FIGURE_NORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "tpr_gap_rms": lambda m: _rms(_per_class(m)),
    "fpr_gap_rms": lambda m: _rms(_per_class(m)),
    "f1_gap_rms": lambda m: _rms(_per_class(m)),
    "dp_gap_sum": lambda m: np.sqrt(np.square(_per_class(m)).sum(axis=-1)),
    "dp_gap_rms": lambda m: np.sqrt(np.square(_per_class(m)).mean(axis=-1)),
    "worst_cell_gap": lambda m: _nanmax(_per_class(m), axis=-1),
}
"""Every fairness figure as a function of the magnitudes ``|d|`` of its signed components
``(..., pairs, C)`` (:func:`fairness_components`); non-decreasing in every magnitude, and — applied
to ``|d|`` — a norm of ``d``. Applied to the point's components they give the figure bit for bit."""
FAIRNESS_INTERVALS: dict[str, str] = {
    "tpr_gap_rms": "norm_ball", "fpr_gap_rms": "norm_ball", "f1_gap_rms": "norm_ball",
    "dp_gap_sum": "norm_ball", "dp_gap_rms": "norm_ball", "worst_cell_gap": "folded_box",
}
"""How each fairness figure's interval is built (``docs/intervals.md``): ``norm_ball`` —
:func:`norm_ball_interval`; ``folded_box`` — :func:`folded_box_interval`."""
GAP_INTERVALS: dict[str, str] = {"female": "percentile", "male": "percentile", "male_minus_female": "percentile",
                                 "gap": "folded"}
"""How each figure of a gap row gets its interval: ``gap`` = |male − female| is the
:func:`folded_interval` of the ``male_minus_female`` interval."""


def fairness_components(
    class_values: dict[str, np.ndarray], gap_values: np.ndarray, worst_metric: int = 0
) -> dict[str, np.ndarray]:
    """The signed components of every fairness figure, ``(*batch, pairs, C)`` each.

    ``tpr``/``fpr``/``f1``/``dp`` figures: per class the rate of group j minus that of group i for
    every group pair i < j (one pair, male − female, for gender); ``worst_cell_gap``: per cell
    male − female of the worst-cell metric (one "pair" axis of length 1), or the overall
    difference when there are no cells. ``FIGURE_NORMS[f](np.abs(components[f]))`` is figure f.
    ``class_values`` and ``gap_values`` are those of
    :func:`~llmfair.metrics.fairness._class_gap_values` and ``_gap_values``.
    """
    def pairwise(rates: np.ndarray) -> np.ndarray:
        g = rates.shape[-2]
        return np.stack([rates[..., j, :] - rates[..., i, :] for i in range(g) for j in range(i + 1, g)], axis=-2)

    cells = gap_values[..., :-1, 1, worst_metric] - gap_values[..., :-1, 0, worst_metric]
    if not cells.shape[-1]:
        cells = gap_values[..., -1:, 1, worst_metric] - gap_values[..., -1:, 0, worst_metric]
    rates = {"tpr_gap_rms": "tpr", "fpr_gap_rms": "fpr", "f1_gap_rms": "f1", "dp_gap_sum": "selection_rate",
             "dp_gap_rms": "selection_rate"}
    out = {f: pairwise(class_values[r]) for f, r in rates.items()}
    out["worst_cell_gap"] = cells[..., None, :]
    return out


def _max_t_box(point: np.ndarray, replicates: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Simultaneous box ``d̂_c ± q · s_c`` for J ≥ 2 signed components (``point`` (J,),
    ``replicates`` (R, J), NaN = undefined in that replicate): s_c the bootstrap SE of component c
    and q the ``confidence`` quantile of ``max_c |d*_c − d̂_c| / s_c`` — the max-t construction of
    simultaneous intervals (Westfall & Young 1993; Hothorn et al. 2008), whose coverage is joint
    over the components. A component whose replicates do not vary is scaled by its largest
    deviation (1 if none)."""
    deviation = replicates - point
    scale = bootstrap_standard_error(replicates)
    spread = np.fmax.reduce(np.abs(deviation), axis=0)
    scale = np.where(scale > 0, scale, np.where(spread > 0, spread, 1.0))
    t = np.fmax.reduce(np.abs(deviation) / scale, axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        q = np.nanpercentile(t, 100.0 * confidence)
    return point - q * scale, point + q * scale


def folded_box_interval(
    point: np.ndarray, replicates: np.ndarray, norm: Callable[[np.ndarray], np.ndarray], confidence: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Interval of ``norm(|d|)`` (non-decreasing in every ``|d_c|``) from a simultaneous box for the
    signed components d: the box's image under ``norm(|·|)``.

    ``point`` is ``(*batch, pairs, C)``, ``replicates`` ``(R, *batch, pairs, C)`` (NaN: undefined).
    Per batch entry the box over the components defined at the point is the max-t box of
    :func:`_max_t_box`, which holds d with ``confidence`` *jointly* — with marginal intervals a
    figure of several zero gaps would exclude 0 whenever any one of them does. Each side is folded
    (:func:`folded_interval`); since ``norm`` is non-decreasing in every magnitude, the image of the
    box is ``[norm(folded lows), norm(folded highs)]``, which contains the point's figure. With one
    component the box is its percentile interval (extended to the point, :func:`containing`), so
    the interval is that of a single gap. A component defined at the point without usable
    replicates makes the interval NaN.
    """
    point = np.asarray(point, dtype=np.float64)
    replicates = np.asarray(replicates, dtype=np.float64)
    shape = point.shape
    width = shape[-2] * shape[-1]
    flat_point = point.reshape(-1, width)
    flat_reps = replicates.reshape(replicates.shape[0], -1, width)
    low = np.full(flat_point.shape, np.nan)
    high = np.full(flat_point.shape, np.nan)
    incomplete = np.zeros(len(flat_point), dtype=bool)
    for b in range(len(flat_point)):  # batch entries: one per run
        x = flat_reps[:, b, :]
        defined = ~np.isnan(flat_point[b])
        usable = defined & (~np.isnan(x)).any(axis=0)
        incomplete[b] = bool((defined & ~usable).any())
        if usable.sum() == 1:
            lo, hi, _ = percentile_interval(x[:, usable], confidence)
            low[b, usable], high[b, usable] = containing(lo, hi, flat_point[b, usable])
        elif usable.any():
            low[b, usable], high[b, usable] = _max_t_box(flat_point[b, usable], x[:, usable], confidence)
    low, high = folded_interval(low, high)
    lower, upper = norm(low.reshape(shape)), norm(high.reshape(shape))
    lost = incomplete.reshape(shape[:-2]) | np.isnan(norm(np.abs(point)))
    return np.where(lost, np.nan, lower), np.where(lost, np.nan, upper)


def norm_ball_interval(
    point: np.ndarray, replicates: np.ndarray, norm: Callable[[np.ndarray], np.ndarray], confidence: float = 0.95,
    estimate: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Interval of ``N(d) = norm(|d|)``, a norm of the signed components d, from the bootstrap
    ball ``{d : N(d − d̂) ≤ q}`` with q the ``confidence`` quantile of ``N(d* − d̂)``:
    ``[max(0, N(d̂) − q), N(d̂) + q]``.

    ``d* − d̂`` is a smooth (centred, signed) quantity whose bootstrap distribution stands in for
    that of ``d̂ − d`` whatever d is, zero included; by the triangle inequality the ball's image
    under N is exactly that interval, so its coverage is at least the ball's. Shapes as for
    :func:`folded_box_interval`; ``estimate`` is N(d̂) when already computed. Components undefined
    in the point or a replicate are left out of that replicate's ``N(d* − d̂)`` (RMS figures
    average over the classes defined in both).
    """
    point = np.asarray(point, dtype=np.float64)
    replicates = np.asarray(replicates, dtype=np.float64)
    theta = norm(np.abs(point)) if estimate is None else np.asarray(estimate, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN deviations give NaN
        q = np.nanpercentile(norm(np.abs(replicates - point)), 100.0 * confidence, axis=0)
    lost = np.isnan(q) | np.isnan(theta)
    return np.where(lost, np.nan, np.maximum(theta - q, 0.0)), np.where(lost, np.nan, theta + q)


def absolute_interval(
    figure: str, point: np.ndarray, replicates: np.ndarray, confidence: float = 0.95,
    estimate: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The interval of fairness figure ``figure`` by its method in :data:`FAIRNESS_INTERVALS`, from
    its signed components (:func:`fairness_components`) at the point and on the replicates."""
    norm = FIGURE_NORMS[figure]
    if FAIRNESS_INTERVALS[figure] == "norm_ball":
        return norm_ball_interval(point, replicates, norm, confidence, estimate)
    return folded_box_interval(point, replicates, norm, confidence)


def bootstrap_standard_error(values: np.ndarray) -> np.ndarray:
    """Nan-aware standard deviation (ddof = 1) over axis 0 of replicate figures: the bootstrap SE.
    NaN where fewer than two replicates are usable."""
    values = np.asarray(values, dtype=np.float64)
    ok = ~np.isnan(values)
    count = ok.sum(axis=0)
    mean = np.divide(np.where(ok, values, 0.0).sum(axis=0), count, out=np.zeros(count.shape), where=count > 0)
    squares = np.where(ok, values - mean, 0.0) ** 2
    out = np.full(count.shape, np.nan)
    np.divide(squares.sum(axis=0), count - 1, out=out, where=count > 1)
    return np.sqrt(out)


def resolvable_difference(se: np.ndarray | float, confidence: float = 0.95) -> np.ndarray:
    """``z_{(1+confidence)/2} · √2 · se``: the smallest difference between two independent tables,
    each with standard error ``se``, whose ``confidence`` interval excludes 0 (module docstring)."""
    _check_confidence(confidence)
    return NormalDist().inv_cdf((1.0 + confidence) / 2.0) * math.sqrt(2.0) * np.asarray(se, dtype=np.float64)


# --------------------------------------------------------------------------- headline figures
def _ordered_union(*parts: Sequence[str]) -> tuple[str, ...]:
    out: list[str] = []
    for part in parts:
        out.extend(c for c in part if c not in out)
    return tuple(out)


def _figure_arrays(
    sm: SliceMetrics, *, metrics: Sequence[str], by: Sequence[str], cells: Sequence[str], group_column: str,
    worst_cell_metric: str,
) -> dict[str, Any]:
    """Every headline figure of ``sm`` (point or replicate statistics) as arrays with sm's batch axes."""
    overall = np.stack([sm.merge(()).metric(m)[..., 0] for m in metrics], axis=-1)
    sliced = sm.merge(by)
    slices = np.stack([sliced.metric(m) for m in metrics], axis=-1)
    gap_keys, values = _gap_values(sm, metrics, cells, group_column)
    female, male = values[..., 0, :], values[..., 1, :]
    gaps = np.stack([female, male, male - female, np.abs(male - female)], axis=-1)
    _, class_values = _class_gap_values(sm, group_column)
    _, worst_values = _gap_values(sm, (worst_cell_metric,), cells, group_column)
    summary = _summary_values(class_values, worst_values, 0)
    fairness = np.stack([summary[f] for f in FAIRNESS_FIGURES], axis=-1)
    return {
        "overall": overall, "slices": slices, "slice_keys": sliced.keys, "slice_n": sliced.n,
        "gaps": gaps, "gap_keys": gap_keys, "fairness": fairness,
        "components": fairness_components(class_values, worst_values, 0),
    }


def _intervals(point: dict[str, Any], reps: dict[str, Any], confidence: float) -> dict[str, tuple]:
    """(low, high, usable, se) of every block of :func:`_figure_arrays`, each containing its point.

    Plain figures: the percentile interval, extended to the point where it excludes it
    (:func:`containing`). Gap rows: ``gap`` is the :func:`folded_interval` of the
    ``male_minus_female`` interval. Fairness figures: :func:`absolute_interval` from their signed
    components. ``usable`` and ``se`` are those of the replicate figures themselves.
    """
    out = {}
    for key in ("overall", "slices", "gaps", "fairness"):
        low, high, usable = percentile_interval(reps[key], confidence)
        out[key] = [*containing(low, high, point[key]), usable, bootstrap_standard_error(reps[key])]
    low, high = out["gaps"][:2]
    gap = GAP_FIGURES.index("gap")
    signed = GAP_FIGURES.index("male_minus_female")
    low[..., gap], high[..., gap] = folded_interval(low[..., signed], high[..., signed])
    low, high = out["fairness"][:2]
    for i, figure in enumerate(FAIRNESS_FIGURES):
        low[..., i], high[..., i] = absolute_interval(
            figure, point["components"][figure], reps["components"][figure], confidence, point["fairness"][..., i]
        )
    return {k: tuple(v) for k, v in out.items()}


@dataclass(frozen=True)
class BootstrapResult:
    """Point estimates and bootstrap intervals (module docstring: how each is built), in long tables.

    Attributes:
        overall: ``metric, estimate, low, high, usable`` over all rows.
        slices: the slice columns, ``n``, then ``metric, estimate, low, high, usable``.
        gaps: the cell columns (``all`` for the overall row), ``metric``, ``figure`` (female,
            male, male_minus_female, gap), ``estimate, low, high, usable``; the interval of
            ``gap`` is the folded interval of ``male_minus_female``.
        fairness: ``figure`` (tpr_gap_rms, ..., worst_cell_gap), ``estimate, low, high, usable``;
            intervals by :data:`FAIRNESS_INTERVALS`.

        Every ``[low, high]`` contains ``estimate`` (NaN without usable replicates).

        Every table also has ``se``: the bootstrap standard error (nan-aware standard deviation of
        the replicates, ddof = 1; NaN without replicates), the input of
        :func:`resolvable_difference`.
    """

    unit: str
    n_resamples: int
    seed: int
    confidence: float
    overall: pd.DataFrame
    slices: pd.DataFrame
    gaps: pd.DataFrame
    fairness: pd.DataFrame


def _long(
    keys: pd.DataFrame | None, names: dict[str, Sequence[str]], est: np.ndarray, low, high, usable, se=None
) -> pd.DataFrame:
    """Flatten (cells?, *named axes) arrays into one row per entry."""
    axes = list(names.items())
    grids = np.meshgrid(*[np.arange(len(v)) for _, v in axes], indexing="ij")
    lead = est.shape[: est.ndim - len(axes)]
    n_lead = int(np.prod(lead)) if lead else 1
    flat = {name: np.tile(np.asarray(values, dtype=object)[g.ravel()], n_lead) for (name, values), g in zip(axes, grids)}
    frame = pd.DataFrame(flat)
    if keys is not None:
        per = int(np.prod([len(v) for _, v in axes]))
        frame = pd.concat([keys.loc[keys.index.repeat(per)].reset_index(drop=True), frame], axis=1)
    frame["estimate"] = est.ravel()
    frame["low"] = np.asarray(low).ravel()
    frame["high"] = np.asarray(high).ravel()
    frame["usable"] = np.asarray(usable).ravel().astype(np.int64)
    frame["se"] = np.full(len(frame), np.nan) if se is None else np.asarray(se, dtype=np.float64).ravel()
    return frame


def bootstrap_ci(
    pred: Predictions,
    *,
    unit: str = "utterance",
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    metrics: Sequence[str] = HEADLINE_METRICS,
    by: Sequence[str] = DEFAULT_BY,
    cells: Sequence[str] = DEFAULT_CELLS,
    worst_cell_metric: str = "weighted_f1",
    group_column: str = "gender",
) -> BootstrapResult:
    """Point estimates with bootstrap intervals for the overall metrics, the slices (``by``), the
    male − female gaps per ``cells`` (and overall) and the fairness summary figures.

    ``n_resamples=0`` gives the point estimates with NaN intervals. All replicates are drawn once
    and shared by every figure, so the intervals of different figures come from the same resamples.
    """
    if n_resamples < 0:
        raise ConfigError(f"n_resamples must be non-negative; got {n_resamples}")
    by, cells = tuple(by), tuple(cells)
    fine = _ordered_union(by, cells, (group_column,))
    options = dict(metrics=metrics, by=by, cells=cells, group_column=group_column, worst_cell_metric=worst_cell_metric)
    point = _figure_arrays(SliceMetrics.from_predictions(pred, fine), **options)
    if n_resamples:
        reps = _figure_arrays(resample_statistics(pred, fine, unit=unit, n_resamples=n_resamples, seed=seed), **options)
        intervals = _intervals(point, reps, confidence)
    else:
        intervals = {
            k: (np.full(point[k].shape, np.nan),) * 2 + (np.zeros(point[k].shape, dtype=np.int64),)
            + (np.full(point[k].shape, np.nan),)
            for k in ("overall", "slices", "gaps", "fairness")
        }
    metric_axis = {"metric": list(metrics)}
    slices = _long(point["slice_keys"], metric_axis, point["slices"], *intervals["slices"])
    slices.insert(len(by), "n", np.repeat(point["slice_n"].astype(np.int64), len(metrics)))
    return BootstrapResult(
        unit=unit,
        n_resamples=n_resamples,
        seed=seed,
        confidence=confidence,
        overall=_long(None, metric_axis, point["overall"], *intervals["overall"]),
        slices=slices,
        gaps=_long(point["gap_keys"], {**metric_axis, "figure": list(GAP_FIGURES)}, point["gaps"], *intervals["gaps"]),
        fairness=_long(None, {"figure": list(FAIRNESS_FIGURES)}, point["fairness"], *intervals["fairness"]),
    )


# ------------------------------------------------------------------------------ report dict
def _num(x: Any) -> Any:
    """A JSON value: Python float/int, NaN → None."""
    if isinstance(x, (np.integer, int)) and not isinstance(x, bool):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return None if math.isnan(float(x)) else float(x)
    return x


def _resolution(rows: pd.DataFrame, key: str, confidence: float, active: bool) -> dict[str, Any]:
    """``{figure: resolvable difference}`` of long-table rows (None without replicates)."""
    values = resolvable_difference(rows["se"].to_numpy(), confidence) if active else np.full(len(rows), np.nan)
    return {str(k): _num(v) for k, v in zip(rows[key], values)}


def _ci(rows: pd.DataFrame, key: str) -> tuple[dict[str, list], dict[str, int]]:
    ci = {str(r[key]): [_num(r["low"]), _num(r["high"])] for _, r in rows.iterrows()}
    usable = {str(r[key]): int(r["usable"]) for _, r in rows.iterrows()}
    return ci, usable


def summary_dict(
    pred: Predictions,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    unit: str = "utterance",
    confidence: float = 0.95,
) -> dict[str, Any]:
    """The report's metrics block, JSON-serialisable (floats, NaN → None).

    Shape::

        {"n", "label_space": {"name", "classes", "multilabel"},
         "overall": {"accuracy", "weighted_f1", "macro_f1", "ci": {metric: [low, high]}, "usable",
                     "resolution": {metric: smallest resolvable difference}},
         "slices": [{"language", "modality", "gender", "n", "accuracy", "weighted_f1", "macro_f1",
                     "ci": {metric: [low, high]}, "usable": {metric: replicates}}],
         "gaps": [{"language", "modality", "metric", "female", "male", "male_minus_female", "gap",
                   "n_female", "n_male", "n_unknown", "ci": {figure: [low, high]}, "usable",
                   "resolution": {"gap", "male_minus_female"}}],
         "fairness": {"tpr_gap_rms", "fpr_gap_rms", "f1_gap_rms", "dp_gap_sum", "dp_gap_rms",
                      "worst_cell_gap", "ci": {figure: [low, high]}, "usable", "resolution": {figure},
                      "worst_cell", "worst_cell_metric", "skipped_classes", "n_unknown_gender"},
         "bootstrap": {"unit", "n_resamples", "seed", "confidence", "method", "interval_methods",
                       "min_usable", "resolution_z"}}

    ``method`` (``percentile``) is that of the metrics; ``interval_methods`` names the method of
    every absolute figure (``gap``: ``folded``; fairness figures: :data:`FAIRNESS_INTERVALS`).
    Every interval contains its estimate (module docstring, ``docs/intervals.md``).

    The gap rows with language = modality = ``"all"`` are the overall (all known-gender rows)
    gaps. For multi-label tables ``accuracy`` is the Hamming accuracy.

    ``resolution`` is :func:`resolvable_difference` of the figure's bootstrap SE, i.e.
    ``resolution_z · √2 · SE`` with ``resolution_z = z_{(1+confidence)/2}``: the smallest difference
    to another independent table of this size that an interval at ``confidence`` would resolve
    (module docstring). None without replicates (``n_resamples=0``).
    """
    result = bootstrap_ci(pred, unit=unit, n_resamples=n_resamples, seed=seed, confidence=confidence)
    metrics = list(HEADLINE_METRICS)
    active = n_resamples > 0
    overall_ci, overall_usable = _ci(result.overall, "metric")
    overall = {m: _num(v) for m, v in zip(result.overall["metric"], result.overall["estimate"])}
    slices = []
    for _, group in result.slices.groupby(list(DEFAULT_BY), sort=False):
        first = group.iloc[0]
        ci, usable = _ci(group, "metric")
        slices.append(
            {**{c: str(first[c]) for c in DEFAULT_BY}, "n": int(first["n"]),
             **{m: _num(v) for m, v in zip(group["metric"], group["estimate"])}, "ci": ci, "usable": usable}
        )
    counts = gender_gaps(pred, metrics, DEFAULT_CELLS)
    gaps = []
    for _, group in result.gaps.groupby(list(DEFAULT_CELLS) + ["metric"], sort=False):
        first = group.iloc[0]
        ci, usable = _ci(group, "figure")
        match = counts[(counts["language"] == first["language"]) & (counts["modality"] == first["modality"])
                       & (counts["metric"] == first["metric"])].iloc[0]
        gaps.append(
            {"language": str(first["language"]), "modality": str(first["modality"]), "metric": str(first["metric"]),
             **{f: _num(v) for f, v in zip(group["figure"], group["estimate"])},
             **{k: int(match[k]) for k in ("n_female", "n_male", "n_unknown")}, "ci": ci, "usable": usable,
             "resolution": {f: v for f, v in _resolution(group, "figure", confidence, active).items()
                            if f in ("gap", "male_minus_female")}}
        )
    summary = fairness_summary(pred)
    fair_ci, fair_usable = _ci(result.fairness, "figure")
    fairness = {f: _num(v) for f, v in zip(result.fairness["figure"], result.fairness["estimate"])}
    fairness.update(
        ci=fair_ci, usable=fair_usable, resolution=_resolution(result.fairness, "figure", confidence, active),
        worst_cell={k: str(v) for k, v in summary["worst_cell"].items()},
        worst_cell_metric=summary["worst_cell_metric"], skipped_classes=summary["skipped_classes"],
        n_unknown_gender=summary["n_unknown_gender"],
    )
    all_usable = pd.concat([result.overall, result.slices, result.gaps, result.fairness])["usable"]
    space = pred.label_space
    return {
        "n": pred.n,
        "label_space": {"name": space.name, "classes": list(pred.classes), "multilabel": pred.multilabel},
        "overall": {**{m: overall[m] for m in metrics}, "ci": overall_ci, "usable": overall_usable,
                    "resolution": _resolution(result.overall, "metric", confidence, active)},
        "slices": slices,
        "gaps": gaps,
        "fairness": fairness,
        "bootstrap": {
            "unit": unit, "n_resamples": n_resamples, "seed": seed, "confidence": confidence,
            "method": "percentile", "interval_methods": {"gap": GAP_INTERVALS["gap"], **FAIRNESS_INTERVALS},
            "min_usable": int(all_usable.min()) if n_resamples else 0,
            "resolution_z": NormalDist().inv_cdf((1.0 + confidence) / 2.0) if active else None,
        },
    }
