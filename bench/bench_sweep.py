"""Benchmark: a full IDI-style sweep on cached CREMA-D-sized features (7,442 × 768, synthetic values).

13 method variants — erm, rw, ds, gdro, gadro, pgdro (pseudo gender with soft memberships), lff,
disent, adv, madv, gr, minmaxgap and rw on k-means-like clusters (K = 16, synthetic labels) — plus
any other registered objective that runs on gender groups, × 5 ratios (1, 5, 10, 20, 40) × 5 folds,
on the real EMO-SUPERB CREMA-D label files, with ``--processes`` shards in parallel (one torch
thread each). Prints, per method, runs, optimiser steps, seconds per run and milliseconds per step;
the total wall time and runs per minute.

Two phases (the recipe is 50 epochs; see METHODS.md §1.4):

1. ``--epochs`` (default 50) on the folds of ``--measure-folds`` (default fold 1 only): measured,
   then extrapolated to all folds from the exact number of optimiser steps of every run of the
   full grid (train sizes per fold/ratio, DS's downsampled sizes) and the measured time per step
   of each method;
2. unless ``--no-fit``: the full grid at the largest epoch count that the phase-1 measurement
   predicts to fit ``--budget`` seconds, measured (``--full-epochs N`` runs only this phase, at N).

Not run by pytest.

    .venv/bin/python bench/bench_sweep.py [--epochs 50] [--processes 2] [--budget 600] [--no-fit]
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


def _worker(config_dict: dict, out: str, shard: tuple[int, int]) -> None:
    logging.basicConfig(level=logging.ERROR)  # e.g. RW's empty-cell warnings for 16 clusters at 1:40
    register_all_objectives()
    from llmfair.sweep import SweepConfig, run_sweep

    run_sweep(SweepConfig.from_mapping(config_dict, source="bench_sweep"), out, shard, collect=False, progress=False)


def run_parallel(config, out: Path, processes: int) -> float:
    """Wall time of the whole grid with ``processes`` shards (spawned: each pays its own imports)."""
    ctx = mp.get_context("spawn")
    started = time.perf_counter()
    procs = [ctx.Process(target=_worker, args=(config.to_dict(), str(out), (i, processes))) for i in range(processes)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    if any(p.exitcode != 0 for p in procs):
        raise SystemExit(f"a shard failed: exit codes {[p.exitcode for p in procs]}")
    return time.perf_counter() - started


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=50, help="epochs of the measured phase (recipe: 50)")
    parser.add_argument("--measure-folds", default="1", help="folds measured at --epochs (comma-separated)")
    parser.add_argument("--processes", type=int, default=2, help="parallel shards (one per core)")
    parser.add_argument("--budget", type=float, default=600.0, help="seconds the full sweep should fit in")
    parser.add_argument("--no-fit", action="store_true", help="skip phase 2 (the full grid at the fitting epochs)")
    parser.add_argument("--full-epochs", type=int, default=None,
                        help="skip phase 1 and run the full grid at this many epochs (e.g. to check a fit)")
    parser.add_argument("--work", default=None, help="working directory (default: a temporary one)")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_sweep_"))
    work.mkdir(parents=True, exist_ok=True)
    methods, left_out = method_list()
    print(f"bench_sweep: {len(methods)} method variants: {', '.join(m['name'] for m in methods)}")
    if left_out:
        print(f"  registered but left out (need other group attributes / not registered): {'; '.join(left_out)}")
    print(f"  {os.cpu_count()} CPU cores, {args.processes} shard processes × 1 torch thread; load average before: "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    features, groups = make_inputs(work)
    folds = [int(f) for f in args.measure_folds.split(",")]
    if args.full_epochs is not None:
        full_grid(features, groups, methods, args.full_epochs, work, args.processes, args.budget)
        return

    # -------------------------------------------------------------- phase 1: measured at the recipe's epochs
    config = config_for(features, groups, methods, folds, args.epochs)
    out = work / f"measure_e{args.epochs}"
    wall = run_parallel(config, out, args.processes)
    stats = per_method(out)
    steps_full = grid_steps(methods, FOLDS)
    runs = sum(s["runs"] for s in stats.values())
    print(f"\nphase 1: {runs} runs ({len(methods)} methods × {len(RATIOS)} ratios × folds {folds}) at "
          f"{args.epochs} epochs: wall {wall:.0f} s ({runs / wall * 60:.1f} runs/min)")
    print(f"{'method':<12}{'runs':>5}{'steps':>9}{'s/run':>8}{'ms/step':>9}")
    full_seconds = 0.0
    overhead = 0.0
    for m in methods:
        s = stats[m["name"]]
        ms_step = 1000 * s["train_s"] / s["steps"]
        print(f"{m['name']:<12}{s['runs']:>5}{s['steps']:>9}{s['run_s'] / s['runs']:>8.1f}{ms_step:>9.2f}")
        per_run_overhead = (s["run_s"] - s["train_s"]) / s["runs"]
        full_seconds += sum(steps_full[m["name"]]) * args.epochs * ms_step / 1000 + per_run_overhead * len(steps_full[m["name"]])
        overhead += per_run_overhead * len(steps_full[m["name"]])
    startup = wall - sum(s["run_s"] for s in stats.values()) / args.processes
    full_runs = sum(len(v) for v in steps_full.values())
    predicted = full_seconds / args.processes + startup
    print(f"full grid ({full_runs} runs, folds 1-5) at {args.epochs} epochs, extrapolated from the measured ms/step and "
          f"the exact step counts: {predicted:.0f} s = {predicted / 60:.1f} min "
          f"({full_runs / predicted * 60:.1f} runs/min) with {args.processes} processes; "
          f"process start-up {startup:.0f} s")

    if args.no_fit:
        return
    # -------------------------------------------------------------- phase 2: the largest epoch count that fits
    per_epoch = (full_seconds - overhead) / args.epochs / args.processes
    fit = int((args.budget - startup - overhead / args.processes) // per_epoch)
    if fit < 1:
        print(f"\nphase 2: not even one epoch fits {args.budget:.0f} s")
        return
    full_grid(features, groups, methods, min(fit, args.epochs), work, args.processes, args.budget)


def full_grid(features: Path, groups: Path, methods: list[dict], epochs: int, work: Path, processes: int,
              budget: float) -> None:
    """Phase 2: the whole grid (5 folds) at ``epochs``, measured."""
    from llmfair.sweep import collect_results

    config = config_for(features, groups, methods, FOLDS, epochs)
    out = work / f"full_e{epochs}"
    wall = run_parallel(config, out, processes)
    t0 = time.perf_counter()
    paths = collect_results(out)
    collect = time.perf_counter() - t0
    runs = sum(s["runs"] for s in per_method(out).values())
    print(f"\nphase 2: full grid, {runs} runs at {epochs} epochs: wall {wall:.0f} s = {wall / 60:.1f} min "
          f"({runs / wall * 60:.1f} runs/min; {'within' if wall <= budget else 'OVER'} the {budget:.0f} s budget); "
          f"collect_results {collect:.1f} s; results in {paths['markdown']}")
    print(f"load average after: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
