"""``llmfair features extract``: a corpus's features in one directory the sweep reads, equal to the
extractor run directly; resumable (a SIGKILLed extraction resumed equals an uninterrupted one, a
damaged chunk is recomputed); bad input refused in one line."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from llmfair.cli import main
from llmfair.data.audio import load_audio
from llmfair.errors import ConfigError, DataError
from llmfair.ssl import AcousticExtractor, build_feature_extractor
from llmfair.ssl.extract import (
    MANIFEST_FILE,
    PROGRESS_FILE,
    extract_corpus_features,
    load_feature_set,
    read_corpus,
)
from llmfair.sweep import load_feature_file

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from llmfair.data.synth import SynthConfig, generate_corpus

    root = tmp_path_factory.mktemp("features") / "corpus"
    generate_corpus(root, SynthConfig(seed=0, utterances_per_pair=40))
    return root


@pytest.fixture(scope="module")
def extracted(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("extracted") / "acoustic"
    assert main(["features", "extract", str(corpus), "--extractor", "acoustic", "--out", str(out),
                 "--chunk-size", "16", "--no-progress"]) == 0
    return out


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("llmfair: error: ") and len(err.splitlines()) == 1, err
    return err


def test_extracted_features_equal_the_extractor_run_directly(corpus, extracted, capsys):
    _, examples = read_corpus(corpus)
    table = load_feature_file(extracted / "features.safetensors")  # what a sweep's `features: path` reads
    assert list(table.ids) == [e.id for e in examples]
    extractor = AcousticExtractor()
    direct = np.stack([extractor.extract([load_audio(e.audio)])[0] for e in examples])  # one clip at a time
    np.testing.assert_allclose(table.values.numpy(), direct, rtol=1e-6, atol=1e-6)

    features = load_feature_set(extracted)
    assert features.extractor == "acoustic" and features.config_hash == extractor.config_hash()
    assert features.utterances["gender"].tolist() == [e.gender for e in examples]
    assert features.utterances["speaker"].tolist() == [str(e.speaker) for e in examples]
    manifest = json.loads((extracted / MANIFEST_FILE).read_text())
    assert manifest["num_chunks"] == -(-len(examples) // 16) and manifest["chunks_resumed"] == 0
    assert manifest["corpus"]["kind"] == "meld_st" and manifest["shape"] == list(direct.shape)
    assert not (extracted / "chunks").exists() and not (extracted / PROGRESS_FILE).exists()
    assert not list(extracted.glob(".*.tmp"))

    before = (extracted / "features.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["features", "extract", str(corpus), "--extractor", "acoustic", "--out", str(extracted),
                 "--no-progress"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (extracted / "features.safetensors").stat().st_mtime_ns == before


def test_ssl_layers_from_a_local_model(corpus, tmp_path, capsys):
    from tests.test_ssl_features import tiny_ssl_model

    model = tiny_ssl_model(tmp_path / "wavlm", "wavlm")
    out = tmp_path / "ssl"
    assert main(["features", "extract", str(corpus), "--extractor", "ssl", "--model", str(model), "--layers", "0,2",
                 "--out", str(out), "--no-progress"]) == 0
    assert "features: {path: " in capsys.readouterr().out
    features = load_feature_set(out)
    _, examples = read_corpus(corpus)
    extractor = build_feature_extractor("ssl", {"model": str(model)})
    direct = np.stack([extractor.extract([load_audio(e.audio)])[0] for e in examples[:6]])
    assert features.values.shape == (len(examples), 2, 32) and features.manifest["layers"] == [0, 2]
    np.testing.assert_allclose(features.values[:6], direct[:, [0, 2]], rtol=1e-4, atol=1e-5)
    table = load_feature_file(out / "features.safetensors")  # (N, L, D): the head's layer weighting reads it
    assert tuple(table.values.shape) == (len(examples), 2, 32)


_SLOW_EXTRACT = """
import sys, time
import llmfair.ssl.acoustic as acoustic
original = acoustic.AcousticExtractor.extract
def slow(self, clips):
    time.sleep(0.25)
    return original(self, clips)
acoustic.AcousticExtractor.extract = slow
from llmfair.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_killed_extraction_resumes_to_the_uninterrupted_result(corpus, extracted, tmp_path, capsys):
    out = tmp_path / "killed"
    argv = ["features", "extract", str(corpus), "--extractor", "acoustic", "--out", str(out), "--chunk-size", "16",
            "--batch-size", "16", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_EXTRACT, *argv], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done: list = []
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                done = json.loads((out / PROGRESS_FILE).read_text())["done"]
            except (OSError, ValueError, KeyError):
                done = []
            if len(done) >= 2:
                break
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len(done) >= 2, "the extraction finished or stalled before it could be killed"
    assert not (out / MANIFEST_FILE).exists(), "killed before it finished: no manifest"
    with pytest.raises(DataError, match="unfinished extraction"):
        load_feature_set(out)
    done = json.loads((out / PROGRESS_FILE).read_text())["done"]
    # a recorded chunk damaged since (disk trouble, a partial copy) is extracted again, not trusted
    (out / "chunks" / f"{done[0]:05d}.safetensors").write_bytes(b"not a safetensors file")

    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"{len(done)} resumed" in printed, printed
    resumed, reference = load_feature_set(out), load_feature_set(extracted)
    assert resumed.ids == reference.ids
    np.testing.assert_array_equal(resumed.values, reference.values)
    assert not (out / "chunks").exists() and not (out / PROGRESS_FILE).exists()
    assert not list(out.rglob(".*.tmp"))


def test_an_exception_mid_way_resumes_in_process(corpus, extracted, tmp_path, monkeypatch):
    _, examples = read_corpus(corpus)
    calls = {"n": 0}
    original = AcousticExtractor.extract

    def failing(self, clips):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("power cut")
        return original(self, clips)

    monkeypatch.setattr(AcousticExtractor, "extract", failing)
    with pytest.raises(RuntimeError, match="power cut"):
        extract_corpus_features(examples, build_feature_extractor("acoustic"), tmp_path / "f", chunk_size=16,
                                progress=False)
    monkeypatch.setattr(AcousticExtractor, "extract", original)
    summary = extract_corpus_features(examples, build_feature_extractor("acoustic"), tmp_path / "f", chunk_size=16,
                                      progress=False)
    assert summary.chunks_resumed == 3 and summary.chunks_extracted == summary.num_chunks - 3
    np.testing.assert_array_equal(summary.features.values, load_feature_set(extracted).values)


def test_bad_input_is_one_line(corpus, extracted, tmp_path, capsys, crema_d_labels):
    # features of another extractor already in --out: refused, nothing mixed
    err = _one_line_error(capsys, ["features", "extract", str(corpus), "--extractor", "acoustic", "--option",
                                   "n_mels=20", "--out", str(extracted), "--no-progress"])
    assert str(extracted) in err and "finished extraction of another configuration of the extractor" in err
    # an unfinished extraction of another corpus or extractor: refused too
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / PROGRESS_FILE).write_text(json.dumps(
        {"format": "llmfair.features", "identity": {"extractor": "speaker", "n": 3}, "chunk_size": 16, "done": [0]}))
    err = _one_line_error(capsys, ["features", "extract", str(corpus), "--extractor", "acoustic", "--out",
                                   str(tmp_path / "other"), "--no-progress"])
    assert "unfinished extraction of other rows" in err and str(tmp_path / "other") in err
    # a features directory that is not finished, or not one at all
    with pytest.raises(DataError, match="unfinished extraction"):
        load_feature_set(tmp_path / "other")
    with pytest.raises(DataError, match="not a features directory"):
        load_feature_set(corpus)
    # CREMA-D labels need their audio; --model is the ssl extractor's; layers need layered features
    err = _one_line_error(capsys, ["features", "extract", str(crema_d_labels), "--extractor", "acoustic", "--out",
                                   str(tmp_path / "c")])
    assert "--audio-dir" in err
    err = _one_line_error(capsys, ["features", "extract", str(corpus), "--extractor", "acoustic", "--model", "x",
                                   "--out", str(tmp_path / "m")])
    assert "ssl" in err
    err = _one_line_error(capsys, ["features", "extract", str(corpus), "--extractor", "acoustic", "--layers", "0",
                                   "--out", str(tmp_path / "l"), "--no-progress"])
    assert "layers" in err
    err = _one_line_error(capsys, ["features", "extract", str(corpus), "--extractor", "nope", "--out",
                                   str(tmp_path / "n")])
    assert "nope" in err
    with pytest.raises(ConfigError, match="chunk_size"):
        extract_corpus_features(read_corpus(corpus)[1], build_feature_extractor("acoustic"), tmp_path / "z",
                                chunk_size=0)
    assert not os.path.exists(tmp_path / "z")
