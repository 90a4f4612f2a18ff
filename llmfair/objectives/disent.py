"""DisEnt: Learning Debiased Representation via Disentangled Feature Augmentation (Lee, Kim, Lee, Lee &
Choo, NeurIPS 2021), for a head on frozen features.

Two representations are learnt side by side: *intrinsic* features z_i — here the model's own
``features`` (the EMO-SUPERB head's 256-d projector output, so the model's layer weighting and
projector play E_i) — and *bias* features z_b from the objective's encoder E_b (a small MLP on the
frozen input features). Two linear classifiers read the concatenation ``z = [z_i; z_b]``: C_i (the
predictor) and C_b (the bias classifier). Per step (METHODS.md §2.8;
``kakaoenterprise/Learning-Debiased-Disentangled`` ``learner.py`` ``train_ours``):

- stop-gradients keep the parts apart: C_i sees ``[z_i; sg(z_b)]``, C_b sees ``[sg(z_i); z_b]``;
- per-sample EMAs (α = 0.7) of both classifiers' CE, class-wise max normalisation and
  ``W = ê_b / (ê_b + ê_i + 1e-8)``, exactly as in LfF (:mod:`llmfair.objectives.lff`; the shared
  pieces are :mod:`llmfair.objectives._bias_model`);
- ``L_dis = mean(W · CE(C_i([z_i; sg z_b]), y)) + λ_dis · mean(GCE_q(C_b([sg z_i; z_b]), y))``;
- once ``swap_after_steps`` training steps are done, a random permutation π of the batch gives
  ``z̃_b = z_b[π]``, ``ỹ = y[π]`` and
  ``L_swap = mean(W · CE(C_i([z_i; sg z̃_b]), y)) + λ_swap_b · mean(GCE_q(C_b([sg z_i; z̃_b]), ỹ))``;
- ``L = L_dis + λ_swap · L_swap`` (L_swap = 0 before the swap starts).

**Predictions come from C_i**: :meth:`DisEnt.predict_logits` returns ``C_i([z_i; z_b])`` — the
model's own output layer is not used (its base loss enters the objective with weight 0, only so
that every model parameter takes part in the graph, as data-parallel training requires).

Defaults and adaptation [I] (METHODS.md §2.8, §6):

- q = 0.7, EMA α = 0.7, λ_dis = λ_swap_b = λ_swap = 1 (reference ``train.py``; its scripts use
  1–10 for λ_dis and λ_swap_b and λ_swap = 0.1 on BFFHQ).
- The reference swaps after ``curr_step`` = 10,000 of 50,000 iterations; llmfair recommends 10 % of
  the training steps and takes an absolute count, ``swap_after_steps`` = 1,500 by default (≈ 10 %
  of EMO-SUPERB's 15,510 CREMA-D steps). Steps are counted as training forward passes of the
  objective (micro-batches: multiply by the gradient-accumulation steps) and are checkpointed.
- E_b = layer weighting → Linear(D → 256) → ReLU → Linear(256 → 256) → LayerNorm, reading the
  frozen ``inputs`` (the model's detached ``features`` when it returns none); C_i and C_b are
  Linear(dim z_i + 256 → K). Input sizes are read from the first batch (lazy parameters). The
  LayerNorm (``bias_norm``, on by default) is llmfair's: without it, Adam grows z_b without bound on
  an easily separable bias (z_b norms of ~400 against ~12 for z_i after 300 steps on the test data),
  C_i's small weights on z_b then dominate its logits and the predictions swing between seeds; the
  reference's ResNet features come out of batch normalisation, its MNIST MLP has none.
- CE is the soft cross-entropy (labels may be distributions; the class-wise maximum uses the
  majority class), class-balanced by default with the Cui et al. weights of METHODS.md §1.3
  computed in :meth:`DisEnt.setup` from the training class counts
  (``TrainingStats.class_group_counts``; β = (N − 1)/N). For single-label training data these equal
  the EMO-SUPERB weights; for distributional labels n_c counts majority-class rows instead of rows
  with y_c > 1/K.
- In evaluation mode (dev loss) the loss is the mean CE of C_i([z_i; z_b]) — no EMA, no swap.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from llmfair.errors import ConfigError, DataError
from llmfair.objectives._bias_model import (
    WEIGHT_EPS,
    LazyLayerMLP,
    PerSampleLossEMA,
    auxiliary_input,
    generalized_cross_entropy,
)
from llmfair.objectives._groups import majority_class
from llmfair.objectives._state import SizedBySetup, require_batch_fields
from llmfair.objectives.base import (
    CrossRankReducer,
    GroupSpec,
    ObjectiveInputs,
    ObjectiveOutput,
    TrainingStats,
    register_objective,
)
from llmfair.ssl.losses import soft_cross_entropy


@dataclass
class DisEntOptions:
    """Options of DisEnt (Lee et al. 2021; METHODS.md §2.8)."""

    q: float = field(default=0.7, metadata={"help": "GCE exponent q of the bias classifier (reference: 0.7)"})
    ema_alpha: float = field(default=0.7, metadata={"help": "α of the per-sample loss EMA (reference: 0.7)"})
    lambda_dis: float = field(default=1.0, metadata={"help": "λ_dis: weight of the bias classifier's GCE in L_dis"})
    lambda_swap_b: float = field(default=1.0, metadata={"help": "λ_swap_b: weight of the swapped GCE in L_swap"})
    lambda_swap: float = field(default=1.0, metadata={"help": "λ_swap: weight of L_swap in the total loss"})
    swap_after_steps: int = field(
        default=1500,
        metadata={"help": "training steps (objective forward passes) before the feature swap starts; "
                          "recommended: 10% of the training steps"})
    bias_hidden: int = field(default=256, metadata={"help": "hidden size of the bias encoder E_b"})
    bias_dim: int = field(default=256, metadata={"help": "size of the bias features z_b"})
    bias_norm: bool = field(
        default=True, metadata={"help": "LayerNorm on the bias features z_b (keeps their scale bounded)"})
    class_balanced: bool = field(
        default=True, metadata={"help": "class-balanced CE (Cui et al. weights from the training class counts)"})

    def __post_init__(self) -> None:
        if not 0 < self.q <= 1:
            raise ConfigError(f"disent option q={self.q}: expected 0 < q <= 1")
        if not 0 <= self.ema_alpha < 1:
            raise ConfigError(f"disent option ema_alpha={self.ema_alpha}: expected 0 <= ema_alpha < 1")
        for name in ("lambda_dis", "lambda_swap_b", "lambda_swap"):
            if getattr(self, name) < 0:
                raise ConfigError(f"disent option {name}={getattr(self, name)}: expected >= 0")
        if self.swap_after_steps < 0:
            raise ConfigError(f"disent option swap_after_steps={self.swap_after_steps}: expected >= 0")
        if self.bias_hidden < 1 or self.bias_dim < 1:
            raise ConfigError(f"disent options bias_hidden={self.bias_hidden}, bias_dim={self.bias_dim}: "
                              "expected positive sizes")


def class_balanced_weights_from_counts(class_counts: Any, num_examples: int) -> torch.Tensor:
    """Cui et al. (2019) weights from per-class counts with β = (N − 1)/N, normalised to sum to K
    (METHODS.md §1.3), over the classes present in training. A class without training rows gets
    weight 0 (its weight would be infinite); normalising over present classes only keeps absent
    classes from shrinking every present class's weight."""
    raw = np.asarray(class_counts, dtype=np.float64)
    present = raw > 0
    n = max(int(num_examples), 2)
    beta = (n - 1) / n
    weights = np.zeros_like(raw)
    weights[present] = (1.0 - beta) / (1.0 - np.power(beta, raw[present]))
    total = weights.sum()
    scale = present.sum() / total if total > 0 else 0.0
    return torch.as_tensor(weights * scale, dtype=torch.float32)


@register_objective("disent")
class DisEnt(SizedBySetup):
    """Disentangled feature augmentation: W-weighted intrinsic classifier C_i on [z_i; sg z_b], GCE
    bias classifier C_b on [sg z_i; z_b], and swapped bias features after ``swap_after_steps``.

    See the module docstring for the loss (Lee et al. 2021, Eqs. 1–4). Needs ``labels``,
    ``sample_index`` and the model's ``features`` in the batch, and :meth:`setup` before training.
    **Predictions come from C_i([z_i; z_b])** (:meth:`predict_logits`), not from the model's logits.

    Figures: ``w_mean``, ``intrinsic_loss`` (mean CE of C_i), ``bias_loss`` (mean CE of C_b),
    ``swap`` (1 once the swap is active).
    """

    options_class = DisEntOptions
    setup_builds = "its encoder, classifiers and per-sample EMA are built there"
    setup_state_prefixes = ("ema.", "bias_encoder.", "intrinsic_classifier.")

    def __init__(self, group_spec: GroupSpec, options: DisEntOptions | None = None,
                 reducer: CrossRankReducer | None = None) -> None:
        super().__init__(group_spec, options, reducer)
        self.ema: PerSampleLossEMA | None = None
        self.bias_encoder: LazyLayerMLP | None = None
        self.intrinsic_classifier: nn.Module | None = None
        self.bias_classifier: nn.Module | None = None
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.register_buffer("class_weights", None)

    def build(self, stats: TrainingStats, device: torch.device) -> None:
        """Size the EMAs, build E_b, C_i and C_b for K classes and the class-balanced weights
        (:meth:`setup` calls this once; a second setup with the same N and K changes nothing)."""
        opts = self.options
        self.ema = PerSampleLossEMA(2, int(stats.num_examples), opts.ema_alpha).to(device)
        self.bias_encoder = LazyLayerMLP((opts.bias_hidden, opts.bias_dim), activation=True,
                                         output_norm=opts.bias_norm).to(device)
        self.intrinsic_classifier = nn.LazyLinear(self.num_classes).to(device)
        self.bias_classifier = nn.LazyLinear(self.num_classes).to(device)
        if opts.class_balanced:
            counts = np.asarray(stats.class_group_counts).sum(axis=1)
            self.register_buffer("class_weights",
                                 class_balanced_weights_from_counts(counts, stats.num_examples).to(device))

    @property
    def swap_active(self) -> bool:
        """Whether the feature swap is on (``swap_after_steps`` training steps are done)."""
        return int(self.steps_done) >= self.options.swap_after_steps

    def bias_features(self, inputs: torch.Tensor | None, features: torch.Tensor | None) -> torch.Tensor:
        """z_b = E_b(frozen inputs), or E_b(sg features) when the model returns no inputs."""
        self.require_setup()
        return self.bias_encoder(auxiliary_input(inputs, features, "disent"))

    def permutation(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """π for the feature swap: a fresh uniform permutation of the batch (torch's global RNG)."""
        return torch.randperm(batch_size, device=device)

    def _ce(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return soft_cross_entropy(logits, labels, class_weights=self.class_weights)

    def _gce(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return generalized_cross_entropy(logits, labels, self.options.q, class_weights=self.class_weights)

    def terms(self, inputs: ObjectiveInputs, *, update: bool = True) -> dict[str, torch.Tensor]:
        """The per-sample pieces of the loss (each (B,)); ``update`` folds the batch into the EMAs.

        Keys: ``ce_intrinsic`` = CE(C_i([z_i; sg z_b]), y), ``gce_bias`` = GCE(C_b([sg z_i; z_b]), y),
        ``ce_bias`` (detached CE of C_b), ``weight`` W (detached), and once the swap is active
        ``swap_ce_intrinsic`` = CE(C_i([z_i; sg z_b[π]]), y), ``swap_gce_bias`` =
        GCE(C_b([sg z_i; z_b[π]]), y[π]) and ``permutation`` π.
        """
        self.require_setup()
        require_batch_fields(inputs, "disent", ("labels", "sample_index", "features"))
        z_i = inputs.features
        labels = inputs.labels.to(z_i.device)
        classes = majority_class(labels)
        z_b = self.bias_features(inputs.inputs, z_i).to(z_i.dtype)

        logits_i = self.intrinsic_classifier(torch.cat([z_i, z_b.detach()], dim=1))
        logits_b = self.bias_classifier(torch.cat([z_i.detach(), z_b], dim=1))
        ce_i = self._ce(logits_i, labels)
        ce_b = self._ce(logits_b.detach(), labels)

        index = inputs.sample_index.to(self.ema.seen.device)
        if update:
            self.ema.update(torch.stack([ce_b, ce_i.detach()]), index, classes, self.reducer)
        e_b, e_i = self.ema.normalised(index, classes, self.num_classes).to(ce_i.dtype)
        weight = (e_b / (e_b + e_i + WEIGHT_EPS)).detach()
        out = {"ce_intrinsic": ce_i, "gce_bias": self._gce(logits_b, labels), "ce_bias": ce_b, "weight": weight}

        if self.swap_active:
            perm = self.permutation(z_i.shape[0], z_i.device)
            z_b_swap, labels_swap = z_b[perm], labels[perm]
            swap_i = self.intrinsic_classifier(torch.cat([z_i, z_b_swap.detach()], dim=1))
            swap_b = self.bias_classifier(torch.cat([z_i.detach(), z_b_swap], dim=1))
            out.update({"swap_ce_intrinsic": self._ce(swap_i, labels), "swap_gce_bias": self._gce(swap_b, labels_swap),
                        "permutation": perm})
        return out

    def forward(self, inputs: ObjectiveInputs) -> ObjectiveOutput:
        opts = self.options
        if not self.training:
            require_batch_fields(inputs, "disent", ("labels", "features"))
            logits = self.predict_logits({"features": inputs.features, "inputs": inputs.inputs})
            loss, value = self.global_mean(self._ce(logits, inputs.labels.to(logits.device)))
            return ObjectiveOutput(loss=loss, figures={"intrinsic_loss": value})
        t = self.terms(inputs, update=True)
        w = t["weight"]
        per_sample = w * t["ce_intrinsic"] + opts.lambda_dis * t["gce_bias"]
        swapping = "permutation" in t
        if swapping:
            per_sample = per_sample + opts.lambda_swap * (w * t["swap_ce_intrinsic"]
                                                          + opts.lambda_swap_b * t["swap_gce_bias"])
        # the model's own output layer is unused (predictions come from C_i); weight 0 keeps it in the graph
        per_sample = per_sample + 0.0 * inputs.per_sample_loss
        loss, _ = self.global_mean(per_sample)
        self.steps_done += 1
        return ObjectiveOutput(loss=loss, figures={
            "w_mean": float(w.mean()), "intrinsic_loss": float(t["ce_intrinsic"].detach().mean()),
            "bias_loss": float(t["ce_bias"].mean()), "swap": float(swapping)})

    def predict_logits(self, outputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """C_i([z_i; z_b]): z_i = ``outputs["features"]``, z_b = E_b(``outputs["inputs"]``) (or of the
        detached features when the model returns no inputs, as in training). Shape (B, K)."""
        self.require_setup()
        features = outputs.get("features")
        if features is None:
            raise DataError("disent predicts from the model's 'features' (z_i); the model returned none")
        z_b = self.bias_features(outputs.get("inputs"), features).to(features.dtype)
        return self.intrinsic_classifier(torch.cat([features, z_b], dim=1))
