"""Per-rater training rows and the rater-biased subset S2 (two-sided speaker/rater fairness).

Chien, Upadhyay & Lee, "Balancing speaker-rater fairness for gender-neutral speech emotion
recognition", ICASSP 2024 (METHODS.md §2.15). Rater-side fairness needs, for every label, the
gender of the person who gave it; the speaker side needs the speaker's gender. Both arrive at the
objectives as group attributes, so the data layer turns Examples with ``annotations`` into:

- :func:`expand_ratings` — one training row per (utterance, rater): the label is that rater's
  emotion, the attributes are ``gender`` (the speaker's) and ``rater_gender``. Training on these rows
  gives every rater's label its own loss term, and a rater-side method can tell the labels of men
  and women apart (:mod:`llmfair.objectives.two_sided` reads both attributes from the GroupSpec
  that :meth:`RaterRows.group_ids` builds).
- :func:`consensus_labels` — the plurality label of every utterance (the paper's "consensus
  labels are obtained based on the plurality rule"); a tie or no annotation gives −1 [I: the paper
  does not say how ties are broken].
- :func:`rater_biased_subset` — S2, "samples where the ground truth labels align with the emotion
  annotation given by either the male rater or female rater only". Reconstruction [I] of "only": the
  utterance was rated by at least one woman and at least one man, it has a unique plurality label
  c*, and c* was given by raters of one gender and by none of the other; that gender is the
  sample's ``rater_gender`` (the attribute ΔSP_rat is computed over). Raters of unknown gender count
  towards the plurality only.

Every count is one ``np.add.at`` over the flattened annotations; Python touches each annotation
once, to flatten the Examples' tuples.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from llmfair.data.example import Example
from llmfair.data.grouping import GroupSpec
from llmfair.data.labels import GENDERS
from llmfair.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

RATER_GROUP_KEYS: tuple[str, str] = ("gender", "rater_gender")
"""Group attributes of per-rater rows: the speaker's gender and the rater's gender."""

_MISSING = ("error", "skip")


@dataclass(frozen=True)
class RaterRows:
    """One row per (utterance, rater) annotation.

    Attributes:
        example_index: (R,) int64 index of the row's Example in the input sequence (to look up its
            features or audio).
        rater: (R,) rater identifiers.
        rater_gender: (R,) the rater's gender (female/male/unknown).
        gender: (R,) the speaker's gender.
        label: (R,) int64 the rater's emotion (index into the label space).
    """

    example_index: np.ndarray
    rater: np.ndarray
    rater_gender: np.ndarray
    gender: np.ndarray
    label: np.ndarray

    def __len__(self) -> int:
        return int(self.example_index.shape[0])

    def group_ids(self) -> tuple["GroupSpec", np.ndarray]:
        """The GroupSpec over (``gender``, ``rater_gender``) and each row's group id.

        The spec holds all 3 × 3 combinations of GENDERS in a fixed order, so ids mean the same in
        every split and every corpus (a combination without rows simply has no examples).
        """
        speaker = gender_codes(self.gender, "speaker gender")
        rater = gender_codes(self.rater_gender, "rater gender")
        return rater_group_spec(), speaker * len(GENDERS) + rater


def gender_codes(values: np.ndarray, what: str = "gender") -> np.ndarray:
    """(n,) int64 index of every value in GENDERS (female 0, male 1, unknown 2).

    Raises:
        DataError: a value outside GENDERS, named with ``what``.
    """
    values = np.asarray(values, dtype=object).astype(str)
    uniq, inverse = np.unique(values, return_inverse=True)
    bad = [v for v in uniq.tolist() if v not in GENDERS]
    if bad:
        raise DataError(f"{what} value(s) {bad} are not one of {GENDERS}")
    lookup = np.array([GENDERS.index(v) for v in uniq.tolist()], dtype=np.int64)
    return lookup[inverse.reshape(-1)] if uniq.size else np.zeros(0, dtype=np.int64)


def rater_group_spec() -> "GroupSpec":
    """GroupSpec with keys (``gender``, ``rater_gender``) and the 9 combinations of GENDERS; group id
    = 3 · index(speaker gender) + index(rater gender)."""
    return GroupSpec(RATER_GROUP_KEYS, tuple(itertools.product(GENDERS, GENDERS)))


def _flatten(examples: Sequence[Example]) -> tuple[np.ndarray, list[str], list[str], np.ndarray]:
    """(example index, rater ids, rater genders, emotions) of every annotation, in input order."""
    owner = np.fromiter((i for i, ex in enumerate(examples) for _ in ex.annotations), dtype=np.int64)
    raters = [a.rater for ex in examples for a in ex.annotations]
    genders = [a.rater_gender for ex in examples for a in ex.annotations]
    labels = np.fromiter((a.emotion for ex in examples for a in ex.annotations), dtype=np.int64, count=len(owner))
    return owner, raters, genders, labels


def _check_labels(labels: np.ndarray, owner: np.ndarray, examples: Sequence[Example], num_classes: int | None) -> None:
    if num_classes is None or not len(labels):
        return
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise DataError(f"example {examples[owner[i]].id!r}: rater annotation emotion {int(labels[i])} is outside "
                        f"the label space [0, {num_classes}) ({bad.size} such annotation(s))")


def expand_ratings(examples: Sequence[Example], *, num_classes: int | None = None,
                   missing: str = "error") -> RaterRows:
    """Expand Examples into one row per rater annotation (label = the rater's emotion).

    Args:
        examples: Examples whose ``annotations`` hold (rater, rater_gender, emotion).
        num_classes: K, to check every annotation's emotion index (skipped when None).
        missing: what an Example without annotations does: ``error`` (DataError naming it and the
            count) or ``skip`` (left out, counted in a log warning).

    Raises:
        DataError: no annotation at all, an example without annotations under ``missing="error"``,
            an emotion outside [0, K), or a rater gender outside female/male/unknown.
        ConfigError: ``missing`` is neither ``error`` nor ``skip``.
    """
    if missing not in _MISSING:
        raise ConfigError(f"expand_ratings: missing={missing!r}; expected one of {_MISSING}")
    examples = list(examples)
    unrated = [ex.id for ex in examples if not ex.annotations]
    if unrated:
        if missing == "error":
            raise DataError(f"{len(unrated)} of {len(examples)} examples have no rater annotations (e.g. "
                            f"{unrated[:3]}); read a corpus with ratings (ratings.csv) or pass missing='skip'")
        logger.warning("expand_ratings: %d of %d examples have no rater annotations and are left out",
                       len(unrated), len(examples))
    owner, raters, rater_genders, labels = _flatten(examples)
    if not len(owner):
        raise DataError(f"none of the {len(examples)} examples has rater annotations")
    rater_gender = np.asarray(rater_genders, dtype=object)
    gender_codes(rater_gender, "rater gender")
    _check_labels(labels, owner, examples, num_classes)
    speaker_gender = np.asarray([ex.gender for ex in examples], dtype=object)[owner]
    return RaterRows(example_index=owner, rater=np.asarray(raters, dtype=object), rater_gender=rater_gender,
                     gender=speaker_gender, label=labels)


def _vote_counts(examples: Sequence[Example], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3, K) votes per example, rater gender (GENDERS order) and class; and (n, K) totals."""
    owner, _, genders, labels = _flatten(examples)
    _check_labels(labels, owner, examples, num_classes)
    gender_code = gender_codes(np.asarray(genders, dtype=object), "rater gender")
    votes = np.zeros((len(examples), len(GENDERS), num_classes), dtype=np.int64)
    np.add.at(votes, (owner, gender_code, labels), 1)
    return votes, votes.sum(axis=1)


def consensus_labels(examples: Sequence[Example], num_classes: int) -> np.ndarray:
    """(n,) int64 plurality label of each Example's rater annotations; −1 for a tie between the top
    classes or when an Example has no annotation."""
    _, totals = _vote_counts(list(examples), num_classes)
    return _plurality(totals)


def _plurality(totals: np.ndarray) -> np.ndarray:
    best = totals.argmax(axis=1)
    top = totals.max(axis=1)
    unique = (totals == top[:, None]).sum(axis=1) == 1
    return np.where(unique & (top > 0), best, -1).astype(np.int64)


@dataclass(frozen=True)
class RaterBiasedSubset:
    """S2: the rater-biased samples and the rater gender each one aligns with.

    Attributes:
        example_index: (S,) int64 indices of the S2 Examples in the input sequence.
        consensus: (S,) int64 their plurality label.
        rater_gender: (S,) ``female`` or ``male``: the only rater gender that gave the consensus label.
        num_examples: size of the input (S1).
    """

    example_index: np.ndarray
    consensus: np.ndarray
    rater_gender: np.ndarray
    num_examples: int

    def __len__(self) -> int:
        return int(self.example_index.shape[0])

    def column(self, fill: str = "unknown") -> np.ndarray:
        """(num_examples,) rater-gender column over the whole input: the aligned gender for S2 rows,
        ``fill`` elsewhere (e.g. the ``rater_gender`` extra column of a predictions table)."""
        out = np.full(self.num_examples, fill, dtype=object)
        out[self.example_index] = self.rater_gender
        return out


def rater_biased_subset(examples: Sequence[Example], num_classes: int) -> RaterBiasedSubset:
    """S2 of the two-sided paper (see the module docstring for the reconstruction of "only").

    Args:
        examples: S1, Examples with rater annotations (those without are never in S2).
        num_classes: K.
    """
    examples = list(examples)
    votes, totals = _vote_counts(examples, num_classes)
    consensus = _plurality(totals)
    rows = np.arange(len(examples))
    safe = np.maximum(consensus, 0)
    female, male = GENDERS.index("female"), GENDERS.index("male")
    by_female = votes[rows, female, safe]
    by_male = votes[rows, male, safe]
    both_rated = (votes[:, female].sum(axis=1) > 0) & (votes[:, male].sum(axis=1) > 0)
    valid = (consensus >= 0) & both_rated
    female_only = valid & (by_female > 0) & (by_male == 0)
    male_only = valid & (by_male > 0) & (by_female == 0)
    index = np.flatnonzero(female_only | male_only)
    genders = np.where(male_only[index], "male", "female").astype(object)
    logger.info("rater-biased subset S2: %d of %d examples (%d female-aligned, %d male-aligned)",
                len(index), len(examples), int(female_only.sum()), int(male_only.sum()))
    return RaterBiasedSubset(example_index=index, consensus=consensus[index], rater_gender=genders,
                             num_examples=len(examples))
