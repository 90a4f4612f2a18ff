"""Class probabilities of a speech-LLM classifier on Examples, batch by batch (the scoring path that
prediction tables and the dev-split model selection share)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from llmfair.data.example import Example
from llmfair.errors import ConfigError


@torch.no_grad()
def predict_probs(classifier, collator, examples: Sequence[Example], *, batch_size: int = 8, objective=None,
                  progress: bool = False, desc: str = "predicting") -> np.ndarray:
    """(n, K) float64 class probabilities of ``examples`` (softmax of the predicting logits, rows
    renormalised to sum to 1); the classifier's train/eval mode is restored afterwards.

    ``objective`` supplies the predicting logits (``Objective.predict_logits``); ``progress``
    shows a tqdm bar over the batches (``desc`` labels it).
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1; got {batch_size}")
    was_training = classifier.training
    classifier.eval()
    records = [{"audio": e.audio, "text": e.text, "language": e.language, "modality": e.modality,
                "emotion": e.emotion} for e in examples]
    probs = []
    device = next(classifier.parameters()).device
    starts = range(0, len(records), batch_size)
    try:
        for start in tqdm(starts, desc=desc, unit="batch", disable=not progress, leave=False):
            batch = collator(records[start:start + batch_size])
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            outputs = classifier(**batch)
            logits = objective.predict_logits(outputs) if objective is not None else outputs["logits"]
            probs.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
    finally:
        classifier.train(was_training)
    probs_array = np.concatenate(probs).astype(np.float64)
    probs_array /= probs_array.sum(axis=1, keepdims=True)
    return probs_array
