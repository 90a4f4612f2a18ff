"""Many frozen-feature heads trained at once: :func:`train_heads`, the feature sweep's fast path.

:func:`llmfair.ssl.train_head.train_head` trains one 200k-parameter head; at the IDI recipe
(batch 32) a step costs a few hundred microseconds of arithmetic and about as much again of Python
and operator dispatch, once per head and once per objective. :func:`train_heads` takes the
arguments of many ``train_head`` calls (:class:`HeadJob`) and trains the heads that can share a
loop as **one batched computation**, returning for every job the :class:`HeadTrainingResult` that
``train_head`` returns — the same weights, predictions, history, selected epoch, figures and
objective state within float tolerance (``tests/test_batched_head.py``: every batched method, in
float64 to 1e-9 and end to end in float32).

How (per chunk of at most ``max_heads`` heads):

- **Stacked weights.** The heads' layer weighting, projector and output layer become tensors with
  the head on the first axis; forward and backward are batched matrix products (``torch.bmm``).
  Heads are independent: no operation mixes them, so the gradient of the summed losses is each
  head's own gradient.
- **Own data order, init and optimiser state per head.** Each head keeps the seeded permutation
  (or sampler draws) ``train_head`` would draw, its rows (DS keeps a subset) and its initialisation,
  made exactly as ``train_head`` makes it (same seed, same order of draws, lazily-sized objective
  modules materialised where the first step would, and — for DisEnt's swap — the global-RNG stream
  the head would draw from alone). One Adam over the stacked tensors is exactly h independent
  Adams: the update (weight decay included) is elementwise and every head steps together.
  Gradient clipping by global norm is per head (norms over each head's slices).
- **Merged linear maps.** The EMO-SUPERB head has no non-linearity between its projector and its
  output layer, so where the projector output is not needed the logits are ``x (W_o W_p)ᵀ + c``:
  a (K, D) product per head instead of a (b, P) one, K = 6 against P = 256
  (:class:`~llmfair.ssl._batched_objectives.StackedLinearHead`). Heads whose objective reads the
  projector output (ADV, MADV, DisEnt) compute it. Both forms have hand-written backwards that
  keep every batched product in the memory layout the BLAS kernels are fast on and write the
  (h, P, D) weight gradients in place into persistent buffers (a fresh buffer per step measured
  six times slower for that product than writing into one, through the memory it touches).
- **Objectives in batched form.** Each method's loss, state update and figures are computed for
  all its heads at once by a kernel (:mod:`llmfair.ssl._batched_objectives`) that reads the
  objective's constants after its ``setup`` and writes its state back at the end. Objectives that
  see the batch only through the per-sample losses compute ∂L/∂ℓ_i in closed form (no autograd
  graph), as FairTrainer's exact gradient accumulation does.
- **Shared data.** Heads on the same feature tensor gather their mini-batches from one copy.

Which methods batch: ``erm``, ``rw``, ``gdro``, ``gadro``, ``pgdro``, ``gr``, ``minmaxgap`` (their
loss is a function of per-sample losses, group ids and classes, with per-head state that stacks),
``lff`` (its biased model is a second stacked head, its per-sample EMAs stack), ``adv`` / ``madv``
(the adversaries stack) and ``disent`` (its bias encoder and classifiers stack, its swap
permutations are drawn per head); any sampler (DS, group-balanced) and selection rule. One at a
time, through ``train_head``: ``two_sided`` (its rater-gender classifier has no batched form), any
other or new objective, any subclass of a batched one (its ``forward`` may differ), class-index
(1-D) labels or the ``ce`` loss, and data-parallel objectives. :func:`batching_blocker` names the
reason for a job.

Heads share a chunk when their loops coincide: the same training rows count and rows drawn per
epoch (so the same batch sizes), epochs, batch size, learning rate, weight decay, clipping,
device, head options and feature and label shapes. A head whose loss becomes non-finite fails
alone (the others go on).

Float32 results match ``train_head`` to rounding, which training can amplify: Adam's normalisation
where a gradient is near zero, and the adversarial and disentangling methods throughout — for
``adv``, ``madv`` and ``disent`` a one-ulp perturbation of the features moves ``train_head``'s own
test probabilities by 2e-2 to 7e-2 after the recipe's 50 epochs (and may change the selected
epoch), as much as batching does; the other methods stay within ~1e-6
(``docs/experiments/head_rounding_sensitivity.py``). ``bench/bench_sweep.py``
prints the differences over a whole grid.

A head's rounding depends on the other heads of its chunk (batched products over another number of
heads take other BLAS paths): about 1e-7 in a probability after 5 epochs, which ADV, MADV and
DisEnt amplify as above — so for those methods a sweep's results depend on which runs share a
chunk, one reason the sweep trains one at a time by default (:data:`llmfair.sweep.BATCHED_ENV`).

Speed: the step is bound by memory traffic, not by arithmetic or dispatch alone — every head-step
reads and writes its 198k projector weights, their gradient and Adam's two moments.
``bench/bench_sweep.py`` measured the CREMA-D-sized grid's fold 1 at 1.45× the one-at-a-time speed
on 2 CPU cores, and the floor of any exact float32 implementation (:func:`bench_sweep.step_floor`)
at 5.9 min for the full grid (docs/performance.md).

``HeadTrainingResult.seconds`` of a batched head is its share of the chunk's wall time (the chunk's
time divided by its heads), so summing it over runs gives the time spent.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from llmfair.errors import ConfigError, DataError
from llmfair.objectives.base import Objective
from llmfair.ssl._batched_objectives import KERNELS, Batch, Kernel, StackedLinearHead, kernel_for
from llmfair.ssl.head import HeadOptions
from llmfair.ssl.train_head import (
    HeadTrainingOptions,
    HeadTrainingResult,
    _build_head,
    _build_optimizer,
    _checked_inputs,
    _dev_rows,
    _epoch_orders,
    _selection_record,
    _set_up_objective,
    _snapshot,
    _training_rows,
    dev_figures,
    train_head,
)

logger = logging.getLogger(__name__)

MAX_HEADS = 16
"""Default bound on the heads of one chunk (memory: about 3 MB of weights and Adam state per head,
plus the objectives' own; features are shared)."""

_HEAD_LOSSES = ("soft_ce", "cb_soft_ce")


@dataclass
class HeadJob:
    """The arguments of one :func:`~llmfair.ssl.train_head.train_head` call (same names, same meaning)."""

    train_features: Any
    train_labels: Any
    train_groups: Any
    objective: Objective
    dev_features: Any = None
    dev_labels: Any = None
    dev_genders: Any = None
    options: HeadTrainingOptions | None = None
    head_options: HeadOptions | None = None
    train_classes: Any = None
    group_probabilities: Any = None
    group_names: Sequence[str] | None = None

    def train_head_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``train_head`` (the positional ones under their names)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def batching_blocker(job: HeadJob) -> str | None:
    """Why ``job`` trains one at a time (see the module docstring), or None when it batches."""
    objective = job.objective
    kernel = kernel_for(objective)
    if kernel is None:
        return f"objective {objective.name or type(objective).__name__!r} has no batched form"
    if objective.reducer.world_size > 1:
        return "data-parallel training"
    head_options = job.head_options or HeadOptions()
    if head_options.loss not in _HEAD_LOSSES:
        return f"head loss {head_options.loss!r} (batched: {_HEAD_LOSSES})"
    labels = job.train_labels
    if np.ndim(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels) != 2:
        return "class-index labels (batched: (N, K) label distributions)"
    return None


# ------------------------------------------------------------------------------------- preparation
@dataclass
class _Prepared:
    """One head after ``train_head``'s steps 1–2 (rows, head, objective set up, dev rows)."""

    position: int
    options: HeadTrainingOptions
    head_options: HeadOptions
    selection: Any
    sampler: Any
    generator: torch.Generator
    rows: np.ndarray
    x: torch.Tensor
    y: torch.Tensor
    groups: torch.Tensor
    model: Any
    objective: Objective
    dev: tuple | None
    num_classes: int
    kernel: type[Kernel]
    epoch_rows: int
    rng_state: torch.Tensor

    def chunk_key(self) -> tuple:
        o = self.options
        return (self.epoch_rows, tuple(self.x.shape), o.epochs, o.batch_size, o.learning_rate, o.weight_decay,
                o.max_grad_norm, str(torch.device(o.device)), dataclasses.astuple(self.head_options), self.num_classes)


def _prepare(position: int, job: HeadJob) -> _Prepared:
    """``train_head`` up to its training loop, in the same order and with the same draws; the
    objective's lazily-sized modules are materialised where its first step would do it."""
    options = job.options or HeadTrainingOptions()
    head_options = job.head_options or HeadOptions()
    device = torch.device(options.device)
    objective = job.objective
    x_all, y_all, g_all, classes_all, num_classes, selection = _checked_inputs(
        job.train_features, job.train_labels, job.train_groups, job.train_classes, objective, job.dev_features,
        job.dev_labels, options)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        generator = torch.Generator().manual_seed(options.seed)
        sampler, rows = _training_rows(options, classes_all, g_all)
        index = torch.as_tensor(rows)
        # every row, in order: the caller's tensor itself (heads on one tensor share it)
        x = (x_all if rows.size == x_all.shape[0] else x_all[index]).to(device)
        y = y_all[index].to(device)
        groups = g_all[index].to(device)
        classes = classes_all[rows]
        model = _build_head(x, y, num_classes, head_options, device)
        objective = _set_up_objective(objective.to(device), groups, classes, num_classes, rows,
                                      job.group_probabilities, x_all.shape[0], job.group_names)
        dev = None if job.dev_features is None else _dev_rows(job.dev_features, job.dev_labels, job.dev_genders, x,
                                                              num_classes, device)
        kernel = kernel_for(objective)
        kernel.materialise(objective, x, head_options.projector_dim)
        rng_state = torch.get_rng_state()  # what the objective draws from in training (DisEnt's swap)
    epoch_rows = len(sampler) if sampler is not None else int(x.shape[0])
    return _Prepared(position, options, head_options, selection, sampler, generator, rows, x, y, groups, model,
                     objective, dev, num_classes, kernel, epoch_rows, rng_state)


# ------------------------------------------------------------------------------------- entry point
def train_heads(jobs: Sequence[HeadJob], *, max_heads: int = MAX_HEADS, on_error: str = "raise",
                batched: bool = True) -> list[HeadTrainingResult | Exception]:
    """Train every job's head and return the :class:`HeadTrainingResult` of each, in job order.

    Jobs that :func:`batching_blocker` accepts train in batched chunks (module docstring); the
    others go through :func:`~llmfair.ssl.train_head.train_head` one at a time, as does every job
    with ``batched=False``. Each job's objective is set up and trained in place, as ``train_head``
    does.

    Args:
        jobs: the heads to train.
        max_heads: the most heads in one batched chunk (bounds memory).
        on_error: ``"raise"`` re-raises the first :class:`DataError` / :class:`ConfigError` of any
            head (as a loop over ``train_head`` would); ``"return"`` puts it in that job's place and
            trains the rest.
        batched: False trains every job through ``train_head`` (the reference path).

    Raises:
        ConfigError: ``max_heads < 1`` or an unknown ``on_error``; with ``on_error="raise"`` what
            ``train_head`` raises for a job.
    """
    if max_heads < 1:
        raise ConfigError(f"train_heads: max_heads must be >= 1, got {max_heads}")
    if on_error not in ("raise", "return"):
        raise ConfigError(f"train_heads: on_error must be 'raise' or 'return', got {on_error!r}")
    results: list[HeadTrainingResult | Exception | None] = [None] * len(jobs)

    def fail(position: int, error: Exception) -> None:
        if on_error == "raise":
            raise error
        results[position] = error

    prepared: list[_Prepared] = []
    for position, job in enumerate(jobs):
        if not batched or batching_blocker(job) is not None:
            continue
        try:
            prepared.append(_prepare(position, job))
        except (DataError, ConfigError) as exc:
            fail(position, exc)
    done = {p.position for p in prepared} | {i for i, r in enumerate(results) if r is not None}
    for position, job in enumerate(jobs):
        if position in done:
            continue
        try:
            results[position] = train_head(**job.train_head_kwargs())
        except (DataError, ConfigError) as exc:
            fail(position, exc)
    for chunk in _chunks(prepared, max_heads):
        for position, outcome in _train_chunk(chunk).items():
            if isinstance(outcome, Exception):
                fail(position, outcome)
            else:
                results[position] = outcome
    return results  # type: ignore[return-value]


def _chunks(prepared: list[_Prepared], max_heads: int) -> list[list[_Prepared]]:
    """Heads whose loops coincide, at most ``max_heads`` together, laid out kernel by kernel."""
    order = {kernel: i for i, kernel in enumerate(KERNELS)}
    groups: dict[tuple, list[_Prepared]] = {}
    for p in prepared:
        groups.setdefault(p.chunk_key(), []).append(p)
    chunks = []
    for members in groups.values():
        members = sorted(members, key=lambda p: (order[p.kernel], repr(p.kernel.group_key(p.objective)), p.position))
        chunks += [members[i:i + max_heads] for i in range(0, len(members), max_heads)]
    return chunks


# ------------------------------------------------------------------------------------- one chunk
class _FeatureBank:
    """The chunk's training features without copies: one tensor per distinct storage, and per head
    the rows of its features in the concatenation."""

    def __init__(self, tensors: Sequence[torch.Tensor]) -> None:
        distinct: dict[tuple, int] = {}
        parts, offsets = [], []
        for t in tensors:
            key = (t.data_ptr(), tuple(t.shape), t.stride(), str(t.device))
            if key not in distinct:
                distinct[key] = sum(p.shape[0] for p in parts)
                parts.append(t)
            offsets.append(distinct[key])
        self.values = parts[0] if len(parts) == 1 else torch.cat(parts)
        n = tensors[0].shape[0]
        device = tensors[0].device
        self.shared = len(parts) == 1
        self.row_map = (torch.as_tensor(offsets, device=device).unsqueeze(1) + torch.arange(n, device=device)
                        if not self.shared else None)

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        """(h, b, ...) features of each head's (h, b) row indices."""
        rows = index if self.shared else self.row_map.gather(1, index)
        return self.values.index_select(0, rows.reshape(-1)).view(*rows.shape, *self.values.shape[1:])


def _kernels(chunk: list[_Prepared], device: torch.device) -> list[Kernel]:
    kernels, start = [], 0
    while start < len(chunk):
        first = chunk[start]
        key = (first.kernel, repr(first.kernel.group_key(first.objective)))
        stop = start
        while stop < len(chunk) and (chunk[stop].kernel, repr(chunk[stop].kernel.group_key(chunk[stop].objective))) == key:
            stop += 1
        members = chunk[start:stop]
        kernels.append(first.kernel([p.objective for p in members], start, device, [p.rng_state for p in members]))
        start = stop
    return kernels


class _Heads:
    """The chunk's EMO-SUPERB heads as stacked weights in (at most) two segments with their own
    parameters: heads ``[0, dense_from)`` compute the merged-map logits only, heads
    ``[dense_from, H)`` (objectives that read the projector output) the projector output too."""

    def __init__(self, chunk: list[_Prepared], dense_from: int, device: torch.device) -> None:
        self.segments: list[tuple[int, StackedLinearHead]] = []
        for lo, hi in ((0, dense_from), (dense_from, len(chunk))):
            if hi > lo:
                self.segments.append((lo, self._stack([p.model for p in chunk[lo:hi]], device)))
        self.dense_from = dense_from

    @staticmethod
    def _stack(models: list[Any], device: torch.device) -> StackedLinearHead:
        first = models[0]
        fixed = first.options.layer if first.num_layers is not None and first.layer_logits is None else None
        return StackedLinearHead(
            None if first.layer_logits is None else torch.stack([m.layer_logits.detach() for m in models]),
            torch.stack([m.projector.weight.detach() for m in models]),
            torch.stack([m.projector.bias.detach() for m in models]),
            torch.stack([m.output.weight.detach() for m in models]), torch.stack([m.output.bias.detach() for m in models]),
            fixed_layer=fixed).to(device)

    def parameters(self) -> list[tuple[torch.nn.Parameter, int]]:
        """Every stacked parameter with the chunk position of its first head."""
        return [(p, lo) for lo, head in self.segments for p in head.parameters()]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(H, b, K) logits of every head and the (H − dense_from, b, P) projector output of the
        dense segment (None without one)."""
        parts, features = [], None
        for lo, head in self.segments:
            if lo < self.dense_from:
                parts.append(head.logits(x if len(self.segments) == 1 else x[:self.dense_from]))
            else:
                logits, features = head.logits_and_features(x[lo:])
                parts.append(logits)
        return (parts[0] if len(parts) == 1 else torch.cat(parts)), features

    def locate(self, h: int) -> tuple[StackedLinearHead, int]:
        for lo, head in reversed(self.segments):
            if h >= lo:
                return head, h - lo
        raise IndexError(h)  # pragma: no cover

    def state(self, h: int) -> dict[str, torch.Tensor]:
        head, i = self.locate(h)
        return head.state(i)

    def dev_logits(self, h: int, x: torch.Tensor, kernel: Kernel, i: int) -> torch.Tensor:
        """(n, K) predicting logits of head ``h`` on dev features: the model's own, or (DisEnt) the
        objective's from the projector output."""
        head, j = self.locate(h)
        if kernel.predicts_from_model:
            return head.logits_of(j, x).float()
        return kernel.dev_logits(i, head.projected_of(j, x), x).float()


def _head_loss(head_options: HeadOptions, logits: torch.Tensor, labels: torch.Tensor,
               class_weights: torch.Tensor | None) -> torch.Tensor:
    """(h, b) base loss: soft CE, times Σ_c w_c y_c for ``cb_soft_ce`` (:func:`soft_cross_entropy`)."""
    labels = labels.to(logits.dtype)
    loss = -(labels * torch.log_softmax(logits, dim=-1)).sum(-1)
    if class_weights is not None:
        loss = loss * torch.bmm(labels, class_weights.to(logits.dtype).unsqueeze(2)).squeeze(2)
    return loss


def _clip_per_head(params: Sequence[tuple[torch.Tensor, int]], n_heads: int, max_norm: float) -> None:
    """``clip_grad_norm_`` for every head: the norm over the head's slices of all parameters.

    ``params`` pairs each stacked parameter with the chunk position of its first head (a kernel's
    parameters cover only the kernel's heads)."""
    squares = None
    for p, start in params:
        if p.grad is None:
            continue
        s = p.grad.detach().pow(2).reshape(p.shape[0], -1).sum(1)
        if squares is None:
            squares = s.new_zeros(n_heads)
        squares[start:start + p.shape[0]] += s
    if squares is None:
        return
    coef = (max_norm / (squares.sqrt() + 1e-6)).clamp(max=1.0)
    for p, start in params:
        if p.grad is not None:
            scale = coef[start:start + p.shape[0]]
            p.grad.detach().mul_(scale.view(-1, *([1] * (p.grad.ndim - 1))).to(p.grad.dtype))


@torch.no_grad()
def _load_head(model: Any, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    for name, value in state.items():
        params[name].copy_(value)


def chunk_losses(heads: _Heads, kernels: Sequence[Kernel], head_options: HeadOptions,
                 class_weights: torch.Tensor | None, features: torch.Tensor, labels: torch.Tensor,
                 group_ids: torch.Tensor, sample_index: torch.Tensor,
                 record: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step of a chunk: the heads' forward and base loss, then every kernel's
    objective on its heads. Returns the (H,) objective values and an (H,) differentiable tensor
    whose gradient is each head's objective gradient (heads are independent, so back-propagating
    its sum gives every head its own).

    Args:
        features: (H, b, ...) each head's mini-batch; ``labels`` (H, b, K); ``group_ids`` and
            ``sample_index`` (H, b).
        record: accumulate the objectives' figures (the last epoch).
    """
    logits, projected = heads.forward(features)
    per_sample = _head_loss(head_options, logits, labels, class_weights)
    classes = labels.argmax(-1)
    dense_from = heads.dense_from
    values, losses = [], []
    for k in kernels:
        s, e = k.start, k.stop
        own = None if projected is None or s < dense_from else projected[s - dense_from:e - dense_from]
        batch = Batch(per_sample[s:e], labels[s:e], classes[s:e], group_ids[s:e], sample_index[s:e], features[s:e], own)
        value, loss = k.step(batch, record)
        values.append(value)
        losses.append(loss)
    if len(kernels) == 1:
        return values[0], losses[0]
    return torch.cat(values), torch.cat(losses)


def _train_chunk(chunk: list[_Prepared]) -> dict[int, HeadTrainingResult | Exception]:
    """``train_head``'s training loop (its ``_fit``) for every head of ``chunk`` at once."""
    from llmfair.training.selection import select_evaluation  # lazy: llmfair.training pulls in transformers

    started = time.perf_counter()
    first = chunk[0]
    options, device = first.options, torch.device(first.options.device)
    n_heads, epochs, batch_size = len(chunk), options.epochs, options.batch_size
    class_weights = None
    if first.head_options.loss == "cb_soft_ce":
        class_weights = torch.stack([p.model.class_weights for p in chunk]).to(device)
    kernels = _kernels(chunk, device)
    dense_from = next((k.start for k in kernels if k.needs_features), n_heads)
    heads = _Heads(chunk, dense_from, device)
    owned = heads.parameters() + [(p, k.start) for k in kernels for p in k.parameters()]
    params = [p for p, _ in owned]
    optimizer = _build_optimizer(params, options)
    # the stacked heads' weight gradients live in persistent buffers their backward overwrites;
    # every other parameter's gradient is reset to None per step, as zero_grad(set_to_none) does
    stacked = [head for _, head in heads.segments] + [stack for k in kernels for stack in k.stacked_heads()]
    in_place = {id(w) for stack in stacked for w in (stack.weight_p, stack.weight_o)}
    reset = [param for param in params if id(param) not in in_place]
    bank = _FeatureBank([p.x for p in chunk])
    labels = torch.stack([p.y for p in chunk])
    groups = torch.stack([p.groups for p in chunk])
    draws = [_epoch_orders(p.sampler, p.x.shape[0], p.generator, device) for p in chunk]
    k_classes = labels.shape[2]

    histories: list[list[dict[str, float]]] = [[] for _ in chunk]
    best: list[tuple | None] = [None] * n_heads
    failed: dict[int, Exception] = {}
    steps = 0
    for p in chunk:
        p.model.train()
        p.objective.train()
    for epoch in range(1, epochs + 1):
        orders = torch.stack([draw() for draw in draws])
        record = epoch == epochs
        loss_sum = torch.zeros(n_heads, dtype=torch.float64, device=device)
        batches = 0
        for lo in range(0, orders.shape[1], batch_size):
            index = orders[:, lo:lo + batch_size]
            xb = bank.gather(index)
            yb = labels.gather(1, index.unsqueeze(2).expand(-1, -1, k_classes))
            values, loss = chunk_losses(heads, kernels, first.head_options, class_weights, xb, yb,
                                        groups.gather(1, index), index, record)
            for param in reset:
                param.grad = None
            for stack in stacked:
                stack.begin_step()
            loss.sum().backward()
            for stack in stacked:
                stack.end_step()
            if options.max_grad_norm is not None:
                _clip_per_head(owned, n_heads, options.max_grad_norm)
            optimizer.step()
            loss_sum += values
            batches += 1
        steps += batches
        train_losses = (loss_sum / batches).tolist()
        for h, p in enumerate(chunk):
            if h in failed:
                continue
            _end_of_epoch(p, h, epoch, train_losses[h], heads, kernels, histories[h], best, failed, select_evaluation)

    seconds = (time.perf_counter() - started) / n_heads
    out: dict[int, HeadTrainingResult | Exception] = {}
    for h, p in enumerate(chunk):
        if h in failed:
            out[p.position] = failed[h]
            continue
        kernel, i = _kernel_of(kernels, h)
        figures = kernel.figures(i, batches)
        if best[h] is None:
            _load_head(p.model, heads.state(h))
            kernel.write_back(i)
            best_epoch = epochs
        else:
            best_epoch, head_state, objective_state = best[h]
            _load_head(p.model, head_state)
            p.objective.load_state_dict(objective_state)
        p.model.eval()
        p.objective.eval()
        history = histories[h]
        best_loss = history[best_epoch - 1]["dev_loss"]
        chosen = _selection_record(p.selection, history, best_epoch, p.dev is not None)
        logger.info("head trained with %s (batched, %d heads): %d rows, %d steps, best epoch %d (dev loss %.4f)",
                    p.objective.name, n_heads, p.x.shape[0], steps, best_epoch, best_loss)
        out[p.position] = HeadTrainingResult(
            model=p.model, objective=p.objective, best_epoch=best_epoch, best_dev_loss=best_loss, history=history,
            num_steps=steps, train_rows=p.rows, figures=figures, seconds=seconds, selection=chosen)
    return out


def _kernel_of(kernels: list[Kernel], h: int) -> tuple[Kernel, int]:
    for k in kernels:
        if k.start <= h < k.stop:
            return k, h - k.start
    raise IndexError(h)  # pragma: no cover - every head has a kernel


def _end_of_epoch(p: _Prepared, h: int, epoch: int, train_loss: float, heads: _Heads,
                  kernels: list[Kernel], history: list[dict[str, float]], best: list, failed: dict,
                  select_evaluation: Any) -> None:
    """``train_head``'s end of an epoch for head ``h``: divergence check, dev evaluation, history,
    and the selection rule's snapshot of the head and its objective."""
    if not math.isfinite(train_loss):
        failed[h] = DataError(f"head training diverged: the objective {p.objective.name!r} loss is {train_loss} in "
                              f"epoch {epoch} (lower the learning rate, check the features for extreme values)")
        return
    record = {"epoch": float(epoch), "train_loss": train_loss, "dev_loss": math.nan}
    if p.dev is not None:
        dx, dy, dg = p.dev
        kernel, i = _kernel_of(kernels, h)
        logits = heads.dev_logits(h, dx, kernel, i)
        record["dev_loss"] = float(p.model.loss(logits, dy).double().mean())
        probs = torch.softmax(logits.double(), dim=-1).cpu().numpy()
        record.update(dev_figures(probs, dy.cpu().numpy(), dg))
    history.append(record)
    if p.dev is not None and p.selection.active and select_evaluation(p.selection, history) == epoch - 1:
        kernel, i = _kernel_of(kernels, h)
        kernel.write_back(i)
        best[h] = (epoch, heads.state(h), _snapshot(p.objective))
