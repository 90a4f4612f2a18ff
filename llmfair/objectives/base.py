"""The objective contract and the registry.

An objective receives a batch's per-sample losses (plus logits, labels, pooled features and group
ids), keeps its own state (running estimates, dual variables, auxiliary heads) and returns the
scalar loss to back-propagate and named figures to log. The same objective runs on the speech LLM
and on the frozen-feature head.

Data-parallel contract: ``loss`` is scaled so that, after DDP *averages* gradients over ``W``
ranks, the gradient equals that of the objective on the concatenated global batch. Statistics that
span samples (counts, per-cell means, the max-gap cell) are all-reduced across ranks before use.

:class:`GroupSpec` and :class:`TrainingStats` live in :mod:`llmfair.data.grouping`, where every
stage may use them; they are re-exported here and from :mod:`llmfair.objectives`. The registry is
the toolkit's one :class:`llmfair._registry.Registry` implementation.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping

import torch
from torch import nn

from llmfair._registry import Registry
from llmfair.data.grouping import GroupSpec, TrainingStats
from llmfair.errors import ConfigError

__all__ = [
    "OBJECTIVES", "CrossRankReducer", "GroupSpec", "Objective", "ObjectiveInputs", "ObjectiveOptions",
    "ObjectiveOutput", "TrainingStats", "available_objectives", "build_objective", "register_objective",
]


# ------------------------------------------------------------------------------------- data-parallel
class CrossRankReducer:
    """Sums detached statistics over data-parallel ranks (identity in a single process)."""

    def __init__(self) -> None:
        self._dist = torch.distributed if torch.distributed.is_available() else None

    @property
    def world_size(self) -> int:
        if self._dist is not None and self._dist.is_initialized():
            return self._dist.get_world_size()
        return 1

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """A detached copy of ``tensor`` summed over ranks."""
        out = tensor.detach().clone()
        if self.world_size > 1:
            self._dist.all_reduce(out, op=self._dist.ReduceOp.SUM)
        return out


# ------------------------------------------------------------------------------------- contract
@dataclass
class ObjectiveInputs:
    """What a backbone hands to an objective for one (micro-)batch.

    Attributes:
        per_sample_loss: (B,) unreduced base loss (cross-entropy, class-balanced soft CE, ...).
        group_ids: (B,) int64 ids into the objective's GroupSpec.
        logits: (B, K) class logits, when the method needs them.
        labels: (B,) class indices or (B, K) soft labels.
        features: (B, D) pooled representation (adversaries, disentanglement).
        sample_index: (B,) dataset indices (per-sample running statistics, e.g. LfF).
        inputs: (B, ...) the model's frozen input representation (e.g. cached SSL features), for
            objectives that train auxiliary models on the input (LfF's biased model).
    """

    per_sample_loss: torch.Tensor
    group_ids: torch.Tensor
    logits: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    features: torch.Tensor | None = None
    sample_index: torch.Tensor | None = None
    inputs: torch.Tensor | None = None


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor
    figures: dict[str, float] = field(default_factory=dict)


@dataclass
class ObjectiveOptions:
    """Options shared by every objective (subclasses add their own)."""


class Objective(nn.Module):
    """Base class. Subclasses set ``name`` via :func:`register_objective` and implement ``forward``."""

    name: ClassVar[str] = ""
    depends_only_on_per_sample_loss: ClassVar[bool] = False
    """True when the loss is a function of the per-sample losses and group ids alone (exact
    gradient accumulation applies)."""
    options_class: ClassVar[type] = ObjectiveOptions
    reconstructed: ClassVar[bool] = False
    """True where the source paper does not define the method and llmfair reconstructs it."""

    def __init__(self, group_spec: GroupSpec, options: Any = None, reducer: CrossRankReducer | None = None) -> None:
        super().__init__()
        self.group_spec = group_spec
        self.options = options if options is not None else self.options_class()
        self.reducer = reducer or CrossRankReducer()

    def setup(self, stats: TrainingStats) -> None:
        """Receive training-set counts before training (called once by the run; methods that need
        counts override it and keep them as buffers so checkpoints carry them)."""
        self.training_stats = stats

    def predict_logits(self, outputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The logits used for predictions: the model's, unless the method replaces the
        classifier (e.g. DisEnt predicts from its own head on [z_i; z_b])."""
        return outputs["logits"]

    def forward(self, inputs: ObjectiveInputs) -> ObjectiveOutput:  # pragma: no cover - abstract
        raise TypeError(f"{type(self).__name__} must implement forward")

    def global_mean(self, per_sample_loss: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The ERM term scaled for DDP averaging, and the global mean's value.

        ``W · Σ_local ℓ_i / N_global``: after DDP divides the summed gradients by W, the gradient
        is that of the mean over the global batch. The value (a float) is the same on every rank.
        """
        local = torch.stack([per_sample_loss.detach().sum(), per_sample_loss.new_tensor(float(per_sample_loss.numel()))])
        total, n_global = self.reducer.sum(local).tolist()
        n_global = max(n_global, 1.0)
        return per_sample_loss.sum() * (self.reducer.world_size / n_global), total / n_global


# ------------------------------------------------------------------------------------- registry
OBJECTIVES: Registry[type[Objective]] = Registry("objective")
"""The registered objectives by name (a read-only mapping; :func:`register_objective` adds to it)."""


def _set_name(name: str, cls: type[Objective]) -> None:
    cls.name = name


def register_objective(name: str) -> Callable[[type[Objective]], type[Objective]]:
    """Class decorator: register an objective under ``name`` (duplicates rejected)."""
    return OBJECTIVES.decorator(name, on_register=_set_name)


def available_objectives() -> list[str]:
    """The registered objective names, sorted (every method module of :mod:`llmfair.objectives` is
    imported, so registered, when that package is)."""
    return OBJECTIVES.names()


def build_objective(
    name: str,
    group_spec: GroupSpec,
    options: Mapping[str, Any] | Any | None = None,
    *,
    source: str = "objective options",
) -> Objective:
    """Instantiate a registered objective; unknown names and unknown option keys are named."""
    from llmfair.options import dataclass_from_mapping

    cls = OBJECTIVES.lookup(name)
    if options is None or isinstance(options, Mapping):
        options = dataclass_from_mapping(cls.options_class, dict(options or {}), source=source)
    elif not dataclasses.is_dataclass(options):
        raise ConfigError(f"{source}: options for {name!r} must be a mapping or {cls.options_class.__name__}")
    return cls(group_spec, options)
