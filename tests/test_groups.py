"""Implicit demography inference: k-means on real speaker embeddings of the built-in corpus follows
gender, pseudo genders from a tiny offline audio-classification model and from the built-in
classifier (checked against scikit-learn), the t-SNE figure, and inferred groups feeding the
objectives."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llmfair.errors import ConfigError, DataError
from llmfair.groups import (
    CLUSTER_COUNTS,
    KMEANS_PARAMETERS,
    EmbeddingGenderClassifier,
    PseudoGenderLabeler,
    PseudoGenderLabels,
    TransformersGenderLabeler,
    cluster_groups,
    cluster_purity,
    fit_kmeans,
    gender_label_indices,
    pseudo_gender_groups,
    tsne_plot,
)
from llmfair.objectives import ObjectiveInputs, TrainingStats, build_objective


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The built-in corpus (40 rows per pair) with resemblyzer speaker embeddings of every clip."""
    from llmfair.data.meld_st import read_meld_st
    from llmfair.data.synth import SynthConfig, generate_corpus
    from llmfair.ssl import build_feature_extractor, extract_features

    root = tmp_path_factory.mktemp("idi")
    generate_corpus(root / "corpus", SynthConfig(seed=0, utterances_per_pair=40))
    examples = read_meld_st(root / "corpus")
    embeddings = extract_features(build_feature_extractor("speaker"), examples, root / "cache", progress=False)
    split = np.array([ex.split for ex in examples])
    gender = np.array([ex.gender for ex in examples], dtype=object)
    return examples, embeddings, split, gender, root / "cache"


# ------------------------------------------------------------------------------------- k-means
def test_kmeans_on_speaker_embeddings_separates_gender(corpus) -> None:
    from sklearn.cluster import MiniBatchKMeans

    examples, emb, split, gender, _ = corpus
    train = split == "train"
    fit = fit_kmeans(emb[train], 2)
    purity = cluster_purity(fit.train_labels, gender[train], 2)
    print(f"k-means K=2 purity on {train.sum()} training clips: {purity.purity:.3f}")
    assert purity.purity >= 0.9  # 0.957 measured (one male voice variant falls with the women)
    table = purity.contingency
    assert list(table.columns) == ["female", "male"] and list(table.index) == ["k00", "k01"]
    assert table.to_numpy().sum() == train.sum() == purity.num_scored
    assert purity.purity == pytest.approx(table.to_numpy().max(axis=1).sum() / train.sum())

    # the documented MiniBatchKMeans parameters, reproduced independently; deterministic
    reference = MiniBatchKMeans(n_clusters=2, init="k-means++", random_state=42, max_iter=1000, batch_size=32,
                                compute_labels=True, reassignment_ratio=0.01, tol=1e-4, n_init=3).fit(emb[train])
    assert KMEANS_PARAMETERS["batch_size"] == 32 and "algorithm" not in KMEANS_PARAMETERS
    np.testing.assert_array_equal(fit.train_labels, reference.labels_)
    np.testing.assert_array_equal(fit_kmeans(emb[train], 2).train_labels, fit.train_labels)
    # dev/test come from the training fit (nearest centre = MiniBatchKMeans.predict), never refitted
    np.testing.assert_array_equal(fit.assign(emb[~train]), reference.predict(emb[~train]))
    np.testing.assert_array_equal(fit.assign(emb[train]), fit.train_labels)
    dev = cluster_purity(fit.assign(emb[split == "dev"]), gender[split == "dev"], 2)
    assert dev.purity > 0.5

    for k in CLUSTER_COUNTS:
        labels = fit_kmeans(emb[train], k).train_labels
        assert labels.min() >= 0 and labels.max() < k
    with pytest.raises(ConfigError, match="K=1"):
        fit_kmeans(emb[train], 1)
    with pytest.raises(ConfigError, match="unknown parameter"):
        fit_kmeans(emb[train], 2, algorithm="lloyd")


def test_cluster_purity_by_hand() -> None:
    clusters = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    genders = ["female", "female", "male", "male", "male", "female", "male", "unknown"]
    result = cluster_purity(clusters, genders, k=4)
    # cluster 0: 2 of 3 female; 1: 2 of 2 male; 2: 1 female, 1 male (unknown not scored); 3: empty
    assert result.purity == pytest.approx((2 + 2 + 1) / 7) and result.num_scored == 7
    assert result.contingency.loc["k02"].tolist() == [1, 1, 1]
    assert result.contingency.loc["k03"].tolist() == [0, 0, 0]
    with pytest.raises(DataError, match="lie in"):
        cluster_purity(np.array([0, 5]), ["female", "male"], k=2)


# ------------------------------------------------------------------------------------- pseudo labels
def tiny_classifier(folder, id2label: dict[int, str], bias: list[float]):
    """A random 2-layer wav2vec2 audio classifier whose output bias decides the answer, saved offline."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification

    config = Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16, 16, 16),
        conv_stride=(5, 4, 4), conv_kernel=(10, 8, 4), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer", do_stable_layer_norm=True, classifier_proj_size=16, num_labels=len(id2label),
        id2label=id2label, label2id={v: k for k, v in id2label.items()})
    torch.manual_seed(0)
    model = Wav2Vec2ForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.weight.mul_(0.01)
        model.classifier.bias.copy_(torch.tensor(bias))
    model.save_pretrained(folder)
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(folder)
    return folder, model.eval()


def test_transformers_labeler_maps_outputs_by_name(tmp_path) -> None:
    clips = [np.random.default_rng(i).normal(scale=0.1, size=n).astype(np.float32) for i, n in enumerate((8000, 5000, 11000))]
    folder, model = tiny_classifier(tmp_path / "a", {0: "child", 1: "female", 2: "male"}, [3.0, -1.0, 1.0])
    labeler = TransformersGenderLabeler(folder, batch_size=2)
    assert isinstance(labeler, PseudoGenderLabeler)
    result = labeler.label(clips)
    assert result.genders.tolist() == ["male"] * 3 and result.probabilities.shape == (3, 2)
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0)
    # independent: the model's own softmax on each clip alone, restricted to (female, male)
    from transformers import AutoFeatureExtractor

    extractor = AutoFeatureExtractor.from_pretrained(folder)
    for clip, row in zip(clips, result.probabilities):
        with torch.no_grad():
            p = torch.softmax(model(**extractor(clip, sampling_rate=16000, return_tensors="pt")).logits[0].double(), -1)
        np.testing.assert_allclose(row, (p[[1, 2]] / p[[1, 2]].sum()).numpy(), rtol=1e-5)
    # the same weights with the names swapped answer the other gender: the mapping reads names, not positions
    swapped, _ = tiny_classifier(tmp_path / "b", {0: "child", 1: "Male", 2: "FEMALE"}, [3.0, -1.0, 1.0])
    again = TransformersGenderLabeler(swapped, batch_size=1).label(clips)
    assert again.genders.tolist() == ["female"] * 3
    np.testing.assert_allclose(again.probabilities, result.probabilities[:, ::-1], rtol=1e-5)


def test_transformers_labeler_refuses_unusable_models(tmp_path) -> None:
    clip = [np.zeros(4000, np.float32)]
    folder, _ = tiny_classifier(tmp_path / "names", {0: "LABEL_0", 1: "LABEL_1"}, [0.0, 0.0])
    with pytest.raises(ConfigError, match=r"no output named 'female'.*LABEL_0"):
        TransformersGenderLabeler(folder).label(clip)
    with pytest.raises(ConfigError, match="2 outputs named 'male'"):
        gender_label_indices({0: "male", 1: "man", 2: "female"})
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    bare = tmp_path / "bare"  # an encoder without a classification head: the head would be random
    Wav2Vec2Model(Wav2Vec2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                 conv_dim=(16, 16, 16), conv_stride=(5, 4, 4), conv_kernel=(10, 8, 4),
                                 num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                                 id2label={0: "female", 1: "male"})).save_pretrained(bare)
    Wav2Vec2FeatureExtractor().save_pretrained(bare)
    with pytest.raises(ConfigError, match="missing from the checkpoint"):
        TransformersGenderLabeler(bare).label(clip)
    with pytest.raises(ConfigError, match="cannot load"):
        TransformersGenderLabeler(tmp_path / "absent").label(clip)


def test_embedding_classifier_on_test_speakers_and_json_round_trip(corpus, tmp_path) -> None:
    from sklearn.linear_model import LogisticRegression

    examples, emb, split, gender, cache = corpus
    train = [ex for ex in examples if ex.split == "train"]
    test = [ex for ex in examples if ex.split == "test"]
    classifier = EmbeddingGenderClassifier("speaker", cache_dir=cache).fit(train)
    labels = classifier.label(test)
    accuracy = labels.accuracy([ex.gender for ex in test])
    print(f"built-in pseudo-gender classifier: accuracy {accuracy:.3f} on {len(test)} test-speaker clips")
    assert accuracy >= 0.9  # 1.0 measured; test speakers and voice variants are unseen in training
    # the numpy prediction equals scikit-learn's on the standardised features
    x = emb[split == "train"].astype(np.float64)
    mean, std = x.mean(0), x.std(0)
    std[std == 0] = 1.0  # resemblyzer dimensions that are 0 on every clip
    reference = LogisticRegression(C=1.0, max_iter=5000).fit((x - mean) / std, gender[split == "train"] == "male")
    z = (emb[split == "test"] - mean) / std
    np.testing.assert_allclose(labels.probabilities[:, 1], reference.predict_proba(z)[:, 1], rtol=1e-6, atol=1e-9)

    path = classifier.save(tmp_path / "gender.json")
    stored = json.loads(path.read_text())
    assert stored["extractor"] == "speaker" and len(stored["coef"]) == emb.shape[1]
    loaded = EmbeddingGenderClassifier.load(path, cache_dir=cache)
    np.testing.assert_array_equal(loaded.label(test).probabilities, labels.probabilities)
    stored["extractor_config_hash"] = "0" * 64
    path.write_text(json.dumps(stored))
    with pytest.raises(ConfigError, match="fit the classifier again"):
        EmbeddingGenderClassifier.load(path)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DataError, match="not an llmfair pseudo-gender classifier"):
        EmbeddingGenderClassifier.load(tmp_path / "bad.json")
    with pytest.raises(DataError, match="both genders"):
        EmbeddingGenderClassifier().fit_features(x[:4], ["female"] * 4)


# ------------------------------------------------------------------------------------- t-SNE
def test_tsne_plot_writes_a_png(corpus, tmp_path) -> None:
    import matplotlib.image

    _, emb, split, gender, _ = corpus
    path = tmp_path / "plots" / "tsne.png"
    coords = tsne_plot(emb[split == "train"], gender[split == "train"], path)
    assert coords.shape == ((split == "train").sum(), 2) and np.isfinite(coords).all()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 300 and image.shape[1] > 300 and image[..., :3].std() > 0.05
    assert not list(path.parent.glob(".*.tmp"))
    # the gender structure survives the embedding: each point's nearest neighbour mostly shares its gender
    g = gender[split == "train"]
    d = ((coords[:, None] - coords[None]) ** 2).sum(-1) + np.eye(len(coords)) * 1e9
    assert (g[d.argmin(1)] == g).mean() > 0.9
    np.testing.assert_allclose(tsne_plot(emb[split == "train"], g, tmp_path / "again.png"), coords)
    with pytest.raises(DataError, match="at least 3"):
        tsne_plot(emb[:2], g[:2], tmp_path / "tiny.png")


# ------------------------------------------------------------------------------------- groups for objectives
def test_inferred_groups_feed_the_objectives() -> None:
    clusters = np.array([0, 2, 2, 1, 3, 0, 2, 1])
    classes = np.array([0, 0, 1, 1, 0, 1, 1, 0])
    spec, ids = cluster_groups(clusters, 4)
    assert spec.keys == ("cluster",) and spec.groups == (("k00",), ("k01",), ("k02",), ("k03",))
    np.testing.assert_array_equal(ids, clusters)
    loss = torch.arange(8, dtype=torch.float32)
    erm = build_objective("erm", spec)(ObjectiveInputs(per_sample_loss=loss, group_ids=torch.as_tensor(ids)))
    assert float(erm.loss) == pytest.approx(3.5)
    # RW: every cluster is a unit, weights n_c / n_{c,g} from the training counts (IDI Eq. 1)
    rw = build_objective("rw", spec)
    rw.setup(TrainingStats.from_arrays(ids, classes, spec.num_groups, 2))
    counts = np.zeros((2, 4))
    np.add.at(counts, (classes, clusters), 1)
    expected = np.divide(counts.sum(1, keepdims=True), counts, out=np.zeros_like(counts), where=counts > 0)
    np.testing.assert_allclose(rw.cell_weights.numpy(), expected)

    pseudo = PseudoGenderLabels.from_probabilities(np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), source="test")
    spec, ids = pseudo_gender_groups(pseudo)
    assert spec.keys == ("gender",) and spec.groups == (("female",), ("male",)) and ids.tolist() == [0, 1, 0]
    rw = build_objective("rw", spec)
    assert rw.units.names == ("female", "male")
    spec, ids = pseudo_gender_groups(pseudo, extra={"language": ["deu", "eng", "eng"]})
    assert spec.keys == ("language", "gender") and [spec.groups[i] for i in ids] == [
        ("deu", "female"), ("eng", "male"), ("eng", "female")]
    assert build_objective("minmaxgap", spec, {"cell_keys": "language"}).cell_names == [("deu",), ("eng",)]
    with pytest.raises(DataError, match=r"value\(s\) \['unknown'\]"):
        pseudo_gender_groups(["female", "unknown"])
    with pytest.raises(DataError, match="lie in"):
        cluster_groups(np.array([0, 4]), 4)
