"""Reports: metrics.json against the library and scikit-learn, CSV/Markdown tables, plots, run
comparisons (deltas, gains), label-space checks, atomic writes, and ``llmfair report``."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.stats import norm
from sklearn.metrics import accuracy_score, f1_score, recall_score

from llmfair.cli import main
from llmfair.data.labels import CREMA_D, MELD
from llmfair.errors import ConfigError, DataError
from llmfair.metrics import (
    FAIRNESS_FIGURES, HEADLINE_METRICS, gain, paired_comparison, resample_statistics, summary_dict,
)
from llmfair.predictions import Predictions, read_predictions, write_predictions
from llmfair.report import plots as report_plots
from llmfair.report import run_names, write_report

ROOT = Path(__file__).resolve().parents[1]
R = 200  # bootstrap replicates in tests
SK = {
    "accuracy": accuracy_score,
    "weighted_f1": lambda y, p: f1_score(y, p, average="weighted", zero_division=0),
    "macro_f1": lambda y, p: f1_score(y, p, average="macro", zero_division=0),
}
REQUIRED_SLICE = {"language", "modality", "gender", "n", "accuracy", "weighted_f1", "macro_f1", "ci"}
REQUIRED_GAP = {"language", "modality", "metric", "female", "male", "male_minus_female", "gap", "ci"}


def make_predictions(
    path: Path, *, seed: int = 0, n_utterances: int = 240, female_acc: float = 0.45, male_acc: float = 0.75,
    classes=MELD.classes,
) -> Predictions:
    """3 languages × 2 modalities (each utterance in both), female/male/unknown speakers, random
    probabilities whose argmax is right with a gender-dependent rate (so the gaps are non-zero)."""
    rng = np.random.default_rng(seed)
    k = len(classes)
    n = n_utterances
    language = np.array(["eng", "deu", "jpn"])[np.arange(n) % 3]
    speaker = rng.integers(0, 36, n)
    gender = np.where(speaker % 9 == 8, "unknown", np.where(speaker % 2 == 0, "female", "male"))
    label = rng.integers(0, k, n)
    parts = []
    for modality, bonus in (("audio", 0.0), ("audio_text", 0.1)):
        good = rng.random(n) < np.where(gender == "male", male_acc, female_acc) + bonus
        predicted = np.where(good, label, rng.integers(0, k, n))
        logits = rng.normal(size=(n, k))
        logits[np.arange(n), predicted] += 5.0
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        parts.append((np.full(n, modality), probs))
    return write_predictions(
        path, ids=np.tile([f"u{i}" for i in range(n)], 2), split="test", language=np.tile(language, 2),
        modality=np.concatenate([m for m, _ in parts]), gender=np.tile(gender, 2),
        speaker=np.tile([f"s{s}" for s in speaker], 2), classes=classes,
        probs=np.concatenate([p for _, p in parts]), labels=np.tile(label, 2),
    )


def strict_json(path: Path):
    """json.load that rejects NaN/Infinity (the allow_nan=False reading)."""
    def reject(token: str):
        raise ValueError(f"{path} contains the non-JSON constant {token}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=reject)


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("preds")
    make_predictions(root / "erm.csv", seed=0)
    make_predictions(root / "minmaxgap.csv", seed=1, female_acc=0.6, male_acc=0.65)
    return {"erm": root / "erm.csv", "minmaxgap": root / "minmaxgap.csv"}


@pytest.fixture(scope="module")
def single(tables, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("report_one")
    result = write_report([tables["erm"]], out, n_resamples=R, seed=3)
    return out, result


@pytest.fixture(scope="module")
def pair(tables, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("report_two")
    result = write_report([tables["erm"], tables["minmaxgap"]], out, names=["ERM", "MinMaxGAP"], n_resamples=R, seed=3)
    return out, result


# ------------------------------------------------------------------------------ metrics.json
def test_metrics_json_has_every_key_and_equals_summary_dict(tables, single):
    out, result = single
    data = strict_json(out / "metrics.json")
    assert {"n", "label_space", "overall", "slices", "gaps", "fairness"} <= set(data)
    assert set(HEADLINE_METRICS) <= set(data["overall"])
    assert set(FAIRNESS_FIGURES) <= set(data["fairness"])
    assert data["slices"] and all(REQUIRED_SLICE <= set(s) for s in data["slices"])
    assert data["gaps"] and all(REQUIRED_GAP <= set(g) for g in data["gaps"])
    assert all(set(s["ci"]) == set(HEADLINE_METRICS) for s in data["slices"])
    assert data["label_space"]["classes"] == list(MELD.classes)
    assert data["run"] == {"name": "erm", "source": str(tables["erm"])}
    expected = summary_dict(read_predictions(tables["erm"]), n_resamples=R, seed=3)
    assert {k: v for k, v in data.items() if k != "run"} == json.loads(json.dumps(expected))
    assert result["runs"]["erm"]["summary"]["overall"] == data["overall"]


def test_metrics_json_numbers_match_sklearn(tables, single):
    data = strict_json(single[0] / "metrics.json")
    frame = pd.read_csv(tables["erm"], dtype=str, keep_default_na=False)
    y, p = frame["label"].to_numpy(), frame["prediction"].to_numpy()
    assert data["n"] == len(frame) == 480
    for m, fn in SK.items():
        assert data["overall"][m] == pytest.approx(fn(y, p), abs=1e-12)
    for s in data["slices"]:
        rows = ((frame["language"] == s["language"]) & (frame["modality"] == s["modality"])
                & (frame["gender"] == s["gender"])).to_numpy()
        assert s["n"] == rows.sum()
        for m, fn in SK.items():
            assert s[m] == pytest.approx(fn(y[rows], p[rows]), abs=1e-12)
    # gaps: male − female on known-gender rows; unknown excluded but counted
    for g in data["gaps"]:
        cell = np.ones(len(frame), dtype=bool)
        if g["language"] != "all":
            cell = ((frame["language"] == g["language"]) & (frame["modality"] == g["modality"])).to_numpy()
        f = cell & (frame["gender"] == "female").to_numpy()
        m = cell & (frame["gender"] == "male").to_numpy()
        fn = SK[g["metric"]]
        assert g["female"] == pytest.approx(fn(y[f], p[f]), abs=1e-12)
        assert g["male"] == pytest.approx(fn(y[m], p[m]), abs=1e-12)
        assert g["male_minus_female"] == pytest.approx(fn(y[m], p[m]) - fn(y[f], p[f]), abs=1e-12)
        assert g["n_unknown"] == (cell & (frame["gender"] == "unknown").to_numpy()).sum()
    overall_gap = next(g for g in data["gaps"] if g["language"] == "all" and g["metric"] == "accuracy")
    assert overall_gap["male_minus_female"] > 0.1  # the generator favours male speakers
    # fairness: RMS of per-class TPR gaps and DP gap, by hand with sklearn recall
    known = frame["gender"].isin(["female", "male"]).to_numpy()
    tpr = {gd: recall_score(y[known & (frame["gender"] == gd).to_numpy()], p[known & (frame["gender"] == gd).to_numpy()],
                            labels=list(MELD.classes), average=None, zero_division=np.nan) for gd in ("female", "male")}
    gaps = np.abs(tpr["male"] - tpr["female"])
    assert data["fairness"]["tpr_gap_rms"] == pytest.approx(np.sqrt(np.nanmean(gaps ** 2)), abs=1e-12)
    sel = {gd: np.array([(p[(frame["gender"] == gd).to_numpy()] == c).mean() for c in MELD.classes]) for gd in ("female", "male")}
    dp = np.abs(sel["male"] - sel["female"])
    assert data["fairness"]["dp_gap_sum"] == pytest.approx(np.sqrt((dp ** 2).sum()), abs=1e-12)
    assert data["fairness"]["dp_gap_rms"] == pytest.approx(np.sqrt((dp ** 2).mean()), abs=1e-12)
    assert data["fairness"]["n_unknown_gender"] == (~known).sum() > 0
    # intervals bracket their estimates
    for s in data["slices"]:
        for m in HEADLINE_METRICS:
            low, high = s["ci"][m]
            assert low <= s[m] + 1e-12 and s[m] <= high + 1e-12


def test_csv_tables_parse_and_match_json(single):
    out, _ = single
    data = strict_json(out / "metrics.json")
    slices = pd.read_csv(out / "slices.csv")
    assert len(slices) == len(data["slices"])
    for (_, row), s in zip(slices.iterrows(), data["slices"]):
        assert (row["language"], row["modality"], row["gender"], row["n"]) == (s["language"], s["modality"], s["gender"], s["n"])
        for m in HEADLINE_METRICS:
            assert row[m] == s[m]
            assert [row[f"{m}_low"], row[f"{m}_high"]] == s["ci"][m]
    gaps = pd.read_csv(out / "gaps.csv")
    assert len(gaps) == len(data["gaps"])
    for (_, row), g in zip(gaps.iterrows(), data["gaps"]):
        assert (row["language"], row["modality"], row["metric"]) == (g["language"], g["modality"], g["metric"])
        for f in ("female", "male", "male_minus_female", "gap"):
            assert row[f] == g[f]
            assert [row[f"{f}_low"], row[f"{f}_high"]] == g["ci"][f]
        assert (row["n_female"], row["n_male"], row["n_unknown"]) == (g["n_female"], g["n_male"], g["n_unknown"])


def test_markdown_has_every_slice_row_with_its_interval(single):
    out, result = single
    text = (out / "metrics.md").read_text(encoding="utf-8")
    assert text == result["markdown"]
    data = strict_json(out / "metrics.json")
    for s in data["slices"]:
        low, high = s["ci"]["weighted_f1"]
        cell = f"{s['weighted_f1']:.3f} [{low:.3f}, {high:.3f}]"
        assert f"| {s['language']} | {s['modality']} | {s['gender']} | {s['n']} | " in text
        assert cell in text
    assert f"unknown gender: {data['fairness']['n_unknown_gender']} rows" in text
    for f in FAIRNESS_FIGURES:
        assert f"| {f} | {data['fairness'][f]:.3f} [" in text


# ------------------------------------------------------------------------------------ plots
def _check_png(path: Path, min_size=(500, 300)) -> None:
    assert path.is_file() and path.stat().st_size > 15_000, path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.size[0] >= min_size[0] and img.size[1] >= min_size[1]
        pixels = np.asarray(img.convert("L"), dtype=np.float64)
    assert pixels.std() > 10  # not a blank canvas


def test_plots_are_valid_pngs(single, pair):
    out, result = single
    for name in ("slices.png", "gap_heatmap.png", "confusion_by_gender.png"):
        _check_png(out / "plots" / name)
        assert str(out / "plots" / name) in result["files"]
    two, _ = pair
    for name in ("comparison_slices.png", "comparison_gaps.png"):
        _check_png(two / "plots" / name)
    for run in ("ERM", "MinMaxGAP"):
        _check_png(two / run / "plots" / "gap_heatmap.png")
    assert not list(out.rglob("*.tmp"))


def test_confusion_counts_per_gender(tables):
    pred = read_predictions(tables["erm"])
    matrices = report_plots.confusion_by_gender(pred)
    assert list(matrices) == ["female", "male", "unknown"]
    genders = pred.column("gender")
    for g, counts in matrices.items():
        rows = genders == g
        expected = pd.crosstab(pd.Categorical(pred.labels[rows], categories=range(7)),
                               pd.Categorical(pred.predictions[rows], categories=range(7)), dropna=False).to_numpy()
        np.testing.assert_array_equal(counts, expected)


def test_multilabel_table_reports(tmp_path):
    rng = np.random.default_rng(5)
    n, k = 120, len(CREMA_D.classes)
    soft = rng.dirichlet(np.full(k, 0.3), n)
    probs = rng.dirichlet(np.ones(k), n)
    write_predictions(tmp_path / "ml.csv", ids=[f"u{i}" for i in range(n)], split="test", language="eng",
                      modality=np.where(np.arange(n) % 2 == 0, "audio", "audio_text"),
                      gender=np.where(np.arange(n) % 3 == 0, "female", "male"), speaker=[f"s{i % 10}" for i in range(n)],
                      classes=CREMA_D, probs=probs, labels=soft)
    result = write_report([tmp_path / "ml.csv"], tmp_path / "out", n_resamples=0)
    data = strict_json(tmp_path / "out" / "metrics.json")
    assert data["label_space"]["multilabel"] is True
    assert data["slices"][0]["ci"]["accuracy"] == [None, None]
    assert "No bootstrap intervals" in result["markdown"]
    pred = read_predictions(tmp_path / "ml.csv")
    matrices = report_plots.confusion_by_gender(pred)
    majority = soft.max(axis=1) > 0.5
    assert sum(int(m.sum()) for m in matrices.values()) == majority.sum()
    _check_png(tmp_path / "out" / "plots" / "confusion_by_gender.png", (400, 250))


# ------------------------------------------------------------------------------- comparison
def test_comparison_deltas_equal_differences_of_the_runs(pair):
    out, result = pair
    runs = {name: strict_json(out / name / "metrics.json") for name in ("ERM", "MinMaxGAP")}
    frame = pd.read_csv(out / "comparison.csv", keep_default_na=False, na_values=[""])
    a, b = runs["ERM"], runs["MinMaxGAP"]
    overall = frame[frame["section"] == "overall"].set_index("figure")
    for m in HEADLINE_METRICS:
        assert overall.loc[m, "value_ERM"] == a["overall"][m]
        assert overall.loc[m, "delta_MinMaxGAP"] == pytest.approx(b["overall"][m] - a["overall"][m], abs=1e-12)
        assert overall.loc[m, "gain_MinMaxGAP"] == pytest.approx((b["overall"][m] - a["overall"][m]) / a["overall"][m], abs=1e-12)
    fair = frame[frame["section"] == "fairness"].set_index("figure")
    for f in FAIRNESS_FIGURES:
        assert fair.loc[f, "delta_MinMaxGAP"] == pytest.approx(b["fairness"][f] - a["fairness"][f], abs=1e-12)
        # a gap that shrinks is a positive gain: (ref − M) / ref
        assert fair.loc[f, "gain_MinMaxGAP"] == pytest.approx((a["fairness"][f] - b["fairness"][f]) / a["fairness"][f], abs=1e-12)
        assert fair.loc[f, "gain_MinMaxGAP"] == pytest.approx(gain(f, b["fairness"][f], a["fairness"][f]), abs=1e-12)
    slices = frame[frame["section"] == "slice"].set_index(["language", "modality", "gender", "figure"])
    for s in a["slices"]:
        t = next(x for x in b["slices"] if (x["language"], x["modality"], x["gender"]) == (s["language"], s["modality"], s["gender"]))
        for m in HEADLINE_METRICS:
            row = slices.loc[(s["language"], s["modality"], s["gender"], m)]
            assert (row["value_ERM"], row["value_MinMaxGAP"]) == (s[m], t[m])
            assert row["delta_MinMaxGAP"] == pytest.approx(t[m] - s[m], abs=1e-12)
            assert [row["low_MinMaxGAP"], row["high_MinMaxGAP"]] == t["ci"][m]
    gaps = frame[frame["section"] == "gap"].set_index(["language", "modality", "figure"])
    for g in a["gaps"]:
        h = next(x for x in b["gaps"] if (x["language"], x["modality"], x["metric"]) == (g["language"], g["modality"], g["metric"]))
        row = gaps.loc[(g["language"], g["modality"], f"{g['metric']}_gap")]
        assert row["delta_MinMaxGAP"] == pytest.approx(h["gap"] - g["gap"], abs=1e-12)
        signed = gaps.loc[(g["language"], g["modality"], f"{g['metric']}_male_minus_female")]
        assert signed["delta_MinMaxGAP"] == pytest.approx(h["male_minus_female"] - g["male_minus_female"], abs=1e-12)
        assert np.isnan(signed["gain_MinMaxGAP"])
    # the JSON holds the same rows
    doc = strict_json(out / "comparison.json")
    assert doc["reference"] == "ERM" and [r["name"] for r in doc["runs"]] == ["ERM", "MinMaxGAP"]
    assert len(doc["rows"]) == len(frame)
    first = doc["rows"][0]
    assert first["section"] == "overall" and first["delta_MinMaxGAP"] == pytest.approx(overall.iloc[0]["delta_MinMaxGAP"])
    # the Markdown shows the IDI-style rows and is what the CLI prints
    text = (out / "comparison.md").read_text(encoding="utf-8")
    assert text == result["markdown"]
    assert "| Δ MinMaxGAP |" in text and "| gain MinMaxGAP |" in text
    tpr_gain = fair.loc["tpr_gap_rms", "gain_MinMaxGAP"]
    assert f"{100 * tpr_gain:+.1f} %" in text


# ------------------------------------------------------------------------ paired differences
def variant_predictions(src: Path, path: Path, *, seed: int, fix: float = 0.0, noise: float = 0.0) -> Predictions:
    """The rows of ``src`` with other predictions: a share ``fix`` of all rows turned from wrong to
    right, then a share ``noise`` re-drawn uniformly."""
    pred = read_predictions(src)
    rng = np.random.default_rng(seed)
    p = pred.predictions.copy()
    wrong = np.flatnonzero(p != pred.labels)
    chosen = rng.choice(wrong, int(round(fix * pred.n)), replace=False)
    p[chosen] = pred.labels[chosen]
    redraw = rng.random(pred.n) < noise
    p[redraw] = rng.integers(0, pred.num_classes, int(redraw.sum()))
    f = pred.frame
    probs = np.eye(pred.num_classes)[p] * 0.9 + 0.1 / pred.num_classes
    return write_predictions(path, ids=f["id"], split=f["split"], language=f["language"], modality=f["modality"],
                             gender=f["gender"], speaker=f["speaker"], classes=pred.classes, probs=probs,
                             labels=pred.labels, predictions=p)


@pytest.fixture(scope="module")
def same_rows(tables, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("same_rows")
    variant_predictions(tables["erm"], root / "better.csv", seed=1, fix=0.15)
    variant_predictions(tables["erm"], root / "better2.csv", seed=2, fix=0.15)
    variant_predictions(tables["erm"], root / "noisy.csv", seed=3, noise=0.05)
    return {"ERM": tables["erm"], "Better": root / "better.csv", "Better2": root / "better2.csv", "Noisy": root / "noisy.csv"}


@pytest.fixture(scope="module")
def paired_report(same_rows, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("report_paired")
    paths = [same_rows[n] for n in ("ERM", "Better", "Noisy")]
    result = write_report(paths, out, names=["ERM", "Better", "Noisy"], n_resamples=R, seed=3, plots=False)
    return out, result


REQUIRED_PAIRED = {"delta", "ci_low", "ci_high", "p_value", "resolved", "usable"}


def test_comparison_json_holds_the_paired_differences(same_rows, paired_report):
    out, result = paired_report
    doc = strict_json(out / "comparison.json")
    assert set(doc["paired"]) == {"Better", "Noisy"}  # every non-reference run, not the reference
    figures = doc["figures"]
    assert figures[:3] == list(HEADLINE_METRICS) and set(FAIRNESS_FIGURES) <= set(figures)
    assert "gap/all/all/accuracy" in figures and "gap/eng/audio/weighted_f1" in figures
    for name in ("Better", "Noisy"):
        assert set(doc["paired"][name]) == set(figures)
        for key, d in doc["paired"][name].items():
            assert REQUIRED_PAIRED <= set(d), (name, key)
            assert isinstance(d["resolved"], bool) and d["usable"] <= R
    fields = ("reference", "reference_system", "unit", "n_resamples", "seed", "confidence", "method", "n_rows", "n_clusters")
    assert {k: doc[k] for k in fields} == {
        "reference": "ERM", "reference_system": "ERM", "unit": "utterance", "n_resamples": R, "seed": 3,
        "confidence": 0.95, "method": "paired percentile bootstrap", "n_rows": 480, "n_clusters": 240}
    frame = pd.read_csv(same_rows["ERM"], dtype=str, keep_default_na=False)
    assert doc["speakers"] == {g: frame.loc[frame["gender"] == g, "speaker"].nunique() for g in ("female", "male", "unknown")}
    assert doc["systems"]["ERM"]["runs"] == ["ERM"] and doc["systems"]["Better"]["seeds"] == 1
    # the same numbers as the library function, and the values are those of the runs' own reports
    tables = {n: [read_predictions(same_rows[n])] for n in ("ERM", "Better", "Noisy")}
    direct = paired_comparison(tables, n_resamples=R, seed=3, run_names={n: [n] for n in tables})
    assert doc["paired"] == json.loads(json.dumps(direct["paired"]))
    assert doc["systems"] == json.loads(json.dumps(direct["systems"]))
    erm = strict_json(out / "ERM" / "metrics.json")
    better = strict_json(out / "Better" / "metrics.json")
    acc = doc["paired"]["Better"]["accuracy"]
    assert acc["delta"] == pytest.approx(better["overall"]["accuracy"] - erm["overall"]["accuracy"], abs=1e-12)
    assert acc["delta"] == pytest.approx(0.15, abs=1e-12)  # right on 15 % more rows
    assert acc["resolved"] is True and acc["p_value"] < 0.05
    assert doc["systems"]["ERM"]["figures"]["tpr_gap_rms"]["mean"] == pytest.approx(erm["fairness"]["tpr_gap_rms"], abs=1e-12)
    assert result["comparison"]["paired"]["paired"]["Better"]["accuracy"] == acc


def test_comparison_markdown_marks_resolved_and_not_resolved(paired_report):
    out, result = paired_report
    text = (out / "comparison.md").read_text(encoding="utf-8")
    assert text == result["markdown"]
    doc = strict_json(out / "comparison.json")
    spk = doc["speakers"]
    assert (f"## Paired differences vs ERM (utterance bootstrap, {R} resamples; {spk['female']} female / "
            f"{spk['male']} male speakers)") in text
    lines = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}

    def cell(name: str, key: str) -> str:
        d = doc["paired"][name][key]
        p = d["p_value"]
        p_text = f"p<{2.0 / d['usable']:.2g}" if p == 0 else f"p={p:.3f}"
        verdict = "**resolved**" if d["resolved"] else "not resolved"
        return f"{d['delta']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] {p_text} {verdict}"

    assert cell("Better", "accuracy") in lines["accuracy"] and "**resolved**" in lines["accuracy"]
    unresolved = [k for k, d in doc["paired"]["Noisy"].items() if not d["resolved"] and d["delta"] is not None]
    assert unresolved
    for key in unresolved[:5] + ["accuracy", "gap/all/all/accuracy"]:
        assert cell("Noisy", key) in lines[key]
    ref = doc["systems"]["ERM"]["figures"]["worst_cell_gap"]
    assert f"| worst_cell_gap | {ref['mean']:.3f} [{ref['ci_low']:.3f}, {ref['ci_high']:.3f}] |" in text


def test_headline_comparison_shows_the_intervals_of_every_figure(pair):
    out, _ = pair
    text = (out / "comparison.md").read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| ERM | "))
    erm = strict_json(out / "ERM" / "metrics.json")
    for f in FAIRNESS_FIGURES:
        low, high = erm["fairness"]["ci"][f]
        assert f"{erm['fairness'][f]:.3f} [{low:.3f}, {high:.3f}]" in row, f
    low, high = erm["overall"]["ci"]["accuracy"]
    assert row.startswith(f"| ERM | {erm['overall']['accuracy']:.3f} [{low:.3f}, {high:.3f}] |")


def _headline_rows(text: str) -> dict[str, list[str]]:
    """The cells of comparison.md's headline table by row label (the first table after its title)."""
    part = text.split("## Headline figures\n\n", 1)[1].split("\n\n", 1)[0]
    rows = [[c.strip() for c in line.strip("|").split(" | ")] for line in part.splitlines()]
    return {row[0]: row[1:] for row in rows[2:]} | {"header": rows[0][1:]}


def _interval(cell: str) -> tuple[float, float, float]:
    value, rest = cell.split(" [", 1)
    low, high = rest.rstrip("]").split(", ")
    return float(value), float(low), float(high)


def test_headline_comparison_shows_paired_intervals_that_contain_their_estimates(paired_report):
    """The headline table of comparison.md: every run's figures with their intervals (those of its
    metrics.json), each Δ with its paired interval (that of comparison.json); every interval shown
    contains its value, the fairness figures' included."""
    out, _ = paired_report
    text = (out / "comparison.md").read_text(encoding="utf-8")
    doc = strict_json(out / "comparison.json")
    rows = _headline_rows(text)
    figures = rows["header"]
    assert figures == list(HEADLINE_METRICS) + list(FAIRNESS_FIGURES)
    for name in ("ERM", "Better", "Noisy"):
        run = strict_json(out / name / "metrics.json")
        for figure, cell in zip(figures, rows[name]):
            block = run["overall"] if figure in HEADLINE_METRICS else run["fairness"]
            low, high = block["ci"][figure]
            assert cell == f"{block[figure]:.3f} [{low:.3f}, {high:.3f}]", (name, figure)
            assert low <= block[figure] <= high
            value, lo, hi = _interval(cell)
            assert lo <= value <= hi
        if name == "ERM":
            continue
        for figure, cell in zip(figures, rows[f"Δ {name}"]):
            d = doc["paired"][name][figure]
            assert cell == f"{d['delta']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]", (name, figure)
            assert d["ci_low"] <= d["delta"] <= d["ci_high"]
    assert "a Δ row with an interval carries the paired interval" in text
    assert "every interval contains its estimate (docs/intervals.md)" in text
    erm = strict_json(out / "ERM" / "metrics.json")
    assert erm["bootstrap"]["interval_methods"]["gap"] == "folded"
    assert erm["bootstrap"]["interval_methods"]["worst_cell_gap"] == "folded_box"
    # every interval of the comparison contains its estimate: the runs' rows and the systems
    frame = pd.read_csv(out / "comparison.csv")
    for name in ("ERM", "Better", "Noisy"):
        ok = frame[f"low_{name}"].notna() & frame[f"value_{name}"].notna()
        assert ((frame[f"low_{name}"] <= frame[f"value_{name}"]) & (frame[f"value_{name}"] <= frame[f"high_{name}"]))[ok].all()
        for key, fig in doc["systems"][name]["figures"].items():
            if None not in (fig["mean"], fig["ci_low"]):
                assert fig["ci_low"] <= fig["mean"] <= fig["ci_high"], (name, key)


def test_seed_systems_keep_plain_deltas_in_the_headline(same_rows, tmp_path):
    """A run that is one seed of a several-seed system has no paired Δ of its own: its headline Δ
    row stays the plain difference (the system's paired Δ is in the paired table)."""
    paths = [same_rows["ERM"], same_rows["Better"], same_rows["Better2"]]
    result = write_report(paths, tmp_path / "seeds", names=["ERM", "fix-s1", "fix-s2"], systems=["ERM", "Fix", "Fix"],
                          n_resamples=30, seed=0, plots=False)
    rows = _headline_rows(result["markdown"])
    assert all("[" not in cell for cell in rows["Δ fix-s1"]) and all("[" in cell for cell in rows["fix-s1"])
    assert "whether two runs on the same rows differ is answered by the paired differences below" in result["markdown"]


def test_runs_on_different_rows_get_no_paired_block(pair):
    out, result = pair  # ERM and MinMaxGAP were generated with different labels and speakers
    doc = strict_json(out / "comparison.json")
    assert "paired" not in doc and "systems" not in doc
    assert "do not hold the same rows" in doc["paired_skipped"]
    text = (out / "comparison.md").read_text(encoding="utf-8")
    assert "## Paired differences\n\nNot computed: the runs do not hold the same rows" in text
    assert result["comparison"]["paired"] is None


def test_systems_group_seeds_and_refuse_a_run_given_twice(same_rows, tmp_path):
    paths = [same_rows["ERM"], same_rows["Better"], same_rows["Better2"]]
    result = write_report(paths, tmp_path / "seeds", names=["ERM", "fix-s1", "fix-s2"], systems=["ERM", "Fix", "Fix"],
                          n_resamples=50, seed=0, plots=False)
    doc = strict_json(tmp_path / "seeds" / "comparison.json")
    assert set(doc["paired"]) == {"Fix"} and doc["systems"]["Fix"]["runs"] == ["fix-s1", "fix-s2"]
    assert doc["systems"]["Fix"]["seeds"] == 2 and [r["system"] for r in doc["runs"]] == ["ERM", "Fix", "Fix"]
    runs = {n: strict_json(tmp_path / "seeds" / n / "metrics.json")["overall"]["accuracy"] for n in ("fix-s1", "fix-s2")}
    fix = doc["systems"]["Fix"]["figures"]["accuracy"]
    assert fix["mean"] == pytest.approx((runs["fix-s1"] + runs["fix-s2"]) / 2, abs=1e-12)
    assert fix["seed_std"] == pytest.approx(abs(runs["fix-s1"] - runs["fix-s2"]) / np.sqrt(2), abs=1e-12)
    assert "| figure | ERM (reference) | Fix (2 seeds) | Δ Fix |" in result["markdown"]
    assert f"{fix['mean']:.3f} [{fix['ci_low']:.3f}, {fix['ci_high']:.3f}] sd {fix['seed_std']:.3f}" in result["markdown"]
    with pytest.raises(DataError, match="system 'Fix' lists the same run twice"):
        write_report([same_rows["ERM"], same_rows["Better"], same_rows["Better"]], tmp_path / "dup",
                     systems=["ERM", "Fix", "Fix"], n_resamples=10, plots=False)
    assert not (tmp_path / "dup").exists()
    with pytest.raises(ConfigError, match="2 system name"):
        write_report(paths, tmp_path / "bad", systems=["A", "B"], n_resamples=10, plots=False)
    # without resamples there is nothing to pair, and the comparison says so
    write_report(paths[:2], tmp_path / "none", n_resamples=0, plots=False)
    assert "n_resamples = 0" in strict_json(tmp_path / "none" / "comparison.json")["paired_skipped"]


def test_resolution_is_z_sqrt2_times_the_bootstrap_sd(tables, single):
    out, _ = single
    data = strict_json(out / "metrics.json")
    z = norm.ppf(0.975)
    assert data["bootstrap"]["resolution_z"] == pytest.approx(z, abs=1e-12) and abs(z - 1.96) < 1e-3
    pred = read_predictions(tables["erm"])
    reps = resample_statistics(pred, ("language", "modality", "gender"), n_resamples=R, seed=3)  # summary's draws

    def resolution(values: np.ndarray) -> float:
        return z * np.sqrt(2) * np.std(values, ddof=1)

    for m in HEADLINE_METRICS:
        assert data["overall"]["resolution"][m] == pytest.approx(resolution(reps.merge(()).metric(m)[:, 0]), abs=1e-12)
    for g in data["gaps"]:
        where = {} if g["language"] == "all" else {"language": g["language"], "modality": g["modality"]}
        female = reps.where(**where, gender="female").merge(()).metric(g["metric"])[:, 0]
        male = reps.where(**where, gender="male").merge(()).metric(g["metric"])[:, 0]
        ok = ~np.isnan(male - female)
        assert g["resolution"]["gap"] == pytest.approx(resolution(np.abs(male - female)[ok]), abs=1e-12)
        assert g["resolution"]["male_minus_female"] == pytest.approx(resolution((male - female)[ok]), abs=1e-12)
    selection = reps.where(gender=("female", "male")).merge(("gender",)).per_class("selection_rate")
    dp_sum = np.sqrt(((selection[:, 1] - selection[:, 0]) ** 2).sum(axis=-1))
    assert data["fairness"]["resolution"]["dp_gap_sum"] == pytest.approx(resolution(dp_sum), abs=1e-12)
    assert set(data["fairness"]["resolution"]) == set(FAIRNESS_FIGURES)
    # metrics.md shows it next to the estimate; gaps.csv holds it
    text = (out / "metrics.md").read_text(encoding="utf-8")
    assert "| metric | estimate | resolvable difference |" in text
    acc = data["overall"]
    low, high = acc["ci"]["accuracy"]
    assert f"| accuracy | {acc['accuracy']:.3f} [{low:.3f}, {high:.3f}] | {acc['resolution']['accuracy']:.3f} |" in text
    f = data["fairness"]
    assert f"| tpr_gap_rms | {f['tpr_gap_rms']:.3f} [" in text and f"| {f['resolution']['tpr_gap_rms']:.3f} |" in text
    gaps = pd.read_csv(out / "gaps.csv")
    assert gaps["gap_resolution"].tolist() == pytest.approx([g["resolution"]["gap"] for g in data["gaps"]], abs=1e-15)
    assert "Resolvable difference: 1.96 · √2 · bootstrap SE" in text
    none = summary_dict(pred, n_resamples=0)
    assert none["overall"]["resolution"] == {m: None for m in HEADLINE_METRICS}
    assert none["bootstrap"]["resolution_z"] is None and all(g["resolution"]["gap"] is None for g in none["gaps"])


def test_different_label_spaces_are_refused(tables, tmp_path):
    other = tmp_path / "crema.csv"
    make_predictions(other, seed=2, n_utterances=60, classes=CREMA_D.classes)
    out = tmp_path / "out"
    with pytest.raises(DataError, match="different label spaces") as exc:
        write_report([tables["erm"], other], out, n_resamples=0, plots=False)
    assert str(tables["erm"]) in str(exc.value) and str(other) in str(exc.value)
    assert not out.exists()


def test_failure_leaves_existing_metrics_json_untouched(tables, tmp_path, monkeypatch):
    out = tmp_path / "out"
    write_report([tables["erm"]], out, n_resamples=0, plots=False)
    before = (out / "metrics.json").read_bytes()
    (out / "notes.txt").write_text("kept")

    def broken(*_args, **_kwargs):
        raise RuntimeError("disk full while plotting")

    monkeypatch.setattr(report_plots, "plot_confusion_by_gender", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_report([tables["minmaxgap"]], out, n_resamples=0, plots=True)
    assert (out / "metrics.json").read_bytes() == before
    monkeypatch.undo()
    bad = tmp_path / "bad.csv"
    bad.write_text("id,split\nu1,test\n")
    with pytest.raises(DataError, match="missing column"):
        write_report([bad], out, n_resamples=0, plots=False)
    assert (out / "metrics.json").read_bytes() == before
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".metrics.json.*"))
    # an existing directory is reused: files replaced, other files kept
    write_report([tables["minmaxgap"]], out, n_resamples=0, plots=False)
    assert strict_json(out / "metrics.json")["run"]["name"] == "minmaxgap"
    assert (out / "notes.txt").read_text() == "kept"


def test_run_names_are_unique_and_safe():
    assert run_names(["a/x.csv", "b/x.csv", "c/x.csv"]) == ["x", "x-2", "x-3"]
    assert run_names(["plots.csv"]) == ["plots-2"]
    assert run_names(["a.csv", "b.csv"], ["ERM", "Min Max/GAP"]) == ["ERM", "Min_Max_GAP"]
    with pytest.raises(ConfigError, match="2 predictions file"):
        run_names(["a.csv", "b.csv"], ["only"])
    with pytest.raises(ConfigError, match="empty"):
        run_names(["a.csv"], [".."])


def test_bad_options_are_config_errors(tables, tmp_path):
    with pytest.raises(ConfigError, match="unit"):
        write_report([tables["erm"]], tmp_path, unit="rater")
    with pytest.raises(ConfigError, match="non-negative"):
        write_report([tables["erm"]], tmp_path, n_resamples=-1)
    with pytest.raises(ConfigError, match="at least one"):
        write_report([], tmp_path)


# ------------------------------------------------------------------------------------- CLI
def test_cli_report_writes_files_and_prints_markdown(tables, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["report", str(tables["erm"]), str(tables["minmaxgap"]), "--out", str(out), "--names", "ERM,MMG",
                 "--n-resamples", "50", "--seed", "1", "--unit", "speaker", "--no-plots"])
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.startswith("# Comparison of 2 runs (reference: ERM)")
    for path in ("comparison.md", "comparison.csv", "comparison.json", "ERM/metrics.json", "MMG/slices.csv", "MMG/gaps.csv"):
        assert (out / path).is_file(), path
    assert not (out / "plots").exists()
    data = strict_json(out / "MMG" / "metrics.json")
    assert data["bootstrap"] == {**data["bootstrap"], "unit": "speaker", "n_resamples": 50, "seed": 1}


def test_cli_missing_file_is_a_one_line_error(tmp_path):
    run = subprocess.run([sys.executable, "-m", "llmfair.cli", "report", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 1
    assert run.stderr.startswith("llmfair: error:") and run.stderr.strip().count("\n") == 0
    assert "nope.csv" in run.stderr
    assert not (tmp_path / "o").exists()
