"""Model selection of the frozen-feature head: dev figures against scikit-learn, and every
criterion of llmfair.training.selection choosing the epoch an independent rule would, with the
kept state reproducing that epoch's dev figures."""
from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import f1_score

from llmfair.errors import ConfigError
from llmfair.objectives import GroupSpec, build_objective
from llmfair.ssl.train_head import HeadTrainingOptions, dev_figures, train_head
from llmfair.ssl.head import HeadOptions


pytestmark = pytest.mark.usefixtures("one_thread")


def test_dev_figures_match_sklearn_multilabel_and_single_label():
    rng = np.random.default_rng(0)
    n, k = 90, 5
    genders = np.where(rng.random(n) < 0.5, "female", "male")
    genders[:3] = "unknown"  # neither side of the gap
    probs = rng.dirichlet(np.ones(k) * 0.5, n)
    soft = rng.dirichlet(np.ones(k) * 0.4, n)
    got = dev_figures(probs, soft, genders)
    y, p = soft > 1 / k, probs > 1 / k
    male, female = genders == "male", genders == "female"
    assert got["weighted_f1"] == pytest.approx(f1_score(y, p, average="weighted", zero_division=0), abs=1e-12)
    assert got["macro_f1"] == pytest.approx(f1_score(y, p, average="macro", zero_division=0), abs=1e-12)
    assert got["worst_cell_gap"] == pytest.approx(abs(f1_score(y[male], p[male], average="macro", zero_division=0)
                                                      - f1_score(y[female], p[female], average="macro",
                                                                 zero_division=0)), abs=1e-12)
    labels = rng.integers(0, k, n)
    got = dev_figures(probs, labels, genders)
    pred = probs.argmax(1)
    assert got["weighted_f1"] == pytest.approx(f1_score(labels, pred, average="weighted", labels=range(k),
                                                        zero_division=0), abs=1e-12)
    assert got["macro_f1"] == pytest.approx(f1_score(labels, pred, average="macro", labels=range(k),
                                                     zero_division=0), abs=1e-12)
    assert math.isnan(dev_figures(probs, labels, np.full(n, "female"))["worst_cell_gap"])
    assert math.isnan(dev_figures(probs, labels, None)["worst_cell_gap"])


def _gap_data(seed: int = 0, n: int = 600, dim: int = 12, classes: int = 4):
    """Class signal in a few feature dimensions; the female rows carry it much more weakly, so
    accuracy and the gender gap move differently over the epochs."""
    rng = np.random.default_rng(seed)
    genders = np.where(rng.random(n) < 0.5, "female", "male")
    labels = rng.integers(0, classes, n)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    strength = np.where(genders == "female", 0.6, 2.0)
    x[np.arange(n), labels] += strength
    x[:, -1] = (genders == "male") * 1.5  # gender is visible to the head
    return x, labels, genders


def _run(criterion: dict | None, *, epochs: int = 14):
    x, y, g = _gap_data()
    train, dev = slice(0, 400), slice(400, 600)
    spec, ids = GroupSpec.from_records([{"gender": s} for s in g[train]], ("gender",))
    objective = build_objective("erm", spec, {})
    options = HeadTrainingOptions(epochs=epochs, batch_size=32, learning_rate=3e-3, seed=0,
                                  selection=criterion or {})
    return train_head(x[train], y[train], ids, objective, dev_features=x[dev], dev_labels=y[dev],
                      dev_genders=g[dev], options=options, head_options=HeadOptions(projector_dim=16)), (x[dev], y[dev],
                                                                                                     g[dev])


def _expected_epoch(criterion: dict, history: list[dict]) -> int:
    """The rule written out directly (first epoch wins ties)."""
    f1 = np.array([h["weighted_f1"] for h in history])
    gap = np.array([h["worst_cell_gap"] for h in history])
    loss = np.array([h["dev_loss"] for h in history])
    name = criterion.get("criterion")
    if name == "metric":
        return int(np.argmax(f1)) + 1
    if name == "dev_loss" or name is None:
        return int(np.argmin(loss)) + 1
    if name == "min_gap":
        best = np.flatnonzero(gap == gap.min())
        return int(best[np.argmax(f1[best])]) + 1
    feasible = np.flatnonzero(gap <= criterion["max_gap"])
    if feasible.size:
        return int(feasible[np.argmax(f1[feasible])]) + 1
    return int(np.argmin(gap)) + 1


def test_every_criterion_keeps_the_epoch_its_rule_names_and_restores_its_state():
    chosen = {}
    histories = []
    for criterion in ({}, {"criterion": "metric"}, {"criterion": "min_gap"},
                      {"criterion": "constrained", "max_gap": 0.15}, {"criterion": "last"}):
        result, (dx, dy, dg) = _run(criterion)
        histories.append(result.history)
        expected = len(result.history) if criterion.get("criterion") == "last" else _expected_epoch(criterion,
                                                                                                   result.history)
        assert result.best_epoch == expected, criterion
        # the kept state is that epoch's: its dev figures come back exactly
        again = dev_figures(result.predict_proba(dx), dy, dg)
        for key, value in again.items():
            assert value == pytest.approx(result.history[result.best_epoch - 1][key], abs=1e-9), (criterion, key)
        chosen[criterion.get("criterion", "default")] = result.best_epoch
        if criterion.get("criterion") == "constrained":
            gaps = [h["worst_cell_gap"] for h in result.history]
            assert result.selection["met_bound"] == (min(gaps) <= 0.15)
    # the training itself does not depend on the rule (selection only picks a state)
    for history in histories[1:]:
        assert [h["train_loss"] for h in history] == [h["train_loss"] for h in histories[0]]
    # the data make the rules disagree, so the assertions above can fail
    assert chosen["metric"] != chosen["min_gap"]
    assert len(set(chosen.values())) >= 3, chosen


def test_constrained_without_a_feasible_epoch_keeps_the_smallest_gap(caplog):
    result, _ = _run({"criterion": "constrained", "max_gap": 0.0})
    gaps = [h["worst_cell_gap"] for h in result.history]
    assert min(gaps) > 0  # no epoch is feasible
    assert result.best_epoch == int(np.argmin(gaps)) + 1 and result.selection["met_bound"] is False
    assert "no epoch met the dev bound" in caplog.text


@pytest.mark.parametrize("selection, match", [
    ({"criterion": "best"}, "selection.criterion='best'"),
    ({"criterion": "constrained"}, "selection.max_gap=None"),
    ({"criterion": "constrained", "max_gap": -0.1}, "selection.max_gap=-0.1"),
    ({"criterion": "metric", "max_gap": 0.1}, "only used by criterion 'constrained'"),
    ({"criterion": "metric", "gap_bound": 0.1}, "gap_bound"),
])
def test_bad_selection_options_are_named(selection, match):
    with pytest.raises(ConfigError, match=match):
        HeadTrainingOptions(selection=selection)


def test_a_selection_rule_without_dev_rows_is_refused():
    x, y, g = _gap_data()
    spec, ids = GroupSpec.from_records([{"gender": s} for s in g], ("gender",))
    with pytest.raises(ConfigError, match="needs dev rows"):
        train_head(x, y, ids, build_objective("erm", spec, {}),
                   options=HeadTrainingOptions(epochs=1, selection={"criterion": "metric"}))
