"""Training the correction net in under two seconds: packed weights, hand-written gradients, no DataLoader.

The official notebook trains the 3-layer, 24-unit MLP for 500 epochs (batch 32, Adam 1e-3) with a
PyTorch ``DataLoader`` and autograd: about 42 s on FACES (2,052 images, correction-net slides).
For a net this small almost all of that time is per-operation overhead, not arithmetic, so this
trainer removes operations:

- every tensor lives on the device for the whole run; an epoch is one ``randperm`` and one
  gather of the inputs and targets, and its mini-batches are views (``unbind``), not a
  ``DataLoader``;
- the dropout masks of an epoch are drawn in one call per layer;
- the weights of all layers live in one flat tensor (with its gradient and the two Adam moments),
  so an Adam step is six element-wise operations on one tensor; each layer's bias is the last
  row of its weight matrix and its input ends in a column of ones, so a layer's forward pass and
  its weight-and-bias gradient are one matrix product each;
- the forward and backward passes are written out (about thirty operations per step, under
  ``torch.inference_mode``); the two softmax heads are computed together by padding the gender
  head to K logits whose bias is −inf (their probability and gradient are exactly 0).

The result is the same optimisation as the reference loop — ``nn.Sequential`` + autograd +
``torch.optim.Adam`` on the same batches and dropout masks — up to float rounding; the tests check
it step by step. The independent ablation trains as one block-diagonal MLP (hidden 2 × 24) whose
off-block gradients are masked to zero, which is exactly two separate MLPs.

Randomness comes from one ``torch.Generator`` seeded with ``options.seed``: per epoch a
permutation of the rows, then the layer-1 and layer-2 dropout masks (:func:`epoch_plan`). Same
seed, same device → same weights.
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import numpy as np
import torch

from llmfair.correction.network import (
    CorrectionModel,
    CorrectionOptions,
    IndependentCorrection,
    JointCorrectionNet,
    mlp_linears,
)
from llmfair.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
"""``torch.optim.Adam`` defaults, as in the official code."""


@dataclass
class TrainResult:
    """What a fit did.

    Attributes:
        epochs_run: epochs trained (fewer than ``options.epochs`` after early stopping).
        best_epoch: the epoch whose weights were kept (1-based; the last one without early stopping).
        steps: optimiser steps taken.
        train_loss: loss of the kept weights on the training rows, eval mode (no dropout).
        validation_loss: the same on the held-out rows (early stopping only).
        validation_history: validation loss after every epoch (early stopping only).
        n_train, n_validation: rows trained on and held out.
        seconds: wall time of the training loop.
    """

    epochs_run: int
    best_epoch: int
    steps: int
    train_loss: float
    validation_loss: Optional[float]
    n_train: int
    n_validation: int
    seconds: float
    validation_history: list[float] = field(default_factory=list)


def stratified_holdout(cells: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of held-out rows: ``round(fraction · n_c)`` random rows of every cell c.

    Used for the early-stopping split, stratified by gender × emotion like the official 80/20
    split. A cell with one row keeps it for training.
    """
    cells = np.asarray(cells)
    n = cells.shape[0]
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(n), cells))
    sorted_cells = cells[order]
    starts = np.flatnonzero(np.r_[True, sorted_cells[1:] != sorted_cells[:-1]])
    counts = np.diff(np.r_[starts, n])
    rank = np.arange(n) - np.repeat(starts, counts)
    quota = np.minimum(np.rint(fraction * counts), counts - 1)
    mask = np.zeros(n, dtype=bool)
    mask[order] = rank < np.repeat(quota, counts)
    return mask


def epoch_plan(
    generator: torch.Generator, n: int, hidden_units: int, dropout: float, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """One epoch's random draws, in this order: the row permutation, then the layer-1 and layer-2
    dropout masks (``(n, hidden_units)``, values 0 or 1/(1−p); row j belongs to the j-th shuffled
    row). ``None`` masks when ``dropout`` is 0."""
    perm = torch.randperm(n, generator=generator, device=device)
    if dropout <= 0.0:
        return perm, None, None
    keep = 1.0 / (1.0 - dropout)
    m1 = torch.rand(n, hidden_units, generator=generator, device=device).ge_(dropout).mul_(keep)
    m2 = torch.rand(n, hidden_units, generator=generator, device=device).ge_(dropout).mul_(keep)
    return perm, m1, m2


class PackedMLP:
    """A correction model's weights as one flat float32 tensor laid out for the training step.

    Layout: ``W1 (D+1, H)``, ``W2 (H+1, H)``, ``W3 (H+1, 2K)``: each is ``Linear.weight.T`` with
    the bias appended as the last row, so a layer is one ``mm`` with an input that ends in a
    column of ones, and its weight *and* bias gradients are one ``mm`` too. Output column j < K
    is emotion logit j; column K + j is gender logit j; the remaining K − 2 gender columns are
    padding (weights 0, bias −inf). For :class:`IndependentCorrection`, H = 2 × hidden and the
    weights are block-diagonal (``grad_mask`` keeps the off-block entries at zero).
    """

    def __init__(self, model: CorrectionModel, device: torch.device) -> None:
        if not isinstance(model, (JointCorrectionNet, IndependentCorrection)):
            raise ConfigError(f"cannot train a {type(model).__name__}; expected a joint or independent correction model")
        k, g, h = model.num_emotions, model.num_genders, model.hidden
        self.num_emotions = k
        self.independent = isinstance(model, IndependentCorrection)
        self.hidden_units = 2 * h if self.independent else h
        d, hu, out = k + g, self.hidden_units, 2 * k
        self.shapes = ((d + 1, hu), (hu + 1, hu), (hu + 1, out))
        self.flat = torch.zeros(sum(math.prod(s) for s in self.shapes), dtype=torch.float32, device=device)
        self.params = self.views(self.flat)
        mask = torch.zeros_like(self.flat)
        mask_views = self.views(mask)
        w1, w2, w3 = self.params
        with torch.no_grad():
            w3[hu].fill_(float("-inf"))
            for (l1, l2, l3), rows, units, outs in self._blocks(model):
                for w, mw, layer, r in ((w1, mask_views[0], l1, rows), (w2, mask_views[1], l2, units)):
                    w[r, units] = layer.weight.detach().T.to(device)
                    w[-1, units] = layer.bias.detach().to(device)
                    mw[r, units] = 1.0
                    mw[-1, units] = 1.0
                w3[units, outs] = l3.weight.detach().T.to(device)
                w3[hu, outs] = l3.bias.detach().to(device)
                mask_views[2][units, outs] = 1.0
                mask_views[2][hu, outs] = 1.0
        self.grad_mask = mask if self.independent else None

    def _blocks(self, model: CorrectionModel) -> list[tuple[tuple[Any, Any, Any], slice, slice, Any]]:
        """(linears, input rows, hidden units, output columns) of each MLP in the packed layout."""
        k, g, h = model.num_emotions, model.num_genders, model.hidden
        if self.independent:
            return [(mlp_linears(model.emotion), slice(0, k), slice(0, h), slice(0, k)),
                    (mlp_linears(model.gender), slice(k, k + g), slice(h, 2 * h), slice(k, k + g))]
        return [(mlp_linears(model.mlp), slice(0, k + g), slice(0, h), slice(0, k + g))]

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """``[W1, W2, W3]`` as views into ``flat``."""
        out, offset = [], 0
        for shape in self.shapes:
            size = math.prod(shape)
            out.append(flat[offset:offset + size].view(shape))
            offset += size
        return out

    def unpack_into(self, model: CorrectionModel) -> None:
        """Copy the packed weights back into the model's Linear layers."""
        w1, w2, w3 = (v.detach().cpu() for v in self.params)
        with torch.no_grad():
            for (l1, l2, l3), rows, units, outs in self._blocks(model):
                dev = l1.weight.device
                for layer, w, r, o in ((l1, w1, rows, units), (l2, w2, units, units), (l3, w3, units, outs)):
                    layer.weight.copy_(w[r, o].T.to(dev))
                    layer.bias.copy_(w[-1, o].to(dev))

    def loss(self, x: torch.Tensor, emotion: torch.Tensor, gender: torch.Tensor, reduction: str) -> float:
        """Eval-mode (no dropout) correction loss of the packed weights on rows ``x`` (n, D)."""
        w1, w2, w3 = self.params
        k = self.num_emotions
        h1 = torch.addmm(w1[-1], x, w1[:-1]).relu_()
        z = torch.addmm(w3[-1], torch.addmm(w2[-1], h1, w2[:-1]).relu_(), w3[:-1])
        total = (torch.nn.functional.cross_entropy(z[:, :k], emotion)
                 + torch.nn.functional.cross_entropy(z[:, k:k + 2], gender))
        return float(total if reduction == "sum" else 0.5 * total)


def _check_training_data(model: CorrectionModel, inputs: np.ndarray, emotion: np.ndarray, gender: np.ndarray) -> None:
    n = inputs.shape[0]
    if inputs.ndim != 2 or inputs.shape[1] != model.num_inputs:
        raise DataError(f"correction inputs have shape {inputs.shape}; expected (n, {model.num_inputs})")
    if n == 0:
        raise DataError("no rows to fit the correction net on")
    if emotion.shape != (n,) or gender.shape != (n,):
        raise DataError(f"targets have shapes {emotion.shape} and {gender.shape}; expected ({n},)")
    if not np.isfinite(inputs).all():
        raise DataError("correction inputs contain NaN or infinite values")
    if emotion.min() < 0 or emotion.max() >= model.num_emotions:
        raise DataError(f"emotion targets must lie in [0, {model.num_emotions}); got {emotion.min()}..{emotion.max()}")
    if gender.min() < 0 or gender.max() >= model.num_genders:
        raise DataError(f"gender targets must lie in [0, {model.num_genders}); got {gender.min()}..{gender.max()}")


def train_correction_net(
    model: CorrectionModel,
    inputs: np.ndarray,
    emotion_targets: np.ndarray,
    gender_targets: np.ndarray,
    options: CorrectionOptions,
    *,
    progress: bool = False,
) -> TrainResult:
    """Fit ``model`` in place on ``inputs`` (n, K+2) with emotion (n,) and gender (n,) class targets.

    Mini-batch Adam on ``CE(emotion) + CE(gender)`` (or their mean, ``options.loss``) for
    ``options.epochs`` epochs (METHODS.md §2.17). With ``options.early_stopping_patience``, a
    stratified ``options.validation_fraction`` of the rows is held out, training stops after that
    many epochs without a lower validation loss, and the best epoch's weights are kept.

    The model's current weights are the starting point (build it with
    :func:`llmfair.correction.network.build_correction_model` for the seeded initialisation).
    """
    inputs = np.ascontiguousarray(inputs, dtype=np.float32)
    emotion_targets = np.asarray(emotion_targets, dtype=np.int64)
    gender_targets = np.asarray(gender_targets, dtype=np.int64)
    _check_training_data(model, inputs, emotion_targets, gender_targets)
    if options.dropout != model.dropout or options.hidden != model.hidden:
        raise ConfigError(f"options (hidden {options.hidden}, dropout {options.dropout}) do not match the model "
                          f"(hidden {model.hidden}, dropout {model.dropout})")
    holdout = np.zeros(inputs.shape[0], dtype=bool)
    if options.early_stopping_patience is not None:
        holdout = stratified_holdout(gender_targets * model.num_emotions + emotion_targets,
                                     options.validation_fraction, options.seed)
        if not holdout.any() or holdout.all():
            raise DataError(f"early stopping needs rows to train on and to validate on; {inputs.shape[0]} rows with "
                            f"validation_fraction={options.validation_fraction} leave {int((~holdout).sum())} and "
                            f"{int(holdout.sum())}")
    try:
        device = torch.device(options.device)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as exc:
        raise ConfigError(f"correction option device={options.device!r} is unusable: {exc}") from None
    model.to(device)
    threads = _single_thread() if device.type == "cpu" else nullcontext()
    with threads, torch.inference_mode():
        result = _train_packed(model, inputs, emotion_targets, gender_targets, holdout, options, device, progress)
    model.eval()
    logger.info("correction net (%s): %d epochs, %d steps in %.2f s; train loss %.4f%s", model.kind,
                result.epochs_run, result.steps, result.seconds, result.train_loss,
                "" if result.validation_loss is None else f", validation loss {result.validation_loss:.4f} "
                f"(best epoch {result.best_epoch})")
    return result


@contextmanager
def _single_thread() -> Iterator[None]:
    """Run the loop with one intra-op thread: the matrices are 32 × 24, so threads only add overhead."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class _StepBuffers:
    """Preallocated tensors (and their views) for mini-batches of one size, reused every step.

    Hidden activations are written into the first H columns of ``h1_aug`` / ``h2_aug``, whose last
    column stays 1 (it multiplies the bias row of the next layer).
    """

    def __init__(self, size: int, hidden_units: int, k: int, device: torch.device) -> None:
        self.h1_aug = torch.ones(size, hidden_units + 1, device=device)
        self.h2_aug = torch.ones(size, hidden_units + 1, device=device)
        self.h1, self.h2 = self.h1_aug[:, :-1], self.h2_aug[:, :-1]
        self.h1_aug_t, self.h2_aug_t = self.h1_aug.t(), self.h2_aug.t()
        self.logits = torch.empty(size, 2 * k, device=device)
        self.z = self.logits.view(size, 2, k)
        self.grad_a2 = torch.empty(size, hidden_units, device=device)
        self.grad_a1 = torch.empty(size, hidden_units, device=device)


@dataclass
class _PackedData:
    """The fitting rows as tensors: inputs with a ones column (it multiplies the bias rows), padded
    one-hot targets (n, 2K) with emotion in [0, K) and gender in [K, K+2), and the held-out rows."""

    x_aug: torch.Tensor
    y: torch.Tensor
    x: torch.Tensor
    e: torch.Tensor
    g: torch.Tensor
    validation: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None


def _packed_data(inputs: np.ndarray, emotion_targets: np.ndarray, gender_targets: np.ndarray, holdout: np.ndarray,
                 k: int, device: torch.device) -> _PackedData:
    train_rows = np.flatnonzero(~holdout)
    x_all = torch.from_numpy(inputs).to(device)
    e_all = torch.from_numpy(emotion_targets).to(device)
    g_all = torch.from_numpy(gender_targets).to(device)
    x_tr, e_tr, g_tr = (t[torch.from_numpy(train_rows).to(device)] for t in (x_all, e_all, g_all))
    n = x_tr.shape[0]
    x_aug = torch.cat([x_tr, torch.ones(n, 1, device=device)], dim=1)
    y_tr = torch.zeros(n, 2 * k, dtype=torch.float32, device=device)
    rows = torch.arange(n, device=device)
    y_tr[rows, e_tr] = 1.0
    y_tr[rows, k + g_tr] = 1.0
    validation = None
    if holdout.any():
        val_rows = torch.from_numpy(np.flatnonzero(holdout)).to(device)
        validation = (x_all[val_rows], e_all[val_rows], g_all[val_rows])
    return _PackedData(x_aug, y_tr, x_tr, e_tr, g_tr, validation)


class _PackedAdam:
    """torch.optim.Adam's update on the one flat parameter tensor, rewritten as
    m / (sqrt(v) + eps·√bc2) · lr·√bc2 / bc1 with preallocated buffers."""

    def __init__(self, flat: torch.Tensor, lr: float, device: torch.device) -> None:
        self.flat, self.lr, self.step = flat, lr, 0
        self.exp_avg, self.exp_avg_sq, self.denom = (torch.zeros_like(flat) for _ in range(3))
        self.beta2_t = torch.tensor(ADAM_BETAS[1], device=device)
        self.one_t = torch.tensor(1.0, device=device)

    def update(self, grads: torch.Tensor) -> None:
        beta1, beta2 = ADAM_BETAS
        self.step += 1
        bias1 = 1.0 - beta1 ** self.step
        bias2_sqrt = math.sqrt(1.0 - beta2 ** self.step)
        self.exp_avg.lerp_(grads, 1.0 - beta1)
        self.exp_avg_sq.mul_(self.beta2_t).addcmul_(grads, grads, value=1.0 - beta2)
        torch.sqrt(self.exp_avg_sq, out=self.denom)
        self.denom.add_(self.one_t, alpha=ADAM_EPS * bias2_sqrt)
        self.flat.addcdiv_(self.exp_avg, self.denom, value=-self.lr * bias2_sqrt / bias1)


def _forward_backward(x, xt, y, m1, m2, c, buf, weights, transposed, grad_views, keep_t) -> None:
    """One batch's forward pass and its gradients, written into ``grad_views`` (no autograd)."""
    w1, w2, w3 = weights
    w2t, w3t = transposed
    gw1, gw2, gw3 = grad_views
    h1, h2, z = buf.h1, buf.h2, buf.z
    # forward: ReLU, then dropout (masks hold 0 or 1/(1-p))
    torch.mm(x, w1, out=h1).relu_()
    if m1 is not None:
        h1.mul_(m1)
    torch.mm(buf.h1_aug, w2, out=h2).relu_()
    if m2 is not None:
        h2.mul_(m2)
    torch.mm(buf.h2_aug, w3, out=buf.logits)
    z.sub_(z.amax(2, keepdim=True)).exp_()
    # d(CE_e + CE_g)/dz = softmax − one-hot per head, times 1/B (and 1/2 for "mean")
    z.div_(z.sum(2, keepdim=True))
    grad_z = buf.logits.sub_(y).mul_(c)
    torch.mm(buf.h2_aug_t, grad_z, out=gw3)
    # h ≥ 0, so sign(h) is 1 exactly where the ReLU passed and dropout kept the unit
    grad_a2 = torch.mm(grad_z, w3t, out=buf.grad_a2).mul_(h2.sign_())
    if keep_t is not None:
        grad_a2.mul_(keep_t)
    torch.mm(buf.h1_aug_t, grad_a2, out=gw2)
    grad_a1 = torch.mm(grad_a2, w2t, out=buf.grad_a1).mul_(h1.sign_())
    if keep_t is not None:
        grad_a1.mul_(keep_t)
    torch.mm(xt, grad_a1, out=gw1)


def _train_packed(
    model: CorrectionModel,
    inputs: np.ndarray,
    emotion_targets: np.ndarray,
    gender_targets: np.ndarray,
    holdout: np.ndarray,
    options: CorrectionOptions,
    device: torch.device,
    progress: bool,
) -> TrainResult:
    from tqdm.auto import tqdm

    k = model.num_emotions
    packed = PackedMLP(model, device)
    w1, w2, w3 = packed.params
    grads = torch.zeros_like(packed.flat)
    grad_views = packed.views(grads)
    adam = _PackedAdam(packed.flat, float(options.lr), device)
    transposed = (w2[:-1].t(), w3[:-1].t())  # weights without their bias rows, for the backward pass
    dropout = float(options.dropout)
    keep_t = torch.tensor(1.0 / (1.0 - dropout), device=device) if dropout > 0 else None
    scale = 1.0 if options.loss == "sum" else 0.5
    batch = int(options.batch_size)
    hidden_units = packed.hidden_units
    data = _packed_data(inputs, emotion_targets, gender_targets, holdout, k, device)
    n, d = data.x_aug.shape

    full, rest = divmod(n, batch)
    sizes = [batch] * full + ([rest] if rest else [])
    scales = {size: torch.tensor(scale / size, device=device) for size in set(sizes)}
    buffers = {size: _StepBuffers(size, hidden_units, k, device) for size in set(sizes)}
    batch_scales, batch_buffers = [scales[size] for size in sizes], [buffers[size] for size in sizes]
    generator = torch.Generator(device=device).manual_seed(int(options.seed))

    def chunks(t: torch.Tensor) -> list[torch.Tensor]:
        head = list(t[: full * batch].view(full, batch, *t.shape[1:]).unbind(0)) if full else []
        return head + ([t[full * batch:]] if rest else [])

    best_loss, best_epoch, best_flat, since_best = math.inf, 0, None, 0
    history: list[float] = []
    started = time.perf_counter()
    epoch = 0
    bar = tqdm(total=options.epochs, desc=f"correction net ({model.kind})", unit="epoch", disable=not progress)
    for epoch in range(1, options.epochs + 1):
        perm, m1_all, m2_all = epoch_plan(generator, n, hidden_units, dropout, device)
        x_ep, y_ep = data.x_aug.index_select(0, perm), data.y.index_select(0, perm)
        xts = ([*x_ep[: full * batch].view(full, batch, d).transpose(1, 2).unbind(0)] if full else []) + (
            [x_ep[full * batch:].t()] if rest else [])
        m1s = chunks(m1_all) if m1_all is not None else [None] * len(sizes)
        m2s = chunks(m2_all) if m2_all is not None else [None] * len(sizes)
        for x, xt, y, m1, m2, c, buf in zip(chunks(x_ep), xts, chunks(y_ep), m1s, m2s, batch_scales, batch_buffers):
            _forward_backward(x, xt, y, m1, m2, c, buf, (w1, w2, w3), transposed, grad_views, keep_t)
            if packed.grad_mask is not None:
                grads.mul_(packed.grad_mask)
            adam.update(grads)
        bar.update(1)
        if data.validation is not None:
            val_loss = packed.loss(*data.validation, options.loss)
            history.append(val_loss)
            if val_loss < best_loss:
                best_loss, best_epoch, best_flat, since_best = val_loss, epoch, packed.flat.clone(), 0
            else:
                since_best += 1
                if since_best >= int(options.early_stopping_patience or 0):
                    break
    bar.close()
    seconds = time.perf_counter() - started
    if best_flat is not None:
        packed.flat.copy_(best_flat)
    else:
        best_epoch = epoch
    packed.unpack_into(model)
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise DataError("the correction net diverged (non-finite weights); lower lr or check the inputs")
    return TrainResult(
        epochs_run=epoch,
        best_epoch=best_epoch,
        steps=adam.step,
        train_loss=packed.loss(data.x, data.e, data.g, options.loss),
        validation_loss=best_loss if data.validation is not None else None,
        n_train=n,
        n_validation=int(holdout.sum()),
        seconds=seconds,
        validation_history=history,
    )
