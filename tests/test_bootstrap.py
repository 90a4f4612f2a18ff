"""Bootstrap intervals: exact resampling mechanics, agreement with the point estimates, coverage,
and honest intervals of absolute gaps (every interval contains its estimate; zero-gap coverage)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from llmfair.errors import ConfigError
from llmfair.metrics import (
    FAIRNESS_FIGURES,
    FAIRNESS_INTERVALS,
    SliceMetrics,
    bootstrap_ci,
    cluster_ids,
    containing,
    fairness_summary,
    folded_box_interval,
    folded_interval,
    gender_gaps,
    norm_ball_interval,
    percentile_interval,
    resample_statistics,
    summary_dict,
)
from llmfair.metrics.bootstrap import FIGURE_NORMS, _cluster_types, _figure_arrays, _intervals
from llmfair.metrics.slicing import cell_index, row_stat_index
from llmfair.predictions import Predictions
from tests.test_metrics import random_table


def simulated(
    correct: np.ndarray, *, gender: np.ndarray | None = None, speaker: np.ndarray | None = None,
    modality: np.ndarray | None = None, ids: np.ndarray | None = None,
) -> Predictions:
    """A 3-class table whose rows are right where ``correct`` is true."""
    n = correct.size
    labels = np.arange(n) % 3
    preds = np.where(correct, labels, (labels + 1) % 3)
    probs = np.eye(3)[preds] * 0.8 + 0.2 / 3
    frame = pd.DataFrame(
        {"id": ids if ids is not None else np.arange(n).astype(str), "split": "test", "language": "eng",
         "modality": modality if modality is not None else "audio",
         "gender": gender if gender is not None else np.where(np.arange(n) % 2 == 0, "female", "male"),
         "speaker": speaker if speaker is not None else np.arange(n).astype(str),
         "label": np.array(["a", "b", "c"])[labels], "prob_a": probs[:, 0], "prob_b": probs[:, 1],
         "prob_c": probs[:, 2], "prediction": np.array(["a", "b", "c"])[preds]}
    )
    return Predictions.from_frame(frame, source="simulated")


def test_cluster_types_reproduce_every_cluster_exactly():
    for multilabel in (False, True):
        pred = random_table(300, seed=3, multilabel=multilabel, speakers=25)
        keys, inverse = cell_index(pred, ("language", "gender"))
        idx = row_stat_index(pred, inverse)
        k = pred.num_classes
        d = len(keys) * k * (4 if multilabel else k)
        for unit in ("utterance", "speaker"):
            clusters = cluster_ids(pred, unit)
            stats, multiplicity = _cluster_types(idx, clusters, d)
            dense = stats.toarray()
            # per-cluster statistics computed independently: one bincount per cluster
            per_cluster = np.stack([
                np.bincount(idx[clusters == s].ravel(), minlength=d) for s in range(clusters.max() + 1)
            ])
            types, counts = np.unique(per_cluster, axis=0, return_counts=True)
            assert len(types) == len(dense)
            order = np.lexsort(dense.T[::-1])
            np.testing.assert_array_equal(dense[order], types)
            np.testing.assert_array_equal(multiplicity[order], counts)
            np.testing.assert_array_equal(multiplicity @ dense, per_cluster.sum(axis=0))
    # single-label utterances collapse to at most cells × K² types however many rows
    assert len(_cluster_types(*_single_label_idx(), 2 * 9)[1]) <= 2 * 9


def _single_label_idx():
    pred = simulated(np.random.default_rng(0).random(2000) < 0.7)
    keys, inverse = cell_index(pred, ("gender",))
    return row_stat_index(pred, inverse), cluster_ids(pred, "utterance")


def test_units_move_the_right_rows_together():
    n = 400
    rng = np.random.default_rng(1)
    ids = np.repeat(np.arange(n // 2), 2).astype(str)
    modality = np.tile(["audio", "audio_text"], n // 2)
    pred = simulated(rng.random(n) < 0.7, ids=ids, modality=modality)
    reps = resample_statistics(pred, ("modality",), unit="utterance", n_resamples=300, seed=0)
    n_cells = reps.n  # (R, 2): both modalities of an utterance are drawn together
    np.testing.assert_array_equal(n_cells[:, 0], n_cells[:, 1])
    assert (n_cells.sum(axis=1) == n).all()
    # speakers of 8 rows each, one gender per speaker: every replicate has whole speakers
    speaker = np.repeat(np.arange(n // 8), 8).astype(str)
    gender = np.where(np.repeat(np.arange(n // 8), 8) % 3 == 0, "female", "male")
    pred = simulated(rng.random(n) < 0.7, speaker=speaker, gender=gender)
    reps = resample_statistics(pred, ("gender",), unit="speaker", n_resamples=300, seed=0)
    assert (reps.n % 8 == 0).all() and (reps.n.sum(axis=1) == n).all()
    assert reps.n[:, 0].std() > 0  # the number of female speakers varies


def test_seeded_and_matches_a_naive_row_bootstrap():
    rng = np.random.default_rng(2)
    pred = simulated(rng.random(500) < 0.75)
    a = resample_statistics(pred, (), n_resamples=2000, seed=7)
    b = resample_statistics(pred, (), n_resamples=2000, seed=7)
    c = resample_statistics(pred, (), n_resamples=2000, seed=8)
    np.testing.assert_array_equal(a.stats, b.stats)
    assert not np.array_equal(a.stats, c.stats)
    acc = a.metric("accuracy")[:, 0]
    # an independent bootstrap: draw row indices, recompute accuracy on the rows
    correct = pred.labels == pred.predictions
    naive = correct[np.random.default_rng(0).integers(0, 500, (2000, 500))].mean(axis=1)
    assert acc.mean() == pytest.approx(naive.mean(), abs=0.002)
    assert acc.std() == pytest.approx(naive.std(), rel=0.08)
    assert acc.std() == pytest.approx(np.sqrt(correct.mean() * (1 - correct.mean()) / 500), rel=0.08)
    np.testing.assert_allclose(a.stats.mean(axis=0), SliceMetrics.from_predictions(pred, ()).stats, rtol=0.05, atol=0.5)


def test_point_estimates_equal_the_public_functions():
    for multilabel in (False, True):
        pred = random_table(500, seed=4, multilabel=multilabel)
        result = bootstrap_ci(pred, n_resamples=100, seed=1)
        table = SliceMetrics.from_predictions(pred).table()
        slices = result.slices.pivot_table(index=["language", "modality", "gender"], columns="metric", values="estimate")
        np.testing.assert_allclose(slices.loc[table.set_index(["language", "modality", "gender"]).index, list(table.columns[4:])],
                                   table[table.columns[4:]], atol=1e-12)
        overall = SliceMetrics.from_predictions(pred, ()).table().iloc[0]
        for _, row in result.overall.iterrows():
            assert row["estimate"] == pytest.approx(overall[row["metric"]], abs=1e-12)
            assert row["low"] <= row["estimate"] <= row["high"] and row["usable"] == 100
        gaps = gender_gaps(pred).set_index(["language", "modality", "metric"])
        for _, row in result.gaps.iterrows():
            assert row["estimate"] == pytest.approx(gaps.loc[(row["language"], row["modality"], row["metric"]), row["figure"]], abs=1e-12)
        summary = fairness_summary(pred)
        for _, row in result.fairness.iterrows():
            assert row["estimate"] == pytest.approx(summary[row["figure"]], abs=1e-12)
            assert row["high"] >= row["low"]


def test_empty_cells_in_replicates_are_nan_and_counted():
    rng = np.random.default_rng(5)
    correct = rng.random(200) < 0.7
    language = np.full(200, "eng", dtype=object)
    language[0] = "jpn"  # a one-row cell: absent from about 37 % of utterance resamples
    pred = simulated(correct)
    frame = pred.frame.assign(language=language)
    pred = Predictions.from_frame(frame, source="tiny cell")
    result = bootstrap_ci(pred, n_resamples=400, seed=3)
    reps = resample_statistics(pred, ("language", "modality", "gender"), n_resamples=400, seed=3)
    present = (reps.n[:, reps.keys["language"].to_numpy() == "jpn"] > 0).sum()
    row = result.slices[(result.slices["language"] == "jpn") & (result.slices["metric"] == "accuracy")].iloc[0]
    assert row["usable"] == present and 150 < present < 400
    low, high, usable = percentile_interval(np.array([[np.nan, 1.0], [np.nan, 3.0]]))
    assert np.isnan(low[0]) and usable.tolist() == [0, 2] and high[1] == pytest.approx(2.95)


def test_coverage_of_accuracy_at_the_nominal_rate():
    """200 datasets of 500 rows from a population with accuracy 0.8: the 95 % utterance interval
    should cover 0.8 in about 95 % of them."""
    rng = np.random.default_rng(10)
    truth, covered = 0.8, 0
    for d in range(200):
        pred = simulated(rng.random(500) < truth)
        acc = resample_statistics(pred, (), n_resamples=200, seed=d).metric("accuracy")[:, 0]
        low, high, _ = percentile_interval(acc)
        covered += low <= truth <= high
    assert 0.88 <= covered / 200 <= 0.99


def test_speaker_bootstrap_covers_clustered_data_where_utterances_do_not():
    """30 speakers × 20 utterances, speaker accuracies ~ Beta(mean 0.7, sd 0.15): utterances of a
    speaker are correlated, so only the cluster (speaker) bootstrap keeps nominal coverage."""
    rng = np.random.default_rng(11)
    truth, n_spk, per = 0.7, 30, 20
    a = truth * (truth * (1 - truth) / 0.15**2 - 1)
    b = a * (1 - truth) / truth
    speaker = np.repeat(np.arange(n_spk), per).astype(str)
    covered = {"speaker": 0, "utterance": 0}
    for d in range(200):
        p = np.repeat(rng.beta(a, b, n_spk), per)
        pred = simulated(rng.random(n_spk * per) < p, speaker=speaker)
        for unit in covered:
            acc = resample_statistics(pred, (), unit=unit, n_resamples=200, seed=d).metric("accuracy")[:, 0]
            low, high, _ = percentile_interval(acc)
            covered[unit] += low <= truth <= high
    assert 0.88 <= covered["speaker"] / 200 <= 0.99
    assert covered["utterance"] / 200 < 0.85


def test_coverage_of_the_gender_gap():
    """female accuracy 0.7, male 0.8: the interval of male − female covers 0.1 at about 95 %."""
    rng = np.random.default_rng(12)
    n, covered = 400, 0
    gender = np.where(np.arange(n) % 2 == 0, "female", "male")
    p = np.where(gender == "male", 0.8, 0.7)
    folded = resolved = 0
    for d in range(120):
        pred = simulated(rng.random(n) < p, gender=gender)
        result = bootstrap_ci(pred, n_resamples=200, seed=d, metrics=("accuracy",))
        overall = result.gaps[result.gaps["language"] == "all"].set_index("figure")
        row = overall.loc["male_minus_female"]
        covered += row["low"] <= 0.1 <= row["high"]
        folded += overall.loc["gap", "low"] <= 0.1 <= overall.loc["gap", "high"]  # |gap|: the folded interval
        resolved += overall.loc["gap", "low"] > 0
    assert 0.88 <= covered / 120 <= 0.99
    assert 0.88 <= folded / 120 <= 0.99 and resolved / 120 > 0.5  # valid away from 0 too, and not vacuous


def test_summary_dict_is_json_with_the_report_shape():
    pred = random_table(400, seed=9)
    frame = pred.frame.copy()
    frame.loc[(frame["language"] == "jpn") & (frame["modality"] == "audio"), "gender"] = "male"  # one gender only
    pred = Predictions.from_frame(frame, source="report")
    out = summary_dict(pred, n_resamples=100, seed=0)
    text = json.dumps(out, allow_nan=False)
    assert json.loads(text) == out
    assert out["n"] == 400 and out["label_space"]["name"] == "meld"
    assert set(out["overall"]) >= {"accuracy", "weighted_f1", "macro_f1", "ci"}
    assert {(s["language"], s["modality"], s["gender"]) for s in out["slices"]} == set(
        map(tuple, pred.frame[["language", "modality", "gender"]].drop_duplicates().to_numpy())
    )
    for s in out["slices"]:
        assert set(s) >= {"language", "modality", "gender", "n", "accuracy", "weighted_f1", "macro_f1", "ci"}
        assert all(len(v) == 2 for v in s["ci"].values())
    one_sided = [g for g in out["gaps"] if g["language"] == "jpn" and g["modality"] == "audio"]
    assert len(one_sided) == 3 and all(g["gap"] is None and g["female"] is None and g["n_female"] == 0 for g in one_sided)
    overall_gaps = [g for g in out["gaps"] if g["language"] == "all"]
    assert [g["metric"] for g in overall_gaps] == ["accuracy", "weighted_f1", "macro_f1"]
    for g in overall_gaps:
        assert g["ci"]["gap"][0] <= g["ci"]["gap"][1] and g["gap"] == pytest.approx(abs(g["male_minus_female"]))
    assert set(out["fairness"]) >= {"tpr_gap_rms", "fpr_gap_rms", "f1_gap_rms", "dp_gap_sum", "dp_gap_rms", "worst_cell_gap"}
    assert out["fairness"]["worst_cell_gap"] == pytest.approx(fairness_summary(pred)["worst_cell_gap"])
    assert out["bootstrap"]["unit"] == "utterance" and out["bootstrap"]["min_usable"] <= 100
    speaker = summary_dict(pred, n_resamples=0, unit="speaker")
    assert speaker["overall"]["ci"]["accuracy"] == [None, None] and speaker["overall"]["accuracy"] == out["overall"]["accuracy"]


def test_bad_bootstrap_options():
    pred = random_table(50, seed=0)
    with pytest.raises(ConfigError, match="unknown bootstrap unit 'rater'"):
        bootstrap_ci(pred, unit="rater", n_resamples=10)
    with pytest.raises(ConfigError, match="non-negative"):
        bootstrap_ci(pred, n_resamples=-1)
    with pytest.raises(ConfigError, match="confidence"):
        bootstrap_ci(pred, n_resamples=10, confidence=1.5)


# ------------------------------------------------------------------------------ honest intervals
def test_folded_and_containing_intervals_by_hand():
    low, high = folded_interval(np.array([-0.1, 0.1, -0.3, np.nan, -0.2]), np.array([0.3, 0.3, -0.1, 0.2, 0.0]))
    np.testing.assert_allclose(low, [0.0, 0.1, 0.1, np.nan, 0.0])
    np.testing.assert_allclose(high, [0.3, 0.3, 0.3, np.nan, 0.2])
    low, high = containing(np.array([0.1, 0.1, np.nan, 0.1]), np.array([0.2, 0.2, np.nan, 0.2]),
                           np.array([0.05, 0.25, 0.3, np.nan]))
    np.testing.assert_allclose(low, [0.05, 0.1, np.nan, 0.1])
    np.testing.assert_allclose(high, [0.2, 0.25, np.nan, 0.2])
    # a norm ball: N = |·| of one component, deviations |d* − d̂| = 0.01 ... 1.00 → q = their 95th percentile
    reps = (0.3 + np.linspace(0.01, 1.0, 100) * np.where(np.arange(100) % 2, 1, -1))[:, None, None]
    low, high = norm_ball_interval(np.array([[0.3]]), reps, FIGURE_NORMS["worst_cell_gap"], 0.95)
    q = np.percentile(np.linspace(0.01, 1.0, 100), 95)
    assert (float(low), float(high)) == pytest.approx((0.0, 0.3 + q)) and 0.3 - q < 0
    # one component: the folded box is the folded percentile interval
    rng = np.random.default_rng(0)
    reps = rng.normal(0.05, 0.1, (400, 1, 1))
    box = folded_box_interval(np.array([[0.05]]), reps, FIGURE_NORMS["worst_cell_gap"])
    assert tuple(map(float, box)) == tuple(map(float, folded_interval(*percentile_interval(reps[:, 0, 0])[:2])))
    # several: jointly about 95 % of the replicates lie in the max-t box, wider than marginal intervals
    reps = rng.normal(0.0, [0.02, 0.05, 0.1, 0.2], (2000, 1, 4))
    point = np.zeros((1, 4))
    low, high = map(float, folded_box_interval(point, reps, FIGURE_NORMS["worst_cell_gap"]))
    assert low == 0.0
    t = np.abs(reps[:, 0, :]) / reps[:, 0, :].std(axis=0, ddof=1)
    assert np.mean(t.max(axis=1) <= np.percentile(t.max(axis=1), 95)) == pytest.approx(0.95, abs=0.005)
    assert high == pytest.approx(np.percentile(t.max(axis=1), 95) * reps[:, 0, 3].std(ddof=1), rel=1e-9)
    assert high > np.percentile(np.abs(reps[:, 0, 3]), 95)  # the noisiest cell's marginal bound


def _naive(reps: dict, key: str, index) -> tuple[np.ndarray, np.ndarray]:
    """The old intervals: percentiles of the resampled figures themselves (|d*| for absolute gaps)."""
    return percentile_interval(reps[key][index])[:2]


def test_every_interval_contains_its_estimate():
    """Random tables (small cells, both label kinds and units): every overall, slice, gap and fairness
    interval contains its estimate; ``gap`` is exactly the folded ``male_minus_female`` interval. The
    percentile intervals of the resampled absolute figures (the old method) exclude theirs here."""
    excluded_before = 0
    for seed in range(12):
        for multilabel in (False, True):
            pred = random_table((60, 150, 400)[seed % 3], seed=seed, multilabel=multilabel, speakers=20)
            unit = ("utterance", "speaker")[seed % 2]
            result = bootstrap_ci(pred, unit=unit, n_resamples=100, seed=seed)
            for name in ("overall", "slices", "gaps", "fairness"):
                table = getattr(result, name)
                defined = table[table["estimate"].notna()]
                assert defined["low"].notna().mean() > 0.9, name
                inside = (defined["low"] <= defined["estimate"]) & (defined["estimate"] <= defined["high"])
                assert inside[defined["low"].notna()].all(), defined[~inside & defined["low"].notna()]
            gaps = result.gaps.set_index(["language", "modality", "metric", "figure"])
            signed = gaps.xs("male_minus_female", level="figure")
            folded = gaps.xs("gap", level="figure").loc[signed.index]
            low, high = folded_interval(signed["low"].to_numpy(), signed["high"].to_numpy())
            np.testing.assert_array_equal(folded["low"].to_numpy(), low)
            np.testing.assert_array_equal(folded["high"].to_numpy(), high)
            # the old construction on the same replicates
            fine = ("language", "modality", "gender")
            options = dict(metrics=("accuracy", "weighted_f1", "macro_f1"), by=fine, cells=("language", "modality"),
                           group_column="gender", worst_cell_metric="weighted_f1")
            point = _figure_arrays(SliceMetrics.from_predictions(pred, fine), **options)
            reps = _figure_arrays(resample_statistics(pred, fine, unit=unit, n_resamples=100, seed=seed), **options)
            for key, index in (("gaps", (slice(None), Ellipsis, 3)), ("fairness", (slice(None), Ellipsis))):
                old_low, old_high = _naive(reps, key, index)
                estimate = point[key][index[1:]]
                excluded_before += int(np.nansum((estimate < old_low) | (estimate > old_high)))
    assert excluded_before >= 10


def test_summary_dict_intervals_contain_their_estimates_and_name_their_methods():
    pred = random_table(120, seed=21, speakers=12)
    out = summary_dict(pred, n_resamples=150, seed=2, unit="speaker")
    pairs = [(out["overall"][m], ci) for m, ci in out["overall"]["ci"].items()]
    pairs += [(s[m], ci) for s in out["slices"] for m, ci in s["ci"].items()]
    pairs += [(g[f], ci) for g in out["gaps"] for f, ci in g["ci"].items()]
    pairs += [(out["fairness"][f], ci) for f, ci in out["fairness"]["ci"].items()]
    checked = [(v, lo, hi) for v, (lo, hi) in pairs if None not in (v, lo, hi)]
    assert len(checked) > 0.9 * len(pairs)
    assert all(lo <= v <= hi for v, lo, hi in checked)
    assert out["bootstrap"]["method"] == "percentile"
    assert out["bootstrap"]["interval_methods"] == {"gap": "folded", **FAIRNESS_INTERVALS}
    assert set(FAIRNESS_INTERVALS) == set(FAIRNESS_FIGURES)


def _same_population(rng: np.random.Generator, *, speakers: int = 120, per: int = 4) -> Predictions:
    """Female and male speakers from one population (speaker accuracies ~ Beta(7, 3), two languages,
    3 classes): every gender gap, per class or per cell, is 0 in truth."""
    speaker = np.repeat(np.arange(speakers), per)
    gender = np.where(speaker % 2 == 0, "female", "male")
    correct = rng.random(speaker.size) < np.repeat(rng.beta(7.0, 3.0, speakers), per)
    pred = simulated(correct, gender=gender, speaker=speaker.astype(str))
    language = np.where(rng.random(speaker.size) < 0.5, "eng", "deu")
    return Predictions.from_frame(pred.frame.assign(language=language), source="same population")


def test_zero_gap_coverage_of_the_absolute_figures():
    """200 tables of 120 speakers whose genders share one population (every gap is 0 in truth), a
    95 % speaker bootstrap: the reported interval of |male − female| and of every fairness figure
    covers 0 at about the nominal rate, while the percentile interval of the resampled absolute
    values — the old method — almost never does (its replicates all lie above the estimate)."""
    rng = np.random.default_rng(14)
    fine = ("gender", "language")  # bootstrap_ci's cell order, so its replicates are drawn again here
    options = dict(metrics=("accuracy",), by=("gender",), cells=("language",), group_column="gender",
                   worst_cell_metric="accuracy")
    trials = 200
    figures = ("gap",) + FAIRNESS_FIGURES
    new = dict.fromkeys(figures, 0)
    old = dict.fromkeys(figures, 0)
    for d in range(trials):
        pred = _same_population(rng)
        point = _figure_arrays(SliceMetrics.from_predictions(pred, fine), **options)
        reps = _figure_arrays(resample_statistics(pred, fine, unit="speaker", n_resamples=200, seed=d), **options)
        intervals = _intervals(point, reps, 0.95)
        if d == 0:  # the intervals are those bootstrap_ci reports
            result = bootstrap_ci(pred, unit="speaker", n_resamples=200, seed=d, **options)
            np.testing.assert_array_equal(result.fairness["low"], intervals["fairness"][0])
            np.testing.assert_array_equal(result.gaps["high"], intervals["gaps"][1].ravel())
        low = {"gap": intervals["gaps"][0][-1, 0, 3], **dict(zip(FAIRNESS_FIGURES, intervals["fairness"][0]))}
        old_low = {"gap": _naive(reps, "gaps", (slice(None), -1, 0, 3))[0],
                   **dict(zip(FAIRNESS_FIGURES, _naive(reps, "fairness", (slice(None),))[0]))}
        for f in figures:
            new[f] += low[f] <= 0.0  # intervals of non-negative figures: covering 0 is low = 0
            old[f] += old_low[f] <= 0.0
    for f in figures:
        assert new[f] / trials >= 0.9, (f, new[f])
        assert old[f] / trials <= 0.1, (f, old[f])
