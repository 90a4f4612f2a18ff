"""Batched head training (``llmfair.ssl.batched_head``) equals one-at-a-time ``train_head``.

One table (:data:`CASES`) drives the method tests; it must cover every objective that has a
kernel. Three levels:

- the kernels in float64: the same Adam steps through ``train_head``'s own step and through the
  batched step, for every case at once (one chunk mixing every kernel, merged-map and dense
  heads): losses, logged figures, weights and objective state equal to 1e-9;
- end to end in float32: :func:`train_heads` against ``train_head`` job by job — weights,
  predictions, histories, selected epoch, figures, objective state — with samplers that differ per
  head (DS subsets, group-balanced draws), gradient clipping, selection rules, per-layer features;
- the sweep: the same metrics and predictions files batched and one at a time.

Float32 results agree to rounding (~1e-7) amplified by Adam where a gradient is near zero; MADV's
difference loss (rows normalised by their norm + 1e-6) amplifies most, hence its looser bound.
"""
from __future__ import annotations

import json
import types

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import save_file

import llmfair.sweep as sweep
from llmfair.data.crema_d import read_crema_d
from llmfair.errors import DataError
from llmfair.objectives import GroupSpec, build_objective
from llmfair.objectives.erm import ERM
from llmfair.ssl import batched_head as bh
from llmfair.ssl._batched_objectives import batched_objective_names, kernel_for
from llmfair.ssl.head import HeadOptions
from llmfair.ssl.train_head import HeadTrainingOptions, _build_head, _set_up_objective, _train_epoch, train_head

SPEC = GroupSpec(("language", "modality", "gender"), (("eng", "audio", "female"), ("eng", "audio", "male")))

CASES = [  # (objective, options, sampler)
    ("erm", {}, None),
    ("erm", {}, "ds"),
    ("rw", {}, None),
    ("rw", {"normalise": "batch"}, "group_balanced"),
    ("gdro", {}, None),
    ("gdro", {"groups": "class_gender"}, "group_balanced"),
    ("gadro", {}, None),
    ("pgdro", {}, None),
    ("pgdro", {"groups": "class_gender", "adjustment": 1.0}, None),
    ("gr", {}, None),
    ("gr", {"form": "gdl", "gdl_reference": "class"}, None),
    ("gr", {"form": "square"}, None),
    ("minmaxgap", {}, None),
    ("minmaxgap", {"weight": "dual", "reduction": "lse", "side": "both", "missing": "skip"}, None),
    ("lff", {}, None),
    ("adv", {}, None),
    ("madv", {}, None),
    ("disent", {"swap_after_steps": 5}, None),
]


def _data(n: int = 240, d: int = 24, k: int = 6, seed: int = 0, layers: int | None = None):
    """Features with a class signal and a gender direction, soft labels, ~30 % women, PGDRO memberships."""
    rng = np.random.default_rng(seed)
    c = rng.integers(0, k, n)
    g = (rng.random(n) < 0.3).astype(np.int64)
    x = rng.normal(size=(k, d))[c] * 1.5 + np.outer(g - 0.5, rng.normal(size=d)) + rng.normal(size=(n, d))
    if layers:
        x = x[:, None, :] * rng.uniform(0.2, 1.0, size=(1, layers, 1)) + rng.normal(size=(n, layers, d)) * 0.3
    y = np.eye(k)[c] * 0.8 + 0.2 / k
    probs = np.stack([1 - g * 0.8 - 0.1, g * 0.8 + 0.1], 1)
    return x.astype(np.float32), y.astype(np.float32), g, c, probs


def test_the_table_covers_every_kernel():
    assert {name for name, _, _ in CASES} == set(batched_objective_names())


# ===================================================================================== float64
def _prepare64(name, options, seed, x, y, g, c, probs):
    """A head and its set-up objective in float64, made as train_head makes them."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        objective = build_objective(name, SPEC, options)
        model = _build_head(x.float(), y.float(), y.shape[1], HeadOptions(), torch.device("cpu"))
        objective = _set_up_objective(objective, torch.as_tensor(g), c, y.shape[1], np.arange(len(g)),
                                      probs if name == "pgdro" else None, len(g), None)
        kernel = kernel_for(objective)
        kernel.materialise(objective, x.float(), model.options.projector_dim)
        state = torch.get_rng_state()
    return types.SimpleNamespace(model=model.double(), objective=objective.double(), kernel=kernel, rng_state=state)


def test_kernels_take_the_objectives_steps_in_float64():
    x, y, g, c, probs = _data()
    x, y = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    groups, n, steps, lr = torch.as_tensor(g), len(g), 8, 1e-2
    specs = [(name, options, i) for i, (name, options, _) in enumerate(CASES)]
    single = [_prepare64(*s, x, y, g, c, probs) for s in specs]
    batched = [_prepare64(*s, x, y, g, c, probs) for s in specs]
    generator = torch.Generator().manual_seed(0)
    orders = [torch.randperm(n, generator=generator)[:32 * steps] for _ in specs]  # each head its own order

    options = HeadTrainingOptions(learning_rate=lr, batch_size=32)
    epoch_losses, epoch_figures = [], []
    for p, order in zip(single, orders):  # train_head's own step (_train_epoch), objective RNG as in training
        p.model.train()
        p.objective.train()
        params = list(p.model.parameters()) + [q for q in p.objective.parameters() if q.requires_grad]
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(p.rng_state)
            mean_loss, figures, _ = _train_epoch(p.model, p.objective, torch.optim.Adam(params, lr=lr), params, x, y,
                                                 groups, order, options)
        epoch_losses.append(mean_loss)
        epoch_figures.append(figures)

    dense_from = next(i for i, p in enumerate(batched) if p.kernel.needs_features)
    heads = bh._Heads(batched, dense_from, torch.device("cpu"))
    kernels = bh._kernels(batched, torch.device("cpu"))
    assert len(heads.segments) == 2 and len(kernels) >= 8
    optimizer = torch.optim.Adam([q for q, _ in heads.parameters()] + [q for k in kernels for q in k.parameters()], lr=lr)
    class_weights = torch.stack([p.model.class_weights for p in batched])
    labels, group_ids, index = torch.stack([y] * len(specs)), torch.stack([groups] * len(specs)), torch.stack(orders)
    loss_sum = torch.zeros(len(specs), dtype=torch.float64)
    for s in range(steps):
        idx = index[:, 32 * s:32 * (s + 1)]
        values, loss = bh.chunk_losses(heads, kernels, HeadOptions(), class_weights, x[idx],
                                       labels.gather(1, idx.unsqueeze(2).expand(-1, -1, y.shape[1])),
                                       group_ids.gather(1, idx), idx, record=True)
        optimizer.zero_grad()
        loss.sum().backward()
        optimizer.step()
        loss_sum += values

    np.testing.assert_allclose((loss_sum / steps).numpy(), epoch_losses, rtol=1e-12, atol=1e-12)
    for h, (one, many) in enumerate(zip(single, batched)):
        kernel, i = bh._kernel_of(kernels, h)
        figures = kernel.figures(i, steps)
        assert figures.keys() == epoch_figures[h].keys(), specs[h]
        np.testing.assert_allclose([figures[k] for k in epoch_figures[h]], list(epoch_figures[h].values()),
                                   rtol=1e-9, atol=1e-9, err_msg=str(specs[h]))
        kernel.write_back(i)
        for key, value in heads.state(h).items():
            torch.testing.assert_close(value, one.model.state_dict()[key], atol=1e-10, rtol=0, msg=f"{specs[h]} {key}")
        expected, got = one.objective.state_dict(), many.objective.state_dict()
        assert expected.keys() == got.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], atol=1e-10, rtol=0, msg=f"{specs[h]} {key}")


# ===================================================================================== float32, end to end
def _jobs(x, y, g, probs, *, epochs=3, lr=1e-3, cases=CASES, dev=True, seed_offset=0):
    dev_x, dev_y = x[:80], y[:80]
    dev_g = np.where(g[:80] == 1, "male", "female")
    selections = [{}, {"criterion": "metric"}, {"criterion": "min_gap"}, {"criterion": "last"}]
    jobs = []
    for i, (name, options, sampler) in enumerate(cases):
        torch.manual_seed(1000 + i)
        objective = build_objective(name, SPEC, options)
        train_options = HeadTrainingOptions(
            epochs=epochs, learning_rate=lr, batch_size=32, seed=(i + seed_offset) % 4, sampler=sampler,
            max_grad_norm=0.5 if i % 3 == 1 else None, selection=selections[i % 4] if dev else {},
            select_on_dev=dev)
        jobs.append(bh.HeadJob(x, y, g, objective, dev_features=dev_x if dev else None,
                               dev_labels=dev_y if dev else None, dev_genders=dev_g if dev else None,
                               options=train_options, group_probabilities=probs if name == "pgdro" else None))
    return jobs


def _assert_same(expected, got, case, x, *, atol=1e-5, state_atol=1e-4):
    where = f"{case}"
    assert got.best_epoch == expected.best_epoch, where
    assert got.num_steps == expected.num_steps, where
    np.testing.assert_array_equal(got.train_rows, expected.train_rows)
    assert got.selection == expected.selection, where
    np.testing.assert_allclose(got.predict_proba(x), expected.predict_proba(x), atol=atol, err_msg=where)
    for key, value in expected.model.state_dict().items():
        torch.testing.assert_close(got.model.state_dict()[key], value, atol=atol, rtol=0, msg=f"{where} {key}")
    state, other = expected.objective.state_dict(), got.objective.state_dict()
    assert state.keys() == other.keys(), where
    for key, value in state.items():
        if value.is_floating_point():
            torch.testing.assert_close(other[key], value, atol=state_atol, rtol=1e-4, msg=f"{where} {key}")
        else:
            torch.testing.assert_close(other[key], value, msg=f"{where} {key}")
    assert len(got.history) == len(expected.history)
    for a, b in zip(expected.history, got.history):
        assert a.keys() == b.keys(), where
        np.testing.assert_allclose([b[k] for k in a], [a[k] for k in a], rtol=1e-4, atol=1e-5, err_msg=where)
    assert got.figures.keys() == expected.figures.keys(), where
    np.testing.assert_allclose([got.figures[k] for k in expected.figures], list(expected.figures.values()),
                               rtol=1e-4, atol=1e-5, err_msg=where)
    assert not got.model.training and not got.objective.training


def test_batched_training_equals_train_head_for_every_method():
    x, y, g, _, probs = _data()
    expected = [train_head(**job.train_head_kwargs()) for job in _jobs(x, y, g, probs)]
    got = bh.train_heads(_jobs(x, y, g, probs))
    for case, a, b in zip(CASES, expected, got):
        _assert_same(a, b, case, x, atol=3e-5 if case[0] == "madv" else 1e-5,
                     state_atol=3e-3 if case[0] == "madv" else 1e-4)
    assert len(got[1].train_rows) < len(g)  # DS trained on its subset
    assert any(r.best_epoch < 3 for r in expected)  # the selection rules chose


def test_per_layer_features_and_runs_without_dev_rows():
    x, y, g, _, probs = _data(n=160, d=12, layers=4)
    cases = [("erm", {}, None), ("lff", {}, None), ("adv", {}, None), ("disent", {"swap_after_steps": 3}, None)]
    for head_options in (HeadOptions(), HeadOptions(layer_weighting=False, layer=-2)):
        def jobs():
            out = _jobs(x, y, g, probs, cases=cases, dev=False)
            for job in out:
                job.head_options = head_options
            return out

        expected = [train_head(**job.train_head_kwargs()) for job in jobs()]
        got = bh.train_heads(jobs())
        for case, a, b in zip(cases, expected, got):
            _assert_same(a, b, case, x)
            assert b.best_epoch == 3 and np.isnan(b.best_dev_loss)


def test_chunks_are_bounded_and_group_equal_loops():
    x, y, g, _, probs = _data()
    cases = [c for c in CASES if c[0] in ("erm", "gdro", "lff")]
    whole = bh.train_heads(_jobs(x, y, g, probs, cases=cases))
    prepared = [bh._prepare(i, job) for i, job in enumerate(_jobs(x, y, g, probs, cases=cases))]
    chunks = bh._chunks(prepared, 2)
    assert all(len(chunk) <= 2 for chunk in chunks)
    assert {len({p.epoch_rows for p in chunk}) for chunk in chunks} == {1}  # DS's subset trains apart
    small = bh.train_heads(_jobs(x, y, g, probs, cases=cases), max_heads=2)
    for case, a, b in zip(cases, whole, small):
        _assert_same(a, b, case, x)


class _MyERM(ERM):
    """A subclass of a batched method: its forward may differ, so it trains one at a time."""


def test_jobs_without_a_batched_form_train_one_at_a_time():
    x, y, g, c, probs = _data(n=120)
    subclass = bh.HeadJob(x, y, g, _MyERM(SPEC), options=HeadTrainingOptions(epochs=2))
    labels = bh.HeadJob(x, c, g, build_objective("erm", SPEC), options=HeadTrainingOptions(epochs=2),
                        head_options=HeadOptions(loss="ce"))
    assert "no batched form" in bh.batching_blocker(subclass)
    assert "head loss" in bh.batching_blocker(labels)
    assert bh.batching_blocker(bh.HeadJob(x, c, g, build_objective("erm", SPEC))) == (
        "class-index labels (batched: (N, K) label distributions)")
    batched = _jobs(x, y, g, probs, cases=[("erm", {}, None)])[0]
    assert bh.batching_blocker(batched) is None
    reference = train_head(**subclass.train_head_kwargs())
    result = bh.train_heads([subclass, batched])[0]
    np.testing.assert_array_equal(result.predict_proba(x), reference.predict_proba(x))  # the same code path
    off = bh.train_heads(_jobs(x, y, g, probs, cases=[("gdro", {}, None)]), batched=False)[0]
    ref = train_head(**_jobs(x, y, g, probs, cases=[("gdro", {}, None)])[0].train_head_kwargs())
    np.testing.assert_array_equal(off.predict_proba(x), ref.predict_proba(x))


def test_a_diverging_head_fails_alone():
    x, y, g, _, probs = _data(n=120)
    jobs = _jobs(x, y, g, probs, cases=[("erm", {}, None), ("rw", {}, None)], dev=False)
    jobs[1].train_features = x * np.float32(1e37)  # finite, but the loss overflows
    outcome = bh.train_heads(jobs, on_error="return")
    assert isinstance(outcome[1], DataError) and "diverged" in str(outcome[1]) and "'rw'" in str(outcome[1])
    _assert_same(train_head(**_jobs(x, y, g, probs, cases=[("erm", {}, None)], dev=False)[0].train_head_kwargs()),
                 outcome[0], "erm", x)
    jobs = _jobs(x, y, g, probs, cases=[("erm", {}, None), ("rw", {}, None)], dev=False)
    jobs[1].train_features = x * np.float32(1e37)
    with pytest.raises(DataError, match="diverged"):
        bh.train_heads(jobs)


# ===================================================================================== the sweep
@pytest.fixture(scope="module")
def sweep_inputs(tmp_path_factory, crema_d_labels):
    """Synthetic 7,442 × 16 features for the CREMA-D clips and a groups file (pseudo gender)."""
    examples = read_crema_d(crema_d_labels, 1, check_audio=False)
    rng = np.random.default_rng(1)
    soft = np.array([e.emotion_dist for e in examples])
    male = np.array([e.gender == "male" for e in examples], dtype=float)
    x = soft @ rng.normal(size=(6, 16)) * 3 + np.outer(male - 0.5, rng.normal(size=16)) * 2 + rng.normal(size=(len(soft), 16))
    folder = tmp_path_factory.mktemp("batched_sweep")
    save_file({"features": torch.tensor(x, dtype=torch.float32)}, str(folder / "f.safetensors"))
    (folder / "f.ids.json").write_text(json.dumps([e.id for e in examples]))
    pseudo = np.where(rng.random(len(examples)) < 0.1, 1 - male, male)
    p_male = np.clip(0.1 + 0.8 * pseudo, 0, 1)
    pd.DataFrame({"id": [e.id for e in examples], "pseudo_gender": np.where(pseudo == 1, "male", "female"),
                  "pseudo_p_female": 1 - p_male, "pseudo_p_male": p_male}).to_csv(folder / "groups.csv", index=False)
    return folder


def test_sweep_outputs_are_the_same_batched_and_one_at_a_time(tmp_path, crema_d_labels, sweep_inputs, monkeypatch):
    methods = [{"name": "erm", "objective": "erm"}, {"name": "rw", "objective": "rw"},
               {"name": "ds", "objective": "erm", "sampler": "ds"}, {"name": "gdro", "objective": "gdro"},
               {"name": "pgdro", "objective": "pgdro", "groups": "pseudo"},
               {"name": "lff", "objective": "lff", "supervision": "unsupervised"}, {"name": "adv", "objective": "adv"},
               {"name": "disent", "objective": "disent", "options": {"swap_after_steps": 60}}]
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({
        "labels_dir": str(crema_d_labels), "features": {"path": str(sweep_inputs / "f.safetensors")},
        "groups_file": str(sweep_inputs / "groups.csv"), "methods": methods, "ratios": [1, 20], "folds": [1],
        "epochs": 2, "lr": 1e-3, "max_grad_norm": 1.0, "selection": {"criterion": "metric"}}))
    config = sweep.SweepConfig.from_yaml(path)
    calls = []
    real = bh.train_heads
    monkeypatch.setattr(bh, "train_heads", lambda jobs, **kw: calls.append(len(jobs)) or real(jobs, **kw))
    batched = sweep.run_sweep(config, tmp_path / "batched", progress=False, collect=False, batched=True)
    assert calls == [8, 8]  # one call per (fold, ratio): every method trained together
    single = sweep.run_sweep(config, tmp_path / "single", progress=False, collect=False)  # the default
    assert calls == [8, 8] and batched.ran == single.ran == [r.run_id for r in sweep.plan_runs(config)]

    skip = {"seconds", "train_seconds"}
    for run_id in batched.ran:
        a = json.loads((tmp_path / "single" / "runs" / f"metrics_{run_id}.json").read_text())
        b = json.loads((tmp_path / "batched" / "runs" / f"metrics_{run_id}.json").read_text())
        assert a.keys() == b.keys()
        for key in a.keys() - skip:
            if key in ("metrics", "figures", "best_dev_loss", "history"):
                continue
            assert a[key] == b[key], (run_id, key)
        assert a["metrics"] == b["metrics"], run_id  # binarised test predictions: identical figures
        assert a["best_epoch"] == b["best_epoch"]
        np.testing.assert_allclose(b["best_dev_loss"], a["best_dev_loss"], rtol=1e-5)
        for ha, hb in zip(a["history"], b["history"]):
            np.testing.assert_allclose([hb[k] for k in ha], [ha[k] for k in ha], rtol=1e-4, atol=1e-6, err_msg=run_id)
        np.testing.assert_allclose([b["figures"][k] for k in a["figures"]], list(a["figures"].values()),
                                   rtol=1e-4, atol=1e-5, err_msg=run_id)
        pa = pd.read_csv(tmp_path / "single" / "runs" / a["predictions"])
        pb = pd.read_csv(tmp_path / "batched" / "runs" / b["predictions"])
        assert list(pa.columns) == list(pb.columns) and pa["id"].tolist() == pb["id"].tolist()
        probs = [c for c in pa.columns if c.startswith("prob_")]
        np.testing.assert_allclose(pb[probs].to_numpy(), pa[probs].to_numpy(), atol=1e-5, err_msg=run_id)


def test_the_sweep_trains_one_at_a_time_when_asked(monkeypatch):
    from llmfair.sweep.execute import _use_batches

    monkeypatch.delenv("LLMFAIR_SWEEP_BATCHED", raising=False)
    assert not _use_batches(None) and not _use_batches(False) and _use_batches(True)  # off by default
    monkeypatch.setenv("LLMFAIR_SWEEP_BATCHED", "1")
    assert _use_batches(None) and not _use_batches(False)
    monkeypatch.setenv("LLMFAIR_SWEEP_BATCHED", "off")
    assert not _use_batches(None) and _use_batches(True)
    monkeypatch.delenv("LLMFAIR_SWEEP_BATCHED")
    monkeypatch.setattr(sweep, "train_head", lambda *a, **k: None)  # an observer: every run goes through it
    assert not _use_batches(None) and not _use_batches(True)


# ------------------------------------------------------------------------------------- in-place weight gradients
def _reference_logits(x, w_p, b_p, w_o, b_o, projected: bool):
    f = torch.einsum("hbd,hpd->hbp", x, w_p) + b_p.unsqueeze(1)
    logits = torch.einsum("hbp,hkp->hbk", f, w_o) + b_o.unsqueeze(1)
    return (logits, f) if projected else (logits, None)


@pytest.mark.parametrize("projected", [False, True])
def test_stacked_head_weight_gradients_in_place(projected):
    """The stacked head's weight gradients equal autograd's on the plain expression: accumulated
    across backwards outside a step (autograd's semantics), overwritten at a step's first backward
    (a stale buffer is replaced, the buffer object kept), added at its second, and dropped to None
    by ``end_step`` when no backward wrote them."""
    from llmfair.ssl._batched_objectives import StackedLinearHead

    gen = torch.Generator().manual_seed(0)
    h, b, d, p, k = 3, 5, 7, 4, 2
    x = torch.randn(h, b, d, generator=gen, dtype=torch.float64)
    weights = [torch.randn(h, p, d, generator=gen, dtype=torch.float64), torch.randn(h, p, generator=gen, dtype=torch.float64),
               torch.randn(h, k, p, generator=gen, dtype=torch.float64), torch.randn(h, k, generator=gen, dtype=torch.float64)]
    coef = torch.randn(h, b, k, generator=gen, dtype=torch.float64)
    coef_f = torch.randn(h, b, p, generator=gen, dtype=torch.float64)
    head = StackedLinearHead(None, *weights)
    reference = [w.clone().requires_grad_(True) for w in weights]

    def loss_of(logits, f):
        return (coef * logits).sum() + ((coef_f * f).sum() if f is not None else 0.0)

    def head_loss():
        if projected:
            return loss_of(*head.logits_and_features(x))
        return loss_of(head.logits(x), None)

    loss_of(*_reference_logits(x, *reference, projected)).backward()
    expected = [r.grad.clone() for r in reference]
    names = ["weight_p", "bias_p", "weight_o", "bias_o"]

    head_loss().backward()  # outside a step: autograd semantics, accumulating
    head_loss().backward()
    for name, want in zip(names, expected):
        torch.testing.assert_close(getattr(head, name).grad, 2 * want, rtol=1e-12, atol=1e-12)

    buffer = head.weight_p.grad
    buffer.fill_(123.0)  # stale: the step's first backward must overwrite it, in the same storage
    head.begin_step()
    head_loss().backward()
    assert head.weight_p.grad is buffer
    torch.testing.assert_close(head.weight_p.grad, expected[0], rtol=1e-12, atol=1e-12)
    head_loss().backward()  # a second backward in the same step accumulates
    torch.testing.assert_close(head.weight_p.grad, 2 * expected[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(head.weight_o.grad, 2 * expected[2], rtol=1e-12, atol=1e-12)
    head.end_step()
    assert head.weight_p.grad is buffer

    head.begin_step()  # a step without a backward through the head: no stale gradient survives
    head.end_step()
    assert head.weight_p.grad is None and head.weight_o.grad is None
