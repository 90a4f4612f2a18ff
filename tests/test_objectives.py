"""ERM and MinMaxGAP: values and gradients against explicit hand-written formulas, the adaptive
weights, missing genders, unknown gender, the registry (one implementation for objectives,
extractors and samplers), and 2-rank == 1-rank gradients (gloo). The contract every objective
meets is checked in ``test_objective_contract.py``."""
from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from llmfair.errors import ConfigError
from llmfair.objectives import OBJECTIVES, GroupSpec, ObjectiveInputs, build_objective, register_objective
from llmfair.objectives.base import Objective

CELLS = [("deu", "audio"), ("eng", "audio"), ("eng", "audio_text")]


def make_spec() -> GroupSpec:
    records = [{"language": l, "modality": m, "gender": g} for (l, m) in CELLS for g in ("female", "male", "unknown")]
    spec, _ = GroupSpec.from_records(records, ("language", "modality", "gender"))
    return spec


def gid(spec: GroupSpec, language: str, modality: str, gender: str) -> int:
    return spec.groups.index((language, modality, gender))


def batch(spec: GroupSpec, seed: int = 0, n: int = 24):
    rng = np.random.default_rng(seed)
    ids = torch.tensor(rng.integers(0, spec.num_groups, n))
    theta = torch.tensor(rng.normal(size=n), requires_grad=True)
    return ids, theta


def per_sample(theta: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.softplus(theta) + 0.1 * theta**2


def explicit_gaps(spec: GroupSpec, ids: torch.Tensor, loss: torch.Tensor) -> dict:
    gaps = {}
    for cell in CELLS:
        f = ids == gid(spec, *cell, "female")
        m = ids == gid(spec, *cell, "male")
        if f.any() and m.any():
            gaps[cell] = loss[m].mean() - loss[f].mean()
    return gaps


def test_erm_is_the_mean() -> None:
    spec = make_spec()
    ids, theta = batch(spec)
    out = build_objective("erm", spec)(ObjectiveInputs(per_sample(theta), ids))
    torch.testing.assert_close(out.loss, per_sample(theta).mean())
    assert out.figures["erm_loss"] == pytest.approx(float(per_sample(theta).mean().detach()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hard_max_value_and_gradient(seed: int) -> None:
    spec = make_spec()
    ids, theta = batch(spec, seed)
    obj = build_objective("minmaxgap", spec, {"weight": "fixed", "lambda_init": 0.7, "missing": "skip", "side": "both"})
    out = obj(ObjectiveInputs(per_sample(theta), ids))
    (g_obj,) = torch.autograd.grad(out.loss, theta)

    loss = per_sample(theta)
    gaps = explicit_gaps(spec, ids, loss)
    worst = max(gaps, key=lambda c: abs(float(gaps[c].detach())))
    reference = loss.mean() + 0.7 * gaps[worst].abs()
    (g_ref,) = torch.autograd.grad(reference, theta)
    assert out.figures["max_gap"] == pytest.approx(abs(float(gaps[worst].detach())))
    torch.testing.assert_close(g_obj, g_ref)
    torch.testing.assert_close(out.loss.detach(), loss.mean().detach() + 0.7 * (gaps[worst].abs().detach()))


@pytest.mark.parametrize("reduction", ["hard", "lse"])
def test_worse_side_only_lowers_the_disadvantaged_gender(reduction: str) -> None:
    """side=worse: the gradient of erm + λ·(L̄_worse − sg(L̄_better)) in each cell (weighted as the
    reduction weights the cells); the better-off gender's rows get exactly their ERM gradient."""
    spec = make_spec()
    ids, theta = batch(spec, 4, n=40)
    options = {"weight": "fixed", "lambda_init": 0.7, "missing": "skip", "reduction": reduction, "temperature": 0.2}
    both = build_objective("minmaxgap", spec, {**options, "side": "both"})(ObjectiveInputs(per_sample(theta), ids))
    worse = build_objective("minmaxgap", spec, {**options, "side": "worse"})(ObjectiveInputs(per_sample(theta), ids))
    assert worse.figures == both.figures and float(worse.loss) == pytest.approx(float(both.loss))
    (g_obj,) = torch.autograd.grad(worse.loss, theta)
    loss = per_sample(theta)
    gaps = explicit_gaps(spec, ids, loss)
    values = torch.stack([g.abs() for g in gaps.values()]).detach()
    if reduction == "hard":
        coef = torch.zeros_like(values)
        coef[int(values.argmax())] = 1.0
    else:
        coef = torch.softmax(values / 0.2, 0)
    penalty = 0.0
    for k, cell in enumerate(gaps):
        f = loss[ids == gid(spec, *cell, "female")].mean()
        m = loss[ids == gid(spec, *cell, "male")].mean()
        penalty = penalty + coef[k] * ((m - f.detach()) if float(m) > float(f) else (f - m.detach()))
    (g_ref,) = torch.autograd.grad(loss.mean() + 0.7 * penalty, theta)
    torch.testing.assert_close(g_obj, g_ref)
    (g_both,) = torch.autograd.grad(both.loss, theta)
    assert not torch.allclose(g_obj, g_both)  # the two sides differ, so the check above can fail


def test_lse_gradient_matches_explicit_logsumexp() -> None:
    spec = make_spec()
    ids, theta = batch(spec, 5, n=40)
    obj = build_objective("minmaxgap", spec, {"weight": "fixed", "reduction": "lse", "temperature": 0.2, "missing": "skip",
                                              "side": "both"})
    out = obj(ObjectiveInputs(per_sample(theta), ids))
    (g_obj,) = torch.autograd.grad(out.loss, theta)
    loss = per_sample(theta)
    gaps = torch.stack([g.abs() for g in explicit_gaps(spec, ids, loss).values()])
    r = 0.2 * torch.logsumexp(gaps / 0.2, 0)
    (g_ref,) = torch.autograd.grad(loss.mean() + 1.0 * r, theta)
    torch.testing.assert_close(g_obj, g_ref)
    assert out.figures["max_gap"] == pytest.approx(float(r.detach()))


def test_ratio_and_dual_weights() -> None:
    spec = make_spec()
    ids, theta = batch(spec, 3)
    loss = per_sample(theta)
    ratio = build_objective("minmaxgap", spec, {"weight": "ratio", "lambda_init": 2.0})
    out = ratio(ObjectiveInputs(loss, ids))
    assert out.figures["lambda"] == pytest.approx(2.0 * out.figures["max_gap"] / float(loss.mean().detach()), rel=1e-6)

    dual = build_objective("minmaxgap", spec, {"weight": "dual", "lambda_init": 0.1, "dual_lr": 0.5, "dual_target": 0.05})
    first = dual(ObjectiveInputs(loss, ids))
    assert first.figures["lambda"] == pytest.approx(0.1)  # the update applies to the next step
    second = dual(ObjectiveInputs(loss, ids))
    assert second.figures["lambda"] == pytest.approx(0.1 + 0.5 * (first.figures["max_gap"] - 0.05))
    dual.eval()  # no updates in evaluation
    assert dual(ObjectiveInputs(loss, ids)).figures["lambda"] == dual(ObjectiveInputs(loss, ids)).figures["lambda"]
    shrink = build_objective("minmaxgap", spec, {"weight": "dual", "lambda_init": 0.1, "dual_lr": 10.0, "dual_target": 100.0})
    shrink(ObjectiveInputs(loss, ids))
    assert float(shrink.dual_lambda) == 0.0  # clipped at zero


def test_unknown_gender_never_enters_a_gap() -> None:
    spec = make_spec()
    ids = torch.tensor([gid(spec, "eng", "audio", "female"), gid(spec, "eng", "audio", "male")] * 3)
    loss = torch.tensor([1.0, 2.0, 1.0, 2.0, 1.0, 2.0])
    obj = build_objective("minmaxgap", spec, {"weight": "fixed"})
    base = obj(ObjectiveInputs(loss, ids)).figures
    ids2 = torch.cat([ids, torch.tensor([gid(spec, "eng", "audio", "unknown")] * 2)])
    loss2 = torch.cat([loss, torch.tensor([50.0, 60.0])])
    with_unknown = build_objective("minmaxgap", spec, {"weight": "fixed"})(ObjectiveInputs(loss2, ids2)).figures
    assert base["max_gap"] == with_unknown["max_gap"] == pytest.approx(1.0)
    assert with_unknown["erm_loss"] == pytest.approx(float(loss2.mean()))


def test_missing_gender_skip_vs_running_estimate() -> None:
    spec = make_spec()
    f, m = gid(spec, "deu", "audio", "female"), gid(spec, "deu", "audio", "male")
    full_ids = torch.tensor([f, f, m, m])
    full_loss = torch.tensor([1.0, 1.0, 3.0, 3.0])
    only_male = torch.tensor([m, m])
    male_loss = torch.tensor([2.0, 2.0], requires_grad=True)

    skip = build_objective("minmaxgap", spec, {"weight": "fixed", "missing": "skip"})
    skip(ObjectiveInputs(full_loss, full_ids))
    out = skip(ObjectiveInputs(male_loss, only_male))
    # no usable cell: no gap is logged (not a measured 0), and the usable-cell count says why
    assert "max_gap" not in out.figures and "gap/deu/audio" not in out.figures and out.figures["usable_cells"] == 0
    (g,) = torch.autograd.grad(out.loss, male_loss)
    torch.testing.assert_close(g, torch.tensor([0.5, 0.5]))  # ERM only

    running = build_objective("minmaxgap", spec, {"weight": "fixed", "missing": "running", "momentum": 0.5})
    running(ObjectiveInputs(full_loss, full_ids))  # female estimate 1.0, male 3.0
    out = running(ObjectiveInputs(male_loss, only_male))
    assert out.figures["max_gap"] == pytest.approx(1.0)  # |2.0 (batch) − 1.0 (running female)|
    (g,) = torch.autograd.grad(out.loss, male_loss)
    torch.testing.assert_close(g, torch.tensor([0.5 + 0.5, 0.5 + 0.5]))  # ERM + λ·d mean_male
    assert float(running.running_mean[0, 1]) == pytest.approx(0.5 * 3.0 + 0.5 * 2.0)


def test_single_gender_cells_reported() -> None:
    spec = make_spec()
    counts = np.zeros(spec.num_groups)
    counts[gid(spec, "deu", "audio", "female")] = 5
    counts[gid(spec, "eng", "audio", "female")] = 5
    counts[gid(spec, "eng", "audio", "male")] = 4
    counts[gid(spec, "eng", "audio_text", "unknown")] = 9
    obj = build_objective("minmaxgap", spec)
    assert obj.single_gender_cells(counts) == ["deu/audio"]


def test_registry_errors() -> None:
    spec = make_spec()
    with pytest.raises(ConfigError, match=r"unknown objective 'nope'; registered: \[.*'erm'.*'minmaxgap'"):
        build_objective("nope", spec)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['lamda'\]"):
        build_objective("minmaxgap", spec, {"lamda": 1.0})
    with pytest.raises(ConfigError, match="weight='adaptive'"):
        build_objective("minmaxgap", spec, {"weight": "adaptive"})
    with pytest.raises(ConfigError, match="registered twice"):
        register_objective("erm")(type("Again", (Objective,), {}))
    assert {"erm", "minmaxgap"} <= set(OBJECTIVES)


def test_one_registry_serves_objectives_extractors_and_samplers() -> None:
    from llmfair._registry import Registry
    from llmfair.data.sampling import SAMPLERS
    from llmfair.ssl.extractors import FEATURE_EXTRACTORS

    assert all(isinstance(r, Registry) for r in (OBJECTIVES, SAMPLERS, FEATURE_EXTRACTORS))
    widgets: Registry[int] = Registry("widget")
    widgets.register("b", 2)
    seen = []
    assert widgets.decorator("a", on_register=lambda name, entry: seen.append(name))(1) == 1
    assert widgets.names() == ["a", "b"] and dict(widgets) == {"b": 2, "a": 1} and seen == ["a"]
    with pytest.raises(ConfigError, match="widget 'a' is registered twice"):
        widgets.decorator("a", on_register=lambda name, entry: seen.append(name))(3)
    assert seen == ["a"] and widgets["a"] == 1  # a refused registration changes nothing
    with pytest.raises(ConfigError, match=r"unknown widget 'c'; registered: \['a', 'b'\]"):
        widgets.lookup("c")
    with pytest.raises(ConfigError, match="non-empty string"):
        widgets.register("", 3)
    assert widgets.unregister("a") == 1 and widgets.names() == ["b"] and widgets.get("a") is None


# ---------------------------------------------------------------- data-parallel invariance
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_worker(rank: int, world: int, port: int, options: dict, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        spec = make_spec()
        ids, theta = batch(spec, 11, n=30)
        half = slice(0, 17) if rank == 0 else slice(17, 30)  # unequal shards on purpose
        theta_local = theta.detach()[half].clone().requires_grad_(True)
        obj = build_objective("minmaxgap", spec, options)
        out = obj(ObjectiveInputs(per_sample(theta_local), ids[half]))
        out.loss.backward()
        full = torch.zeros(30, dtype=theta.dtype)
        full[half] = theta_local.grad / world  # what DDP's averaging does to each rank's gradient
        torch.distributed.all_reduce(full)
        if rank == 0:
            torch.save({"grad": full, "max_gap": out.figures["max_gap"]}, os.path.join(out_dir, "dist.pt"))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("options", [{"weight": "ratio", "side": "both"}, {"weight": "fixed", "reduction": "lse"},
                                     {"weight": "fixed", "side": "worse"}])
def test_two_ranks_give_the_single_process_gradient(tmp_path, options: dict) -> None:
    mp.spawn(_rank_worker, args=(2, _free_port(), options, str(tmp_path)), nprocs=2, join=True)
    dist = torch.load(tmp_path / "dist.pt", weights_only=True)
    spec = make_spec()
    ids, theta = batch(spec, 11, n=30)
    out = build_objective("minmaxgap", spec, options)(ObjectiveInputs(per_sample(theta), ids))
    (g_single,) = torch.autograd.grad(out.loss, theta)
    torch.testing.assert_close(dist["grad"], g_single)
    assert dist["max_gap"] == pytest.approx(out.figures["max_gap"])
