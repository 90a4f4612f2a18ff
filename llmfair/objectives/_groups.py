"""Group bookkeeping shared by the objectives (private: methods import it, users import the methods).

- :func:`majority_class`: c(x), the class index of each sample (soft labels: their argmax);
- :class:`GroupUnits`: the units a method balances over (gender values, or the spec's own groups
  when there is no gender attribute, e.g. k-means clusters);
- :data:`GENDER_CODES` / :func:`gender_codes`: female → 0, male → 1, anything else → −1.

Used by ``gdro``/``gadro``/``pgdro`` (through :mod:`llmfair.objectives._dro`), ``rw``, ``gr``,
``lff``, ``disent``, ``adv``, ``two_sided`` and ``minmaxgap``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch

from llmfair.data.grouping import GroupSpec
from llmfair.errors import DataError

GENDER_CODES: dict[str, int] = {"female": 0, "male": 1}
"""The binary gender code of a gender value; other values (``unknown``) have none (−1)."""


def gender_codes(values: Iterable[object]) -> list[int]:
    """0 for female, 1 for male, −1 for anything else (``unknown``), per value."""
    return [GENDER_CODES.get(str(v), -1) for v in values]


def majority_class(labels: torch.Tensor | None, num_classes: int | None = None, *, method: str = "objective") -> torch.Tensor:
    """c(x) per sample: ``labels.argmax(-1)`` for (B, K) soft labels, the index for (B,) labels.

    Raises:
        DataError: no labels were given, or a class index is outside [0, ``num_classes``).
    """
    if labels is None:
        raise DataError(f"{method} needs the batch labels (the majority class of each sample); the batch has none")
    classes = labels.argmax(dim=-1) if labels.ndim == 2 else labels.long()
    if num_classes is not None and classes.numel() and bool(((classes < 0) | (classes >= num_classes)).any()):
        bad = sorted(set(classes[(classes < 0) | (classes >= num_classes)].tolist()))
        raise DataError(f"{method}: class index(es) {bad} are outside [0, {num_classes})")
    return classes


@dataclass(frozen=True)
class GroupUnits:
    """The units a method balances over, as a map from GroupSpec group ids.

    With a ``gender`` attribute in the spec the units are its values (other attributes collapsed);
    without one (inferred groups such as clusters) every spec group is a unit of its own.

    Attributes:
        unit_of_group: (G_spec,) int64 unit index of each spec group id.
        names: the units' names (gender values, or the spec's group descriptions).
    """

    unit_of_group: np.ndarray
    names: tuple[str, ...]

    @classmethod
    def from_spec(cls, spec: GroupSpec) -> "GroupUnits":
        if "gender" in spec.keys:
            genders = spec.column("gender").astype(str)
            names = tuple(sorted(set(genders.tolist())))
            index = {g: i for i, g in enumerate(names)}
            return cls(np.array([index[g] for g in genders], dtype=np.int64), names)
        return cls(np.arange(spec.num_groups, dtype=np.int64), tuple(spec.describe(i) for i in range(spec.num_groups)))

    @property
    def num_units(self) -> int:
        """U, the number of units."""
        return len(self.names)

    def collapse(self, per_group: np.ndarray) -> np.ndarray:
        """Sum counts over the last axis from spec groups (…, G_spec) to units (…, U)."""
        per_group = np.asarray(per_group, dtype=np.float64)
        if per_group.shape[-1] != len(self.unit_of_group):
            raise DataError(f"counts have {per_group.shape[-1]} groups, the GroupSpec has {len(self.unit_of_group)}")
        onehot = np.eye(self.num_units)[self.unit_of_group]  # (G_spec, U)
        return per_group @ onehot

    def dro_names(self, grouping: str, num_classes: int | None) -> list[str]:
        """Names of the DRO groups: units, or ``c<k>/<unit>`` in class-major order."""
        if grouping == "gender":
            return list(self.names)
        return [f"c{c}/{u}" for c in range(num_classes or 0) for u in self.names]
