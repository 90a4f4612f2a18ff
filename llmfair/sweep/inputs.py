"""What a feature-sweep run reads: the frozen features (:class:`FeatureTable`, from a safetensors
file or an extractor through the feature cache), the inferred groups of ``groups_file``
(:class:`GroupTable`), the groups a run trains on (:func:`training_groups`), and
:class:`SweepInputs`, the per-process caches of fold files, imbalanced splits, features and groups.

The groups file is a CSV with column ``id``, ``pseudo_gender`` (female/male), optionally
``pseudo_p_female`` and ``pseudo_p_male`` (soft memberships for PGDRO), and ``cluster_<K>``
(integer cluster ids 0..K−1); only training rows need them. With ``infer_groups`` instead, the
sweep writes that file itself (:func:`build_inferred_groups`: the features directory is extracted
first when needed, then :func:`llmfair.groups.infer_groups`). Either way the file is checked
before any run reads it (:func:`check_group_table`: every K, the pseudo labels, every training id).
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from llmfair.data.example import Example
from llmfair.data.labels import CREMA_D, normalise_gender
from llmfair.errors import ConfigError, DataError
from llmfair.sweep.config import FeatureSource, SweepConfig
from llmfair.sweep.plan import RunSpec

logger = logging.getLogger(__name__)


@dataclass
class FeatureTable:
    """Features of every utterance, looked up by id."""

    ids: tuple[str, ...]
    values: Any  # torch.Tensor (N, D) or (N, L, D), float32
    source: str
    index: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.index = {i: r for r, i in enumerate(self.ids)}
        if len(self.index) != len(self.ids):
            dup = next(i for i in self.ids if self.ids.count(i) > 1)
            raise DataError(f"{self.source}: id {dup!r} appears more than once")

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        """Row numbers of ``ids``; DataError naming the missing ones."""
        missing = [i for i in ids if i not in self.index]
        if missing:
            raise DataError(f"{self.source}: no features for {len(missing)} utterance(s), e.g. {missing[:5]}")
        return np.fromiter((self.index[i] for i in ids), dtype=np.int64, count=len(ids))


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"feature ids file not found: {path} (a JSON list of the feature rows' utterance ids)")
    try:
        ids = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is not valid UTF-8 JSON: {exc}") from None
    if isinstance(ids, Mapping):
        ids = ids.get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise DataError(f"{path}: expected a JSON list of utterance id strings (or {{\"ids\": [...]}})")
    return ids


def load_feature_file(path: str | os.PathLike, *, tensor: str = "features", ids: str | os.PathLike | None = None) -> FeatureTable:
    """Read an (N, D) / (N, L, D) tensor from a safetensors file and its N ids (JSON list).

    ``ids`` defaults to the file's name with ``.ids.json`` instead of ``.safetensors``.
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    path = Path(path)
    if not path.is_file():
        raise DataError(f"features file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            names = list(handle.keys())
            if tensor not in names:
                raise DataError(f"{path} has no tensor {tensor!r}; it has {names}")
            values = handle.get_tensor(tensor)
    except SafetensorError as exc:
        raise DataError(f"{path} is not a readable safetensors file: {exc}") from None
    if values.ndim not in (2, 3) or not values.is_floating_point():
        raise DataError(f"{path}: tensor {tensor!r} must be a float (N, D) or (N, L, D) array, got "
                        f"{values.dtype} {tuple(values.shape)}")
    id_path = Path(ids) if ids is not None else path.with_suffix(".ids.json")
    id_list = _read_ids(id_path)
    if len(id_list) != values.shape[0]:
        raise DataError(f"{id_path} lists {len(id_list)} ids for the {values.shape[0]} rows of {path}")
    return FeatureTable(tuple(id_list), values.to(torch.float32).contiguous(), source=str(path))


def _extract_feature_table(source: FeatureSource, examples: Sequence[Example], out: Path,
                           progress: bool = True) -> FeatureTable:
    import torch

    from llmfair.ssl import build_feature_extractor, extract_features

    extractor = build_feature_extractor(source.extractor, source.extractor_options, source="features extractor_options")
    cache = Path(source.cache_dir) if source.cache_dir else out / "feature_cache"
    values = extract_features(extractor, examples, cache, batch_size=source.batch_size, progress=progress)
    return FeatureTable(tuple(e.id for e in examples), torch.as_tensor(values, dtype=torch.float32),
                        source=f"{source.extractor} features of {source.audio_dir}")


@dataclass
class GroupTable:
    """Inferred training groups per utterance id (``groups_file``)."""

    source: str
    index: dict[str, int]
    pseudo: np.ndarray | None
    pseudo_probs: np.ndarray | None
    clusters: dict[int, np.ndarray]

    def rows(self, ids: Sequence[str], what: str) -> np.ndarray:
        missing = [i for i in ids if i not in self.index]
        if missing:
            raise DataError(f"{self.source}: no {what} for {len(missing)} training utterance(s), e.g. {missing[:5]}")
        return np.fromiter((self.index[i] for i in ids), dtype=np.int64, count=len(ids))


def load_group_table(path: str | os.PathLike) -> GroupTable:
    """Read the inferred-groups CSV (columns: the module docstring)."""
    from llmfair.data._csv import read_csv_checked

    path = Path(path)
    frame = read_csv_checked(path, ("id",))
    ids = frame["id"].str.strip()
    if ids.duplicated().any():
        raise DataError(f"{path}: id {ids[ids.duplicated()].iloc[0]!r} appears more than once")
    pseudo = probs = None
    if "pseudo_gender" in frame.columns:
        codes, uniques = frame["pseudo_gender"].factorize()
        mapped = [normalise_gender(v, where=f"{path}, column 'pseudo_gender'") for v in uniques]
        pseudo = np.asarray(mapped, dtype=object)[codes]
    prob_cols = [c for c in ("pseudo_p_female", "pseudo_p_male") if c in frame.columns]
    if len(prob_cols) == 1:
        raise DataError(f"{path}: give both pseudo_p_female and pseudo_p_male, or neither")
    if prob_cols:
        import pandas as pd

        probs = frame[prob_cols].apply(lambda s: pd.to_numeric(s.str.strip(), errors="coerce")).to_numpy(dtype=np.float64)
        bad = ~np.isfinite(probs).all(1) | (probs < 0).any(1) | (np.abs(probs.sum(1) - 1) > 1e-4)
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{path}: pseudo_p_female/pseudo_p_male of id {ids.iloc[i]!r} are not probabilities "
                            f"summing to 1: {probs[i].tolist()}")
    clusters: dict[int, np.ndarray] = {}
    for column in frame.columns:
        match = re.fullmatch(r"cluster_(\d+)", column)
        if not match:
            continue
        k = int(match.group(1))
        text = frame[column].str.strip()
        ok = text.str.fullmatch(r"\d+")
        values = np.where(ok, text, "-1").astype(np.int64)
        bad = ~ok.to_numpy() | (values >= k)
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{path}: column {column!r} of id {ids.iloc[i]!r} is {text.iloc[i]!r}; expected a "
                            f"cluster id in 0..{k - 1}")
        clusters[k] = values
    return GroupTable(str(path), {i: r for r, i in enumerate(ids)}, pseudo, probs, clusters)


_GENDER_SPEC_KEYS = ("language", "modality", "gender")


def _gender_spec(values: np.ndarray):
    """GroupSpec (language, modality, gender) with female and male always present, and ids."""
    from llmfair.data.grouping import GroupSpec

    genders = ["female", "male"] + (["unknown"] if (values == "unknown").any() else [])
    spec = GroupSpec(_GENDER_SPEC_KEYS, tuple(("eng", "audio", g) for g in genders))
    lookup = {g: i for i, g in enumerate(genders)}
    return spec, np.fromiter((lookup[v] for v in values), dtype=np.int64, count=len(values))


def _cluster_spec(k: int):
    from llmfair.data.grouping import GroupSpec

    return GroupSpec(("cluster",), tuple((str(c),) for c in range(k)))


@dataclass
class TrainingGroups:
    """What a run trains with: the GroupSpec, group ids and (PGDRO) soft memberships."""

    spec: Any
    ids: np.ndarray
    probs: np.ndarray | None
    names: list[str]


def training_groups(run: RunSpec, train: Sequence[Example], groups: GroupTable | None) -> TrainingGroups:
    """The groups of the training rows for the run's ``groups`` source (see :mod:`llmfair.sweep`)."""
    source = run.method.groups
    if source in ("gender", "class_gender"):
        genders = np.array([e.gender for e in train], dtype=object)
        spec, ids = _gender_spec(genders)
        names = [g[-1] for g in spec.groups]
        return TrainingGroups(spec, ids, np.eye(len(names))[ids], names)
    if groups is None:
        raise ConfigError(f"method {run.method.name!r} trains on {source} groups: set groups_file")
    rows = groups.rows([e.id for e in train], "pseudo gender" if source == "pseudo" else f"cluster_{run.K}")
    if source == "pseudo":
        if groups.pseudo is None:
            raise DataError(f"{groups.source} has no column 'pseudo_gender' (method {run.method.name!r})")
        spec, ids = _gender_spec(groups.pseudo[rows])
        names = [g[-1] for g in spec.groups]
        if groups.pseudo_probs is not None and len(names) == 2:
            probs = groups.pseudo_probs[rows]
        else:
            probs = np.eye(len(names))[ids]
        return TrainingGroups(spec, ids, probs, names)
    if run.K not in groups.clusters:
        raise DataError(f"{groups.source} has no column 'cluster_{run.K}' (method {run.method.name!r}, K = {run.K}); "
                        f"it has cluster columns for K = {sorted(groups.clusters)}")
    ids = groups.clusters[run.K][rows]
    return TrainingGroups(_cluster_spec(run.K), ids, np.eye(run.K)[ids], [str(c) for c in range(run.K)])


class SweepInputs:
    """Caches shared by the runs of one process: fold files, imbalanced splits, features, groups
    (``progress``: tqdm bars while features are extracted or groups inferred)."""

    def __init__(self, config: SweepConfig, out: Path, progress: bool = True) -> None:
        self.config, self.out, self.progress = config, out, progress
        self._folds: dict[int, list[Example]] = {}
        self._splits: dict[tuple[int, float, int], Any] = {}
        self._features: FeatureTable | None = None
        self._groups: GroupTable | None = None
        self._groups_loaded = False

    def fold(self, fold: int) -> list[Example]:
        if fold not in self._folds:
            from llmfair.data.crema_d import read_crema_d

            self._folds[fold] = read_crema_d(self.config.labels_dir, fold, check_audio=False)
        return self._folds[fold]

    def splits(self, fold: int, ratio: float, seed: int):
        key = (fold, ratio, seed)
        if key not in self._splits:
            from llmfair.data.imbalance import build_imbalanced_splits

            self._splits[key] = build_imbalanced_splits(self.fold(fold), CREMA_D, ratio, seed)
        return self._splits[key]

    def features(self) -> FeatureTable:
        if self._features is None:
            source = self.config.features
            if source.path is not None:
                self._features = load_feature_file(source.path, tensor=source.tensor, ids=source.ids)
            else:
                from llmfair.data.crema_d import read_crema_d

                examples = read_crema_d(self.config.labels_dir, self.config.folds[0], audio_dir=source.audio_dir)
                self._features = _extract_feature_table(source, examples, self.out, self.progress)
            logger.info("features: %d rows of shape %s from %s", len(self._features.ids),
                        tuple(self._features.values.shape[1:]), self._features.source)
        return self._features

    def groups(self) -> GroupTable | None:
        """The inferred groups (None without ``groups_file``): inferred first when the config has
        ``infer_groups`` and its groups file is not there yet, then checked to cover every K, the
        pseudo labels and every training utterance the grid's runs will read."""
        if not self._groups_loaded:
            if self.config.groups_file:
                source = self.config.group_source()
                if source is not None:
                    build_inferred_groups(self.config, source, self)
                self._groups = load_group_table(self.config.groups_file)
                check_group_table(self._groups, self.config, self)
            self._groups_loaded = True
        return self._groups


# ===================================================================================== inferred groups
def _speaker_features(config: SweepConfig, source: Any, data: SweepInputs):
    """The features directory of ``infer_groups``: read, or extracted first when it holds no
    finished extraction and an extractor is named (resuming an interrupted one); then checked to be
    of the named extractor and to cover every utterance of the corpus."""
    from llmfair.ssl import build_feature_extractor
    from llmfair.ssl.extract import MANIFEST_FILE, extract_corpus_features, load_feature_set

    folder = Path(source.features)
    where = f"{config.source} [infer_groups]"
    extractor = None
    if source.extractor is not None:
        extractor = build_feature_extractor(source.extractor, source.extractor_options,
                                            source=f"{where} extractor_options")
    if not (folder / MANIFEST_FILE).is_file() and extractor is not None:
        from llmfair.data.crema_d import read_crema_d

        audio_dir = source.audio_dir or (config.features.audio_dir if config.features else None)
        if not audio_dir:
            raise ConfigError(f"{where}: {folder} holds no finished extraction; give audio_dir (the corpus audio) to "
                              f"extract {source.extractor} features into it")
        examples = read_crema_d(config.labels_dir, config.folds[0], audio_dir=audio_dir)
        extract_corpus_features(examples, extractor, folder, chunk_size=source.chunk_size, batch_size=source.batch_size,
                                progress=data.progress,
                                corpus={"kind": config.corpus, "path": str(Path(config.labels_dir).resolve()),
                                        "audio_dir": str(Path(audio_dir).resolve())})
    features = load_feature_set(folder)
    if extractor is not None and features.extractor != extractor.name:
        raise DataError(f"{folder} holds {features.extractor} features; {where} names the {extractor.name} extractor")
    if extractor is not None and features.config_hash != extractor.config_hash():
        raise DataError(f"{folder} holds {features.extractor} features of another configuration "
                        f"({features.config_hash[:12]}, {where} gives {extractor.config_hash()[:12]}); use another "
                        "features directory")
    have = set(features.ids)
    corpus = [e.id for e in data.fold(config.folds[0])]
    missing = [i for i in corpus if i not in have]
    if missing:
        raise DataError(f"{folder} holds features of another corpus: {len(missing)} of the {len(corpus)} utterances of "
                        f"{config.labels_dir} have none, e.g. {missing[:3]}")
    return features


def build_inferred_groups(config: SweepConfig, source: Any, data: SweepInputs) -> Path:
    """Write the groups file of ``infer_groups`` (``config.groups_file``) unless it is complete
    (its ``.json`` record is written last); returns its path."""
    from llmfair.groups.infer import infer_groups, sidecar

    path = Path(config.groups_file)
    if path.is_file() and sidecar(path, ".json").is_file():
        return path
    features = _speaker_features(config, source, data)
    result = infer_groups(features, path, source.inference_options(), progress=data.progress)
    logger.info("inferred groups in %s (purity %s, pseudo accuracy %s)", path,
                {k: round(v, 3) for k, v in result.purity.items()}, result.pseudo_accuracy)
    return path


def check_group_table(groups: GroupTable, config: SweepConfig, data: SweepInputs) -> None:
    """Before any run reads it: the groups file has every K and the pseudo labels its methods
    train on, and a row for every training utterance of every (fold, ratio, seed) of the grid.

    Raises:
        DataError: one line naming the file and the first missing column, K or ids.
    """
    for m in config.methods:
        if m.groups == "pseudo" and groups.pseudo is None:
            raise DataError(f"{groups.source} has no column 'pseudo_gender' (method {m.name!r} trains on pseudo labels)")
        missing = [k for k in m.K if k not in groups.clusters]
        if m.groups == "clusters" and missing:
            raise DataError(f"{groups.source} has no column 'cluster_{missing[0]}' (method {m.name!r}, K = {missing[0]}); "
                            f"it has cluster columns for K = {sorted(groups.clusters)}")
    if not any(m.groups in ("pseudo", "clusters") for m in config.methods):
        return
    for fold in config.folds:
        for ratio in config.ratios:
            for seed in config.seeds:
                train = [e.id for e in data.splits(fold, ratio, seed).examples if e.split == "train"]
                absent = [i for i in train if i not in groups.index]
                if absent:
                    raise DataError(f"{groups.source}: no groups for {len(absent)} training utterance(s) of fold {fold} "
                                    f"(ratio 1:{ratio:g}, seed {seed}), e.g. {absent[:3]}; it must cover every "
                                    f"training utterance of {config.labels_dir}")
