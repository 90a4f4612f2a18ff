"""Records → a speech-LLM batch (Qwen2-Audio's layout, which every family's processor follows), with
the checks that real fine-tuning code got wrong.

``SpeechLLMCollator`` turns a list of record dicts (``Example.to_record()`` rows, or any dict with
``audio``, ``text``, ``language``, ``modality``, ``emotion``) into model inputs:

* audio is loaded at 16 kHz (``llmfair.data.audio.load_audio``) or taken as a float32 array,
  truncated to the encoder window (counted in ``num_truncated``; a warning once per collator);
* the processor is called with ``audio=`` — never the ``audios`` keyword, which transformers silently drops
  so that every sample is scored without its audio (QWEN2AUDIO.md §3) — and the batch must contain
  ``input_features`` and ``feature_attention_mask``;
* the processor expands ``<|AUDIO|>`` to one token per encoder frame; each row's count is checked
  against its feature mask (the processor's ``audio_token_counts`` where it has one: Voxtral's
  encoder reads the whole window, so every clip has the same count), and a mismatch names the
  sample (§1, §4). Nothing is ever truncated inside the audio span (the text is not truncated at all);
* left padding, so that the answer position is the last position of every row (§6);
* ``answer_loss="lm"`` appends the label word and the turn end (``<|im_end|>`` on the Qwen
  families: the template's ``ChatFormat.turn_end``) and builds ``labels`` that are -100 everywhere
  except on those answer tokens (every prompt, ``<|AUDIO|>`` and pad position is masked; §6).

Batch keys: the model inputs (``MODEL_INPUT_KEYS``), ``emotion`` (B,) long, ``emotion_dist``
(B, K) float when any record carries a soft label, ``answer_position`` (B,) long (the position
whose hidden state predicts the first answer token), ``audio_sha256`` (list of hex digests of the
waveform fed to the processor; the encoder cache's key), ``labels`` (B, T) for ``answer_loss="lm"``,
and every other record key passed through: numbers (and equal-length numeric lists) as tensors,
anything else as a list. Use ``model_inputs(batch)`` to call the Hugging Face model directly.
"""
from __future__ import annotations

import hashlib
import logging
import os
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from llmfair.data.audio import TARGET_SAMPLE_RATE, load_audio
from llmfair.errors import ConfigError, DataError
from llmfair.speechllm.prompts import PromptTemplate
from llmfair.speechllm.verbalizer import Verbalizer

logger = logging.getLogger(__name__)

MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "input_features", "feature_attention_mask")
ANSWER_LOSSES = ("verbalizer", "lm")
REQUIRED_KEYS = ("audio", "text", "language", "modality", "emotion")
MIN_AUDIO_SECONDS = 0.05
"""Shorter clips give a single audio token, which transformers mistakes for the legacy
un-expanded prompt format (QWEN2AUDIO.md §1); they are rejected."""


def model_inputs(batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The subset of ``batch`` that ``Qwen2AudioForConditionalGeneration.forward`` accepts."""
    return {k: batch[k] for k in MODEL_INPUT_KEYS if k in batch}


def audio_token_counts(feature_attention_mask: torch.Tensor) -> torch.Tensor:
    """Number of audio tokens (encoder output frames) per row: ``((L-1)//2 + 1 - 2)//2 + 1`` over
    the ``L`` valid mel frames (conv stride 2, then average pooling by 2; processing_qwen2_audio.py)."""
    lengths = feature_attention_mask.sum(-1).long()
    return (((lengths - 1) // 2 + 1) - 2) // 2 + 1


def check_audio_tokens(input_ids: torch.Tensor, feature_attention_mask: torch.Tensor, audio_token_id: int,
                       sample_ids: Sequence[Any] | None = None, *, token_counts=audio_token_counts) -> None:
    """Each row's number of ``<|AUDIO|>`` tokens must equal its number of audio features
    (``token_counts(feature_attention_mask)``: :func:`audio_token_counts` for the Qwen families; a
    processor may bring its own as ``processor.audio_token_counts``, as Voxtral's does).

    Raises:
        DataError: naming the first mismatching samples and both counts.
    """
    have = (input_ids == audio_token_id).sum(-1).cpu()
    want = token_counts(feature_attention_mask).cpu()
    bad = torch.nonzero(have != want).flatten().tolist()
    if bad:
        ids = list(sample_ids) if sample_ids is not None else list(range(input_ids.shape[0]))
        detail = "; ".join(f"sample {ids[i]!r}: {int(have[i])} <|AUDIO|> tokens but {int(want[i])} audio features"
                           for i in bad[:5])
        raise DataError(f"audio tokens and audio features do not match ({len(bad)} of {input_ids.shape[0]} rows): "
                        f"{detail}. The audio span of a prompt must never be truncated (QWEN2AUDIO.md §4)")


def audio_sha256(audio: np.ndarray) -> str:
    """Hex digest of a float32 waveform's bytes (the content key of the encoder cache)."""
    return hashlib.sha256(np.ascontiguousarray(audio, dtype=np.float32).tobytes()).hexdigest()


def _as_passthrough(key: str, values: list[Any]) -> Any:
    """A tensor for numbers (or equal-length numeric sequences), the list itself otherwise."""
    if all(isinstance(v, (bool, np.bool_)) for v in values):
        return torch.tensor([bool(v) for v in values])
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return torch.tensor([int(v) for v in values], dtype=torch.long)
    if all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in values):
        return torch.tensor([float(v) for v in values], dtype=torch.float32)
    if all(isinstance(v, torch.Tensor) for v in values) and len({tuple(v.shape) for v in values}) == 1:
        return torch.stack(values)
    if all(isinstance(v, (list, tuple, np.ndarray)) for v in values):
        try:
            arr = np.asarray(values)
        except ValueError:
            return values
        if arr.dtype.kind in "iub":
            return torch.as_tensor(arr.astype(np.int64))
        if arr.dtype.kind == "f":
            return torch.as_tensor(arr.astype(np.float32))
    return values


class SpeechLLMCollator:
    """Build speech-LLM batches from records (see the module docstring for the batch keys).

    Args:
        processor: the family's processor (e.g. a ``Qwen2AudioProcessor``); its tokenizer is
            switched to left padding.
        template: the prompt template (in the family's chat format).
        verbalizer: label words (rendered into the instruction and, for ``lm``, the answer).
        max_audio_seconds: clips longer than this are truncated (counted). Default and maximum:
            the encoder window (``feature_extractor.chunk_length``; 30 s on the real model).
        answer_loss: ``"verbalizer"`` (class logits at the last position) or ``"lm"`` (token
            cross-entropy on the label word + ``<|im_end|>``, with ``labels``).

    Attributes:
        num_clips, num_truncated: running counts over every batch built.
    """

    def __init__(self, processor, template: PromptTemplate, verbalizer: Verbalizer, *,
                 max_audio_seconds: float | None = None, answer_loss: str = "verbalizer") -> None:
        if answer_loss not in ANSWER_LOSSES:
            raise ConfigError(f"unknown answer_loss {answer_loss!r}; expected one of {list(ANSWER_LOSSES)}")
        fe = processor.feature_extractor
        if fe.sampling_rate != TARGET_SAMPLE_RATE:
            raise ConfigError(f"the processor's feature extractor runs at {fe.sampling_rate} Hz; llmfair feeds "
                              f"{TARGET_SAMPLE_RATE} Hz audio")
        window = fe.n_samples / fe.sampling_rate
        if max_audio_seconds is None:
            max_audio_seconds = window
        if not 0 < max_audio_seconds <= window:
            raise ConfigError(f"max_audio_seconds must be in (0, {window:g}] (the audio encoder's window), "
                              f"got {max_audio_seconds}")
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
        self.template = template
        self.verbalizer = verbalizer
        self.answer_loss = answer_loss
        self.max_audio_seconds = float(max_audio_seconds)
        self.max_samples = int(round(self.max_audio_seconds * TARGET_SAMPLE_RATE))
        self.min_samples = int(round(MIN_AUDIO_SECONDS * TARGET_SAMPLE_RATE))
        self.audio_token_id = self.tokenizer.convert_tokens_to_ids(getattr(processor, "audio_token", "<|AUDIO|>"))
        self.audio_token_counts = getattr(processor, "audio_token_counts", audio_token_counts)
        self.turn_end = template.chat.turn_end
        self.im_end_id = self.tokenizer.convert_tokens_to_ids(self.turn_end)
        self.num_clips = 0
        self.num_truncated = 0
        self._warned = False

    # ------------------------------------------------------------------ audio
    def _audio(self, value: Any, sample_id: Any) -> np.ndarray:
        if isinstance(value, (str, os.PathLike)):
            audio = load_audio(value)
        else:
            audio = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value, dtype=np.float32)
            if audio.ndim != 1:
                raise DataError(f"sample {sample_id!r}: audio array must be 1-D (mono, 16 kHz), got shape {audio.shape}")
        if audio.shape[0] < self.min_samples:
            raise DataError(f"sample {sample_id!r}: audio is {audio.shape[0] / TARGET_SAMPLE_RATE:.3f} s long, shorter "
                            f"than the {MIN_AUDIO_SECONDS} s the audio encoder needs")
        if not np.isfinite(audio).all():
            raise DataError(f"sample {sample_id!r}: audio contains NaN or Inf")
        return audio

    def _truncate(self, clips: list[np.ndarray], ids: list[Any]) -> list[np.ndarray]:
        long = [i for i, a in enumerate(clips) if a.shape[0] > self.max_samples]
        self.num_clips += len(clips)
        if long:
            self.num_truncated += len(long)
            if not self._warned:
                self._warned = True
                logger.warning("audio longer than %.1f s is truncated (first: sample %r, %.1f s); the count is kept "
                               "in collator.num_truncated", self.max_audio_seconds, ids[long[0]],
                               clips[long[0]].shape[0] / TARGET_SAMPLE_RATE)
            clips = [a[: self.max_samples] if a.shape[0] > self.max_samples else a for a in clips]
        return clips

    # ------------------------------------------------------------------ labels
    def _labels(self, records: Sequence[Mapping[str, Any]], ids: list[Any]) -> dict[str, torch.Tensor]:
        k = self.verbalizer.num_classes
        emotion = torch.tensor([int(r["emotion"]) for r in records], dtype=torch.long)
        out = {"emotion": emotion}
        dists = [r.get("emotion_dist") for r in records]
        has_dist = [d is not None and len(d) > 0 for d in dists]
        if any(has_dist):
            rows = np.zeros((len(records), k), dtype=np.float32)
            for i, (d, has) in enumerate(zip(dists, has_dist)):
                if has:
                    d = np.asarray(d, dtype=np.float32)
                    if d.shape != (k,):
                        raise DataError(f"sample {ids[i]!r}: emotion_dist has {d.size} values for {k} classes")
                    rows[i] = d
                elif 0 <= emotion[i] < k:
                    rows[i, emotion[i]] = 1.0
                else:
                    raise DataError(f"sample {ids[i]!r}: emotion {int(emotion[i])} out of range and no emotion_dist")
            out["emotion_dist"] = torch.from_numpy(rows)
        else:
            bad = torch.nonzero((emotion < 0) | (emotion >= k)).flatten().tolist()
            if bad:
                raise DataError(f"sample {ids[bad[0]]!r}: emotion {int(emotion[bad[0]])} is not a class index in "
                                f"0..{k - 1} ({len(bad)} such rows in the batch)")
        return out

    # ------------------------------------------------------------------ call
    def __call__(self, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Build one batch (see the module docstring for its keys)."""
        if not records:
            raise DataError("cannot collate an empty batch")
        ids = [r.get("id", r.get("index", i)) for i, r in enumerate(records)]
        for i, r in enumerate(records):
            missing = [key for key in REQUIRED_KEYS if key not in r]
            if missing:
                raise DataError(f"sample {ids[i]!r}: record lacks {missing}")
        clips = self._truncate([self._audio(r["audio"], ids[i]) for i, r in enumerate(records)], ids)
        batch_labels = self._labels(records, ids)
        words = self.verbalizer.words
        texts = [self.template.render(r["language"], r["modality"], r.get("text") or "", labels=words) for r in records]
        if self.answer_loss == "lm":
            emotion = batch_labels["emotion"]
            bad = torch.nonzero((emotion < 0) | (emotion >= len(words))).flatten().tolist()
            if bad:
                raise DataError(f"sample {ids[bad[0]]!r}: answer_loss='lm' needs a single class label, got "
                                f"emotion {int(emotion[bad[0]])}")
            texts = [t + words[int(e)] + self.turn_end for t, e in zip(texts, emotion.tolist())]
        inputs = self.processor(text=texts, audio=clips, sampling_rate=TARGET_SAMPLE_RATE, return_tensors="pt",
                                padding=True)
        for key in ("input_features", "feature_attention_mask"):
            if key not in inputs:
                raise ConfigError(f"the processor returned no {key!r}: the audio was not processed (was it passed as "
                                  f"the plural audios keyword? transformers ignores it; QWEN2AUDIO.md §3)")
        batch: dict[str, Any] = {k: inputs[k] for k in MODEL_INPUT_KEYS}
        if not bool(batch["attention_mask"][:, -1].all()):
            raise ConfigError("the tokenizer padded on the right; llmfair needs left padding so the answer is the "
                              "last position of every row")
        check_audio_tokens(batch["input_ids"], batch["feature_attention_mask"], self.audio_token_id, ids,
                           token_counts=self.audio_token_counts)
        seq_len = batch["input_ids"].shape[1]
        if self.answer_loss == "lm":
            answers = [list(self.verbalizer.answer_token_ids[int(e)]) + [self.im_end_id]
                       for e in batch_labels["emotion"].tolist()]
            n_answer = torch.tensor([len(a) for a in answers], dtype=torch.long)
            expected = torch.nn.utils.rnn.pad_sequence(
                [torch.tensor(a[::-1]) for a in answers], batch_first=True, padding_value=-100).flip(1)
            width = expected.shape[1]
            tail = batch["input_ids"][:, seq_len - width:]
            in_answer = torch.arange(width)[None, :] >= (width - n_answer)[:, None]
            if not bool((tail[in_answer] == expected[in_answer]).all()):
                raise ConfigError("the label words tokenise differently inside the prompt than alone; the answer "
                                  "tokens cannot be located")
            positions = torch.arange(seq_len)[None, :]
            answer_mask = positions >= (seq_len - n_answer)[:, None]
            batch["labels"] = torch.where(answer_mask, batch["input_ids"], torch.full_like(batch["input_ids"], -100))
            batch["answer_position"] = seq_len - n_answer - 1
        else:
            batch["answer_position"] = torch.full((len(records),), seq_len - 1, dtype=torch.long)
        batch.update(batch_labels)
        batch["audio_sha256"] = [audio_sha256(a) for a in clips]
        for key in records[0]:
            if key in ("audio", "emotion", "emotion_dist"):
                continue
            if key in batch:
                raise DataError(f"record key {key!r} clashes with a batch key the collator builds")
            if any(key not in r for r in records):
                raise DataError(f"record key {key!r} is missing from some records of the batch")
            batch[key] = _as_passthrough(key, [r[key] for r in records])
        return batch
