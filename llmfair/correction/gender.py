"""A speaker-gender classifier for speech that runs offline: the correction net's second frozen model.

The correction net (METHODS.md §2.17) needs a gender model's probabilities beside the emotion
model's. The paper uses FairFace on faces; for speech, llmfair trains an L2-regularised logistic
regression (scikit-learn, lbfgs) on standardised frozen features from :mod:`llmfair.ssl`:

- ``acoustic`` (default): pitch, energy and log-mel statistics in numpy — F0 alone separates most
  adult voices, and nothing is downloaded;
- ``speaker``: 256-d resemblyzer speaker embeddings (the ``speaker`` extra);
- ``both``: the two concatenated.

It trains on the **train** split of a MELD-ST-layout corpus (the built-in corpus or MELD-ST with
audio) on every utterance whose speaker gender is known, and predicts the requested splits. The
fitted classifier is stored as numbers, not a pickle: ``gender_model.safetensors`` (feature
mean, scale, coefficients, intercept) and ``gender_model.json`` (options, feature names, counts,
accuracy per split); :meth:`GenderClassifier.load` rebuilds it without scikit-learn.

**Tables.** ``predictions_<split>.csv`` is an ordinary predictions table with classes
``(female, male)``, ``label`` = the true speaker gender and ``gender`` = the same (as in every
table). A gender classifier hears the audio, which both modalities share, so the table has **one
row per utterance id** (``modality = audio``); :func:`llmfair.correction.io.join_tables` joins it
to every modality of the emotion table. Utterances whose speaker gender is **unknown** (MELD
characters outside the speaker table) are **excluded**: a predictions table needs a true label,
and they cannot be scored or used as targets. Their number per split is logged and recorded in
``gender_model.json``; the correction step passes those rows through uncorrected.

On eSpeak voices this is a demo, not a real gender classifier (ENVIRONMENT.md: the synthetic
voices form two clean clusters).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from llmfair._atomic import atomic_directory, atomic_path, check_replaceable, write_json
from llmfair.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

GENDER_CLASSES: tuple[str, str] = ("female", "male")
FEATURE_SETS: dict[str, tuple[str, ...]] = {"acoustic": ("acoustic",), "speaker": ("speaker",),
                                            "both": ("acoustic", "speaker")}
"""Feature set name → the :mod:`llmfair.ssl` extractors whose outputs are concatenated."""
MODEL_FILE = "gender_model.safetensors"
CONFIG_FILE = "gender_model.json"
FORMAT_VERSION = 1
SPLIT_NAMES: tuple[str, ...] = ("train", "dev", "test")


@dataclass
class GenderModelOptions:
    """Options of the speaker-gender classifier."""

    features: str = field(default="acoustic", metadata={
        "help": "acoustic (pitch/energy/log-mel statistics), speaker (resemblyzer embeddings) or both"})
    splits: str = field(default="dev,test", metadata={"help": "comma-separated splits to write predictions for"})
    c: float = field(default=1.0, metadata={"help": "inverse L2 regularisation strength (scikit-learn's C)"})
    max_iter: int = field(default=1000, metadata={"help": "lbfgs iterations"})
    cache_dir: Optional[str] = field(default=None, metadata={
        "help": "feature cache (default: $LLMFAIR_CACHE/features or ~/.cache/llmfair/features)"})
    batch_size: int = field(default=16, metadata={"help": "clips per feature-extraction call"})
    path_template: Optional[str] = field(default=None, metadata={
        "help": "MELD-ST audio path template (default: the built-in corpus layout, see docs/data.md)"})
    gender_table: Optional[str] = field(default=None, metadata={
        "help": "CSV speaker,gender overriding the packaged table"})

    def __post_init__(self) -> None:
        if self.features not in FEATURE_SETS:
            raise ConfigError(f"gender model features={self.features!r} is invalid: expected one of {sorted(FEATURE_SETS)}")
        bad = [s for s in self.split_list() if s not in SPLIT_NAMES]
        if bad or not self.split_list():
            raise ConfigError(f"gender model splits={self.splits!r} is invalid: expected a comma-separated subset of "
                              f"{list(SPLIT_NAMES)}")
        if not self.c > 0:
            raise ConfigError(f"gender model c={self.c!r} is invalid: must be > 0")
        if self.max_iter < 1 or self.batch_size < 1:
            raise ConfigError("gender model max_iter and batch_size must be >= 1")

    def split_list(self) -> list[str]:
        """The requested splits, in the order given."""
        return list(dict.fromkeys(s.strip() for s in self.splits.split(",") if s.strip()))


@dataclass
class GenderClassifier:
    """Logistic regression on standardised features: P(male | x) = σ(((x − mean) / scale) · coef + intercept).

    Attributes:
        mean, scale: per-feature standardisation fitted on the training rows (scale 1 for
            constant features).
        coef: (F,) weights; intercept: bias (scikit-learn's ``coef_[0]``, ``intercept_[0]`` with
            ``female`` = 0, ``male`` = 1).
        features: the feature set name; feature_names: one name per column.
    """

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    features: str
    feature_names: tuple[str, ...]

    classes: tuple[str, str] = GENDER_CLASSES

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, *, c: float = 1.0, max_iter: int = 1000,
            feature_set: str = "acoustic", feature_names: Sequence[str] = ()) -> "GenderClassifier":
        """Fit on ``features`` (n, F) and ``labels`` (n,) with 0 = female, 1 = male.

        Raises:
            DataError: fewer than one row of each gender, or non-finite features.
        """
        from sklearn.linear_model import LogisticRegression

        features = np.asarray(features, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.int64)
        counts = np.bincount(labels, minlength=2)
        if counts.size != 2 or (counts == 0).any():
            raise DataError(f"the gender model needs training utterances of both genders; got {counts.tolist()} "
                            "(female, male)")
        if not np.isfinite(features).all():
            raise DataError("the gender model's features contain NaN or infinite values")
        mean = features.mean(axis=0)
        std = features.std(axis=0)
        scale = np.where(std > 0, std, 1.0)
        clf = LogisticRegression(C=c, max_iter=max_iter)
        clf.fit((features - mean) / scale, labels)
        names = tuple(feature_names) or tuple(f"f{i}" for i in range(features.shape[1]))
        return cls(mean=mean, scale=scale, coef=clf.coef_[0].astype(np.float64), intercept=float(clf.intercept_[0]),
                   features=feature_set, feature_names=names)

    def decision_function(self, features: np.ndarray) -> np.ndarray:
        """The logit of P(male), (n,)."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != self.coef.shape[0]:
            raise DataError(f"the gender model expects (n, {self.coef.shape[0]}) features; got {features.shape}")
        return ((features - self.mean) / self.scale) @ self.coef + self.intercept

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """(n, 2) probabilities in ``(female, male)`` order (scikit-learn's ``predict_proba``)."""
        from scipy.special import expit

        male = expit(self.decision_function(features))
        return np.stack([1.0 - male, male], axis=1)

    def save(self, out_dir: str | os.PathLike, extra: dict[str, Any] | None = None) -> None:
        """Write ``gender_model.safetensors`` (mean, scale, coef, intercept) and ``gender_model.json``."""
        from safetensors.numpy import save_file

        out_dir = Path(out_dir)
        tensors = {"mean": self.mean, "scale": self.scale, "coef": self.coef,
                   "intercept": np.asarray([self.intercept], dtype=np.float64)}
        with atomic_path(out_dir / MODEL_FILE) as tmp:
            save_file({k: np.ascontiguousarray(v, dtype=np.float64) for k, v in tensors.items()}, str(tmp),
                      metadata={"format": str(FORMAT_VERSION)})
        write_json(out_dir / CONFIG_FILE, {"format": FORMAT_VERSION, "classes": list(self.classes),
                                           "features": self.features, "feature_names": list(self.feature_names),
                                           **(extra or {})})

    @classmethod
    def load(cls, model_dir: str | os.PathLike) -> "GenderClassifier":
        """Rebuild a saved classifier (no scikit-learn, no pickle).

        Raises:
            DataError: missing, unreadable or inconsistent files.
        """
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        model_dir = Path(model_dir)
        config_path, weights_path = model_dir / CONFIG_FILE, model_dir / MODEL_FILE
        for path in (config_path, weights_path):
            if not path.is_file():
                raise DataError(f"{model_dir} is not a gender model: {path.name} is missing")
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
            tensors = load_file(str(weights_path))
        except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, OSError) as exc:
            raise DataError(f"{model_dir}: unreadable gender model ({exc})") from None
        missing = [k for k in ("mean", "scale", "coef", "intercept") if k not in tensors]
        if missing or config.get("format") != FORMAT_VERSION:
            raise DataError(f"{model_dir}: gender model has format {config.get('format')!r} and lacks {missing}")
        names = tuple(config.get("feature_names", ()))
        if len(names) != tensors["coef"].shape[0] or tensors["mean"].shape != tensors["coef"].shape:
            raise DataError(f"{model_dir}: gender model shapes disagree ({len(names)} names, coef "
                            f"{tensors['coef'].shape}, mean {tensors['mean'].shape})")
        return cls(mean=tensors["mean"], scale=tensors["scale"], coef=tensors["coef"],
                   intercept=float(tensors["intercept"][0]), features=str(config.get("features", "")),
                   feature_names=names)


def _default_cache_dir() -> Path:
    from llmfair.speechllm.tiny import default_cache_dir

    return default_cache_dir() / "features"


def corpus_features(examples: Sequence[Any], feature_set: str, cache_dir: str | os.PathLike, *,
                    batch_size: int = 16, progress: bool = False) -> tuple[np.ndarray, tuple[str, ...]]:
    """Features (n, F) of the examples' audio for a feature set, and their names (cached per clip)."""
    from llmfair.ssl import build_feature_extractor, extract_features

    blocks, names = [], []
    for name in FEATURE_SETS[feature_set]:
        extractor = build_feature_extractor(name)
        values = extract_features(extractor, examples, cache_dir, batch_size=batch_size, progress=progress)
        values = values.reshape(values.shape[0], -1)
        blocks.append(values)
        own = getattr(extractor, "feature_names", None)  # the acoustic extractor names its columns
        own = own() if callable(own) else own
        if own is not None and len(own) == values.shape[1]:
            names.extend(own)
        else:
            names.extend(f"{name}_{i:03d}" for i in range(values.shape[1]))
    return np.concatenate(blocks, axis=1).astype(np.float64), tuple(names)


def train_gender_model(
    corpus: str | os.PathLike,
    out_dir: str | os.PathLike,
    options: GenderModelOptions | None = None,
    *,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Train the gender classifier on a MELD-ST-layout corpus's train split; write ``predictions_<split>.csv``.

    Args:
        corpus: a MELD-ST directory with audio (or the built-in corpus).
        out_dir: output directory: the classifier files and one predictions table per requested
            split; built under a temporary name and moved into place.
        options: features, splits, regularisation, cache.
        overwrite: replace an existing ``out_dir``.

    Returns:
        ``gender_model.json``'s content: options, feature set, per-split row counts, accuracy
        and excluded unknown-gender rows, and the paths of the tables.
    """
    from llmfair.data.meld_st import DEFAULT_PATH_TEMPLATE, PAIRS, read_meld_st
    from llmfair.predictions import write_predictions

    options = options or GenderModelOptions()
    corpus, out_dir = Path(corpus), Path(out_dir)
    check_replaceable(out_dir, what="gender model", overwrite=overwrite)
    if not corpus.is_dir():
        raise DataError(f"corpus directory not found: {corpus}")
    languages = ["eng"] + [code for pair, (code, _) in PAIRS.items() if (corpus / pair).is_dir()]
    splits = options.split_list()
    wanted = list(dict.fromkeys(["train", *splits]))
    examples = read_meld_st(corpus, splits=wanted, languages=languages, modalities=("audio",),
                            path_template=options.path_template or DEFAULT_PATH_TEMPLATE,
                            gender_table=options.gender_table, check_audio=True)
    if not examples:
        raise DataError(f"{corpus} holds no utterances in the splits {wanted}")
    gender = np.array([ex.gender for ex in examples], dtype=object)
    split = np.array([ex.split for ex in examples], dtype=object)
    known = np.isin(gender, np.asarray(GENDER_CLASSES, dtype=object))
    labels = (gender == "male").astype(np.int64)
    cache_dir = Path(options.cache_dir) if options.cache_dir else _default_cache_dir()
    features, names = corpus_features(examples, options.features, cache_dir, batch_size=options.batch_size,
                                      progress=progress)
    train = known & (split == "train")
    classifier = GenderClassifier.fit(features[train], labels[train], c=options.c, max_iter=options.max_iter,
                                      feature_set=options.features, feature_names=names)
    probs = classifier.predict_proba(features)
    summary: dict[str, Any] = {"options": asdict(options), "corpus": str(corpus), "train_rows": int(train.sum()),
                               "splits": {}}
    with atomic_directory(out_dir, overwrite=overwrite, command="correct gender-model") as tmp:
        for name in splits:
            rows = np.flatnonzero(known & (split == name))
            excluded = int(((split == name) & ~known).sum())
            if excluded:
                logger.warning("%s split: %d utterance(s) of unknown speaker gender left out of the gender table",
                               name, excluded)
            if rows.size == 0:
                raise DataError(f"{corpus}: the {name} split has no utterance of known speaker gender")
            table = write_predictions(
                tmp / f"predictions_{name}.csv",
                ids=[examples[i].id for i in rows], split=name,
                language=[examples[i].language for i in rows], modality="audio",
                gender=gender[rows], speaker=[examples[i].speaker for i in rows],
                classes=GENDER_CLASSES, probs=probs[rows], labels=labels[rows],
                extra={"utterance_id": np.array([examples[i].utterance_id for i in rows], dtype=object)})
            accuracy = float((table.predictions == table.labels).mean())
            summary["splits"][name] = {"rows": int(rows.size), "excluded_unknown_gender": excluded,
                                       "accuracy": accuracy, "table": str(out_dir / f"predictions_{name}.csv")}
            logger.info("gender model, %s split: %d rows, accuracy %.3f", name, rows.size, accuracy)
        classifier.save(tmp, extra=summary)
    return summary
