"""Bootstrap intervals: exact resampling mechanics, agreement with the point estimates, coverage."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from llmfair.errors import ConfigError
from llmfair.metrics import (
    SliceMetrics,
    bootstrap_ci,
    cluster_ids,
    fairness_summary,
    gender_gaps,
    percentile_interval,
    resample_statistics,
    summary_dict,
)
from llmfair.metrics.bootstrap import _cluster_types
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
    for d in range(120):
        pred = simulated(rng.random(n) < p, gender=gender)
        result = bootstrap_ci(pred, n_resamples=200, seed=d, metrics=("accuracy",))
        row = result.gaps[(result.gaps["language"] == "all") & (result.gaps["figure"] == "male_minus_female")].iloc[0]
        covered += row["low"] <= 0.1 <= row["high"]
    assert 0.88 <= covered / 120 <= 0.99


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
