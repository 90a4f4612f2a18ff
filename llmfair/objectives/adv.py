"""ADV and MADV: adversarial removal of gender from the model's representation.

**Reconstruction** (METHODS.md §2.9–2.10): EMO-Debias lists "ADV" and "MADV" but the method text
was not available; llmfair implements the standard forms, with fairlib (``Libr-AI/fairlib``
``networks/adv``) as the reference implementation.

ADV — an adversary A reads the model's pooled representation h (``features``: the 256-d projector
output on the EMO-SUPERB head) through a gradient-reversal layer (GRL, Ganin & Lempitsky 2015) and
predicts the speaker's gender g. The saddle problem ``min_{E,C} max_A L_SER(C(h), y) − λ·CE(A(h), g)``
becomes one loss::

    L = L_ERM + CE(A(GRL_λ(h)), g)

A descends on its CE; the encoder receives −λ times that gradient, i.e. it ascends the adversary's
loss. Speakers of ``unknown`` gender count towards L_ERM and never towards the adversary's CE (a
mean over the known-gender rows of the global batch).

MADV — fairlib's "DAdv" (Han, Baldwin & Cohn, EACL 2021, diverse adversaries): N adversaries and a
difference loss pushing their hidden representations apart::

    L = L_ERM + Σ_j CE(A_j(GRL_{λ/N}(h)), g) + λ_diverse · Σ_{j<k} DiffLoss(H_j, H_k)

Each A_j descends its own CE, the encoder receives −(λ/N) Σ_j of their gradients (fairlib subtracts
the mean adversary loss scaled by λ from the task loss), and the difference loss — computed on the
adversaries' hidden activations of the *detached* h, so it trains only the adversaries, as in
fairlib where it enters the discriminator update — is ``DiffLoss(D1, D2) = mean((D̂1 D̂2ᵀ)²)``
with rows L2-normalised (norms detached, + 1e-6; fairlib ``customized_loss.py``, from Domain
Separation Networks). fairlib adds it once per ordered pair inside each discriminator's own update,
which gives each adversary the gradient of λ_diverse·DiffLoss once per pair: the sum over j < k
here does the same in one joint loss.

Defaults: λ = 1, adversary = 2 hidden layers of 300 with ReLU (fairlib ``base_options.py``);
MADV N = 3 (fairlib's DAdv examples) and λ_diverse = 1 [I]. fairlib's option default is 0, its docs'
example uses 100 and its tuning grids span 0.1–1000. In the joint update here, λ_diverse ≥ 10 kills
the ReLU adversaries on llmfair's synthetic test data (all-zero hidden activations make DiffLoss 0,
and dead adversaries never learn gender), so the default stays at 1; set 100 to follow the docs.
fairlib trains the discriminators with their own Adam optimiser in alternating steps; llmfair
updates them jointly in the trainer's optimiser (GRL form). The adversary's input size is read
from the first batch (lazy parameters).

``target="group"`` makes the adversary predict the group id instead of gender (e.g. inferred
clusters or pseudo-gender groups, which carry no ``gender`` attribute).

Data-parallel: the adversaries' CE is a mean over the known-gender rows of the global batch
(count all-reduced, loss scaled like :meth:`Objective.global_mean`); the difference loss is taken
per rank and its gradients averaged over ranks by the trainer.

Pitfall (METHODS.md §2.9): with a frozen backbone and a 2-layer head, the only representation is
the projector output; the adversary can only remove what that linear map keeps.

Measured limitation (llmfair's synthetic data, ``tests/test_methods_aux.py`` builders): the joint
update reliably fools the adversaries it trains against — their gender accuracy over the second
half of training falls from ~0.98 (same adversaries, strength 0, i.e. ERM) to 0.49–0.55, with
snapshots anywhere between 0.35 (flipped) and 0.65 — but it does *not* reliably remove
linearly decodable gender from the 256-d features. A logistic-regression probe fitted afterwards
still reads gender at 0.97 when the inputs are 64-d (the projector is injective, nothing can be
removed without collapsing it) and at 0.865–0.870 against ERM's 0.884–0.893 with 512-d inputs
(3 seeds). The encoder escapes by flipping the gender direction faster than the adversary follows
(simultaneous gradient descent–ascent), the leakage Elazar & Goldberg (EMNLP 2018) report for
adversarial removal. Judge ADV/MADV by the fairness metrics of their predictions, not by the
adversaries' training accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

import torch
import torch.nn.functional as F
from torch import nn

from llmfair.errors import ConfigError, DataError
from llmfair.objectives._adversary import Adversary, gradient_reversal
from llmfair.objectives._groups import gender_codes
from llmfair.objectives.base import (
    CrossRankReducer,
    GroupSpec,
    Objective,
    ObjectiveInputs,
    ObjectiveOutput,
    register_objective,
)

__all__ = [
    "AdvOptions", "Adversarial", "Adversary", "MAdvOptions", "MultiAdversarial", "difference_loss", "gradient_reversal",
]


# ------------------------------------------------------------------------------------- building blocks
def difference_loss(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``mean((D̂1 D̂2ᵀ)²)`` over all row pairs, rows L2-normalised with detached norms (+1e-6).

    The soft orthogonality penalty of Domain Separation Networks (Bousmalis et al. 2016) as used by
    fairlib's DAdv between two adversaries' hidden activations (B, H1) and (B, H2).
    """
    a = first.flatten(1)
    b = second.flatten(1)
    a = a / (a.norm(dim=1, keepdim=True).detach() + 1e-6)
    b = b / (b.norm(dim=1, keepdim=True).detach() + 1e-6)
    return (a @ b.T).pow(2).mean()


# ------------------------------------------------------------------------------------- options
_TARGETS = ("gender", "group")


@dataclass
class AdvOptions:
    """Options of ADV (reconstruction, METHODS.md §2.9)."""

    strength: float = field(default=1.0, metadata={"help": "λ: gradient-reversal strength (fairlib adv_lambda)"})
    target: str = field(default="gender", metadata={"help": "what the adversary predicts: gender or group (group id)"})
    hidden_size: int = field(default=300, metadata={"help": "hidden units per adversary layer (fairlib: 300)"})
    hidden_layers: int = field(default=2, metadata={"help": "hidden layers of an adversary (fairlib: 2)"})

    def __post_init__(self) -> None:
        if self.strength < 0:
            raise ConfigError(f"adversarial option strength={self.strength}: expected >= 0")
        if self.target not in _TARGETS:
            raise ConfigError(f"adversarial option target={self.target!r}: expected one of {_TARGETS}")
        if self.hidden_size < 1 or self.hidden_layers < 0:
            raise ConfigError(f"adversarial options hidden_size={self.hidden_size}, hidden_layers={self.hidden_layers}: "
                              "expected hidden_size >= 1 and hidden_layers >= 0")


@dataclass
class MAdvOptions(AdvOptions):
    """Options of MADV (reconstruction, METHODS.md §2.10; fairlib DAdv)."""

    num_adversaries: int = field(default=3, metadata={"help": "N adversaries (fairlib adv_num_subDiscriminator)"})
    diverse_lambda: float = field(
        default=1.0, metadata={"help": "λ_diverse: weight of the difference loss between adversaries (0: off)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_adversaries < 1:
            raise ConfigError(f"madv option num_adversaries={self.num_adversaries}: expected >= 1")
        if self.diverse_lambda < 0:
            raise ConfigError(f"madv option diverse_lambda={self.diverse_lambda}: expected >= 0")
        if self.diverse_lambda > 0 and self.hidden_layers == 0:
            raise ConfigError("madv: the difference loss compares hidden activations; set hidden_layers >= 1 "
                              "or diverse_lambda 0")


# ------------------------------------------------------------------------------------- objectives
@register_objective("adv")
class Adversarial(Objective):
    """ADV: ``L = L_ERM + CE(A(GRL_λ(features)), gender)`` (reconstruction; see the module docstring).

    Figures: ``erm_loss``, ``adv_loss`` (the adversaries' mean CE on known-gender rows),
    ``adv_accuracy`` (their mean accuracy there), and for MADV ``diversity``.
    """

    options_class = AdvOptions
    reconstructed = True

    def __init__(self, group_spec: GroupSpec, options: AdvOptions | None = None,
                 reducer: CrossRankReducer | None = None) -> None:
        super().__init__(group_spec, options, reducer)
        opts = self.options
        if opts.target == "gender":
            if "gender" not in group_spec.keys:
                raise ConfigError(f"{self.name or 'adv'}: target 'gender' needs a 'gender' group attribute (groups have "
                                  f"{list(group_spec.keys)}); use target 'group' for inferred groups")
            codes = gender_codes(group_spec.column("gender"))
            num_targets = 2
        else:
            codes = list(range(group_spec.num_groups))
            num_targets = group_spec.num_groups
        if num_targets < 2:
            raise ConfigError(f"{self.name or 'adv'}: the adversary needs at least 2 target values, got {num_targets}")
        self.register_buffer("target_of_group", torch.tensor(codes, dtype=torch.long), persistent=False)
        self.adversaries = nn.ModuleList(
            Adversary(num_targets, opts.hidden_size, opts.hidden_layers) for _ in range(self.num_adversaries))

    @property
    def num_adversaries(self) -> int:
        return int(getattr(self.options, "num_adversaries", 1))

    @property
    def diverse_lambda(self) -> float:
        return float(getattr(self.options, "diverse_lambda", 0.0))

    def adversary_targets(self, group_ids: torch.Tensor) -> torch.Tensor:
        """The adversary's label per row (gender code or group id); −1 where gender is unknown."""
        return self.target_of_group[group_ids.to(self.target_of_group.device)]

    def diversity(self, h: torch.Tensor) -> torch.Tensor:
        """Σ_{j<k} DiffLoss(H_j, H_k) of the adversaries' hidden activations of ``h``."""
        hidden = [adversary.hidden(h) for adversary in self.adversaries]
        total = h.new_zeros(())
        for a, b in combinations(hidden, 2):
            total = total + difference_loss(a, b)
        return total

    def forward(self, inputs: ObjectiveInputs) -> ObjectiveOutput:
        if inputs.features is None:
            raise DataError(f"{self.name}: the adversary reads the model's 'features'; the model returned none")
        h = inputs.features
        erm, erm_value = self.global_mean(inputs.per_sample_loss)
        target = self.adversary_targets(inputs.group_ids).to(h.device)
        known = (target >= 0).to(h.dtype)
        n_known = float(self.reducer.sum(known.sum()))
        scale = self.reducer.world_size / max(n_known, 1.0)

        reversed_h = gradient_reversal(h, self.options.strength / self.num_adversaries)
        logits = torch.stack([adversary(reversed_h) for adversary in self.adversaries])  # (N, B, T)
        n, b, t = logits.shape
        ce = F.cross_entropy(logits.reshape(n * b, t), target.clamp_min(0).repeat(n), reduction="none").view(n, b)
        # masked sums keep every adversary in the graph even when a batch has no known gender
        adv_term = (ce * known).sum() * scale
        correct = ((logits.detach().argmax(-1) == target).to(h.dtype) * known).sum(dim=1)
        stats = self.reducer.sum(torch.stack([(ce.detach() * known).sum(), correct.sum()]))
        figures = {"erm_loss": erm_value}
        if n_known > 0:
            figures["adv_loss"] = float(stats[0]) / (n * n_known)
            figures["adv_accuracy"] = float(stats[1]) / (n * n_known)
        loss = erm + adv_term
        if self.num_adversaries > 1 and self.diverse_lambda > 0:
            diverse = self.diversity(h.detach())
            loss = loss + self.diverse_lambda * diverse
            figures["diversity"] = float(diverse.detach())
        return ObjectiveOutput(loss=loss, figures=figures)


@register_objective("madv")
class MultiAdversarial(Adversarial):
    """MADV: N adversaries behind GRL_{λ/N} plus λ_diverse · Σ_{j<k} DiffLoss (reconstruction of
    EMO-Debias "MADV" as fairlib's DAdv; see the module docstring)."""

    options_class = MAdvOptions
    reconstructed = True
