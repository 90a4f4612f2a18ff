"""Speech-LLM backbone: verbalizer, collator, per-sample scoring, gradients, encoder cache."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from llmfair.data.labels import CREMA_D, MELD
from llmfair.errors import ConfigError, DataError
from llmfair.speechllm.collator import SpeechLLMCollator, audio_sha256, check_audio_tokens, model_inputs
from llmfair.speechllm.encoder_cache import EncoderCache, encode_audio
from llmfair.speechllm.loading import load_speech_llm
from llmfair.speechllm.lora import LoraOptions, apply_lora
from llmfair.speechllm.prompts import PromptTemplate
from llmfair.speechllm.scoring import score_batch
from llmfair.speechllm.verbalizer import Verbalizer

torch.set_num_threads(1)

DURATIONS = (1.0, 2.5, 1.7, 3.0)  # different lengths → different padding per row
PREFIX = "<|im_start|>assistant\n"


@pytest.fixture()
def tiny(llmfair_cache):
    """A fresh (model, processor) per test: LoRA wraps modify the model in place."""
    model, processor = load_speech_llm("tiny")
    return model.eval(), processor


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> list[Path]:
    """Synthetic 16 kHz clips (a sine plus noise) of different lengths, written with soundfile."""
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    paths = []
    for i, seconds in enumerate(DURATIONS):
        t = np.arange(int(seconds * 16_000)) / 16_000
        audio = 0.3 * np.sin(2 * np.pi * (150 + 60 * i) * t) + 0.05 * rng.standard_normal(t.size)
        path = root / f"clip{i}.wav"
        sf.write(path, audio.astype(np.float32), 16_000, subtype="FLOAT")
        paths.append(path)
    return paths


def _records(clips, *, modality=("audio", "audio_text", "audio_text", "audio")):
    languages = ("eng", "deu", "jpn", "eng")
    texts = ("We were on a break.", "Das ist eine wunderbare Nachricht.", "しんじられない！", "Please leave me alone.")
    return [{"id": f"utt{i}", "audio": str(p), "text": texts[i], "language": languages[i], "modality": modality[i],
             "emotion": (2 * i + 1) % 7, "group_ids": i % 2, "index": 10 + i} for i, p in enumerate(clips)]


def _reference_last_logits(model, batch, verbalizer):
    with torch.no_grad():
        logits = model(**model_inputs(batch)).logits
    return logits[:, -1][:, verbalizer.label_token_ids]


def _perturb_lora(model, seed=1):
    """LoRA B starts at zero; give every adapter weight a random value so adapters matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))


# ---------------------------------------------------------------- verbalizer
def test_verbalizer_first_tokens_are_distinct_for_meld_and_crema_d(tiny):
    _, processor = tiny
    tok = processor.tokenizer
    for space in (MELD, CREMA_D):
        verb = Verbalizer(space.classes, tok)
        prefix = tok(PREFIX, add_special_tokens=False)["input_ids"]
        expected = [tok(PREFIX + w, add_special_tokens=False)["input_ids"][len(prefix)] for w in space.classes]
        assert verb.label_token_ids.tolist() == expected
        assert len(set(expected)) == space.num_classes
        assert verb.to_dict()["first_tokens"] == list(space.classes)  # single tokens on the tiny vocabulary


def test_verbalizer_rejects_words_sharing_a_first_token(tiny):
    _, processor = tiny
    tok = processor.tokenizer
    prefix_len = len(tok(PREFIX, add_special_tokens=False)["input_ids"])
    first = {w: tok(PREFIX + w, add_special_tokens=False)["input_ids"][prefix_len] for w in ("fear", "fearful")}
    assert first["fear"] == first["fearful"]  # 'fearful' is not in the tiny vocabulary: fear + ful
    collision = r"'fearful' \(class 'surprise'\) and 'fear' \(class 'fear'\) share their first token 'fear'"
    with pytest.raises(ConfigError, match=collision):
        Verbalizer(MELD.classes, tok, words={"surprise": "fearful"})
    with pytest.raises(ConfigError, match=r"'sad'.*'sad'"):
        Verbalizer(CREMA_D.classes, tok, words=["angry", "sad", "sad", "fear", "neutral", "happy"])
    with pytest.raises(ConfigError, match="unknown class"):
        Verbalizer(MELD.classes, tok, words={"boredom": "bored"})
    with pytest.raises(ConfigError, match="2 words for 7 classes"):
        Verbalizer(MELD.classes, tok, words=["a", "b"])


def test_verbalizer_losses_match_a_hand_computation(tiny):
    model, processor = tiny
    verb = Verbalizer(CREMA_D.classes, processor.tokenizer)
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((5, 6)).astype(np.float32)
    labels = np.array([0, 5, 2, 2, 3])
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    hard = verb.per_sample_loss(torch.from_numpy(logits), torch.from_numpy(labels))
    np.testing.assert_allclose(hard.numpy(), -logp[np.arange(5), labels], rtol=1e-6)
    soft = rng.dirichlet(np.ones(6), size=5).astype(np.float32)
    np.testing.assert_allclose(verb.per_sample_loss(torch.from_numpy(logits), torch.from_numpy(soft)).numpy(),
                               -(soft * logp).sum(1), rtol=1e-5)
    probs = verb.probabilities(torch.from_numpy(logits)).numpy()
    np.testing.assert_allclose(probs, np.exp(logp), rtol=1e-5)
    with pytest.raises(ConfigError, match="out of range"):
        verb.per_sample_loss(torch.from_numpy(logits), torch.tensor([0, 1, 2, 3, 6]))
    hidden = torch.randn(3, 64)
    head = model.get_output_embeddings()
    full = hidden @ head.weight.T
    torch.testing.assert_close(verb.class_logits(hidden, head), full[:, verb.label_token_ids], atol=1e-6, rtol=0)
    torch.testing.assert_close(verb.class_logits(full), full[:, verb.label_token_ids])


# ---------------------------------------------------------------- collator
def test_collator_uses_audio_left_padding_and_checks_token_counts(tiny, clips):
    model, processor = tiny
    verb = Verbalizer(MELD.classes, processor.tokenizer)
    collate = SpeechLLMCollator(processor, PromptTemplate(), verb)
    records = _records(clips)
    batch = collate(records)
    audio_id = model.config.audio_token_id
    assert batch["input_features"].shape == (4, 128, 1000)
    # 100 mel frames per second; 25 audio tokens per second
    assert batch["feature_attention_mask"].sum(-1).tolist() == [int(d * 100) for d in DURATIONS]
    assert (batch["input_ids"] == audio_id).sum(-1).tolist() == [int(d * 25) for d in DURATIONS]
    assert batch["attention_mask"][:, -1].all()
    for i, record in enumerate(records):  # each row = the sample alone, left-padded
        alone = collate([record])
        n = alone["input_ids"].shape[1]
        pad = batch["input_ids"].shape[1] - n
        assert torch.equal(batch["input_ids"][i, pad:], alone["input_ids"][0])
        assert not batch["attention_mask"][i, :pad].any() and batch["attention_mask"][i, pad:].all()
        assert (batch["input_ids"][i, :pad] == processor.tokenizer.pad_token_id).all()
    assert batch["answer_position"].tolist() == [batch["input_ids"].shape[1] - 1] * 4
    assert batch["emotion"].tolist() == [r["emotion"] for r in records]
    assert batch["group_ids"].dtype == torch.long and batch["group_ids"].tolist() == [0, 1, 0, 1]
    assert batch["index"].tolist() == [10, 11, 12, 13]
    assert batch["id"] == ["utt0", "utt1", "utt2", "utt3"]
    assert batch["audio_sha256"][0] == audio_sha256(sf.read(clips[0], dtype="float32")[0])
    # a transcript only for audio_text rows
    decoded = processor.tokenizer.batch_decode(batch["input_ids"])
    assert "wunderbare" in decoded[1] and "break" not in decoded[0]

    corrupted = batch["input_ids"].clone()
    corrupted[2, torch.nonzero(corrupted[2] == audio_id)[0, 0]] = processor.tokenizer.pad_token_id
    with pytest.raises(DataError, match=r"sample 'utt2': 41 <\|AUDIO\|> tokens but 42 audio features"):
        check_audio_tokens(corrupted, batch["feature_attention_mask"], audio_id, batch["id"])


class _DroppingProcessor:
    """Stands in for a processor that lost audio tokens (a truncated prompt) or the audio itself."""

    def __init__(self, processor, mode):
        self._processor, self._mode = processor, mode

    def __getattr__(self, name):
        return getattr(self._processor, name)

    def __call__(self, **kwargs):
        out = self._processor(**kwargs)
        if self._mode == "no_audio":
            return {k: v for k, v in out.items() if k not in ("input_features", "feature_attention_mask")}
        ids = out["input_ids"]
        first = torch.nonzero(ids[1] == self._processor.audio_token_id)[0, 0]
        ids[1, first] = self._processor.tokenizer.pad_token_id
        return out


def test_collator_raises_on_missing_audio_or_token_mismatch(tiny, clips):
    _, processor = tiny
    verb = Verbalizer(MELD.classes, processor.tokenizer)
    with pytest.raises(DataError, match="sample 'utt1'"):
        SpeechLLMCollator(_DroppingProcessor(processor, "tokens"), PromptTemplate(), verb)(_records(clips))
    with pytest.raises(ConfigError, match="plural audios keyword"):
        SpeechLLMCollator(_DroppingProcessor(processor, "no_audio"), PromptTemplate(), verb)(_records(clips))
    collate = SpeechLLMCollator(processor, PromptTemplate(), verb)
    short = dict(_records(clips)[0], audio=np.zeros(400, dtype=np.float32))
    with pytest.raises(DataError, match="utt0.*shorter"):
        collate([short])
    with pytest.raises(DataError, match="utt0.*not a class index"):
        collate([dict(_records(clips)[0], emotion=7)])
    with pytest.raises(ConfigError, match="max_audio_seconds"):
        SpeechLLMCollator(processor, PromptTemplate(), verb, max_audio_seconds=12)


def test_collator_truncates_long_clips_and_counts_them(tiny, clips, caplog):
    model, processor = tiny
    verb = Verbalizer(MELD.classes, processor.tokenizer)
    collate = SpeechLLMCollator(processor, PromptTemplate(), verb)
    rng = np.random.default_rng(2)
    long = dict(_records(clips)[0], id="long", audio=(0.1 * rng.standard_normal(12 * 16_000)).astype(np.float32))
    with caplog.at_level(logging.WARNING, logger="llmfair.speechllm.collator"):
        batch = collate([long, _records(clips)[1]])
        collate([long])
    assert collate.num_truncated == 2 and collate.num_clips == 3
    assert sum("truncated" in r.getMessage() for r in caplog.records) == 1  # warned once
    assert batch["feature_attention_mask"][0].sum() == 1000  # exactly the 10 s window
    assert (batch["input_ids"][0] == model.config.audio_token_id).sum() == 250
    assert batch["audio_sha256"][0] == audio_sha256(long["audio"][: 10 * 16_000])
    two = SpeechLLMCollator(processor, PromptTemplate(), verb, max_audio_seconds=2.0)
    b = two([_records(clips)[3]])  # 3 s → 2 s
    assert two.num_truncated == 1 and (b["input_ids"] == model.config.audio_token_id).sum() == 50


def test_collator_lm_labels_mask_everything_but_the_answer(tiny, clips):
    model, processor = tiny
    verb = Verbalizer(MELD.classes, processor.tokenizer, words={"joy": "joyous"})  # a 3-token answer word
    collate = SpeechLLMCollator(processor, PromptTemplate(), verb, answer_loss="lm")
    records = _records(clips)
    records[0]["emotion"] = MELD.index("joy")
    batch = collate(records)
    ids, labels = batch["input_ids"], batch["labels"]
    tok = processor.tokenizer
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert (labels[ids == model.config.audio_token_id] == -100).all()
    assert (labels[batch["attention_mask"] == 0] == -100).all()
    assert (batch["attention_mask"] == 0).any()  # the batch really has padding
    seq = ids.shape[1]
    for i, record in enumerate(records):
        word = verb.words[record["emotion"]]
        answer = tok(word, add_special_tokens=False)["input_ids"] + [im_end]
        kept = torch.nonzero(labels[i] != -100).flatten().tolist()
        assert kept == list(range(seq - len(answer), seq))
        assert labels[i, kept].tolist() == answer
        assert batch["answer_position"][i] == seq - len(answer) - 1
    assert len(tok("joyous", add_special_tokens=False)["input_ids"]) == 3


def test_collator_soft_labels(tiny, clips):
    _, processor = tiny
    verb = Verbalizer(CREMA_D.classes, processor.tokenizer)
    records = [dict(r, emotion=r["emotion"] % 6) for r in _records(clips)[:2]]
    records[0]["emotion_dist"] = [0.5, 0.5, 0, 0, 0, 0]
    records[1]["emotion_dist"] = []
    batch = SpeechLLMCollator(processor, PromptTemplate(), verb)(records)
    expected = np.zeros((2, 6), dtype=np.float32)
    expected[0, :2] = 0.5
    expected[1, records[1]["emotion"]] = 1.0
    np.testing.assert_array_equal(batch["emotion_dist"].numpy(), expected)


# ---------------------------------------------------------------- scoring
def test_scoring_matches_the_full_forward_and_batch_size_one(tiny, clips):
    model, processor = tiny
    verb = Verbalizer(MELD.classes, processor.tokenizer)
    collate = SpeechLLMCollator(processor, PromptTemplate(), verb)
    records = _records(clips)
    batch = collate(records)
    with torch.no_grad():
        out = score_batch(model, batch, verb)
        singles = [score_batch(model, collate([r]), verb) for r in records]
    reference = _reference_last_logits(model, batch, verb)
    torch.testing.assert_close(out.class_logits, reference, atol=1e-5, rtol=0)
    logp = torch.log_softmax(reference.double(), -1)
    torch.testing.assert_close(out.per_sample_loss.double(), -logp[torch.arange(4), batch["emotion"]],
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat([s.class_logits for s in singles]), out.class_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat([s.per_sample_loss for s in singles]), out.per_sample_loss,
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat([s.pooled for s in singles]), out.pooled, atol=1e-5, rtol=0)
    assert out.pooled.shape == (4, 64) and out.class_logits.dtype == torch.float32
    assert set(out.as_dict()) == {"per_sample_loss", "logits", "features"}


def test_scoring_through_peft_and_lm_answer_loss(tiny, clips):
    model, processor = tiny
    verb = Verbalizer(MELD.classes, processor.tokenizer)
    batch = SpeechLLMCollator(processor, PromptTemplate(), verb)(_records(clips))
    base_logits = _reference_last_logits(model, batch, verb)
    peft_model, _ = apply_lora(model, LoraOptions(train_projector=True))
    _perturb_lora(peft_model)
    peft_model.eval()
    with torch.no_grad():
        out = score_batch(peft_model, batch, verb)
        reference = peft_model(**model_inputs(batch)).logits[:, -1][:, verb.label_token_ids]
    assert (reference - base_logits).abs().max() > 1e-2  # the adapters change the model
    torch.testing.assert_close(out.class_logits, reference, atol=1e-5, rtol=0)

    lm_batch = SpeechLLMCollator(processor, PromptTemplate(), verb, answer_loss="lm")(_records(clips))
    with torch.no_grad():
        lm = score_batch(peft_model, lm_batch, verb)
        full = peft_model(**model_inputs(lm_batch)).logits
    targets = lm_batch["labels"][:, 1:]
    token_ce = F.cross_entropy(full[:, :-1].reshape(-1, full.shape[-1]), targets.reshape(-1),
                               ignore_index=-100, reduction="none").view(targets.shape)
    expected = token_ce.sum(1) / (targets != -100).sum(1)
    torch.testing.assert_close(lm.per_sample_loss, expected, atol=1e-5, rtol=0)
    at_answer = full[torch.arange(4), lm_batch["answer_position"]][:, verb.label_token_ids]
    torch.testing.assert_close(lm.class_logits, at_answer, atol=1e-5, rtol=0)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_gradient_reaches_every_trainable_parameter_only(llmfair_cache, clips, checkpointing):
    model, processor = load_speech_llm("tiny", gradient_checkpointing=checkpointing)
    verb = Verbalizer(MELD.classes, processor.tokenizer)
    batch = SpeechLLMCollator(processor, PromptTemplate(), verb)(_records(clips))
    peft_model, _ = apply_lora(model, LoraOptions(train_projector=True, dropout=0.0))
    _perturb_lora(peft_model)
    peft_model.train()
    score_batch(peft_model, batch, verb).per_sample_loss.mean().backward()
    trainable = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    assert len(trainable) == 14 * 2 + 2
    missing = [n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
    frozen_with_grad = [n for n, p in peft_model.named_parameters() if not p.requires_grad and p.grad is not None]
    assert not frozen_with_grad


# ---------------------------------------------------------------- encoder cache
def test_encoder_cache_matches_uncached_and_hits_on_second_use(tiny, clips, tmp_path):
    model, processor = tiny
    verb = Verbalizer(MELD.classes, processor.tokenizer)
    batch = SpeechLLMCollator(processor, PromptTemplate(), verb)(_records(clips))
    peft_model, _ = apply_lora(model, LoraOptions(train_projector=True, dropout=0.0))
    _perturb_lora(peft_model)
    tower_calls = []
    peft_model.get_base_model().model.audio_tower.register_forward_hook(lambda *a: tower_calls.append(1))

    uncached = score_batch(peft_model, batch, verb)
    assert len(tower_calls) == 1
    cache = EncoderCache.for_model(tmp_path / "enc", peft_model, processor)
    first = score_batch(peft_model, batch, verb, encoder_cache=cache)
    assert (cache.misses, cache.hits, cache.encoder_calls) == (4, 0, 1)
    files = sorted((tmp_path / "enc").rglob("*.safetensors"))
    assert len(files) == 4
    second = score_batch(peft_model, batch, verb, encoder_cache=cache)
    reopened = EncoderCache.for_model(tmp_path / "enc", peft_model, processor)
    third = score_batch(peft_model, batch, verb, encoder_cache=reopened)
    assert (cache.hits, reopened.hits, reopened.misses) == (4, 4, 0)
    assert len(tower_calls) == 2  # the first cached call only
    for out in (first, second, third):
        torch.testing.assert_close(out.class_logits, uncached.class_logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(out.per_sample_loss, uncached.per_sample_loss, atol=1e-5, rtol=0)

    # gradients reach the projector and LoRA through the cached path too
    second_loss = score_batch(peft_model, batch, verb, encoder_cache=cache).per_sample_loss.sum()
    second_loss.backward()
    projector = [p for n, p in peft_model.named_parameters() if p.requires_grad and "multi_modal_projector" in n]
    assert projector and all(p.grad is not None and p.grad.abs().sum() > 0 for p in projector)


def test_cached_features_are_per_clip_and_need_the_encoder_mask(tiny, clips, tmp_path):
    model, processor = tiny
    verb = Verbalizer(MELD.classes, processor.tokenizer)
    collate = SpeechLLMCollator(processor, PromptTemplate(), verb)
    records = _records(clips)
    batch = collate(records)
    with torch.no_grad():
        together = encode_audio(model, batch["input_features"], batch["feature_attention_mask"])
        for i, record in enumerate(records):
            alone = collate([record])
            (single,) = encode_audio(model, alone["input_features"], alone["feature_attention_mask"])
            assert single.shape == (int(DURATIONS[i] * 25), 64)
            torch.testing.assert_close(single, together[i], atol=1e-5, rtol=0)
        unmasked = model.model.audio_tower(batch["input_features"]).last_hidden_state
    assert (unmasked[0, :25] - together[0]).abs().max() > 1e-3  # the tower does use its mask

    cache = EncoderCache.for_model(tmp_path / "enc", model, processor)
    partial = collate(records[:2])
    with torch.no_grad():
        cache.get_or_compute(model, partial)
        cache.get_or_compute(model, batch)
    assert (cache.misses, cache.hits) == (4, 2)
    other_window = EncoderCache(tmp_path / "enc", cache.model_id, window_seconds=30, frontend=cache.frontend)
    assert other_window.key("x") != cache.key("x") and EncoderCache(
        tmp_path / "enc", "another-model", window_seconds=10, frontend=cache.frontend).key("x") != cache.key("x")


def test_encoder_cache_refuses_a_trainable_tower(tiny, clips, tmp_path):
    model, processor = tiny
    verb = Verbalizer(MELD.classes, processor.tokenizer)
    batch = SpeechLLMCollator(processor, PromptTemplate(), verb)(_records(clips)[:1])
    peft_model, _ = apply_lora(model, LoraOptions(targets="llm+audio"))
    cache = EncoderCache.for_model(tmp_path / "enc", peft_model, processor)
    with pytest.raises(ConfigError, match="audio tower has trainable parameters"):
        score_batch(peft_model, batch, verb, encoder_cache=cache)
    with pytest.raises(ConfigError, match="audio_sha256"):
        with torch.no_grad():
            cache.get_or_compute(peft_model, {k: v for k, v in batch.items() if k != "audio_sha256"})
