"""Benchmark: Qwen2-Audio at full 7B size (random weights) under each training setting the recipes
use: samples/s, tokens/s and peak memory per setting, plus an analytic memory estimate per recipe.

No weights can be downloaded, but a model built from the released model's configuration with
random weights costs the same compute and memory. The script

1. counts the parameters of the released configuration on the ``meta`` device (no memory) and
   compares them with the released model's ~8.4 B. Note: ``Qwen2AudioConfig()`` *defaults* are not
   that model: its default text config is ``Qwen2Config()`` (intermediate size 22016, vocabulary
   151936), 12.7 B parameters in all. The released ``config.json`` overrides the text config with
   intermediate size 11008, vocabulary 156032, 8192 positions and RMS-norm eps 1e-5
   (``RELEASED_TEXT_CONFIG``); that is what is built here, and both counts are recorded;
2. writes a random bf16 checkpoint of that configuration once (built on the GPU in a subprocess,
   saved with ``save_pretrained``) together with a Qwen2-Audio processor (30 s window, 128 mel
   bins; its tokenizer is the project's offline tiny BPE, since the real one cannot be downloaded.
   That BPE was trained on the prompt templates: the unimodal prompt is 61 text tokens, about what
   the real tokenizer gives for its ~270 characters; every row records its sequence length);
3. runs each setting in a process of its own (an out-of-memory error, a DeepSpeed init or a hang
   cannot poison the next one; each has a timeout and the whole run a time budget; on the GPU a
   fresh interpreter per setting, in smoke mode a fork of a server that imported the libraries
   once), through the project's own code:
   ``load_speech_llm`` (dtype, gradient checkpointing with ``enable_input_require_grads``, the QLoRA
   ``BitsAndBytesConfig`` with its ``llm_int8_skip_modules``), ``apply_lora`` with the recipe's
   ``lora`` section, ``SpeechLLMCollator`` + ``Verbalizer`` on synthetic 16 kHz clips,
   ``SpeechLLMClassifier`` (``score_batch``: no full-vocabulary logits), ``EncoderCache``, and
   ``deepspeed_config_for(recipes/deepspeed/zero2.json)``. A training step is what FairTrainer
   does for ERM: forward under bf16 autocast (the Trainer's ``bf16: true``), mean per-sample loss,
   backward, AdamW step (DeepSpeed: ``engine.backward`` / ``engine.step``). The same batch is
   reused; after warm-up, the median step time gives samples/s and tokens/s (non-padding tokens).

Settings (``--settings`` picks a subset; they run in this order):

=================== =========================================================================
lora_bf16           LoRA (recipe r, alpha, targets ``llm``), bf16, no gradient checkpointing
lora_bf16_gc        the same with gradient checkpointing (what the shipped 7B recipes run)
qlora_4bit_gc       QLoRA: NF4 4-bit base via the project's loader + gradient checkpointing;
                    asserts that the audio tower stayed bf16 (not quantised)
zero2_1gpu_gc       DeepSpeed ZeRO-2 (the shipped zero2.json) on one GPU, bf16 + checkpointing
encoder_cache_3s    cached vs full forward (interleaved), MELD-like 3 s clips: step-time ratio
encoder_cache_30s   the same at 30 s clips (the whole encoder window)
zero_shot_scoring   the base model scored without gradients at the recipe's eval batch size
lora_fp32           LoRA with float32 weights (GPUs without bf16); last, the likeliest to OOM
=================== =========================================================================

Memory is ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` of the setting's process
(model load included); on CPU (``--cpu-smoke``) it is the process's peak resident set size
(``resource.getrusage``), labelled as such. A failing setting (out of memory, bitsandbytes or
DeepSpeed missing, a failed assertion, a timeout) becomes a ``{"status": "failed", "error": ...}``
row and the next setting runs; a CUDA-only setting in smoke mode is ``skipped`` with its reason.

The JSON also holds an *analytic estimate* (not a measurement) of the GPU memory each shipped 7B
recipe needs: weights (bf16, or NF4 for QLoRA) from the parameter count, LoRA weights + gradients +
AdamW state at 16 bytes per trainable parameter, and activations = tokens x bytes saved for
backward per token per decoder layer, the latter counted with ``saved_tensors_hooks`` on one
full-width decoder layer with the recipe's LoRA on CPU (``activation_bytes_per_token_layer``).

Usage::

    python bench/bench_scale.py --out runs/bench_scale              # one H100-class GPU, < 8 min
    python bench/bench_scale.py --cpu-smoke --out /tmp/bench_scale  # width-reduced, CPU, < 2 min

Outputs (written atomically, rewritten after every setting): ``OUT/bench_scale.json``,
``OUT/bench_scale.md`` (tables) and ``OUT/logs/<setting>.log`` (each worker's output). The random
checkpoint (16 GiB at full size) goes to ``OUT/random-model-<mode>`` and is removed at the end
unless ``--keep-model``; one named with ``--model-dir`` is kept and reused by later runs. Exit
status 0 when every setting is ok or skipped, 1 when one failed (its row says why), 2 without a
CUDA device and without ``--cpu-smoke``. The JSON also records which linear layers the project's
QLoRA skip list would quantise (``qlora_plan``, decided by transformers' own matching functions,
so it needs no GPU). Not run by pytest except ``--cpu-smoke`` (tests/test_bench_scale.py).
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import math
import os
import platform
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = REPO / "recipes" / "configs" / "qwen2audio7b_meldst_unimodal_erm.yaml"
RECIPE_GLOB = "qwen2audio7b_*.yaml"
ZERO2_CONFIG = REPO / "recipes" / "deepspeed" / "zero2.json"
SCHEMA_VERSION = 1
GIB = 1024 ** 3

RELEASED_PARAMETERS = 8.4e9
"""Parameter count of the released Qwen/Qwen2-Audio-7B(-Instruct) (model card: 8.4 B)."""
PARAMETER_TOLERANCE = 0.03
RELEASED_TEXT_CONFIG: dict[str, Any] = {
    "model_type": "qwen2", "vocab_size": 156032, "intermediate_size": 11008, "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5, "bos_token_id": 151643, "eos_token_id": 151645,
}
"""What the released ``config.json`` sets in ``text_config`` beyond ``Qwen2Config()`` defaults
(hidden 4096, 32 layers, 32 heads, 32 KV heads, rope theta 1e4); the audio config is the default."""
SMOKE_AUDIO_CONFIG: dict[str, Any] = {
    "model_type": "qwen2_audio_encoder", "d_model": 64, "encoder_layers": 2, "encoder_attention_heads": 2,
    "encoder_ffn_dim": 256, "num_mel_bins": 128, "max_source_positions": 1500,
}
SMOKE_TEXT_CONFIG: dict[str, Any] = {
    "model_type": "qwen2", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
}
"""Width-reduced smoke model: the released structure (MHA, ffn ≈ 2.7 x hidden, 30 s window) at
width 64 and 2 layers per tower."""

SAMPLE_RATE = 16_000
MELD_CLIP_SECONDS = 3.0
WINDOW_SECONDS = 30.0
MODEL_MARKER = "bench_scale_model.json"
PROMPT_TOKENS_REAL = {"audio": 64, "audio_text": 96}
"""Assumed text tokens per sample with the *real* Qwen tokenizer (prompt + answer), used only by
the memory estimate: the rendered prompts are 273 / ~380 characters, about 4 characters a token."""
CUDA_CONTEXT_GIB = 0.6
ALLOCATOR_SLACK = 0.10
"""Estimate overheads: the CUDA context (outside the allocator) and caching-allocator slack."""
NF4_BYTES_PER_PARAM = (4 + 8 / 64 + 32 / (64 * 256)) / 8
"""NF4 with double quantisation: 4 bits + an 8-bit absmax per 64-block + an fp32 scale per 256 absmax."""
FALLBACK_ACTIVATION_BYTES = 345_960
"""Saved-for-backward bytes per token per decoder layer at the released width with LoRA r=16 on all
seven projections under bf16 autocast, as counted on CPU (transformers 5.23.0, torch 2.13); used
when the count cannot run."""


# ------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class Setting:
    """One measured configuration. ``kind``: ``train`` (timed training steps), ``cache`` (cached vs
    full-forward training steps, interleaved) or ``score`` (no-grad scoring of the base model)."""

    name: str
    description: str
    kind: str
    dtype: str = "bfloat16"
    gradient_checkpointing: bool = False
    quantization: str | None = None
    zero_stage: int | None = None
    clip_seconds: float = MELD_CLIP_SECONDS
    cuda_only: str | None = None


SETTINGS: tuple[Setting, ...] = (
    Setting("lora_bf16", "LoRA (recipe r/alpha, targets llm), bf16, no gradient checkpointing", "train"),
    Setting("lora_bf16_gc", "LoRA, bf16, gradient checkpointing (the shipped 7B recipes)", "train",
            gradient_checkpointing=True),
    Setting("qlora_4bit_gc", "QLoRA: NF4 4-bit base (project loader) + gradient checkpointing; audio tower must stay bf16",
            "train", gradient_checkpointing=True, quantization="4bit",
            cuda_only="bitsandbytes 4-bit quantisation needs a CUDA GPU"),
    Setting("zero2_1gpu_gc", "DeepSpeed ZeRO-2 (recipes/deepspeed/zero2.json) on one GPU, bf16 + gradient checkpointing",
            "train", gradient_checkpointing=True, zero_stage=2,
            cuda_only="the ZeRO-2 recipe runs DeepSpeed with NCCL on a CUDA GPU"),
    Setting("encoder_cache_3s", "encoder cache on vs off, 3 s clips (MELD-like), bf16 + gradient checkpointing", "cache",
            gradient_checkpointing=True, clip_seconds=MELD_CLIP_SECONDS),
    Setting("encoder_cache_30s", "encoder cache on vs off, 30 s clips (the full window), bf16 + gradient checkpointing",
            "cache", gradient_checkpointing=True, clip_seconds=WINDOW_SECONDS),
    Setting("zero_shot_scoring", "base model without LoRA, no gradients, recipe eval batch, bf16", "score"),
    Setting("lora_fp32", "LoRA, float32 weights (GPUs without bf16), no gradient checkpointing", "train", dtype="float32"),
)
SETTING_NAMES = tuple(s.name for s in SETTINGS)


# ------------------------------------------------------------------------------------ configs
def released_config(**overrides: Any):
    """The released Qwen2-Audio-7B configuration (``Qwen2AudioConfig`` + ``RELEASED_TEXT_CONFIG``).

    ``overrides`` go into the text config (e.g. token ids of the tokenizer actually used)."""
    from transformers import Qwen2AudioConfig

    return Qwen2AudioConfig(text_config={**RELEASED_TEXT_CONFIG, **overrides})


def bench_config(smoke: bool, tokenizer):
    """The configuration the checkpoint is built from: released (or width-reduced) sizes, with the
    token ids of ``tokenizer`` (its ``<|AUDIO|>`` id must equal the config's, ``check_processor``)."""
    from transformers import Qwen2AudioConfig

    ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id, "bos_token_id": None}
    audio_token_id = tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    if smoke:
        config = Qwen2AudioConfig(audio_config=dict(SMOKE_AUDIO_CONFIG), text_config={**SMOKE_TEXT_CONFIG, **ids},
                                  audio_token_index=audio_token_id)
    else:
        config = released_config(**ids)
        config.audio_token_id = audio_token_id
    if len(tokenizer) > config.text_config.vocab_size:
        raise RuntimeError(f"tokenizer has {len(tokenizer)} tokens, more than the vocabulary {config.text_config.vocab_size}")
    return config


def config_sizes(config) -> dict[str, Any]:
    a, t = config.audio_config, config.text_config
    return {
        "audio": {"d_model": a.d_model, "layers": a.encoder_layers, "heads": a.encoder_attention_heads,
                  "ffn": a.encoder_ffn_dim, "mel_bins": a.num_mel_bins, "window_seconds": a.max_source_positions / 50},
        "text": {"hidden": t.hidden_size, "layers": t.num_hidden_layers, "heads": t.num_attention_heads,
                 "kv_heads": t.num_key_value_heads, "ffn": t.intermediate_size, "vocab": t.vocab_size},
    }


def meta_model(config):
    """The model on the ``meta`` device: shapes only, no memory, no initialisation cost."""
    import torch
    from transformers import Qwen2AudioForConditionalGeneration

    with torch.device("meta"):
        return Qwen2AudioForConditionalGeneration(config)


PARTS = ("model.audio_tower", "model.multi_modal_projector", "model.language_model", "lm_head")


def parameter_counts(model) -> dict[str, int]:
    """Parameters per part (audio tower, projector, language model, lm_head) and in total."""
    counts = {part.split(".")[-1]: sum(p.numel() for p in model.get_submodule(part).parameters()) for part in PARTS}
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


def parameter_check(total: int) -> dict[str, Any]:
    """Compare a parameter count with the released model's ~8.4 B (tolerance ``PARAMETER_TOLERANCE``)."""
    rel = total / RELEASED_PARAMETERS - 1.0
    return {"parameters": int(total), "released_reference": RELEASED_PARAMETERS, "relative_difference": rel,
            "tolerance": PARAMETER_TOLERANCE, "within_tolerance": abs(rel) <= PARAMETER_TOLERANCE}


def qlora_plan(model, skip_modules) -> dict[str, Any]:
    """Which linear layers a 4-bit load would quantise with ``skip_modules`` (``llm_int8_skip_modules``),
    decided by the same transformers functions the bitsandbytes quantizer calls
    (``HfQuantizer.get_modules_to_not_convert`` + ``should_convert_module``; no GPU or bitsandbytes needed).

    ``audio_tower_kept`` is True when no linear layer of the audio tower would be quantised."""
    from torch import nn
    from transformers.quantizers.base import HfQuantizer
    from transformers.quantizers.quantizers_utils import should_convert_module

    not_convert = HfQuantizer.get_modules_to_not_convert(model, list(skip_modules), model._keep_in_fp32_modules)
    plan: dict[str, Any] = {"llm_int8_skip_modules": list(skip_modules)}
    for part in PARTS:
        key = part.split(".")[-1]
        linears = [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear and (n == part or n.startswith(part + "."))]
        quantised = [(n, m) for n, m in linears if should_convert_module(n, not_convert)]
        plan[key] = {"linear_layers": len(linears), "quantised_layers": len(quantised),
                     "quantised_parameters": int(sum(m.weight.numel() for _, m in quantised))}
    plan["audio_tower_kept"] = plan["audio_tower"]["quantised_layers"] == 0
    plan["projector_kept"] = plan["multi_modal_projector"]["quantised_layers"] == 0
    plan["quantised_parameters"] = int(sum(plan[p.split(".")[-1]]["quantised_parameters"] for p in PARTS))
    return plan


# ------------------------------------------------------------------------------------ estimate
def lora_parameter_count(model, lora_options) -> tuple[int, int]:
    """(modules, parameters) LoRA adds for ``lora_options`` (peft semantics: a regex must match the
    whole module name, a list matches name suffixes); ``r * (in + out)`` per linear module."""
    from torch import nn

    targets = lora_options.target_modules()
    modules = params = 0
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if isinstance(targets, str):
            hit = re.fullmatch(targets, name) is not None
        else:
            hit = any(name == t or name.endswith("." + t) for t in targets)
        if hit:
            modules += 1
            params += lora_options.r * (module.in_features + module.out_features)
    return modules, params


def activation_bytes_per_token_layer(text_config, lora_options, tokens: tuple[int, int] = (8, 24)) -> tuple[float, str]:
    """Bytes autograd saves for backward per token in one decoder layer of ``text_config``'s width
    with the recipe's LoRA on its seven projections, under bf16 autocast (the Trainer's bf16).

    Counted with ``torch.autograd.graph.saved_tensors_hooks`` (unique storages, parameters excluded)
    on one real ``Qwen2DecoderLayer`` on CPU, so it follows the layer's actual code (the RMS norms
    keep float32 copies, LoRA dropout its own inputs). The layer is allocated uninitialised (sizes
    do not depend on values) and run at two sequence lengths; the slope is the per-token figure (the
    intercept, autocast's bf16 copies of the fp32 LoRA weights, is ~2.5 MB per layer and ignored).
    CUDA's sdpa kernels save q, k, v, the output and a log-sum-exp as the CPU flash kernel does.
    Returns ``(bytes, source)``; falls back to ``FALLBACK_ACTIVATION_BYTES`` (scaled by width) if
    the layer cannot be built here."""
    import torch

    try:
        from peft import LoraConfig, get_peft_model
        from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2RotaryEmbedding

        config = text_config.__class__.from_dict(text_config.to_dict())
        config._attn_implementation = "sdpa"

        class OneLayer(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.layer = Qwen2DecoderLayer(config, 0)
                self.rotary = Qwen2RotaryEmbedding(config)

            def forward(self, hidden):
                positions = torch.arange(hidden.shape[1])[None]
                return self.layer(hidden, attention_mask=None, position_ids=positions,
                                  position_embeddings=self.rotary(hidden, positions))

        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            with torch.device("meta"):
                module = OneLayer()
        finally:
            torch.set_default_dtype(previous)
        module = module.to_empty(device="cpu")
        module.rotary.inv_freq.copy_(1.0 / (10000 ** (torch.arange(0, module.rotary.inv_freq.numel()) / module.rotary.inv_freq.numel())))
        module = get_peft_model(module, LoraConfig(
            r=lora_options.r, lora_alpha=lora_options.alpha, lora_dropout=lora_options.dropout,
            target_modules=r".*\.(q|k|v|o|gate|up|down)_proj")).train()
        parameters = {p.untyped_storage().data_ptr() for p in module.parameters()}

        def saved_bytes(n_tokens: int) -> int:
            hidden = torch.randn(1, n_tokens, config.hidden_size, dtype=torch.bfloat16, requires_grad=True)
            saved: dict[int, int] = {}

            def pack(tensor):
                ptr = tensor.untyped_storage().data_ptr()
                if ptr not in parameters and ptr != hidden.untyped_storage().data_ptr():
                    saved[ptr] = tensor.untyped_storage().nbytes()
                return tensor

            with torch.autocast("cpu", dtype=torch.bfloat16), \
                    torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.random.fork_rng():
                module(hidden)
            return sum(saved.values())

        small, large = tokens
        per_token = (saved_bytes(large) - saved_bytes(small)) / (large - small)
        return per_token, "counted (saved_tensors_hooks on one full-width decoder layer with LoRA, CPU, bf16 autocast)"
    except Exception as exc:  # noqa: BLE001 - the estimate must not stop the benchmark
        scale = (14 * text_config.hidden_size + 5 * text_config.intermediate_size) / (14 * 4096 + 5 * 11008)
        return FALLBACK_ACTIVATION_BYTES * scale, f"fallback constant ({type(exc).__name__}: {exc})"


def _gib(n_bytes: float) -> float:
    return round(n_bytes / GIB, 2)


def memory_estimate(config, model, counts: dict[str, int], plan: dict[str, Any], lora_options,
                    activation_bytes: float, activation_source: str, recipes: list[Path]) -> dict[str, Any]:
    """Analytic GPU-memory estimate (GiB) per shipped 7B recipe, for bf16 LoRA (as shipped) and
    QLoRA (``--set model.quantization=4bit``), at 3 s and 30 s clips. An estimate, not a measurement.

    Per variant: ``weights`` (bf16: 2 bytes per parameter; QLoRA: NF4 for the language model's
    linear layers, bf16 for the rest, i.e. audio tower, projector, embeddings, lm_head, norms),
    ``lora_state`` (16 bytes per LoRA parameter: fp32 weight, gradient, AdamW m and v), and
    ``activations``: with N = batch x (25 x clip seconds + prompt tokens) tokens, L layers, hidden
    size h and A = saved bytes per token per layer,

    * no checkpointing: ``L * N * A``;
    * gradient checkpointing (per decoder layer, non-reentrant): ``L * N * 2h`` (the bf16 layer
      inputs kept) ``+ N * A`` (one layer recomputed during backward).

    The frozen audio tower runs without autograd state (LoRA on the LLM only), so it adds only a
    transient ``batch x 1500 x (6 d_model + ffn) x 2`` bytes; ``score_batch`` applies only the label
    rows of ``lm_head`` (no full-vocabulary logits). ``total`` adds a CUDA context of
    ``CUDA_CONTEXT_GIB`` and ``ALLOCATOR_SLACK`` of the allocated bytes for allocator slack.
    """
    import yaml

    t, a = config.text_config, config.audio_config
    lora_modules, lora_params = lora_parameter_count(model, lora_options)
    intended_4bit = plan["language_model"]["quantised_parameters"]
    weights = {
        "bf16": counts["total"] * 2,
        "4bit": intended_4bit * NF4_BYTES_PER_PARAM + (counts["total"] - intended_4bit) * 2,
        "4bit_as_configured": plan["quantised_parameters"] * NF4_BYTES_PER_PARAM
        + (counts["total"] - plan["quantised_parameters"]) * 2,
    }
    out: dict[str, Any] = {
        "kind": "analytic estimate, not a measurement",
        "formula": ("total = (weights + lora_state + activations + encoder_transient) * (1 + allocator_slack) "
                    "+ cuda_context; activations = L*N*A without checkpointing, L*N*2h + N*A with it; "
                    "N = batch * (25 * clip_seconds + prompt_tokens)"),
        "parameters": counts["total"], "lora_modules": lora_modules, "lora_parameters": lora_params,
        "activation_bytes_per_token_layer": round(activation_bytes), "activation_bytes_source": activation_source,
        "weights_gib": {k: _gib(v) for k, v in weights.items()},
        "nf4_bytes_per_parameter": NF4_BYTES_PER_PARAM, "cuda_context_gib": CUDA_CONTEXT_GIB,
        "allocator_slack": ALLOCATOR_SLACK, "prompt_tokens_assumed": PROMPT_TOKENS_REAL, "recipes": [],
    }

    def one(batch: int, clip: float, prompt: int, checkpointing: bool, weight_bytes: float) -> dict[str, float]:
        tokens = batch * (round(25 * clip) + prompt)
        if checkpointing:
            acts = t.num_hidden_layers * tokens * 2 * t.hidden_size + tokens * activation_bytes
        else:
            acts = t.num_hidden_layers * tokens * activation_bytes
        encoder = batch * a.max_source_positions * (6 * a.d_model + a.encoder_ffn_dim) * 2
        lora_state = lora_params * 16
        allocated = weight_bytes + lora_state + acts + encoder
        return {"tokens": tokens, "weights_gib": _gib(weight_bytes), "lora_state_gib": _gib(lora_state),
                "activations_gib": _gib(acts), "encoder_transient_gib": _gib(encoder),
                "total_gib": round(allocated * (1 + ALLOCATOR_SLACK) / GIB + CUDA_CONTEXT_GIB, 1)}

    for path in recipes:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
        model, training = recipe.get("model", {}), recipe.get("training", {})
        batch = int(training.get("per_device_train_batch_size", 8))
        gc = bool(model.get("gradient_checkpointing", False))
        prompt = max(PROMPT_TOKENS_REAL[m] for m in recipe.get("data", {}).get("modalities", ["audio"]))
        row: dict[str, Any] = {"recipe": str(path.relative_to(REPO)), "batch_size": batch,
                               "gradient_checkpointing": gc, "prompt_tokens": prompt, "variants": {}}
        for variant, weight_bytes, checkpointing in (
                ("lora_bf16", weights["bf16"], gc), ("qlora_4bit", weights["4bit"], gc),
                ("lora_bf16_no_checkpointing", weights["bf16"], False)):
            row["variants"][variant] = {f"clip_{clip:g}s": one(batch, clip, prompt, checkpointing, weight_bytes)
                                        for clip in (MELD_CLIP_SECONDS, WINDOW_SECONDS)}
        out["recipes"].append(row)
    return out


# ------------------------------------------------------------------------------------ model files
def tiny_processor():
    """A Qwen2-Audio processor with the real front end (30 s window, 128 mel bins) and the
    project's offline tiny tokenizer (the real tokenizer cannot be downloaded here)."""
    from transformers import AutoProcessor

    from llmfair.speechllm.tiny import tiny_model_path

    return AutoProcessor.from_pretrained(str(tiny_model_path(window_seconds=int(WINDOW_SECONDS))), local_files_only=True)


def build_random_checkpoint(model_dir: Path, config_dict: dict[str, Any], device: str) -> dict[str, Any]:
    """Write a random bf16 Qwen2-Audio checkpoint of ``config_dict`` and the processor into
    ``model_dir`` (built on ``device``, moved to CPU, ``save_pretrained``); reuses a complete
    directory built from the same configuration. Returns the marker written last."""
    import torch
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    from llmfair._atomic import atomic_directory, write_json

    digest = hashlib.sha256(json.dumps(config_dict, sort_keys=True).encode("utf-8")).hexdigest()
    marker = model_dir / MODEL_MARKER
    if marker.is_file():
        found = json.loads(marker.read_text(encoding="utf-8"))
        if found.get("config_sha256") == digest:
            return {**found, "reused": True}
    start = time.perf_counter()
    config = Qwen2AudioConfig.from_dict(config_dict)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2AudioForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    built = time.perf_counter() - start
    model.to("cpu")
    parameters = sum(p.numel() for p in model.parameters())
    with atomic_directory(model_dir, overwrite=True) as tmp:
        model.save_pretrained(str(tmp))
        tiny_processor().save_pretrained(str(tmp))
        info = {"config_sha256": digest, "parameters": parameters, "dtype": "bfloat16", "built_on": device,
                "build_s": round(built, 1), "build_and_save_s": round(time.perf_counter() - start, 1)}
        write_json(tmp / MODEL_MARKER, info)
    return {**info, "reused": False}


# ------------------------------------------------------------------------------------ worker
def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:600]}"


def _describe(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    q = statistics.quantiles(ordered, n=4) if len(ordered) >= 2 else [ordered[0]] * 3
    return {"step_s_median": statistics.median(ordered), "step_s_q1": q[0], "step_s_q3": q[2], "steps": len(ordered)}


def synthetic_records(batch_size: int, clip_seconds: float, seed: int = 0) -> list[dict[str, Any]]:
    """``batch_size`` distinct 16 kHz clips (a tone plus noise), unimodal English, MELD labels."""
    import numpy as np

    n = int(round(clip_seconds * SAMPLE_RATE))
    t = np.arange(n, dtype=np.float32) / SAMPLE_RATE
    records = []
    for i in range(batch_size):
        rng = np.random.default_rng(seed + i)
        audio = 0.3 * np.sin(2 * np.pi * (110 + 20 * i) * t) + 0.05 * rng.standard_normal(n)
        records.append({"audio": audio.astype(np.float32), "text": "", "language": "eng", "modality": "audio",
                        "emotion": i % 7, "id": f"clip{i}"})
    return records


def audio_tower_check(model) -> dict[str, Any]:
    """Whether the audio tower (and projector) stayed unquantised bf16 after a 4-bit load."""
    tower = model.model.audio_tower
    projector = model.model.multi_modal_projector
    quantised = sorted({type(m).__name__ for m in tower.modules() if "4bit" in type(m).__name__ or "8bit" in type(m).__name__})
    tower_q = [n for n, m in tower.named_modules() if "4bit" in type(m).__name__]
    proj_q = [n for n, m in projector.named_modules() if "4bit" in type(m).__name__]
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in tower.parameters()})
    return {"audio_tower_bf16": dtypes == ["bfloat16"] and not tower_q, "audio_tower_dtypes": dtypes,
            "audio_tower_quantised_layers": len(tower_q), "projector_quantised_layers": len(proj_q),
            "quantised_module_types": quantised}


def _memory(cuda: bool) -> dict[str, Any]:
    if cuda:
        import torch

        return {"memory_kind": "cuda", "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 2),
                "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2)}
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"memory_kind": "cpu_max_rss", "peak_rss_gib": round(rss_kib / 1024 ** 2, 3)}


def run_setting(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one setting in this process (the worker side); ``spec`` comes from the parent."""
    import torch

    from llmfair.data.labels import MELD
    from llmfair.speechllm.classifier import SpeechLLMClassifier
    from llmfair.speechllm.collator import SpeechLLMCollator
    from llmfair.speechllm.loading import load_speech_llm
    from llmfair.speechllm.lora import LoraOptions, apply_lora
    from llmfair.speechllm.prompts import PromptTemplate
    from llmfair.speechllm.verbalizer import Verbalizer

    setting = Setting(**spec["setting"])
    cuda = spec["device"] == "cuda"
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    result: dict[str, Any] = {}
    start = time.perf_counter()
    device_map = {"": 0} if cuda and setting.quantization is None else None
    model, processor = load_speech_llm(spec["model_dir"], dtype=setting.dtype, attn_implementation=spec["attn"],
                                       gradient_checkpointing=setting.gradient_checkpointing,
                                       quantization=setting.quantization, device_map=device_map)
    if setting.quantization is not None:
        result.update(audio_tower_check(model))
    torch.manual_seed(0)
    if setting.kind == "score":
        model.requires_grad_(False)
        model.eval()
        batch_size = spec["eval_batch_size"]
    else:
        model, targets = apply_lora(model, LoraOptions(**spec["lora"]))
        model.train()
        batch_size = spec["train_batch_size"]
        result["lora_modules"] = len(targets)
    if not cuda:
        model.to(device)
    result["load_s"] = round(time.perf_counter() - start, 2)
    result["trainable_parameters"] = int(sum(p.numel() for p in model.parameters() if p.requires_grad))
    if cuda:
        result["weights_gib"] = round(torch.cuda.memory_allocated() / GIB, 2)

    verbalizer = Verbalizer(MELD.classes, processor.tokenizer)
    collator = SpeechLLMCollator(processor, PromptTemplate(), verbalizer)
    batch = collator(synthetic_records(batch_size, setting.clip_seconds))
    cast = torch.bfloat16 if setting.zero_stage is not None else None  # the Trainer casts inputs for DeepSpeed
    batch = {k: (v.to(device, cast) if cast is not None and v.is_floating_point() else v.to(device))
             if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    audio_tokens = int((batch["input_ids"][0] == model.config.audio_token_id).sum())
    tokens = int(batch["attention_mask"].sum())
    result.update(batch_size=batch_size, clip_seconds=setting.clip_seconds, seq_len=int(batch["input_ids"].shape[1]),
                  audio_tokens_per_sample=audio_tokens, text_tokens_per_sample=int(batch["input_ids"].shape[1]) - audio_tokens,
                  tokens_per_batch=tokens)
    classifier = SpeechLLMClassifier(model, verbalizer)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=setting.dtype == "bfloat16" and setting.zero_stage is None)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    if setting.kind == "score":
        classifier.eval()

        def step() -> float:
            sync()
            t0 = time.perf_counter()
            with torch.no_grad(), autocast:
                classifier(**batch)
            sync()
            return time.perf_counter() - t0
    elif setting.zero_stage is not None:
        from types import SimpleNamespace

        try:
            import deepspeed
        except ImportError:
            raise RuntimeError("the ZeRO-2 setting needs DeepSpeed: pip install 'llmfair[deepspeed]'") from None

        from llmfair.training.deepspeed import deepspeed_config_for

        ds_config = deepspeed_config_for(ZERO2_CONFIG, SimpleNamespace(
            per_device_train_batch_size=batch_size, gradient_accumulation_steps=1, max_grad_norm=1.0,
            bf16=True, fp16=False))
        if ds_config.get("zero_optimization", {}).get("stage") != setting.zero_stage:
            raise RuntimeError(f"{ZERO2_CONFIG} is not a ZeRO-{setting.zero_stage} config")
        ds_config["zero_allow_untested_optimizer"] = True  # as transformers does for the Trainer's own AdamW
        params = [p for p in classifier.parameters() if p.requires_grad]
        engine, *_ = deepspeed.initialize(model=classifier, optimizer=torch.optim.AdamW(params, lr=1e-4),
                                          config=ds_config)
        result["zero_stage"] = setting.zero_stage

        def step() -> float:
            sync()
            t0 = time.perf_counter()
            loss = engine(**batch)["per_sample_loss"].float().mean()
            engine.backward(loss)
            engine.step()
            sync()
            return time.perf_counter() - t0
    else:
        params = [p for p in classifier.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)

        def step() -> float:
            sync()
            t0 = time.perf_counter()
            with autocast:
                out = classifier(**batch)
            out["per_sample_loss"].float().mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync()
            return time.perf_counter() - t0

    warmup, steps = spec["warmup"], spec["steps"]
    if setting.kind == "cache":
        from llmfair.speechllm.encoder_cache import EncoderCache

        with tempfile.TemporaryDirectory(prefix="bench-scale-cache-") as cache_dir:
            cache = EncoderCache.for_model(cache_dir, model, processor, model_id=f"bench-scale/{setting.name}",
                                           in_memory=True)
            times: dict[str, list[float]] = {"cached": [], "uncached": []}

            def variant(name: str) -> float:
                classifier.encoder_cache = cache if name == "cached" else None
                return step()

            for _ in range(warmup):  # the first cached step fills the cache
                variant("uncached")
                variant("cached")
            for i in range(steps):
                for name in (("cached", "uncached") if i % 2 == 0 else ("uncached", "cached")):
                    times[name].append(variant(name))
            result["encoder_cache"] = {"hits": cache.hits, "misses": cache.misses, "encoder_calls": cache.encoder_calls}
        cached, uncached = _describe(times["cached"]), _describe(times["uncached"])
        result.update(cached)
        result["uncached"] = uncached
        result["uncached_samples_per_s"] = batch_size / uncached["step_s_median"]
        result["uncached_tokens_per_s"] = tokens / uncached["step_s_median"]
        result["step_time_ratio_cached_over_uncached"] = cached["step_s_median"] / uncached["step_s_median"]
    else:
        for _ in range(warmup):
            step()
        result.update(_describe([step() for _ in range(steps)]))
    result["samples_per_s"] = batch_size / result["step_s_median"]
    result["tokens_per_s"] = tokens / result["step_s_median"]
    if setting.quantization is not None and not result["audio_tower_bf16"]:
        raise AssertionErrorWithResult(
            f"audio tower not kept in bf16 under QLoRA: {result['audio_tower_quantised_layers']} 4-bit layers, "
            f"dtypes {result['audio_tower_dtypes']} (llm_int8_skip_modules must match module names such as "
            f"model.audio_tower.layers.0.fc1)", result)
    return result


class AssertionErrorWithResult(AssertionError):
    """A failed check after the measurement: the figures are kept in the failed row."""

    def __init__(self, message: str, result: dict[str, Any]) -> None:
        super().__init__(message)
        self.result = result


def worker_main(spec_json: str, result_path: str) -> int:
    """Subprocess entry: run one setting (or build the checkpoint) and write its row as JSON."""
    from llmfair._atomic import write_json

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    spec = json.loads(spec_json)
    cuda = spec["device"] == "cuda"
    row: dict[str, Any] = {}
    code = 0
    try:
        if spec.get("build"):
            row = build_random_checkpoint(Path(spec["model_dir"]), spec["config"], spec["device"])
            if cuda:
                row["gpu"] = gpu_description()
        else:
            row = run_setting(spec)
        row["status"] = "ok"
    except Exception as exc:  # noqa: BLE001 - every failure becomes a row
        traceback.print_exc()
        row = dict(getattr(exc, "result", {}))
        message = _one_line(exc)
        if "out of memory" in message.lower() or type(exc).__name__ == "OutOfMemoryError":
            message = "out of memory: " + message
        row.update(status="failed", error=message)
        code = 1
    if cuda:
        try:
            row.update(_memory(True))
        except Exception:  # noqa: BLE001 - a broken CUDA context after a failure
            pass
    else:
        row.update(_memory(False))
    write_json(result_path, row)
    return code


# ------------------------------------------------------------------------------------ parent
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


WORKER_PRELOAD = (
    "torch", "transformers", "peft", "llmfair.speechllm.loading", "llmfair.speechllm.lora",
    "llmfair.speechllm.classifier", "llmfair.speechllm.collator", "llmfair.speechllm.encoder_cache",
    "transformers.models.qwen2_audio.modeling_qwen2_audio", "transformers.models.qwen2_audio.processing_qwen2_audio",
    "transformers.models.whisper.feature_extraction_whisper", "transformers.models.qwen2.tokenization_qwen2",
)
"""Imported once by the smoke mode's fork server, so that each setting's process starts in
milliseconds instead of re-importing torch, transformers and peft (~8 s on 2 busy cores)."""


def fork_server_context():
    """The smoke mode's ``forkserver`` context, its server started now (it imports
    ``WORKER_PRELOAD`` while the parent computes the parameter counts and the estimate)."""
    import multiprocessing
    from multiprocessing import forkserver

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(WORKER_PRELOAD))
    forkserver.ensure_running()
    return context


def _forked_worker(spec_json: str, result_path: str, log_path: str) -> None:
    """Entry of a setting's process forked by the smoke mode's fork server: output to the log."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.exit(worker_main(spec_json, result_path))


def _worker_env(zero: bool) -> dict[str, str]:
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    if zero:  # one-process torch.distributed without a launcher (DeepSpeed would look for MPI)
        env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    return env


def run_in_subprocess(spec: dict[str, Any], timeout_s: float, log_path: Path, *, zero: bool = False,
                      fork_server: bool = False) -> dict[str, Any]:
    """Run ``spec`` in a process of its own; its row, or a failed row naming what went wrong.

    GPU mode starts a fresh Python interpreter per setting (``subprocess``: nothing of CUDA, NCCL
    or DeepSpeed is shared). ``fork_server`` (CPU smoke mode) forks each setting's process from a
    clean server that has only imported the libraries (``multiprocessing`` forkserver): the same
    isolation, without paying the imports once per setting."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fd, result_path = tempfile.mkstemp(prefix="bench-scale-", suffix=".json")
    os.close(fd)
    os.unlink(result_path)
    start = time.perf_counter()
    try:
        if fork_server:
            os.environ.update(_worker_env(zero))
            proc = fork_server_context().Process(target=_forked_worker, args=(json.dumps(spec), result_path, str(log_path)))
            proc.start()
            proc.join(timeout_s)
            timed_out = proc.exitcode is None
            if timed_out:
                proc.kill()
                proc.join()
            rc = proc.exitcode
        else:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", json.dumps(spec), "--_result", result_path]
            with open(log_path, "w", encoding="utf-8") as log:
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **_worker_env(zero)},
                                        cwd=str(REPO), start_new_session=True)
                try:
                    rc = proc.wait(timeout=timeout_s)
                    timed_out = False
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, 9)  # the worker's own process group (it may have started helpers)
                    rc = proc.wait()
                    timed_out = True
        wall = round(time.perf_counter() - start, 1)
        if timed_out:
            return {"status": "failed", "error": f"timed out after {timeout_s:.0f} s (log: {log_path})", "wall_s": wall}
        if os.path.exists(result_path):
            with open(result_path, encoding="utf-8") as f:
                row = json.load(f)
            row["wall_s"] = wall
            return row
        tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        return {"status": "failed", "wall_s": wall,
                "error": f"worker exited with status {rc} without a result: {' | '.join(tail)[:600]}"}
    finally:
        if os.path.exists(result_path):
            os.unlink(result_path)


def machine_description() -> dict[str, Any]:
    """Python, platform, CPU and package versions (the GPU is described by the build process, so
    that this parent process never holds a CUDA context while the settings run)."""
    import importlib.metadata as md

    versions = {}
    for package in ("torch", "transformers", "peft", "accelerate", "deepspeed", "bitsandbytes", "flash-attn"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(), "versions": versions,
            "device": f"CPU ({os.cpu_count()} cores, {platform.machine()})"}


def gpu_description() -> dict[str, Any]:
    """GPU name, memory, CUDA version and bf16 support of device 0."""
    import torch

    props = torch.cuda.get_device_properties(0)
    return {"device": torch.cuda.get_device_name(0), "gpu_memory_gib": round(props.total_memory / GIB, 1),
            "cuda": torch.version.cuda, "bf16_supported": torch.cuda.is_bf16_supported()}


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def markdown_report(report: dict[str, Any]) -> str:
    """The Markdown tables: one row per setting, then the memory estimate per recipe."""
    smoke = report["mode"] == "cpu-smoke"
    m = report["machine"]
    lines = [f"# bench_scale ({report['mode']})", "",
             f"{report['date']} · {m['device']} · torch {m['versions']['torch']} · transformers "
             f"{m['versions']['transformers']} · peft {m['versions']['peft']} · "
             f"{report['config']['description']}", ""]
    if smoke:
        lines += ["CPU smoke run of a width-reduced model: the figures show that every setting runs, not what "
                  "the 7B model costs. Memory is the worker process's peak RSS.", ""]
    mem_cols = ["peak RSS GiB (CPU)"] if smoke else ["peak alloc GiB", "peak reserved GiB"]
    head = ["setting", "status", "batch", "seq", "samples/s", "tokens/s", "step s", *mem_cols,
            "cached/uncached step", "audio tower bf16", "note"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report["settings"]:
        mem = [_fmt(row.get("peak_rss_gib"), 3)] if smoke else [_fmt(row.get("peak_allocated_gib")),
                                                                 _fmt(row.get("peak_reserved_gib"))]
        note = row.get("reason") or row.get("error") or ""
        if row.get("uncached_samples_per_s"):
            note = (f"uncached {row['uncached_samples_per_s']:.2f} samples/s; " + note).strip("; ")
        cells = [row["name"], row["status"], _fmt(row.get("batch_size")), _fmt(row.get("seq_len")),
                 _fmt(row.get("samples_per_s")), _fmt(row.get("tokens_per_s"), 0), _fmt(row.get("step_s_median"), 3),
                 *mem, _fmt(row.get("step_time_ratio_cached_over_uncached"), 3), _fmt(row.get("audio_tower_bf16")),
                 note.replace("|", "/")[:200]]
        lines.append("| " + " | ".join(cells) + " |")
    p = report["parameters"]
    lines += ["", f"Parameters: measured model {p['bench_model']['total']:,}; released configuration "
                  f"{p['released_config']['total']:,} on the meta device ({p['check']['relative_difference']:+.2%} vs "
                  f"8.4 B, within {PARAMETER_TOLERANCE:.0%}: {_fmt(p['check']['within_tolerance'])}); "
                  f"Qwen2AudioConfig() defaults {p['qwen2audioconfig_defaults_total']:,}."]
    plan = report["qlora_plan"]["released_config"]
    lines += ["", f"QLoRA plan (transformers' own module matching, no GPU needed): llm_int8_skip_modules="
                  f"{plan['llm_int8_skip_modules']} quantises {plan['audio_tower']['quantised_layers']} of "
                  f"{plan['audio_tower']['linear_layers']} audio-tower linears and "
                  f"{plan['multi_modal_projector']['quantised_layers']} projector linears; audio tower kept: "
                  f"{_fmt(plan['audio_tower_kept'])}."]
    est = report["memory_estimate"]
    lines += ["", "## GPU memory per shipped 7B recipe — ESTIMATE, not a measurement", "",
              f"{est['formula']}. A = {est['activation_bytes_per_token_layer']:,} bytes/token/layer "
              f"({est['activation_bytes_source']}); LoRA {est['lora_parameters']:,} parameters.", "",
              f"qlora_4bit: the language model's linears in NF4, audio tower / projector / lm_head / embeddings in "
              f"bf16 (weights {est['weights_gib']['4bit']} GiB; with today's skip list, which also quantises the "
              f"tower and projector, {est['weights_gib']['4bit_as_configured']} GiB). Clip lengths set the language "
              f"model's sequence (25 audio tokens/s + {est['prompt_tokens_assumed']} text tokens); the encoder always "
              f"sees the full 30 s window.", "",
              "| recipe | batch | variant | 3 s clips GiB | 30 s clips GiB |", "|---|---|---|---|---|"]
    for recipe in est["recipes"]:
        for variant, clips in recipe["variants"].items():
            lines.append(f"| {Path(recipe['recipe']).stem} | {recipe['batch_size']} | {variant} | "
                         f"{clips['clip_3s']['total_gib']} | {clips['clip_30s']['total_gib']} |")
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, report: dict[str, Any]) -> None:
    from llmfair._atomic import write_json, write_text

    write_json(out / "bench_scale.json", report)
    write_text(out / "bench_scale.md", markdown_report(report))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_scale", help="output directory (default runs/bench_scale)")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="width-reduced model on CPU (< 2 min): checks that every setting runs")
    parser.add_argument("--settings", default=None,
                        help=f"comma-separated subset of {', '.join(SETTING_NAMES)} (default: all)")
    parser.add_argument("--recipe", default=str(DEFAULT_RECIPE),
                        help="recipe whose lora section and batch sizes are used (default: the unimodal ERM 7B recipe)")
    parser.add_argument("--attn", default="sdpa", help="attn_implementation: sdpa (the recipes), eager, flash_attention_2")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per setting (default 5 GPU, 3 smoke)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 2 GPU, 1 smoke)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per setting (default 150 GPU, 60 smoke)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the whole run; settings that no longer fit are skipped (default 460 GPU, 110 smoke)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads in workers (default 1 in smoke mode)")
    parser.add_argument("--model-dir", default=None,
                        help="where the random checkpoint is written (default OUT/random-model-<mode>); a complete one "
                             "with the same configuration is reused")
    parser.add_argument("--keep-model", action="store_true", help="keep the random checkpoint after the run")
    parser.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_result", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._worker is not None:
        return worker_main(args._worker, args._result)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    smoke = bool(args.cpu_smoke)
    cuda = torch.cuda.is_available()
    if not smoke and not cuda:
        print("bench_scale: no CUDA device found (torch.cuda.is_available() is False); the 7B benchmark needs a GPU — "
              "run with --cpu-smoke for the width-reduced CPU check", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        names = SETTING_NAMES if args.settings is None else tuple(s.strip() for s in args.settings.split(",") if s.strip())
        unknown = [n for n in names if n not in SETTING_NAMES]
        if unknown or not names:
            raise ValueError(f"--settings: unknown {unknown}; choose from {', '.join(SETTING_NAMES)}")
        return run(args, smoke, [s for s in SETTINGS if s.name in names])
    except Exception as exc:  # noqa: BLE001 - the CLI turns errors into one line
        print(f"bench_scale: {_one_line(exc)}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace, smoke: bool, settings: list[Setting]) -> int:
    """Parameter counts, QLoRA plan and memory estimate; the checkpoint; then every setting."""
    import yaml

    from llmfair.options import dataclass_from_mapping
    from llmfair.speechllm.loading import QLORA_SKIP_MODULES
    from llmfair.speechllm.lora import LoraOptions

    began = time.perf_counter()
    budget = args.budget if args.budget is not None else (110.0 if smoke else 460.0)
    timeout = args.timeout if args.timeout is not None else (60.0 if smoke else 150.0)
    steps = args.steps if args.steps is not None else (3 if smoke else 5)
    warmup = args.warmup if args.warmup is not None else (1 if smoke else 2)
    threads = args.threads if args.threads is not None else (1 if smoke else None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if smoke else "cuda"

    recipe_path = Path(args.recipe)
    recipe = yaml.safe_load(recipe_path.read_text(encoding="utf-8"))
    lora_options = dataclass_from_mapping(LoraOptions, recipe.get("lora", {}), source=f"{recipe_path} [lora]")
    training = recipe.get("training", {})
    train_batch = int(training.get("per_device_train_batch_size", 4))
    eval_batch = int(training.get("per_device_eval_batch_size", 8))

    if smoke:
        for key, value in _worker_env(False).items():
            os.environ.setdefault(key, value)
        fork_server_context()
    # parameter counts and the QLoRA plan on the meta device: no memory, no GPU
    released = released_config()
    released_meta = meta_model(released)
    released_counts = parameter_counts(released_meta)
    released_plan = qlora_plan(released_meta, QLORA_SKIP_MODULES)
    from transformers import Qwen2AudioConfig

    defaults_total = parameter_counts(meta_model(Qwen2AudioConfig()))["total"]
    processor = tiny_processor()
    config = bench_config(smoke, processor.tokenizer)
    bench_meta = meta_model(config)
    bench_counts = parameter_counts(bench_meta)
    bench_plan = qlora_plan(bench_meta, QLORA_SKIP_MODULES)
    del bench_meta
    activation_bytes, activation_source = activation_bytes_per_token_layer(released.text_config, lora_options)
    estimate = memory_estimate(released, released_meta, released_counts, released_plan, lora_options, activation_bytes,
                               activation_source, sorted((REPO / "recipes" / "configs").glob(RECIPE_GLOB)))

    sizes = config_sizes(config)
    report: dict[str, Any] = {
        "schema": SCHEMA_VERSION, "mode": "cpu-smoke" if smoke else "gpu",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "bench/bench_scale.py", *sys.argv[1:]]),
        "machine": machine_description(),
        "config": {"description": ("width-reduced Qwen2-Audio (d_model/hidden 64, 2+2 layers, 30 s window)" if smoke
                                   else "Qwen2-Audio-7B released configuration, random bf16 weights"),
                   **sizes, "tokenizer": "llmfair tiny offline BPE (the real tokenizer cannot be downloaded)",
                   "attn_implementation": args.attn},
        "recipe": {"path": str(recipe_path), "lora": lora_options.to_dict(), "train_batch_size": train_batch,
                   "eval_batch_size": eval_batch},
        "measurement": {"steps": steps, "warmup": warmup, "timeout_s": timeout, "budget_s": budget, "threads": threads,
                        "memory": ("process max RSS (resource.getrusage), CPU" if smoke else
                                   "torch.cuda.max_memory_allocated / max_memory_reserved of the setting's process, "
                                   "model load included")},
        "parameters": {"bench_model": bench_counts, "released_config": released_counts,
                       "qwen2audioconfig_defaults_total": defaults_total,
                       "check": parameter_check(released_counts["total"]),
                       "note": ("Qwen2AudioConfig() defaults use Qwen2Config() as text config (intermediate 22016, "
                                "vocab 151936); the released model sets intermediate 11008 and vocab 156032")},
        "qlora_plan": {"released_config": released_plan, "bench_model": bench_plan},
        "memory_estimate": estimate, "settings": [], "model": None,
    }
    write_outputs(out, report)

    model_dir = Path(args.model_dir) if args.model_dir else out / f"random-model-{'smoke' if smoke else '7b'}"
    build_spec = {"build": True, "model_dir": str(model_dir), "config": config.to_dict(), "device": device}
    if smoke:
        report["model"] = {**build_random_checkpoint(model_dir, build_spec["config"], device), "status": "ok"}
    else:  # in its own process, so that the builder's GPU memory is gone before the first setting
        report["model"] = run_in_subprocess(build_spec, max(60.0, budget * 0.4), out / "logs" / "build.log")
    report["model"]["dir"] = str(model_dir)
    report["machine"].update(report["model"].pop("gpu", {}))
    write_outputs(out, report)
    print(f"model: {report['config']['description']}, {bench_counts['total']:,} parameters "
          f"({'reused' if report['model'].get('reused') else 'built'} in {report['model'].get('build_and_save_s', '?')} s)",
          flush=True)

    failed = report["model"]["status"] != "ok"
    for setting in settings:
        row: dict[str, Any] = {"name": setting.name, "description": setting.description, **{
            k: v for k, v in asdict(setting).items() if k not in ("name", "description", "kind", "cuda_only")}}
        left = budget - (time.perf_counter() - began)
        if smoke and setting.cuda_only:
            row.update(status="skipped", reason=f"CUDA only: {setting.cuda_only}")
            if setting.quantization:
                row["qlora_plan_audio_tower_kept"] = bench_plan["audio_tower_kept"]
        elif report["model"]["status"] != "ok":
            row.update(status="skipped", reason=f"no model: {report['model'].get('error')}")
        elif left < (20 if smoke else 45):
            row.update(status="skipped", reason=f"time budget of {budget:.0f} s used up")
        else:
            spec = {"setting": asdict(setting), "device": device, "model_dir": str(model_dir), "attn": args.attn,
                    "lora": lora_options.to_dict(), "train_batch_size": train_batch, "eval_batch_size": eval_batch,
                    "steps": steps, "warmup": warmup, "threads": threads}
            row.update(run_in_subprocess(spec, min(timeout, left), out / "logs" / f"{setting.name}.log",
                                         zero=setting.zero_stage is not None, fork_server=smoke))
            failed = failed or row["status"] == "failed"
        report["settings"].append(row)
        write_outputs(out, report)
        detail = row.get("reason") or row.get("error") or (
            f"{row.get('samples_per_s', float('nan')):.2f} samples/s, "
            + (f"peak {row.get('peak_allocated_gib')} GiB" if not smoke else f"peak RSS {row.get('peak_rss_gib')} GiB"))
        print(f"{setting.name:<20} {row['status']:<8} {detail}", flush=True)

    if not args.keep_model and args.model_dir is None and (model_dir / MODEL_MARKER).is_file():
        shutil.rmtree(model_dir)
        report["model"]["removed"] = True
    report["total_s"] = round(time.perf_counter() - began, 1)
    write_outputs(out, report)
    if not smoke and not report["parameters"]["check"]["within_tolerance"]:
        print("bench_scale: the released configuration's parameter count is not ~8.4 B", file=sys.stderr)
        failed = True
    print(f"wrote {out / 'bench_scale.json'} and {out / 'bench_scale.md'} in {report['total_s']} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
