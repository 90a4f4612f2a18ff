"""What every family's tiny build shares: the byte-level BPE tokenizer trained on a built-in text
that holds the prompt templates and label words (private; ``llmfair.speechllm.tiny`` is the public
entry point).

The tokenizer is trained here, offline, so that label words are short token sequences with
distinct first tokens, as they are on the released tokenizers, and prompts tokenise into far fewer
tokens than bytes.
"""
from __future__ import annotations

import json
import re
from typing import Mapping, Sequence

from llmfair.data.labels import CREMA_D, LANGUAGES, MELD, MODALITIES
from llmfair.speechllm.prompts import QWEN2_AUDIO_CHAT, ChatFormat

VOCAB_SIZE = 512

EXTRA_SENTENCES = (
    "I can't believe you did that!", "Oh my God, that is wonderful news.", "Please leave me alone.",
    "We were on a break.", "What are you talking about?", "That is the worst thing I have ever heard.",
    "Ich kann nicht glauben, dass du das getan hast!", "Das ist eine wunderbare Nachricht.",
    "Lass mich bitte in Ruhe.", "Wovon redest du?", "Das ist das Schlimmste, was ich je gehört habe.",
    "しんじられない！", "それはすばらしいニュースです。", "ひとりにしてください。", "なにをいっているの？",
    "The weather is nice today.", "Das Wetter ist heute schön.", "きょうはいいてんきです。",
)


def _answer_lead(chat: ChatFormat) -> str:
    """The answer prefix without its leading special token (``assistant\\n`` for ChatML)."""
    return re.sub(r"^<\|[^|]*\|>", "", chat.answer_prefix)


def tokenizer_training_text(chat: ChatFormat = QWEN2_AUDIO_CHAT) -> list[str]:
    """The built-in text a tiny tokenizer is trained on.

    It holds every default prompt rendered in ``chat``'s format for both label spaces in every
    language and modality, a few dialogue sentences in each language, and the label words, repeated
    so that each becomes a short token sequence (what the verbalizer needs: distinct first tokens).
    """
    from llmfair.speechllm.prompts import PromptTemplate

    template = PromptTemplate(chat=chat)
    lines: list[str] = []
    for space in (MELD, CREMA_D):
        for language in LANGUAGES:
            for modality in MODALITIES:
                lines.append(template.render(language, modality, text=EXTRA_SENTENCES[0], labels=space.classes))
    lines.extend(template.words())
    lines.extend(EXTRA_SENTENCES)
    words = sorted(set(MELD.classes) | set(CREMA_D.classes))
    # The answer follows the answer prefix with no leading space; words also occur after spaces.
    lines.extend([_answer_lead(chat) + w + chat.turn_end for w in words] * 40)
    lines.extend([" ".join(words)] * 40)
    return lines


def train_tokenizer(lines: Sequence[str], special_tokens: Sequence[str], *, eos_token: str, pad_token: str,
                    named_tokens: Mapping[str, str] | None = None, vocab_size: int = VOCAB_SIZE):
    """A left-padding ``Qwen2TokenizerFast`` from a byte-level BPE trained on ``lines``.

    ``special_tokens[0]`` is the BPE's first special token (``<|endoftext|>``); the others are added
    as extra special tokens. ``named_tokens`` (``{"audio_token": "<|AUDIO|>", ...}``) become
    tokenizer attributes (``tokenizer.audio_token``, ``tokenizer.audio_token_id``), as the released
    multimodal tokenizers declare them.
    """
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers import Qwen2TokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(special_tokens), min_frequency=1, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(list(lines), trainer)
    state = json.loads(bpe.to_str())
    vocab = state["model"]["vocab"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["model"]["merges"]]
    tokenizer = Qwen2TokenizerFast(vocab=vocab, merges=merges, errors="replace", padding_side="left",
                                   extra_special_tokens=dict(named_tokens) if named_tokens else None)
    if named_tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": list(special_tokens[1:])},
                                     replace_extra_special_tokens=False)
    else:
        tokenizer.add_special_tokens({"additional_special_tokens": list(special_tokens[1:])})
    tokenizer.eos_token = eos_token
    tokenizer.pad_token = pad_token
    tokenizer.padding_side = "left"
    if len(tokenizer) > vocab_size:
        raise RuntimeError(f"tiny tokenizer has {len(tokenizer)} tokens, more than the model's {vocab_size}")
    return tokenizer


def seeded_init(build, seed: int):
    """``build()`` under ``torch.manual_seed(seed)``, the global generator restored afterwards."""
    import torch

    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return build()
    finally:
        torch.random.set_rng_state(generator_state)


def save_tiny_model(model, out_dir) -> None:
    """``model.save_pretrained(out_dir)`` on every process.

    transformers 5.x writes a model's files only on rank 0 of an initialised process group
    (``should_save_on_this_rank``), but every rank of an ``accelerate launch`` that finds no tiny
    build in its cache builds its own copy in its own temporary folder: without this, a rank other
    than 0 would publish a build with no ``config.json`` and no weights.
    """
    model.should_save_on_this_rank = lambda is_main_process: True
    try:
        model.save_pretrained(out_dir)
    finally:
        del model.should_save_on_this_rank
