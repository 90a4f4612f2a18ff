"""The default built-in corpus can resolve a gender gap: enough test speakers and utterances per
language × gender, and test speakers that are distinct voices with a readable gender.

The counts come from the plan (no audio). The voices are checked on audio synthesised directly
with the corpus's own :func:`speak` for a few test utterances of every test speaker: resemblyzer
speaker embeddings must identify the speaker of a clip from the speaker's clips with *other*
words, and the same check on the same utterances spoken by one unshifted variant per gender (one
voice relabelled) must fail — so the check can tell.
"""
from __future__ import annotations

import dataclasses
import math
from collections import Counter, defaultdict

import numpy as np
import pytest

from llmfair.data.audio import resample
from llmfair.data.synth import SynthConfig, make_speakers, plan_corpus
from llmfair.data.synth import corpus as corpus_module
from llmfair.errors import ConfigError

GENDERS = ("female", "male")
CLIPS_PER_SPEAKER = 6


@pytest.fixture(scope="module")
def plan():
    return plan_corpus(SynthConfig())


def reader_test_counts(plan) -> tuple[Counter, dict]:
    """Test utterances and speakers per (language, gender) as read_meld_st sees them: German and
    Japanese per pair, English de-duplicated over both pairs (first occurrence wins, ENG_DEU first)."""
    counts: Counter = Counter()
    speakers: dict = defaultdict(set)
    seen_english: dict = {}
    for pair, target in (("ENG_DEU", "deu"), ("ENG_JPN", "jpn")):
        for row in plan.rows[pair]:
            s = row.source
            key = (s.season, s.episode, s.begin_ms)  # the reader keys English on (season, episode, times)
            seen_english.setdefault(key, s)
            if s.split == "test":
                counts[(target, s.speaker.gender)] += 1
                speakers[(target, s.speaker.gender)].add(s.speaker.name)
    for s in seen_english.values():
        if s.split == "test":
            counts[("eng", s.speaker.gender)] += 1
            speakers[("eng", s.speaker.gender)].add(s.speaker.name)
    return counts, speakers


# ------------------------------------------------------------------------------------ plan
def test_default_test_split_has_enough_speakers_and_utterances_per_language_and_gender(plan):
    by_split = {split: [s for s in plan.speakers if s.split == split] for split in ("train", "dev", "test")}
    for split, speakers in by_split.items():
        for g in GENDERS:
            assert sum(s.gender == g for s in speakers) == {"train": 8, "dev": 4, "test": 8}[split]
    names = {split: {s.name for s in speakers} for split, speakers in by_split.items()}
    assert not names["train"] & names["dev"] and not names["train"] & names["test"]
    assert not names["dev"] & names["test"]

    counts, speakers = reader_test_counts(plan)
    print("test utterances per (language, gender):", dict(sorted(counts.items())))
    for lang in ("eng", "deu", "jpn"):
        for g in GENDERS:
            assert counts[(lang, g)] >= 110, (lang, g, counts[(lang, g)])
            assert len(speakers[(lang, g)]) >= 8, (lang, g)  # every test character speaks every language
    # the English keys are unique per source utterance, so de-duplication merges exactly the shared ones
    shared_test = sum(1 for s in plan.sources if s.group == "shared" and s.split == "test")
    deu_test = sum(1 for r in plan.rows["ENG_DEU"] if r.source.split == "test")
    jpn_test = sum(1 for r in plan.rows["ENG_JPN"] if r.source.split == "test")
    assert sum(counts[("eng", g)] for g in GENDERS) == deu_test + jpn_test - shared_test

    # train and dev stay small enough for the demo (train two tiny models and predict all of test)
    for pair, rows in plan.rows.items():
        per_split = Counter(r.source.split for r in rows)
        assert 300 <= per_split["train"] <= 400 and 50 <= per_split["dev"] <= 80, (pair, per_split)


def test_default_voices_test_variants_unique_and_formant_shifts(plan):
    speakers = plan.speakers
    for g in GENDERS:
        test = [s for s in speakers if s.gender == g and s.split == "test"]
        assert len({s.variant for s in test}) == len(test)  # one variant per test speaker
        assert {s.variant for s in test} <= set(corpus_module.VOICE_VARIANTS[g])
        held_in = {s.variant for s in speakers if s.gender == g and s.split != "test"}
        assert not held_in & {s.variant for s in test}
        # every variant's F0 is known, and the speaker's pitch offset moves it to the gender's target
        target = corpus_module.TARGET_F0[g]
        for s in speakers:
            if s.gender == g:
                moved = 50 * math.log2(target / corpus_module.VARIANT_F0[s.variant])
                assert abs(s.pitch_offset - moved) <= corpus_module.SPEAKER_PITCH_RANGE
        lo, hi = corpus_module.FORMANT_SHIFT_RANGE[g]
        for s in speakers:
            if s.gender == g:
                assert lo - 0.003 <= s.formant_shift <= hi + 0.003
                assert s.virtual_rate % corpus_module.VIRTUAL_RATE_STEP == 0
                assert s.formant_shift == s.virtual_rate / 22050
    # speakers sharing a variant in a split are told apart by clearly different formant shifts
    groups = defaultdict(list)
    for s in speakers:
        groups[(s.split, s.variant)].append(s.formant_shift)
    shared = [sorted(v) for v in groups.values() if len(v) > 1]
    assert shared  # the default train and dev splits reuse variants
    assert min(math.log(b / a) for v in shared for a, b in zip(v, v[1:])) >= 0.05


def test_the_largest_allowed_speaker_counts_are_supported():
    top = corpus_module.MAX_SPEAKERS_PER_SPLIT_GENDER
    config = SynthConfig(train_speakers_per_gender=top, dev_speakers_per_gender=top, test_speakers_per_gender=top)
    speakers = make_speakers(config)
    assert len({s.name for s in speakers}) == len(speakers) == 6 * top
    per_variant = Counter((s.split, s.variant) for s in speakers)
    assert max(per_variant.values()) <= corpus_module.MAX_SPEAKERS_PER_VARIANT
    for g in GENDERS:
        splits_of = defaultdict(set)
        for s in speakers:
            if s.gender == g:
                splits_of[s.variant].add(s.split)
        assert all(len(v) == 1 for v in splits_of.values())  # still disjoint across splits
    with pytest.raises(ConfigError, match=rf"test_speakers_per_gender.*must be <= {top}"):
        SynthConfig(test_speakers_per_gender=top + 1)


# ------------------------------------------------------------------------------------ audio
def _chosen_utterances(plan) -> dict[str, list]:
    """Up to CLIPS_PER_SPEAKER test utterances of each test speaker, each with different words."""
    chosen: dict[str, list] = {}
    for sp in (s for s in plan.speakers if s.split == "test"):
        picked, words = [], set()
        for u in plan.sources:
            if u.speaker == sp and u.sentence.id not in words:
                picked.append(u)
                words.add(u.sentence.id)
            if len(picked) == CLIPS_PER_SPEAKER:
                break
        assert len(picked) == CLIPS_PER_SPEAKER, sp.name
        chosen[sp.name] = picked
    return chosen


def _one_voice(u, variant: str):
    """The utterance spoken by ``variant`` with no formant shift and no personal pitch or rate."""
    sp, p = u.speaker, u.prosody
    plain = dataclasses.replace(sp, variant=variant, formant_shift=1.0, pitch_offset=0.0, rate_scale=1.0)
    return dataclasses.replace(u, speaker=plain, prosody=dataclasses.replace(
        p, pitch=p.pitch - sp.pitch_offset, rate=p.rate / sp.rate_scale))


def _synthesise(chosen, language: str, seed: int, transform=lambda u: u):
    clips, speaker, words = [], [], []
    for name, utterances in chosen.items():
        for u in utterances:
            samples, rate = corpus_module.speak(transform(u), language, seed)
            assert samples.size / rate <= corpus_module.MAX_CLIP_SECONDS
            clips.append(resample(samples.astype(np.float32) / 32768.0, rate, 16_000))
            speaker.append(name)
            words.append(u.sentence.id)
    return clips, np.array(speaker), np.array(words)


@pytest.fixture(scope="module")
def embedder():
    import torch

    from llmfair.ssl.speaker import SpeakerEmbeddingExtractor

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield SpeakerEmbeddingExtractor()
    torch.set_num_threads(previous)


def identification(embedder, clips, speaker, words) -> tuple[float, float]:
    """(leave-one-out nearest-neighbour accuracy, smallest cosine distance between a speaker's
    centroid and the nearest other speaker's). Neighbours with the same words are excluded, so
    only the voice can match."""
    emb = embedder.extract(clips).astype(np.float64)
    sim = emb @ emb.T
    sim[words[:, None] == words[None, :]] = -np.inf  # itself and every clip of the same sentence
    accuracy = float(np.mean(speaker[sim.argmax(axis=1)] == speaker))
    names = list(dict.fromkeys(speaker))
    centroids = np.stack([emb[speaker == n].mean(axis=0) for n in names])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    between = centroids @ centroids.T
    np.fill_diagonal(between, -np.inf)
    return accuracy, float(1.0 - between.max())


@pytest.fixture(scope="module")
def test_speaker_clips(plan):
    chosen = _chosen_utterances(plan)
    return chosen, _synthesise(chosen, "eng", SynthConfig().seed)


def test_test_speakers_are_distinct_voices_and_one_relabelled_voice_is_not(plan, embedder, test_speaker_clips):
    chosen, (clips, speaker, words) = test_speaker_clips
    assert len(set(speaker)) == 16
    accuracy, margin = identification(embedder, clips, speaker, words)

    # the control: the same utterances, every test speaker of a gender one unshifted variant
    first = {g: next(s.variant for s in plan.speakers if s.split == "test" and s.gender == g) for g in GENDERS}
    control_clips, _, _ = _synthesise(chosen, "eng", SynthConfig().seed,
                                      transform=lambda u: _one_voice(u, first[u.speaker.gender]))
    control_accuracy, control_margin = identification(embedder, control_clips, speaker, words)
    print(f"speaker identification (chance 1/16): {accuracy:.3f} with the corpus's voices (centroid margin "
          f"{margin:.3f}); {control_accuracy:.3f} with one unshifted variant per gender (margin {control_margin:.3f})")
    assert accuracy >= 0.85  # 1.0 measured (seed 0; 1.0, 1.0, 0.95 with seeds 1-3)
    assert margin >= 0.08  # 0.157 measured: the nearest other speaker's centroid has cosine <= 0.843
    assert control_accuracy <= 0.3  # 0.14 measured
    assert control_margin < 0.03  # 0.013 measured


def test_every_female_test_speaker_is_higher_than_every_male_one(plan, test_speaker_clips):
    """Median F0 over the speaker's 6 clips, in each language. Single clips overlap (a man's surprise
    is 28 eSpeak pitch units, ×1.47, above his neutral), a speaker's median does not."""
    from llmfair.ssl.acoustic import pitch_track

    chosen, (clips, speaker, _) = test_speaker_clips
    per_language = {"eng": (clips, speaker)}
    for lang in ("deu", "jpn"):
        more, who, _ = _synthesise(chosen, lang, SynthConfig().seed)
        per_language[lang] = (more, who)
    gender = {s.name: s.gender for s in plan.speakers}
    for lang, (audio, who) in per_language.items():
        f0: dict[str, list[np.ndarray]] = defaultdict(list)
        for clip, name in zip(audio, who):
            track, voiced = pitch_track(clip)
            f0[name].append(track[voiced])
        median = {name: float(np.median(np.concatenate(v))) for name, v in f0.items()}
        lowest_female = min(v for n, v in median.items() if gender[n] == "female")
        highest_male = max(v for n, v in median.items() if gender[n] == "male")
        print(f"{lang}: female test speakers' median F0 >= {lowest_female:.0f} Hz, male <= {highest_male:.0f} Hz")
        assert lowest_female >= 1.3 * highest_male, (lang, median)  # 184/115, 179/115, 180/118 Hz measured
        assert 140 <= lowest_female and highest_male <= 140, (lang, median)
