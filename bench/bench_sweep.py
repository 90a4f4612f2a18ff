"""Benchmark: a full IDI-style sweep on cached CREMA-D-sized features (7,442 × 768, synthetic values),
trained one run at a time (``train_head``) and as batched heads (``llmfair.ssl.batched_head``).

13 method variants — erm, rw, ds, gdro, gadro, pgdro (pseudo gender with soft memberships), lff,
disent, adv, madv, gr, minmaxgap and rw on k-means-like clusters (K = 16, synthetic labels) — plus
any other registered objective that runs on gender groups, × 5 ratios (1, 5, 10, 20, 40) × 5 folds,
on the real EMO-SUPERB CREMA-D label files, with ``--processes`` shards in parallel (one torch
thread each). Prints, per method, runs, optimiser steps, seconds per run and milliseconds per step;
the total wall time and runs per minute.

Two phases (the recipe is 50 epochs; see METHODS.md §1.4):

1. ``--epochs`` (default 50) on the folds of ``--measure-folds`` (default fold 1 only), once per
   path of ``--paths`` (default: old and batched, the same grid in the same run): measured side by
   side with their ratio, the two paths' outputs compared (largest |Δ| of a test probability and of
   a metric, runs that kept the same epoch), then each extrapolated to all folds from the exact
   number of optimiser steps of every run of the full grid (train sizes per fold/ratio, DS's
   downsampled sizes) and its measured time per step of each method. A batched head's time is its
   share of its chunk's (the chunk's time divided by its heads);
   Then the floor (:func:`step_floor`): the least time any exact float32 implementation needs
   for the grid's optimiser steps on this machine;
2. unless ``--no-full``: the full grid at ``--epochs``, batched, measured against ``--budget``
   (issue 14: 5 min) and the old path's extrapolation (``--full-old`` measures the old path on the
   full grid too; ``--full-epochs N`` runs only this phase, at N).

Not run by pytest.

    .venv/bin/python bench/bench_sweep.py [--epochs 50] [--processes 2] [--budget 300] [--no-full] [--full-old]
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import multiprocessing as mp
import os
import pkgutil
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LABELS = ROOT.parent / "shared" / "data" / "crema-d"
RATIOS = [1, 5, 10, 20, 40]
FOLDS = [1, 2, 3, 4, 5]
DIM = 768
K = 16
METHODS = [
    {"name": "erm", "objective": "erm"},
    {"name": "rw", "objective": "rw"},
    {"name": "ds", "objective": "erm", "sampler": "ds"},
    {"name": "gdro", "objective": "gdro"},
    {"name": "gadro", "objective": "gadro"},
    {"name": "pgdro", "objective": "pgdro", "groups": "pseudo"},
    {"name": "lff", "objective": "lff", "supervision": "unsupervised"},
    {"name": "disent", "objective": "disent", "supervision": "unsupervised"},
    {"name": "adv", "objective": "adv"},
    {"name": "madv", "objective": "madv"},
    {"name": "gr", "objective": "gr"},
    {"name": "minmaxgap", "objective": "minmaxgap"},
    {"name": "rw_k16", "objective": "rw", "groups": "clusters", "K": [K]},
]


def register_all_objectives() -> None:
    """Import every module of llmfair.objectives (each registers its methods)."""
    import llmfair.objectives

    for module in pkgutil.iter_modules(llmfair.objectives.__path__):
        importlib.import_module(f"llmfair.objectives.{module.name}")


def method_list() -> tuple[list[dict], list[str]]:
    """The 13 variants plus any other registered objective that builds on gender groups."""
    from llmfair.errors import ConfigError
    from llmfair.objectives import OBJECTIVES, GroupSpec, build_objective

    register_all_objectives()
    spec = GroupSpec(("language", "modality", "gender"), (("eng", "audio", "female"), ("eng", "audio", "male")))
    methods = [m for m in METHODS if m["objective"] in OBJECTIVES]
    missing = [m["objective"] for m in METHODS if m["objective"] not in OBJECTIVES]
    left_out = []
    for name in sorted(set(OBJECTIVES) - {m["objective"] for m in METHODS}):
        try:
            build_objective(name, spec)
        except ConfigError as exc:
            left_out.append(f"{name} ({str(exc).split(';')[0]})")
            continue
        methods.append({"name": name, "objective": name})
    return methods, [f"{m} (not registered)" for m in missing] + left_out


def make_inputs(folder: Path) -> tuple[Path, Path]:
    """Synthetic 7,442 × 768 features (class signal + gender direction + noise) and a groups file
    (pseudo gender: 8 % flipped, soft memberships; 16 clusters nested in gender)."""
    import pandas as pd
    import torch
    from safetensors.torch import save_file

    from llmfair.data.crema_d import read_crema_d

    examples = read_crema_d(LABELS, 1, check_audio=False)
    rng = np.random.default_rng(0)
    soft = np.array([e.emotion_dist for e in examples])
    male = np.array([e.gender == "male" for e in examples], dtype=float)
    x = (soft @ rng.normal(size=(6, DIM)) * 1.5 + np.outer(male - 0.5, rng.normal(size=DIM))
         + rng.normal(size=(len(examples), DIM))).astype(np.float32)
    save_file({"features": torch.from_numpy(x)}, str(folder / "features.safetensors"))
    (folder / "features.ids.json").write_text(json.dumps([e.id for e in examples]))
    pseudo_male = np.where(rng.random(len(examples)) < 0.08, 1 - male, male)
    p_male = np.clip(0.1 + 0.8 * pseudo_male + rng.normal(0, 0.05, len(examples)), 0, 1)
    clusters = (male * (K // 2) + rng.integers(0, K // 2, len(examples))).astype(int)
    pd.DataFrame({"id": [e.id for e in examples], "pseudo_gender": np.where(pseudo_male == 1, "male", "female"),
                  "pseudo_p_female": 1 - p_male, "pseudo_p_male": p_male, f"cluster_{K}": clusters}).to_csv(
        folder / "groups.csv", index=False)
    return folder / "features.safetensors", folder / "groups.csv"


def config_for(features: Path, groups: Path, methods: list[dict], folds: list[int], epochs: int):
    from llmfair.sweep import SweepConfig

    return SweepConfig.from_mapping({
        "labels_dir": str(LABELS), "features": {"path": str(features)}, "groups_file": str(groups),
        "methods": methods, "ratios": RATIOS, "folds": folds, "seeds": [0], "epochs": epochs, "threads": 1,
    }, source="bench_sweep")


def _worker(config_dict: dict, out: str, shard: tuple[int, int], batched: bool) -> None:
    logging.basicConfig(level=logging.ERROR)  # e.g. RW's empty-cell warnings for 16 clusters at 1:40
    register_all_objectives()
    from llmfair.sweep import SweepConfig, run_sweep

    run_sweep(SweepConfig.from_mapping(config_dict, source="bench_sweep"), out, shard, collect=False, progress=False,
              batched=batched)


CPU_SECONDS: dict[str, float] = {}
"""CPU seconds (user + system) of the shard processes of each :func:`run_parallel` call, by output
folder: unlike wall time, it does not count the time other programs on the machine take from them."""


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_parallel(config, out: Path, processes: int, batched: bool) -> float:
    """Wall time of the whole grid with ``processes`` shards (spawned: each pays its own imports),
    the runs of a shard trained one at a time (``batched=False``) or as batched heads; the shards'
    CPU time goes to :data:`CPU_SECONDS`."""
    ctx = mp.get_context("spawn")
    cpu = _children_cpu()
    started = time.perf_counter()
    procs = [ctx.Process(target=_worker, args=(config.to_dict(), str(out), (i, processes), batched))
             for i in range(processes)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    if any(p.exitcode != 0 for p in procs):
        raise SystemExit(f"a shard failed: exit codes {[p.exitcode for p in procs]}")
    wall = time.perf_counter() - started
    CPU_SECONDS[str(out)] = _children_cpu() - cpu
    return wall


def per_method(out: Path) -> dict[str, dict[str, float]]:
    stats: dict[str, dict[str, float]] = {}
    for path in (out / "runs").glob("metrics_*.json"):
        r = json.loads(path.read_text())
        s = stats.setdefault(r["method"], {"runs": 0, "steps": 0, "train_s": 0.0, "run_s": 0.0})
        s["runs"] += 1
        s["steps"] += r["num_steps"]
        s["train_s"] += r["train_seconds"]
        s["run_s"] += r["seconds"]
    return stats


def grid_steps(methods: list[dict], folds: list[int], batch: int = 32) -> dict[str, list[int]]:
    """Optimiser steps per epoch of every run of the grid, per method (exact: the real splits)."""
    from llmfair.data.crema_d import read_crema_d
    from llmfair.data.imbalance import build_imbalanced_splits
    from llmfair.data.labels import CREMA_D
    from llmfair.data.sampling import downsample_indices

    steps: dict[str, list[int]] = {m["name"]: [] for m in methods}
    for fold in folds:
        examples = read_crema_d(LABELS, fold, check_audio=False)
        for ratio in RATIOS:
            train = [e for e in build_imbalanced_splits(examples, CREMA_D, ratio, 0).examples if e.split == "train"]
            n = len(train)
            n_ds = len(downsample_indices(np.array([e.emotion for e in train]),
                                          np.array([int(e.gender == "male") for e in train]), seed=0))
            for m in methods:
                steps[m["name"]].append(math.ceil((n_ds if m.get("sampler") == "ds" else n) / batch))
    return steps


def _floor_worker(heads: int, steps: int, rows: int, queue: "mp.Queue") -> None:
    """Seconds per head-step of the least work one exact float32 step of this head needs (see
    :func:`step_floor`), measured over ``steps`` steps of ``heads`` stacked heads."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    p_dim, k, batch = 256, 6, 32
    x_all = torch.randn(rows, DIM)
    y_all = torch.softmax(torch.randn(rows, k), -1)
    w_p = torch.nn.Parameter(torch.randn(heads, p_dim, DIM) * 0.03)
    b_p = torch.nn.Parameter(torch.zeros(heads, p_dim))
    w_o = torch.nn.Parameter(torch.randn(heads, k, p_dim) * 0.06)
    b_o = torch.nn.Parameter(torch.zeros(heads, k))
    params = [w_p, b_p, w_o, b_o]
    for param in params:
        param.grad = torch.zeros_like(param)
    optimizer = torch.optim.Adam(params, lr=1e-4, fused=True)
    merged = torch.empty(heads, k, DIM)

    @torch.no_grad()
    def step() -> None:
        idx = torch.randint(0, rows, (batch,))
        x = x_all[idx]
        torch.bmm(w_o, w_p, out=merged)
        offset = torch.baddbmm(b_o.unsqueeze(2), w_o, b_p.unsqueeze(2)).squeeze(2)
        logits = (x @ merged.reshape(heads * k, DIM).T).reshape(batch, heads, k).transpose(0, 1) + offset.unsqueeze(1)
        d_logits = (torch.softmax(logits, -1) - y_all[idx].unsqueeze(0)) / batch
        d_merged = (d_logits.transpose(1, 2).reshape(heads * k, batch) @ x).reshape(heads, k, DIM)
        d_offset = d_logits.sum(1)
        torch.bmm(w_o.transpose(1, 2), d_merged, out=w_p.grad)
        torch.baddbmm(d_offset.unsqueeze(2) * b_p.unsqueeze(1), d_merged, w_p.transpose(1, 2), out=w_o.grad)
        b_p.grad.copy_(torch.bmm(w_o.transpose(1, 2), d_offset.unsqueeze(2)).squeeze(2))
        b_o.grad.copy_(d_offset)
        optimizer.step()

    for _ in range(20):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    queue.put((time.perf_counter() - started) / steps / heads)


def step_floor(processes: int, heads: int = 12, steps: int = 300) -> float:
    """Seconds per head-step of a lower bound on any exact float32 implementation of this grid.

    The least one training step of one EMO-SUPERB head (768 → 256 → 6, batch 32) must do to stay
    equal to ``train_head`` within float rounding: read the 196,608 projector weights for the
    logits, write their gradient, read them again for the output layer's gradient, and run Adam over
    them (read weight, gradient and both moments, write three back). Measured here with everything
    else stripped away — ERM's closed-form soft-CE gradient, ``heads`` stacked heads sharing one
    mini-batch, gradients written in place, torch's fused Adam — in ``processes`` processes at once
    (they share the memory bandwidth this step is bound by). The other methods only add work
    (LfF a second head, ADV/MADV/DisEnt their own networks), so the grid can be no faster than its
    optimiser steps times this."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_floor_worker, args=(heads, steps, 2925, queue)) for _ in range(processes)]
    for p in procs:
        p.start()
    values = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return float(np.mean(values))


def trained_parameters(methods: list[dict]) -> dict[str, int]:
    """Parameters each method trains (head plus the objective's own networks), counted after one
    epoch of ``train_head`` on 64 random rows (lazily-sized modules exist by then)."""
    from llmfair.objectives import GroupSpec, build_objective
    from llmfair.ssl.train_head import HeadTrainingOptions, train_head

    spec = GroupSpec(("language", "modality", "gender"), (("eng", "audio", "female"), ("eng", "audio", "male")))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, DIM)).astype(np.float32)
    y = rng.dirichlet(np.ones(6), size=64).astype(np.float32)
    groups = np.arange(64) % 2
    counts = {}
    for m in methods:
        soft = np.stack([1.0 - groups, groups], axis=1).astype(float) if m["objective"] == "pgdro" else None
        result = train_head(x, y, groups, build_objective(m["objective"], spec), options=HeadTrainingOptions(epochs=1),
                            group_probabilities=soft)
        counts[m["name"]] = sum(p.numel() for module in (result.model, result.objective)
                                for p in module.parameters() if p.requires_grad)
    return counts


PATHS = ("old", "batched")
"""The sweep's two training paths: one run at a time (``train_head``) and batched heads."""
METRIC_KEYS = ("f1", "acc", "tpr_gap_rms", "fpr_gap_rms", "f1_gap_rms", "dp_gap_sum", "dp_gap_rms")


def compare_outputs(old: Path, new: Path) -> dict[str, dict[str, float]]:
    """Per method, over the runs both folders hold: the largest |Δ| of a test probability and of a
    metric, and how many runs kept the same epoch."""
    import pandas as pd

    out: dict[str, dict[str, float]] = {}
    for path in sorted((old / "runs").glob("metrics_*.json")):
        other = new / "runs" / path.name
        if not other.is_file():
            continue
        a, b = json.loads(path.read_text()), json.loads(other.read_text())
        pa, pb = (pd.read_csv(folder / "runs" / a["predictions"]) for folder in (old, new))
        cols = [c for c in pa.columns if c.startswith("prob_")]
        s = out.setdefault(a["method"], {"runs": 0, "prob": 0.0, "metric": 0.0, "same_epoch": 0})
        s["runs"] += 1
        s["prob"] = max(s["prob"], float(np.abs(pa[cols].to_numpy() - pb[cols].to_numpy()).max()))
        s["metric"] = max([s["metric"]] + [abs((a["metrics"][k] or 0.0) - (b["metrics"][k] or 0.0)) for k in METRIC_KEYS])
        s["same_epoch"] += int(a["best_epoch"] == b["best_epoch"])
    return out


def extrapolate(stats: dict, methods: list[dict], steps_full: dict, epochs: int, processes: int,
                startup: float) -> float:
    """Seconds of the full grid predicted from the measured seconds per step of every method and
    the exact step counts of every run of the full grid."""
    total = 0.0
    for m in methods:
        s = stats[m["name"]]
        per_step = s["train_s"] / s["steps"]
        per_run_overhead = (s["run_s"] - s["train_s"]) / s["runs"]
        total += sum(steps_full[m["name"]]) * epochs * per_step + per_run_overhead * len(steps_full[m["name"]])
    return total / processes + startup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=50, help="epochs (recipe: 50)")
    parser.add_argument("--measure-folds", default="1", help="folds of phase 1, measured on both paths (comma-separated)")
    parser.add_argument("--paths", default="old,batched", help="paths measured in phase 1 (old, batched)")
    parser.add_argument("--processes", type=int, default=2, help="parallel shards (one per core)")
    parser.add_argument("--budget", type=float, default=300.0, help="seconds the full grid should fit in (issue 14: 5 min)")
    parser.add_argument("--no-full", action="store_true", help="skip phase 2 (the full grid, batched, measured)")
    parser.add_argument("--full-old", action="store_true",
                        help="phase 2 also runs the full grid one run at a time (measured; about 25 min on 2 cores)")
    parser.add_argument("--full-epochs", type=int, default=None,
                        help="skip phase 1 and run the full grid at this many epochs (batched, and old with --full-old)")
    parser.add_argument("--work", default=None, help="working directory (default: a temporary one)")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_sweep_"))
    work.mkdir(parents=True, exist_ok=True)
    methods, left_out = method_list()
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if not paths or any(p not in PATHS for p in paths):
        raise SystemExit(f"--paths: expected a comma-separated subset of {PATHS}, got {args.paths!r}")
    print(f"bench_sweep: {len(methods)} method variants: {', '.join(m['name'] for m in methods)}")
    if left_out:
        print(f"  registered but left out (need other group attributes / not registered): {'; '.join(left_out)}")
    print(f"  {os.cpu_count()} CPU cores, {args.processes} shard processes × 1 torch thread; load average before: "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    features, groups = make_inputs(work)
    if args.full_epochs is not None:
        full_grid(features, groups, methods, args.full_epochs, work, args.processes, args.budget, args.full_old, {})
        return

    # -------------------------------------------------------------- phase 1: both paths on the same grid
    folds = [int(f) for f in args.measure_folds.split(",")]
    config = config_for(features, groups, methods, folds, args.epochs)
    walls, stats, outs = {}, {}, {}
    for path in paths:
        outs[path] = work / f"measure_{path}_e{args.epochs}"
        walls[path] = run_parallel(config, outs[path], args.processes, batched=path == "batched")
        stats[path] = per_method(outs[path])
        print(f"  {path}: done, load average {', '.join(f'{v:.1f}' for v in os.getloadavg())}", flush=True)
    runs = sum(s["runs"] for s in stats[paths[0]].values())
    print(f"\nphase 1: {runs} runs ({len(methods)} methods × {len(RATIOS)} ratios × folds {folds}) at {args.epochs} epochs, "
          f"each path on the same grid, {args.processes} processes")
    header = f"{'method':<12}{'runs':>5}{'steps':>8}" + "".join(f"{p + ' s/run':>14}{p + ' ms/step':>16}" for p in paths)
    print(header + (f"{'ratio':>8}" if len(paths) == 2 else ""))
    for m in methods:
        row = f"{m['name']:<12}{stats[paths[0]][m['name']]['runs']:>5}{stats[paths[0]][m['name']]['steps']:>8}"
        per_step = {}
        for p in paths:
            s = stats[p][m["name"]]
            per_step[p] = 1000 * s["train_s"] / s["steps"]
            row += f"{s['run_s'] / s['runs']:>14.2f}{per_step[p]:>16.3f}"
        if len(paths) == 2:
            row += f"{per_step['old'] / per_step['batched']:>7.1f}x"
        print(row)
    cpus = {p: CPU_SECONDS[str(outs[p])] for p in paths}
    for p in paths:
        print(f"{p:>8}: wall {walls[p]:6.1f} s ({runs / walls[p] * 60:.1f} runs/min), CPU {cpus[p]:6.1f} s")
    if len(paths) == 2:
        print(f"   ratio old / batched: wall {walls['old'] / walls['batched']:.2f}x, CPU {cpus['old'] / cpus['batched']:.2f}x "
              f"(same grid, same machine, same run; CPU time is what the shards spent, wall time also counts what "
              f"other programs took from them)")
        same = compare_outputs(outs["old"], outs["batched"])
        print("outputs, batched vs old (max |Δ| over the runs; the batched path is exact up to float rounding, which "
              "Adam's normalisation can amplify on near-zero gradients):")
        print(f"{'method':<12}{'runs':>5}{'|Δ prob|':>11}{'|Δ metric|':>12}{'same epoch':>12}")
        for m in methods:
            c = same.get(m["name"], {"runs": 0, "prob": math.nan, "metric": math.nan, "same_epoch": 0})
            print(f"{m['name']:<12}{c['runs']:>5}{c['prob']:>11.1e}{c['metric']:>12.1e}{c['same_epoch']:>8}/{c['runs']}")
    steps_full = grid_steps(methods, FOLDS)
    full_runs = sum(len(v) for v in steps_full.values())
    floor = step_floor(args.processes)
    head_steps = sum(sum(v) for v in steps_full.values()) * args.epochs
    sizes = trained_parameters(methods)
    head_size = sizes[methods[0]["name"]]
    scaled = sum(sum(steps_full[m["name"]]) * args.epochs * sizes[m["name"]] / head_size for m in methods)
    print(f"floor: {head_steps:,} head-steps in the full grid at {args.epochs} epochs; the least exact float32 step "
          f"(ERM, fused Adam, stacked heads, {args.processes} processes at once) takes {1000 * floor:.3f} ms per head "
          f"of {head_size:,} parameters: {head_steps * floor / args.processes:.0f} s = "
          f"{head_steps * floor / args.processes / 60:.1f} min for the heads alone; scaled by the parameters every "
          f"method trains ({', '.join(f'{m}: {n:,}' for m, n in sizes.items() if n != head_size)}), "
          f"{scaled * floor / args.processes:.0f} s = {scaled * floor / args.processes / 60:.1f} min before "
          f"evaluation, the objectives' own arithmetic and I/O")
    predicted = {}
    for p in paths:
        startup = walls[p] - sum(s["run_s"] for s in stats[p].values()) / args.processes
        predicted[p] = extrapolate(stats[p], methods, steps_full, args.epochs, args.processes, startup)
        print(f"full grid ({full_runs} runs, folds 1-5) at {args.epochs} epochs, {p}, extrapolated from the measured "
              f"seconds per step and the exact step counts: {predicted[p]:.0f} s = {predicted[p] / 60:.1f} min")
    if args.no_full:
        return
    full_grid(features, groups, methods, args.epochs, work, args.processes, args.budget, args.full_old, predicted)


def full_grid(features: Path, groups: Path, methods: list[dict], epochs: int, work: Path, processes: int,
              budget: float, with_old: bool, predicted: dict[str, float]) -> None:
    """Phase 2: the whole grid (5 folds) at ``epochs``, batched (and one at a time with
    ``with_old``), measured."""
    from llmfair.sweep import collect_results

    config = config_for(features, groups, methods, FOLDS, epochs)
    walls = {}
    for path in ["batched"] + (["old"] if with_old else []):
        out = work / f"full_{path}_e{epochs}"
        walls[path] = run_parallel(config, out, processes, batched=path == "batched")
        runs = sum(s["runs"] for s in per_method(out).values())
        print(f"\nphase 2: full grid, {path}, {runs} runs at {epochs} epochs: wall {walls[path]:.0f} s = "
              f"{walls[path] / 60:.1f} min ({runs / walls[path] * 60:.1f} runs/min; "
              f"{'within' if walls[path] <= budget else 'OVER'} the {budget:.0f} s budget), CPU "
              f"{CPU_SECONDS[str(out)]:.0f} s")
    old = walls.get("old", predicted.get("old"))
    if old:
        print(f"full grid: old {old:.0f} s ({'measured' if 'old' in walls else 'extrapolated from phase 1'}) vs batched "
              f"{walls['batched']:.0f} s (measured): {old / walls['batched']:.2f}x")
    t0 = time.perf_counter()
    paths = collect_results(work / f"full_batched_e{epochs}")
    print(f"collect_results {time.perf_counter() - t0:.1f} s; results in {paths['markdown']}")
    print(f"load average after: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
