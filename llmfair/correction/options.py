"""Options of the correction net and its training (no torch import: the command line builds its
``--help`` from them). Documented with the network in :mod:`llmfair.correction.network`."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from llmfair.errors import ConfigError

INPUT_MODES: tuple[str, ...] = ("probs", "logits")
LOSS_REDUCTIONS: tuple[str, ...] = ("sum", "mean")
MODEL_KIND_NAMES: tuple[str, ...] = ("joint", "independent")
"""``joint``: the correction net; ``independent``: the ablation (each task from its own model)."""
LOG_FLOOR = 1e-7
"""Probabilities are floored here before the log of ``input="logits"`` (tables may hold exact 0)."""


@dataclass
class CorrectionOptions:
    """Options of the correction network and its training (defaults: the official code)."""

    hidden: int = field(default=24, metadata={"help": "units in each of the two hidden layers"})
    dropout: float = field(default=0.2, metadata={"help": "dropout after each hidden ReLU"})
    input: str = field(default="logits", metadata={
        "help": "what the net reads from each table: probs, or logits = log(max(prob, 1e-7)) (official code: "
                "logits; slides: probabilities)"})
    loss: str = field(default="sum", metadata={
        "help": "sum or mean of the emotion and gender cross-entropies (official code: sum; slides: mean; a "
                "constant factor 2 that Adam nearly ignores)"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    batch_size: int = field(default=32, metadata={"help": "rows per mini-batch"})
    epochs: int = field(default=500, metadata={"help": "passes over the fitting rows"})
    early_stopping_patience: Optional[int] = field(default=None, metadata={
        "help": "stop after this many epochs without a lower validation loss and keep the best epoch "
                "(None: train all epochs on every fitting row)"})
    validation_fraction: float = field(default=0.2, metadata={
        "help": "with early stopping: fraction of the fitting rows held out, stratified by gender x emotion"})
    seed: int = field(default=0, metadata={"help": "seed of the initial weights, shuffling and dropout"})
    device: str = field(default="cpu", metadata={
        "help": "torch device; the net is tiny, so the CPU is the fast choice"})

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field.

        Raises:
            ConfigError: naming the field, its value and what is allowed.
        """
        if self.input not in INPUT_MODES:
            raise ConfigError(f"correction option input={self.input!r} is invalid: expected one of {list(INPUT_MODES)}")
        if self.loss not in LOSS_REDUCTIONS:
            raise ConfigError(f"correction option loss={self.loss!r} is invalid: expected one of {list(LOSS_REDUCTIONS)}")
        for name in ("hidden", "batch_size", "epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"correction option {name}={value!r} is invalid: must be an integer >= 1")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ConfigError(f"correction option dropout={self.dropout!r} is invalid: must be in [0, 1)")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"correction option lr={self.lr!r} is invalid: must be a positive number")
        patience = self.early_stopping_patience
        if patience is not None and (isinstance(patience, bool) or not isinstance(patience, (int, np.integer))
                                     or patience < 1):
            raise ConfigError(f"correction option early_stopping_patience={patience!r} is invalid: None or an "
                              "integer >= 1")
        if not (isinstance(self.validation_fraction, (int, float)) and 0.0 < self.validation_fraction < 1.0):
            raise ConfigError(f"correction option validation_fraction={self.validation_fraction!r} is invalid: "
                              "must be in (0, 1)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ConfigError(f"correction option seed={self.seed!r} is invalid: must be an integer >= 0")
