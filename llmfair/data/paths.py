"""Paths built from data files must stay inside their data root."""
from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Mapping

from llmfair.errors import DataError

_SAFE_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def resolve_inside(root: Path, relative: str, *, what: str) -> Path:
    """``root / relative`` resolved; refuses absolute paths and anything escaping ``root``."""
    root = root.resolve()
    if Path(relative).is_absolute():
        raise DataError(f"{what}: absolute path {relative!r} refused; paths must be relative to {root}")
    path = (root / relative).resolve()
    if path != root and root not in path.parents:
        raise DataError(f"{what}: path {relative!r} escapes the data root {root}; refused")
    return path


class PathTemplate:
    """A ``str.format`` template with named placeholders, e.g. ``{pair}/{LANGUAGE}/{split}/{split}_{id}.wav``.

    Values substituted from data files must be plain names (letters, digits, ``_.-``; no ``..``), and
    the formatted path must stay inside the root.
    """

    def __init__(self, template: str, allowed: tuple[str, ...]) -> None:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
        unknown = sorted(f for f in fields if f not in allowed)
        if unknown:
            raise DataError(f"path template {template!r}: unknown placeholder(s) {unknown}; allowed: {list(allowed)}")
        if "id" not in fields:
            raise DataError(f"path template {template!r} must contain {{id}} so every utterance has its own file")
        if Path(template).is_absolute():
            raise DataError(f"path template {template!r} must be relative to the data root")
        self.template = template

    def format(self, root: Path, values: Mapping[str, str], *, what: str) -> Path:
        for key, value in values.items():
            if not _SAFE_VALUE.match(value) or ".." in value:
                raise DataError(f"{what}: value {value!r} for {{{key}}} is not a plain file-name part; refused")
        return resolve_inside(root, self.template.format(**values), what=what)
