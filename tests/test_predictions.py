"""The predictions table: round trips, column layout and the errors users get for bad files."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from llmfair.data.labels import CREMA_D, MELD
from llmfair.errors import DataError
from llmfair.predictions import Predictions, read_predictions, write_predictions


def table_args(n: int = 12, *, seed: int = 0, multilabel: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    space = CREMA_D if multilabel else MELD
    k = space.num_classes
    probs = rng.dirichlet(np.ones(k), n)
    labels = rng.dirichlet(np.ones(k), n) if multilabel else rng.integers(0, k, n)
    return dict(
        ids=[f"utt{i // 2}" for i in range(n)],  # each utterance in both modalities
        split="test",
        language=rng.choice(["eng", "deu", "jpn"], n),
        modality=["audio", "audio_text"] * (n // 2),
        gender=rng.choice(["female", "male", "unknown"], n),
        speaker=[f"spk{i % 3}" for i in range(n)],
        classes=space,
        probs=probs,
        labels=labels,
    )


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_single_label_round_trip(tmp_path, suffix):
    args = table_args()
    fold = np.arange(12) % 5
    written = write_predictions(tmp_path / f"p{suffix}", extra={"fold": fold}, **args)
    pred = read_predictions(tmp_path / f"p{suffix}")
    assert not pred.multilabel and pred.classes == MELD.classes and pred.label_space is MELD
    np.testing.assert_array_equal(pred.labels, args["labels"])
    np.testing.assert_array_equal(pred.predictions, args["probs"].argmax(axis=1))  # argmax when not given
    np.testing.assert_allclose(pred.probs, args["probs"], rtol=0, atol=1e-15)
    np.testing.assert_array_equal(written.predictions, pred.predictions)
    expected = ["id", "split", "language", "modality", "gender", "speaker", "label"]
    expected += [f"prob_{c}" for c in MELD.classes] + ["prediction", "fold"]
    assert list(pred.frame.columns) == expected
    assert pred.frame["fold"].astype(int).tolist() == fold.tolist()  # extra columns preserved
    assert pred.frame["label"].tolist() == [MELD.classes[i] for i in args["labels"]]
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary file


def test_multilabel_round_trip_and_explicit_predictions(tmp_path):
    args = table_args(multilabel=True)
    predictions = np.array(CREMA_D.classes * 2)  # names, not argmax
    write_predictions(tmp_path / "p.csv", predictions=predictions, **args)
    pred = read_predictions(tmp_path / "p.csv")
    assert pred.multilabel and pred.label_space is CREMA_D
    np.testing.assert_allclose(pred.labels, args["labels"], atol=1e-15)
    np.testing.assert_array_equal(pred.predictions, np.tile(np.arange(6), 2))
    assert [c for c in pred.frame.columns if c.startswith("label_")] == [f"label_{c}" for c in CREMA_D.classes]
    np.testing.assert_array_equal(pred.label_bin, args["labels"] > 1 / 6)
    np.testing.assert_array_equal(pred.prediction_bin, args["probs"] > 1 / 6)
    # the strict-majority emotion of multi-label rows, "none" without one
    best = args["labels"].argmax(axis=1)
    expected = np.where(args["labels"].max(axis=1) > 0.5, np.array(CREMA_D.classes)[best], "none")
    np.testing.assert_array_equal(pred.column("emotion"), expected)


def test_gender_spellings_are_normalised_and_subset_keeps_rows(tmp_path):
    args = table_args()
    args["gender"] = ["F", "M", "", "Female", "male", "U"] * 2
    pred = write_predictions(tmp_path / "p.csv", **args)
    assert pred.frame["gender"].tolist() == ["female", "male", "unknown", "female", "male", "unknown"] * 2
    sub = pred.subset(pred.frame["gender"].to_numpy() == "male")
    assert sub.n == 4 and set(sub.frame["gender"]) == {"male"}
    np.testing.assert_array_equal(sub.labels, args["labels"][pred.frame["gender"].to_numpy() == "male"])


def _write_csv(tmp_path, frame: pd.DataFrame):
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture()
def good_frame(tmp_path) -> pd.DataFrame:
    return write_predictions(tmp_path / "good.csv", **table_args()).frame.copy()


def test_missing_columns_are_named_with_the_file(tmp_path, good_frame):
    path = _write_csv(tmp_path, good_frame.drop(columns=["speaker", "label"]))
    with pytest.raises(DataError, match=r"bad\.csv is missing column\(s\) \['speaker', 'label'\]"):
        read_predictions(path)
    path = _write_csv(tmp_path, good_frame[[c for c in good_frame.columns if not c.startswith("prob_")]])
    with pytest.raises(DataError, match=r"missing column\(s\) \['prob_<class>"):
        read_predictions(path)


def test_probabilities_must_sum_to_one(tmp_path, good_frame):
    frame = good_frame.copy()
    frame.loc[3, "prob_joy"] += 0.01
    frame.loc[7, "prob_joy"] += 0.01
    with pytest.raises(DataError, match=r"2 row\(s\) do not sum to 1.*first id='utt1'"):
        read_predictions(_write_csv(tmp_path, frame))
    frame = good_frame.copy()
    frame.loc[0, "prob_joy"] += 0.0005  # inside the 1e-3 tolerance
    assert read_predictions(_write_csv(tmp_path, frame)).n == 12
    frame = good_frame.astype(object)
    frame.loc[2, "prob_fear"] = "abc"
    with pytest.raises(DataError, match=r"'prob_fear' has a missing or non-numeric value 'abc' at id='utt1'"):
        read_predictions(_write_csv(tmp_path, frame))
    frame = good_frame.copy()
    frame.loc[4, "prob_fear"] = -0.1
    frame.loc[4, "prob_joy"] += 0.1
    with pytest.raises(DataError, match=r"'prob_fear' has -0.1 at id='utt2'"):
        read_predictions(_write_csv(tmp_path, frame))


def test_labels_and_predictions_must_be_in_the_label_space(tmp_path, good_frame):
    frame = good_frame.copy()
    frame.loc[5, "label"] = "boredom"
    with pytest.raises(DataError, match=r"label 'boredom' at id='utt2' is not in the label space"):
        read_predictions(_write_csv(tmp_path, frame))
    frame = good_frame.copy()
    frame.loc[1, "prediction"] = "calm"
    with pytest.raises(DataError, match=r"prediction 'calm' at id='utt0' is not in the label space"):
        read_predictions(_write_csv(tmp_path, frame))
    frame = good_frame.copy()
    frame["label"] = frame["label"].str.upper()  # case-insensitive class names
    assert read_predictions(_write_csv(tmp_path, frame)).n == 12


def test_vocabularies_duplicates_and_empty_files(tmp_path, good_frame):
    for column, value, message in (
        ("language", "fra", "unknown language value 'fra'"),
        ("modality", "video", "unknown modality value 'video'"),
        ("gender", "nonbinary", "unknown gender value 'nonbinary'"),
    ):
        frame = good_frame.copy()
        frame.loc[6, column] = value
        with pytest.raises(DataError, match=message + r".*utt3"):
            read_predictions(_write_csv(tmp_path, frame))
    frame = good_frame.copy()
    frame.loc[3, "modality"] = "audio"  # utt1 now appears twice in audio
    with pytest.raises(DataError, match=r"2 rows sharing an \(id, modality\) key, first id='utt1' modality='audio'"):
        read_predictions(_write_csv(tmp_path, frame))
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty.csv is empty"):
        read_predictions(empty)
    with pytest.raises(DataError, match="has no rows"):
        read_predictions(_write_csv(tmp_path, good_frame.iloc[:0]))
    with pytest.raises(DataError, match="not found"):
        read_predictions(tmp_path / "missing.csv")


def test_multilabel_column_errors(tmp_path):
    frame = write_predictions(tmp_path / "m.csv", **table_args(multilabel=True)).frame.copy()
    both = frame.assign(label="angry")
    with pytest.raises(DataError, match="both a 'label' column and label_<class> columns"):
        read_predictions(_write_csv(tmp_path, both))
    renamed = frame.rename(columns={"label_sad": "label_bored"})
    with pytest.raises(DataError, match=r"label_<class> columns .* do not match"):
        read_predictions(_write_csv(tmp_path, renamed))
    out_of_range = frame.copy()
    out_of_range.loc[0, "label_sad"] = 1.5
    with pytest.raises(DataError, match=r"'label_sad' has 1.5 at id='utt0'"):
        read_predictions(_write_csv(tmp_path, out_of_range))


def test_write_rejects_bad_arrays_and_writes_nothing(tmp_path):
    args = table_args()
    args["labels"] = args["labels"].copy()
    args["labels"][4] = 9
    path = tmp_path / "p.csv"
    with pytest.raises(DataError, match=r"labels index 9 at id='utt2' is outside the label space"):
        write_predictions(path, **args)
    args = table_args()
    args["probs"] = args["probs"] * 1.1
    with pytest.raises(DataError, match="do not sum to 1"):
        write_predictions(path, **args)
    args = table_args()
    with pytest.raises(DataError, match=r"probs has shape \(12, 6\); expected \(12, 7\)"):
        write_predictions(path, **{**args, "probs": args["probs"][:, :6]})
    with pytest.raises(DataError, match="extra column 'label' clashes"):
        write_predictions(path, extra={"label": np.zeros(12)}, **args)
    assert not path.exists() and not list(tmp_path.iterdir())


def test_from_frame_accepts_an_in_memory_table():
    frame = pd.DataFrame(
        {"id": ["a", "b"], "split": "test", "language": "eng", "modality": "audio", "gender": ["f", "m"],
         "speaker": ["s1", "s2"], "label": ["x", "y"], "prob_x": [0.9, 0.2], "prob_y": [0.1, 0.8],
         "prediction": ["x", "y"]}
    )
    pred = Predictions.from_frame(frame, source="memory")
    assert pred.classes == ("x", "y") and pred.label_space.name == "custom"
    np.testing.assert_array_equal(pred.labels, [0, 1])
    with pytest.raises(DataError, match="memory has no column 'age'"):
        pred.column("age")
