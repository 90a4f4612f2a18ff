"""MELD-ST reader on a hand-made directory: de-duplication, genders, modalities, every bad input."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from llmfair.data.example import examples_to_dataset
from llmfair.data.labels import MELD
from llmfair.data.meld_st import read_meld_st
from llmfair.errors import DataError
from tests import _meld_fixture as fx


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    return fx.build(tmp_path / "meld")


def test_one_example_per_utterance_language_modality(corpus: Path) -> None:
    examples, report = read_meld_st(corpus, modalities=("audio", "audio_text"), return_report=True)
    # 4 German + 4 Japanese + 7 English (8 English rows, one shared by both pairs)
    assert report.english_duplicates_merged == 1
    by_lang = {lang: sum(1 for e in examples if e.language == lang and e.modality == "audio") for lang in ("eng", "deu", "jpn")}
    assert by_lang == {"eng": 7, "deu": 4, "jpn": 4}
    assert len(examples) == 2 * 15
    assert {e.modality for e in examples} == {"audio", "audio_text"}
    ids = [(e.id, e.modality) for e in examples]
    assert len(set(ids)) == len(ids)


def test_dedup_keeps_first_pair_and_links_renderings(corpus: Path) -> None:
    examples = read_meld_st(corpus)
    eng = [e for e in examples if e.language == "eng" and e.text == "Great news!"]
    assert len(eng) == 1 and eng[0].meta["pair"] == "ENG_DEU" and eng[0].id == "ENG_DEU-0-eng"
    assert eng[0].audio.endswith("ENG_DEU/ENG/train/train_0.wav")
    # the English, German and Japanese renderings share one utterance id
    linked = {e.language for e in examples if e.utterance_id == eng[0].utterance_id}
    assert linked == {"eng", "deu", "jpn"}


def test_fields_text_and_labels(corpus: Path) -> None:
    examples = {(e.id, e.modality): e for e in read_meld_st(corpus)}
    de = examples[("ENG_DEU-1-deu", "audio")]
    assert de.text == "Hör auf." and de.emotion == MELD.index("anger") and de.gender == "male"
    assert de.split == "train" and de.audio.endswith("ENG_DEU/DEU/train/train_1.wav")
    ja = examples[("ENG_JPN-12-jpn", "audio")]
    assert ja.split == "dev" and ja.text == "なに" and ja.emotion == MELD.index("surprise")


def test_gender_table_default_corpus_and_user(corpus: Path) -> None:
    examples = read_meld_st(corpus, languages=("deu",))
    genders = {e.speaker: e.gender for e in examples}
    assert genders == {"Monica": "female", "Ross": "male", "Stranger": "unknown", "Rachel": "female"}
    (corpus / "speaker_gender.csv").write_text("speaker,gender\nStranger,F\n", encoding="utf-8")
    assert {e.speaker: e.gender for e in read_meld_st(corpus, languages=("deu",))}["Stranger"] == "female"
    user = {"Stranger": "male", "  monica ": "male"}  # user table wins, names matched case/space-insensitively
    genders = {e.speaker: e.gender for e in read_meld_st(corpus, languages=("deu",), gender_table=user)}
    assert genders["Stranger"] == "male" and genders["Monica"] == "male"


def test_languages_and_splits_subset(corpus: Path) -> None:
    examples = read_meld_st(corpus, splits=("test",), languages=("jpn", "eng"))
    assert {(e.language, e.split) for e in examples} == {("jpn", "test"), ("eng", "test")}
    assert len(examples) == 3  # jpn 13, eng 3 (ENG_DEU) and eng 13 (ENG_JPN)


def test_dataset_without_decoding(corpus: Path) -> None:
    ds = examples_to_dataset(read_meld_st(corpus))
    assert ds.num_rows == 15 and isinstance(ds[0]["audio"], str)
    assert set(ds.column_names) >= {"id", "audio", "text", "language", "modality", "emotion", "gender", "speaker", "split"}


def test_ratings_attached(corpus: Path) -> None:
    (corpus / "ratings.csv").write_text(
        "pair,id,rater,rater_gender,emotion\nENG_DEU,1,r1,female,anger\nENG_DEU,1,r2,M,sadness\n", encoding="utf-8")
    ex = {e.id: e for e in read_meld_st(corpus, languages=("deu",))}["ENG_DEU-1-deu"]
    assert [(a.rater, a.rater_gender, a.emotion) for a in ex.annotations] == [
        ("r1", "female", MELD.index("anger")), ("r2", "male", MELD.index("sadness"))]


def test_split_leak_is_counted(tmp_path: Path, caplog) -> None:
    rows = list(fx.ROWS)
    rows[4] = ("ENG_JPN", "test") + rows[4][2:]  # shared English utterance: train in DEU, test in JPN
    root = fx.build(tmp_path / "leak", rows)
    with caplog.at_level(logging.WARNING):
        _, report = read_meld_st(root, return_report=True)
    assert report.english_split_leaks == 1 and "different splits" in caplog.text


# ---------------------------------------------------------------------------------- bad input
def test_missing_columns_named(corpus: Path) -> None:
    path = corpus / "ENG_DEU" / "deu_train.csv"
    text = path.read_text(encoding="utf-8").replace("speaker,", "", 1)
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=r"deu_train\.csv is missing column\(s\) \['speaker'\]"):
        read_meld_st(corpus)


def test_unknown_emotion_named(corpus: Path) -> None:
    path = corpus / "ENG_DEU" / "deu_test.csv"
    path.write_text(path.read_text(encoding="utf-8").replace(",neutral,neutral,", ",bored,neutral,"), encoding="utf-8")
    with pytest.raises(DataError, match=r"unknown emotion label 'bored' in .*deu_test\.csv, id 3"):
        read_meld_st(corpus)


def test_missing_audio_listed_with_count(corpus: Path) -> None:
    for name in ("train_0.wav", "train_1.wav"):
        (corpus / "ENG_DEU" / "DEU" / "train" / name).unlink()
    with pytest.raises(DataError, match=r"2 of 15 MELD-ST audio .* files are missing: .*DEU/train/train_0\.wav"):
        read_meld_st(corpus)
    assert len(read_meld_st(corpus, check_audio=False)) == 15


def test_template_escaping_root_refused(corpus: Path) -> None:
    with pytest.raises(DataError, match="escapes the data root"):
        read_meld_st(corpus, path_template="../{pair}/{id}.wav", check_audio=False)
    with pytest.raises(DataError, match="must be relative"):
        read_meld_st(corpus, path_template="/tmp/{id}.wav", check_audio=False)
    with pytest.raises(DataError, match="unknown placeholder"):
        read_meld_st(corpus, path_template="{pair}/{speaker}_{id}.wav", check_audio=False)


def test_id_from_csv_cannot_escape(corpus: Path) -> None:
    path = corpus / "ENG_DEU" / "deu_test.csv"
    path.write_text(path.read_text(encoding="utf-8").replace("\n3,0,3,", "\n../../etc,0,3,"), encoding="utf-8")
    with pytest.raises(DataError, match=r"'\.\./\.\./etc' .* not a plain file-name part"):
        read_meld_st(corpus, check_audio=False)


def test_non_utf8_csv(corpus: Path) -> None:
    path = corpus / "ENG_DEU" / "deu_train.csv"
    path.write_bytes(path.read_text(encoding="utf-8").encode("latin-1"))
    with pytest.raises(DataError, match=r"deu_train\.csv is not UTF-8 .* line 3"):
        read_meld_st(corpus)


def test_not_a_meld_directory_and_missing_pair(tmp_path: Path, corpus: Path) -> None:
    with pytest.raises(DataError, match="neither ENG_DEU"):
        read_meld_st(tmp_path)
    import shutil

    shutil.rmtree(corpus / "ENG_JPN")
    with pytest.raises(DataError, match="language 'jpn' needs"):
        read_meld_st(corpus)
    assert {e.language for e in read_meld_st(corpus, languages=("eng", "deu"))} == {"eng", "deu"}
