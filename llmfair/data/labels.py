"""Label spaces and the closed vocabularies every stage shares (languages, modalities, genders)."""
from __future__ import annotations

from dataclasses import dataclass

from llmfair.errors import DataError

LANGUAGES: tuple[str, ...] = ("eng", "deu", "jpn")
"""ISO 639-3 codes of the MELD-ST languages."""

MODALITIES: tuple[str, ...] = ("audio", "audio_text")
"""``audio``: speech only. ``audio_text``: speech plus the transcript in the audio's language."""

GENDERS: tuple[str, ...] = ("female", "male", "unknown")
"""``unknown`` is kept for training, excluded from gender gaps and counted in reports."""


@dataclass(frozen=True)
class LabelSpace:
    """An ordered set of emotion classes; an Example's ``emotion`` indexes into ``classes``."""

    name: str
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"label space {self.name!r} has duplicate classes: {self.classes}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def index(self, label: str, *, where: str = "") -> int:
        """Index of ``label`` (case-insensitive); a clear error names ``where`` otherwise."""
        key = label.strip().lower()
        for i, c in enumerate(self.classes):
            if c == key:
                return i
        at = f" in {where}" if where else ""
        raise DataError(
            f"unknown emotion label {label!r}{at}; label space {self.name!r} has {list(self.classes)}"
        )

    def __len__(self) -> int:
        return len(self.classes)


MELD = LabelSpace("meld", ("neutral", "joy", "sadness", "anger", "surprise", "fear", "disgust"))
"""MELD's 7 emotions, the labels of MELD-ST and of the built-in corpus."""

CREMA_D = LabelSpace("crema_d", ("angry", "sad", "disgust", "fear", "neutral", "happy"))
"""CREMA-D's 6 emotions in the order of the EMO-SUPERB label files (METHODS.md §1.2)."""

LABEL_SPACES: dict[str, LabelSpace] = {ls.name: ls for ls in (MELD, CREMA_D)}


def get_label_space(name: str) -> LabelSpace:
    try:
        return LABEL_SPACES[name]
    except KeyError:
        raise DataError(f"unknown label space {name!r}; known: {sorted(LABEL_SPACES)}") from None


def normalise_gender(value: object, *, where: str = "") -> str:
    """Map the spellings corpora use (F/M, Female/Male, woman/man, U, empty) to GENDERS."""
    key = str(value).strip().lower() if value is not None else ""
    if key in ("f", "female", "woman", "w"):
        return "female"
    if key in ("m", "male", "man"):
        return "male"
    if key in ("", "u", "unknown", "unk", "nan", "none", "?"):
        return "unknown"
    at = f" in {where}" if where else ""
    raise DataError(f"unknown gender value {value!r}{at}; expected female/male/unknown (or F/M/U)")


def binarize(dist, num_classes: int | None = None):
    """Multi-label binarisation: class c is on when its share is strictly above 1/K.

    Applies to soft labels and to softmax predictions alike (EMO-SUPERB ``expert.py``; IDI §4.3;
    METHODS.md §1.2). ``dist`` is (..., K); returns a boolean array of the same shape.
    """
    import numpy as np

    dist = np.asarray(dist, dtype=np.float64)
    k = dist.shape[-1] if num_classes is None else num_classes
    return dist > 1.0 / k
