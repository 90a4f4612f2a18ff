"""Checkpoints without pickles where we can: llmfair writes and reads its own state as safetensors,
and every torch pickle a resume reads (the Trainer's optimizer, scheduler, RNG and scaler files) is
loaded with ``weights_only=True``. Both are read from the source, so a transformers upgrade that
drops ``weights_only`` fails here rather than in a user's resume."""
from __future__ import annotations

import ast
import inspect
from pathlib import Path

import transformers.trainer

ROOT = Path(__file__).resolve().parents[1] / "llmfair"


def _torch_load_calls(tree: ast.AST) -> list[ast.Call]:
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
            calls.append(node)
    return calls


def _weights_only(call: ast.Call) -> bool:
    return any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
               for k in call.keywords)


def test_every_torch_load_in_llmfair_is_weights_only() -> None:
    unsafe = []
    for path in ROOT.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        unsafe += [f"{path.relative_to(ROOT.parent)}:{c.lineno}" for c in _torch_load_calls(tree) if not _weights_only(c)]
        for node in ast.walk(tree):  # no pickle module at all
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                assert not any(n and n.split(".")[0] in ("pickle", "dill", "joblib") for n in names), \
                    f"{path}:{node.lineno} imports a pickle module"
    assert not unsafe, f"torch.load without weights_only=True: {unsafe}"


def test_the_trainer_reads_every_checkpoint_pickle_with_weights_only() -> None:
    source = inspect.getsource(transformers.trainer)
    calls = _torch_load_calls(ast.parse(source))
    assert len(calls) >= 5  # optimizer, scheduler, RNG, scaler, weights: the test can fail
    unsafe = [c.lineno for c in calls if not _weights_only(c)]
    assert not unsafe, f"transformers.trainer torch.load without weights_only=True at lines {unsafe}"


def test_llmfair_state_in_a_checkpoint_is_safetensors() -> None:
    from llmfair.training.trainer import OBJECTIVE_STATE_FILE

    assert OBJECTIVE_STATE_FILE.endswith(".safetensors")
