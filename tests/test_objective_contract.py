"""The objective contract, checked on every registered objective.

Parametrised over :func:`llmfair.objectives.available_objectives`, so a new method module is
checked as soon as it registers itself — once :data:`ROWS` has a row for it (a registered name
without a row fails, saying so). On a tiny model (encoder → features → linear head, cross-entropy
per sample) and 16 training rows built so that every half batch holds both genders of a cell:

- the loss is a finite scalar and its figures are finite floats;
- gradients reach every model parameter (finite; the encoder's non-zero, and the head's too
  unless the method predicts from its own classifier);
- ``state_dict()`` loaded into a fresh objective (built from another seed) gives the identical
  next loss and figures;
- ``setup()`` twice leaves the state of ``setup()`` once (and the same next loss);
- where the objective claims ``depends_only_on_per_sample_loss``, one batch of 8 has the gradient
  of two accumulated half-batches of 4 weighted as :class:`llmfair.training.FairTrainer` weights
  them (a no-grad pre-pass over both halves, the objective on the whole step from per-sample losses
  and group ids alone, w_i = ∂L/∂ℓ_i, then Σ_i w_i ℓ_i per half), and leaves the same state.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.parameter import is_lazy

from llmfair.objectives import (
    GroupSpec,
    Objective,
    ObjectiveInputs,
    TrainingStats,
    available_objectives,
    build_objective,
    register_objective,
)
from llmfair.objectives.base import OBJECTIVES

K, N, D, H = 3, 16, 6, 8
GENDER = ["female", "male", "male", "female", "female", "male", "unknown", "female",
          "male", "female", "female", "male", "male", "female", "unknown", "male"]
CELLS = [("deu", "audio"), ("eng", "audio")]


@dataclass(frozen=True)
class Data:
    """Training rows 0..N-1 (x, labels) with their groups under one GroupSpec."""

    spec: GroupSpec
    group_ids: torch.Tensor
    stats: TrainingStats
    x: torch.Tensor
    labels: torch.Tensor


def _data(keys: tuple[str, ...]) -> Data:
    rng = np.random.default_rng(0)
    records = [{"language": CELLS[(i // 2) % 2][0], "modality": CELLS[(i // 2) % 2][1], "gender": GENDER[i],
                "rater_gender": "female" if i % 4 in (1, 2) else "male"} for i in range(N)]
    spec, ids = GroupSpec.from_records(records, keys)
    labels = np.arange(N) % K
    return Data(spec, torch.as_tensor(ids), TrainingStats.from_arrays(ids, labels, spec.num_groups, K),
                torch.as_tensor(rng.normal(size=(N, D)), dtype=torch.float32), torch.as_tensor(labels))


DATA = {"cells": _data(("language", "modality", "gender")), "rater": _data(("gender", "rater_gender"))}


def _gender_memberships(objective: Any, data: Data) -> None:
    """PGDRO's soft groups: one-hot gender, unknown split evenly."""
    probs = np.array([[1.0, 0.0] if g == "female" else [0.0, 1.0] if g == "male" else [0.5, 0.5] for g in GENDER])
    objective.set_group_probabilities(probs, names=("female", "male"))


@dataclass(frozen=True)
class Row:
    """How to build one objective for the contract checks (default options always).

    Attributes:
        groups: which GroupSpec of :data:`DATA` it needs ("cells": language × modality × gender;
            "rater": speaker gender × rater gender).
        prepare: called after ``setup()`` with (objective, data), as a run would (PGDRO's
            memberships).
        own_classifier: the method predicts from its own classifier, so the model's output layer
            enters the loss with weight 0 (its gradient is zero, but present).
    """

    groups: str = "cells"
    prepare: Callable[[Any, Data], None] | None = None
    own_classifier: bool = False
    options: dict = field(default_factory=dict)


ROWS: dict[str, Row] = {
    "erm": Row(),
    "minmaxgap": Row(),
    "rw": Row(),
    "gdro": Row(),
    "gadro": Row(),
    "pgdro": Row(prepare=_gender_memberships),
    "gr": Row(),
    "lff": Row(),
    "disent": Row(own_classifier=True),
    "adv": Row(),
    "madv": Row(),
    "two_sided": Row(groups="rater", own_classifier=True),
}
"""One row per registered objective: adding a method adds a row here."""


def row_for(name: str) -> Row:
    if name not in ROWS:
        pytest.fail(f"objective {name!r} is registered but has no row in ROWS of {__name__}: add one (its groups, "
                    "any preparation after setup()) so that the contract checks run on it")
    return ROWS[name]


# ------------------------------------------------------------------------------------- pieces
class TinyModel(nn.Module):
    """encoder → tanh features → linear head; returns the model contract of FairTrainer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(123)
        self.encoder = nn.Linear(D, H)
        self.head = nn.Linear(H, K)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        features = torch.tanh(self.encoder(x))
        logits = self.head(features)
        loss = nn.functional.cross_entropy(logits, labels, reduction="none")
        return {"per_sample_loss": loss, "logits": logits, "features": features, "inputs": x}


def build(name: str, seed: int = 0, *, setups: int = 1) -> Objective:
    row = row_for(name)
    data = DATA[row.groups]
    torch.manual_seed(seed)
    objective = build_objective(name, data.spec, row.options)
    for _ in range(setups):
        objective.setup(data.stats)
        if row.prepare is not None:
            row.prepare(objective, data)
    return objective.train()


def inputs(name: str, model: nn.Module, rows: slice) -> ObjectiveInputs:
    data = DATA[row_for(name).groups]
    out = model(data.x[rows], data.labels[rows])
    return ObjectiveInputs(per_sample_loss=out["per_sample_loss"], group_ids=data.group_ids[rows],
                           logits=out["logits"], labels=data.labels[rows], features=out["features"],
                           sample_index=torch.arange(N)[rows], inputs=out["inputs"])


def step(objective: Objective, name: str, model: nn.Module, rows: slice, seed: int = 7):
    """One training forward of ``objective`` (randomness inside it, e.g. a swap permutation, seeded)."""
    torch.manual_seed(seed)
    return objective(inputs(name, model, rows))


def assert_same_state(a: Objective, b: Objective, *, exact: bool = True) -> None:
    """The same state_dict keys, dtypes and values (``exact=False``: values to float rounding)."""
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        if is_lazy(sa[key]) or is_lazy(sb[key]):
            assert is_lazy(sa[key]) and is_lazy(sb[key]), key
            continue
        assert sa[key].dtype == sb[key].dtype, key
        if exact:
            assert torch.equal(sa[key], sb[key]), key
        else:
            torch.testing.assert_close(sa[key], sb[key], msg=key)


FIRST, SECOND = slice(0, 8), slice(8, 16)
NAMES = available_objectives()


# ------------------------------------------------------------------------------------- the checks
def test_a_registered_objective_without_a_row_fails() -> None:
    @register_objective("contract_probe")
    class Probe(Objective):
        pass

    try:
        assert "contract_probe" in available_objectives()
        with pytest.raises(pytest.fail.Exception, match="has no row in ROWS"):
            row_for("contract_probe")
    finally:
        OBJECTIVES.unregister("contract_probe")
    assert "contract_probe" not in available_objectives()


def test_the_table_names_only_registered_objectives() -> None:
    assert sorted(ROWS) == NAMES, f"rows without a registered objective: {sorted(set(ROWS) - set(NAMES))}"


@pytest.mark.parametrize("name", NAMES)
def test_finite_scalar_loss_and_gradients_reach_the_model(name: str) -> None:
    model = TinyModel()
    objective = build(name)
    out = step(objective, name, model, FIRST)
    assert out.loss.ndim == 0 and out.loss.dtype.is_floating_point and torch.isfinite(out.loss)
    assert out.figures and all(isinstance(v, float) and math.isfinite(v) for v in out.figures.values()), out.figures
    out.loss.backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None, f"{name}: no gradient reaches {pname}"
        assert torch.isfinite(param.grad).all(), f"{name}: non-finite gradient of {pname}"
    assert model.encoder.weight.grad.abs().sum() > 0, f"{name}: zero gradient on the features"
    head = model.head.weight.grad.abs().sum()
    assert (head == 0) if row_for(name).own_classifier else (head > 0), f"{name}: head gradient {float(head)}"
    for pname, param in objective.named_parameters():
        if param.grad is not None:
            assert torch.isfinite(param.grad).all(), f"{name}: non-finite gradient of its own {pname}"


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_gives_the_same_next_loss(name: str) -> None:
    model = TinyModel()
    trained = build(name)
    step(trained, name, model, FIRST).loss.backward()  # running estimates, duals, EMAs move
    state = {k: v.detach().clone() for k, v in trained.state_dict().items()}

    fresh = build(name, seed=99)  # other random initial weights: only the loaded state may agree
    fresh.load_state_dict(state)
    assert_same_state(trained, fresh)
    a, b = step(trained, name, model, SECOND), step(fresh, name, model, SECOND)
    assert torch.equal(a.loss, b.loss), f"{name}: {float(a.loss)} != {float(b.loss)} after loading the state"
    assert a.figures == b.figures


@pytest.mark.parametrize("name", NAMES)
def test_setup_twice_equals_setup_once(name: str) -> None:
    once, twice = build(name), build(name, setups=2)
    assert_same_state(once, twice)
    model = TinyModel()
    a, b = step(once, name, model, FIRST), step(twice, name, model, FIRST)
    assert torch.equal(a.loss, b.loss) and a.figures == b.figures
    assert_same_state(once, twice)


ACCUMULABLE = [name for name in NAMES if name in ROWS and build(name).depends_only_on_per_sample_loss]
"""The objectives (with their contract-row options) that claim ``depends_only_on_per_sample_loss``:
FairTrainer accumulates their gradient exactly over micro-batches, which the next test checks."""


def test_the_exact_accumulation_claim_is_made_where_expected() -> None:
    assert {"erm", "minmaxgap"} <= set(ACCUMULABLE)
    assert not {"adv", "madv", "lff", "disent", "two_sided"} & set(ACCUMULABLE)


@pytest.mark.parametrize("name", ACCUMULABLE)
def test_one_batch_equals_two_accumulated_halves(name: str) -> None:
    objective = build(name)
    assert objective.depends_only_on_per_sample_loss
    data = DATA[row_for(name).groups]
    model = TinyModel()
    params = list(model.parameters())
    accumulating = build(name)  # the same state: the same seed

    whole = step(objective, name, model, slice(0, 8))
    expected = torch.autograd.grad(whole.loss, params)

    halves = [slice(0, 4), slice(4, 8)]
    with torch.no_grad():  # FairTrainer._step_weights: per-sample losses and group ids only
        losses = [model(data.x[h], data.labels[h])["per_sample_loss"] for h in halves]
    leaf = torch.cat(losses).requires_grad_(True)
    torch.manual_seed(7)
    pre = accumulating(ObjectiveInputs(per_sample_loss=leaf, group_ids=torch.cat([data.group_ids[h] for h in halves])))
    (weights,) = torch.autograd.grad(pre.loss, leaf)
    for h, w in zip(halves, torch.split(weights, [4, 4])):  # FairTrainer.compute_loss with pending weights
        (w * model(data.x[h], data.labels[h])["per_sample_loss"]).sum().backward()

    assert float(pre.loss.detach()) == pytest.approx(float(whole.loss.detach()), rel=1e-6)
    assert pre.figures == pytest.approx(whole.figures)
    for p, g in zip(params, expected):
        torch.testing.assert_close(p.grad, g)
    assert_same_state(objective, accumulating, exact=False)  # the half batches' losses round differently
