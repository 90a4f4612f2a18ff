"""The built-in corpus: multilingual, gendered, emotional speech written in MELD-ST's layout.

No real emotional speech can be downloaded where llmfair runs its demos and tests, so this module
synthesises a small corpus offline with eSpeak NG and writes it exactly as the MELD-ST reader
(:func:`llmfair.data.meld_st.read_meld_st`) expects it::

    OUT/corpus.json          generator, format_version, seed, config, counts, sha256 of every file
    OUT/speaker_gender.csv   speaker,gender (every synthetic speaker)
    OUT/ratings.csv          pair,id,rater,rater_gender,emotion (every rater annotation)
    OUT/recording_sessions.csv   pair,id,session (only with ``recording_sessions``)
    OUT/ENG_DEU/deu_{train,valid,test}.csv   OUT/ENG_JPN/jpn_{train,valid,test}.csv
    OUT/<pair>/<LANGUAGE>/<split>/<split>_<id>.wav   (split train/dev/test; 16 kHz mono PCM_16)

How the corpus is built (every random choice comes from its own seeded stream, so changing the
rater knobs — ``rater_*`` and ``raters_*`` — never changes the audio, and a train-imbalanced corpus
is a subset of the balanced one with the same seed, ids and audio bytes):

1. **Speakers** (:func:`make_speakers`): synthetic characters with a unique name, a gender, an
   eSpeak voice variant (15 per gender, :data:`VOICE_VARIANTS`: f1–f5 and named voices such as
   Andrea, anika, shelby; m1–m4, m6–m8 and Andy, boris, travis, ...), a formant (vocal-tract length)
   shift α, a pitch offset (moving the variant to its gender's :data:`TARGET_F0`, 200 or 94 Hz,
   ±7 %) and a rate scale. A character speaks all three languages with the
   same voice, like a dubbed role. Train, dev and test speakers are disjoint and so are their
   voice variants; test gets a variant per speaker first (default: 8 test speakers of each gender
   on 8 variants, 8 train speakers on 5, 4 dev speakers on 2). α is drawn per gender from
   :data:`FORMANT_SHIFT_RANGE` (women 1.00–1.15, men 0.87–1.00), stratified so that speakers
   sharing a variant get clearly different α. To a speaker encoder (resemblyzer) the default test
   speakers are distinct voices: leave-one-out nearest-neighbour identification on clips with
   other words is 1.0 (0.14 when every test speaker of a gender is one unshifted variant).
2. **Source utterances** (:func:`plan_corpus`): ``shared_fraction`` of each pair's
   ``utterances_per_pair`` rows are English utterances that appear in *both* pairs (as in the
   real corpus); the rest belong to one pair. Each group is split train/dev/test, emotions are
   allocated per split by the priors (largest remainder), genders alternate within each emotion
   (balanced), speakers are used round-robin, and the sentence is drawn from the emotion's pool
   or, with probability ``neutral_text_fraction``, from the neutral-content pool — in both cases
   only from the sentences of the utterance's split (:mod:`llmfair.data.synth.sentences`).
3. **Prosody** (:data:`PROSODY`): each emotion has a profile of rate, pitch, pitch range, volume
   and word gap, scaled towards neutral by ``prosody_strength`` and jittered per utterance by
   ``prosody_jitter``. Pitch is an offset on the speaker's own voice, so the gender difference in
   F0 stays — which is why a model trained on one gender transfers badly to the other
   (``ENVIRONMENT.md``: 0.96 on men vs 0.45 on women when trained on men only).
4. **Train imbalance** (optional): per pair, the planned train rows are subsampled to a 1:r
   gender ratio inside every emotion with :func:`llmfair.data.imbalance.subsample_indices` and the
   IDI majority genders (anger, disgust, neutral → male; fear, joy, sadness, surprise → female).
   The ratio is exact in each pair's CSV (hence for German and Japanese); English, which the
   reader de-duplicates over both pairs, follows it approximately. Dev and test are untouched.
5. **Recording sessions** (optional, ``recording_sessions`` = S ≥ 2; :func:`make_sessions`): as in
   IEMOCAP, where each session was recorded on its own and labelled by its own evaluators, every
   source utterance is recorded in one of S sessions — assigned in turn inside each (split,
   emotion, speaker gender), so every session holds the same mix — and each session has

   - a **channel** the audio reveals (:func:`record_in_session`, applied to every language's clip
     of the utterance after the formant shift): a room (direct sound plus an exponentially decaying
     noise tail, RT60 0.05–0.5 s), microphone/line band limits (4th-order Butterworth band-pass,
     high-pass 60–300 Hz, low-pass 3.4–7.6 kHz) and a white noise floor (−66 to −42 dBFS RMS),
     each parameter spread over the sessions (:data:`SESSION_CHANNEL_RANGES`); the log-mel
     statistics of the ``acoustic`` extractor tell the sessions apart;
   - a **rater panel of one gender**: even sessions are rated by women, odd ones by men
     (:data:`SESSION_PANELS`).

   Rater gender is then carried by the audio, and the male raters' bias below reaches the labels
   of exactly the clips recorded in the men's sessions: a model trained on per-rater labels learns
   the channel as a cue for the biased label and predicts differently for clips that men rated —
   a rater-side disparity (ΔSP_rat) that the rater side of two-sided balancing
   (:mod:`llmfair.objectives.two_sided`) can act on. Without sessions (the default) raters are
   drawn from the whole pool, and nothing in the audio tells who rated a clip.
6. **Ratings** (:func:`simulate_ratings`): each source utterance is rated by
   ``raters_per_utterance`` raters from a pool of ``raters_per_gender`` women and men (with
   sessions: from its session's panel). A rater reports the true emotion with probability
   ``rater_accuracy``; with probability ``rater_bias`` a male rater hears a woman's anger as
   sadness and her disgust as fear (any speaker's with ``rater_bias_speakers=all``).
7. **Synthesis**: only what is kept is synthesised, once per (utterance, language) — a shared
   English utterance has the same bytes in both pairs. eSpeak speaks at 22,050 Hz with settings
   compensated for the speaker's α (:func:`espeak_settings`); the samples are then resampled to
   16 kHz with :func:`llmfair.data.audio.resample` *as if* they were at 22,050·α Hz, which scales
   the formants by α while F0 and duration stay put (within ~3 % and ~1 %). English times in the
   CSVs place each utterance in its own 10-second slot of a (season, episode), with the clip's
   real duration; a dubbed line starts where its English source starts. With sessions, each clip
   then goes through its session's channel (:func:`record_in_session`; same length, the noise drawn
   per utterance and language).

Default size (``SynthConfig()``): 640 rows per pair (336 train, 64 dev, 240 test), 832 source
utterances, 2,112 clips, 2,560 WAV files (about 170 MB), generated in about 15 s on 2 CPU cores.
The reader sees 119–121 test utterances per gender in German and in Japanese and 154–158 in the
de-duplicated English, each as an ``audio`` and an ``audio_text`` example.

Everything is written into a temporary sibling directory and moved into place when complete.
"""
from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np

from llmfair._atomic import atomic_directory, check_replaceable
from llmfair.data.audio import TARGET_SAMPLE_RATE, resample
from llmfair.data.imbalance import IDI_MAJORITY_GENDER, subsample_indices
from llmfair.data.labels import MELD
from llmfair.data.meld_st import PAIRS, SPLITS, csv_columns
from llmfair.data.synth import espeak as _espeak
from llmfair.data.synth.sentences import (
    EMOTION_SENTENCES,
    NEUTRAL_CONTENT_SENTENCES,
    SentenceTriple,
    sentences_for,
)
from llmfair.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

GENERATOR = "llmfair.synth"
FORMAT_VERSION = 2
"""2: formant-shifted speakers and new voice variants (the audio of every config changed)."""
_KNOBS_ADDED_IN_FORMAT_2 = ("rater_bias_speakers", "recording_sessions")
"""Knobs added without a format change (at their defaults the files are those of format 2): a
manifest without them describes the corpus with them at their defaults."""
MANIFEST_FILE = "corpus.json"
SPEAKER_GENDER_FILE = "speaker_gender.csv"
RATINGS_FILE = "ratings.csv"
SESSIONS_FILE = "recording_sessions.csv"
"""pair,id,session of every row (written only with ``recording_sessions``; the sessions' channels
and panels are in ``corpus.json``)."""
MAX_CLIP_SECONDS = 8.0
"""Clips longer than this are re-synthesised faster (rate scaled up) until they fit."""

ESPEAK_VOICES: dict[str, str] = {"eng": "en", "deu": "de", "jpn": "ja"}
"""llmfair language code → eSpeak NG voice."""
VOICE_VARIANTS: dict[str, tuple[str, ...]] = {
    # in split order for the default speaker counts: 5 train | 2 dev | 8 test variants per gender.
    # Median F0 of neutral English speech at eSpeak pitch 50 (librosa YIN):
    # f1 184, f2 209, f3 226, Annie 267, aunty 172 | f4 188, linda 231 |
    # f5 208, Alicia 265, Andrea 245, anika 285, belinda 231, grandma 211, shelby 187, steph 187 Hz
    "female": ("f1", "f2", "f3", "Annie", "aunty", "f4", "linda",
               "f5", "Alicia", "Andrea", "anika", "belinda", "grandma", "shelby", "steph"),
    # m1 99, m2 102, m3 107, m4 101, m7 113 | m6 103, Lee 97 |
    # m8 90, Andy 100, antonio 116, boris 108, ian 87, norbert 108, sandro 101, travis 111 Hz
    "male": ("m1", "m2", "m3", "m4", "m7", "m6", "Lee",
             "m8", "Andy", "antonio", "boris", "ian", "norbert", "sandro", "travis"),
}
"""Gender → eSpeak NG voice variants (files in ``espeak-ng-data/voices/!v``). Chosen among the
~100 shipped variants for a clearly female or male F0 in all three languages and for distinct
timbres: f1–f5 and aunty (and m1–m7) sound much alike to a speaker encoder, the named variants
much less, so the test split gets the named ones. Robotic, whispering, child-like and
ungendered-sounding variants are left out, and so are near-copies (steph2/3 of steph, Gene2 ...)."""

FORMANT_SHIFT_RANGE: dict[str, tuple[float, float]] = {"female": (1.0, 1.15), "male": (0.87, 1.0)}
"""Gender → bounds of a speaker's formant (vocal-tract length) factor α. The clip is eSpeak's
output played α times faster (resampled as if it were at 22,050·α Hz), which scales every formant
by α; pitch, pitch range, rate and word gap are compensated in the eSpeak settings
(:func:`espeak_settings`) so that F0 and duration stay where the speaker's settings put them
(measured: within about 3 % and 1 %). Each range spans 15 % (adult vocal-tract length varies by
about ±10 % within a gender); women's shifts go up and men's down, as adult women's formants lie
15–20 % above men's. With one symmetric range (0.90–1.11) for both, k-means (K=2) on speaker
embeddings of the training clips no longer separated gender (purity 0.67 instead of 1.0 on the
40-row corpus of ``tests/test_groups.py``)."""
MAX_SPEAKERS_PER_VARIANT = 4
"""At most this many speakers of one split and gender share a voice variant; they get formant
factors from disjoint slots of :data:`FORMANT_SHIFT_RANGE` (see :func:`make_speakers`)."""
VARIANT_F0: dict[str, float] = {
    "f1": 173, "f2": 187, "f3": 200, "Annie": 225, "aunty": 176, "f4": 173, "linda": 223, "f5": 198,
    "Alicia": 239, "Andrea": 238, "anika": 261, "belinda": 224, "grandma": 190, "shelby": 167, "steph": 181,
    "m1": 90, "m2": 98, "m3": 100, "m4": 89, "m7": 101, "m6": 97, "Lee": 93, "m8": 82, "Andy": 93,
    "antonio": 106, "boris": 98, "ian": 80, "norbert": 98, "sandro": 95, "travis": 98,
}
"""Median F0 (Hz) of each variant at eSpeak pitch 50, neutral settings (rate 165, range 40):
:func:`llmfair.ssl.acoustic.pitch_track` over 8 neutral sentences, geometric mean of English,
German and Japanese (which differ by ≤ 3 %). The variants' own F0s spread 1.56× among women
(167–261 Hz) and 1.34× among men (80–106 Hz)."""
TARGET_F0: dict[str, float] = {"female": 200.0, "male": 94.0}
"""Gender → the F0 (Hz) every speaker's variant is moved to before the personal offset: the
variant's pitch offset is 50·log2(target / :data:`VARIANT_F0`) eSpeak units. Without it the
female voices would spread wider in F0 than the male ones, and since emotion is carried by pitch
*offsets*, an absolute-F0 cue would be less reliable for women by construction — a gender gap made
by the choice of voices rather than by what the corpus is meant to study. The targets are about
the pools' geometric means."""
SPEAKER_PITCH_RANGE = 5.0
"""A speaker's personal pitch offset is U(±this) eSpeak pitch units on top of the variant's
(one unit is 2^(1/50), about 1.4 % of F0: ±7 %)."""
VIRTUAL_RATE_STEP = 50
"""The formant shift's virtual sample rate 22,050·α is rounded to a multiple of this (Hz), which
keeps the polyphase resampling to 16 kHz cheap; α moves in steps of 0.23 %."""
SENTIMENT: dict[str, str] = {
    "neutral": "neutral", "joy": "positive", "surprise": "positive",
    "sadness": "negative", "anger": "negative", "fear": "negative", "disgust": "negative",
}
"""MELD's sentiment of each emotion."""

MELD_LIKE_PRIORS: dict[str, float] = {
    "neutral": 0.30, "joy": 0.16, "surprise": 0.12, "anger": 0.12, "sadness": 0.10, "fear": 0.10, "disgust": 0.10,
}
"""``emotion_priors="meld"``: MELD's skew (neutral-heavy) made milder so every class has data."""

SPLIT_ORDER: tuple[str, ...] = ("train", "dev", "test")
MAX_SPEAKERS_PER_SPLIT_GENDER = 20
"""The most speakers of one gender in one split: the 15 variants per gender, shared out over the
three splits, give each split 5 variants when all three have 20 speakers, so no more than
:data:`MAX_SPEAKERS_PER_VARIANT` speakers ever share a variant."""

_FIRST_NAMES: dict[str, tuple[str, ...]] = {
    "female": ("Anna", "Greta", "Hana", "Clara", "Emma", "Lena", "Mia", "Sofia", "Laura", "Marie", "Yuki",
               "Keiko", "Nina", "Eva", "Ida", "Rosa", "Aiko", "Frieda", "Naomi", "Ellen"),
    "male": ("Lukas", "Jonas", "Felix", "Kenji", "Hiro", "Tobias", "Daniel", "Max", "Simon", "Moritz", "Takeshi",
             "Oliver", "Jan", "Emil", "Theo", "Akira", "Noah", "Henrik", "Ken", "Leon"),
}
_LAST_NAMES: tuple[str, ...] = (
    "Weber", "Fischer", "Tanaka", "Sato", "Becker", "Wagner", "Suzuki", "Hoffmann", "Schulz", "Ito",
    "Klein", "Wolf", "Kato", "Neumann", "Braun", "Yamada", "Koch", "Richter", "Mori", "Lange",
)

# RNG streams: one per kind of decision, so the knobs of one stage never perturb another
_STREAM_SPEAKERS, _STREAM_PLAN, _STREAM_IMBALANCE, _STREAM_RATINGS, _STREAM_ESPEAK = 1, 2, 3, 4, 5
_STREAM_SESSIONS, _STREAM_CHANNEL = 6, 7

RATER_BIAS_SPEAKERS: tuple[str, ...] = ("female", "all")
"""``rater_bias_speakers``: whose anger and disgust the male raters mishear."""
MAX_SESSIONS = 16
"""The most ``recording_sessions``."""
SESSION_PANELS: tuple[str, ...] = ("female", "male")
"""Session k is rated by the raters of gender ``SESSION_PANELS[k % 2]``."""
SESSION_CHANNEL_RANGES: dict[str, tuple[float, float]] = {
    "highpass_hz": (60.0, 300.0),
    "lowpass_hz": (3400.0, 7600.0),
    "reverb_seconds": (0.05, 0.5),
    "noise_dbfs": (-66.0, -42.0),
}
"""Bounds of each recording session's channel (:class:`RecordingSession`): microphone / line band
limits (a 4th-order Butterworth band-pass, from telephone-like to nearly the full 8 kHz), the room's
RT60 and the noise floor (RMS, dBFS). Frequencies and RT60 are spread on a log scale, the noise
level on a linear one (see :func:`make_sessions`)."""
REVERB_LEVEL = 0.5
"""Energy of the room's reverberant tail relative to the direct sound (−3 dB)."""


# ------------------------------------------------------------------------------------ prosody
@dataclass(frozen=True)
class Prosody:
    """eSpeak NG settings: rate (words/min), pitch offset (eSpeak pitch units added to 50 and the
    speaker's offset), pitch range (0–100), volume (0–200) and word gap (units of 10 ms)."""

    rate: float
    pitch: float
    range_: float
    volume: float
    word_gap: float


PROSODY: dict[str, Prosody] = {
    # mid everything
    "neutral": Prosody(rate=165, pitch=0, range_=40, volume=100, word_gap=0),
    # high, wide, fairly fast, fairly loud
    "joy": Prosody(rate=200, pitch=14, range_=80, volume=125, word_gap=0),
    # slow, low, flat, quiet, with pauses between words
    "sadness": Prosody(rate=115, pitch=-14, range_=10, volume=60, word_gap=3),
    # loud, fast, wide range
    "anger": Prosody(rate=225, pitch=4, range_=95, volume=185, word_gap=0),
    # very high, very wide
    "surprise": Prosody(rate=185, pitch=28, range_=100, volume=135, word_gap=0),
    # fast, high, narrow
    "fear": Prosody(rate=245, pitch=20, range_=18, volume=85, word_gap=0),
    # slow, low, moderately loud, short pauses
    "disgust": Prosody(rate=125, pitch=-10, range_=60, volume=145, word_gap=2),
}
"""Emotion → prosody profile (emotion carried by prosody; see ``ENVIRONMENT.md`` for what each
eSpeak parameter does to the audio)."""

_JITTER = Prosody(rate=0.06, pitch=3.0, range_=6.0, volume=0.08, word_gap=1.0)
"""Per-utterance jitter at ``prosody_jitter=1``: rate and volume ×U(1±x); pitch, range and word gap
+U(±x) (word gap only where the profile has one)."""


# ------------------------------------------------------------------------------------ config
def parse_emotion_priors(spec: str) -> dict[str, float]:
    """Parse ``emotion_priors``: ``"uniform"``, ``"meld"`` or ``"neutral=0.3,joy=0.2,..."``.

    Returns normalised probabilities for MELD's 7 emotions in MELD order (emotions not named in an
    explicit list get 0).

    Raises:
        ConfigError: naming ``emotion_priors`` and the bad part (unknown or repeated emotion,
            non-numeric or negative weight, all weights zero).
    """
    if not isinstance(spec, str):
        raise ConfigError(f"emotion_priors must be a string, got {spec!r}")
    key = spec.strip().lower()
    if key == "uniform":
        weights = {c: 1.0 for c in MELD.classes}
    elif key == "meld":
        weights = dict(MELD_LIKE_PRIORS)
    else:
        weights = {c: 0.0 for c in MELD.classes}
        seen: set[str] = set()
        for part in key.split(","):
            name, sep, value = part.partition("=")
            name = name.strip()
            if not sep or not name:
                raise ConfigError(
                    f"emotion_priors: cannot parse {part.strip()!r} in {spec!r}; use 'uniform', 'meld' or "
                    "'neutral=0.3,joy=0.2,...'"
                )
            if name not in weights:
                raise ConfigError(f"emotion_priors: unknown emotion {name!r}; MELD emotions are {list(MELD.classes)}")
            if name in seen:
                raise ConfigError(f"emotion_priors: emotion {name!r} is given twice in {spec!r}")
            seen.add(name)
            try:
                weight = float(value)
            except ValueError:
                raise ConfigError(f"emotion_priors: weight {value.strip()!r} of {name!r} is not a number") from None
            if not math.isfinite(weight) or weight < 0:
                raise ConfigError(f"emotion_priors: weight of {name!r} must be a finite number >= 0, got {weight}")
            weights[name] = weight
    total = sum(weights.values())
    if total <= 0:
        raise ConfigError(f"emotion_priors: all weights are zero in {spec!r}")
    return {c: weights[c] / total for c in MELD.classes}


@dataclass
class SynthConfig:
    """Every knob of the built-in corpus. The command line (``llmfair data synth --help``) and YAML
    configs are built from these fields; :meth:`validate` runs on construction."""

    seed: int = field(default=0, metadata={"help": "seed of every random choice; same seed and config → same bytes"})
    utterances_per_pair: int = field(
        default=640, metadata={"help": "rows per language pair (ENG_DEU, ENG_JPN) before train imbalance; the "
                                       "default 640 gives 336 train, 64 dev and 240 test rows per pair"})
    shared_fraction: float = field(
        default=0.7, metadata={"help": "fraction of each pair's English utterances that appear in both pairs"})
    dev_fraction: float = field(default=0.1, metadata={"help": "fraction of rows in the dev split (CSV 'valid')"})
    test_fraction: float = field(
        default=0.375, metadata={"help": "fraction of rows in the test split; the default is large so that each "
                                         "language x gender has >= 110 test utterances (German and Japanese "
                                         "~120, de-duplicated English ~156) for gender gaps with narrow intervals"})
    train_speakers_per_gender: int = field(default=8, metadata={"help": "train speakers of each gender"})
    dev_speakers_per_gender: int = field(default=4, metadata={"help": "dev speakers of each gender (disjoint)"})
    test_speakers_per_gender: int = field(
        default=8, metadata={"help": "test speakers of each gender (disjoint from train and dev)"})
    emotion_priors: str = field(
        default="meld", metadata={"help": "uniform, meld (milder MELD skew) or 'neutral=0.3,joy=0.2,...'"})
    neutral_text_fraction: float = field(
        default=0.5, metadata={"help": "probability that an utterance's words are emotionally neutral content"})
    prosody_strength: float = field(
        default=1.0, metadata={"help": "scales each emotion's prosody away from neutral (0 = no emotion in audio)"})
    prosody_jitter: float = field(default=1.0, metadata={"help": "scales the per-utterance prosody jitter"})
    train_imbalance_ratio: Optional[float] = field(
        default=None, metadata={"help": "r of a 1:r gender ratio inside each emotion of train (None = balanced)"})
    raters_per_gender: int = field(default=3, metadata={"help": "female and male raters in the rater pool"})
    raters_per_utterance: int = field(default=3, metadata={"help": "annotations per utterance"})
    rater_accuracy: float = field(
        default=0.85, metadata={"help": "probability that a rater reports the true emotion (else a random other)"})
    rater_bias: float = field(
        default=0.0, metadata={"help": "extra probability that a male rater hears a woman's anger as sadness and "
                                       "her disgust as fear (every speaker's with rater_bias_speakers=all)"})
    rater_bias_speakers: str = field(
        default="female", metadata={"help": "whose anger and disgust male raters mishear: female (women's) or all "
                                             "(every speaker's)"})
    recording_sessions: int = field(
        default=0, metadata={"help": "recording sessions, each with its own channel (band limits, room echo, noise "
                                     "floor) that the audio reveals and its own one-gender rater panel (even "
                                     "sessions rated by women, odd by men); 0 = one clean channel and raters drawn "
                                     "from the whole pool"})

    def __post_init__(self) -> None:
        self.validate()
        # one spelling per value, so that 5 and 5.0 give the same corpus.json bytes
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("float", "Optional[float]") and value is not None:
                setattr(self, f.name, float(value))
            elif f.type == "int":
                setattr(self, f.name, int(value))

    def validate(self) -> None:
        """Check every knob.

        Raises:
            ConfigError: naming the field, its value and what is allowed.
        """
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "train_imbalance_ratio" and value is None:
                continue
            if f.name in ("emotion_priors", "rater_bias_speakers"):
                if not isinstance(value, str):
                    raise ConfigError(f"{f.name} must be a string, got {value!r}")
                continue
            if f.type in ("int", int) or f.name in ("seed",):
                if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                    raise ConfigError(f"{f.name} must be an integer, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise ConfigError(f"{f.name} must be a number, got {value!r}")
            elif not math.isfinite(float(value)):
                raise ConfigError(f"{f.name} must be finite, got {value!r}")

        def check(name: str, ok: bool, allowed: str) -> None:
            if not ok:
                raise ConfigError(f"{name}={getattr(self, name)!r} is invalid: {allowed}")

        check("seed", self.seed >= 0, "must be >= 0")
        check("utterances_per_pair", self.utterances_per_pair >= 1, "must be >= 1")
        check("utterances_per_pair", self.utterances_per_pair <= 100_000, "must be <= 100000")
        check("shared_fraction", 0.0 <= self.shared_fraction <= 1.0, "must be in [0, 1]")
        check("dev_fraction", 0.0 <= self.dev_fraction < 1.0, "must be in [0, 1)")
        check("test_fraction", 0.0 <= self.test_fraction < 1.0, "must be in [0, 1)")
        check("test_fraction", self.dev_fraction + self.test_fraction < 1.0,
              f"dev_fraction + test_fraction must be < 1 (train needs rows); dev_fraction is {self.dev_fraction}")
        for split in SPLIT_ORDER:
            name = f"{split}_speakers_per_gender"
            check(name, getattr(self, name) >= 1, "must be >= 1 (each split needs a speaker of each gender)")
            check(name, getattr(self, name) <= MAX_SPEAKERS_PER_SPLIT_GENDER,
                  f"must be <= {MAX_SPEAKERS_PER_SPLIT_GENDER} (the {len(VOICE_VARIANTS['female'])} voice variants "
                  f"of each gender are shared out over the splits, and at most {MAX_SPEAKERS_PER_VARIANT} "
                  "speakers of a split may share one: they are told apart by formant shifts, which run out)")
        parse_emotion_priors(self.emotion_priors)
        check("neutral_text_fraction", 0.0 <= self.neutral_text_fraction <= 1.0, "must be in [0, 1]")
        check("prosody_strength", 0.0 <= self.prosody_strength <= 2.0, "must be in [0, 2]")
        check("prosody_jitter", 0.0 <= self.prosody_jitter <= 3.0, "must be in [0, 3]")
        if self.train_imbalance_ratio is not None:
            check("train_imbalance_ratio", self.train_imbalance_ratio >= 1.0,
                  "must be >= 1 (it is r of a 1:r gender ratio) or None")
        check("raters_per_gender", self.raters_per_gender >= 0, "must be >= 0")
        check("raters_per_utterance", self.raters_per_utterance >= 0, "must be >= 0")
        check("raters_per_utterance", self.raters_per_utterance <= 2 * self.raters_per_gender,
              f"must be <= the rater pool (2 × raters_per_gender = {2 * self.raters_per_gender})")
        check("rater_accuracy", 0.0 <= self.rater_accuracy <= 1.0, "must be in [0, 1]")
        check("rater_bias", 0.0 <= self.rater_bias <= 1.0, "must be in [0, 1]")
        check("rater_bias_speakers", self.rater_bias_speakers in RATER_BIAS_SPEAKERS,
              f"must be one of {RATER_BIAS_SPEAKERS}")
        check("recording_sessions", self.recording_sessions == 0 or 2 <= self.recording_sessions <= MAX_SESSIONS,
              f"must be 0 (no sessions) or 2..{MAX_SESSIONS} (one session cannot have both rater panels)")
        if self.recording_sessions:
            check("raters_per_utterance", self.raters_per_utterance <= self.raters_per_gender,
                  f"must be <= raters_per_gender ({self.raters_per_gender}) with recording_sessions: a session's "
                  "raters all come from its one-gender panel")

    def priors(self) -> dict[str, float]:
        """The parsed, normalised emotion priors."""
        return parse_emotion_priors(self.emotion_priors)

    def speakers_per_gender(self, split: str) -> int:
        return int(getattr(self, f"{split}_speakers_per_gender"))


# ------------------------------------------------------------------------------------ plan
@dataclass(frozen=True)
class Speaker:
    """A synthetic character: same variant, formant shift and offsets in every language.

    ``formant_shift`` is α of :data:`FORMANT_SHIFT_RANGE` (already rounded so that 22,050·α is a
    multiple of :data:`VIRTUAL_RATE_STEP`); ``pitch_offset`` is in eSpeak pitch units (added to 50
    and the emotion's offset; it includes the variant's move to :data:`TARGET_F0`); ``rate_scale``
    multiplies the emotion's speaking rate.
    """

    name: str
    gender: str
    split: str
    variant: str
    pitch_offset: float
    rate_scale: float
    formant_shift: float = 1.0

    @property
    def virtual_rate(self) -> int:
        """The sample rate eSpeak's 22,050 Hz output is declared to have: 22,050·α."""
        return virtual_rate(self.formant_shift)


@dataclass
class SourceUtterance:
    """One English source utterance with its translations and everything needed to speak it."""

    index: int
    group: str  # "shared", "ENG_DEU" or "ENG_JPN"
    split: str
    emotion: str
    speaker: Speaker
    sentence: SentenceTriple
    prosody: Prosody  # final per-utterance settings (emotion profile + speaker + jitter), unrounded
    dia_id: int = 0
    utt_id: int = 0
    season: int = 0
    episode: int = 0
    begin_ms: int = 0
    session: int = -1  # index into CorpusPlan.sessions; -1: no recording sessions (clean channel)


@dataclass(frozen=True)
class RecordingSession:
    """A recording session: the channel every clip recorded in it goes through, and its rater panel.

    ``highpass_hz``/``lowpass_hz``: band limits of the microphone and line (4th-order Butterworth
    band-pass); ``reverb_seconds``: RT60 of the room (its impulse response is the direct sound plus an
    exponentially decaying noise tail holding :data:`REVERB_LEVEL` of its energy); ``noise_dbfs``: RMS
    of the white noise floor added last. ``rater_gender``: the gender of every rater who labels the
    session's clips. ``room_seed`` seeds the room's impulse response.
    """

    index: int
    rater_gender: str
    highpass_hz: float
    lowpass_hz: float
    reverb_seconds: float
    noise_dbfs: float
    room_seed: int = 0


@dataclass
class PairRow:
    """One CSV row of a pair."""

    pair: str
    id: int
    source: SourceUtterance


@dataclass
class CorpusPlan:
    """The metadata of the whole corpus, before synthesis."""

    speakers: list[Speaker]
    sources: list[SourceUtterance]
    rows: dict[str, list[PairRow]]  # pair → rows kept (after train imbalance), in id order
    planned_rows: dict[str, int]  # pair → rows before train imbalance
    ratings: dict[int, list[tuple[str, str, str]]]  # source index → [(rater, rater_gender, emotion)]
    raters: list[tuple[str, str]]
    sessions: list[RecordingSession] = field(default_factory=list)  # empty: no recording sessions


def _rng(seed: int, stream: int, *more: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, stream, *more]))


def _allocate_variants(variants: tuple[str, ...], counts: dict[str, int]) -> dict[str, tuple[str, ...]]:
    """Give each split its own voice variants, slices of ``variants`` in split order.

    Each split first gets enough for at most :data:`MAX_SPEAKERS_PER_VARIANT` speakers per variant
    (≥ 1); the spare ones go to test until each test speaker has a variant of their own (gender
    gaps are measured on the test speakers, whose voices should be as distinct as possible), then
    one by one to the split with the most speakers per variant. With fewer variants than that,
    every split shares them all.
    """
    active = [s for s in SPLIT_ORDER if counts[s] > 0]
    k = {s: (max(1, math.ceil(counts[s] / MAX_SPEAKERS_PER_VARIANT)) if s in active else 0) for s in SPLIT_ORDER}
    if len(variants) < sum(k.values()):
        return {s: variants for s in SPLIT_ORDER}
    spare = len(variants) - sum(k.values())
    if "test" in active:
        extra = min(spare, counts["test"] - k["test"])
        k["test"] += extra
        spare -= extra
    while spare > 0:
        open_splits = [s for s in active if k[s] < counts[s]]
        if not open_splits:
            break
        best = max(open_splits, key=lambda s: (counts[s] / k[s], -SPLIT_ORDER.index(s)))
        k[best] += 1
        spare -= 1
    out: dict[str, tuple[str, ...]] = {}
    start = 0
    for s in SPLIT_ORDER:
        out[s] = variants[start:start + k[s]]
        start += k[s]
    return out


def virtual_rate(formant_shift: float) -> int:
    """22,050·α rounded to a multiple of :data:`VIRTUAL_RATE_STEP` (Hz)."""
    step = VIRTUAL_RATE_STEP
    return int(step * round(_espeak.ESPEAK_SAMPLE_RATE * float(formant_shift) / step))


def make_speakers(config: SynthConfig) -> list[Speaker]:
    """The synthetic characters of every split, female first then male, train → dev → test.

    Names are unique ("Anna Weber"); train, dev and test speakers are disjoint and — as far as the
    variant pool allows — use disjoint voice variants (:func:`_allocate_variants`), given out
    round-robin inside a split. Each speaker has a voice of its own:

    * a **formant shift** α, stratified over the log of its gender's :data:`FORMANT_SHIFT_RANGE`:
      with k variants in the split and at most L speakers on one of them, the range is cut into
      L·k equal slots; the r-th speaker of variant v takes slot σ_v(r)·k + π(v) (π a random order
      of the variants, σ_v one of the variant's speakers) and α = exp(slot start + U(0.25, 0.75)·
      slot width). Speakers sharing a variant are therefore ≥ (k − ½)/(L·k) of the log range apart
      (default train split, k = 5 and L = 2: ≥ 6 %; dev, k = 2: ≥ 5 %; worst, k = 1 and L = 4: ≥ 1.7 %), and
      the split's speakers cover the range evenly;
    * a pitch offset that moves the variant's own F0 (:data:`VARIANT_F0`) to its gender's
      :data:`TARGET_F0`, plus a personal U(±:data:`SPEAKER_PITCH_RANGE`) eSpeak units (±7 % of
      F0), and a rate scale U(0.94, 1.06).
    """
    rng = _rng(config.seed, _STREAM_SPEAKERS)
    speakers: list[Speaker] = []
    for gender in ("female", "male"):
        lo, hi = (math.log(x) for x in FORMANT_SHIFT_RANGE[gender])
        counts = {s: config.speakers_per_gender(s) for s in SPLIT_ORDER}
        names = [f"{first} {last}" for first in _FIRST_NAMES[gender] for last in _LAST_NAMES]
        order = rng.permutation(len(names))[: sum(counts.values())]
        allocation = _allocate_variants(VOICE_VARIANTS[gender], counts)
        n = 0
        for split in SPLIT_ORDER:
            pool = allocation[split]
            k = len(pool)
            levels = math.ceil(counts[split] / k)
            width = (hi - lo) / (levels * k)
            variant_order = rng.permutation(k)
            reuse_order = [rng.permutation(levels) for _ in pool]
            for j in range(counts[split]):
                slot = int(reuse_order[j % k][j // k]) * k + int(variant_order[j % k])
                alpha = math.exp(lo + (slot + rng.uniform(0.25, 0.75)) * width)
                speakers.append(Speaker(
                    name=names[order[n]], gender=gender, split=split, variant=pool[j % len(pool)],
                    pitch_offset=float(50.0 * math.log2(TARGET_F0[gender] / VARIANT_F0[pool[j % k]])
                                       + rng.uniform(-SPEAKER_PITCH_RANGE, SPEAKER_PITCH_RANGE)),
                    rate_scale=float(rng.uniform(0.94, 1.06)),
                    formant_shift=virtual_rate(alpha) / _espeak.ESPEAK_SAMPLE_RATE,
                ))
                n += 1
    return speakers


def _largest_remainder(total: int, probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Integer counts summing to ``total`` closest to ``total · probs`` (ties broken at random)."""
    exact = total * probs
    counts = np.floor(exact).astype(np.int64)
    left = total - int(counts.sum())
    if left > 0:
        remainder = exact - counts + rng.uniform(0, 1e-6, size=len(probs)) * (probs > 0)
        counts[np.argsort(-remainder, kind="stable")[:left]] += 1
    return counts


def _split_counts(n: int, config: SynthConfig) -> dict[str, int]:
    dev = int(round(n * config.dev_fraction))
    test = int(round(n * config.test_fraction))
    return {"train": n - dev - test, "dev": dev, "test": test}


def _utterance_prosody(emotion: str, speaker: Speaker, config: SynthConfig, rng: np.random.Generator) -> Prosody:
    profile, neutral, s, j = PROSODY[emotion], PROSODY["neutral"], config.prosody_strength, config.prosody_jitter
    u = rng.uniform(-1.0, 1.0, size=5)

    def towards(a: float, b: float) -> float:
        return a + s * (b - a)

    gap = towards(neutral.word_gap, profile.word_gap)
    return Prosody(
        rate=towards(neutral.rate, profile.rate) * speaker.rate_scale * (1 + j * _JITTER.rate * u[0]),
        pitch=50.0 + speaker.pitch_offset + towards(neutral.pitch, profile.pitch) + j * _JITTER.pitch * u[1],
        range_=towards(neutral.range_, profile.range_) + j * _JITTER.range_ * u[2],
        volume=towards(neutral.volume, profile.volume) * (1 + j * _JITTER.volume * u[3]),
        word_gap=gap + (j * _JITTER.word_gap * u[4] if gap > 0 else 0.0),
    )


def plan_corpus(config: SynthConfig) -> CorpusPlan:
    """All metadata of the corpus (speakers, source utterances, pair rows, ratings); no audio."""
    config.validate()
    priors = np.array([config.priors()[c] for c in MELD.classes])
    speakers = make_speakers(config)
    by_split_gender = {(s, g): [sp for sp in speakers if sp.split == s and sp.gender == g]
                       for s in SPLIT_ORDER for g in ("female", "male")}
    rng = _rng(config.seed, _STREAM_PLAN)
    cursor = {key: 0 for key in by_split_gender}
    order = {key: rng.permutation(len(v)) for key, v in by_split_gender.items()}
    content_pools = {s: sentences_for(NEUTRAL_CONTENT_SENTENCES, s) for s in SPLIT_ORDER}
    emotion_pools = {(e, s): sentences_for(EMOTION_SENTENCES[e], s) for e in MELD.classes for s in SPLIT_ORDER}

    n = config.utterances_per_pair
    n_shared = int(round(config.shared_fraction * n))
    groups = (("shared", n_shared), ("ENG_DEU", n - n_shared), ("ENG_JPN", n - n_shared))
    # genders alternate within (split, emotion); each pair's own group continues where the shared
    # group stopped, so every pair is balanced to within one row per emotion and split
    parity = {(s, e): int(rng.integers(2)) for s in SPLIT_ORDER for e in range(len(MELD.classes))}
    sources: list[SourceUtterance] = []
    for group, size in groups:
        group_parity = dict(parity)
        for split, count in _split_counts(size, config).items():
            if count == 0:
                continue
            emotions = np.repeat(np.arange(len(MELD.classes)), _largest_remainder(count, priors, rng))
            emotions = emotions[rng.permutation(count)]
            genders = np.empty(count, dtype=object)
            for e in np.unique(emotions):
                where = np.flatnonzero(emotions == e)
                start = group_parity[(split, int(e))]
                genders[where] = np.where((start + np.arange(len(where))) % 2 == 0, "female", "male")
                if group == "shared":
                    parity[(split, int(e))] = (start + len(where)) % 2
            use_content = rng.random(count) < config.neutral_text_fraction
            picks = rng.random(count)
            for i in range(count):
                emotion = MELD.classes[int(emotions[i])]
                key = (split, str(genders[i]))
                pool = by_split_gender[key]
                speaker = pool[order[key][cursor[key] % len(pool)]]
                cursor[key] += 1
                sentences = content_pools[split] if use_content[i] else emotion_pools[(emotion, split)]
                sentence = sentences[int(picks[i] * len(sentences))]
                sources.append(SourceUtterance(
                    index=len(sources), group=group, split=split, emotion=emotion, speaker=speaker,
                    sentence=sentence, prosody=_utterance_prosody(emotion, speaker, config, rng),
                ))
    _place_in_show(sources, rng)
    sessions = make_sessions(config)
    _assign_sessions(sources, len(sessions), config.seed)

    rows: dict[str, list[PairRow]] = {}
    planned: dict[str, int] = {}
    for p, pair in enumerate(PAIRS):
        mine = sorted((s for s in sources if s.group in ("shared", pair)),
                      key=lambda s: (SPLIT_ORDER.index(s.split), s.index))
        pair_rows = [PairRow(pair=pair, id=i, source=s) for i, s in enumerate(mine)]
        planned[pair] = len(pair_rows)
        if config.train_imbalance_ratio is not None:
            pair_rows = _subsample_train(pair_rows, config, p)
        rows[pair] = pair_rows
    raters, ratings = simulate_ratings(sources, config)
    return CorpusPlan(speakers=speakers, sources=sources, rows=rows, planned_rows=planned,
                      ratings=ratings, raters=raters, sessions=sessions)


def make_sessions(config: SynthConfig) -> list[RecordingSession]:
    """The ``recording_sessions`` sessions (none when 0), each with its own channel and rater panel.

    Every channel parameter's range (:data:`SESSION_CHANNEL_RANGES`) is cut into S equal slots (log
    scale for frequencies and RT60, linear for the noise level); each parameter gives its slots to the
    sessions in its own random order and the value lies in the middle half of the slot, so any two
    sessions differ in every parameter by at least half a slot. Session k's panel is
    ``SESSION_PANELS[k % 2]`` (women, men, women, ...), so which channel goes with which panel is
    random too.
    """
    n = config.recording_sessions
    if n == 0:
        return []
    rng = _rng(config.seed, _STREAM_SESSIONS)
    values: dict[str, np.ndarray] = {}
    for name, (lo, hi) in SESSION_CHANNEL_RANGES.items():
        position = (rng.permutation(n) + rng.uniform(0.25, 0.75, size=n)) / n
        values[name] = lo + position * (hi - lo) if name == "noise_dbfs" else lo * (hi / lo) ** position
    rooms = rng.integers(0, 2**31, size=n)
    return [RecordingSession(index=k, rater_gender=SESSION_PANELS[k % len(SESSION_PANELS)],
                             **{name: float(v[k]) for name, v in values.items()}, room_seed=int(rooms[k]))
            for k in range(n)]


def _assign_sessions(sources: list[SourceUtterance], n_sessions: int, seed: int) -> None:
    """Give every source utterance a session, balanced inside each (split, emotion, speaker gender):
    the cell's utterances, in a random order, take the sessions in turn, each cell going on where the
    split's previous cell stopped (from a random start). So every session holds the same mix of
    emotions and genders, to within one utterance per cell and per split."""
    if n_sessions == 0:
        return
    rng = _rng(seed, _STREAM_SESSIONS, 1)
    cells: dict[tuple[int, str, str], list[SourceUtterance]] = {}
    for s in sources:
        cells.setdefault((SPLIT_ORDER.index(s.split), s.emotion, s.speaker.gender), []).append(s)
    turn = {split: int(rng.integers(n_sessions)) for split in range(len(SPLIT_ORDER))}
    for key in sorted(cells):
        members = cells[key]
        for i in rng.permutation(len(members)):
            members[i].session = turn[key[0]] % n_sessions
            turn[key[0]] += 1


def _place_in_show(sources: list[SourceUtterance], rng: np.random.Generator, dialogue_length: int = 5) -> None:
    """Group each split's utterances into dialogues and give each utterance a unique 10-second slot
    of a (season, episode): dialogue k → season 1 + (k // 24) % 10, episode 1 + k % 24, minute
    k // 240; utterance u of the dialogue begins at u·10 s (+ a random 0–999 ms)."""
    k = 0
    for split in SPLIT_ORDER:
        members = [s for s in sources if s.split == split]
        members = [members[i] for i in rng.permutation(len(members))]
        for d in range(0, len(members), dialogue_length):
            for u, source in enumerate(members[d:d + dialogue_length]):
                source.dia_id = d // dialogue_length
                source.utt_id = u
                source.season = 1 + (k // 24) % 10
                source.episode = 1 + k % 24
                source.begin_ms = (k // 240) * 60_000 + u * 10_000 + int(rng.integers(1000))
            k += 1


def _subsample_train(rows: list[PairRow], config: SynthConfig, pair_index: int) -> list[PairRow]:
    train = [r for r in rows if r.source.split == "train"]
    emotions = np.array([MELD.index(r.source.emotion) for r in train], dtype=np.int64)
    genders = np.array([r.source.speaker.gender for r in train])
    majority = {i: IDI_MAJORITY_GENDER[c] for i, c in enumerate(MELD.classes)}
    keep = subsample_indices(
        emotions, genders, float(config.train_imbalance_ratio), majority,
        seed=np.random.SeedSequence([config.seed, _STREAM_IMBALANCE, pair_index]),
    )
    kept_ids = {train[i].id for i in keep}
    return [r for r in rows if r.source.split != "train" or r.id in kept_ids]


def simulate_ratings(
    sources: list[SourceUtterance], config: SynthConfig
) -> tuple[list[tuple[str, str]], dict[int, list[tuple[str, str, str]]]]:
    """Per-rater annotations: the rater pool and, per source utterance, ``(rater, gender, emotion)``.

    Each utterance is rated by ``raters_per_utterance`` distinct raters drawn from the pool — with
    ``recording_sessions``, only from its session's panel (the raters of gender
    ``SESSION_PANELS[session % 2]``; the draw is the same, the other raters are never picked). A rater
    reports the true emotion with probability ``rater_accuracy`` and otherwise a uniformly random
    *other* emotion. The **bias** (``rater_bias`` = b) is systematic and one-sided: when a *male*
    rater rates a *female* speaker's anger (disgust) — any speaker's with ``rater_bias_speakers=all``
    — with probability b he reports sadness (fear) before accuracy is considered — so male and female
    raters disagree on (women's) anger and disgust and agree elsewhere. The probability that a male
    rater gives a woman's anger the label sadness is ``b + (1 - b)(1 - accuracy)/6``; for a female
    rater it is ``(1 - accuracy)/6``.
    """
    raters = [(f"rater{i + 1:02d}", g) for i, g in enumerate(
        ["female"] * config.raters_per_gender + ["male"] * config.raters_per_gender)]
    ratings: dict[int, list[tuple[str, str, str]]] = {}
    k = config.raters_per_utterance
    if k == 0 or not sources:
        return raters, {s.index: [] for s in sources}
    rng = _rng(config.seed, _STREAM_RATINGS)
    n, classes = len(sources), np.array(MELD.classes)
    order = rng.random((n, len(raters)))
    if config.recording_sessions:
        if any(s.session < 0 for s in sources):
            raise DataError("simulate_ratings: recording_sessions is set but a source utterance has no session")
        panel = np.array([SESSION_PANELS[s.session % len(SESSION_PANELS)] for s in sources])
        outside = panel[:, None] != np.array([g for _, g in raters])[None, :]
        order = np.where(outside, order + 1.0, order)  # every panel rater comes before every other rater
    chosen = np.argsort(order, axis=1)[:, :k]  # k distinct raters per utterance
    chosen.sort(axis=1)
    true = np.array([MELD.index(s.emotion) for s in sources])[:, None].repeat(k, axis=1)
    biased_speaker = np.array([config.rater_bias_speakers == "all" or s.speaker.gender == "female"
                               for s in sources])[:, None]
    male_rater = np.array([g == "male" for _, g in raters])[chosen]
    u_bias, u_acc = rng.random((n, k)), rng.random((n, k))
    other = (true + rng.integers(1, len(classes), size=(n, k))) % len(classes)  # uniform over the other 6
    label = np.where(u_acc < config.rater_accuracy, true, other)
    swap = {MELD.index("anger"): MELD.index("sadness"), MELD.index("disgust"): MELD.index("fear")}
    for source_class, heard in swap.items():
        biased = male_rater & biased_speaker & (true == source_class) & (u_bias < config.rater_bias)
        label = np.where(biased, heard, label)
    for i, s in enumerate(sources):
        ratings[s.index] = [(raters[j][0], raters[j][1], str(classes[label[i, c]])) for c, j in enumerate(chosen[i])]
    return raters, ratings


# ------------------------------------------------------------------------------------ audio
def _espeak_seed(seed: int, source_index: int, language: str) -> int:
    state = np.random.SeedSequence([seed, _STREAM_ESPEAK, source_index, ("eng", "deu", "jpn").index(language)])
    return int(state.generate_state(1)[0] & 0x7FFF_FFFF)


def _channel_seed(seed: int, source_index: int, language: str) -> np.random.SeedSequence:
    """The seed of a clip's noise floor (one stream per corpus seed, source utterance and language)."""
    return np.random.SeedSequence([seed, _STREAM_CHANNEL, 1, source_index, ("eng", "deu", "jpn").index(language)])


def espeak_settings(prosody: Prosody, formant_shift: float = 1.0) -> dict[str, int]:
    """The eSpeak NG parameters that give ``prosody`` once the clip is played ``formant_shift`` (α)
    times faster: playing faster multiplies F0 and the pitch range by α and divides durations by α,
    so the base pitch is lowered by 50·log2(α) eSpeak units (one unit is a factor 2^(1/50)), the range
    divided by α, the rate divided by α and the word gap multiplied by α; then rounded and clipped
    to eSpeak's limits."""
    alpha = float(formant_shift)
    return {
        "rate": int(np.clip(round(prosody.rate / alpha), *_espeak.RATE_LIMITS)),
        "pitch": int(np.clip(round(prosody.pitch - 50.0 * math.log2(alpha)), *_espeak.PITCH_LIMITS)),
        "range_": int(np.clip(round(prosody.range_ / alpha), *_espeak.RANGE_LIMITS)),
        "volume": int(np.clip(round(prosody.volume), *_espeak.VOLUME_LIMITS)),
        "word_gap": int(np.clip(round(prosody.word_gap * alpha), *_espeak.WORD_GAP_LIMITS)),
    }


def speak(source: SourceUtterance, language: str, seed: int) -> tuple[np.ndarray, int]:
    """Synthesise ``source`` in ``language``: eSpeak's int16 samples and the rate they are to be
    played at, the speaker's :attr:`Speaker.virtual_rate` (22,050·α; :func:`wav_bytes` resamples
    from it to 16 kHz, which is the formant shift). At most :data:`MAX_CLIP_SECONDS` long once
    played at that rate: a longer clip is re-synthesised with the rate scaled up."""
    text = source.sentence.text(language)
    voice = f"{ESPEAK_VOICES[language]}+{source.speaker.variant}"
    settings = espeak_settings(source.prosody, source.speaker.formant_shift)
    sr = source.speaker.virtual_rate
    for _ in range(4):
        samples, _ = _espeak.synthesize(text, voice, seed=_espeak_seed(seed, source.index, language), **settings)
        if samples.size == 0:
            raise DataError(f"eSpeak NG produced no audio for {text!r} (voice {voice})")
        seconds = samples.size / sr
        if seconds <= MAX_CLIP_SECONDS or settings["rate"] >= _espeak.RATE_LIMITS[1]:
            break
        faster = math.ceil(settings["rate"] * seconds / (0.95 * MAX_CLIP_SECONDS))
        settings["rate"] = min(_espeak.RATE_LIMITS[1], faster)
    if samples.size / sr > MAX_CLIP_SECONDS:
        raise DataError(f"sentence {source.sentence.id} is too long to speak in {MAX_CLIP_SECONDS} s ({language})")
    return samples, sr


@functools.lru_cache(maxsize=MAX_SESSIONS)
def _session_channel(session: RecordingSession) -> tuple[np.ndarray, np.ndarray]:
    """The room's impulse response and the band-pass (second-order sections) of ``session``."""
    from scipy.signal import butter

    sr = TARGET_SAMPLE_RATE
    length = max(1, int(round(session.reverb_seconds * sr)))
    room = np.random.default_rng(session.room_seed).standard_normal(length)
    room *= np.exp(-6.9078 * np.arange(1, length + 1) / length)  # −60 dB at RT60
    room *= math.sqrt(REVERB_LEVEL / float(np.sum(room * room)))
    sos = butter(4, [session.highpass_hz, session.lowpass_hz], btype="bandpass", fs=sr, output="sos")
    return np.concatenate([[1.0], room]), sos


def record_in_session(audio: np.ndarray, session: RecordingSession, noise_seed: Any) -> np.ndarray:
    """``audio`` (float, 16 kHz, full scale 1) as recorded in ``session``: through the room (the
    direct sound plus a decaying noise tail, RT60 ``reverb_seconds``, cut to the clip's length), then
    the band-pass (``highpass_hz``–``lowpass_hz``), then the noise floor (``noise_dbfs`` RMS, drawn
    from ``noise_seed``). The room's tail is drawn from the session alone, so every clip of a session
    goes through the same room. Returns float64 of the same length."""
    from scipy.signal import fftconvolve, sosfilt

    x = np.asarray(audio, dtype=np.float64)
    response, sos = _session_channel(session)
    x = sosfilt(sos, fftconvolve(x, response)[: x.size])
    noise = np.random.default_rng(noise_seed).standard_normal(x.size)
    return x + noise * 10.0 ** (session.noise_dbfs / 20.0)


def wav_bytes(samples: np.ndarray, sample_rate: int, session: RecordingSession | None = None,
              noise_seed: Any = None) -> bytes:
    """Resample int16 ``samples`` from ``sample_rate`` to 16 kHz, pass them through ``session``'s
    channel (:func:`record_in_session`; none by default) and encode them as a mono PCM_16 WAV
    (deterministic bytes). With :func:`speak`'s virtual rate this also shifts the formants."""
    import soundfile as sf

    audio = resample(samples.astype(np.float32) / 32768.0, sample_rate, TARGET_SAMPLE_RATE)
    if session is not None:
        audio = record_in_session(audio, session, noise_seed)
    pcm = np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)
    buffer = io.BytesIO()
    sf.write(buffer, pcm, TARGET_SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------ writing
def format_time(ms: int) -> str:
    """Milliseconds as MELD's ``HH:MM:SS,mmm``."""
    hours, rest = divmod(int(ms), 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d},{millis:03d}"


def _csv_bytes(header: list[str], rows: list[list[Any]]) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return text.getvalue().encode("utf-8")


def audio_relpath(pair: str, language: str, split: str, row_id: int) -> str:
    """``{pair}/{LANGUAGE}/{split}/{split}_{id}.wav`` (the reader's default path template)."""
    return f"{pair}/{language.upper()}/{split}/{split}_{row_id}.wav"


def _counts(plan: CorpusPlan, n_audio: int, n_ratings: int) -> dict[str, Any]:
    pairs: dict[str, Any] = {}
    for pair, rows in plan.rows.items():
        pairs[pair] = {"planned_rows": plan.planned_rows[pair]}
        for split in SPLIT_ORDER:
            table = {e: {"female": 0, "male": 0} for e in MELD.classes}
            for r in rows:
                if r.source.split == split:
                    table[r.source.emotion][r.source.speaker.gender] += 1
            pairs[pair][split] = {"rows": sum(sum(v.values()) for v in table.values()), "emotion_gender": table}
    kept_sources = {r.source.index for rows in plan.rows.values() for r in rows}
    if plan.sessions:  # kept source utterances per split and session
        by_index = {src.index: src for src in plan.sources}
        sessions = {split: [sum(1 for i in kept_sources if by_index[i].split == split and by_index[i].session == k)
                            for k in range(len(plan.sessions))] for split in SPLIT_ORDER}
    return {
        "source_utterances": len(kept_sources),
        "shared_source_utterances": len({r.source.index for r in plan.rows["ENG_DEU"]}
                                        & {r.source.index for r in plan.rows["ENG_JPN"]}),
        "audio_files": n_audio,
        "ratings": n_ratings,
        "speakers": {s: {g: sum(1 for sp in plan.speakers if sp.split == s and sp.gender == g)
                         for g in ("female", "male")} for s in SPLIT_ORDER},
        "raters": {g: sum(1 for _, rg in plan.raters if rg == g) for g in ("female", "male")},
        "pairs": pairs,
        **({"source_utterances_per_session": sessions} if plan.sessions else {}),
    }


def _build(root: Path, config: SynthConfig) -> dict[str, Any]:
    """Write the whole corpus under ``root`` (an empty directory); return the manifest."""
    from tqdm.auto import tqdm

    plan = plan_corpus(config)
    hashes: dict[str, str] = {}

    def put(rel: str, data: bytes) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        hashes[rel] = hashlib.sha256(data).hexdigest()

    # what to synthesise: the English and the target language of every kept row, once per source
    # utterance and language; each clip goes to every row path that uses it
    targets: dict[tuple[int, str], list[str]] = {}
    for pair, rows in plan.rows.items():
        for r in rows:
            for lang in ("eng", PAIRS[pair][0]):
                targets.setdefault((r.source.index, lang), []).append(audio_relpath(pair, lang, r.source.split, r.id))
    needed = sorted(targets, key=lambda t: (t[0], ("eng", "deu", "jpn").index(t[1])))
    by_index = {s.index: s for s in plan.sources}
    duration_ms: dict[tuple[int, str], int] = {}
    logger.info("synthesising %d clips for %d source utterances", len(needed), len({i for i, _ in needed}))
    started = time.perf_counter()
    for key in tqdm(needed, desc="synthesising", unit="clip", disable=None):
        source = by_index[key[0]]
        samples, sr = speak(source, key[1], config.seed)
        session = plan.sessions[source.session] if plan.sessions else None
        data = wav_bytes(samples, sr, session, noise_seed=_channel_seed(config.seed, source.index, key[1]))
        duration_ms[key] = int(round(1000 * samples.size / sr))
        for rel in targets[key]:
            put(rel, data)
    logger.info("synthesised %d clips in %.1f s", len(needed), time.perf_counter() - started)

    rating_rows: list[list[Any]] = []
    for pair, rows in plan.rows.items():
        code, _ = PAIRS[pair]
        per_split: dict[str, list[list[Any]]] = {s: [] for s in SPLIT_ORDER}
        for r in rows:
            s = r.source
            eng_ms, tgt_ms = duration_ms[(s.index, "eng")], duration_ms[(s.index, code)]
            per_split[s.split].append([
                r.id, s.dia_id, s.utt_id, s.emotion, SENTIMENT[s.emotion], s.sentence.english,
                s.sentence.text(code), s.season, s.episode, s.speaker.name,
                format_time(s.begin_ms), format_time(s.begin_ms + eng_ms),
                format_time(s.begin_ms), format_time(s.begin_ms + tgt_ms),
            ])
            rating_rows.extend([pair, r.id, rater, rater_gender, label]
                               for rater, rater_gender, label in plan.ratings[s.index])
        for split, csv_split in SPLITS.items():
            put(f"{pair}/{code}_{csv_split}.csv", _csv_bytes(csv_columns(pair), per_split[split]))
    put(SPEAKER_GENDER_FILE, _csv_bytes(["speaker", "gender"], [[sp.name, sp.gender] for sp in plan.speakers]))
    put(RATINGS_FILE, _csv_bytes(["pair", "id", "rater", "rater_gender", "emotion"], rating_rows))
    if plan.sessions:
        put(SESSIONS_FILE, _csv_bytes(["pair", "id", "session"], [
            [pair, r.id, r.source.session] for pair, rows in plan.rows.items() for r in rows]))

    manifest = {
        "generator": GENERATOR,
        "format_version": FORMAT_VERSION,
        "seed": config.seed,
        "config": asdict(config),
        "counts": _counts(plan, sum(1 for rel in hashes if rel.endswith(".wav")), len(rating_rows)),
        **({"sessions": [asdict(session) for session in plan.sessions]} if plan.sessions else {}),
        "files": {rel: hashes[rel] for rel in sorted(hashes)},
    }
    (root / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


# ------------------------------------------------------------------------------------ entry point
def read_manifest(out_dir: str | Path) -> Optional[dict[str, Any]]:
    """The manifest in ``out_dir/corpus.json``, or None when there is none or it is not one of ours."""
    path = Path(out_dir) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(manifest, dict) or manifest.get("generator") != GENERATOR:
        return None
    return manifest


def _difference(manifest: dict[str, Any], config: SynthConfig) -> list[str]:
    """How the corpus described by ``manifest`` differs from what ``config`` would generate."""
    diff: list[str] = []
    if manifest.get("format_version") != FORMAT_VERSION:
        diff.append(f"format_version {manifest.get('format_version')!r}, not {FORMAT_VERSION}")
    if manifest.get("seed") != config.seed:
        diff.append(f"seed {manifest.get('seed')!r}, not {config.seed}")
    stored = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    wanted = json.loads(json.dumps(asdict(config)))
    # a knob a corpus predates is the knob at its default (those defaults never change the files)
    defaults = json.loads(json.dumps(asdict(SynthConfig())))
    stored = {**{k: v for k, v in defaults.items() if k in _KNOBS_ADDED_IN_FORMAT_2}, **stored}
    for key in sorted(set(stored) | set(wanted)):
        if key != "seed" and stored.get(key, "<absent>") != wanted.get(key, "<absent>"):
            diff.append(f"{key}={stored.get(key, '<absent>')!r}, not {wanted.get(key, '<absent>')!r}")
    return diff


@dataclass(frozen=True)
class CorpusState:
    """What a folder holds with respect to the corpus a config would generate.

    ``kind``: ``absent`` (missing or empty), ``current`` (this config's corpus, every file present),
    ``incomplete`` (this config's corpus with files missing), ``different`` (another config's
    corpus), ``foreign`` (files the generator did not write; ``detail`` names one). ``owned``: the
    files in the folder that the generator wrote (its manifest's list).
    """

    kind: str
    detail: str = ""
    manifest: Optional[dict[str, Any]] = None
    owned: tuple[str, ...] = ()


def corpus_state(out_dir: str | Path, config: SynthConfig) -> CorpusState:
    """Classify ``out_dir`` for ``config`` without writing anything (see :class:`CorpusState`)."""
    from llmfair._atomic import foreign_files

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a directory; choose another output directory")
    if not out.is_dir() or not any(out.iterdir()):
        return CorpusState("absent")
    manifest = read_manifest(out)
    owned = tuple([MANIFEST_FILE, *(manifest.get("files", {}) if manifest else {})])
    foreign = foreign_files(out, owned)
    if manifest is None or foreign:
        first = foreign[0] if foreign else next(iter(sorted(p.name for p in out.iterdir())))
        return CorpusState("foreign", f"holds files the built-in corpus generator did not write (e.g. {out / first})",
                           manifest, owned)
    diff = _difference(manifest, config)
    if diff:
        more = " (and more)" if len(diff) > 4 else ""
        return CorpusState("different", f"holds a built-in corpus with {'; '.join(diff[:4])}{more}", manifest, owned)
    missing = [rel for rel in manifest.get("files", {}) if not (out / rel).is_file()]
    if missing:
        return CorpusState("incomplete", f"holds this corpus but {len(missing)} of its files are missing "
                                         f"(e.g. {missing[0]})", manifest, owned)
    return CorpusState("current", "", manifest, owned)


def generate_corpus(
    out_dir: str | Path, config: SynthConfig | None = None, *, overwrite: bool = False
) -> dict[str, Any]:
    """Generate the built-in corpus into ``out_dir`` (see the module docstring for its layout).

    Idempotent: when ``out_dir`` already holds the corpus of this generator, format version, seed
    and config, with all its files, it is returned untouched ("already up to date"). The corpus is
    built in a temporary sibling directory and moved into place only when complete, so a failure
    leaves nothing half-written (and an existing ``out_dir`` untouched).

    Args:
        out_dir: the corpus root to create.
        config: the knobs (default :class:`SynthConfig`).
        overwrite: replace an ``out_dir`` that holds a different corpus or other files.

    Returns:
        The manifest, as written to ``out_dir/corpus.json``.

    Raises:
        ConfigError: an invalid knob.
        DataError: ``out_dir`` holds something else and ``overwrite`` is False (the message says what
            differs), or is a file.
        EspeakUnavailableError: eSpeak NG cannot be loaded.
    """
    config = SynthConfig() if config is None else replace(config)  # replace() re-validates a copy
    out = Path(out_dir)
    state = corpus_state(out, config)
    if state.kind == "current":
        logger.info("built-in corpus in %s is already up to date (seed %d)", out, config.seed)
        return state.manifest
    check_replaceable(out, what="corpus", overwrite=True, owned=state.owned)  # a foreign file: refused
    if state.kind in ("incomplete", "different") and not overwrite:
        raise DataError(f"{out} {state.detail}; pass overwrite=True (--overwrite) to "
                        f"{'regenerate' if state.kind == 'incomplete' else 'replace'} it")
    _espeak.espeak_paths()  # fail before planning when eSpeak NG is missing
    started = time.perf_counter()
    with atomic_directory(out, overwrite=out.exists(), command="data synth", owned=state.owned) as tmp:
        manifest = _build(tmp, config)
    logger.info("built-in corpus (seed %d, %d audio files) written to %s in %.1f s",
                config.seed, manifest["counts"]["audio_files"], out, time.perf_counter() - started)
    return manifest
