"""Per-sample losses and class logits from a speech LLM without full-vocabulary logits.

``Qwen2AudioForConditionalGeneration.forward`` (like the other families' forwards) applies
``lm_head`` at every position and returns one token-mean loss (QWEN2AUDIO.md §12): hundreds of MB
of logits per batch on a 150k vocabulary, and no per-sample losses for a fairness objective.
``score_batch`` instead runs the inner model (audio tower → projector → language model; the same
modules, LoRA adapters included; the family's ``SpeechBackbone.hidden_states``), takes the final
hidden state at the answer position, and applies only the K label rows of ``lm_head``:
``h @ W[label_ids].T (+ b[label_ids])``. The result equals the full forward's logits at that
position restricted to the label ids.

Position ids are derived from the attention mask (``cumsum - 1``, as Hugging Face generation does)
so that a left-padded row sees the same rotary positions as the same sample alone; this makes
batched scores equal batch-size-1 scores.

Works on the plain model and on a peft-wrapped one (the adapters live inside the same modules).
Call it from inside a module's ``forward`` when training under DDP/DeepSpeed; do not pass it the
DDP wrapper (its hooks need the wrapper's own ``forward``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from llmfair.errors import ConfigError
from llmfair.speechllm._models import position_ids_from_mask, unwrap_model
from llmfair.speechllm.backbones import backbone_of
from llmfair.speechllm.encoder_cache import EncoderCache, hidden_states_from_audio_features
from llmfair.speechllm.verbalizer import Verbalizer

__all__ = ["ScoreOutput", "last_hidden_states", "position_ids_from_mask", "score_batch", "unwrap_model"]


@dataclass
class ScoreOutput:
    """What ``score_batch`` returns.

    Attributes:
        per_sample_loss: (B,) float32; verbalizer cross-entropy over the K classes, or the mean
            token cross-entropy over the answer tokens for ``answer_loss="lm"``. ``None`` when the
            batch has no labels.
        class_logits: (B, K) float32 logits of the label words' first tokens at the answer position.
        pooled: (B, H) final hidden state at the answer position (model dtype): the feature that
            adversarial / disentangling objectives read.
    """

    per_sample_loss: torch.Tensor | None
    class_logits: torch.Tensor
    pooled: torch.Tensor

    def as_dict(self) -> dict[str, torch.Tensor | None]:
        """The mapping ``FairTrainer`` expects from a model's forward:
        ``per_sample_loss``, ``logits`` (the class logits) and ``features``."""
        return {"per_sample_loss": self.per_sample_loss, "logits": self.class_logits, "features": self.pooled}


def last_hidden_states(model: torch.nn.Module, batch: Mapping[str, Any], *,
                       encoder_cache: EncoderCache | None = None) -> torch.Tensor:
    """Final-layer hidden states (B, T, H) of the language model (after its final norm).

    With ``encoder_cache`` the audio tower is not run: cached encoder outputs go through the
    projector and are scattered into the ``<|AUDIO|>`` positions (``encoder_cache.py``).
    """
    base = unwrap_model(model)
    if encoder_cache is not None:
        features = encoder_cache.get_or_compute(model, batch)
        return hidden_states_from_audio_features(model, batch, features)
    for key in ("input_ids", "attention_mask", "input_features", "feature_attention_mask"):
        if key not in batch:
            raise ConfigError(f"batch lacks {key!r}; build batches with SpeechLLMCollator (audio passed as audio=)")
    return backbone_of(base).hidden_states(base, batch)


def _lm_answer_loss(hidden: torch.Tensor, labels: torch.Tensor, lm_head: torch.nn.Module) -> torch.Tensor:
    """Per-sample mean token cross-entropy over the answer tokens (labels != -100), with
    ``lm_head`` applied at those positions only."""
    targets = labels[:, 1:].to(hidden.device)
    mask = targets != -100
    counts = mask.sum(-1)
    if bool((counts == 0).any()):
        raise ConfigError("answer_loss='lm' needs at least one answer token per row in 'labels'")
    rows = torch.nonzero(mask)[:, 0]
    logits = lm_head(hidden[:, :-1][mask]).float()
    token_loss = F.cross_entropy(logits, targets[mask], reduction="none")
    sums = torch.zeros(hidden.shape[0], dtype=token_loss.dtype, device=hidden.device).index_add(0, rows, token_loss)
    return sums / counts.to(sums.dtype)


def score_batch(model: torch.nn.Module, batch: Mapping[str, Any], verbalizer: Verbalizer, *,
                answer_loss: str | None = None, soft_labels: bool | None = None,
                encoder_cache: EncoderCache | None = None) -> ScoreOutput:
    """Per-sample loss (B,), class logits (B, K) and the pooled answer-position state (B, H).

    Args:
        model: a speech LLM of a registered family (e.g. ``Qwen2AudioForConditionalGeneration``)
            or a peft model around one.
        batch: from ``SpeechLLMCollator`` (model inputs, ``answer_position``, ``emotion``,
            optional ``emotion_dist`` and ``labels``). Extra keys are ignored.
        verbalizer: label words; its first-token ids pick the rows of ``lm_head``.
        answer_loss: ``"verbalizer"`` or ``"lm"``; default ``"lm"`` when the batch has ``labels``.
        soft_labels: use ``emotion_dist`` (soft cross-entropy) for the verbalizer loss; default:
            when the batch has it.
        encoder_cache: skip the audio tower by reading cached encoder outputs (frozen tower only).
    """
    if answer_loss is None:
        answer_loss = "lm" if "labels" in batch else "verbalizer"
    if answer_loss not in ("verbalizer", "lm"):
        raise ConfigError(f"unknown answer_loss {answer_loss!r}; expected 'verbalizer' or 'lm'")
    base = unwrap_model(model)
    lm_head = base.get_output_embeddings()
    hidden = last_hidden_states(model, batch, encoder_cache=encoder_cache)
    if "answer_position" in batch:
        position = batch["answer_position"].to(hidden.device)
    else:
        position = torch.full((hidden.shape[0],), hidden.shape[1] - 1, dtype=torch.long, device=hidden.device)
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), position]
    class_logits = verbalizer.class_logits(pooled, lm_head)
    if answer_loss == "lm":
        if "labels" not in batch:
            raise ConfigError("answer_loss='lm' needs batch['labels'] (SpeechLLMCollator(answer_loss='lm'))")
        loss = _lm_answer_loss(hidden, batch["labels"], lm_head)
    else:
        use_soft = ("emotion_dist" in batch) if soft_labels is None else soft_labels
        if use_soft:
            if "emotion_dist" not in batch:
                raise ConfigError("soft_labels=True but the batch has no 'emotion_dist'")
            loss = verbalizer.per_sample_loss(class_logits, batch["emotion_dist"].to(class_logits.device))
        elif "emotion" in batch:
            loss = verbalizer.per_sample_loss(class_logits, batch["emotion"].to(class_logits.device))
        else:
            loss = None
    return ScoreOutput(per_sample_loss=loss, class_logits=class_logits, pooled=pooled)

