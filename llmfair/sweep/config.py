"""The feature sweep's YAML: :class:`SweepConfig` (corpus, features, groups file, grid, recipe) and
its :class:`MethodSpec` rows and :class:`FeatureSource`, validated at load time with every error
naming the file and the section (the schema is described in :mod:`llmfair.sweep`)."""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from llmfair.errors import ConfigError
from llmfair.groups.infer import GroupInferenceOptions
from llmfair.options import dataclass_from_mapping
from llmfair.ssl.head import HeadOptions
from llmfair.ssl.train_head import HeadTrainingOptions

CORPORA: tuple[str, ...] = ("crema_d",)
GROUP_SOURCES: tuple[str, ...] = ("gender", "class_gender", "pseudo", "clusters", "rater")
SUPERVISION_LEVELS: dict[str, str] = {"true_gender": "●", "pseudo": "⦿", "unsupervised": "○", "none": ""}
"""Supervision level → the IDI table's symbol (● true gender, ⦿ pseudo labels, ○ clusters / none)."""
DEFAULT_SUPERVISION: dict[str, str] = {
    "gender": "true_gender", "class_gender": "true_gender", "pseudo": "pseudo", "clusters": "unsupervised",
    "rater": "true_gender"}
OVERALL_FAMILIES: tuple[str, ...] = ("ds", "rw", "gdro", "gadro")
"""The methods whose rows IDI averages into "Overall" (METHODS.md §3)."""
_NAME = re.compile(r"^[A-Za-z0-9_]+$")


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
class GroupSource(GroupInferenceOptions):
    """``infer_groups``: the sweep infers the groups itself (:func:`llmfair.groups.infer_groups`)
    from speaker embeddings in a features directory, extracting them there first when the folder
    holds none and ``extractor`` is named. The groups file goes to ``<features>/groups-<hash>/``, the
    hash covering the inference options, so a changed source never reuses another's groups (and
    finished runs trained on other groups are refused)."""

    features: str = field(default="", metadata={"help": "features directory of the corpus's speaker embeddings "
                                                        "(llmfair features extract)"})
    extractor: str | None = field(
        default=None, metadata={"help": "the extractor those features must come from; when the folder holds none, "
                                        "the sweep extracts them with it"})
    extractor_options: dict = field(default_factory=dict, metadata={"help": "the extractor's options"})
    audio_dir: str | None = field(
        default=None, metadata={"help": "the corpus audio to extract from (default: features.audio_dir)"})
    batch_size: int = field(default=16, metadata={"help": "clips per extractor call"})
    chunk_size: int = field(default=256, metadata={"help": "clips per resumable extraction chunk"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.features:
            raise ConfigError("'features' (a features directory of speaker embeddings) is required")

    def inference_options(self) -> GroupInferenceOptions:
        """The options :func:`llmfair.groups.infer_groups` takes."""
        return GroupInferenceOptions(**{f.name: getattr(self, f.name) for f in dataclasses.fields(GroupInferenceOptions)})

    def groups_path(self) -> Path:
        """``<features>/groups-<hash[:12]>/groups.csv``: the hash covers what determines the groups."""
        import hashlib
        import json

        key = {**self.inference_options().identity(), "extractor": self.extractor,
               "extractor_options": self.extractor_options}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
        return Path(self.features) / f"groups-{digest[:12]}" / "groups.csv"


@dataclass
class SweepConfig:
    """A sweep: corpus, features, methods and the grid (YAML keys = field names)."""

    corpus: str = field(default="crema_d", metadata={"help": f"one of {CORPORA}"})
    labels_dir: str = field(default="", metadata={"help": "directory of labels_consensus_{1..5}.csv (EMO-SUPERB)"})
    features: FeatureSource | None = field(default=None, metadata={"help": "feature source (path or extractor)"})
    groups_file: str | None = field(
        default=None, metadata={"help": "CSV id, pseudo_gender[, pseudo_p_female, pseudo_p_male], cluster_<K>"})
    infer_groups: dict | None = field(
        default=None, metadata={"help": "instead of groups_file: GroupSource keys (features directory, extractor, "
                                        "pseudo_model, K, seed); the sweep infers the groups itself"})
    ratings_file: str | None = field(
        default=None, metadata={"help": "CSV id, rater, rater_gender, emotion (one row per annotation): per-rater "
                                        "training rows for groups: rater (two_sided) and rater-side ΔSP for every "
                                        "run (llmfair.sweep.raters)"})
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
        if self.infer_groups is not None:
            self._resolve_group_source()
        if any(m.groups in ("pseudo", "clusters") for m in self.methods) and not self.groups_file:
            users = [m.name for m in self.methods if m.groups in ("pseudo", "clusters")]
            raise ConfigError(f"{src}: methods {users} train on inferred groups; set groups_file (CSV id, "
                              "pseudo_gender, cluster_<K>) or infer_groups (a features directory to infer them from)")
        if any(m.groups == "rater" for m in self.methods) and not self.ratings_file:
            users = [m.name for m in self.methods if m.groups == "rater"]
            raise ConfigError(f"{src}: methods {users} train on per-rater rows (groups: rater); set ratings_file "
                              "(CSV id, rater, rater_gender, emotion)")

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

    def _resolve_group_source(self) -> None:
        """Validate ``infer_groups`` against the methods and point ``groups_file`` at its groups file."""
        src, where = self.source, f"{self.source} [infer_groups]"
        if not isinstance(self.infer_groups, Mapping):
            raise ConfigError(f"{where}: must be a mapping of GroupSource keys, got {self.infer_groups!r}")
        pseudo_users = [m.name for m in self.methods if m.groups == "pseudo"]
        ks = sorted({k for m in self.methods if m.groups == "clusters" for k in m.K})
        if not pseudo_users and not ks:
            raise ConfigError(f"{where}: no method trains on groups: pseudo or groups: clusters")
        values = {"methods": (["pseudo"] if pseudo_users else []) + (["kmeans"] if ks else []), "K": ks or [2],
                  **self.infer_groups}
        group_source = _validated(GroupSource, values, where)
        if pseudo_users and "pseudo" not in group_source.methods:
            raise ConfigError(f"{where}: methods {pseudo_users} train on pseudo labels; add pseudo to methods")
        for m in self.methods:
            missing = [k for k in m.K if "kmeans" not in group_source.methods or k not in group_source.K]
            if missing:
                raise ConfigError(f"{where}: method {m.name!r} trains on K = {missing}, which infer_groups does not "
                                  f"infer (methods {group_source.methods}, K = {group_source.K})")
        derived = str(group_source.groups_path())
        if self.groups_file not in (None, derived):
            raise ConfigError(f"{src}: give groups_file or infer_groups, not both")
        self.groups_file = derived
        self.infer_groups = dataclasses.asdict(group_source)

    def group_source(self) -> GroupSource | None:
        """The validated ``infer_groups`` (None when the groups come from a file or are not needed)."""
        return None if self.infer_groups is None else GroupSource(**self.infer_groups)

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
    from llmfair.data.sampling import SAMPLERS
    from llmfair.objectives import OBJECTIVES

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
    _check_objective_groups(m, where)
    if m.family is None:
        m.family = "ds" if m.sampler == "ds" else m.objective
    if m.supervision is None:
        m.supervision = "none" if (m.objective == "erm" and m.sampler is None) else DEFAULT_SUPERVISION[m.groups]
    if m.supervision not in SUPERVISION_LEVELS:
        raise ConfigError(f"{where}: supervision {m.supervision!r}; expected one of {list(SUPERVISION_LEVELS)}")
    return m


def _check_objective_groups(m: MethodSpec, where: str) -> None:
    """Build the method's objective once on the group attributes its runs will give it — (speaker
    gender, rater gender) for ``groups: rater``, (language, modality, gender) otherwise — so that
    an objective needing other attributes (``two_sided``: ``rater_gender``) fails at load time.
    Torch's global RNG is left as it was (objectives may draw their layers from it)."""
    import torch

    from llmfair.data.grouping import GroupSpec
    from llmfair.data.ratings import rater_group_spec
    from llmfair.objectives import build_objective

    if m.groups == "rater":
        spec = rater_group_spec()
    else:
        spec = GroupSpec(("language", "modality", "gender"), (("eng", "audio", "female"), ("eng", "audio", "male")))
    try:
        with torch.random.fork_rng(devices=[]):
            build_objective(m.objective, spec, m.options, source=f"{where} options")
    except ConfigError as exc:
        if m.groups != "rater" and "group attribute" in str(exc):
            raise ConfigError(f"{where}: objective {m.objective!r} cannot train on groups: {m.groups} ({exc}); "
                              "set groups: rater and ratings_file (one training row per rater annotation)") from None
        if m.groups == "rater":
            raise ConfigError(f"{where}: {exc}") from None
