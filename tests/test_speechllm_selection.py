"""Model selection on the dev split for speech-LLM runs (recipe section ``selection``), on the tiny
Qwen2-Audio and the built-in corpus: the kept epoch is the one the rule ranks first and the saved
adapter reproduces its dev figures (checked against scikit-learn); an unmet bound keeps the
smallest gap and says so; criterion ``last`` and the dev scoring itself change no weight; a resume
from an earlier checkpoint ends in the same choice; bad values are named."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from sklearn.metrics import accuracy_score, f1_score

from llmfair.errors import ConfigError
from llmfair.predictions import read_predictions
from llmfair.speechllm.run import predict, train
from llmfair.training.config import RunConfig, parse_override
from llmfair.training.selection import SelectionOptions
from tests.test_speechllm_run import (  # noqa: F401  (fixtures)
    adapter_weights,
    corpus,
    launch_two_processes,
    recipe,
    write_recipe,
)

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


def selection_recipe(corpus: Path, selection: dict | None = None, *, objective: dict | None = None,
                     learning_rate: float = 7e-3, epochs: int = 3, rows: int = 12, **training) -> dict:
    """12 train rows, batch 4, a few epochs; the dev split covers every language and modality
    (26 rows, so the per-cell gender gaps are defined)."""
    values = recipe(corpus, objective=objective, max_steps=-1, num_train_epochs=epochs, learning_rate=learning_rate,
                    **training)
    values["data"].update(max_train_examples=rows, languages=["eng", "deu", "jpn"], modalities=["audio", "audio_text"])
    if selection is not None:
        values["selection"] = selection
    return values


def history_of(run: Path) -> list[dict]:
    return json.loads((run / "selection" / "history.json").read_text())["history"]


def manifest_of(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def sklearn_figures(pred) -> dict[str, float]:
    """Weighted / macro F1, accuracy, dev loss and the worst (language, modality) cell's
    |male − female| weighted-F1 gap, written independently of llmfair.metrics."""
    y, p = pred.labels, pred.probs.argmax(axis=1)
    frame = pd.DataFrame({"language": pred.frame["language"], "modality": pred.frame["modality"],
                          "gender": pred.frame["gender"], "y": y, "p": p})
    gaps = []
    for _, cell in frame.groupby(["language", "modality"]):
        by_gender = {g: f1_score(rows["y"], rows["p"], average="weighted", zero_division=0)
                     for g, rows in cell.groupby("gender") if g in ("female", "male")}
        if len(by_gender) == 2:
            gaps.append(abs(by_gender["male"] - by_gender["female"]))
    return {"weighted_f1": f1_score(y, p, average="weighted", zero_division=0),
            "macro_f1": f1_score(y, p, average="macro", zero_division=0),
            "accuracy": accuracy_score(y, p),
            "dev_loss": float(-np.log(pred.probs[np.arange(len(y)), y]).mean()),
            "worst_cell_gap": max(gaps)}


def assert_figures_match(history_entry: dict, expected: dict[str, float], tol: float = 1e-6) -> None:
    for name, value in expected.items():
        assert history_entry[name] == pytest.approx(value, abs=tol), name


# ------------------------------------------------------------------------------------ runs
@pytest.fixture(scope="module")
def plain_run(llmfair_cache, corpus, tmp_path_factory) -> Path:
    """The same recipe as ``metric_run`` without a selection section."""
    run = tmp_path_factory.mktemp("selection") / "plain"
    train(RunConfig.from_mapping(selection_recipe(corpus, save_strategy="epoch", save_total_limit=None)), run)
    return run


@pytest.fixture(scope="module")
def metric_run(llmfair_cache, corpus, tmp_path_factory) -> Path:
    """Highest dev weighted F1 over 3 epochs of MinMaxGAP (dual λ: an objective with state)."""
    run = tmp_path_factory.mktemp("selection") / "metric"
    train(RunConfig.from_mapping(selection_recipe(corpus, {"criterion": "metric"}, save_strategy="epoch",
                                                  save_total_limit=None)), run)
    return run


# ------------------------------------------------------------------------------------ (a) metric
@pytest.mark.slow
def test_metric_keeps_the_argmax_epoch_and_its_adapter_reproduces_it(metric_run, tmp_path) -> None:
    history, manifest = history_of(metric_run), manifest_of(metric_run)
    assert [h["epoch"] for h in history] == [1.0, 2.0, 3.0]
    f1 = np.array([h["weighted_f1"] for h in history])
    best = int(np.argmax(f1))  # the first of equal maxima: ties go to the earlier epoch
    assert best != len(history) - 1, f"the last epoch is the best ({f1}): this run cannot tell keeping from restoring"
    chosen = manifest["selection"]
    assert (chosen["criterion"], chosen["step"], chosen["epoch"]) == ("metric", history[best]["step"],
                                                                      history[best]["epoch"])
    assert chosen["history"] == history and chosen["figures"]["weighted_f1"] == f1[best]
    assert "met_bound" not in chosen
    on_disk = yaml.safe_load((metric_run / "config.yaml").read_text())["selection"]
    assert on_disk == {"criterion": "metric", "metric": "weighted_f1", "gap": "worst_cell_gap", "max_gap": None}

    # the adapter on a fresh base model reproduces the chosen epoch's dev figures (scikit-learn)
    pred = read_predictions(predict(metric_run, "dev", tmp_path / "dev.csv"))
    assert len(pred) == 26
    assert_figures_match(history[best], sklearn_figures(pred))
    # and so do the predictions train() wrote at the end
    assert_figures_match(history[best], sklearn_figures(read_predictions(metric_run / "predictions_dev.csv")))


# ------------------------------------------------------------------------------------ (b) constrained
@pytest.mark.slow
def test_constrained_without_a_feasible_epoch_keeps_the_smallest_gap(llmfair_cache, corpus, tmp_path, caplog) -> None:
    selection = {"criterion": "constrained", "gap": "f1_gap_rms", "max_gap": 0.05}
    run = tmp_path / "constrained"
    with caplog.at_level(logging.INFO, logger="llmfair.speechllm.run"):
        manifest = train(RunConfig.from_mapping(selection_recipe(corpus, selection, objective={"name": "erm"},
                                                                 learning_rate=1e-2, epochs=4)), run)
    history = history_of(run)
    gaps = [h["f1_gap_rms"] for h in history]
    assert all(g is not None and g > 0.05 for g in gaps), f"some epoch meets the bound: {gaps}"
    # smallest gap, then the higher weighted F1, then the earlier epoch
    best = min(range(len(history)), key=lambda i: (gaps[i], -history[i]["weighted_f1"], i))
    assert len(set(gaps)) > 1, f"every epoch has the same gap ({gaps}): the choice would not be tested"
    chosen = manifest["selection"]
    assert chosen["met_bound"] is False
    assert (chosen["step"], chosen["epoch"]) == (history[best]["step"], history[best]["epoch"])
    assert chosen["figures"]["f1_gap_rms"] == min(gaps)
    assert any("no evaluation met f1_gap_rms <= 0.05" in r.getMessage() for r in caplog.records)
    assert_figures_match(history[best], sklearn_figures(read_predictions(run / "predictions_dev.csv")))
    # config.yaml holds the resolved rule, and reads back as the same options
    reread = RunConfig.from_yaml(run / "config.yaml")
    assert reread.selection == {**selection, "metric": "weighted_f1"}
    assert reread.selection_options() == SelectionOptions(**selection)


# ------------------------------------------------------------------------------------ (c) no effect
@pytest.mark.slow
def test_criterion_last_and_dev_scoring_change_no_weight(plain_run, metric_run, corpus, tmp_path) -> None:
    run = tmp_path / "last"
    manifest = train(RunConfig.from_mapping(selection_recipe(corpus, {"criterion": "last"}, save_strategy="epoch",
                                                             save_total_limit=None)), run)
    assert manifest["selection"] == {"criterion": "last", "step": manifest_of(plain_run)["global_steps"]}
    assert not (run / "selection").exists()  # nothing evaluated
    plain, last = adapter_weights(plain_run), adapter_weights(run)
    assert plain.keys() == last.keys() and all(torch.equal(plain[k], last[k]) for k in plain)

    # an active rule scores dev after every epoch; training itself is untouched: the same objective
    # trace per step, and its last dev evaluation equals the plain run's final dev predictions
    assert (metric_run / "objective_trace.csv").read_text() == (plain_run / "objective_trace.csv").read_text()
    plain_dev = read_predictions(plain_run / "predictions_dev.csv")
    assert_figures_match(history_of(metric_run)[-1], sklearn_figures(plain_dev))
    # ... while the kept (earlier) epoch's adapter is not the plain run's last one
    kept = adapter_weights(metric_run)
    assert not all(torch.equal(plain[k], kept[k]) for k in plain)


# ------------------------------------------------------------------------------------ resume
@pytest.mark.slow
def test_resume_from_an_earlier_checkpoint_ends_in_the_same_choice(metric_run, tmp_path, caplog) -> None:
    """RUN/selection/ is left ahead of the checkpoint (as after a kill between the dev evaluation
    and the next complete checkpoint): the resume drops the later evaluations, reloads the state
    chosen at the checkpoint, retrains, and ends with the uninterrupted run's choice and adapter."""
    history = history_of(metric_run)
    first = history[0]["step"]
    assert (metric_run / "selection" / f"best-{first}.safetensors").is_file()  # checkpoint-<first> chose it
    resumed = tmp_path / "resumed"
    shutil.copytree(metric_run, resumed)
    config = RunConfig.from_yaml(resumed / "config.yaml")
    with caplog.at_level(logging.INFO, logger="llmfair.speechllm.selection"):
        manifest = train(config, resumed, resume=str(resumed / "checkpoints" / f"checkpoint-{first}"))
    assert any(f"1 dev evaluation(s) up to step {first}" in r.getMessage() for r in caplog.records)
    assert manifest["selection"]["step"] == manifest_of(metric_run)["selection"]["step"]
    again = history_of(resumed)
    assert [h["step"] for h in again] == [h["step"] for h in history]
    for old, new in zip(history, again):
        assert_figures_match(new, {k: v for k, v in old.items() if v is not None}, tol=1e-9)
    expected, got = adapter_weights(metric_run), adapter_weights(resumed)
    assert all(torch.allclose(expected[k], got[k], atol=1e-7) for k in expected)


# ------------------------------------------------------------------------------------ 2 processes
@pytest.mark.slow
def test_two_processes_make_the_choice_of_one(llmfair_cache, corpus, metric_run, tmp_path) -> None:
    """`accelerate launch --multi_gpu --num_processes 2` (gloo on CPU), 2 rows per rank: every rank
    scores the dev split, they agree on the choice (no hang), and the choice, its history and the
    saved adapter are those of one process with 4 rows per batch (``metric_run``)."""
    values = selection_recipe(corpus, {"criterion": "metric"}, per_device_train_batch_size=2, save_strategy="epoch",
                              save_total_limit=None)
    cfg = write_recipe(tmp_path / "recipe.yaml", values)
    two = tmp_path / "two"
    launch_two_processes(cfg, two, llmfair_cache)
    assert json.loads((two / "world.json").read_text())["world_size"] == 2
    assert manifest_of(two)["selection"]["step"] == manifest_of(metric_run)["selection"]["step"]
    for one, got in zip(history_of(metric_run), history_of(two), strict=True):
        assert got["step"] == one["step"]
        assert_figures_match(got, {k: v for k, v in one.items() if v is not None and k != "step"}, tol=1e-5)
    reference, got = adapter_weights(metric_run), adapter_weights(two)
    assert got.keys() == reference.keys()
    for name, w in reference.items():
        torch.testing.assert_close(got[name], w, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------ (d) bad values
@pytest.fixture
def recipe_file(corpus, tmp_path) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(selection_recipe(corpus)), encoding="utf-8")
    return path


@pytest.mark.parametrize("overrides, message", [
    ({"selection.criterion": "best"}, r"selection\.criterion='best'; expected one of"),
    ({"selection.max_gap": -1}, r"selection\.max_gap is only used by criterion 'constrained'"),
    ({"selection.criterion": "constrained", "selection.max_gap": -1}, r"selection\.max_gap=-1"),
    ({"selection.criterion": "constrained"}, r"selection\.max_gap=None"),
    ({"selection.foo": 1}, r"\[selection\]: unknown key\(s\) \['foo'\] for SelectionOptions"),
    ({"selection.criterion": "metric", "selection.metric": "dev_loss"}, r"selection\.metric='dev_loss'"),
    ({"selection.criterion": "min_gap", "selection.gap": "gender_gap"}, r"selection\.gap='gender_gap'"),
])
def test_bad_selection_values_name_the_key(recipe_file, overrides, message) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        RunConfig.from_yaml(recipe_file, overrides)
    assert str(info.value).startswith(f"{recipe_file} [selection]: ") and "\n" not in str(info.value)


def test_selection_section_round_trips_and_defaults_to_last(recipe_file, tmp_path) -> None:
    assert RunConfig.from_yaml(recipe_file).selection == {}
    assert not RunConfig.from_yaml(recipe_file).selection_options().active
    config = RunConfig.from_yaml(recipe_file, dict(map(parse_override, ["selection.criterion=constrained",
                                                                        "selection.max_gap=0.1"])))
    options = config.selection_options()
    assert (options.criterion, options.metric, options.gap, options.max_gap) == (
        "constrained", "weighted_f1", "worst_cell_gap", 0.1)
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump(config.to_dict()), encoding="utf-8")
    assert RunConfig.from_yaml(again).to_dict() == config.to_dict()
    with pytest.raises(ConfigError, match=r"\[selection\]: selection must be a mapping"):
        RunConfig.from_mapping({"selection": "metric"})


def test_zero3_refuses_an_active_rule(recipe_file, tmp_path) -> None:
    overrides = {"training.deepspeed": str(ROOT / "recipes" / "deepspeed" / "zero3.json"),
                 "selection.criterion": "metric"}
    with pytest.raises(ConfigError, match=r"\[selection\]: selection\.criterion='metric' .*ZeRO-3") as info:
        train(RunConfig.from_yaml(recipe_file, overrides), tmp_path / "run")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()  # refused before anything was written
