"""Speech-LLM backbone: tiny model build/load, loading errors, LoRA presets, prompt templates."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from llmfair.data.labels import CREMA_D, LANGUAGES, MELD, MODALITIES
from llmfair.errors import ConfigError
from llmfair.speechllm.loading import check_processor, load_speech_llm
from llmfair.speechllm.lora import LoraOptions, apply_lora, count_trainable, lora_module_names
from llmfair.speechllm.prompts import PromptTemplate
from llmfair.speechllm.tiny import MARKER_FILE, build_tiny_model, tiny_model_path

torch.set_num_threads(1)

LLM_LINEARS = [f"model.language_model.layers.{i}.{m}" for i in (0, 1) for m in (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
AUDIO_LINEARS = [f"model.audio_tower.layers.{i}.{m}" for i in (0, 1) for m in (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2")]


@pytest.fixture(scope="session")
def tiny_dir(llmfair_cache: Path) -> Path:
    return tiny_model_path()


def _fresh_model():
    model, processor = load_speech_llm("tiny")
    return model, processor


# ---------------------------------------------------------------- tiny model
def test_tiny_model_loads_offline_with_the_expected_shape(tiny_dir: Path):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    model, processor = load_speech_llm("tiny")
    assert type(model).__name__ == "Qwen2AudioForConditionalGeneration"
    assert model.dtype == torch.float32
    cfg = model.config
    assert (cfg.audio_config.d_model, cfg.audio_config.encoder_layers) == (64, 2)
    assert (cfg.text_config.hidden_size, cfg.text_config.num_hidden_layers, cfg.text_config.vocab_size) == (64, 2, 512)
    assert cfg.audio_config.num_mel_bins == 128 and cfg.audio_config.max_source_positions == 500
    fe = processor.feature_extractor
    assert (fe.feature_size, fe.chunk_length, fe.nb_max_frames) == (128, 10, 1000)
    tok = processor.tokenizer
    assert tok.padding_side == "left"
    assert cfg.audio_token_id == tok.convert_tokens_to_ids("<|AUDIO|>")
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"):
        ids = tok(special, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tok.convert_ids_to_tokens(ids[0]) == special
    assert len(tok) <= cfg.text_config.vocab_size
    assert Path(tiny_dir).name.startswith("tiny-qwen2-audio-")
    assert (tiny_dir / MARKER_FILE).is_file()


def test_tiny_model_path_reuses_a_complete_build_and_rebuilds_an_incomplete_one(llmfair_cache: Path):
    path = tiny_model_path()
    weights = path / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert tiny_model_path() == path and weights.stat().st_mtime_ns == stamp
    other = llmfair_cache.parent / "rebuild-cache"
    first = tiny_model_path(other)
    (first / MARKER_FILE).unlink()  # an interrupted build is not trusted
    again = tiny_model_path(other)
    assert again == first and (again / MARKER_FILE).is_file()
    assert not [p for p in other.iterdir() if p.name.startswith(".")]  # no temporary directories left


def test_tiny_build_is_deterministic_per_seed(tmp_path: Path):
    a = build_tiny_model(tmp_path / "a", seed=3)
    b = build_tiny_model(tmp_path / "b", seed=3)
    c = build_tiny_model(tmp_path / "c", seed=4)
    wa, wb, wc = (load_file(str(p / "model.safetensors")) for p in (a, b, c))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()


def test_unknown_model_offline_fails_fast_with_config_error(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="neither a local directory nor in the offline Hugging Face cache"):
        load_speech_llm("no-such-org/no-such-speech-model")
    with pytest.raises(ConfigError, match="'no-such-model' is neither a local directory"):
        load_speech_llm("no-such-model")
    assert time.perf_counter() - start < 5.0
    with pytest.raises(ConfigError, match="model directory not found"):
        load_speech_llm(str(tmp_path / "missing" / "model"))


def test_qlora_on_cpu_is_a_config_error(monkeypatch, tiny_dir: Path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        load_speech_llm("tiny", quantization="4bit")
    with pytest.raises(ConfigError, match="unknown quantization"):
        load_speech_llm("tiny", quantization="8bit")


def test_fp16_is_refused_for_a_real_model_unless_forced(tiny_dir: Path, tmp_path: Path):
    real = tmp_path / "local-model"
    shutil.copytree(tiny_dir, real)
    (real / MARKER_FILE).unlink()  # no longer the tiny model: the real-model rules apply
    with pytest.raises(ConfigError, match="NaN"):
        load_speech_llm(str(real), dtype="float16")
    model, _ = load_speech_llm(str(real), dtype="float16", allow_fp16=True)
    assert model.dtype == torch.float16
    model, _ = load_speech_llm(str(real))  # auto on CPU
    assert model.dtype == torch.float32
    with pytest.raises(ConfigError, match="unknown dtype"):
        load_speech_llm(str(real), dtype="int8")


def test_non_qwen2_audio_model_and_mismatched_processor_are_rejected(tiny_dir: Path, tmp_path: Path):
    from transformers import Qwen2Config, WhisperFeatureExtractor

    other = tmp_path / "qwen2"
    other.mkdir()
    Qwen2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                vocab_size=64).save_pretrained(other)
    with pytest.raises(ConfigError, match="'qwen2' model"):
        load_speech_llm(str(other))
    model, processor = load_speech_llm("tiny")
    processor.feature_extractor = WhisperFeatureExtractor(feature_size=128, chunk_length=30)
    with pytest.raises(ConfigError, match="expects exactly 1000"):
        check_processor(model, processor)


def test_gradient_checkpointing_is_enabled_with_input_grads(tiny_dir: Path):
    model, _ = load_speech_llm("tiny", gradient_checkpointing=True)
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    assert model.config.use_cache is False
    embeddings = model.get_input_embeddings()
    out = embeddings(torch.tensor([[1, 2]]))
    assert out.requires_grad  # the enable_input_require_grads hook


# ---------------------------------------------------------------- LoRA
def test_lora_llm_preset_selects_exactly_the_14_llm_linears(tiny_dir: Path):
    model, _ = _fresh_model()
    shapes = {n: (m.in_features, m.out_features) for n, m in model.named_modules() if n in LLM_LINEARS}
    peft_model, names = apply_lora(model, LoraOptions(r=4))
    assert sorted(names) == sorted(LLM_LINEARS)
    assert not [n for n in names if "audio_tower" in n]
    assert lora_module_names(peft_model) == names
    trainable_names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable_names and all(".lora_A." in n or ".lora_B." in n for n in trainable_names)
    expected = sum(4 * (i + o) for i, o in shapes.values())  # A: r x in, B: out x r
    trainable, total = count_trainable(peft_model)
    assert trainable == expected
    assert total == sum(p.numel() for p in peft_model.parameters())


def test_lora_llm_audio_preset_adds_the_tower_and_projector_option(tiny_dir: Path):
    model, _ = _fresh_model()
    _, names = apply_lora(model, LoraOptions(targets="llm+audio"))
    assert sorted(names) == sorted(LLM_LINEARS + AUDIO_LINEARS)

    model, _ = _fresh_model()
    peft_model, names = apply_lora(model, LoraOptions(train_projector=True))
    assert sorted(names) == sorted(LLM_LINEARS)
    projector = [n for n, p in peft_model.named_parameters() if p.requires_grad and "multi_modal_projector" in n]
    assert sorted(n.rsplit(".", 1)[-1] for n in projector) == ["bias", "weight"]
    plain, _ = apply_lora(_fresh_model()[0], LoraOptions())
    assert count_trainable(peft_model)[0] - count_trainable(plain)[0] == 64 * 64 + 64


def test_lora_options_are_validated(tiny_dir: Path):
    with pytest.raises(ConfigError, match="lora.r"):
        LoraOptions(r=0)
    with pytest.raises(ConfigError, match="valid regex"):
        LoraOptions(targets="model.(unclosed")
    with pytest.raises(ConfigError, match="lora.bias"):
        LoraOptions(bias="some")
    with pytest.raises(ConfigError, match="match no module"):
        apply_lora(_fresh_model()[0], LoraOptions(targets=r"model\.nothing\.here"))
    # a suffix list follows peft semantics: q_proj hits the LLM and the tower
    _, names = apply_lora(_fresh_model()[0], LoraOptions(targets=["q_proj"]))
    assert sorted(names) == sorted([n for n in LLM_LINEARS + AUDIO_LINEARS if n.endswith("q_proj")])
    assert LoraOptions.__dataclass_fields__["targets"].metadata["help"]


# ---------------------------------------------------------------- prompts
def test_prompt_matches_the_processor_chat_template(tiny_dir: Path):
    _, processor = _fresh_model()
    template = PromptTemplate.from_dict({"instructions": {"eng": {"audio": "Name the emotion."}}})
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [{"type": "audio", "audio_url": "clip.wav"},
                                     {"type": "text", "text": "Name the emotion."}]},
    ]
    reference = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert template.render("eng", "audio") == reference
    assert reference == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                         "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\nName the emotion.<|im_end|>\n"
                         "<|im_start|>assistant\n")


def test_prompt_modalities_languages_and_overrides():
    template = PromptTemplate()
    for language in LANGUAGES:
        for modality in MODALITIES:
            text = template.render(language, modality, "Hallo Welt", labels=MELD.classes)
            assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
            assert text.count("<|AUDIO|>") == 1
            assert ("Hallo Welt" in text) == (modality == "audio_text")
            assert "neutral, joy, sadness, anger, surprise, fear, disgust" in text
    assert 'Transcript: "Hallo Welt"' in template.render("eng", "audio_text", "Hallo Welt")
    custom = PromptTemplate.from_dict({"instructions": {"deu": {"audio": "Gefühl? {labels}"}},
                                       "transcript": {"deu": "\nText: {text}"}})
    assert "Gefühl? angry, sad" in custom.render("deu", "audio", labels=CREMA_D.classes[:2])
    assert "\nText: Hallo<|im_end|>" in custom.render("deu", "audio_text", "Hallo")
    assert custom.instruction("eng", "audio") == PromptTemplate().instruction("eng", "audio")
    with pytest.raises(ConfigError, match="'fra'"):
        PromptTemplate.from_dict({"instructions": {"fra": {"audio": "?"}}})
    with pytest.raises(ConfigError, match="'video'"):
        PromptTemplate.from_dict({"instructions": {"eng": {"video": "?"}}})
    with pytest.raises(ConfigError, match="'style'"):
        PromptTemplate.from_dict({"style": "x"})
    with pytest.raises(ConfigError, match="'video'"):
        template.render("eng", "video")
    assert json.loads(json.dumps(custom.to_dict()))["instructions"]["deu"]["audio"] == "Gefühl? {labels}"


def test_tiny_tokenizer_knows_the_prompt_words(tiny_dir: Path):
    """Trained on the templates: prompts tokenise into far fewer tokens than bytes."""
    _, processor = _fresh_model()
    text = PromptTemplate().render("jpn", "audio_text", "しんじられない！", labels=MELD.classes)
    ids = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) < len(text.encode("utf-8")) / 3
    assert np.all(np.asarray(ids) < 512)
