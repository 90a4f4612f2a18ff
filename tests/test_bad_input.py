"""Bad input through the command line, one table: each row gives a one-line error (exit code 1)
naming the file, column or value, and leaves what was already written as it was.

The recipe and audio rows of ``llmfair check`` (and of ``train``, which runs the same checks) are
in tests/test_check.py; the foreign-file rows of every ``--overwrite`` in tests/test_overwrite.py."""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from llmfair.cli import main
from llmfair.data.synth import SynthConfig, generate_corpus
from tests.test_report import make_predictions

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bad") / "preds.csv"
    make_predictions(path, seed=0, n_utterances=60)
    return path


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad_corpus") / "corpus"
    generate_corpus(root, SynthConfig(seed=0, utterances_per_pair=12))
    return root


def _edit(table: Path, out: Path, fn) -> Path:
    frame = pd.read_csv(table, keep_default_na=False)
    fn(frame)
    frame.to_csv(out, index=False)
    return out


def _drop_column(f):
    del f["speaker"]


def _nan_prob(f):
    f.loc[3, "prob_joy"] = np.nan


def _unnormalised(f):
    f.loc[5, "prob_joy"] = f.loc[5, "prob_joy"] + 0.5


def _unknown_class(f):
    f.loc[2, "label"] = "boredom"


def _duplicate_id(f):
    f.loc[1, ["id", "modality"]] = f.loc[0, ["id", "modality"]].to_numpy()


def _bad_gender(f):
    f.loc[4, "gender"] = "nonbinary"


PREDICTION_ROWS = [
    ("missing column", _drop_column, r"speaker"),
    ("NaN probability", _nan_prob, r"prob_joy"),
    ("probabilities not summing to 1", _unnormalised, r"sum"),
    ("unknown class", _unknown_class, r"boredom"),
    ("duplicate id", _duplicate_id, r"2 rows sharing an \(id, modality\) key, first id='u0'"),
    ("unknown gender spelling", _bad_gender, r"unknown gender value 'nonbinary' in .* column 'gender'"),
]


@pytest.mark.parametrize("name,edit,message", PREDICTION_ROWS, ids=[r[0] for r in PREDICTION_ROWS])
def test_bad_predictions_table(name, edit, message, table, tmp_path, capsys) -> None:
    import re

    bad = _edit(table, tmp_path / "bad.csv", edit)
    out = tmp_path / "report"
    out.mkdir()
    (out / "metrics.json").write_text("earlier")  # an earlier report's file stays as it was
    rc = main(["report", str(bad), "--out", str(out), "--n-resamples", "0", "--no-plots"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1, err
    assert str(bad) in err and re.search(message, err), err
    assert (out / "metrics.json").read_text() == "earlier" and sorted(p.name for p in out.iterdir()) == ["metrics.json"]


def test_gender_spelled_f_or_female_is_read_as_female(table, tmp_path, capsys) -> None:
    def spell(f):
        f["gender"] = f["gender"].map({"female": "F", "male": "Male", "unknown": "U"})

    spelled = _edit(table, tmp_path / "spelled.csv", spell)
    from llmfair.predictions import read_predictions

    assert read_predictions(spelled).frame["gender"].tolist() == read_predictions(table).frame["gender"].tolist()


def test_audio_path_escaping_the_data_root(small_corpus, tmp_path, capsys) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(small_corpus, corpus)
    csv = corpus / "ENG_DEU" / "deu_test.csv"
    frame = pd.read_csv(csv, keep_default_na=False, dtype=str)
    frame.loc[0, "id"] = "../../../../etc/passwd"
    frame.to_csv(csv, index=False)
    rc = main(["data", "stats", str(corpus)])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1, err
    assert str(csv) in err and "is not a plain file-name part; refused" in err, err


def test_killed_report_leaves_nothing_that_looks_complete(table, tmp_path) -> None:
    """A report killed (SIGKILL) while writing its files: no metrics.json (written last) appears."""
    out = tmp_path / "report"
    code = (
        "import os, signal, sys\n"
        "import llmfair.report.writer as w\n"
        "real = w.write_text\n"
        "def killing(path, text):\n"
        "    if str(path).endswith('metrics.json'):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(path, text)\n"
        "w.write_text = killing\n"
        "from llmfair.cli import main\n"
        f"sys.exit(main(['report', {str(table)!r}, '--out', {str(out)!r}, '--n-resamples', '0', '--no-plots']))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    assert not list(out.rglob("metrics.json"))
    assert not [p for p in out.rglob("*") if p.is_file() and p.stat().st_size == 0]


def test_train_into_a_finished_run_of_another_config_is_refused(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "config.yaml").write_text("model: {}\n")
    recipe = ROOT / "recipes" / "configs" / "demo_tiny.yaml"
    rc = main(["train", str(recipe), "--out", str(run)])
    err = capsys.readouterr().err
    assert rc == 1 and "already holds a finished run" in err and err.count("\n") == 1
    assert (run / "config.yaml").read_text() == "model: {}\n"


def test_a_40_second_clip_is_warned_not_silently_truncated(small_corpus, tmp_path, capsys) -> None:
    import yaml

    corpus = tmp_path / "corpus"
    shutil.copytree(small_corpus, corpus)
    clip = sorted((corpus / "ENG_DEU" / "DEU" / "test").glob("*.wav"))[0]
    sf.write(clip, np.full(16_000 * 40, 0.01, dtype=np.float32), 16_000, subtype="PCM_16")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"name_or_path": "tiny"},
                                      "data": {"root": str(corpus), "languages": ["deu"]}}))
    rc = main(["check", str(recipe), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "longer than the encoder window (10 s) are truncated" in out and str(clip) in out
