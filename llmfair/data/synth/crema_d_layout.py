"""The built-in corpus in CREMA-D's EMO-SUPERB layout, so that the IDI protocol — five
speaker-disjoint folds, controlled gender imbalance per emotion, the feature sweep — runs on it
offline (``llmfair data synth --crema-d-layout``).

:func:`write_crema_d_layout` reads a built-in (MELD-ST-layout) corpus and writes::

    OUT/labels_consensus_{1..5}.csv   FileName, angry, sad, disgust, fear, neutral, happy, SpkrID, Gender, Split_Set
    OUT/config.json                   CREMA-D's class list and split names
    OUT/audio/<FileName>              the clips (hard links into the corpus; copies across file systems)
    OUT/speakers.csv                  SpkrID, speaker, gender, fold_group (which fold tests the speaker)
    OUT/ratings.csv                   id, rater, rater_gender, emotion (one row per kept rater vote)
    OUT/layout.json                   the source corpus, the mapping, counts

what :func:`llmfair.data.crema_d.read_crema_d` reads, and ``ratings.csv`` is the feature sweep's
``ratings_file`` (:mod:`llmfair.sweep.raters`): ``id`` is the FileName without ``.wav`` (the
utterance id the sweep keys features on), ``rater`` / ``rater_gender`` the simulated rater
(``rater01``…, female/male), ``emotion`` the CREMA-D class of the vote — exactly the votes the soft
label counts, so ``two_sided`` (``groups: rater``) and the rater-side ΔSP run on this layout. It is
written only when the corpus has raters (``--raters-per-utterance`` > 0). Choices [I: none of this
is CREMA-D's]:

- **rows**: every audio clip of the corpus, every language (English clips of both pairs once);
- **labels**: MELD's emotions map to CREMA-D's (anger → angry, sadness → sad, disgust, fear,
  neutral, joy → happy); *surprise* has no CREMA-D class, so rows whose emotion is surprise are
  left out, and so are rater votes for it (in the soft labels and in ``ratings.csv``). The soft
  label is EMO-SUPERB's y_c = 0.01 + 0.94 · n_c / N (METHODS.md §1.2) over the simulated raters'
  remaining votes (the corpus's own emotion when it has no raters); a row without any remaining
  vote is left out;
- **folds**: the speakers of each gender are shuffled (``seed``) and dealt into five groups; fold
  k tests group k and develops on group k+1 (mod 5), so fold k's test is fold k−1's dev as in
  EMO-SUPERB (METHODS.md §1.5), and trains on the other three;
- **file names** ``<SpkrID>_IEO_<EMO>_<row>.wav``: the CREMA-D reader needs one of CREMA-D's
  sentence codes in the second field, so every clip carries ``IEO`` and ``Example.text`` of these
  rows is CREMA-D's sentence, not the clip's words (nothing in the sweep reads it); ``SpkrID``
  counts from 2001 (CREMA-D's actors are 1001–1091).

Generate the corpus without surprise for the most rows, e.g.
``--emotion-priors neutral=1,joy=1,sadness=1,anger=1,fear=1,disgust=1``. With
``--recording-sessions`` every clip keeps its session's channel and its raters come from the
session's one-gender panel, so the rater side of ``two_sided`` has something to act on
(``recipes/sweeps/two_sided_builtin.yaml``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from llmfair._atomic import atomic_directory, check_replaceable
from llmfair.data.crema_d import CONFIG_FILE, LABEL_FLOOR, LABEL_SCALE, SPLITS, labels_path
from llmfair.data.labels import CREMA_D, MELD
from llmfair.errors import DataError

logger = logging.getLogger(__name__)

LAYOUT_FILE = "layout.json"
RATINGS_FILE = "ratings.csv"
"""The sweep's ratings file (columns :data:`RATINGS_COLUMNS`)."""
RATINGS_COLUMNS: tuple[str, ...] = ("id", "rater", "rater_gender", "emotion")
"""The columns of ``ratings.csv``: those of :data:`llmfair.sweep.raters.RATINGS_COLUMNS`, which the
data layer may not import (``tests/test_two_sided_recipe.py`` checks they agree)."""
LAYOUT_VERSION = 2
"""2: ``ratings.csv``. A layout of the same corpus and seed with an older version is rewritten
without ``overwrite`` (same rows and clips; only files are added)."""
MELD_TO_CREMA_D: dict[str, str | None] = {
    "anger": "angry", "sadness": "sad", "disgust": "disgust", "fear": "fear", "neutral": "neutral", "joy": "happy",
    "surprise": None,
}
"""MELD emotion → CREMA-D class (``None``: no counterpart; those rows and votes are left out)."""
EMOTION_CODES: dict[str, str] = {"angry": "ANG", "sad": "SAD", "disgust": "DIS", "fear": "FEA", "neutral": "NEU",
                                 "happy": "HAP"}
"""CREMA-D class → the emotion code of CREMA-D file names."""
NUM_FOLDS = 5
FIRST_SPEAKER_ID = 2001


def _source_identity(corpus: Path) -> str:
    manifest = corpus / "corpus.json"
    if not manifest.is_file():
        raise DataError(f"{corpus} has no corpus.json: not a built-in corpus (write one with `llmfair data synth`)")
    return hashlib.sha256(manifest.read_bytes()).hexdigest()


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(source, target)


def write_crema_d_layout(corpus: str | os.PathLike, out: str | os.PathLike, *, seed: int = 0,
                         overwrite: bool = False) -> dict[str, Any]:
    """Write the CREMA-D-layout view of a built-in corpus (see the module docstring); returns the
    layout manifest. A folder already holding this corpus's layout with the same seed is left as it is
    (one written by an older :data:`LAYOUT_VERSION`, without ``ratings.csv``, is rewritten).

    Raises:
        DataError: ``corpus`` is not a built-in corpus, a gender has fewer than five speakers, or
            ``out`` holds something else (another corpus's layout needs ``overwrite``; files llmfair
            did not write are never replaced).
    """
    import pandas as pd

    from llmfair.data.meld_st import read_meld_st

    corpus, out = Path(corpus), Path(out)
    identity = {"source_corpus_sha256": _source_identity(corpus), "seed": int(seed), "folds": NUM_FOLDS}
    existing = out / LAYOUT_FILE
    if existing.is_file():
        try:
            previous = json.loads(existing.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = {}
        if previous.get("identity") == identity:
            if previous.get("layout_version", 1) >= LAYOUT_VERSION:
                logger.info("%s already holds the CREMA-D layout of %s", out, corpus)
                return previous
            logger.info("%s holds an older CREMA-D layout of %s; rewriting it with %s", out, corpus, RATINGS_FILE)
            overwrite = True
    check_replaceable(out, what="CREMA-D layout", overwrite=overwrite)

    examples = read_meld_st(corpus, modalities=("audio",))
    crema = {c: i for i, c in enumerate(CREMA_D.classes)}
    votes = np.zeros((len(examples), CREMA_D.num_classes), dtype=np.int64)
    gold = np.full(len(examples), -1, dtype=np.int64)
    rater_votes: list[list[tuple[str, str, str]]] = [[] for _ in examples]  # (rater, gender, CREMA-D class)
    surprise_votes = 0
    for i, e in enumerate(examples):
        target = MELD_TO_CREMA_D[MELD.classes[e.emotion]]
        if target is None:
            continue
        gold[i] = crema[target]
        annotations = e.annotations or ()
        for a in annotations:
            mapped = MELD_TO_CREMA_D[MELD.classes[a.emotion]]
            if mapped is None:
                surprise_votes += 1
                continue
            votes[i, crema[mapped]] += 1
            rater_votes[i].append((str(a.rater), a.rater_gender, mapped))
        if not annotations:
            votes[i, gold[i]] = 1
    keep = (gold >= 0) & (votes.sum(1) > 0)
    dropped = {"surprise": int((gold < 0).sum()), "no_vote_left": int(((gold >= 0) & (votes.sum(1) == 0)).sum())}
    kept = [e for e, k in zip(examples, keep) if k]
    rater_votes = [v for v, k in zip(rater_votes, keep) if k]
    votes, gold = votes[keep], gold[keep]

    speakers = sorted({(str(e.speaker), e.gender) for e in kept})
    rng = np.random.default_rng(seed)
    group_of: dict[str, int] = {}
    position = 0
    for gender in ("female", "male"):
        names = [s for s, g in speakers if g == gender]
        if len(names) < NUM_FOLDS:
            raise DataError(f"{corpus}: {len(names)} {gender} speaker(s); five speaker-disjoint folds need at least "
                            f"{NUM_FOLDS} of each gender (raise --train/--dev/--test-speakers-per-gender)")
        for name in rng.permutation(np.asarray(names, dtype=object)).tolist():
            group_of[name] = position % NUM_FOLDS
            position += 1
    unknown = sorted({s for s, g in speakers if g not in ("female", "male")})
    if unknown:
        raise DataError(f"{corpus}: speaker(s) {unknown[:3]} have no known gender; the imbalance protocol needs one")
    speaker_id = {name: FIRST_SPEAKER_ID + j for j, (name, _) in enumerate(speakers)}

    soft = np.round(LABEL_FLOOR + LABEL_SCALE * votes / votes.sum(1, keepdims=True), 6)
    names = [f"{speaker_id[str(e.speaker)]}_IEO_{EMOTION_CODES[CREMA_D.classes[g]]}_{j:05d}.wav"
             for j, (e, g) in enumerate(zip(kept, gold))]
    base = pd.DataFrame({"FileName": names})
    for c, cls in enumerate(CREMA_D.classes):
        base[cls] = [f"{v:.6g}" for v in soft[:, c]]
    base["SpkrID"] = [speaker_id[str(e.speaker)] for e in kept]
    base["Gender"] = [e.gender.capitalize() for e in kept]
    group = np.array([group_of[str(e.speaker)] for e in kept])

    with atomic_directory(out, overwrite=True, command="data synth --crema-d-layout") as tmp:
        (tmp / "audio").mkdir()
        for e, name in zip(kept, names):
            _link(Path(e.audio), tmp / "audio" / name)
        for fold in range(1, NUM_FOLDS + 1):
            test, dev = fold - 1, fold % NUM_FOLDS
            split = np.where(group == test, SPLITS["test"], np.where(group == dev, SPLITS["dev"], SPLITS["train"]))
            base.assign(Split_Set=split).to_csv(labels_path(tmp, fold), index=False, lineterminator="\n")
        (tmp / CONFIG_FILE).write_text(json.dumps({
            "data_split_type": dict(SPLITS), "categorical": {"emo_type": list(CREMA_D.classes)},
            "description": f"the built-in corpus {corpus} in CREMA-D's layout (llmfair)"}, indent=2) + "\n")
        pd.DataFrame({"SpkrID": [speaker_id[s] for s, _ in speakers], "speaker": [s for s, _ in speakers],
                      "gender": [g for _, g in speakers], "fold_group": [group_of[s] + 1 for s, _ in speakers]}).to_csv(
            tmp / "speakers.csv", index=False, lineterminator="\n")
        ratings = None
        if any(rater_votes):
            stems = [name.rsplit(".", 1)[0] for name in names]
            pd.DataFrame([(stem, rater, gender, cls) for stem, row in zip(stems, rater_votes)
                          for rater, gender, cls in row], columns=list(RATINGS_COLUMNS)).to_csv(
                tmp / RATINGS_FILE, index=False, lineterminator="\n")
            by_gender = [g for row in rater_votes for _, g, _ in row]
            ratings = {"file": RATINGS_FILE, "annotations": len(by_gender),
                       "by_rater_gender": {g: by_gender.count(g) for g in sorted(set(by_gender))},
                       "surprise_votes_dropped": surprise_votes}
        manifest = {
            "identity": identity, "layout_version": LAYOUT_VERSION, "source_corpus": str(corpus.resolve()),
            "rows": len(kept), "dropped": dropped, "ratings": ratings,
            "speakers": {g: sum(1 for _, sg in speakers if sg == g) for g in ("female", "male")},
            "emotion_gender": {cls: {g: int(((gold == c) & np.array([e.gender == g for e in kept])).sum())
                                     for g in ("female", "male")} for c, cls in enumerate(CREMA_D.classes)},
            "mapping": {k: v for k, v in MELD_TO_CREMA_D.items()},
        }
        (tmp / LAYOUT_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("CREMA-D layout of %s: %d rows (%s left out), %d speakers, in %s", corpus, len(kept), dropped,
                len(speakers), out)
    return manifest
