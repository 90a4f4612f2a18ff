"""``llmfair sweep``: methods × imbalance ratios × folds × seeds (× K clusters) on cached features.

The IDI / EMO-Debias experiments (METHODS.md §1.6, §2, §5.1) train a frozen-feature head once per
(method, gender-imbalance ratio, fold, seed) and report mean figures per method. This module runs
that grid resumably and collects the IDI table:

- :class:`SweepConfig` (YAML): the corpus (``crema_d``: the EMO-SUPERB label files), the features
  (a safetensors file keyed by an ids list, or an extractor over an audio directory through the
  feature cache), optional inferred groups, the methods, ratios, folds, seeds and the recipe;
- :func:`plan_runs` expands the grid in a fixed order; every run has a stable id
  ``<method>-r<ratio>-f<fold>-s<seed>[-k<K>]``;
- :func:`run_sweep` runs a shard of the grid. Per run: the imbalanced train/dev of
  :func:`llmfair.data.imbalance.build_imbalanced_splits` (ratio, seed), the head trained by
  :func:`llmfair.ssl.train_head.train_head` with the method's objective / sampler / groups, and
  predictions on the **untouched** test split. It writes ``runs/predictions_<id>.csv``
  (multi-label table: ``label_<class>`` soft labels, ``prob_<class>``) and then
  ``runs/metrics_<id>.json`` (written last, atomically). A run whose two files exist is skipped,
  so an interrupted sweep resumes where it stopped; ``shard=(i, n)`` runs every n-th run from i,
  so n processes split a grid without overlap;
- :func:`collect_results` writes ``results.csv`` / ``results.md`` in the IDI format — mean ± sample
  std over folds × seeds per method × supervision × ratio, then per supervision level an
  ``Overall`` row (the mean of the DS, RW, GDRO and GADRO rows present, METHODS.md §3 and the §5.1
  note on v1's inconsistent Overall rows) and a ``Gain`` row (:func:`llmfair.metrics.gain` of the
  Overall means against ERM's) — and plots (TPR gap vs ratio per method, F1 vs TPR gap) — and the
  fairness–accuracy front of the runs, ``front.csv`` / ``front.png`` (:mod:`llmfair.report.front`,
  one panel per ratio; figures with speaker-bootstrap intervals from :func:`front_figures`).

Figures per run (METHODS.md §3): F1 = multi-label macro F1, ACC = Hamming accuracy (both after
binarising at > 1/K), ``tpr_gap_rms``, ``dp_gap_sum`` (IDI Eq. 4 literally), ``dp_gap_rms``,
``fpr_gap_rms``, ``f1_gap_rms`` and the number of classes skipped for lack of positives. Fairness
is always measured on the *true* gender of the test speakers, whatever groups a method trained on.

Groups a method trains on (``groups``): ``gender`` (true gender, ●), ``class_gender`` (true gender,
with the objective's / sampler's class × gender grouping, ●), ``pseudo`` (pseudo gender, ⦿) and
``clusters`` (k-means cluster ids for each K of the method, ○). Inferred groups come from a
precomputed CSV (``groups_file``): column ``id``, ``pseudo_gender`` (female/male), optionally
``pseudo_p_female`` and ``pseudo_p_male`` (soft memberships for PGDRO), and ``cluster_<K>``
(integer cluster ids 0..K−1) — only training rows need them.

Relative paths in the YAML are taken relative to the current directory, as in run recipes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from llmfair._atomic import atomic_path, write_json, write_text
from llmfair.data.example import Example
from llmfair.data.labels import CREMA_D, normalise_gender
from llmfair.errors import ConfigError, DataError
from llmfair.options import dataclass_from_mapping
from llmfair.ssl.head import HeadOptions
from llmfair.ssl.train_head import HeadTrainingOptions, HeadTrainingResult, train_head

logger = logging.getLogger(__name__)

CORPORA: tuple[str, ...] = ("crema_d",)
GROUP_SOURCES: tuple[str, ...] = ("gender", "class_gender", "pseudo", "clusters")
SUPERVISION_LEVELS: dict[str, str] = {"true_gender": "●", "pseudo": "⦿", "unsupervised": "○", "none": ""}
"""Supervision level → the IDI table's symbol (● true gender, ⦿ pseudo labels, ○ clusters / none)."""
DEFAULT_SUPERVISION: dict[str, str] = {
    "gender": "true_gender", "class_gender": "true_gender", "pseudo": "pseudo", "clusters": "unsupervised"}
OVERALL_FAMILIES: tuple[str, ...] = ("ds", "rw", "gdro", "gadro")
"""The methods whose rows IDI averages into "Overall" (METHODS.md §3)."""
METRICS: tuple[str, ...] = ("f1", "acc", "tpr_gap_rms", "dp_gap_sum", "dp_gap_rms", "fpr_gap_rms", "f1_gap_rms")
TABLE_COLUMNS: dict[str, str] = {"f1": "F1", "acc": "ACC", "tpr_gap_rms": "TPRgap", "dp_gap_sum": "DPgap"}
"""Metric → column of the IDI-format Markdown table."""
RUNS_DIR = "runs"
_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_OVERALL_MARKERS = ("s", "D", "^", "v", "P", "X")
_PLOT_SYMBOL = {"⦿": "◉"}
"""Matplotlib's default font (DejaVu Sans) has no ⦿ (U+29BF); plots draw ◉ instead."""
_ORDER = {"true_gender": 0, "pseudo": 1, "unsupervised": 2, "none": 3}


# ===================================================================================== config
def _validated(cls: type, values: Mapping[str, Any], source: str) -> Any:
    """``dataclass_from_mapping`` whose errors — unknown keys and the dataclass's own value checks —
    all name ``source`` (the YAML file and the section)."""
    try:
        return dataclass_from_mapping(cls, dict(values), source=source)
    except ConfigError as exc:
        text = str(exc)
        raise ConfigError(text if text.startswith(source) else f"{source}: {text}") from None


@dataclass
class MethodSpec:
    """One method of the sweep (a row of the IDI table, or one row per K for clusters)."""

    name: str = field(default="", metadata={"help": "row name, letters/digits/underscore (part of the run ids)"})
    objective: str = field(default="erm", metadata={"help": "a registered objective (llmfair.objectives.OBJECTIVES)"})
    options: dict = field(default_factory=dict, metadata={"help": "the objective's options"})
    sampler: str | None = field(default=None, metadata={"help": "a registered sampler (ds, group_balanced) or none"})
    sampler_options: dict = field(default_factory=dict, metadata={"help": "the sampler's options"})
    groups: str = field(default="gender", metadata={"help": f"training groups: one of {GROUP_SOURCES}"})
    K: list = field(default_factory=list, metadata={"help": "cluster counts (groups: clusters only), e.g. [16, 32]"})
    family: str | None = field(
        default=None, metadata={"help": "method family for the Overall row (default: ds for the ds sampler, else the objective)"})
    supervision: str | None = field(
        default=None, metadata={"help": f"table symbol: one of {list(SUPERVISION_LEVELS)} (default from groups; "
                                         "erm without a sampler: none)"})


@dataclass
class FeatureSource:
    """Where the frozen features come from: a safetensors file, or an extractor over the audio."""

    path: str | None = field(default=None, metadata={"help": "safetensors file with an (N, D) or (N, L, D) tensor"})
    tensor: str = field(default="features", metadata={"help": "name of the tensor in the file"})
    ids: str | None = field(default=None, metadata={"help": "JSON list of the N row ids (default: <path stem>.ids.json)"})
    extractor: str | None = field(default=None, metadata={"help": "a registered feature extractor (ssl, speaker, acoustic)"})
    extractor_options: dict = field(default_factory=dict, metadata={"help": "the extractor's options"})
    audio_dir: str | None = field(default=None, metadata={"help": "the corpus audio (extractor only)"})
    cache_dir: str | None = field(default=None, metadata={"help": "feature cache (extractor only; default OUT/feature_cache)"})
    batch_size: int = field(default=16, metadata={"help": "clips per extractor call"})

    def __post_init__(self) -> None:
        if (self.path is None) == (self.extractor is None):
            raise ConfigError("features: give either 'path' (a safetensors file) or 'extractor' (with 'audio_dir')")
        if self.extractor is not None and not self.audio_dir:
            raise ConfigError("features: an extractor needs 'audio_dir'")

    def identity(self) -> dict[str, Any]:
        """What the fingerprint of a run records about the features."""
        if self.path is not None:
            return {"path": str(Path(self.path).resolve()), "tensor": self.tensor}
        return {"extractor": self.extractor, "options": self.extractor_options, "audio_dir": str(Path(self.audio_dir).resolve())}


@dataclass
class SweepConfig:
    """A sweep: corpus, features, methods and the grid (YAML keys = field names)."""

    corpus: str = field(default="crema_d", metadata={"help": f"one of {CORPORA}"})
    labels_dir: str = field(default="", metadata={"help": "directory of labels_consensus_{1..5}.csv (EMO-SUPERB)"})
    features: FeatureSource | None = field(default=None, metadata={"help": "feature source (path or extractor)"})
    groups_file: str | None = field(
        default=None, metadata={"help": "CSV id, pseudo_gender[, pseudo_p_female, pseudo_p_male], cluster_<K>"})
    methods: list = field(default_factory=list, metadata={"help": "list of MethodSpec mappings"})
    ratios: list = field(default_factory=lambda: [1, 5, 10, 20, 40], metadata={"help": "r of the 1:r settings, each >= 1"})
    folds: list = field(default_factory=lambda: [1, 2, 3, 4, 5], metadata={"help": "EMO-SUPERB folds"})
    seeds: list = field(default_factory=lambda: [0], metadata={"help": "seeds (imbalance draw and training)"})
    epochs: int = field(default=50, metadata={"help": "epochs per run (IDI: 50)"})
    batch: int = field(default=32, metadata={"help": "batch size (IDI: 32)"})
    lr: float = field(default=1e-4, metadata={"help": "Adam learning rate (IDI: 1e-4)"})
    weight_decay: float = field(default=0.0, metadata={"help": "Adam weight decay"})
    max_grad_norm: float | None = field(default=None, metadata={"help": "gradient clipping (none in IDI)"})
    head: dict = field(default_factory=dict, metadata={"help": "HeadOptions (projector_dim, loss, layer_weighting, layer)"})
    out: str | None = field(default=None, metadata={"help": "output directory (the command line's --out wins)"})
    reference: str = field(default="erm", metadata={"help": "the method the Gain rows compare with"})
    overall: list = field(default_factory=lambda: list(OVERALL_FAMILIES),
                          metadata={"help": "method families averaged into the Overall rows"})
    selection: dict = field(
        default_factory=dict, metadata={"help": "HeadTrainingOptions.selection: model selection on the dev rows "
                                                "({}: that option's default)"})
    threads: int | None = field(
        default=1, metadata={"help": "torch.set_num_threads for the sweep process (default 1: a 200k-parameter head "
                                     "gains nothing from intra-op threads and loses badly to oversubscription; run "
                                     "shards in parallel instead; null leaves torch's setting)"})
    source: str = field(default="<dict>", metadata={"help": "where the config came from (for messages)"})

    def __post_init__(self) -> None:
        src = self.source
        if self.corpus not in CORPORA:
            raise ConfigError(f"{src}: corpus {self.corpus!r} is not supported; expected one of {CORPORA}")
        if not self.labels_dir:
            raise ConfigError(f"{src}: labels_dir is required (the directory of labels_consensus_K.csv)")
        if isinstance(self.features, Mapping):
            self.features = _validated(FeatureSource, self.features, f"{src} [features]")
        if not isinstance(self.features, FeatureSource):
            raise ConfigError(f"{src}: 'features' is required (a mapping with 'path' or 'extractor')")
        if not isinstance(self.head, Mapping):
            raise ConfigError(f"{src}: head must be a mapping of HeadOptions")
        if not isinstance(self.selection, Mapping):
            raise ConfigError(f"{src}: selection must be a mapping (HeadTrainingOptions.selection), got {self.selection!r}")
        if self.selection:
            from llmfair.training.selection import SelectionOptions

            SelectionOptions.from_mapping(self.selection, source=f"{src}: selection")  # keys and values, at load time
        self.head_options()  # validates the keys and values
        for name, kind in (("epochs", int), ("batch", int), ("lr", float), ("weight_decay", float)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and int(value) != value):
                raise ConfigError(f"{src}: {name} must be a{'n integer' if kind is int else ' number'}, got {value!r}")
        for name, values, kind in (("ratios", self.ratios, float), ("folds", self.folds, int), ("seeds", self.seeds, int)):
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{src}: {name} must be a non-empty list, got {values!r}")
            if any(isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and int(v) != v) for v in values):
                raise ConfigError(f"{src}: {name} must hold {kind.__name__} numbers, got {values!r}")
            if len(set(values)) != len(values):
                raise ConfigError(f"{src}: {name} has duplicates: {values!r}")
        bad = [r for r in self.ratios if not r >= 1]
        if bad:
            raise ConfigError(f"{src}: imbalance ratio(s) {bad} are below 1; a ratio r means 1:r and must be >= 1")
        self.ratios = [int(r) if float(r).is_integer() else float(r) for r in self.ratios]
        self.folds, self.seeds = [int(f) for f in self.folds], [int(s) for s in self.seeds]
        from llmfair.data.crema_d import FOLDS

        if any(f not in FOLDS for f in self.folds):
            raise ConfigError(f"{src}: folds {self.folds} must be among the CREMA-D folds {list(FOLDS)}")
        if self.epochs < 1 or self.batch < 1 or not self.lr > 0 or self.weight_decay < 0:
            raise ConfigError(f"{src}: epochs >= 1, batch >= 1, lr > 0 and weight_decay >= 0 are required")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"{src}: threads must be >= 1, got {self.threads}")
        if not isinstance(self.methods, list) or not self.methods:
            raise ConfigError(f"{src}: methods must be a non-empty list")
        self.methods = [_method(m, i, src) for i, m in enumerate(self.methods)]
        names = [m.name for m in self.methods]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"{src}: method name(s) {dup} appear more than once")
        if self.reference not in names:
            raise ConfigError(f"{src}: reference {self.reference!r} is not one of the methods {names}")
        if any(m.groups in ("pseudo", "clusters") for m in self.methods) and not self.groups_file:
            users = [m.name for m in self.methods if m.groups in ("pseudo", "clusters")]
            raise ConfigError(f"{src}: methods {users} train on inferred groups; set groups_file (CSV id, "
                              "pseudo_gender, cluster_<K>)")

    # --------------------------------------------------------------------------- construction
    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "<dict>") -> "SweepConfig":
        """Validate a mapping (unknown keys, methods, options) naming ``source`` in every error."""
        if not isinstance(values, Mapping):
            raise ConfigError(f"{source}: a sweep config must be a mapping, got {type(values).__name__}")
        if "source" in values:
            raise ConfigError(f"{source}: unknown key(s) ['source'] for SweepConfig")
        return dataclass_from_mapping(cls, {**values, "source": source}, source=source)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "SweepConfig":
        """Read and validate a YAML sweep config (``1e-4`` reads as a float)."""
        import yaml

        from llmfair.training.config import RecipeLoader

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"sweep config not found: {path}")
        try:
            values = yaml.load(path.read_text(encoding="utf-8"), Loader=RecipeLoader) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        return cls.from_mapping(values, source=str(path))

    def head_options(self) -> HeadOptions:
        return _validated(HeadOptions, self.head, f"{self.source} [head]")

    def training_options(self, seed: int, method: MethodSpec) -> HeadTrainingOptions:
        return HeadTrainingOptions(
            epochs=self.epochs, batch_size=self.batch, learning_rate=self.lr, weight_decay=self.weight_decay,
            max_grad_norm=self.max_grad_norm, seed=seed, sampler=method.sampler,
            sampler_options=dict(method.sampler_options), selection=dict(self.selection))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("source")
        return out


def _method(values: Any, i: int, src: str) -> MethodSpec:
    """Validate one method entry: names, objective, options, sampler, groups, K."""
    from llmfair.objectives import OBJECTIVES
    from llmfair.training.group_sampling import SAMPLERS

    where = f"{src} methods[{i}]"
    if isinstance(values, MethodSpec):
        values = dataclasses.asdict(values)
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: a method must be a mapping (name, objective, options, sampler, groups, K)")
    m = _validated(MethodSpec, values, where)
    m.options, m.sampler_options, m.K = dict(m.options or {}), dict(m.sampler_options or {}), list(m.K or [])
    if not isinstance(m.name, str) or not _NAME.match(m.name):
        raise ConfigError(f"{where}: name {m.name!r} must be letters, digits or underscores (it is part of the run ids)")
    where = f"{src} method {m.name!r}"
    if m.objective not in OBJECTIVES:
        raise ConfigError(f"{where}: unknown objective {m.objective!r}; registered: {sorted(OBJECTIVES)}")
    if m.sampler is not None and m.sampler not in SAMPLERS:
        raise ConfigError(f"{where}: unknown sampler {m.sampler!r}; registered: {sorted(SAMPLERS)}")
    if m.groups not in GROUP_SOURCES:
        raise ConfigError(f"{where}: groups {m.groups!r}; expected one of {GROUP_SOURCES}")
    cls = OBJECTIVES[m.objective]
    option_fields = {f.name for f in dataclasses.fields(cls.options_class)} if dataclasses.is_dataclass(
        cls.options_class) else set()
    if m.groups == "class_gender":
        applied = False
        if "groups" in option_fields:
            if m.options.get("groups", "class_gender") != "class_gender":
                raise ConfigError(f"{where}: groups class_gender conflicts with options.groups={m.options['groups']!r}")
            m.options["groups"] = "class_gender"
            applied = True
        if m.sampler == "group_balanced":
            if m.sampler_options.get("by", "class_gender") != "class_gender":
                raise ConfigError(f"{where}: groups class_gender conflicts with sampler_options.by="
                                  f"{m.sampler_options['by']!r}")
            m.sampler_options["by"] = "class_gender"
            applied = True
        if not applied:
            raise ConfigError(f"{where}: groups class_gender needs an objective with a 'groups' option (gdro, gadro, "
                              f"pgdro) or the group_balanced sampler; {m.objective!r} "
                              f"{'with sampler ' + repr(m.sampler) if m.sampler else 'without a sampler'} would train "
                              "exactly as with groups: gender")
    _validated(cls.options_class, m.options, f"{where} options")  # validates keys and values
    if m.groups == "clusters":
        if not m.K or any(isinstance(k, bool) or not isinstance(k, int) or k < 2 for k in m.K):
            raise ConfigError(f"{where}: groups clusters needs K, a list of cluster counts >= 2 (e.g. [16]); got {m.K!r}")
        if len(set(m.K)) != len(m.K):
            raise ConfigError(f"{where}: K has duplicates: {m.K!r}")
    elif m.K:
        raise ConfigError(f"{where}: K is only for groups: clusters (this method has groups: {m.groups})")
    if m.family is None:
        m.family = "ds" if m.sampler == "ds" else m.objective
    if m.supervision is None:
        m.supervision = "none" if (m.objective == "erm" and m.sampler is None) else DEFAULT_SUPERVISION[m.groups]
    if m.supervision not in SUPERVISION_LEVELS:
        raise ConfigError(f"{where}: supervision {m.supervision!r}; expected one of {list(SUPERVISION_LEVELS)}")
    return m


# ===================================================================================== the grid
@dataclass(frozen=True)
class RunSpec:
    """One training run of the grid."""

    method: MethodSpec
    ratio: float
    fold: int
    seed: int
    K: int | None = None

    @property
    def run_id(self) -> str:
        """``<method>-r<ratio>-f<fold>-s<seed>[-k<K>]`` (stable: file names and resumption use it)."""
        base = f"{self.method.name}-r{self.ratio:g}-f{self.fold}-s{self.seed}"
        return base if self.K is None else f"{base}-k{self.K}"


def plan_runs(config: SweepConfig, shard: tuple[int, int] = (0, 1)) -> list[RunSpec]:
    """The grid in its fixed order (method, K, ratio, fold, seed), then every n-th run from i.

    Raises:
        ConfigError: a shard outside ``0 <= i < n``.
    """
    i, n = _check_shard(shard)
    runs = [RunSpec(m, r, f, s, k)
            for m in config.methods for k in (m.K or [None]) for r in config.ratios for f in config.folds
            for s in config.seeds]
    return runs[i::n]


def _check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise ConfigError(f"shard must be (i, n), got {shard!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"shard {i}/{n}: need n >= 1 and 0 <= i < n")
    return i, n


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` → (i, n), e.g. ``"0/2"``."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match:
        raise ConfigError(f"--shard {text!r}: expected i/n, e.g. 0/2")
    return _check_shard((int(match.group(1)), int(match.group(2))))


def predictions_path(out: str | os.PathLike, run_id: str) -> Path:
    return Path(out) / RUNS_DIR / f"predictions_{run_id}.csv"


def metrics_path(out: str | os.PathLike, run_id: str) -> Path:
    return Path(out) / RUNS_DIR / f"metrics_{run_id}.json"


def is_finished(out: str | os.PathLike, run_id: str) -> bool:
    """True when both the predictions and the metrics of the run exist (metrics are written last)."""
    return predictions_path(out, run_id).is_file() and metrics_path(out, run_id).is_file()


# ===================================================================================== inputs
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


def _extract_feature_table(source: FeatureSource, examples: Sequence[Example], out: Path) -> FeatureTable:
    import torch

    from llmfair.ssl import build_feature_extractor, extract_features

    extractor = build_feature_extractor(source.extractor, source.extractor_options, source="features extractor_options")
    cache = Path(source.cache_dir) if source.cache_dir else out / "feature_cache"
    values = extract_features(extractor, examples, cache, batch_size=source.batch_size)
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
    """Read the inferred-groups CSV (see the module docstring for its columns)."""
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


# ===================================================================================== one run
_GENDER_SPEC_KEYS = ("language", "modality", "gender")


def _gender_spec(values: np.ndarray):
    """GroupSpec (language, modality, gender) with female and male always present, and ids."""
    from llmfair.objectives import GroupSpec

    genders = ["female", "male"] + (["unknown"] if (values == "unknown").any() else [])
    spec = GroupSpec(_GENDER_SPEC_KEYS, tuple(("eng", "audio", g) for g in genders))
    lookup = {g: i for i, g in enumerate(genders)}
    return spec, np.fromiter((lookup[v] for v in values), dtype=np.int64, count=len(values))


def _cluster_spec(k: int):
    from llmfair.objectives import GroupSpec

    return GroupSpec(("cluster",), tuple((str(c),) for c in range(k)))


@dataclass
class TrainingGroups:
    """What a run trains with: the GroupSpec, group ids and (PGDRO) soft memberships."""

    spec: Any
    ids: np.ndarray
    probs: np.ndarray | None
    names: list[str]


def training_groups(run: RunSpec, train: Sequence[Example], groups: GroupTable | None) -> TrainingGroups:
    """The groups of the training rows for the run's ``groups`` source (module docstring)."""
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


def _fingerprint(config: SweepConfig, run: RunSpec) -> str:
    """A hash of everything that determines the run's result (checked when resuming)."""
    training = dataclasses.asdict(config.training_options(run.seed, run.method))
    if not training["selection"]:
        del training["selection"]  # the default rule: runs finished before the option existed still match
    payload = {
        "method": dataclasses.asdict(run.method), "ratio": run.ratio, "fold": run.fold, "seed": run.seed, "K": run.K,
        "training": training,
        "head": dataclasses.asdict(config.head_options()), "features": config.features.identity(),
        "labels_dir": str(Path(config.labels_dir).resolve()),
        "groups_file": str(Path(config.groups_file).resolve()) if config.groups_file else None,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _SweepData:
    """Caches shared by the runs of one process: fold files, imbalanced splits, features, groups."""

    def __init__(self, config: SweepConfig, out: Path) -> None:
        self.config, self.out = config, out
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
                self._features = _extract_feature_table(source, examples, self.out)
            logger.info("features: %d rows of shape %s from %s", len(self._features.ids),
                        tuple(self._features.values.shape[1:]), self._features.source)
        return self._features

    def groups(self) -> GroupTable | None:
        if not self._groups_loaded:
            self._groups = load_group_table(self.config.groups_file) if self.config.groups_file else None
            self._groups_loaded = True
        return self._groups


def _soft(examples: Sequence[Example], dtype: Any = np.float32) -> np.ndarray:
    """(n, K) soft labels. Keep float64 for evaluation: a vote share of exactly 1/6 gives
    y = 0.01 + 0.94/6 = 1/6, so the strict > 1/K binarisation depends on the stored digits."""
    return np.array([e.emotion_dist for e in examples], dtype=dtype)


def _counts(examples: Sequence[Example]) -> dict[str, dict[str, int]]:
    table = {c: {"female": 0, "male": 0} for c in CREMA_D.classes}
    for e in examples:
        if e.emotion >= 0 and e.gender in ("female", "male"):
            table[CREMA_D.classes[e.emotion]][e.gender] += 1
    return table


def run_metrics(pred: Any) -> dict[str, Any]:
    """The sweep's figures of a multi-label predictions table (METHODS.md §3)."""
    from llmfair.metrics import fairness_summary, hamming_accuracy, multilabel_macro_f1

    summary = fairness_summary(pred)
    out = {"f1": multilabel_macro_f1(pred.labels, pred.probs), "acc": hamming_accuracy(pred.labels, pred.probs)}
    out.update({k: summary[k] for k in ("tpr_gap_rms", "fpr_gap_rms", "f1_gap_rms", "dp_gap_sum", "dp_gap_rms")})
    out["n_skipped"] = summary["n_skipped"]
    out["skipped_classes"] = summary["skipped_classes"]
    return out


def _finite(value: Any) -> Any:
    """JSON-safe: NaN/inf floats become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def execute_run(config: SweepConfig, run: RunSpec, data: _SweepData, out: Path) -> dict[str, Any]:
    """Train one run and write its predictions and (last) its metrics; returns the metrics record."""
    import torch

    from llmfair.objectives import OBJECTIVES, build_objective
    from llmfair.predictions import write_predictions

    method = run.method
    started = time.perf_counter()
    splits = data.splits(run.fold, run.ratio, run.seed)
    train = [e for e in splits.examples if e.split == "train"]
    dev = [e for e in splits.examples if e.split == "dev"]
    test = [e for e in splits.examples if e.split == "test"]
    if not train or not test:
        raise DataError(f"run {run.run_id}: fold {run.fold} has {len(train)} training and {len(test)} test rows")
    features = data.features()
    groups = training_groups(run, train, data.groups())
    objective = build_objective(method.objective, groups.spec, method.options,
                                source=f"{config.source} method {method.name!r} options")
    wants_probs = hasattr(OBJECTIVES[method.objective], "set_group_probabilities")
    x = features.values

    def rows(examples: Sequence[Example]):
        return torch.as_tensor(features.rows([e.id for e in examples]))

    result: HeadTrainingResult = train_head(
        x[rows(train)], _soft(train), groups.ids, objective,
        dev_features=x[rows(dev)] if dev else None, dev_labels=_soft(dev) if dev else None,
        dev_genders=np.array([e.gender for e in dev]) if dev else None,
        options=config.training_options(run.seed, method), head_options=config.head_options(),
        train_classes=np.array([e.emotion for e in train], dtype=np.int64),
        group_probabilities=groups.probs if wants_probs else None, group_names=groups.names if wants_probs else None)

    probs = result.predict_proba(x[rows(test)])
    pred_file = predictions_path(out, run.run_id)
    pred = write_predictions(
        pred_file, ids=[e.id for e in test], split="test", language="eng", modality="audio",
        gender=[e.gender for e in test], speaker=[str(e.speaker) for e in test], classes=CREMA_D, probs=probs,
        labels=_soft(test, np.float64), extra={"fold": [run.fold] * len(test)})
    used = [train[i] for i in result.train_rows]
    record = {
        "run_id": run.run_id, "method": method.name, "method_index": config.methods.index(method),
        "objective": method.objective, "family": method.family,
        "groups": method.groups, "supervision": method.supervision, "symbol": SUPERVISION_LEVELS[method.supervision],
        "K": run.K, "ratio": run.ratio, "fold": run.fold, "seed": run.seed,
        "reconstructed": bool(getattr(OBJECTIVES[method.objective], "reconstructed", False)),
        "options": method.options, "sampler": method.sampler, "sampler_options": method.sampler_options,
        "training": dataclasses.asdict(config.training_options(run.seed, method)),
        "head": dataclasses.asdict(config.head_options()),
        "fingerprint": _fingerprint(config, run),
        "metrics": run_metrics(pred),
        "n_train": len(train), "n_train_used": len(used), "n_dev": len(dev), "n_test": len(test),
        "train_counts": splits.counts.get("train", _counts(train)), "train_counts_used": _counts(used),
        "dev_counts": splits.counts.get("dev", _counts(dev)),
        "group_names": [groups.spec.describe(i) for i in range(groups.spec.num_groups)],
        "group_counts": np.bincount(groups.ids, minlength=groups.spec.num_groups).tolist(),
        "best_epoch": result.best_epoch, "best_dev_loss": result.best_dev_loss, "selection": result.selection,
        "num_steps": result.num_steps,
        "history": result.history, "figures": result.figures, "train_seconds": result.seconds,
        "seconds": time.perf_counter() - started, "predictions": pred_file.name,
    }
    write_json(metrics_path(out, run.run_id), _finite(record))
    return record


# ===================================================================================== sweep
@dataclass
class SweepSummary:
    """What :func:`run_sweep` did: the shard's run ids, those it trained and those it skipped."""

    planned: list[str]
    ran: list[str]
    skipped: list[str]
    seconds: float
    results: dict[str, Path] = field(default_factory=dict)


def run_sweep(config: SweepConfig, out: str | os.PathLike | None = None, shard: tuple[int, int] = (0, 1), *,
              collect: bool = True, progress: bool = True) -> SweepSummary:
    """Run the shard's unfinished runs (finished ones are skipped), then collect the results.

    Args:
        config: the sweep.
        out: output directory (default ``config.out``).
        shard: ``(i, n)``: run every n-th run of :func:`plan_runs` from i.
        collect: write results.csv / results.md / plots from every finished run in ``out`` after.
        progress: a tqdm bar over the shard's runs.

    Raises:
        ConfigError: no output directory, a bad shard, or ``out`` holding a finished run trained
            with other settings (its fingerprint differs: use a new ``out`` or delete the run).
    """
    from tqdm.auto import tqdm

    out = Path(out or config.out or "")
    if not str(out) or str(out) == ".":
        raise ConfigError(f"{config.source}: no output directory (set 'out' in the config or pass --out)")
    runs = plan_runs(config, shard)
    if config.threads is not None:
        import torch

        torch.set_num_threads(config.threads)
    (out / RUNS_DIR).mkdir(parents=True, exist_ok=True)
    write_json(out / "sweep_config.json", {"source": config.source, **_finite(config.to_dict())})
    started = time.perf_counter()
    data = _SweepData(config, out)
    ran, skipped = [], []
    with tqdm(runs, desc=f"sweep shard {shard[0]}/{shard[1]}", unit="run", disable=not progress) as bar:
        for run in bar:
            run_id = run.run_id
            if is_finished(out, run_id):
                _check_finished(config, run, out)
                skipped.append(run_id)
                continue
            record = execute_run(config, run, data, out)
            ran.append(run_id)
            logger.info("run %s: F1 %.3f, TPR gap %.3f (%.1f s)", run_id, record["metrics"]["f1"],
                        record["metrics"]["tpr_gap_rms"], record["seconds"])
    from llmfair.training.manifest import write_manifest

    i, n = shard
    write_manifest(out if n == 1 else out / "shards" / f"{i}of{n}", **{"manifest_of": f"sweep shard {shard[0]}/{shard[1]}", "config": config.to_dict(),
                           "ran": ran, "skipped": skipped})
    summary = SweepSummary([r.run_id for r in runs], ran, skipped, time.perf_counter() - started)
    if collect:
        summary.results = collect_results(out, reference=config.reference, overall=config.overall)
    return summary


def _check_finished(config: SweepConfig, run: RunSpec, out: Path) -> None:
    path = metrics_path(out, run.run_id)
    try:
        recorded = json.loads(path.read_text(encoding="utf-8")).get("fingerprint")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise DataError(f"{path} is not a metrics record ({exc}); delete it to re-run {run.run_id}") from None
    if recorded != _fingerprint(config, run):
        raise ConfigError(f"{path} was trained with other settings than {config.source} (method options, recipe, "
                          f"features or groups differ); use another output directory or delete the run's files")


# ===================================================================================== results
def read_run_records(out: str | os.PathLike) -> list[dict[str, Any]]:
    """Every finished run's metrics record under ``out/runs`` (sorted by run id)."""
    folder = Path(out) / RUNS_DIR
    records = []
    for path in sorted(folder.glob("metrics_*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{path} is not valid JSON: {exc}") from None
        missing = [k for k in ("method", "ratio", "symbol", "K", "metrics", "family") if k not in record]
        if missing:
            raise DataError(f"{path} lacks {missing}; it is not a sweep metrics record")
        records.append(record)
    return records


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan, math.nan
    return float(finite.mean()), float(finite.std(ddof=1)) if finite.size > 1 else math.nan


def results_frame(records: Sequence[Mapping[str, Any]], *, reference: str = "erm",
                  overall: Sequence[str] = OVERALL_FAMILIES):
    """The IDI-format rows as a DataFrame: method rows, then Overall and Gain rows per ratio.

    Method rows: mean and sample std (ddof 1) over the runs (folds × seeds) of each (method, K,
    ratio), with ``gain_<metric>`` against the reference method at the same ratio. Overall rows:
    per ratio × supervision level × K, the mean of the method rows whose family is in ``overall``
    (those present; ``members`` names them). Gain rows: :func:`llmfair.metrics.gain` of the Overall
    means against the reference's means.
    """
    import pandas as pd

    from llmfair.metrics import gain

    if not records:
        raise DataError("no finished runs to collect")
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["method"], r["K"], float(r["ratio"])), []).append(r)
    order: dict[str, tuple[int, str]] = {}
    for r in records:  # config order (recorded per run), then name
        order.setdefault(r["method"], (int(r.get("method_index", 10**6)), r["method"]))
    rows = []
    for (method, k, ratio), runs in sorted(groups.items(), key=lambda kv: (kv[0][2], order[kv[0][0]], kv[0][1] or 0)):
        first = runs[0]
        row = {"ratio": ratio, "kind": "method", "method": method, "supervision": first.get("supervision", ""),
               "symbol": first["symbol"], "K": k, "family": first["family"], "objective": first.get("objective"),
               "reconstructed": bool(first.get("reconstructed", False)), "n_runs": len(runs), "members": ""}
        for m in METRICS:
            values = np.array([np.nan if r["metrics"].get(m) is None else r["metrics"][m] for r in runs], dtype=float)
            row[f"{m}_mean"], row[f"{m}_std"] = _mean_std(values)
        rows.append(row)
    frame = pd.DataFrame(rows)
    out_rows = []
    for ratio in sorted(frame["ratio"].unique()):
        block = frame[frame["ratio"] == ratio]
        ref = block[(block["method"] == reference) & block["K"].isna()]
        ref_means = {m: float(ref[f"{m}_mean"].iloc[0]) for m in METRICS} if len(ref) else None
        if ref_means is None:
            logger.warning("ratio 1:%g: no %r runs; Gain rows are left out", ratio, reference)
        for _, row in block.iterrows():
            row = row.to_dict()
            for m in METRICS:
                row[f"gain_{m}"] = _gain(gain, m, row[f"{m}_mean"], ref_means)
            out_rows.append(row)
        members_all = block[block["family"].isin(list(overall)) & (block["method"] != reference)]
        keys = sorted({(r["supervision"], None if pd.isna(r["K"]) else int(r["K"])) for _, r in members_all.iterrows()},
                      key=lambda t: (_ORDER.get(t[0], 9), t[1] or 0))
        for supervision, k in keys:
            sel = members_all[(members_all["supervision"] == supervision)
                              & (members_all["K"].isna() if k is None else members_all["K"] == k)]
            base = {"ratio": ratio, "supervision": supervision, "symbol": SUPERVISION_LEVELS.get(supervision, ""),
                    "K": k, "family": "", "objective": "", "reconstructed": bool(sel["reconstructed"].any()),
                    "n_runs": int(sel["n_runs"].sum()), "members": ",".join(sel["method"])}
            overall_row = {**base, "kind": "overall", "method": "Overall"}
            gain_row = {**base, "kind": "gain", "method": "Gain"}
            for m in METRICS:
                overall_row[f"{m}_mean"] = float(sel[f"{m}_mean"].mean())
                overall_row[f"{m}_std"] = math.nan
                g = _gain(gain, m, overall_row[f"{m}_mean"], ref_means)
                overall_row[f"gain_{m}"] = g
                gain_row[f"{m}_mean"], gain_row[f"{m}_std"], gain_row[f"gain_{m}"] = g, math.nan, g
            out_rows.append(overall_row)
            if ref_means is not None:
                out_rows.append(gain_row)
    columns = (["ratio", "kind", "method", "supervision", "symbol", "K", "family", "objective", "reconstructed",
                "n_runs", "members"] + [f"{m}_{s}" for m in METRICS for s in ("mean", "std")]
               + [f"gain_{m}" for m in METRICS])
    result = pd.DataFrame(out_rows)[columns]
    result["K"] = result["K"].astype("Int64")
    return result


def _gain(gain_fn, metric: str, value: float, ref: Mapping[str, float] | None) -> float:
    if ref is None or not math.isfinite(value) or not math.isfinite(ref[metric]) or ref[metric] == 0:
        return math.nan
    return float(gain_fn(metric, value, ref[metric]))


def results_markdown(frame, *, reference: str = "erm") -> str:
    """results.md: one IDI-format table per ratio (F1, ACC, TPRgap, DPgap)."""
    import pandas as pd

    from llmfair.report.tables import format_percent, format_value, markdown_table

    lines = ["# Sweep results", "",
             "Mean ± sample standard deviation over folds × seeds (runs: their number). Supervision: ● true "
             "gender, ⦿ pseudo gender labels, ○ k-means clusters or no demographic labels. Overall = mean of the "
             "DS, RW, GDRO and GADRO rows present at that supervision level (members listed in results.csv); "
             f"Gain = relative change against {reference} (F1, ACC: (M − ERM)/ERM; gaps: (ERM − M)/ERM).", ""]
    any_reconstructed = False
    for ratio in sorted(frame["ratio"].unique()):
        block = frame[frame["ratio"] == ratio]
        lines += [f"## Gender imbalance 1:{ratio:g}", ""]
        rows = []
        for _, r in block.iterrows():
            k = "" if pd.isna(r["K"]) else str(int(r["K"]))
            if r["kind"] == "gain":
                cells = [format_percent(r[f"{m}_mean"], 2) for m in TABLE_COLUMNS]
                rows.append(["Gain", r["symbol"], k, *cells, ""])
                continue
            name = r["method"] if r["kind"] == "method" else "Overall"
            if r["kind"] == "method" and r["reconstructed"]:
                name += " †"
                any_reconstructed = True
            cells = []
            for m in TABLE_COLUMNS:
                text = format_value(r[f"{m}_mean"])
                if isinstance(r[f"{m}_std"], float) and math.isfinite(r[f"{m}_std"]):
                    text += f" ± {format_value(r[f'{m}_std'])}"
                cells.append(text)
            size = len(r["members"].split(","))
            runs = str(int(r["n_runs"])) if r["kind"] == "method" else f"{size} method{'s' if size > 1 else ''}"
            rows.append([name, r["symbol"], k, *cells, runs])
        lines += [markdown_table(["method", "sup.", "K", *TABLE_COLUMNS.values(), "runs"], rows,
                                 ["l", "l", "r", "r", "r", "r", "r", "r"]), ""]
    notes = ["DPgap is `dp_gap_sum` = sqrt(Σ_c gap_c²) (IDI Eq. 4 literally, no 1/K); results.csv also has "
             "`dp_gap_rms`, `fpr_gap_rms` and `f1_gap_rms`. Fairness is measured on the true gender of the test "
             "speakers; the test split is untouched."]
    if any_reconstructed:
        notes.insert(0, "† reconstruction: the source paper does not define this method; llmfair implements the "
                        "reconstruction documented in its objective (METHODS.md §2).")
    return "\n".join(lines + notes) + "\n"


def plot_results(frame, out: str | os.PathLike, *, reference: str = "erm") -> list[Path]:
    """``tpr_gap_vs_ratio.png`` (TPR gap and F1 against the ratio, one line per method row, the
    reference black and dashed) and ``f1_vs_tpr_gap.png`` (one panel per ratio; squares: Overall)."""
    import pandas as pd
    from matplotlib import colormaps

    from llmfair.report.plots import _new_figure, _save

    out = Path(out)
    methods = frame[frame["kind"] == "method"]
    labels = [r["method"] + (f" K={int(r['K'])}" if not pd.isna(r["K"]) else "")
              + (f" {_PLOT_SYMBOL.get(r['symbol'], r['symbol'])}" if r["symbol"] else "")
              + (" †" if r["reconstructed"] else "") for _, r in methods.iterrows()]
    methods = methods.assign(label=labels)
    names = list(dict.fromkeys(methods["label"]))
    ref_labels = set(methods.loc[(methods["method"] == reference) & methods["K"].isna(), "label"])
    palette = [colormaps["tab10"](i) for i in range(10)] + [colormaps["Dark2"](i) for i in range(8)]
    others = [n for n in names if n not in ref_labels]
    colors = {n: palette[i % len(palette)] for i, n in enumerate(others)}
    colors.update({n: "black" for n in ref_labels})
    ratios = sorted(methods["ratio"].unique())
    # spread the lines a little along the (log) ratio axis so that error bars do not hide each other
    dodge = {n: 1.0 + 0.012 * (i - (len(names) - 1) / 2) for i, n in enumerate(names)}
    paths = []

    fig = _new_figure(11.5, 4.6)
    axes = fig.subplots(1, 2)
    for ax, metric, title in ((axes[0], "tpr_gap_rms", "TPR gap (RMS), lower is fairer"), (axes[1], "f1", "macro F1")):
        for name in names:
            sel = methods[methods["label"] == name].sort_values("ratio")
            std = sel[f"{metric}_std"].to_numpy(dtype=float)
            is_ref = name in ref_labels
            ax.errorbar(sel["ratio"].to_numpy(dtype=float) * dodge[name], sel[f"{metric}_mean"],
                        yerr=np.where(np.isfinite(std), std, 0.0), marker="o", ms=3.5, lw=2.2 if is_ref else 1.2,
                        ls="--" if is_ref else "-", capsize=2, color=colors[name], zorder=4 if is_ref else 3,
                        label=name if ax is axes[0] else None)
        ax.set_xscale("log")
        ax.set_xticks(ratios, [f"1:{r:g}" for r in ratios])
        ax.minorticks_off()
        ax.set_xlabel("gender imbalance of train/dev (test untouched)")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", frameon=False, fontsize=8, title="method", title_fontsize=9)
    fig.suptitle("TPR gap and F1 against the imbalance ratio (mean ± std over folds × seeds; dashed: reference)",
                 fontsize=10, x=0.02, ha="left")
    paths.append(_save(fig, out / "tpr_gap_vs_ratio.png"))

    cols = min(len(ratios), 3)
    rows_n = int(math.ceil(len(ratios) / cols))
    fig = _new_figure(4.2 * cols + 2.6, 3.7 * rows_n)
    axes = np.atleast_1d(fig.subplots(rows_n, cols, squeeze=False)).ravel()
    overall = frame[frame["kind"] == "overall"]
    overall_markers: dict[tuple, str] = {}
    labelled: set[str] = set()
    for ax, ratio in zip(axes, ratios):
        for _, r in methods[methods["ratio"] == ratio].iterrows():
            is_ref = r["label"] in ref_labels
            ax.scatter(r["tpr_gap_rms_mean"], r["f1_mean"], s=70 if is_ref else 30, marker="*" if is_ref else "o",
                       color=colors[r["label"]], label=r["label"] if ratio == ratios[0] else None, zorder=3)
        for _, r in overall[overall["ratio"] == ratio].iterrows():
            key = (r["supervision"], None if pd.isna(r["K"]) else int(r["K"]))
            if key not in overall_markers:
                overall_markers[key] = _OVERALL_MARKERS[len(overall_markers) % len(_OVERALL_MARKERS)]
            level = {"true_gender": "true gender", "pseudo": "pseudo", "unsupervised": "clusters"}.get(key[0], key[0])
            label = f"Overall ({level}{'' if key[1] is None else f', K={key[1]}'})"
            ax.scatter(r["tpr_gap_rms_mean"], r["f1_mean"], s=52, marker=overall_markers[key], facecolor="none",
                       edgecolor="black", linewidths=1.2, zorder=4, label=label if label not in labelled else None)
            labelled.add(label)
        ax.set_title(f"1:{ratio:g}", fontsize=10)
        ax.set_xlabel("TPR gap (RMS), lower is fairer")
        ax.set_ylabel("macro F1")
        ax.grid(alpha=0.3)
    for ax in axes[len(ratios):]:
        ax.set_visible(False)
    fig.legend(loc="outside right upper", frameon=False, fontsize=8, title="method", title_fontsize=9)
    fig.suptitle("Accuracy against fairness per ratio (star: reference; hollow black: Overall rows)", fontsize=10,
                 x=0.02, ha="left")
    paths.append(_save(fig, out / "f1_vs_tpr_gap.png"))
    return paths


FRONT_RESAMPLES = 200
"""Speaker-bootstrap replicates per run for the front: enough for 95 % bars, and collecting a few
hundred runs stays a matter of seconds (``llmfair report`` uses 1000 for a single table)."""


def front_figures(pred: Any, *, n_resamples: int = FRONT_RESAMPLES, seed: int = 0,
                  confidence: float = 0.95) -> dict[str, float]:
    """The front figures of one feature-sweep run's test predictions with speaker-bootstrap
    intervals: :func:`llmfair.report.front.front_figures` with the worst-cell gap of macro F1.

    The table is multi-label (CREMA-D soft labels), binarised at > 1/K as everywhere in the sweep;
    CREMA-D has one language × modality cell (eng, audio), so the worst cell's gap is the overall
    gender gap of macro F1 (macro, not weighted: the F1 the IDI tables report).
    """
    from llmfair.report.front import front_figures as figures_of

    return figures_of(pred, n_resamples=n_resamples, seed=seed, confidence=confidence, worst_cell_metric="macro_f1")


def front_rows(out: str | os.PathLike, records: Sequence[Mapping[str, Any]], *, n_resamples: int = FRONT_RESAMPLES,
               seed: int = 0) -> list[dict[str, Any]]:
    """One :func:`llmfair.report.front.front_frame` row per finished run with a predictions table.

    ``objective`` is the method's name (so the sweep's reference method is the front's reference),
    ``options`` its objective options, then ``seed``, ``ratio``, ``fold``, ``K`` and
    :func:`front_figures` of ``runs/predictions_<run id>.csv``. A run without that file is left
    out (logged), as runs without metrics are left out of the results.
    """
    from tqdm.auto import tqdm

    from llmfair.predictions import read_predictions

    rows = []
    for record in tqdm(records, desc="front: bootstrap per run", unit="run", disable=None, leave=False):
        run_id = record.get("run_id")
        path = predictions_path(out, str(run_id))
        if run_id is None or not path.is_file():
            logger.warning("run %s: no predictions table %s; left out of the front", run_id, path)
            continue
        rows.append({"run_id": run_id, "objective": record["method"], "options": record.get("options") or {},
                     "seed": record.get("seed"), "ratio": record["ratio"], "fold": record.get("fold"),
                     "K": record["K"], **front_figures(read_predictions(path), n_resamples=n_resamples, seed=seed)})
    return rows


def collect_results(out: str | os.PathLike, *, reference: str = "erm", overall: Sequence[str] = OVERALL_FAMILIES,
                    plots: bool = True, front: bool = True, front_resamples: int = FRONT_RESAMPLES,
                    front_seed: int = 0) -> dict[str, Path]:
    """Write ``results.csv``, ``results.md`` and the plots from every finished run under ``out``,
    then (``front``) ``front.csv`` / ``front.png``: the fairness–accuracy front (weighted F1
    against worst-cell gap, one panel per ratio) of every run with a predictions table.

    Returns:
        ``{"csv": ..., "markdown": ..., "plots": [...], "front": [front.csv, front.png]}`` paths
        (``plots`` and ``front`` as lists; ``front`` absent when no run has predictions).
    """
    out = Path(out)
    records = read_run_records(out)
    frame = results_frame(records, reference=reference, overall=overall)
    with atomic_path(out / "results.csv") as tmp:
        frame.to_csv(tmp, index=False)
    write_text(out / "results.md", results_markdown(frame, reference=reference))
    paths: dict[str, Any] = {"csv": out / "results.csv", "markdown": out / "results.md"}
    if plots:
        paths["plots"] = plot_results(frame, out, reference=reference)
    if front:
        from llmfair.report.front import front_frame, write_front

        rows = front_rows(out, records, n_resamples=front_resamples, seed=front_seed)
        if rows:
            paths["front"] = write_front(
                front_frame(rows, facet="ratio"), out, reference=reference, facet="ratio",
                title=f"Fairness–accuracy front per imbalance ratio (one point per run; bars: {front_resamples} "
                      "speaker-bootstrap replicates; ringed: on the front)")
        else:
            logger.warning("no run under %s has a predictions table; front.csv / front.png are not written", out)
    return paths
