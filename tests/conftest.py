"""Shared fixtures: the real data under ../shared, the tiny speech LLM's offline cache, and quiet,
reproducible torch."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data: the EMO-SUPERB CREMA-D label files and one real clip."""
    path = SHARED / "data"
    assert path.is_dir(), f"tests need the shared data beside the project: {path} is missing"
    return path


@pytest.fixture(scope="session")
def crema_d_labels(shared_data: Path) -> Path:
    return shared_data / "crema-d"


@pytest.fixture(scope="session")
def real_clip(shared_data: Path) -> Path:
    return shared_data / "samples" / "1001_DFA_ANG_XX.wav"


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """Every test's llmfair cache (tiny model, encoder cache, audio-header cache) lives under the
    session's temporary folder, never in the user's home; the same folder as ``llmfair_cache``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMFAIR_CACHE", str(tmp_path_factory.getbasetemp() / "llmfair-cache"))
        yield


@pytest.fixture(scope="session")
def llmfair_cache(tmp_path_factory) -> Path:
    """One LLMFAIR_CACHE (tiny model + encoder cache) for the whole session, not the user's home:
    the tiny Qwen2-Audio is built there once, offline, and ``load_speech_llm("tiny")`` reads it."""
    from llmfair.speechllm.tiny import tiny_model_path

    cache = tmp_path_factory.getbasetemp() / "llmfair-cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMFAIR_CACHE", str(cache))
        mp.setenv("HF_HUB_OFFLINE", "1")
        tiny_model_path()
        yield cache


@pytest.fixture
def one_thread():
    """torch on one intra-op thread for the test (bit-reproducible small-model training), restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
