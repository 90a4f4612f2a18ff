"""Controlled gender–emotion imbalance (METHODS.md §1.6): IDI Table A2 on the real CREMA-D fold 1,
exact ratios on synthetic counts, seeding, and which rows each split keeps."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmfair.data.crema_d import read_crema_d
from llmfair.data.example import Example
from llmfair.data.imbalance import IMBALANCE_RATIOS, build_imbalanced_splits, minority_keep_count
from llmfair.data.labels import CREMA_D
from llmfair.errors import DataError

# IDI paper Table A2, fold-1 train at 1:20 (METHODS.md §1.6): emotion → (F, M)
TABLE_A2_TRAIN = {
    "angry": (12, 240), "disgust": (4, 86), "fear": (127, 6),
    "happy": (102, 5), "neutral": (54, 1080), "sad": (58, 2),
}
MAJORITY = {"angry": "male", "disgust": "male", "neutral": "male", "fear": "female", "happy": "female", "sad": "female"}


@pytest.fixture(scope="module")
def fold1(crema_d_labels: Path) -> list[Example]:
    return read_crema_d(crema_d_labels, 1)


def _cell_counts(examples, split):
    return Counter((CREMA_D.classes[e.emotion], e.gender) for e in examples if e.split == split and e.emotion >= 0)


@pytest.mark.parametrize("seed", [0, 7, 2024])
def test_table_a2_fold1_train_at_1_to_20(fold1, crema_d_labels, seed):
    result = build_imbalanced_splits(fold1, CREMA_D, 20, seed)
    got = _cell_counts(result.examples, "train")
    paper = Counter({(e, "female"): f for e, (f, _) in TABLE_A2_TRAIN.items()})
    paper.update({(e, "male"): m for e, (_, m) in TABLE_A2_TRAIN.items()})
    # exactly the two utterances the authors dropped (METHODS §1.6): one male-disgust, one male-neutral
    diff = {k: got[k] - paper[k] for k in set(got) | set(paper) if got[k] != paper[k]}
    assert diff == {("disgust", "male"): 1, ("neutral", "male"): 1}
    for emotion, major in MAJORITY.items():
        minor = "female" if major == "male" else "male"
        assert got[(emotion, minor)] == paper[(emotion, minor)], emotion
    assert sum(paper.values()) == 1776
    assert sum(v for (_, g), v in paper.items() if g == "female") == 357
    assert sum(got.values()) == 1778 and sum(v for (_, g), v in got.items() if g == "male") == 1421
    expected_table = {e: {"female": got[(e, "female")], "male": got[(e, "male")]} for e in CREMA_D.classes}
    assert result.counts["train"] == expected_table
    assert all(e.emotion >= 0 for e in result.examples if e.split in ("train", "dev"))

    # independent recount from the raw file: majority-gender rows all kept, minority drawn from the right pool
    raw = pd.read_csv(crema_d_labels / "labels_consensus_1.csv")
    shares = (raw[list(CREMA_D.classes)].to_numpy() - 0.01) / 0.94
    single = (shares > 0.5 + 1e-6).any(axis=1)
    label = np.array(CREMA_D.classes)[shares.argmax(axis=1)]
    train = raw[(raw.Split_Set == "Train") & single].assign(label=label[(raw.Split_Set == "Train") & single])
    kept = {e.id for e in result.examples if e.split == "train"}
    for emotion, major in MAJORITY.items():
        rows = train[train.label == emotion]
        major_ids = set(rows.FileName[rows.Gender.str.lower() == major].str[:-4])
        minor_ids = set(rows.FileName[rows.Gender.str.lower() != major].str[:-4])
        assert major_ids <= kept, emotion
        assert len(kept & minor_ids) == min(len(minor_ids), len(major_ids) // 20), emotion

    # test untouched: the same 1,463 Examples in the same order, no-majority rows included
    test_in = [e for e in fold1 if e.split == "test"]
    test_out = [e for e in result.examples if e.split == "test"]
    assert len(test_out) == 1463 and all(a is b for a, b in zip(test_in, test_out))
    assert result.no_majority["test"] == 1463 - 899 == sum(e.emotion < 0 for e in test_out)


# synthetic per-(emotion, gender) counts: emotion → (female, male); majority genders as in IDI
SYNTHETIC = {
    "angry": (37, 100), "disgust": (3, 41), "neutral": (240, 240),
    "fear": (83, 50), "happy": (7, 0), "sad": (1, 19),
}


def _examples(counts, split="train", start=0, extra=()):
    out = []
    for emotion, (f, m) in counts.items():
        for gender, n in (("female", f), ("male", m)):
            for _ in range(n):
                out.append(Example(
                    id=f"{split}-{start + len(out)}", audio="a.wav", text="", language="eng", modality="audio",
                    emotion=CREMA_D.index(emotion), gender=gender, speaker=gender, split=split))
    for emotion_idx, gender in extra:
        out.append(Example(
            id=f"{split}-{start + len(out)}", audio="a.wav", text="", language="eng", modality="audio",
            emotion=emotion_idx, gender=gender, speaker=gender, split=split))
    return out


@pytest.mark.parametrize("ratio", [1, 2, 2.5, 5, 10, 20, 40])
def test_ratios_exact_on_synthetic_counts(ratio):
    result = build_imbalanced_splits(_examples(SYNTHETIC), CREMA_D, ratio, seed=3)
    got = _cell_counts(result.examples, "train")
    for emotion, (f, m) in SYNTHETIC.items():
        major = MAJORITY[emotion]
        n_maj, n_min = (m, f) if major == "male" else (f, m)
        minor = "female" if major == "male" else "male"
        assert got[(emotion, major)] == n_maj, emotion  # majority all kept
        expected = min(n_min, int(n_maj * 2 // int(ratio * 2)))  # ⌊n_maj / r⌋ in integer arithmetic
        assert got[(emotion, minor)] == expected, (emotion, ratio)
        assert minority_keep_count(n_maj, n_min, ratio) == expected
    assert len({e.id for e in result.examples}) == len(result.examples)


def test_ratio_table_hand_worked():
    # angry: 100 male kept, ⌊100/r⌋ of 37 female; sad: 1 female kept, ⌊1/r⌋ of 19 male
    def cells(r):
        return _cell_counts(build_imbalanced_splits(_examples(SYNTHETIC), CREMA_D, r, 0).examples, "train")

    assert {r: cells(r)[("angry", "female")] for r in IMBALANCE_RATIOS} == {1: 37, 2: 37, 5: 20, 10: 10, 20: 5, 40: 2}
    assert cells(1)[("sad", "male")] == 1


def test_deterministic_by_seed():
    data = _examples(SYNTHETIC)
    ids = lambda seed: [e.id for e in build_imbalanced_splits(data, CREMA_D, 2, seed).examples]  # noqa: E731
    assert ids(11) == ids(11)
    assert ids(11) != ids(12)
    assert len(ids(11)) == len(ids(12))  # a different draw, the same counts


def test_split_draw_independent_of_other_splits():
    train = _examples(SYNTHETIC, "train")
    dev = _examples(SYNTHETIC, "dev")
    test = _examples(SYNTHETIC, "test")
    alone = [e.id for e in build_imbalanced_splits(train, CREMA_D, 5, 1).examples]
    for others in (dev + train, train + test, test + dev + train):
        with_others = [e.id for e in build_imbalanced_splits(others, CREMA_D, 5, 1).examples if e.split == "train"]
        assert with_others == alone


def test_unknown_gender_and_no_majority_rows():
    angry, fear = CREMA_D.index("angry"), CREMA_D.index("fear")
    extra = [(angry, "unknown")] * 4 + [(fear, "unknown")] * 2 + [(-1, "male")] * 5 + [(-1, "female")] * 3
    train = _examples(SYNTHETIC, "train", extra=extra)
    test = _examples(SYNTHETIC, "test", start=10_000, extra=extra)
    result = build_imbalanced_splits(train + test, CREMA_D, 10, 0)
    out_train = [e for e in result.examples if e.split == "train"]
    out_test = [e for e in result.examples if e.split == "test"]
    assert all(e.gender != "unknown" and e.emotion >= 0 for e in out_train)
    assert result.dropped_unknown == {"train": 6}
    assert result.dropped_no_majority == {"train": 8}
    assert out_test == test  # untouched, unknown and no-majority rows included
    assert result.no_majority == {"test": 8}
    # counts tables report female/male single-label rows only
    assert sum(v for c in result.counts["test"].values() for v in c.values()) == len(test) - 6 - 8


@pytest.mark.parametrize("ratio", [0.5, 0, -1, float("nan")])
def test_ratio_below_one_refused(ratio):
    with pytest.raises(DataError, match="ratio"):
        build_imbalanced_splits(_examples(SYNTHETIC), CREMA_D, ratio, 0)
    # refused even when no split needs subsampling
    with pytest.raises(DataError, match="ratio"):
        build_imbalanced_splits(_examples(SYNTHETIC, "test"), CREMA_D, ratio, 0)


# ------------------------------------------------------------------ GenderImbalance (speech-LLM sweeps)
def _meld_rows():
    """eng and jpn renderings of the same 60 utterances, both modalities: per emotion (0, 1) 20
    male and 10 female utterances."""
    from llmfair.data.imbalance import GenderImbalance  # noqa: F401  (import checked here too)

    rows = []
    for u in range(60):
        gender = "male" if u % 3 else "female"
        emotion = u % 2
        for language in ("eng", "jpn"):
            for modality in ("audio", "audio_text"):
                rows.append(Example(id=f"{language}_{u}", audio="", text="", language=language, modality=modality,
                                    emotion=emotion, gender=gender, speaker=f"s{u % 7}", split="train",
                                    utterance_id=f"u{u}"))
    return rows


@pytest.mark.parametrize("ratio, expected_female", [(1, 10), (5, 4), (10, 2), (40, 0)])
def test_gender_imbalance_keeps_floor_majority_over_ratio_per_emotion(ratio, expected_female):
    from llmfair.data.imbalance import GenderImbalance

    rows = _meld_rows()
    kept = GenderImbalance(language="eng", ratio=ratio, seed=3).apply(rows)
    for emotion in (0, 1):
        eng = {(e.utterance_id, e.gender) for e in kept if e.language == "eng" and e.emotion == emotion}
        assert sum(g == "male" for _, g in eng) == 20  # the majority is kept whole
        assert sum(g == "female" for _, g in eng) == expected_female  # ⌊20 / r⌋ capped at the 10 there are
    # both modalities of a kept utterance stay; the other language is untouched
    eng_rows = Counter(e.utterance_id for e in kept if e.language == "eng")
    assert set(eng_rows.values()) == {2}
    assert [e for e in kept if e.language == "jpn"] == [e for e in rows if e.language == "jpn"]
    # seeded: the same draw twice, another seed another draw
    again = GenderImbalance(language="eng", ratio=ratio, seed=3).apply(rows)
    assert [e.id for e in again] == [e.id for e in kept]
    if 0 < expected_female < 10:
        other = GenderImbalance(language="eng", ratio=ratio, seed=4).apply(rows)
        assert {e.id for e in other} != {e.id for e in kept}


@pytest.mark.parametrize("values, key", [({"ratio": 0.5}, "ratio"), ({"language": "fra"}, "language"),
                                         ({"majority": "both"}, "majority"), ({"ratio": True}, "ratio")])
def test_gender_imbalance_rejects_bad_values_naming_the_key(values, key):
    from llmfair.data.imbalance import GenderImbalance
    from llmfair.errors import ConfigError

    with pytest.raises(ConfigError, match=f"train_imbalance.{key}"):
        GenderImbalance(**values)
