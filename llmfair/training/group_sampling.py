"""Deprecated location: the samplers moved to :mod:`llmfair.data.sampling`, where both trainers
(FairTrainer and the frozen-feature head) may use them. Import from there; this module re-exports
the same objects (``SAMPLERS`` is the one registry)."""
from __future__ import annotations

from llmfair.data.sampling import (  # noqa: F401
    SAMPLER_GROUPINGS,
    SAMPLERS,
    SamplerFactory,
    build_sampler,
    downsample_indices,
    downsampling_sampler,
    group_balanced_sampler,
    group_balanced_weights,
    register_sampler,
)

__all__ = [
    "SAMPLER_GROUPINGS", "SAMPLERS", "SamplerFactory", "build_sampler", "downsample_indices", "downsampling_sampler",
    "group_balanced_sampler", "group_balanced_weights", "register_sampler",
]
