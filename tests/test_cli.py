"""The command line: JSON shapes, one-line errors, exit codes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llmfair.cli import main
from tests import _meld_fixture as fx

ROOT = Path(__file__).resolve().parents[1]


def test_imbalance_json_matches_table_a2(crema_d_labels: Path, capsys) -> None:
    assert main(["data", "imbalance", "--crema-d", str(crema_d_labels), "--fold", "1", "--ratio", "20", "--seed", "0", "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert list(counts) == ["train", "dev", "test"]
    assert counts["train"]["angry"] == {"female": 12, "male": 240}
    assert counts["train"]["neutral"] == {"female": 54, "male": 1081}  # the paper: 1,080 (one dropped clip)
    assert counts["test"]["sad"] == {"female": 35, "male": 7}


def test_imbalance_text_table(crema_d_labels: Path, capsys) -> None:
    assert main(["data", "imbalance", "--crema-d", str(crema_d_labels), "--fold", "1", "--ratio", "20"]) == 0
    out = capsys.readouterr().out
    assert "== train: 1778 single-label rows (357 F / 1421 M)" in out
    assert "plus 564 without a majority label" in out


def test_stats_json_on_meld_layout(tmp_path: Path, capsys) -> None:
    root = fx.build(tmp_path / "meld")
    assert main(["data", "stats", str(root), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["n_examples"] == 30 and stats["label_space"] == "meld"
    assert stats["counts"]["train"]["deu"]["audio_text"]["female"]["joy"] == 1
    assert stats["unknown_gender"]["n"] == 4  # "Stranger": eng + deu, two modalities
    assert stats["unknown_gender"]["by_split_language"]["dev"]["deu"] == {"n": 2, "fraction": 1.0}  # both modalities


def test_errors_are_one_line_with_nonzero_exit(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "llmfair.cli", "data", "stats", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 1
    assert run.stderr.strip().count("\n") == 0 and run.stderr.startswith("llmfair: error:")
    assert "neither a MELD-ST directory" in run.stderr


def test_bad_arguments_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["data", "imbalance", "--fold", "1"])
    assert exc.value.code == 2
    assert "--crema-d" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--help"], ["data", "--help"], ["data", "stats", "--help"], ["data", "imbalance", "--help"]])
def test_help_everywhere(argv, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0 and "usage: llmfair" in capsys.readouterr().out
