"""`llmfair benchmark`: base models zero-shot and fine-tuned runs (one or several seeds) scored on
the same rows, with the frozen-encoder cache; base models of several backbone families in one report
(``--model NAME=MODEL:FAMILY``), runs matched to their base by model *and* family; and the bad
inputs it must refuse before loading."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from llmfair.benchmark import resolve_systems, run_benchmark
from llmfair.cli import main as cli_main
from llmfair.data.meld_st import read_meld_st
from llmfair.errors import ConfigError
from llmfair.predictions import read_predictions
from llmfair.speechllm.run import build_classifier, parse_seeds, predict_examples, train, train_seeds
from llmfair.training.config import RunConfig
from tests.test_speechllm_run import corpus, recipe  # noqa: F401  (fixtures)

torch.set_num_threads(1)


def _probs(path: Path) -> np.ndarray:
    table = read_predictions(path)
    frame = table.frame.sort_values(["id", "modality"])
    return frame[[f"prob_{c}" for c in table.classes]].to_numpy()


@pytest.fixture(scope="module")
def finished_run(llmfair_cache, corpus, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("bench") / "erm"
    train(RunConfig.from_mapping(recipe(corpus, objective={"name": "erm"}, max_steps=3, learning_rate=5e-3)), run)
    return run


@pytest.fixture(scope="module")
def seeded_run(llmfair_cache, corpus, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("bench-seeds") / "erm"
    config = RunConfig.from_mapping(recipe(corpus, objective={"name": "erm"}, max_steps=2, learning_rate=5e-3))
    train_seeds(config, run, [0, 1], predict_splits=[])
    return run


def test_zero_shot_and_finetuned_on_the_same_rows(llmfair_cache, corpus, finished_run, tmp_path) -> None:
    out = tmp_path / "bench"
    result = run_benchmark(["tiny"], [f"erm={finished_run}"], out, corpus=corpus, n_resamples=50, plots=False,
                           progress=False)
    # every language of the corpus and both modalities by default
    expected = read_meld_st(corpus, splits=["test"], modalities=("audio", "audio_text"))
    assert result["rows"] == len(expected)
    zero = read_predictions(out / "zero-shot" / "predictions_test.csv")
    assert set(zero.frame["language"]) == {"eng", "deu", "jpn"}
    assert set(zero.frame["modality"]) == {"audio", "audio_text"}

    # zero-shot = the base model itself: a fresh LoRA (B = 0) on the same base gives the same probabilities
    config = RunConfig.from_mapping(recipe(corpus))
    classifier, _, collator, _ = build_classifier(config)
    direct = predict_examples(classifier, collator, expected, tmp_path / "direct.csv", batch_size=5)
    np.testing.assert_allclose(_probs(out / "zero-shot" / "predictions_test.csv"), _probs(direct), atol=1e-5)

    # the fine-tuned system reproduces the run's own test predictions on the rows they share (eng/audio)
    own = read_predictions(finished_run / "predictions_test.csv").frame.set_index(["id", "modality"])
    bench = read_predictions(out / "erm" / "predictions_test.csv").frame.set_index(["id", "modality"])
    cols = [c for c in own.columns if c.startswith("prob_")]
    shared = own.index.intersection(bench.index)
    assert len(shared) == len(own)
    np.testing.assert_allclose(bench.loc[shared, cols].to_numpy(), own.loc[shared, cols].to_numpy(), atol=1e-5)
    assert not np.allclose(_probs(out / "zero-shot" / "predictions_test.csv"), _probs(out / "erm" / "predictions_test.csv"),
                           atol=1e-3)  # the adapter changes the model

    # the encoder ran at most once per clip: the second system is served from the cache
    erm_cache = result["systems"][1]["tables"][0]["encoder_cache"]
    assert erm_cache["misses"] == 0 and erm_cache["hits"] == result["rows"]
    summary = json.loads((out / "benchmark.json").read_text())
    assert [s["name"] for s in summary["systems"]] == ["zero-shot", "erm"]
    assert summary["speakers"]["female"] >= 1 and summary["speakers"]["male"] >= 1
    comparison = json.loads((out / "report" / "comparison.json").read_text())
    assert set(comparison["paired"]) == {"erm"}

    # without the cache the probabilities are the same
    again = run_benchmark(["tiny"], [], tmp_path / "nocache", corpus=corpus, encoder_cache=False, n_resamples=0,
                          plots=False, progress=False)
    np.testing.assert_allclose(_probs(tmp_path / "nocache" / "zero-shot" / "predictions_test.csv"),
                               _probs(out / "zero-shot" / "predictions_test.csv"), atol=1e-5)
    assert again["systems"][0]["tables"][0]["encoder_cache"] is None


def test_multi_seed_run_is_one_system(llmfair_cache, corpus, seeded_run, tmp_path) -> None:
    assert json.loads((seeded_run / "seeds.json").read_text())["seeds"] == [0, 1]
    out = tmp_path / "bench"
    result = run_benchmark([], [str(seeded_run)], out, corpus=corpus, languages=["eng"], modalities=["audio"],
                           n_resamples=20, plots=False, progress=False)
    (system,) = result["systems"]
    assert system["name"] == "erm" and system["seeds"] == [0, 1]
    a, b = (_probs(out / "erm" / f"seed-{s}" / "predictions_test.csv") for s in (0, 1))
    assert not np.allclose(a, b)  # two seeds, two models
    comparison = json.loads((out / "report" / "comparison.json").read_text())
    assert comparison["systems"]["erm"]["seeds"] == 2


def test_bad_inputs_are_refused_before_loading(llmfair_cache, corpus, finished_run, seeded_run, tmp_path,
                                               caplog) -> None:
    with pytest.raises(ConfigError, match="trained on base model 'tiny:qwen2_audio'.*not a --model"):
        resolve_systems(["/some/other/model"], [str(finished_run)])
    with pytest.raises(ConfigError, match="given twice"):
        resolve_systems(["tiny"], [str(finished_run), f"again={finished_run}"])
    with pytest.raises(ConfigError, match="training seed 0 twice"):
        resolve_systems([], [f"erm={finished_run}", f"erm={seeded_run / 'seed-0'}"])
    with pytest.raises(ConfigError, match="not a finished llmfair run"):
        resolve_systems([], [str(tmp_path)])
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        resolve_systems([], [])
    with pytest.raises(ConfigError, match=r"given more than once in '0,1,0'"):
        parse_seeds("0,1,0")
    with pytest.raises(ConfigError, match="reference 'nope'"):
        run_benchmark(["tiny"], [], tmp_path / "x", corpus=corpus, reference="nope", progress=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"holds files that are not a benchmark.s \(e.g. .*notes.txt\) and no benchmark.json"):
        run_benchmark(["tiny"], [], foreign, corpus=corpus, progress=False)
    assert (foreign / "notes.txt").read_text() == "mine" and len(list(foreign.iterdir())) == 1
    # a split with one gender only: a warning, and the gaps are undefined rather than an error
    with caplog.at_level(logging.WARNING, logger="llmfair.benchmark"):
        from llmfair.benchmark import load_benchmark_examples

        examples = load_benchmark_examples(RunConfig.from_mapping(recipe(corpus)), corpus, "test", ["eng"], ["audio"])
        assert {e.gender for e in examples} == {"female", "male"}
    females = {e.speaker for e in examples if e.gender == "female"}
    table = tmp_path / "genders.csv"
    table.write_text("speaker,gender\n" + "".join(f"{s},male\n" for s in females))
    with caplog.at_level(logging.WARNING, logger="llmfair.benchmark"):
        config = RunConfig.from_mapping({**recipe(corpus), "data": {"root": str(corpus), "gender_table": str(table)}})
        load_benchmark_examples(config, corpus, "test", ["eng"], ["audio"])
    assert any("no female speakers" in r.getMessage() for r in caplog.records)


def test_cli_benchmark(llmfair_cache, corpus, finished_run, tmp_path, capsys) -> None:
    out = tmp_path / "cli"
    code = cli_main(["benchmark", "--model", "tiny", f"erm={finished_run}", "--corpus", str(corpus), "--out", str(out),
                     "--languages", "eng,deu", "--n-resamples", "30", "--unit", "speaker", "--no-plots",
                     "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "2 system(s)" in printed and "female" in printed
    summary = json.loads((out / "benchmark.json").read_text())
    assert summary["languages"] == ["eng", "deu"] and summary["bootstrap"]["unit"] == "speaker"
    # a second run into the same directory needs --overwrite, and then replaces only its own files
    assert cli_main(["benchmark", "--model", "tiny", "--corpus", str(corpus), "--out", str(out), "--no-plots"]) == 1
    assert "--overwrite" in capsys.readouterr().err


def _relabelled(run: Path, family: str, tmp_path: Path) -> Path:
    """A copy of ``run`` whose recipe and manifest say it was trained on the tiny ``family`` (what
    resolve_systems reads; no model is loaded)."""
    import shutil

    import yaml

    copy = tmp_path / f"run-{family}"
    shutil.copytree(run, copy)
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["model"]["family"] = family
    (copy / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["backbone"]["family"] = family
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_runs_are_matched_to_their_base_model_and_family(llmfair_cache, finished_run, tmp_path) -> None:
    from llmfair.benchmark import split_family
    from llmfair.speechllm.tiny import tiny_model_path

    assert split_family("tiny:qwen2_5_omni") == ("tiny", "qwen2_5_omni")
    assert split_family("tiny") == ("tiny", None) and split_family("Qwen/Qwen2-Audio-7B") == ("Qwen/Qwen2-Audio-7B", None)
    odd = tmp_path / "models:v2"  # an existing path keeps its colon
    odd.mkdir()
    assert split_family(str(odd)) == (str(odd), None)
    with pytest.raises(ConfigError, match=r"unknown speech-LLM family 'qwen9'; registered: \['qwen2_5_omni', "):
        split_family("tiny:qwen9")

    omni_run = _relabelled(finished_run, "qwen2_5_omni", tmp_path)
    # a run of the tiny Omni is not a fine-tuned `--model tiny` (the recipe's family: Qwen2-Audio) ...
    with pytest.raises(ConfigError) as info:
        resolve_systems(["tiny"], [str(omni_run)])
    message = str(info.value)
    assert "trained on base model 'tiny:qwen2_5_omni'" in message and "['tiny:qwen2_audio']" in message
    assert "add --model tiny:qwen2_5_omni" in message and "\n" not in message
    with pytest.raises(ConfigError, match="trained on base model 'tiny:qwen2_5_omni'"):
        resolve_systems(["tiny"], [str(omni_run)], family="qwen2_audio")
    # ... but of `--model tiny:qwen2_5_omni`, or of `--model tiny` under a recipe of that family
    systems = resolve_systems(["tiny", "tiny:qwen2_5_omni", "tiny:voxtral"], [f"erm={finished_run}",
                                                                           f"omni-erm={omni_run}"])
    assert [(s.name, s.kind, s.model, s.family) for s in systems] == [
        ("zero-shot-tiny", "zero_shot", "tiny", "qwen2_audio"),
        ("zero-shot-tiny-qwen2_5_omni", "zero_shot", "tiny", "qwen2_5_omni"),
        ("zero-shot-tiny-voxtral", "zero_shot", "tiny", "voxtral"),
        ("erm", "finetuned", "tiny", "qwen2_audio"), ("omni-erm", "finetuned", "tiny", "qwen2_5_omni")]
    assert [s.family for s in resolve_systems(["tiny"], [str(omni_run)], family="qwen2_5_omni")] == [
        "qwen2_5_omni", "qwen2_5_omni"]
    # seeds of one system must share model and family
    with pytest.raises(ConfigError, match=r"mixes base models 'tiny:qwen2_audio' and 'tiny:qwen2_5_omni'"):
        resolve_systems([], [f"erm={finished_run}", f"erm={omni_run}"])
    # a checkpoint directory decides its family; a family named for it must be its own
    omni_dir = str(tiny_model_path(family="qwen2_5_omni"))
    assert resolve_systems([omni_dir], [])[0].family == "qwen2_5_omni"
    with pytest.raises(ConfigError, match=r"model.family is 'voxtral' but model .* is a 'qwen2_5_omni' checkpoint"):
        resolve_systems([f"{omni_dir}:voxtral"], [])


def test_one_report_compares_the_families(llmfair_cache, corpus, finished_run, tmp_path, capsys) -> None:
    """Zero-shot base models of every family and a fine-tuned run in one `llmfair benchmark`: the
    same rows, one predictions table and one family per system, all in one paired comparison; a
    recipe whose prompts a family cannot take is refused before any model loads."""
    out = tmp_path / "families"
    code = cli_main(["benchmark", "--model", "qwen2_audio=tiny", "--model", "omni=tiny:qwen2_5_omni",
                     "--model", "voxtral=tiny:voxtral", f"erm={finished_run}", "--corpus", str(corpus),
                     "--out", str(out), "--languages", "eng", "--modalities", "audio", "--n-resamples", "20",
                     "--no-plots", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "benchmark.json").read_text())
    assert [(s["name"], s["family"]) for s in summary["systems"]] == [
        ("qwen2_audio", "qwen2_audio"), ("omni", "qwen2_5_omni"), ("voxtral", "voxtral"), ("erm", "qwen2_audio")]
    tables = [read_predictions(out / name / "predictions_test.csv") for name in ("qwen2_audio", "omni", "voxtral")]
    assert len({t.n for t in tables}) == 1 and tables[0].n == summary["rows"]
    assert all(sorted(t.frame["id"]) == sorted(tables[0].frame["id"]) for t in tables)
    assert not np.allclose(tables[0].probs, tables[2].probs, atol=1e-3)  # three different models
    comparison = json.loads((out / "report" / "comparison.json").read_text())
    assert set(comparison["paired"]) == {"omni", "voxtral", "erm"}
    assert all(name in printed for name in ("omni", "voxtral", "erm"))
    # Voxtral takes no system prompt: refused for its zero-shot system, before loading anything
    recipe_file = tmp_path / "system.yaml"
    recipe_file.write_text(yaml.safe_dump({**recipe(corpus), "prompts": {"system": "Be brief."}}), encoding="utf-8")
    assert cli_main(["benchmark", "--model", "tiny:voxtral", "--recipe", str(recipe_file), "--corpus", str(corpus),
                     "--out", str(tmp_path / "refused"), "--no-progress"]) == 1
    assert "prompts.system is set ('Be brief.')" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
