"""`llmfair check` and the checks every run does before a model loads (recipe values, data, audio
headers, plan), the header cache, and the cleanup of a killed writer's temporaries."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml

from llmfair.check.headers import scan_headers
from llmfair.cli import main
from llmfair.data.synth import SynthConfig, generate_corpus
from llmfair.errors import ConfigError
from llmfair.training.config import RecipeLoader, RunConfig, apply_overrides, parse_override

SYNTH = {"utterances_per_pair": 40}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("check") / "corpus"
    generate_corpus(root, SynthConfig(seed=0, **SYNTH))
    return root


@pytest.fixture(autouse=True)
def header_cache(tmp_path, monkeypatch):
    """Each test its own header cache (the cache's own test reuses one on purpose)."""
    monkeypatch.setenv("LLMFAIR_CACHE", str(tmp_path / "llmfair-cache"))


def recipe_values(root: Path) -> dict:
    return {
        "model": {"name_or_path": "tiny", "dtype": "float32"},
        "data": {"root": str(root), "languages": ["eng", "deu"], "modalities": ["audio"]},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "objective": {"name": "erm"},
        "training": {"num_train_epochs": 1, "per_device_train_batch_size": 4, "learning_rate": 1e-3,
                     "report_to": [], "seed": 0},
    }


def write_recipe(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    return path


def run_check(recipe: Path, *sets: str, capsys) -> tuple[int, str]:
    argv = ["check", str(recipe), "--no-progress"]
    for s in sets:
        argv += ["--set", s]
    rc = main(argv)
    return rc, capsys.readouterr().out


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------ a good recipe
def test_good_recipe_reports_data_audio_and_plan(corpus, tmp_path, capsys) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", recipe_values(corpus))
    before = tree_state(corpus)
    rc, out = run_check(recipe, capsys=capsys)
    assert rc == 0, out
    assert "OK: the run can start" in out
    assert tree_state(corpus) == before  # nothing written into the corpus

    rc = main(["check", str(recipe), "--json", "--no-progress"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0 and report["ok"] and report["problems"] == []
    # the counts against an independent read of the CSVs
    config = RunConfig.from_yaml(recipe)
    from llmfair.data.meld_st import read_meld_st

    rows = read_meld_st(corpus, splits=["train"], languages=["eng", "deu"], modalities=["audio"])
    train = report["data"]["splits"]["train"]
    assert train["examples"] == len(rows)
    assert train["speakers"]["female"] == len({e.speaker for e in rows if e.gender == "female"})
    assert sum(train["clips"].values()) == len(rows)
    # durations: min/median/max of the headers, checked with soundfile directly
    paths = sorted({e.audio for e in rows})
    seconds = [sf.info(p).frames / sf.info(p).samplerate for p in paths]
    got = report["audio"]["splits"]["train"]["seconds"]
    assert got["min"] == pytest.approx(min(seconds)) and got["max"] == pytest.approx(max(seconds))
    assert got["median"] == pytest.approx(float(np.median(seconds)))
    # the plan: the Trainer's count of update steps
    plan = report["plan"]
    assert plan["steps_per_epoch"] == int(np.ceil(len(rows) / 4)) and plan["total_steps"] == plan["steps_per_epoch"]
    assert plan["effective_batch"] == 4
    assert plan["encoder_cache_bytes"] > 0
    assert report["data"]["speakers_shared"]["splits"] == ["train", "test"]
    assert config.source == str(recipe)


# ------------------------------------------------------------------------------------ bad values
BAD_VALUES = [
    ("training.num_train_epochs=-1", r"\[training\]: num_train_epochs=-1; expected a number > 0"),
    ("training.seed=abc", r"\[training\]: seed='abc'; expected an integer"),
    ("training.learning_rate=fast", r"\[training\]: learning_rate='fast'; expected a number"),
    ("training.learning_rate=0", r"\[training\]: learning_rate=0; expected a number > 0"),
    ("training.per_device_train_batch_size=0", r"per_device_train_batch_size=0; expected a number >= 1"),
    ("training.gradient_accumulation_steps=1.5", r"gradient_accumulation_steps=1.5; expected an integer"),
    ("training.max_steps=0", r"max_steps=0; expected a number >= 1 \(or -1\)"),
    ("training.learning_rat=0.1", r"\[training\]: unknown key\(s\) \['learning_rat'\].*did you mean \['learning_rate'\]"),
    ("training.output_dir=elsewhere", r"'output_dir' is set by llmfair from the run directory"),
    ("lora.r=0", r"\[lora\]: r=0; expected a number >= 1"),
    ("lora.dropout=1.5", r"\[lora\]: dropout=1.5; expected a number in \[0, 1\)"),
    ("lora.alpha=big", r"\[lora\]: alpha='big'; expected a number"),
    ("model.dtype=fp8", r"\[model\]: dtype='fp8'; expected one of"),
    ("model.quantization=8bit", r"\[model\]: quantization='8bit'; expected one of"),
    ("model.name_or_path=/no/such/model", r"\[model\]: name_or_path: model directory not found: /no/such/model"),
    ("objective.name=nope", r"objective.name='nope' is not a registered objective"),
    ("objective.options.lamda=1", r"objective.options \(erm\): unknown key\(s\) \['lamda'\]"),
    ("data.languages=[xx]", r"\[data\]: unknown language/modality \['xx'\]"),
    ("data.max_train_examples=0", r"\[data\]: max_train_examples=0; expected a number >= 1"),
    ("data.root=/no/such/corpus", r"\[data\]: MELD-ST root is not a directory: /no/such/corpus"),
    ("data.gender_table=/no/such/table.csv", r"/no/such/table.csv"),
    ("encoder_cache=sometimes", r"encoder_cache='sometimes'; expected true or false"),
    ("verbalizer.answer_loss=xyz", r"\[verbalizer\]: answer_loss='xyz'; expected one of \['verbalizer', 'lm'\]"),
    ("selection.criterion=best", r"selection"),
    ("trainer.lr=1", r"unknown section\(s\) \['trainer'\]"),
]


@pytest.mark.parametrize("override,message", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_bad_recipe_value_is_named_the_same_from_yaml_and_set(corpus, tmp_path, capsys, override, message) -> None:
    import re

    recipe = write_recipe(tmp_path / "r.yaml", recipe_values(corpus))
    rc, out = run_check(recipe, override, capsys=capsys)
    assert rc == 1, out
    problems = [line[4:] for line in out.splitlines() if line.startswith("  - ")]
    assert any(re.search(message, p) for p in problems), out
    assert "FAILED: the run cannot start" in out
    assert all("\n" not in p for p in problems)
    # the same value written into the YAML file gives the same message (one schema for both)
    values = yaml.load(recipe.read_text(), Loader=RecipeLoader)
    apply_overrides(values, dict([parse_override(override)]))
    in_yaml = write_recipe(tmp_path / "in_yaml.yaml", values)
    rc_yaml, out_yaml = run_check(in_yaml, capsys=capsys)
    assert rc_yaml == 1
    assert out_yaml.replace(str(in_yaml), "R") == out.replace(str(recipe), "R")
    assert {p.name for p in tmp_path.iterdir()} <= {"in_yaml.yaml", "llmfair-cache", "r.yaml"}  # nothing else written


def test_every_bad_value_is_listed_not_only_the_first(corpus, tmp_path, capsys) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", recipe_values(corpus))
    rc, out = run_check(recipe, "training.seed=abc", "lora.r=0", "model.dtype=fp8", capsys=capsys)
    assert rc == 1 and "problems (3):" in out
    with pytest.raises(ConfigError, match="3 problems in the recipe"):
        RunConfig.from_yaml(recipe, {"training.seed": "abc", "lora.r": 0, "model.dtype": "fp8"})


def test_train_refuses_a_bad_value_before_the_model_loads(corpus, tmp_path, monkeypatch, capsys) -> None:
    import llmfair.speechllm.run as run_module

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(run_module, "build_classifier", no_model)
    recipe = write_recipe(tmp_path / "r.yaml", recipe_values(corpus))
    rc = main(["train", str(recipe), "--out", str(tmp_path / "run"), "--set", "training.num_train_epochs=-1"])
    assert rc == 1
    assert "num_train_epochs=-1; expected a number > 0" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------ bad audio
@pytest.fixture
def broken_corpus(corpus, tmp_path) -> tuple[Path, dict]:
    """A copy of the corpus with, in each split, a corrupt, an empty, a stereo 44.1 kHz, a 40 s and a
    missing file, and one speaker removed from the gender table."""
    root = tmp_path / "broken"
    shutil.copytree(corpus, root)
    config = RunConfig.from_mapping(recipe_values(root), source="t")
    from llmfair.speechllm.run import read_examples

    by_split = read_examples(config, check_audio=False)
    damaged: dict[str, dict[str, str]] = {}
    for split, rows in by_split.items():
        paths = sorted({e.audio for e in rows})
        corrupt, empty, stereo, long, missing = paths[:5]
        Path(corrupt).write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + os.urandom(64))
        sf.write(empty, np.zeros(0, dtype=np.float32), 16_000, subtype="PCM_16")
        sf.write(stereo, np.zeros((44_100, 2), dtype=np.float32) + 0.01, 44_100, subtype="PCM_16")
        sf.write(long, np.full(16_000 * 40, 0.01, dtype=np.float32), 16_000, subtype="PCM_16")
        os.unlink(missing)
        damaged[split] = {"corrupt": corrupt, "empty": empty, "stereo": stereo, "long": long, "missing": missing}
    table = pd.read_csv(root / "speaker_gender.csv")
    dropped = str(table["speaker"].iloc[0])
    table.iloc[1:].to_csv(root / "speaker_gender.csv", index=False)
    return root, {"files": damaged, "dropped_speaker": dropped}


def test_bad_audio_in_every_split_is_listed_before_a_model_loads(broken_corpus, tmp_path, capsys) -> None:
    root, info = broken_corpus
    recipe = write_recipe(tmp_path / "r.yaml", recipe_values(root))
    before = tree_state(root)
    rc, out = run_check(recipe, capsys=capsys)
    assert rc == 1, out
    problems = [line[4:] for line in out.splitlines() if line.startswith("  - ")]
    for split, files in info["files"].items():
        def line_for(fragment):
            hits = [p for p in problems if p.startswith(f"{split}: ") and fragment in p]
            assert hits, (split, fragment, out)
            return hits[0]

        assert files["corrupt"] in line_for("unreadable (corrupt or not audio)")
        assert files["empty"] in line_for("empty (0 samples)")
        assert files["missing"] in line_for("missing")
        assert files["stereo"] in line_for("not 16 kHz mono") and "44100 Hz, 2 ch" in line_for("not 16 kHz mono")
        assert files["long"] in line_for("longer than the encoder window (10 s)")
    assert any(info["dropped_speaker"] in p and "without a gender" in p for p in problems)
    assert tree_state(root) == before

    report = json.loads((main(["check", str(recipe), "--json", "--no-progress"]), capsys.readouterr().out)[1])
    assert not report["ok"]
    for split, files in info["files"].items():
        a = report["audio"]["splits"][split]
        assert a["unreadable"] == [files["corrupt"]] and a["empty"] == [files["empty"]]
        assert a["missing"] == [files["missing"]]
        assert a["seconds"]["max"] == pytest.approx(40.0)


def test_train_stops_at_a_corrupt_test_file_before_the_model_loads(broken_corpus, tmp_path, monkeypatch,
                                                                  capsys) -> None:
    import llmfair.speechllm.run as run_module

    monkeypatch.setattr(run_module, "build_classifier", lambda *a, **k: pytest.fail("a model was loaded"))
    root, info = broken_corpus
    recipe = write_recipe(tmp_path / "r.yaml", recipe_values(root))
    rc = main(["train", str(recipe), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 1 and info["files"]["test"]["corrupt"] in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------ header cache
def test_header_cache_rereads_only_changed_files(tmp_path) -> None:
    folder = tmp_path / "clips"
    folder.mkdir()
    paths = []
    for i in range(12):
        path = folder / f"{i}.wav"
        sf.write(path, np.zeros(1600 * (i + 1), dtype=np.float32), 16_000, subtype="PCM_16")
        paths.append(path)
    cache = tmp_path / "cache.json"
    first = scan_headers(paths, cache_file=cache)
    assert (first.read, first.cached) == (12, 0)
    assert [h.frames for h in first.headers] == [sf.info(p).frames for p in paths]
    second = scan_headers(paths, cache_file=cache)
    assert (second.read, second.cached) == (0, 12) and second.headers == first.headers
    sf.write(paths[3], np.zeros(99, dtype=np.float32), 16_000, subtype="PCM_16")  # size and mtime change
    third = scan_headers(paths, cache_file=cache)
    assert (third.read, third.cached) == (1, 11) and third.headers[3].frames == 99
    cache.write_text("not json")  # a corrupt cache is rebuilt, never trusted
    assert scan_headers(paths, cache_file=cache).read == 12


# ------------------------------------------------------------------------------------ stale temporaries
def test_a_killed_writers_temporaries_are_removed_by_the_next_write(tmp_path) -> None:
    import subprocess
    import sys

    from llmfair._atomic import atomic_directory

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".out.{dead_pid}.abc123.tmp"
    stale.mkdir()
    (stale / "half.wav").write_bytes(b"x")
    live = tmp_path / f".out.{os.getppid()}.def456.tmp"  # a running process's: left alone
    live.mkdir()
    other = tmp_path / f".notes.{dead_pid}.x.tmp"  # another name's: left alone
    other.mkdir()
    legacy = tmp_path / ".out.k3j2.tmp"  # no pid: cannot tell, left alone
    legacy.mkdir()
    with atomic_directory(tmp_path / "out", command="test") as tmp:
        (tmp / "a.txt").write_text("a")
    assert not stale.exists()
    assert live.exists() and other.exists() and legacy.exists()
    assert (tmp_path / "out" / "a.txt").read_text() == "a"


def test_a_killed_synth_leaves_nothing_after_the_next_run(tmp_path) -> None:
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "corpus"
    cmd = [sys.executable, "-m", "llmfair.cli", "data", "synth", "--out", str(out), "--utterances-per-pair", "40"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob(".corpus.*.tmp")):
        time.sleep(0.05)
    time.sleep(0.5)  # some clips written
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(tmp_path.glob(".corpus.*.tmp")), "the kill came too late to leave a temporary"
    assert not out.exists()
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]


# ------------------------------------------------------------------------------------ the synth trap
def test_a_recipe_never_synthesises_into_a_corpus_it_did_not_make(corpus, tmp_path, capsys) -> None:
    mine = tmp_path / "my_corpus"
    shutil.copytree(corpus, mine)
    (mine / "corpus.json").unlink()  # now a MELD-ST-layout corpus of the user's, not the generator's
    values = recipe_values(mine)
    values["data"]["synth_seed"] = 0
    recipe = write_recipe(tmp_path / "r.yaml", values)
    before = tree_state(mine)
    rc, out = run_check(recipe, capsys=capsys)
    assert rc == 1 and "holds files the built-in corpus generator did not write" in out
    assert "--set data.synth_seed=null" in out
    assert main(["train", str(recipe), "--out", str(tmp_path / "run")]) == 1
    assert "data.synth_seed: null" in capsys.readouterr().err
    assert tree_state(mine) == before and not (tmp_path / "run").exists()
    # another seed's built-in corpus is not replaced from a recipe either
    values["data"].update(root=str(corpus), synth_seed=1, synth_options=SYNTH)
    rc, out = run_check(write_recipe(tmp_path / "r1.yaml", values), capsys=capsys)
    assert rc == 1 and "seed 0, not 1" in out and "llmfair does not replace it from a recipe" in out
    # the same seed and options: the corpus is used as it is
    values["data"]["synth_seed"] = 0
    rc, out = run_check(write_recipe(tmp_path / "r0.yaml", values), capsys=capsys)
    assert rc == 0, out
    # an empty root is generated into by the run; check says so and writes nothing
    values["data"]["root"] = str(tmp_path / "new")
    rc, out = run_check(write_recipe(tmp_path / "rn.yaml", values), capsys=capsys)
    assert rc == 0 and "will be generated first" in out and not (tmp_path / "new").exists()
