"""MELD-ST reader: ``ENG_DEU/deu_{train,valid,test}.csv`` and ``ENG_JPN/jpn_...`` plus audio.

One Example per (utterance, language, modality) requested. The built-in corpus is written in this
same layout, so this reader is the path every demo and test exercises.

**English de-duplication rule.** The English source audio appears in both pairs. An English
utterance is identified by ``(season, episode, English_begin_time, English_end_time)`` — where it
sits in the show, independent of each pair's own ids. The first occurrence wins, pairs in the
order ENG_DEU, ENG_JPN and splits train, dev, test; its audio path comes from that pair. Rows whose
English times are empty cannot be matched and are kept per pair (counted in the report). A key seen
in different splits of the two pairs is a leak between splits: it is counted and logged.

**Audio** comes through a path template relative to the corpus root, with placeholders ``{pair}``
(ENG_DEU), ``{split}`` (train/dev/test), ``{csv_split}`` (train/valid/test), ``{language}``
(eng/deu/jpn), ``{LANGUAGE}`` (ENG/DEU/JPN) and ``{id}``. The default,
``{pair}/{LANGUAGE}/{split}/{split}_{id}.wav``, is the layout of the audio release as prepared by
nkululeko and of the built-in corpus. Paths that would leave the root are refused.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from llmfair.data._csv import read_csv_checked
from llmfair.data.audio import check_audio_files
from llmfair.data.example import Example, RaterAnnotation
from llmfair.data.labels import LANGUAGES, MELD, MODALITIES, normalise_gender
from llmfair.data.paths import PathTemplate
from llmfair.data.speaker_gender import SpeakerGenderTable, resolve_gender_table
from llmfair.errors import DataError

logger = logging.getLogger(__name__)

PAIRS: dict[str, tuple[str, str]] = {"ENG_DEU": ("deu", "German"), "ENG_JPN": ("jpn", "Japanese")}
"""pair folder → (target language code, its column-name prefix)."""

SPLITS: dict[str, str] = {"train": "train", "dev": "valid", "test": "test"}
"""llmfair split name → MELD-ST CSV split name."""

DEFAULT_PATH_TEMPLATE = "{pair}/{LANGUAGE}/{split}/{split}_{id}.wav"
TEMPLATE_FIELDS = ("pair", "split", "csv_split", "language", "LANGUAGE", "id")
RATINGS_FILE = "ratings.csv"


def csv_columns(pair: str) -> list[str]:
    """The MELD-ST CSV columns of ``pair``, in the release's order."""
    lang = PAIRS[pair][1]
    return [
        "id", "dia_id", "utt_id", "emotion", "sentiment", "English", lang, "season", "episode",
        "speaker", "English_begin_time", "English_end_time", f"{lang}_begin_time", f"{lang}_end_time",
    ]


def csv_path(root: Path, pair: str, split: str) -> Path:
    return root / pair / f"{PAIRS[pair][0]}_{SPLITS[split]}.csv"


@dataclass
class MeldStReport:
    """What the reader did: rows read, English duplicates merged, leaks, unknown genders."""

    rows: dict[str, int] = field(default_factory=dict)
    english_duplicates_merged: int = 0
    english_without_times: int = 0
    english_split_leaks: int = 0
    english_label_conflicts: int = 0
    unknown_gender_speakers: list[str] = field(default_factory=list)
    examples: int = 0


def _validate_split_names(splits: Sequence[str]) -> None:
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise DataError(f"unknown split(s) {bad}; MELD-ST splits are {list(SPLITS)} (CSV 'valid' is 'dev')")


def _read_ratings(root: Path) -> dict[tuple[str, str], tuple[RaterAnnotation, ...]]:
    path = root / RATINGS_FILE
    if not path.is_file():
        return {}
    frame = read_csv_checked(path, ["pair", "id", "rater", "rater_gender", "emotion"])
    out: dict[tuple[str, str], list[RaterAnnotation]] = {}
    for rec in frame.itertuples(index=False):
        where = f"{path}, id {rec.id}"
        ann = RaterAnnotation(
            rater=rec.rater,
            rater_gender=normalise_gender(rec.rater_gender, where=where),
            emotion=MELD.index(rec.emotion, where=where),
        )
        out.setdefault((rec.pair, rec.id), []).append(ann)
    return {k: tuple(v) for k, v in out.items()}


def read_meld_st(
    root: str | Path,
    *,
    splits: Sequence[str] = ("train", "dev", "test"),
    languages: Sequence[str] = LANGUAGES,
    modalities: Sequence[str] = ("audio",),
    path_template: str = DEFAULT_PATH_TEMPLATE,
    gender_table: SpeakerGenderTable | Mapping[str, str] | str | Path | None = None,
    check_audio: bool = True,
    return_report: bool = False,
) -> list[Example] | tuple[list[Example], MeldStReport]:
    """Read a MELD-ST directory into Examples (audio stays a path; nothing is decoded).

    Args:
        root: the directory holding ``ENG_DEU/`` and/or ``ENG_JPN/``.
        splits: any of ``train``, ``dev`` (the CSV's ``valid``), ``test``.
        languages: any of ``eng``, ``deu``, ``jpn``; ``deu`` needs ENG_DEU, ``jpn`` needs ENG_JPN,
            ``eng`` uses whichever pairs exist.
        modalities: ``audio`` and/or ``audio_text``; each utterance yields one Example per modality.
        path_template: where the audio of a row lives (see module docstring).
        gender_table: extra/overriding speaker → gender entries (CSV path, mapping or table);
            applied on top of the packaged MELD table and ``<root>/speaker_gender.csv``.
        check_audio: fail (listing the first few and the count) when audio files are missing.
        return_report: also return a :class:`MeldStReport`.
    """
    root = Path(root)
    _check_request(root, splits, languages, modalities)
    template = PathTemplate(path_template, TEMPLATE_FIELDS)
    present = _present_pairs(root, languages)
    genders = resolve_gender_table(gender_table, root)
    ratings = _read_ratings(root)
    report = MeldStReport()
    rendered = _rendered_rows(root, present, splits, languages, report)
    if report.english_split_leaks:
        logger.warning(
            "%d English utterances appear in different splits of ENG_DEU and ENG_JPN; each is kept "
            "in the split of its first occurrence (ENG_DEU first)", report.english_split_leaks)
    if report.english_label_conflicts:
        logger.warning("%d duplicated English utterances disagree on emotion or speaker between pairs; "
                       "the first occurrence's labels are used", report.english_label_conflicts)

    examples: list[Example] = []
    audio_paths: list[str] = []
    unknown: set[str] = set()
    for r in rendered:
        values = {"pair": r["pair"], "split": r["split"], "csv_split": SPLITS[r["split"]],
                  "language": r["language"], "LANGUAGE": r["language"].upper(), "id": r["csv_id"]}
        audio = str(template.format(root, values, what=r["where"]))
        gender = genders.lookup(r["speaker"])
        if gender == "unknown":
            unknown.add(r["speaker"])
        annotations = ratings.get((r["pair"], r["csv_id"]), ())
        meta = {**r["meta"], "begin_time": r["begin"], "end_time": r["end"]}
        audio_paths.append(audio)
        for modality in modalities:
            examples.append(Example(
                id=f"{r['pair']}-{r['csv_id']}-{r['language']}", audio=audio, text=r["text"],
                language=r["language"], modality=modality, emotion=r["emotion"], gender=gender,
                speaker=r["speaker"], split=r["split"], utterance_id=r["utterance_id"],
                annotations=annotations, meta=meta,
            ))
    if check_audio:
        check_audio_files(audio_paths, what=f"MELD-ST audio (template {path_template!r} under {root})")
    report.unknown_gender_speakers = sorted(unknown)
    report.examples = len(examples)
    logger.info("read %d MELD-ST examples from %s (%d English duplicates merged)",
                len(examples), root, report.english_duplicates_merged)
    return (examples, report) if return_report else examples


def _check_request(root: Path, splits: Sequence[str], languages: Sequence[str], modalities: Sequence[str]) -> None:
    """``root`` is a directory; the splits, languages and modalities asked for exist."""
    if not root.is_dir():
        raise DataError(f"MELD-ST root is not a directory: {root}")
    _validate_split_names(splits)
    bad_lang = [lang for lang in languages if lang not in LANGUAGES]
    if bad_lang:
        raise DataError(f"unknown language(s) {bad_lang}; expected some of {list(LANGUAGES)}")
    bad_mod = [m for m in modalities if m not in MODALITIES]
    if bad_mod:
        raise DataError(f"unknown modality(ies) {bad_mod}; expected some of {list(MODALITIES)}")


def _present_pairs(root: Path, languages: Sequence[str]) -> list[str]:
    """The pair folders under ``root``, in PAIRS order; each language other than English needs its pair."""
    present = [p for p in PAIRS if (root / p).is_dir()]
    if not present:
        raise DataError(f"{root} holds neither ENG_DEU/ nor ENG_JPN/; is it a MELD-ST directory?")
    for lang in languages:
        if lang != "eng":
            pair = next(p for p, (code, _) in PAIRS.items() if code == lang)
            if pair not in present:
                raise DataError(f"language {lang!r} needs {root / pair}/, which does not exist")
    return present


def _rendered_rows(root: Path, pairs: Sequence[str], splits: Sequence[str], languages: Sequence[str],
                   report: MeldStReport) -> list[dict]:
    """One dict per (utterance, language) in reading order (pairs, then splits, then CSV rows; the
    modalities are expanded later), English de-duplicated by the module docstring's rule; counts
    rows, merged duplicates, leaks and conflicts into ``report``."""
    rendered: list[dict] = []
    seen_english: dict[tuple[str, str, str, str], dict] = {}
    for pair in pairs:
        code, lang_col = PAIRS[pair]
        for split in splits:
            path = csv_path(root, pair, split)
            frame = read_csv_checked(path, csv_columns(pair))
            report.rows[f"{pair}/{path.name}"] = len(frame)
            for rec in frame.to_dict("records"):
                base, times = _base_row(rec, pair, split, path)
                if code in languages:
                    rendered.append({**base, "language": code, "text": rec[lang_col],
                                     "begin": rec[f"{lang_col}_begin_time"], "end": rec[f"{lang_col}_end_time"]})
                if "eng" not in languages:
                    continue
                eng = {**base, "language": "eng", "text": rec["English"],
                       "begin": rec["English_begin_time"], "end": rec["English_end_time"]}
                if times is None:
                    report.english_without_times += 1
                    rendered.append(eng)
                    continue
                first = seen_english.get(times)
                if first is None:
                    seen_english[times] = eng
                    rendered.append(eng)
                    continue
                report.english_duplicates_merged += 1
                if first["split"] != split:
                    report.english_split_leaks += 1
                if first["emotion"] != eng["emotion"] or first["speaker"] != eng["speaker"]:
                    report.english_label_conflicts += 1
    return rendered


def _base_row(rec: dict, pair: str, split: str, path: Path) -> tuple[dict, tuple | None]:
    """The language-independent fields of one CSV row, and its English key (season, episode,
    English begin and end time), None when a time is empty."""
    where = f"{path}, id {rec['id']}"
    emotion = MELD.index(rec["emotion"], where=where)
    times = (rec["season"], rec["episode"], rec["English_begin_time"], rec["English_end_time"])
    has_times = all(str(t).strip() for t in times)
    utterance_id = f"S{times[0]}E{times[1]}@{times[2]}-{times[3]}" if has_times else f"{pair}-{rec['id']}"
    base = {
        "pair": pair, "csv_id": rec["id"], "split": split, "emotion": emotion,
        "speaker": rec["speaker"], "utterance_id": utterance_id, "where": where,
        "meta": {
            "pair": pair, "csv_id": rec["id"], "dia_id": rec["dia_id"], "utt_id": rec["utt_id"],
            "season": rec["season"], "episode": rec["episode"], "sentiment": rec["sentiment"],
        },
    }
    return base, times if has_times else None
