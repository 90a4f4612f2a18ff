"""Every metric against an independent computation (scikit-learn, fairlearn, numpy by hand)."""
from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import (
    MetricFrame,
    count,
    demographic_parity_difference,
    equal_opportunity_difference,
    equalized_odds_difference,
    false_positive_rate,
)
from sklearn.metrics import accuracy_score, f1_score, hamming_loss, recall_score

from llmfair.data.labels import CREMA_D, MELD
from llmfair.errors import ConfigError, DataError
from llmfair.metrics import (
    SliceMetrics,
    accuracy,
    confusion_matrix,
    correction_net_figures,
    fairness_summary,
    gain,
    gender_gaps,
    hamming_accuracy,
    macro_f1,
    multilabel_fpr,
    multilabel_macro_f1,
    multilabel_tpr,
    multilabel_weighted_f1,
    per_class_fpr,
    per_class_gaps,
    per_class_tpr,
    statistical_parity,
    two_sided_parity,
    weighted_f1,
)
from llmfair.predictions import Predictions

SEEDS = (0, 1, 2, 3)
CELLS = ["language", "modality"]
BY = ["language", "modality", "gender"]


def random_table(
    n: int = 600,
    *,
    seed: int = 0,
    multilabel: bool = False,
    classes: tuple[str, ...] = MELD.classes,
    genders: tuple[str, ...] = ("female", "male", "unknown"),
    speakers: int = 40,
) -> Predictions:
    """A random predictions table with imbalanced classes; for single-label tables the last class
    never occurs as a label (but is predicted) and the predictions are better for one gender."""
    rng = np.random.default_rng(seed)
    k = len(classes)
    frame = pd.DataFrame(
        {
            "id": [f"u{i}" for i in range(n)],
            "split": "test",
            "language": rng.choice(["eng", "deu", "jpn"], n),
            "modality": rng.choice(["audio", "audio_text"], n),
            "gender": rng.choice(genders, n, p=np.full(len(genders), 1 / len(genders))),
            "speaker": [f"s{i}" for i in rng.integers(0, speakers, n)],
        }
    )
    logits = rng.normal(size=(n, k)) * 1.5
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    if multilabel:
        soft = rng.dirichlet(np.full(k, 0.6), n)
        for j, c in enumerate(classes):
            frame[f"label_{c}"] = soft[:, j]
    else:
        weights = np.linspace(3.0, 0.2, k)
        weights[-1] = 0.0  # a class with no support
        labels = rng.choice(k, n, p=weights / weights.sum())
        good = rng.random(n) < np.where(frame["gender"] == "male", 0.6, 0.4)
        pred = np.where(good, labels, probs.argmax(axis=1))
        probs[np.arange(n), pred] += 2.0
        probs /= probs.sum(axis=1, keepdims=True)
        frame["label"] = np.asarray(classes)[labels]
    for j, c in enumerate(classes):
        frame[f"prob_{c}"] = probs[:, j]
    frame["prediction"] = np.asarray(classes)[probs.argmax(axis=1)]
    return Predictions.from_frame(frame, source=f"random(seed={seed})")


def indicators(pred: Predictions) -> tuple[np.ndarray, np.ndarray]:
    return pred.label_bin.astype(int), pred.prediction_bin.astype(int)


SK_METRICS = {
    "accuracy": accuracy_score,
    "weighted_f1": functools.partial(f1_score, average="weighted", zero_division=0),
    "macro_f1": functools.partial(f1_score, average="macro", zero_division=0),
}


# ----------------------------------------------------------------------------- single-label
@pytest.mark.parametrize("seed", SEEDS)
def test_single_label_overall_matches_sklearn(seed):
    pred = random_table(seed=seed)
    y, p, k = pred.labels, pred.predictions, pred.num_classes
    row = SliceMetrics.from_predictions(pred, ()).table().iloc[0]
    assert row["n"] == pred.n
    assert row["accuracy"] == pytest.approx(accuracy_score(y, p), abs=1e-12)
    # weighted: labels = the whole label space, a predicted class without support weighs 0
    assert row["weighted_f1"] == pytest.approx(f1_score(y, p, labels=range(k), average="weighted", zero_division=0), abs=1e-12)
    assert row["macro_f1"] == pytest.approx(f1_score(y, p, average="macro", zero_division=0), abs=1e-12)
    assert accuracy(y, p, k) == pytest.approx(accuracy_score(y, p), abs=1e-12)
    assert weighted_f1(y, p, k) == pytest.approx(f1_score(y, p, average="weighted", zero_division=0), abs=1e-12)
    assert macro_f1(y, p, k) == pytest.approx(f1_score(y, p, average="macro", zero_division=0), abs=1e-12)
    tpr = per_class_tpr(y, p, k)
    np.testing.assert_allclose(tpr, recall_score(y, p, labels=range(k), average=None, zero_division=np.nan), atol=1e-12)
    assert np.isnan(tpr[-1])  # the class without positives
    fpr = per_class_fpr(y, p, k)
    np.testing.assert_allclose(fpr, [false_positive_rate(y == c, p == c) for c in range(k)], atol=1e-12)


def test_macro_f1_skips_classes_absent_from_truth_and_prediction():
    # class 2 occurs nowhere: sklearn's default labels leave it out (F1 0 and 1 are both 2/3);
    # with labels = the whole label space it would count as 0 and give 4/9
    y, p = np.array([0, 0, 1]), np.array([0, 1, 1])
    assert macro_f1(y, p, 3) == pytest.approx(2 / 3)
    assert macro_f1(y, p, 3) == pytest.approx(f1_score(y, p, average="macro", zero_division=0))
    assert f1_score(y, p, labels=[0, 1, 2], average="macro", zero_division=0) == pytest.approx(4 / 9)
    # weighted F1 is the same either way: a class without support weighs 0
    assert weighted_f1(y, p, 3) == pytest.approx(f1_score(y, p, labels=[0, 1, 2], average="weighted", zero_division=0))


@pytest.mark.parametrize("seed", SEEDS)
def test_slices_match_fairlearn_metricframe(seed):
    pred = random_table(seed=seed)
    table = SliceMetrics.from_predictions(pred, BY).table().set_index(BY)
    mf = MetricFrame(
        metrics={**SK_METRICS, "n": count}, y_true=pred.labels, y_pred=pred.predictions,
        sensitive_features=pred.frame[BY],
    )
    expected = mf.by_group
    for col in ("accuracy", "weighted_f1", "macro_f1"):
        np.testing.assert_allclose(table[col].to_numpy(), expected.loc[table.index, col].to_numpy(dtype=float), atol=1e-12)
    np.testing.assert_array_equal(table["n"].to_numpy(), expected.loc[table.index, "n"].to_numpy(dtype=int))


def test_per_class_table_and_emotion_slices_match_sklearn():
    pred = random_table(seed=5)
    table = SliceMetrics.from_predictions(pred, ["gender"]).table(per_class=("tpr", "fpr", "support"))
    for _, row in table.iterrows():
        mask = pred.frame["gender"].to_numpy() == row["gender"]
        y, p = pred.labels[mask], pred.predictions[mask]
        rec = recall_score(y, p, labels=range(pred.num_classes), average=None, zero_division=np.nan)
        np.testing.assert_allclose(row[[f"tpr_{c}" for c in pred.classes]].to_numpy(dtype=float), rec, atol=1e-12)
        np.testing.assert_array_equal(row[[f"support_{c}" for c in pred.classes]].to_numpy(dtype=int), np.bincount(y, minlength=pred.num_classes))
    # slicing by the virtual "emotion" column: accuracy in cell (g, e) is TPR_{g,e}
    cells = SliceMetrics.from_predictions(pred, ["gender", "emotion"]).table()
    for _, row in cells.iterrows():
        mask = (pred.frame["gender"].to_numpy() == row["gender"]) & (pred.labels == pred.classes.index(row["emotion"]))
        assert row["accuracy"] == pytest.approx(np.mean(pred.predictions[mask] == pred.labels[mask]), abs=1e-12)
        assert row["n"] == mask.sum()


def test_merge_equals_direct_grouping():
    pred = random_table(seed=6)
    fine = SliceMetrics.from_predictions(pred, BY)
    for by in (["language"], ["gender", "modality"], []):
        merged = fine.merge(by).table(("accuracy", "weighted_f1", "macro_f1"))
        direct = SliceMetrics.from_predictions(pred, by).table(("accuracy", "weighted_f1", "macro_f1"))
        pd.testing.assert_frame_equal(merged, direct)


# ------------------------------------------------------------------------------- multi-label
@pytest.mark.parametrize("seed", SEEDS)
def test_multilabel_metrics_match_sklearn(seed):
    pred = random_table(seed=seed, multilabel=True, classes=CREMA_D.classes)
    y, p = indicators(pred)
    assert multilabel_macro_f1(pred.labels, pred.probs) == pytest.approx(f1_score(y, p, average="macro", zero_division=0), abs=1e-12)
    assert multilabel_weighted_f1(pred.labels, pred.probs) == pytest.approx(f1_score(y, p, average="weighted", zero_division=0), abs=1e-12)
    assert hamming_accuracy(pred.labels, pred.probs) == pytest.approx(1 - hamming_loss(y, p), abs=1e-12)
    np.testing.assert_allclose(multilabel_tpr(pred.labels, pred.probs), recall_score(y, p, average=None, zero_division=np.nan), atol=1e-12)
    np.testing.assert_allclose(
        multilabel_fpr(pred.labels, pred.probs), [false_positive_rate(y[:, c], p[:, c]) for c in range(6)], atol=1e-12
    )
    table = SliceMetrics.from_predictions(pred, BY).table(("accuracy", "hamming_accuracy", "weighted_f1", "macro_f1"))
    for _, row in table.iterrows():
        mask = np.ones(pred.n, dtype=bool)
        for col in BY:
            mask &= pred.frame[col].to_numpy() == row[col]
        assert row["n"] == mask.sum()
        assert row["accuracy"] == pytest.approx(1 - hamming_loss(y[mask], p[mask]), abs=1e-12)
        assert row["hamming_accuracy"] == row["accuracy"]
        assert row["macro_f1"] == pytest.approx(f1_score(y[mask], p[mask], average="macro", zero_division=0), abs=1e-12)
        assert row["weighted_f1"] == pytest.approx(f1_score(y[mask], p[mask], average="weighted", zero_division=0), abs=1e-12)


def test_multilabel_binarisation_is_strictly_above_one_over_k():
    # K = 4: 0.25 is exactly 1/K and must be off; 0.2501 on (EMO-SUPERB expert.py, METHODS.md §1.2)
    soft = np.array([[0.25, 0.25, 0.25, 0.25], [0.2501, 0.2499, 0.3, 0.2], [0.7, 0.1, 0.1, 0.1]])
    probs = np.array([[0.4, 0.3, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25], [0.26, 0.26, 0.26, 0.22]])
    y = np.array([[0, 0, 0, 0], [1, 0, 1, 0], [1, 0, 0, 0]])
    p = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0]])
    assert hamming_accuracy(soft, probs) == pytest.approx((y == p).mean())
    assert multilabel_macro_f1(soft, probs) == pytest.approx(f1_score(y, p, average="macro", zero_division=0))
    # by hand: class 0 tp=1 fp=1 fn=1 → 0.5; class 1 fp=2 → 0; class 2 fp=1 fn=1 → 0; class 3 → 0
    assert multilabel_macro_f1(soft, probs) == pytest.approx(0.5 / 4)
    assert hamming_accuracy(soft, probs) == pytest.approx(6 / 12)


# ------------------------------------------------------------------------------ fairness gaps
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("multilabel", [False, True])
def test_class_gaps_match_fairlearn(seed, multilabel):
    pred = random_table(seed=seed, multilabel=multilabel, classes=CREMA_D.classes if multilabel else MELD.classes)
    known = pred.frame["gender"].isin(["female", "male"]).to_numpy()
    y, p = indicators(pred)
    g = pred.frame["gender"].to_numpy()[known]
    y, p = y[known], p[known]
    gaps = per_class_gaps(pred)
    summary = fairness_summary(pred)
    tpr_gaps, fpr_gaps, dp_gaps = [], [], []
    for c in range(pred.num_classes):
        has_pos = all(y[g == grp, c].sum() > 0 for grp in ("female", "male"))
        if has_pos:
            tpr_gaps.append(equal_opportunity_difference(y[:, c], p[:, c], sensitive_features=g))
            eo = equalized_odds_difference(y[:, c], p[:, c], sensitive_features=g)
            assert max(gaps["tpr_gap"][c], gaps["fpr_gap"][c]) == pytest.approx(eo, abs=1e-12)
        else:
            assert np.isnan(gaps["tpr_gap"][c])
        fpr = [false_positive_rate(y[g == grp, c], p[g == grp, c]) for grp in ("female", "male")]
        fpr_gaps.append(abs(fpr[1] - fpr[0]))
        dp_gaps.append(demographic_parity_difference(y[:, c], p[:, c], sensitive_features=g))
        assert gaps["dp_gap"][c] == pytest.approx(dp_gaps[-1], abs=1e-12)
        f1 = [f1_score(y[g == grp, c], p[g == grp, c], zero_division=0) for grp in ("female", "male")]
        if has_pos:
            assert gaps["f1_gap"][c] == pytest.approx(abs(f1[1] - f1[0]), abs=1e-12)
    k = pred.num_classes
    assert summary["tpr_gap_rms"] == pytest.approx(np.sqrt(np.mean(np.square(tpr_gaps))), abs=1e-12)
    assert summary["n_skipped"]["tpr"] == k - len(tpr_gaps)
    assert summary["fpr_gap_rms"] == pytest.approx(np.sqrt(np.mean(np.square(fpr_gaps))), abs=1e-12)
    assert summary["dp_gap_sum"] == pytest.approx(np.sqrt(np.sum(np.square(dp_gaps))), abs=1e-12)
    assert summary["dp_gap_rms"] == pytest.approx(np.sqrt(np.mean(np.square(dp_gaps))), abs=1e-12)
    assert summary["dp_gap_sum"] == pytest.approx(summary["dp_gap_rms"] * np.sqrt(k), abs=1e-12)
    assert summary["n_unknown_gender"] == int((pred.frame["gender"] == "unknown").sum())
    parity = statistical_parity(pred)
    np.testing.assert_allclose(parity["delta_sp"], dp_gaps, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_gender_gaps_match_metricframe(seed):
    pred = random_table(seed=seed)
    gaps = gender_gaps(pred).set_index(CELLS + ["metric"])
    known = pred.frame["gender"].isin(["female", "male"]).to_numpy()
    frame = pred.frame.loc[known]
    mf = MetricFrame(
        metrics=SK_METRICS, y_true=pred.labels[known], y_pred=pred.predictions[known],
        sensitive_features=frame["gender"], control_features=frame[CELLS],
    )
    by = mf.by_group
    overall = MetricFrame(metrics=SK_METRICS, y_true=pred.labels[known], y_pred=pred.predictions[known],
                          sensitive_features=frame["gender"]).by_group
    worst = 0.0
    for metric in SK_METRICS:
        for (lang, mod) in frame[CELLS].drop_duplicates().itertuples(index=False):
            row = gaps.loc[(lang, mod, metric)]
            male, female = by.loc[(lang, mod, "male"), metric], by.loc[(lang, mod, "female"), metric]
            assert row["male_minus_female"] == pytest.approx(male - female, abs=1e-12)
            assert row["gap"] == pytest.approx(abs(male - female), abs=1e-12)
            if metric == "weighted_f1":
                worst = max(worst, abs(male - female))
        row = gaps.loc[("all", "all", metric)]
        assert row["male_minus_female"] == pytest.approx(overall.loc["male", metric] - overall.loc["female", metric], abs=1e-12)
        assert row["n_unknown"] == int((~known).sum())
    assert fairness_summary(pred)["worst_cell_gap"] == pytest.approx(worst, abs=1e-12)


def hand_table() -> Predictions:
    """8 rows, classes (a, b, c), by hand:
    female: (a→a) (a→a) (b→b) (b→a)  → accuracy 3/4; TPR a=1, b=1/2; c has no positives
    male:   (a→b) (a→a) (b→b) (c→c)  → accuracy 3/4; TPR a=1/2, b=1, c=1 (female has no c → skipped)
    one unknown row (a→c) is excluded from gaps. Cells: female rows in eng/audio, male rows split.
    """
    rows = [
        ("f1", "female", "eng", "a", "a"), ("f2", "female", "eng", "a", "a"), ("f3", "female", "eng", "b", "b"),
        ("f4", "female", "eng", "b", "a"), ("m1", "male", "eng", "a", "b"), ("m2", "male", "eng", "a", "a"),
        ("m3", "male", "deu", "b", "b"), ("m4", "male", "deu", "c", "c"), ("x1", "unknown", "eng", "a", "c"),
    ]
    frame = pd.DataFrame(rows, columns=["id", "gender", "language", "label", "prediction"])
    frame = frame.assign(split="test", modality="audio", speaker=frame["id"])
    onehot = np.eye(3)[frame["prediction"].map({"a": 0, "b": 1, "c": 2}).to_numpy()]
    for j, c in enumerate("abc"):
        frame[f"prob_{c}"] = onehot[:, j]
    return Predictions.from_frame(frame, source="hand")


def test_hand_worked_gaps():
    pred = hand_table()
    summary = fairness_summary(pred)
    # TPR gaps: a |1/2 − 1| = 1/2, b |1 − 1/2| = 1/2, c skipped → rms = 1/2
    assert summary["tpr_gap_rms"] == pytest.approx(0.5)
    assert summary["skipped_classes"]["tpr"] == ["c"] and summary["n_skipped"]["tpr"] == 1
    # FPR (negatives): female a: fp 1 of 2 (f4) = 1/2, male a: 0 of 2 = 0 → 1/2
    #   b: female 0/2, male 1/3 (m1) → 1/3;  c: female 0/4, male 0/3 → 0
    assert summary["fpr_gap_rms"] == pytest.approx(np.sqrt((0.25 + 1 / 9 + 0) / 3))
    # selection rates: female (a 3/4, b 1/4, c 0), male (a 1/4, b 2/4, c 1/4)
    dp = np.array([0.5, 0.25, 0.25])
    assert summary["dp_gap_sum"] == pytest.approx(np.sqrt(np.sum(dp**2)))
    assert summary["dp_gap_rms"] == pytest.approx(np.sqrt(np.mean(dp**2)))
    # F1 per group: female a 2·2/(4+1) = 0.8, b 2/(2+1) = 2/3; male a 2/(2+1) = 2/3, b 2/(2+1) = 2/3
    assert summary["f1_gap_rms"] == pytest.approx(np.sqrt(((0.8 - 2 / 3) ** 2 + 0) / 2))
    assert summary["n_unknown_gender"] == 1
    gaps = gender_gaps(pred, ("accuracy",)).set_index(["language", "metric"])
    # eng: female 3/4, male 1/2; deu: male only → NaN gap; overall 3/4 vs 3/4
    assert gaps.loc[("eng", "accuracy"), "male_minus_female"] == pytest.approx(-0.25)
    assert np.isnan(gaps.loc[("deu", "accuracy"), "gap"])
    assert gaps.loc[("deu", "accuracy"), "n_female"] == 0 and gaps.loc[("deu", "accuracy"), "n_male"] == 2
    assert gaps.loc[("all", "accuracy"), "gap"] == pytest.approx(0.0)
    assert gaps.loc[("eng", "accuracy"), "n_unknown"] == 1
    worst = fairness_summary(pred, worst_cell_metric="accuracy")
    assert worst["worst_cell_gap"] == pytest.approx(0.25) and worst["worst_cell"] == {"language": "eng", "modality": "audio"}


def test_correction_net_figures_by_hand_and_reference_fill():
    pred = hand_table()
    out = correction_net_figures(pred)
    # cells (g, e): F-a 1, F-b 1/2, F-c missing; M-a 1/2, M-b 1, M-c 1
    assert out["missing_cells"] == [("female", "c")]
    assert out["macro_average_accuracy"] == pytest.approx((1 + 0.5 + 0.5 + 1 + 1) / 5)
    assert out["gaps"]["a"] == pytest.approx(0.5) and out["gaps"]["b"] == pytest.approx(0.5) and np.isnan(out["gaps"]["c"])
    assert out["largest_gap"] == pytest.approx(0.5) and out["average_gap"] == pytest.approx(0.5)
    assert out["n_excluded"] == 1
    # the reference notebook: pivot accuracy per (gender, emotion), fillna(0), mean; gaps per emotion
    known = pred.frame[pred.frame["gender"] != "unknown"]
    correct = (known["label"] == known["prediction"]).astype(float)
    pivot = correct.groupby([known["gender"], known["label"]]).mean().unstack().reindex(columns=list("abc")).fillna(0)
    ref = correction_net_figures(pred, fill_missing=0.0)
    assert ref["macro_average_accuracy"] == pytest.approx(pivot.to_numpy().mean())
    ref_gaps = (pivot.loc["female"] - pivot.loc["male"]).abs()
    assert ref["largest_gap"] == pytest.approx(ref_gaps.max()) and ref["average_gap"] == pytest.approx(ref_gaps.mean())


def test_two_sided_parity_with_rater_gender():
    pred = random_table(seed=7)
    frame = pred.frame.copy()
    frame["rater_gender"] = np.random.default_rng(0).choice(["F", "M"], pred.n)  # normalised on reading
    pred = Predictions.from_frame(frame, source="raters")
    out = two_sided_parity(pred)
    y_hat = pred.predictions
    for c in range(pred.num_classes):
        for col, group in (("delta_sp_spk", "gender"), ("delta_sp_rat", "rater_gender")):
            g = pred.frame[group].to_numpy()
            known = g != "unknown"
            expected = demographic_parity_difference(pred.labels[known] == c, y_hat[known] == c, sensitive_features=g[known])
            assert out[col][c] == pytest.approx(expected, abs=1e-12)
    np.testing.assert_allclose(out["product"], out["delta_sp_spk"] * out["delta_sp_rat"])
    np.testing.assert_allclose(out["abs_difference"], np.abs(out["delta_sp_spk"] - out["delta_sp_rat"]))


def test_gain_reproduces_idi_tables():
    # IDI Table 2, K = 16, race TPR: (0.183 − 0.1525) / 0.183 = 16.67 %
    assert gain("tpr_gap", 0.1525, 0.183) == pytest.approx(0.16667, abs=1e-4)
    # IDI Table 1, unsupervised (○) rows DS, RW, GDRO, GADRO; gains of their means vs ERM (§5.1)
    rows = np.array([[0.561, 0.755, 0.201, 0.100], [0.642, 0.817, 0.237, 0.091],
                     [0.639, 0.803, 0.228, 0.104], [0.638, 0.804, 0.223, 0.098]]).mean(axis=0)
    erm = (0.651, 0.824, 0.278, 0.103)
    got = [gain(m, v, r) for m, v, r in zip(("macro_f1", "accuracy", "tpr_gap_rms", "dp_gap_sum"), rows, erm)]
    np.testing.assert_allclose(got, [-0.0476, -0.0355, 0.2005, 0.0461], atol=5e-5)
    np.testing.assert_allclose(gain("accuracy", np.array([0.5, 1.0]), 0.5), [0.0, 1.0])
    with pytest.raises(ConfigError, match="unknown metric"):
        gain("loss", 1.0, 2.0)
    with pytest.raises(ConfigError, match="reference of 0"):
        gain("accuracy", 1.0, 0.0)


# ------------------------------------------------------------------------------- bad inputs
def test_bad_inputs_give_clear_errors():
    pred = random_table(seed=8)
    with pytest.raises(DataError, match="no column 'age'"):
        SliceMetrics.from_predictions(pred, ["age"])
    sm = SliceMetrics.from_predictions(pred, BY)
    with pytest.raises(DataError, match="empty slice"):
        sm.where(language="fra")
    with pytest.raises(ConfigError, match="unknown metric 'auc'"):
        sm.metric("auc")
    with pytest.raises(ConfigError, match="cannot merge by"):
        sm.merge(["speaker"])
    with pytest.raises(DataError, match="outside the label space"):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(DataError, match="empty set"):
        accuracy(np.array([], dtype=int), np.array([], dtype=int), 3)
    with pytest.raises(DataError, match="empty set"):
        hamming_accuracy(np.zeros((0, 3)), np.zeros((0, 3)))
    females = random_table(seed=8, genders=("female", "unknown"))
    with pytest.raises(DataError, match="both female and male"):
        gender_gaps(females)
    with pytest.raises(DataError, match="at least two known"):
        fairness_summary(females)
    with pytest.raises(DataError, match="female and male"):
        statistical_parity(females)
    with pytest.raises(DataError, match="has no column 'rater_gender'"):
        two_sided_parity(pred)
