"""The EMO-SUPERB downstream head on frozen, mean-pooled SSL features (METHODS.md §1.1).

EMO-SUPERB's CREMA-D config (``emo-superb/config_CREMAD.yaml``, ``expert.py``, s3prl's
``downstream/model.py``) is: the s3prl upstream layer combination, a projector
``Linear(D → 256)`` applied to every frame, ``UtteranceLevel`` with ``MeanPooling`` (a plain
mean over the clip's frames, no parameters, no activation) and a ``Linear(256 → K)`` post-net.
Nothing in that stack is non-linear, so with features that are already mean-pooled per layer
(:mod:`llmfair.ssl.transformers_ssl`) the head computes exactly what EMO-SUPERB computes:

    x      = Σ_l softmax(a)_l · h̄_l        (learnable layer weights a, s3prl style, initialised to 0)
    f      = W_p x + b_p                    (B, 256): ``features``, the representation adversaries see
    logits = W_o f + b_o                    (B, K)

[I] The s3prl layer weighting is presumed (METHODS.md §1.1); s3prl's optional per-layer layer norm
is not reproduced (it does not commute with mean pooling). With ``layer_weighting=False`` a single
``layer`` is used instead; 2-D features (speaker embeddings, acoustic sets) skip the layer step.

The base loss is one of ``ce`` (cross-entropy on class indices), ``soft_ce`` (cross-entropy with
label distributions) and ``cb_soft_ce`` (the class-balanced soft cross-entropy of METHODS.md §1.3,
with weights from :func:`llmfair.ssl.losses.class_balanced_weights` on the training labels).
``forward`` returns ``{"per_sample_loss", "logits", "features"}``, the contract
:class:`llmfair.training.FairTrainer` and every objective consume.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from llmfair.errors import ConfigError, DataError
from llmfair.ssl.losses import soft_cross_entropy

LOSSES = ("ce", "soft_ce", "cb_soft_ce")


@dataclass
class HeadOptions:
    """Options of the EMO-SUPERB head."""

    projector_dim: int = field(default=256, metadata={"help": "projector output size (EMO-SUPERB: 256)"})
    loss: str = field(default="cb_soft_ce", metadata={"help": f"base loss, one of {LOSSES}"})
    layer_weighting: bool = field(
        default=True, metadata={"help": "learn a softmax weighting over the layers of per-layer features"})
    layer: int | None = field(
        default=None, metadata={"help": "use this layer only (needs layer_weighting false); negative counts from the end"})

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ConfigError(f"head: loss {self.loss!r} is not one of {LOSSES}")
        if self.projector_dim < 1:
            raise ConfigError(f"head: projector_dim must be positive, got {self.projector_dim}")
        if self.layer_weighting and self.layer is not None:
            raise ConfigError("head: set either layer_weighting or a fixed layer, not both")


class EmoSuperbHead(nn.Module):
    """Layer weighting → projector Linear(D, 256) → Linear(256, K); see the module docstring.

    Args:
        input_dim: D, the feature size of one layer.
        num_classes: K.
        num_layers: L+1 when the features are per-layer (B, L+1, D); None for (B, D) features.
        options: :class:`HeadOptions`.
        class_weights: (K,) weights for ``cb_soft_ce`` (required there, refused elsewhere).
    """

    def __init__(self, input_dim: int, num_classes: int, *, num_layers: int | None = None,
                 options: HeadOptions | None = None, class_weights: torch.Tensor | None = None) -> None:
        super().__init__()
        self.options = options or HeadOptions()
        if input_dim < 1 or num_classes < 2:
            raise ConfigError(f"head: need input_dim >= 1 and num_classes >= 2, got {input_dim}, {num_classes}")
        self.input_dim, self.num_classes, self.num_layers = input_dim, num_classes, num_layers
        opts = self.options
        if num_layers is not None:
            if num_layers < 1:
                raise ConfigError(f"head: num_layers must be positive, got {num_layers}")
            if not opts.layer_weighting and opts.layer is None:
                raise ConfigError("head: per-layer features need layer_weighting or a fixed layer")
            if opts.layer is not None and not -num_layers <= opts.layer < num_layers:
                raise ConfigError(f"head: layer {opts.layer} is out of range for {num_layers} layers")
        elif opts.layer is not None:
            raise ConfigError("head: a fixed layer needs per-layer features (num_layers)")
        self.layer_logits = (nn.Parameter(torch.zeros(num_layers))
                             if num_layers is not None and opts.layer_weighting else None)
        self.projector = nn.Linear(input_dim, opts.projector_dim)
        self.output = nn.Linear(opts.projector_dim, num_classes)
        if opts.loss == "cb_soft_ce":
            if class_weights is None:
                raise ConfigError("head: loss 'cb_soft_ce' needs class_weights (class_balanced_weights(train labels))")
            class_weights = torch.as_tensor(class_weights, dtype=torch.float32)
            if class_weights.shape != (num_classes,):
                raise ConfigError(f"head: class_weights has shape {tuple(class_weights.shape)}, expected ({num_classes},)")
            self.register_buffer("class_weights", class_weights.clone())
        else:
            if class_weights is not None:
                raise ConfigError(f"head: class_weights are only used by loss 'cb_soft_ce', not {opts.loss!r}")
            self.class_weights = None

    @property
    def layer_weights(self) -> torch.Tensor | None:
        """softmax of the layer logits (sums to 1), or None without learnable weighting."""
        return None if self.layer_logits is None else torch.softmax(self.layer_logits, dim=0)

    def combine_layers(self, features: torch.Tensor) -> torch.Tensor:
        """(B, L+1, D) → (B, D) by the learnt weighting or the fixed layer; (B, D) passes through."""
        if self.num_layers is None:
            if features.ndim != 2 or features.shape[1] != self.input_dim:
                raise DataError(f"head: expected features (B, {self.input_dim}), got {tuple(features.shape)}")
            return features
        expected = (self.num_layers, self.input_dim)
        if features.ndim != 3 or tuple(features.shape[1:]) != expected:
            raise DataError(f"head: expected per-layer features (B, {expected[0]}, {expected[1]}), "
                            f"got {tuple(features.shape)}")
        if self.layer_logits is None:
            return features[:, self.options.layer]
        return torch.einsum("bld,l->bd", features, self.layer_weights.to(features.dtype))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The per-sample base loss (B,) of the configured kind."""
        kind = self.options.loss
        if kind == "ce":
            if labels.ndim != 1 or labels.is_floating_point():
                raise DataError(f"head: loss 'ce' needs integer class labels (B,), got {labels.dtype} "
                                f"{tuple(labels.shape)}; use 'soft_ce' for label distributions")
            if bool((labels < 0).any()) or bool((labels >= self.num_classes).any()):
                raise DataError(f"head: class labels must be in [0, {self.num_classes}); got "
                                f"{sorted(set(labels[(labels < 0) | (labels >= self.num_classes)].tolist()))} "
                                "(-1 marks an utterance without a majority class: use a soft loss)")
            return nn.functional.cross_entropy(logits, labels.long(), reduction="none")
        if labels.ndim == 1 and bool(((labels < 0) | (labels >= self.num_classes)).any()):
            raise DataError(f"head: class labels must be in [0, {self.num_classes})")
        return soft_cross_entropy(logits, labels, class_weights=self.class_weights, reduction="none")

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None, **_: Any) -> dict[str, torch.Tensor]:
        """``{"per_sample_loss" (B,), "logits" (B, K), "features" (B, projector_dim), "inputs"}``;
        ``per_sample_loss`` only when ``labels`` are given; ``inputs`` are the frozen input features
        (auxiliary models such as LfF's biased model train on them). Extra batch keys are ignored."""
        projected = self.projector(self.combine_layers(features.to(self.projector.weight.dtype)))
        logits = self.output(projected)
        out = {"logits": logits, "features": projected, "inputs": features.detach()}
        if labels is not None:
            out["per_sample_loss"] = self.loss(logits, labels.to(logits.device))
        return out
