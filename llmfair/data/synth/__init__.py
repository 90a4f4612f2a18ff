"""The built-in offline corpus: multilingual, gendered, emotional speech synthesised with eSpeak NG
and written in MELD-ST's layout (read it with :func:`llmfair.data.meld_st.read_meld_st`)."""
from llmfair.data.synth.corpus import (
    FORMANT_SHIFT_RANGE,
    FORMAT_VERSION,
    GENERATOR,
    MAX_CLIP_SECONDS,
    MELD_LIKE_PRIORS,
    PROSODY,
    RATER_BIAS_SPEAKERS,
    SENTIMENT,
    SESSION_CHANNEL_RANGES,
    SESSION_PANELS,
    VOICE_VARIANTS,
    CorpusPlan,
    Prosody,
    RecordingSession,
    SourceUtterance,
    Speaker,
    SynthConfig,
    CorpusState,
    corpus_state,
    generate_corpus,
    make_sessions,
    make_speakers,
    parse_emotion_priors,
    plan_corpus,
    read_manifest,
    record_in_session,
    simulate_ratings,
)
from llmfair.data.synth.espeak import (
    ESPEAK_SAMPLE_RATE,
    EspeakUnavailableError,
    espeak_available,
    espeak_paths,
    synthesize,
)
from llmfair.data.synth.sentences import (
    EMOTION_SENTENCES,
    NEUTRAL_CONTENT_SENTENCES,
    SentenceTriple,
    sentence_split,
    sentences_for,
)

__all__ = [
    "CorpusPlan", "CorpusState", "corpus_state", "EMOTION_SENTENCES", "ESPEAK_SAMPLE_RATE", "EspeakUnavailableError", "FORMANT_SHIFT_RANGE",
    "FORMAT_VERSION",
    "GENERATOR", "MAX_CLIP_SECONDS", "MELD_LIKE_PRIORS", "NEUTRAL_CONTENT_SENTENCES", "PROSODY", "Prosody",
    "RATER_BIAS_SPEAKERS", "RecordingSession", "SENTIMENT", "SESSION_CHANNEL_RANGES", "SESSION_PANELS",
    "SentenceTriple", "SourceUtterance", "Speaker", "SynthConfig", "VOICE_VARIANTS",
    "espeak_available", "espeak_paths", "generate_corpus", "make_sessions", "make_speakers",
    "parse_emotion_priors", "plan_corpus", "read_manifest", "record_in_session", "sentence_split",
    "sentences_for", "simulate_ratings", "synthesize",
]
