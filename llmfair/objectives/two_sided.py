"""Two-sided speaker–rater fairness with a batch-wise balancing weight α (``two_sided``).

Chien, Upadhyay & Lee, "Balancing speaker-rater fairness for gender-neutral speech emotion
recognition", ICASSP 2024 (METHODS.md §2.15). The paper's objective (its Eqs. 1–3)::

    L_RAT   = L_R − L_Adv + λ_R · L_{D−R}          rater side   (Fair_rat, Chien & Lee 2023)
    L_SPK   = L_S − L_cl  + λ_S · L_{D−S}          speaker side (Fair_spk)
    L_Total = (1/N) Σ_n (0.5 · L_RAT + α_n · L_SPK)_n      α_n ∈ [0, 1], one per batch n

with α_n derived from D_W(μ_SPK, μ_RAT), the Wasserstein distance between the speaker-debiased
and the rater-debiased embeddings of batch n: a larger distance asks for more of the speaker-side
constraint. **RECONSTRUCTED** where the paper is silent (``reconstructed = True``):

Architecture [I]. The paper's figure is not available. Its text: the two one-sided debiased
embeddings come from Fair_rat and Fair_spk, the model is "anchored" on the rater side (fixed weight
0.5) while α sets the speaker side's contribution, and "if the two viewpoints' embeddings are close
… the two-sided model already encodes the speech sample into a jointly fair space; if they are
further, the network should consider the fairness constraint more from that viewpoint". llmfair
stacks the two viewpoints on the model's pooled ``features`` h (the EMO-SUPERB head's 256-d
projector output):

    z_R = ReLU(W_R h + b_R)                 rater-debiased embedding   (the anchor)
    z_S = z_R + W_S z_R + b_S               speaker-debiased embedding (W_S, b_S start at 0)
    C                                       one linear emotion classifier reading both

L_R = CE(C(z_R), y) and L_S = CE(C(z_S), y) on the row's label (the rater's label in per-rater
rows); rater-side terms act on z_R, speaker-side terms on z_S. Sharing C puts both embeddings in
one space, so D_W(z_S, z_R) measures how far the speaker stage has to move the rater-fair
embedding — 0 at the start, large while z_R still carries speaker gender. **Predictions come from
C(z_S)**, the end of the stack (:meth:`TwoSided.predict_logits`; ``predict_from="rater"`` gives
C(z_R)): z_S is a function of z_R, so it can hold no rater-gender information that z_R lacks. The
model's own output layer is not used (its loss enters with weight 0 only so every parameter stays
in the graph, as data-parallel training requires).

Terms:

- L_Adv [V: "a rater-gender detector on the embedding"]: a detector D (one hidden layer) predicts
  the rater's gender from z_R through a gradient-reversal layer (Ganin & Lempitsky 2015) of
  strength ``adversary_strength``: D descends its cross-entropy, E_R receives the reversed gradient
  (it ascends it) — the "− L_Adv" of Eq. 1 for the encoder. Rows of unknown rater gender are left out.
- L_{D−R} [U → I]: "minimizing the distance between gender class in the feature space": the
  distance between the mean z_R of rows labelled by women and of rows labelled by men, as a root
  mean square over dimensions (:func:`centroid_distance`), on standardised z_R by default (see
  ``standardise`` below; on raw z_R the distance was lowered by shrinking z_R into dead ReLUs,
  which collapsed the model on constructed data).
- L_cl [V: supervised contrastive loss (Khosla et al. 2020), positives = same speaker gender]:
  on L2-normalised z_S with temperature τ (0.1); L_cl is *subtracted* (Eq. 2) so that z_S stops
  clustering by gender; ``contrastive_weight`` scales it (the paper: 1). Ascending L_cl without
  limit rewards embeddings whose same-gender pairs are *less* alike than average — gender encoded
  in reverse — and dominated the emotion loss on the built-in corpus; so by default
  (``contrastive_bound``, [I]) the encoder ascends L_cl only up to L₀, its value when every other
  row counts as a positive (the expectation under shuffled genders): the subtracted term is
  min(L_cl − L₀, 0) = min(−(1/τ)·mean_i(mean_{p∈P(i)} ẑ_i·ẑ_p − mean_{a≠i} ẑ_i·ẑ_a), 0), which
  stops at "same-gender pairs are no more alike than any pair". ``contrastive_bound=False`` is the
  paper's literal − L_cl.
- L_{D−S} [V: Wasserstein distance between male and female speaker features; the estimator is I]:
  W1 between the empirical distributions of z_S for male and female speakers, either exact
  per-dimension W1 averaged over dimensions (``wasserstein="per_dim"``, default) or sliced W1
  averaged over ``num_projections`` random unit directions (``"sliced"``). By default
  (``standardise``) z_S — like z_R for L_{D−R} — is first divided by its batch standard deviation
  per dimension (√(var + 10⁻⁶)) over the rows of known gender, so the term is scale-free and cannot
  be lowered by shrinking the embedding towards a constant. The 1-D W1 of two samples of sizes n
  and m is exact: W1 = ∫₀¹ |F⁻¹(u) − G⁻¹(u)| du, a sum over the merged quantile breakpoints
  {i/n} ∪ {j/m} of the sorted values (:func:`wasserstein_1d`; equal to
  ``scipy.stats.wasserstein_distance``).
- α [U → I]: D_W = W1(z_S, z_R) of the batch (same estimator, embeddings detached, averaged over
  data-parallel ranks), mapped to [0, 1] by ``alpha``:
  ``sigmoid`` (default) α = σ((D_W − m)/s) with m, s the bias-corrected exponential running mean
  and standard deviation of D_W over the batches so far (momentum ``alpha_momentum``; α = 0.5 while
  s = 0, e.g. on the first batch); ``minmax`` α = (D_W − min)/(max − min) over the batches so far
  (0.5 while max = min; early large distances keep α low later); ``fixed`` α = ``fixed_alpha``
  (the paper's fixed-α ablation; ``fixed_alpha=1, rater_weight=1`` is its "Basic" joint training).
  α is a weight: no gradient flows through it. The paper's α histogram peaks near 0.25 and 0.75.
- λ_R, λ_S [U]: 10 each by default [I: both distances are per-dimension averages on standardised
  embeddings, so one scale serves both; on the built-in corpus λ_S = 1 left the label bias in place
  in half the seeds and 10 removed it in every seed tried, and without standardisation λ_S ≥ 50
  collapsed z_S to a constant]. The 0.5 on L_RAT is ``rater_weight``.

Data [I]. The inputs arrive as group attributes: the GroupSpec must have ``gender`` (speaker) and
``rater_gender`` keys (option names ``speaker_key``, ``rater_key``). The intended layout is one
training row per (utterance, rater) — label = that rater's emotion — built by
:func:`llmfair.data.ratings.expand_ratings` and :meth:`~llmfair.data.ratings.RaterRows.group_ids`; the
paper's S2 layout (one row per rater-biased utterance with the rater gender it aligns with,
:func:`llmfair.data.ratings.rater_biased_subset`) and rows without a rater (``rater_gender``
unknown: S1) fit the same spec. A term whose groups are absent from a batch (e.g. no male speaker)
is 0 for that batch. The rater side can only remove what the input reveals about who rated a
clip: where raters are assigned to clips at random (as in llmfair's built-in corpus) the detector
stays at chance and L_RAT reduces to L_R. The paper trains five binary one-vs-rest detectors;
llmfair trains one K-way
classifier with the (class-balanced) soft CE of METHODS.md §1.3 (weights from the training class
counts of :meth:`setup`, over the classes present: :func:`present_class_weights`).

Data-parallel: the CE and adversary terms are means over the global batch (counts all-reduced,
scaled like :meth:`Objective.global_mean`); the terms that compare samples (L_cl, L_{D−S},
L_{D−R}) are taken per rank on the local batch, and DDP averages their gradients; D_W is averaged
over ranks so every rank uses the same α and running statistics. In evaluation mode the loss is the
mean CE of the prediction logits and no statistic changes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llmfair.errors import ConfigError, DataError
from llmfair.objectives._adversary import Adversary, gradient_reversal
from llmfair.objectives._groups import gender_codes
from llmfair.objectives._state import SizedBySetup
from llmfair.objectives.base import (
    CrossRankReducer,
    GroupSpec,
    ObjectiveInputs,
    ObjectiveOutput,
    TrainingStats,
    register_objective,
)
from llmfair.ssl.losses import soft_cross_entropy

WASSERSTEIN_METHODS = ("per_dim", "sliced")
ALPHA_MAPS = ("sigmoid", "minmax", "fixed")
PREDICT_FROM = ("speaker", "rater")


# ------------------------------------------------------------------------------------- building blocks
def wasserstein_1d(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Exact W1 between the empirical distributions of each column of ``x`` (n, d) and ``y`` (m, d).

    W1 = ∫₀¹ |F⁻¹(u) − G⁻¹(u)| du. Both quantile functions are steps, constant between consecutive
    breakpoints of {i/n} ∪ {j/m}; the integral is the sum over those intervals of width × |gap|,
    with each sample's sorted value looked up at the interval's midpoint. Differentiable in the
    values (through the sort). Returns (d,).
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise DataError(f"wasserstein_1d: expected (n, d) and (m, d), got {tuple(x.shape)} and {tuple(y.shape)}")
    n, m = x.shape[0], y.shape[0]
    if n == 0 or m == 0:
        raise DataError("wasserstein_1d: both samples need at least one row")
    xs, _ = torch.sort(x, dim=0)
    ys, _ = torch.sort(y, dim=0)
    dtype = torch.float64
    breaks, _ = torch.sort(torch.cat([torch.arange(1, n + 1, dtype=dtype, device=x.device) / n,
                                      torch.arange(1, m + 1, dtype=dtype, device=x.device) / m]))
    widths = torch.diff(breaks, prepend=breaks.new_zeros(1))
    middle = breaks - widths / 2
    ix = torch.clamp(torch.floor(middle * n).long(), 0, n - 1)
    iy = torch.clamp(torch.floor(middle * m).long(), 0, m - 1)
    return (widths.to(x.dtype).unsqueeze(1) * (xs[ix] - ys[iy]).abs()).sum(dim=0)


def wasserstein_distance(x: torch.Tensor, y: torch.Tensor, *, method: str = "per_dim",
                         num_projections: int = 64, generator: torch.Generator | None = None) -> torch.Tensor:
    """W1 between two sets of embeddings (n, d) and (m, d), as a scalar.

    ``per_dim``: the mean over dimensions of the exact 1-D W1 of each coordinate.
    ``sliced``: the mean over ``num_projections`` random unit directions θ of W1(xθ, yθ) (sliced
    Wasserstein-1; directions drawn from ``generator`` or torch's global RNG).
    """
    if method == "per_dim":
        return wasserstein_1d(x, y).mean()
    if method == "sliced":
        theta = torch.randn(x.shape[1], num_projections, generator=generator, dtype=x.dtype,
                            device="cpu" if generator is not None else x.device).to(x.device)
        theta = theta / theta.norm(dim=0, keepdim=True).clamp_min(1e-12)
        return wasserstein_1d(x @ theta, y @ theta).mean()
    raise ConfigError(f"wasserstein method {method!r}; expected one of {WASSERSTEIN_METHODS}")


def supervised_contrastive_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float, *,
                                centered: bool = False) -> torch.Tensor:
    """SupCon (Khosla et al. 2020, L_out): positives of an anchor are the other rows with its label.

    ``L = −mean_{i: |P(i)|>0} (1/|P(i)|) Σ_{p∈P(i)} log(exp(ẑ_i·ẑ_p/τ) / Σ_{a≠i} exp(ẑ_i·ẑ_a/τ))``
    on L2-normalised ẑ. Rows with label −1 are left out entirely; 0 (in the graph) when no anchor has
    a positive.

    ``centered=True`` subtracts L₀, the same loss with every other row counted as a positive — its
    expectation when the labels are shuffled: ``L − L₀ = −(1/τ)·mean_i (mean_{p∈P(i)} ẑ_i·ẑ_p −
    mean_{a≠i} ẑ_i·ẑ_a)``, negative when rows with one label are more alike than rows in general,
    0 when the labels carry no similarity structure.
    """
    keep = labels >= 0
    zk = F.normalize(z[keep], dim=1)
    lab = labels[keep]
    if zk.shape[0] < 2:
        return z.sum() * 0.0
    self_mask = torch.eye(zk.shape[0], dtype=torch.bool, device=z.device)
    logits = (zk @ zk.T / temperature).masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (lab[:, None] == lab[None, :]) & ~self_mask
    n_pos = positive.sum(dim=1)
    anchors = n_pos > 0
    if not bool(anchors.any()):
        return z.sum() * 0.0
    per_anchor = log_prob.masked_fill(~positive, 0.0).sum(dim=1)[anchors] / n_pos[anchors]
    if centered:
        baseline = log_prob.masked_fill(self_mask, 0.0).sum(dim=1)[anchors] / (zk.shape[0] - 1)
        per_anchor = per_anchor - baseline
    return -per_anchor.mean()


def centroid_distance(z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Root mean square over the D dimensions of the difference between the mean rows of code 0 and
    code 1, ‖μ₀ − μ₁‖₂ / √D (0, in the graph, when either is absent; other codes are ignored).

    Per dimension, like the per-dimension W1 of the speaker side, so that λ_R and λ_S weigh terms of
    one scale whatever the embedding size.
    """
    a, b = codes == 0, codes == 1
    if not bool(a.any()) or not bool(b.any()):
        return z.sum() * 0.0
    diff = z[a].mean(dim=0) - z[b].mean(dim=0)
    return torch.sqrt((diff * diff).mean() + 1e-12)


def present_class_weights(class_counts: Any, num_examples: int) -> torch.Tensor:
    """Cui et al. (2019) class-balanced weights with β = (N − 1)/N (METHODS.md §1.3) over the classes
    that have training rows, normalised to sum to their number; classes without rows get 0.

    Giving an absent class a finite weight and normalising over all K (as when the label space has
    classes the training split lacks) would shrink every present class's weight and with it the
    emotion loss against the fairness terms.
    """
    counts = np.asarray(class_counts, dtype=np.float64)
    present = counts > 0
    if not present.any():
        raise DataError("two_sided: the training counts have no class with a row")
    n = max(int(num_examples), 2)
    beta = (n - 1) / n
    weights = np.zeros_like(counts)
    weights[present] = (1.0 - beta) / (1.0 - np.power(beta, counts[present]))
    weights *= present.sum() / weights.sum()
    return torch.as_tensor(weights, dtype=torch.float32)


# ------------------------------------------------------------------------------------- options
@dataclass
class TwoSidedOptions:
    """Options of the two-sided objective (METHODS.md §2.15; reconstruction, see the module docstring)."""

    rater_weight: float = field(default=0.5, metadata={"help": "weight of L_RAT in L_Total (the paper: 0.5)"})
    lambda_rater: float = field(
        default=10.0, metadata={"help": "λ_R: weight of the rater-gender centroid distance (of standardised z_R)"})
    lambda_speaker: float = field(
        default=10.0,
        metadata={"help": "λ_S: weight of the speaker-gender Wasserstein distance (of standardised z_S)"})
    adversary_strength: float = field(
        default=1.0, metadata={"help": "gradient-reversal strength of the rater-gender detector (0: off)"})
    adversary_hidden: int = field(default=128, metadata={"help": "hidden units of the rater-gender detector"})
    contrastive_weight: float = field(
        default=1.0, metadata={"help": "weight of the subtracted supervised contrastive loss L_cl (the paper: 1)"})
    temperature: float = field(default=0.1, metadata={"help": "τ of the supervised contrastive loss"})
    contrastive_bound: bool = field(
        default=True,
        metadata={"help": "ascend L_cl only up to its value under shuffled genders (beyond it, maximising L_cl "
                          "would encode gender in reverse); false: the paper's unbounded − L_cl"})
    wasserstein: str = field(default="per_dim", metadata={"help": f"W1 estimator, one of {WASSERSTEIN_METHODS}"})
    num_projections: int = field(default=64, metadata={"help": "random directions of the sliced W1"})
    standardise: bool = field(
        default=True,
        metadata={"help": "divide the embeddings by their batch standard deviation per dimension before the gender "
                          "distances (scale-free: shrinking an embedding cannot lower them)"})
    alpha: str = field(default="sigmoid", metadata={"help": f"map from D_W to α, one of {ALPHA_MAPS}"})
    fixed_alpha: float = field(default=0.5, metadata={"help": "α of alpha='fixed'"})
    alpha_momentum: float = field(default=0.9, metadata={"help": "momentum of the running D_W statistics (sigmoid)"})
    branch_dim: int = field(default=128, metadata={"help": "size of the speaker and rater viewpoint embeddings"})
    predict_from: str = field(
        default="speaker",
        metadata={"help": "prediction logits: C(z_S) (speaker, the end of the stack) or C(z_R) (rater)"})
    class_balanced: bool = field(
        default=True, metadata={"help": "class-balanced CE (Cui et al. weights from the training class counts)"})
    speaker_key: str = field(default="gender", metadata={"help": "group attribute holding the speaker's gender"})
    rater_key: str = field(default="rater_gender", metadata={"help": "group attribute holding the rater's gender"})

    def __post_init__(self) -> None:
        choices = {"wasserstein": WASSERSTEIN_METHODS, "alpha": ALPHA_MAPS, "predict_from": PREDICT_FROM}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"two_sided option {name}={getattr(self, name)!r}; expected one of {allowed}")
        for name in ("rater_weight", "lambda_rater", "lambda_speaker", "adversary_strength", "contrastive_weight"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"two_sided option {name}={getattr(self, name)}: expected >= 0")
        if not self.temperature > 0:
            raise ConfigError(f"two_sided option temperature={self.temperature}: expected > 0")
        if not 0 <= self.fixed_alpha <= 1:
            raise ConfigError(f"two_sided option fixed_alpha={self.fixed_alpha}: expected 0 <= fixed_alpha <= 1")
        if not 0 <= self.alpha_momentum < 1:
            raise ConfigError(f"two_sided option alpha_momentum={self.alpha_momentum}: expected 0 <= momentum < 1")
        if self.num_projections < 1 or self.branch_dim < 1 or self.adversary_hidden < 1:
            raise ConfigError("two_sided options num_projections, branch_dim and adversary_hidden must be >= 1")


# ------------------------------------------------------------------------------------- objective
@register_objective("two_sided")
class TwoSided(SizedBySetup):
    """``L = rater_weight · L_RAT + α · L_SPK`` per batch (Chien, Upadhyay & Lee 2024, Eq. 3;
    RECONSTRUCTED where the paper is silent — see the module docstring).

    Needs ``features`` and ``labels`` in every batch, a GroupSpec with the speaker and rater gender
    attributes, and :meth:`setup` before training (it builds the K-way classifier and the class
    weights). **Predictions come from** :meth:`predict_logits`.

    Figures: ``alpha``, ``d_w`` (D_W), ``rater_loss`` (L_RAT as the encoder sees it),
    ``speaker_loss`` (L_SPK), ``ce_rater``, ``ce_speaker``, ``adv_loss``/``adv_accuracy`` (the
    detector on known rater genders), ``rater_distance``, ``contrastive``, ``speaker_wasserstein``.
    """

    options_class = TwoSidedOptions
    reconstructed = True
    setup_builds = "the shared emotion classifier and class weights are built there"
    setup_state_prefixes = ("classifier.",)

    def __init__(self, group_spec: GroupSpec, options: TwoSidedOptions | None = None,
                 reducer: CrossRankReducer | None = None) -> None:
        super().__init__(group_spec, options, reducer)
        opts = self.options
        codes = {}
        for side, key in (("speaker", opts.speaker_key), ("rater", opts.rater_key)):
            if key not in group_spec.keys:
                raise ConfigError(
                    f"two_sided needs the group attribute {key!r} ({side} gender); the GroupSpec has "
                    f"{list(group_spec.keys)}. Build per-rater rows with llmfair.data.ratings.expand_ratings(...) "
                    "and their groups with .group_ids()")
            codes[side] = gender_codes(group_spec.column(key))
        self.register_buffer("speaker_of_group", torch.tensor(codes["speaker"], dtype=torch.long), persistent=False)
        self.register_buffer("rater_of_group", torch.tensor(codes["rater"], dtype=torch.long), persistent=False)
        self.num_classes: int | None = None
        self.rater_branch = nn.Sequential(nn.LazyLinear(opts.branch_dim), nn.ReLU())
        self.speaker_branch = nn.Linear(opts.branch_dim, opts.branch_dim)
        nn.init.zeros_(self.speaker_branch.weight)
        nn.init.zeros_(self.speaker_branch.bias)
        self.classifier: nn.Module | None = None
        self.rater_detector = Adversary(2, hidden_size=opts.adversary_hidden, hidden_layers=1)
        self.register_buffer("class_weights", None)
        # running statistics of D_W: count, EMA of D_W and of D_W², min, max
        self.register_buffer("dw_stats", torch.tensor([0.0, 0.0, 0.0, math.inf, -math.inf], dtype=torch.float64))

    def setup_sizes(self, stats: TrainingStats) -> dict[str, int]:
        """The classifier depends on K only (setup again with the same K changes nothing)."""
        return {"classes": int(stats.num_classes)}

    def build(self, stats: TrainingStats, device: torch.device) -> None:
        """Build the shared K-way classifier and the class-balanced weights (once, from :meth:`setup`)."""
        self.classifier = nn.Linear(self.options.branch_dim, self.num_classes).to(device)
        if self.options.class_balanced:
            counts = np.asarray(stats.class_group_counts).sum(axis=1)
            self.class_weights = present_class_weights(counts, stats.num_examples).to(device)

    # ------------------------------------------------------------------ pieces
    def embeddings(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_S, z_R): z_R = ReLU(W_R h + b_R), z_S = z_R + W_S z_R + b_S (see the module docstring)."""
        h = features.float() if features.dtype in (torch.float16, torch.bfloat16) else features
        z_r = self.rater_branch(h)
        return z_r + self.speaker_branch(z_r), z_r

    def predict_logits(self, outputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Logits of the two-sided model: C(z_S) (``predict_from="speaker"``, default) or C(z_R)."""
        self.require_setup()
        features = outputs.get("features")
        if features is None:
            raise DataError("two_sided predicts from the model's 'features'; the model returned none")
        z_s, z_r = self.embeddings(features)
        return self.classifier(z_s if self.options.predict_from == "speaker" else z_r)

    def _ce(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return soft_cross_entropy(logits, labels, class_weights=self.class_weights)

    def _distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return wasserstein_distance(x, y, method=self.options.wasserstein, num_projections=self.options.num_projections)

    def _standardised(self, z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """z divided by √(var + 10⁻⁶) per dimension, the variance over the rows of known gender, when
        ``standardise`` is on (gradients flow through it: the distances are scale-free). The 10⁻⁶
        keeps the gradient finite for a constant dimension (a ReLU unit dead on the whole batch),
        where that of the plain standard deviation is 0/0."""
        if not self.options.standardise or not bool((codes >= 0).any()):
            return z
        return z / torch.sqrt(z[codes >= 0].var(dim=0, unbiased=False) + 1e-6)

    @torch.no_grad()
    def alpha_from_distance(self, d_w: float, *, update: bool = True) -> float:
        """α ∈ [0, 1] for a batch's D_W (``update`` folds D_W into the running statistics first)."""
        opts = self.options
        if opts.alpha == "fixed":
            return float(opts.fixed_alpha)
        stats = self.dw_stats
        if update:
            m = opts.alpha_momentum
            stats[0] += 1
            stats[1] = m * stats[1] + (1 - m) * d_w
            stats[2] = m * stats[2] + (1 - m) * d_w * d_w
            stats[3] = min(float(stats[3]), d_w)
            stats[4] = max(float(stats[4]), d_w)
        count = float(stats[0])
        if count == 0:
            return 0.5
        if opts.alpha == "minmax":
            low, high = float(stats[3]), float(stats[4])
            return 0.5 if not high > low else float(min(max((d_w - low) / (high - low), 0.0), 1.0))
        correction = 1.0 - opts.alpha_momentum ** count
        mean = float(stats[1]) / correction
        var = float(stats[2]) / correction - mean * mean
        if var <= 1e-12 * (mean * mean + 1e-12):  # no spread yet (e.g. the first batch)
            return 0.5
        score = (d_w - mean) / math.sqrt(var)
        return float(0.5 * (1.0 + math.tanh(0.5 * score)))  # σ(score)

    # ------------------------------------------------------------------ loss
    def forward(self, inputs: ObjectiveInputs) -> ObjectiveOutput:
        self.require_setup()
        if inputs.features is None or inputs.labels is None:
            raise DataError("two_sided needs the model's 'features' and the batch 'labels'")
        opts = self.options
        labels = inputs.labels.to(inputs.features.device)
        if not self.training:
            logits = self.predict_logits({"features": inputs.features})
            loss, value = self.global_mean(self._ce(logits, labels))
            return ObjectiveOutput(loss=loss, figures={"two_sided_ce": value})

        groups = inputs.group_ids.to(self.speaker_of_group.device)
        speaker = self.speaker_of_group[groups].to(inputs.features.device)
        rater = self.rater_of_group[groups].to(inputs.features.device)
        z_s, z_r = self.embeddings(inputs.features)
        ce_s = self._ce(self.classifier(z_s), labels)
        ce_r = self._ce(self.classifier(z_r), labels)
        # rater-gender detector behind a gradient-reversal layer (mean over known rater genders)
        known = (rater >= 0).to(z_r.dtype)
        det_logits = self.rater_detector(gradient_reversal(z_r, opts.adversary_strength))
        det_ce = F.cross_entropy(det_logits, rater.clamp_min(0), reduction="none") * known
        correct = (det_logits.detach().argmax(-1) == rater).to(z_r.dtype) * known
        d_w_local = self._distance(z_s.detach(), z_r.detach())
        # one all-reduce for every statistic that spans the global batch
        totals = self.reducer.sum(torch.stack([
            ce_s.detach().sum(), ce_r.detach().sum(), ce_s.new_tensor(float(ce_s.numel())), known.sum(),
            det_ce.detach().sum(), correct.sum(), d_w_local.to(ce_s.dtype)]).double()).tolist()
        ce_s_total, ce_r_total, n_global, n_known, det_total, correct_total, d_w_sum = totals
        world = self.reducer.world_size
        n_global = max(n_global, 1.0)
        scale = world / n_global  # W · Σ_local / N_global: DDP's averaging yields the global-batch gradient
        adv = det_ce.sum() * (world / max(n_known, 1.0))

        rater_distance = centroid_distance(self._standardised(z_r, rater), rater)
        contrastive = supervised_contrastive_loss(z_s, speaker, opts.temperature)
        if opts.contrastive_bound:
            ascended = torch.clamp(supervised_contrastive_loss(z_s, speaker, opts.temperature, centered=True), max=0.0)
        else:
            ascended = contrastive
        male, female = speaker == 1, speaker == 0
        if bool(male.any()) and bool(female.any()):
            scaled = self._standardised(z_s, speaker)
            speaker_w = self._distance(scaled[male], scaled[female])
        else:
            speaker_w = z_s.sum() * 0.0

        d_w = d_w_sum / world
        alpha = self.alpha_from_distance(d_w, update=True)
        rater_loss = ce_r.sum() * scale + adv + opts.lambda_rater * rater_distance
        speaker_loss = ce_s.sum() * scale - opts.contrastive_weight * ascended + opts.lambda_speaker * speaker_w
        loss = opts.rater_weight * rater_loss + alpha * speaker_loss + 0.0 * inputs.per_sample_loss.sum()

        adv_value = det_total / n_known if n_known > 0 else 0.0
        distance_value, ascended_value, w_value = (float(t.detach()) for t in (rater_distance, ascended, speaker_w))
        figures = {
            "alpha": alpha, "d_w": d_w, "ce_rater": ce_r_total / n_global, "ce_speaker": ce_s_total / n_global,
            "rater_distance": distance_value, "contrastive": float(contrastive.detach()), "speaker_wasserstein": w_value,
            "rater_loss": ce_r_total / n_global - adv_value + opts.lambda_rater * distance_value,
            "speaker_loss": ce_s_total / n_global - opts.contrastive_weight * ascended_value
            + opts.lambda_speaker * w_value,
        }
        if n_known > 0:
            figures.update({"adv_loss": adv_value, "adv_accuracy": correct_total / n_known})
        return ObjectiveOutput(loss=loss, figures=figures)
