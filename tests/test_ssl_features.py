"""Frozen feature extractors and their cache: the transformers SSL pooling is batch-independent,
resemblyzer embeds offline and matches its own reference, the acoustic set agrees with librosa and
numpy, and the cache extracts each clip once per extractor configuration."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from llmfair.data.audio import load_audio, write_wav
from llmfair.data.example import Example
from llmfair.errors import ConfigError, DataError
from llmfair.ssl import (
    FEATURE_EXTRACTORS,
    AcousticOptions,
    ExtractorOptions,
    FeatureExtractor,
    acoustic_features,
    build_feature_extractor,
    cache_path,
    extract_features,
    feature_names,
    pitch_track,
    register_feature_extractor,
)

SR = 16_000


pytestmark = pytest.mark.usefixtures("one_thread")


def harmonic_tone(f0: float, seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    """Five harmonics with 1/k amplitudes and random phases: a voiced, speech-like periodic signal."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 6))
    return (0.2 * x).astype(np.float32)


# ------------------------------------------------------------------------------------- registry
def test_registry_names_and_errors() -> None:
    assert {"ssl", "speaker", "acoustic"} <= set(FEATURE_EXTRACTORS)
    with pytest.raises(ConfigError, match="unknown feature extractor 'wavlm-xl'"):
        build_feature_extractor("wavlm-xl")
    with pytest.raises(ConfigError, match="registered twice"):
        register_feature_extractor("acoustic")(type("Other", (FeatureExtractor,), {}))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['n_bands'\]"):
        build_feature_extractor("acoustic", {"n_bands": 20})
    with pytest.raises(ConfigError, match="fmin"):
        build_feature_extractor("acoustic", {"fmin": 600.0})
    assert build_feature_extractor("acoustic", {"n_mels": 20}).options.n_mels == 20


# ------------------------------------------------------------------------------------- transformers SSL
def tiny_ssl_model(folder: Path, family: str, seed: int = 0) -> Path:
    """A random 2-layer, hidden-32 speech encoder and its feature extractor, saved to ``folder``."""
    from transformers import AutoModel, HubertConfig, Wav2Vec2Config, Wav2Vec2FeatureExtractor, WavLMConfig

    config_cls, norm = {"wavlm": (WavLMConfig, "layer"), "hubert": (HubertConfig, "layer"),
                        "wav2vec2-group": (Wav2Vec2Config, "group")}[family]
    config = config_cls(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        conv_dim=(16, 16, 16), conv_stride=(5, 4, 4), conv_kernel=(10, 8, 4),
                        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                        feat_extract_norm=norm, do_stable_layer_norm=norm == "layer")
    torch.manual_seed(seed)
    AutoModel.from_config(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(folder)
    return folder


def pooled_alone(folder: Path, clip: np.ndarray) -> np.ndarray:
    """Reference: one clip through the model without any padding, mean over all frames per layer."""
    from transformers import AutoFeatureExtractor, AutoModel

    model = AutoModel.from_pretrained(folder).eval()
    inputs = AutoFeatureExtractor.from_pretrained(folder)([clip], sampling_rate=SR, return_tensors="pt")
    with torch.no_grad():
        hidden = model(inputs["input_values"], output_hidden_states=True).hidden_states
    return torch.stack([h[0].mean(dim=0) for h in hidden]).numpy()


@pytest.mark.parametrize("family", ["wavlm", "hubert", "wav2vec2-group"])
def test_ssl_batch_equals_each_clip_alone(tmp_path, family) -> None:
    folder = tiny_ssl_model(tmp_path / family, family)
    rng = np.random.default_rng(1)
    clips = [rng.standard_normal(n).astype(np.float32) for n in (4000, 2500, 3217, 2500)]
    extractor = build_feature_extractor("ssl", {"model": str(folder)})
    batch = extractor.extract(clips)
    assert batch.shape == (4, 3, 32)  # (B, L+1, D)
    for i, clip in enumerate(clips):
        np.testing.assert_allclose(batch[i], pooled_alone(folder, clip), rtol=1e-4, atol=1e-5)
    # the padded frames would change the mean: the masking is what makes the batch exact
    assert not np.allclose(batch[0], batch[1], atol=1e-3)


def test_ssl_short_clip_and_fingerprint(tmp_path) -> None:
    folder = tiny_ssl_model(tmp_path / "m", "wavlm")
    extractor = build_feature_extractor("ssl", {"model": str(folder)})
    assert extractor.min_samples == 10 + 5 * (7 + 4 * 3)  # receptive field of kernels (10, 8, 4), strides (5, 4, 4)
    with pytest.raises(DataError, match="clip 1 has 50 samples"):
        extractor.extract([np.zeros(2000, np.float32), np.zeros(50, np.float32)])
    before = extractor.config_hash()
    assert build_feature_extractor("ssl", {"model": str(folder), "device": "cpu"}).config_hash() == before
    tiny_ssl_model(folder, "wavlm", seed=1)  # other weights at the same path
    assert build_feature_extractor("ssl", {"model": str(folder)}).config_hash() != before
    with pytest.raises(ConfigError, match="cannot load model"):
        build_feature_extractor("ssl", {"model": "no-such-org/no-such-model"}).extract([np.zeros(2000, np.float32)])


# ------------------------------------------------------------------------------------- speaker embeddings
@pytest.fixture(scope="module")
def speaker_extractor():
    return build_feature_extractor("speaker")


def test_speaker_embedding_matches_resemblyzer(speaker_extractor, real_clip) -> None:
    clip = load_audio(real_clip)
    emb = speaker_extractor.extract([clip, clip[: SR]])
    import resemblyzer  # the extractor imported it first (and silenced its scipy deprecation warning)

    assert emb.shape == (2, 256) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    reference = resemblyzer.VoiceEncoder(device="cpu", verbose=False)
    for row, wav in zip(emb, (clip, clip[: SR])):
        np.testing.assert_allclose(row, reference.embed_utterance(resemblyzer.preprocess_wav(wav)), atol=1e-5)


def test_speaker_similarity_orders_voices(speaker_extractor, real_clip) -> None:
    from scipy.signal import resample_poly

    clip = load_audio(real_clip)
    noisy = clip + 0.003 * np.random.default_rng(0).standard_normal(clip.size).astype(np.float32)
    lower = resample_poly(clip, 5, 4).astype(np.float32)  # played at 16 kHz: pitch and formants ×0.8
    higher = resample_poly(clip, 4, 5).astype(np.float32)  # ×1.25
    e = speaker_extractor.extract([clip, noisy, lower, higher])
    same = float(e[0] @ e[1])
    assert same > 0.8
    assert float(e[0] @ e[2]) < same - 0.1 and float(e[0] @ e[3]) < same - 0.1


def test_speaker_missing_package_names_the_extra(monkeypatch) -> None:
    import sys

    from llmfair.ssl.speaker import SpeakerEmbeddingExtractor

    monkeypatch.setitem(sys.modules, "resemblyzer", None)
    with pytest.raises(ConfigError, match="'speaker' extra"):
        SpeakerEmbeddingExtractor().extract([np.zeros(SR, np.float32)])


# ------------------------------------------------------------------------------------- acoustic features
@pytest.mark.parametrize("f0", [120.0, 210.0])
def test_pitch_of_harmonic_tone(f0) -> None:
    track, voiced = pitch_track(harmonic_tone(f0))
    assert voiced.mean() > 0.9
    assert abs(np.median(track[voiced]) - f0) / f0 < 0.03


def test_pitch_of_real_clip_and_librosa_yin(real_clip) -> None:
    import librosa

    clip = load_audio(real_clip)
    opts = AcousticOptions()
    track, voiced = pitch_track(clip, opts)
    assert track.shape == (1 + clip.size // opts.hop_length,)
    assert 0.1 < voiced.mean() < 0.6
    assert 100.0 < np.median(track[voiced]) < 220.0
    reference = librosa.yin(clip, fmin=opts.fmin, fmax=opts.fmax, sr=SR, frame_length=opts.pitch_frame_length,
                            hop_length=opts.hop_length, trough_threshold=opts.trough_threshold)
    assert reference.shape == track.shape
    assert abs(np.median(track[voiced]) / np.median(reference[voiced]) - 1) < 0.05
    assert np.mean(np.abs(track[voiced] / reference[voiced] - 1) < 0.05) > 0.9
    for f0 in (120.0, 210.0):
        tone = harmonic_tone(f0)
        mine, v = pitch_track(tone, opts)
        ref = librosa.yin(tone, fmin=opts.fmin, fmax=opts.fmax, sr=SR, frame_length=opts.pitch_frame_length,
                          hop_length=opts.hop_length)
        assert abs(np.median(mine[v]) / np.median(ref[v]) - 1) < 0.05


def test_acoustic_features_against_numpy_and_librosa(real_clip) -> None:
    import librosa

    clip = load_audio(real_clip)
    silence = np.zeros(3000, np.float32)
    clips = [clip, harmonic_tone(120.0, 0.7), silence, clip[:4000]]
    opts = AcousticOptions()
    names = feature_names(opts)
    assert len(names) == 91 and names[:5] == ("f0_mean", "f0_std", "f0_median", "f0_p05", "f0_p95")
    assert names[-2:] == ("duration_s", "voiced_fraction") and names[9] == "logmel_mean_00"
    out = acoustic_features(clips, opts)
    assert out.shape == (4, 91) and out.dtype == np.float32
    col = {n: i for i, n in enumerate(names)}
    for i, c in enumerate(clips):
        np.testing.assert_allclose(out[i], acoustic_features([c], opts)[0], rtol=1e-5, atol=1e-5)  # batch-independent
        track, voiced = pitch_track(c, opts)
        f0 = track[voiced]
        expected_pitch = ([f0.mean(), f0.std(), *np.percentile(f0, [50, 5, 95])] if f0.size else [0.0] * 5)
        np.testing.assert_allclose(out[i, :5], expected_pitch, rtol=1e-5, atol=1e-4)
        assert out[i, col["duration_s"]] == pytest.approx(c.size / SR)
        assert out[i, col["voiced_fraction"]] == pytest.approx(voiced.mean())
        if not c.any():
            continue
        rms = librosa.feature.rms(y=c, frame_length=opts.win_length, hop_length=opts.hop_length,
                                  center=True, pad_mode="constant")[0]
        db = 20 * np.log10(np.maximum(rms, 1e-5))
        np.testing.assert_allclose(out[i, 5:9], [rms.mean(), rms.std(), db.mean(), db.std()], rtol=1e-3, atol=1e-5)
        mel = librosa.feature.melspectrogram(y=c, sr=SR, n_fft=opts.n_fft, win_length=opts.win_length,
                                             hop_length=opts.hop_length, center=True, pad_mode="constant",
                                             power=2.0, n_mels=opts.n_mels, htk=True, norm=None)
        logmel = np.log(np.maximum(mel, 1e-10))
        np.testing.assert_allclose(out[i, 9:49], logmel.mean(axis=1), rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(out[i, 49:89], logmel.std(axis=1), rtol=1e-3, atol=1e-3)
    assert out[2, col["voiced_fraction"]] == 0.0 and out[2, col["f0_median"]] == 0.0  # silence
    assert out[1, col["voiced_fraction"]] > 0.9


# ------------------------------------------------------------------------------------- cache
@dataclass
class CountingOptions(ExtractorOptions):
    scale: float = 1.0
    device: str = field(default="cpu", metadata={"hash": False})


class CountingExtractor(FeatureExtractor):
    """(mean, max, length) × scale per clip; counts the clips it was asked to extract."""

    name = "counting"
    options_class = CountingOptions

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.calls = 0
        self.clips = 0

    def extract(self, audios):
        self.calls += 1
        self.clips += len(audios)
        return np.stack([[a.mean(), a.max(), a.size] for a in audios]).astype(np.float32) * self.options.scale


def _wavs(folder: Path, n: int = 5) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"clip{i}.wav"
        write_wav(path, 0.1 * rng.standard_normal(1600 + 160 * i).astype(np.float32))
        paths.append(path)
    return paths


def test_cache_second_call_extracts_nothing(tmp_path) -> None:
    paths = _wavs(tmp_path / "audio")
    items = [*paths, str(paths[0])]  # the same file twice is extracted once
    ex = CountingExtractor()
    first = extract_features(ex, items, tmp_path / "cache", batch_size=2, progress=False)
    assert (ex.calls, ex.clips) == (3, 5)
    expected = np.stack([[a.mean(), a.max(), a.size] for a in map(load_audio, items)])
    np.testing.assert_allclose(first, expected, rtol=1e-6)
    again = CountingExtractor()
    second = extract_features(again, items, tmp_path / "cache", progress=False)
    assert again.calls == 0
    np.testing.assert_array_equal(first, second)
    examples = [Example(id=f"e{i}", audio=str(p), text="", language="eng", modality="audio", emotion=0,
                        gender="male", speaker="s", split="train") for i, p in enumerate(paths)]
    arrays = [load_audio(p) for p in paths]
    np.testing.assert_array_equal(extract_features(again, examples, tmp_path / "cache", progress=False), first[:5])
    extract_features(again, arrays, tmp_path / "cache", progress=False)  # arrays key on samples, not file bytes
    assert again.clips == 5
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_cache_key_follows_config_and_audio_bytes(tmp_path) -> None:
    paths = _wavs(tmp_path / "audio", 3)
    cache = tmp_path / "cache"
    base = CountingExtractor()
    extract_features(base, paths, cache, progress=False)
    device_only = CountingExtractor(CountingOptions(device="cuda"))  # not hashed: same numbers
    assert device_only.config_hash() == base.config_hash()
    extract_features(device_only, paths, cache, progress=False)
    assert device_only.clips == 0
    scaled = CountingExtractor(CountingOptions(scale=2.0))
    assert scaled.config_hash() != base.config_hash()
    out = extract_features(scaled, paths, cache, progress=False)
    assert scaled.clips == 3
    write_wav(paths[1], np.full(1600, 0.25, np.float32))  # new bytes at the same path
    again = CountingExtractor()
    refreshed = extract_features(again, paths, cache, progress=False)
    assert again.clips == 1
    assert refreshed[1, 2] == 1600 and refreshed[1, 1] == pytest.approx(0.25, abs=1e-4)
    np.testing.assert_allclose(out[[0, 2]], 2 * refreshed[[0, 2]])


def test_corrupted_cache_file_is_recomputed(tmp_path, caplog) -> None:
    from llmfair.ssl.cache import audio_sha256

    paths = _wavs(tmp_path / "audio", 2)
    cache = tmp_path / "cache"
    ex = CountingExtractor()
    good = extract_features(ex, paths, cache, progress=False)
    damaged = cache_path(ex, audio_sha256(paths[0]), cache)
    damaged.write_bytes(damaged.read_bytes()[:20])
    again = CountingExtractor()
    with caplog.at_level(logging.WARNING, logger="llmfair.ssl.cache"):
        out = extract_features(again, paths, cache, progress=False)
    assert again.clips == 1
    assert any("unreadable" in r.message and str(damaged) in r.message for r in caplog.records)
    np.testing.assert_array_equal(out, good)
    third = CountingExtractor()
    extract_features(third, paths, cache, progress=False)
    assert third.clips == 0  # repaired on disk


def test_cache_errors_name_the_input(tmp_path) -> None:
    with pytest.raises(DataError, match="missing.wav"):
        extract_features(CountingExtractor(), [tmp_path / "missing.wav"], tmp_path / "cache", progress=False)
    with pytest.raises(ConfigError, match="batch_size"):
        extract_features(CountingExtractor(), [np.zeros(10, np.float32)], tmp_path / "cache", batch_size=0)
    assert dataclasses.fields(CountingOptions)[1].metadata["hash"] is False


def test_cache_with_a_registered_extractor(tmp_path, real_clip) -> None:
    ex = build_feature_extractor("acoustic")
    out = extract_features(ex, [real_clip], tmp_path / "cache", progress=False)
    np.testing.assert_allclose(out, acoustic_features([load_audio(real_clip)]), rtol=1e-6)
    assert (tmp_path / "cache" / f"acoustic-{ex.config_hash()[:16]}" / "extractor.json").is_file()
