"""A hand-made MELD-ST directory: small, exact, and independent of the corpus generator."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf

from llmfair.data.meld_st import PAIRS, SPLITS, csv_columns

# (pair, split, id, emotion, speaker, English, target text, season, episode, eng begin, eng end)
ROWS = [
    ("ENG_DEU", "train", "0", "joy", "Monica", "Great news!", "Tolle Neuigkeiten!", "1", "2", "00:00:01,000", "00:00:02,000"),
    ("ENG_DEU", "train", "1", "anger", "Ross", "Stop it.", "Hör auf.", "1", "2", "00:00:03,000", "00:00:04,000"),
    ("ENG_DEU", "dev", "2", "sadness", "Stranger", "Oh no.", "Oh nein.", "1", "3", "00:00:05,000", "00:00:06,000"),
    ("ENG_DEU", "test", "3", "neutral", "Rachel", "Okay.", "Okay.", "2", "1", "00:00:07,000", "00:00:08,000"),
    # ENG_JPN shares utterance 0 (same times, different id) and has one of its own
    ("ENG_JPN", "train", "10", "joy", "Monica", "Great news!", "すごい", "1", "2", "00:00:01,000", "00:00:02,000"),
    ("ENG_JPN", "train", "11", "fear", "Phoebe", "Help!", "たすけて", "3", "1", "00:00:09,000", "00:00:10,000"),
    ("ENG_JPN", "dev", "12", "surprise", "Joey", "What?", "なに", "3", "2", "00:00:11,000", "00:00:12,000"),
    ("ENG_JPN", "test", "13", "disgust", "Chandler", "Gross.", "きもい", "3", "3", "00:00:13,000", "00:00:14,000"),
]


def write_wav(path: Path, seconds: float = 0.5, sr: int = 16000, channels: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.1 * np.sin(2 * np.pi * 220 * t)
    data = np.stack([x] * channels, axis=1) if channels > 1 else x
    sf.write(str(path), data, sr, subtype="PCM_16")


def build(root: Path, rows=ROWS, with_audio: bool = True) -> Path:
    by_file: dict[tuple[str, str], list] = {}
    for row in rows:
        by_file.setdefault((row[0], row[1]), []).append(row)
    for pair in PAIRS:
        code, lang = PAIRS[pair]
        for split, csv_split in SPLITS.items():
            path = root / pair / f"{code}_{csv_split}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", newline="", encoding="utf-8") as fh:
                w = csv.writer(fh)
                w.writerow(csv_columns(pair))
                for (_, _, id_, emo, spk, eng, tgt, season, ep, b, e) in by_file.get((pair, split), []):
                    w.writerow([id_, "0", id_, emo, "neutral", eng, tgt, season, ep, spk, b, e, b, e])
                    if with_audio:
                        for language in ("ENG", code.upper()):
                            write_wav(root / pair / language / split / f"{split}_{id_}.wav")
    return root
