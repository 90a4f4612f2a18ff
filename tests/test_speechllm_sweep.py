"""Speech-LLM sweeps on the tiny Qwen2-Audio: the grid, the front (figures against scikit-learn,
the Pareto column against pareto_mask), paired comparisons, resume, shards, a changed grid, the
train-imbalance axis, and bad grids refused before any model loads."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from sklearn.metrics import f1_score

from llmfair.cli import main as cli_main
from llmfair.errors import ConfigError
from llmfair.speechllm import sweep as speech_sweep
from tests.test_speechllm_run import corpus, recipe  # noqa: F401  (fixtures)

torch.set_num_threads(1)


def _write(tmp: Path, corpus: Path, **changes) -> Path:
    base = recipe(corpus, objective={"name": "erm"})
    base["training"]["max_steps"] = 1
    (tmp / "recipe.yaml").write_text(yaml.safe_dump(base))
    sweep = {"recipe": str(tmp / "recipe.yaml"), "set": {"data.languages": ["eng"]},
             "objectives": [{"name": "erm"},
                            {"name": "minmaxgap", "sampler": "group_covering", "options": {"lambda_init": 0.5},
                             "grid": {"weight": ["fixed", "dual"]}}],
             "seeds": [0, 1], "n_resamples": 50, **changes}
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def test_plan_validates_and_names_every_run(tmp_path, corpus):
    config = speech_sweep.SpeechSweepConfig.from_yaml(
        _write(tmp_path, corpus, train_imbalance=[None, {"language": "eng", "ratio": 5}]))
    runs = speech_sweep.plan_runs(config)
    assert len(runs) == 2 * 3 * 2  # imbalance × systems × seeds
    assert [r.run_id for r in runs[:6]] == [
        "erm-as-is-s0", "erm-as-is-s1", "minmaxgap_lambda_init-0.5_weight-fixed-as-is-s0", "minmaxgap_lambda_init-0.5_weight-fixed-as-is-s1",
        "minmaxgap_lambda_init-0.5_weight-dual-as-is-s0", "minmaxgap_lambda_init-0.5_weight-dual-as-is-s1"]
    assert {r.system for r in runs} == {"erm", "minmaxgap[lambda_init=0.5,weight=fixed]", "minmaxgap[lambda_init=0.5,weight=dual]"}
    dual = runs[5].recipe
    assert dual["objective"]["options"]["weight"] == "dual" and dual["objective"]["options"]["lambda_init"] == 0.5
    assert dual["objective"]["options"]["reduction"] == "hard"  # resolved: defaults filled in
    assert dual["objective"]["sampler"] == "group_covering" and dual["training"]["seed"] == 1
    assert dual["data"]["train_imbalance"] is None and dual["data"]["languages"] == ["eng"]
    imbalanced = [r for r in runs if r.imbalance != "as-is"]
    assert {r.imbalance for r in imbalanced} == {"eng-1to5-male"}
    assert imbalanced[0].recipe["data"]["train_imbalance"] == {"language": "eng", "ratio": 5}
    # shards partition the plan
    parts = [speech_sweep.plan_runs(config, (i, 3)) for i in range(3)]
    assert sorted(r.run_id for p in parts for r in p) == sorted(r.run_id for r in runs)


@pytest.mark.parametrize("changes, match", [
    ({"objectives": [{"name": "minmaxgap", "grid": {"wieght": ["dual"]}}], "reference": "minmaxgap[wieght=dual]"},
     r"unknown key\(s\) \['wieght'\]"),
    ({"objectives": [{"name": "minmaxgap", "grid": {"lambda_init": [0.5, -1.0]}}]}, "lambda_init >= 0"),
    ({"objectives": [{"name": "minmaxgap", "grid": {"weight": ["dual", "sometimes"]}}]}, "weight='sometimes'"),
    ({"objectives": []}, "zero runs"),
    ({"seeds": []}, "zero runs"),
    ({"objectives": [{"name": "minmaxgap", "grid": {"weight": []}}]}, r"grid.weight=\[\]"),
    ({"objectives": [{"name": "nope"}]}, "'nope' is not a registered objective"),
    ({"reference": "gdro"}, "reference='gdro' is not a system"),
    ({"train_imbalance": [{"language": "eng", "ratio": 0.5}]}, "train_imbalance.ratio=0.5"),
    ({"epochs": 3}, r"unknown key\(s\) \['epochs'\]"),
    ({"set": {"training.learning_rate": "fast"}}, "learning_rate"),
])
def test_bad_grids_are_one_line_errors(tmp_path, corpus, changes, match):
    with pytest.raises(ConfigError, match=match) as info:
        speech_sweep.plan_runs(speech_sweep.SpeechSweepConfig.from_yaml(_write(tmp_path, corpus, **changes)))
    assert "\n" not in str(info.value)


def test_sweep_front_comparisons_resume_and_changed_grid(tmp_path, corpus, llmfair_cache, capsys):
    from llmfair.report import pareto_mask

    path = _write(tmp_path, corpus)
    out = tmp_path / "out"
    assert cli_main(["sweep", str(path), "--out", str(out), "--shard", "0/2", "--no-progress"]) == 0
    assert "3 trained, 0 already finished" in capsys.readouterr().out
    assert cli_main(["sweep", str(path), "--out", str(out), "--shard", "1/2", "--no-progress"]) == 0
    assert "3 trained, 0 already finished" in capsys.readouterr().out

    front = pd.read_csv(out / "front.csv", keep_default_na=False, na_values=["nan", "NaN"])
    assert len(front) == 6 and set(front["system"]) == {"erm", "minmaxgap[lambda_init=0.5,weight=fixed]", "minmaxgap[lambda_init=0.5,weight=dual]"}
    assert set(front["options"]) == {"", "lambda_init=0.5,weight=fixed", "lambda_init=0.5,weight=dual"}
    assert np.array_equal(front["pareto"].to_numpy(bool), pareto_mask(front["weighted_f1"], front["worst_cell_gap"]))
    for _, row in front.iterrows():
        pred = pd.read_csv(out / "runs" / row["run_id"] / "predictions_test.csv")
        y = pred["label"].to_numpy()
        p = pred[[c for c in pred.columns if c.startswith("prob_")]].to_numpy().argmax(1)
        classes = [c[len("prob_"):] for c in pred.columns if c.startswith("prob_")]
        y = np.array([classes.index(v) for v in y])
        assert row["weighted_f1"] == pytest.approx(f1_score(y, p, average="weighted", labels=range(len(classes)),
                                                            zero_division=0), abs=1e-9)
        assert row["weighted_f1_low"] <= row["weighted_f1"] <= row["weighted_f1_high"]
        config = yaml.safe_load((out / "runs" / row["run_id"] / "config.yaml").read_text())
        assert config["training"]["seed"] == row["seed"]
    assert (out / "front.png").stat().st_size > 0
    # the minmaxgap runs keep their per-step trace
    trace = pd.read_csv(out / "runs" / "minmaxgap_lambda_init-0.5_weight-dual-as-is-s0" / "objective_trace.csv")
    assert {"step", "lambda", "max_gap", "worst_cell"} <= set(trace.columns)
    comparison = json.loads((out / "comparisons" / "as-is" / "comparison.json").read_text())
    assert set(comparison["paired"]) == {"minmaxgap[lambda_init=0.5,weight=fixed]", "minmaxgap[lambda_init=0.5,weight=dual]"}
    assert comparison["systems"]["erm"]["seeds"] == 2
    summary = (out / "summary.md").read_text()
    assert "## train imbalance: as-is" in summary and "minmaxgap[lambda_init=0.5,weight=dual]" in summary and "paired" in summary

    # resume: nothing to do; a lost run is retrained, the others are kept as they are
    before = (out / "runs" / "erm-as-is-s1" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    (out / "runs" / "erm-as-is-s0" / "manifest.json").unlink()
    assert cli_main(["sweep", str(path), "--out", str(out), "--no-progress"]) == 0
    assert "1 trained, 5 already finished" in capsys.readouterr().out
    assert (out / "runs" / "erm-as-is-s1" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == before

    # another grid on the same out is refused, naming what changed; nothing is removed
    changed = _write(tmp_path, corpus, seeds=[0, 1, 2])
    assert cli_main(["sweep", str(changed), "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "'seeds' was [0, 1], not [0, 1, 2]" in err and "another --out" in err and "--extend" in err
    assert len(list((out / "runs").iterdir())) == 6
    # a grid that drops runs is refused even with --extend; one that only adds runs trains just those
    fewer = _write(tmp_path, corpus, seeds=[0])
    assert cli_main(["sweep", str(fewer), "--out", str(out), "--extend", "--no-progress"]) == 1
    assert "3 would be dropped" in capsys.readouterr().err
    changed = _write(tmp_path, corpus, seeds=[0, 1, 2])  # (_write reuses one file name)
    assert cli_main(["sweep", str(changed), "--out", str(out), "--extend", "--no-progress"]) == 0
    assert "3 trained, 6 already finished" in capsys.readouterr().out
    assert len(pd.read_csv(out / "front.csv")) == 9
    assert (out / "runs" / "erm-as-is-s1" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == before


def test_encoder_caches_of_one_process_share_memory(tmp_path):
    from llmfair.speechllm.encoder_cache import EncoderCache, clear_shared_memory

    a = EncoderCache(tmp_path, "m", window_seconds=30.0, in_memory=True)
    b = EncoderCache(tmp_path, "m", window_seconds=30.0, in_memory=True)
    other = EncoderCache(tmp_path, "another-model", window_seconds=30.0, in_memory=True)
    a._save(a.key("x"), torch.ones(3, 4), "x")
    (a.path(a.key("x"))).unlink()  # only memory can serve it now
    assert torch.equal(b._load(b.key("x")), torch.ones(3, 4))
    assert other._load(other.key("x")) is None
    assert EncoderCache(tmp_path, "m", window_seconds=30.0)._load(a.key("x")) is None  # not in memory: disk only
    clear_shared_memory()
    assert EncoderCache(tmp_path, "m", window_seconds=30.0, in_memory=True)._load(a.key("x")) is None


SPEECH_LLM_OBJECTIVES = ["erm", "minmaxgap", "rw", "gdro", "gadro", "gr", "lff", "disent", "adv", "madv"]


@pytest.mark.parametrize("name", SPEECH_LLM_OBJECTIVES)
def test_every_speech_llm_objective_can_be_swept(tmp_path, corpus, name):
    """A grid over one option of every objective that runs on the speech LLM plans and resolves."""
    import dataclasses

    from llmfair.objectives import OBJECTIVES

    options_class = OBJECTIVES[name].options_class
    fields = [f for f in dataclasses.fields(options_class)] if dataclasses.is_dataclass(options_class) else []
    numeric = [f for f in fields if isinstance(f.default, float) and not isinstance(f.default, bool)]
    grid = {numeric[0].name: [numeric[0].default, numeric[0].default * 0.5]} if numeric else {}
    config = speech_sweep.SpeechSweepConfig.from_yaml(_write(
        tmp_path, corpus, objectives=[{"name": "erm"}] + ([{"name": name, "grid": grid}] if name != "erm" else []),
        seeds=[0]))
    runs = speech_sweep.plan_runs(config)
    mine = [r for r in runs if r.objective == name]
    assert len(mine) == (len(next(iter(grid.values()))) if grid else 1)
    for run in mine:
        resolved = run.recipe["objective"]["options"]
        for key, value in run.options.items():
            assert resolved[key] == value
