"""Adversaries and gradient reversal (private), shared by ``adv``/``madv`` and ``two_sided``.

- :func:`gradient_reversal`: the GRL of Ganin & Lempitsky (2015);
- :class:`Adversary`: fairlib's sub-discriminator (Linear → ReLU layers, lazily sized input).
"""
from __future__ import annotations

import torch
from torch import nn


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, strength: float) -> torch.Tensor:
        ctx.strength = strength
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.strength * grad, None


def gradient_reversal(x: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """GRL (Ganin & Lempitsky 2015): the identity forward; the gradient times −``strength`` backward."""
    return _GradientReversal.apply(x, float(strength))


class Adversary(nn.Module):
    """fairlib's sub-discriminator: ``hidden_layers`` × (Linear → ReLU) of ``hidden_size``, then a
    linear output to ``num_targets``; the first layer's input size is read from the first batch."""

    def __init__(self, num_targets: int, hidden_size: int = 300, hidden_layers: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(hidden_layers):
            layers += [nn.LazyLinear(hidden_size) if i == 0 else nn.Linear(hidden_size, hidden_size), nn.ReLU()]
        self.hidden_layers = nn.Sequential(*layers)
        self.output = nn.Linear(hidden_size, num_targets) if hidden_layers else nn.LazyLinear(num_targets)

    def hidden(self, h: torch.Tensor) -> torch.Tensor:
        """The activations before the output layer (h itself without hidden layers)."""
        return self.hidden_layers(h)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.output(self.hidden(h))
