"""Groups and training-set counts: the contract between the data and everything downstream.

- :class:`GroupSpec` gives every example an integer group id (``GroupSpec.from_records(records,
  keys)``) and maps ids back to attributes (language, modality, gender, rater gender, cluster ...).
  Objectives, samplers, the frozen-feature head and group inference all speak in these ids.
- :class:`TrainingStats` holds the training-set counts an objective or a sampler may need
  (n_g, n_{c,g}, N, K).

They live with the data (the first stage after the foundation) so that every later stage — group
inference, the frozen-feature head, objectives, trainers — can use them without importing a stage
that comes after it. ``llmfair.objectives`` re-exports both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from llmfair.errors import ConfigError


@dataclass(frozen=True)
class GroupSpec:
    """Maps integer group ids to attributes, e.g. id 3 → {language: deu, modality: audio, gender: male}.

    Objectives read only the attributes they need: gender-only methods look at ``gender``,
    MinMaxGAP at (language, modality) cells and ``gender``.
    """

    keys: tuple[str, ...]
    groups: tuple[tuple[str, ...], ...]

    @property
    def num_groups(self) -> int:
        return len(self.groups)

    def column(self, key: str) -> np.ndarray:
        if key not in self.keys:
            raise ConfigError(f"group attribute {key!r} is not in this GroupSpec (it has {list(self.keys)})")
        i = self.keys.index(key)
        return np.array([g[i] for g in self.groups], dtype=object)

    def describe(self, group_id: int) -> str:
        return "/".join(self.groups[group_id])

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> tuple["GroupSpec", np.ndarray]:
        """Group every record by ``keys``; returns the spec and an int64 group id per record.

        Ids follow the sorted order of the attribute tuples, so they do not depend on record order.
        """
        keys = tuple(keys)
        if not records:
            raise ConfigError("cannot build groups from an empty dataset")
        missing = [k for k in keys if k not in records[0]]
        if missing:
            raise ConfigError(f"group keys {missing} are not fields of the examples (have {sorted(records[0])})")
        tuples = [tuple(str(r[k]) for k in keys) for r in records]
        groups = tuple(sorted(set(tuples)))
        index = {g: i for i, g in enumerate(groups)}
        return cls(keys, groups), np.fromiter((index[t] for t in tuples), dtype=np.int64, count=len(tuples))


@dataclass
class TrainingStats:
    """Training-set counts an objective may need (RW's n_c/n_{c,g}, GADRO's n_g, LfF's set size).

    Attributes:
        group_counts: (G,) examples per group id.
        class_group_counts: (K, G) examples per (single-label class, group id); rows without a
            single label are not counted.
        num_examples: training-set size (dataset indices run from 0 to num_examples - 1).
        num_classes: K.
        soft_group_counts: (G,) summed group probabilities when groups are soft (PGDRO), else None.
    """

    group_counts: np.ndarray
    class_group_counts: np.ndarray
    num_examples: int
    num_classes: int
    soft_group_counts: np.ndarray | None = None

    @classmethod
    def from_arrays(cls, group_ids: np.ndarray, classes: np.ndarray, num_groups: int, num_classes: int) -> "TrainingStats":
        """Counts from one group id and one class index (−1: no single class) per training row."""
        group_ids = np.asarray(group_ids, dtype=np.int64)
        classes = np.asarray(classes, dtype=np.int64)
        has_class = classes >= 0
        flat = classes[has_class] * num_groups + group_ids[has_class]
        return cls(
            group_counts=np.bincount(group_ids, minlength=num_groups),
            class_group_counts=np.bincount(flat, minlength=num_classes * num_groups).reshape(num_classes, num_groups),
            num_examples=len(group_ids),
            num_classes=num_classes,
        )
