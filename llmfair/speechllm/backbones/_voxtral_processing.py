"""Voxtral's tokenizer and audio-only processor for llmfair's collator (private; the family is
documented in ``backbones/voxtral.py``). Imports transformers' ``MistralCommonBackend``, so it
needs the ``mistral-common`` package (``pip install 'llmfair[voxtral]'``).

* :class:`TekkenControlTokenizer` is transformers' ``MistralCommonBackend`` (mistral-common's
  Tekken tokenizer behind the Hugging Face tokenizer interface) whose text encoding reads the
  tokenizer's special tokens written in the text (``<s>``, ``[INST]``, ``[AUDIO]``, ``[/INST]``,
  ``</s>``) as those tokens, and encodes the text between them with Tekken and no BOS — the token
  sequence mistral-common's chat encoder (``InstructTokenizerV7.encode_instruct``) builds from
  the same messages (tested). ``MistralCommonBackend`` itself never parses special tokens in text
  (``tokenizer("[INST]")`` gives the tokens of the characters), which a rendered prompt, the
  verbalizer's answer prefix and the ``lm`` answer's ``</s>`` need.
* :class:`VoxtralAudioProcessor` takes llmfair's rendered prompts (one ``[AUDIO]`` per prompt)
  and the 16 kHz clips and returns what the collator and the model need. Like mistral-common's
  audio encoder with the checkpoint's ``chunk_length_s`` and ``VoxtralProcessor``'s feature
  extraction, every clip is padded with zeros to the encoder window (30 s on the released
  models), so every prompt holds ``[BEGIN_AUDIO]`` and the same number of ``[AUDIO]`` tokens
  (mistral-common's count for the padded clip: 375 per 30 s) and the encoder reads all
  ``2 * max_source_positions`` mel frames; ``feature_attention_mask`` marks those frames (all of
  them). ``VoxtralProcessor.__call__`` refuses audio (only its ``apply_chat_template`` takes
  audio, from files, URLs or base64), which is why llmfair brings this one.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from transformers import BatchFeature, MistralCommonBackend

from llmfair.errors import ConfigError


class TekkenControlTokenizer(MistralCommonBackend):
    """``MistralCommonBackend`` that reads special tokens written in text (see the module docstring).

    ``add_special_tokens=True`` still prepends ``<s>`` (BOS), as ``MistralCommonBackend`` does.
    """

    def _control_pattern(self) -> re.Pattern:
        pattern = self.__dict__.get("_llmfair_control")
        if pattern is None:
            tekken = self.tokenizer.instruct_tokenizer.tokenizer
            names = [tekken.id_to_piece(i) for i in range(tekken.num_special_tokens)]
            names.sort(key=len, reverse=True)  # longest first: no token is cut short by one it starts with
            pattern = re.compile("(" + "|".join(re.escape(n) for n in names) + ")")
            self.__dict__["_llmfair_control"] = pattern
        return pattern

    def _text_to_ids(self, text: str, add_special_tokens: bool) -> list[int]:
        tekken = self.tokenizer.instruct_tokenizer.tokenizer
        ids = [tekken.bos_id] if add_special_tokens else []
        for i, piece in enumerate(self._control_pattern().split(text)):
            if i % 2:
                ids.append(tekken.get_special_token(piece))
            elif piece:
                ids.extend(tekken.encode(piece, bos=False, eos=False))
        return ids


class VoxtralAudioProcessor:
    """Rendered prompts + 16 kHz clips → ``input_ids``, ``attention_mask`` (left padding),
    ``input_features`` (B, mel bins, window frames) and ``feature_attention_mask`` (B, window
    frames; all ones: the encoder reads the whole window).

    Args:
        feature_extractor: the checkpoint's ``WhisperFeatureExtractor`` (its ``chunk_length`` is
            the encoder window).
        tokenizer: a :class:`TekkenControlTokenizer` of the checkpoint's ``tekken.json`` (its
            audio section gives the number of audio tokens per window).

    Raises:
        ConfigError: a tokenizer without an audio configuration (not a Voxtral tokenizer).
    """

    audio_token = "[AUDIO]"
    begin_audio_token = "[BEGIN_AUDIO]"

    def __init__(self, feature_extractor, tokenizer) -> None:
        encoder = tokenizer.tokenizer.instruct_tokenizer.audio_encoder
        if encoder is None:
            raise ConfigError("the tokenizer's tekken.json has no audio section; it is not a Voxtral tokenizer")
        self.feature_extractor = feature_extractor
        self.tokenizer = tokenizer
        self.audio_config = encoder.audio_config

    @property
    def tokens_per_window(self) -> int:
        """mistral-common's number of ``[AUDIO]`` tokens for a clip padded to the encoder window."""
        return int(self.audio_config.num_audio_tokens(int(self.feature_extractor.n_samples)))

    def audio_token_counts(self, feature_attention_mask: torch.Tensor) -> torch.Tensor:
        """``[AUDIO]`` tokens per row: ``tokens_per_window`` for each whole window of mel frames."""
        windows = feature_attention_mask.sum(-1).long() // int(self.feature_extractor.nb_max_frames)
        return windows * self.tokens_per_window

    def __call__(self, text: str | Sequence[str], audio: Sequence[Any], sampling_rate: int | None = None,
                 return_tensors: str = "pt", padding: bool = True, **_: Any) -> BatchFeature:
        """Tokenise ``text`` (each holding ``[AUDIO]`` once; expanded to ``tokens_per_window``)
        and extract the log-mel features of ``audio`` (one clip per text, at most one window long).

        Raises:
            ConfigError: a count mismatch, another sampling rate, a clip longer than the window
                (the collator truncates), or a prompt without exactly one ``[AUDIO]``.
        """
        texts = [text] if isinstance(text, str) else list(text)
        clips = [np.asarray(a, dtype=np.float32) for a in audio]
        fe = self.feature_extractor
        if len(clips) != len(texts):
            raise ConfigError(f"Voxtral processor: {len(texts)} prompts but {len(clips)} audio clips")
        if sampling_rate is not None and int(sampling_rate) != int(fe.sampling_rate):
            raise ConfigError(f"Voxtral processor: audio at {sampling_rate} Hz, the feature extractor runs at "
                              f"{fe.sampling_rate} Hz")
        window = int(fe.n_samples)
        long = [i for i, c in enumerate(clips) if c.shape[-1] > window]
        if long:
            seconds = clips[long[0]].shape[-1] / fe.sampling_rate
            raise ConfigError(f"Voxtral processor: clip {long[0]} is {seconds:.1f} s, longer than the "
                              f"{window / fe.sampling_rate:g} s encoder window (SpeechLLMCollator truncates clips to "
                              "the window)")
        n = self.tokens_per_window
        expanded = []
        for i, t in enumerate(texts):
            if t.count(self.audio_token) != 1:
                raise ConfigError(f"Voxtral processor: prompt {i} holds {t.count(self.audio_token)} {self.audio_token} "
                                  "placeholders; llmfair's prompts hold one per clip")
            expanded.append(t.replace(self.audio_token, self.audio_token * n))
        encoded = self.tokenizer(expanded, add_special_tokens=False, padding=True, return_tensors="pt")
        features = fe(clips, sampling_rate=fe.sampling_rate, padding="max_length", max_length=window,
                      return_attention_mask=False, return_tensors="pt")["input_features"]
        mask = torch.ones(features.shape[0], features.shape[-1], dtype=torch.long)
        return BatchFeature({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                             "input_features": features, "feature_attention_mask": mask})

    def save_pretrained(self, directory: str | Path) -> None:
        """The checkpoint's ``tekken.json`` and ``preprocessor_config.json`` into ``directory``."""
        self.tokenizer.save_pretrained(str(directory))
        self.feature_extractor.save_pretrained(str(directory))
