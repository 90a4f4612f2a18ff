"""Paired bootstrap comparisons of systems evaluated on the same rows, with seeds aggregated.

Why paired: two runs scored on the same test rows share the rows' difficulty. Their figures are
strongly correlated, so the difference of two independent intervals (or the overlap of two
single-run intervals) grossly overstates the uncertainty of their *difference*. Resampling the
rows **jointly** — every bootstrap replicate draws one multiset of clusters and scores every run
on it — keeps that correlation: the replicate difference ``Δ* = B* − A*`` varies only by the rows
on which the runs disagree, and its interval is correspondingly narrower. This is the comparison
a report needs to say whether B differs from A ("resolved") or not.

Rows. All runs must hold the same rows: the same set of ``(id, modality)`` keys with the same
``label``, ``language``, ``gender`` and ``speaker`` per row (otherwise :class:`DataError`, naming
both sources and the first differing key or column). Every run is aligned to the reference run's
row order. The resampling unit is that of :mod:`llmfair.metrics.bootstrap`: ``utterance`` (rows
sharing an ``id`` — the modalities of one utterance — move together) or ``speaker`` (cluster
bootstrap over ``speaker``; empty speakers are their own cluster).

Vectorised like the single-run bootstrap: the runs' per-row stat indices
(:func:`~llmfair.metrics.slicing.row_stat_index`) are put side by side with an offset per run, so a
cluster is one sparse vector over the statistics of *all* runs; identical clusters are merged into
types and a replicate's statistics of every run are one product of draw counts with the type
matrix. The replicate statistics are split back into runs as a batch axis — a
:class:`~llmfair.metrics.slicing.SliceMetrics` of batch ``(R, M)`` — and every figure is computed
by the same function that gives the single-run point estimates and intervals
(``bootstrap._figure_arrays``), so a paired figure is the report's figure, computed on a resample.

Figures (keys): the overall ``accuracy``, ``weighted_f1``, ``macro_f1``; the fairness figures
``tpr_gap_rms``, ``fpr_gap_rms``, ``f1_gap_rms``, ``dp_gap_sum``, ``dp_gap_rms``,
``worst_cell_gap``; and per (language, modality) cell and overall (``all/all``) the absolute
male − female gap of each metric, ``gap/<language>/<modality>/<metric>``. A table without both
female and male rows has undefined gap and fairness figures (a warning, values None).

Seeds. A *system* is a list of runs — its seeds (training seeds, say) — on the same rows. Its
figure is the **mean over its seeds**. Two sources of noise are in play: which rows were drawn
(the test set) and which seeds were trained. The interval comes from a two-level bootstrap: each
replicate resamples the rows (one draw shared by every system and seed) **and** each system's
seeds with replacement (``Multinomial(S, 1/S)`` weights per system per replicate, independent
across systems, seeded by ``seed``); the replicate value is the weighted mean of the per-seed
replicate figures. So ``seed_std`` (the standard deviation over seeds of the point figure,
ddof = 1) shows the seed noise alone, while the interval covers both row and seed noise. With one
seed per system the seed weights are all one and this is the plain paired bootstrap.

Paired Δ of system B against the reference A: ``delta = mean_B − mean_A``; replicate
``Δ* = agg_B* − agg_A*`` on the same resampled rows; a percentile interval of Δ* at
``confidence``, extended to ``delta`` where it excludes it; a two-sided bootstrap p-value
``min(1, 2 · min(P(Δ* ≤ 0), P(Δ* ≥ 0)))`` over the usable (non-NaN) replicates (0 when no
replicate falls on the other side of 0: read it as ``p < 2 / usable``); ``resolved`` when the
interval excludes 0.

Intervals (``docs/intervals.md``): every reported interval contains its estimate. A system's
metrics: the percentile interval of its replicates (extended to the mean where it excludes it).
A system's absolute figures (``gap/...`` and the fairness figures) are built from their *signed*
components, as in a run's report (:mod:`llmfair.metrics.bootstrap`): with one seed the folded
(``gap/...``), max-t box (``worst_cell_gap``) or norm-ball (RMS and DP figures) interval; with
several seeds the mean ± the quantile of a triangle-inequality bound on its error
(:func:`_seed_bound_interval`). The percentile interval of Δ* of an absolute figure is kept — it
holds the pairing, and the upward biases of both runs' ``|d*|`` largely cancel — and only extended
to ``delta`` where they do not (rare); an extension can never make a Δ resolved.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import sparse

from llmfair.errors import ConfigError, DataError
from llmfair.metrics.bootstrap import (
    FAIRNESS_INTERVALS,
    FIGURE_NORMS,
    UNITS,
    _cluster_type_map,
    _figure_arrays,
    _multinomial_type_counts,
    _num,
    _ordered_union,
    _replicate_statistics,
    _uniform_type_counts,
    cluster_ids,
    containing,
    folded_box_interval,
    norm_ball_interval,
    percentile_interval,
)
from llmfair.metrics.fairness import ALL, DEFAULT_CELLS, FAIRNESS_FIGURES, GENDER_PAIR, UNKNOWN
from llmfair.metrics.slicing import DEFAULT_BY, HEADLINE_METRICS, SliceMetrics, cell_index, cell_shape, row_stat_index
from llmfair.predictions import Predictions

logger = logging.getLogger(__name__)

PAIRED_METHOD = "paired percentile bootstrap"
HEADLINE_FIGURES: tuple[str, ...] = HEADLINE_METRICS + FAIRNESS_FIGURES
"""The headline figures of a paired comparison, before the per-cell ``gap/...`` figures."""
ROW_COLUMNS: tuple[str, ...] = ("language", "gender", "speaker")
"""Columns (besides the label) that must agree row by row for runs to be compared paired."""
SPEAKER_GENDERS: tuple[str, ...] = GENDER_PAIR + (UNKNOWN,)

_GROUP = "gender"
_OPTIONS: dict[str, Any] = dict(
    metrics=HEADLINE_METRICS, by=DEFAULT_BY, cells=DEFAULT_CELLS, group_column=_GROUP, worst_cell_metric="weighted_f1"
)
_FINE = _ordered_union(DEFAULT_BY, DEFAULT_CELLS, (_GROUP,))
_UNIFORM_RATIO = 10
"""Draw cluster types as Multinomial(S, multiplicity/S) when there are at most S / 10 types,
else as S uniform cluster indices per replicate: a binomial draw per type costs about 5-10 times
a uniform index (measured; ``bench/bench_paired.py``), and both give the same distribution."""
_SEED_STREAM = 1
"""Seed weights are drawn from ``default_rng([seed, _SEED_STREAM])``, a stream independent of the
row draws (``default_rng(seed)``)."""


# --------------------------------------------------------------------------------- alignment
def _key_text(frame: pd.DataFrame, i: int) -> str:
    return f"(id={frame['id'].iat[i]!r}, modality={frame['modality'].iat[i]!r})"


def _check_label_space(ref: Predictions, run: Predictions) -> None:
    if run.classes != ref.classes or run.multilabel != ref.multilabel:
        raise DataError(
            f"runs have different label spaces and cannot be compared: {ref.source} has {list(ref.classes)}"
            f"{' multi-label' if ref.multilabel else ''}, {run.source} has {list(run.classes)}"
            f"{' multi-label' if run.multilabel else ''}"
        )


def _take(run: Predictions, order: np.ndarray) -> Predictions:
    """The rows of ``run`` in the given order (a new table; ``run`` itself when already in order)."""
    if np.array_equal(order, np.arange(run.n)):
        return run
    return Predictions(
        frame=run.frame.iloc[order].reset_index(drop=True), classes=run.classes, multilabel=run.multilabel,
        probs=run.probs[order], labels=run.labels[order], predictions=run.predictions[order], source=run.source,
    )


def _check_row_columns(ref: Predictions, run: Predictions) -> None:
    """Same label, language, gender and speaker row by row (``run`` already aligned to ``ref``)."""
    for column in ROW_COLUMNS:
        a = ref.frame[column].astype(str).to_numpy()
        b = run.frame[column].astype(str).to_numpy()
        diff = np.flatnonzero(a != b)
        if diff.size:
            i = int(diff[0])
            raise DataError(
                f"{ref.source} and {run.source} differ in column {column!r} at {_key_text(ref.frame, i)}: "
                f"{a[i]!r} vs {b[i]!r} ({diff.size} row(s) differ); paired comparisons need the same rows"
            )
    if ref.multilabel:
        differs = ref.labels != run.labels
        rows = np.flatnonzero(differs.any(axis=1))
        if rows.size:
            i = int(rows[0])
            j = int(np.flatnonzero(differs[i])[0])
            raise DataError(
                f"{ref.source} and {run.source} differ in column 'label_{ref.classes[j]}' at "
                f"{_key_text(ref.frame, i)}: {ref.labels[i, j]!r} vs {run.labels[i, j]!r} ({rows.size} row(s) differ)"
            )
    else:
        rows = np.flatnonzero(ref.labels != run.labels)
        if rows.size:
            i = int(rows[0])
            raise DataError(
                f"{ref.source} and {run.source} differ in column 'label' at {_key_text(ref.frame, i)}: "
                f"{ref.classes[ref.labels[i]]!r} vs {run.classes[run.labels[i]]!r} ({rows.size} row(s) differ)"
            )


def align_runs(runs: Sequence[Predictions]) -> list[Predictions]:
    """Check that every run holds the rows of the first and return them all in its row order.

    Raises:
        ConfigError: no runs.
        DataError: a different label space, a missing or extra ``(id, modality)`` key, or a row
            whose label, language, gender or speaker differs — naming both sources and the first
            differing key (and column).
    """
    if not runs:
        raise ConfigError("a paired comparison needs at least one run")
    ref = runs[0]
    ref_keys = pd.MultiIndex.from_arrays([ref.frame["id"].to_numpy(), ref.frame["modality"].to_numpy()])
    out = [ref]
    for run in runs[1:]:
        _check_label_space(ref, run)
        if run is ref:
            out.append(ref)
            continue
        keys = pd.MultiIndex.from_arrays([run.frame["id"].to_numpy(), run.frame["modality"].to_numpy()])
        order = keys.get_indexer(ref_keys)  # the row of `run` holding each reference row
        missing = np.flatnonzero(order < 0)
        if missing.size:
            raise DataError(
                f"{ref.source} and {run.source} do not hold the same rows: {_key_text(ref.frame, int(missing[0]))} "
                f"of {ref.source} is not in {run.source} ({missing.size} key(s) missing)"
            )
        if run.n != ref.n:
            extra = np.flatnonzero(~keys.isin(ref_keys))
            raise DataError(
                f"{ref.source} and {run.source} do not hold the same rows: {_key_text(run.frame, int(extra[0]))} "
                f"of {run.source} is not in {ref.source} ({extra.size} extra key(s))"
            )
        aligned = _take(run, order)
        _check_row_columns(ref, aligned)
        out.append(aligned)
    return out


def speaker_counts(pred: Predictions) -> dict[str, int]:
    """Distinct named speakers per gender (``female``, ``male``, ``unknown``) in the rows: how many
    speakers stand behind a gender gap."""
    frame = pred.frame
    named = frame.loc[frame["speaker"].astype(str) != "", [_GROUP, "speaker"]]
    counts = named.groupby(_GROUP)["speaker"].nunique()
    return {g: int(counts.get(g, 0)) for g in SPEAKER_GENDERS}


# ------------------------------------------------------------------------------------ figures
def _figure_table(sm: SliceMetrics) -> tuple[tuple[str, ...], np.ndarray, dict[str, np.ndarray]]:
    """The comparison's figure keys, their values ``(*batch, F)`` and the signed components
    ``(*batch, pairs, C)`` of every absolute figure (fairness figures as in
    :func:`~llmfair.metrics.bootstrap.fairness_components`; a ``gap/...`` figure: its male − female
    difference, ``(*batch, 1, 1)``) from (replicate) statistics."""
    present = set(sm.keys[_GROUP])
    known = tuple(g for g in GENDER_PAIR if g in present)
    cells = list(DEFAULT_CELLS)
    all_row = pd.DataFrame({c: [ALL] for c in cells})
    if len(known) == 2:
        arrays = _figure_arrays(sm, **_OPTIONS)
        overall, fairness = arrays["overall"], arrays["fairness"]
        gaps, gap_keys = arrays["gaps"][..., 3], arrays["gap_keys"]  # figure 3 = |male − female|
        signed = arrays["gaps"][..., 2]  # figure 2 = male − female
        fair_components = arrays["components"]
    else:  # one gender (or none) known: the metrics are defined, the gaps are not
        overall = np.stack([sm.merge(()).metric(m)[..., 0] for m in HEADLINE_METRICS], axis=-1)
        fairness = np.full(sm.batch_shape + (len(FAIRNESS_FIGURES),), np.nan)
        cell_keys = sm.where(**{_GROUP: known}).merge(DEFAULT_CELLS).keys if known else pd.DataFrame(columns=cells)
        gap_keys = pd.concat([cell_keys, all_row], ignore_index=True)
        gaps = np.full(sm.batch_shape + (len(gap_keys), len(HEADLINE_METRICS)), np.nan)
        signed = gaps
        fair_components = {f: np.full(sm.batch_shape + (1, 1), np.nan) for f in FAIRNESS_FIGURES}
    cell_names = ["/".join(str(v) for v in row) for row in gap_keys[cells].itertuples(index=False)]
    gap_names = tuple(f"gap/{cell}/{m}" for cell in cell_names for m in HEADLINE_METRICS)
    keys = HEADLINE_FIGURES + gap_names
    values = np.concatenate([overall, fairness, gaps.reshape(sm.batch_shape + (-1,))], axis=-1)
    flat = signed.reshape(sm.batch_shape + (-1,))
    components = dict(fair_components)
    components.update({key: flat[..., i, None, None] for i, key in enumerate(gap_names)})
    return keys, values, components


def _figure_norm(key: str) -> Callable[[np.ndarray], np.ndarray]:
    """An absolute figure as a function of its components' magnitudes (a ``gap/...`` figure: |d|)."""
    return FIGURE_NORMS.get(key, FIGURE_NORMS["worst_cell_gap"])


def _interval_kind(key: str) -> str:
    """``FAIRNESS_INTERVALS`` for fairness figures, ``folded_box`` for a ``gap/...`` figure (one
    component: the folded percentile interval), ``percentile`` for the metrics."""
    if key in FAIRNESS_INTERVALS:
        return FAIRNESS_INTERVALS[key]
    return "folded_box" if key.startswith("gap/") else "percentile"


@dataclass(frozen=True)
class PairedFigures:
    """Every comparison figure of M runs on the same rows, at the point and on joint resamples.

    Attributes:
        keys: the F figure keys (:data:`HEADLINE_FIGURES`, then ``gap/<language>/<modality>/<metric>``).
        runs: the runs' sources, in input order.
        point: ``(M, F)`` figures of every run.
        replicates: ``(R, M, F)`` figures of every run on the R resamples; replicate r of every
            run is scored on the same rows.
        unit, seed: how the rows were resampled (``seed`` also seeds the seed weights).
        n_rows, n_clusters: rows per run and resampling units (utterances or speakers).
        speakers: distinct speakers per gender (:func:`speaker_counts`).
        components: for every absolute figure (fairness figures, ``gap/...``), its signed
            components at the point ``(M, pairs, C)`` and on the replicates ``(R, M, pairs, C)``,
            from which its intervals are built (``docs/intervals.md``).
    """

    keys: tuple[str, ...]
    runs: tuple[str, ...]
    point: np.ndarray
    replicates: np.ndarray
    unit: str
    seed: int
    n_rows: int
    n_clusters: int
    speakers: dict[str, int]
    components: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def n_resamples(self) -> int:
        """Number of replicates R."""
        return int(self.replicates.shape[0])


def _type_counts_from_clusters(cluster_counts: Any, type_of_cluster: np.ndarray, num_types: int) -> np.ndarray:
    """``(R, T)`` type counts summed from explicit ``(R, num_clusters)`` per-cluster draw counts."""
    counts = np.asarray(cluster_counts)
    num_clusters = len(type_of_cluster)
    if counts.ndim != 2 or counts.shape[1] != num_clusters or counts.shape[0] < 1:
        raise ConfigError(f"cluster_counts has shape {counts.shape}; expected (replicates, {num_clusters} clusters)")
    if not np.issubdtype(counts.dtype, np.integer) or (counts < 0).any():
        raise ConfigError("cluster_counts must hold non-negative integer draw counts")
    onehot = sparse.csr_matrix(
        (np.ones(num_clusters, dtype=np.int64), (np.arange(num_clusters), type_of_cluster)), shape=(num_clusters, num_types)
    )
    return np.asarray((onehot.T @ counts.astype(np.int64).T).T)


def paired_figures(
    runs: Sequence[Predictions],
    *,
    unit: str = "utterance",
    n_resamples: int = 1000,
    seed: int = 0,
    cluster_counts: np.ndarray | None = None,
) -> PairedFigures:
    """Point and jointly resampled figures of runs on the same rows (the first run's row order).

    Args:
        runs: predictions tables on the same rows (checked by :func:`align_runs`).
        unit: ``utterance`` or ``speaker`` (cluster bootstrap).
        n_resamples: bootstrap replicates R.
        seed: seeds ``numpy.random.default_rng`` for the cluster draws.
        cluster_counts: instead of random draws, explicit ``(R, num_clusters)`` draw counts per
            cluster (clusters numbered as :func:`~llmfair.metrics.bootstrap.cluster_ids` numbers
            them on the first run); replicate r then holds cluster c ``cluster_counts[r, c]``
            times. For tests that check the vectorised result against materialised resamples.

    Raises:
        ConfigError: a bad unit, ``n_resamples`` < 1 or malformed ``cluster_counts``.
        DataError: the runs do not hold the same rows (see :func:`align_runs`).
    """
    if unit not in UNITS:
        raise ConfigError(f"unknown bootstrap unit {unit!r}; expected one of {list(UNITS)}")
    if cluster_counts is None and n_resamples < 1:
        raise ConfigError(f"a paired comparison needs n_resamples >= 1; got {n_resamples}")
    aligned = align_runs(runs)
    ref = aligned[0]
    cell_keys, inverse = cell_index(ref, _FINE)
    shape = cell_shape(ref)
    n_stats = len(cell_keys) * shape[0] * shape[1]
    m = len(aligned)
    idx = np.concatenate([row_stat_index(run, inverse) + j * n_stats for j, run in enumerate(aligned)], axis=1)
    point_stats = np.bincount(idx.ravel(), minlength=m * n_stats).reshape(m, len(cell_keys), *shape)
    clusters = cluster_ids(ref, unit)
    type_stats, multiplicity, type_of_cluster = _cluster_type_map(idx, clusters, m * n_stats)
    num_clusters, num_types = len(type_of_cluster), len(multiplicity)
    chunks: Iterable[np.ndarray]
    if cluster_counts is not None:
        chunks = [_type_counts_from_clusters(cluster_counts, type_of_cluster, num_types)]
        n_resamples = len(chunks[0])
    elif num_types * _UNIFORM_RATIO <= num_clusters:
        chunks = _multinomial_type_counts(multiplicity, n_resamples, np.random.default_rng(seed))
    else:
        chunks = _uniform_type_counts(type_of_cluster, num_types, n_resamples, np.random.default_rng(seed))
    reps = _replicate_statistics(type_stats, chunks, n_resamples).reshape(n_resamples, m, len(cell_keys), *shape)
    options = dict(classes=ref.classes, multilabel=ref.multilabel)
    keys, point, point_components = _figure_table(SliceMetrics(cell_keys, point_stats, **options))
    _, replicates, rep_components = _figure_table(SliceMetrics(cell_keys, reps, **options))
    logger.debug("paired bootstrap: %d runs, %d %s clusters in %d types, %d replicates",
                 m, num_clusters, unit, num_types, n_resamples)
    _warn_undefined(ref, keys, point[0])
    return PairedFigures(
        keys=keys, runs=tuple(str(r.source) for r in runs), point=point, replicates=replicates, unit=unit,
        seed=int(seed), n_rows=ref.n, n_clusters=num_clusters, speakers=speaker_counts(ref),
        components={k: (point_components[k], rep_components[k]) for k in point_components},
    )


def _warn_undefined(ref: Predictions, keys: Sequence[str], point: np.ndarray) -> None:
    """Log which gaps are undefined because a gender is missing (a warning, not an error)."""
    known = [g for g in GENDER_PAIR if (ref.frame[_GROUP] == g).any()]
    if len(known) < 2:
        logger.warning(
            "%s holds %s rows of known gender; gender gaps and fairness figures of the paired comparison are "
            "undefined (None)", ref.source, f"only {known[0]}" if known else "no female or male",
        )
        return
    cells = sorted({k.rsplit("/", 1)[0][len("gap/"):] for k, v in zip(keys, point) if k.startswith("gap/") and np.isnan(v)})
    if cells:
        logger.warning("%s: cell(s) %s lack female or male rows; their gaps are undefined (None)",
                       ref.source, ", ".join(cells))


# ---------------------------------------------------------------------------------- systems
def seed_weights(sizes: Mapping[str, int], n_resamples: int, seed: int) -> dict[str, np.ndarray]:
    """Seed resampling weights: per system ``(R, S)`` counts, ``Multinomial(S, 1/S)`` per replicate.

    Independent across systems (drawn one system after another from ``default_rng([seed, 1])``,
    in the mapping's order); a one-seed system gets weights of one.
    """
    rng = np.random.default_rng([int(seed), _SEED_STREAM])
    out = {}
    for name, s in sizes.items():
        if s == 1:
            out[name] = np.ones((n_resamples, 1), dtype=np.int64)
        else:
            out[name] = rng.multinomial(s, np.full(s, 1.0 / s), size=n_resamples)
    return out


def _p_value(deltas: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Two-sided bootstrap p-value per figure: ``min(1, 2 · min(P(Δ* ≤ 0), P(Δ* ≥ 0)))``."""
    low = (deltas <= 0).sum(axis=0)  # NaN compares False: only usable replicates count
    high = (deltas >= 0).sum(axis=0)
    out = np.full(usable.shape, np.nan)
    np.divide(2.0 * np.minimum(low, high), usable, out=out, where=usable > 0)
    return np.minimum(out, 1.0)


def _absolute_interval(
    key: str, point: np.ndarray, replicates: np.ndarray, confidence: float, estimate: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One run's interval of an absolute figure from its signed components (as in a run's report)."""
    norm = _figure_norm(key)
    if _interval_kind(key) == "norm_ball":
        return norm_ball_interval(point, replicates, norm, confidence, estimate)
    return folded_box_interval(point, replicates, norm, confidence)


def _seed_bound_interval(
    key: str, point: np.ndarray, replicates: np.ndarray, figures: np.ndarray, weights: np.ndarray,
    mean: float, confidence: float,
) -> tuple[float, float]:
    """Interval of a mean over S ≥ 2 seeds of an absolute figure ``N(d_s)``: ``mean ± q`` (low
    clipped at 0), q the ``confidence`` quantile of the bound

        B* = Σ_s (w_s / S) · N(d*_s − d̂_s) + |Σ_s (w_s / S) · N(d̂_s) − mean|

    on |mean − truth|: row noise by the triangle inequality per seed (as in
    :func:`~llmfair.metrics.bootstrap.norm_ball_interval`), seed noise by the resampled seed mean.
    ``point`` (S, pairs, C), ``replicates`` (R, S, pairs, C), ``figures`` the seeds' N(d̂_s) (S,),
    ``weights`` the (R, S) seed counts."""
    s = len(figures)
    deviation = _figure_norm(key)(np.abs(replicates - point))  # (R, S)
    rows = (np.where(weights > 0, deviation, 0.0) * weights).sum(axis=1) / s
    seeds = np.abs((weights * figures).sum(axis=1) / s - mean)
    bound = rows + seeds
    if np.isnan(mean) or np.isnan(bound).all():
        return float("nan"), float("nan")
    q = float(np.nanpercentile(bound, 100.0 * confidence))
    return max(mean - q, 0.0), mean + q


def _system_intervals(
    figures: PairedFigures, idx: np.ndarray, weights: np.ndarray, means: np.ndarray, reps: np.ndarray,
    confidence: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Every figure's interval for a system (seeds ``idx``): the metrics by the percentile interval
    of the seed-weighted replicates (extended to the mean where it excludes it); an absolute figure
    of a one-seed system as in the run's report (folded or norm-ball interval of its signed
    components), of several seeds by :func:`_seed_bound_interval`. ``docs/intervals.md``."""
    low, high, _ = percentile_interval(reps, confidence)
    low, high = containing(low, high, means)
    for f, key in enumerate(figures.keys):
        if _interval_kind(key) == "percentile" or key not in figures.components:
            continue
        point, replicates = figures.components[key]
        if len(idx) == 1:
            i = int(idx[0])
            low[f], high[f] = _absolute_interval(key, point[i], replicates[:, i], confidence, figures.point[i, f])
        else:
            low[f], high[f] = _seed_bound_interval(key, point[idx], replicates[:, idx], figures.point[idx, f], weights,
                                                   means[f], confidence)
    return low, high


def compare_systems(
    figures: PairedFigures,
    systems: Mapping[str, Sequence[int]],
    *,
    reference: str | None = None,
    confidence: float = 0.95,
    run_names: Mapping[str, Sequence[str]] | None = None,
    seed_counts: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Seed-aggregate the runs of every system and compare each with the reference (JSON-ready).

    Args:
        figures: from :func:`paired_figures`.
        systems: system name → the indices (into ``figures.runs``) of its seeds.
        reference: the reference system (default: the first).
        confidence: interval level.
        run_names: system name → a name per seed (default: the runs' sources).
        seed_counts: instead of random seed weights, explicit ``(R, S)`` counts per system (each
            row summing to S). For tests.

    Returns:
        The :func:`paired_comparison` dict.
    """
    names = list(systems)
    if not names:
        raise ConfigError("a paired comparison needs at least one system")
    reference = names[0] if reference is None else reference
    if reference not in systems:
        raise ConfigError(f"unknown reference system {reference!r}; the systems are {names}")
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must lie in (0, 1); got {confidence}")
    n_runs, r = len(figures.runs), figures.n_resamples
    members: dict[str, np.ndarray] = {}
    for name in names:
        idx = np.asarray(list(systems[name]), dtype=np.int64)
        if idx.size == 0:
            raise ConfigError(f"system {name!r} has no runs")
        if ((idx < 0) | (idx >= n_runs)).any():
            raise ConfigError(f"system {name!r} names runs {idx.tolist()}; there are {n_runs}")
        if len(set(idx.tolist())) != idx.size:
            raise DataError(f"system {name!r} lists the same run twice: {idx.tolist()}")
        members[name] = idx
    weights = seed_weights({n: len(members[n]) for n in names}, r, figures.seed)
    for name, given in (seed_counts or {}).items():
        given = np.asarray(given)
        s = len(members[name])
        if given.shape != (r, s) or (given < 0).any() or (given.sum(axis=1) != s).any():
            raise ConfigError(f"seed_counts[{name!r}] must be ({r}, {s}) non-negative counts summing to {s} per replicate")
        weights[name] = given.astype(np.int64)

    means, reps = {}, {}
    out_systems: dict[str, Any] = {}
    for name in names:
        idx, w = members[name], weights[name]
        per_seed = figures.point[idx]  # (S, F)
        means[name] = per_seed.mean(axis=0)
        seed_std = per_seed.std(axis=0, ddof=1) if len(idx) > 1 else np.full(len(figures.keys), np.nan)
        chosen = figures.replicates[:, idx, :]  # (R, S, F)
        weighted = np.where(w[:, :, None] > 0, chosen, 0.0) * w[:, :, None]  # an undrawn NaN seed is no NaN
        reps[name] = weighted.sum(axis=1) / len(idx)
        low, high = _system_intervals(figures, idx, w, means[name], reps[name], confidence)
        labels = list((run_names or {}).get(name) or [figures.runs[i] for i in idx])
        if len(labels) != len(idx):
            raise ConfigError(f"run_names[{name!r}] has {len(labels)} names for {len(idx)} runs")
        out_systems[name] = {
            "runs": [str(x) for x in labels],
            "seeds": int(len(idx)),
            "figures": {
                key: {"mean": _num(means[name][f]), "ci_low": _num(low[f]), "ci_high": _num(high[f]),
                      "seed_std": _num(seed_std[f]), "per_seed": [_num(v) for v in per_seed[:, f]]}
                for f, key in enumerate(figures.keys)
            },
        }
    paired: dict[str, Any] = {}
    for name in names:
        if name == reference:
            continue
        delta = means[name] - means[reference]
        deltas = reps[name] - reps[reference]
        low, high, usable = percentile_interval(deltas, confidence)
        low, high = containing(low, high, delta)
        p = _p_value(deltas, usable)
        resolved = (low > 0) | (high < 0)  # NaN compares False
        paired[name] = {
            key: {"delta": _num(delta[f]), "ci_low": _num(low[f]), "ci_high": _num(high[f]), "p_value": _num(p[f]),
                  "resolved": bool(resolved[f]), "usable": int(usable[f])}
            for f, key in enumerate(figures.keys)
        }
    return {
        "reference": reference,
        "unit": figures.unit,
        "n_resamples": r,
        "seed": figures.seed,
        "confidence": float(confidence),
        "method": PAIRED_METHOD,
        "n_rows": figures.n_rows,
        "n_clusters": figures.n_clusters,
        "speakers": dict(figures.speakers),
        "figures": list(figures.keys),
        "systems": out_systems,
        "paired": paired,
    }


def _same_run(a: Predictions, b: Predictions) -> bool:
    """One run given twice: the same object, or the same source with the same predictions."""
    if a is b:
        return True
    return (str(a.source) == str(b.source) and a.n == b.n and np.array_equal(a.predictions, b.predictions)
            and np.array_equal(a.probs, b.probs))


def paired_comparison(
    systems: Mapping[str, Sequence[Predictions]],
    *,
    reference: str | None = None,
    unit: str = "utterance",
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    run_names: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Compare systems (each a list of seeds' runs) on the same rows by a paired bootstrap.

    See the module docstring for the rule (joint row resampling, seeds resampled per system, Δ,
    p-value, ``resolved``).

    Args:
        systems: system name → its runs (seeds), all on the same rows.
        reference: the system every other is compared with (default: the first).
        unit: ``utterance`` or ``speaker`` (cluster bootstrap).
        n_resamples: bootstrap replicates (at least 1).
        seed: seeds the row draws and the seed weights.
        confidence: interval level.
        run_names: system name → one name per run (default: the runs' sources).

    Returns:
        A JSON-ready dict (floats, NaN → None)::

            {"reference", "unit", "n_resamples", "seed", "confidence", "method", "n_rows",
             "n_clusters", "speakers": {"female", "male", "unknown"}, "figures": [keys],
             "systems": {name: {"runs", "seeds", "figures": {key: {"mean", "ci_low", "ci_high",
                                                                   "seed_std", "per_seed"}}}},
             "paired": {name: {key: {"delta", "ci_low", "ci_high", "p_value", "resolved", "usable"}}}}

        ``paired`` has no entry for the reference.

    Raises:
        ConfigError: no systems, an empty system, an unknown reference, bad options.
        DataError: runs on different rows or label spaces; a system listing the same run twice.
    """
    names = list(systems)
    if not names:
        raise ConfigError("a paired comparison needs at least one system")
    if reference is not None and reference not in systems:
        raise ConfigError(f"unknown reference system {reference!r}; the systems are {names}")
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must lie in (0, 1); got {confidence}")
    runs: list[Predictions] = []
    position: dict[int, int] = {}
    members: dict[str, list[int]] = {}
    for name in names:
        tables = list(systems[name])
        if not tables:
            raise ConfigError(f"system {name!r} has no runs")
        for i, a in enumerate(tables):
            for j in range(i):
                if _same_run(tables[j], a):
                    raise DataError(
                        f"system {name!r} lists the same run twice: {a.source} (seeds {j + 1} and {i + 1}); "
                        "give each seed's predictions once"
                    )
        index = []
        for table in tables:
            if id(table) not in position:
                position[id(table)] = len(runs)
                runs.append(table)
            index.append(position[id(table)])
        members[name] = index
    figures = paired_figures(runs, unit=unit, n_resamples=n_resamples, seed=seed)
    return compare_systems(figures, members, reference=reference, confidence=confidence, run_names=run_names)
