"""The groups file a sweep trains on (``llmfair groups infer``): pseudo gender labels and k-means
clusters of the embeddings in a features directory, with cluster purity per K and the t-SNE figure.

IDI (Lin, Chou & Lee, Interspeech 2025, §3.1; METHODS.md §2.14) trains DS, RW, GDRO and GADRO on
inferred groups. This module turns a features directory written by ``llmfair features extract``
(:mod:`llmfair.ssl.extract`; speaker embeddings, as in the paper) into:

- ``groups.csv`` — exactly what :func:`llmfair.sweep.load_group_table` reads: ``id``,
  ``pseudo_gender`` (female/male), ``pseudo_p_female``, ``pseudo_p_male`` (PGDRO's soft
  memberships) and ``cluster_<K>`` (integer ids 0..K−1) for every K, one row per utterance;
- beside it, with the same stem: ``<stem>.purity.csv`` (K, purity, rows scored, empty clusters),
  ``<stem>.purity.md`` (the same, the pseudo-label accuracy and each K's contingency table),
  ``<stem>.tsne.png`` (one t-SNE of the embeddings, coloured by true gender, pseudo gender and
  each K's clusters) and ``<stem>.json`` (what was done, from which features).

**Pseudo labels** (``pseudo_model``):

- ``builtin`` — :class:`~llmfair.groups.inference.EmbeddingGenderClassifier` (logistic regression
  on the features), *cross-fitted over speakers*: the speakers of known gender are dealt into
  ``pseudo_folds`` speaker-disjoint folds (each gender spread evenly, seeded), and every row is
  labelled by a classifier fitted on the other folds' rows, so no pseudo label comes from a
  classifier that saw the speaker [I]. It does use the corpus's gender labels (of the other
  speakers); the paper's pretrained model uses none — pass one with ``pseudo_model`` to match it.
- a ``.json`` file written by ``EmbeddingGenderClassifier.save`` — applied to the features (it
  must have been fitted on features of the same extractor configuration).
- anything else — a transformers audio-classification model (hub id or local directory,
  :class:`~llmfair.groups.inference.TransformersGenderLabeler`), applied to the audio the
  features directory lists.

**Clusters**: :func:`~llmfair.groups.inference.fit_kmeans` (IDI's MiniBatchKMeans parameters,
``random_state = seed``), one fit per K on *every* row of the features [I]: k-means uses no labels,
a sweep reads only its training rows' clusters, and with EMO-SUPERB's rotating folds every
utterance is a training row in some fold, so one fit serves all folds. Purity (each cluster votes
for its majority gender) is computed over the rows of known gender.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from llmfair._atomic import write_json, write_text
from llmfair.errors import ConfigError, DataError
from llmfair.groups.inference import (
    CLUSTER_COUNTS,
    PSEUDO_GENDERS,
    EmbeddingGenderClassifier,
    PseudoGenderLabels,
    TransformersGenderLabeler,
    cluster_names,
    cluster_purity,
    fit_kmeans,
    scatter_panels,
    tsne_embedding,
)

logger = logging.getLogger(__name__)

GROUP_METHODS: tuple[str, ...] = ("pseudo", "kmeans")
"""What :func:`infer_groups` can write: pseudo gender labels, k-means clusters."""
BUILTIN = "builtin"
"""``pseudo_model`` value of the built-in, speaker-cross-fitted embedding classifier."""


@dataclass
class GroupInferenceOptions:
    """How groups are inferred (``llmfair groups infer`` flags and a sweep's ``infer_groups`` keys)."""

    methods: list = field(default_factory=lambda: list(GROUP_METHODS),
                          metadata={"help": f"what to infer: any of {list(GROUP_METHODS)}"})
    K: list = field(default_factory=lambda: list(CLUSTER_COUNTS),
                    metadata={"help": "k-means cluster counts (IDI: 2, 4, 8, 16, 32)"})
    pseudo_model: str = field(
        default=BUILTIN, metadata={"help": "builtin (logistic regression on the features, cross-fitted over speakers), "
                                           "a classifier .json, or a transformers audio-classification model id/path"})
    pseudo_folds: int = field(default=5, metadata={"help": "speaker-disjoint folds of the builtin classifier"})
    seed: int = field(default=42, metadata={"help": "k-means random_state (IDI: 42) and the speaker-fold deal"})
    tsne: bool = field(default=True, metadata={"help": "write the t-SNE figure"})

    def __post_init__(self) -> None:
        if isinstance(self.methods, str):
            self.methods = [m.strip() for m in self.methods.split(",") if m.strip()]
        bad = [m for m in self.methods if m not in GROUP_METHODS]
        if not self.methods or bad:
            raise ConfigError(f"group inference methods {self.methods!r}: expected one or more of {list(GROUP_METHODS)}")
        self.methods = [m for m in GROUP_METHODS if m in self.methods]
        if isinstance(self.K, (int, str)) and not isinstance(self.K, bool):
            self.K = [self.K]
        try:
            ks = [int(str(k).strip()) for k in self.K]
        except ValueError:
            raise ConfigError(f"K must be whole numbers >= 2, got {self.K!r}") from None
        if "kmeans" in self.methods and (not ks or min(ks) < 2 or len(set(ks)) != len(ks)):
            raise ConfigError(f"K must be distinct whole numbers >= 2, got {self.K!r}")
        self.K = sorted(ks)
        if not isinstance(self.pseudo_model, str) or not self.pseudo_model.strip():
            raise ConfigError("pseudo_model must be 'builtin', a classifier .json or a model id/path")
        if isinstance(self.pseudo_folds, bool) or not isinstance(self.pseudo_folds, int) or self.pseudo_folds < 2:
            raise ConfigError(f"pseudo_folds must be an integer >= 2, got {self.pseudo_folds!r}")

    def identity(self) -> dict[str, Any]:
        """What determines the groups (the t-SNE figure does not)."""
        out = {"methods": list(self.methods), "seed": self.seed}
        if "kmeans" in self.methods:
            out["K"] = list(self.K)
        if "pseudo" in self.methods:
            out["pseudo_model"] = self.pseudo_model
            if self.pseudo_model == BUILTIN:
                out["pseudo_folds"] = self.pseudo_folds
        return out


@dataclass
class GroupInferenceResult:
    """What :func:`infer_groups` wrote and found."""

    path: Path
    files: list[Path]
    purity: dict[int, float]
    pseudo_accuracy: float | None
    seconds: float


def sidecar(path: str | os.PathLike, suffix: str) -> Path:
    """``groups.csv`` → ``groups<suffix>`` (e.g. ``.purity.csv``) in the same folder."""
    path = Path(path)
    return path.with_name(path.stem + suffix)


# ------------------------------------------------------------------------------------- pseudo labels
def speaker_folds(speakers: Sequence[str], genders: Sequence[str], n_folds: int, seed: int) -> dict[str, int]:
    """Deal the speakers of known gender into ``n_folds`` folds: each gender shuffled (seeded) and
    dealt round-robin, the second gender continuing where the first stopped, so every fold gets
    about the same number of each.

    Raises:
        DataError: fewer than 2 speakers of one gender (no fold could be fitted on both genders).
    """
    speakers = np.asarray([str(s) for s in speakers], dtype=object)
    genders = np.asarray(genders, dtype=object)
    per_gender = {g: sorted(set(speakers[genders == g].tolist())) for g in PSEUDO_GENDERS}
    small = {g: len(v) for g, v in per_gender.items() if len(v) < 2}
    if small:
        raise DataError(f"the builtin pseudo-gender classifier is cross-fitted over speakers and needs at least 2 "
                        f"speakers of each gender; found {small}")
    folds = min(n_folds, min(len(v) for v in per_gender.values()))
    rng = np.random.default_rng(seed)
    out: dict[str, int] = {}
    position = 0
    for g in PSEUDO_GENDERS:
        for name in rng.permutation(np.asarray(per_gender[g], dtype=object)).tolist():
            out[name] = position % folds
            position += 1
    return out


def crossfit_pseudo_labels(x: np.ndarray, speakers: Sequence[str], genders: Sequence[str], *, n_folds: int = 5,
                           seed: int = 42, extractor: str = "speaker") -> PseudoGenderLabels:
    """Pseudo genders of every row from the built-in classifier, cross-fitted over speakers.

    Row i is labelled by an :class:`EmbeddingGenderClassifier` fitted on the rows of known gender
    whose speaker is not in i's fold (:func:`speaker_folds`); rows of speakers of unknown gender by
    one fitted on all rows of known gender.
    """
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    speakers = np.asarray([str(s) for s in speakers], dtype=object)
    genders = np.asarray(genders, dtype=object)
    known = np.isin(genders, PSEUDO_GENDERS)
    fold_of = speaker_folds(speakers[known], genders[known], n_folds, seed)
    row_fold = np.array([fold_of.get(s, -1) for s in speakers], dtype=np.int64)
    probs = np.zeros((len(x), 2), dtype=np.float64)
    for fold in sorted(set(fold_of.values())) + ([-1] if (row_fold == -1).any() else []):
        target = row_fold == fold
        fit_rows = known & (row_fold != fold) if fold >= 0 else known
        model = EmbeddingGenderClassifier(extractor).fit_features(x[fit_rows], genders[fit_rows])
        probs[target] = model.predict_features(x[target]).probabilities
    return PseudoGenderLabels.from_probabilities(
        probs, source=f"logistic regression on {extractor} features, cross-fitted over {max(fold_of.values()) + 1} "
                      "speaker folds")


def _classifier_labels(path: Path, features: Any) -> PseudoGenderLabels:
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable pseudo-gender classifier ({exc})") from None
    stored_hash = stored.get("extractor_config_hash") if isinstance(stored, dict) else None
    if stored_hash != features.config_hash:
        raise ConfigError(f"{path} was fitted on {stored.get('extractor') if isinstance(stored, dict) else '?'} "
                          f"features (configuration {str(stored_hash)[:12]}); {features.folder} holds "
                          f"{features.extractor} features (configuration {features.config_hash[:12]})")
    model = EmbeddingGenderClassifier.load(path)
    return model.predict_features(features.values.reshape(len(features.ids), -1))


def pseudo_labels(features: Any, options: GroupInferenceOptions) -> PseudoGenderLabels:
    """Pseudo genders of every row of a :class:`~llmfair.ssl.extract.FeatureSet` (``options.pseudo_model``)."""
    spec = options.pseudo_model
    utt = features.utterances
    if spec == BUILTIN:
        return crossfit_pseudo_labels(features.values, utt["speaker"].to_numpy(), utt["gender"].to_numpy(),
                                      n_folds=options.pseudo_folds, seed=options.seed, extractor=features.extractor)
    if spec.endswith(".json"):
        return _classifier_labels(Path(spec), features)
    audio = utt["audio"].tolist()
    missing = [a for a in audio if not a or not Path(a).is_file()]
    if missing:
        raise DataError(f"pseudo-gender model {spec!r} reads the audio, but {len(missing)} clip(s) listed in "
                        f"{features.folder / 'utterances.csv'} are missing, e.g. {missing[:3]}")
    return TransformersGenderLabeler(spec).label(audio)


# ------------------------------------------------------------------------------------- the job
def infer_groups(features: Any, out: str | os.PathLike, options: GroupInferenceOptions | None = None, *,
                 progress: bool = True) -> GroupInferenceResult:
    """Write the groups file ``out`` (and its purity tables, t-SNE figure and manifest) for a
    features directory.

    Args:
        features: a :class:`~llmfair.ssl.extract.FeatureSet` or the path of a features directory.
        out: the groups CSV to write (its sidecars share its stem; see the module docstring).
        options: what to infer (default: pseudo labels with the builtin classifier and K ∈ {2, 4, 8, 16, 32}).
        progress: a tqdm bar over the steps.

    Raises:
        ConfigError / DataError: an unusable pseudo model, a K larger than the number of rows,
            too few speakers of a gender for the builtin classifier.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from llmfair.ssl.extract import FeatureSet, load_feature_set

    started = time.perf_counter()
    options = options or GroupInferenceOptions()
    if not isinstance(features, FeatureSet):
        features = load_feature_set(features)
    out = Path(out)
    n = len(features.ids)
    x = features.values.reshape(n, -1).astype(np.float64)
    genders = features.utterances["gender"].to_numpy(dtype=object)
    if "kmeans" in options.methods and options.K[-1] > n:
        raise ConfigError(f"K={options.K[-1]} is larger than the {n} rows of {features.folder}")
    table = pd.DataFrame({"id": list(features.ids)})
    purity: dict[int, Any] = {}
    pseudo = None
    steps = (["pseudo"] if "pseudo" in options.methods else []) + (
        [f"k={k}" for k in options.K] if "kmeans" in options.methods else []) + (["t-SNE"] if options.tsne else [])
    with tqdm(steps, desc="groups", unit="step", disable=not progress) as bar:
        for step in bar:
            bar.set_postfix_str(step)
            if step == "pseudo":
                pseudo = pseudo_labels(features, options)
                table["pseudo_gender"] = pseudo.genders
                table["pseudo_p_female"] = np.round(pseudo.probabilities[:, 0], 6)
                table["pseudo_p_male"] = np.round(1.0 - table["pseudo_p_female"].to_numpy(), 6)
            elif step.startswith("k="):
                k = int(step[2:])
                clusters = fit_kmeans(x, k, random_state=options.seed).train_labels
                table[f"cluster_{k}"] = clusters
                purity[k] = cluster_purity(clusters, genders, k)
            else:
                coords = tsne_embedding(x)
                panels = [("true gender", genders)]
                if pseudo is not None:
                    panels.append(("pseudo gender", pseudo.genders))
                panels += [(f"k-means K={k} (purity {purity[k].purity:.3f})",
                            np.asarray(cluster_names(k), dtype=object)[table[f"cluster_{k}"].to_numpy()])
                           for k in purity]
                scatter_panels(coords, panels, sidecar(out, ".tsne.png"))

    known = np.isin(genders, PSEUDO_GENDERS)
    accuracy = pseudo.accuracy(genders) if pseudo is not None and known.any() else None
    write_text(out, table.to_csv(index=False, lineterminator="\n"))
    files = [out]
    rows = [{"K": k, "purity": round(p.purity, 6), "n_scored": p.num_scored,
             "empty_clusters": int((p.contingency.to_numpy().sum(1) == 0).sum()),
             "largest_cluster_share": round(float(p.contingency.to_numpy().sum(1).max() / n), 6)}
            for k, p in purity.items()]
    if purity:
        write_text(sidecar(out, ".purity.csv"), pd.DataFrame(rows).to_csv(index=False, lineterminator="\n"))
        files.append(sidecar(out, ".purity.csv"))
    write_text(sidecar(out, ".purity.md"), _markdown(features, rows, purity, pseudo, accuracy))
    files.append(sidecar(out, ".purity.md"))
    if options.tsne:
        files.append(sidecar(out, ".tsne.png"))
    seconds = time.perf_counter() - started
    write_json(sidecar(out, ".json"), {
        "written_by": "llmfair groups infer", "groups_file": out.name,
        "features": {"folder": str(features.folder.resolve()), "extractor": features.extractor,
                     "config_hash": features.config_hash, "ids_sha256": features.manifest["corpus"]["ids_sha256"],
                     "rows": n},
        "options": asdict(options), "identity": options.identity(),
        "pseudo_source": pseudo.source if pseudo is not None else None, "pseudo_accuracy": accuracy,
        "purity": {str(r["K"]): r["purity"] for r in rows}, "seconds": round(seconds, 3),
        "files": [p.name for p in files] + [sidecar(out, ".json").name],
    })
    files.append(sidecar(out, ".json"))
    logger.info("groups of %d rows written to %s (%.1f s)", n, out, seconds)
    return GroupInferenceResult(out, files, {k: p.purity for k, p in purity.items()}, accuracy, seconds)


def _markdown(features: Any, rows: list[dict], purity: dict, pseudo: PseudoGenderLabels | None,
              accuracy: float | None) -> str:
    lines = [f"# Inferred groups of {features.folder}", "",
             f"{len(features.ids)} rows; {features.extractor} features {tuple(features.values.shape[1:])}.", ""]
    if pseudo is not None:
        counts = {g: int((pseudo.genders == g).sum()) for g in PSEUDO_GENDERS}
        acc = "n/a (no row of known gender)" if accuracy is None else f"{accuracy:.3f}"
        lines += [(f"Pseudo gender ({pseudo.source}): {counts['female']} female, {counts['male']} male; accuracy "
                   f"against the true gender {acc}."), ""]
    if rows:
        lines += ["| K | purity | rows scored | empty clusters | largest cluster share |", "|---|---|---|---|---|"]
        lines += [f"| {r['K']} | {r['purity']:.3f} | {r['n_scored']} | {r['empty_clusters']} | "
                  f"{r['largest_cluster_share']:.3f} |" for r in rows]
        lines.append("")
        for k, p in purity.items():
            table = p.contingency
            lines += [f"## K = {k}: clusters × true gender", "", "| cluster | " + " | ".join(table.columns) + " |",
                      "|---" * (len(table.columns) + 1) + "|"]
            lines += [f"| {name} | " + " | ".join(str(int(v)) for v in row) + " |"
                      for name, row in zip(table.index, table.to_numpy())]
            lines.append("")
    return "\n".join(lines)
