"""PG-DRO: group DRO with probabilistic group memberships (Ghosal & Li, AAAI 2023).

Ghosal & Li, "Distributionally Robust Optimization with Probabilistic Group", AAAI 2023; code
``deeplearning-wisc/PG-DRO`` ``PG_DRO/robust_training/loss.py`` ``LossComputer.compute_group_avg``
(METHODS.md §2.6). Each training example i has a membership vector P_i ∈ Δ^A over the attribute
values (e.g. p(female | x), p(male | x) from a pretrained gender model). Per step:

- soft count n_g^B = Σ_{i∈B} M_ig and group loss ℓ̄_g = Σ_i M_ig ℓ_i / n_g^B (0 when n_g^B = 0,
  the reference's guard ``count + (count == 0)``);
- then the exponentiated update of :mod:`llmfair.objectives.gdro`: q_g ← q_g · exp(η (ℓ̄_g + C/√n_g)),
  q ← q / Σ q, and L = Σ_g q_g ℓ̄_g. The adjustment applies when C > 0; n_g is the training-set
  *soft* count Σ_i M_ig [I: the reference takes ``group_counts()`` of its dataset; METHODS.md §2.6].

Groups (option ``groups``): ``gender`` — M_i = P_i (A DRO groups); ``class_gender`` — the
reference's construction (``generate_pseudo_labels.py``): p(a | x) is placed on the A groups of the
sample's own (majority) class, the other groups get 0 (K·A DRO groups, class-major).

How the memberships arrive: :class:`~llmfair.objectives.ObjectiveInputs` carries no group
probabilities, so the run hands the whole training table once, before training, with
:meth:`PGDRO.set_group_probabilities` ``(probs (N, A), classes (N,) optional)``; each batch looks its
rows up by ``ObjectiveInputs.sample_index`` (the dataset index, which the batch must carry). The
table and the soft counts are buffers, so checkpoints carry them. With one-hot memberships PG-DRO is
exactly group DRO.

Defaults: η = 0.01; C = 0 (the reference's default; its README runs use C ∈ {0, 1, 2}); γ = 0.1 for
the logging EMA. Data-parallel behaviour as in group DRO (sums and soft counts all-reduced).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from llmfair.errors import ConfigError, DataError
from llmfair.objectives._dro import ExponentiatedGroupWeights, GroupDROOptions
from llmfair.objectives._state import adopt_buffer_shapes
from llmfair.objectives.base import (
    CrossRankReducer,
    GroupSpec,
    ObjectiveInputs,
    ObjectiveOutput,
    TrainingStats,
    register_objective,
)

logger = logging.getLogger(__name__)

PROB_TOLERANCE = 1e-4
"""Largest allowed |Σ_a P_ia − 1| of a membership row."""


@dataclass
class PGDROOptions(GroupDROOptions):
    """Options of PG-DRO (METHODS.md §2.6)."""

    adjustment: float = field(
        default=0.0, metadata={"help": "C: ℓ̃_g = ℓ̄_g + C/√n_g (soft training counts); 0 disables"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.adjustment >= 0:
            raise ConfigError(f"pgdro option adjustment must be >= 0, got {self.adjustment}")


@register_objective("pgdro")
class PGDRO(ExponentiatedGroupWeights):
    """Group DRO over soft group memberships looked up by ``sample_index`` (see the module docstring)."""

    options_class = PGDROOptions

    def __init__(self, group_spec: GroupSpec, options: PGDROOptions | None = None,
                 reducer: CrossRankReducer | None = None) -> None:
        super().__init__(group_spec, options, reducer)
        self.register_buffer("group_probs", torch.zeros(0, 0, dtype=torch.float64))
        self.register_buffer("train_classes", torch.zeros(0, dtype=torch.long))
        self.attribute_names: tuple[str, ...] = ()
        # memberships come from sample_index, which the trainer's accumulation pre-pass does not pass
        self.depends_only_on_per_sample_loss = False

    @property
    def adjustment_value(self) -> float:  # type: ignore[override]
        return float(self.options.adjustment)

    @property
    def num_attributes(self) -> int:
        """A, the columns of the membership table (0 before set_group_probabilities)."""
        return int(self.group_probs.shape[1]) if self.group_probs.ndim == 2 else 0

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        adopt_buffer_shapes(self, state_dict, prefix, ("group_probs", "train_classes"))
        key = prefix + "group_probs"
        if key in state_dict and state_dict[key].ndim == 2 and state_dict[key].shape[1]:
            if len(self.attribute_names) != int(state_dict[key].shape[1]):  # keep names given before loading
                self._set_attribute_names(None, int(state_dict[key].shape[1]))
            if self.options.groups == "class_gender" and prefix + "adv_probs" in state_dict:
                self.num_classes = state_dict[prefix + "adv_probs"].numel() // int(state_dict[key].shape[1])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _set_attribute_names(self, names: Sequence[str] | None, count: int) -> None:
        if names is not None:
            if len(names) != count:
                raise DataError(f"pgdro: {len(names)} group names for {count} probability columns")
            self.attribute_names = tuple(str(n) for n in names)
        elif len(self.units.names) == count:
            self.attribute_names = self.units.names
        else:
            self.attribute_names = tuple(f"group{j}" for j in range(count))

    def group_names(self) -> list[str]:
        """Attribute names, or ``c<k>/<name>`` for class × group DRO."""
        if self.options.groups == "gender":
            return list(self.attribute_names)
        return [f"c{c}/{a}" for c in range(self.num_classes or 0) for a in self.attribute_names]

    def set_group_probabilities(self, probs: Any, classes: Any = None, names: Sequence[str] | None = None) -> None:
        """Hand the training set's group memberships before training.

        Args:
            probs: (N, A) membership probabilities, row i for dataset index i (``sample_index``);
                each row lies in the simplex (non-negative, sums to 1 within 1e-4).
            classes: (N,) majority class per row; needed for the soft training counts of
                ``class_gender`` groups when the adjustment is on (in training the batch labels
                give each sample's class).
            names: A names for logging (default: the GroupSpec's gender values when there are A of
                them, else ``group<j>``).

        Raises:
            DataError: naming the first offending row, or a shape that does not fit.
            ConfigError: ``class_gender`` groups with an adjustment but no ``classes``.
        """
        p = torch.as_tensor(np.asarray(probs, dtype=np.float64))
        if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
            raise DataError(f"pgdro: group probabilities must be (N, A) with N, A >= 1; got shape {tuple(p.shape)}")
        bad = ~torch.isfinite(p).all(1) | (p < 0).any(1) | ((p.sum(1) - 1).abs() > PROB_TOLERANCE)
        if bool(bad.any()):
            i = int(torch.nonzero(bad)[0])
            raise DataError(f"pgdro: group probabilities of row {i} are not a distribution: {p[i].tolist()} "
                            f"(need finite, >= 0, summing to 1); {int(bad.sum())} bad row(s)")
        c = torch.zeros(0, dtype=torch.long)
        if classes is not None:
            c = torch.as_tensor(np.asarray(classes), dtype=torch.long)
            if c.shape != (p.shape[0],) or bool((c < 0).any()):
                raise DataError(f"pgdro: classes must be ({p.shape[0]},) non-negative class indices, one per "
                                f"probability row; got shape {tuple(c.shape)}")
        elif self.options.groups == "class_gender" and self.adjustment_value > 0:
            raise ConfigError("pgdro with groups='class_gender' and an adjustment needs the training classes for the "
                              "soft counts: set_group_probabilities(probs, classes=...)")
        stats = getattr(self, "training_stats", None)
        if stats is not None and stats.num_examples != p.shape[0]:
            raise DataError(f"pgdro: the membership table has {p.shape[0]} rows, the training set {stats.num_examples}")
        self._set_attribute_names(names, int(p.shape[1]))
        device = self.adv_probs.device
        self.group_probs = p.to(device)
        self.train_classes = c.to(device)
        self._rebuild()
        logger.info("pgdro: memberships for %d examples over %d groups", p.shape[0], p.shape[1])

    def _rebuild(self) -> None:
        """Size q and compute the soft training counts from the table, the classes and K."""
        a = self.num_attributes
        p = self.group_probs.cpu()
        if self.options.groups == "gender":
            self.num_classes = None
            self._allocate(a)
            self.setup_counts(p.sum(0).numpy())
            return
        stats = getattr(self, "training_stats", None)
        c = self.train_classes.cpu()
        candidates = [int(stats.num_classes) if stats is not None else 0, int(c.max()) + 1 if c.numel() else 0]
        if max(candidates) == 0:  # K arrives with setup() or the first batch
            self.num_classes = None
            self.adv_probs = self.adv_probs.new_zeros(0)
            return
        self.num_classes = max(candidates)
        self._allocate(self.num_classes * a)
        if c.numel():
            counts = torch.zeros(self.num_classes, a, dtype=torch.float64).index_add(0, c, p).reshape(-1)
            self.setup_counts(counts.numpy())

    def setup(self, stats: TrainingStats) -> None:
        """Keep K (class × group DRO) and check that the membership table covers the training set."""
        super().setup(stats)
        if self.num_attributes:
            if self.group_probs.shape[0] != stats.num_examples:
                raise DataError(f"pgdro: the membership table has {self.group_probs.shape[0]} rows, the training "
                                f"set {stats.num_examples} examples")
            self._rebuild()

    def memberships(self, inputs: ObjectiveInputs) -> torch.Tensor:
        """(B, n) soft membership of each sample in each DRO group."""
        if not self.num_attributes:
            raise ConfigError("pgdro needs group probabilities: call set_group_probabilities(probs (N, A)) "
                              "before training")
        if inputs.sample_index is None:
            raise DataError("pgdro needs the batch's dataset indices (sample_index) to look up group probabilities")
        index = inputs.sample_index.to(self.group_probs.device).long()
        n_rows = self.group_probs.shape[0]
        if index.numel() and bool(((index < 0) | (index >= n_rows)).any()):
            bad = sorted(set(index[(index < 0) | (index >= n_rows)].tolist()))[:8]
            raise DataError(f"pgdro: sample_index {bad} outside the membership table of {n_rows} rows")
        p = self.group_probs[index]
        if self.options.groups == "gender":
            return p
        if self.num_classes is None:
            k = self.infer_num_classes(inputs)
            if k is None:
                raise ConfigError("pgdro with groups='class_gender' needs the number of classes: call setup() first")
            self.num_classes = k
            self._allocate(k * self.num_attributes)
        c = self.class_of(inputs).to(p.device)
        a = self.num_attributes
        columns = c[:, None] * a + torch.arange(a, device=p.device)
        return p.new_zeros(len(p), self.num_classes * a).scatter_(1, columns, p)

    def forward(self, inputs: ObjectiveInputs) -> ObjectiveOutput:
        loss = inputs.per_sample_loss
        m = self.memberships(inputs).to(device=loss.device, dtype=loss.dtype)
        local_sum = m.transpose(0, 1) @ loss
        local_count = m.sum(0)
        return self.robust_loss(loss, local_sum, local_count)
