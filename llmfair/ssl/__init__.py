"""Frozen speech features and the EMO-SUPERB head (DESIGN.md "Backbones": frozen features + head).

Features are extracted once by a named extractor and cached (:func:`extract_features`):

- ``ssl``: per-layer mean-pooled hidden states (L+1, D) of a WavLM / wav2vec 2.0 / HuBERT model;
- ``speaker``: 256-d resemblyzer speaker embeddings (the ``speaker`` extra);
- ``acoustic``: pitch, energy and log-mel statistics, duration, voiced fraction.

:class:`EmoSuperbHead` trains on them with the (class-balanced) soft cross-entropy of
:mod:`llmfair.ssl.losses`, and returns the ``{"per_sample_loss", "logits", "features"}`` contract
that FairTrainer and the objectives consume.
"""
from llmfair.ssl.extractors import (
    FEATURE_EXTRACTORS,
    ExtractorOptions,
    FeatureExtractor,
    build_feature_extractor,
    register_feature_extractor,
)
from llmfair.ssl import acoustic as _acoustic  # noqa: F401  (registers "acoustic")
from llmfair.ssl import speaker as _speaker  # noqa: F401  (registers "speaker")
from llmfair.ssl import transformers_ssl as _transformers_ssl  # noqa: F401  (registers "ssl")
from llmfair.ssl.acoustic import AcousticExtractor, AcousticOptions, acoustic_features, feature_names, pitch_track
from llmfair.ssl.cache import audio_sha256, cache_path, extract_features
from llmfair.ssl.head import EmoSuperbHead, HeadOptions
from llmfair.ssl.losses import class_balanced_weights, soft_cross_entropy
from llmfair.ssl.speaker import SpeakerEmbeddingExtractor, SpeakerOptions
from llmfair.ssl.transformers_ssl import TransformersSSLExtractor, TransformersSSLOptions

__all__ = [
    "FEATURE_EXTRACTORS", "AcousticExtractor", "AcousticOptions", "EmoSuperbHead", "ExtractorOptions",
    "FeatureExtractor", "HeadOptions", "SpeakerEmbeddingExtractor", "SpeakerOptions", "TransformersSSLExtractor",
    "TransformersSSLOptions", "acoustic_features", "audio_sha256", "build_feature_extractor", "cache_path",
    "class_balanced_weights", "extract_features", "feature_names", "pitch_track", "register_feature_extractor",
    "soft_cross_entropy",
]
