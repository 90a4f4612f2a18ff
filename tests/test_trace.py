"""The per-step objective trace: one row per optimiser step, the worst cell by name."""
from __future__ import annotations

import csv

import pytest
import torch

from llmfair.objectives import GroupSpec, ObjectiveInputs, build_objective
from llmfair.training.trace import step_rows, write_trace


def test_step_rows_average_micro_batches_and_name_the_worst_cell():
    records = [
        {"step": 1, "lambda": 1.0, "max_gap": 0.2, "worst/eng/audio": 1.0, "worst/deu/audio": 0.0},
        {"step": 1, "lambda": 3.0, "max_gap": 0.4, "worst/eng/audio": 1.0, "worst/deu/audio": 0.0},
        {"step": 2, "lambda": 2.0, "max_gap": float("nan"), "worst/eng/audio": 0.0, "worst/deu/audio": 1.0},
    ]
    rows = step_rows(records)
    assert rows == [{"step": 1, "lambda": 2.0, "max_gap": pytest.approx(0.3), "worst_cell": "eng/audio"},
                    {"step": 2, "lambda": 2.0, "worst_cell": "deu/audio"}]
    assert step_rows(rows) == rows  # a resumed run re-reads its rows unchanged


def test_minmaxgap_reports_the_worst_cell_as_an_indicator_per_usable_cell(tmp_path):
    records = [{"language": l, "modality": "audio", "gender": g} for l in ("eng", "deu") for g in ("female", "male")]
    spec, ids = GroupSpec.from_records(records, ["language", "modality", "gender"])
    objective = build_objective("minmaxgap", spec, {"weight": "fixed", "lambda_init": 1.0})
    # eng: |1.0 − 0.2| = 0.8 is the largest gap; deu: |0.5 − 0.4| = 0.1
    loss = torch.tensor([0.2, 1.0, 0.4, 0.5])
    by_group = {spec.groups[i]: i for i in range(spec.num_groups)}
    group_ids = torch.tensor([by_group[(r["language"], r["modality"], r["gender"])] for r in records])
    figures = objective(ObjectiveInputs(per_sample_loss=loss, group_ids=group_ids)).figures
    assert figures["worst/eng/audio"] == 1.0 and figures["worst/deu/audio"] == 0.0
    assert "worst_cell" not in figures  # no cell index to be averaged into nonsense
    paths = write_trace(tmp_path, step_rows([{"step": 1, **figures}]))
    with open(paths[0], newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["worst_cell"] == "eng/audio" and float(row["max_gap"]) == pytest.approx(0.8)
    from llmfair.report.plots import plot_objective_trace

    assert len(paths) == 1 and plot_objective_trace(step_rows([{"step": 1, **figures}]), tmp_path / "t.png").stat().st_size > 0
