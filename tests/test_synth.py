"""The built-in corpus generator: layout, determinism, acoustics, splits, imbalance, ratings, refusals.

Small corpora (utterances_per_pair=40) keep the file fast; every property is measured on the files
written (CSV, WAV, corpus.json), independently of the generator's own bookkeeping.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import shutil
import subprocess
import sys
import threading
import typing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from llmfair._atomic import RECORD_FILE
from llmfair.data.synth import (
    EMOTION_SENTENCES,
    NEUTRAL_CONTENT_SENTENCES,
    EspeakUnavailableError,
    SynthConfig,
    generate_corpus,
    make_speakers,
    parse_emotion_priors,
    plan_corpus,
    synthesize,
)
from llmfair.data.synth import corpus as corpus_module
from llmfair.data.synth import espeak as espeak_module
from llmfair.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(utterances_per_pair=40)

HEADER_DEU = ("id,dia_id,utt_id,emotion,sentiment,English,German,season,episode,speaker,"
              "English_begin_time,English_end_time,German_begin_time,German_end_time")
HEADER_JPN = ("id,dia_id,utt_id,emotion,sentiment,English,Japanese,season,episode,speaker,"
              "English_begin_time,English_end_time,Japanese_begin_time,Japanese_end_time")
PAIR_FILES = {"ENG_DEU": ("deu", "DEU", HEADER_DEU), "ENG_JPN": ("jpn", "JPN", HEADER_JPN)}
CSV_TO_AUDIO_SPLIT = {"train": "train", "valid": "dev", "test": "test"}
EMOTIONS = ("neutral", "joy", "sadness", "anger", "surprise", "fear", "disgust")
SENTIMENT = {"neutral": "neutral", "joy": "positive", "surprise": "positive", "sadness": "negative",
             "anger": "negative", "fear": "negative", "disgust": "negative"}
TIME = re.compile(r"^\d\d:[0-5]\d:[0-5]\d,\d{3}$")
KEY = ["season", "episode", "English_begin_time", "English_end_time"]


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every corpus file under root, computed here (not taken from corpus.json); the
    record of written files (the same list for every seed) is left out."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != RECORD_FILE}


def read_rows(root: Path) -> pd.DataFrame:
    """All CSV rows of both pairs with pair, split and the paths of their two wav files."""
    frames = []
    for pair, (code, lang_dir, _) in PAIR_FILES.items():
        for csv_split, split in CSV_TO_AUDIO_SPLIT.items():
            frame = pd.read_csv(root / pair / f"{code}_{csv_split}.csv", dtype=str, keep_default_na=False)
            frame["pair"], frame["split"] = pair, split
            frame["target"] = frame["German" if code == "deu" else "Japanese"]
            frame["eng_wav"] = [str(root / pair / "ENG" / split / f"{split}_{i}.wav") for i in frame["id"]]
            frame["tgt_wav"] = [str(root / pair / lang_dir / split / f"{split}_{i}.wav") for i in frame["id"]]
            frames.append(frame)
    rows = pd.concat(frames, ignore_index=True)
    genders = pd.read_csv(root / "speaker_gender.csv", dtype=str)
    return rows.merge(genders, on="speaker", how="left", validate="many_to_one")


def median_f0(path: str) -> float:
    import librosa

    x, sr = sf.read(path, dtype="float32")
    f0 = librosa.yin(x, fmin=60, fmax=400, sr=sr, frame_length=1024, hop_length=256)
    rms = librosa.feature.rms(y=x, frame_length=1024, hop_length=256)[0][: len(f0)]
    return float(np.median(f0[rms > 0.3 * rms.max()]))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "seed0"
    generate_corpus(out, SynthConfig(seed=0, **SMALL))
    return out


@pytest.fixture(scope="module")
def rows(corpus) -> pd.DataFrame:
    return read_rows(corpus)


# ------------------------------------------------------------------------------------ layout
def test_layout_headers_and_wav_format(corpus, rows):
    for pair, (code, _, header) in PAIR_FILES.items():
        for csv_split in CSV_TO_AUDIO_SPLIT:
            first = (corpus / pair / f"{code}_{csv_split}.csv").read_text(encoding="utf-8").split("\n")[0]
            assert first == header
    assert (corpus / "speaker_gender.csv").read_text().split("\n")[0] == "speaker,gender"
    assert (corpus / "ratings.csv").read_text().split("\n")[0] == "pair,id,rater,rater_gender,emotion"

    # exactly the files the rows name, plus the CSVs and the three top-level files
    expected = {"corpus.json", "speaker_gender.csv", "ratings.csv"}
    expected |= {f"{p}/{c}_{s}.csv" for p, (c, _, _) in PAIR_FILES.items() for s in CSV_TO_AUDIO_SPLIT}
    expected |= {Path(p).relative_to(corpus).as_posix() for p in [*rows["eng_wav"], *rows["tgt_wav"]]}
    assert set(tree_hashes(corpus)) == expected

    assert len(rows) == 2 * 40
    for pair, group in rows.groupby("pair"):
        assert group["id"].astype(int).is_unique
    for col in ("id", "dia_id", "utt_id", "season", "episode"):
        assert rows[col].str.fullmatch(r"\d+").all(), col
    assert set(rows["emotion"]) <= set(EMOTIONS)
    assert (rows["sentiment"] == rows["emotion"].map(SENTIMENT)).all()
    for pair, lang in (("ENG_DEU", "German"), ("ENG_JPN", "Japanese")):
        mine = rows[rows["pair"] == pair]
        for col in ("English_begin_time", "English_end_time", f"{lang}_begin_time", f"{lang}_end_time"):
            assert mine[col].str.match(TIME).all(), (pair, col)
        assert (mine[f"{lang}_begin_time"] == mine["English_begin_time"]).all()  # a dubbed line starts with its source
        assert (mine["target"].str.len() > 0).all()
    assert set(rows["gender"]) == {"female", "male"}

    for path in [*rows["eng_wav"], *rows["tgt_wav"]]:
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
        assert 0.3 < info.duration <= 8.0

    manifest = json.loads((corpus / "corpus.json").read_text())
    assert list(manifest) == ["generator", "format_version", "seed", "config", "counts", "files"]
    assert manifest["generator"] == "llmfair.synth" and manifest["format_version"] == 2 and manifest["seed"] == 0
    assert manifest["config"] == dataclasses.asdict(SynthConfig(seed=0, **SMALL))
    on_disk = tree_hashes(corpus)
    on_disk.pop("corpus.json")
    assert manifest["files"] == on_disk


def test_times_match_audio_durations(rows):
    def ms(t: str) -> int:
        h, m, rest = t.split(":")
        s, milli = rest.split(",")
        return ((int(h) * 60 + int(m)) * 60 + int(s)) * 1000 + int(milli)

    for _, r in rows.head(20).iterrows():
        lang = "German" if r["pair"] == "ENG_DEU" else "Japanese"
        eng = ms(r["English_end_time"]) - ms(r["English_begin_time"])
        tgt = ms(r[f"{lang}_end_time"]) - ms(r[f"{lang}_begin_time"])
        assert abs(eng - 1000 * sf.info(r["eng_wav"]).duration) <= 2
        assert abs(tgt - 1000 * sf.info(r["tgt_wav"]).duration) <= 2


def test_the_meld_st_reader_reads_it(corpus, rows):
    from llmfair.data.meld_st import read_meld_st

    examples, report = read_meld_st(corpus, modalities=("audio", "audio_text"), return_report=True)
    n_shared = int(round(0.7 * 40))
    assert report.english_duplicates_merged == n_shared
    assert report.english_split_leaks == 0 and report.english_label_conflicts == 0
    assert report.unknown_gender_speakers == []
    assert len(examples) == 2 * (2 * 40 + (2 * 40 - n_shared))  # two modalities × (targets + unique English)
    assert {e.gender for e in examples} == {"female", "male"}
    assert all(e.annotations for e in examples)


# ------------------------------------------------------------------------------------ determinism
def test_same_seed_same_bytes_in_process_and_across_processes(corpus, tmp_path):
    again = tmp_path / "again"
    generate_corpus(again, SynthConfig(seed=0, **SMALL))
    reference = tree_hashes(corpus)
    assert tree_hashes(again) == reference

    other = tmp_path / "subprocess"
    code = ("import sys; from llmfair.data.synth import SynthConfig, generate_corpus; "
            "generate_corpus(sys.argv[1], SynthConfig(seed=0, utterances_per_pair=40))")
    python = ROOT / ".venv" / "bin" / "python"
    subprocess.run([str(python if python.exists() else sys.executable), "-c", code, str(other)],
                   check=True, cwd=ROOT, capture_output=True, timeout=300)
    assert tree_hashes(other) == reference


def test_different_seed_gives_different_files(corpus, tmp_path):
    out = tmp_path / "seed1"
    generate_corpus(out, SynthConfig(seed=1, **SMALL))
    a, b = tree_hashes(corpus), tree_hashes(out)
    common = set(a) & set(b)
    assert all(a[k] != b[k] for k in common if k.endswith(".csv") or k.endswith(".json"))
    wavs = [k for k in common if k.endswith(".wav")]
    assert wavs and sum(a[k] != b[k] for k in wavs) == len(wavs)


def test_synthesize_is_deterministic_across_call_orders_and_threads():
    a, sr = synthesize("Hello there, how are you?", "en+f2", seed=3)
    synthesize("Guten Tag, wie geht es dir?", "de+m3", rate=300, pitch=10, range_=0, volume=50, seed=9)
    b, _ = synthesize("Hello there, how are you?", "en+f2", seed=3)
    assert sr == 22050 and a.dtype == np.int16 and a.size > sr // 2
    assert np.array_equal(a, b)
    c, _ = synthesize("Hello there, how are you?", "en+f2", seed=4)
    assert not np.array_equal(a, c)  # the seed reaches eSpeak NG's generator

    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        results[i] = synthesize("Hello there, how are you?", "en+f2", seed=3)[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(results[i], a) for i in range(4))


def test_synthesize_refuses_bad_voice_and_parameters():
    with pytest.raises(ConfigError, match="voice 'xx-nonexistent'"):
        synthesize("hello", "xx-nonexistent")
    with pytest.raises(ConfigError, match="rate=20"):
        synthesize("hello", "en", rate=20)
    with pytest.raises(ConfigError, match="pitch"):
        synthesize("hello", "en", pitch=150)


def test_missing_voice_data_is_an_error_not_a_crash(monkeypatch, tmp_path):
    import espeakng_loader

    monkeypatch.setattr(espeakng_loader, "get_data_path", lambda: str(tmp_path))  # exists, no phontab
    with pytest.raises(EspeakUnavailableError, match="phontab"):
        synthesize("hello", "en")
    out = tmp_path / "never"
    with pytest.raises(EspeakUnavailableError):
        generate_corpus(out, SynthConfig(**SMALL))
    assert not out.exists()


# ------------------------------------------------------------------------------------ acoustics
def test_female_voices_are_higher_than_male_voices(rows):
    sample = rows.groupby("gender").head(12)
    f0 = {g: np.median([median_f0(p) for p in group["eng_wav"]]) for g, group in sample.groupby("gender")}
    assert f0["female"] >= 1.4 * f0["male"], f0
    assert 70 < f0["male"] < 160 and 140 < f0["female"] < 300, f0


def test_emotions_differ_in_prosody(rows):
    def stats(emotion: str) -> tuple[float, float]:
        paths = rows.loc[rows["emotion"] == emotion, "eng_wav"].unique()
        assert len(paths) >= 3, emotion
        durations, rms = [], []
        for p in paths:
            x, sr = sf.read(p, dtype="float32")
            durations.append(len(x) / sr)
            rms.append(np.sqrt(np.mean(x ** 2)))
        return float(np.mean(durations)), float(np.mean(rms))

    sad_dur, sad_rms = stats("sadness")
    ang_dur, ang_rms = stats("anger")
    assert sad_dur > 1.5 * ang_dur
    assert ang_rms > 2.0 * sad_rms


# ------------------------------------------------------------------------------------ splits
def test_train_dev_test_speakers_sentences_and_voices_are_disjoint(rows):
    by_split = {s: g for s, g in rows.groupby("split")}
    assert set(by_split) == {"train", "dev", "test"}
    for held_out in ("dev", "test"):
        for col in ("speaker", "English", "target"):
            assert not set(by_split["train"][col]) & set(by_split[held_out][col]), (held_out, col)
    assert not set(by_split["dev"]["speaker"]) & set(by_split["test"]["speaker"])
    assert not set(by_split["dev"]["English"]) & set(by_split["test"]["English"])

    speakers = make_speakers(SynthConfig(seed=0, **SMALL))
    assert len({s.name for s in speakers}) == len(speakers) == 40  # 8 train, 4 dev, 8 test per gender
    variants: dict[tuple[str, str], set[str]] = {}
    for s in speakers:
        variants.setdefault((s.gender, s.split), set()).add(s.variant)
    assert variants[("female", "train")] == {"f1", "f2", "f3", "Annie", "aunty"}
    assert variants[("female", "dev")] == {"f4", "linda"}
    assert variants[("female", "test")] == {"f5", "Alicia", "Andrea", "anika", "belinda", "grandma", "shelby", "steph"}
    for g in ("female", "male"):
        assert not variants[(g, "train")] & (variants[(g, "dev")] | variants[(g, "test")])
        assert not variants[(g, "dev")] & variants[(g, "test")]
    # speakers sharing a variant inside a split are told apart by their formant shift
    dev_f = [s for s in speakers if s.gender == "female" and s.split == "dev"]
    assert dev_f[0].variant == dev_f[2].variant
    assert abs(np.log(dev_f[0].formant_shift / dev_f[2].formant_shift)) >= 0.02


def test_shared_english_utterances_are_consistent_across_pairs(rows):
    deu, jpn = rows[rows["pair"] == "ENG_DEU"], rows[rows["pair"] == "ENG_JPN"]
    for pair_rows in (deu, jpn):
        assert not pair_rows.duplicated(KEY).any()
    both = deu.merge(jpn, on=KEY, suffixes=("_d", "_j"))
    assert len(both) == round(0.7 * 40)
    for col in ("English", "speaker", "emotion", "split"):
        assert (both[f"{col}_d"] == both[f"{col}_j"]).all(), col
    for a, b in zip(both["eng_wav_d"], both["eng_wav_j"]):
        assert Path(a).read_bytes() == Path(b).read_bytes()
    # non-shared utterances have English times nobody else has
    assert not rows.duplicated(KEY + ["pair"]).any()
    assert rows.drop_duplicates(KEY).shape[0] == 2 * 40 - len(both)


def test_dev_and_test_are_gender_balanced_per_emotion(rows):
    held = rows[rows["split"] != "train"]
    counts = held.groupby(["pair", "split", "emotion", "gender"]).size().unstack(fill_value=0)
    assert (abs(counts["female"] - counts["male"]) <= 1).all()


# ------------------------------------------------------------------------------------ imbalance
def test_train_imbalance_ratio_gives_one_to_r_in_train_only(tmp_path):
    config = SynthConfig(seed=0, utterances_per_pair=120, train_imbalance_ratio=5.0)
    out = tmp_path / "imbalanced"
    generate_corpus(out, config)
    got = read_rows(out)
    balanced_plan = plan_corpus(dataclasses.replace(config, train_imbalance_ratio=None))
    majority = {"anger": "male", "disgust": "male", "neutral": "male",
                "fear": "female", "joy": "female", "sadness": "female", "surprise": "female"}
    for pair in PAIR_FILES:
        planned = {r.id: r.source for r in balanced_plan.rows[pair]}
        mine = got[got["pair"] == pair]
        train = mine[mine["split"] == "train"]
        kept_minority = 0
        for emotion in EMOTIONS:
            sub = train[train["emotion"] == emotion]
            major = int((sub["gender"] == majority[emotion]).sum())
            minor = int((sub["gender"] != majority[emotion]).sum())
            planned_major = sum(1 for s in planned.values() if s.split == "train" and s.emotion == emotion
                                and s.speaker.gender == majority[emotion])
            assert major == planned_major  # every majority row is kept
            assert minor == major // 5, (pair, emotion, major, minor)
            kept_minority += minor
        assert kept_minority > 0
        # dev/test untouched: exactly the balanced plan's rows
        for split in ("dev", "test"):
            want = sorted(i for i, s in planned.items() if s.split == split)
            assert sorted(mine.loc[mine["split"] == split, "id"].astype(int)) == want
        # the imbalanced corpus is a subset of the balanced one: same ids, same content
        for _, r in mine.iterrows():
            source = planned[int(r["id"])]
            assert (r["English"], r["speaker"], r["emotion"]) == (
                source.sentence.english, source.speaker.name, source.emotion)
    # ...and the same audio bytes as the balanced corpus would have (a kept train row and a dev row)
    deu = got[got["pair"] == "ENG_DEU"]
    planned = {r.id: r.source for r in balanced_plan.rows["ENG_DEU"]}
    for split in ("train", "dev"):
        row = deu[deu["split"] == split].iloc[0]
        samples, sr = corpus_module.speak(planned[int(row["id"])], "deu", config.seed)
        assert Path(row["tgt_wav"]).read_bytes() == corpus_module.wav_bytes(samples, sr)


# ------------------------------------------------------------------------------------ ratings
def _rating_table(root: Path) -> pd.DataFrame:
    ratings = pd.read_csv(root / "ratings.csv", dtype=str)
    rows = read_rows(root)[["pair", "id", "emotion", "gender"]].rename(
        columns={"emotion": "true", "gender": "speaker_gender"})
    return ratings.merge(rows, on=["pair", "id"], how="left", validate="many_to_one")


def test_ratings_cover_every_row_and_rater_bias_shows(tmp_path):
    # 100 rows: with 40, seed 0 has only 19 male ratings of women's anger (11 of them sadness, where
    # 0.9 is expected) since the default speaker counts and split fractions changed
    base = dict(seed=0, utterances_per_pair=100, emotion_priors="anger=1,disgust=1")
    outs = {}
    for bias in (0.0, 0.9):
        outs[bias] = tmp_path / f"bias{bias}"
        generate_corpus(outs[bias], SynthConfig(rater_bias=bias, **base))
    # the rater knobs never change the audio
    a, b = tree_hashes(outs[0.0]), tree_hashes(outs[0.9])
    assert {k: v for k, v in a.items() if k.endswith(".wav")} == {k: v for k, v in b.items() if k.endswith(".wav")}

    rates = {}
    for bias, out in outs.items():
        table = _rating_table(out)
        assert table["true"].notna().all()
        per_row = table.groupby(["pair", "id"]).agg(n=("rater", "size"), distinct=("rater", "nunique"))
        assert (per_row["n"] == 3).all() and (per_row["distinct"] == 3).all()
        assert len(per_row) == 2 * 100
        assert set(table["rater_gender"]) == {"female", "male"} and table["rater"].nunique() == 6
        women_anger = table[(table["speaker_gender"] == "female") & (table["true"] == "anger")]
        men_anger = table[(table["speaker_gender"] == "male") & (table["true"] == "anger")]
        rate = lambda t, g: float((t.loc[t["rater_gender"] == g, "emotion"] == "sadness").mean())
        rates[bias] = {"female_speaker": {g: rate(women_anger, g) for g in ("female", "male")},
                       "male_speaker": {g: rate(men_anger, g) for g in ("female", "male")}}
        # the accuracy knob: female raters (never biased) report the true emotion ~85 % of the time
        by_women = table[table["rater_gender"] == "female"]
        assert 0.72 <= float((by_women["emotion"] == by_women["true"]).mean()) <= 0.96
    # without bias men and women hear women's anger alike; with 0.9 men mostly hear sadness
    assert abs(rates[0.0]["female_speaker"]["male"] - rates[0.0]["female_speaker"]["female"]) < 0.15
    assert rates[0.9]["female_speaker"]["male"] >= 0.75
    assert rates[0.9]["female_speaker"]["female"] < 0.15
    assert rates[0.9]["male_speaker"]["male"] < 0.15  # men's anger is not affected


def test_rating_probabilities_match_the_documented_model():
    from llmfair.data.synth import simulate_ratings

    config = SynthConfig(seed=0, utterances_per_pair=3000, emotion_priors="anger=1", rater_bias=0.5,
                         rater_accuracy=0.7, raters_per_utterance=6)
    plan = plan_corpus(config)
    female = [s.index for s in plan.sources if s.speaker.gender == "female"]
    labels = [(g, e) for i in female for _, g, e in plan.ratings[i]]
    male_sad = np.mean([e == "sadness" for g, e in labels if g == "male"])
    female_sad = np.mean([e == "sadness" for g, e in labels if g == "female"])
    assert male_sad == pytest.approx(0.5 + 0.5 * 0.3 / 6, abs=0.02)
    assert female_sad == pytest.approx(0.3 / 6, abs=0.01)
    _, none = simulate_ratings(plan.sources[:5], dataclasses.replace(config, raters_per_utterance=0))
    assert all(v == [] for v in none.values())


# ------------------------------------------------------------------------------------ refusals
def test_existing_corpus_same_config_is_a_noop(corpus):
    before = {p: p.stat().st_mtime_ns for p in corpus.rglob("*")}
    manifest = generate_corpus(corpus, SynthConfig(seed=0, **SMALL))
    assert manifest == json.loads((corpus / "corpus.json").read_text())
    assert {p: p.stat().st_mtime_ns for p in corpus.rglob("*")} == before


def test_existing_different_corpus_is_refused_then_replaced_with_overwrite(corpus, tmp_path):
    with pytest.raises(DataError) as err:
        generate_corpus(corpus, SynthConfig(seed=1, **SMALL))
    assert str(corpus) in str(err.value) and "seed 0, not 1" in str(err.value) and "overwrite=True" in str(err.value)
    with pytest.raises(DataError, match=r"utterances_per_pair=40, not 50"):
        generate_corpus(corpus, SynthConfig(seed=0, utterances_per_pair=50))

    copy = tmp_path / "copy"
    shutil.copytree(corpus, copy)
    manifest = generate_corpus(copy, SynthConfig(seed=0, utterances_per_pair=12), overwrite=True)
    assert manifest["config"]["utterances_per_pair"] == 12
    assert json.loads((copy / "corpus.json").read_text()) == manifest
    assert len(pd.read_csv(copy / "ENG_DEU" / "deu_train.csv")) < 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]  # no temporary leftovers

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    for overwrite in (False, True):  # a user's file is never replaced, and --overwrite is not the advice
        with pytest.raises(DataError, match=r"holds files llmfair did not write \(.*notes.txt\); llmfair never "
                                            r"replaces them: choose a new or empty directory") as err:
            generate_corpus(other, SynthConfig(**SMALL), overwrite=overwrite)
        assert "--overwrite" not in str(err.value)
        assert (other / "notes.txt").read_text() == "mine"

    (copy / "notes.txt").write_text("mine")  # a user's file beside an llmfair corpus stops a replacement too
    with pytest.raises(DataError, match="notes.txt"):
        generate_corpus(copy, SynthConfig(seed=1, utterances_per_pair=12), overwrite=True)
    assert (copy / "notes.txt").read_text() == "mine"


def test_failure_mid_generation_leaves_nothing_behind(monkeypatch, corpus, tmp_path):
    real = espeak_module.synthesize
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise RuntimeError("synthesiser broke")
        return real(*args, **kwargs)

    monkeypatch.setattr(espeak_module, "synthesize", flaky)
    parent = tmp_path / "parent"
    parent.mkdir()
    with pytest.raises(RuntimeError, match="synthesiser broke"):
        generate_corpus(parent / "out", SynthConfig(**SMALL))
    assert list(parent.iterdir()) == []

    # replacing an existing corpus: the old one survives a failure intact
    copy = parent / "copy"
    shutil.copytree(corpus, copy)
    before = tree_hashes(copy)
    calls["n"] = 0
    with pytest.raises(RuntimeError):
        generate_corpus(copy, SynthConfig(seed=5, **SMALL), overwrite=True)
    assert tree_hashes(copy) == before
    assert [p.name for p in parent.iterdir()] == ["copy"]


# ------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("knobs, field_name", [
    ({"train_speakers_per_gender": -1}, "train_speakers_per_gender"),
    ({"dev_speakers_per_gender": 0}, "dev_speakers_per_gender"),
    ({"test_speakers_per_gender": 99}, "test_speakers_per_gender"),
    ({"emotion_priors": "neutral=0.5,happy=0.5"}, "emotion_priors"),
    ({"emotion_priors": "neutral=-1"}, "emotion_priors"),
    ({"emotion_priors": "neutral=0,joy=0"}, "emotion_priors"),
    ({"emotion_priors": "joy=1,joy=2"}, "emotion_priors"),
    ({"emotion_priors": "lots"}, "emotion_priors"),
    ({"utterances_per_pair": 0}, "utterances_per_pair"),
    ({"shared_fraction": 1.5}, "shared_fraction"),
    ({"dev_fraction": 0.6, "test_fraction": 0.5}, "test_fraction"),
    ({"neutral_text_fraction": -0.1}, "neutral_text_fraction"),
    ({"train_imbalance_ratio": 0.5}, "train_imbalance_ratio"),
    ({"raters_per_utterance": 7}, "raters_per_utterance"),
    ({"rater_accuracy": 1.2}, "rater_accuracy"),
    ({"rater_bias": -0.5}, "rater_bias"),
    ({"seed": -3}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"prosody_strength": float("nan")}, "prosody_strength"),
])
def test_bad_knobs_raise_config_error_naming_the_field(knobs, field_name):
    with pytest.raises(ConfigError, match=field_name):
        SynthConfig(**knobs)
    config = SynthConfig()
    for key, value in knobs.items():
        setattr(config, key, value)
    with pytest.raises(ConfigError, match=field_name):
        config.validate()


def test_numeric_spellings_give_one_config():
    a = SynthConfig(train_imbalance_ratio=5, rater_bias=0, seed=np.int64(2))
    b = SynthConfig(train_imbalance_ratio=5.0, rater_bias=0.0, seed=2)
    assert json.dumps(dataclasses.asdict(a)) == json.dumps(dataclasses.asdict(b))


def test_emotion_priors_parse_to_normalised_meld_probabilities():
    assert parse_emotion_priors("uniform") == {e: pytest.approx(1 / 7) for e in EMOTIONS}
    meld = parse_emotion_priors("meld")
    assert list(meld) == list(EMOTIONS) and sum(meld.values()) == pytest.approx(1.0)
    assert meld["neutral"] == pytest.approx(0.30) and meld["joy"] == pytest.approx(0.16)
    got = parse_emotion_priors(" Neutral=3, anger=1 ")
    assert got["neutral"] == pytest.approx(0.75) and got["anger"] == pytest.approx(0.25) and got["joy"] == 0.0


def test_config_fields_feed_the_command_line():
    from llmfair.options import add_dataclass_arguments, dataclass_from_args

    hints = typing.get_type_hints(SynthConfig)
    allowed = {int, float, str, bool, typing.Optional[float], typing.Optional[int]}
    for f in dataclasses.fields(SynthConfig):
        assert hints[f.name] in allowed, f.name
        assert f.metadata.get("help"), f.name
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, SynthConfig)
    args = parser.parse_args(["--seed", "3", "--train-imbalance-ratio", "5", "--emotion-priors", "uniform",
                              "--utterances-per-pair", "60"])
    config = dataclass_from_args(SynthConfig, args)
    assert (config.seed, config.train_imbalance_ratio, config.emotion_priors, config.utterances_per_pair) == (
        3, 5.0, "uniform", 60)


# ------------------------------------------------------------------------------------ sentences
def test_sentence_pools_are_large_enough_and_japanese_is_kana_only():
    assert list(EMOTION_SENTENCES) == list(EMOTIONS)
    assert all(len(pool) >= 8 for pool in EMOTION_SENTENCES.values())
    assert len(NEUTRAL_CONTENT_SENTENCES) >= 16
    everything = [s for pool in EMOTION_SENTENCES.values() for s in pool] + list(NEUTRAL_CONTENT_SENTENCES)
    assert len({s.english for s in everything}) == len(everything)
    kanji = re.compile(r"[\u4e00-\u9fff\u3400-\u4dbf]")
    for s in everything:
        assert s.english and s.german and s.japanese
        assert not kanji.search(s.japanese), s.japanese
        assert re.search(r"[\u3040-\u30ff]", s.japanese), s.japanese


def test_plan_follows_the_priors_and_the_split_fractions():
    config = SynthConfig(seed=2, utterances_per_pair=1000)
    plan = plan_corpus(config)
    for pair, rows in plan.rows.items():
        assert len(rows) == 1000
        splits = pd.Series([r.source.split for r in rows]).value_counts()
        assert splits["dev"] == pytest.approx(1000 * config.dev_fraction, abs=2)
        assert splits["test"] == pytest.approx(1000 * config.test_fraction, abs=2)
        emotions = pd.Series([r.source.emotion for r in rows]).value_counts(normalize=True)
        for e, p in parse_emotion_priors("meld").items():
            assert emotions[e] == pytest.approx(p, abs=0.01)
        content = np.mean([r.source.sentence.id.startswith("content-") for r in rows])
        assert content == pytest.approx(0.5, abs=0.05)
    assert len(plan.sources) == 2 * 1000 - 700


# ------------------------------------------------------------------------------------ recording sessions
def test_recording_sessions_colour_the_audio_and_tie_the_raters(tmp_path):
    """With recording_sessions=2 every clip goes through its session's channel — the rows, times,
    speakers and clip lengths are those of the corpus without sessions, the bytes are not — the
    session is written beside the rows, each session is rated by one gender only, and the acoustic
    features tell the sessions apart (logistic regression, cross-validated over utterances), which
    they cannot on the clean clips of the same utterances (corpus seeds 0–2: 0.98–1.0 against
    0.36–0.54)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_score

    from llmfair.data.meld_st import read_meld_st
    from llmfair.ssl import build_feature_extractor, extract_features

    base = dict(seed=0, utterances_per_pair=30)
    clean, coloured = tmp_path / "clean", tmp_path / "sessions"
    generate_corpus(clean, SynthConfig(**base))
    manifest = generate_corpus(coloured, SynthConfig(recording_sessions=2, **base))
    a, b = tree_hashes(clean), tree_hashes(coloured)
    assert set(b) - set(a) == {"recording_sessions.csv"}
    for rel in a:
        if rel.endswith(".csv") and rel != "ratings.csv":
            assert a[rel] == b[rel], rel  # rows, times, speakers: unchanged
    wavs = [rel for rel in a if rel.endswith(".wav")]
    assert all(a[rel] != b[rel] for rel in wavs)
    assert all(sf.info(clean / rel).frames == sf.info(coloured / rel).frames for rel in wavs[:40])

    sessions = manifest["sessions"]
    assert [s["rater_gender"] for s in sessions] == ["female", "male"]
    for key, (lo, hi) in corpus_module.SESSION_CHANNEL_RANGES.items():
        values = sorted(s[key] for s in sessions)
        assert lo <= values[0] < values[1] <= hi and (values[1] - values[0]) > 0.1 * (hi - lo), key
    table = pd.read_csv(coloured / "recording_sessions.csv", dtype=str)
    rows = read_rows(coloured).merge(table, on=["pair", "id"], validate="one_to_one")
    assert len(rows) == len(table) and set(rows["session"]) == {"0", "1"}
    # balanced: inside every split × emotion × gender the sessions differ by at most one utterance
    per_cell = rows.drop_duplicates(KEY).groupby(["split", "emotion", "gender", "session"]).size().unstack(fill_value=0)
    assert (per_cell.max(axis=1) - per_cell.min(axis=1)).max() <= 1
    ratings = pd.read_csv(coloured / "ratings.csv", dtype=str).merge(table, on=["pair", "id"], validate="many_to_one")
    panel = ratings["session"].map({"0": "female", "1": "male"})
    assert (ratings["rater_gender"] == panel).all()
    assert (ratings.groupby(["pair", "id"])["rater"].nunique() == 3).all()

    session_of = dict(zip(table["pair"] + "-" + table["id"], table["session"].astype(int)))
    accuracy = {}
    for name, root in (("clean", clean), ("sessions", coloured)):
        examples = read_meld_st(root)
        x = extract_features(build_feature_extractor("acoustic"), examples, tmp_path / f"cache_{name}", progress=False)
        x = (x - x.mean(0)) / (x.std(0) + 1e-6)
        y = np.array([session_of[e.id.rsplit("-", 1)[0]] for e in examples])
        # folds by source utterance: its renderings in two languages share prosody and session
        accuracy[name] = cross_val_score(LogisticRegression(max_iter=2000), x, y, cv=GroupKFold(5),
                                         groups=[e.utterance_id for e in examples]).mean()
    assert accuracy["sessions"] >= 0.95 and accuracy["clean"] <= 0.65, accuracy  # measured 1.0 and 0.50


def test_session_panels_and_the_bias_on_all_speakers_follow_the_documented_model():
    """Plans only (no audio): with rater_bias_speakers=all men hear anger as sadness in men's speech
    too, at the documented rate; with sessions every rating comes from the session's panel, the
    sessions are balanced, and nothing else in the plan moves."""
    config = SynthConfig(seed=0, utterances_per_pair=3000, emotion_priors="anger=1", rater_bias=0.5,
                         rater_accuracy=0.7, raters_per_utterance=3, rater_bias_speakers="all")
    plan = plan_corpus(config)
    by_gender = {g: [e for s in plan.sources if s.speaker.gender == g for _, rg, e in plan.ratings[s.index] if rg == "male"]
                 for g in ("female", "male")}
    for gender, labels in by_gender.items():
        assert np.mean([e == "sadness" for e in labels]) == pytest.approx(0.5 + 0.5 * 0.3 / 6, abs=0.02), gender
    female_raters = [e for s in plan.sources for _, rg, e in plan.ratings[s.index] if rg == "female"]
    assert np.mean([e == "sadness" for e in female_raters]) == pytest.approx(0.3 / 6, abs=0.01)
    default = plan_corpus(dataclasses.replace(config, rater_bias_speakers="female"))
    men_on_men = [e for s in default.sources if s.speaker.gender == "male"
                  for _, rg, e in default.ratings[s.index] if rg == "male"]
    assert np.mean([e == "sadness" for e in men_on_men]) == pytest.approx(0.3 / 6, abs=0.01)
    assert not plan.sessions and all(s.session == -1 for s in plan.sources)

    small = dataclasses.replace(config, utterances_per_pair=200)
    with_sessions = plan_corpus(dataclasses.replace(small, recording_sessions=4))
    assert [s.rater_gender for s in with_sessions.sessions] == ["female", "male", "female", "male"]
    for s in with_sessions.sources:
        assert {rg for _, rg, _ in with_sessions.ratings[s.index]} == {with_sessions.sessions[s.session].rater_gender}
    counts = np.bincount([s.session for s in with_sessions.sources if s.split == "train"], minlength=4)
    assert counts.max() - counts.min() <= 1
    # the sessions never move the rest of the plan
    without = plan_corpus(small)
    assert [(s.emotion, s.speaker.name, s.sentence.id, s.prosody) for s in without.sources] == [
        (s.emotion, s.speaker.name, s.sentence.id, s.prosody) for s in with_sessions.sources]


@pytest.mark.parametrize("knobs, field_name", [
    ({"recording_sessions": 1}, "recording_sessions"),
    ({"recording_sessions": 99}, "recording_sessions"),
    ({"recording_sessions": 2.5}, "recording_sessions"),
    ({"rater_bias_speakers": "men"}, "rater_bias_speakers"),
    ({"rater_bias_speakers": 1}, "rater_bias_speakers"),
    ({"recording_sessions": 2, "raters_per_utterance": 4}, "raters_per_utterance"),
])
def test_bad_session_knobs_raise_config_error_naming_the_field(knobs, field_name):
    with pytest.raises(ConfigError, match=field_name):
        SynthConfig(**knobs)


def test_a_corpus_written_before_the_session_knobs_is_current(corpus):
    """corpus.json of a corpus written before rater_bias_speakers / recording_sessions existed lacks
    them: it describes the corpus with them at their defaults (whose files are unchanged)."""
    from llmfair.data.synth import corpus_state

    manifest = json.loads((corpus / "corpus.json").read_text())
    older = json.loads(json.dumps(manifest))
    for key in ("rater_bias_speakers", "recording_sessions"):
        del older["config"][key]
    backup = (corpus / "corpus.json").read_bytes()
    try:
        (corpus / "corpus.json").write_text(json.dumps(older))
        assert corpus_state(corpus, SynthConfig(seed=0, **SMALL)).kind == "current"
        assert "recording_sessions=0, not 2" in corpus_state(
            corpus, SynthConfig(seed=0, recording_sessions=2, **SMALL)).detail
    finally:
        (corpus / "corpus.json").write_bytes(backup)
