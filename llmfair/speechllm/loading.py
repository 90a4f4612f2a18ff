"""Load a speech LLM and its processor: ``"tiny"``, a local directory, or a hub id, of any
registered backbone family (:mod:`llmfair.speechllm.backbones`: Qwen2-Audio, Qwen2.5-Omni, Voxtral).

Every source goes through the same code path: the checkpoint's ``config.model_type`` picks the
family (checked against a requested ``family``), then the family's transformers class
``from_pretrained`` and the family's processor loader run, never with ``trust_remote_code``. What
this module adds to a plain ``from_pretrained`` (QWEN2AUDIO.md):

* offline behaviour: a hub id that is not in the local Hugging Face cache fails at once with a
  ConfigError when ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` is set, instead of retrying a
  connection (and a failed download becomes a ConfigError too);
* dtype: ``"auto"`` is bf16 on a CUDA device with bf16 support, float32 otherwise (CPU, the tiny
  model). fp16 is refused unless ``allow_fp16=True``: Qwen2-7B fine-tuning in fp16 overflows to
  Inf/NaN (§10);
* QLoRA: 4-bit NF4 with double quantisation and bf16 compute, keeping the family's
  ``qlora_skip_modules`` unquantised (the audio tower, the projector and ``lm_head`` on
  Qwen2-Audio; §11). Needs CUDA and bitsandbytes (imported lazily);
* gradient checkpointing with ``enable_input_require_grads`` so that peft adapters behind
  checkpointed layers receive gradients (§8);
* consistency checks between the processor and the model (audio token id, mel bins, sampling
  rate, encoder window: §1, §5) and left padding on the tokenizer (§6);
* one-line errors for a checkpoint of an unsupported family (naming the supported ones) and for a
  recipe whose ``model.family`` is not the checkpoint's.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from llmfair.errors import ConfigError

logger = logging.getLogger(__name__)

DTYPES = ("auto", "bfloat16", "float32", "float16")
QUANTIZATIONS = (None, "4bit")
QLORA_SKIP_MODULES = ["model.audio_tower", "model.multi_modal_projector", "lm_head"]
"""Qwen2-Audio's modules kept in the compute dtype under 4-bit loading (QWEN2AUDIO.md §11; each
family declares its own ``qlora_skip_modules``). transformers 5.x
matches these from the start of a linear's full name (``model.audio_tower.layers.0.fc1``) or as
its suffix, so the prefixes must be full: a bare ``audio_tower`` matched nothing and left the tower
quantised (tests/test_bench_scale.py checks the plan with transformers' own matching)."""

_HUB_ID = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]*/)?[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def hub_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (env vars or huggingface_hub constant)."""
    if _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE")):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return False


def resolve_model_source(name_or_path: str | os.PathLike, *, revision: str | None = None,
                         family: str | None = None) -> tuple[str, bool, bool]:
    """Where to load from: ``(source, local_files_only, is_tiny)``.

    ``"tiny"`` builds (once) the tiny model of ``family`` (default Qwen2-Audio); an existing
    directory is used as is; anything else must be a hub id (``owner/name``). Offline, a hub id must
    already be in the Hugging Face cache.

    Raises:
        ConfigError: a path that does not exist, a malformed id, an uncached id while offline, or
            an unknown family.
    """
    name = os.fspath(name_or_path)
    if name == "tiny":
        from llmfair.speechllm.tiny import DEFAULT_FAMILY, tiny_model_path

        return str(tiny_model_path(family=family or DEFAULT_FAMILY)), True, True
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"model directory {path} has no config.json; is it a saved speech-LLM checkpoint?")
        from llmfair.speechllm.tiny import is_complete

        return str(path), True, is_complete(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name:
        raise ConfigError(f"model directory not found: {name}")
    if not _HUB_ID.match(name):
        raise ConfigError(f"model {name!r} is neither 'tiny', a local directory, nor a hub id like "
                          f"'Qwen/Qwen2-Audio-7B-Instruct'")
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, "config.json", revision=revision)
    if isinstance(cached, str):
        return name, True, False
    if hub_offline():
        raise ConfigError(
            f"model {name!r} is neither a local directory nor in the offline Hugging Face cache; "
            f"download it where the hub is reachable (huggingface-cli download {name}) or pass a local path")
    return name, False, False


def checkpoint_family(name_or_path: str | os.PathLike, family: str | None = None, *,
                      revision: str | None = None) -> str | None:
    """The registered family of a model source, found without loading (or downloading) anything.

    ``"tiny"`` is the tiny build of ``family`` (Qwen2-Audio when None). A local directory or a hub
    id already in the Hugging Face cache: the family of its ``config.json`` ``model_type``, checked
    against ``family``. A hub id not in the cache: ``family`` as given (None: unknown until it is
    downloaded).

    Raises:
        ConfigError: an unknown family, a checkpoint of no registered family (naming the supported
            ones), or a family/checkpoint mismatch.
    """
    import json

    from llmfair.speechllm.backbones import get_backbone, resolve_family

    name = os.fspath(name_or_path)
    if family is not None:
        get_backbone(family)
    if name == "tiny":
        from llmfair.speechllm.tiny import DEFAULT_FAMILY

        return family or DEFAULT_FAMILY
    config_file: str | None = None
    if Path(name).expanduser().is_dir():
        config_file = str(Path(name).expanduser() / "config.json")
    elif _HUB_ID.match(name):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json", revision=revision)
        config_file = cached if isinstance(cached, str) else None
    if config_file is None or not os.path.isfile(config_file):
        return family
    try:
        model_type = json.loads(Path(config_file).read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the configuration of model {name!r} ({config_file}): {exc}") from None
    return resolve_family(family, model_type, where=f"model {name!r}").name


def _resolve_dtype(dtype: Any, *, is_tiny: bool, allow_fp16: bool, name: str):
    import torch

    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; expected one of {list(DTYPES)}")
    if dtype == "auto":
        if not is_tiny and torch.cuda.is_available():
            if torch.cuda.is_bf16_supported():
                return torch.bfloat16
            logger.warning("this GPU has no bf16 support: loading %s in float32 (fp16 gives NaNs with Qwen2; "
                           "QWEN2AUDIO.md §10)", name)
        return torch.float32
    if dtype == "float16" and not is_tiny and not allow_fp16:
        raise ConfigError(
            f"float16 refused for {name!r}: fine-tuning Qwen2-7B in fp16 overflows to Inf/NaN (Qwen maintainers "
            f"advise bf16 or fp32). Use dtype='bfloat16' (Ampere or newer) or 'float32' (e.g. V100), or pass "
            f"allow_fp16=True to force it")
    return getattr(torch, dtype)


def _quantization_config(quantization: str | None, skip_modules=QLORA_SKIP_MODULES):
    """BitsAndBytesConfig for QLoRA keeping ``skip_modules`` unquantised; ConfigError where it cannot run."""
    if quantization not in QUANTIZATIONS:
        raise ConfigError(f"unknown quantization {quantization!r}; expected one of {list(QUANTIZATIONS)}")
    if quantization is None:
        return None
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("quantization='4bit' (QLoRA) needs a CUDA GPU; none is available here. "
                          "Use LoRA without quantization on CPU")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError("quantization='4bit' (QLoRA) needs bitsandbytes: pip install 'llmfair[qlora]'") from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16, llm_int8_skip_modules=list(skip_modules),
    )


def check_processor(model, processor, *, where: str = "") -> None:
    """Fail clearly when processor and model disagree on what the model needs (QWEN2AUDIO.md §1, §5):
    the model's family checks its audio token, mel bins, sampling rate and encoder window."""
    from llmfair.speechllm.backbones import backbone_of

    backbone_of(model).check_processor(model, processor, where=where)


def load_speech_llm(
    name_or_path: str | os.PathLike,
    *,
    family: str | None = None,
    dtype: Any = "auto",
    attn_implementation: str = "sdpa",
    gradient_checkpointing: bool = False,
    quantization: str | None = None,
    device_map: Any = None,
    allow_fp16: bool = False,
    revision: str | None = None,
):
    """Load ``(model, processor)`` of a registered speech-LLM family (e.g. a
    ``Qwen2AudioForConditionalGeneration`` or a ``Qwen2_5OmniThinkerForConditionalGeneration``).

    Args:
        name_or_path: ``"tiny"`` (built offline and cached, see ``tiny.tiny_model_path``), a local
            directory, or a hub id such as ``"Qwen/Qwen2-Audio-7B-Instruct"``.
        family: the backbone family (``llmfair.speechllm.backbones``); None infers it from the
            checkpoint's ``model_type`` (and means Qwen2-Audio for ``"tiny"``). Given, it must
            match the checkpoint.
        dtype: ``"auto"`` (bf16 on CUDA for real models, float32 on CPU and for the tiny model),
            ``"bfloat16"``, ``"float32"`` or ``"float16"`` (needs ``allow_fp16`` for real models).
        attn_implementation: passed to transformers (``"sdpa"``, ``"eager"``, ``"flash_attention_2"``).
        gradient_checkpointing: enable it (non-reentrant) together with ``enable_input_require_grads``
            so that LoRA adapters behind checkpointed layers get gradients.
        quantization: ``None`` or ``"4bit"`` (QLoRA: NF4, double quantisation, bf16 compute, the
            family's audio tower / projector / lm_head unquantised). CUDA and bitsandbytes only.
        device_map: passed to ``from_pretrained``; under 4-bit it defaults to the current GPU.
        allow_fp16: force fp16 on a real model despite the NaN risk.
        revision: hub revision (branch, tag or commit).

    The tokenizer is set to left padding, so the answer position is the last one in every row.

    Raises:
        ConfigError: unknown dtype/quantization, fp16 without ``allow_fp16``, 4-bit without CUDA or
            bitsandbytes, a checkpoint of no registered family, a family/checkpoint mismatch, an
            unavailable model, or a processor that does not match the model.
    """
    import torch
    from transformers import AutoConfig

    from llmfair.speechllm.backbones import get_backbone, resolve_family

    name = os.fspath(name_or_path)
    if family is not None:
        get_backbone(family)  # an unknown family is named before anything loads
    source, local_only, is_tiny = resolve_model_source(name, revision=revision, family=family)
    torch_dtype = _resolve_dtype(dtype, is_tiny=is_tiny, allow_fp16=allow_fp16, name=name)
    kwargs: dict[str, Any] = {"local_files_only": local_only, "trust_remote_code": False}
    if revision is not None:
        kwargs["revision"] = revision
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the configuration of model {name!r}: {exc}") from None
    backbone = resolve_family(family, getattr(config, "model_type", None), where=f"model {name!r}")
    quant_config = _quantization_config(quantization, backbone.qlora_skip_modules)
    model_kwargs: dict[str, Any] = dict(kwargs, dtype=torch_dtype, attn_implementation=attn_implementation)
    if quant_config is not None:
        model_kwargs["quantization_config"] = quant_config
        model_kwargs["dtype"] = torch.bfloat16 if torch_dtype == torch.float32 else torch_dtype
        if device_map is None:
            device_map = {"": torch.cuda.current_device()}
    if device_map is not None:
        model_kwargs["device_map"] = device_map
    try:
        model = backbone.model_class().from_pretrained(source, **model_kwargs)
        processor = backbone.load_processor(source, **kwargs)
    except OSError as exc:
        raise ConfigError(f"cannot load model {name!r}: {exc}") from None
    backbone.check_processor(model, processor, where=name)
    processor.tokenizer.padding_side = "left"
    if gradient_checkpointing:
        model.config.use_cache = False
        checkpoint_kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # the name since transformers 5.x
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpoint_kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpoint_kwargs)
        model.enable_input_require_grads()
    logger.info("loaded %s (%s) from %s (dtype %s, quantization %s, attention %s)", name, backbone.title, source,
                model.dtype, quantization, attn_implementation)
    return model, processor
