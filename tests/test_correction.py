"""Cross-modal correction net (METHODS.md §2.17): architecture, loss, the packed trainer against
autograd + torch.optim.Adam, the cross-modal effect on data with complementary biases, no test rows
in fitting, figures against llmfair.metrics and numpy, determinism, save/load, table joins, the
speaker-gender model on the built-in corpus, and the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from llmfair.cli import main
from llmfair.correction import (
    CorrectionOptions,
    GenderClassifier,
    GenderModelOptions,
    IndependentCorrection,
    JointCorrectionNet,
    apply_correction,
    build_correction_model,
    correction_loss,
    epoch_plan,
    fit_correction,
    join_tables,
    load_correction_model,
    predict_probs,
    prepare_inputs,
    stratified_holdout,
    train_correction_net,
    train_gender_model,
)
from llmfair.correction.network import mlp_linears
from llmfair.errors import ConfigError, DataError
from llmfair.metrics import correction_net_figures
from llmfair.predictions import read_predictions, write_predictions

EMOTIONS = ("neutral", "happy", "sad", "angry", "fear", "disgust")
K = len(EMOTIONS)
GENDERS = ("female", "male")
FAST = dict(epochs=300)


# ----------------------------------------------------------------------------------------- data
def simulate(n_per_cell: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Predictions of two frozen models with complementary biases (numpy only).

    Emotion model: confident and right (0.7 on the true class) except that women's *angry*
    comes out as (sad 0.55, angry 0.30) — exactly the pattern of men's *sad* — and women's
    *fear* as (disgust 0.55, fear 0.30) — the pattern of men's *disgust*. Only the speaker's
    gender tells the two apart. Gender model: P(female) ≈ 0.8 for women, 0.2 for men, except on
    *neutral* and *happy*, where women get ≈ 0.2 (like other men) and men ≈ 0.04; only the
    (reliable) emotion output tells these women from men.
    """
    rng = np.random.default_rng(seed)
    g = np.repeat([0, 1], K * n_per_cell)
    e = np.tile(np.repeat(np.arange(K), n_per_cell), 2)
    templates = np.full((2, K, K), 0.06)
    templates[:, np.arange(K), np.arange(K)] = 0.7
    angry_as_sad = np.full(K, 0.15 / 4)
    angry_as_sad[[3, 2]] = (0.30, 0.55)
    fear_as_disgust = np.full(K, 0.15 / 4)
    fear_as_disgust[[4, 5]] = (0.30, 0.55)
    templates[0, 3] = templates[1, 2] = angry_as_sad
    templates[0, 4] = templates[1, 5] = fear_as_disgust
    pe = rng.gamma(30.0 * templates[g, e])
    pe /= pe.sum(axis=1, keepdims=True)
    degraded = np.isin(e, (0, 1))
    mean_female = np.where(g == 0, np.where(degraded, 0.2, 0.8), np.where(degraded, 0.04, 0.2))
    pf = rng.beta(25.0 * mean_female, 25.0 * (1.0 - mean_female))
    return pe, np.stack([pf, 1.0 - pf], axis=1), e, g


def write_pair(root: Path, split: str, data, prefix: str, *, modalities=("audio",)) -> tuple[Path, Path]:
    """Emotion table (one row per id × modality) and gender table (one row per id)."""
    pe, pg, e, g = data
    n = len(e)
    ids = np.array([f"{prefix}{i:05d}" for i in range(n)], dtype=object)
    gender = np.asarray(GENDERS, dtype=object)[g]
    speaker = np.array([f"{GENDERS[gi]}_{i % 7}" for i, gi in enumerate(g)], dtype=object)
    emo = root / f"emotion_{split}.csv"
    reps = len(modalities)
    write_predictions(emo, ids=np.tile(ids, reps), split=split, language="eng",
                      modality=np.repeat(np.asarray(modalities, dtype=object), n), gender=np.tile(gender, reps),
                      speaker=np.tile(speaker, reps), classes=EMOTIONS, probs=np.tile(pe, (reps, 1)),
                      labels=np.tile(e, reps))
    gen = root / f"gender_{split}.csv"
    write_predictions(gen, ids=ids, split=split, language="eng", modality="audio", gender=gender, speaker=speaker,
                      classes=GENDERS, probs=pg, labels=g)
    return emo, gen


def cell_figures(pred_labels: np.ndarray, labels: np.ndarray, e: np.ndarray, g: np.ndarray) -> dict[str, float]:
    """Slides' figures by hand: A[g, e] = accuracy per cell, its mean, max and mean of |A_F − A_M|."""
    hit = (pred_labels == labels).astype(float)
    a = np.array([[hit[(g == gi) & (e == ei)].mean() for ei in range(K)] for gi in range(2)])
    gaps = np.abs(a[0] - a[1])
    return {"macro_average_accuracy": a.mean(), "largest_gap": gaps.max(), "average_gap": gaps.mean()}


@pytest.fixture(scope="module")
def splits():
    return {"dev": simulate(100, seed=1), "test": simulate(100, seed=2)}


@pytest.fixture(scope="module")
def fitted(splits):
    """Joint and independent models fitted on the dev split, with their held-out predictions."""
    dev, test = splits["dev"], splits["test"]
    out = {}
    for kind in ("joint", "independent"):
        options = CorrectionOptions(**FAST)
        model = build_correction_model(kind, K, options)
        result = train_correction_net(model, prepare_inputs(dev[0], dev[1]), dev[2], dev[3], options)
        out[kind] = (model, result, predict_probs(model, prepare_inputs(test[0], test[1])))
    return out


# ----------------------------------------------------------------------------------- architecture
def test_architecture_shapes_and_heads():
    joint = JointCorrectionNet(K)
    linears = [(m.in_features, m.out_features) for m in mlp_linears(joint.mlp)]
    assert linears == [(K + 2, 24), (24, 24), (24, K + 2)]
    assert [type(m).__name__ for m in joint.mlp] == ["Linear", "ReLU", "Dropout"] * 2 + ["Linear"]
    assert all(m.p == 0.2 for m in joint.mlp if isinstance(m, torch.nn.Dropout))
    indep = IndependentCorrection(K)
    assert [(m.in_features, m.out_features) for m in mlp_linears(indep.emotion)] == [(K, 24), (24, 24), (24, K)]
    assert [(m.in_features, m.out_features) for m in mlp_linears(indep.gender)] == [(2, 24), (24, 24), (24, 2)]

    x = torch.randn(5, K + 2)
    for model in (joint, indep):
        model.eval()
        e_logits, g_logits = model(x)
        assert e_logits.shape == (5, K) and g_logits.shape == (5, 2)
    # the ablation's emotion head ignores the gender inputs; the joint net's does not
    x2 = x.clone()
    x2[:, K:] += 3.0
    assert torch.equal(indep(x)[0], indep(x2)[0]) and torch.equal(indep(x)[1][:, :0], indep(x2)[1][:, :0])
    assert not torch.allclose(joint(x)[0], joint(x2)[0])
    x3 = x.clone()
    x3[:, :K] += 3.0
    assert torch.equal(indep(x)[1], indep(x3)[1])


def test_two_independent_softmax_heads():
    model = build_correction_model("joint", K)
    inputs = prepare_inputs(*simulate(3, seed=5)[:2])
    e_probs, g_probs = predict_probs(model, inputs)
    np.testing.assert_allclose(e_probs.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(g_probs.sum(axis=1), 1.0, atol=1e-12)
    assert model.training  # predict_probs switches dropout off and restores the mode
    with torch.no_grad():
        logits = model.eval().mlp(torch.from_numpy(inputs)).double().numpy()
    by_hand = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(e_probs, by_hand[:, :K] / by_hand[:, :K].sum(axis=1, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(g_probs, by_hand[:, K:] / by_hand[:, K:].sum(axis=1, keepdims=True), rtol=1e-6)
    # not one softmax over the K + 2 outputs
    assert not np.allclose(e_probs, by_hand[:, :K] / by_hand.sum(axis=1, keepdims=True))


def test_loss_sum_is_twice_mean_and_matches_numpy():
    gen = torch.Generator().manual_seed(0)
    el, gl = torch.randn(9, K, generator=gen), torch.randn(9, 2, generator=gen)
    et, gt = torch.randint(0, K, (9,), generator=gen), torch.randint(0, 2, (9,), generator=gen)
    total = correction_loss(el, gl, et, gt, "sum")
    mean = correction_loss(el, gl, et, gt, "mean")
    assert float(total) == 2.0 * float(mean)

    def ce(logits, targets):
        z = logits.double().numpy()
        logp = z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
        return -logp[np.arange(len(targets)), targets.numpy()].mean()

    assert float(total) == pytest.approx(ce(el, et) + ce(gl, gt), rel=1e-6)
    with pytest.raises(ConfigError, match="loss reduction"):
        correction_loss(el, gl, et, gt, "max")


def test_inputs_probs_or_logits():
    pe = np.array([[0.5, 0.5, 0, 0, 0, 0]], dtype=float)
    pg = np.array([[0.25, 0.75]])
    probs = prepare_inputs(pe, pg, "probs")
    np.testing.assert_array_equal(probs, np.concatenate([pe, pg], axis=1).astype(np.float32))
    logits = prepare_inputs(pe, pg, "logits")
    np.testing.assert_allclose(logits, np.log(np.maximum(np.concatenate([pe, pg], axis=1), 1e-7)), rtol=1e-6)
    assert logits[0, 2] == pytest.approx(np.log(1e-7), rel=1e-6)
    with pytest.raises(ConfigError, match="input mode"):
        prepare_inputs(pe, pg, "raw")
    with pytest.raises(ConfigError, match="input="):
        CorrectionOptions(input="raw")


# ---------------------------------------------------------------------------------------- trainer
def _reference_fit(model, inputs, e, g, options: CorrectionOptions, epochs: int) -> None:
    """The textbook loop: autograd + torch.optim.Adam on the same batches and dropout masks."""
    independent = isinstance(model, IndependentCorrection)
    units = model.hidden * (2 if independent else 1)
    gen = torch.Generator().manual_seed(options.seed)
    opt = torch.optim.Adam(model.parameters(), lr=options.lr, foreach=False)
    x, et, gt = torch.from_numpy(inputs), torch.from_numpy(e), torch.from_numpy(g)

    def run(mlp, xb, m1, m2):
        l1, l2, l3 = mlp_linears(mlp)
        return l3(torch.relu(l2(torch.relu(l1(xb)) * m1)) * m2)

    for _ in range(epochs):
        perm, m1_all, m2_all = epoch_plan(gen, len(e), units, options.dropout)
        if m1_all is None:  # no dropout
            m1_all = m2_all = torch.ones(len(e), units)
        for start in range(0, len(e), options.batch_size):
            idx = perm[start:start + options.batch_size]
            m1, m2 = m1_all[start:start + options.batch_size], m2_all[start:start + options.batch_size]
            if independent:
                h = model.hidden
                el = run(model.emotion, x[idx, :K], m1[:, :h], m2[:, :h])
                gl = run(model.gender, x[idx, K:], m1[:, h:], m2[:, h:])
            else:
                out = run(model.mlp, x[idx], m1, m2)
                el, gl = out[:, :K], out[:, K:]
            loss = correction_loss(el, gl, et[idx], gt[idx], options.loss)
            opt.zero_grad()
            loss.backward()
            opt.step()


@pytest.mark.parametrize("kind,loss,dropout", [("joint", "sum", 0.2), ("joint", "mean", 0.2), ("independent", "sum", 0.2),
                                              ("joint", "sum", 0.0)])
def test_packed_trainer_equals_autograd_adam(kind, loss, dropout):
    pe, pg, e, g = simulate(6, seed=3)  # 72 rows: two batches of 32 and a last one of 8
    inputs = prepare_inputs(pe, pg)
    options = CorrectionOptions(epochs=3, loss=loss, seed=4, dropout=dropout)
    fast, slow = build_correction_model(kind, K, options), build_correction_model(kind, K, options)
    result = train_correction_net(fast, inputs, e, g, options)
    assert result.steps == 3 * 3 and result.epochs_run == 3
    _reference_fit(slow, inputs, e.astype(np.int64), g.astype(np.int64), options, epochs=3)
    for (name, a), (_, b) in zip(fast.state_dict().items(), slow.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-6, msg=name)
    start = build_correction_model(kind, K, options)
    assert not torch.allclose(start.state_dict()[name], fast.state_dict()[name])  # it did train


def test_stratified_holdout_counts():
    cells = np.repeat([0, 1, 2, 3], [10, 5, 1, 24])
    mask = stratified_holdout(cells, 0.2, seed=0)
    assert [int(mask[cells == c].sum()) for c in range(4)] == [2, 1, 0, 5]
    assert not np.array_equal(mask, stratified_holdout(cells, 0.2, seed=1))


def test_early_stopping_keeps_the_best_epoch(splits):
    pe, pg, e, g = splits["dev"]
    options = CorrectionOptions(epochs=400, early_stopping_patience=5, lr=3e-2, seed=2)
    model = build_correction_model("joint", K, options)
    inputs = prepare_inputs(pe, pg)
    result = train_correction_net(model, inputs, e, g, options)
    assert result.epochs_run < 400 and result.epochs_run == result.best_epoch + 5
    assert result.validation_loss == min(result.validation_history)
    held = stratified_holdout(g * K + e, 0.2, seed=2)
    assert result.n_validation == int(held.sum()) and result.n_train == int((~held).sum())
    with torch.no_grad():
        el, gl = model(torch.from_numpy(inputs[held]))
        loss = correction_loss(el, gl, torch.from_numpy(e[held]), torch.from_numpy(g[held]))
    assert float(loss) == pytest.approx(result.validation_loss, rel=1e-4)


# ---------------------------------------------------------------------------- the cross-modal effect
def test_joint_correction_fixes_complementary_biases_on_held_out_data(splits, fitted):
    pe, pg, e, g = splits["test"]
    before = {"emotion": cell_figures(pe.argmax(1), e, e, g), "gender": cell_figures(pg.argmax(1), g, e, g)}
    after = {}
    for kind, (_, _, (pe_c, pg_c)) in fitted.items():
        after[kind] = {"emotion": cell_figures(pe_c.argmax(1), e, e, g), "gender": cell_figures(pg_c.argmax(1), g, e, g)}
    for task in ("emotion", "gender"):
        b, j, i = before[task], after["joint"][task], after["independent"][task]
        assert b["macro_average_accuracy"] < 0.86 and b["average_gap"] > 0.25  # the biases are there
        assert j["macro_average_accuracy"] > b["macro_average_accuracy"] + 0.08, (task, b, j)
        assert j["average_gap"] < b["average_gap"] - 0.2, (task, b, j)
        joint_gain = j["macro_average_accuracy"] - b["macro_average_accuracy"]
        indep_gain = i["macro_average_accuracy"] - b["macro_average_accuracy"]
        assert joint_gain > indep_gain + 0.08, (task, joint_gain, indep_gain)
        assert j["average_gap"] < i["average_gap"] - 0.2, (task, j, i)


def test_determinism_and_save_load_round_trip(tmp_path, splits):
    pe, pg, e, g = splits["dev"]
    inputs = prepare_inputs(pe[:200], pg[:200], "probs")
    states = []
    for seed in (7, 7, 8):
        options = CorrectionOptions(epochs=20, seed=seed, input="probs")
        model = build_correction_model("joint", K, options)
        train_correction_net(model, inputs, e[:200], g[:200], options)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])

    emo, gen = write_pair(tmp_path, "dev", splits["dev"], "d")
    for kind in ("joint", "independent"):
        fit_correction(emo, gen, tmp_path / kind, kind=kind, options=CorrectionOptions(epochs=5, input="probs"))
        loaded, config = load_correction_model(tmp_path / kind)
        assert loaded.kind == kind and config["options"]["input"] == "probs" and config["emotion_classes"] == list(EMOTIONS)
        again, _ = load_correction_model(tmp_path / kind)
        test_inputs = prepare_inputs(*splits["test"][:2], "probs")
        a, b = predict_probs(loaded, test_inputs), predict_probs(again, test_inputs)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        refit = build_correction_model(kind, K, CorrectionOptions(epochs=5, input="probs"))
        train_correction_net(refit, prepare_inputs(*splits["dev"][:2], "probs"), splits["dev"][2], splits["dev"][3],
                             CorrectionOptions(epochs=5, input="probs"))
        assert np.array_equal(predict_probs(refit, test_inputs)[0], a[0])  # file == in-memory fit
    (tmp_path / "joint" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(DataError, match="safetensors"):
        load_correction_model(tmp_path / "joint")


# ---------------------------------------------------------------------------------- never test rows
def test_fitting_refuses_test_rows_and_apply_refuses_fit_rows(tmp_path, splits):
    emo_test, gen_test = write_pair(tmp_path, "test", splits["test"], "t")
    with pytest.raises(DataError, match=r"200 row\(s\) of the test split|1200 row\(s\) of the test split"):
        fit_correction(emo_test, gen_test, tmp_path / "m")
    # test rows relabelled 'dev' in the emotion table are still test rows in the gender table
    relabelled = pd.read_csv(emo_test).assign(split="dev")
    relabelled.to_csv(tmp_path / "relabelled.csv", index=False)
    with pytest.raises(DataError, match="test split"):
        fit_correction(tmp_path / "relabelled.csv", gen_test, tmp_path / "m")
    assert not (tmp_path / "m").exists()
    # fitted on dev, applying to tables containing the fitted ids is refused
    emo_dev, gen_dev = write_pair(tmp_path, "dev", splits["dev"], "d")
    fit_correction(emo_dev, gen_dev, tmp_path / "m", options=CorrectionOptions(epochs=2))
    with pytest.raises(DataError, match="were used to fit"):
        apply_correction(tmp_path / "m", emo_dev, gen_dev, tmp_path / "out")
    leaked = pd.concat([pd.read_csv(emo_test), pd.read_csv(emo_dev).head(3).assign(split="test")])
    leaked.to_csv(tmp_path / "leaked.csv", index=False)
    with pytest.raises(DataError, match=r"3 row\(s\) .* were used to fit"):
        apply_correction(tmp_path / "m", tmp_path / "leaked.csv", gen_test, tmp_path / "out")
    fit_rows = pd.read_csv(tmp_path / "m" / "fit_rows.csv", dtype=str)
    assert set(fit_rows["split"]) == {"dev"} and len(fit_rows) == len(splits["dev"][2])


# ------------------------------------------------------------------------------------------ joins
def test_join_rules(tmp_path, splits):
    small = tuple(a[::20] for a in splits["test"])
    emo, gen = write_pair(tmp_path, "test", small, "t", modalities=("audio", "audio_text"))
    data = join_tables(read_predictions(emo), read_predictions(gen))
    assert data.join_on == ("id",) and data.n == 2 * len(small[2])  # one gender row serves both modalities
    np.testing.assert_allclose(data.gender_probs, np.tile(small[1], (2, 1)))
    # a gender table with one row per (id, modality) joins on both
    gframe = pd.read_csv(gen)
    both = pd.concat([gframe, gframe.assign(modality="audio_text", prob_female=0.5, prob_male=0.5)])
    both.to_csv(tmp_path / "g2.csv", index=False)
    data2 = join_tables(read_predictions(emo), read_predictions(tmp_path / "g2.csv"))
    assert data2.join_on == ("id", "modality")
    assert np.all(data2.gender_probs[data2.emotion.frame["modality"].to_numpy() == "audio_text"] == 0.5)
    # (male, female) column order is normalised
    gframe[["id", "split", "language", "modality", "gender", "speaker", "label", "prob_male", "prob_female",
            "prediction"]].to_csv(tmp_path / "g3.csv", index=False)
    np.testing.assert_allclose(join_tables(read_predictions(emo), read_predictions(tmp_path / "g3.csv")).gender_probs,
                               data.gender_probs)

    cases = {
        "no row for 2 of": gframe.iloc[1:],
        "different splits": gframe.assign(split=np.where(np.arange(len(gframe)) == 0, "dev", "test")),
        "disagree on the speaker's gender": gframe.assign(label=np.where(np.arange(len(gframe)) == 0,
                                                                         np.where(gframe["label"] == "male", "female", "male"), gframe["label"])),
        "classes": gframe.rename(columns={"prob_female": "prob_woman"}).assign(
            label=lambda f: f["label"].replace("female", "woman"), prediction="male"),
    }
    for message, frame in cases.items():
        frame.to_csv(tmp_path / "bad.csv", index=False)
        with pytest.raises(DataError, match=message):
            join_tables(read_predictions(emo), read_predictions(tmp_path / "bad.csv"))


def test_unknown_gender_rows_pass_through(tmp_path, splits, fitted):
    emo_dev, gen_dev = write_pair(tmp_path, "dev", splits["dev"], "d")
    fit_correction(emo_dev, gen_dev, tmp_path / "m", options=CorrectionOptions(epochs=2))
    emo, gen = write_pair(tmp_path, "test", splits["test"], "t")
    frame = pd.read_csv(emo)
    frame.loc[:4, "gender"] = "unknown"
    frame.to_csv(emo, index=False)
    gframe = pd.read_csv(gen)
    gframe.iloc[5:].to_csv(gen, index=False)  # llmfair's gender model leaves unknown speakers out
    result = apply_correction(tmp_path / "m", emo, gen, tmp_path / "out")
    assert result["n_passed_through"] == 5 and result["n_corrected"] == len(frame) - 5
    out = read_predictions(result["emotion"])
    assert out.frame["corrected"].astype(str).tolist() == ["False"] * 5 + ["True"] * (len(frame) - 5)
    np.testing.assert_allclose(out.probs[:5], read_predictions(emo).probs[:5])
    assert read_predictions(result["gender"]).n == len(frame) - 5


# ------------------------------------------------------------------------------------------ figures
def test_cli_round_trip_figures_equal_metrics(tmp_path, splits, capsys):
    emo_dev, gen_dev = write_pair(tmp_path, "dev", splits["dev"], "d")
    emo_test, gen_test = write_pair(tmp_path, "test", splits["test"], "t")
    assert main(["correct", "fit", "--emotion", str(emo_dev), "--gender", str(gen_dev), "--out", str(tmp_path / "m"),
                 "--epochs", "300"]) == 0
    printed = capsys.readouterr().out
    assert "before → after" in printed and "emotion macro-avg acc" in printed
    assert main(["correct", "apply", "--model", str(tmp_path / "m"), "--emotion", str(emo_test), "--gender",
                 str(gen_test), "--out", str(tmp_path / "out")]) == 0
    figures = json.loads((tmp_path / "out" / "figures.json").read_text())
    corrected_e = read_predictions(tmp_path / "out" / "predictions_emotion.csv")
    corrected_g = read_predictions(tmp_path / "out" / "predictions_gender.csv")
    original_e = read_predictions(emo_test)
    pe, pg, e, g = splits["test"]
    original_g = read_predictions(gen_test).frame.assign(true_emotion=np.asarray(EMOTIONS, dtype=object)[e])
    from llmfair.predictions import Predictions

    references = {
        ("emotion", "before"): (correction_net_figures(original_e), cell_figures(pe.argmax(1), e, e, g)),
        ("emotion", "after"): (correction_net_figures(corrected_e),
                               cell_figures(corrected_e.predictions, e, e, g)),
        ("gender", "before"): (correction_net_figures(Predictions.from_frame(original_g), emotion_column="true_emotion"),
                               cell_figures(pg.argmax(1), g, e, g)),
        ("gender", "after"): (correction_net_figures(corrected_g, emotion_column="true_emotion"),
                              cell_figures(corrected_g.predictions, g, e, g)),
    }
    for (task, stage), (metric, by_hand) in references.items():
        got = figures[task][stage]
        for key in ("macro_average_accuracy", "largest_gap", "average_gap"):
            assert got[key] == pytest.approx(metric[key], abs=1e-12), (task, stage, key)
            assert got[key] == pytest.approx(by_hand[key], abs=1e-12), (task, stage, key)
    assert figures["emotion"]["after"]["macro_average_accuracy"] > figures["emotion"]["before"]["macro_average_accuracy"]
    # the corrected emotion table keeps the input's schema (plus 'corrected') and its labels
    assert list(corrected_e.frame.columns) == list(original_e.frame.columns) + ["corrected"]
    assert np.array_equal(corrected_e.labels, original_e.labels)
    assert "| emotion | corrected |" in (tmp_path / "out" / "figures.md").read_text()
    # the report reads the corrected table
    assert main(["report", str(tmp_path / "out" / "predictions_emotion.csv"), "--out", str(tmp_path / "rep"),
                 "--n-resamples", "0", "--no-plots"]) == 0


def test_cli_errors_are_one_line(tmp_path, splits, capsys):
    emo_test, gen_test = write_pair(tmp_path, "test", splits["test"], "t")
    assert main(["correct", "fit", "--emotion", str(emo_test), "--gender", str(gen_test), "--out",
                 str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("llmfair: error:") and "test split" in err and "\n" not in err
    assert main(["correct", "apply", "--model", str(tmp_path / "missing"), "--emotion", str(emo_test), "--gender",
                 str(gen_test), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert "is not a fitted correction model" in err and "\n" not in err
    assert main(["correct", "fit", "--emotion", str(emo_test), "--gender", str(gen_test), "--out", str(tmp_path / "m"),
                 "--loss", "max"]) == 1
    assert "loss='max'" in capsys.readouterr().err


# -------------------------------------------------------------------------------------- gender model
def test_gender_model_on_the_built_in_corpus(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score

    from llmfair.data.meld_st import read_meld_st
    from llmfair.data.synth import SynthConfig, generate_corpus

    corpus = tmp_path / "corpus"
    generate_corpus(corpus, SynthConfig(seed=0, utterances_per_pair=60))
    options = GenderModelOptions(splits="dev,test", cache_dir=str(tmp_path / "cache"))
    summary = train_gender_model(corpus, tmp_path / "gender", options)
    table = read_predictions(tmp_path / "gender" / "predictions_test.csv")
    assert table.classes == GENDERS and set(table.frame["split"]) == {"test"}
    assert set(table.frame["modality"]) == {"audio"} and not table.frame["id"].duplicated().any()
    truth = np.asarray(GENDERS, dtype=object)[table.labels]
    assert np.array_equal(truth, table.frame["gender"].to_numpy(dtype=object))
    accuracy = accuracy_score(table.labels, table.probs.argmax(1))
    assert accuracy >= 0.9 and summary["splits"]["test"]["accuracy"] == pytest.approx(accuracy)
    examples = read_meld_st(corpus, splits=("test",), modalities=("audio",))
    assert sorted(table.frame["id"]) == sorted(ex.id for ex in examples)

    # the stored classifier is scikit-learn's logistic regression on standardised features
    clf = GenderClassifier.load(tmp_path / "gender")
    from llmfair.correction.gender import corpus_features

    train = read_meld_st(corpus, splits=("train",), modalities=("audio",))
    x_train, _ = corpus_features(train, "acoustic", tmp_path / "cache")
    y_train = np.array([ex.gender == "male" for ex in train], dtype=int)
    mean, std = x_train.mean(0), x_train.std(0)
    reference = LogisticRegression(C=1.0, max_iter=1000).fit((x_train - mean) / np.where(std > 0, std, 1), y_train)
    x_test, _ = corpus_features(examples, "acoustic", tmp_path / "cache")
    order = {ex.id: i for i, ex in enumerate(examples)}
    rows = [order[i] for i in table.frame["id"]]
    expected = reference.predict_proba((x_test[rows] - mean) / np.where(std > 0, std, 1))
    np.testing.assert_allclose(clf.predict_proba(x_test[rows]), expected, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(table.probs, expected, rtol=1e-6, atol=1e-9)

    # CLI: an existing --out is refused in one line
    assert main(["correct", "gender-model", "--corpus", str(corpus), "--out", str(tmp_path / "gender")]) == 1
    with pytest.raises(ConfigError, match="features"):
        GenderModelOptions(features="face")
