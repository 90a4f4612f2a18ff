"""Per-layer mean-pooled hidden states of a frozen transformers SSL model (WavLM, wav2vec 2.0, HuBERT).

This is the upstream of the EMO-SUPERB pipeline that IDI and EMO-Debias build on (METHODS.md §1.1:
WavLM Base+ / XLS-R, frozen, with a learnable softmax weighting over its hidden layers in s3prl
style). Each clip becomes an array of shape (L+1, D): for every entry of ``hidden_states`` (the
CNN-projected input and each of the L transformer layers) the mean over the clip's frames.
Because the head's projector is linear and the s3prl layer weighting is a weighted sum, pooling
first and projecting after gives the same head outputs as EMO-SUPERB's per-frame projector
followed by mean pooling, while the cache holds (L+1)·D numbers per clip instead of T·(L+1)·D.

Batches are padded and the padding is masked out exactly: the model gets the attention mask and
only the clip's own frames (``_get_feature_vector_attention_mask``) enter the mean, so a clip's
features do not depend on its batch. Models whose convolutional front end normalises over time
(``feat_extract_norm == "group"``: wav2vec2-base, HuBERT base, WavLM Base/Base+) see the padding
in that normalisation whatever the mask says; for them only clips of identical length share a
forward pass, which keeps the result batch-independent at the cost of speed.

The model loads with ``trust_remote_code=False`` only. ``HF_HUB_OFFLINE`` defaults to ``1`` when
unset, so nothing is downloaded unless the caller sets ``HF_HUB_OFFLINE=0``.
"""
from __future__ import annotations

import hashlib
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from llmfair.errors import ConfigError, DataError
from llmfair.ssl.extractors import SAMPLE_RATE, ExtractorOptions, FeatureExtractor, check_clips, register_feature_extractor

logger = logging.getLogger(__name__)

_DTYPES = ("float32", "float16", "bfloat16")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json")


@dataclass
class TransformersSSLOptions(ExtractorOptions):
    """Options of the ``ssl`` extractor."""

    model: str = field(
        default="microsoft/wavlm-base-plus",
        metadata={"help": "hub id or local directory of a WavLM / wav2vec 2.0 / HuBERT model "
                          "(with its preprocessor_config.json)"})
    revision: str | None = field(
        default=None, metadata={"help": "hub revision (branch, tag or commit); pin a commit for reproducible caches"})
    dtype: str = field(default="float32", metadata={"help": f"weights dtype, one of {_DTYPES}"})
    device: str = field(
        default="auto", metadata={"help": "torch device; 'auto' takes cuda when available", "hash": False})

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ConfigError(f"ssl extractor: dtype {self.dtype!r} is not one of {_DTYPES}")
        if not self.model:
            raise ConfigError("ssl extractor: 'model' (hub id or local path) is empty")


def _hash_directory(path: Path) -> str:
    """sha256 over the names and bytes of the config and weight files of a local model directory."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))
    for p in files:
        digest.update(p.name.encode("utf-8") + b"\0")
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def masked_mean_per_layer(hidden_states: Sequence[Any], frame_mask: Any) -> Any:
    """Mean over valid frames of each layer: (B, T, D) × (L+1) and a (B, T) mask → (B, L+1, D).

    Accumulates in float32 whatever the model's dtype.
    """
    import torch

    mask = frame_mask.to(torch.float32)
    counts = mask.sum(dim=1).clamp_min(1.0)[:, None]
    pooled = [torch.einsum("btd,bt->bd", h.to(torch.float32), mask) / counts for h in hidden_states]
    return torch.stack(pooled, dim=1)


@register_feature_extractor("ssl")
class TransformersSSLExtractor(FeatureExtractor):
    """Per-layer mean-pooled hidden states (L+1, D) of a frozen transformers speech SSL model.

    See the module docstring for the pooling and padding rules.
    """

    options_class = TransformersSSLOptions

    def __init__(self, options: TransformersSSLOptions | None = None) -> None:
        super().__init__(options)
        self._model = None
        self._processor = None
        self._device = None

    # ------------------------------------------------------------------ identity
    def fingerprint(self) -> str:
        """Local directory: sha256 of its config and weight files. Hub id: ``hub:<id>@<revision>``."""
        path = Path(self.options.model)
        if path.is_dir():
            return "dir:" + _hash_directory(path)
        return f"hub:{self.options.model}@{self.options.revision or 'main'}"

    # ------------------------------------------------------------------ model
    def _load(self) -> None:
        if self._model is not None:
            return
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoFeatureExtractor, AutoModel

        opts = self.options
        offline = os.environ.get("HF_HUB_OFFLINE", "1").strip().lower() not in ("0", "false", "no", "off", "")
        kwargs: dict[str, Any] = {"revision": opts.revision, "trust_remote_code": False, "local_files_only": offline}
        try:
            processor = AutoFeatureExtractor.from_pretrained(opts.model, **kwargs)
            model = AutoModel.from_pretrained(opts.model, dtype=getattr(torch, opts.dtype), **kwargs)
        except (OSError, ValueError) as exc:
            where = "local directory" if Path(opts.model).is_dir() else (
                "hub id (offline: only the local Hugging Face cache is searched; set HF_HUB_OFFLINE=0 to download)"
                if offline else "hub id")
            raise ConfigError(f"ssl extractor: cannot load model {opts.model!r} as a {where}: {exc}") from None
        if not (hasattr(model, "_get_feat_extract_output_lengths") and hasattr(model, "_get_feature_vector_attention_mask")):
            raise ConfigError(
                f"ssl extractor: {opts.model!r} is a {type(model).__name__}; expected a wav2vec2-style speech encoder "
                "(WavLM, Wav2Vec2, HuBERT, ...) with a convolutional feature encoder")
        sampling_rate = getattr(processor, "sampling_rate", SAMPLE_RATE)
        if sampling_rate != SAMPLE_RATE:
            raise ConfigError(f"ssl extractor: {opts.model!r} expects {sampling_rate} Hz audio; llmfair feeds {SAMPLE_RATE} Hz")
        device = opts.device if opts.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self._device = torch.device(device)
        model.eval().requires_grad_(False).to(self._device)
        self._model, self._processor = model, processor
        logger.info("ssl extractor: loaded %s (%s, %d layers, hidden %d) on %s", opts.model, type(model).__name__,
                    model.config.num_hidden_layers, model.config.hidden_size, device)

    @property
    def model(self) -> Any:
        """The loaded frozen model (loads on first use)."""
        self._load()
        return self._model

    @property
    def min_samples(self) -> int:
        """The convolutional encoder's receptive field: shorter clips yield no frame."""
        cfg = self.model.config
        field_ = 1
        for kernel, stride in reversed(list(zip(cfg.conv_kernel, cfg.conv_stride))):
            field_ = (field_ - 1) * stride + kernel
        return field_

    @property
    def output_shape(self) -> tuple[int, int]:
        """(L+1, D)."""
        cfg = self.model.config
        return (cfg.num_hidden_layers + 1, cfg.hidden_size)

    def _batches(self, lengths: np.ndarray) -> list[np.ndarray]:
        """Indices per forward pass, longest first; equal lengths only for time-normalising front ends."""
        order = np.argsort(-lengths, kind="stable")
        if getattr(self.model.config, "feat_extract_norm", "layer") != "group":
            return [order]
        sorted_lengths = lengths[order]
        cuts = np.flatnonzero(np.diff(sorted_lengths)) + 1
        return np.split(order, cuts)

    def extract(self, audios: Sequence[np.ndarray]) -> np.ndarray:
        """Per-layer mean-pooled hidden states, float32 of shape (B, L+1, D)."""
        import torch

        self._load()
        clips = check_clips(audios, min_samples=self.min_samples, who=f"ssl extractor ({self.options.model})")
        lengths = np.array([c.size for c in clips])
        out = np.empty((len(clips),) + self.output_shape, dtype=np.float32)
        model, processor = self._model, self._processor
        for index in self._batches(lengths):
            batch = [clips[i] for i in index]
            inputs = processor(batch, sampling_rate=SAMPLE_RATE, padding=True, return_attention_mask=True,
                               return_tensors="pt")
            values = inputs["input_values"].to(self._device, dtype=model.dtype)
            sample_mask = inputs["attention_mask"].to(self._device)
            with torch.inference_mode(), warnings.catch_warnings():
                # WavLM passes a bool padding mask with a float position bias; torch warns on every batch
                warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask")
                result = model(values, attention_mask=sample_mask, output_hidden_states=True)
                hidden = result.hidden_states
                frame_mask = model._get_feature_vector_attention_mask(hidden[0].shape[1], sample_mask)
                pooled = masked_mean_per_layer(hidden, frame_mask)
            if not torch.isfinite(pooled).all():
                raise DataError(f"ssl extractor: non-finite features from {self.options.model!r} "
                                f"(dtype {self.options.dtype}); try dtype float32")
            out[index] = pooled.cpu().numpy()
        return out
