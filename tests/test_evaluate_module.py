"""The `evaluate` module eval/slice_fairness: loads offline, returns the library's numbers."""
from __future__ import annotations

import os
from pathlib import Path

import evaluate
import pytest
from sklearn.metrics import accuracy_score, f1_score

from llmfair.data.labels import MELD
from llmfair.errors import ConfigError, DataError
from llmfair.metrics import FAIRNESS_FIGURES, summary_dict
from llmfair.predictions import read_predictions
from llmfair.report import flatten_summary
from tests.test_report import make_predictions

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "eval" / "slice_fairness"


@pytest.fixture(scope="module")
def metric():
    assert os.environ.get("HF_HUB_OFFLINE") == "1" and os.environ.get("HF_DATASETS_OFFLINE") == "1"
    return evaluate.load(str(MODULE))


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "preds.csv"
    make_predictions(path, seed=4, n_utterances=150)
    return read_predictions(path)


def inputs(pred, *, names: bool = True, with_probs: bool = True, with_ids: bool = True) -> dict:
    frame = pred.frame
    out = {
        "predictions": frame["prediction"].tolist() if names else pred.predictions.tolist(),
        "references": frame["label"].tolist() if names else pred.labels.tolist(),
        "languages": frame["language"].tolist(),
        "modalities": frame["modality"].tolist(),
        "genders": frame["gender"].tolist(),
        "speakers": frame["speaker"].tolist(),
    }
    if with_probs:
        out["probabilities"] = pred.probs.tolist()
    if with_ids:
        out["ids"] = frame["id"].tolist()
    return out


def test_offline_load_and_same_numbers_as_the_library(metric, table):
    out = metric.compute(**inputs(table), label_space=list(MELD.classes))
    expected = flatten_summary(summary_dict(table, n_resamples=0))
    assert out == expected
    # and against scikit-learn directly
    y, p = table.labels, table.predictions
    assert out["accuracy"] == pytest.approx(accuracy_score(y, p), abs=1e-12)
    assert out["weighted_f1"] == pytest.approx(f1_score(y, p, average="weighted", zero_division=0), abs=1e-12)
    rows = ((table.frame["language"] == "jpn") & (table.frame["modality"] == "audio_text")).to_numpy()
    female, male = rows & (table.frame["gender"] == "female").to_numpy(), rows & (table.frame["gender"] == "male").to_numpy()
    f1 = lambda r: f1_score(y[r], p[r], average="weighted", zero_division=0)  # noqa: E731
    assert out["jpn/audio_text/female/weighted_f1"] == pytest.approx(f1(female), abs=1e-12)
    assert out["gap/jpn/audio_text/weighted_f1"] == pytest.approx(abs(f1(male) - f1(female)), abs=1e-12)
    assert out["male_minus_female/jpn/audio_text/weighted_f1"] == pytest.approx(f1(male) - f1(female), abs=1e-12)
    assert out["jpn/audio_text/female/n"] == female.sum()
    assert set(FAIRNESS_FIGURES) <= set(out) and out["n"] == table.n
    assert not any(k.endswith("/ci") for k in out)


def test_indices_without_probabilities_give_the_same_numbers(metric, table):
    by_name = metric.compute(**inputs(table), label_space="meld")
    by_index = metric.compute(**inputs(table, names=False, with_probs=False), label_space="meld")
    assert by_index == by_name


def test_bootstrap_intervals_equal_the_library(metric, table):
    out = metric.compute(**inputs(table), label_space=list(MELD.classes), n_resamples=200, seed=7, unit="speaker")
    expected = flatten_summary(summary_dict(table, n_resamples=200, seed=7, unit="speaker"))
    assert out == expected
    low, high = out["gap/all/all/accuracy/ci"]
    assert low < out["gap/all/all/accuracy"] < high


def test_batches_equal_one_call(metric, table):
    data = inputs(table)
    half = table.n // 2
    for part in (slice(0, half), slice(half, None)):
        metric.add_batch(**{k: v[part] for k, v in data.items()})
    batched = metric.compute(label_space=list(MELD.classes))
    assert batched == metric.compute(**data, label_space=list(MELD.classes))


def test_hand_worked_example(metric):
    out = metric.compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0], languages=["eng"] * 4,
                         modalities=["audio"] * 4, genders=["female", "female", "male", "M"], label_space=["a", "b"])
    assert out["eng/audio/female/accuracy"] == 1.0 and out["eng/audio/male/accuracy"] == 0.5
    assert out["gap/eng/audio/accuracy"] == 0.5 and out["male_minus_female/all/all/accuracy"] == -0.5
    # TPR of class a: female 1/1, male 1/2; class b has no male positives and is skipped
    assert out["tpr_gap_rms"] == pytest.approx(0.5)


def test_bad_inputs_are_clear_errors(metric, table):
    data = inputs(table)
    with pytest.raises(DataError, match="languages has 10 values but predictions has"):
        metric.compute(**{**data, "languages": data["languages"][:10]}, label_space="meld")
    with pytest.raises(DataError, match="'happiness'.*not in the label space"):
        metric.compute(**{**data, "predictions": ["happiness"] + data["predictions"][1:]}, label_space="meld")
    with pytest.raises(DataError, match=r"references\[0\] = 9 is not a class index"):
        idx = inputs(table, names=False)
        metric.compute(**{**idx, "references": [9] + idx["references"][1:]}, label_space="meld")
    with pytest.raises(DataError, match="7 values per row"):
        metric.compute(**{**data, "probabilities": [[1.0, 0.0]] * table.n}, label_space="meld")
    with pytest.raises(ConfigError, match="needs label_space"):
        metric.compute(**data)
    with pytest.raises(DataError, match="unknown language value 'fra'"):
        metric.compute(**{**data, "languages": ["fra"] + data["languages"][1:]}, label_space="meld")
