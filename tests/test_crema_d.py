"""CREMA-D reader: the real EMO-SUPERB label files (METHODS.md §1.2, §1.5, §4.1, §5.6) and the
errors of a small fixture directory written in the same layout."""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmfair.data.audio import load_audio
from llmfair.data.crema_d import (
    SENTENCES,
    available_folds,
    binarized_labels,
    read_crema_d,
    strict_majority,
    vote_shares,
)
from llmfair.data.example import Example
from llmfair.data.labels import CREMA_D
from llmfair.errors import DataError

FOLDS = (1, 2, 3, 4, 5)
COLUMNS = ["FileName", "angry", "sad", "disgust", "fear", "neutral", "happy", "SpkrID", "Gender", "Split_Set"]


@pytest.fixture(scope="module")
def folds(crema_d_labels: Path) -> dict[int, list[Example]]:
    return {k: read_crema_d(crema_d_labels, k) for k in FOLDS}


def _ids(examples, split):
    return {e.id for e in examples if e.split == split}


# ---------------------------------------------------------------- the real label files


def test_every_fold_has_every_utterance(folds, crema_d_labels):
    assert available_folds(crema_d_labels) == list(FOLDS)
    all_ids = {e.id for e in folds[1]}
    assert len(all_ids) == 7442
    for k in FOLDS:
        assert len(folds[k]) == 7442
        assert {e.id for e in folds[k]} == all_ids
    speakers = {(e.speaker, e.gender) for e in folds[1]}
    assert len(speakers) == 91 and len({s for s, _ in speakers}) == 91  # one gender per actor
    assert Counter(g for _, g in speakers) == {"female": 43, "male": 48}  # METHODS §4.1


@pytest.mark.parametrize("fold", FOLDS)
def test_folds_are_speaker_disjoint(folds, fold):
    speakers = {s: {e.speaker for e in folds[fold] if e.split == s} for s in ("train", "dev", "test")}
    assert not speakers["train"] & speakers["dev"]
    assert not speakers["train"] & speakers["test"]
    assert not speakers["dev"] & speakers["test"]
    # METHODS §1.5: 54–55 train, 18–19 dev and test speakers
    assert 54 <= len(speakers["train"]) <= 55
    assert 18 <= len(speakers["dev"]) <= 19 and 18 <= len(speakers["test"]) <= 19


def test_test_and_dev_rotate_over_folds(folds):
    test_in = Counter(i for k in FOLDS for i in _ids(folds[k], "test"))
    dev_in = Counter(i for k in FOLDS for i in _ids(folds[k], "dev"))
    assert len(test_in) == 7442 and set(test_in.values()) == {1}
    assert len(dev_in) == 7442 and set(dev_in.values()) == {1}
    for k in FOLDS:
        previous = 5 if k == 1 else k - 1
        assert _ids(folds[k], "test") == _ids(folds[previous], "dev"), (k, previous)
        assert not _ids(folds[k], "test") & _ids(folds[k], "dev")


# METHODS §1.5 "Test size per fold, male/female" (= IDI Table A3's gender totals)
TEST_SIZES = {1: (1463, 574, 889), 2: (1470, 896, 574), 3: (1476, 820, 656), 4: (1476, 902, 574), 5: (1557, 738, 819)}


@pytest.mark.parametrize("fold", FOLDS)
def test_test_size_and_gender_per_fold(folds, crema_d_labels, fold):
    size, male, female = TEST_SIZES[fold]
    test = [e for e in folds[fold] if e.split == "test"]
    assert len(test) == size
    assert Counter(e.gender for e in test) == {"male": male, "female": female}
    # the raw file agrees on which number is which (Gender is spelled Male/Female there)
    raw = pd.read_csv(crema_d_labels / f"labels_consensus_{fold}.csv")
    raw_counts = raw.loc[raw.Split_Set == "Test", "Gender"].value_counts()
    assert (raw_counts["Male"], raw_counts["Female"]) == (male, female)


# METHODS §5.6: strict-majority (p > 0.5) counts in fold-1 test, F/M per emotion
FOLD1_TEST_MAJORITY = {
    "angry": (102, 58), "disgust": (41, 18), "fear": (55, 20),
    "happy": (35, 15), "neutral": (263, 250), "sad": (35, 7),
}


def test_fold1_test_strict_majority_counts(folds):
    test = [e for e in folds[1] if e.split == "test"]
    got = Counter((CREMA_D.classes[e.emotion], e.gender) for e in test if e.emotion >= 0)
    for emotion, (f, m) in FOLD1_TEST_MAJORITY.items():
        assert (got[(emotion, "female")], got[(emotion, "male")]) == (f, m), emotion
    assert sum(got.values()) == 899
    assert sum(e.emotion < 0 for e in test) == 1463 - 899


def test_soft_labels_fit_the_vote_formula(crema_d_labels):
    """Every row is y = 0.01 + 0.94·n/N for integer votes n summing to N raters, 6 ≤ N ≤ 12."""
    for fold in FOLDS:
        raw = pd.read_csv(crema_d_labels / f"labels_consensus_{fold}.csv")
        y = raw[list(CREMA_D.classes)].to_numpy(dtype=np.float64)
        shares = vote_shares(y)
        fits = np.zeros(len(y), dtype=bool)
        for n_raters in range(6, 13):
            votes = np.round(shares * n_raters)
            rebuilt = 0.01 + 0.94 * votes / n_raters
            fits |= (votes.sum(axis=1) == n_raters) & (np.abs(rebuilt - y).max(axis=1) <= 1e-6)
        assert fits.all(), raw.FileName[~fits].head().tolist()


def test_vote_shares_inverts_the_formula():
    votes = np.array([[4, 0, 2, 0, 1, 0], [5, 5, 0, 0, 0, 0], [0, 0, 0, 0, 0, 12]], dtype=float)
    n = votes.sum(axis=1, keepdims=True)
    soft = 0.01 + 0.94 * votes / n
    np.testing.assert_allclose(vote_shares(soft), votes / n, atol=1e-12)
    # 4/7 is a strict majority; 5/10 is a tie (0.48 in the files), not a majority
    np.testing.assert_array_equal(strict_majority(soft), [0, -1, 5])
    np.testing.assert_array_equal(strict_majority([[0.01, 0.01, 0.01, 0.01, 0.48, 0.48]]), [-1])


def test_tie_rows_in_the_real_file_have_no_majority(folds):
    ties = [e for e in folds[1] if max(e.emotion_dist) == 0.48]
    assert len(ties) > 100
    assert all(e.emotion == -1 for e in ties)


def test_binarisation_strictly_above_one_sixth(folds):
    k = 1.0 / 6.0

    def ex(dist):
        return Example(id="x", audio="x.wav", text="", language="eng", modality="audio", emotion=-1,
                       gender="male", speaker="1", split="test", emotion_dist=dist)

    rows = [
        (0.574, 0.01, 0.292, 0.01, 0.104, 0.01),  # 1001_DFA_ANG_XX: angry and disgust on
        (0.198, 0.104, 0.104, 0.292, 0.292, 0.01),  # 0.198 > 1/6, 0.104 < 1/6
        (k, k, k, k, k, k),  # exactly 1/K: every class off
        (0.5, k, 1.0 / 3.0, 0.0, 0.0, 0.0),
    ]
    hand = np.array([
        [1, 0, 1, 0, 0, 0],
        [1, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 0],
        [1, 0, 1, 0, 0, 0],
    ], dtype=bool)
    np.testing.assert_array_equal(binarized_labels([ex(r) for r in rows]), hand)
    # METHODS §4.1: in fold 1, 1,111 test clips have more than one class above 1/6
    test = [e for e in folds[1] if e.split == "test"]
    labels = binarized_labels(test)
    assert labels.shape == (1463, 6)
    assert int((labels.sum(axis=1) > 1).sum()) == 1111
    # a strict-majority class is always on
    maj = np.array([e.emotion for e in test])
    assert labels[maj >= 0, maj[maj >= 0]].all()
    with pytest.raises(DataError, match="'x'"):
        binarized_labels([ex(None)])
    assert binarized_labels([]).shape == (0, 6)


# ---------------------------------------------------------------- a small fixture directory


FIXTURE_ROWS = [
    ["1001_DFA_ANG_XX.wav", "0.574", "0.01", "0.292", "0.01", "0.104", "0.01", "1001", "Male", "Test"],
    ["1089_TIE_HAP_XX.wav", "0.104", "0.104", "0.198", "0.01", "0.104", "0.48", "1089", "Female", "Train"],
    ["1058_ITS_FEA_XX.wav", "0.01", "0.01", "0.01", "0.762", "0.198", "0.01", "1058", "Female", "Development"],
]


def _write(directory: Path, rows, *, fold: int = 1, columns=COLUMNS, config: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=columns).to_csv(directory / f"labels_consensus_{fold}.csv", index=False)
    if config:
        (directory / "config.json").write_text(json.dumps({
            "data_split_type": {"train": "Train", "dev": "Development", "test": "Test"},
            "categorical": {"emo_type": list(CREMA_D.classes)},
        }))
    return directory


@pytest.fixture()
def fixture_dirs(tmp_path, real_clip):
    labels = _write(tmp_path / "labels", FIXTURE_ROWS)
    audio = tmp_path / "audio"
    audio.mkdir()
    for row in FIXTURE_ROWS:
        shutil.copy(real_clip, audio / row[0])
    return labels, audio


def test_reader_fields_on_fixture(fixture_dirs):
    labels, audio = fixture_dirs
    examples = read_crema_d(labels, 1, audio_dir=audio)
    assert [e.id for e in examples] == ["1001_DFA_ANG_XX", "1089_TIE_HAP_XX", "1058_ITS_FEA_XX"]
    ang, tie, fea = examples
    assert ang.audio == str(audio / "1001_DFA_ANG_XX.wav")
    assert ang.text == "Don't forget a jacket" and tie.text == SENTENCES["TIE"] == "That is exactly what happened"
    assert fea.text == "I think I've seen this before"
    assert (ang.language, ang.modality) == ("eng", "audio")
    assert ang.emotion_dist == (0.574, 0.01, 0.292, 0.01, 0.104, 0.01)
    assert ang.emotion == CREMA_D.index("angry")
    assert tie.emotion == -1  # 0.48 is 5 of 10 votes: no strict majority
    assert fea.emotion == CREMA_D.index("fear")
    assert [e.gender for e in examples] == ["male", "female", "female"]
    assert [e.speaker for e in examples] == ["1001", "1089", "1058"]
    assert [e.split for e in examples] == ["test", "train", "dev"]
    assert ang.meta == {"fold": 1, "file_name": "1001_DFA_ANG_XX.wav"}
    assert ang.utterance_id == ang.id

    clip = load_audio(ang.audio)
    assert clip.dtype == np.float32 and clip.ndim == 1
    assert abs(len(clip) / 16_000 - 2.28) < 0.01

    only_test = read_crema_d(labels, 1, audio_dir=audio, splits=("test",))
    assert [e.id for e in only_test] == ["1001_DFA_ANG_XX"]
    labels_only = read_crema_d(labels, 1)
    assert [e.audio for e in labels_only] == [r[0] for r in FIXTURE_ROWS]


def test_reader_without_config(tmp_path):
    labels = _write(tmp_path, FIXTURE_ROWS, config=False)
    assert len(read_crema_d(labels, 1)) == 3


def test_missing_audio_listed(fixture_dirs):
    labels, audio = fixture_dirs
    (audio / "1089_TIE_HAP_XX.wav").unlink()
    (audio / "1058_ITS_FEA_XX.wav").unlink()
    with pytest.raises(DataError, match=r"2 of 3 .*1089_TIE_HAP_XX\.wav"):
        read_crema_d(labels, 1, audio_dir=audio)
    assert len(read_crema_d(labels, 1, audio_dir=audio, check_audio=False)) == 3
    assert len(read_crema_d(labels, 1, audio_dir=audio, splits=("test",))) == 1


def _row(i, **changes):
    row = dict(zip(COLUMNS, FIXTURE_ROWS[i]))
    row.update(changes)
    return [row[c] for c in COLUMNS]


BAD_ROWS = {
    "split": ([_row(0), _row(1, Split_Set="Validation")], ["'Validation'", "line 3", "labels_consensus_1.csv"]),
    "gender": ([_row(0, Gender="X")], ["'X'", "Gender", "labels_consensus_1.csv"]),
    "above_one": ([_row(0), _row(2, fear="1.2", neutral="-0.254")], ["1058_ITS_FEA_XX.wav", "labels_consensus_1.csv"]),
    "sum": ([_row(0), _row(1, angry="0.3")], ["1089_TIE_HAP_XX.wav", "not summing to 1", "labels_consensus_1.csv"]),
    "not_number": ([_row(0, sad="n/a")], ["'sad'", "1001_DFA_ANG_XX.wav", "'n/a'"]),
    "absolute": ([_row(0, FileName="/etc/1001_DFA_ANG_XX.wav")], ["'/etc/1001_DFA_ANG_XX.wav'", "refused"]),
    "dotdot": ([_row(0, FileName="..1001_DFA_ANG_XX.wav")], ["'..1001_DFA_ANG_XX.wav'", "refused"]),
    "parent": ([_row(0, FileName="../1001_DFA_ANG_XX.wav")], ["'../1001_DFA_ANG_XX.wav'", "refused"]),
    "subdir": ([_row(0, FileName="sub/1001_DFA_ANG_XX.wav")], ["'sub/1001_DFA_ANG_XX.wav'", "refused"]),
    "backslash": ([_row(0, FileName="sub\\1001_DFA_ANG_XX.wav")], ["1001_DFA_ANG_XX.wav'", "refused"]),
    "sentence": ([_row(0, FileName="1001_XYZ_ANG_XX.wav")], ["'1001_XYZ_ANG_XX.wav'", "sentence code"]),
    "duplicate": ([_row(0), _row(0)], ["'1001_DFA_ANG_XX.wav'", "more than once"]),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_rows_raise(tmp_path, case):
    rows, fragments = BAD_ROWS[case]
    labels = _write(tmp_path, rows)
    with pytest.raises(DataError) as info:
        read_crema_d(labels, 1)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


def test_missing_directory_and_fold(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        read_crema_d(tmp_path / "nowhere", 1)
    labels = _write(tmp_path, FIXTURE_ROWS, fold=1)
    _write(tmp_path, FIXTURE_ROWS, fold=4)
    with pytest.raises(DataError, match=r"fold 3 .*labels_consensus_3\.csv.*\[1, 4\]"):
        read_crema_d(labels, 3)
    with pytest.raises(DataError, match="'valid'"):
        read_crema_d(labels, 1, splits=("train", "valid"))


def test_missing_columns_named(tmp_path):
    cols = [c for c in COLUMNS if c not in ("Gender", "happy")]
    rows = [[v for c, v in zip(COLUMNS, r) if c in cols] for r in FIXTURE_ROWS]
    labels = _write(tmp_path, rows, columns=cols)
    with pytest.raises(DataError, match=r"labels_consensus_1\.csv is missing column\(s\) \['happy', 'Gender'\]"):
        read_crema_d(labels, 1)


def test_non_utf8_named(tmp_path):
    labels = _write(tmp_path, FIXTURE_ROWS)
    path = labels / "labels_consensus_1.csv"
    path.write_bytes(path.read_bytes().replace(b"1058", b"10\xe958"))
    with pytest.raises(DataError, match=r"labels_consensus_1\.csv is not UTF-8 .*line 4"):
        read_crema_d(labels, 1)


def test_config_with_other_classes_refused(tmp_path):
    labels = _write(tmp_path, FIXTURE_ROWS)
    (labels / "config.json").write_text(json.dumps({"categorical": {"emo_type": ["angry", "sad", "happy"]}}))
    with pytest.raises(DataError, match=r"config\.json.*emo_type"):
        read_crema_d(labels, 1)
    (labels / "config.json").write_text(json.dumps({"categorical": "angry"}))
    with pytest.raises(DataError, match=r"config\.json has no 'categorical\.emo_type'"):
        read_crema_d(labels, 1)
    (labels / "config.json").write_text("{not json")
    with pytest.raises(DataError, match=r"config\.json"):
        read_crema_d(labels, 1)
    # the same classes in another order are fine: columns are read by name, Examples use CREMA_D order
    (labels / "config.json").write_text(json.dumps({"categorical": {"emo_type": sorted(CREMA_D.classes)}}))
    assert read_crema_d(labels, 1)[0].emotion_dist == (0.574, 0.01, 0.292, 0.01, 0.104, 0.01)
