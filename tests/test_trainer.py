"""FairTrainer claims on a toy classifier: gradient accumulation is exact, 2 processes equal 1,
NaN stops training with names, objective state survives a resume, figures are logged."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmfair.training import GroupCoveringSampler, TrainingDivergedError
from tests._toy import ToyClassifier, make_trainer, toy_data

ROOT = Path(__file__).resolve().parents[1]


def weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("objective,options", [
    ("erm", {}),
    ("minmaxgap", {"weight": "fixed", "lambda_init": 2.0, "missing": "skip"}),
    ("minmaxgap", {"weight": "ratio", "reduction": "lse"}),
])
def test_accumulated_microbatches_equal_one_batch(tmp_path, objective, options) -> None:
    one = make_trainer(str(tmp_path / "a"), batch=8, objective=objective, options=options, steps=2)
    one.train()
    acc = make_trainer(str(tmp_path / "b"), batch=4, accumulation=2, objective=objective, options=options, steps=2)
    acc.train()
    for name, w in weights(one).items():
        torch.testing.assert_close(weights(acc)[name], w, rtol=1e-5, atol=1e-6)


def test_without_exact_accumulation_the_gap_step_differs(tmp_path) -> None:
    """Guards the test above: per-micro-batch maxima really give another step."""
    options = {"weight": "fixed", "lambda_init": 2.0, "missing": "skip"}
    one = make_trainer(str(tmp_path / "a"), batch=8, options=options)
    one.train()
    approx = make_trainer(str(tmp_path / "b"), batch=4, accumulation=2, options=options, exact=False)
    approx.train()
    diff = max((weights(approx)[k] - w).abs().max().item() for k, w in weights(one).items())
    assert diff > 1e-4


def test_figures_are_logged(tmp_path) -> None:
    trainer = make_trainer(str(tmp_path), batch=8, steps=3)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "fair/max_gap" in h]
    assert len(logged) == 3
    assert all(h["fair/lambda"] == 2.0 and h["fair/max_gap"] >= 0 for h in logged)
    assert any(k.startswith("fair/gap/") for k in logged[0])


def test_nan_loss_stops_with_step_and_example_ids(tmp_path) -> None:
    model = ToyClassifier()
    model.poison = True
    trainer = make_trainer(str(tmp_path), batch=4, model=model)
    with pytest.raises(TrainingDivergedError, match=r"non-finite loss at step 0 for examples \[\d+, \d+"):
        trainer.train()


def test_resume_restores_objective_state(tmp_path) -> None:
    options = {"weight": "dual", "lambda_init": 0.1, "dual_lr": 0.5}
    full = make_trainer(str(tmp_path / "full"), batch=8, steps=4, options=options)
    full.train()
    part = make_trainer(str(tmp_path / "part"), batch=8, steps=4, options=options, save_steps=2)
    part.train()
    ckpt = tmp_path / "part" / "checkpoint-2"
    assert (ckpt / "objective_state.safetensors").is_file()
    resumed = make_trainer(str(tmp_path / "part"), batch=8, steps=4, options=options, save_steps=2)
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert float(resumed.objective.dual_lambda) == pytest.approx(float(full.objective.dual_lambda))
    assert float(full.objective.dual_lambda) != pytest.approx(0.1)  # λ moved, so restoring it mattered
    for name, w in weights(full).items():
        torch.testing.assert_close(weights(resumed)[name], w)


def test_group_covering_sampler_covers_cells() -> None:
    data, spec = toy_data(n=60)
    cells = ["/".join(spec.groups[r["group_ids"]][:2]) for r in data]
    genders = [spec.groups[r["group_ids"]][2] for r in data]
    sampler = GroupCoveringSampler(cells, genders, batch_size=6, seed=1)
    order = list(sampler)
    assert len(order) == 60
    for b in range(10):
        chunk = order[b * 6:(b + 1) * 6]
        covered = {c for c in set(cells) if any(cells[i] == c and genders[i] == "female" for i in chunk)
                   and any(cells[i] == c and genders[i] == "male" for i in chunk)}
        assert covered == set(cells)  # 3 cells, 6 slots: every batch holds both genders of every cell
    sampler.set_epoch(1)
    assert list(sampler) != order and list(GroupCoveringSampler(cells, genders, 6, seed=1)) == order


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path) -> None:
    """`accelerate launch --multi_gpu --num_processes 2` on CPU (gloo) vs one process on the
    concatenated batch. (accelerate's CPU flag with 2 processes silently runs ONE; the script asserts
    world_size == 2.)"""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(ROOT / "tests" / "dist" / "train_toy.py"), str(tmp_path), "4"]
    run = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "weights.json").read_text())
    assert result["world_size"] == 2
    single = make_trainer(str(tmp_path / "single"), batch=8, steps=2, options={"weight": "ratio", "lambda_init": 1.0})
    single.train()
    for name, w in weights(single).items():
        torch.testing.assert_close(torch.tensor(result["weights"][name]), w, rtol=1e-5, atol=1e-6)
