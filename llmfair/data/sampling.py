"""Data-level methods: downsampling (``ds``) and group-balanced sampling (``group_balanced``).

- **DS** (IDI paper §3.2; METHODS.md §2.3): within each class, every group is subsampled to the
  smallest group's size, m_c = min_g n_{c,g}, drawing m_c rows without replacement from every
  (c, g) cell. The draw happens once, before training [I: the paper does not say per epoch]; the
  sampler then shuffles the kept rows every epoch. The min runs over the groups that are non-empty
  for the class — an empty cell would make m_c = 0 and delete the class (common with k-means
  clusters) — and a warning names the class [I]. At 1:20 on CREMA-D fold 1 the 1,776 training rows
  fall to 2·(12+4+6+5+54+2) = 166.
- **group_balanced**: sampling with replacement with probability ∝ 1/n_g, so every group is
  drawn equally often (Sagawa et al.'s ``--reweight_groups``, ``kohpangwei/group_DRO``
  ``run_expt.py``; METHODS.md §2.4 remedy for groups missing from batches). ``groups="class_gender"``
  balances (class, group) cells, Sagawa's (y, a) groups.

Both are chosen by name from :data:`SAMPLERS` (``build_sampler``), like objectives. ``classes`` are
majority class indices (−1 for rows without one; DS drops those rows with a warning) and ``groups``
integer group ids (gender, pseudo gender or cluster) per training row. Samplers draw from a seeded
``torch.Generator``, so every data-parallel rank produces the same order and accelerate shards it.

This module sits with the data so that both trainers (:class:`llmfair.training.FairTrainer` and the
frozen-feature head's :func:`llmfair.ssl.train_head.train_head`) can use it;
``llmfair.training.group_sampling`` re-exports it.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
import torch

from llmfair._registry import Registry
from llmfair.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

SAMPLER_GROUPINGS = ("gender", "class_gender")


def _check_arrays(classes: Any, groups: Any) -> tuple[np.ndarray, np.ndarray]:
    classes = np.asarray(classes)
    groups = np.asarray(groups)
    if classes.ndim != 1 or groups.ndim != 1 or len(classes) != len(groups):
        raise DataError(f"sampling needs one class and one group per training row; got shapes {classes.shape} and {groups.shape}")
    if len(groups) == 0:
        raise DataError("sampling: the training set is empty")
    for name, values in (("classes", classes), ("groups", groups)):
        if not np.issubdtype(values.dtype, np.integer):
            raise DataError(f"sampling: {name} must be integer ids, got dtype {values.dtype}")
    if (groups < 0).any():
        raise DataError(f"sampling: negative group id(s) {sorted(set(groups[groups < 0].tolist()))[:8]}")
    return classes.astype(np.int64), groups.astype(np.int64)


def downsample_indices(classes: Any, groups: Any, seed: int = 0) -> np.ndarray:
    """Sorted row indices kept by DS: m_c = min over non-empty groups of n_{c,g} rows per (c, g) cell.

    Args:
        classes: (N,) majority class per row (−1: no single class; such rows are dropped).
        groups: (N,) group id per row.
        seed: the draw's seed (the same seed gives the same rows).

    Returns:
        (M,) int64 indices into the training rows, ascending.
    """
    classes, groups = _check_arrays(classes, groups)
    labelled = np.flatnonzero(classes >= 0)
    if len(labelled) < len(classes):
        logger.warning("ds: %d row(s) without a single class are dropped", len(classes) - len(labelled))
    if len(labelled) == 0:
        raise DataError("ds: no training row has a single class")
    num_groups = int(groups.max()) + 1
    present_groups = np.unique(groups)
    cell = classes[labelled] * num_groups + groups[labelled]
    counts = np.bincount(cell, minlength=(int(classes.max()) + 1) * num_groups).reshape(-1, num_groups)
    for c in np.flatnonzero(counts.sum(1) > 0):
        missing = [int(g) for g in present_groups if counts[c, g] == 0]
        if missing:
            logger.warning("ds: class %d has no row of group(s) %s; it is balanced over its other groups", c, missing)
    m = np.where(counts > 0, counts, np.iinfo(np.int64).max).min(axis=1)  # min over non-empty groups

    rng = np.random.default_rng(seed)
    order = labelled[rng.permutation(len(labelled))]
    order_cell = classes[order] * num_groups + groups[order]
    sort = np.argsort(order_cell, kind="stable")
    order, order_cell = order[sort], order_cell[sort]
    first = np.searchsorted(order_cell, order_cell, side="left")
    rank = np.arange(len(order)) - first  # position of each row inside its (random) cell order
    keep = rank < m[classes[order]]
    return np.sort(order[keep])


def group_balanced_weights(classes: Any, groups: Any, by: str = "gender") -> np.ndarray:
    """(N,) sampling weights 1/n_g (``by="gender"``) or 1/n_{c,g} (``by="class_gender"``)."""
    if by not in SAMPLER_GROUPINGS:
        raise ConfigError(f"group_balanced sampler: groups={by!r}; expected one of {SAMPLER_GROUPINGS}")
    classes, groups = _check_arrays(classes, groups)
    if by == "class_gender":
        if (classes < 0).any():
            raise DataError("group_balanced sampler with groups='class_gender': "
                            f"{int((classes < 0).sum())} row(s) have no single class")
        key = classes * (int(groups.max()) + 1) + groups
    else:
        key = groups
    counts = np.bincount(key)
    return 1.0 / counts[key]


# ------------------------------------------------------------------------------------- registry
SamplerFactory = Callable[..., torch.utils.data.Sampler]
SAMPLERS: Registry[SamplerFactory] = Registry("sampler", name_entries=False)
"""The registered samplers by name (a read-only mapping; :func:`register_sampler` adds to it)."""


def register_sampler(name: str) -> Callable[[SamplerFactory], SamplerFactory]:
    """Register a sampler factory ``f(classes, groups, *, seed, **options) -> Sampler`` (duplicates rejected)."""
    return SAMPLERS.decorator(name)


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


@register_sampler("ds")
def downsampling_sampler(classes: Any, groups: Any, *, seed: int = 0) -> torch.utils.data.SubsetRandomSampler:
    """DS: the rows of :func:`downsample_indices` (drawn once), reshuffled every epoch."""
    kept = downsample_indices(classes, groups, seed)
    logger.info("ds: %d of %d training rows kept", len(kept), len(np.asarray(classes)))
    return torch.utils.data.SubsetRandomSampler(kept.tolist(), generator=_generator(seed))


@register_sampler("group_balanced")
def group_balanced_sampler(classes: Any, groups: Any, *, seed: int = 0, num_samples: int | None = None,
                           by: str = "gender") -> torch.utils.data.WeightedRandomSampler:
    """Sampling with replacement ∝ 1/n_g (Sagawa's ``--reweight_groups``); ``num_samples`` per
    epoch defaults to the training-set size."""
    weights = group_balanced_weights(classes, groups, by)
    n = len(weights) if num_samples is None else int(num_samples)
    if n < 1:
        raise ConfigError(f"group_balanced sampler: num_samples must be positive, got {n}")
    return torch.utils.data.WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.float64), n,
                                                  replacement=True, generator=_generator(seed))


def build_sampler(name: str, classes: Any, groups: Any, *, seed: int = 0, **options: Any) -> torch.utils.data.Sampler:
    """Instantiate a registered sampler by name; unknown names and options raise ConfigError."""
    factory = SAMPLERS.lookup(name)
    try:
        return factory(classes, groups, seed=seed, **options)
    except TypeError as exc:
        raise ConfigError(f"sampler {name!r}: {exc}") from None
