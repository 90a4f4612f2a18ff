"""Data-level sampling: the group-covering order used by gap objectives.

A gap needs both genders of a cell in the same batch (or a running estimate). The
:class:`GroupCoveringSampler` orders an epoch so that every consecutive chunk of ``batch_size``
indices holds one female and one male example of as many (language × modality) cells as the batch
allows (cells rotate across batches so each is covered equally often); the remaining slots are
filled from a shuffled pass over the whole set. Small groups are therefore oversampled; the epoch
keeps ⌈N / batch_size⌉ batches. Accelerate hands whole batches to data-parallel ranks, so each
rank's batch is covering too.
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch

from llmfair.errors import ConfigError


class _Stream:
    """An endless reshuffled pass over ``indices``."""

    def __init__(self, indices: np.ndarray, rng: np.random.Generator) -> None:
        self.indices, self.rng, self.order, self.pos = indices, rng, rng.permutation(indices), 0

    def take(self, n: int) -> np.ndarray:
        out = []
        while n > 0:
            if self.pos == len(self.order):
                self.order, self.pos = self.rng.permutation(self.indices), 0
            k = min(n, len(self.order) - self.pos)
            out.append(self.order[self.pos:self.pos + k])
            self.pos, n = self.pos + k, n - k
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


class GroupCoveringSampler(torch.utils.data.Sampler[int]):
    """Yields indices whose consecutive ``batch_size`` chunks cover both genders of many cells.

    Args:
        cells: (N,) cell label per example (e.g. "deu/audio").
        genders: (N,) ``female``/``male``/``unknown`` per example.
        batch_size: the per-device batch size the DataLoader will chunk by.
        seed: base seed; the epoch (``set_epoch``) is mixed in, so epochs differ and resumes replay.
    """

    def __init__(self, cells: Sequence[str], genders: Sequence[str], batch_size: int, seed: int = 0) -> None:
        if batch_size < 2:
            raise ConfigError(f"group_covering sampling needs batch_size >= 2 (got {batch_size})")
        self.cells = np.asarray(cells, dtype=object)
        self.genders = np.asarray(genders, dtype=object)
        if len(self.cells) != len(self.genders) or len(self.cells) == 0:
            raise ConfigError("group_covering sampler: cells and genders must be non-empty and of equal length")
        self.batch_size, self.seed, self.epoch = batch_size, seed, 0
        names = sorted(set(self.cells.tolist()))
        self.pair_cells = [
            c for c in names
            if ((self.cells == c) & (self.genders == "female")).any() and ((self.cells == c) & (self.genders == "male")).any()
        ]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.cells) / self.batch_size) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        everyone = _Stream(np.arange(len(self.cells)), rng)
        streams = {
            (c, g): _Stream(np.flatnonzero((self.cells == c) & (self.genders == g)), rng)
            for c in self.pair_cells for g in ("female", "male")
        }
        per_batch = min(self.batch_size // 2, len(self.pair_cells))
        rotation = _Stream(np.arange(len(self.pair_cells)), rng)
        for _ in range(len(self) // self.batch_size):
            chosen: list[int] = []
            while len(chosen) < per_batch:  # distinct cells, even where the rotation reshuffles
                k = int(rotation.take(1)[0])
                if k not in chosen:
                    chosen.append(k)
            paired = [streams[(self.pair_cells[k], g)].take(1) for k in chosen for g in ("female", "male")]
            fill = everyone.take(self.batch_size - 2 * len(chosen))
            batch = rng.permutation(np.concatenate(paired + [fill]))
            yield from (int(i) for i in batch)
