"""Reweighting, downsampling, group-balanced sampling, group DRO (gdro, gadro, pgdro) and gap
regularisation (gr).

One table (``METHOD_ROWS``) trains the EMO-SUPERB head with FairTrainer for every method on data
built so that the method must change the outcome against ERM, and asserts the direction; focused
unit tests check values and gradients against hand-written formulas, the state in state_dict, and
2-rank (gloo) == 1-process.

The top-level imports stay light (no transformers): the 2-rank workers import this module.
"""
from __future__ import annotations

import functools
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from llmfair.errors import ConfigError, DataError
from llmfair.objectives import OBJECTIVES, GroupSpec, ObjectiveInputs, TrainingStats, build_objective
from llmfair.objectives import gdro as _gdro  # noqa: F401  (registers gdro, gadro)
from llmfair.objectives import gr as _gr  # noqa: F401  (registers gr)
from llmfair.objectives import pgdro as _pgdro  # noqa: F401  (registers pgdro)
from llmfair.objectives import rw as _rw  # noqa: F401  (registers rw)
from llmfair.objectives.rw import reweighting_weights

F, M = 0, 1  # group ids of gender_spec()


def gender_spec() -> GroupSpec:
    spec, _ = GroupSpec.from_records([{"gender": "female"}, {"gender": "male"}], ("gender",))
    assert spec.groups == (("female",), ("male",))
    return spec


def sampling():
    """llmfair.training.group_sampling, imported on use (llmfair.training pulls in transformers)."""
    from llmfair.training import group_sampling

    return group_sampling


def leaf(values, dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype, requires_grad=True)


# =============================================================================== RW
def test_rw_weights_are_n_c_over_n_cg_and_empty_cells_get_zero() -> None:
    spec = gender_spec()
    # classes 0..2 × (F, M); class 2 has no female training row
    counts = np.array([[12, 240], [4, 86], [0, 5]])
    classes = np.repeat([0, 0, 1, 1, 2, 2], counts.reshape(-1))
    groups = np.repeat([F, M, F, M, F, M], counts.reshape(-1))
    obj = build_objective("rw", spec)
    obj.setup(TrainingStats.from_arrays(groups, classes, 2, 3))
    expected_table = np.array([[252 / 12, 252 / 240], [90 / 4, 90 / 86], [0.0, 5 / 5]])
    np.testing.assert_allclose(obj.cell_weights.numpy(), expected_table, rtol=0, atol=1e-12)
    np.testing.assert_allclose(reweighting_weights(counts), expected_table, rtol=0, atol=1e-12)

    # a batch: hard labels and soft labels (majority = argmax), one row in the empty cell (2, F)
    labels = torch.tensor([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1],
                           [0.1, 0.1, 0.8], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]])
    ids = torch.tensor([F, M, F, M, F, M, M])
    omega = np.array([21.0, 1.05, 22.5, 90 / 86, 0.0, 1.0, 1.05])
    theta = leaf([0.3, -1.2, 0.5, 2.0, 0.7, -0.1, 1.1])
    loss_i = torch.nn.functional.softplus(theta)
    inputs = ObjectiveInputs(loss_i, ids, labels=labels)
    np.testing.assert_allclose(obj.sample_weights(inputs).numpy(), omega, rtol=1e-12)
    out = obj(inputs)
    (grad,) = torch.autograd.grad(out.loss, theta)
    w = torch.tensor(omega)
    reference = (w * torch.nn.functional.softplus(theta)).sum() / w.sum()
    (ref_grad,) = torch.autograd.grad(reference, theta)
    torch.testing.assert_close(out.loss, reference)
    torch.testing.assert_close(grad, ref_grad)
    assert grad[4] == 0.0  # the empty cell's row carries no weight
    assert out.figures["rw_loss"] == pytest.approx(float(reference.detach()))

    batch_norm = build_objective("rw", spec, {"normalise": "batch"})
    batch_norm.setup(TrainingStats.from_arrays(groups, classes, 2, 3))
    out = batch_norm(ObjectiveInputs(torch.nn.functional.softplus(theta), ids, labels=labels.argmax(1)))
    torch.testing.assert_close(out.loss, (w * torch.nn.functional.softplus(theta)).sum() / 7)


def test_rw_collapses_other_attributes_and_refuses_without_setup() -> None:
    records = [{"language": l, "gender": g} for l in ("deu", "eng") for g in ("female", "male")]
    spec, _ = GroupSpec.from_records(records, ("language", "gender"))  # ids: deu/f, deu/m, eng/f, eng/m
    obj = build_objective("rw", spec)
    with pytest.raises(ConfigError, match="call setup"):
        obj(ObjectiveInputs(torch.ones(2), torch.tensor([0, 1]), labels=torch.tensor([0, 0])))
    groups = np.array([0, 0, 2, 1, 1, 1, 3, 3])  # class 0: female 3, male 5
    obj.setup(TrainingStats.from_arrays(groups, np.zeros(8, dtype=int), 4, 2))
    np.testing.assert_allclose(obj.cell_weights.numpy()[0], [8 / 3, 8 / 5])
    with pytest.raises(DataError, match="outside"):
        obj(ObjectiveInputs(torch.ones(1), torch.tensor([0]), labels=torch.tensor([5])))
    with pytest.raises(ConfigError, match="normalise"):
        build_objective("rw", spec, {"normalise": "sum"})


# =============================================================================== DS and group-balanced
IDI_FOLD1_1TO20 = {  # METHODS.md §1.6, IDI Table A2: (F, M) per emotion
    "angry": (12, 240), "disgust": (4, 86), "fear": (127, 6), "happy": (102, 5), "neutral": (54, 1080), "sad": (58, 2),
}


def idi_fold1_arrays() -> tuple[np.ndarray, np.ndarray]:
    counts = np.array(list(IDI_FOLD1_1TO20.values()))
    classes = np.repeat(np.repeat(np.arange(6), 2), counts.reshape(-1))
    groups = np.repeat(np.tile([F, M], 6), counts.reshape(-1))
    rng = np.random.default_rng(7)
    order = rng.permutation(len(classes))  # rows in no particular order
    return classes[order], groups[order]


def test_ds_equalises_cells_reproduces_idi_166_and_is_deterministic() -> None:
    gs = sampling()
    classes, groups = idi_fold1_arrays()
    assert len(classes) == 1776
    kept = gs.downsample_indices(classes, groups, seed=3)
    assert len(kept) == 166
    assert len(np.unique(kept)) == len(kept) and np.all(np.diff(kept) > 0)
    table = np.zeros((6, 2), dtype=int)
    np.add.at(table, (classes[kept], groups[kept]), 1)
    minority = np.array(list(IDI_FOLD1_1TO20.values())).min(axis=1)
    np.testing.assert_array_equal(table, np.stack([minority, minority], axis=1))
    np.testing.assert_array_equal(kept, gs.downsample_indices(classes, groups, seed=3))
    other = gs.downsample_indices(classes, groups, seed=4)
    assert len(other) == 166 and not np.array_equal(kept, other)

    sampler = gs.build_sampler("ds", classes, groups, seed=3)
    assert sorted(sampler) == kept.tolist()  # one epoch = the kept rows once each


def test_ds_empty_group_warns_and_keeps_the_class(caplog) -> None:
    gs = sampling()
    classes = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, -1])
    groups = np.array([0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 2, 2])  # class 0 lacks group 2; class 1 lacks group 1
    with caplog.at_level(logging.WARNING, logger="llmfair.training.group_sampling"):
        kept = gs.downsample_indices(classes, groups, seed=0)
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "class 0 has no row of group(s) [2]" in messages and "class 1 has no row of group(s) [1]" in messages
    assert "1 row(s) without a single class" in messages
    table = np.zeros((2, 3), dtype=int)
    np.add.at(table, (classes[kept], groups[kept]), 1)
    np.testing.assert_array_equal(table, [[2, 2, 0], [1, 0, 1]])  # m_0 = min(2, 3), m_1 = min(5, 1)


def test_group_balanced_sampler_draws_groups_equally() -> None:
    gs = sampling()
    classes, groups = idi_fold1_arrays()
    weights = gs.group_balanced_weights(classes, groups)
    np.testing.assert_allclose(weights, np.where(groups == F, 1 / 357, 1 / 1419))
    cells = gs.group_balanced_weights(classes, groups, by="class_gender")
    np.testing.assert_allclose(cells, 1 / np.array(list(IDI_FOLD1_1TO20.values()))[classes, groups])

    sampler = gs.build_sampler("group_balanced", classes, groups, seed=0, num_samples=20000)
    drawn = np.fromiter(iter(sampler), dtype=np.int64)
    assert len(drawn) == 20000
    share_female = float(np.mean(groups[drawn] == F))
    assert abs(share_female - 0.5) < 0.02  # natural share is 357/1776 = 0.20
    np.testing.assert_array_equal(drawn, np.fromiter(iter(gs.build_sampler(
        "group_balanced", classes, groups, seed=0, num_samples=20000)), dtype=np.int64))

    with pytest.raises(ConfigError, match="unknown sampler 'nope'"):
        gs.build_sampler("nope", classes, groups)
    with pytest.raises(ConfigError, match="registered twice"):
        gs.register_sampler("ds")(gs.downsampling_sampler)
    with pytest.raises(ConfigError, match="unexpected keyword"):
        gs.build_sampler("ds", classes, groups, by="gender")
    with pytest.raises(DataError, match="shapes"):
        gs.downsample_indices(classes, groups[:-1])


# =============================================================================== GDRO / GADRO
def test_gdro_one_step_equals_the_formula_by_hand() -> None:
    spec = gender_spec()
    obj = build_objective("gdro", spec, {"step_size": 0.5})
    ids = torch.tensor([F, M, F, M, M])
    theta = leaf([1.0, 0.2, 3.0, 0.4, 0.6])
    out = obj(ObjectiveInputs(theta * 1.0, ids))
    mean_f, mean_m = (1.0 + 3.0) / 2, (0.2 + 0.4 + 0.6) / 3
    q = np.array([0.5 * np.exp(0.5 * mean_f), 0.5 * np.exp(0.5 * mean_m)])
    q /= q.sum()
    np.testing.assert_allclose(obj.adv_probs.numpy(), q, rtol=1e-12)
    assert float(out.loss.detach()) == pytest.approx(q[0] * mean_f + q[1] * mean_m, rel=1e-12)
    (grad,) = torch.autograd.grad(out.loss, theta)
    np.testing.assert_allclose(grad.numpy(), [q[0] / 2, q[1] / 3, q[0] / 2, q[1] / 3, q[1] / 3], rtol=1e-12)
    assert out.figures["q/female"] == pytest.approx(q[0]) and out.figures["group_loss/male"] == pytest.approx(mean_m)

    # a group absent from the batch has mean 0 (the reference), so its weight is multiplied by 1
    out = obj(ObjectiveInputs(leaf([2.0, 4.0]), torch.tensor([F, F])))
    q2 = q * np.exp(0.5 * np.array([3.0, 0.0]))
    q2 /= q2.sum()
    np.testing.assert_allclose(obj.adv_probs.numpy(), q2, rtol=1e-12)
    assert float(out.loss.detach()) == pytest.approx(q2[0] * 3.0)
    assert "group_loss/male" not in out.figures

    obj.eval()  # evaluation never moves q
    obj(ObjectiveInputs(leaf([9.0]), torch.tensor([F])))
    np.testing.assert_allclose(obj.adv_probs.numpy(), q2, rtol=1e-12)


def test_gdro_moves_q_to_the_group_with_higher_loss() -> None:
    spec = gender_spec()
    obj = build_objective("gdro", spec)  # η = 0.01
    rng = np.random.default_rng(0)
    history = []
    for _ in range(30):
        ids = torch.tensor(rng.integers(0, 2, 16))
        loss = torch.where(ids == F, 2.0, 0.5) + 0.1 * torch.tensor(rng.random(16))
        obj(ObjectiveInputs(loss, ids))
        history.append(float(obj.adv_probs[F]))
    assert obj.adv_probs[F] > obj.adv_probs[M]
    assert np.all(np.diff(history) > 0)
    assert history[-1] == pytest.approx(1 / (1 + np.exp(-0.01 * 1.5 * 30)), abs=0.01)


def test_gdro_class_gender_groups() -> None:
    spec = gender_spec()
    obj = build_objective("gdro", spec, {"groups": "class_gender", "step_size": 1.0})
    classes, groups = np.array([0, 0, 1, 1, 2]), np.array([F, M, F, M, M])
    obj.setup(TrainingStats.from_arrays(groups, classes, 2, 3))
    # (2, F) has no training row: q = 0 there from the start
    np.testing.assert_allclose(obj.adv_probs.numpy(), [0.2, 0.2, 0.2, 0.2, 0.0, 0.2])
    labels = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.2, 0.7], [0.1, 0.2, 0.7], [0.2, 0.6, 0.2]])
    ids = torch.tensor([F, M, M, F])
    out = obj(ObjectiveInputs(torch.tensor([1.0, 2.0, 4.0, 0.5]), ids, labels=labels))
    means = np.array([1.0, 0.0, 0.5, 0.0, 0.0, 3.0])  # cells c·2 + g
    q = np.array([0.2, 0.2, 0.2, 0.2, 0.0, 0.2]) * np.exp(means)
    q /= q.sum()
    np.testing.assert_allclose(obj.adv_probs.numpy(), q, rtol=1e-12)
    assert float(out.loss.detach()) == pytest.approx(float(q @ means), rel=1e-6)
    assert set(k for k in out.figures if k.startswith("q/")) == {f"q/c{c}/{g}" for c in range(3) for g in ("female", "male")}
    with pytest.raises(ConfigError, match="groups='cell'"):
        build_objective("gdro", spec, {"groups": "cell"})


def test_gadro_adjustment_favours_the_small_group() -> None:
    spec = gender_spec()
    groups = np.r_[np.full(10, F), np.full(1000, M)]
    stats = TrainingStats.from_arrays(groups, np.zeros(1010, dtype=int), 2, 1)
    plain, adjusted = build_objective("gdro", spec), build_objective("gadro", spec)  # C = 4
    plain.setup(stats)
    adjusted.setup(stats)
    ids = torch.tensor([F, M, M, M])
    loss = torch.tensor([1.0, 1.0, 1.0, 1.0])  # equal losses: only the adjustment can move q
    for step in range(5):
        plain(ObjectiveInputs(loss, ids))
        out = adjusted(ObjectiveInputs(loss, ids))
    np.testing.assert_allclose(plain.adv_probs.numpy(), [0.5, 0.5])
    bonus = 0.01 * 5 * np.array([4 / np.sqrt(10), 4 / np.sqrt(1000)])
    q = np.exp(bonus) / np.exp(bonus).sum()
    np.testing.assert_allclose(adjusted.adv_probs.numpy(), q, rtol=1e-12)
    assert adjusted.adv_probs[F] > plain.adv_probs[F]
    # the logged robust loss leaves the constant C/√n_g out (the reference's returned loss has it)
    assert out.figures["robust_loss"] == pytest.approx(1.0)

    with pytest.raises(ConfigError, match="call setup"):
        build_objective("gadro", spec)(ObjectiveInputs(loss, ids))
    zero = build_objective("gadro", spec, {"adjustment": 0.0})
    zero.setup(stats)
    zero(ObjectiveInputs(loss, ids))
    np.testing.assert_allclose(zero.adv_probs.numpy(), [0.5, 0.5])


# =============================================================================== PGDRO
def test_pgdro_with_one_hot_memberships_is_gdro() -> None:
    spec = gender_spec()
    rng = np.random.default_rng(1)
    n, k = 60, 3
    groups, classes = rng.integers(0, 2, n), rng.integers(0, k, n)
    stats = TrainingStats.from_arrays(groups, classes, 2, k)
    for options in ({"adjustment": 2.0}, {"groups": "class_gender", "adjustment": 2.0}):
        hard = build_objective("gadro", spec, options)
        soft = build_objective("pgdro", spec, options)
        hard.setup(stats)
        soft.set_group_probabilities(np.eye(2)[groups], classes=classes)
        soft.setup(stats)
        np.testing.assert_allclose(soft.train_counts.numpy(), hard.train_counts.numpy())
        for step in range(4):
            index = torch.tensor(rng.choice(n, 16, replace=False))
            theta_h = leaf(rng.normal(size=16))
            theta_s = theta_h.detach().clone().requires_grad_(True)
            labels = torch.tensor(classes)[index]
            out_h = hard(ObjectiveInputs(torch.exp(theta_h), torch.tensor(groups)[index], labels=labels))
            out_s = soft(ObjectiveInputs(torch.exp(theta_s), torch.tensor(groups)[index], labels=labels, sample_index=index))
            torch.testing.assert_close(soft.adv_probs, hard.adv_probs, rtol=1e-12, atol=1e-15)
            torch.testing.assert_close(out_s.loss, out_h.loss, rtol=1e-12, atol=1e-15)
            torch.testing.assert_close(torch.autograd.grad(out_s.loss, theta_s)[0], torch.autograd.grad(out_h.loss, theta_h)[0],
                                       rtol=1e-12, atol=1e-15)


def test_pgdro_soft_counts_and_means_by_hand() -> None:
    spec = gender_spec()
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.5, 0.5], [0.0, 1.0]])
    obj = build_objective("pgdro", spec, {"step_size": 1.0, "adjustment": 1.0})
    obj.set_group_probabilities(probs)
    n_train = probs.sum(0)  # soft training counts [1.7, 2.3]
    np.testing.assert_allclose(obj.train_counts.numpy(), n_train)
    index = torch.tensor([0, 1, 3])
    loss = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    out = obj(ObjectiveInputs(loss, torch.zeros(3, dtype=torch.long), sample_index=index))
    p = probs[[0, 1, 3]]
    means = (p * loss.numpy()[:, None]).sum(0) / p.sum(0)  # soft batch counts 1.2 and 1.8
    q = 0.5 * np.exp(means + 1.0 / np.sqrt(n_train))
    q /= q.sum()
    np.testing.assert_allclose(obj.adv_probs.numpy(), q, rtol=1e-6)
    assert float(out.loss.detach()) == pytest.approx(float(q @ means), rel=1e-6)

    with pytest.raises(DataError, match="row 1"):
        obj.set_group_probabilities([[0.5, 0.5], [0.6, 0.6]])
    with pytest.raises(DataError, match="sample_index"):
        obj(ObjectiveInputs(loss, torch.zeros(3, dtype=torch.long)))
    with pytest.raises(DataError, match=r"sample_index \[7\]"):
        obj(ObjectiveInputs(loss, torch.zeros(3, dtype=torch.long), sample_index=torch.tensor([0, 1, 7])))
    with pytest.raises(ConfigError, match="set_group_probabilities"):
        build_objective("pgdro", spec)(ObjectiveInputs(loss, torch.zeros(3, dtype=torch.long), sample_index=index))


# =============================================================================== GR
def explicit_gr(loss: torch.Tensor, ids: torch.Tensor, form: str) -> torch.Tensor:
    """The penalty written out: masks, means, |·| or (·)², or fairlib's GDL loop (DyBTObj="g")."""
    mean_f, mean_m = loss[ids == F].mean(), loss[ids == M].mean()
    if form == "abs":
        return (mean_f - mean_m).abs()
    if form == "square":
        return (mean_f - mean_m) ** 2
    overall, gd = loss.mean(), loss.new_zeros(())
    for group_mean in (mean_f, mean_m):
        if group_mean > overall:
            gd = gd + group_mean
        elif group_mean < overall:
            gd = gd - group_mean
    return gd


@pytest.mark.parametrize("form", ["abs", "square", "gdl"])
def test_gr_gradient_equals_autograd_of_the_explicit_formula(form: str) -> None:
    spec = gender_spec()
    rng = np.random.default_rng(2)
    ids = torch.tensor(rng.integers(0, 2, 20))
    theta = leaf(rng.normal(size=20))
    obj = build_objective("gr", spec, {"lambda_gr": 0.7, "form": form})
    out = obj(ObjectiveInputs(torch.nn.functional.softplus(theta), ids))
    (grad,) = torch.autograd.grad(out.loss, theta)
    loss = torch.nn.functional.softplus(theta)
    reference = loss.mean() + 0.7 * explicit_gr(loss, ids, form)
    (ref_grad,) = torch.autograd.grad(reference, theta)
    torch.testing.assert_close(grad, ref_grad)
    torch.testing.assert_close(out.loss, reference)
    assert out.figures["gr_term"] == pytest.approx(float(explicit_gr(loss, ids, form).detach()))


def test_gr_gdl_per_class_matches_fairlib_eo_loop() -> None:
    spec = gender_spec()
    rng = np.random.default_rng(4)
    ids = torch.tensor(rng.integers(0, 2, 30))
    classes = torch.tensor(rng.integers(0, 3, 30))
    classes[ids == F] = torch.where(classes[ids == F] == 2, 0, classes[ids == F])  # class 2: males only
    theta = leaf(rng.normal(size=30))
    obj = build_objective("gr", spec, {"form": "gdl", "gdl_reference": "class", "lambda_gr": 2.0})
    assert not obj.depends_only_on_per_sample_loss
    logits = torch.zeros(30, 3)
    out = obj(ObjectiveInputs(torch.exp(theta), ids, logits=logits, labels=classes))
    loss = torch.exp(theta)
    gd = loss.new_zeros(())
    for y in range(3):  # fairlib DyBTObj="EO": each (y, g) cell against its class's loss
        y_loss = loss[classes == y].mean()
        for g in (F, M):
            cell = (classes == y) & (ids == g)
            if cell.any():
                if loss[cell].mean() > y_loss:
                    gd = gd + loss[cell].mean()
                elif loss[cell].mean() < y_loss:
                    gd = gd - loss[cell].mean()
    reference = loss.mean() + 2.0 * gd
    torch.testing.assert_close(out.loss, reference)
    torch.testing.assert_close(torch.autograd.grad(out.loss, theta)[0], torch.autograd.grad(reference, theta)[0])


def test_gr_skips_the_term_when_a_gender_is_absent_and_ignores_unknown() -> None:
    records = [{"gender": g} for g in ("female", "male", "unknown")]
    spec, _ = GroupSpec.from_records(records, ("gender",))
    obj = build_objective("gr", spec, {"lambda_gr": 5.0})
    theta = leaf([1.0, 2.0, 3.0])
    out = obj(ObjectiveInputs(theta * 1.0, torch.tensor([0, 0, 2])))  # no male
    torch.testing.assert_close(torch.autograd.grad(out.loss, theta)[0], torch.full((3,), 1 / 3, dtype=torch.float64))
    assert out.figures["gr_term"] == 0.0
    out = obj(ObjectiveInputs(torch.tensor([1.0, 3.0, 50.0]), torch.tensor([0, 1, 2])))
    assert out.figures["gr_term"] == pytest.approx(2.0)
    spec_no_gender, _ = GroupSpec.from_records([{"cluster": "0"}, {"cluster": "1"}], ("cluster",))
    with pytest.raises(ConfigError, match="no 'gender' attribute"):
        build_objective("gr", spec_no_gender)


# =============================================================================== state and registry
def _stepped(name: str, options: dict) -> Any:
    spec = gender_spec()
    rng = np.random.default_rng(5)
    groups, classes = rng.integers(0, 2, 40), rng.integers(0, 3, 40)
    obj = build_objective(name, spec, options)
    obj.setup(TrainingStats.from_arrays(groups, classes, 2, 3))
    if name == "pgdro":
        obj.set_group_probabilities(np.eye(2)[groups] * 0.8 + 0.1, classes=classes)
    index = torch.arange(12)
    loss = torch.tensor(rng.random(12))
    obj(ObjectiveInputs(loss, torch.tensor(groups[:12]), logits=torch.zeros(12, 3),
                        labels=torch.tensor(classes[:12]), sample_index=index))
    return obj


STATE = [
    ("rw", {}, {"cell_weights"}),
    ("gdro", {}, {"adv_probs", "exp_avg_loss", "exp_avg_initialized", "train_counts"}),
    ("gdro", {"groups": "class_gender"}, {"adv_probs", "exp_avg_loss", "exp_avg_initialized", "train_counts"}),
    ("gadro", {}, {"adv_probs", "exp_avg_loss", "exp_avg_initialized", "train_counts"}),
    ("pgdro", {"groups": "class_gender", "adjustment": 1.0},
     {"adv_probs", "exp_avg_loss", "exp_avg_initialized", "train_counts", "group_probs", "train_classes"}),
    ("gr", {}, set()),  # stateless
]


@pytest.mark.parametrize("name,options,keys", STATE, ids=[f"{r[0]}-{r[1]}" for r in STATE])
def test_state_is_checkpointable(tmp_path, name: str, options: dict, keys: set) -> None:
    from safetensors.torch import load_file, save_file

    obj = _stepped(name, options)
    state = obj.state_dict()
    assert set(state) == keys
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "state.safetensors"))
    fresh = build_objective(name, gender_spec(), options)  # no setup: shapes come from the checkpoint
    fresh.load_state_dict(load_file(str(tmp_path / "state.safetensors")))
    for key in keys:
        torch.testing.assert_close(getattr(fresh, key), state[key], rtol=0, atol=0)
    if name in ("gdro", "gadro"):  # the restored objective continues exactly like the original
        ids, loss = torch.tensor([F, M, M]), torch.tensor([1.0, 0.2, 0.3], dtype=torch.float64)
        labels = torch.tensor([0, 1, 2])
        a = obj(ObjectiveInputs(loss, ids, labels=labels, logits=torch.zeros(3, 3)))
        b = fresh(ObjectiveInputs(loss, ids, labels=labels, logits=torch.zeros(3, 3)))
        assert a.figures == b.figures


def test_registered_names_and_option_errors() -> None:
    assert {"rw", "gdro", "gadro", "pgdro", "gr"} <= set(OBJECTIVES)
    spec = gender_spec()
    assert build_objective("gadro", spec).options.adjustment == 4.0
    assert build_objective("gdro", spec).options.step_size == 0.01
    assert build_objective("gdro", spec).depends_only_on_per_sample_loss
    assert not build_objective("gdro", spec, {"groups": "class_gender"}).depends_only_on_per_sample_loss
    assert OBJECTIVES["gr"].reconstructed and not OBJECTIVES["gdro"].reconstructed
    for name, options, match in [("gdro", {"step_size": 0.0}, "step_size"), ("gadro", {"adjustment": -1.0}, "adjustment"),
                                 ("gdro", {"adjustment": 4.0}, "unknown key"), ("gr", {"form": "max"}, "form"),
                                 ("gr", {"gdl_reference": "cell"}, "gdl_reference"), ("pgdro", {"gamma": 0.0}, "gamma")]:
        with pytest.raises(ConfigError, match=match):
            build_objective(name, spec, options)


# =============================================================================== 2 ranks == 1 process
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dist_batches(steps: int = 3, n: int = 30):
    rng = np.random.default_rng(11)
    groups, classes = rng.integers(0, 2, 200), rng.integers(0, 3, 200)
    batches = [(rng.integers(0, 200, n), rng.normal(size=n)) for _ in range(steps)]
    return groups, classes, batches


DIST_CASES = [("gdro", {"step_size": 0.3}), ("gadro", {"groups": "class_gender"}), ("rw", {}),
              ("gr", {"form": "square"}), ("pgdro", {"step_size": 0.3})]


def _run_case(name: str, options: dict, part: slice | None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Steps of one objective on (a shard of) the same batches; the gradients and final q."""
    groups, classes, batches = _dist_batches()
    obj = build_objective(name, gender_spec(), options)
    obj.setup(TrainingStats.from_arrays(groups, classes, 2, 3))
    if name == "pgdro":
        obj.set_group_probabilities(np.eye(2)[groups] * 0.7 + 0.15, classes=classes)
    grads = []
    for index, values in batches:
        index, theta = torch.tensor(index), leaf(values)
        rows = slice(None) if part is None else part
        theta_local = theta.detach()[rows].clone().requires_grad_(True)
        out = obj(ObjectiveInputs(torch.nn.functional.softplus(theta_local), torch.tensor(groups)[index][rows],
                                  logits=torch.zeros(len(theta_local), 3), labels=torch.tensor(classes)[index][rows],
                                  sample_index=index[rows]))
        (grad,) = torch.autograd.grad(out.loss, theta_local)
        full = torch.zeros(len(theta), dtype=theta.dtype)
        full[rows] = grad
        grads.append(full)
    q = getattr(obj, "adv_probs", torch.zeros(0))
    return grads, q.clone()


def _rank_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        part = slice(0, 19) if rank == 0 else slice(19, 30)  # unequal shards on purpose
        result = {}
        for name, options in DIST_CASES:
            grads, q = _run_case(name, options, part)
            for step, g in enumerate(grads):
                g = g / world  # what DDP's averaging does to each rank's gradient
                torch.distributed.all_reduce(g)
                result[f"{name}/grad{step}"] = g
            result[f"{name}/q"] = q
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def test_two_ranks_give_the_single_process_q_and_gradients(tmp_path) -> None:
    mp.spawn(_rank_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name, options in DIST_CASES:
        grads, q = _run_case(name, options, None)
        for step, g in enumerate(grads):
            torch.testing.assert_close(ranks[0][f"{name}/grad{step}"], g, msg=f"{name} step {step}")
        torch.testing.assert_close(ranks[0][f"{name}/q"], q, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(ranks[1][f"{name}/q"], q, rtol=1e-12, atol=1e-15)  # identical on all ranks
    assert ranks[0]["gdro/q"].numel() == 2 and ranks[0]["gadro/q"].numel() == 6


# =============================================================================== the method table
@dataclass(frozen=True)
class Built:
    train_x: np.ndarray
    train_classes: np.ndarray
    train_groups: np.ndarray
    test_x: np.ndarray
    test_classes: np.ndarray
    test_groups: np.ndarray


def shortcut_data(seed: int = 0) -> Built:
    """A gender–emotion shortcut: in train, class 0 is 10:1 male and class 1 10:1 female; in test
    gender and class are independent. Feature 0 is a clean gender direction, feature 1 a noisier
    true class signal, the rest noise."""
    rng = np.random.default_rng(seed)

    def draw(cells):
        classes = np.concatenate([np.full(n, c) for c, g, n in cells])
        groups = np.concatenate([np.full(n, g) for c, g, n in cells])
        x = rng.normal(size=(len(classes), 8))
        x[:, 0] = (2 * groups - 1) + 0.3 * rng.normal(size=len(classes))
        x[:, 1] = (2 * classes - 1) * 0.6 + rng.normal(size=len(classes))
        return x.astype(np.float32), classes, groups

    train = draw([(0, M, 200), (0, F, 20), (1, F, 200), (1, M, 20)])
    test = draw([(c, g, 150) for c in (0, 1) for g in (F, M)])
    return Built(*train, *test)


def minority_data(seed: int = 0) -> Built:
    """A small group with its own rule: 400 male rows whose class follows feature 1 and 40 female
    rows whose class follows feature 2 (a linear head cannot serve both fully, ERM serves men)."""
    rng = np.random.default_rng(seed)

    def draw(n_male, n_female):
        groups = np.r_[np.full(n_male, M), np.full(n_female, F)]
        x = rng.normal(size=(len(groups), 8))
        x[:, 0] = (2 * groups - 1) + 0.3 * rng.normal(size=len(groups))
        score = np.where(groups == M, x[:, 1], x[:, 2]) + 0.3 * rng.normal(size=len(groups))
        return x.astype(np.float32), (score > 0).astype(np.int64), groups

    return Built(*draw(400, 40), *draw(300, 300))


def tpr_gap_rms(head: torch.nn.Module, data: Built, tmp_path) -> float:
    """RMS over classes of the male − female TPR gap on the test rows (llmfair.metrics)."""
    from llmfair.metrics import fairness_summary
    from llmfair.predictions import write_predictions

    with torch.no_grad():
        probs = torch.softmax(head(torch.tensor(data.test_x))["logits"], dim=1).double().numpy()
    n = len(data.test_classes)
    pred = write_predictions(tmp_path / "predictions.csv", ids=[str(i) for i in range(n)], split="test", language="eng",
                             modality="audio", gender=np.where(data.test_groups == M, "male", "female"),
                             speaker=[f"s{i}" for i in range(n)], classes=("low", "high"), probs=probs,
                             labels=data.test_classes)
    return float(fairness_summary(pred)["tpr_gap_rms"])


def female_accuracy(head: torch.nn.Module, data: Built, tmp_path) -> float:
    """Test accuracy of the small (female) group."""
    with torch.no_grad():
        predicted = head(torch.tensor(data.test_x))["logits"].argmax(1).numpy()
    female = data.test_groups == F
    return float(np.mean(predicted[female] == data.test_classes[female]))


def train_loss_gap(head: torch.nn.Module, data: Built, tmp_path) -> float:
    """|mean training loss of women − of men| after training."""
    with torch.no_grad():
        out = head(torch.tensor(data.train_x), torch.tensor(data.train_classes))
    loss = out["per_sample_loss"].numpy()
    return float(abs(loss[data.train_groups == F].mean() - loss[data.train_groups == M].mean()))


def lower_than_half(value: float, erm: float) -> bool:
    return value < 0.5 * erm


def higher_by_005(value: float, erm: float) -> bool:
    return value > erm + 0.05


@dataclass(frozen=True)
class MethodRow:
    """One method, its options, the data built to show its effect and the direction against ERM."""

    method: str
    options: dict
    data: Callable[[], Built]
    metric: Callable[..., float]
    holds: Callable[[float, float], bool]
    sampler: tuple[str, dict] | None = None  # data-level methods train ERM on a sampler
    confidence: float = 0.85  # pgdro: the gender model's probability on the true gender


METHOD_ROWS = [
    MethodRow("rw", {}, shortcut_data, tpr_gap_rms, lower_than_half),
    MethodRow("gadro", {"groups": "class_gender"}, shortcut_data, tpr_gap_rms, lower_than_half),
    MethodRow("gdro", {"groups": "class_gender"}, shortcut_data, tpr_gap_rms, lower_than_half),
    MethodRow("pgdro", {"groups": "class_gender"}, shortcut_data, tpr_gap_rms, lower_than_half, confidence=0.98),
    MethodRow("gr", {"form": "gdl", "gdl_reference": "class"}, shortcut_data, tpr_gap_rms, lower_than_half),
    MethodRow("erm", {}, shortcut_data, tpr_gap_rms, lower_than_half, sampler=("ds", {})),
    MethodRow("erm", {}, shortcut_data, tpr_gap_rms, lower_than_half, sampler=("group_balanced", {"by": "class_gender"})),
    MethodRow("gdro", {}, minority_data, female_accuracy, higher_by_005),
    MethodRow("gadro", {}, minority_data, female_accuracy, higher_by_005),
    MethodRow("pgdro", {"adjustment": 4.0}, minority_data, female_accuracy, higher_by_005, confidence=0.95),
    MethodRow("erm", {}, minority_data, female_accuracy, higher_by_005, sampler=("group_balanced", {})),
    MethodRow("gr", {}, minority_data, train_loss_gap, lower_than_half),
    MethodRow("gr", {"form": "square", "lambda_gr": 3.0}, minority_data, train_loss_gap, lower_than_half),
]


def train_head(method: str, options: dict, data: Built, out_dir: str, sampler: tuple[str, dict] | None = None,
               confidence: float = 0.85, steps: int = 300) -> torch.nn.Module:
    """Train the EMO-SUPERB head (CE, projector 32) with FairTrainer and the given objective/sampler."""
    import transformers

    from llmfair.ssl.head import EmoSuperbHead, HeadOptions
    from llmfair.training import FairTrainer, FairTrainingArguments

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(1)
    n = len(data.train_classes)
    rows = [{"features": torch.from_numpy(data.train_x[i]), "labels": int(data.train_classes[i]),
             "group_ids": int(data.train_groups[i]), "sample_index": i} for i in range(n)]
    objective = build_objective(method, gender_spec(), options)
    objective.setup(TrainingStats.from_arrays(data.train_groups, data.train_classes, 2, 2))
    if method == "pgdro":  # a gender model's probabilities, ``confidence`` on the true gender
        probs = np.where(np.eye(2)[data.train_groups] > 0, confidence, 1 - confidence)
        objective.set_group_probabilities(probs, classes=data.train_classes)
    train_sampler = sampling().build_sampler(sampler[0], data.train_classes, data.train_groups, seed=0,
                                             **sampler[1]) if sampler else None

    def collate(batch):
        return {"features": torch.stack([r["features"] for r in batch]),
                "labels": torch.tensor([r["labels"] for r in batch]),
                "group_ids": torch.tensor([r["group_ids"] for r in batch]),
                "sample_index": torch.tensor([r["sample_index"] for r in batch])}

    torch.manual_seed(0)
    head = EmoSuperbHead(8, 2, options=HeadOptions(loss="ce", projector_dim=32))
    args = FairTrainingArguments(output_dir=out_dir, per_device_train_batch_size=32, max_steps=steps, learning_rate=1e-2,
                                 use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True, logging_steps=100,
                                 seed=0)
    FairTrainer(model=head, args=args, train_dataset=rows, data_collator=collate, objective=objective,
                train_sampler=train_sampler).train()
    return head.eval()


@functools.lru_cache(maxsize=None)
def erm_head(data: Callable[[], Built], out_dir: str) -> torch.nn.Module:
    """The ERM baseline of a data builder, trained once per session."""
    return train_head("erm", {}, data(), out_dir)


@pytest.mark.parametrize("row", METHOD_ROWS, ids=[f"{r.method}{'+' + r.sampler[0] if r.sampler else ''}-{r.data.__name__}-"
                                                  f"{','.join(f'{k}={v}' for k, v in r.options.items())}" for r in METHOD_ROWS])
def test_method_changes_the_outcome_against_erm(row: MethodRow, tmp_path, tmp_path_factory) -> None:
    base_dir = tmp_path_factory.getbasetemp() / f"erm-{row.data.__name__}"
    base_dir.mkdir(exist_ok=True)
    data = row.data()
    erm = row.metric(erm_head(row.data, str(base_dir)), data, base_dir)
    head = train_head(row.method, row.options, data, str(tmp_path), row.sampler, row.confidence)
    value = row.metric(head, data, tmp_path)
    assert row.holds(value, erm), f"{row.metric.__name__}: {value:.3f} vs ERM {erm:.3f} ({row.holds.__name__})"


def test_gdro_exact_accumulation_updates_q_once_per_step(tmp_path) -> None:
    """With 2 micro-batches of 16 the step (q and the head) equals one batch of 32."""
    data = minority_data()
    finals = []
    for batch, accumulation in ((32, 1), (16, 2)):
        import transformers

        from llmfair.ssl.head import EmoSuperbHead, HeadOptions
        from llmfair.training import FairTrainer, FairTrainingArguments

        transformers.logging.set_verbosity_error()
        rows = [{"features": torch.from_numpy(data.train_x[i]), "labels": int(data.train_classes[i]),
                 "group_ids": int(data.train_groups[i])} for i in range(64)]
        objective = build_objective("gdro", gender_spec(), {"step_size": 0.5})
        torch.manual_seed(0)
        head = EmoSuperbHead(8, 2, options=HeadOptions(loss="ce", projector_dim=8))
        args = FairTrainingArguments(output_dir=str(tmp_path / str(batch)), per_device_train_batch_size=batch,
                                     gradient_accumulation_steps=accumulation, max_steps=2, learning_rate=0.1,
                                     optim="sgd", lr_scheduler_type="constant", use_cpu=True, report_to=[],
                                     save_strategy="no", disable_tqdm=True, seed=0)
        sampler = torch.utils.data.SequentialSampler(rows)

        def collate(b):
            return {"features": torch.stack([r["features"] for r in b]), "labels": torch.tensor([r["labels"] for r in b]),
                    "group_ids": torch.tensor([r["group_ids"] for r in b])}

        FairTrainer(model=head, args=args, train_dataset=rows, data_collator=collate, objective=objective,
                    train_sampler=sampler).train()
        finals.append((objective.adv_probs.clone(), head.output.weight.detach().clone()))
    torch.testing.assert_close(finals[0][0], finals[1][0])
    torch.testing.assert_close(finals[0][1], finals[1][1])
    assert not torch.allclose(finals[0][0], torch.tensor([0.5, 0.5], dtype=torch.float64))
