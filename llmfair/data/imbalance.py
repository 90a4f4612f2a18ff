"""Controlled gender–emotion imbalance (METHODS.md §1.6, the IDI paper's protocol).

Simulates a biased training set while the test set stays untouched:

1. In the imbalanced splits (train and dev) keep only rows with a single label: for multi-label
   corpora the strict-majority class (more than half of the votes); rows without one are dropped.
2. Each emotion has a fixed majority gender (CREMA-D: angry, disgust, neutral → male; fear, happy,
   sad → female; *not* recomputed per fold, so fold 2's angry stays male-majority although it has
   more women there).
3. Per emotion keep **all** majority-gender rows and a seeded random ⌊n_majority / r⌋ of the
   minority-gender rows (all of them if there are fewer).
4. Test is untouched (no-majority rows included).

Rows of ``unknown`` gender are not part of either side; they are dropped from the imbalanced
splits so that the stated ratio is the ratio of the subset (their count is reported).

On the EMO-SUPERB CREMA-D fold-1 labels at 1:20 this reproduces the IDI paper's Table A2 except
that the paper has one fewer male-disgust and one fewer male-neutral row (two utterances its
authors dropped, probably unreadable audio; see ``docs/data.md``).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from llmfair.data.example import Example
from llmfair.data.labels import LabelSpace
from llmfair.errors import DataError

IMBALANCE_RATIOS: tuple[float, ...] = (1, 2, 5, 10, 20, 40)

IDI_MAJORITY_GENDER: dict[str, str] = {
    # CREMA-D, IDI paper §4.2 / Table A2 ("natural demographic trends")
    "angry": "male", "disgust": "male", "neutral": "male",
    "fear": "female", "happy": "female", "sad": "female",
    # the same trend in MELD's names; surprise (no CREMA-D counterpart) alternates to female
    "anger": "male", "joy": "female", "sadness": "female", "surprise": "female",
}


def _check_ratio(ratio: float) -> None:
    # written as `not >=` so that NaN is refused too (NaN < 1 is False)
    if not ratio >= 1:
        raise DataError(f"imbalance ratio must be >= 1 (meaning 1:r), got {ratio}")


def minority_keep_count(n_majority: int, n_minority: int, ratio: float) -> int:
    """⌊n_majority / ratio⌋ capped at the minority rows available."""
    _check_ratio(ratio)
    return int(min(n_minority, np.floor(n_majority / ratio + 1e-9)))


def subsample_indices(
    emotions: np.ndarray,
    genders: np.ndarray,
    ratio: float,
    majority_gender: Mapping[int, str],
    seed: int | np.random.SeedSequence,
) -> np.ndarray:
    """Sorted indices of the rows kept by steps 1–3 above.

    Args:
        emotions: (n,) class index per row; ``-1`` (no single label) rows are dropped.
        genders: (n,) ``female``/``male``/``unknown``; ``unknown`` rows are dropped.
        ratio: r of the 1:r setting (r >= 1).
        majority_gender: class index → ``female`` or ``male``.
        seed: seeds the minority draw; classes are processed in index order.
    """
    emotions = np.asarray(emotions)
    genders = np.asarray(genders)
    rng = np.random.default_rng(seed)
    kept: list[np.ndarray] = []
    for c in np.unique(emotions[emotions >= 0]):
        if int(c) not in majority_gender:
            raise DataError(f"no majority gender given for class index {int(c)}")
        major = majority_gender[int(c)]
        if major not in ("female", "male"):
            raise DataError(f"majority gender for class {int(c)} must be female or male, got {major!r}")
        minor = "female" if major == "male" else "male"
        in_class = emotions == c
        major_idx = np.flatnonzero(in_class & (genders == major))
        minor_idx = np.flatnonzero(in_class & (genders == minor))
        n_keep = minority_keep_count(len(major_idx), len(minor_idx), ratio)
        chosen = rng.choice(minor_idx, size=n_keep, replace=False) if n_keep else minor_idx[:0]
        kept += [major_idx, chosen]
    if not kept:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(kept)).astype(np.int64)


def majority_gender_for(
    label_space: LabelSpace,
    mapping: Mapping[str, str] | None = None,
    examples: Sequence[Example] | None = None,
) -> dict[int, str]:
    """Class index → majority gender: from ``mapping`` (class name → gender), else the IDI table
    for the class names it knows, else the more frequent gender of that class in ``examples``."""
    mapping = dict(IDI_MAJORITY_GENDER if mapping is None else mapping)
    out: dict[int, str] = {}
    for i, name in enumerate(label_space.classes):
        if name in mapping:
            out[i] = mapping[name]
        elif examples is not None:
            f = sum(1 for e in examples if e.emotion == i and e.gender == "female")
            m = sum(1 for e in examples if e.emotion == i and e.gender == "male")
            out[i] = "female" if f > m else "male"
        else:
            raise DataError(f"no majority gender for class {name!r}; pass a class → gender mapping")
    return out


@dataclass
class ImbalancedSplits:
    """The subset and the counts table ``{split: {emotion: {"female": n, "male": n}}}``.

    Counts cover single-label rows; ``no_majority`` counts, per split, the rows kept without a
    single label (only in untouched splits), ``dropped_unknown`` the single-label rows of unknown
    gender dropped and ``dropped_no_majority`` the rows without a single label dropped, per
    imbalanced split.
    """

    examples: list[Example]
    counts: dict[str, dict[str, dict[str, int]]]
    ratio: float
    seed: int
    majority_gender: dict[str, str]
    no_majority: dict[str, int] = field(default_factory=dict)
    dropped_unknown: dict[str, int] = field(default_factory=dict)
    dropped_no_majority: dict[str, int] = field(default_factory=dict)


def counts_table(examples: Sequence[Example], label_space: LabelSpace) -> dict[str, dict[str, dict[str, int]]]:
    """{split: {emotion: {"female": n, "male": n}}} over single-label rows; splits ordered train,
    dev, test, then any others in first-seen order."""
    seen = list(dict.fromkeys(e.split for e in examples))
    splits = [s for s in ("train", "dev", "test") if s in seen] + [s for s in seen if s not in ("train", "dev", "test")]
    table = {s: {c: {"female": 0, "male": 0} for c in label_space.classes} for s in splits}
    for e in examples:
        if e.emotion >= 0 and e.gender in ("female", "male"):
            table[e.split][label_space.classes[e.emotion]][e.gender] += 1
    return table


def build_imbalanced_splits(
    examples: Sequence[Example],
    label_space: LabelSpace,
    ratio: float,
    seed: int,
    *,
    majority_gender: Mapping[str, str] | None = None,
    imbalanced_splits: Sequence[str] = ("train", "dev"),
) -> ImbalancedSplits:
    """Apply the protocol above to ``examples`` (all splits); other splits pass through untouched."""
    _check_ratio(ratio)
    major = majority_gender_for(label_space, majority_gender, examples)
    out: list[Example] = []
    no_majority: dict[str, int] = {}
    dropped_unknown: dict[str, int] = {}
    dropped_no_majority: dict[str, int] = {}
    for split in dict.fromkeys(e.split for e in examples):
        rows = [e for e in examples if e.split == split]
        if split not in imbalanced_splits:
            out.extend(rows)
            no_majority[split] = sum(1 for e in rows if e.emotion < 0)
            continue
        emotions = np.array([e.emotion for e in rows], dtype=np.int64)
        genders = np.array([e.gender for e in rows])
        dropped_unknown[split] = int(np.sum((genders == "unknown") & (emotions >= 0)))
        dropped_no_majority[split] = int(np.sum(emotions < 0))
        # one seed stream per split name, so adding a split never changes another split's draw
        stream = np.random.SeedSequence([seed, zlib.crc32(split.encode())])
        keep = subsample_indices(emotions, genders, ratio, major, seed=stream)
        out.extend(rows[i] for i in keep)
    return ImbalancedSplits(
        examples=out,
        counts=counts_table(out, label_space),
        ratio=float(ratio),
        seed=seed,
        majority_gender={label_space.classes[i]: g for i, g in major.items()},
        no_majority=no_majority,
        dropped_unknown=dropped_unknown,
        dropped_no_majority=dropped_no_majority,
    )


# ------------------------------------------------------------------ one language, one minority gender
@dataclass
class GenderImbalance:
    """A train split made gender-imbalanced inside one language (the speech-LLM sweeps' bias knob).

    In ``language`` every ``majority``-gender utterance is kept and, per emotion, a seeded random
    ⌊n_majority / ratio⌋ of the other gender's utterances (all of them if fewer); the other
    languages are untouched. Whole utterances are drawn, so an utterance kept in one modality is
    kept in both and the unimodal and multimodal rows stay paired (the renderings of an utterance in
    other languages, which share its ``utterance_id``, are never touched). ``ratio: 1`` keeps the split
    unchanged (the balanced reference of a sweep over ratios).
    """

    language: str = field(default="eng", metadata={"help": "the language whose train rows are made imbalanced"})
    ratio: float = field(default=5.0, metadata={"help": "r of 1:r (minority:majority utterances per emotion), >= 1"})
    majority: str = field(default="male", metadata={"help": "the gender kept whole: male or female"})
    seed: int = field(default=0, metadata={"help": "seeds the minority draw (independent of the training seed)"})

    def __post_init__(self) -> None:
        from llmfair.data.labels import LANGUAGES
        from llmfair.errors import ConfigError

        if self.language not in LANGUAGES:
            raise ConfigError(f"train_imbalance.language={self.language!r}; expected one of {list(LANGUAGES)}")
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not self.ratio >= 1:
            raise ConfigError(f"train_imbalance.ratio={self.ratio!r}: a ratio r means 1:r and must be a number >= 1")
        if self.majority not in ("female", "male"):
            raise ConfigError(f"train_imbalance.majority={self.majority!r}; expected female or male")

    def apply(self, examples: Sequence[Example]) -> list[Example]:
        """The rows kept, in their original order."""
        minority = "female" if self.majority == "male" else "male"
        utterances: dict[str, tuple[int, str]] = {}
        for e in examples:
            if e.language == self.language and e.gender in ("female", "male"):
                utterances.setdefault(e.utterance_id, (e.emotion, e.gender))
        names = sorted(utterances)
        emotions = np.array([utterances[u][0] for u in names], dtype=np.int64)
        genders = np.array([utterances[u][1] for u in names])
        keep_idx = subsample_indices(emotions, genders, self.ratio, {int(c): self.majority for c in np.unique(emotions)},
                                     seed=np.random.SeedSequence([self.seed, zlib.crc32(self.language.encode())]))
        kept = {names[i] for i in keep_idx}
        dropped = {u for u, (_, g) in utterances.items() if g == minority} - kept
        return [e for e in examples if not (e.language == self.language and e.utterance_id in dropped)]
