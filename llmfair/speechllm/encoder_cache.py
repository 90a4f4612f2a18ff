"""Cache of the frozen audio encoder's outputs, and a forward pass that uses them.

The Whisper-style audio tower is ~97 % of a forward pass on the tiny model and a large share on
the 7B one (ENVIRONMENT.md). When it is frozen (LoRA on the language model only, the default) its
output for a clip never changes during training, so each clip is encoded once:

* **What is cached**: the encoder output at the family's cache boundary
  (``SpeechBackbone.encode_audio``), trimmed to the clip's real length (its number of ``<|AUDIO|>``
  tokens): on Qwen2-Audio the audio tower's ``last_hidden_state`` (after its final layer norm and
  average pooling) **before** the multi-modal projector; on Qwen2.5-Omni the tower's output before
  its own projection ``audio_tower.proj``; on Voxtral the tower's ``last_hidden_state`` regrouped
  into the 4-frame rows its projector reads (the whole window: 375 rows for every clip). Before the
  projector because the projector may be trained (``LoraOptions.train_projector``); applying it
  costs one small matmul per step.
* **Key**: sha256 of (model identity, encoder window, front-end settings, sha256 of the 16 kHz
  float32 waveform as fed to the processor). The model identity defaults to a fingerprint of the
  encoder's weights before the boundary, dtype and attention implementation
  (``audio_tower_fingerprint``), so a different checkpoint, family, precision or window never reads
  stale features.
* **Storage**: one safetensors file per clip under ``<directory>/<key[:2]>/<key>.safetensors``,
  written atomically (tensor ``features``, shape (N, d_model), in the tower's dtype).
* **Validity**: a clip's encoder output alone equals its output inside a batch (the tower attends
  within a clip only, under its attention mask; Qwen2.5-Omni's within 2 s chunks of a clip;
  Voxtral's over the clip's whole zero-padded window), so caching per clip is exact. The Qwen2-Audio tower *uses* its attention mask (built from
  ``feature_attention_mask``) although its docstring says it does not; its ``encode_audio`` builds
  it exactly as ``Qwen2AudioModel.forward`` does (transformers 5.23.0). Encoding runs in eval mode
  without gradients; an encoder with trainable parameters before the boundary is refused while
  gradients are enabled (it would silently stop training and its cache would go stale).

The cached forward (``hidden_states_from_audio_features``) embeds the tokens, projects the cached
features (the family's ``project_audio``), scatters them into the ``<|AUDIO|>`` positions of
``inputs_embeds`` (row-major order, as transformers does) and runs the language model.
``score_batch(..., encoder_cache=cache)`` uses it; it matches the uncached forward to float
rounding (tested at 1e-5 on every family's tiny build).

Usage::

    cache = EncoderCache.for_model("runs/encoder-cache", model, processor)
    out = score_batch(model, batch, verbalizer, encoder_cache=cache)
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from llmfair._atomic import atomic_path
from llmfair.errors import ConfigError, DataError
from llmfair.speechllm._models import position_ids_from_mask, unwrap_model
from llmfair.speechllm.backbones import backbone_of

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1


def audio_tower_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of the encoder's tensors before the cache
    boundary (``SpeechBackbone.encoder_state``; the whole tower on Qwen2-Audio), plus the tower's
    attention implementation (hashing a 7B model's 0.6B-parameter tower takes a few seconds, once)."""
    base = unwrap_model(model)
    backbone = backbone_of(base)
    tower = backbone.audio_tower(base)
    digest = hashlib.sha256()
    digest.update(str(getattr(tower.config, "_attn_implementation", "")).encode())
    for name, tensor in sorted(backbone.encoder_state(base).items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def encode_audio(model: torch.nn.Module, input_features: torch.Tensor,
                 feature_attention_mask: torch.Tensor) -> list[torch.Tensor]:
    """Encoder outputs at the cache boundary per clip, each (N_i, width) with N_i the clip's
    audio-token count (the family's ``SpeechBackbone.encode_audio``; on Qwen2-Audio the encoder
    attends only to the clip's valid frames, as ``Qwen2AudioModel.forward`` builds its mask)."""
    base = unwrap_model(model)
    return backbone_of(base).encode_audio(base, input_features, feature_attention_mask)


def hidden_states_from_audio_features(model: torch.nn.Module, batch: Mapping[str, Any],
                                      features: Sequence[torch.Tensor]) -> torch.Tensor:
    """Language-model hidden states (B, T, H) from per-clip encoder outputs (no audio tower).

    ``features[i]`` is row i's encoder output (N_i, width); the projector (trainable or not)
    maps it to the LLM width and it replaces the N_i ``<|AUDIO|>`` embeddings of row i.

    Raises:
        DataError: a row's ``<|AUDIO|>`` count differs from its feature count (names the sample).
    """
    base = unwrap_model(model)
    backbone = backbone_of(base)
    embedding = base.get_input_embeddings()
    input_ids = batch["input_ids"].to(embedding.weight.device)
    embeds = embedding(input_ids)
    audio_mask = input_ids == base.config.audio_token_id
    if len(features) != input_ids.shape[0]:
        raise DataError(f"{len(features)} audio feature tensors for a batch of {input_ids.shape[0]} rows")
    have = audio_mask.sum(-1).cpu()
    want = torch.tensor([f.shape[0] for f in features])
    bad = torch.nonzero(have != want).flatten().tolist()
    if bad:
        ids = batch.get("id", list(range(input_ids.shape[0])))
        raise DataError(f"sample {ids[bad[0]]!r}: {int(have[bad[0]])} <|AUDIO|> tokens but {int(want[bad[0]])} "
                        f"audio features ({len(bad)} mismatching rows)")
    proj_param = next(backbone.projector(base).parameters())
    audio = torch.cat([f.to(proj_param.device, proj_param.dtype) for f in features])
    audio = backbone.project_audio(base, audio).to(embeds.device, embeds.dtype)
    embeds = embeds.masked_scatter(audio_mask.unsqueeze(-1).to(embeds.device), audio)
    attention_mask = batch["attention_mask"].to(embeds.device)
    out = backbone.language_model(base)(inputs_embeds=embeds, attention_mask=attention_mask,
                                        position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    return out.last_hidden_state


_SHARED_MEMORY: dict[tuple, dict[str, torch.Tensor]] = {}
"""In-memory stores of :class:`EncoderCache` objects, per (directory, model, window, front end)."""


def clear_shared_memory() -> None:
    """Drop every in-memory store (the files on disk stay)."""
    _SHARED_MEMORY.clear()


class EncoderCache:
    """Per-clip audio-encoder outputs on disk (safetensors), keyed by model, window and audio.

    Args:
        directory: where the files live (created on demand).
        model_id: identity of the audio tower; ``for_model`` uses ``audio_tower_fingerprint``. A
            user may pass a stable name (e.g. ``"Qwen/Qwen2-Audio-7B-Instruct@<commit>/bf16"``) to
            skip the hashing; it must change whenever the tower's weights or dtype do.
        window_seconds: the encoder window (part of the key: it changes the mel padding).
        frontend: other front-end settings that change the mel features (part of the key).
        in_memory: also keep loaded features in RAM (CPU tensors). Caches of one process with the
            same directory, model, window and front end share that store, so the runs of a sweep
            read each clip from disk once (:func:`clear_shared_memory` empties it).

    Attributes:
        hits, misses: clips served from the cache / computed; ``encoder_calls``: tower invocations.
    """

    def __init__(self, directory: str | os.PathLike, model_id: str, *, window_seconds: float,
                 frontend: str = "", in_memory: bool = False) -> None:
        if not model_id:
            raise ConfigError("EncoderCache needs a non-empty model_id")
        self.directory = Path(directory)
        self.model_id = model_id
        self.window_seconds = float(window_seconds)
        self.frontend = frontend
        self.in_memory = in_memory
        identity = (str(self.directory.resolve()), model_id, self.window_seconds, frontend)
        self._memory: dict[str, torch.Tensor] = _SHARED_MEMORY.setdefault(identity, {}) if in_memory else {}
        self.hits = 0
        self.misses = 0
        self.encoder_calls = 0

    @classmethod
    def for_model(cls, directory: str | os.PathLike, model: torch.nn.Module, processor, *,
                  model_id: str | None = None, in_memory: bool = False) -> "EncoderCache":
        """A cache for ``model``'s audio tower and ``processor``'s front end."""
        fe = processor.feature_extractor
        frontend = (f"{type(fe).__name__}|sr={fe.sampling_rate}|mels={fe.feature_size}|hop={fe.hop_length}"
                    f"|nfft={fe.n_fft}|frames={fe.nb_max_frames}")
        return cls(directory, model_id or audio_tower_fingerprint(model), window_seconds=fe.chunk_length,
                   frontend=frontend, in_memory=in_memory)

    def key(self, audio_digest: str) -> str:
        """The cache key of one clip (hex sha256)."""
        text = (f"llmfair-encoder-cache/{CACHE_FORMAT}|{self.model_id}|{self.window_seconds:g}|{self.frontend}"
                f"|{audio_digest}")
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.safetensors"

    def _load(self, key: str) -> torch.Tensor | None:
        if key in self._memory:
            return self._memory[key]
        path = self.path(key)
        if not path.is_file():
            return None
        from safetensors.torch import load_file

        tensor = load_file(str(path))["features"]
        if self.in_memory:
            self._memory[key] = tensor
        return tensor

    def _save(self, key: str, tensor: torch.Tensor, audio_digest: str) -> None:
        from safetensors.torch import save_file

        tensor = tensor.detach().to("cpu").contiguous()
        with atomic_path(self.path(key)) as tmp:
            save_file({"features": tensor}, str(tmp), metadata={
                "format": str(CACHE_FORMAT), "model_id": self.model_id, "audio_sha256": audio_digest,
                "window_seconds": f"{self.window_seconds:g}"})
        if self.in_memory:
            self._memory[key] = tensor

    def get_or_compute(self, model: torch.nn.Module, batch: Mapping[str, Any]) -> list[torch.Tensor]:
        """Encoder outputs for every row of ``batch`` (a ``SpeechLLMCollator`` batch), reading the
        cache and running the tower (no grad, eval mode) on the missing rows only.

        Raises:
            ConfigError: gradients are enabled and the tower has trainable parameters (e.g. LoRA
                ``llm+audio``, or a model not wrapped by ``apply_lora``), or the batch
                has no ``audio_sha256`` (build it with ``SpeechLLMCollator``).
        """
        base = unwrap_model(model)
        backbone = backbone_of(base)
        tower = backbone.audio_tower(base)
        if torch.is_grad_enabled() and backbone.encoder_trainable(base):
            raise ConfigError("the audio tower has trainable parameters (LoRA on the encoder, or a model that is not "
                              "frozen); with cached outputs it would get no gradient and its cache would go stale. "
                              "Use LoRA targets 'llm', score under torch.no_grad(), or drop the encoder cache")
        if "audio_sha256" not in batch:
            raise ConfigError("batch has no 'audio_sha256' keys; build batches with SpeechLLMCollator to use the "
                              "encoder cache")
        digests = list(batch["audio_sha256"])
        keys = [self.key(d) for d in digests]
        found = [self._load(k) for k in keys]
        missing = [i for i, f in enumerate(found) if f is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            index = torch.tensor(missing, dtype=torch.long)
            was_training = tower.training
            tower.eval()
            try:
                with torch.no_grad():
                    computed = encode_audio(model, batch["input_features"].index_select(0, index),
                                            batch["feature_attention_mask"].index_select(0, index))
            finally:
                tower.train(was_training)
            self.encoder_calls += 1
            for i, tensor in zip(missing, computed):
                self._save(keys[i], tensor, digests[i])
                found[i] = tensor.detach()
        # as many rows as the row's audio tokens (what the collator checked against the features)
        expected = (batch["input_ids"] == base.config.audio_token_id).sum(-1).tolist()
        for i, (tensor, n) in enumerate(zip(found, expected)):
            if tensor.shape[0] != n:
                raise DataError(f"encoder cache entry {self.path(keys[i])} has {tensor.shape[0]} frames but the clip "
                                f"needs {n}; delete the cache directory {self.directory}")
        return found  # type: ignore[return-value]
