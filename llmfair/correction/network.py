"""The cross-modal correction network and its independent-correction ablation (METHODS.md §2.17).

Dominguez-Catena, Paternain, Jurio & Galar (IEEE CAI; correction-net slides; official code
``arin-upna/crossmodal_bias_mitigation/notebooks/model_train.ipynb``) put a small MLP on top of two
*frozen* models — a gender classifier and an emotion recogniser — that re-predicts both tasks from
the concatenation of both models' outputs. There is no fairness term: when the two models fail in
complementary ways (the gender model on some emotions, the emotion model on one gender), each
model's output tells the network when the other one is unreliable.

Architecture (official code, [V]): ``Linear(K+2 → 24) → ReLU → Dropout(0.2) → Linear(24 → 24) →
ReLU → Dropout(0.2) → Linear(24 → K+2)``; the output is split into K emotion logits and 2 gender
logits, each with its own softmax / cross-entropy ("independent softmax in each set", slides).
Inputs here are ordered ``[emotion (K), gender (female, male)]``, as the code splits its outputs.

The ablation :class:`IndependentCorrection` (official code, [V]) corrects each model from its own
outputs only: two separate MLPs ``K → 24 → 24 → K`` and ``2 → 24 → 24 → 2``. It has the same
capacity per task and no access to the other modality, so any gain of the joint net beyond it is
the cross-modal gain.

Where the sources differ (METHODS.md §2.17):

- **Inputs.** The slides say "probability outputs"; the code feeds logits. Predictions tables
  store probabilities, so ``input="logits"`` means log-probabilities ``log(max(p, 1e-7))``:
  the logits up to a per-row constant per head. The default is ``"logits"``, as in the code that
  produced the published numbers.
- **Loss.** The slides average the two cross-entropies; the code sums them. Under Adam the factor
  2 between them changes almost nothing (Adam's update is invariant to a constant scale of the
  loss except through ``eps``), so the default is the code's ``"sum"``: the published numbers
  come from it.
"""
from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from llmfair.correction.options import INPUT_MODES, LOG_FLOOR, LOSS_REDUCTIONS, CorrectionOptions
from llmfair.errors import ConfigError

__all__ = [
    "INPUT_MODES", "LOG_FLOOR", "LOSS_REDUCTIONS", "MODEL_KINDS", "NUM_GENDERS", "CorrectionModel", "CorrectionOptions",
    "IndependentCorrection", "JointCorrectionNet", "build_correction_model", "correction_loss", "correction_mlp",
    "mlp_linears", "predict_probs", "prepare_inputs",
]

NUM_GENDERS = 2


def correction_mlp(inputs: int, hidden: int, outputs: int, dropout: float) -> nn.Sequential:
    """``Linear → ReLU → Dropout → Linear → ReLU → Dropout → Linear`` (official code's layer list)."""
    return nn.Sequential(
        nn.Linear(inputs, hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, outputs),
    )


def mlp_linears(mlp: nn.Sequential) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
    """The three Linear layers of a :func:`correction_mlp`, in order."""
    layers = tuple(m for m in mlp if isinstance(m, nn.Linear))
    if len(layers) != 3:
        raise ConfigError(f"a correction MLP has 3 Linear layers; this one has {len(layers)}")
    return layers  # type: ignore[return-value]


def _reset_linear(layer: nn.Linear, generator: torch.Generator) -> None:
    """``nn.Linear.reset_parameters`` drawn from ``generator`` (kaiming-uniform a=√5, uniform bias)."""
    nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
    bound = 1.0 / math.sqrt(layer.in_features) if layer.in_features > 0 else 0.0
    nn.init.uniform_(layer.bias, -bound, bound, generator=generator)


class CorrectionModel(nn.Module):
    """Base class: maps ``[emotion (K), gender (2)]`` inputs to (emotion logits, gender logits)."""

    kind: ClassVar[str] = ""

    def __init__(self, num_emotions: int, hidden: int = 24, dropout: float = 0.2) -> None:
        super().__init__()
        if num_emotions < 2:
            raise ConfigError(f"the correction net needs at least 2 emotion classes, got {num_emotions}")
        self.num_emotions = int(num_emotions)
        self.num_genders = NUM_GENDERS
        self.hidden = int(hidden)
        self.dropout = float(dropout)

    @property
    def num_inputs(self) -> int:
        """K + 2."""
        return self.num_emotions + self.num_genders

    def reset_parameters(self, seed: int) -> None:
        """Initialise every Linear as PyTorch does, from a generator seeded with ``seed``."""
        generator = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    _reset_linear(module, generator)

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        raise TypeError(f"{type(self).__name__} must implement forward")


class JointCorrectionNet(CorrectionModel):
    """The correction net: one MLP ``K+2 → hidden → hidden → K+2`` over both models' outputs.

    ``forward`` returns the emotion logits ``(n, K)`` and the gender logits ``(n, 2)``; each is
    normalised by its own softmax (two independent heads, not one softmax over K+2).
    """

    kind = "joint"

    def __init__(self, num_emotions: int, hidden: int = 24, dropout: float = 0.2) -> None:
        super().__init__(num_emotions, hidden, dropout)
        self.mlp = correction_mlp(self.num_inputs, self.hidden, self.num_inputs, self.dropout)

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(emotion logits, gender logits) from ``[emotion, gender]`` inputs of shape (n, K+2)."""
        out = self.mlp(inputs)
        return out[:, : self.num_emotions], out[:, self.num_emotions:]


class IndependentCorrection(CorrectionModel):
    """The ablation: an emotion MLP ``K → hidden → hidden → K`` that reads only the emotion model's
    outputs and a gender MLP ``2 → hidden → hidden → 2`` that reads only the gender model's."""

    kind = "independent"

    def __init__(self, num_emotions: int, hidden: int = 24, dropout: float = 0.2) -> None:
        super().__init__(num_emotions, hidden, dropout)
        self.emotion = correction_mlp(self.num_emotions, self.hidden, self.num_emotions, self.dropout)
        self.gender = correction_mlp(self.num_genders, self.hidden, self.num_genders, self.dropout)

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(emotion logits, gender logits); each MLP sees only its own model's columns."""
        return self.emotion(inputs[:, : self.num_emotions]), self.gender(inputs[:, self.num_emotions:])


MODEL_KINDS: dict[str, type[CorrectionModel]] = {"joint": JointCorrectionNet, "independent": IndependentCorrection}
"""Correction model classes by name (``--kind`` on the command line)."""


def build_correction_model(kind: str, num_emotions: int, options: CorrectionOptions | None = None) -> CorrectionModel:
    """A freshly initialised ``joint`` or ``independent`` model (weights drawn from ``options.seed``).

    Raises:
        ConfigError: an unknown ``kind``.
    """
    options = options or CorrectionOptions()
    if kind not in MODEL_KINDS:
        raise ConfigError(f"unknown correction model kind {kind!r}; expected one of {sorted(MODEL_KINDS)}")
    model = MODEL_KINDS[kind](num_emotions, hidden=options.hidden, dropout=options.dropout)
    model.reset_parameters(options.seed)
    return model


def prepare_inputs(emotion_probs: np.ndarray, gender_probs: np.ndarray, mode: str = "logits") -> np.ndarray:
    """The network input ``[emotion (K), gender (2)]`` as float32 (n, K+2).

    ``mode="probs"`` passes the probabilities; ``mode="logits"`` takes ``log(max(p, 1e-7))``
    (log-probabilities: the models' logits up to a per-row constant in each head).
    """
    if mode not in INPUT_MODES:
        raise ConfigError(f"input mode {mode!r} is invalid: expected one of {list(INPUT_MODES)}")
    emotion_probs = np.asarray(emotion_probs, dtype=np.float64)
    gender_probs = np.asarray(gender_probs, dtype=np.float64)
    if emotion_probs.ndim != 2 or gender_probs.shape != (emotion_probs.shape[0], NUM_GENDERS):
        raise ConfigError(f"inputs need emotion probabilities (n, K) and gender probabilities (n, 2); got "
                          f"{emotion_probs.shape} and {gender_probs.shape}")
    x = np.concatenate([emotion_probs, gender_probs], axis=1)
    if mode == "logits":
        x = np.log(np.maximum(x, LOG_FLOOR))
    return x.astype(np.float32)


def correction_loss(
    emotion_logits: torch.Tensor,
    gender_logits: torch.Tensor,
    emotion_targets: torch.Tensor,
    gender_targets: torch.Tensor,
    reduction: str = "sum",
) -> torch.Tensor:
    """``CE(emotion) + CE(gender)`` (``"sum"``, official code) or their average (``"mean"``, slides).

    Each cross-entropy is the batch mean of ``nn.CrossEntropyLoss`` (log-softmax over its own head).
    """
    if reduction not in LOSS_REDUCTIONS:
        raise ConfigError(f"loss reduction {reduction!r} is invalid: expected one of {list(LOSS_REDUCTIONS)}")
    total = nn.functional.cross_entropy(emotion_logits, emotion_targets) + nn.functional.cross_entropy(
        gender_logits, gender_targets)
    return total if reduction == "sum" else 0.5 * total


@torch.no_grad()
def predict_probs(model: CorrectionModel, inputs: np.ndarray, *, batch_size: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Corrected (emotion (n, K), gender (n, 2)) probabilities, float64, in eval mode (no dropout)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    emotion, gender = [], []
    try:
        for start in range(0, max(len(inputs), 1), batch_size):
            x = torch.as_tensor(np.asarray(inputs[start:start + batch_size], dtype=np.float32), device=device)
            e, g = model(x)
            emotion.append(torch.softmax(e.double(), dim=1).cpu().numpy())
            gender.append(torch.softmax(g.double(), dim=1).cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(emotion), np.concatenate(gender)
