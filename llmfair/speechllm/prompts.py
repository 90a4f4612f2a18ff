"""Prompt templates: one instruction per (language, modality), rendered in the chat format of the
backbone's family (:class:`ChatFormat`; Qwen2-Audio-Instruct's by default).

The rendered text is the same for the tiny test model and for ``Qwen/Qwen2-Audio-7B-Instruct``::

    <|im_start|>system
    You are a helpful assistant.<|im_end|>
    <|im_start|>user
    Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>
    {instruction}{transcript part}<|im_end|>
    <|im_start|>assistant
    {answer}

This is what the processor's default chat template
(``Qwen2AudioProcessor.default_chat_template``, transformers 5.23.0) renders for a system turn, a
user turn holding one audio and one text item, and ``add_generation_prompt=True``. The answer (the
label word) follows the final newline, so its first token is tokenised with no leading space; the
verbalizer reads its logits at the last prompt position. Other families change only the pieces a
:class:`ChatFormat` names (system prompt, audio placeholder, turn markers); each family's module in
:mod:`llmfair.speechllm.backbones` says where its format comes from.

The single ``<|AUDIO|>`` placeholder is expanded by the processor to one token per encoder frame
(25 per second of audio; QWEN2AUDIO.md §1). ``{labels}`` in an instruction is replaced by the label
words joined by ", " so that an instruction-tuned model knows the answer vocabulary; the
``audio_text`` modality appends the transcript in the audio's language (``{text}``).

Templates are overridable from a mapping as it comes from YAML::

    system: You are a helpful assistant.
    instructions:
      eng: {audio: "...", audio_text: "..."}
    transcript:
      deu: '\\nTranskript: "{text}"'

Keys not given keep their defaults; an unknown language, modality or key raises ConfigError.
Fix one template per recipe and record it in the run manifest (``PromptTemplate.to_dict``):
Qwen-family models are sensitive to prompt wording and position (QWEN2AUDIO.md §13).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from llmfair.data.labels import LANGUAGES, MODALITIES
from llmfair.errors import ConfigError

SYSTEM_PROMPT = "You are a helpful assistant."
AUDIO_PLACEHOLDER = "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n"


@dataclass(frozen=True)
class ChatFormat:
    """How one family's chat template lays out a system turn, a user turn holding one audio clip and
    text, and the start of the assistant's answer::

        {bos}{system_start}{system}{turn_end}\\n{user_start}{audio_placeholder}{instruction}{user_end}{answer_prefix}

    (the ChatML layout of the Qwen families; Voxtral's Mistral layout has no system turn with audio:
    ``<s>[INST][BEGIN_AUDIO][AUDIO]{instruction}[/INST]``).

    Attributes:
        system_prompt: the family's default system prompt (``prompts.system`` overrides it).
        audio_placeholder: what stands for the clip; holds the processor's audio token once.
        system_start, user_start: the markers that open a system / user turn; ``system_start=None``:
            the format has no system turn (a non-empty ``prompts.system`` is refused).
        turn_end: the token that closes a turn (also appended after the answer for ``answer_loss: lm``).
        user_end: what closes the user turn (default: ``turn_end`` and a newline, as in ChatML).
        answer_prefix: what opens the assistant's turn; the answer's first token follows it.
        bos: what starts every prompt (Mistral's ``<s>``; nothing in ChatML).
    """

    system_prompt: str = SYSTEM_PROMPT
    audio_placeholder: str = AUDIO_PLACEHOLDER
    system_start: str | None = "<|im_start|>system\n"
    user_start: str = "<|im_start|>user\n"
    turn_end: str = "<|im_end|>"
    answer_prefix: str = "<|im_start|>assistant\n"
    user_end: str | None = None
    bos: str = ""

    def render(self, system: str, user: str) -> str:
        """The prompt up to and including ``answer_prefix``; ``user`` is the text after the audio."""
        head = self.bos if self.system_start is None else f"{self.bos}{self.system_start}{system}{self.turn_end}\n"
        user_end = f"{self.turn_end}\n" if self.user_end is None else self.user_end
        return f"{head}{self.user_start}{self.audio_placeholder}{user}{user_end}{self.answer_prefix}"


QWEN2_AUDIO_CHAT = ChatFormat()
"""Qwen2-Audio-Instruct's chat format (the default of every template)."""

DEFAULT_INSTRUCTIONS: dict[str, dict[str, str]] = {
    "eng": {
        "audio": "What emotion does the speaker express? Answer with one word from: {labels}.",
        "audio_text": "What emotion does the speaker express? Use the speech and its transcript. "
                      "Answer with one word from: {labels}.",
    },
    "deu": {
        "audio": "Welche Emotion drückt die sprechende Person aus? Antworte mit einem Wort aus: {labels}.",
        "audio_text": "Welche Emotion drückt die sprechende Person aus? Nutze die Sprache und das Transkript. "
                      "Antworte mit einem Wort aus: {labels}.",
    },
    "jpn": {
        "audio": "話者はどの感情を表していますか。次の中から一語で答えてください：{labels}。",
        "audio_text": "話者はどの感情を表していますか。音声と書き起こしを使ってください。"
                      "次の中から一語で答えてください：{labels}。",
    },
}
"""Instruction per language and modality; ``{labels}`` is filled with the label words."""

DEFAULT_TRANSCRIPT: dict[str, str] = {
    "eng": '\nTranscript: "{text}"',
    "deu": '\nTranskript: "{text}"',
    "jpn": "\n書き起こし：「{text}」",
}
"""Transcript part per language, appended to the instruction for modality ``audio_text``."""

_TEMPLATE_KEYS = ("system", "instructions", "transcript")


def _copy_defaults() -> dict[str, dict[str, str]]:
    return {lang: dict(per) for lang, per in DEFAULT_INSTRUCTIONS.items()}


@dataclass
class PromptTemplate:
    """Instructions per (language, modality) plus the system prompt and transcript format.

    Attributes:
        instructions: ``{language: {modality: instruction}}``; ``{labels}`` is optional.
        transcript: ``{language: format}`` with a ``{text}`` field, for modality ``audio_text``.
        system: the system prompt (default: the chat format's, e.g. Qwen2-Audio-Instruct's).
        chat: the family's chat format (:data:`QWEN2_AUDIO_CHAT` by default).
    """

    instructions: dict[str, dict[str, str]] = field(default_factory=_copy_defaults)
    transcript: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TRANSCRIPT))
    system: str | None = None
    chat: ChatFormat = QWEN2_AUDIO_CHAT

    def __post_init__(self) -> None:
        if self.system is None:
            self.system = self.chat.system_prompt
        if self.system and self.chat.system_start is None:
            raise ConfigError(f"prompts.system is set ({self.system!r}) but this model family's chat format has no "
                              "system turn with audio (Voxtral: mistral-common refuses system messages when audio is "
                              "present); leave prompts.system out or empty")
        for lang, per in self.instructions.items():
            _check_language(lang, "instructions")
            if not isinstance(per, Mapping):
                raise ConfigError(f"prompt instructions for language {lang!r} must map modality -> text, got {per!r}")
            for modality, text in per.items():
                if modality not in MODALITIES:
                    raise ConfigError(
                        f"prompt instructions: unknown modality {modality!r} for language {lang!r}; "
                        f"expected one of {list(MODALITIES)}")
                if not isinstance(text, str):
                    raise ConfigError(f"prompt instruction ({lang!r}, {modality!r}) must be a string, got {text!r}")
        for lang, fmt in self.transcript.items():
            _check_language(lang, "transcript")
            if not isinstance(fmt, str) or "{text}" not in fmt:
                raise ConfigError(f"prompt transcript format for language {lang!r} must contain '{{text}}', got {fmt!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None, *, source: str = "prompts",
                  chat: ChatFormat = QWEN2_AUDIO_CHAT) -> "PromptTemplate":
        """Defaults overridden by ``values`` (as read from YAML); unknown keys raise ConfigError.
        ``chat`` is the backbone family's format (its system prompt is the default ``system``)."""
        values = dict(values or {})
        unknown = sorted(k for k in values if k not in _TEMPLATE_KEYS)
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {unknown}; known: {list(_TEMPLATE_KEYS)}")
        instructions = _copy_defaults()
        given = values.get("instructions") or {}
        if not isinstance(given, Mapping):
            raise ConfigError(f"{source}.instructions must map language -> modality -> text, got {given!r}")
        for lang, per in given.items():
            _check_language(lang, f"{source}.instructions")
            if not isinstance(per, Mapping):
                raise ConfigError(f"{source}.instructions.{lang} must map modality -> text, got {per!r}")
            instructions.setdefault(lang, {}).update(per)
        transcript = dict(DEFAULT_TRANSCRIPT)
        given_t = values.get("transcript") or {}
        if not isinstance(given_t, Mapping):
            raise ConfigError(f"{source}.transcript must map language -> format, got {given_t!r}")
        transcript.update(given_t)
        return cls(instructions=instructions, transcript=transcript, system=values.get("system", chat.system_prompt),
                   chat=chat)

    def to_dict(self) -> dict[str, Any]:
        """The full template (for run manifests)."""
        return {"system": self.system, "instructions": {k: dict(v) for k, v in self.instructions.items()},
                "transcript": dict(self.transcript)}

    def instruction(self, language: str, modality: str) -> str:
        """The raw instruction for (language, modality); ConfigError names a missing key."""
        _check_language(language, "prompt")
        if modality not in MODALITIES:
            raise ConfigError(f"prompt: unknown modality {modality!r}; expected one of {list(MODALITIES)}")
        try:
            return self.instructions[language][modality]
        except KeyError:
            raise ConfigError(f"prompt template has no instruction for language {language!r}, "
                              f"modality {modality!r}") from None

    def render(self, language: str, modality: str, text: str = "", labels: Sequence[str] = ()) -> str:
        """The full prompt up to and including the chat format's answer prefix
        (``<|im_start|>assistant\\n`` for the Qwen families).

        ``text`` (the transcript) is used only for modality ``audio_text``; ``labels`` fills
        ``{labels}`` in the instruction.
        """
        instruction = self.instruction(language, modality).replace("{labels}", ", ".join(labels))
        transcript = ""
        if modality == "audio_text":
            if language not in self.transcript:
                raise ConfigError(f"prompt template has no transcript format for language {language!r}")
            transcript = self.transcript[language].replace("{text}", text)
        return self.chat.render(self.system, f"{instruction}{transcript}")

    def words(self) -> list[str]:
        """Every instruction, transcript format and the system prompt (for building a tokenizer)."""
        out = [self.system, self.chat.audio_placeholder]
        for per in self.instructions.values():
            out.extend(per.values())
        out.extend(self.transcript.values())
        return out


def _check_language(language: str, where: str) -> None:
    if language not in LANGUAGES:
        raise ConfigError(f"{where}: unknown language {language!r}; expected one of {list(LANGUAGES)}")
