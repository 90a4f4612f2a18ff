"""The speech-LLM backbone interface: one :class:`SpeechBackbone` subclass per model family,
registered by name (``@register_backbone("qwen2_audio")``) in :data:`BACKBONES`.

A backbone says everything llmfair needs to know about a family, so that the same recipe,
objectives, trainer, benchmark and report run on each:

* **loading**: the checkpoint ``model_type`` values it accepts, the transformers class it loads,
  how its processor is loaded and checked against the model (audio token, mel bins, sampling rate,
  encoder window), and a tiny, randomly initialised build made offline for tests (``tiny_spec``,
  ``build_tiny``);
* **prompt format**: its :class:`~llmfair.speechllm.prompts.ChatFormat` (system prompt, audio
  placeholder, turn markers, and the answer prefix after which the verbalizer reads the answer);
* **LoRA**: target presets (``"llm"`` — the language model's attention and MLP projections,
  never the audio encoder — and ``"llm+audio"``), and the module peft trains fully when the
  projector is trained;
* **frozen-encoder cache boundary**: which parameters lie before the cached tensor
  (``encoder_parameters``), how one clip is encoded up to it (``encode_audio``) and how the rest of
  the model continues from it (``project_audio``, ``language_model``);
* **QLoRA**: the modules kept out of 4-bit quantisation (full names, as transformers 5.x matches
  them from the start of a module's name);
* **export**: the class a merged checkpoint loads with (``model_class_name``).

Family lookups: :func:`get_backbone` (by registered name), :func:`backbone_for_model_type` (from a
checkpoint's ``config.model_type``), :func:`backbone_of` (from a loaded model, peft-wrapped or not)
and :func:`resolve_family` (a recipe's ``model.family`` against the checkpoint's type). Each raises
a one-line :class:`~llmfair.errors.ConfigError` naming the supported families.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Mapping, Sequence

from llmfair._registry import Registry
from llmfair.errors import ConfigError
from llmfair.speechllm.prompts import QWEN2_AUDIO_CHAT, ChatFormat

SAMPLING_RATE = 16_000
"""The rate every supported audio encoder's front end expects (and llmfair feeds)."""

LORA_PRESET_NAMES = ("llm", "llm+audio")
"""The LoRA target presets every family defines (``LoraOptions.targets``)."""

LLM_TARGETS = r"model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
"""The attention and MLP projections of a Qwen2-style decoder at ``model.language_model`` (the
``llm`` preset of the Qwen families)."""
WHISPER_AUDIO_TARGETS = r"model\.audio_tower\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|fc1|fc2)"
"""The attention and MLP linears of a Whisper-style encoder at ``model.audio_tower``."""


class SpeechBackbone(ABC):
    """One speech-LLM family (see the module docstring). Subclasses set the class attributes and
    implement the abstract methods (a family missing one cannot be instantiated); the defaults fit models laid out as
    ``model.{audio_tower, <projector>, language_model}`` + ``lm_head`` (Qwen2-Audio, Qwen2.5-Omni).

    Attributes:
        name: the registered family name (set by :func:`register_backbone`).
        title: the family's human name (for messages and model cards).
        model_types: checkpoint ``config.model_type`` values of this family; the first is what its
            tiny build writes.
        checkpoints: released checkpoints known to work (examples for docs and messages).
        model_class_name: the transformers class that loads (and merges into) a checkpoint.
        chat: the prompt format.
        target_presets: LoRA preset name → regex over full module names (``re.fullmatch``).
        projector_module: peft ``modules_to_save`` entry for ``lora.train_projector`` (a name
            suffix that matches exactly the projector).
        qlora_skip_modules: modules kept in the compute dtype under 4-bit loading.
        tower_path, projector_path, language_model_path: dotted paths from the loaded model.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()
    checkpoints: ClassVar[tuple[str, ...]] = ()
    model_class_name: ClassVar[str] = ""
    chat: ClassVar[ChatFormat] = QWEN2_AUDIO_CHAT
    target_presets: ClassVar[dict[str, str]] = {}
    projector_module: ClassVar[str] = ""
    qlora_skip_modules: ClassVar[tuple[str, ...]] = ()
    tower_path: ClassVar[str] = "model.audio_tower"
    projector_path: ClassVar[str] = ""
    language_model_path: ClassVar[str] = "model.language_model"

    # ------------------------------------------------------------------ loading
    def model_class(self) -> type:
        """The transformers class of :attr:`model_class_name`."""
        import transformers

        return getattr(transformers, self.model_class_name)

    def load_processor(self, source: str, **kwargs: Any):
        """The processor of checkpoint ``source`` (``kwargs``: ``local_files_only``, ``revision``)."""
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(source, **kwargs)

    def save_processor(self, processor, directory: str | Path) -> None:
        """Write the processor's files beside a merged checkpoint."""
        processor.save_pretrained(str(directory))

    @abstractmethod
    def check_processor(self, model, processor, *, where: str = "") -> None:
        """Raise a one-line ConfigError where ``processor`` and ``model`` disagree (audio token,
        mel bins, sampling rate, encoder window)."""

    @abstractmethod
    def tiny_spec(self, *, seed: int, window_seconds: int) -> dict:
        """Everything that determines the tiny build's files (its hash names the cache directory)."""

    @abstractmethod
    def build_tiny(self, out_dir: Path, spec: Mapping[str, Any]) -> None:
        """Write a tiny random model of this family and its processor into ``out_dir``."""

    def window_seconds(self, preprocessor: Mapping[str, Any]) -> float | None:
        """The encoder window a checkpoint's ``preprocessor_config.json`` declares (None: unknown)."""
        if preprocessor.get("n_samples") and preprocessor.get("sampling_rate"):
            return float(preprocessor["n_samples"]) / float(preprocessor["sampling_rate"])
        if preprocessor.get("chunk_length"):
            return float(preprocessor["chunk_length"])
        return None

    def encoder_width(self, config: Mapping[str, Any]) -> int | None:
        """Width of the cached encoder output from a checkpoint's ``config.json`` (None: unknown)."""
        width = (config.get("audio_config") or {}).get("d_model")
        return int(width) if width else None

    def tiny_encoder_width(self, spec: Mapping[str, Any]) -> int:
        """The cached width of the tiny build of ``spec`` (its encoder's d_model; Voxtral's is 4x)."""
        return int(spec["encoder"]["d_model"])

    def audio_tokens_per_clip(self, seconds: float, window_seconds: float) -> int:
        """Audio tokens (= cached encoder rows) of a clip of ``seconds`` under a ``window_seconds``
        encoder window: 25 per second of the clip, up to the window, on the Qwen families (Voxtral
        pads every clip to the window)."""
        frames = int(min(seconds, window_seconds) * 100)  # 10 ms mel hop
        return max((((frames - 1) // 2 + 1) - 2) // 2 + 1, 0) if frames > 0 else 0

    # ------------------------------------------------------------------ structure
    def is_model(self, model) -> bool:
        """Whether ``model`` (the unwrapped transformers model) is of this family."""
        return getattr(getattr(model, "config", None), "model_type", None) in self.model_types

    @staticmethod
    def _get(model, path: str):
        for part in path.split("."):
            model = getattr(model, part)
        return model

    def audio_tower(self, model):
        """The audio encoder module."""
        return self._get(model, self.tower_path)

    def projector(self, model):
        """The module between the cached encoder output and the language model's width."""
        return self._get(model, self.projector_path)

    def language_model(self, model):
        """The decoder stack called with ``inputs_embeds`` (returns ``last_hidden_state``)."""
        return self._get(model, self.language_model_path)

    def encoder_parameters(self, model) -> Iterator[tuple[str, Any]]:
        """(name, parameter) of everything before the encoder-cache boundary: a cache is valid only
        while none of them trains."""
        return self.audio_tower(model).named_parameters()

    def encoder_trainable(self, model) -> bool:
        """Whether any parameter before the cache boundary has ``requires_grad`` (no cache then)."""
        return any(p.requires_grad for _, p in self.encoder_parameters(model))

    def encoder_state(self, model) -> dict[str, Any]:
        """The tensors that determine the cached encoder output (what the cache fingerprint hashes)."""
        return self.audio_tower(model).state_dict()

    # ------------------------------------------------------------------ forward pieces
    @abstractmethod
    def encode_audio(self, model, input_features, feature_attention_mask) -> list:
        """Per-clip encoder outputs up to the cache boundary, each (N_i, width), N_i = the clip's
        number of audio tokens."""

    def project_audio(self, model, features):
        """Cached encoder outputs (N, width) → audio embeddings (N, hidden) of the language model."""
        return self.projector(model)(features)

    def hidden_states(self, model, batch: Mapping[str, Any]):
        """Final-layer hidden states (B, T, H) of the full forward (audio encoder included), with
        rotary positions from the attention mask so that left padding changes nothing."""
        device = model.get_input_embeddings().weight.device
        attention_mask = batch["attention_mask"].to(device)
        outputs = model.model(
            input_ids=batch["input_ids"].to(device), input_features=batch["input_features"],
            attention_mask=attention_mask, feature_attention_mask=batch["feature_attention_mask"],
            position_ids=position_ids_from_mask(attention_mask), use_cache=False,
        )
        return outputs.last_hidden_state

    # ------------------------------------------------------------------ export
    def usage_lines(self, name_or_path: str) -> list[str]:
        """Python lines of a model card that load the base model and this run's adapter."""
        lines = [f"from transformers import {self.model_class_name}", "from peft import PeftModel"]
        if name_or_path == "tiny":
            lines += ["from llmfair.speechllm import load_speech_llm",
                      f"base, processor = load_speech_llm('tiny', family={self.name!r})  # the offline test model, "
                      "rebuilt locally"]
        else:
            lines += [f"base = {self.model_class_name}.from_pretrained({name_or_path!r})"]
        return lines + ["model = PeftModel.from_pretrained(base, 'THIS_DIRECTORY')"]

    def describe(self) -> str:
        """``name (model_type a, b)`` for messages."""
        return f"{self.name} (model_type {', '.join(self.model_types)})"


BACKBONES: Registry[type[SpeechBackbone]] = Registry("speech-LLM family")
"""Registered families: name → :class:`SpeechBackbone` subclass."""

_INSTANCES: dict[str, SpeechBackbone] = {}


def register_backbone(name: str) -> Callable[[type[SpeechBackbone]], type[SpeechBackbone]]:
    """Class decorator: register a family under ``name`` (duplicates rejected); sets ``name``."""

    def check(registered: str, cls: type[SpeechBackbone]) -> None:
        if sorted(cls.target_presets) != sorted(LORA_PRESET_NAMES):
            raise ConfigError(f"speech-LLM family {registered!r} must define the LoRA presets "
                              f"{list(LORA_PRESET_NAMES)}, got {sorted(cls.target_presets)}")
        taken = {t: n for n, c in BACKBONES.items() for t in c.model_types}
        clash = sorted(t for t in cls.model_types if t in taken)
        if clash:
            raise ConfigError(f"speech-LLM family {registered!r}: model_type(s) {clash} belong to {taken[clash[0]]!r}")
        cls.name = registered

    return BACKBONES.decorator(name, on_register=check)


def supported() -> str:
    """The registered families with their model types, for messages."""
    return "; ".join(get_backbone(n).describe() for n in BACKBONES.names())


def get_backbone(name: str) -> SpeechBackbone:
    """The backbone registered as ``name``.

    Raises:
        ConfigError: ``unknown speech-LLM family 'x'; registered: [...]``.
    """
    if name not in _INSTANCES:
        _INSTANCES[name] = BACKBONES.lookup(name)()
    return _INSTANCES[name]


def backbone_for_model_type(model_type: str | None, *, where: str = "the model") -> SpeechBackbone:
    """The family whose checkpoints have ``config.model_type == model_type``.

    Raises:
        ConfigError: no registered family has that type (names the supported families).
    """
    for name in BACKBONES.names():
        backbone = get_backbone(name)
        if model_type in backbone.model_types:
            return backbone
    raise ConfigError(f"{where} is a {model_type!r} model; llmfair's speech-LLM families are: {supported()}")


def resolve_family(family: str | None, model_type: str | None, *, where: str = "the model") -> SpeechBackbone:
    """The backbone of a checkpoint of ``model_type``, checked against a recipe's ``family``
    (None: inferred from the checkpoint).

    Raises:
        ConfigError: an unknown family, an unsupported checkpoint, or a family/checkpoint mismatch.
    """
    requested = get_backbone(family) if family is not None else None
    found = backbone_for_model_type(model_type, where=where)
    if requested is not None and requested.name != found.name:
        raise ConfigError(f"model.family is {requested.name!r} but {where} is a {found.name!r} checkpoint "
                          f"(model_type {model_type!r}); set model.family: {found.name} or leave it out")
    return found


def backbone_of(model) -> SpeechBackbone:
    """The family of a loaded model (plain or peft-wrapped).

    Raises:
        ConfigError: the model belongs to no registered family.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    model_type = getattr(getattr(base, "config", None), "model_type", None)
    return backbone_for_model_type(model_type, where=f"the model {type(base).__name__}")


def position_ids_from_mask(attention_mask):
    """Rotary positions that start at 0 on each row's first real token (left padding)."""
    position_ids = attention_mask.long().cumsum(-1) - 1
    return position_ids.masked_fill(attention_mask == 0, 1)


def check_common(processor, *, audio_token_id: int, num_mel_bins: int, where: str, needs: str,
                 token_name: str = "<|AUDIO|>") -> None:
    """Checks every family shares: the processor has a tokenizer and a feature extractor (``needs``
    names the processor class that has them), its audio token is the model's, its mel bins are the
    encoder's, and it runs at 16 kHz."""
    at = f" ({where})" if where else ""
    for attr in ("feature_extractor", "tokenizer"):
        if getattr(processor, attr, None) is None:
            raise ConfigError(f"processor{at} has no {attr}; {needs} is needed")
    token = getattr(processor, "audio_token", token_name)
    token_id = processor.tokenizer.convert_tokens_to_ids(token)
    if token_id != audio_token_id:
        raise ConfigError(f"processor{at}: {token} is token {token_id} but the model expects {audio_token_id}")
    fe = processor.feature_extractor
    if fe.feature_size != num_mel_bins:
        raise ConfigError(f"processor{at}: {fe.feature_size} mel bins but the audio encoder expects {num_mel_bins}")
    if fe.sampling_rate != SAMPLING_RATE:
        raise ConfigError(f"processor{at}: the feature extractor runs at {fe.sampling_rate} Hz but the audio encoder "
                          f"expects {SAMPLING_RATE} Hz")


def family_names() -> Sequence[str]:
    """The registered family names, sorted."""
    return BACKBONES.names()
