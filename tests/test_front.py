"""Fairness–accuracy fronts (``llmfair.report.front``).

``pareto_mask`` against a brute-force double loop on random data with ties and NaNs and on
hand-worked cases; ``front_frame`` columns, option rendering and per-facet fronts; ``write_front``
files (the CSV round-trips, the PNG opens) and the errors a caller can cause.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from llmfair.errors import ConfigError
from llmfair.report import FRONT_FIGURES, format_options, front_frame, pareto_mask, write_front


def _brute_force(acc: np.ndarray, gap: np.ndarray) -> np.ndarray:
    """Row i is on the front iff it is defined and no defined row j dominates it (a plain double loop)."""
    n = len(acc)
    out = []
    for i in range(n):
        if math.isnan(acc[i]) or math.isnan(gap[i]):
            out.append(False)
            continue
        dominated = False
        for j in range(n):
            if math.isnan(acc[j]) or math.isnan(gap[j]):
                continue
            if acc[j] >= acc[i] and gap[j] <= gap[i] and (acc[j] > acc[i] or gap[j] < gap[i]):
                dominated = True
                break
        out.append(not dominated)
    return np.array(out, dtype=bool)


@pytest.mark.parametrize("seed", range(6))
def test_pareto_mask_matches_a_double_loop(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 80))
    # few distinct values: many ties on one axis, exact duplicates, and NaNs in either column
    acc = rng.integers(0, 6, n).astype(float) / 5
    gap = rng.integers(0, 6, n).astype(float) / 10
    acc[rng.random(n) < 0.1] = np.nan
    gap[rng.random(n) < 0.1] = np.nan
    expected = _brute_force(acc, gap)
    assert np.array_equal(pareto_mask(acc, gap), expected)
    assert pareto_mask(acc, gap).dtype == bool


def test_pareto_mask_chunks_agree_with_a_double_loop(monkeypatch):
    import llmfair.report.front as front

    rng = np.random.default_rng(11)
    acc, gap = rng.random(300).round(2), rng.random(300).round(2)
    monkeypatch.setattr(front, "_CHUNK", 7)  # several chunks, the last one short
    assert np.array_equal(front.pareto_mask(acc, gap), _brute_force(acc, gap))


def test_pareto_mask_hand_worked_cases():
    # (acc, gap): A (0.8, 0.10) dominates C (0.7, 0.20); B (0.9, 0.30) trades; D duplicates A; E is NaN
    acc = [0.8, 0.9, 0.7, 0.8, np.nan]
    gap = [0.10, 0.30, 0.20, 0.10, 0.05]
    assert pareto_mask(acc, gap).tolist() == [True, True, False, True, False]
    # equal accuracy, larger gap: dominated (one strict comparison suffices)
    assert pareto_mask([0.5, 0.5], [0.1, 0.2]).tolist() == [True, False]
    # equal gap, lower accuracy: dominated
    assert pareto_mask([0.5, 0.6], [0.1, 0.1]).tolist() == [False, True]
    # a NaN row dominates nothing even with a better other figure
    assert pareto_mask([np.nan, 0.1], [0.0, 0.9]).tolist() == [False, True]
    assert pareto_mask([], []).tolist() == []
    assert pareto_mask([np.nan], [np.nan]).tolist() == [False]


def test_pareto_mask_rejects_mismatched_shapes():
    with pytest.raises(ConfigError, match="same length|one length"):
        pareto_mask([0.1, 0.2], [0.1])
    with pytest.raises(ConfigError):
        pareto_mask([[0.1]], [[0.1]])


# ------------------------------------------------------------------------------ front_frame
def _row(run_id: str, objective: str, acc: float, gap: float, **extra) -> dict:
    row = {"run_id": run_id, "objective": objective, "options": extra.pop("options", {}), "seed": extra.pop("seed", 0)}
    row.update(extra)
    for f in FRONT_FIGURES:
        row[f], row[f"{f}_low"], row[f"{f}_high"] = 0.5, 0.4, 0.6
    row["weighted_f1"], row["weighted_f1_low"], row["weighted_f1_high"] = acc, acc - 0.05, acc + 0.05
    row["worst_cell_gap"], row["worst_cell_gap_low"], row["worst_cell_gap_high"] = gap, max(gap - 0.02, 0), gap + 0.02
    return row


def _rows() -> list[dict]:
    return [
        _row("erm-r1", "erm", 0.60, 0.10, ratio=1, fold=1),
        _row("mmg-r1", "minmaxgap", 0.58, 0.04, ratio=1, fold=1, options={"weight": "dual", "reduction": "lse"}),
        _row("rw-r1", "rw", 0.55, 0.12, ratio=1, fold=1),  # dominated by erm
        _row("erm-r20", "erm", 0.53, 0.20, ratio=20, fold=1),
        _row("mmg-r20", "minmaxgap", 0.49, 0.08, ratio=20, fold=1, options={"tau": 0.1}),
        _row("rw-r20", "rw", 0.52, 0.15, ratio=20, fold=1),  # dominated by nothing at 1:20, by erm-r1 overall
    ]


def test_front_frame_columns_and_options():
    frame = front_frame(_rows())
    figures = [f"{f}{s}" for f in FRONT_FIGURES for s in ("", "_low", "_high")]
    assert list(frame.columns) == ["run_id", "objective", "options", "seed", "ratio", "fold", *figures, "pareto"]
    assert frame["options"].tolist()[:2] == ["", "reduction=lse,weight=dual"]
    assert frame["options"].iloc[4] == "tau=0.1"
    assert frame["pareto"].dtype == bool
    assert frame["pareto"].tolist() == [True, True, False, False, False, False]  # over all rows
    assert np.array_equal(frame["pareto"], pareto_mask(frame["weighted_f1"], frame["worst_cell_gap"]))


def test_front_frame_per_facet():
    frame = front_frame(_rows(), facet="ratio")
    assert frame["pareto"].tolist() == [True, True, False, True, True, True]
    for ratio in (1, 20):
        block = frame[frame["ratio"] == ratio]
        assert np.array_equal(block["pareto"], pareto_mask(block["weighted_f1"], block["worst_cell_gap"]))
    # another pair of figures: the macro F1 / TPR gap columns are all equal here, so every row ties
    tied = front_frame(_rows(), accuracy="macro_f1", gap="tpr_gap_rms", facet="ratio")
    assert tied["pareto"].all()


def test_front_frame_extra_keys_in_order_of_appearance_and_missing_ones():
    rows = [_row("a", "erm", 0.5, 0.1, imbalance=1), _row("b", "rw", 0.6, 0.2, fold=3)]
    frame = front_frame(rows)
    assert list(frame.columns[:6]) == ["run_id", "objective", "options", "seed", "imbalance", "fold"]
    assert math.isnan(frame["fold"].iloc[0]) and frame["fold"].iloc[1] == 3


def test_format_options_is_stable_and_compact():
    assert format_options({}) == "" and format_options(None) == ""
    assert format_options({"weight": "dual", "reduction": "lse"}) == "reduction=lse,weight=dual"
    assert format_options({"b": True, "a": [1, 2], "c": {"y": 1, "x": None}, "d": 1e-3}) == \
        'a=[1,2],b=true,c={"x":null,"y":1},d=0.001'
    assert format_options("already=rendered") == "already=rendered"
    with pytest.raises(ConfigError, match="mapping"):
        format_options(3)


def test_front_frame_errors_name_the_run_and_key():
    rows = _rows()
    del rows[2]["macro_f1_high"]
    with pytest.raises(ConfigError, match=r"rw-r1.*'macro_f1_high'"):
        front_frame(rows)
    rows = _rows()
    del rows[0]["seed"]
    with pytest.raises(ConfigError, match=r"erm-r1.*'seed'"):
        front_frame(rows)
    rows = _rows()
    rows[1]["tpr_gap_rms"] = "0.1"
    with pytest.raises(ConfigError, match=r"mmg-r1.*'tpr_gap_rms'"):
        front_frame(rows)
    with pytest.raises(ConfigError, match="facet 'imbalance'"):
        front_frame(_rows(), facet="imbalance")
    with pytest.raises(ConfigError, match="'accuracy'|accuracy figure"):
        front_frame(_rows(), accuracy="accuracy")
    with pytest.raises(ConfigError, match="repeat run id 'erm-r1'"):
        front_frame(_rows() + [_row("erm-r1", "erm", 0.1, 0.1, ratio=1, fold=2)])
    empty = front_frame([])
    assert empty.empty and list(empty.columns[:4]) == ["run_id", "objective", "options", "seed"]


def test_front_frame_accepts_none_and_nan_figures():
    rows = _rows()
    rows[0]["weighted_f1"] = None
    rows[1]["worst_cell_gap_low"] = float("nan")
    frame = front_frame(rows, facet="ratio")
    assert math.isnan(frame["weighted_f1"].iloc[0]) and not frame["pareto"].iloc[0]
    assert frame["pareto"].iloc[1]  # nothing else defined at 1:1 beats it


# ------------------------------------------------------------------------------ write_front
def _check_png(path):
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 0 and image.size[1] > 0
        return image.size


def test_write_front_writes_both_files_and_the_csv_round_trips(tmp_path):
    rows = _rows()
    rows[3]["weighted_f1_low"] = float("nan")  # a missing bar is skipped, the point drawn
    frame = front_frame(rows, facet="ratio")
    paths = write_front(frame, tmp_path / "out", facet="ratio", title="test front")
    assert [p.name for p in paths] == ["front.csv", "front.png"] and all(p.is_file() for p in paths)
    back = pd.read_csv(paths[0])
    assert list(back.columns) == list(frame.columns)
    assert back["run_id"].tolist() == frame["run_id"].tolist()
    assert back["pareto"].tolist() == frame["pareto"].tolist()
    for ratio in (1, 20):
        block = back[back["ratio"] == ratio]
        assert np.array_equal(block["pareto"].to_numpy(bool), pareto_mask(block["weighted_f1"], block["worst_cell_gap"]))
    np.testing.assert_allclose(back["worst_cell_gap_high"], frame["worst_cell_gap_high"])
    faceted = _check_png(paths[1])
    assert not list((tmp_path / "out").glob(".*.tmp"))  # atomic: no temporary file left behind
    # without a facet: one panel (narrower), and the pareto column follows the figures asked for
    paths = write_front(frame, tmp_path / "flat", accuracy="macro_f1", gap="tpr_gap_rms", reference="rw")
    single = _check_png(paths[1])
    assert single[0] < faceted[0]
    assert pd.read_csv(paths[0])["pareto"].all()  # all tied on macro F1 / TPR gap


def test_write_front_errors(tmp_path):
    with pytest.raises(ConfigError, match="empty"):
        write_front(front_frame([]), tmp_path)
    frame = front_frame(_rows())
    with pytest.raises(ConfigError, match="lacks column"):
        write_front(frame.drop(columns=["macro_f1_low"]), tmp_path)
    with pytest.raises(ConfigError, match="lacks column"):
        write_front(frame, tmp_path, facet="imbalance")
    with pytest.raises(ConfigError, match="gap figure"):
        write_front(frame, tmp_path, gap="f1")
    with pytest.raises(ConfigError, match="color_by='system' is not a column"):
        write_front(frame, tmp_path, color_by="system")
    assert not (tmp_path / "front.csv").exists() and not (tmp_path / "front.png").exists()


def test_write_front_colours_by_any_column(tmp_path):
    rows = [_row(f"{name}-s{seed}", "minmaxgap" if name != "erm" else "erm", 0.5 + 0.01 * i, 0.1 + 0.01 * seed,
                 system=name, seed=seed) for i, name in enumerate(["erm"] + [f"mmg{k}" for k in range(9)])
            for seed in range(2)]
    paths = write_front(front_frame(rows), tmp_path, color_by="system")
    assert set(pd.read_csv(paths[0])["system"]) == {"erm", *(f"mmg{k}" for k in range(9))}
    _check_png(paths[1])
