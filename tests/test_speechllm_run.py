"""Speech-LLM runs end to end on the tiny Qwen2-Audio and the built-in corpus: the run directory
(config, adapter, predictions, manifest), `llmfair predict` from a fresh base model, resume after
SIGKILL == an uninterrupted run, 2 processes == 1 process, config errors, the single-gender
warning and the NaN stop. Resume, 2 processes == 1 and every registered objective run on each
backbone family's tiny build (the family table of tests/test_backbones.py)."""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from llmfair.cli import main as cli_main
from llmfair.data.labels import MELD
from llmfair.data.meld_st import read_meld_st
from llmfair.data.synth import SynthConfig, generate_corpus
from llmfair.errors import ConfigError
from llmfair.predictions import read_predictions
from llmfair.speechllm.classifier import SpeechLLMClassifier
from llmfair.speechllm.collator import SpeechLLMCollator
from llmfair.speechllm.run import build_classifier, predict_examples, train
from llmfair.training import TrainingDivergedError
from llmfair.training.config import RunConfig, parse_override
from tests.test_backbones import FAMILY_NAMES

ROOT = Path(__file__).resolve().parents[1]
SYNTH = {"utterances_per_pair": 40}
ADAPTER = Path("adapter") / "adapter_model.safetensors"
# the 14 linears of the tiny model's 2-layer language model (ENVIRONMENT.md: module names in 5.23.0)
LLM_LINEARS = [f"model.language_model.layers.{layer}.{name}" for layer in range(2)
               for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
SINGLE_GENDER = "cells with one gender only in the training set"

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.getbasetemp() / "synth-corpus"
    generate_corpus(root, SynthConfig(seed=0, **SYNTH))
    return root


def recipe(corpus: Path, *, objective: dict | None = None, family: str | None = None, **training) -> dict:
    """A small recipe: English audio only, LoRA r=4 without dropout, batch 4, a few steps (on the
    tiny build of ``family``; default Qwen2-Audio)."""
    return {
        "model": {"name_or_path": "tiny", "dtype": "float32", **({"family": family} if family else {})},
        "data": {"root": str(corpus), "languages": ["eng"], "modalities": ["audio"]},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "targets": "llm", "train_projector": True},
        "objective": objective or {"name": "minmaxgap",
                                   "options": {"weight": "dual", "lambda_init": 0.1, "dual_lr": 0.5}},
        "training": {"max_steps": 2, "per_device_train_batch_size": 4, "per_device_eval_batch_size": 8,
                     "learning_rate": 1e-3, "save_strategy": "no", "logging_steps": 1, "seed": 0,
                     "report_to": [], "disable_tqdm": True, **training},
    }


def write_recipe(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    return path


def adapter_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / ADAPTER))


def subprocess_env(cache: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "LLMFAIR_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def launch_two_processes(cfg: Path, out: Path, cache: Path) -> None:
    """``accelerate launch --multi_gpu --num_processes 2`` of tests/dist/train_tiny.py (gloo on CPU;
    the script records the world size, which the callers assert: --cpu would silently run one)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(ROOT / "tests" / "dist" / "train_tiny.py"), str(cfg), str(out)]
    run = subprocess.run(cmd, env=subprocess_env(cache), cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]


# ------------------------------------------------------------------------------------ 1. end to end
@pytest.mark.slow
def test_run_directory_and_predict_reproduces(llmfair_cache, corpus, tmp_path, caplog, capsys) -> None:
    values = recipe(corpus, max_steps=4, learning_rate=5e-3)
    values["data"].update(synth_seed=0, synth_options=SYNTH)  # the corpus is generated (here: found up to date)
    config = RunConfig.from_mapping(values)
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="llmfair.speechllm.run"):
        manifest = train(config, run)
    assert not [r for r in caplog.records if SINGLE_GENDER in r.getMessage()]  # both genders in eng/audio

    # config.yaml round-trips to the same recipe, with every objective option resolved (defaults filled in)
    expected = config.to_dict()
    expected["objective"]["options"] = config.objective.resolved_options()
    assert expected["objective"]["options"]["lambda_init"] == 0.1 and "reduction" in expected["objective"]["options"]
    assert RunConfig.from_yaml(run / "config.yaml").to_dict() == expected
    assert manifest["objective"]["options"] == expected["objective"]["options"]

    # adapter: LoRA A/B on exactly the 14 LLM linears + the trained projector, nothing of the audio tower
    adapter_config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["r"] == 4 and adapter_config["lora_alpha"] == 8
    weights = adapter_weights(run)
    lora_modules = {re.sub(r"^base_model\.model\.|\.lora_[AB]\.weight$", "", k) for k in weights if ".lora_" in k}
    assert lora_modules == set(LLM_LINEARS)
    assert {k for k in weights if ".lora_" not in k} == {
        "base_model.model.model.multi_modal_projector.linear.weight",
        "base_model.model.model.multi_modal_projector.linear.bias"}
    assert all(weights[f"base_model.model.{m}.lora_B.weight"].abs().max() > 0 for m in LLM_LINEARS)  # trained

    # predictions: one row per example of the split, independent of the run's own reader call
    expected = {s: read_meld_st(corpus, splits=[s], languages=["eng"], modalities=["audio"]) for s in ("dev", "test")}
    for split, examples in expected.items():
        pred = read_predictions(run / f"predictions_{split}.csv")
        frame = pred.frame.set_index("id")
        assert list(pred.frame.columns) == ["id", "split", "language", "modality", "gender", "speaker", "label",
                                            *[f"prob_{c}" for c in MELD.classes], "prediction"]
        assert sorted(frame.index) == sorted(e.id for e in examples) and len(frame) == len(examples)
        for e in examples:
            row = frame.loc[e.id]
            assert (row["split"], row["language"], row["modality"], row["gender"], row["speaker"], row["label"]) == (
                split, "eng", "audio", e.gender, e.speaker, MELD.classes[e.emotion])
        np.testing.assert_allclose(pred.probs.sum(axis=1), 1.0, atol=1e-9)
        np.testing.assert_array_equal(pred.predictions, pred.probs.argmax(axis=1))
        assert manifest["predictions"][split] == str(run / f"predictions_{split}.csv")

    # manifest
    saved = json.loads((run / "manifest.json").read_text())
    assert saved["lora_target_modules"] == LLM_LINEARS
    assert saved["global_steps"] == 4 and saved["train_examples"] == len(
        read_meld_st(corpus, splits=["train"], languages=["eng"], modalities=["audio"]))
    assert saved["packages"]["torch"] == torch.__version__
    import peft
    import transformers
    assert saved["packages"]["transformers"] == transformers.__version__
    assert saved["packages"]["peft"] == peft.__version__
    assert saved["memory"]["peak_rss_mib"] > 100  # a Python process with torch loaded
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert saved["git_commit"].split("+")[0] == head
    resolved = config.to_dict()
    resolved["objective"]["options"] = config.objective.resolved_options()
    assert saved["objective"] == {"name": "minmaxgap", "reconstructed": True, "options": resolved["objective"]["options"]}
    assert saved["config"] == resolved

    # `llmfair predict` from a fresh base model + the saved adapter gives the same probabilities
    out = tmp_path / "again.csv"
    assert cli_main(["predict", str(run), "--split", "test", "--out", str(out)]) == 0
    assert f"predictions (test): {out}" in capsys.readouterr().out
    trained, again = read_predictions(run / "predictions_test.csv"), read_predictions(out)
    assert list(again.frame["id"]) == list(trained.frame["id"])
    np.testing.assert_allclose(again.probs, trained.probs, atol=1e-5, rtol=0)
    # ... and they are the adapter's: the base model alone (fresh LoRA, B = 0) scores differently
    fresh, _, collator, _ = build_classifier(RunConfig.from_yaml(run / "config.yaml"))
    base_path = predict_examples(fresh, collator, expected["test"], tmp_path / "base.csv")
    base = read_predictions(base_path).frame.set_index("id").loc[list(trained.frame["id"])]
    assert np.abs(base[[f"prob_{c}" for c in MELD.classes]].to_numpy() - trained.probs).max() > 1e-3


# ------------------------------------------------------------------------------------ 2. resume after SIGKILL
@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_resume_after_sigkill_equals_uninterrupted_run(llmfair_cache, corpus, tmp_path, family) -> None:
    """12 steps (1⅓ epochs of 36 examples), a checkpoint every 4; the run is killed right after
    checkpoint-4, a half-written later checkpoint is left behind, and --resume finishes it."""
    save_steps, max_steps = 4, 12
    values = recipe(corpus, family=family, max_steps=max_steps, save_strategy="steps", save_steps=save_steps,
                    save_total_limit=10)
    cfg = write_recipe(tmp_path / "recipe.yaml", values)
    full = tmp_path / "full"
    train(RunConfig.from_yaml(cfg), full, predict_splits=[])

    run = tmp_path / "killed"
    script = [sys.executable, str(ROOT / "recipes" / "train_speechllm.py"), str(cfg), "--out", str(run)]
    env = subprocess_env(llmfair_cache)
    first = f"checkpoint-{save_steps}"
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(script, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while not (run / "checkpoints" / first / "objective_state.safetensors").is_file():
            assert proc.poll() is None, f"run ended before {first}:\n" + (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint after 240 s"
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not (run / "adapter").exists()
    checkpoints = run / "checkpoints"
    done = sorted(int(p.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*")
                  if (p / "objective_state.safetensors").is_file())
    assert done and done[-1] < max_steps, f"killed too late: complete checkpoints {done}"
    # λ of the dual update has moved away from its start: the objective state matters on resume
    lam = float(load_file(str(checkpoints / f"checkpoint-{done[-1]}" / "objective_state.safetensors"))["dual_lambda"])
    assert lam != pytest.approx(0.1)
    # what a kill during a save leaves: the adapter written, optimizer/trainer/objective state not yet
    partial = checkpoints / f"checkpoint-{max_steps - 1}"
    partial.mkdir()
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        shutil.copy(checkpoints / first / name, partial / name)

    resumed = subprocess.run([*script, "--resume"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert f"skipping incomplete checkpoint {partial}" in resumed.stderr
    restored = checkpoints / f"checkpoint-{done[-1]}" / "objective_state.safetensors"
    assert f"objective state restored from {restored}" in resumed.stderr
    reference = adapter_weights(full)
    got = adapter_weights(run)
    assert got.keys() == reference.keys()
    for name, w in reference.items():
        torch.testing.assert_close(got[name], w, rtol=1e-6, atol=1e-7)
    final = f"checkpoint-{max_steps}/objective_state.safetensors"
    for name, value in load_file(str(full / "checkpoints" / final)).items():
        torch.testing.assert_close(load_file(str(checkpoints / final))[name], value, rtol=1e-9, atol=1e-12)

    # guard: the same resume without the objective state (λ back at its start) ends elsewhere
    stateless = tmp_path / "stateless"
    shutil.copytree(checkpoints / f"checkpoint-{done[-1]}", stateless / "checkpoints" / f"checkpoint-{done[-1]}")
    (stateless / "checkpoints" / f"checkpoint-{done[-1]}" / "objective_state.safetensors").unlink()
    train(RunConfig.from_yaml(cfg), stateless, resume=str(stateless / "checkpoints" / f"checkpoint-{done[-1]}"),
          predict_splits=[])
    diff = max((adapter_weights(stateless)[k] - w).abs().max().item() for k, w in reference.items())
    assert diff > 1e-5


# ------------------------------------------------------------------------------------ 3. 2 processes == 1
@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_two_processes_equal_one_on_tiny_model(llmfair_cache, corpus, tmp_path, family) -> None:
    """`accelerate launch --multi_gpu --num_processes 2` (gloo on CPU) with 2 examples per rank vs one
    process with 4. The random sampler is seeded alike and accelerate hands rank r the r-th batch of
    2 from the same permutation, so the global batch is the single process's batch of 4.

    The optimiser is plain SGD, so the weights after two steps compare the gradients themselves.
    Under Adam they would compare Adam's amplification of float rounding: the all-reduce adds the
    ranks' gradients in another order than one process sums its batch, and for a weight whose
    gradient is near Adam's epsilon, ``m / (sqrt(v) + eps)`` turns a relative rounding of 1e-7
    into a weight difference of up to ``lr``-scale (measured: 4.7e-6 on one element of the tiny
    Voxtral's projector at eps 1e-8, 1.1e-6 on the tiny Omni's at eps 1e-6). Adam itself runs per
    element on gradients every rank holds alike, so nothing distributed is left untested."""
    objective = {"name": "minmaxgap", "options": {"weight": "fixed", "lambda_init": 2.0, "missing": "skip"}}
    values = recipe(corpus, objective=objective, family=family, max_steps=2, per_device_train_batch_size=2,
                    save_strategy="steps", save_steps=2, optim="sgd", learning_rate=0.1)
    cfg = write_recipe(tmp_path / "recipe.yaml", values)
    two = tmp_path / "two"
    launch_two_processes(cfg, two, llmfair_cache)
    world = json.loads((two / "world.json").read_text())
    assert world == {"world_size": 2, "backend": "gloo", "per_device_train_batch_size": 2}

    one = tmp_path / "one"
    train(RunConfig.from_yaml(cfg, {"training.per_device_train_batch_size": 4}), one, predict_splits=[])
    # the gap term acted in both steps (both genders in every global batch), so the cross-rank
    # reduction of the per-cell statistics is what makes the two runs agree
    history = json.loads((one / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    gaps = [h["fair/max_gap"] for h in history if "fair/max_gap" in h]
    assert len(gaps) == 2 and min(gaps) > 1e-3
    reference, got = adapter_weights(one), adapter_weights(two)
    assert got.keys() == reference.keys()
    for name, w in reference.items():
        torch.testing.assert_close(got[name], w, rtol=1e-5, atol=1e-8)
    # not a comparison of zeros: every LoRA B (zero at the start) has moved, by far more than atol
    trained = [w.abs().max().item() for name, w in reference.items() if ".lora_B." in name]
    assert len(trained) == 14 and min(trained) > 0 and max(trained) > 1e-3


# ------------------------------------------------------------------------------------ 4. config errors
@pytest.mark.parametrize("section,key", [
    (None, "modell"), ("model", "nme"), ("data", "langs"), ("objective", "nmae"), ("lora", "rank"),
    ("training", "max_stepz"), ("objective.options", "lamda_init"),
])
def test_unknown_key_names_key_and_file(llmfair_cache, corpus, tmp_path, section, key) -> None:
    values = recipe(corpus, objective={"name": "minmaxgap", "options": {}})
    if section is None:
        values[key] = {}
    elif section == "objective.options":
        values["objective"]["options"][key] = 1.0
    else:
        values[section][key] = 1
    path = write_recipe(tmp_path / "bad recipe.yaml", values)
    with pytest.raises(ConfigError) as info:
        train(RunConfig.from_yaml(path), tmp_path / "run", predict_splits=[])  # lora/training/options: at train()
    message = str(info.value)
    assert key in message and str(path) in message
    if section not in (None, "objective.options"):
        assert f"[{section}]" in message
    assert not (tmp_path / "run" / "adapter").exists()


def test_overrides(corpus, tmp_path) -> None:
    assert parse_override("training.learning_rate=1e-4") == ("training.learning_rate", 1e-4)
    assert parse_override("training.learning_rate=2.5E-3") == ("training.learning_rate", 2.5e-3)
    assert parse_override("training.max_steps=3") == ("training.max_steps", 3)
    assert parse_override("data.languages=[eng, deu]") == ("data.languages", ["eng", "deu"])
    assert parse_override("model.gradient_checkpointing=true") == ("model.gradient_checkpointing", True)
    assert parse_override("objective.options={weight: dual}") == ("objective.options", {"weight": "dual"})
    assert parse_override("data.root=runs/a=b") == ("data.root", "runs/a=b")  # split at the first '='
    assert parse_override(' data.root = "1e-4"') == ("data.root", "1e-4")  # quoted stays a string
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("training.max_steps")

    path = write_recipe(tmp_path / "r.yaml", {**recipe(corpus), "encoder_cache": False})
    # options are validated against the objective they end up with: switching objective needs its options
    with pytest.raises(ConfigError, match=r"objective.options \(erm\): unknown key\(s\) \['dual_lr', 'lambda_init'"):
        RunConfig.from_yaml(path, {"objective.name": "erm"})
    overrides = dict(parse_override(s) for s in ("objective.name=erm", "objective.options={}",
                                                  "training.learning_rate=1e-4", "data.languages=[eng, jpn]", "lora.r=2"))
    config = RunConfig.from_yaml(path, overrides)
    assert config.objective.name == "erm" and config.data.languages == ["eng", "jpn"] and config.lora["r"] == 2
    assert config.training["learning_rate"] == 1e-4 and isinstance(config.training["learning_rate"], float)
    assert config.training["max_steps"] == 2  # untouched keys keep the file's values
    with pytest.raises(ConfigError, match=r"unknown section\(s\) \['modell'\]"):
        RunConfig.from_yaml(path, {"modell.name_or_path": "tiny"})
    with pytest.raises(ConfigError, match="unknown key"):
        RunConfig.from_yaml(path, {"model.nme": "tiny"})
    with pytest.raises(ConfigError, match="'encoder_cache' is False in .*, not a mapping"):
        RunConfig.from_yaml(path, {"encoder_cache.x": 1})
    # the `accelerate launch` entry reports a bad --set as one line and exit code 1
    from recipes.train_speechllm import main as recipe_main

    assert recipe_main([str(path), "--out", str(tmp_path / "run"), "--set", "modell.x=1"]) == 1


@pytest.mark.slow
def test_single_gender_cell_is_warned(llmfair_cache, corpus, tmp_path, caplog) -> None:
    """Every English training speaker declared female: the eng/audio and deu/audio cells have one
    gender only, so MinMaxGAP can measure no gap there; the warning names exactly those cells."""
    examples = read_meld_st(corpus, splits=["train"], languages=["eng", "deu"], modalities=["audio"])
    table = tmp_path / "genders.csv"
    table.write_text("speaker,gender\n" + "".join(f"{s},female\n" for s in sorted({e.speaker for e in examples})))
    values = recipe(corpus, max_steps=1)
    values["data"].update(languages=["eng", "deu"], gender_table=str(table))
    relabelled = read_meld_st(corpus, splits=["train"], languages=["eng", "deu"], modalities=["audio"],
                              gender_table=str(table))
    genders: dict[str, set] = {}
    for e in relabelled:
        genders.setdefault(f"{e.language}/{e.modality}", set()).add(e.gender)
    lonely = sorted(c for c, g in genders.items() if len(g - {"unknown"}) == 1)
    assert lonely == ["deu/audio", "eng/audio"]
    with caplog.at_level(logging.WARNING, logger="llmfair.speechllm.run"):
        train(RunConfig.from_mapping(values), tmp_path / "run", predict_splits=[])
    warned = [r.getMessage() for r in caplog.records if SINGLE_GENDER in r.getMessage()]
    assert len(warned) == 1 and warned[0].endswith(": " + ", ".join(lonely))


@pytest.mark.slow
def test_nan_loss_stops_naming_examples_and_checkpoint_stays_loadable(llmfair_cache, corpus, tmp_path,
                                                                     monkeypatch) -> None:
    """The classifier returns NaN for rows 1 and 3 of the third training batch (after checkpoint-2)."""
    sha_to_id: dict[str, str] = {}
    collate = SpeechLLMCollator.__call__

    def recording_collate(self, records):
        batch = collate(self, records)
        sha_to_id.update(zip(batch["audio_sha256"], [r.get("example_ids") for r in records]))
        return batch

    forward = SpeechLLMClassifier.forward
    calls: list[int] = []
    poisoned: list[str] = []

    def poisoned_forward(self, **batch):
        out = forward(self, **batch)
        if self.training:
            calls.append(1)
            if len(calls) == 3:
                rows = torch.tensor([1, 3])
                poisoned.extend(sha_to_id[batch["audio_sha256"][i]] for i in rows.tolist())
                bad = torch.zeros_like(out["per_sample_loss"]).index_fill(0, rows, float("nan"))
                out["per_sample_loss"] = out["per_sample_loss"] + bad
        return out

    monkeypatch.setattr(SpeechLLMCollator, "__call__", recording_collate)
    monkeypatch.setattr(SpeechLLMClassifier, "forward", poisoned_forward)
    values = recipe(corpus, max_steps=4, save_strategy="steps", save_steps=2)
    run = tmp_path / "run"
    with pytest.raises(TrainingDivergedError) as info:
        train(RunConfig.from_mapping(values), run, predict_splits=[])
    assert len(poisoned) == 2 and all(p is not None for p in poisoned)
    assert f"non-finite loss at step 2 for examples {poisoned}" in str(info.value)
    assert not (run / "adapter").exists()
    checkpoint = run / "checkpoints" / "checkpoint-2"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-2"]

    monkeypatch.undo()
    # the checkpoint loads: as an adapter on a fresh base model, and as a training state to resume
    classifier, *_ = build_classifier(RunConfig.from_mapping(values), adapter=checkpoint, trainable=False)
    saved = load_file(str(checkpoint / "adapter_model.safetensors"))
    loaded = {k: v for k, v in classifier.model.state_dict().items() if "lora_" in k}
    assert {k.replace(".default", "") for k in loaded} == {k for k in saved if "lora_" in k}
    for k, v in loaded.items():
        torch.testing.assert_close(v, saved[k.replace(".default", "")], rtol=0, atol=0)
    state = load_file(str(checkpoint / "objective_state.safetensors"))
    assert float(state["dual_lambda"]) != pytest.approx(0.1)
    manifest = train(RunConfig.from_mapping(values), run, resume=True, predict_splits=[])
    assert manifest["global_steps"] == 4 and (run / ADAPTER).is_file()


NEEDS_EXTRA_INPUTS = {
    "pgdro": "needs group probabilities",  # inferred group probabilities (set_group_probabilities)
    "two_sided": "needs the group attribute 'rater_gender'",  # per-rater rows; MELD-ST has no rater labels
}
"""Objectives whose inputs a speech-LLM run on MELD-ST does not build; they must refuse clearly."""


def _objective_names() -> list[str]:
    from llmfair.objectives import available_objectives

    return available_objectives()


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("name", _objective_names())
def test_every_objective_runs_on_the_speech_llm(llmfair_cache, corpus, tmp_path, name, family) -> None:
    """Every registered objective trains on every family's tiny build; objectives that need class
    labels, dataset indices or pooled features get them from the speech-LLM batch (class labels
    live under ``emotion``; ``labels`` are LM token labels)."""
    from llmfair.objectives import OBJECTIVES

    if name in NEEDS_EXTRA_INPUTS:  # inputs a MELD-ST speech-LLM run does not build yet: a clear refusal
        with pytest.raises(ConfigError, match=NEEDS_EXTRA_INPUTS[name]):
            train(RunConfig.from_mapping(recipe(corpus, objective={"name": name}, family=family), source="test"),
                  tmp_path / name, predict_splits=[])
        return
    seen = {}
    cls = OBJECTIVES[name]
    original = cls.forward

    def spy(self, inputs):
        seen["labels"] = inputs.labels
        seen["features"] = inputs.features
        return original(self, inputs)

    cls.forward = spy
    try:
        manifest = train(RunConfig.from_mapping(recipe(corpus, objective={"name": name}, family=family), source="test"),
                         tmp_path / name, predict_splits=["test"])
    finally:
        cls.forward = original
    assert manifest["global_steps"] == 2
    assert seen["labels"] is not None and seen["labels"].dtype == torch.long and seen["labels"].ndim == 1
    assert seen["features"] is not None and seen["features"].shape[0] == seen["labels"].shape[0]
    assert read_predictions(tmp_path / name / "predictions_test.csv").n > 0
