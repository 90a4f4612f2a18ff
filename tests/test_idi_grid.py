"""The IDI grid from the command line: the built-in corpus in CREMA-D's EMO-SUPERB layout (folds and
soft labels checked by hand), a sweep that extracts the features and infers its groups itself
(the same groups file `llmfair groups infer` writes, resumable, refusing finished runs of other
groups), and the bad-input table — a groups file missing ids or a K, features of another corpus or
extractor, a killed extraction — each a one-line error or a clean resume."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from llmfair.cli import main
from llmfair.data.crema_d import read_crema_d
from llmfair.data.imbalance import build_imbalanced_splits
from llmfair.data.labels import CREMA_D, MELD
from llmfair.errors import ConfigError
from llmfair.ssl import AcousticExtractor, build_feature_extractor
from llmfair.ssl.extract import extract_corpus_features, load_feature_set
from llmfair.sweep import SweepConfig

pytestmark = pytest.mark.usefixtures("one_thread")
PRIORS = "neutral=1,joy=1,sadness=1,anger=1,fear=1,disgust=1"
TO_CREMA = {"anger": "angry", "sadness": "sad", "disgust": "disgust", "fear": "fear", "neutral": "neutral",
            "joy": "happy"}


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    root = tmp_path_factory.mktemp("idi")
    assert main(["data", "synth", "--out", str(root / "corpus"), "--seed", "0", "--utterances-per-pair", "60",
                 "--emotion-priors", PRIORS, "--crema-d-layout", str(root / "crema_d")]) == 0
    return root


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_layout_follows_emo_superb_folds_and_soft_labels(layout):
    from llmfair.data.meld_st import read_meld_st

    crema = layout / "crema_d"
    folds = {k: read_crema_d(crema, k, audio_dir=crema / "audio") for k in range(1, 6)}
    assert len({tuple(e.id for e in ex) for ex in folds.values()}) == 1  # every fold file holds every clip
    speakers = {k: {s: {e.speaker for e in ex if e.split == s} for s in ("train", "dev", "test")}
                for k, ex in folds.items()}
    for k, split in speakers.items():
        assert not (split["train"] & split["dev"]) and not (split["train"] & split["test"]) and not (
            split["dev"] & split["test"])
        assert split["test"] == speakers[5 if k == 1 else k - 1]["dev"]  # fold k's test is fold k-1's dev
    tested = [s for k in speakers for s in speakers[k]["test"]]
    assert len(tested) == len(set(tested)) == len({e.speaker for e in folds[1]})  # every speaker tested once
    for examples in folds.values():  # each test fold holds both genders
        assert {e.gender for e in examples if e.split == "test"} == {"female", "male"}

    # soft labels by hand from the simulated raters: MELD → CREMA-D, surprise votes dropped
    source = {_sha(e.audio): e for e in read_meld_st(layout / "corpus", modalities=("audio",))}
    assert len(source) == len(folds[1])  # no surprise in the priors, every clip kept once
    for e in folds[1]:
        original = source[_sha(e.audio)]
        votes = np.zeros(6)
        for a in original.annotations:
            name = TO_CREMA.get(MELD.classes[a.emotion])
            if name is not None:
                votes[CREMA_D.classes.index(name)] += 1
        np.testing.assert_allclose(e.emotion_dist, 0.01 + 0.94 * votes / votes.sum(), atol=1e-6)
        assert e.gender == original.gender
        codes = {"angry": "ANG", "sad": "SAD", "disgust": "DIS", "fear": "FEA", "neutral": "NEU", "happy": "HAP"}
        assert e.meta["file_name"].split("_")[2] == codes[TO_CREMA[MELD.classes[original.emotion]]]
    # ratings.csv (the sweep's ratings_file): one row per kept vote, ids = FileName stems, surprise
    # votes dropped; its votes give the soft labels of the fold files
    ratings = pd.read_csv(crema / "ratings.csv", dtype=str)
    assert list(ratings.columns) == ["id", "rater", "rater_gender", "emotion"]
    assert "surprise" not in set(ratings["emotion"]) and set(ratings["id"]) == {e.id for e in folds[1]}
    counts = pd.crosstab(ratings["id"], ratings["emotion"]).reindex(columns=list(CREMA_D.classes), fill_value=0)
    counts = counts.loc[[e.id for e in folds[1]]].to_numpy(dtype=float)
    np.testing.assert_allclose(np.array([e.emotion_dist for e in folds[1]]),
                               0.01 + 0.94 * counts / counts.sum(1, keepdims=True), atol=1e-6)
    # a second call is a no-op; another seed needs --overwrite
    from llmfair.data.synth.crema_d_layout import write_crema_d_layout

    before = (crema / "labels_consensus_1.csv").stat().st_mtime_ns
    write_crema_d_layout(layout / "corpus", crema, seed=0)
    assert (crema / "labels_consensus_1.csv").stat().st_mtime_ns == before
    with pytest.raises(Exception, match="--overwrite"):
        write_crema_d_layout(layout / "corpus", crema, seed=1)


def _yaml(tmp: Path, layout: Path, name: str, **values) -> Path:
    base = {"labels_dir": str(layout / "crema_d"),
            "features": {"extractor": "acoustic", "audio_dir": str(layout / "crema_d" / "audio"),
                         "cache_dir": str(layout / "cache")},
            "methods": [{"name": "erm", "objective": "erm"}],
            "ratios": [2], "folds": [1], "seeds": [0], "epochs": 1, "lr": 1e-3}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**base, **values}))
    return path


METHODS = [{"name": "erm", "objective": "erm"}, {"name": "rw_pseudo", "objective": "rw", "groups": "pseudo"},
           {"name": "rw_kmeans", "objective": "rw", "groups": "clusters", "K": [2, 3]}]


@pytest.fixture(scope="module")
def swept(layout, tmp_path_factory):
    """One command: the sweep extracts the head's and the groups' features and infers the groups."""
    tmp = tmp_path_factory.mktemp("swept")
    path = _yaml(tmp, layout, "idi", methods=METHODS,
                 infer_groups={"features": str(layout / "groups_features"), "extractor": "acoustic", "K": [2, 3]})
    assert main(["sweep", str(path), "--out", str(tmp / "out"), "--no-progress"]) == 0
    return path, tmp / "out"


def test_the_sweep_infers_the_groups_llmfair_groups_infer_writes(layout, swept, tmp_path, capsys):
    path, out = swept
    config = SweepConfig.from_yaml(path)
    groups_file = Path(config.groups_file)
    assert groups_file.parent.parent == layout / "groups_features" and groups_file.is_file()
    for suffix in (".purity.csv", ".purity.md", ".tsne.png", ".json"):
        assert groups_file.with_name("groups" + suffix).is_file()
    # the same file as the command, from the features directory the sweep extracted
    assert main(["groups", "infer", "--features", str(layout / "groups_features"), "--k", "2,3", "--no-tsne",
                 "--out", str(tmp_path / "cli.csv"), "--no-progress"]) == 0
    assert (tmp_path / "cli.csv").read_text() == groups_file.read_text()
    features = load_feature_set(layout / "groups_features")
    examples = read_crema_d(layout / "crema_d", 1, audio_dir=layout / "crema_d" / "audio")
    assert list(features.ids) == [e.id for e in examples]

    # the runs trained on those groups
    table = pd.read_csv(groups_file).set_index("id")
    train = [e.id for e in build_imbalanced_splits(examples, CREMA_D, 2, 0).examples if e.split == "train"]
    record = json.loads((out / "runs" / "metrics_rw_kmeans-r2-f1-s0-k3.json").read_text())
    assert record["group_counts"] == np.bincount(table.loc[train, "cluster_3"], minlength=3).tolist()
    record = json.loads((out / "runs" / "metrics_rw_pseudo-r2-f1-s0.json").read_text())
    pseudo = table.loc[train, "pseudo_gender"]
    assert record["group_counts"] == [int((pseudo == "female").sum()), int((pseudo == "male").sum())]

    # resumed: nothing trained, nothing inferred again
    stamp = groups_file.with_name("groups.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["sweep", str(path), "--out", str(out), "--no-progress"]) == 0
    assert "0 trained, 4 already finished" in capsys.readouterr().out
    assert groups_file.with_name("groups.json").stat().st_mtime_ns == stamp

    # other groups (another K list) go to another file, and finished runs of the old ones are refused
    other = _yaml(tmp_path, layout, "other", methods=[*METHODS[:2], {**METHODS[2], "K": [2, 4]}],
                  infer_groups={"features": str(layout / "groups_features"), "extractor": "acoustic", "K": [2, 4]})
    assert SweepConfig.from_yaml(other).groups_file != config.groups_file
    err = _error(capsys, ["sweep", str(other), "--out", str(out), "--no-progress"])
    assert "other settings" in err


def _error(capsys, argv: list[str]) -> str:
    """The CLI fails with exactly one error line (progress bars aside) and no traceback."""
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("llmfair: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_bad_input_table(layout, swept, tmp_path, capsys):
    features_path = str(layout / "groups_features" / "features.safetensors")  # `features extract` output as head input
    ids = load_feature_set(layout / "groups_features").ids
    head = {"features": {"path": features_path}}

    # a groups file missing ids of the corpus
    pd.DataFrame({"id": ids[::2], "cluster_2": 0}).to_csv(tmp_path / "half.csv", index=False)
    path = _yaml(tmp_path, layout, "half", **head, groups_file=str(tmp_path / "half.csv"),
                 methods=[{"name": "erm", "objective": "erm"}, {"name": "rw_k", "objective": "rw", "groups": "clusters",
                                                                "K": [2]}])
    err = _error(capsys, ["sweep", str(path), "--out", str(tmp_path / "o1"), "--no-progress"])
    assert "half.csv" in err and "no groups for" in err and "fold 1" in err
    assert not list((tmp_path / "o1" / "runs").glob("metrics_*"))  # refused before any run trained

    # a K not in the file
    pd.DataFrame({"id": ids, "cluster_2": 0}).to_csv(tmp_path / "k2.csv", index=False)
    path = _yaml(tmp_path, layout, "k3", **head, groups_file=str(tmp_path / "k2.csv"),
                 methods=[{"name": "erm", "objective": "erm"}, {"name": "rw_k", "objective": "rw", "groups": "clusters",
                                                                "K": [3]}])
    err = _error(capsys, ["sweep", str(path), "--out", str(tmp_path / "o2"), "--no-progress"])
    assert "k2.csv" in err and "cluster_3" in err and "K = [2]" in err

    # features of another extractor than the sweep names
    path = _yaml(tmp_path, layout, "spk", **head, methods=METHODS[:2],
                 infer_groups={"features": str(layout / "groups_features"), "extractor": "speaker"})
    err = _error(capsys, ["sweep", str(path), "--out", str(tmp_path / "o3"), "--no-progress"])
    assert "holds acoustic features" in err and "speaker" in err

    # features of another corpus (the built-in corpus in its MELD-ST layout: other ids)
    assert main(["features", "extract", str(layout / "corpus"), "--extractor", "acoustic", "--out",
                 str(tmp_path / "meld"), "--no-progress"]) == 0
    path = _yaml(tmp_path, layout, "meld", **head, methods=METHODS[:2],
                 infer_groups={"features": str(tmp_path / "meld"), "extractor": "acoustic"})
    err = _error(capsys, ["sweep", str(path), "--out", str(tmp_path / "o4"), "--no-progress"])
    assert "features of another corpus" in err and str(tmp_path / "meld") in err

    # an infer_groups that does not give a method its K, or beside a groups_file
    for values, match in (({"infer_groups": {"features": "f", "K": [2]}, "methods": [METHODS[2]]}, "K = \\[3\\]"),
                          ({"infer_groups": {"features": "f"}, "groups_file": "g.csv", "methods": [METHODS[1]]},
                           "not both"),
                          ({"infer_groups": {"features": "f"}, "methods": [METHODS[0]]}, "no method trains"),
                          ({"infer_groups": {"K": [2]}, "methods": [METHODS[2]]}, "'features'")):
        with pytest.raises(ConfigError, match=match) as info:
            SweepConfig.from_yaml(_yaml(tmp_path, layout, "bad", **head, reference=values["methods"][0]["name"],
                                        **values))
        assert "bad.yaml" in str(info.value) and "\n" not in str(info.value)


def test_a_killed_extraction_resumes_inside_the_sweep(layout, swept, tmp_path, capsys, monkeypatch):
    examples = read_crema_d(layout / "crema_d", 1, audio_dir=layout / "crema_d" / "audio")
    folder = tmp_path / "half_extracted"
    calls = {"n": 0}
    original = AcousticExtractor.extract

    def dies(self, clips):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the job stops between chunks, as a kill would leave it
        return original(self, clips)

    monkeypatch.setattr(AcousticExtractor, "extract", dies)
    with pytest.raises(KeyboardInterrupt):
        extract_corpus_features(examples, build_feature_extractor("acoustic"), folder, chunk_size=16, progress=False)
    monkeypatch.setattr(AcousticExtractor, "extract", original)
    head = {"features": {"path": str(layout / "groups_features" / "features.safetensors")}}

    # without an extractor to finish it with: one line saying so
    path = _yaml(tmp_path, layout, "unfinished", **head, methods=METHODS[:2], infer_groups={"features": str(folder)})
    err = _error(capsys, ["sweep", str(path), "--out", str(tmp_path / "o1"), "--no-progress"])
    assert "unfinished extraction (2 of" in err

    # naming the extractor, the sweep finishes the extraction and gets what an uninterrupted one gives
    path = _yaml(tmp_path, layout, "resume", **head, methods=METHODS[:2],
                 infer_groups={"features": str(folder), "extractor": "acoustic", "chunk_size": 16,
                               "audio_dir": str(layout / "crema_d" / "audio")})
    assert main(["sweep", str(path), "--out", str(tmp_path / "o2"), "--no-progress"]) == 0
    resumed, reference = load_feature_set(folder), load_feature_set(layout / "groups_features")
    assert json.loads((folder / "features.json").read_text())["chunks_resumed"] == 2
    assert resumed.ids == reference.ids
    np.testing.assert_array_equal(resumed.values, reference.values)
