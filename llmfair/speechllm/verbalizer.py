"""The verbalizer: emotion classes read from the language model's next-token logits.

Each class has a label word (by default the class name). The model answers after
``<|im_start|>assistant\\n``; the logit of each word's *first* token at that position is the
class logit, a softmax over the K class logits gives class probabilities, and the cross-entropy
over them is the per-sample loss (the "verbalizer" of pattern-exploiting training, Schick &
Schütze, 2021, eq. 1-2: ``p(y|x) = softmax_y(s(v(y)|x))`` over the verbalised labels only).

Scoring only K rows of ``lm_head`` at one position (``scoring.py``) is what keeps the per-sample
losses of a 7B model cheap and exact enough for fairness objectives (QWEN2AUDIO.md §12). The first
tokens must therefore be distinct: two words that share their first token would have identical
logits, and the construction fails with a ConfigError naming both words and the token.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from llmfair.errors import ConfigError

ANSWER_PREFIX = "<|im_start|>assistant\n"
"""What precedes the answer in the rendered prompt (``prompts.PromptTemplate.render``) of the Qwen
families; a family with another chat format passes its ``ChatFormat.answer_prefix``."""


class Verbalizer:
    """Label words, their token ids, and the class-logit / loss computations.

    Args:
        label_space_classes: the ordered class names (``LabelSpace.classes``).
        tokenizer: the processor's tokenizer.
        words: label word per class, as a sequence aligned with the classes or a mapping
            ``{class: word}`` (classes not named keep their own name). Default: the class names.
        answer_prefix: what precedes the answer in the prompt (the family's
            ``ChatFormat.answer_prefix``; default Qwen's ``<|im_start|>assistant\\n``).

    Attributes:
        classes, words: tuples aligned with each other.
        answer_token_ids: per class, the full token ids of the word as it appears after
            ``answer_prefix`` (no leading space).
        label_token_ids: (K,) long tensor, the first token of each word.

    Raises:
        ConfigError: words that are empty, of the wrong number, or that share a first token.
    """

    def __init__(self, label_space_classes: Sequence[str], tokenizer,
                 words: Sequence[str] | Mapping[str, str] | None = None, *, answer_prefix: str = ANSWER_PREFIX) -> None:
        classes = tuple(label_space_classes)
        if not classes:
            raise ConfigError("verbalizer needs at least one class")
        if words is None:
            resolved = classes
        elif isinstance(words, Mapping):
            unknown = sorted(set(words) - set(classes))
            if unknown:
                raise ConfigError(f"verbalizer words name unknown class(es) {unknown}; classes: {list(classes)}")
            resolved = tuple(words.get(c, c) for c in classes)
        else:
            resolved = tuple(words)
            if len(resolved) != len(classes):
                raise ConfigError(f"verbalizer has {len(resolved)} words for {len(classes)} classes {list(classes)}")
        for cls, word in zip(classes, resolved):
            if not isinstance(word, str) or not word.strip() or word != word.strip():
                raise ConfigError(f"verbalizer word for class {cls!r} must be a non-empty word without surrounding "
                                  f"spaces, got {word!r}")
        self.classes: tuple[str, ...] = classes
        self.words: tuple[str, ...] = resolved
        self.tokenizer = tokenizer
        self.answer_prefix = answer_prefix
        self.answer_token_ids: tuple[tuple[int, ...], ...] = tuple(self._answer_ids(w) for w in resolved)
        first = [ids[0] for ids in self.answer_token_ids]
        seen: dict[int, int] = {}
        for k, tid in enumerate(first):
            if tid in seen:
                j = seen[tid]
                token = tokenizer.convert_ids_to_tokens(tid)
                raise ConfigError(
                    f"verbalizer words {resolved[j]!r} (class {classes[j]!r}) and {resolved[k]!r} (class {classes[k]!r}) "
                    f"share their first token {token!r} (id {tid}); their class logits would be identical. "
                    f"Choose label words that start with different tokens")
            seen[tid] = k
        self.label_token_ids = torch.tensor(first, dtype=torch.long)

    def _answer_ids(self, word: str) -> tuple[int, ...]:
        """Token ids of ``word`` as the continuation of the answer prefix."""
        prefix = self.tokenizer(self.answer_prefix, add_special_tokens=False)["input_ids"]
        full = self.tokenizer(self.answer_prefix + word, add_special_tokens=False)["input_ids"]
        if full[: len(prefix)] != prefix or len(full) == len(prefix):
            raise ConfigError(f"verbalizer word {word!r} merges with the end of the answer prefix "
                              f"{self.answer_prefix!r} when tokenised; it cannot be scored as an answer")
        return tuple(full[len(prefix):])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict:
        """Words and token ids (for run manifests)."""
        return {"classes": list(self.classes), "words": list(self.words),
                "first_token_ids": self.label_token_ids.tolist(),
                "first_tokens": self.tokenizer.convert_ids_to_tokens(self.label_token_ids.tolist())}

    def class_logits(self, hidden_or_logits: torch.Tensor, lm_head: torch.nn.Module | None = None) -> torch.Tensor:
        """Class logits (..., K) from vocabulary logits (..., V), or from hidden states (..., H)
        through the label rows of ``lm_head`` only (``h @ W[label_ids].T + b[label_ids]``).

        With ``lm_head`` the K rows and the hidden states are cast to float32 first (K x H values:
        negligible), so bf16 models give float32 class logits."""
        ids = self.label_token_ids.to(hidden_or_logits.device)
        if lm_head is None:
            return hidden_or_logits.index_select(-1, ids)
        weight = getattr(lm_head, "weight", None)
        out_features = getattr(lm_head, "out_features", None)
        if isinstance(lm_head, torch.nn.Linear) and weight is not None and weight.dim() == 2 \
                and weight.shape[0] == out_features:
            bias = lm_head.bias.index_select(0, ids).float() if lm_head.bias is not None else None
            return F.linear(hidden_or_logits.float(), weight.index_select(0, ids).float(), bias)
        # Quantised, sharded (ZeRO-3) or wrapped heads: the module's own forward, at these positions only.
        return lm_head(hidden_or_logits).index_select(-1, ids).float()

    @staticmethod
    def per_sample_loss(class_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the K class logits, one value per sample (B,).

        ``labels`` is (B,) class indices or (B, K) soft labels (rows summing to 1; the loss is
        ``-sum_k q_k log p_k``). Computed in float32.
        """
        logits = class_logits.float()
        if labels.dim() == logits.dim():
            return -(labels.to(logits.dtype) * F.log_softmax(logits, dim=-1)).sum(-1)
        if labels.dtype.is_floating_point:
            raise ConfigError("hard labels must be integer class indices")
        if bool((labels < 0).any()) or bool((labels >= logits.shape[-1]).any()):
            raise ConfigError(f"labels out of range for {logits.shape[-1]} classes: {labels.tolist()}")
        return F.cross_entropy(logits, labels.to(logits.device), reduction="none")

    @staticmethod
    def probabilities(class_logits: torch.Tensor) -> torch.Tensor:
        """Softmax over the K class logits (float32)."""
        return torch.softmax(class_logits.float(), dim=-1)
