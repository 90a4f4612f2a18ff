"""The accelerate and DeepSpeed launch configs, shipped inside the package (TRL's
``accelerate_configs/`` pattern) so that an installed llmfair can print or copy them.

Each config is named by its path in a source checkout, which is also its path here and the path
:func:`copy_to` writes it to. So the ZeRO configs' ``deepspeed_config_file:
recipes/deepspeed/zero2.json`` (relative to the working directory, as ``accelerate launch`` reads
it) resolves in a directory they were copied to exactly as in the repository. A bare file name
(``zero2.json``, ``multi_gpu.yaml``) names a config too: no two share one.

======================================  ================================================================
``accelerate_config.yaml``              one process: one GPU, or the CPU when none is present
``recipes/accelerate/multi_gpu.yaml``   DDP on every GPU of one machine (``--num_processes N``)
``recipes/accelerate/zero2.yaml``       DeepSpeed ZeRO-2 on every GPU of one machine
``recipes/accelerate/zero3.yaml``       DeepSpeed ZeRO-3 on every GPU of one machine
``recipes/accelerate/qlora.yaml``       QLoRA: one GPU, 4-bit base weights (``pip install llmfair[qlora]``)
``recipes/deepspeed/zero2.json``        the ZeRO-2 settings (explicit values, no ``auto``)
``recipes/deepspeed/zero3.json``        the ZeRO-3 settings (explicit values, no ``auto``)
======================================  ================================================================

The DeepSpeed JSONs leave the values the Trainer owns (batch size, accumulation, clipping, bf16) to
:func:`llmfair.training.deepspeed.deepspeed_config_for`, which fills them from ``TrainingArguments``.
The copies here are kept byte-identical to the repository's files by ``tests/test_launch_configs.py``.
"""
from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path
from typing import Iterable

from llmfair._atomic import write_bytes
from llmfair.errors import ConfigError

DESCRIPTIONS: dict[str, str] = {
    "accelerate_config.yaml": "one process: one GPU, or the CPU when none is present",
    "recipes/accelerate/multi_gpu.yaml": "DDP on every GPU of one machine (override the count with --num_processes N)",
    "recipes/accelerate/zero2.yaml": "DeepSpeed ZeRO-2 on every GPU of one machine (uses recipes/deepspeed/zero2.json)",
    "recipes/accelerate/zero3.yaml": "DeepSpeed ZeRO-3 on every GPU of one machine (uses recipes/deepspeed/zero3.json)",
    "recipes/accelerate/qlora.yaml": "QLoRA: one GPU, 4-bit base weights (bitsandbytes)",
    "recipes/deepspeed/zero2.json": "DeepSpeed ZeRO-2 settings (Trainer-owned values filled from TrainingArguments)",
    "recipes/deepspeed/zero3.json": "DeepSpeed ZeRO-3 settings (Trainer-owned values filled from TrainingArguments)",
}
"""Every shipped config by name, with one line on what it launches."""

_DEEPSPEED_FILE = re.compile(r"^\s*deepspeed_config_file:\s*(\S+)\s*$", re.MULTILINE)


def names() -> list[str]:
    """The names of the shipped configs (their paths in a source checkout), in table order."""
    return list(DESCRIPTIONS)


def resolve(name: str) -> str:
    """The full name of ``name``: a full name, or the bare file name of one config.

    Raises:
        ConfigError: no shipped config has that name.
    """
    name = str(name).strip().replace(os.sep, "/")
    if name in DESCRIPTIONS:
        return name
    matches = [n for n in DESCRIPTIONS if n.rsplit("/", 1)[-1] == name]
    if len(matches) == 1:
        return matches[0]
    raise ConfigError(f"unknown launch config {name!r}; llmfair ships {names()}")


def path(name: str) -> Path:
    """The file of a shipped config inside the installed package (pass it to
    ``accelerate launch --config_file``; a ZeRO config also needs its DeepSpeed JSON where its
    ``deepspeed_config_file`` says, so :func:`copy_to` is the way to use those)."""
    ref = resources.files(__name__).joinpath(*resolve(name).split("/"))
    if not isinstance(ref, Path):  # only a zipped install; read_text and copy_to still work
        raise ConfigError(f"launch config {name!r} is not a file on disk here; use copy_to() to write it out")
    return ref


def read_text(name: str) -> str:
    """The text of a shipped config."""
    return _read_bytes(resolve(name)).decode("utf-8")


def requires(name: str) -> list[str]:
    """``name`` and the shipped configs it refers to (a ZeRO accelerate config's DeepSpeed JSON)."""
    full = resolve(name)
    refs = _DEEPSPEED_FILE.findall(_read_bytes(full).decode("utf-8")) if full.endswith(".yaml") else []
    return [full] + [ref for ref in refs if ref in DESCRIPTIONS and ref != full]


def copy_to(directory: str | os.PathLike, selected: Iterable[str] | None = None, *,
            overwrite: bool = False) -> list[Path]:
    """Write shipped configs under ``directory`` at their names' relative paths.

    Args:
        directory: where to write (created when missing); run ``accelerate launch`` from there.
        selected: names (full or bare file names); default: all of them. The DeepSpeed JSON a
            selected ZeRO config refers to is always written with it.
        overwrite: replace files that exist with other content; without it such a file is an
            error and nothing is written. Files that exist with the same content are left alone.

    Returns:
        The paths of the selected configs and the files they refer to, in table order.

    Raises:
        ConfigError: an unknown name, or a file in the way (without ``overwrite``).
    """
    wanted = {n for name in (names() if selected is None else selected) for n in requires(name)}
    chosen = [n for n in names() if n in wanted]
    directory = Path(directory)
    targets = [(directory.joinpath(*n.split("/")), _read_bytes(n)) for n in chosen]
    clashes = [str(t) for t, data in targets if t.exists() and (not t.is_file() or t.read_bytes() != data)]
    if clashes and not overwrite:
        raise ConfigError(f"{clashes} exist with other content; pass overwrite to replace them")
    for target, data in targets:
        if not (target.is_file() and target.read_bytes() == data):
            write_bytes(target, data)
    return [t for t, _ in targets]


def _read_bytes(full_name: str) -> bytes:
    return resources.files(__name__).joinpath(*full_name.split("/")).read_bytes()
