"""Objective state that the training set sizes, shared by the methods (private).

- :class:`SizedBySetup`: the one ``setup()`` of objectives that build modules or buffers from the
  training set (LfF's per-sample EMA and biased model, DisEnt's encoder and classifiers, the
  two-sided classifier): built once, a second ``setup()`` with the same sizes changes nothing,
  other sizes raise; training, predicting or loading a checkpoint before ``setup()`` raise a
  ConfigError that says what to call.
- :func:`adopt_buffer_shapes`: resize buffers that ``setup`` sizes to a checkpoint's shapes, so a
  fresh objective can load a state without having seen the training statistics (DRO, RW, PGDRO).
- :func:`require_batch_fields`: a DataError naming the first missing :class:`ObjectiveInputs` field.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping, Sequence

import torch

from llmfair.errors import ConfigError, DataError
from llmfair.objectives.base import CrossRankReducer, GroupSpec, Objective, ObjectiveInputs, TrainingStats


def adopt_buffer_shapes(module: torch.nn.Module, state_dict: Mapping[str, Any], prefix: str, names: Sequence[str]) -> None:
    """Resize buffers that are sized by ``setup`` (or lazily) to the shapes in a checkpoint, so a
    fresh objective can load a state without having seen the training statistics."""
    for name in names:
        key = prefix + name
        current = getattr(module, name)
        if key in state_dict and current is not None and current.shape != state_dict[key].shape:
            setattr(module, name, torch.empty_like(state_dict[key], dtype=current.dtype, device=current.device))


def require_batch_fields(inputs: ObjectiveInputs, method: str, names: Sequence[str]) -> None:
    """DataError naming the first missing ObjectiveInputs field among ``names``."""
    for name in names:
        if getattr(inputs, name) is None:
            hint = {"sample_index": "the training dataset must return each row's index as 'sample_index'",
                    "labels": "the batch must carry 'labels'",
                    "features": "the model must return 'features'"}.get(name, "")
            raise DataError(f"{method} needs ObjectiveInputs.{name}: {hint}")


class SizedBySetup(Objective):
    """Base class of objectives whose modules or buffers :meth:`setup` builds from the training set.

    Subclasses implement :meth:`build` and set two class attributes:

    - ``setup_builds``: what setup builds, for error messages ("the per-sample EMA and the biased
      model are built there");
    - ``setup_state_prefixes``: the ``state_dict`` key prefixes of what it builds (loading such keys
      before setup raises a ConfigError instead of torch's "unexpected key").

    :meth:`setup_sizes` names the training-set sizes the built state depends on (N and K by
    default); a second :meth:`setup` with the same sizes is a no-op (the state, optimiser references
    included, is kept), other sizes raise ConfigError. ``num_classes`` is K once set up.
    """

    setup_builds: ClassVar[str] = "its state is built there"
    setup_state_prefixes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, group_spec: GroupSpec, options: Any = None, reducer: CrossRankReducer | None = None) -> None:
        super().__init__(group_spec, options, reducer)
        self.num_classes: int | None = None
        self._setup_sizes: dict[str, int] | None = None
        # follows .to(device), so that modules built in setup() land where the objective was moved
        self.register_buffer("_device_anchor", torch.empty(0), persistent=False)

    def setup_sizes(self, stats: TrainingStats) -> dict[str, int]:
        """The training-set sizes the built state depends on (``{"examples": N, "classes": K}``)."""
        return {"examples": int(stats.num_examples), "classes": int(stats.num_classes)}

    def build(self, stats: TrainingStats, device: torch.device) -> None:  # pragma: no cover - abstract
        """Build the state sized by ``stats`` on ``device`` (called once, by :meth:`setup`)."""
        raise TypeError(f"{type(self).__name__} must implement build")

    @property
    def is_set_up(self) -> bool:
        """Whether :meth:`setup` has built the state."""
        return self._setup_sizes is not None

    def setup(self, stats: TrainingStats) -> None:
        """Build the state sized by the training set (see the class docstring).

        Raises:
            ConfigError: called again with other sizes.
        """
        super().setup(stats)
        sizes = self.setup_sizes(stats)
        if self._setup_sizes is not None:
            if sizes != self._setup_sizes:
                before = " and ".join(f"{v} {k}" for k, v in self._setup_sizes.items())
                after = " and ".join(str(v) for v in sizes.values())
                raise ConfigError(f"{self.name} was set up for {before}; setup() again with {after}")
            return
        self.num_classes = int(stats.num_classes)
        self.build(stats, self._device_anchor.device)
        self._setup_sizes = sizes

    def require_setup(self) -> None:
        """ConfigError unless :meth:`setup` has run."""
        if not self.is_set_up:
            raise ConfigError(f"{self.name}: call setup(TrainingStats) before training or predicting "
                              f"({self.setup_builds})")

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """As ``nn.Module.load_state_dict``; a clear error when :meth:`setup` has not built the state."""
        if not self.is_set_up and any(k.startswith(self.setup_state_prefixes) for k in state_dict):
            raise ConfigError(f"{self.name}: call setup(TrainingStats) before loading its state ({self.setup_builds})")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
