"""Two-sided speaker/rater fairness inside the feature sweep, and its rater side on synthesised audio.

Sweep: the real EMO-SUPERB CREMA-D fold-1 labels, seeded features and a constructed ratings file
(three raters per clip, from a one-gender panel per "session") — per-rater training rows reach the
trainer, the per-rater test table and the rater-side figures match hand computations, results.csv /
results.md gain the rater columns, and configs and ratings files that cannot work are named.

Synthesised audio: the built-in corpus with recording sessions (a channel per session, each rated by
women or by men) and male raters who hear anger as sadness; acoustic features; the sweep's per-rater
rows and trainer. ERM learns the men's sessions' channel as a cue for "sadness" and predicts anger
less for clips men rated (rater-side ΔSP); ``two_sided`` lowers that gap in every seed, paired
against ERM; with every fairness weight at 0 (λ = 0) the same network does not, and without the
raters' bias ERM has no rater-side gap to remove.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import save_file

import llmfair.sweep as sweep
from llmfair.data.crema_d import read_crema_d
from llmfair.data.example import RaterAnnotation
from llmfair.data.labels import CREMA_D, MELD
from llmfair.errors import ConfigError, DataError
from llmfair.predictions import read_predictions, write_predictions
from llmfair.sweep.raters import (
    RatingsTable,
    load_ratings_file,
    one_vote_labels,
    per_rater_training,
    rater_side_figures,
    rater_side_table,
)

pytestmark = pytest.mark.usefixtures("one_thread")

ANGRY, SAD = CREMA_D.index("angry"), CREMA_D.index("sad")
NO_FAIRNESS = {"class_balanced": False, "adversary_strength": 0.0, "lambda_rater": 0.0, "lambda_speaker": 0.0,
               "contrastive_weight": 0.0, "alpha": "fixed", "fixed_alpha": 0.5}
"""two_sided with every fairness weight at 0 (λ = 0): 0.5·CE(C(z_R)) + 0.5·CE(C(z_S))."""


# ===================================================================================== the sweep
@pytest.fixture(scope="module")
def sessions_data(tmp_path_factory, crema_d_labels):
    """Fold-1 examples, a session per clip (0: rated by men, 1: by women), seeded features with a
    class signal, a gender direction and a session direction, and the ratings file: three raters of
    the session's panel, each drawing a class from the clip's vote shares, men hearing angry as sad
    (0.8). Spellings vary (F/M, capitalised classes) as users' files do."""
    examples = read_crema_d(crema_d_labels, 1, check_audio=False)
    rng = np.random.default_rng(0)
    soft = np.array([e.emotion_dist for e in examples])
    male = np.array([e.gender == "male" for e in examples], dtype=float)
    session = rng.integers(0, 2, len(examples))
    x = (soft @ rng.normal(size=(6, 32)) * 3 + np.outer(male - 0.5, rng.normal(size=32)) * 2
         + np.outer(session - 0.5, rng.normal(size=32)) * 2 + rng.normal(size=(len(soft), 32)))
    folder = tmp_path_factory.mktemp("two_sided_sweep")
    save_file({"features": torch.tensor(x, dtype=torch.float32)}, str(folder / "feats.safetensors"))
    (folder / "feats.ids.json").write_text(json.dumps([e.id for e in examples]))
    shares = np.clip((soft - 0.01) / 0.94, 0, None)
    shares /= shares.sum(1, keepdims=True)
    rows = []
    for i, e in enumerate(examples):
        gender = "male" if session[i] == 0 else "female"
        for j in range(3):
            c = int(rng.choice(6, p=shares[i]))
            if gender == "male" and c == ANGRY and rng.random() < 0.8:
                c = SAD
            rows.append((e.id, f"{gender[0]}{j}", gender[0].upper(), CREMA_D.classes[c].capitalize()))
    ratings = pd.DataFrame(rows, columns=["id", "rater", "rater_gender", "emotion"])
    ratings.to_csv(folder / "ratings.csv", index=False)
    return examples, folder, ratings


def _config(folder: Path, crema_d_labels: Path, **overrides) -> Path:
    values = {"labels_dir": str(crema_d_labels), "features": {"path": str(folder / "feats.safetensors")},
              "ratings_file": str(folder / "ratings.csv"),
              "methods": [{"name": "erm", "objective": "erm"},
                          {"name": "two_sided", "objective": "two_sided", "groups": "rater"}],
              "ratios": [1], "folds": [1], "seeds": [0], "epochs": 1, "lr": 1e-3, **overrides}
    path = folder / f"sweep_{len(list(folder.glob('sweep_*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture(scope="module")
def rater_sweep(tmp_path_factory, crema_d_labels, sessions_data):
    _, folder, _ = sessions_data
    calls = []
    original = sweep.train_head

    def recording(*args, **kwargs):
        calls.append(inspect.signature(original).bind(*args, **kwargs).arguments)
        return original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sweep, "train_head", recording)
        config = sweep.SweepConfig.from_yaml(_config(folder, crema_d_labels))
        out = tmp_path_factory.mktemp("rater_sweep_out")
        sweep.run_sweep(config, out, progress=False)
    return config, out, calls


def test_two_sided_trains_on_one_row_per_rater_annotation(rater_sweep, sessions_data):
    config, out, calls = rater_sweep
    examples, _, ratings = sessions_data
    from llmfair.data.imbalance import build_imbalanced_splits
    from llmfair.objectives.two_sided import TwoSided

    assert [isinstance(c["objective"], TwoSided) for c in calls] == [False, True]  # erm, then two_sided
    splits = build_imbalanced_splits(examples, CREMA_D, 1, 0)
    train = [e for e in splits.examples if e.split == "train"]
    by_id = {i: g for i, g in ratings.groupby("id", sort=False)}
    expected = pd.concat([by_id[e.id] for e in train])  # file order within each clip, clips in train order
    x, labels, groups, objective = (calls[1][k] for k in ("train_features", "train_labels", "train_groups", "objective"))
    assert len(calls[0]["train_features"]) == len(train) and len(x) == len(expected) == 3 * len(train)
    classes = np.array([CREMA_D.index(c.lower()) for c in expected["emotion"]])
    np.testing.assert_array_equal(calls[1]["train_classes"], classes)
    np.testing.assert_allclose(labels, one_vote_labels(classes, 6))
    assert labels[0].tolist() == pytest.approx([0.95 if c == classes[0] else 0.01 for c in range(6)])
    spec = objective.group_spec
    speaker = np.repeat([e.gender for e in train], 3)
    rater = np.where(expected["rater_gender"] == "M", "male", "female")
    assert [spec.groups[g] for g in groups] == list(zip(speaker, rater))
    features = sweep.load_feature_file(config.features.path)
    np.testing.assert_array_equal(x.numpy(), features.values[features.rows(expected["id"].tolist())].numpy())
    record = json.loads((out / "runs" / "metrics_two_sided-r1-f1-s0.json").read_text())
    assert record["n_train_rows"] == len(expected) and record["n_train"] == len(train)
    assert record["supervision"] == "true_gender" and record["groups"] == "rater"
    assert record["group_names"] == [spec.describe(i) for i in range(spec.num_groups)]
    assert record["group_counts"] == np.bincount(groups, minlength=spec.num_groups).tolist()


def test_rater_side_table_and_figures_match_hand_counts(rater_sweep, sessions_data):
    _, out, _ = rater_sweep
    _, _, ratings = sessions_data
    for run in ("erm-r1-f1-s0", "two_sided-r1-f1-s0"):
        pred = read_predictions(out / "runs" / f"predictions_{run}.csv")
        table = read_predictions(out / "runs" / f"rater_predictions_{run}.csv")
        test_ratings = ratings[ratings["id"].isin(set(pred.frame["id"]))]
        assert table.n == len(test_ratings) == 3 * pred.n
        assert table.frame["utterance"].tolist() == test_ratings["id"].tolist()
        assert table.frame["rater"].tolist() == test_ratings["rater"].tolist()
        position = {u: i for i, u in enumerate(pred.frame["id"])}
        owner = np.array([position[u] for u in table.frame["utterance"]])
        np.testing.assert_allclose(table.probs, pred.probs[owner])
        assert table.multilabel and (table.frame["gender"].to_numpy() == pred.frame["gender"].to_numpy()[owner]).all()
        # ΔSP_rat by hand: p_c > 1/K per row, selection rates of rows rated by men and by women
        on = table.probs > 1 / 6
        men = table.frame["rater_gender"].to_numpy() == "male"
        rat = np.abs(on[men].mean(0) - on[~men].mean(0))
        on_utt, male_speaker = pred.probs > 1 / 6, pred.frame["gender"].to_numpy() == "male"
        spk = np.abs(on_utt[male_speaker].mean(0) - on_utt[~male_speaker].mean(0))
        record = json.loads((out / "runs" / f"metrics_{run}.json").read_text())
        side = record["rater_side"]
        assert [side["delta_sp_rat"][c] for c in CREMA_D.classes] == pytest.approx(rat.tolist())
        assert [side["delta_sp_spk"][c] for c in CREMA_D.classes] == pytest.approx(spk.tolist())
        assert record["metrics"]["rater_dp_gap_sum"] == pytest.approx(np.sqrt((rat ** 2).sum()))
        assert record["metrics"]["rater_dp_gap_rms"] == pytest.approx(np.sqrt((rat ** 2).mean()))
        assert record["metrics"]["dp_gap_sum"] == pytest.approx(np.sqrt((spk ** 2).sum()))  # the speaker side
        assert side["n_rater_rows"] == table.n and sum(side["rater_rows_by_gender"].values()) == table.n


def test_results_gain_the_rater_columns(rater_sweep):
    _, out, _ = rater_sweep
    table = pd.read_csv(out / "results.csv")
    records = {p.stem[len("metrics_"):]: json.loads(p.read_text()) for p in (out / "runs").glob("metrics_*.json")}
    for method in ("erm", "two_sided"):
        row = table[(table["kind"] == "method") & (table["method"] == method)].iloc[0]
        assert row["rater_dp_gap_sum_mean"] == pytest.approx(records[f"{method}-r1-f1-s0"]["metrics"]["rater_dp_gap_sum"])
    text = (out / "results.md").read_text()
    assert "| DPgap | DPgap_rat | runs |" in text and "DPgap_rat is `rater_dp_gap_sum`" in text


def test_rater_configs_and_files_that_cannot_work_are_named(tmp_path, crema_d_labels, sessions_data):
    _, folder, ratings = sessions_data
    two_sided_on_gender = [{"name": "erm", "objective": "erm"}, {"name": "ts", "objective": "two_sided"}]
    with pytest.raises(ConfigError, match=r"method 'ts'.*groups: gender.*set groups: rater and ratings_file"):
        sweep.SweepConfig.from_yaml(_config(folder, crema_d_labels, methods=two_sided_on_gender))
    with pytest.raises(ConfigError, match=r"\['two_sided'\] train on per-rater rows.*set ratings_file"):
        sweep.SweepConfig.from_yaml(_config(folder, crema_d_labels, ratings_file=None))
    bad_option = [{"name": "erm", "objective": "erm"},
                  {"name": "ts", "objective": "two_sided", "groups": "rater", "options": {"alpha": "learned"}}]
    with pytest.raises(ConfigError, match="alpha"):
        sweep.SweepConfig.from_yaml(_config(folder, crema_d_labels, methods=bad_option))

    def bad_file(change, match):
        frame = change(ratings.head(30).copy())
        frame.to_csv(tmp_path / "bad.csv", index=False)
        with pytest.raises(DataError, match=match):
            load_ratings_file(tmp_path / "bad.csv", CREMA_D)

    bad_file(lambda f: f.assign(emotion=["calm"] + f["emotion"].tolist()[1:]), r"bad.csv, line 2: emotion 'calm'")
    bad_file(lambda f: f.assign(rater_gender=f["rater_gender"].tolist()[:4] + ["robot"] + f["rater_gender"].tolist()[5:]),
             r"bad.csv, line 6, column 'rater_gender'")
    bad_file(lambda f: pd.concat([f, f.iloc[[3]]]), r"line 32: rater .* twice")
    bad_file(lambda f: f.drop(columns="rater"), r"rater")

    examples = read_crema_d(crema_d_labels, 1, check_audio=False)[:40]
    table = load_ratings_file(folder / "ratings.csv", CREMA_D)
    partial = RatingsTable(table.source, {k: v for k, v in table.annotations.items() if k != examples[5].id})
    with pytest.raises(DataError, match=rf"1 of 40 training utterances have no rater annotation.*{examples[5].id}"):
        per_rater_training(examples, partial, 6)


# ===================================================================================== synthesised audio
@pytest.fixture(scope="module")
def session_corpus(tmp_path_factory):
    """The built-in corpus with two recording sessions (one rated by women, one by men), male raters
    who hear anger as sadness in every speaker (0.9) and otherwise report the true emotion, and its
    standardised acoustic features. 180 rows per pair, anger-heavy priors (the bias acts on anger)."""
    from llmfair.data.meld_st import read_meld_st
    from llmfair.data.synth import SynthConfig, generate_corpus
    from llmfair.ssl import build_feature_extractor, extract_features

    root = tmp_path_factory.mktemp("session_corpus")
    config = SynthConfig(seed=0, utterances_per_pair=180, emotion_priors="anger=0.5,sadness=0.25,neutral=0.25",
                         recording_sessions=2, rater_bias=0.9, rater_bias_speakers="all", rater_accuracy=1.0)
    generate_corpus(root / "corpus", config)
    examples = read_meld_st(root / "corpus")
    feats = extract_features(build_feature_extractor("acoustic"), examples, root / "cache", progress=False)
    train = np.array([e.split == "train" for e in examples])
    feats = ((feats - feats[train].mean(0)) / (feats[train].std(0) + 1e-6)).astype(np.float32)
    return config, examples, feats


def _plan_ratings(config, examples) -> RatingsTable:
    """The annotations ``config`` gives the examples' utterances (plan only: the rater knobs never
    change the audio, so another rater_bias needs no new synthesis)."""
    from llmfair.data.synth import plan_corpus

    plan = plan_corpus(config)
    source = {f"{pair}-{r.id}": r.source.index for pair, rows in plan.rows.items() for r in rows}
    return RatingsTable("plan", {e.id: tuple(RaterAnnotation(r, g, MELD.index(c))
                                             for r, g, c in plan.ratings[source[e.id.rsplit("-", 1)[0]]])
                                 for e in examples})


def test_two_sided_lowers_rater_parity_gap_on_synthesised_sessions(session_corpus, tmp_path):
    """Paired over three seeds (same seed, same per-rater rows for both methods): ERM trained on the
    raters' labels predicts anger far less for clips men rated; two_sided lowers that rater-side gap
    (rms over classes of ΔSP_rat) in every seed; two_sided with every fairness weight at 0 does not
    (the difference vanishes); and with the raters' bias off ERM's rater-side gap is small (the gap
    comes from the raters, through the channel).

    Measured (corpus seed 0, training seeds 0/1/2): rms ΔSP_rat ERM 0.247/0.221/0.213 → two_sided
    0.116/0.087/0.088; λ = 0 0.240/0.240/0.243; bias off, ERM 0.010/0.008/0.014. Not every
    reduction is the intended one: in seed 1 two_sided predicts anger for 14.5 % of the test clips
    (ERM 30 %, true share ~50 %) at accuracy 0.54 (ERM 0.68) — it levels anger down for everyone
    rather than restoring it for the clips men rated; seeds 0 and 2 keep ERM's anger rate and
    accuracy. (With the objectives' own layers drawn from torch's running RNG instead of the seed,
    corpus seeds 1 and 2 each had one such run too, at 2 % and 13 % anger.) The guards below only
    exclude the trivial solution (never predicting anger) and a median accuracy below ERM's."""
    from llmfair.objectives import build_objective
    from llmfair.ssl import HeadOptions
    from llmfair.ssl.train_head import HeadTrainingOptions, train_head

    config, examples, feats = session_corpus
    train_mask = np.array([e.split == "train" for e in examples])
    train = [e for e, keep in zip(examples, train_mask) if keep]
    test = [e for e in examples if e.split == "test"]
    x_test = torch.tensor(feats[[e.split == "test" for e in examples]])
    anger = MELD.index("anger")

    def run(ratings: RatingsTable, objective: str, options: dict | None, seed: int) -> dict:
        rows = per_rater_training(train, ratings, MELD.num_classes)
        with torch.random.fork_rng(devices=[]):  # the objective's own layers drawn from the seed, as in the sweep
            torch.manual_seed(seed)
            built = build_objective(objective, rows.spec, options)
        result = train_head(torch.tensor(feats[train_mask][rows.example_index]), rows.labels, rows.ids,
                            built, train_classes=rows.classes,
                            options=HeadTrainingOptions(epochs=10, learning_rate=1e-3, seed=seed, select_on_dev=False),
                            head_options=HeadOptions(loss="soft_ce"))
        pred = write_predictions(
            tmp_path / "pred.csv", ids=[e.id for e in test], split="test", language=[e.language for e in test],
            modality="audio", gender=[e.gender for e in test], speaker=[e.speaker for e in test], classes=MELD,
            probs=result.predict_proba(x_test), labels=np.array([e.emotion for e in test]))
        table = rater_side_table(pred, test, ratings, tmp_path / "rater_pred.csv")
        figures = rater_side_figures(pred, table)
        # the rater-side gap of anger is the hand count over the per-rater rows
        men = table.column("rater_gender") == "male"
        hand = abs((table.predictions[men] == anger).mean() - (table.predictions[~men] == anger).mean())
        assert figures["delta_sp_rat"]["anger"] == pytest.approx(hand)
        return {"rms": figures["rater_dp_gap_rms"], "anger_rate": float((pred.predictions == anger).mean()),
                "accuracy": float((pred.predictions == pred.labels).mean())}

    biased = _plan_ratings(config, examples)
    seeds = (0, 1, 2)
    erm = [run(biased, "erm", None, s) for s in seeds]
    fair = [run(biased, "two_sided", {"class_balanced": False}, s) for s in seeds]
    plain = [run(biased, "two_sided", NO_FAIRNESS, s) for s in seeds]
    unbiased = [run(_plan_ratings(dataclasses.replace(config, rater_bias=0.0), examples), "erm", None, s) for s in seeds]

    drop = np.array([e["rms"] - f["rms"] for e, f in zip(erm, fair)])  # paired by seed
    drop_plain = np.array([e["rms"] - p["rms"] for e, p in zip(erm, plain)])
    print("anger rate, accuracy: erm", [(round(r["anger_rate"], 3), round(r["accuracy"], 3)) for r in erm],
          "two_sided", [(round(r["anger_rate"], 3), round(r["accuracy"], 3)) for r in fair])
    print("rms ΔSP_rat per seed: erm", [round(r["rms"], 3) for r in erm], "two_sided", [round(r["rms"], 3) for r in fair],
          "λ=0", [round(r["rms"], 3) for r in plain], "erm, bias off", [round(r["rms"], 3) for r in unbiased])
    assert min(r["rms"] for r in erm) > 0.15  # the raters' bias reaches ERM through the channel
    assert (drop > 0.05).all() and drop.mean() > 0.08  # two_sided lowers it in every seed
    assert abs(drop_plain.mean()) < 0.03  # λ = 0: the same network without the fairness terms does not
    assert max(r["rms"] for r in unbiased) < 0.06  # no raters' bias: no rater-side gap to remove
    assert min(f["anger_rate"] for f in fair) > 0.1  # not parity by never predicting anger
    assert np.median([f["accuracy"] for f in fair]) >= np.median([e["accuracy"] for e in erm]) - 0.02
