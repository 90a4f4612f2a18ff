"""Two-sided speaker/rater fairness: per-rater rows and S2 against hand computations, the
Wasserstein / contrastive / centroid terms against scipy and loops, α's mapping, and the objective
against ERM on data where each side's bias is built in (the built-in corpus for the speaker side,
constructed features for the rater side)."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import scipy.stats
import torch

from llmfair.data.example import Example, RaterAnnotation
from llmfair.data.labels import MELD
from llmfair.data.ratings import (
    consensus_labels,
    expand_ratings,
    rater_biased_subset,
    rater_group_spec,
)
from llmfair.errors import ConfigError, DataError
from llmfair.metrics import statistical_parity, two_sided_parity
from llmfair.objectives import OBJECTIVES, GroupSpec, ObjectiveInputs, TrainingStats, build_objective
from llmfair.objectives.two_sided import (
    TwoSided,
    centroid_distance,
    supervised_contrastive_loss,
    wasserstein_1d,
    wasserstein_distance,
)
from llmfair.predictions import write_predictions
from llmfair.ssl import EmoSuperbHead, HeadOptions

ANGER, SADNESS = MELD.index("anger"), MELD.index("sadness")
NO_FAIRNESS = {"class_balanced": False, "adversary_strength": 0.0, "lambda_rater": 0.0, "lambda_speaker": 0.0, "contrastive_weight": 0.0,
               "alpha": "fixed", "fixed_alpha": 0.5}
"""two_sided with every fairness term off: 0.5·CE(C(z_R)) + 0.5·CE(C(z_S)), the same network as ERM."""


pytestmark = pytest.mark.usefixtures("one_thread")


def example(i: int, gender: str, ratings: list[tuple[str, str, int]], emotion: int = 0) -> Example:
    return Example(id=f"u{i}", audio=np.zeros(160, np.float32), text="", language="eng", modality="audio",
                   emotion=emotion, gender=gender, speaker=f"s{i}", split="train",
                   annotations=tuple(RaterAnnotation(r, g, e) for r, g, e in ratings))


# ------------------------------------------------------------------------------------- data layer
def test_expand_ratings_consensus_and_s2_by_hand() -> None:
    a, s, n = ANGER, SADNESS, MELD.index("neutral")
    examples = [
        example(0, "female", [("r1", "female", a), ("r2", "female", a), ("r4", "male", s)]),  # S2, female-aligned
        example(1, "female", [("r1", "female", a), ("r4", "male", s), ("r5", "male", s)]),    # S2, male-aligned
        example(2, "male", [("r1", "female", n), ("r4", "male", n), ("r5", "male", a)]),      # both gave n: not S2
        example(3, "male", [("r4", "male", a), ("r5", "male", a)]),                            # no woman rated: not S2
        example(4, "female", [("r1", "female", a), ("r4", "male", s)]),                        # tie: no consensus
        example(5, "male", [("r1", "female", s), ("r2", "unknown", s), ("r4", "male", n)]),   # S2 with an unknown rater
    ]
    rows = expand_ratings(examples, num_classes=MELD.num_classes)
    assert len(rows) == 16
    assert rows.example_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4, 4, 5, 5, 5]
    assert rows.label.tolist()[:3] == [a, a, s] and rows.rater.tolist()[:3] == ["r1", "r2", "r4"]
    assert rows.gender.tolist()[:3] == ["female"] * 3 and rows.rater_gender.tolist()[:3] == ["female", "female", "male"]
    spec, ids = rows.group_ids()
    assert spec == rater_group_spec() and spec.keys == ("gender", "rater_gender") and spec.num_groups == 9
    assert [spec.groups[i] for i in ids[:3]] == [("female", "female"), ("female", "female"), ("female", "male")]
    assert spec.groups[ids[-2]] == ("male", "unknown")

    assert consensus_labels(examples, MELD.num_classes).tolist() == [a, s, n, a, -1, s]
    s2 = rater_biased_subset(examples, MELD.num_classes)
    assert s2.example_index.tolist() == [0, 1, 5]
    assert s2.consensus.tolist() == [a, s, s]
    assert s2.rater_gender.tolist() == ["female", "male", "female"]
    assert s2.column().tolist() == ["female", "male", "unknown", "unknown", "unknown", "female"]


def test_ratings_errors_name_the_problem() -> None:
    rated = example(0, "female", [("r1", "female", ANGER)])
    with pytest.raises(DataError, match=r"1 of 2 examples have no rater annotations.*'u1'"):
        expand_ratings([rated, example(1, "male", [])])
    assert len(expand_ratings([rated, example(1, "male", [])], missing="skip")) == 1
    with pytest.raises(DataError, match="outside the label space"):
        expand_ratings([example(2, "male", [("r1", "female", 9)])], num_classes=7)
    with pytest.raises(DataError, match=r"rater gender value\(s\) \['robot'\]"):
        expand_ratings([example(3, "male", [("r1", "robot", 1)])])
    with pytest.raises(DataError, match="none of the 1 examples"):
        expand_ratings([example(4, "male", [])], missing="skip")


def test_vectorised_s2_matches_a_loop_on_random_ratings() -> None:
    rng = np.random.default_rng(3)
    examples = []
    for i in range(300):
        k = rng.integers(1, 5)
        examples.append(example(i, ["female", "male"][i % 2], [
            (f"r{j}", ["female", "male", "unknown"][rng.choice(3, p=[0.45, 0.45, 0.1])], int(rng.integers(0, 3)))
            for j in range(k)]))
    s2 = rater_biased_subset(examples, 3)
    expected = {}
    for i, ex in enumerate(examples):
        votes = Counter(a.emotion for a in ex.annotations)
        top = max(votes.values())
        winners = [c for c, v in votes.items() if v == top]
        by = {g: {a.emotion for a in ex.annotations if a.rater_gender == g} for g in ("female", "male")}
        if len(winners) != 1 or not by["female"] or not by["male"]:
            continue
        c = winners[0]
        if (c in by["female"]) != (c in by["male"]):
            expected[i] = "female" if c in by["female"] else "male"
    assert dict(zip(s2.example_index.tolist(), s2.rater_gender.tolist())) == expected
    assert 20 < len(expected) < 280


# ------------------------------------------------------------------------------------- loss terms
def test_wasserstein_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(13, 4)), rng.normal(1.0, 2.0, size=(7, 4))
    ours = wasserstein_1d(torch.tensor(x), torch.tensor(y)).numpy()
    np.testing.assert_allclose(ours, [scipy.stats.wasserstein_distance(x[:, j], y[:, j]) for j in range(4)], rtol=1e-10)
    assert float(wasserstein_distance(torch.tensor(x), torch.tensor(y))) == pytest.approx(ours.mean())
    # sliced: the mean W1 along the generator's unit directions
    gen = torch.Generator().manual_seed(5)
    sliced = float(wasserstein_distance(torch.tensor(x), torch.tensor(y), method="sliced", num_projections=6,
                                        generator=gen))
    theta = torch.randn(4, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64).numpy()
    theta /= np.linalg.norm(theta, axis=0)
    hand = np.mean([scipy.stats.wasserstein_distance(x @ theta[:, j], y @ theta[:, j]) for j in range(6)])
    assert sliced == pytest.approx(hand, rel=1e-10)
    with pytest.raises(DataError):
        wasserstein_1d(torch.zeros(0, 2), torch.zeros(3, 2))


def test_contrastive_and_centroid_terms_match_loops() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(size=(7, 5))
    labels = np.array([0, 1, 0, 1, 1, -1, 0])
    tau = 0.3
    keep = np.flatnonzero(labels >= 0)
    u = z[keep] / np.linalg.norm(z[keep], axis=1, keepdims=True)
    lab = labels[keep]
    per_anchor, centered = [], []
    for i in range(len(keep)):
        others = [a for a in range(len(keep)) if a != i]
        log_denominator = np.log(sum(np.exp(u[i] @ u[a] / tau) for a in others))
        log_prob = {a: u[i] @ u[a] / tau - log_denominator for a in others}
        pos = [p for p in others if lab[p] == lab[i]]
        per_anchor.append(-np.mean([log_prob[p] for p in pos]))
        centered.append(per_anchor[-1] + np.mean([log_prob[a] for a in others]))
    zt, lt = torch.tensor(z), torch.tensor(labels)
    assert float(supervised_contrastive_loss(zt, lt, tau)) == pytest.approx(np.mean(per_anchor), rel=1e-10)
    assert float(supervised_contrastive_loss(zt, lt, tau, centered=True)) == pytest.approx(np.mean(centered), rel=1e-10)
    assert float(centroid_distance(zt, lt)) == pytest.approx(
        np.linalg.norm(z[labels == 0].mean(0) - z[labels == 1].mean(0)) / np.sqrt(5), rel=1e-9)
    assert float(centroid_distance(zt, torch.zeros(7, dtype=torch.long))) == 0.0


def two_sided_objective(options: dict | None = None, classes: int = 3) -> TwoSided:
    obj = build_objective("two_sided", rater_group_spec(), {"class_balanced": False, **(options or {})})
    group_ids = np.arange(9)
    obj.setup(TrainingStats.from_arrays(group_ids, group_ids % classes, 9, classes))
    return obj


def test_registry_options_and_setup_errors() -> None:
    assert OBJECTIVES["two_sided"] is TwoSided and TwoSided.reconstructed
    spec, _ = GroupSpec.from_records([{"gender": "female"}, {"gender": "male"}], ("gender",))
    with pytest.raises(ConfigError, match="'rater_gender'.*expand_ratings"):
        build_objective("two_sided", spec)
    with pytest.raises(ConfigError, match="alpha"):
        build_objective("two_sided", rater_group_spec(), {"alpha": "learned"})
    fresh = build_objective("two_sided", rater_group_spec())
    with pytest.raises(ConfigError, match="setup"):
        fresh.predict_logits({"features": torch.zeros(2, 4)})


def test_alpha_maps_and_speaker_wasserstein_by_hand() -> None:
    obj = two_sided_objective({"alpha": "sigmoid", "alpha_momentum": 0.5})
    distances = [0.2, 0.6, 0.3, 0.9]
    alphas = [obj.alpha_from_distance(d) for d in distances]
    m1 = m2 = 0.0
    expected = []
    for t, d in enumerate(distances, start=1):
        m1, m2 = 0.5 * m1 + 0.5 * d, 0.5 * m2 + 0.5 * d * d
        mean, var = m1 / (1 - 0.5 ** t), m2 / (1 - 0.5 ** t) - (m1 / (1 - 0.5 ** t)) ** 2
        expected.append(0.5 if var <= 1e-12 else 1 / (1 + math.exp(-(d - mean) / math.sqrt(var))))
    np.testing.assert_allclose(alphas, expected, rtol=1e-9)
    minmax = two_sided_objective({"alpha": "minmax"})
    assert [minmax.alpha_from_distance(d) for d in distances] == pytest.approx([0.5, 1.0, 0.25, 1.0])
    assert two_sided_objective({"alpha": "fixed", "fixed_alpha": 0.3}).alpha_from_distance(5.0) == 0.3

    # the speaker-side W1 the objective logs = mean over dimensions of scipy's W1 of the standardised z_S
    obj = two_sided_objective({"branch_dim": 6})
    rng = np.random.default_rng(2)
    features = torch.tensor(rng.normal(size=(10, 4)), dtype=torch.float32)
    speaker = np.array(["female", "male"] * 5)
    groups = torch.tensor([rater_group_spec().groups.index((g, "female")) for g in speaker])
    with torch.no_grad():
        obj.embeddings(features)  # materialise the lazy branch
        obj.speaker_branch.weight.normal_()  # a non-zero speaker stage
        z_s = obj.embeddings(features)[0].numpy().astype(np.float64)
    obj.train()
    figures = obj(ObjectiveInputs(per_sample_loss=torch.zeros(10), group_ids=groups, labels=torch.zeros(10, dtype=torch.long),
                                  features=features)).figures
    scaled = z_s / np.sqrt(z_s.var(axis=0) + 1e-6)
    hand = np.mean([scipy.stats.wasserstein_distance(scaled[speaker == "male", j], scaled[speaker == "female", j])
                    for j in range(6)])
    assert figures["speaker_wasserstein"] == pytest.approx(hand, rel=1e-4)
    assert figures["rater_distance"] == 0.0  # one rater gender only in this batch


def test_gradient_reversal_reaches_the_encoder_negated() -> None:
    """With only CE(C(z_R)) and the detector, d loss/d features = d CE/d h − strength · d det_CE/d h
    (the distance terms are computed with weight 0 and must add exactly nothing, not NaN)."""
    obj = two_sided_objective({**NO_FAIRNESS, "adversary_strength": 2.0, "rater_weight": 1.0, "fixed_alpha": 0.0})
    rng = np.random.default_rng(4)
    h = torch.tensor(rng.normal(size=(8, 5)), dtype=torch.float32, requires_grad=True)
    labels = torch.tensor(rng.integers(0, 3, 8))
    spec = rater_group_spec()
    raters = ["female", "male"] * 4
    groups = torch.tensor([spec.groups.index(("male", r)) for r in raters])
    with torch.no_grad():
        obj.embeddings(h)
        obj.rater_branch[0].bias[:3] = -1e3  # dead ReLU units: constant dimensions must not give NaN gradients
    obj.train()
    (grad_total,) = torch.autograd.grad(obj(ObjectiveInputs(per_sample_loss=torch.zeros(8), group_ids=groups,
                                                            labels=labels, features=h)).loss, h)
    assert torch.isfinite(grad_total).all()
    _, z_r = obj.embeddings(h)
    ce = torch.nn.functional.cross_entropy(obj.classifier(z_r), labels)
    det = torch.nn.functional.cross_entropy(obj.rater_detector(z_r), torch.tensor([0, 1] * 4))
    (grad_ce,) = torch.autograd.grad(ce, h, retain_graph=True)
    (grad_det,) = torch.autograd.grad(det, h)
    torch.testing.assert_close(grad_total, grad_ce - 2.0 * grad_det, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------- training
def train_head(features: np.ndarray, labels: np.ndarray, group_ids: np.ndarray, objective: str,
               options: dict | None, *, classes: int, steps: int = 400, seed: int = 0):
    """A plain Adam loop (batch 32) on an EMO-SUPERB head; returns (predict(features) → class ids, figures per step)."""
    torch.manual_seed(seed)
    head = EmoSuperbHead(features.shape[1], classes, options=HeadOptions(loss="ce"))
    spec = rater_group_spec()
    obj = build_objective(objective, spec, options)
    obj.setup(TrainingStats.from_arrays(group_ids, labels, spec.num_groups, classes))
    x, y, g = torch.tensor(features, dtype=torch.float32), torch.tensor(labels), torch.tensor(group_ids)
    obj.train()

    def batch_inputs(index: torch.Tensor) -> ObjectiveInputs:
        out = head(x[index], y[index])
        return ObjectiveInputs(per_sample_loss=out["per_sample_loss"], group_ids=g[index], logits=out["logits"],
                               labels=y[index], features=out["features"])

    # lazy parameters join the optimiser uninitialised and materialise in place (as in FairTrainer)
    optimiser = torch.optim.Adam(list(head.parameters()) + list(obj.parameters()), lr=1e-3, weight_decay=1e-3)
    rng = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(steps):
        result = obj(batch_inputs(torch.randint(0, len(y), (32,), generator=rng)))
        optimiser.zero_grad()
        result.loss.backward()
        optimiser.step()
        history.append(result.figures)
    head.eval()
    obj.eval()

    def predict(feats: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return obj.predict_logits(head(torch.tensor(feats, dtype=torch.float32))).argmax(-1).numpy()

    return predict, history


@pytest.fixture(scope="module")
def rater_biased_corpus(tmp_path_factory):
    """Built-in corpus, rater_bias 0.9 (men hear a woman's anger as sadness), standardised acoustic features.

    360 rows per pair: the benchmark-sized default split (37.5 % test, 8 + 8 train speakers) leaves
    too few train rows per speaker at 120 rows for the label bias to show. The effect is seed-sensitive
    (corpus seeds 2 and 3 fail at this size): a known weakness of this test, not a tuned result."""
    from llmfair.data.meld_st import read_meld_st
    from llmfair.data.synth import SynthConfig, generate_corpus
    from llmfair.ssl import build_feature_extractor, extract_features

    root = tmp_path_factory.mktemp("rater_bias")
    generate_corpus(root / "corpus", SynthConfig(seed=0, utterances_per_pair=360, rater_bias=0.9,
                                                 emotion_priors="anger=0.5,sadness=0.25,neutral=0.25"))
    examples = read_meld_st(root / "corpus")
    feats = extract_features(build_feature_extractor("acoustic"), examples, root / "cache", progress=False)
    train = np.array([ex.split == "train" for ex in examples])
    feats = (feats - feats[train].mean(0)) / (feats[train].std(0) + 1e-6)
    return examples, feats.astype(np.float32), train


def test_two_sided_reduces_speaker_parity_gap_on_rater_biased_corpus(rater_biased_corpus, tmp_path) -> None:
    """Men's labels turn angry women "sad"; the speaker side of two_sided (gender-free z_S) gives
    women's anger back its label: ΔSP_spk on held-out speakers falls well below ERM's and below the
    same network trained without fairness terms, accuracy does not drop, and α moves in [0, 1]."""
    examples, feats, train = rater_biased_corpus
    train_index = np.flatnonzero(train)
    rows = expand_ratings([examples[i] for i in train_index], num_classes=MELD.num_classes)
    _, group_ids = rows.group_ids()
    x_rows = feats[train_index][rows.example_index]
    held_out = np.flatnonzero(~train)
    held = [examples[i] for i in held_out]
    truth = np.array([ex.emotion for ex in held])
    genders = np.array([ex.gender for ex in held])
    s2 = rater_biased_subset(held, MELD.num_classes)

    runs, alphas = {}, []
    for name, objective, options in (("erm", "erm", None), ("plain", "two_sided", NO_FAIRNESS),
                                     ("two_sided", "two_sided", {"class_balanced": False})):
        for seed in (0, 1):  # means over two seeds: one seed can be lucky for either side
            predict, history = train_head(x_rows, rows.label, group_ids, objective, options,
                                          classes=MELD.num_classes, seed=seed)
            alphas += [f["alpha"] for f in history if "alpha" in f]
            pred = predict(feats[held_out])
            table = write_predictions(
                tmp_path / f"{name}{seed}.csv", ids=[ex.id for ex in held], split=[ex.split for ex in held],
                language=[ex.language for ex in held], modality="audio", gender=genders.tolist(),
                speaker=[ex.speaker for ex in held], classes=MELD, probs=np.eye(MELD.num_classes)[pred],
                labels=truth, extra={"rater_gender": s2.column()})
            parity = two_sided_parity(table, table.subset(s2.column() != "unknown"))
            # ΔSP_spk is the hand count of predicted anger among women and among men
            hand = abs((pred[genders == "male"] == ANGER).mean() - (pred[genders == "female"] == ANGER).mean())
            assert parity["delta_sp_spk"].iat[ANGER] == pytest.approx(hand)
            angry_women = (truth == ANGER) & (genders == "female")
            runs.setdefault(name, []).append({
                "dsp_spk": parity["delta_sp_spk"].to_numpy(), "dsp_rat": parity["delta_sp_rat"].to_numpy(),
                "accuracy": float((pred == truth).mean()), "anger_tpr_female": float((pred[angry_women] == ANGER).mean())})
    erm, plain, fair = ({key: np.mean([r[key] for r in runs[name]], axis=0) for key in runs[name][0]}
                        for name in ("erm", "plain", "two_sided"))
    assert erm["dsp_spk"][ANGER] > 0.1 and plain["dsp_spk"][ANGER] > 0.1  # the label bias shows without fairness
    assert fair["dsp_spk"][ANGER] < 0.5 * min(erm["dsp_spk"][ANGER], plain["dsp_spk"][ANGER])
    assert fair["dsp_spk"].max() < min(erm["dsp_spk"].max(), plain["dsp_spk"].max())
    assert fair["anger_tpr_female"] >= max(erm["anger_tpr_female"], plain["anger_tpr_female"]) + 0.2
    assert fair["accuracy"] >= erm["accuracy"]
    alphas = np.array(alphas[-800:])  # the two two_sided runs (the plain runs log their fixed α)
    assert alphas.min() >= 0.0 and alphas.max() <= 1.0 and alphas.std() > 0.05
    assert len(np.unique(np.round(alphas, 6))) > 200


def test_two_sided_reduces_rater_parity_gap_on_constructed_sessions(tmp_path) -> None:
    """Rater gender is tied to a recording channel (IEMOCAP-like sessions rated by men or by women) and
    men label anger as sadness. ERM reads the channel and predicts anger less for rows rated by men;
    the rater side of two_sided (rater-gender detector behind a GRL, centroid distance) removes the
    channel from z_R, so ΔSP_rat of anger falls."""
    rng = np.random.default_rng(0)
    n, classes = 900, 3  # 0 neutral, 1 anger, 2 sadness
    emotion = rng.integers(0, classes, n)
    session = rng.integers(0, 2, n)  # 0: rated by men, 1: by women
    speaker = rng.choice(["female", "male"], n)
    centres = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
    x = np.concatenate([centres[emotion] + rng.normal(scale=0.8, size=(n, 2)),
                        (2 * session - 1)[:, None] * 2.0 + rng.normal(scale=0.3, size=(n, 1)),
                        (speaker == "male")[:, None] * 1.0 + rng.normal(scale=0.3, size=(n, 1)),
                        rng.normal(size=(n, 2))], axis=1).astype(np.float32)
    rows_utt = np.repeat(np.arange(n), 2)
    rater_gender = np.where(session[rows_utt] == 0, "male", "female")
    noisy = rng.random(2 * n) < 0.1
    label = np.where(noisy, rng.integers(0, classes, 2 * n), emotion[rows_utt])
    label = np.where((rater_gender == "male") & (emotion[rows_utt] == 1) & (rng.random(2 * n) < 0.8), 2, label)
    spec = rater_group_spec()
    group_ids = np.array([spec.groups.index((s, r)) for s, r in zip(speaker[rows_utt], rater_gender)])
    train_rows = rows_utt < 600
    eval_rows = ~train_rows

    gaps, accuracy = {}, {}
    for name, objective, options in (("erm", "erm", None), ("plain", "two_sided", NO_FAIRNESS),
                                     ("two_sided", "two_sided", {"class_balanced": False})):
        predict, _ = train_head(x[rows_utt[train_rows]], label[train_rows], group_ids[train_rows], objective, options,
                                classes=classes)
        pred = predict(x[rows_utt[eval_rows]])
        names = ("neutral", "anger", "sadness")
        table = write_predictions(
            tmp_path / f"rater_{name}.csv", ids=[f"u{u}-r{j % 2}" for j, u in enumerate(rows_utt[eval_rows])],
            split="test", language="eng", modality="audio", gender=speaker[rows_utt[eval_rows]].tolist(),
            speaker="s", classes=names, probs=np.eye(classes)[pred], labels=label[eval_rows],
            extra={"rater_gender": rater_gender[eval_rows]})
        gaps[name] = statistical_parity(table, group_column="rater_gender")["delta_sp"].to_numpy()
        # the metric is the hand count of predicted anger among rows rated by men and by women
        hand = abs((pred[rater_gender[eval_rows] == "male"] == 1).mean() - (pred[rater_gender[eval_rows] == "female"] == 1).mean())
        assert gaps[name][1] == pytest.approx(hand)
        accuracy[name] = float((pred[::2] == emotion[600:]).mean())  # against the true emotion of each utterance
        assert (pred == 1).mean() > 0.1  # no model gets parity by never predicting anger
    assert gaps["erm"][1] > 0.15 and gaps["plain"][1] > 0.15
    assert gaps["two_sided"][1] < 0.5 * min(gaps["erm"][1], gaps["plain"][1])
    assert accuracy["two_sided"] >= accuracy["erm"] - 0.02
