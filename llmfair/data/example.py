"""The Example: one utterance as seen by one model input.

Every corpus reader produces Examples and nothing downstream knows which corpus they came from.
Audio stays a path until a batch needs it, so a reader never decodes a corpus up front.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from llmfair.data.labels import GENDERS, LANGUAGES, MODALITIES, LabelSpace
from llmfair.errors import DataError


@dataclass(frozen=True)
class RaterAnnotation:
    """One rater's label for one utterance (for two-sided speaker/rater fairness)."""

    rater: str
    rater_gender: str
    emotion: int


@dataclass
class Example:
    """One utterance in one language and one modality.

    Attributes:
        id: unique within a corpus *and* modality-independent: the same utterance in the two
            modalities shares ``utterance_id``; ``id`` adds the language (and is what predictions
            tables key on together with ``modality``).
        audio: path to a 16 kHz mono WAV, or a float32 array already at 16 kHz.
        text: transcript in the audio's language; empty when unknown. Model inputs use it only
            when ``modality == "audio_text"``.
        language: one of ``eng``, ``deu``, ``jpn``.
        modality: ``audio`` or ``audio_text``.
        emotion: index into the label space: the single label, or for multi-label corpora the
            strict-majority class (``-1`` when no class has more than half of the votes).
        emotion_dist: soft label over the label space for multi-label corpora, else ``None``.
        gender: speaker gender, ``female``, ``male`` or ``unknown``.
        speaker: speaker identifier (a character name in MELD-ST).
        split: ``train``, ``dev`` or ``test`` (MELD-ST's ``valid`` and CREMA-D's Development are ``dev``).
        utterance_id: the id shared by every language/modality rendering of one source utterance.
        annotations: per-rater labels, when the corpus has them.
        meta: corpus-specific extras (season, episode, times, fold...), never read by models.
    """

    id: str
    audio: Any
    text: str
    language: str
    modality: str
    emotion: int
    gender: str
    speaker: str
    split: str
    utterance_id: str = ""
    emotion_dist: tuple[float, ...] | None = None
    annotations: tuple[RaterAnnotation, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.language not in LANGUAGES:
            raise DataError(f"example {self.id!r}: unknown language {self.language!r}; expected one of {LANGUAGES}")
        if self.modality not in MODALITIES:
            raise DataError(f"example {self.id!r}: unknown modality {self.modality!r}; expected one of {MODALITIES}")
        if self.gender not in GENDERS:
            raise DataError(f"example {self.id!r}: unknown gender {self.gender!r}; expected one of {GENDERS}")
        if not self.utterance_id:
            self.utterance_id = self.id

    @property
    def slice_key(self) -> tuple[str, str, str]:
        """(language, modality, gender): the unit of every per-slice figure."""
        return (self.language, self.modality, self.gender)

    def to_record(self) -> dict[str, Any]:
        """A flat dict with stable column types, for ``datasets.Dataset.from_list``.

        Audio stays a path (arrays are rejected: a Dataset of decoded audio is what we avoid).
        """
        if not isinstance(self.audio, str):
            raise DataError(f"example {self.id!r}: to_record needs an audio path, not an array")
        rec = asdict(self)
        rec["emotion_dist"] = list(self.emotion_dist) if self.emotion_dist is not None else []
        rec["annotations"] = [asdict(a) for a in self.annotations]
        rec["meta"] = {k: str(v) for k, v in self.meta.items()}
        return rec


def examples_to_dataset(examples: Iterable[Example]):
    """A ``datasets.Dataset`` with one row per Example; audio is decoded later, per batch."""
    import datasets

    records = [ex.to_record() for ex in examples]
    if not records:
        raise DataError("no examples to build a dataset from")
    return datasets.Dataset.from_list(records)


def emotion_matrix(examples: Sequence[Example], label_space: LabelSpace) -> np.ndarray:
    """Soft labels as an (n, K) array; single-label examples become one-hot rows."""
    k = label_space.num_classes
    out = np.zeros((len(examples), k), dtype=np.float64)
    for i, ex in enumerate(examples):
        if ex.emotion_dist is not None:
            out[i] = ex.emotion_dist
        elif ex.emotion >= 0:
            out[i, ex.emotion] = 1.0
    return out
