"""The frozen-feature training loop (``llmfair.ssl.train_head``) and ``llmfair sweep``.

train_head: learning, determinism, model selection on the dev loss, objective parameters in the
optimiser (every registered objective). Sweep: the real EMO-SUPERB CREMA-D label files with seeded
synthetic features (class signal + gender direction, 7,442 × 32) on a tiny grid — run ids, the
imbalance builder feeding the runs, metrics against scikit-learn / numpy, resumption, shards, the
IDI table (Overall / Gain rows against hand computations), inferred groups, bad configs, the CLI.
"""
from __future__ import annotations

import importlib
import json
import pkgutil
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import save_file
from sklearn.metrics import accuracy_score, f1_score, hamming_loss

import llmfair.objectives
import llmfair.sweep as sweep
from llmfair.data.crema_d import read_crema_d
from llmfair.data.imbalance import build_imbalanced_splits
from llmfair.data.labels import CREMA_D
from llmfair.errors import ConfigError, DataError
from llmfair.metrics import gain
from llmfair.objectives import OBJECTIVES, GroupSpec, build_objective
from llmfair.ssl.train_head import HeadTrainingOptions, train_head

# every objective module present registers itself (methods other helpers add are tested too)
for _module in pkgutil.iter_modules(llmfair.objectives.__path__):
    importlib.import_module(f"llmfair.objectives.{_module.name}")

torch.set_num_threads(1)
SPEC = GroupSpec(("language", "modality", "gender"), (("eng", "audio", "female"), ("eng", "audio", "male")))
FAST = dict(learning_rate=1e-2, batch_size=32)


def _blobs(n: int, d: int = 12, k: int = 4, seed: int = 0, spread: float = 3.0):
    """Gaussian blobs: class means ``spread`` apart, near one-hot soft labels, random genders."""
    rng = np.random.default_rng(seed)
    c = rng.integers(0, k, n)
    means = rng.normal(size=(k, d)) * spread
    x = (means[c] + rng.normal(size=(n, d))).astype(np.float32)
    y = (np.eye(k)[c] * 0.9 + 0.1 / k).astype(np.float32)
    g = rng.integers(0, 2, n)
    return x, y, g, c


# ===================================================================================== train_head
def test_erm_learns_separable_features():
    x, y, g, c = _blobs(700)
    result = train_head(x[:500], y[:500], g[:500], build_objective("erm", SPEC),
                        dev_features=x[500:600], dev_labels=y[500:600], options=HeadTrainingOptions(epochs=6, **FAST))
    probs = result.predict_proba(x[600:])
    assert probs.shape == (100, 4)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)
    assert accuracy_score(c[600:], probs.argmax(1)) >= 0.97
    assert result.num_steps == 6 * int(np.ceil(500 / 32))
    assert len(result.history) == 6 and result.train_rows.tolist() == list(range(500))


def test_training_is_deterministic_by_seed():
    x, y, g, _ = _blobs(300, seed=1)

    def probs(seed):
        r = train_head(x[:200], y[:200], g[:200], build_objective("gdro", SPEC), dev_features=x[200:250],
                       dev_labels=y[200:250], options=HeadTrainingOptions(epochs=3, seed=seed, sampler="group_balanced",
                                                                          **FAST))
        return r.predict_proba(x[250:])

    first = probs(3)
    np.testing.assert_array_equal(first, probs(3))
    assert not np.allclose(first, probs(4))
    before = torch.get_rng_state()
    probs(3)
    assert torch.equal(before, torch.get_rng_state()), "train_head must not move torch's global RNG"


def _cb_ce_by_hand(logits: np.ndarray, soft: np.ndarray, train_soft: np.ndarray) -> float:
    """EMO-SUPERB's class-balanced soft CE written out in numpy (METHODS.md §1.3)."""
    n, k = train_soft.shape
    counts = (train_soft > 1.0 / k).sum(0)
    beta = (n - 1) / n
    w = (1 - beta) / (1 - beta ** counts)
    w = w * k / w.sum()
    logp = logits - logits.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    return float((-(soft * logp).sum(1) * (soft @ w)).mean())


def test_model_selection_keeps_the_best_dev_state():
    # train labels are noise the head memorises; dev labels follow the features' true classes, so
    # the dev loss falls first and then rises as the head over-fits the noise
    rng = np.random.default_rng(5)
    x, y, g, c = _blobs(260, d=40, k=3, seed=5, spread=1.0)
    noisy = np.where(rng.random(200) < 0.6, rng.integers(0, 3, 200), c[:200])
    y_train = (np.eye(3)[noisy] * 0.9 + 0.1 / 3).astype(np.float32)
    opts = dict(epochs=25, learning_rate=5e-2, batch_size=16)
    args = (x[:200], y_train, g[:200])
    selected = train_head(*args, build_objective("erm", SPEC), dev_features=x[200:], dev_labels=y[200:],
                          options=HeadTrainingOptions(**opts))
    last = train_head(*args, build_objective("erm", SPEC), dev_features=x[200:], dev_labels=y[200:],
                      options=HeadTrainingOptions(select_on_dev=False, **opts))
    dev = np.array([h["dev_loss"] for h in selected.history])
    assert [h["dev_loss"] for h in last.history] == dev.tolist()  # same trajectory
    assert selected.best_epoch == int(dev.argmin()) + 1 < opts["epochs"], "the case must over-fit"
    assert last.best_epoch == opts["epochs"]
    kept = _cb_ce_by_hand(selected.predict_logits(x[200:]).numpy().astype(np.float64), y[200:], y_train)
    final = _cb_ce_by_hand(last.predict_logits(x[200:]).numpy().astype(np.float64), y[200:], y_train)
    assert kept == pytest.approx(dev.min(), rel=1e-5) == pytest.approx(selected.best_dev_loss, rel=1e-9)
    assert final == pytest.approx(dev[-1], rel=1e-5)
    assert kept < final - 1e-3


def test_gdro_q_moves_towards_the_harder_group():
    x, y, g, c = _blobs(400, seed=2)
    rng = np.random.default_rng(2)
    flip = (g == 0) & (rng.random(400) < 0.5)  # half of the female rows get random labels: the harder group
    labels = np.where(flip, rng.integers(0, 4, 400), c)
    y = (np.eye(4)[labels] * 0.9 + 0.1 / 4).astype(np.float32)
    result = train_head(x, y, g, build_objective("gdro", SPEC, {"step_size": 0.05}),
                        options=HeadTrainingOptions(epochs=4, **FAST))
    q = result.objective.adv_probs.numpy()
    losses = result.model(torch.as_tensor(x), torch.as_tensor(y))["per_sample_loss"].detach().numpy()
    assert losses[g == 0].mean() > losses[g == 1].mean()
    assert q[0] > 0.6 > 0.4 > q[1]
    assert q.sum() == pytest.approx(1.0)


def _needs_other_groups(name: str) -> str | None:
    """The error of an objective that cannot run on (language, modality, gender) groups, else None
    (e.g. two_sided needs per-rater rows with a rater_gender attribute)."""
    try:
        build_objective(name, SPEC)
    except ConfigError as exc:
        return str(exc)
    return None


ON_GENDER_GROUPS = sorted(n for n in OBJECTIVES if _needs_other_groups(n) is None)


def test_objectives_left_out_need_other_group_attributes():
    for name in sorted(set(OBJECTIVES) - set(ON_GENDER_GROUPS)):
        assert "group attribute" in _needs_other_groups(name), name
    assert {"erm", "rw", "gdro", "gadro", "pgdro", "gr", "minmaxgap"} <= set(ON_GENDER_GROUPS)


@pytest.mark.parametrize("name", ON_GENDER_GROUPS)
def test_every_registered_objective_trains_its_own_parameters(name):
    x, y, g, c = _blobs(160, d=8, seed=4)
    # per-layer (N, L, D) features, so that every layer weighting (the head's, LfF's, DisEnt's) has a gradient
    x = np.stack([x, x[:, ::-1] + np.random.default_rng(4).normal(size=x.shape).astype(np.float32)], axis=1)
    soft_groups = hasattr(OBJECTIVES[name], "set_group_probabilities")  # PGDRO: one-hot memberships
    kwargs = {"group_probabilities": np.eye(2)[g]} if soft_groups else {}

    def run(epochs):
        return train_head(x, y, g, build_objective(name, SPEC),
                          options=HeadTrainingOptions(epochs=epochs, seed=1, **FAST), **kwargs)

    one, three = run(1), run(3)
    assert np.isfinite(three.predict_proba(x)).all()
    params_one = dict(one.objective.named_parameters())
    params_three = dict(three.objective.named_parameters())
    assert params_one.keys() == params_three.keys()
    # identical start (same seed): objective parameters can only differ if the optimiser moves them
    for key, value in params_three.items():
        assert not torch.equal(value, params_one[key]), f"{name}: parameter {key} was not optimised"
    assert not torch.equal(one.model.projector.weight, three.model.projector.weight)


def test_ds_sampler_trains_on_the_downsampled_rows():
    from llmfair.data.sampling import downsample_indices

    x, y, g, c = _blobs(300, seed=6)
    g = np.where(np.arange(300) % 5 == 0, 0, 1)  # 1:4 female:male
    result = train_head(x, y, g, build_objective("erm", SPEC), options=HeadTrainingOptions(epochs=1, sampler="ds", **FAST))
    expected = downsample_indices(c, g, seed=0)
    assert result.train_rows.tolist() == expected.tolist()
    assert result.num_steps == int(np.ceil(len(expected) / 32))


def test_train_head_input_errors():
    x, y, g, _ = _blobs(50)
    with pytest.raises(DataError, match="group ids"):
        train_head(x, y, g + 5, build_objective("erm", SPEC))
    with pytest.raises(DataError, match="rows"):
        train_head(x, y[:10], g, build_objective("erm", SPEC))
    with pytest.raises(ConfigError, match="unknown sampler"):
        train_head(x, y, g, build_objective("erm", SPEC), options=HeadTrainingOptions(sampler="nope"))
    with pytest.raises(ConfigError, match="soft group"):
        train_head(x, y, g, build_objective("erm", SPEC), group_probabilities=np.eye(2)[g])


# ===================================================================================== the sweep
@pytest.fixture(scope="module")
def fold1_examples(crema_d_labels: Path):
    return read_crema_d(crema_d_labels, 1, check_audio=False)


@pytest.fixture(scope="module")
def features_file(tmp_path_factory, fold1_examples) -> Path:
    """Seeded synthetic features for every CREMA-D clip: a class signal plus a gender direction."""
    rng = np.random.default_rng(0)
    soft = np.array([e.emotion_dist for e in fold1_examples])
    male = np.array([e.gender == "male" for e in fold1_examples], dtype=float)
    x = soft @ rng.normal(size=(6, 32)) * 3 + np.outer(male - 0.5, rng.normal(size=32)) * 2 + rng.normal(size=(len(soft), 32))
    folder = tmp_path_factory.mktemp("features")
    save_file({"features": torch.tensor(x, dtype=torch.float32)}, str(folder / "feats.safetensors"))
    (folder / "feats.ids.json").write_text(json.dumps([e.id for e in fold1_examples]))
    return folder / "feats.safetensors"


def _config(tmp: Path, crema_d_labels: Path, features: Path, **overrides) -> Path:
    values = {"labels_dir": str(crema_d_labels), "features": {"path": str(features)},
              "methods": [{"name": "erm", "objective": "erm"}, {"name": "rw", "objective": "rw"}],
              "ratios": [1, 20], "folds": [1, 2], "seeds": [0], "epochs": 2, "lr": 1e-3, **overrides}
    path = tmp / f"sweep_{len(list(tmp.glob('sweep_*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory, crema_d_labels, features_file):
    tmp = tmp_path_factory.mktemp("sweep")
    config = sweep.SweepConfig.from_yaml(_config(tmp, crema_d_labels, features_file))
    summary = sweep.run_sweep(config, tmp / "out", progress=False)
    return config, summary, tmp / "out"


EXPECTED_IDS = [f"{m}-r{r}-f{f}-s0" for m in ("erm", "rw") for r in (1, 20) for f in (1, 2)]


def test_sweep_run_ids_and_files(tiny_sweep):
    config, summary, out = tiny_sweep
    assert summary.planned == EXPECTED_IDS == [r.run_id for r in sweep.plan_runs(config)]
    assert summary.ran == EXPECTED_IDS and summary.skipped == []
    assert sorted(p.name for p in (out / "runs").glob("metrics_*.json")) == sorted(f"metrics_{i}.json" for i in EXPECTED_IDS)
    assert len(list((out / "runs").glob("predictions_*.csv"))) == 8
    for name in ("results.csv", "results.md", "tpr_gap_vs_ratio.png", "f1_vs_tpr_gap.png", "manifest.json"):
        assert (out / name).is_file(), name


def test_imbalance_builder_feeds_the_runs(tiny_sweep, fold1_examples):
    _, _, out = tiny_sweep
    record = json.loads((out / "runs" / "metrics_rw-r20-f1-s0.json").read_text())
    expected = build_imbalanced_splits(fold1_examples, CREMA_D, 20, 0)
    assert record["train_counts"] == expected.counts["train"]
    assert record["n_train"] == sum(1 for e in expected.examples if e.split == "train") == 1778
    assert record["n_dev"] == sum(1 for e in expected.examples if e.split == "dev")
    assert record["group_counts"] == [357, 1421]  # female, male rows of the 1:20 fold-1 training set
    # the test split is untouched: every fold-1 test clip, multi-label rows included
    pred = pd.read_csv(out / "runs" / "predictions_rw-r20-f1-s0.csv")
    assert record["n_test"] == len(pred) == sum(1 for e in fold1_examples if e.split == "test") == 1463


def test_run_metrics_match_sklearn_and_numpy(tiny_sweep):
    _, _, out = tiny_sweep
    record = json.loads((out / "runs" / "metrics_erm-r20-f2-s0.json").read_text())
    pred = pd.read_csv(out / "runs" / "predictions_erm-r20-f2-s0.csv")
    classes = list(CREMA_D.classes)
    y = pred[[f"label_{c}" for c in classes]].to_numpy() > 1 / 6
    p = pred[[f"prob_{c}" for c in classes]].to_numpy() > 1 / 6
    m = record["metrics"]
    assert m["f1"] == pytest.approx(f1_score(y, p, average="macro", zero_division=0), abs=1e-12)
    assert m["acc"] == pytest.approx(1 - hamming_loss(y, p), abs=1e-12)
    female, male = (pred["gender"] == "female").to_numpy(), (pred["gender"] == "male").to_numpy()
    tpr = [[(p[s & y[:, j], j]).mean() for j in range(6)] for s in (female, male)]
    dp = [[p[s, j].mean() for j in range(6)] for s in (female, male)]
    tpr_gap, dp_gap = np.abs(np.subtract(*tpr)), np.abs(np.subtract(*dp))
    assert m["tpr_gap_rms"] == pytest.approx(np.sqrt(np.mean(tpr_gap ** 2)), abs=1e-12)
    assert m["dp_gap_sum"] == pytest.approx(np.sqrt(np.sum(dp_gap ** 2)), abs=1e-12)
    assert m["dp_gap_rms"] == pytest.approx(np.sqrt(np.mean(dp_gap ** 2)), abs=1e-12)
    assert m["n_skipped"] == {"tpr": 0, "fpr": 0, "f1": 0}


def test_sweep_resumes_and_reruns_only_missing_runs(tiny_sweep, monkeypatch):
    config, _, out = tiny_sweep
    calls = []
    real = sweep.train_head
    monkeypatch.setattr(sweep, "train_head", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = sweep.run_sweep(config, out, progress=False, collect=False)
    assert calls == [] and again.ran == [] and again.skipped == EXPECTED_IDS
    before = json.loads((out / "runs" / "metrics_rw-r1-f2-s0.json").read_text())
    (out / "runs" / "metrics_rw-r1-f2-s0.json").unlink()
    third = sweep.run_sweep(config, out, progress=False, collect=False)
    assert len(calls) == 1 and third.ran == ["rw-r1-f2-s0"]
    after = json.loads((out / "runs" / "metrics_rw-r1-f2-s0.json").read_text())
    assert after["metrics"] == before["metrics"]  # deterministic re-run


def test_finished_runs_from_other_settings_are_refused(tiny_sweep):
    config, _, out = tiny_sweep
    changed = sweep.SweepConfig.from_mapping({**config.to_dict(), "epochs": 3}, source="changed.yaml")
    with pytest.raises(ConfigError, match="other settings"):
        sweep.run_sweep(changed, out, progress=False, collect=False)


def test_shards_partition_the_grid(tmp_path, crema_d_labels, features_file, monkeypatch):
    config = sweep.SweepConfig.from_yaml(_config(tmp_path, crema_d_labels, features_file, folds=[1], epochs=1,
                                                 ratios=[5, 20, 40]))
    full = [r.run_id for r in sweep.plan_runs(config)]
    shards = [[r.run_id for r in sweep.plan_runs(config, (i, 3))] for i in range(3)]
    assert sorted(sum(shards, [])) == sorted(full) and len(set(sum(shards, []))) == len(full) == 6
    assert shards[1] == full[1::3]
    calls = []
    real = sweep.train_head
    monkeypatch.setattr(sweep, "train_head", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = sweep.run_sweep(config, tmp_path / "out", (1, 2), progress=False, collect=False)
    second = sweep.run_sweep(config, tmp_path / "out", (0, 2), progress=False)
    assert first.ran == full[1::2] and second.ran == full[0::2] and len(calls) == 6
    assert sweep.run_sweep(config, tmp_path / "out", progress=False, collect=False).ran == []
    with pytest.raises(ConfigError, match="shard"):
        sweep.plan_runs(config, (2, 2))
    assert sweep.parse_shard("1/4") == (1, 4)
    with pytest.raises(ConfigError):
        sweep.parse_shard("1-4")


def test_results_table_aggregates_by_hand(tiny_sweep):
    _, _, out = tiny_sweep
    records = [json.loads(p.read_text()) for p in (out / "runs").glob("metrics_*.json")]
    table = pd.read_csv(out / "results.csv")
    for ratio in (1, 20):
        rows = table[table["ratio"] == ratio]
        for method in ("erm", "rw"):
            values = np.array([r["metrics"]["tpr_gap_rms"] for r in records if r["method"] == method and r["ratio"] == ratio])
            row = rows[(rows["kind"] == "method") & (rows["method"] == method)].iloc[0]
            assert row["tpr_gap_rms_mean"] == pytest.approx(values.mean())
            assert row["tpr_gap_rms_std"] == pytest.approx(values.std(ddof=1))
            assert row["n_runs"] == 2
        erm = rows[rows["method"] == "erm"].iloc[0]
        rw = rows[rows["method"] == "rw"].iloc[0]
        overall = rows[rows["kind"] == "overall"].iloc[0]
        gains = rows[rows["kind"] == "gain"].iloc[0]
        assert overall["members"] == "rw" and overall["symbol"] == "●"
        for m in sweep.METRICS:
            assert overall[f"{m}_mean"] == pytest.approx(rw[f"{m}_mean"])  # the only family member present
            assert gains[f"{m}_mean"] == pytest.approx(gain(m, overall[f"{m}_mean"], erm[f"{m}_mean"]))
    text = (out / "results.md").read_text()
    assert "## Gender imbalance 1:20" in text and "| Gain | ● |" in text and "| erm |" in text


def _fake_records(template: dict, tmp: Path) -> dict[str, dict]:
    """Hand-made metrics for erm, the four Overall families, gr (not a family member) and cluster rows."""
    rng = np.random.default_rng(7)
    specs = [("erm", "erm", "none", None), ("ds", "ds", "true_gender", None), ("rw", "rw", "true_gender", None),
             ("gdro", "gdro", "true_gender", None), ("gadro", "gadro", "true_gender", None),
             ("gr", "gr", "true_gender", None), ("rw_pseudo", "rw", "pseudo", None),
             ("rw_k", "rw", "unsupervised", 4), ("gdro_k", "gdro", "unsupervised", 4), ("rw_k", "rw", "unsupervised", 8)]
    (tmp / "runs").mkdir(parents=True)
    values: dict[str, dict] = {}
    for index, (name, family, supervision, k) in enumerate(specs):
        for fold in (1, 2, 3):
            metrics = {m: float(rng.uniform(0.05, 0.9)) for m in sweep.METRICS}
            run_id = f"{name}-r20-f{fold}-s0" + (f"-k{k}" if k else "")
            record = {**template, "run_id": run_id, "method": name, "method_index": index, "family": family,
                      "supervision": supervision, "symbol": sweep.SUPERVISION_LEVELS[supervision], "K": k,
                      "ratio": 20, "fold": fold, "reconstructed": name == "gr",
                      "metrics": {**template["metrics"], **metrics}}
            values.setdefault(f"{name}/{k}", {}).setdefault("runs", []).append(metrics)
            (tmp / "runs" / f"metrics_{run_id}.json").write_text(json.dumps(record))
    return {key: {m: np.mean([r[m] for r in v["runs"]]) for m in sweep.METRICS} for key, v in values.items()}


def test_overall_and_gain_rows_on_hand_made_records(tiny_sweep, tmp_path):
    _, _, out = tiny_sweep
    template = json.loads((out / "runs" / "metrics_erm-r20-f1-s0.json").read_text())
    means = _fake_records(template, tmp_path)
    paths = sweep.collect_results(tmp_path)
    table = pd.read_csv(paths["csv"])
    erm = means["erm/None"]

    def check(kind_rows, members, label):
        for m in sweep.METRICS:
            expected = np.mean([means[x][m] for x in members])
            assert kind_rows[0][f"{m}_mean"] == pytest.approx(expected), (label, m)
            hand = (erm[m] - expected) / erm[m] if "gap" in m else (expected - erm[m]) / erm[m]
            assert kind_rows[1][f"{m}_mean"] == pytest.approx(hand), (label, m)

    def rows(supervision, k=None):
        sel = table[(table["supervision"] == supervision) & (table["kind"].isin(["overall", "gain"]))]
        sel = sel[sel["K"].isna()] if k is None else sel[sel["K"] == k]
        return [sel[sel["kind"] == "overall"].iloc[0], sel[sel["kind"] == "gain"].iloc[0]]

    check(rows("true_gender"), ["ds/None", "rw/None", "gdro/None", "gadro/None"], "●")  # gr is not a member
    assert rows("true_gender")[0]["members"] == "ds,rw,gdro,gadro"
    check(rows("pseudo"), ["rw_pseudo/None"], "⦿")
    check(rows("unsupervised", 4), ["rw_k/4", "gdro_k/4"], "○ K=4")
    check(rows("unsupervised", 8), ["rw_k/8"], "○ K=8")
    assert list(table[table["kind"] == "method"]["method"].drop_duplicates()) == [
        "erm", "ds", "rw", "gdro", "gadro", "gr", "rw_pseudo", "rw_k", "gdro_k"]  # config order
    text = paths["markdown"].read_text()
    assert "| gr † | ● |" in text and "† reconstruction" in text and "| Overall | ○ | 8 |" in text


def test_inferred_groups_from_a_file(tmp_path, crema_d_labels, features_file, fold1_examples):
    rng = np.random.default_rng(3)
    ids = [e.id for e in fold1_examples]
    true = np.array([e.gender for e in fold1_examples])
    pseudo = np.where(rng.random(len(ids)) < 0.1, np.where(true == "male", "female", "male"), true)
    p_female = np.clip(np.where(pseudo == "female", 0.9, 0.1) + rng.normal(0, 0.05, len(ids)), 0, 1)
    clusters = rng.integers(0, 3, len(ids))
    pd.DataFrame({"id": ids, "pseudo_gender": pseudo, "pseudo_p_female": p_female, "pseudo_p_male": 1 - p_female,
                  "cluster_3": clusters}).to_csv(tmp_path / "groups.csv", index=False)
    config = sweep.SweepConfig.from_yaml(_config(
        tmp_path, crema_d_labels, features_file, groups_file=str(tmp_path / "groups.csv"), folds=[1], ratios=[20], epochs=1,
        methods=[{"name": "erm", "objective": "erm"}, {"name": "rw_k", "objective": "rw", "groups": "clusters", "K": [3]},
                 {"name": "pgdro", "objective": "pgdro", "groups": "pseudo"}]))
    summary = sweep.run_sweep(config, tmp_path / "out", progress=False)
    assert summary.ran == ["erm-r20-f1-s0", "rw_k-r20-f1-s0-k3", "pgdro-r20-f1-s0"]
    train_ids = [e.id for e in build_imbalanced_splits(fold1_examples, CREMA_D, 20, 0).examples if e.split == "train"]
    where = {i: n for n, i in enumerate(ids)}
    rows = [where[i] for i in train_ids]
    rw = json.loads((tmp_path / "out" / "runs" / "metrics_rw_k-r20-f1-s0-k3.json").read_text())
    assert rw["symbol"] == "○" and rw["K"] == 3 and rw["group_names"] == ["0", "1", "2"]
    assert rw["group_counts"] == np.bincount(clusters[rows], minlength=3).tolist()
    pg = json.loads((tmp_path / "out" / "runs" / "metrics_pgdro-r20-f1-s0.json").read_text())
    assert pg["symbol"] == "⦿"
    assert pg["group_counts"] == [int((pseudo[rows] == "female").sum()), int((pseudo[rows] == "male").sum())]
    table = pd.read_csv(tmp_path / "out" / "results.csv")
    assert set(table.loc[table["kind"] == "overall", "supervision"]) == {"unsupervised"}  # pgdro is not a family member

    pd.DataFrame({"id": ids[:10], "cluster_3": clusters[:10]}).to_csv(tmp_path / "short.csv", index=False)
    short = sweep.SweepConfig.from_mapping({**config.to_dict(), "groups_file": str(tmp_path / "short.csv")}, source="s")
    with pytest.raises(DataError, match="short.csv"):
        sweep.run_sweep(short, tmp_path / "out2", progress=False)


@pytest.mark.parametrize("change, match", [
    ({"methods": [{"name": "erm", "objective": "nope"}]}, "unknown objective 'nope'"),
    ({"methods": [{"name": "erm", "objective": "erm", "colour": 1}]}, r"unknown key\(s\) \['colour'\]"),
    ({"epochz": 3}, r"unknown key\(s\) \['epochz'\]"),
    ({"ratios": [1, 0.5]}, "below 1"),
    ({"methods": [{"name": "erm", "objective": "erm"}, {"name": "rw", "objective": "rw", "options": {"alpha": 1}}]},
     r"unknown key\(s\) \['alpha'\]"),
    ({"methods": [{"name": "erm", "objective": "erm"}, {"name": "rw", "objective": "rw", "sampler": "nope"}]},
     "unknown sampler"),
    ({"methods": [{"name": "erm", "objective": "erm"}, {"name": "rw", "objective": "rw", "groups": "clusters"}]}, "needs K"),
    ({"methods": [{"name": "erm", "objective": "erm"}, {"name": "rw", "objective": "rw", "groups": "class_gender"}]},
     "class_gender"),
    ({"methods": [{"name": "erm", "objective": "erm"}, {"name": "rw", "objective": "rw", "groups": "pseudo"}]},
     "groups_file"),
    ({"methods": [{"name": "e-rm", "objective": "erm"}]}, "letters"),
    ({"reference": "ERM"}, "reference"),
])
def test_bad_configs_are_named(tmp_path, crema_d_labels, features_file, change, match):
    path = _config(tmp_path, crema_d_labels, features_file, **change)
    with pytest.raises(ConfigError, match=match) as info:
        sweep.SweepConfig.from_yaml(path)
    assert str(path) in str(info.value)


def test_class_gender_sets_the_objective_grouping(tmp_path, crema_d_labels, features_file):
    config = sweep.SweepConfig.from_yaml(_config(tmp_path, crema_d_labels, features_file, methods=[
        {"name": "erm", "objective": "erm"}, {"name": "gdro_cg", "objective": "gdro", "groups": "class_gender"},
        {"name": "bal", "objective": "erm", "sampler": "group_balanced", "groups": "class_gender"}]))
    assert config.methods[1].options == {"groups": "class_gender"} and config.methods[1].supervision == "true_gender"
    assert config.methods[2].sampler_options == {"by": "class_gender"} and config.methods[0].supervision == "none"


def test_feature_file_errors(tmp_path, features_file):
    shutil.copy(features_file, tmp_path / "f.safetensors")
    (tmp_path / "f.ids.json").write_text(json.dumps(["a", "b"]))
    with pytest.raises(DataError, match="2 ids"):
        sweep.load_feature_file(tmp_path / "f.safetensors")
    with pytest.raises(DataError, match="no tensor 'x'"):
        sweep.load_feature_file(features_file, tensor="x")


def test_cli_collect_only(tiny_sweep, capsys, tmp_path, crema_d_labels, features_file):
    from llmfair.cli import main

    config, _, out = tiny_sweep
    path = _config(tmp_path, crema_d_labels, features_file)
    (out / "results.md").unlink()
    assert main(["sweep", str(path), "--out", str(out), "--collect-only"]) == 0
    assert (out / "results.md").is_file() and "results:" in capsys.readouterr().out
    assert main(["sweep", str(path), "--out", str(out), "--shard", "0/2", "--no-progress"]) == 0
    assert "0 trained, 4 already finished" in capsys.readouterr().out
    assert main(["sweep", str(path), "--out", str(out), "--shard", "3/2"]) == 1


# ===================================================================================== the front
def _speaker_table(tmp: Path, n_speakers: int = 12, per_speaker: int = 6, seed: int = 0):
    """A tiny multi-label table with a strong speaker effect: each speaker's predictions are right
    with their own probability, so utterances of one speaker are correlated."""
    from llmfair.predictions import write_predictions

    rng = np.random.default_rng(seed)
    k = len(CREMA_D.classes)
    n = n_speakers * per_speaker
    speaker = np.repeat(np.arange(n_speakers), per_speaker)
    skill = rng.uniform(0.05, 0.95, n_speakers)[speaker]
    true = rng.integers(0, k, n)
    soft = np.full((n, k), 0.02)
    soft[np.arange(n), true] = 1 - 0.02 * (k - 1)
    second = (true + 1 + rng.integers(0, k - 1, n)) % k
    two = rng.random(n) < 0.3  # some rows with two classes above 1/K
    soft[two] = 0.02
    soft[two, true[two]], soft[two, second[two]] = 0.45, 0.47
    guess = np.where(rng.random(n) < skill, true, rng.integers(0, k, n))
    probs = np.full((n, k), 0.04)
    probs[np.arange(n), guess] = 1 - 0.04 * (k - 1)
    gender = np.where(np.arange(n_speakers) % 2 == 0, "female", "male")[speaker]
    return write_predictions(tmp / "tiny.csv", ids=[f"u{i}" for i in range(n)], split="test", language="eng",
                             modality="audio", gender=gender, speaker=[f"s{s}" for s in speaker], classes=CREMA_D,
                             probs=probs, labels=soft)


def _loop_figures(y: np.ndarray, p: np.ndarray, male: np.ndarray) -> dict[str, float]:
    """The four front figures of binarised labels / predictions, directly (no counts machinery)."""
    def f1s(rows):
        tp = (y[rows] & p[rows]).sum(0)
        fp = (~y[rows] & p[rows]).sum(0)
        fn = (y[rows] & ~p[rows]).sum(0)
        denom = 2 * tp + fp + fn
        return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0), tp + fn

    every = np.ones(len(y), dtype=bool)
    f1, support = f1s(every)
    weighted = float((f1 * support).sum() / support.sum()) if support.sum() else 0.0
    gap = abs(f1s(male)[0].mean() - f1s(~male)[0].mean()) if male.any() and (~male).any() else np.nan
    tpr = []
    for rows in (~male, male):
        pos = y[rows].sum(0)
        tpr.append(np.where(pos > 0, (y[rows] & p[rows]).sum(0) / np.maximum(pos, 1), np.nan))
    tpr_gap = np.abs(tpr[1] - tpr[0])
    rms = float(np.sqrt(np.nanmean(tpr_gap ** 2))) if np.isfinite(tpr_gap).any() else np.nan
    return {"weighted_f1": weighted, "macro_f1": float(f1.mean()), "worst_cell_gap": float(gap), "tpr_gap_rms": rms}


def _loop_signed(y, p, male):
    """The signed components of the two absolute front figures: the male − female macro-F1 gap and
    the per-class male − female TPR differences."""
    def f1s(rows):
        tp = (y[rows] & p[rows]).sum(0)
        fp = (~y[rows] & p[rows]).sum(0)
        fn = (y[rows] & ~p[rows]).sum(0)
        denom = 2 * tp + fp + fn
        return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)

    tpr = []
    for rows in (~male, male):
        pos = y[rows].sum(0)
        tpr.append(np.where(pos > 0, (y[rows] & p[rows]).sum(0) / np.maximum(pos, 1), np.nan))
    gap = f1s(male).mean() - f1s(~male).mean() if male.any() and (~male).any() else np.nan
    return gap, tpr[1] - tpr[0]


def test_front_bootstrap_matches_a_loop_over_speakers(tmp_path):
    pred = _speaker_table(tmp_path)
    y, p = pred.label_bin, pred.prediction_bin
    male = pred.column("gender") == "male"
    speakers = pred.column("speaker")
    R = 2000
    got = sweep.front_figures(pred, n_resamples=R, seed=1)
    # point estimates against scikit-learn and the direct computation
    direct = _loop_figures(y, p, male)
    assert got["weighted_f1"] == pytest.approx(f1_score(y, p, average="weighted", zero_division=0), abs=1e-12)
    assert got["macro_f1"] == pytest.approx(f1_score(y, p, average="macro", zero_division=0), abs=1e-12)
    assert got["worst_cell_gap"] == pytest.approx(abs(f1_score(y[male], p[male], average="macro", zero_division=0)
                                                      - f1_score(y[~male], p[~male], average="macro", zero_division=0)))
    for name, value in direct.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name
    # intervals against a loop that resamples speakers with replacement and recomputes everything; the
    # absolute figures' intervals are built from the signed gaps (docs/intervals.md): the folded
    # interval of the one cell's signed macro-F1 gap, and RMS ± the 95 % quantile of the RMS deviation
    rng = np.random.default_rng(5)
    names = np.unique(speakers)
    rows_of = {s: np.flatnonzero(speakers == s) for s in names}
    reps = {name: [] for name in direct}
    signed_gap, signed_tpr = [], []
    gap0, tpr0 = _loop_signed(y, p, male)
    for _ in range(R):
        rows = np.concatenate([rows_of[s] for s in rng.choice(names, size=len(names), replace=True)])
        for name, value in _loop_figures(y[rows], p[rows], male[rows]).items():
            reps[name].append(value)
        g, t = _loop_signed(y[rows], p[rows], male[rows])
        signed_gap.append(g)
        signed_tpr.append(t)
    from llmfair.metrics.bootstrap import bootstrap_ci

    by_utterance = bootstrap_ci(pred, unit="utterance", n_resamples=R, seed=1, metrics=("weighted_f1", "macro_f1"),
                                worst_cell_metric="macro_f1").overall.set_index("metric")
    expected = {name: tuple(np.nanpercentile(np.array(reps[name]), [2.5, 97.5])) for name in ("weighted_f1", "macro_f1")}
    lo, hi = np.nanpercentile(signed_gap, [2.5, 97.5])
    lo, hi = min(lo, gap0), max(hi, gap0)
    expected["worst_cell_gap"] = (0.0 if lo <= 0 <= hi else min(abs(lo), abs(hi)), max(abs(lo), abs(hi)))
    q = np.nanpercentile(np.sqrt(np.nanmean((np.array(signed_tpr) - tpr0) ** 2, axis=1)), 95)
    expected["tpr_gap_rms"] = (max(direct["tpr_gap_rms"] - q, 0.0), direct["tpr_gap_rms"] + q)
    assert set(expected) == set(direct)
    for name, (low, high) in expected.items():
        assert got[f"{name}_low"] == pytest.approx(low, abs=0.025), name
        assert got[f"{name}_high"] == pytest.approx(high, abs=0.025), name
        assert got[f"{name}_low"] <= got[name] <= got[f"{name}_high"], name
        if name in by_utterance.index:  # the test can fail: utterance resampling gives narrower bars
            width = by_utterance.loc[name, "high"] - by_utterance.loc[name, "low"]
            assert width < (high - low) - 0.05, name
    again = sweep.front_figures(pred, n_resamples=50, seed=1)
    assert again == sweep.front_figures(pred, n_resamples=50, seed=1)  # seeded
    assert again != sweep.front_figures(pred, n_resamples=50, seed=2)


def test_collect_writes_the_front(tiny_sweep, tmp_path):
    from PIL import Image

    from llmfair.report import FRONT_FIGURES, pareto_mask

    _, summary, out = tiny_sweep
    assert [p.name for p in summary.results["front"]] == ["front.csv", "front.png"]
    front = pd.read_csv(out / "front.csv", keep_default_na=False, na_values=["nan", "NaN"])
    figures = [f"{f}{s}" for f in FRONT_FIGURES for s in ("", "_low", "_high")]
    assert list(front.columns) == ["run_id", "objective", "options", "seed", "ratio", "fold", "K", *figures, "pareto"]
    assert sorted(front["run_id"]) == sorted(EXPECTED_IDS)
    assert set(front["objective"]) == {"erm", "rw"} and set(front["options"]) == {""}
    for ratio in (1, 20):
        block = front[front["ratio"] == ratio]
        assert len(block) == 4
        assert np.array_equal(block["pareto"].to_numpy(bool), pareto_mask(block["weighted_f1"], block["worst_cell_gap"]))
    classes = list(CREMA_D.classes)
    for _, row in front.iterrows():
        record = json.loads((out / "runs" / f"metrics_{row['run_id']}.json").read_text())
        pred = pd.read_csv(out / "runs" / f"predictions_{row['run_id']}.csv")
        y = pred[[f"label_{c}" for c in classes]].to_numpy() > 1 / 6
        p = pred[[f"prob_{c}" for c in classes]].to_numpy() > 1 / 6
        male = (pred["gender"] == "male").to_numpy()
        assert row["macro_f1"] == pytest.approx(record["metrics"]["f1"], abs=1e-12)
        assert row["tpr_gap_rms"] == pytest.approx(record["metrics"]["tpr_gap_rms"], abs=1e-12)
        assert row["weighted_f1"] == pytest.approx(f1_score(y, p, average="weighted", zero_division=0), abs=1e-12)
        assert row["worst_cell_gap"] == pytest.approx(abs(f1_score(y[male], p[male], average="macro", zero_division=0)
                                                          - f1_score(y[~male], p[~male], average="macro",
                                                                     zero_division=0)), abs=1e-12)
        assert (row["seed"], row["fold"], row["ratio"]) == (record["seed"], record["fold"], record["ratio"])
        for f in FRONT_FIGURES:
            assert row[f"{f}_low"] < row[f"{f}_high"], (row["run_id"], f)
    with Image.open(out / "front.png") as image:
        assert image.format == "PNG" and image.size[0] > 0
    # a run without its predictions table is left out of the front (the results keep it)
    shutil.copytree(out / "runs", tmp_path / "runs")
    (tmp_path / "runs" / "predictions_rw-r20-f2-s0.csv").unlink()
    paths = sweep.collect_results(tmp_path, plots=False, front_resamples=20)
    assert "rw-r20-f2-s0" not in set(pd.read_csv(paths["front"][0])["run_id"])
    assert len(pd.read_csv(paths["front"][0])) == 7 and len(pd.read_csv(paths["csv"])) > 0


def test_collect_without_predictions_writes_no_front(tiny_sweep, tmp_path):
    _, _, out = tiny_sweep
    template = json.loads((out / "runs" / "metrics_erm-r20-f1-s0.json").read_text())
    _fake_records(template, tmp_path)
    paths = sweep.collect_results(tmp_path, plots=False)
    assert "front" not in paths and not (tmp_path / "front.csv").exists() and paths["csv"].is_file()


def test_selection_goes_to_the_training_options(tmp_path, crema_d_labels, features_file):
    # needs HeadTrainingOptions.selection (llmfair/ssl/train_head.py)
    config = sweep.SweepConfig.from_yaml(_config(tmp_path, crema_d_labels, features_file,
                                                 selection={"criterion": "dev_loss"}))
    assert config.selection == {"criterion": "dev_loss"}
    assert config.training_options(0, config.methods[0]).selection == {"criterion": "dev_loss"}
    default = sweep.SweepConfig.from_yaml(_config(tmp_path, crema_d_labels, features_file))
    assert default.selection == {} and default.training_options(0, default.methods[0]).selection == {}
    with pytest.raises(ConfigError, match="selection"):
        sweep.SweepConfig.from_yaml(_config(tmp_path, crema_d_labels, features_file, selection=[1]))


def test_dev_genders_reach_train_head(tmp_path, crema_d_labels, features_file, fold1_examples, monkeypatch):
    class Stop(Exception):
        pass

    seen = {}

    def capture(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(sweep, "train_head", capture)
    config = sweep.SweepConfig.from_yaml(_config(tmp_path, crema_d_labels, features_file, folds=[1], ratios=[20],
                                                 methods=[{"name": "erm", "objective": "erm"}]))
    with pytest.raises(Stop):
        sweep.run_sweep(config, tmp_path / "out", progress=False, collect=False)
    dev = [e for e in build_imbalanced_splits(fold1_examples, CREMA_D, 20, 0).examples if e.split == "dev"]
    assert isinstance(seen["dev_genders"], np.ndarray)
    assert seen["dev_genders"].tolist() == [e.gender for e in dev] and len(dev) == len(seen["dev_labels"])
    assert set(seen["dev_genders"]) <= {"female", "male", "unknown"}
