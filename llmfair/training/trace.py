"""The objective's figures at every optimiser step (λ, max gap, worst cell, per-cell gaps, ...).

``fair/*`` in the Trainer log are averages over a logging window; to see how an adaptive weight
moves (a dual λ climbing, the worst cell switching) a run also keeps one row per step:

- :func:`step_rows` averages the figures recorded during one step (one record per micro-batch
  without exact accumulation, one per step with it) into one row ``{"step", figure: value}``;
  the ``worst/<cell>`` indicators of MinMaxGAP become a ``worst_cell`` column holding the cell's
  name;
- :func:`write_trace` writes ``objective_trace.csv`` and the same scalars to TensorBoard
  (``trace/<figure>`` per step, the worst cell as text) when tensorboard is installed, and the
  plot of :func:`llmfair.report.plots.plot_objective_trace`.

The trainer keeps the rows in every checkpoint (``objective_trace.json``), so a resumed run's
trace is whole.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from llmfair._atomic import write_text

logger = logging.getLogger(__name__)

TRACE_FILE = "objective_trace.csv"
TRACE_PLOT = "objective_trace.png"
CHECKPOINT_TRACE_FILE = "objective_trace.json"
_WORST = "worst/"


def step_rows(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per step: the mean of each figure over the step's records, and ``worst_cell``."""
    sums: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    counts: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for record in records:
        step = int(record["step"])
        if isinstance(record.get("worst_cell"), str):  # a row of an earlier trace (a resumed run)
            sums[step][_WORST + record["worst_cell"]] += 1.0
            counts[step][_WORST + record["worst_cell"]] += 1
        for key, value in record.items():
            if key == "step" or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            sums[step][key] += float(value)
            counts[step][key] += 1
    rows = []
    for step in sorted(sums):
        row: dict[str, Any] = {"step": step}
        worst = {}
        for key, total in sums[step].items():
            mean = total / counts[step][key]
            if key.startswith(_WORST):
                worst[key[len(_WORST):]] = mean
            else:
                row[key] = mean
        if worst:
            row["worst_cell"] = max(worst, key=lambda c: (worst[c], c))
        rows.append(row)
    return rows


def trace_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """``step``, the headline figures first (erm_loss, lambda, max_gap, worst_cell), then the rest sorted."""
    present = {k for row in rows for k in row}
    first = [k for k in ("step", "erm_loss", "lambda", "max_gap", "worst_cell") if k in present]
    return first + sorted(present - set(first))


def write_trace(run_dir: str | os.PathLike, rows: Sequence[Mapping[str, Any]], *,
                tensorboard_dir: str | os.PathLike | None = None) -> list[Path]:
    """Write ``objective_trace.csv`` (+ TensorBoard scalars) into ``run_dir``; nothing without rows
    (an objective that reports no figures). The PNG is the report stage's
    (:func:`llmfair.report.plots.plot_objective_trace`), drawn by the job that runs training."""
    if not rows:
        return []
    run_dir = Path(run_dir)
    columns = trace_columns(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in columns})
    write_text(run_dir / TRACE_FILE, buffer.getvalue())
    written = [run_dir / TRACE_FILE]
    if tensorboard_dir is not None:
        _write_tensorboard(Path(tensorboard_dir), rows)
    return [Path(p) for p in written]


def _write_tensorboard(folder: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional; the CSV holds the same numbers
        logger.info("tensorboard not installed: the per-step trace is in %s only", TRACE_FILE)
        return
    with SummaryWriter(log_dir=str(folder)) as writer:
        for row in rows:
            step = int(row["step"])
            for key, value in row.items():
                if key == "step":
                    continue
                if key == "worst_cell":
                    writer.add_text("trace/worst_cell", str(value), step)
                else:
                    writer.add_scalar(f"trace/{key}", float(value), step)
