"""Speaker embeddings from resemblyzer's GE2E voice encoder (256-d, unit norm).

IDI's unsupervised group inference clusters speaker embeddings with k-means (METHODS.md §2.14(b)).
The paper uses an unnamed ECAPA-TDNN checkpoint; resemblyzer is used here because its 17 MB encoder
ships inside the wheel and loads offline [I: a substitute, not the paper's model].

The computation is resemblyzer's ``VoiceEncoder.embed_utterance`` (Wan et al. 2018, GE2E): volume
normalisation to -30 dBFS and removal of long silences by WebRTC VAD (``preprocess_wav``), 40-band
mel frames, 1.6 s partial windows at 1.3 per second, the L2-normalised mean of the partial
embeddings. Here the partial windows of *all* clips of a batch go through the LSTM in one forward
pass, and the weights are loaded with ``torch.load(weights_only=True)``.

Install: ``pip install resemblyzer --no-deps`` and ``pip install webrtcvad-wheels`` (the ``speaker``
extra lists both; resemblyzer's own ``webrtcvad`` dependency imports ``pkg_resources``, which
setuptools >= 82 no longer ships). librosa and scipy are needed too.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from llmfair.errors import ConfigError
from llmfair.ssl.extractors import ExtractorOptions, FeatureExtractor, check_clips, register_feature_extractor

logger = logging.getLogger(__name__)

EMBEDDING_DIM = 256
_INSTALL_HINT = ("speaker embeddings need the 'speaker' extra: pip install resemblyzer --no-deps && "
                 "pip install webrtcvad-wheels librosa scipy")


def import_resemblyzer() -> Any:
    """Import resemblyzer, or raise ConfigError saying how to install the ``speaker`` extra."""
    import warnings

    try:
        with warnings.catch_warnings():  # resemblyzer imports scipy.ndimage.morphology (deprecated alias)
            warnings.simplefilter("ignore", DeprecationWarning)
            import resemblyzer
    except ImportError as exc:  # also webrtcvad's pkg_resources failure (ModuleNotFoundError)
        raise ConfigError(f"{_INSTALL_HINT} (import failed: {exc})") from None
    return resemblyzer


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``torch.set_num_threads(n)``, restoring the previous count afterwards.

    The LSTM of resemblyzer is small; measured on 2 cores it is steady with one thread and
    erratic with two (ENVIRONMENT.md).
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class SpeakerOptions(ExtractorOptions):
    """Options of the ``speaker`` extractor (defaults are resemblyzer's)."""

    rate: float = field(default=1.3, metadata={"help": "partial 1.6 s windows per second of speech"})
    min_coverage: float = field(
        default=0.75, metadata={"help": "keep the last partial window when it covers at least this fraction"})
    trim_silence: bool = field(
        default=True, metadata={"help": "cut long silences (WebRTC VAD) before embedding; the volume is "
                                        "normalised to -30 dBFS either way"})
    num_threads: int = field(default=1, metadata={"help": "torch threads while embedding", "hash": False})
    device: str = field(default="cpu", metadata={"help": "torch device of the LSTM", "hash": False})

    def __post_init__(self) -> None:
        if not 0.0 < self.min_coverage <= 1.0:
            raise ConfigError(f"speaker extractor: min_coverage must be in (0, 1], got {self.min_coverage}")
        if self.rate <= 0:
            raise ConfigError(f"speaker extractor: rate must be positive, got {self.rate}")
        if self.num_threads < 1:
            raise ConfigError(f"speaker extractor: num_threads must be >= 1, got {self.num_threads}")


def _build_encoder(resemblyzer: Any, device: str) -> Any:
    """resemblyzer's network (3-layer LSTM 40→256, linear 256→256) with its shipped weights."""
    import torch
    from torch import nn

    hp = resemblyzer.hparams

    class VoiceEncoderNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(hp.mel_n_channels, hp.model_hidden_size, hp.model_num_layers, batch_first=True)
            self.linear = nn.Linear(hp.model_hidden_size, hp.model_embedding_size)

        def forward(self, mels: torch.Tensor) -> torch.Tensor:
            """(P, frames, mels) → (P, 256) non-negative unit vectors (GE2E partial embeddings)."""
            _, (hidden, _) = self.lstm(mels)
            raw = torch.relu(self.linear(hidden[-1]))
            return raw / torch.linalg.vector_norm(raw, dim=1, keepdim=True).clamp_min(1e-12)

    weights = Path(resemblyzer.__file__).resolve().parent / "pretrained.pt"
    if not weights.is_file():
        raise ConfigError(f"resemblyzer's encoder weights are missing: {weights}; reinstall resemblyzer")
    checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
    state = {k: v for k, v in checkpoint["model_state"].items() if k.startswith(("lstm.", "linear."))}
    net = VoiceEncoderNet()
    net.load_state_dict(state, strict=True)
    return net.eval().requires_grad_(False).to(device)


@register_feature_extractor("speaker")
class SpeakerEmbeddingExtractor(FeatureExtractor):
    """256-d unit-norm GE2E speaker embeddings (resemblyzer); see the module docstring."""

    options_class = SpeakerOptions

    def __init__(self, options: SpeakerOptions | None = None) -> None:
        super().__init__(options)
        self._resemblyzer = None
        self._net = None

    def fingerprint(self) -> str:
        """resemblyzer's version (its weights ship in the wheel)."""
        from importlib.metadata import PackageNotFoundError, version

        try:
            return "resemblyzer " + version("resemblyzer")
        except PackageNotFoundError:
            raise ConfigError(_INSTALL_HINT) from None

    def _load(self) -> None:
        if self._net is None:
            self._resemblyzer = import_resemblyzer()
            self._net = _build_encoder(self._resemblyzer, self.options.device)

    def preprocess(self, audio: np.ndarray) -> np.ndarray:
        """resemblyzer's ``preprocess_wav`` (volume up to -30 dBFS, VAD trim) on a 16 kHz clip.

        When the VAD finds no speech at all the normalised clip is kept whole (with a warning)
        rather than embedding nothing.
        """
        self._load()
        audio_mod = self._resemblyzer.audio
        normalised = audio_mod.normalize_volume(audio, self._resemblyzer.hparams.audio_norm_target_dBFS,
                                                increase_only=True)
        if not self.options.trim_silence:
            return normalised.astype(np.float32)
        trimmed = audio_mod.trim_long_silences(normalised)
        if trimmed.size == 0:
            logger.warning("speaker extractor: no speech found by the VAD in a %.2f s clip; embedding it untrimmed",
                           audio.size / self._resemblyzer.hparams.sampling_rate)
            return normalised.astype(np.float32)
        return trimmed.astype(np.float32)

    def _partials(self, wav: np.ndarray) -> np.ndarray:
        """Mel frames of the partial windows of one clip: (P, 160, 40), as ``embed_utterance`` cuts them."""
        r = self._resemblyzer
        wav_slices, mel_slices = r.VoiceEncoder.compute_partial_slices(wav.size, self.options.rate,
                                                                        self.options.min_coverage)
        needed = wav_slices[-1].stop
        if needed >= wav.size:
            wav = np.pad(wav, (0, needed - wav.size), mode="constant")
        mel = r.audio.wav_to_mel_spectrogram(wav)
        return np.stack([mel[s] for s in mel_slices])

    def extract(self, audios: Sequence[np.ndarray]) -> np.ndarray:
        """Unit-norm speaker embeddings, float32 of shape (B, 256)."""
        import torch

        self._load()
        clips = check_clips(audios, min_samples=1, who="speaker extractor")
        partials = [self._partials(self.preprocess(c)) for c in clips]
        counts = np.array([p.shape[0] for p in partials])
        owner = torch.from_numpy(np.repeat(np.arange(len(clips)), counts))
        mels = torch.from_numpy(np.concatenate(partials)).to(self.options.device)
        with torch_threads(self.options.num_threads), torch.inference_mode():
            embeds = self._net(mels).cpu().to(torch.float64)
        sums = torch.zeros(len(clips), embeds.shape[1], dtype=torch.float64).index_add_(0, owner, embeds)
        mean = sums / torch.from_numpy(counts)[:, None]
        return (mean / torch.linalg.vector_norm(mean, dim=1, keepdim=True)).to(torch.float32).numpy()
