"""Speaker → gender tables. MELD names speakers, not their gender, so the table is data.

The package ships ``resources/meld_speaker_gender.csv``: the six main Friends characters and the
recurring speakers that can be named with confidence (plus generic roles such as "Man"/"Woman").
Every other speaker is ``unknown``: kept for training, excluded from gender gaps, counted in reports.
Users pass their own table (CSV with ``speaker,gender`` columns, or a mapping) to override or extend
it, e.g. pseudo-labels from a gender classifier.
"""
from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path
from typing import Mapping

from llmfair.data._csv import read_csv_checked
from llmfair.data.labels import normalise_gender

_SPACES = re.compile(r"\s+")


def speaker_key(name: str) -> str:
    """Case-, accent-of-space- and punctuation-of-spacing-insensitive key for a speaker name."""
    return _SPACES.sub(" ", str(name)).strip().casefold()


class SpeakerGenderTable:
    """A lookup from speaker name to ``female``/``male``/``unknown``."""

    def __init__(self, mapping: Mapping[str, str] | None = None, *, source: str = "<dict>") -> None:
        self.source = source
        self._map: dict[str, str] = {}
        for name, gender in (mapping or {}).items():
            self._map[speaker_key(name)] = normalise_gender(gender, where=f"{source}, speaker {name!r}")

    @classmethod
    def from_csv(cls, path: str | os.PathLike) -> "SpeakerGenderTable":
        frame = read_csv_checked(path, ["speaker", "gender"])
        return cls(dict(zip(frame["speaker"], frame["gender"])), source=str(path))

    @classmethod
    def meld_default(cls) -> "SpeakerGenderTable":
        """The table shipped with llmfair for MELD / MELD-ST speakers."""
        ref = resources.files("llmfair.data") / "resources" / "meld_speaker_gender.csv"
        with resources.as_file(ref) as path:
            return cls.from_csv(path)

    def updated(self, other: "SpeakerGenderTable") -> "SpeakerGenderTable":
        """A new table with ``other``'s entries taking precedence."""
        merged = SpeakerGenderTable(source=f"{self.source} + {other.source}")
        merged._map = {**self._map, **other._map}
        return merged

    def lookup(self, speaker: str) -> str:
        return self._map.get(speaker_key(speaker), "unknown")

    def __len__(self) -> int:
        return len(self._map)

    def __contains__(self, speaker: object) -> bool:
        return speaker_key(str(speaker)) in self._map


def resolve_gender_table(
    table: "SpeakerGenderTable | Mapping[str, str] | str | os.PathLike | None",
    corpus_root: Path | None = None,
) -> SpeakerGenderTable:
    """The packaged MELD table, extended by ``<corpus_root>/speaker_gender.csv`` when present
    (the built-in corpus writes one), then by the user's ``table`` (highest precedence)."""
    resolved = SpeakerGenderTable.meld_default()
    if corpus_root is not None and (corpus_root / "speaker_gender.csv").is_file():
        resolved = resolved.updated(SpeakerGenderTable.from_csv(corpus_root / "speaker_gender.csv"))
    if table is None:
        return resolved
    if isinstance(table, SpeakerGenderTable):
        return resolved.updated(table)
    if isinstance(table, Mapping):
        return resolved.updated(SpeakerGenderTable(table))
    return resolved.updated(SpeakerGenderTable.from_csv(Path(table)))
