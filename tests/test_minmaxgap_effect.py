"""MinMaxGAP at its defaults against ERM on frozen features built to carry a gender gap in one
(language, modality) cell: the worst-cell gap on held-out rows shrinks (paired over seeds), and
with λ = 0 the objective is ERM exactly. The data, not the method's settings, are built for the
test: the method runs with the defaults of MinMaxGapOptions."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from llmfair.objectives import GroupSpec, build_objective
from llmfair.ssl.head import HeadOptions
from llmfair.ssl.train_head import HeadTrainingOptions, train_head

KEYS = ("language", "modality", "gender")
CLASSES = 4
DIM = 16


pytestmark = pytest.mark.usefixtures("one_thread")


def _rows(rng: np.random.Generator, per_group: dict[tuple[str, str], int]):
    """Rows of two cells (eng, deu; audio). The class shows in dimensions 0..3 for everyone; in
    the eng cell the female rows show it in dimensions 4..7 instead, so a head fitted to the
    (many) male rows of eng misreads the (few) female ones unless it is pushed to fit them too."""
    records, xs, ys = [], [], []
    for (language, gender), n in per_group.items():
        y = rng.integers(0, CLASSES, n)
        x = rng.normal(scale=1.0, size=(n, DIM)).astype(np.float32)
        shifted = language == "eng" and gender == "female"
        x[np.arange(n), y + (4 if shifted else 0)] += 2.0
        xs.append(x)
        ys.append(y)
        records += [{"language": language, "modality": "audio", "gender": gender}] * n
    return records, np.concatenate(xs), np.concatenate(ys)


def _worst_cell_gap(records, y, pred) -> float:
    """max over cells of |W-F1(male) − W-F1(female)|, by scikit-learn."""
    gaps = []
    for language in ("eng", "deu"):
        f1 = {}
        for gender in ("female", "male"):
            rows = np.array([r["language"] == language and r["gender"] == gender for r in records])
            f1[gender] = f1_score(y[rows], pred[rows], average="weighted", labels=range(CLASSES), zero_division=0)
        gaps.append(abs(f1["male"] - f1["female"]))
    return max(gaps)


def _train(objective: str, options: dict, seed: int):
    rng = np.random.default_rng(100 + seed)
    train = {("eng", "male"): 400, ("eng", "female"): 40, ("deu", "male"): 200, ("deu", "female"): 200}
    test = {key: 150 for key in train}
    records, x, y = _rows(rng, train)
    test_records, tx, ty = _rows(rng, test)
    spec, ids = GroupSpec.from_records(records, KEYS)
    result = train_head(x, y, ids, build_objective(objective, spec, options),
                        options=HeadTrainingOptions(epochs=20, batch_size=32, learning_rate=3e-3, seed=seed,
                                                    select_on_dev=False),
                        head_options=HeadOptions(projector_dim=32))
    pred = result.predict_proba(tx).argmax(1)
    return result, _worst_cell_gap(test_records, ty, pred), float((pred == ty).mean())


def test_minmaxgap_at_its_defaults_shrinks_the_worst_cell_gap():
    erm_gaps, mmg_gaps, erm_acc, mmg_acc = [], [], [], []
    for seed in range(4):
        _, gap, acc = _train("erm", {}, seed)
        erm_gaps.append(gap)
        erm_acc.append(acc)
        _, gap, acc = _train("minmaxgap", {}, seed)
        mmg_gaps.append(gap)
        mmg_acc.append(acc)
    erm_gaps, mmg_gaps = np.array(erm_gaps), np.array(mmg_gaps)
    assert erm_gaps.mean() > 0.15  # the data carry a gap ERM leaves open
    diff = mmg_gaps - erm_gaps  # paired by seed: the same rows and initialisation
    assert (diff < 0).all(), (erm_gaps, mmg_gaps)
    assert diff.mean() < -0.05, (erm_gaps, mmg_gaps)


def test_minmaxgap_with_lambda_zero_is_erm_exactly():
    erm, _, _ = _train("erm", {}, 0)
    zero, _, _ = _train("minmaxgap", {"weight": "fixed", "lambda_init": 0.0}, 0)
    for (name, a), (_, b) in zip(erm.model.state_dict().items(), zero.model.state_dict().items()):
        assert torch.equal(a, b), name
    # and λ > 0 does change the weights (the comparison above can fail)
    fixed, _, _ = _train("minmaxgap", {"weight": "fixed", "lambda_init": 1.0}, 0)
    assert not all(torch.equal(a, b) for a, b in zip(erm.model.state_dict().values(),
                                                     fixed.model.state_dict().values()))
