"""Speech-LLM backbone families: one table, every family's tiny build through the same checks.

:data:`FAMILIES` holds one row per registered family (``llmfair.speechllm.backbones``); adding a
family is one row here. The rows drive the tests below and the family-parametrised tests of
``tests/test_speechllm_run.py`` (every objective, 2 processes == 1, resume after SIGKILL) and
``tests/test_export.py`` (plain ``PeftModel.from_pretrained`` and the merged checkpoint reproduce
the trained model's probabilities). Checked here, per family, on its tiny offline build:

- the registry, the recipe schema's ``model.family`` choices and this table name the same families;
- the tiny build loads offline as the family's transformers class, deterministically per seed, with
  a processor that passes the model's checks; the prompt equals the processor's chat template;
- scoring equals the full forward restricted to the label words, batched equals one by one, and
  the encoder cache equals the uncached forward (gradients reach the projector through it);
- the ``llm`` preset wraps exactly the language model's 14 linears (never the audio encoder),
  ``llm+audio`` adds the encoder's 12, ``train_projector`` trains exactly the family's projector
  and leaves the encoder cache usable;
- the QLoRA skip modules keep the audio encoder, the projector, any vision tower and ``lm_head``
  out of 4-bit quantisation under transformers' own matching;
- bad input gives one-line errors: an unsupported checkpoint (naming the supported families), a
  family/checkpoint mismatch, a processor whose audio token or sampling rate is not the model's;
- the recipes shipped for the family load; ``llmfair benchmark`` scores a zero-shot base model and
  a fine-tuned run of the family on the same rows, the encoder run once per clip.
"""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from llmfair.data.labels import MELD
from llmfair.errors import ConfigError
from llmfair.speechllm.backbones import (
    BACKBONES,
    backbone_of,
    family_names,
    get_backbone,
    register_backbone,
)
from llmfair.speechllm.collator import SpeechLLMCollator, model_inputs
from llmfair.speechllm.encoder_cache import EncoderCache, encode_audio
from llmfair.speechllm.loading import load_speech_llm
from llmfair.speechllm.lora import LoraOptions, apply_lora
from llmfair.speechllm.prompts import PromptTemplate
from llmfair.speechllm.scoring import score_batch
from llmfair.speechllm.tiny import tiny_spec
from llmfair.speechllm.verbalizer import Verbalizer

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
LLM_LINEARS = tuple(f"model.language_model.layers.{i}.{m}" for i in (0, 1) for m in (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"))
AUDIO_LINEARS = tuple(f"model.audio_tower.layers.{i}.{m}" for i in (0, 1) for m in (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2"))


@dataclass(frozen=True)
class Family:
    """One row: a registered family and what its tiny build must show."""

    name: str
    model_class: str
    model_type: str
    """What the tiny build's config.json says."""
    projector_params: tuple[str, ...]
    """Trainable projector parameters under ``train_projector`` (names relative to the base model,
    peft's ``modules_to_save.default`` removed), as the adapter file stores them."""
    unquantised: tuple[str, ...]
    """Module prefixes whose linears must stay out of 4-bit quantisation."""
    recipes: str
    """Glob of the MELD-ST recipes shipped for the family (recipes/configs)."""
    audio_tokens: Callable[[float], int]
    """Audio tokens (= cached encoder rows) of a clip of that many seconds on the tiny build (10 s window)."""


FAMILIES = [
    Family("qwen2_audio", "Qwen2AudioForConditionalGeneration", "qwen2_audio",
           ("model.multi_modal_projector.linear.weight", "model.multi_modal_projector.linear.bias"),
           ("model.audio_tower", "model.multi_modal_projector", "lm_head"), "qwen2audio7b_meldst_*.yaml",
           lambda seconds: int(seconds * 25)),
    Family("qwen2_5_omni", "Qwen2_5OmniThinkerForConditionalGeneration", "qwen2_5_omni_thinker",
           ("model.audio_tower.proj.weight", "model.audio_tower.proj.bias"),
           ("model.audio_tower", "model.visual", "lm_head"), "qwen2_5omni7b_meldst_*.yaml",
           lambda seconds: int(seconds * 25)),
    Family("voxtral", "VoxtralForConditionalGeneration", "voxtral",
           ("model.multi_modal_projector.linear_1.weight", "model.multi_modal_projector.linear_2.weight"),
           ("model.audio_tower", "model.multi_modal_projector", "lm_head"), "voxtralmini3b_meldst_*.yaml",
           lambda seconds: 125),  # every clip padded to the 10 s window: 12.5 tokens per second of window
]
FAMILY_NAMES = [f.name for f in FAMILIES]
BY_NAME = {f.name: f for f in FAMILIES}
DURATIONS = (1.0, 2.5, 3.7)


@pytest.fixture(params=FAMILY_NAMES)
def family(request, llmfair_cache) -> Family:
    return BY_NAME[request.param]


@pytest.fixture(scope="session")
def audio_records() -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for i, seconds in enumerate(DURATIONS):
        t = np.arange(int(seconds * 16_000)) / 16_000
        audio = (0.3 * np.sin(2 * np.pi * (150 + 60 * i) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
        out.append({"id": f"utt{i}", "audio": audio, "text": "We were on a break.", "language": ("eng", "deu", "jpn")[i],
                    "modality": ("audio", "audio_text", "audio")[i], "emotion": (2 * i + 1) % 7})
    return out


def _pieces(name: str, **load):
    model, processor = load_speech_llm("tiny", family=name, **load)
    backbone = backbone_of(model)
    verbalizer = Verbalizer(MELD.classes, processor.tokenizer, answer_prefix=backbone.chat.answer_prefix)
    collator = SpeechLLMCollator(processor, PromptTemplate(chat=backbone.chat), verbalizer)
    return model.eval(), processor, backbone, verbalizer, collator


def _perturb_lora(model, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))


# ------------------------------------------------------------------------------------ the table itself
def test_table_registry_and_recipe_schema_name_the_same_families() -> None:
    from llmfair.training.recipe_schema import CHOICES, MODEL_FAMILIES

    assert sorted(FAMILY_NAMES) == family_names() == sorted(MODEL_FAMILIES), (
        "a registered family needs a row in FAMILIES and its name in recipe_schema.MODEL_FAMILIES")
    assert CHOICES["model.family"] == (None, *MODEL_FAMILIES)
    types = [t for n in family_names() for t in get_backbone(n).model_types]
    assert len(types) == len(set(types))
    registered = r"\['qwen2_5_omni', 'qwen2_audio', 'voxtral'\]"
    with pytest.raises(ConfigError, match=r"unknown speech-LLM family 'qwen9'; registered: " + registered):
        get_backbone("qwen9")
    with pytest.raises(ConfigError, match="registered twice"):
        register_backbone("qwen2_audio")(type(get_backbone("qwen2_audio")))
    with pytest.raises(ConfigError, match="must define the LoRA presets"):
        register_backbone("half_done")(type("HalfDone", (type(get_backbone("qwen2_audio")),), {"target_presets": {}}))
    assert "half_done" not in BACKBONES


def test_recipe_family_is_validated_and_shipped_recipes_load(family, tmp_path) -> None:
    from llmfair.training.config import RunConfig

    recipes = sorted((ROOT / "recipes" / "configs").glob(family.recipes))
    assert len(recipes) == 4  # MELD-ST unimodal and multimodal, ERM and MinMaxGAP
    for path in recipes:
        config = RunConfig.from_yaml(path)
        assert config.model.family in (None, family.name) and config.model.name_or_path != "tiny"
        assert config.data.modalities in (["audio"], ["audio", "audio_text"])
    with pytest.raises(ConfigError, match=r"family='qwen9'; expected one of \[None, "):
        RunConfig.from_mapping({"model": {"name_or_path": "tiny", "family": "qwen9"}})


# ------------------------------------------------------------------------------------ loading
def test_tiny_build_loads_offline_and_its_processor_matches(family, tmp_path, monkeypatch) -> None:
    from llmfair.speechllm.tiny import MARKER_FILE, build_tiny_model, tiny_model_path

    model, processor, backbone, _, _ = _pieces(family.name)
    assert type(model).__name__ == family.model_class and backbone.name == family.name
    assert model.config.model_type == family.model_type and model.dtype == torch.float32
    path = tiny_model_path(family=family.name)
    assert path.name.startswith(f"tiny-{family.name.replace('_', '-')}-") and (path / MARKER_FILE).is_file()
    assert json.loads((path / "config.json").read_text())["model_type"] == family.model_type
    tok = processor.tokenizer
    assert tok.padding_side == "left" and len(tok) <= 512
    assert model.config.audio_token_id == tok.convert_tokens_to_ids(processor.audio_token)
    assert processor.feature_extractor.sampling_rate == 16_000
    # deterministic per seed: the same seed gives the same weights, another seed others
    from safetensors.torch import load_file

    a = build_tiny_model(tmp_path / "a", seed=3, family=family.name)
    # "b" is built as rank 1 of an initialised process group would build it (accelerate launch ranks
    # that find no cached build each make their own): transformers writes weights only on rank 0
    import transformers.distributed.mixin as mixin

    with monkeypatch.context() as m:
        m.setattr(mixin, "_is_torch_distributed_initialized", lambda: True)
        m.setattr(mixin, "_get_torch_distributed_rank", lambda: 1)
        b = build_tiny_model(tmp_path / "b", seed=3, family=family.name)
    c = build_tiny_model(tmp_path / "c", seed=4, family=family.name)
    wa, wb, wc = (load_file(str(p / "model.safetensors")) for p in (a, b, c))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)


def _wav_base64(clip: np.ndarray) -> str:
    """A float32 WAV of ``clip`` as base64 (what mistral-common's audio chunks take; lossless)."""
    import base64
    import io

    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, clip, 16_000, format="WAV", subtype="FLOAT")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _reference_prompt_ids(family: str, processor, system: str, instruction: str, clip: np.ndarray) -> list[int]:
    """The token ids the family's own chat template gives one user turn (an audio clip, then the
    instruction) with the generation prompt: the processor's Jinja template for the Qwen families,
    mistral-common's chat encoder for Voxtral (which takes no system message with audio)."""
    if family == "voxtral":
        messages = [{"role": "user", "content": [{"type": "audio", "base64": _wav_base64(clip)},
                                                  {"type": "text", "text": instruction}]}]
        return list(processor.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": [{"type": "audio", "audio_url": "clip.wav"},
                                     {"type": "text", "text": instruction}]},
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return processor(text=[text], audio=[clip], sampling_rate=16_000, return_tensors="pt")["input_ids"][0].tolist()


def test_prompt_is_what_the_family_chat_template_encodes(family, audio_records) -> None:
    _, processor, backbone, _, _ = _pieces(family.name)
    template = PromptTemplate.from_dict({"instructions": {"eng": {"audio": "Name the emotion."}}}, chat=backbone.chat)
    prompt = template.render("eng", "audio")
    assert prompt.endswith(backbone.chat.answer_prefix) and prompt.count(processor.audio_token) == 1
    clip = audio_records[1]["audio"]
    ours = processor(text=[prompt], audio=[clip], sampling_rate=16_000, return_tensors="pt")["input_ids"][0].tolist()
    reference = _reference_prompt_ids(family.name, processor, template.system, "Name the emotion.", clip)
    assert ours == reference
    assert ours.count(processor.tokenizer.convert_tokens_to_ids(processor.audio_token)) == family.audio_tokens(2.5)


def test_voxtral_processor_encodes_as_mistral_common_and_voxtral_processor_do(llmfair_cache, audio_records) -> None:
    """llmfair's Voxtral processor against transformers' ``VoxtralProcessor.apply_chat_template``
    (mistral-common's chat encoder for the tokens, Whisper features of the clip padded to whole
    windows): the same input ids and the same features, for every clip of a batch; the answer
    and ``</s>`` tokenise as mistral-common encodes an assistant message; a system prompt is refused."""
    from transformers import MistralCommonBackend, VoxtralProcessor

    from llmfair.speechllm.tiny import tiny_model_path

    _, processor, backbone, verbalizer, collator = _pieces("voxtral")
    fe = processor.feature_extractor
    reference = VoxtralProcessor(feature_extractor=fe, tokenizer=processor.tokenizer)
    batch = collator(audio_records)
    for i, record in enumerate(audio_records):
        user = PromptTemplate(chat=backbone.chat).render(record["language"], record["modality"], record["text"],
                                                        MELD.classes)
        instruction = user.split("[AUDIO]", 1)[1].removesuffix("[/INST]")
        messages = [{"role": "user", "content": [{"type": "audio", "base64": _wav_base64(record["audio"])},
                                                  {"type": "text", "text": instruction}]}]
        theirs = reference.apply_chat_template(messages, processor_kwargs={"audio_kwargs": {
            "max_source_positions": fe.nb_max_frames, "pad_to_multiple_of": fe.n_samples}})
        row = batch["input_ids"][i][batch["attention_mask"][i].bool()]
        assert row.tolist() == theirs["input_ids"][0].tolist()
        torch.testing.assert_close(batch["input_features"][i], theirs["input_features"][0], atol=1e-5, rtol=0)
    # mistral-common's assistant message: the word's tokens then </s>, as the lm answer is built
    tekken = processor.tokenizer.tokenizer.instruct_tokenizer.tokenizer
    for word, ids in zip(verbalizer.words, verbalizer.answer_token_ids):
        assert list(ids) == tekken.encode(word, bos=False, eos=False)
    lm = SpeechLLMCollator(processor, PromptTemplate(chat=backbone.chat), verbalizer, answer_loss="lm")(audio_records)
    assert int(lm["input_ids"][0, -1]) == tekken.eos_id and int((lm["labels"] != -100).sum()) > len(audio_records)
    # transformers' own backend never reads special tokens in text: "[INST]" would be 7 characters' tokens
    plain = MistralCommonBackend.from_pretrained(str(tiny_model_path(family="voxtral")))
    assert plain("[INST]", add_special_tokens=False)["input_ids"] != [tekken.get_special_token("[INST]")]
    assert processor.tokenizer("[INST]", add_special_tokens=False)["input_ids"] == [tekken.get_special_token("[INST]")]
    with pytest.raises(ConfigError, match=r"prompts.system is set .* mistral-common refuses system messages"):
        PromptTemplate.from_dict({"system": "You are an emotion classifier."}, chat=backbone.chat)


def test_omni_processor_expands_audio_as_qwen2_5_omni_processor_does(llmfair_cache, audio_records) -> None:
    """The Omni family's audio-only processor against ``Qwen2_5OmniProcessor``'s own ``__call__``
    (built without its video processor, which transformers constructs only with torchvision): the
    same tokens and masks, the same valid mel frames, the same scores — though llmfair pads a batch
    only to its longest clip + 1 s instead of the whole window."""
    from transformers import Qwen2_5OmniProcessor

    model, processor, backbone, verbalizer, collator = _pieces("qwen2_5_omni")
    reference = object.__new__(Qwen2_5OmniProcessor)
    reference.tokenizer, reference.feature_extractor = processor.tokenizer, processor.feature_extractor
    reference.image_processor = reference.video_processor = reference.chat_template = None
    for attr in ("image_token", "audio_token", "video_token", "image_token_id", "audio_token_id", "video_token_id",
                 "vision_bos_token", "vision_eos_token", "audio_bos_token", "audio_eos_token"):
        setattr(reference, attr, getattr(processor.tokenizer, attr))
    template = PromptTemplate(chat=backbone.chat)
    texts = [template.render(r["language"], r["modality"], r["text"], MELD.classes) for r in audio_records]
    clips = [r["audio"] for r in audio_records]
    ours = processor(text=texts, audio=clips, sampling_rate=16_000, return_tensors="pt", padding=True)
    theirs = reference(text=texts, audio=clips, sampling_rate=16_000, return_tensors="pt", padding=True)
    assert torch.equal(ours["input_ids"], theirs["input_ids"]) and torch.equal(ours["attention_mask"], theirs["attention_mask"])
    frames = ours["input_features"].shape[-1]
    assert frames == 100 * (int(max(DURATIONS) + 1) + 1) < theirs["input_features"].shape[-1]  # 5 s, not the 10 s window
    assert torch.equal(ours["feature_attention_mask"], theirs["feature_attention_mask"][:, :frames])
    assert int(theirs["feature_attention_mask"][:, frames:].sum()) == 0
    valid = ours["feature_attention_mask"].bool()[:, None, :].expand_as(ours["input_features"])
    torch.testing.assert_close(ours["input_features"][valid], theirs["input_features"][:, :, :frames][valid],
                               atol=1e-6, rtol=0)
    batch = collator(audio_records)
    assert torch.equal(batch["input_ids"], theirs["input_ids"])
    full_window = {**batch, **{k: theirs[k] for k in ("input_features", "feature_attention_mask")}}
    with torch.no_grad():
        torch.testing.assert_close(score_batch(model, batch, verbalizer).class_logits,
                                   score_batch(model, full_window, verbalizer).class_logits, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------ scoring and cache
def test_scoring_equals_the_full_forward_one_by_one_and_through_the_cache(family, audio_records, tmp_path) -> None:
    model, processor, backbone, verbalizer, collator = _pieces(family.name)
    batch = collator(audio_records)
    with torch.no_grad():
        full = model(**model_inputs(batch)).logits[:, -1, verbalizer.label_token_ids]
        ours = score_batch(model, batch, verbalizer)
        torch.testing.assert_close(ours.class_logits, full.float(), atol=1e-5, rtol=0)
        alone = torch.cat([score_batch(model, collator([r]), verbalizer).class_logits for r in audio_records])
        torch.testing.assert_close(alone, ours.class_logits, atol=1e-5, rtol=0)
        # each clip's encoder output alone equals its output in the batch (caching per clip is exact)
        together = encode_audio(model, batch["input_features"], batch["feature_attention_mask"])
        for i, record in enumerate(audio_records):
            single = collator([record])
            (one,) = encode_audio(model, single["input_features"], single["feature_attention_mask"])
            assert one.shape[0] == family.audio_tokens(DURATIONS[i])
            torch.testing.assert_close(one, together[i], atol=1e-5, rtol=0)

    peft_model, _ = apply_lora(model, LoraOptions(train_projector=True, dropout=0.0))
    _perturb_lora(peft_model)
    assert not backbone.encoder_trainable(peft_model.get_base_model())  # the projector is past the boundary
    uncached = score_batch(peft_model, batch, verbalizer)
    cache = EncoderCache.for_model(tmp_path / "enc", peft_model, processor)
    first = score_batch(peft_model, batch, verbalizer, encoder_cache=cache)
    second = score_batch(peft_model, batch, verbalizer, encoder_cache=cache)
    assert (cache.misses, cache.hits, cache.encoder_calls) == (3, 3, 1)
    for out in (first, second):
        torch.testing.assert_close(out.class_logits, uncached.class_logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(out.per_sample_loss, uncached.per_sample_loss, atol=1e-5, rtol=0)
    second.per_sample_loss.sum().backward()
    trainable = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    assert len(trainable) == 14 * 2 + 2
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable.values())
    # a zero-shot base model and its fine-tuned runs share the cache (the projector is not hashed)
    base, _ = load_speech_llm("tiny", family=family.name)
    assert EncoderCache.for_model(tmp_path / "enc", base, processor).model_id == cache.model_id


# ------------------------------------------------------------------------------------ LoRA and QLoRA
def test_lora_presets_never_wrap_the_encoder_by_default(family) -> None:
    model, *_ = _pieces(family.name)
    peft_model, names = apply_lora(model, LoraOptions(r=4))
    assert sorted(names) == sorted(LLM_LINEARS)
    assert all(".lora_A." in n or ".lora_B." in n for n, p in peft_model.named_parameters() if p.requires_grad)
    model, *_ = _pieces(family.name)
    _, names = apply_lora(model, LoraOptions(targets="llm+audio"))
    assert sorted(names) == sorted(LLM_LINEARS + AUDIO_LINEARS)
    assert get_backbone(family.name).encoder_trainable(model)
    model, *_ = _pieces(family.name)
    peft_model, names = apply_lora(model, LoraOptions(train_projector=True))
    projector = sorted(n.replace("base_model.model.", "").replace(".modules_to_save.default", "")
                       for n, p in peft_model.named_parameters() if p.requires_grad and "lora_" not in n)
    assert projector == sorted(family.projector_params)


def test_qlora_skip_modules_keep_the_encoder_unquantised(family) -> None:
    """transformers' own matching (what the bitsandbytes quantizer calls) on the tiny build."""
    from torch import nn
    from transformers.quantizers.base import HfQuantizer
    from transformers.quantizers.quantizers_utils import should_convert_module

    model, *_ = _pieces(family.name)
    backbone = get_backbone(family.name)
    assert tuple(backbone.qlora_skip_modules) == family.unquantised
    keep = HfQuantizer.get_modules_to_not_convert(model, list(backbone.qlora_skip_modules), model._keep_in_fp32_modules)
    linears = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    quantised = {n for n in linears if should_convert_module(n, keep)}
    assert quantised == set(LLM_LINEARS)
    bare = HfQuantizer.get_modules_to_not_convert(model, ["audio_tower"], model._keep_in_fp32_modules)
    assert any(should_convert_module(n, bare) for n in AUDIO_LINEARS)  # a bare name does not protect the tower


# ------------------------------------------------------------------------------------ bad input
def test_unsupported_checkpoint_and_family_mismatch_are_one_line_errors(family, tmp_path) -> None:
    from transformers import Qwen2Config

    from llmfair.speechllm.tiny import tiny_model_path

    other = tmp_path / "qwen2"
    other.mkdir()
    Qwen2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                vocab_size=64).save_pretrained(other)
    with pytest.raises(ConfigError) as info:
        load_speech_llm(str(other), family=family.name)
    message = str(info.value)
    assert "is a 'qwen2' model" in message and "\n" not in message
    assert all(name in message for name in FAMILY_NAMES)
    wrong = next(f for f in FAMILY_NAMES if f != family.name)
    with pytest.raises(ConfigError) as info:
        load_speech_llm(str(tiny_model_path(family=family.name)), family=wrong)
    message = str(info.value)
    assert f"model.family is {wrong!r}" in message and f"a {family.name!r} checkpoint" in message
    assert "\n" not in message
    with pytest.raises(ConfigError, match="unknown speech-LLM family 'qwen9'"):
        load_speech_llm("tiny", family="qwen9")


def test_processor_mismatches_are_one_line_errors(family) -> None:
    from llmfair.speechllm.loading import check_processor

    model, processor, *_ = _pieces(family.name)
    fe = processor.feature_extractor
    sampling_rate, audio_token = fe.sampling_rate, processor.audio_token
    try:
        fe.sampling_rate = 22_050
        with pytest.raises(ConfigError, match=r"runs at 22050 Hz but the audio encoder expects 16000 Hz"):
            check_processor(model, processor, where="x")
        fe.sampling_rate = sampling_rate
        processor.audio_token = processor.tokenizer.eos_token  # another special token of the family's tokenizer
        with pytest.raises(ConfigError, match=re.escape(processor.tokenizer.eos_token) + r" is token \d+ but the model "
                                               r"expects \d+"):
            check_processor(model, processor, where="x")
    finally:
        fe.sampling_rate, processor.audio_token = sampling_rate, audio_token
    check_processor(model, processor)


def test_the_check_command_names_the_family(family, tmp_path) -> None:
    from llmfair.check.preflight import CheckReport, check_model
    from llmfair.speechllm.tiny import tiny_model_path
    from llmfair.training.config import RunConfig

    report = CheckReport(recipe="r")
    check_model(RunConfig.from_mapping({"model": {"name_or_path": "tiny", "family": family.name}}), report)
    assert not report.problems and report.model["family"] == family.name and report.model["encoder_width"] == get_backbone(
        family.name).tiny_encoder_width(tiny_spec(family=family.name))
    local = str(tiny_model_path(family=family.name))
    report = CheckReport(recipe="r")
    check_model(RunConfig.from_mapping({"model": {"name_or_path": local}}), report)
    assert not report.problems and report.model["family"] == family.name
    from llmfair.check.render import format_report

    assert f"\n  family {family.name} ({get_backbone(family.name).title}, {family.model_class})\n" in format_report(report)
    wrong = next(f for f in FAMILY_NAMES if f != family.name)
    report = CheckReport(recipe="r")
    check_model(RunConfig.from_mapping({"model": {"name_or_path": local, "family": wrong}}), report)
    assert len(report.problems) == 1 and f"model.family is {wrong!r}" in report.problems[0]


# ------------------------------------------------------------------------------------ benchmark
@pytest.mark.slow
def test_benchmark_scores_a_base_model_and_a_run_of_the_family(family, tmp_path, capsys) -> None:
    """``llmfair benchmark --model tiny:FAMILY --recipe R RUN``: the zero-shot base model is the
    tiny build of the family named after the colon (the recipe names none); the run brings its own
    and is matched to that base by model and family."""
    import yaml

    from llmfair.cli import main as cli_main
    from llmfair.data.synth import SynthConfig, generate_corpus
    from llmfair.predictions import read_predictions
    from llmfair.speechllm.run import train
    from llmfair.training.config import RunConfig
    from tests.test_speechllm_run import recipe

    corpus = tmp_path / "corpus"
    generate_corpus(corpus, SynthConfig(seed=0, utterances_per_pair=40))
    values = recipe(corpus, family=family.name, objective={"name": "erm"}, max_steps=2, learning_rate=5e-3)
    run = tmp_path / "erm"
    train(RunConfig.from_mapping(values), run, predict_splits=[])
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["family"] == family.name
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["backbone"]["family"] == family.name and manifest["backbone"]["model_class"] == family.model_class
    recipe_path = tmp_path / "zero-shot.yaml"
    zero_shot_values = {**values, "model": {k: v for k, v in values["model"].items() if k != "family"}}
    recipe_path.write_text(yaml.safe_dump(zero_shot_values), encoding="utf-8")
    out = tmp_path / "bench"
    assert cli_main(["benchmark", f"erm={run}", "--model", f"tiny:{family.name}", "--recipe", str(recipe_path),
                     "--corpus", str(corpus), "--out", str(out), "--languages", "eng", "--modalities", "audio",
                     "--n-resamples", "20", "--no-plots", "--no-progress"]) == 0
    result = json.loads((out / "benchmark.json").read_text())
    assert [s["family"] for s in result["systems"]] == [family.name, family.name]
    zero = read_predictions(out / "zero-shot" / "predictions_test.csv")
    tuned = read_predictions(out / "erm" / "predictions_test.csv")
    assert zero.n == tuned.n == result["rows"] > 0
    assert not np.allclose(zero.probs, tuned.probs, atol=1e-4)  # the adapter changes the model
    cache = result["systems"][1]["tables"][0]["encoder_cache"]
    assert cache["misses"] == 0 and cache["hits"] == result["rows"]  # one encoder pass per clip for both
    assert json.loads((out / "report" / "comparison.json").read_text())["paired"].keys() == {"erm"}
    # the zero-shot system is the family's base model: the same probabilities as scoring it directly
    from llmfair.data.meld_st import read_meld_st
    from llmfair.speechllm.run import build_classifier, predict_examples

    classifier, _, collator, _ = build_classifier(RunConfig.from_mapping(values), zero_shot=True)
    assert type(classifier.model).__name__ == family.model_class
    rows = read_meld_st(corpus, splits=["test"], languages=["eng"], modalities=["audio"])
    direct = read_predictions(predict_examples(classifier, collator, rows, tmp_path / "direct.csv"))
    order = zero.frame.set_index("id").loc[list(direct.frame["id"])]
    np.testing.assert_allclose(order[[f"prob_{c}" for c in MELD.classes]].to_numpy(), direct.probs, atol=1e-5)
    shutil.rmtree(corpus)


def test_a_family_missing_a_required_method_cannot_be_built():
    """The family interface is abstract: a subclass that leaves out one of the methods every family
    must define fails when it is instantiated, naming the method, not later inside a run."""
    from llmfair.speechllm.backbones.base import SpeechBackbone

    class Incomplete(SpeechBackbone):
        def check_processor(self, model, processor, *, where=""):
            return None

        def tiny_spec(self, *, seed, window_seconds):
            return {}

        def build_tiny(self, out_dir, spec):
            return None

    with pytest.raises(TypeError, match="encode_audio"):
        Incomplete()
