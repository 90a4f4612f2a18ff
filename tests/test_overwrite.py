"""`--overwrite` never removes a file llmfair did not write: one row per command puts a user's file
in the target and runs the command again (with --overwrite where it has one); the file survives.

Whole-directory writers (synth, export, correct fit/apply, gender model) refuse a folder holding a
foreign file, naming it, without suggesting --overwrite; incremental writers (train, report,
benchmark, sweep) write only their own files beside it."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from llmfair.cli import main
from tests.test_correction import simulate, write_pair
from tests.test_report import make_predictions
from tests.test_speechllm_run import corpus, recipe  # noqa: F401  (fixtures)

torch.set_num_threads(1)
FOREIGN = "my_notes.txt"


@pytest.fixture(scope="module")
def finished_run(llmfair_cache, corpus, tmp_path_factory) -> Path:  # noqa: F811
    root = tmp_path_factory.mktemp("overwrite")
    values = recipe(corpus, objective={"name": "erm"})
    cfg = root / "recipe.yaml"
    cfg.write_text(yaml.safe_dump(values))
    assert main(["train", str(cfg), "--out", str(root / "run")]) == 0
    return root / "run"


def _refused(capsys, rc: int, target: Path) -> None:
    err = capsys.readouterr().err
    assert rc == 1, err
    assert str(target / FOREIGN) in err and "llmfair never replaces them" in err and "--overwrite" not in err


def _synth(tmp_path, capsys, **_):
    out = tmp_path / "corpus"
    out.mkdir()
    (out / FOREIGN).write_text("mine")
    for extra in ([], ["--overwrite"]):
        _refused(capsys, main(["data", "synth", "--out", str(out), "--utterances-per-pair", "12", *extra]), out)
    return out


def _correct(tmp_path, capsys, **_):
    dev = write_pair(tmp_path, "dev", simulate(30, 0), "d")
    test = write_pair(tmp_path, "test", simulate(30, 1), "t")
    model, applied = tmp_path / "model", tmp_path / "applied"
    assert main(["correct", "fit", "--emotion", str(dev[0]), "--gender", str(dev[1]), "--out", str(model),
                 "--epochs", "2"]) == 0
    assert main(["correct", "apply", "--model", str(model), "--emotion", str(test[0]), "--gender", str(test[1]),
                 "--out", str(applied)]) == 0
    capsys.readouterr()
    (model / FOREIGN).write_text("mine")
    _refused(capsys, main(["correct", "fit", "--emotion", str(dev[0]), "--gender", str(dev[1]), "--out", str(model),
                           "--epochs", "2", "--overwrite"]), model)
    (applied / FOREIGN).write_text("mine")
    _refused(capsys, main(["correct", "apply", "--model", str(model), "--emotion", str(test[0]), "--gender",
                           str(test[1]), "--out", str(applied), "--overwrite"]), applied)
    return model, applied


def _export(tmp_path, capsys, finished_run, **_):
    out = tmp_path / "export"
    assert main(["export", str(finished_run), "--out", str(out), "--n-resamples", "0"]) == 0
    capsys.readouterr()
    # llmfair's own export is replaced with --overwrite ...
    assert main(["export", str(finished_run), "--out", str(out), "--n-resamples", "0", "--overwrite"]) == 0
    capsys.readouterr()
    (out / FOREIGN).write_text("mine")  # ... a folder with a user's file is not
    _refused(capsys, main(["export", str(finished_run), "--out", str(out), "--n-resamples", "0", "--overwrite"]), out)
    return out


def _train(tmp_path, capsys, finished_run, **_):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / FOREIGN).write_text("mine")
    (run / "adapter" / FOREIGN).write_text("mine")
    assert main(["train", str(run / "config.yaml"), "--out", str(run), "--overwrite"]) == 0
    return run, run / "adapter"


def _report(tmp_path, capsys, **_):
    a, b = make_predictions(tmp_path / "a.csv", seed=0), make_predictions(tmp_path / "b.csv", seed=1)
    out = tmp_path / "report"
    out.mkdir()
    (out / FOREIGN).write_text("mine")
    for _ in range(2):  # the second run replaces the report's own files
        assert main(["report", str(a.source), str(b.source), "--out", str(out), "--n-resamples", "20",
                     "--no-plots"]) == 0
    return out


def _benchmark(tmp_path, capsys, finished_run, corpus, **_):  # noqa: F811
    out = tmp_path / "bench"
    args = ["benchmark", str(finished_run), "--out", str(out), "--n-resamples", "20", "--no-plots", "--no-progress",
            "--corpus", str(corpus), "--languages", "eng", "--modalities", "audio"]
    assert main(args) == 0
    (out / FOREIGN).write_text("mine")
    (out / "report" / FOREIGN).write_text("mine")
    assert main([*args, "--overwrite"]) == 0  # replaces the benchmark's own files only
    capsys.readouterr()
    other = tmp_path / "other"
    other.mkdir()
    (other / FOREIGN).write_text("mine")
    for extra in ([], ["--overwrite"]):  # a folder of a user's files is no benchmark's output
        assert main([*args[:3], str(other), *args[4:], *extra]) == 1
        err = capsys.readouterr().err
        assert str(other / FOREIGN) in err and "--overwrite" not in err
    return out, out / "report", other


def _sweep(tmp_path, capsys, corpus, **_):  # noqa: F811
    base = recipe(corpus, objective={"name": "erm"})
    base["training"]["max_steps"] = 1
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(base))
    out = tmp_path / "sweep"
    spec = {"recipe": str(tmp_path / "recipe.yaml"), "objectives": [{"name": "erm"}], "seeds": [0],
            "n_resamples": 20, "out": str(out)}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec))
    out.mkdir()
    (out / FOREIGN).write_text("mine")
    assert main(["sweep", str(tmp_path / "sweep.yaml"), "--no-progress"]) == 0
    run = next(p for p in (out / "runs").iterdir() if p.is_dir())
    (run / FOREIGN).write_text("mine")
    assert main(["sweep", str(tmp_path / "sweep.yaml"), "--no-progress"]) == 0  # finished: skipped, kept
    return out, run


COMMANDS = {"data synth": _synth, "correct fit/apply": _correct, "export": _export, "train": _train,
            "report": _report, "benchmark": _benchmark, "sweep": _sweep}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_users_file_in_the_target_survives(command, tmp_path, capsys, request) -> None:
    needs_run = command in ("export", "train", "benchmark")
    kwargs = {"finished_run": request.getfixturevalue("finished_run")} if needs_run else {}
    if command in ("benchmark", "sweep"):
        kwargs["corpus"] = request.getfixturevalue("corpus")
        request.getfixturevalue("llmfair_cache")
    targets = COMMANDS[command](tmp_path, capsys, **kwargs)
    for target in targets if isinstance(targets, tuple) else (targets,):
        assert (target / FOREIGN).read_text() == "mine", target
