"""Benchmark: training the correction net, 500 epochs on 2,052 rows (the FACES size), batch 32.

The correction-net slides report about 42 s for this training (official notebook: DataLoader,
nn.Sequential, autograd, Adam). Goal here: ≤ 2 s on 2 CPU cores. Printed side by side:

- ``packed``: llmfair's trainer (:func:`llmfair.correction.train_correction_net`), joint and
  independent, 500 epochs, timed in full;
Each row gives wall time and the process's CPU time. Everything runs with one torch thread (the
packed trainer sets it; 32 × 24 matrices gain nothing from a second thread, and on a shared machine a
second spinning thread only adds waiting).

- ``autograd + index batches``: the same model with autograd and torch.optim.Adam, mini-batches
  from index permutations (no DataLoader);
- ``autograd + DataLoader``: the official notebook's loop (TensorDataset + DataLoader(shuffle=True)).

The two autograd loops run ``--reference-epochs`` epochs (default 25) and are scaled to 500
(per-epoch cost is constant); run with ``--reference-epochs 500`` to time them in full.

    .venv/bin/python bench/bench_correction.py [--rows 2052] [--emotions 8] [--reference-epochs 25]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from llmfair.correction import CorrectionOptions, build_correction_model, correction_loss, prepare_inputs, train_correction_net


def simulated(rows: int, emotions: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    e = rng.integers(0, emotions, rows)
    g = rng.integers(0, 2, rows)
    pe = rng.dirichlet(np.ones(emotions), rows) * 0.5 + 0.5 * np.eye(emotions)[e]
    pg = rng.dirichlet(np.ones(2), rows) * 0.5 + 0.5 * np.eye(2)[g]
    return prepare_inputs(pe, pg, "logits"), e, g


def autograd_loop(model, inputs, e, g, epochs: int, *, dataloader: bool, batch: int = 32) -> tuple[float, float]:
    """(wall, CPU) seconds for ``epochs`` epochs of the textbook loop (one torch thread)."""
    x, et, gt = torch.from_numpy(inputs), torch.from_numpy(e), torch.from_numpy(g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    gen = torch.Generator().manual_seed(0)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    started, cpu = time.perf_counter(), time.process_time()
    if dataloader:
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, et, gt), batch_size=batch,
                                             shuffle=True, generator=gen)
        for _ in range(epochs):
            for xb, eb, gb in loader:
                el, gl = model(xb)
                loss = correction_loss(el, gl, eb, gb)
                opt.zero_grad()
                loss.backward()
                opt.step()
    else:
        for _ in range(epochs):
            perm = torch.randperm(len(e), generator=gen)
            for start in range(0, len(e), batch):
                idx = perm[start:start + batch]
                el, gl = model(x[idx])
                loss = correction_loss(el, gl, et[idx], gt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    torch.set_num_threads(previous)
    return time.perf_counter() - started, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2052)
    parser.add_argument("--emotions", type=int, default=8, help="EmoNet's 8 outputs: a 10-input net as in the paper")
    parser.add_argument("--epochs", type=int, default=500)
    parser.add_argument("--reference-epochs", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3, help="packed runs per kind; the best is reported")
    args = parser.parse_args()

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"correction-net training: {args.rows} rows, K={args.emotions} emotions + 2 genders, batch 32, "
          f"{args.epochs} epochs ({-(-args.rows // 32) * args.epochs} steps); {cores} CPU cores, "
          f"torch {torch.__version__}, load average {os.getloadavg()[0]:.2f}")
    inputs, e, g = simulated(args.rows, args.emotions)
    options = CorrectionOptions(epochs=args.epochs)
    rows = []
    for kind in ("joint", "independent"):
        times, cpus = [], []
        for _ in range(args.repeats):
            model = build_correction_model(kind, args.emotions, options)
            started, cpu = time.perf_counter(), time.process_time()
            result = train_correction_net(model, inputs, e, g, options)
            times.append(time.perf_counter() - started)
            cpus.append(time.process_time() - cpu)
        rows.append((f"packed ({kind})", min(times), min(cpus),
                     f"best of {args.repeats}: {', '.join(f'{t:.2f}' for t in times)} s; "
                     f"final train loss {result.train_loss:.3f}"))
    scale = args.epochs / args.reference_epochs
    for name, dataloader in (("autograd + index batches", False), ("autograd + DataLoader (official loop)", True)):
        model = build_correction_model("joint", args.emotions, options)
        wall, cpu = autograd_loop(model, inputs, e.astype(np.int64), g.astype(np.int64), args.reference_epochs,
                                  dataloader=dataloader)
        rows.append((name, wall * scale, cpu * scale,
                     f"{args.reference_epochs} epochs × {scale:g}" if scale != 1 else "timed in full"))
    base = rows[0][1]
    print(f"\n{'trainer':<40}{'wall s':>9}{'CPU s':>9}{'× packed joint':>16}  note")
    for name, wall, cpu, note in rows:
        print(f"{name:<40}{wall:>9.2f}{cpu:>9.2f}{wall / base:>16.1f}  {note}")
    print("\n(wall: elapsed time; CPU: this process's CPU time, which other jobs on a shared machine do not inflate)")
    print("\nslides (official notebook, FACES): ~42 s; goal ≤ 2 s")


if __name__ == "__main__":
    main()
