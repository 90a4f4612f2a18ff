"""Implicit demography inference (IDI): groups for the debiasing objectives without gender labels.

Lin, Chou & Lee, "Mitigating subgroup disparities in multi-label speech emotion recognition: a
pseudo-labeling and unsupervised learning approach", Interspeech 2025 (arXiv 2505.14449), §3.1;
METHODS.md §2.14. DS, RW, GDRO and GADRO are trained with inferred groups instead of the true
gender; fairness is still *measured* on the true groups.

(a) **Pseudo gender labels** from a pluggable classifier (:class:`PseudoGenderLabeler`):

- :class:`TransformersGenderLabeler` — any ``AutoModelForAudioClassification`` checkpoint (hub id or
  local directory, loaded with ``trust_remote_code=False``; offline unless ``HF_HUB_OFFLINE=0``).
  Its ``id2label`` names are mapped to female/male by name; the gender is the argmax over
  {female, male} [I] and the two probabilities are renormalised to sum to 1 (other outputs such as
  "child" are dropped). The paper's model, ``audeering/wav2vec2-large-robust-24-ft-age-gender``
  (94.4 % gender accuracy on CREMA-D), needs the custom ``AgeGenderModel`` class of its model card:
  ``AutoModelForAudioClassification`` would give it a randomly initialised head, so a checkpoint
  whose head weights are missing is refused rather than silently used.
- :class:`EmbeddingGenderClassifier` — built in: logistic regression (scikit-learn) on speaker
  embeddings or acoustic features of the training split, standardised; the coefficients are stored
  as JSON (no pickle) and applied with numpy.

Both return :class:`PseudoGenderLabels`: a gender per example and (female, male) probabilities,
which are PGDRO's soft group memberships (:meth:`llmfair.objectives.pgdro.PGDRO.set_group_probabilities`).

(b) **Unsupervised groups**: k-means on speaker embeddings, K ∈ {2, 4, 8, 16, 32} (K = 16 is the
paper's choice), fitted on the *training* embeddings and applied to dev/test by nearest centre
[I]. Parameters (IDI Table A1, scikit-learn 1.2.2): init "greedy k-means++", random_state 42,
max_iter 1000, batch_size 32, compute_labels True, reassignment_ratio 0.01, tol 1e-4,
algorithm "lloyd". ``batch_size``, ``compute_labels`` and ``reassignment_ratio`` exist only in
``MiniBatchKMeans``, ``algorithm`` only in ``KMeans``: the paper mixes the two. llmfair uses
``MiniBatchKMeans`` with those parameters and drops ``algorithm`` [I]; scikit-learn's "k-means++"
*is* the greedy variant (2 + ⌊ln K⌋ local trials per centre). ``n_init = 3`` is the
``MiniBatchKMeans`` default of scikit-learn 1.2.2 (later versions default to 1 for k-means++) [I].
The paper uses ECAPA-TDNN embeddings (checkpoint not named); llmfair's ``speaker`` extractor is
resemblyzer's GE2E encoder [I: a substitute]. :func:`cluster_purity` reports how well clusters
follow the true gender (with the contingency table).

(c) :func:`tsne_plot` — the paper's t-SNE figure parameters (Table A1): init pca, barnes_hut,
perplexity 40, euclidean, random_state 42, n_iter_without_progress 300, learning_rate auto.

(d) :func:`pseudo_gender_groups` and :func:`cluster_groups` turn inferred groups into group ids and
a :class:`~llmfair.objectives.GroupSpec` (attribute ``gender`` for pseudo labels, ``cluster`` for
k-means), so every objective runs on inferred groups unchanged: gender-based methods read the
``gender`` attribute, and without one (clusters) every group is a unit of its own.
"""
from __future__ import annotations

import itertools
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from llmfair._atomic import atomic_path, write_json
from llmfair.data.example import Example
from llmfair.errors import ConfigError, DataError
from llmfair.data.grouping import GroupSpec

logger = logging.getLogger(__name__)

PSEUDO_GENDERS: tuple[str, str] = ("female", "male")
"""Column order of pseudo-gender probabilities and the groups of :func:`pseudo_gender_groups`."""

CLUSTER_COUNTS: tuple[int, ...] = (2, 4, 8, 16, 32)
"""K values of the IDI paper (§3.1); 16 is its reported choice."""

KMEANS_PARAMETERS: dict[str, Any] = {
    "init": "k-means++", "random_state": 42, "max_iter": 1000, "batch_size": 32, "compute_labels": True,
    "reassignment_ratio": 0.01, "tol": 1e-4, "n_init": 3,
}
"""``MiniBatchKMeans`` keyword arguments (IDI Table A1 without ``algorithm``; see the module docstring)."""

TSNE_PARAMETERS: dict[str, Any] = {
    "n_components": 2, "init": "pca", "method": "barnes_hut", "perplexity": 40.0, "metric": "euclidean",
    "random_state": 42, "n_iter_without_progress": 300, "learning_rate": "auto",
}
"""``sklearn.manifold.TSNE`` keyword arguments (IDI Table A1); perplexity is capped below n."""

FEMALE_NAMES = frozenset({"female", "f", "woman", "women", "feminine"})
MALE_NAMES = frozenset({"male", "m", "man", "men", "masculine"})
LOGREG_FORMAT = "llmfair.pseudo_gender.logistic_regression"
_GENDER_COLORS = {"female": "#E69F00", "male": "#0072B2", "unknown": "#999999"}  # Okabe–Ito, as in the reports
_PALETTE = ("#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#F0E442", "#000000", "#E69F00", "#0072B2", "#999999")
_SAMPLE_RATE = 16_000


# ------------------------------------------------------------------------------------- (a) pseudo labels
@dataclass(frozen=True)
class PseudoGenderLabels:
    """Inferred genders of a sequence of clips.

    Attributes:
        genders: (n,) ``female`` / ``male`` (the argmax of ``probabilities``; ties go to female).
        probabilities: (n, 2) float64, columns (female, male), rows sum to 1.
        source: what produced them (model id or classifier file), for logs and manifests.
    """

    genders: np.ndarray
    probabilities: np.ndarray
    source: str = ""

    def __len__(self) -> int:
        return int(self.genders.shape[0])

    @classmethod
    def from_probabilities(cls, probabilities: np.ndarray, source: str = "") -> "PseudoGenderLabels":
        """Labels from (n, 2) (female, male) probabilities (renormalised per row)."""
        probs = np.asarray(probabilities, dtype=np.float64)
        if probs.ndim != 2 or probs.shape[1] != 2 or not np.isfinite(probs).all() or (probs < 0).any():
            raise DataError(f"pseudo-gender probabilities must be a finite, non-negative (n, 2) array; got shape "
                            f"{probs.shape}")
        total = probs.sum(axis=1, keepdims=True)
        if (total <= 0).any():
            raise DataError("pseudo-gender probabilities: a row has no mass on female or male")
        probs = probs / total
        genders = np.asarray(PSEUDO_GENDERS, dtype=object)[(probs[:, 1] > probs[:, 0]).astype(np.int64)]
        return cls(genders=genders, probabilities=probs, source=source)

    def accuracy(self, true_genders: Sequence[str]) -> float:
        """Agreement with the true genders over the rows whose true gender is female or male."""
        truth = np.asarray(true_genders, dtype=object)
        if truth.shape != self.genders.shape:
            raise DataError(f"accuracy: {truth.shape[0]} true genders for {len(self)} pseudo labels")
        known = np.isin(truth, PSEUDO_GENDERS)
        if not known.any():
            raise DataError("accuracy: no row has a known (female/male) true gender")
        return float((self.genders[known] == truth[known]).mean())


@runtime_checkable
class PseudoGenderLabeler(Protocol):
    """Anything that infers a speaker gender for each clip (an Example, an audio path or a 16 kHz array)."""

    def label(self, items: Sequence[Example | str | os.PathLike | np.ndarray]) -> PseudoGenderLabels:
        """Pseudo genders and (female, male) probabilities, one row per item, in input order."""
        ...


def gender_label_indices(id2label: Mapping[Any, str], *, where: str = "model") -> tuple[int, int]:
    """(female index, male index) of a classifier's outputs, found by label *name*.

    Names are compared lower-cased and stripped against :data:`FEMALE_NAMES` and :data:`MALE_NAMES`
    ("female"/"woman"/"f", "male"/"man"/"m", ...). Other outputs (e.g. "child") are allowed and ignored.

    Raises:
        ConfigError: no output or several outputs are named for one of the two genders; the message
            lists the model's labels.
    """
    found: dict[str, list[int]] = {"female": [], "male": []}
    for index, name in id2label.items():
        key = str(name).strip().lower()
        if key in FEMALE_NAMES:
            found["female"].append(int(index))
        elif key in MALE_NAMES:
            found["male"].append(int(index))
    labels = {int(k): str(v) for k, v in id2label.items()}
    for gender, indices in found.items():
        if len(indices) != 1:
            problem = "no output" if not indices else f"{len(indices)} outputs"
            raise ConfigError(
                f"{where}: {problem} named {gender!r} among its labels {labels}; a pseudo-gender model needs exactly "
                f"one label named female (or {sorted(FEMALE_NAMES - {'female'})}) and one named male (or "
                f"{sorted(MALE_NAMES - {'male'})}) in config.id2label")
    return found["female"][0], found["male"][0]


def _clip(item: Example | str | os.PathLike | np.ndarray) -> np.ndarray:
    from llmfair.data.audio import load_audio

    source = item.audio if isinstance(item, Example) else item
    if isinstance(source, np.ndarray):
        return np.ascontiguousarray(source, dtype=np.float32)
    if isinstance(source, (str, os.PathLike)):
        return load_audio(source)
    raise DataError(f"cannot read audio from a {type(source).__name__}; expected an Example, a path or an array")


def _offline() -> bool:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return os.environ.get("HF_HUB_OFFLINE", "1").strip().lower() not in ("0", "false", "no", "off", "")


class TransformersGenderLabeler:
    """Pseudo genders from a transformers audio-classification model (hub id or local directory).

    Args:
        model: hub id or path of an ``AutoModelForAudioClassification`` checkpoint with its feature
            extractor; ``config.id2label`` must name a female and a male output.
        batch_size: clips per forward pass. Models with a group-normalised feature encoder
            (``feat_extract_norm == "group"``) only batch clips of equal length (padding would change
            their outputs); others pad and pass the attention mask.
        device: torch device.
        revision: hub revision.

    Loading is lazy (first :meth:`label`). Offline by default: ``HF_HUB_OFFLINE`` is set to 1 when
    unset, so only local directories and the local cache are read.
    """

    def __init__(self, model: str | os.PathLike, *, batch_size: int = 8, device: str = "cpu",
                 revision: str | None = None) -> None:
        if batch_size < 1:
            raise ConfigError(f"pseudo-gender model: batch_size must be >= 1, got {batch_size}")
        self.model_name = os.fspath(model)
        self.batch_size = batch_size
        self.device = device
        self.revision = revision
        self._model: Any = None
        self._processor: Any = None
        self.female_index = -1
        self.male_index = -1

    def _load(self) -> None:
        if self._model is not None:
            return
        offline = _offline()
        import torch
        from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

        kwargs: dict[str, Any] = {"revision": self.revision, "trust_remote_code": False, "local_files_only": offline}
        try:
            processor = AutoFeatureExtractor.from_pretrained(self.model_name, **kwargs)
            model, info = AutoModelForAudioClassification.from_pretrained(
                self.model_name, output_loading_info=True, **kwargs)
        except (OSError, ValueError) as exc:
            where = "local directory" if Path(self.model_name).is_dir() else (
                "hub id (offline: only the local Hugging Face cache is searched; set HF_HUB_OFFLINE=0 to download)"
                if offline else "hub id")
            raise ConfigError(f"pseudo-gender model: cannot load {self.model_name!r} as a {where}: {exc}") from None
        missing = sorted(info.get("missing_keys", []))
        if missing:
            raise ConfigError(
                f"pseudo-gender model {self.model_name!r}: {len(missing)} weight(s) are missing from the checkpoint "
                f"(e.g. {missing[:3]}) and would be random; it is not an AutoModelForAudioClassification checkpoint "
                "(audeering's age-gender models need their own AgeGenderModel class, which llmfair does not load)")
        self.female_index, self.male_index = gender_label_indices(
            model.config.id2label, where=f"pseudo-gender model {self.model_name!r}")
        model.eval().requires_grad_(False).to(torch.device(self.device))
        self._model, self._processor = model, processor
        logger.info("pseudo-gender model %s loaded (%s; female=%d, male=%d)", self.model_name,
                    type(model).__name__, self.female_index, self.male_index)

    def _batches(self, lengths: np.ndarray) -> list[np.ndarray]:
        order = np.argsort(-lengths, kind="stable")
        if getattr(self._model.config, "feat_extract_norm", "layer") == "group":
            cuts = np.flatnonzero(np.diff(lengths[order])) + 1
            runs = np.split(order, cuts)
        else:
            runs = [order]
        return [run[i:i + self.batch_size] for run in runs for i in range(0, len(run), self.batch_size)]

    def probabilities(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """(n, 2) (female, male) probabilities: the model's softmax restricted to its female and
        male outputs and renormalised."""
        import torch

        from llmfair.data.audio import resample

        self._load()
        rate = int(getattr(self._processor, "sampling_rate", _SAMPLE_RATE))
        clips = [np.ascontiguousarray(c, dtype=np.float32) for c in clips]
        for i, c in enumerate(clips):
            if c.ndim != 1 or c.size == 0 or not np.isfinite(c).all():
                raise DataError(f"pseudo-gender model: clip {i} must be non-empty, finite, mono 1-D audio at 16 kHz")
        if rate != _SAMPLE_RATE:
            clips = [resample(c, _SAMPLE_RATE, rate) for c in clips]
        lengths = np.array([c.size for c in clips])
        out = np.empty((len(clips), 2), dtype=np.float64)
        pad_mask = bool(getattr(self._processor, "return_attention_mask", False))
        device = next(self._model.parameters()).device
        for index in self._batches(lengths):
            inputs = self._processor([clips[i] for i in index], sampling_rate=rate, padding=True,
                                     return_tensors="pt", return_attention_mask=pad_mask)
            inputs = {k: v.to(device) for k, v in inputs.items()}
            with torch.inference_mode():
                logits = self._model(**inputs).logits.double()
            probs = torch.softmax(logits, dim=-1)[:, [self.female_index, self.male_index]]
            out[index] = (probs / probs.sum(dim=1, keepdim=True)).cpu().numpy()
        return out

    def label(self, items: Sequence[Example | str | os.PathLike | np.ndarray]) -> PseudoGenderLabels:
        """Pseudo genders of Examples, audio paths or 16 kHz float32 arrays."""
        items = list(items)
        if not items:
            raise DataError("pseudo-gender model: nothing to label")
        return PseudoGenderLabels.from_probabilities(self.probabilities([_clip(i) for i in items]),
                                                     source=self.model_name)


class EmbeddingGenderClassifier:
    """Built-in pseudo-gender classifier: logistic regression on frozen clip features.

    Args:
        extractor: feature extractor name (``speaker``: resemblyzer embeddings; ``acoustic``: pitch,
            energy and mel statistics), see :mod:`llmfair.ssl`.
        extractor_options: its options (mapping).
        cache_dir: feature cache root, needed to fit on or label Examples.
        C: inverse L2 regularisation strength of scikit-learn's ``LogisticRegression``.

    Features are standardised with the training mean and standard deviation; the fitted numbers
    are kept as numpy arrays and written as JSON by :meth:`save` (:meth:`load` reads them back and
    checks that the extractor configuration still hashes the same).
    """

    def __init__(self, extractor: str = "speaker", extractor_options: Mapping[str, Any] | None = None,
                 cache_dir: str | os.PathLike | None = None, *, C: float = 1.0) -> None:
        if not C > 0:
            raise ConfigError(f"pseudo-gender classifier: C must be > 0, got {C}")
        self.extractor_name = extractor
        self.extractor_options = dict(extractor_options or {})
        self.cache_dir = cache_dir
        self.C = float(C)
        self.mean: np.ndarray | None = None
        self.scale: np.ndarray | None = None
        self.coef: np.ndarray | None = None
        self.intercept = 0.0
        self.train_accuracy = math.nan
        self.num_train = 0
        self.source = f"logistic regression on {extractor} features"

    # ------------------------------------------------------------------ features
    def _extractor(self):
        from llmfair.ssl import build_feature_extractor

        return build_feature_extractor(self.extractor_name, self.extractor_options,
                                       source="pseudo-gender classifier extractor options")

    def features(self, items: Sequence[Example | str | os.PathLike | np.ndarray]) -> np.ndarray:
        """(n, D) features of the clips, through the feature cache."""
        from llmfair.ssl import extract_features

        if self.cache_dir is None:
            raise ConfigError("pseudo-gender classifier: set cache_dir to extract features from audio")
        features = extract_features(self._extractor(), list(items), self.cache_dir, progress=False)
        return features.reshape(features.shape[0], -1)

    # ------------------------------------------------------------------ fit / predict
    def fit_features(self, features: np.ndarray, genders: Sequence[str]) -> "EmbeddingGenderClassifier":
        """Fit on (n, D) features and true genders; rows of unknown gender are left out.

        Raises:
            DataError: shapes disagree, or the known rows lack one of the two genders.
        """
        from sklearn.linear_model import LogisticRegression

        x = np.asarray(features, dtype=np.float64)
        y = np.asarray(genders, dtype=object)
        if x.ndim != 2 or x.shape[0] != y.shape[0]:
            raise DataError(f"pseudo-gender classifier: features {x.shape} do not match {y.shape[0]} genders")
        known = np.isin(y, PSEUDO_GENDERS)
        present = set(y[known].tolist())
        if present != set(PSEUDO_GENDERS):
            raise DataError(f"pseudo-gender classifier: training rows need both genders; found {sorted(present)}")
        x, target = x[known], (y[known] == "male").astype(np.int64)
        self.mean = x.mean(axis=0)
        scale = x.std(axis=0)
        self.scale = np.where(scale > 0, scale, 1.0)
        model = LogisticRegression(C=self.C, max_iter=5000)
        model.fit((x - self.mean) / self.scale, target)
        self.coef = model.coef_[0].astype(np.float64)
        self.intercept = float(model.intercept_[0])
        self.num_train = int(known.sum())
        self.train_accuracy = float((self.predict_features(x).genders == y[known]).mean())
        logger.info("pseudo-gender classifier on %s features: %d training rows, training accuracy %.3f",
                    self.extractor_name, self.num_train, self.train_accuracy)
        return self

    def fit(self, examples: Sequence[Example]) -> "EmbeddingGenderClassifier":
        """Fit on Examples (their true ``gender``); pass the training split only."""
        examples = list(examples)
        return self.fit_features(self.features(examples), [ex.gender for ex in examples])

    def predict_features(self, features: np.ndarray) -> PseudoGenderLabels:
        """Pseudo genders from (n, D) features: p(male) = σ(w · (x − μ)/σ_x + b)."""
        if self.coef is None:
            raise ConfigError("pseudo-gender classifier: fit or load it before predicting")
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.coef.shape[0]:
            raise DataError(f"pseudo-gender classifier: expected (n, {self.coef.shape[0]}) features, got {x.shape}")
        logit = ((x - self.mean) / self.scale) @ self.coef + self.intercept
        p_male = 0.5 * (1.0 + np.tanh(0.5 * logit))  # σ(logit) without overflow
        return PseudoGenderLabels.from_probabilities(np.stack([1.0 - p_male, p_male], axis=1), source=self.source)

    def label(self, items: Sequence[Example | str | os.PathLike | np.ndarray]) -> PseudoGenderLabels:
        """Pseudo genders of Examples, audio paths or 16 kHz arrays (features through the cache)."""
        return self.predict_features(self.features(list(items)))

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """Everything :meth:`load` needs, as JSON-ready values."""
        if self.coef is None:
            raise ConfigError("pseudo-gender classifier: nothing to save before fit")
        extractor = self._extractor()
        return {
            "format": LOGREG_FORMAT, "version": 1, "classes": list(PSEUDO_GENDERS),
            "extractor": self.extractor_name, "extractor_options": self.extractor_options,
            "extractor_config_hash": extractor.config_hash(), "C": self.C,
            "mean": self.mean.tolist(), "scale": self.scale.tolist(), "coef": self.coef.tolist(),
            "intercept": self.intercept, "num_train": self.num_train, "train_accuracy": self.train_accuracy,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the classifier as JSON (atomically); returns the path."""
        path = Path(path)
        write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> "EmbeddingGenderClassifier":
        """Read a classifier written by :meth:`save`.

        Raises:
            DataError: the file is missing, not JSON, not this format, or its arrays disagree in size.
            ConfigError: the stored extractor configuration no longer hashes the same (features of
                this code would not match the ones it was fitted on: fit it again).
        """
        import json

        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"pseudo-gender classifier file not found: {path}") from None
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not a readable JSON pseudo-gender classifier ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != LOGREG_FORMAT:
            raise DataError(f"{path}: not an llmfair pseudo-gender classifier (format {LOGREG_FORMAT!r} expected)")
        try:
            out = cls(data["extractor"], data["extractor_options"], cache_dir, C=float(data["C"]))
            out.mean, out.scale, out.coef = (np.asarray(data[k], dtype=np.float64) for k in ("mean", "scale", "coef"))
            out.intercept = float(data["intercept"])
            out.num_train, out.train_accuracy = int(data["num_train"]), float(data["train_accuracy"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: malformed pseudo-gender classifier ({type(exc).__name__}: {exc})") from None
        if not (out.mean.ndim == 1 and out.mean.shape == out.scale.shape == out.coef.shape):
            raise DataError(f"{path}: mean, scale and coef must be vectors of one length")
        stored, current = data.get("extractor_config_hash"), out._extractor().config_hash()
        if stored != current:
            raise ConfigError(f"{path}: fitted on {data['extractor']} features with configuration hash {stored}, "
                              f"this code computes {current}; fit the classifier again")
        out.source = f"{out.source} ({path})"
        return out


# ------------------------------------------------------------------------------------- (b) k-means
@dataclass(frozen=True)
class KMeansClusters:
    """A k-means fit on training embeddings.

    Attributes:
        k: number of clusters.
        centers: (k, D) float64 cluster centres.
        train_labels: (n_train,) int64 cluster of each training embedding (``labels_`` of the fit).
        inertia: the fit's inertia (sum of squared distances to the nearest centre).
    """

    k: int
    centers: np.ndarray
    train_labels: np.ndarray
    inertia: float

    def assign(self, embeddings: np.ndarray) -> np.ndarray:
        """(n,) int64 nearest centre (Euclidean) of each embedding — ``MiniBatchKMeans.predict``."""
        x = np.asarray(embeddings, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.centers.shape[1]:
            raise DataError(f"k-means: expected (n, {self.centers.shape[1]}) embeddings, got {x.shape}")
        sq = (x * x).sum(1, keepdims=True) - 2.0 * x @ self.centers.T + (self.centers * self.centers).sum(1)
        return sq.argmin(axis=1).astype(np.int64)


def fit_kmeans(train_embeddings: np.ndarray, k: int, **overrides: Any) -> KMeansClusters:
    """k-means on the training embeddings with the IDI parameters (:data:`KMEANS_PARAMETERS`).

    Args:
        train_embeddings: (n, D) speaker embeddings of the training split.
        k: number of clusters, 2 <= k <= n (the paper uses :data:`CLUSTER_COUNTS`).
        overrides: replace any ``MiniBatchKMeans`` parameter (e.g. ``random_state``).

    Assign dev/test with :meth:`KMeansClusters.assign`: groups must come from the training fit.
    """
    from sklearn.cluster import MiniBatchKMeans

    x = np.asarray(train_embeddings, dtype=np.float64)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise DataError(f"k-means: training embeddings must be a finite (n, D) array, got shape {x.shape}")
    if not 2 <= int(k) <= x.shape[0]:
        raise ConfigError(f"k-means: K={k} must be between 2 and the number of training embeddings ({x.shape[0]})")
    unknown = sorted(set(overrides) - set(KMEANS_PARAMETERS))
    if unknown:
        raise ConfigError(f"k-means: unknown parameter(s) {unknown}; known: {sorted(KMEANS_PARAMETERS)}")
    model = MiniBatchKMeans(n_clusters=int(k), **{**KMEANS_PARAMETERS, **overrides}).fit(x)
    sizes = np.bincount(model.labels_, minlength=int(k))
    if (sizes == 0).any():
        logger.warning("k-means K=%d: %d cluster(s) hold no training embedding", k, int((sizes == 0).sum()))
    return KMeansClusters(k=int(k), centers=model.cluster_centers_.astype(np.float64),
                          train_labels=model.labels_.astype(np.int64), inertia=float(model.inertia_))


@dataclass(frozen=True)
class ClusterPurity:
    """How well clusters follow a true attribute.

    Attributes:
        purity: Σ_k max_g n_{k,g} / N over the rows whose gender is female or male.
        contingency: rows = cluster names (``k00``...), columns = gender values, cells = counts
            (unknown-gender rows shown, not scored).
        num_scored: N.
    """

    purity: float
    contingency: Any
    num_scored: int


def cluster_purity(clusters: np.ndarray, genders: Sequence[str], k: int | None = None) -> ClusterPurity:
    """Purity of ``clusters`` against the true ``genders`` (each cluster votes for its majority gender)."""
    import pandas as pd

    labels = np.asarray(clusters, dtype=np.int64)
    truth = np.asarray(genders, dtype=object)
    if labels.shape != truth.shape:
        raise DataError(f"cluster purity: {labels.shape[0]} cluster labels for {truth.shape[0]} genders")
    k = (int(labels.max()) + 1 if labels.size else 1) if k is None else int(k)
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise DataError(f"cluster purity: cluster ids must lie in [0, {k})")
    values, inverse = np.unique(truth.astype(str), return_inverse=True)
    columns = list(PSEUDO_GENDERS) + sorted(set(values.tolist()) - set(PSEUDO_GENDERS))
    column_of_value = np.array([columns.index(v) for v in values.tolist()], dtype=np.int64)
    counts = np.zeros((k, len(columns)), dtype=np.int64)
    np.add.at(counts, (labels, column_of_value[inverse.reshape(-1)]), 1)
    scored = counts[:, :2]
    n = int(scored.sum())
    if n == 0:
        raise DataError("cluster purity: no row has a known (female/male) gender")
    table = pd.DataFrame(counts, index=cluster_names(k), columns=columns)
    return ClusterPurity(purity=float(scored.max(axis=1).sum() / n), contingency=table, num_scored=n)


def cluster_names(k: int) -> tuple[str, ...]:
    """``k00``, ``k01``, ...: zero-padded, so sorted names follow the cluster ids."""
    width = max(2, len(str(k - 1)))
    return tuple(f"k{i:0{width}d}" for i in range(k))


# ------------------------------------------------------------------------------------- (c) t-SNE
def tsne_embedding(embeddings: np.ndarray) -> np.ndarray:
    """(n, 2) t-SNE coordinates with :data:`TSNE_PARAMETERS` (perplexity capped at n − 1, since
    scikit-learn needs it below the number of points)."""
    from sklearn.manifold import TSNE

    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise DataError(f"t-SNE: embeddings must be an (n, D) array, got shape {x.shape}")
    if x.shape[0] < 3:
        raise DataError(f"t-SNE needs at least 3 points, got {x.shape[0]}")
    params = {**TSNE_PARAMETERS, "perplexity": min(TSNE_PARAMETERS["perplexity"], x.shape[0] - 1.0)}
    return TSNE(**params).fit_transform(x)


def scatter_panels(coords: np.ndarray, panels: Sequence[tuple[str, Sequence[Any]]], path: str | os.PathLike, *,
                   columns: int = 3) -> Path:
    """One scatter panel of ``coords`` per ``(title, labels)``, coloured by label; a PNG written
    atomically (Agg canvas; matplotlib imported here). Genders get the reports' colours."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    coords = np.asarray(coords, dtype=np.float64)
    if not panels:
        raise DataError("scatter plot: no panel to draw")
    ncols = min(columns, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(5.5 * ncols, 5.0 * nrows), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    for p, (title, labels) in enumerate(panels):
        names = np.asarray([str(v) for v in labels], dtype=object)
        if names.shape[0] != coords.shape[0]:
            raise DataError(f"scatter plot {title!r}: {names.shape[0]} labels for {coords.shape[0]} points")
        ax = fig.add_subplot(nrows, ncols, p + 1)
        categories = sorted(set(names.tolist()))
        if len(categories) <= len(_PALETTE):
            colors = list(_PALETTE)
        else:  # many clusters: one distinct colour each (tab20, then evenly spaced turbo hues)
            from matplotlib import colormaps

            cmap = colormaps["tab20" if len(categories) <= 20 else "turbo"]
            colors = [cmap(i / max(1, len(categories) - 1)) if len(categories) > 20 else cmap(i)
                      for i in range(len(categories))]
        for j, name in enumerate(categories):
            mask = names == name
            ax.scatter(coords[mask, 0], coords[mask, 1], s=10, alpha=0.8, label=f"{name} (n={int(mask.sum())})",
                       color=_GENDER_COLORS.get(name, colors[j % len(colors)]))
        ax.set_xlabel("t-SNE 1")
        ax.set_ylabel("t-SNE 2")
        ax.set_title(title)
        if len(categories) <= 16:
            ax.legend(fontsize=6, markerscale=1.2, loc="best")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def tsne_plot(embeddings: np.ndarray, labels: Sequence[Any], path: str | os.PathLike, *,
              title: str | None = None) -> np.ndarray:
    """Embed with t-SNE (:data:`TSNE_PARAMETERS`) and write a scatter plot coloured by ``labels``.

    The perplexity (40 in the paper) is capped at n − 1, since scikit-learn needs it below the
    number of points. The PNG is written atomically (Agg canvas; matplotlib imported here).

    Returns:
        (n, 2) the t-SNE coordinates.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    names = np.asarray([str(v) for v in labels], dtype=object)
    if x.ndim != 2 or x.shape[0] != names.shape[0]:
        raise DataError(f"t-SNE: embeddings {x.shape} do not match {names.shape[0]} labels")
    coords = tsne_embedding(x)
    perplexity = min(TSNE_PARAMETERS["perplexity"], x.shape[0] - 1.0)
    scatter_panels(coords, [(title or f"t-SNE (perplexity {perplexity:g}, n={x.shape[0]})", names)], path)
    logger.info("t-SNE plot of %d points written to %s", x.shape[0], path)
    return coords


# ------------------------------------------------------------------------------------- (d) groups
def _product_groups(columns: Sequence[tuple[str, np.ndarray, Sequence[str]]]) -> tuple[GroupSpec, np.ndarray]:
    """GroupSpec over the product of each attribute's vocabulary, and every row's id (row-major)."""
    keys = tuple(name for name, _, _ in columns)
    if len(set(keys)) != len(keys):
        raise ConfigError(f"group attributes repeat: {list(keys)}")
    vocabularies = [tuple(vocab) for _, _, vocab in columns]
    codes = []
    for name, values, vocab in columns:
        uniq, inverse = np.unique(np.asarray(values, dtype=object).astype(str), return_inverse=True)
        bad = sorted(set(uniq.tolist()) - set(vocab))
        if bad:
            raise DataError(f"group attribute {name!r}: value(s) {bad[:5]} are not in {list(vocab)[:8]}")
        lookup = np.array([list(vocab).index(v) for v in uniq.tolist()], dtype=np.int64)
        codes.append(lookup[inverse.reshape(-1)] if uniq.size else np.zeros(0, dtype=np.int64))
    lengths = {len(c) for c in codes}
    if len(lengths) != 1:
        raise DataError(f"group attributes have different lengths: {[len(c) for c in codes]}")
    ids = np.ravel_multi_index(tuple(codes), tuple(len(v) for v in vocabularies)) if codes[0].size else codes[0]
    return GroupSpec(keys, tuple(itertools.product(*vocabularies))), np.asarray(ids, dtype=np.int64)


def _extra_columns(extra: Mapping[str, Sequence[str]] | None) -> list[tuple[str, np.ndarray, Sequence[str]]]:
    out = []
    for name, values in (extra or {}).items():
        arr = np.asarray([str(v) for v in values], dtype=object)
        out.append((name, arr, sorted(set(arr.tolist()))))
    return out


def pseudo_gender_groups(pseudo: PseudoGenderLabels | Sequence[str], *,
                         extra: Mapping[str, Sequence[str]] | None = None) -> tuple[GroupSpec, np.ndarray]:
    """Group ids and a GroupSpec from pseudo genders (attribute ``gender``: female, male).

    Args:
        pseudo: :class:`PseudoGenderLabels` or a sequence of ``female``/``male``.
        extra: further per-row attributes (e.g. ``{"language": [...], "modality": [...]}`` for
            MinMaxGAP cells); they come first in the keys, ``gender`` last.

    The groups are the product of every attribute's values (the gender groups are always female
    and male, in that order — the column order of the pseudo-label probabilities, so
    ``pseudo.probabilities`` are PGDRO's memberships for this spec when there is no ``extra``).
    Pass all splits' rows together so their ids share one spec.
    """
    genders = pseudo.genders if isinstance(pseudo, PseudoGenderLabels) else np.asarray(pseudo, dtype=object)
    return _product_groups(_extra_columns(extra) + [("gender", np.asarray(genders, dtype=object), PSEUDO_GENDERS)])


def cluster_groups(clusters: np.ndarray, k: int, *,
                   extra: Mapping[str, Sequence[str]] | None = None) -> tuple[GroupSpec, np.ndarray]:
    """Group ids and a GroupSpec from k-means clusters (attribute ``cluster``: ``k00`` … ``k{K-1}``).

    Every one of the K clusters is a group, also when a split has no row in it, so train and dev ids
    agree. With no ``gender`` attribute, objectives treat each cluster as a group of its own.
    """
    labels = np.asarray(clusters, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise DataError(f"cluster ids must lie in [0, {k}); got {int(labels.min())}..{int(labels.max())}")
    names = cluster_names(int(k))
    values = np.asarray(names, dtype=object)[labels]
    return _product_groups(_extra_columns(extra) + [("cluster", values, names)])
