"""``recipes/sweeps/two_sided_builtin.yaml`` from the command line, on a subset of its grid.

The corpus comes from the recipe's own header command (recording sessions, male raters who hear
anger as sadness, the CREMA-D layout with its ``ratings.csv``) and the sweep from the recipe's YAML
with the paths, the folds and the seeds replaced and only ``erm`` and ``two_sided`` kept:

- the layout's ratings file is what the sweep's raters module reads (same columns, ids = the
  FileName stems of the fold files, every clip rated by one session's one-gender panel);
- results.csv / results.md carry the rater-side columns, and every rater-side and speaker-side
  figure in them equals a recomputation from the run files with numpy alone (binarise at 1/K,
  selection rates per gender, √Σ_c ΔSP_c², mean and sample std over the runs);
- paired by (fold, seed), ``two_sided`` has a lower rater-side ΔSP than ERM in every pair.

Measured (folds 1–3, seed 0, corpus seed 0): rater_dp_gap_sum ERM 0.414 / 0.708 / 0.745 →
two_sided 0.273 / 0.225 / 0.150; accuracy 0.709 / 0.692 / 0.720 → 0.667 / 0.675 / 0.578 (two_sided
costs accuracy in all three; fold 3 predicts anger for 63 % of the test clips, 24 % true). On a
smaller corpus (120 rows per pair, 20 epochs) the reduction held in 2 of 3 pairs only; the recipe's
full grid and the other methods are in docs/data.md.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from llmfair.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "sweeps" / "two_sided_builtin.yaml"
CLASSES = ("angry", "sad", "disgust", "fear", "neutral", "happy")
FOLDS, SEEDS = [1, 2, 3], [0]


def _header_command(text: str, program: str) -> list[str]:
    """The arguments of the ``llmfair <program> ...`` command in the recipe's header comment
    (continuation lines joined)."""
    comment = "\n".join(line[1:].strip() for line in text.splitlines() if line.startswith("#"))
    match = re.search(rf"llmfair {program} (.*)", comment.replace("\\\n", " "))
    assert match, f"no `llmfair {program}` command in the header of {RECIPE}"
    return program.split() + shlex.split(match.group(1))


def _replace(args: list[str], **values: str) -> list[str]:
    args = list(args)
    for flag, value in values.items():
        option = "--" + flag.replace("_", "-")
        args[args.index(option) + 1] = value
    return args


@pytest.fixture(scope="module")
def recipe_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("two_sided_recipe")
    text = RECIPE.read_text(encoding="utf-8")
    synth = _replace(_header_command(text, "data synth"), out=str(root / "corpus"),
                     crema_d_layout=str(root / "crema_d"))
    assert "--recording-sessions" in synth and "--rater-bias" in synth
    assert main(synth) == 0
    config = yaml.safe_load(text)
    config.update(labels_dir=str(root / "crema_d"), ratings_file=str(root / "crema_d" / "ratings.csv"),
                  out=str(root / "sweep"), folds=FOLDS, seeds=SEEDS)
    config["features"].update(audio_dir=str(root / "crema_d" / "audio"), cache_dir=str(root / "cache"))
    config["methods"] = [m for m in config["methods"] if m["name"] in ("erm", "two_sided")]
    assert [m["name"] for m in config["methods"]] == ["erm", "two_sided"]
    path = root / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["sweep", str(path), "--no-progress"]) == 0
    return root, root / "sweep"


def test_the_layout_writes_the_sweeps_ratings_file(recipe_sweep):
    from llmfair.data.synth.crema_d_layout import RATINGS_COLUMNS
    from llmfair.sweep.raters import RATINGS_COLUMNS as SWEEP_COLUMNS

    root, _ = recipe_sweep
    assert RATINGS_COLUMNS == SWEEP_COLUMNS
    ratings = pd.read_csv(root / "crema_d" / "ratings.csv", dtype=str)
    assert tuple(ratings.columns) == SWEEP_COLUMNS
    labels = pd.read_csv(root / "crema_d" / "labels_consensus_1.csv", dtype=str)
    assert set(ratings["id"]) == set(labels["FileName"].str[:-len(".wav")])
    assert set(ratings["emotion"]) <= set(CLASSES) and set(ratings["rater_gender"]) == {"female", "male"}
    panels = ratings.groupby("id")["rater_gender"].nunique()
    assert (panels == 1).all()  # sessions on: every clip is rated by one session's one-gender panel


def test_an_older_layout_of_the_same_corpus_gains_the_ratings_file(recipe_sweep):
    """A layout written before ``ratings.csv`` existed (layout_version 1, same corpus and seed) is
    rewritten without ``overwrite``; another seed still needs it."""
    import json

    from llmfair.data.synth.crema_d_layout import write_crema_d_layout
    from llmfair.errors import DataError

    root, _ = recipe_sweep
    old = root / "old_layout"
    write_crema_d_layout(root / "corpus", old, seed=0)
    manifest = json.loads((old / "layout.json").read_text())
    del manifest["layout_version"], manifest["ratings"]
    (old / "layout.json").write_text(json.dumps(manifest))
    (old / "ratings.csv").unlink()
    assert write_crema_d_layout(root / "corpus", old, seed=0)["layout_version"] == 2
    assert (old / "ratings.csv").read_bytes() == (root / "crema_d" / "ratings.csv").read_bytes()
    with pytest.raises(DataError, match="--overwrite"):
        write_crema_d_layout(root / "corpus", old, seed=1)


def _delta_sp(probs: np.ndarray, male: np.ndarray) -> np.ndarray:
    """|selection rate among the male rows − among the female rows| per class, prediction p_c > 1/K."""
    on = probs > 1.0 / probs.shape[1]
    return np.abs(on[male].mean(0) - on[~male].mean(0))


def _recomputed(out: Path) -> pd.DataFrame:
    """Per run, from the prediction files alone: rater-side and speaker-side √Σ_c ΔSP_c²."""
    rows = []
    for method in ("erm", "two_sided"):
        for fold in FOLDS:
            for seed in SEEDS:
                run = f"{method}-r1-f{fold}-s{seed}"
                rater = pd.read_csv(out / "runs" / f"rater_predictions_{run}.csv")
                speaker = pd.read_csv(out / "runs" / f"predictions_{run}.csv")
                rat = _delta_sp(rater[[f"prob_{c}" for c in CLASSES]].to_numpy(),
                                rater["rater_gender"].to_numpy() == "male")
                spk = _delta_sp(speaker[[f"prob_{c}" for c in CLASSES]].to_numpy(),
                                speaker["gender"].to_numpy() == "male")
                rows.append({"method": method, "fold": fold, "seed": seed, "n_rater_rows": len(rater),
                             "rater_dp_gap_sum": np.sqrt((rat ** 2).sum()),
                             "rater_dp_gap_rms": np.sqrt((rat ** 2).mean()),
                             "dp_gap_sum": np.sqrt((spk ** 2).sum()), "test_ids": set(speaker["id"]),
                             "rater_rows": set(zip(rater["utterance"], rater["rater"], rater["rater_gender"]))})
    return pd.DataFrame(rows)


def test_results_hold_the_rater_side_recomputed_from_the_run_files(recipe_sweep):
    root, out = recipe_sweep
    table = pd.read_csv(out / "results.csv")
    for column in ("rater_dp_gap_sum_mean", "rater_dp_gap_sum_std", "rater_dp_gap_rms_mean", "gain_rater_dp_gap_sum"):
        assert column in table.columns
    assert re.search(r"\| DPgap \| DPgap_rat \| runs \|", (out / "results.md").read_text())

    runs = _recomputed(out)
    ratings = pd.read_csv(root / "crema_d" / "ratings.csv", dtype=str)
    for _, run in runs.iterrows():  # the per-rater rows are the layout's ratings of the test clips
        expected = ratings[ratings["id"].isin(run["test_ids"])]
        assert run["rater_rows"] == set(zip(expected["id"], expected["rater"], expected["rater_gender"]))
        assert run["n_rater_rows"] == len(expected)
    for method, block in runs.groupby("method"):
        row = table[(table["kind"] == "method") & (table["method"] == method)].iloc[0]
        assert row["n_runs"] == len(block) == len(FOLDS) * len(SEEDS)
        for metric in ("rater_dp_gap_sum", "rater_dp_gap_rms", "dp_gap_sum"):
            assert row[f"{metric}_mean"] == pytest.approx(block[metric].mean(), abs=1e-9)
            assert row[f"{metric}_std"] == pytest.approx(block[metric].std(ddof=1), abs=1e-9)


def test_two_sided_lowers_the_rater_side_gap_paired_by_fold_and_seed(recipe_sweep):
    _, out = recipe_sweep
    runs = _recomputed(out).set_index(["fold", "seed", "method"])["rater_dp_gap_sum"].unstack("method")
    print("rater_dp_gap_sum per (fold, seed):\n", runs.round(3).to_string())
    drop = runs["erm"] - runs["two_sided"]
    assert (drop > 0).all(), f"two_sided does not lower the rater-side gap in every pair: {drop.round(3).to_dict()}"
