"""Batched forms of the objectives for :mod:`llmfair.ssl.batched_head` (private).

One *kernel* computes, for a contiguous range of a chunk's heads at once, what the registered
objective computes for one head: each head's loss value and gradient (those of
``objective(ObjectiveInputs(...)).loss``), the update of the objective's state (DRO's q, MinMaxGAP's
running means, LfF's and DisEnt's per-sample EMAs, ...) and — in the last epoch — the figures it
logs. Heads are independent: a kernel's tensors carry the head on their first axis and no
reduction crosses it.

- :class:`PerSampleKernel` (``erm``, ``rw``, ``gdro``/``gadro``/``pgdro``, ``gr``, ``minmaxgap``):
  objectives that see the batch only through the per-sample losses ℓ. The kernel computes the
  value and ∂L/∂ℓ_i in closed form, without autograd, and the step back-propagates Σ_i w_i ℓ_i.
- ``lff``, ``adv`` / ``madv``, ``disent``: their auxiliary models (LfF's biased model, the
  adversaries, DisEnt's encoder and classifiers) are stacked parameters trained by autograd;
  :class:`StackedLinearHead` and :func:`stacked_linear` give their products backwards in fast
  memory layouts, and :class:`_SharedHidden` computes MADV's adversaries once for both of its terms.

The kernels re-state the method code of :mod:`llmfair.objectives` in batched form; they read every
constant (cell weights, q's start, the adjustments, group maps) from the objective instance *after*
its ``setup``, so they never re-derive what the method module computes, and write the state back
with :meth:`Kernel.write_back`, so the returned objective holds what one-at-a-time training would
leave. ``tests/test_batched_head.py`` runs every batched method both ways — the same Adam steps in
float64 (losses, figures, weights and state to 1e-9) and whole trainings in float32: a change to a
method that its kernel does not follow fails there.

The table :func:`kernel_for` keys on the objective's *exact* class, so a subclass or a new method
never runs through a kernel written for another; every method without one trains one at a time.
Which methods batch and why the others do not: :mod:`llmfair.ssl.batched_head`.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Any, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from llmfair.objectives._adversary import gradient_reversal
from llmfair.objectives._bias_model import WEIGHT_EPS
from llmfair.objectives.adv import Adversarial, MultiAdversarial
from llmfair.objectives.base import Objective
from llmfair.objectives.disent import DisEnt
from llmfair.objectives.erm import ERM
from llmfair.objectives.gdro import GroupAdjustedDRO, GroupDRO
from llmfair.objectives.gr import GapRegularisation
from llmfair.objectives.lff import LfF
from llmfair.objectives.minmaxgap import MinMaxGap
from llmfair.objectives.pgdro import PGDRO
from llmfair.objectives.rw import Reweighting


# ------------------------------------------------------------------------------------- plumbing
@dataclass
class Batch:
    """One step's tensors for a range of heads (the head on the first axis of each).

    Attributes:
        per_sample_loss: (h, b) the head's base loss ℓ (differentiable).
        labels: (h, b, K) soft labels; ``classes`` (h, b) their argmax c(x).
        group_ids: (h, b); ``sample_index`` (h, b) indices into each head's training rows.
        inputs: (h, b, ...) the frozen input features (LfF's biased model reads them).
        features: (h, b, P) the projector output (only for kernels with ``needs_features``).
    """

    per_sample_loss: torch.Tensor
    labels: torch.Tensor
    classes: torch.Tensor
    group_ids: torch.Tensor
    sample_index: torch.Tensor
    inputs: torch.Tensor
    features: torch.Tensor | None


class FigureSums:
    """The last epoch's figures of h heads: per name a (h,) float64 sum over the batches and
    whether a head logged it at all. ``result`` divides by the number of batches, like
    ``train_head`` (a figure absent from some batches still counts them)."""

    def __init__(self, h: int) -> None:
        self.h = h
        self.sums: dict[str, torch.Tensor] = {}
        self.seen: dict[str, torch.Tensor] = {}

    def add(self, name: str, values: torch.Tensor, present: torch.Tensor | None = None) -> None:
        values = values.detach().double().cpu()
        if present is None:
            present = torch.ones(self.h, dtype=torch.bool)
        else:
            present = present.detach().cpu()
            values = torch.where(present, values, torch.zeros_like(values))
        if name not in self.sums:
            self.sums[name] = torch.zeros(self.h, dtype=torch.float64)
            self.seen[name] = torch.zeros(self.h, dtype=torch.bool)
        self.sums[name] += values
        self.seen[name] |= present

    def result(self, i: int, batches: int) -> dict[str, float]:
        return {name: float(total[i]) / batches for name, total in self.sums.items() if bool(self.seen[name][i])}


def _stack(values: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    return torch.stack([v.detach().to(device) for v in values])


def _scatter_sum(values: torch.Tensor, index: torch.Tensor, slots: int) -> torch.Tensor:
    """(h, slots) sums of ``values`` (h, b) over ``index`` (h, b) (``index_add`` per head)."""
    return values.new_zeros(values.shape[0], slots).scatter_add(1, index, values)


class Kernel:
    """The batched form of one objective over heads ``start:stop`` of a chunk (module docstring).

    Subclasses set ``objective_classes`` (the exact classes they implement) and implement
    :meth:`step`; those with state implement :meth:`write_back`.
    """

    objective_classes: ClassVar[tuple[type[Objective], ...]] = ()
    needs_features: ClassVar[bool] = False
    """Whether the kernel reads the projector output (the head then computes it, dense)."""
    predicts_from_model: ClassVar[bool] = True
    """Whether predictions are the model's own logits (``Objective.predict_logits``'s default);
    otherwise :meth:`dev_logits` computes them from the projector output."""

    def __init__(self, objectives: Sequence[Objective], start: int, device: torch.device,
                 rng_states: Sequence[torch.Tensor] = ()) -> None:
        self.objectives = list(objectives)
        self.start, self.stop = start, start + len(self.objectives)
        self.h = len(self.objectives)
        self.device = device
        self.rng_states = list(rng_states)
        self.sums = FigureSums(self.h)

    @classmethod
    def group_key(cls, objective: Objective) -> Any:
        """Heads whose keys are equal share one kernel instance (same options and shapes)."""
        return repr(objective.options)

    @classmethod
    def materialise(cls, objective: Objective, x: torch.Tensor, projector_dim: int) -> None:
        """Build lazily-sized modules exactly as the first training step of ``train_head`` would
        (same order, so the same draws of the global RNG)."""

    def parameters(self) -> list[nn.Parameter]:
        """The kernel's trainable stacked parameters (head axis first)."""
        return []

    def stacked_heads(self) -> list["StackedLinearHead"]:
        """The kernel's own :class:`StackedLinearHead` modules (LfF's biased model), whose weight
        gradients the trainer's step manages (:meth:`StackedLinearHead.begin_step`)."""
        return []

    def step(self, batch: Batch, record: bool) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        """(value, loss): each head's objective value (h,) and a differentiable (h,) tensor whose
        gradient is the objective's (the loss itself, or a surrogate with the same gradient)."""
        raise TypeError(f"{type(self).__name__} must implement step")

    def write_back(self, i: int) -> None:
        """Copy head ``i``'s state (parameters and buffers) into its objective."""

    def figures(self, i: int, batches: int) -> dict[str, float]:
        return self.sums.result(i, batches)

    def dev_logits(self, i: int, projected: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """(n, K) predicting logits of head ``i`` from its projector output (kernels whose
        objective overrides ``predict_logits``)."""
        raise TypeError(f"{type(self).__name__} predicts from the model's logits")


class PerSampleKernel(Kernel):
    """Objectives that see the batch only through the per-sample losses ℓ (and the group ids and
    classes): the loss is L(ℓ), so its gradient is Σ_i (∂L/∂ℓ_i) ∇ℓ_i. :meth:`weights` computes
    the value of L and the weights ∂L/∂ℓ_i in closed form, without autograd (the objective's own
    chain rule, term by term, in the same arithmetic); the step back-propagates Σ_i w_i ℓ_i. The
    float64 test checks value, gradient and state against the objective itself."""

    def step(self, batch: Batch, record: bool) -> tuple[torch.Tensor, torch.Tensor]:
        loss = batch.per_sample_loss
        with torch.no_grad():
            value, weights = self.weights(batch, loss.detach(), record)
        return value, (weights * loss).sum(1)

    def weights(self, batch: Batch, loss: torch.Tensor, record: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(value (h,), ∂L/∂ℓ (h, b)) from the detached per-sample losses ``loss``."""
        raise TypeError(f"{type(self).__name__} must implement weights")  # pragma: no cover


def _erm(loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:meth:`Objective.global_mean` per head: the loss ``Σ ℓ · (1 / b)`` and its float64 value."""
    b = loss.shape[1]
    return loss.sum(1) * (1.0 / b), loss.detach().sum(1).double() / b


def _gather_cells(table: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """(h, b) entries of a per-head (h, ...) table at flat cell indices (h, b)."""
    return table.reshape(table.shape[0], -1).gather(1, cells)


class ERMKernel(PerSampleKernel):
    """``erm``: mean ℓ; ∂L/∂ℓ_i = 1/b."""

    objective_classes = (ERM,)

    def weights(self, batch: Batch, loss: torch.Tensor, record: bool) -> tuple[torch.Tensor, torch.Tensor]:
        value, figure = _erm(loss)
        if record:
            self.sums.add("erm_loss", figure)
        return value, torch.full_like(loss, 1.0 / loss.shape[1])


class RWKernel(PerSampleKernel):
    """``rw``: Σ ω ℓ / Σ ω (or / b) with ω = cell_weights[c(i), unit(g_i)] (IDI Eq. 1);
    ∂L/∂ℓ_i = ω_i / denominator."""

    objective_classes = (Reweighting,)

    @classmethod
    def group_key(cls, objective: Objective) -> Any:
        return (repr(objective.options), tuple(objective.cell_weights.shape), objective.unit_of_group.numel())

    def __init__(self, objectives: Sequence[Objective], start: int, device: torch.device,
                 rng_states: Sequence[torch.Tensor] = ()) -> None:
        super().__init__(objectives, start, device, rng_states)
        self.cell_weights = _stack([o.cell_weights for o in objectives], device)  # (h, K, U) float64
        self.unit_of_group = _stack([o.unit_of_group for o in objectives], device)  # (h, G)
        self.by_batch = objectives[0].options.normalise == "batch"

    def weights(self, batch: Batch, loss: torch.Tensor, record: bool) -> tuple[torch.Tensor, torch.Tensor]:
        h, b = loss.shape
        units = self.unit_of_group.gather(1, batch.group_ids)
        omega = _gather_cells(self.cell_weights, batch.classes * self.cell_weights.shape[2] + units)  # float64
        omega32 = omega.to(loss.dtype)
        weighted = (omega32 * loss).sum(1)
        w_total = omega.sum(1)
        denom = torch.full_like(w_total, float(b)) if self.by_batch else w_total
        ok = denom > 0
        safe = torch.where(ok, denom, torch.ones_like(denom))
        scale = torch.where(ok, 1.0 / safe, torch.zeros_like(denom)).to(loss.dtype)
        value = torch.where(ok, weighted * scale, loss.sum(1) * 0.0)
        if record:
            self.sums.add("erm_loss", loss.sum(1).double() / b)
            self.sums.add("mean_weight", w_total / b)
            self.sums.add("rw_loss", weighted.double() / safe, ok)
        return value, omega32 * scale.unsqueeze(1)


class DROKernel(PerSampleKernel):
    """``gdro``, ``gadro`` (one-hot groups) and ``pgdro`` (soft memberships): the online
    exponentiated update of q and the loss Σ_g q_g ℓ̄_g (:class:`ExponentiatedGroupWeights`);
    ∂L/∂ℓ_i = Σ_g M_ig q_g / n_g^B."""

    objective_classes = (GroupDRO, GroupAdjustedDRO, PGDRO)

    @classmethod
    def group_key(cls, objective: Objective) -> Any:
        soft = isinstance(objective, PGDRO)
        return (soft, objective.options.groups, objective.num_dro_groups, objective.units.num_units,
                objective.num_attributes if soft else 0, objective.num_classes, objective.unit_of_group.numel())

    def __init__(self, objectives: Sequence[Objective], start: int, device: torch.device,
                 rng_states: Sequence[torch.Tensor] = ()) -> None:
        super().__init__(objectives, start, device, rng_states)
        first = objectives[0]
        self.soft = isinstance(first, PGDRO)
        self.by_class = first.options.groups == "class_gender"
        self.n = first.num_dro_groups
        self.units = first.units.num_units
        self.num_classes = first.num_classes
        self.q = _stack([o.adv_probs for o in objectives], device)  # (h, n) float64
        self.exp_avg_loss = _stack([o.exp_avg_loss for o in objectives], device)
        self.exp_avg_initialized = _stack([o.exp_avg_initialized for o in objectives], device)
        self.adjustment = _stack([o.adjustment() for o in objectives], device)  # constant C/√n_g
        self.step_size = torch.tensor([float(o.options.step_size) for o in objectives], dtype=torch.float64,
                                      device=device).unsqueeze(1)
        self.gamma = torch.tensor([float(o.options.gamma) for o in objectives], dtype=torch.float64,
                                  device=device).unsqueeze(1)
        if self.soft:
            self.group_probs = _stack([o.group_probs for o in objectives], device)  # (h, N, A) float64
        else:
            self.unit_of_group = _stack([o.unit_of_group for o in objectives], device)
        self.names = [o.group_names() for o in objectives]

    def _memberships(self, batch: Batch, dtype: torch.dtype) -> torch.Tensor:
        """(h, b, n) soft membership of each sample in each DRO group (PGDRO.memberships)."""
        h, b = batch.sample_index.shape
        a = self.group_probs.shape[2]
        p = self.group_probs.gather(1, batch.sample_index.unsqueeze(2).expand(h, b, a))
        if self.by_class:
            columns = batch.classes.unsqueeze(2) * a + torch.arange(a, device=p.device)
            p = p.new_zeros(h, b, self.n).scatter_(2, columns, p)
        return p.to(dtype)

    def weights(self, batch: Batch, loss: torch.Tensor, record: bool) -> tuple[torch.Tensor, torch.Tensor]:
        h, b = loss.shape
        if self.soft:
            m = self._memberships(batch, loss.dtype)
            local_sum = torch.bmm(m.transpose(1, 2), loss.unsqueeze(2)).squeeze(2)
            local_count = m.sum(1)
        else:
            ids = self.unit_of_group.gather(1, batch.group_ids)
            if self.by_class:
                ids = batch.classes * self.units + ids
            local_sum = _scatter_sum(loss, ids, self.n)
            local_count = _scatter_sum(torch.ones_like(loss), ids, self.n)
        group_sum, group_count = local_sum.double(), local_count.double()
        denom = group_count + (group_count == 0).double()
        group_mean = group_sum / denom
        self.q = torch.softmax(torch.log(self.q) + self.step_size * (group_mean + self.adjustment), dim=1)
        present = group_count > 0
        keep = (1 - self.gamma * present.double()) * self.exp_avg_initialized.double()
        self.exp_avg_loss = self.exp_avg_loss * keep + group_mean * (1 - keep)
        self.exp_avg_initialized = self.exp_avg_initialized | present
        per_group = (1.0 / denom.to(loss.dtype)) * self.q.to(loss.dtype)  # ∂L/∂(group sum), as autograd orders it
        value = (self.q.to(loss.dtype) * local_sum / denom.to(loss.dtype)).sum(1)
        if self.soft:
            grad = torch.bmm(m, per_group.unsqueeze(2)).squeeze(2)
        else:
            grad = per_group.gather(1, ids)
        if record:
            self.sums.add("robust_loss", (self.q * group_mean).sum(1))
            self.sums.add("erm_loss", loss.sum(1).double() / b)
            for j in range(self.n):
                self.sums.add(f"q/{j}", self.q[:, j])
                self.sums.add(f"group_loss/{j}", group_mean[:, j], group_count[:, j] > 0)
        return value, grad

    def figures(self, i: int, batches: int) -> dict[str, float]:
        raw = self.sums.result(i, batches)
        out = {k: raw[k] for k in ("robust_loss", "erm_loss") if k in raw}
        for j, name in enumerate(self.names[i]):
            out[f"q/{name}"] = raw[f"q/{j}"]
            if f"group_loss/{j}" in raw:
                out[f"group_loss/{name}"] = raw[f"group_loss/{j}"]
        return out

    def write_back(self, i: int) -> None:
        o = self.objectives[i]
        o.adv_probs = self.q[i].clone()
        o.exp_avg_loss = self.exp_avg_loss[i].clone()
        o.exp_avg_initialized = self.exp_avg_initialized[i].clone()


class GRKernel(PerSampleKernel):
    """``gr``: ERM + λ_GR · the gap between the female and male mean losses (forms abs, square,
    gdl); ∂L/∂ℓ_i = 1/b + λ_GR · coef_{cell(i)} / n_{cell(i)} for a sample of known gender."""

    objective_classes = (GapRegularisation,)

    @classmethod
    def group_key(cls, objective: Objective) -> Any:
        return (repr(objective.options), objective.gender_of_group.numel())

    def __init__(self, objectives: Sequence[Objective], start: int, device: torch.device,
                 rng_states: Sequence[torch.Tensor] = ()) -> None:
        super().__init__(objectives, start, device, rng_states)
        first = objectives[0]
        self.opts = first.options
        self.by_class = first.by_class
        self.gender_of_group = _stack([o.gender_of_group for o in objectives], device)

    def weights(self, batch: Batch, loss: torch.Tensor, record: bool) -> tuple[torch.Tensor, torch.Tensor]:
        h, b = loss.shape
        erm, erm_value = _erm(loss)
        gender = self.gender_of_group.gather(1, batch.group_ids)
        known = gender >= 0
        k = batch.labels.shape[2] if self.by_class else 1
        classes = batch.classes if self.by_class else torch.zeros_like(gender)
        cell = torch.where(known, classes * 2 + gender, torch.full_like(gender, 2 * k))  # unknown: a spare slot
        local_cell = _scatter_sum(loss, cell, 2 * k + 1)[:, :2 * k]
        local_n = _scatter_sum(torch.ones_like(loss), cell, 2 * k + 1)[:, :2 * k]
        class_sum = _scatter_sum(loss, classes, k)
        class_n = _scatter_sum(torch.ones_like(loss), classes, k)
        cell_sum, cell_n = local_cell.double().view(h, k, 2), local_n.double().view(h, k, 2)
        ref = class_sum.double() / class_n.double().clamp_min(1)
        usable = (cell_n > 0).all(dim=2)
        means = cell_sum / cell_n.clamp_min(1)
        diff = means[..., 0] - means[..., 1]
        if self.opts.form == "abs":
            coef, value = torch.stack([torch.sign(diff), -torch.sign(diff)], dim=2), diff.abs()
        elif self.opts.form == "square":
            coef, value = torch.stack([2 * diff, -2 * diff], dim=2), diff ** 2
        else:
            coef = torch.sign(means - ref.unsqueeze(2))
            value = (coef * means).sum(dim=2)
        coef = torch.where(usable.unsqueeze(2), coef, torch.zeros_like(coef))
        term = torch.where(usable, value, torch.zeros_like(value)).sum(1)
        lam = self.opts.lambda_gr
        per_cell = (lam * coef.to(loss.dtype)) / cell_n.clamp_min(1).to(loss.dtype)  # (h, k, 2)
        slot = torch.where(known, cell, torch.zeros_like(cell))
        grad = erm.new_full((h, b), 1.0 / b) + torch.where(known, _gather_cells(per_cell, slot), torch.zeros_like(loss))
        if record:
            self.sums.add("erm_loss", erm_value)
            self.sums.add("gr_term", term)
            if not self.by_class:
                self.sums.add("diff", -diff[:, 0], usable.any(1))
        return erm + lam * term.to(loss.dtype), grad


class MinMaxGapKernel(PerSampleKernel):
    """``minmaxgap``: ERM + λ_t · the largest (language × modality) male–female mean-loss gap;
    ∂L/∂ℓ_i = 1/b ± λ_t · direction_{cell(i)} / n_{cell(i), gender(i)} (only on the worse-off side
    with ``side: worse``)."""

    objective_classes = (MinMaxGap,)

    @classmethod
    def group_key(cls, objective: Objective) -> Any:
        return (repr(objective.options), tuple(objective.cell_names), objective.gender_of_group.numel())

    def __init__(self, objectives: Sequence[Objective], start: int, device: torch.device,
                 rng_states: Sequence[torch.Tensor] = ()) -> None:
        super().__init__(objectives, start, device, rng_states)
        first = objectives[0]
        self.opts = first.options
        self.cells = [first.cell_label(k) for k in range(len(first.cell_names))]
        self.cell_of_group = _stack([o.cell_of_group for o in objectives], device)
        self.gender_of_group = _stack([o.gender_of_group for o in objectives], device)
        self.running_mean = _stack([o.running_mean for o in objectives], device)  # (h, C, 2) float64
        self.running_seen = _stack([o.running_seen for o in objectives], device)
        self.dual_lambda = _stack([o.dual_lambda for o in objectives], device)  # (h,) float64

    def _weight(self, max_gap: torch.Tensor, erm_value: torch.Tensor) -> torch.Tensor:
        opts = self.opts
        if opts.weight == "fixed":
            lam = torch.full_like(erm_value, float(opts.lambda_init))
        elif opts.weight == "ratio":
            lam = opts.lambda_init * max_gap / (erm_value + 1e-8)
        else:
            lam = self.dual_lambda.clone()
        return lam.clamp(0.0, opts.lambda_max)

    def weights(self, batch: Batch, loss: torch.Tensor, record: bool) -> tuple[torch.Tensor, torch.Tensor]:
        opts = self.opts
        h, b = loss.shape
        c = len(self.cells)
        erm, erm_value = _erm(loss)
        gender = self.gender_of_group.gather(1, batch.group_ids)
        known = gender >= 0
        slot = torch.where(known, self.cell_of_group.gather(1, batch.group_ids) * 2 + gender,
                           torch.full_like(gender, 2 * c))
        local_sum = _scatter_sum(loss, slot, 2 * c + 1)[:, :2 * c].view(h, c, 2)
        local_n = _scatter_sum(torch.ones_like(loss), slot, 2 * c + 1)[:, :2 * c].view(h, c, 2)
        global_sum, global_n = local_sum.double(), local_n.double()
        present = global_n > 0
        batch_mean = torch.where(present, global_sum / global_n.clamp_min(1), torch.zeros_like(global_sum))
        if opts.missing == "running":
            estimate = torch.where(present, batch_mean, self.running_mean)
            usable = (present | self.running_seen).all(dim=2)
            updated = torch.where(self.running_seen,
                                  opts.momentum * self.running_mean + (1 - opts.momentum) * batch_mean, batch_mean)
            self.running_mean = torch.where(present, updated, self.running_mean)
            self.running_seen = self.running_seen | present
        else:
            estimate = batch_mean
            usable = present.all(dim=2)
        usable = usable & present.any(dim=2)
        any_usable = usable.any(1)
        diff = estimate[..., 1] - estimate[..., 0]
        gaps = diff.abs()
        masked = torch.where(usable, gaps, torch.full_like(gaps, -torch.inf))
        worst = masked.argmax(dim=1)
        if opts.reduction == "hard":
            coef = F.one_hot(worst, c).to(gaps.dtype)
            max_gap = gaps.gather(1, worst.unsqueeze(1)).squeeze(1)
        else:
            safe = torch.where(any_usable.unsqueeze(1), masked, torch.zeros_like(masked))
            coef = torch.softmax(safe / opts.temperature, dim=1)
            max_gap = opts.temperature * torch.logsumexp(safe / opts.temperature, dim=1)
        coef = torch.where(any_usable.unsqueeze(1), coef, torch.zeros_like(coef))
        max_gap = torch.where(any_usable, max_gap, torch.zeros_like(max_gap))
        direction = (coef * torch.sign(diff)).to(loss.dtype)  # (h, C)
        n32 = global_n.clamp_min(1).to(loss.dtype)
        per_gender = torch.where(present, local_sum / n32, torch.zeros_like(local_sum))
        surrogate = (direction * (per_gender[..., 1] - per_gender[..., 0])).sum(1)
        lam = self._weight(max_gap, erm_value)
        lam32 = lam.to(loss.dtype)
        # ∂/∂(per-gender mean): +λ·direction for men, −λ·direction for women (the better-off side
        # gets none with side: worse); then / n for each sample of the cell
        scaled = lam32.unsqueeze(1) * direction
        d_mean = torch.stack([-scaled, scaled], dim=2)
        if opts.side == "worse":
            male_worse = (direction > 0).unsqueeze(2)
            d_mean = torch.where(torch.cat([~male_worse, male_worse], dim=2), d_mean, torch.zeros_like(d_mean))
        d_mean = torch.where(present & any_usable.view(h, 1, 1), d_mean / n32, torch.zeros_like(d_mean))
        grad = torch.full_like(loss, 1.0 / b) + torch.where(
            known, _gather_cells(d_mean, torch.where(known, slot, torch.zeros_like(slot))), torch.zeros_like(loss))
        if opts.weight == "dual":
            stepped = torch.clamp(self.dual_lambda + opts.dual_lr * (max_gap - opts.dual_target), 0.0, opts.lambda_max)
            self.dual_lambda = torch.where(any_usable, stepped, self.dual_lambda)
        if record:
            self.sums.add("erm_loss", erm_value)
            self.sums.add("usable_cells", usable.sum(1).double())
            for k, name in enumerate(self.cells):
                self.sums.add(f"gap/{name}", gaps[:, k], usable[:, k])
                self.sums.add(f"diff/{name}", diff[:, k], usable[:, k])
            self.sums.add("max_gap", max_gap, any_usable)
            self.sums.add("lambda", lam)
            for k, name in enumerate(self.cells):
                self.sums.add(f"worst/{name}", (worst == k).double(), any_usable)
        return torch.where(any_usable, erm + lam32 * surrogate, erm), grad

    def write_back(self, i: int) -> None:
        o = self.objectives[i]
        o.running_mean.copy_(self.running_mean[i])
        o.running_seen.copy_(self.running_seen[i])
        o.dual_lambda.copy_(self.dual_lambda[i])


# ------------------------------------------------------------------------------------- LfF
def _soft_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(h, b) soft cross-entropy −Σ_c y_c log softmax(z)_c (no class weights)."""
    return -(labels.to(logits.dtype) * F.log_softmax(logits, dim=-1)).sum(-1)


class _StackedLinear(torch.autograd.Function):
    """``x Wᵀ + b`` for stacked (h, out, in) weights, with a backward whose weight gradient comes out
    contiguous in the weight's layout (autograd's backward of ``baddbmm(b, x, W.transpose(1, 2))``
    returns a transposed gradient and runs several times slower)."""

    @staticmethod
    def forward(ctx, x, weight, bias):  # noqa: D102
        ctx.save_for_backward(x, weight)
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        d_x = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None
        return d_x, torch.bmm(grad.transpose(1, 2), x), grad.sum(1)


def stacked_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(h, b, out) = x (h, b, in) · weight (h, out, in)ᵀ + bias (h, out), head by head."""
    return _StackedLinear.apply(x, weight, bias)


class _MergedLogits(torch.autograd.Function):
    """``x (W_o W_p)ᵀ + (W_o b_p + b_o)`` for stacked heads, with a backward that keeps every batched
    product in the memory layout the BLAS kernels are fast on (autograd's own backward of the same
    expression hands ``bmm`` a transposed (K, D) gradient, an order of magnitude slower) and writes
    the two weight gradients in place into their persistent buffers (:meth:`StackedLinearHead.begin_step`)."""

    @staticmethod
    def forward(ctx, x, weight_p, bias_p, weight_o, bias_o, sink):  # noqa: D102
        merged = torch.bmm(weight_o, weight_p)  # (h, K, D)
        offset = torch.baddbmm(bias_o.unsqueeze(2), weight_o, bias_p.unsqueeze(2)).squeeze(2)
        ctx.save_for_backward(x, weight_p, bias_p, weight_o, merged)
        ctx.sink = sink
        return torch.baddbmm(offset.unsqueeze(1), x, merged.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        x, weight_p, bias_p, weight_o, merged = ctx.saved_tensors
        grad = grad.contiguous()
        d_merged = torch.bmm(grad.transpose(1, 2), x)  # (h, K, D)
        d_offset = grad.sum(1)  # (h, K)
        weight_o_t = weight_o.transpose(1, 2).contiguous()  # (h, P, K)
        d_merged_t = d_merged.transpose(1, 2).contiguous().transpose(1, 2)
        ctx.sink.write_grad("weight_p", lambda out: torch.bmm(weight_o_t, d_merged_t, out=out))
        ctx.sink.write_grad("weight_o", lambda out: torch.baddbmm(
            d_offset.unsqueeze(2) * bias_p.unsqueeze(1), d_merged, weight_p.transpose(1, 2), out=out))
        d_bias_p = torch.bmm(weight_o_t, d_offset.unsqueeze(2)).squeeze(2)
        d_x = torch.bmm(grad, merged) if ctx.needs_input_grad[0] else None
        return d_x, None, d_bias_p, None, d_offset, None


class _ProjectedLogits(torch.autograd.Function):
    """``f = x W_pᵀ + b_p`` and ``f W_oᵀ + b_o`` for stacked heads (the projector output is
    returned too), with a backward in fast layouts writing the weight gradients in place (see
    :class:`_MergedLogits`)."""

    @staticmethod
    def forward(ctx, x, weight_p, bias_p, weight_o, bias_o, sink):  # noqa: D102
        projected = torch.baddbmm(bias_p.unsqueeze(1), x, weight_p.transpose(1, 2))
        ctx.save_for_backward(x, weight_p, weight_o, projected)
        ctx.sink = sink
        return torch.baddbmm(bias_o.unsqueeze(1), projected, weight_o.transpose(1, 2)), projected

    @staticmethod
    def backward(ctx, grad, grad_projected):  # noqa: D102
        x, weight_p, weight_o, projected = ctx.saved_tensors
        grad = grad.contiguous()
        d_projected = torch.bmm(grad, weight_o)  # (h, b, P)
        if grad_projected is not None:
            d_projected = d_projected + grad_projected
        ctx.sink.write_grad("weight_o", lambda out: torch.bmm(grad.transpose(1, 2), projected, out=out))
        ctx.sink.write_grad("weight_p", lambda out: torch.bmm(d_projected.transpose(1, 2), x, out=out))
        d_x = torch.bmm(d_projected, weight_p) if ctx.needs_input_grad[0] else None
        return d_x, None, d_projected.sum(1), None, grad.sum(1), None


class StackedLinearHead(nn.Module):
    """h copies of "layer weighting → Linear(D, P) → Linear(P, K)" as stacked weights.

    Holds the EMO-SUPERB head and LfF's biased model (:class:`LazyLayerMLP` with sizes (P, K)). No
    non-linearity sits between the two linear maps, so without the projector output the logits are
    computed as ``x (W_o W_p)ᵀ + (W_o b_p + b_o)``: a (K, D) product per head instead of a (b, P)
    one, the same function (and, through autograd, the same gradients) with K = 6 ≪ P = 256.
    """

    def __init__(self, layer_logits: torch.Tensor | None, weight_p: torch.Tensor, bias_p: torch.Tensor,
                 weight_o: torch.Tensor, bias_o: torch.Tensor, fixed_layer: int | None = None) -> None:
        super().__init__()
        self.layer_logits = None if layer_logits is None else nn.Parameter(layer_logits.detach().clone())
        self.weight_p = nn.Parameter(weight_p.detach().clone())  # (h, P, D)
        self.bias_p = nn.Parameter(bias_p.detach().clone())  # (h, P)
        self.weight_o = nn.Parameter(weight_o.detach().clone())  # (h, K, P)
        self.bias_o = nn.Parameter(bias_o.detach().clone())  # (h, K)
        self.fixed_layer = fixed_layer
        self._written: set[str] | None = None  # None: autograd's accumulate semantics

    def begin_step(self) -> None:
        """Start a training step: the next backward *overwrites* the weights' gradient buffers in
        place (no fresh (h, P, D) tensor per step: that product measured 2.9 ms per 8 heads into a
        fresh tensor and 0.49 ms into its buffer on a 2-core CPU) instead of accumulating; :meth:`end_step` drops a buffer no backward wrote."""
        self._written = set()

    def end_step(self) -> None:
        """After the step's backward: a weight that received no gradient gets ``grad = None`` (what
        ``zero_grad(set_to_none=True)`` leaves), so the optimiser skips it as it would."""
        for name in ("weight_p", "weight_o"):
            if name not in self._written:
                getattr(self, name).grad = None
        self._written = set()

    def write_grad(self, name: str, product: Any) -> None:
        """Give weight ``name`` the gradient ``product(out)`` computes: into its buffer (the first
        write of a step begun by :meth:`begin_step`), else added to it, as autograd accumulates."""
        param = getattr(self, name)
        first = self._written is not None and name not in self._written
        if param.grad is not None and param.grad.shape == param.shape and first:
            product(param.grad)
        elif param.grad is not None and param.grad.shape == param.shape:
            param.grad.add_(product(None))
        else:
            param.grad = product(None)
        if self._written is not None:
            self._written.add(name)

    def combine(self, x: torch.Tensor, layer_logits: torch.Tensor | None = None) -> torch.Tensor:
        """(h, b, D) inputs of the projector from (h, b, D) or per-layer (h, b, L, D) features."""
        if x.ndim == 3:
            return x
        if self.layer_logits is None:
            return x[:, :, self.fixed_layer]
        weights = torch.softmax(self.layer_logits if layer_logits is None else layer_logits, dim=1)
        return torch.einsum("hbld,hl->hbd", x, weights.to(x.dtype))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(h, b, K) logits through the merged (K, D) maps."""
        return _MergedLogits.apply(self.combine(x), self.weight_p, self.bias_p, self.weight_o, self.bias_o, self)

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h, b, K) logits and the (h, b, P) projector output."""
        return _ProjectedLogits.apply(self.combine(x), self.weight_p, self.bias_p, self.weight_o, self.bias_o, self)

    @torch.no_grad()
    def logits_of(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """(n, K) logits of head ``i`` alone on (n, D) or (n, L, D) features (evaluation)."""
        layer_logits = None if self.layer_logits is None else self.layer_logits[i:i + 1]
        combined = self.combine(x.unsqueeze(0), layer_logits).squeeze(0)
        merged = self.weight_o[i] @ self.weight_p[i]
        return torch.addmm(self.weight_o[i] @ self.bias_p[i] + self.bias_o[i], combined, merged.T)

    @torch.no_grad()
    def projected_of(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """(n, P) projector output of head ``i`` alone (evaluation)."""
        layer_logits = None if self.layer_logits is None else self.layer_logits[i:i + 1]
        combined = self.combine(x.unsqueeze(0), layer_logits).squeeze(0)
        return torch.addmm(self.bias_p[i], combined, self.weight_p[i].T)

    def state(self, i: int) -> dict[str, torch.Tensor]:
        """Head ``i``'s weights (copies), keyed like :class:`~llmfair.ssl.head.EmoSuperbHead`'s."""
        out = {"projector.weight": self.weight_p[i], "projector.bias": self.bias_p[i],
               "output.weight": self.weight_o[i], "output.bias": self.bias_o[i]}
        if self.layer_logits is not None:
            out["layer_logits"] = self.layer_logits[i]
        return {k: v.detach().clone() for k, v in out.items()}


class StackedLossEMA:
    """:class:`~llmfair.objectives._bias_model.PerSampleLossEMA` of h heads: values (h, 2, N),
    ``seen`` and ``classes`` (h, N); the same update and class-wise normalisation."""

    def __init__(self, emas: Sequence[Any], device: torch.device) -> None:
        self.alpha = emas[0].alpha
        self.values = _stack([e.values for e in emas], device)
        self.seen = _stack([e.seen for e in emas], device)
        self.classes = _stack([e.classes for e in emas], device)

    @torch.no_grad()
    def update(self, losses: torch.Tensor, index: torch.Tensor, classes: torch.Tensor) -> None:
        """Fold (h, 2, b) detached losses at (h, b) indices into the averages (an index present
        k times is updated once with its mean loss)."""
        h, m, b = losses.shape
        n = self.values.shape[2]
        dense = self.values.new_zeros(h, m + 2, n)
        dense[:, :m].scatter_add_(2, index.unsqueeze(1).expand(h, m, b), losses.to(dense.dtype))
        dense[:, m].scatter_add_(1, index, torch.ones_like(index, dtype=dense.dtype))
        dense[:, m + 1].scatter_add_(1, index, classes.to(dense.dtype))
        count = dense[:, m]
        hit = count > 0
        mean = dense[:, :m] / count.clamp_min(1).unsqueeze(1)
        updated = self.alpha * self.values + (1 - self.alpha * self.seen.to(self.values.dtype)).unsqueeze(1) * mean
        self.values = torch.where(hit.unsqueeze(1), updated, self.values)
        self.classes = torch.where(hit, torch.round(dense[:, m + 1] / count.clamp_min(1)).long(), self.classes)
        self.seen = self.seen | hit

    def normalised(self, index: torch.Tensor, classes: torch.Tensor, num_classes: int) -> torch.Tensor:
        """(h, 2, b): the batch's EMAs divided by their class maximum over the training set."""
        h, m, n = self.values.shape
        top = self.values.new_zeros(h, m, num_classes).scatter_reduce(
            2, self.classes.unsqueeze(1).expand(h, m, n), self.values, reduce="amax", include_self=True)
        b = index.shape[1]
        top = top.gather(2, classes.unsqueeze(1).expand(h, m, b))
        return self.values.gather(2, index.unsqueeze(1).expand(h, m, b)) / top.clamp_min(torch.finfo(top.dtype).tiny)

    def write_back(self, i: int, ema: Any) -> None:
        ema.values.copy_(self.values[i])
        ema.seen.copy_(self.seen[i])
        ema.classes.copy_(self.classes[i])


class LfFKernel(Kernel):
    """``lff``: the biased models f_B as a second :class:`StackedLinearHead`, trained with GCE; the
    per-sample loss EMAs of both models as (h, 2, N) buffers; L = mean(GCE_B + W · ℓ^D)."""

    objective_classes = (LfF,)

    @classmethod
    def group_key(cls, objective: Objective) -> Any:
        return (repr(objective.options), objective.ema.num_examples, tuple(objective.aligned.shape))

    @classmethod
    def materialise(cls, objective: Objective, x: torch.Tensor, projector_dim: int) -> None:
        with torch.no_grad():
            objective.biased(x[:1])

    def __init__(self, objectives: Sequence[Objective], start: int, device: torch.device,
                 rng_states: Sequence[torch.Tensor] = ()) -> None:
        super().__init__(objectives, start, device, rng_states)
        biased = [o.biased for o in objectives]
        self.per_layer = biased[0].layer_logits.numel() > 1
        self.biased = StackedLinearHead(
            _stack([m.layer_logits for m in biased], device) if self.per_layer else None,
            _stack([m.layers[0].weight for m in biased], device), _stack([m.layers[0].bias for m in biased], device),
            _stack([m.layers[1].weight for m in biased], device), _stack([m.layers[1].bias for m in biased], device))
        first = objectives[0]
        self.q, self.num_classes = first.options.q, first.num_classes
        self.ema = StackedLossEMA([o.ema for o in objectives], device)
        self.aligned = _stack([o.aligned for o in objectives], device)  # (h, K, G)

    def parameters(self) -> list[nn.Parameter]:
        return list(self.biased.parameters())

    def stacked_heads(self) -> list[StackedLinearHead]:
        return [self.biased]

    def step(self, batch: Batch, record: bool) -> tuple[torch.Tensor, torch.Tensor]:
        labels, classes, index = batch.labels, batch.classes, batch.sample_index
        logits_b = self.biased.logits(batch.inputs.detach())
        p_y = (labels.to(logits_b.dtype) * torch.softmax(logits_b, dim=-1)).sum(-1)
        gce = self.q * p_y.detach().pow(self.q) * _soft_ce(logits_b, labels)
        ce_b = _soft_ce(logits_b.detach(), labels)
        ce_d = batch.per_sample_loss
        self.ema.update(torch.stack([ce_b, ce_d.detach()], dim=1), index, classes)
        e = self.ema.normalised(index, classes, self.num_classes).to(ce_d.dtype)
        weight = (e[:, 0] / (e[:, 0] + e[:, 1] + WEIGHT_EPS)).detach()
        loss, _ = _erm(gce + weight * ce_d)
        if record:
            self._record(weight, batch, gce, ce_b, ce_d)
        return loss.detach(), loss

    def _record(self, weight: torch.Tensor, batch: Batch, gce: torch.Tensor, ce_b: torch.Tensor,
                ce_d: torch.Tensor) -> None:
        h, b = weight.shape
        g = self.aligned.shape[2]
        aligned = self.aligned.view(h, -1).gather(1, batch.classes * g + batch.group_ids)
        self.sums.add("w_mean", weight.double().mean(1))
        for name, mask in (("w_aligned", aligned), ("w_conflicting", ~aligned)):
            count = mask.sum(1)
            total = torch.where(mask, weight, torch.zeros_like(weight)).sum(1)
            self.sums.add(name, (total / count.clamp_min(1)).double(), count > 0)
        self.sums.add("gce_loss", gce.detach().mean(1))
        self.sums.add("bias_loss", ce_b.mean(1))
        self.sums.add("debiased_loss", ce_d.detach().mean(1))

    @torch.no_grad()
    def write_back(self, i: int) -> None:
        o = self.objectives[i]
        if self.biased.layer_logits is not None:
            o.biased.layer_logits.copy_(self.biased.layer_logits[i])
        o.biased.layers[0].weight.copy_(self.biased.weight_p[i])
        o.biased.layers[0].bias.copy_(self.biased.bias_p[i])
        o.biased.layers[1].weight.copy_(self.biased.weight_o[i])
        o.biased.layers[1].bias.copy_(self.biased.bias_o[i])
        self.ema.write_back(i, o.ema)


# ------------------------------------------------------------------------------------- ADV / MADV
class _SharedHidden(torch.autograd.Function):
    """The adversaries' hidden layers (Linear → ReLU, stacked (h·n, out, in)) computed once for
    two consumers: MADV's adversarial loss reads them behind the gradient reversal of f, its
    difference loss on the detached f. Both outputs hold the same values; the weights receive the
    gradient of both, the input f only the first's, times −``strength`` (what the two separate
    forwards of :class:`~llmfair.objectives.adv.Adversarial` give, with one forward instead of two)."""

    @staticmethod
    def forward(ctx, f, strength, n, *params):  # noqa: D102
        h, b, p = f.shape
        x = f.unsqueeze(1).expand(h, n, b, p).reshape(h * n, b, p)
        inputs, masks = [], []
        for w, bias in zip(params[0::2], params[1::2]):
            inputs.append(x)
            z = torch.baddbmm(bias.unsqueeze(1), x, w.transpose(1, 2))
            masks.append(z > 0)
            x = torch.relu(z)
        ctx.strength, ctx.n, ctx.shape = strength, n, (h, b, p)
        ctx.save_for_backward(*inputs, *masks, *params[0::2])
        out = x.view(h, n, b, -1)
        return out, out.clone()

    @staticmethod
    def backward(ctx, grad_adv, grad_div):  # noqa: D102
        depth = len(ctx.saved_tensors) // 3
        inputs, masks, weights = (ctx.saved_tensors[:depth], ctx.saved_tensors[depth:2 * depth],
                                  ctx.saved_tensors[2 * depth:])
        h, b, p = ctx.shape
        g_adv = None if grad_adv is None else grad_adv.reshape(h * ctx.n, b, -1)
        g_div = None if grad_div is None else grad_div.reshape(h * ctx.n, b, -1)
        g_all = g_adv if g_div is None else (g_div if g_adv is None else g_adv + g_div)
        grads: list[torch.Tensor | None] = [None] * (2 * depth)
        d_f = None
        for l in reversed(range(depth)):
            dz_all = g_all * masks[l]
            grads[2 * l] = torch.bmm(dz_all.transpose(1, 2), inputs[l])
            grads[2 * l + 1] = dz_all.sum(1)
            dz_adv = None if g_adv is None else g_adv * masks[l]
            if l:
                g_all = torch.bmm(dz_all, weights[l])
                g_adv = None if dz_adv is None else torch.bmm(dz_adv, weights[l])
            elif dz_adv is not None and ctx.needs_input_grad[0]:
                d_f = torch.bmm(dz_adv, weights[0]).view(h, ctx.n, b, p).sum(1) * (-ctx.strength)
        return (d_f, None, None, *grads)


class AdversarialKernel(Kernel):
    """``adv`` / ``madv``: the adversaries of every head as stacked MLPs behind the gradient
    reversal of the projector output; MADV's difference loss on the detached output."""

    objective_classes = (Adversarial, MultiAdversarial)
    needs_features = True

    @classmethod
    def group_key(cls, objective: Objective) -> Any:
        return (type(objective).__name__, repr(objective.options), objective.target_of_group.numel())

    @classmethod
    def materialise(cls, objective: Objective, x: torch.Tensor, projector_dim: int) -> None:
        with torch.no_grad():
            probe = torch.zeros(1, projector_dim, device=x.device)
            for adversary in objective.adversaries:
                adversary(probe)

    def __init__(self, objectives: Sequence[Objective], start: int, device: torch.device,
                 rng_states: Sequence[torch.Tensor] = ()) -> None:
        super().__init__(objectives, start, device, rng_states)
        first = objectives[0]
        self.n = first.num_adversaries
        self.strength = first.options.strength / self.n
        self.diverse = first.diverse_lambda if self.n > 1 else 0.0
        self.target_of_group = _stack([o.target_of_group for o in objectives], device)
        # layers[l]: weight (h, n, out, in), bias (h, n, out) of the l-th Linear of every adversary
        linears = [[[m for m in adv.hidden_layers if isinstance(m, nn.Linear)] + [adv.output] for adv in o.adversaries]
                   for o in objectives]
        depth = len(linears[0][0])
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([torch.stack([a[l].weight.detach() for a in o]) for o in linears]).to(device))
            for l in range(depth))
        self.biases = nn.ParameterList(
            nn.Parameter(torch.stack([torch.stack([a[l].bias.detach() for a in o]) for o in linears]).to(device))
            for l in range(depth))

    def parameters(self) -> list[nn.Parameter]:
        return [p for pair in zip(self.weights, self.biases) for p in pair]

    def _first(self, h_in: torch.Tensor) -> torch.Tensor:
        """(h·n, b, out) first layer of every adversary: one product per head over its n adversaries."""
        h, b, _ = h_in.shape
        w0, b0 = self.weights[0], self.biases[0]
        n, s = w0.shape[1], w0.shape[2]
        x = stacked_linear(h_in, w0.reshape(h, n * s, -1), b0.reshape(h, n * s))
        return x.view(h, b, n, s).transpose(1, 2).reshape(h * n, b, s)

    def _layer(self, x: torch.Tensor, l: int) -> torch.Tensor:
        w, bias = self.weights[l], self.biases[l]
        return stacked_linear(x, w.reshape(-1, *w.shape[2:]), bias.reshape(-1, bias.shape[2]))

    def _hidden(self, h_in: torch.Tensor) -> torch.Tensor:
        """(h, n, b, S) activations before every adversary's output layer, from (h, b, P)."""
        h, b, _ = h_in.shape
        x = torch.relu(self._first(h_in))
        for l in range(1, len(self.weights) - 1):
            x = torch.relu(self._layer(x, l))
        return x.view(h, self.n, b, -1)

    def _outputs(self, h_in: torch.Tensor) -> torch.Tensor:
        """(h, n, b, T) adversary logits."""
        h, b, _ = h_in.shape
        if len(self.weights) == 1:  # no hidden layers: one linear map each
            return self._first(h_in).view(h, self.n, b, -1)
        x = self._hidden(h_in)
        return self._layer(x.reshape(h * self.n, b, -1), len(self.weights) - 1).view(h, self.n, b, -1)

    def step(self, batch: Batch, record: bool) -> tuple[torch.Tensor, torch.Tensor]:
        feats = batch.features
        h, b, _ = feats.shape
        erm, erm_value = _erm(batch.per_sample_loss)
        target = self.target_of_group.gather(1, batch.group_ids)
        known = (target >= 0).to(feats.dtype)
        n_known = known.sum(1)
        scale = 1.0 / n_known.clamp_min(1.0)
        diverse = None
        if self.n > 1 and self.diverse > 0 and len(self.weights) > 1:
            hidden = [(w.reshape(-1, *w.shape[2:]), bias.reshape(-1, bias.shape[2]))
                      for w, bias in zip(self.weights[:-1], self.biases[:-1])]
            shared, for_diversity = _SharedHidden.apply(feats, self.strength, self.n,
                                                        *[t for pair in hidden for t in pair])
            logits = self._layer(shared.reshape(h * self.n, b, -1), len(self.weights) - 1).view(h, self.n, b, -1)
            diverse = self._diversity(for_diversity)
        else:
            logits = self._outputs(gradient_reversal(feats, self.strength))
        n, t = logits.shape[1], logits.shape[3]
        tgt = target.clamp_min(0).unsqueeze(1).expand(h, n, b)
        ce = F.cross_entropy(logits.reshape(-1, t), tgt.reshape(-1), reduction="none").view(h, n, b)
        adv_term = (ce * known.unsqueeze(1)).sum(dim=(1, 2)) * scale
        loss = erm + adv_term
        if diverse is not None:
            loss = loss + self.diverse * diverse
        if record:
            has = n_known > 0
            correct = ((logits.detach().argmax(-1) == target.unsqueeze(1)).to(feats.dtype) * known.unsqueeze(1)).sum((1, 2))
            ce_sum = (ce.detach() * known.unsqueeze(1)).sum((1, 2))
            denom = (n * n_known.clamp_min(1)).double()
            self.sums.add("erm_loss", erm_value)
            self.sums.add("adv_loss", ce_sum.double() / denom, has)
            self.sums.add("adv_accuracy", correct.double() / denom, has)
            if diverse is not None:
                self.sums.add("diversity", diverse.detach())
        return loss.detach(), loss

    def _diversity(self, hidden: torch.Tensor) -> torch.Tensor:
        """Σ_{j<k} DiffLoss(H_j, H_k) per head (:func:`llmfair.objectives.adv.difference_loss`) of
        the (h, n, b, S) hidden activations of the detached projector output."""
        hidden = hidden / (hidden.norm(dim=3, keepdim=True).detach() + 1e-6)
        total = hidden.new_zeros(hidden.shape[0])
        for j, k in combinations(range(hidden.shape[1]), 2):
            total = total + torch.bmm(hidden[:, j], hidden[:, k].transpose(1, 2)).pow(2).mean(dim=(1, 2))
        return total

    @torch.no_grad()
    def write_back(self, i: int) -> None:
        o = self.objectives[i]
        for j, adv in enumerate(o.adversaries):
            linears = [m for m in adv.hidden_layers if isinstance(m, nn.Linear)] + [adv.output]
            for l, layer in enumerate(linears):
                layer.weight.copy_(self.weights[l][i, j])
                layer.bias.copy_(self.biases[l][i, j])


# ------------------------------------------------------------------------------------- DisEnt
class DisEntKernel(Kernel):
    """``disent``: the bias encoders E_b and the classifiers C_i, C_b of every head stacked; the
    per-sample EMAs stacked; the swap permutations drawn per head from the global-RNG stream that
    head would draw from alone (its state after initialisation)."""

    objective_classes = (DisEnt,)
    needs_features = True
    predicts_from_model = False

    @classmethod
    def group_key(cls, objective: Objective) -> Any:
        return (repr(objective.options), objective.ema.num_examples, int(objective.steps_done),
                objective.class_weights is None, objective.bias_encoder.layer_logits.numel())

    @classmethod
    def materialise(cls, objective: Objective, x: torch.Tensor, projector_dim: int) -> None:
        with torch.no_grad():
            objective.bias_encoder(x[:1])
            probe = torch.zeros(1, projector_dim + objective.options.bias_dim, device=x.device)
            objective.intrinsic_classifier(probe)
            objective.bias_classifier(probe)

    def __init__(self, objectives: Sequence[Objective], start: int, device: torch.device,
                 rng_states: Sequence[torch.Tensor] = ()) -> None:
        super().__init__(objectives, start, device, rng_states)
        first = objectives[0]
        self.opts = first.options
        self.num_classes = first.num_classes
        encoders = [o.bias_encoder for o in objectives]
        self.per_layer = encoders[0].layer_logits.numel() > 1
        linear = [[m for m in e.layers if isinstance(m, nn.Linear)] for e in encoders]
        norms = [[m for m in e.layers if isinstance(m, nn.LayerNorm)] for e in encoders]
        self.norm_eps = norms[0][0].eps if norms[0] else None

        def param(values: list[torch.Tensor]) -> nn.Parameter:
            return nn.Parameter(_stack(values, device).clone())

        self.layer_logits = param([e.layer_logits for e in encoders]) if self.per_layer else None
        self.enc = [(param([ls[j].weight for ls in linear]), param([ls[j].bias for ls in linear]))
                    for j in range(len(linear[0]))]
        self.norm = (param([n[0].weight for n in norms]), param([n[0].bias for n in norms])) if norms[0] else None
        self.c_i = (param([o.intrinsic_classifier.weight for o in objectives]),
                    param([o.intrinsic_classifier.bias for o in objectives]))
        self.c_b = (param([o.bias_classifier.weight for o in objectives]),
                    param([o.bias_classifier.bias for o in objectives]))
        self.class_weights = (None if first.class_weights is None
                              else _stack([o.class_weights for o in objectives], device))
        self.ema = StackedLossEMA([o.ema for o in objectives], device)
        self.steps_done = int(first.steps_done)
        self.generators = []
        for state in self.rng_states:
            g = torch.Generator()
            g.set_state(state)
            self.generators.append(g)

    def parameters(self) -> list[nn.Parameter]:
        out = [] if self.layer_logits is None else [self.layer_logits]
        for pair in self.enc + ([self.norm] if self.norm else []) + [self.c_i, self.c_b]:
            out += list(pair)
        return out

    def _bias_features(self, x: torch.Tensor, layer_logits: torch.Tensor | None = None,
                       enc: Sequence[tuple] | None = None, norm: tuple | None = None) -> torch.Tensor:
        """z_b = E_b(x) for (h, b, D) or per-layer (h, b, L, D) inputs (LazyLayerMLP.forward)."""
        enc = self.enc if enc is None else enc
        norm = self.norm if norm is None else norm
        if x.ndim == 4:
            weights = torch.softmax(self.layer_logits if layer_logits is None else layer_logits, dim=1)
            x = torch.einsum("hbld,hl->hbd", x, weights.to(x.dtype))
        for j, (w, b) in enumerate(enc):
            if j:
                x = torch.relu(x)
            x = stacked_linear(x, w, b)
        if norm is not None:
            x = F.layer_norm(x, x.shape[-1:], eps=self.norm_eps) * norm[0].unsqueeze(1) + norm[1].unsqueeze(1)
        return x

    def _ce(self, logits: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None = None) -> torch.Tensor:
        cw = self.class_weights if class_weights is None else class_weights
        loss = _soft_ce(logits, labels)
        if cw is not None:
            loss = loss * torch.bmm(labels.to(logits.dtype), cw.to(logits.dtype).unsqueeze(2)).squeeze(2)
        return loss

    def _gce(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        p_y = (labels.to(logits.dtype) * torch.softmax(logits, dim=-1)).sum(-1)
        return self.opts.q * p_y.detach().pow(self.opts.q) * self._ce(logits, labels)

    def step(self, batch: Batch, record: bool) -> tuple[torch.Tensor, torch.Tensor]:
        opts = self.opts
        z_i, labels, classes, index = batch.features, batch.labels, batch.classes, batch.sample_index
        h, b, _ = z_i.shape
        z_b = self._bias_features(batch.inputs.detach()).to(z_i.dtype)
        logits_i = stacked_linear(torch.cat([z_i, z_b.detach()], dim=2), *self.c_i)
        logits_b = stacked_linear(torch.cat([z_i.detach(), z_b], dim=2), *self.c_b)
        ce_i = self._ce(logits_i, labels)
        ce_b = self._ce(logits_b.detach(), labels)
        self.ema.update(torch.stack([ce_b, ce_i.detach()], dim=1), index, classes)
        e = self.ema.normalised(index, classes, self.num_classes).to(ce_i.dtype)
        weight = (e[:, 0] / (e[:, 0] + e[:, 1] + WEIGHT_EPS)).detach()
        per_sample = weight * ce_i + opts.lambda_dis * self._gce(logits_b, labels)
        swapping = self.steps_done >= opts.swap_after_steps
        if swapping:
            perm = torch.stack([torch.randperm(b, generator=g) for g in self.generators]).to(z_b.device)
            z_b_swap = z_b.gather(1, perm.unsqueeze(2).expand(-1, -1, z_b.shape[2]))
            labels_swap = labels.gather(1, perm.unsqueeze(2).expand(-1, -1, labels.shape[2]))
            swap_i = stacked_linear(torch.cat([z_i, z_b_swap.detach()], dim=2), *self.c_i)
            swap_b = stacked_linear(torch.cat([z_i.detach(), z_b_swap], dim=2), *self.c_b)
            per_sample = per_sample + opts.lambda_swap * (weight * self._ce(swap_i, labels)
                                                          + opts.lambda_swap_b * self._gce(swap_b, labels_swap))
        per_sample = per_sample + 0.0 * batch.per_sample_loss
        loss, _ = _erm(per_sample)
        self.steps_done += 1
        if record:
            self.sums.add("w_mean", weight.mean(1))
            self.sums.add("intrinsic_loss", ce_i.detach().mean(1))
            self.sums.add("bias_loss", ce_b.mean(1))
            self.sums.add("swap", torch.full((h,), float(swapping), dtype=torch.float64))
        return loss.detach(), loss

    @torch.no_grad()
    def dev_logits(self, i: int, projected: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """C_i([z_i; E_b(inputs)]) of head ``i`` (:meth:`DisEnt.predict_logits`)."""
        one = slice(i, i + 1)
        z_b = self._bias_features(inputs.unsqueeze(0), None if self.layer_logits is None else self.layer_logits[one],
                                  [(w[one], b[one]) for w, b in self.enc],
                                  None if self.norm is None else (self.norm[0][one], self.norm[1][one]))
        z = torch.cat([projected.unsqueeze(0), z_b.to(projected.dtype)], dim=2)
        return stacked_linear(z, self.c_i[0][one], self.c_i[1][one]).squeeze(0)

    @torch.no_grad()
    def write_back(self, i: int) -> None:
        o = self.objectives[i]
        encoder = o.bias_encoder
        if self.layer_logits is not None:
            encoder.layer_logits.copy_(self.layer_logits[i])
        for layer, (w, b) in zip([m for m in encoder.layers if isinstance(m, nn.Linear)], self.enc):
            layer.weight.copy_(w[i])
            layer.bias.copy_(b[i])
        if self.norm is not None:
            norm = next(m for m in encoder.layers if isinstance(m, nn.LayerNorm))
            norm.weight.copy_(self.norm[0][i])
            norm.bias.copy_(self.norm[1][i])
        for module, (w, b) in ((o.intrinsic_classifier, self.c_i), (o.bias_classifier, self.c_b)):
            module.weight.copy_(w[i])
            module.bias.copy_(b[i])
        self.ema.write_back(i, o.ema)
        o.steps_done.fill_(self.steps_done)


# ------------------------------------------------------------------------------------- the table
KERNELS: tuple[type[Kernel], ...] = (ERMKernel, RWKernel, DROKernel, GRKernel, MinMaxGapKernel, LfFKernel,
                                     AdversarialKernel, DisEntKernel)
"""Every kernel, in the order a chunk lays its heads out (dense-feature kernels last)."""

_BY_CLASS: dict[type, type[Kernel]] = {cls: kernel for kernel in KERNELS for cls in kernel.objective_classes}


def kernel_for(objective: Objective) -> type[Kernel] | None:
    """The kernel of ``objective``'s exact class, or None (it trains one at a time)."""
    return _BY_CLASS.get(type(objective))


def batched_objective_names() -> list[str]:
    """The registered names of the objectives that have a kernel, sorted."""
    return sorted(cls.name for cls in _BY_CLASS)
