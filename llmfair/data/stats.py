"""Corpus statistics: counts per split × language × modality × gender × emotion, and how much of
the corpus has unknown speaker gender (those rows never enter a gender gap)."""
from __future__ import annotations

from typing import Any, Sequence

import pandas as pd

from llmfair.data.example import Example
from llmfair.data.labels import GENDERS, LabelSpace


def examples_frame(examples: Sequence[Example], label_space: LabelSpace) -> pd.DataFrame:
    """One row per Example with the slice keys and the emotion name (``none`` for no majority)."""
    names = list(label_space.classes) + ["none"]
    return pd.DataFrame({
        "split": [e.split for e in examples],
        "language": [e.language for e in examples],
        "modality": [e.modality for e in examples],
        "gender": [e.gender for e in examples],
        "emotion": [names[e.emotion] for e in examples],
        "speaker": [e.speaker for e in examples],
        "utterance_id": [e.utterance_id for e in examples],
    })


def corpus_stats(examples: Sequence[Example], label_space: LabelSpace) -> dict[str, Any]:
    """JSON-ready statistics.

    ``counts`` is ``{split: {language: {modality: {gender: {emotion: n}}}}}`` (zeros included for
    every gender and emotion so tables line up); ``unknown_gender`` gives the count and fraction of
    rows per split × language whose speaker gender is unknown.
    """
    frame = examples_frame(examples, label_space)
    emotions = list(label_space.classes) + (["none"] if (frame["emotion"] == "none").any() else [])
    grouped = frame.groupby(["split", "language", "modality", "gender", "emotion"]).size()
    counts: dict[str, Any] = {}
    for split in frame["split"].unique():
        for lang in sorted(frame.loc[frame["split"] == split, "language"].unique()):
            for mod in sorted(frame.loc[(frame["split"] == split) & (frame["language"] == lang), "modality"].unique()):
                counts.setdefault(split, {}).setdefault(lang, {})[mod] = {
                    g: {e: int(grouped.get((split, lang, mod, g, e), 0)) for e in emotions} for g in GENDERS
                }
    unknown = frame.assign(unknown=frame["gender"] == "unknown").groupby(["split", "language"])["unknown"]
    unknown_table = {
        split: {lang: {"n": int(s), "fraction": float(m)} for (sp, lang), s, m in
                zip(unknown.sum().index, unknown.sum().values, unknown.mean().values) if sp == split}
        for split in frame["split"].unique()
    }
    speakers = frame.drop_duplicates("speaker").groupby("gender").size()
    return {
        "label_space": label_space.name,
        "n_examples": int(len(frame)),
        "n_utterances": int(frame["utterance_id"].nunique()),
        "speakers": {g: int(speakers.get(g, 0)) for g in GENDERS},
        "splits": {s: int(n) for s, n in frame.groupby("split", sort=False).size().items()},
        "languages": {s: int(n) for s, n in frame.groupby("language").size().items()},
        "gender": {g: int((frame["gender"] == g).sum()) for g in GENDERS},
        "unknown_gender": {
            "n": int((frame["gender"] == "unknown").sum()),
            "fraction": float((frame["gender"] == "unknown").mean()) if len(frame) else 0.0,
            "by_split_language": unknown_table,
        },
        "counts": counts,
    }


def format_stats(stats: dict[str, Any]) -> str:
    """Plain-text tables: one per split, rows language/modality/gender, columns emotions."""
    lines = [
        f"label space {stats['label_space']}: {stats['n_examples']} examples, "
        f"{stats['n_utterances']} utterances; speakers " +
        ", ".join(f"{g} {n}" for g, n in stats["speakers"].items()),
    ]
    unk = stats["unknown_gender"]
    lines.append(f"unknown speaker gender: {unk['n']} examples ({unk['fraction']:.1%}); excluded from gender gaps")
    for split, by_lang in stats["counts"].items():
        rows = []
        for lang, by_mod in by_lang.items():
            for mod, by_gender in by_mod.items():
                for gender, by_emotion in by_gender.items():
                    if sum(by_emotion.values()):
                        rows.append({"language": lang, "modality": mod, "gender": gender, **by_emotion,
                                     "total": sum(by_emotion.values())})
        table = pd.DataFrame(rows)
        lines += ["", f"== {split} ({stats['splits'][split]} examples)", table.to_string(index=False)]
    return "\n".join(lines)
