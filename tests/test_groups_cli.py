"""``llmfair groups infer``: the groups file the sweep reads, checked against independent
computations — each K's clusters against scikit-learn's MiniBatchKMeans with IDI's parameters, the
purity per K against a count by hand, the built-in pseudo labels against scikit-learn's logistic
regression fitted on the other speaker folds — plus the t-SNE figure and one-line bad-input errors."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmfair.cli import main
from llmfair.errors import DataError
from llmfair.groups import EmbeddingGenderClassifier, speaker_folds
from llmfair.ssl.extract import PROGRESS_FILE, load_feature_set
from llmfair.sweep import load_group_table

pytestmark = pytest.mark.usefixtures("one_thread")
KS = (2, 3, 5)


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    """Acoustic features (pitch statistics follow gender) of a small built-in corpus."""
    from llmfair.data.synth import SynthConfig, generate_corpus

    root = tmp_path_factory.mktemp("groups")
    generate_corpus(root / "corpus", SynthConfig(seed=0, utterances_per_pair=40))
    assert main(["features", "extract", str(root / "corpus"), "--extractor", "acoustic", "--out",
                 str(root / "acoustic"), "--no-progress"]) == 0
    return root / "acoustic"


@pytest.fixture(scope="module")
def inferred(features, tmp_path_factory):
    out = tmp_path_factory.mktemp("inferred") / "groups.csv"
    assert main(["groups", "infer", "--features", str(features), "--k", ",".join(map(str, KS)), "--out", str(out),
                 "--no-progress"]) == 0
    return out


def _one_line_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("llmfair: error: ") and len(err.splitlines()) == 1, err
    return err


def test_groups_file_is_what_the_sweep_reads(features, inferred):
    fs = load_feature_set(features)
    table = pd.read_csv(inferred)
    assert list(table.columns) == ["id", "pseudo_gender", "pseudo_p_female", "pseudo_p_male",
                                   *(f"cluster_{k}" for k in KS)]
    assert table["id"].tolist() == list(fs.ids)
    groups = load_group_table(inferred)  # the sweep's reader accepts it as it is
    assert sorted(groups.clusters) == list(KS) and groups.pseudo_probs.shape == (len(fs.ids), 2)
    np.testing.assert_array_equal(groups.pseudo, table["pseudo_gender"].to_numpy())
    for k in KS:
        np.testing.assert_array_equal(groups.clusters[k], table[f"cluster_{k}"].to_numpy())


def test_clusters_equal_sklearn_minibatch_kmeans(features, inferred):
    from sklearn.cluster import MiniBatchKMeans

    x = load_feature_set(features).values.astype(np.float64)
    table = pd.read_csv(inferred)
    for k in KS:
        # IDI Table A1's parameters written out here, not imported from llmfair
        reference = MiniBatchKMeans(n_clusters=k, init="k-means++", random_state=42, max_iter=1000, batch_size=32,
                                    compute_labels=True, reassignment_ratio=0.01, tol=1e-4, n_init=3).fit(x)
        np.testing.assert_array_equal(table[f"cluster_{k}"].to_numpy(), reference.labels_)


def test_purity_per_k_by_hand(features, inferred):
    genders = load_feature_set(features).utterances["gender"].tolist()
    table = pd.read_csv(inferred)
    purity = pd.read_csv(inferred.with_name("groups.purity.csv")).set_index("K")
    for k in KS:
        per_cluster: dict[int, Counter] = {}
        for cluster, gender in zip(table[f"cluster_{k}"], genders):
            if gender in ("female", "male"):
                per_cluster.setdefault(int(cluster), Counter())[gender] += 1
        scored = sum(sum(c.values()) for c in per_cluster.values())
        by_hand = sum(max(c.values()) for c in per_cluster.values()) / scored
        assert purity.loc[k, "purity"] == pytest.approx(by_hand, abs=1e-6)
        assert purity.loc[k, "n_scored"] == scored
        assert purity.loc[k, "empty_clusters"] == k - len(set(table[f"cluster_{k}"]))
    assert purity.loc[2, "purity"] > 0.9  # pitch statistics split the built-in voices by gender
    markdown = inferred.with_name("groups.purity.md").read_text()
    assert "| 2 | " in markdown and "## K = 5: clusters × true gender" in markdown
    record = json.loads(inferred.with_name("groups.json").read_text())
    assert record["purity"] == {str(k): purity.loc[k, "purity"] for k in KS}
    assert record["features"]["extractor"] == "acoustic"


def test_builtin_pseudo_labels_are_cross_fitted_over_speakers(features, inferred):
    from sklearn.linear_model import LogisticRegression

    fs = load_feature_set(features)
    x = fs.values.astype(np.float64)
    speakers, genders = fs.utterances["speaker"].to_numpy(), fs.utterances["gender"].to_numpy()
    folds = speaker_folds(speakers, genders, 5, 42)
    assert set(folds) == set(speakers)  # every speaker of this corpus has a known gender
    for g in ("female", "male"):  # each gender dealt evenly over the folds
        sizes = Counter(f for s, f in folds.items() if genders[speakers == s][0] == g)
        assert max(sizes.values()) - min(sizes.values()) <= 1 and len(sizes) == 5
    row_fold = np.array([folds[s] for s in speakers])
    expected = np.zeros(len(x))
    for fold in range(5):
        fit = row_fold != fold
        mean, std = x[fit].mean(0), x[fit].std(0)
        std[std == 0] = 1.0
        model = LogisticRegression(C=1.0, max_iter=5000).fit((x[fit] - mean) / std, genders[fit] == "male")
        expected[~fit] = model.predict_proba((x[~fit] - mean) / std)[:, 1]
    table = pd.read_csv(inferred)
    np.testing.assert_allclose(table["pseudo_p_male"], expected, atol=1e-5)
    np.testing.assert_allclose(table["pseudo_p_female"] + table["pseudo_p_male"], 1.0, atol=1e-9)
    assert (table["pseudo_gender"] == np.where(expected > 0.5, "male", "female")).all()
    record = json.loads(inferred.with_name("groups.json").read_text())
    assert record["pseudo_accuracy"] == pytest.approx((table["pseudo_gender"] == genders).mean())


def test_tsne_figure(inferred):
    import matplotlib.image

    path = inferred.with_name("groups.tsne.png")
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 500 and image.shape[1] > 1000 and image[..., :3].std() > 0.05  # 2 x 3 panels


def test_a_saved_classifier_as_pseudo_model(features, tmp_path, capsys):
    fs = load_feature_set(features)
    x = fs.values.reshape(len(fs.ids), -1)
    genders = fs.utterances["gender"].to_numpy()
    path = EmbeddingGenderClassifier("acoustic").fit_features(x, genders).save(tmp_path / "classifier.json")
    out = tmp_path / "g.csv"
    assert main(["groups", "infer", "--features", str(features), "--method", "pseudo", "--pseudo-model", str(path),
                 "--no-tsne", "--out", str(out), "--no-progress"]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == ["id", "pseudo_gender", "pseudo_p_female", "pseudo_p_male"]
    expected = EmbeddingGenderClassifier.load(path).predict_features(x)
    np.testing.assert_allclose(table["pseudo_p_female"], expected.probabilities[:, 0], atol=1e-6)
    assert not out.with_name("g.tsne.png").exists()

    other = EmbeddingGenderClassifier("acoustic", {"n_mels": 20}).fit_features(
        np.random.default_rng(0).normal(size=(20, 3)), ["female", "male"] * 10).save(tmp_path / "other.json")
    err = _one_line_error(capsys, ["groups", "infer", "--features", str(features), "--method", "pseudo",
                                   "--pseudo-model", str(other), "--out", str(tmp_path / "x.csv"), "--no-progress"])
    assert "other.json" in err and "fitted on acoustic features" in err


@pytest.mark.parametrize("args, match", [
    (["--k", "1,4"], "K must be"),
    (["--k", "500"], "larger than the 132 rows"),
    (["--method", "pseudo,spectral"], "expected one or more of"),
    (["--pseudo-folds", "1"], "pseudo_folds"),
    (["--method", "pseudo", "--pseudo-model", "/nonexistent/model"], "cannot load"),
])
def test_bad_options_are_one_line(features, tmp_path, capsys, args, match):
    err = _one_line_error(capsys, ["groups", "infer", "--features", str(features), *args, "--no-tsne",
                                   "--out", str(tmp_path / "g.csv"), "--no-progress"])
    assert match in err


def test_unfinished_or_missing_features_are_one_line(tmp_path, capsys):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / PROGRESS_FILE).write_text(json.dumps(
        {"format": "llmfair.features", "identity": {}, "num_chunks": 4, "done": [0, 1]}))
    err = _one_line_error(capsys, ["groups", "infer", "--features", str(tmp_path / "half"), "--out",
                                   str(tmp_path / "g.csv")])
    assert "unfinished extraction (2 of 4 chunks)" in err and "llmfair features extract" in err
    err = _one_line_error(capsys, ["groups", "infer", "--features", str(tmp_path / "none"), "--out",
                                   str(tmp_path / "g.csv")])
    assert "features directory not found" in err
    with pytest.raises(DataError):
        load_feature_set(tmp_path / "none")
