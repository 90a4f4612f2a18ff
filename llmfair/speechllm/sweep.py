"""Speech-LLM sweeps: one run recipe trained over a grid of objectives × option values × seeds
(× train imbalance of the corpus), resumable and shardable, collected into a fairness–accuracy
front and paired comparisons against the reference objective.

The sweep YAML (``llmfair sweep SWEEP.yaml --out DIR``; told apart from a feature sweep by its
``recipe`` key)::

    recipe: recipes/configs/demo_tiny.yaml   # any run recipe (model, data, lora, training, ...)
    set: {data.max_train_examples: 600}      # overrides for every run (as --set; nested keys)
    objectives:
      - name: erm
      - name: minmaxgap
        sampler: group_covering              # default: the recipe's sampler
        options: {lambda_init: 1.0}          # fixed options of this objective
        grid: {weight: [fixed, ratio, dual], reduction: [hard, lse]}   # every combination
    seeds: [0, 1, 2]                         # training seeds
    train_imbalance:                         # null: the corpus as it is
      - null
      - {language: eng, ratio: 5}            # llmfair.data.imbalance.GenderImbalance
    reference: erm                           # marked on the front; paired Δ are taken against it
    unit: speaker                            # bootstrap unit of the intervals
    n_resamples: 1000

Every run's recipe is built and validated before the first model loads (unknown option keys,
out-of-range values and a grid of zero runs are one-line errors), and the plan is written to
``DIR/sweep_plan.json``; a later call on the same ``DIR`` with another grid is refused, naming
what differs, so finished runs are never mixed with, or lost to, another grid.

Layout of ``DIR``::

    sweep_plan.json                          the grid and every run's resolved recipe
    runs/<run id>/                           a run directory of ``llmfair train`` (adapter,
                                             predictions, manifest, objective_trace.{csv,png})
    front.csv, front.png                     one row per finished run, the front per imbalance
    comparisons/<imbalance>/                 ``llmfair report`` of each imbalance level: every
                                             system's seeds against the reference's, paired

Runs of one process share the frozen-encoder cache in memory (and on disk), so a clip is encoded
once per sweep, not once per run (:meth:`llmfair.speechllm.encoder_cache.EncoderCache.for_model`).
"""
from __future__ import annotations

import copy
import itertools
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from llmfair._atomic import write_json
from llmfair.errors import ConfigError, DataError
from llmfair.training.config import RunConfig, apply_overrides

logger = logging.getLogger(__name__)

RUNS_DIR = "runs"
PLAN_FILE = "sweep_plan.json"
BALANCED = "as-is"
"""The imbalance label of runs on the corpus as it is (``train_imbalance: null``)."""


# ------------------------------------------------------------------------------------ config
@dataclass
class ObjectiveGrid:
    """One objective of the sweep: fixed ``options`` and a ``grid`` of option values (every
    combination is a system)."""

    name: str
    sampler: str | None = None
    options: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)

    def points(self, where: str) -> list[dict[str, Any]]:
        """The option mappings of every grid point (the fixed options, then the grid's values)."""
        for key, values in self.grid.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{where}.grid.{key}={values!r}: give a non-empty list of values")
            if key in self.options:
                raise ConfigError(f"{where}: option {key!r} is both fixed (options) and swept (grid)")
        keys = list(self.grid)
        return [{**self.options, **dict(zip(keys, combo))} for combo in itertools.product(*(self.grid[k] for k in keys))]


@dataclass
class SpeechSweepConfig:
    """The sweep YAML (module docstring)."""

    recipe: str
    objectives: list
    set: dict = field(default_factory=dict)
    seeds: list = field(default_factory=lambda: [0])
    train_imbalance: list = field(default_factory=lambda: [None])
    reference: str = "erm"
    unit: str = "speaker"
    n_resamples: int = 1000
    out: str | None = None
    source: str = "sweep"

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "SpeechSweepConfig":
        path = Path(path)
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read the sweep YAML: {exc}") from None
        return cls.from_mapping(values, source=str(path))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, source: str = "sweep") -> "SpeechSweepConfig":
        if not isinstance(values, Mapping):
            raise ConfigError(f"{source}: a sweep is a mapping of keys; got {type(values).__name__}")
        known = {f for f in cls.__dataclass_fields__ if f != "source"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {unknown} in a speech-LLM sweep; known: {sorted(known)}")
        for key in ("recipe", "objectives"):
            if key not in values:
                raise ConfigError(f"{source}: {key!r} is required")
        return cls(**{k: copy.deepcopy(v) for k, v in values.items()}, source=source)

    def __post_init__(self) -> None:
        src = self.source
        if not isinstance(self.objectives, list) or not self.objectives:
            raise ConfigError(f"{src}: objectives must be a non-empty list (a grid of zero runs)")
        grids = []
        for i, item in enumerate(self.objectives):
            where = f"{src}: objectives[{i}]"
            if isinstance(item, str):
                item = {"name": item}
            if not isinstance(item, Mapping):
                raise ConfigError(f"{where} must be a mapping (name, sampler, options, grid); got {item!r}")
            unknown = sorted(set(item) - {"name", "sampler", "options", "grid"})
            if unknown:
                raise ConfigError(f"{where}: unknown key(s) {unknown}; known: grid, name, options, sampler")
            if not isinstance(item.get("options", {}) or {}, Mapping) or not isinstance(item.get("grid", {}) or {},
                                                                                          Mapping):
                raise ConfigError(f"{where}: options and grid must be mappings")
            grids.append(ObjectiveGrid(name=str(item.get("name")), sampler=item.get("sampler"),
                                       options=dict(item.get("options") or {}), grid=dict(item.get("grid") or {})))
        self.objectives = grids
        if not isinstance(self.seeds, list) or not self.seeds:
            raise ConfigError(f"{src}: seeds must be a non-empty list of integers (a grid of zero runs); got "
                              f"{self.seeds!r}")
        for s in self.seeds:
            if isinstance(s, bool) or not isinstance(s, int):
                raise ConfigError(f"{src}: seeds holds {s!r}; seeds are integers")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"{src}: seeds {self.seeds} repeat a seed")
        if not isinstance(self.train_imbalance, list) or not self.train_imbalance:
            raise ConfigError(f"{src}: train_imbalance must be a non-empty list (null for the corpus as it is)")
        if not isinstance(self.set, Mapping):
            raise ConfigError(f"{src}: set must be a mapping of dotted recipe keys to values; got {self.set!r}")
        if self.unit not in ("speaker", "utterance"):
            raise ConfigError(f"{src}: unit={self.unit!r}; expected speaker or utterance")
        if isinstance(self.n_resamples, bool) or not isinstance(self.n_resamples, int) or self.n_resamples < 0:
            raise ConfigError(f"{src}: n_resamples={self.n_resamples!r}; expected an integer >= 0")

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "set": dict(self.set),
                "objectives": [{"name": g.name, "sampler": g.sampler, "options": g.options, "grid": g.grid}
                               for g in self.objectives],
                "seeds": list(self.seeds), "train_imbalance": list(self.train_imbalance), "reference": self.reference,
                "unit": self.unit, "n_resamples": self.n_resamples}


def is_speech_sweep(path: str | os.PathLike) -> bool:
    """Whether a sweep YAML is a speech-LLM sweep (it names a run ``recipe``)."""
    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(values, Mapping) and "recipe" in values


# ------------------------------------------------------------------------------------ plan
@dataclass
class SpeechRun:
    """One run of the grid: its id, system (objective + options), seed, imbalance and recipe."""

    run_id: str
    system: str
    objective: str
    options: dict
    seed: int
    imbalance: str
    recipe: dict


def _slug(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in str(text)).strip("_") or "x"


def system_name(objective: str, options: Mapping[str, Any], swept: Sequence[str]) -> str:
    """``objective`` plus the values of its swept and fixed options, e.g.
    ``minmaxgap[reduction=lse,weight=dual]`` (``objective`` alone without any)."""
    keys = sorted(set(swept) | set(options))
    if not keys:
        return objective
    return f"{objective}[{','.join(f'{k}={_slug(options[k])}' for k in keys)}]"


def run_id_of(name: str) -> str:
    """A directory-safe run id: ``minmaxgap[reduction=lse,weight=dual]-as-is-s0`` →
    ``minmaxgap_reduction-lse_weight-dual-as-is-s0``."""
    return name.replace("[", "_").replace("]", "").replace("=", "-").replace(",", "_")


def imbalance_label(imbalance: Mapping[str, Any] | None) -> str:
    """``as-is`` or e.g. ``eng-1to5-male`` (the language, ratio and majority gender)."""
    if imbalance is None:
        return BALANCED
    from llmfair.data.imbalance import GenderImbalance
    from llmfair.options import dataclass_from_mapping

    spec = dataclass_from_mapping(GenderImbalance, dict(imbalance), source="train_imbalance")
    ratio = int(spec.ratio) if float(spec.ratio).is_integer() else spec.ratio
    seed = f"-seed{imbalance['seed']}" if "seed" in imbalance else ""
    return f"{spec.language}-1to{ratio}-{spec.majority}{seed}"


def plan_runs(config: SpeechSweepConfig, shard: tuple[int, int] = (0, 1), *,
              check_training: bool = True) -> list[SpeechRun]:
    """Every run of the grid (imbalance → objective → grid point → seed), each recipe built and
    validated (``check_training``: its ``training`` section as Trainer arguments too); then the
    shard's every n-th run from i.

    Raises:
        ConfigError: a bad recipe, override, objective, option key or value (naming it), an
            imbalance that is not a mapping, two objectives giving one system, or zero runs.
    """
    from llmfair.sweep.plan import check_shard

    i, n = check_shard(shard)
    recipe_path = Path(config.recipe)
    if not recipe_path.is_file():
        raise ConfigError(f"{config.source}: recipe {config.recipe!r} is not a file")
    try:
        base = yaml.safe_load(recipe_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{recipe_path} is not valid YAML: {exc}") from None
    apply_overrides(base, dict(config.set), source=f"{config.source} [set]")
    runs: list[SpeechRun] = []
    seen_systems: dict[str, int] = {}
    for imbalance in config.train_imbalance:
        if imbalance is not None and not isinstance(imbalance, Mapping):
            raise ConfigError(f"{config.source}: train_imbalance entry {imbalance!r} must be null or a mapping "
                              "(language, ratio, majority, seed)")
        label = imbalance_label(imbalance) if imbalance is not None else BALANCED
        for k, grid in enumerate(config.objectives):
            where = f"{config.source}: objectives[{k}] ({grid.name})"
            for options in grid.points(where):
                system = system_name(grid.name, options, list(grid.grid))
                if seen_systems.setdefault(system, k) != k:
                    raise ConfigError(f"{where}: system {system!r} is also given by objectives[{seen_systems[system]}]"
                                      "; give the two different options")
                for seed in config.seeds:
                    values = copy.deepcopy(base)
                    objective = {"name": grid.name, "options": dict(options)}
                    sampler = grid.sampler or (values.get("objective") or {}).get("sampler")
                    if sampler is not None:
                        objective["sampler"] = sampler
                    values["objective"] = objective
                    values.setdefault("data", {})["train_imbalance"] = dict(imbalance) if imbalance else None
                    values.setdefault("training", {})["seed"] = seed
                    try:
                        run_config = RunConfig.from_mapping(values, source=f"{where}, seed {seed}")
                    except ConfigError as exc:
                        raise ConfigError(f"{exc} (options {options})") from None
                    if check_training:  # the Trainer's arguments too, before any model loads
                        from llmfair.training.run_inputs import training_arguments

                        training_arguments(run_config, Path(config.out or ".") / RUNS_DIR / "plan-check")
                    recipe = run_config.to_dict()
                    recipe["objective"]["options"] = run_config.objective.resolved_options()
                    run_id = f"{system}-{label}-s{seed}"
                    runs.append(SpeechRun(run_id=run_id_of(run_id), system=system,
                                          objective=grid.name, options=dict(options), seed=seed, imbalance=label,
                                          recipe=recipe))
    if not runs:
        raise ConfigError(f"{config.source}: the grid has zero runs")
    if config.reference not in {r.system for r in runs}:
        raise ConfigError(f"{config.source}: reference={config.reference!r} is not a system of the grid; systems: "
                          f"{sorted({r.system for r in runs})}")
    return runs[i::n]


# ------------------------------------------------------------------------------------ running
def run_dir(out: str | os.PathLike, run_id: str) -> Path:
    return Path(out) / RUNS_DIR / run_id


def _predict_split(run: SpeechRun) -> str:
    return str(run.recipe["data"].get("predict_split", "test"))


def is_finished(out: str | os.PathLike, run: SpeechRun) -> bool:
    """A run is finished when its manifest and its predictions table exist."""
    folder = run_dir(out, run.run_id)
    return (folder / "manifest.json").is_file() and (folder / f"predictions_{_predict_split(run)}.csv").is_file()


def _resolved(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """A planned recipe resolved again with today's defaults, so an option added to an objective
    since the plan was written (at its default) does not count as a change."""
    try:
        config = RunConfig.from_mapping(copy.deepcopy(dict(recipe)), source="sweep plan")
    except ConfigError:
        return dict(recipe)  # no longer valid: it differs from any valid plan
    out = config.to_dict()
    out["objective"]["options"] = config.objective.resolved_options()
    return out


def _check_plan(config: SpeechSweepConfig, runs: Sequence[SpeechRun], out: Path, *, extend: bool = False) -> None:
    """Write the plan, or refuse one that differs from the plan already in ``out``.

    ``extend`` accepts a plan that keeps every earlier run with the same recipe and adds runs
    (a new objective, option value, seed or imbalance); anything else is refused, naming it.
    """
    plan = {"sweep": config.to_dict(), "runs": {r.run_id: r.recipe for r in runs}}
    path = out / PLAN_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{path} is not a sweep plan ({exc}); use another --out") from None
        old_runs = {run_id: _resolved(recipe) for run_id, recipe in old.get("runs", {}).items()}
        for run_id, recipe in plan["runs"].items():
            if run_id in old_runs and old_runs[run_id] != recipe:
                changed = sorted(k for k in set(recipe) | set(old_runs[run_id])
                                 if recipe.get(k) != old_runs[run_id].get(k))
                raise ConfigError(f"{out}: run {run_id} was planned with another recipe (section(s) {changed} "
                                  "differ); use another --out")
        dropped = sorted(set(old_runs) - set(plan["runs"]))
        old_sweep, new_sweep = old.get("sweep", {}), plan["sweep"]
        if extend and not dropped:
            if len(plan["runs"]) > len(old_runs):
                write_json(path, plan)
                logger.info("sweep %s extended: %d runs planned, %d before", out, len(plan["runs"]), len(old_runs))
            return
        if extend:
            raise ConfigError(f"{out}: --extend keeps every planned run, but {len(dropped)} would be dropped (e.g. "
                              f"{dropped[0]}); use another --out")
        for key in sorted(set(old_sweep) | set(new_sweep)):
            if old_sweep.get(key) != new_sweep.get(key):
                hint = " (it only adds runs: pass --extend to train them beside the finished ones)" if not dropped \
                    else ""
                raise ConfigError(f"{out} holds a sweep whose {key!r} was {old_sweep.get(key)!r}, not "
                                  f"{new_sweep.get(key)!r}: the grid changed; use another --out{hint} (its finished "
                                  "runs stay where they are)")
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, plan)


@dataclass
class SpeechSweepSummary:
    planned: list[str]
    ran: list[str]
    skipped: list[str]
    seconds: float
    run_seconds: dict[str, float] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)


def _preflight_runs(config: SpeechSweepConfig, runs) -> None:
    """``llmfair check`` of the shard's runs before any model loads: once per distinct model, data
    and training section (the objective's options were validated with the plan)."""
    from llmfair.speechllm.run import preflight, prepare_corpus

    seen = set()
    for run in runs:
        key = json.dumps({k: run.recipe.get(k) for k in ("model", "data", "training")}, sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        recipe = RunConfig.from_mapping(run.recipe, source=f"{config.source}: {run.run_id}")
        prepare_corpus(recipe)
        preflight(recipe)


def run_sweep(config: SpeechSweepConfig, out: str | os.PathLike | None = None, shard: tuple[int, int] = (0, 1), *,
              collect: bool = True, progress: bool = True, extend: bool = False) -> SpeechSweepSummary:
    """Train the shard's unfinished runs (finished ones are skipped), then collect the front.

    ``extend``: the grid may add runs to the sweep already in ``out`` (:func:`_check_plan`).

    A run killed part-way is resumed from its newest complete checkpoint when it has one, and
    retrained otherwise (its directory holds only what llmfair wrote there).
    """
    from tqdm.auto import tqdm

    from llmfair.speechllm.run import last_complete_checkpoint, train

    out = Path(out or config.out or "")
    if not str(out) or str(out) == ".":
        raise ConfigError(f"{config.source}: no output directory (set 'out' in the config or pass --out)")
    full = plan_runs(config)
    _check_plan(config, full, out, extend=extend)
    runs = full[shard[0]::shard[1]]
    _preflight_runs(config, runs)
    started = time.perf_counter()
    ran, skipped, seconds = [], [], {}
    with tqdm(runs, desc=f"speech-LLM sweep shard {shard[0]}/{shard[1]}", unit="run", disable=not progress) as bar:
        for run in bar:
            if is_finished(out, run):
                skipped.append(run.run_id)
                continue
            folder = run_dir(out, run.run_id)
            resume = bool(last_complete_checkpoint(folder / "checkpoints"))
            t0 = time.perf_counter()
            train(RunConfig.from_mapping(run.recipe, source=f"{config.source}: {run.run_id}"), folder,
                  resume=resume, overwrite=not resume, predict_splits=[_predict_split(run)])
            seconds[run.run_id] = time.perf_counter() - t0
            ran.append(run.run_id)
            logger.info("run %s finished in %.1f s", run.run_id, seconds[run.run_id])
    summary = SpeechSweepSummary([r.run_id for r in runs], ran, skipped, time.perf_counter() - started, seconds)
    if collect:
        summary.results = collect_results(config, out)
    return summary


# ------------------------------------------------------------------------------------ results
def collect_results(config: SpeechSweepConfig, out: str | os.PathLike, *, seed: int = 0,
                    comparisons: bool = True) -> dict[str, Any]:
    """``front.csv`` / ``front.png`` of every finished run (one panel per imbalance level) and,
    per imbalance level with the reference system and another, the paired comparison report.

    Returns:
        ``{"front": [csv, png], "comparisons": {imbalance: comparison.md path}, "missing": [run ids]}``.
    """
    from tqdm.auto import tqdm

    from llmfair.predictions import read_predictions
    from llmfair.report.front import front_figures, front_frame, write_front

    out = Path(out)
    runs = plan_runs(config, check_training=False)
    finished = [r for r in runs if is_finished(out, r)]
    missing = [r.run_id for r in runs if r not in finished]
    if not finished:
        raise DataError(f"{out}: no finished run of the sweep yet; nothing to collect")
    rows = []
    for run in tqdm(finished, desc="front: bootstrap per run", unit="run", disable=None, leave=False):
        pred = read_predictions(run_dir(out, run.run_id) / f"predictions_{_predict_split(run)}.csv")
        rows.append({"run_id": run.run_id, "objective": run.objective, "options": run.options, "seed": run.seed,
                     "system": run.system, "imbalance": run.imbalance,
                     **front_figures(pred, n_resamples=config.n_resamples, seed=seed, unit=config.unit)})
    frame = front_frame(rows, facet="imbalance")
    paths: dict[str, Any] = {"missing": missing}
    paths["front"] = write_front(
        frame, out, reference=config.reference, facet="imbalance", color_by="system",
        title=f"Fairness–accuracy front per train imbalance (one point per run; bars: {config.n_resamples} "
              f"{config.unit}-bootstrap replicates; ringed: on the front)")
    if comparisons:
        paths["comparisons"] = _write_comparisons(config, out, finished, seed=seed)
        if paths["comparisons"]:
            paths["summary"] = _write_summary(config, out, paths["comparisons"], len(finished), len(runs))
    return paths


SUMMARY_FIGURES: tuple[tuple[str, str], ...] = (
    ("weighted_f1", "W-F1"), ("worst_cell_gap", "worst-cell gap"), ("tpr_gap_rms", "TPR gap (RMS)"))


def _interval(figure: Mapping[str, Any], key: str = "mean", signed: bool = False) -> str:
    value, low, high = figure.get(key), figure.get("ci_low"), figure.get("ci_high")
    if value is None:
        return "n/a"
    fmt = "{:+.3f}" if signed else "{:.3f}"
    bounds = "" if low is None or high is None else f" [{fmt.format(low)}, {fmt.format(high)}]"
    return fmt.format(value) + bounds


def summary_markdown(comparison: Mapping[str, Any], cells: Sequence[str] = ()) -> str:
    """A Markdown table of one paired comparison (``comparison.json`` of ``write_report``): per
    system its seeds, each :data:`SUMMARY_FIGURES` figure (mean over seeds [interval]) and its
    paired Δ against the reference (``*``: the interval excludes 0), then Δ of the |male − female|
    W-F1 gap in each of ``cells`` (e.g. ``eng/audio``)."""
    reference = comparison.get("reference_system", comparison.get("reference"))
    paired = comparison.get("paired") or {}
    headers = ["system", "seeds"] + [label for _, label in SUMMARY_FIGURES] + \
        [f"Δ {label}" for _, label in SUMMARY_FIGURES] + [f"Δ gap {c}" for c in cells]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for name, system in comparison["systems"].items():
        row = [f"`{name}`", str(system.get("seeds", 1))]
        row += [_interval(system["figures"][key]) for key, _ in SUMMARY_FIGURES]
        deltas = paired.get(name)
        for key in [k for k, _ in SUMMARY_FIGURES] + [f"gap/{c}/weighted_f1" for c in cells]:
            if deltas is None or key not in deltas:
                row.append("—" if name == reference else "n/a")
                continue
            mark = "*" if deltas[key].get("resolved") else ""
            row.append(_interval(deltas[key], "delta", signed=True) + mark)
        lines.append("| " + " | ".join(row) + " |")
    speakers = comparison.get("speakers", {})
    lines.append("")
    lines.append(f"Test split: {comparison.get('n_rows', '?')} rows, {speakers.get('female', '?')} female and "
                 f"{speakers.get('male', '?')} male speakers; {comparison.get('n_resamples')} "
                 f"{comparison.get('unit')}-bootstrap replicates (rows and seeds resampled); Δ against `{reference}`, "
                 "paired on the same resampled units; * = the interval excludes 0.")
    return "\n".join(lines)


def _write_summary(config: SpeechSweepConfig, out: Path, comparisons: Mapping[str, Path], finished: int,
                   planned: int) -> Path:
    """``summary.md``: :func:`summary_markdown` of every imbalance level's comparison, with the
    gap deltas of the imbalanced language's cells."""
    from llmfair._atomic import write_text

    lines = [f"# Speech-LLM sweep: {config.source}", "", f"{finished} of {planned} runs finished.", ""]
    modalities = None
    for label, path in comparisons.items():
        comparison = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        if modalities is None:
            modalities = sorted({k.split("/")[2] for name in comparison["paired"].values() for k in name
                                 if k.startswith("gap/") and k.count("/") == 3 and not k.startswith("gap/all/")})
        language = label.split("-")[0] if label != BALANCED else None
        cells = [f"{language}/{m}" for m in modalities] if language else []
        lines += [f"## train imbalance: {label}", "", summary_markdown(comparison, cells), ""]
    target = out / "summary.md"
    write_text(target, "\n".join(lines))
    return target


def _write_comparisons(config: SpeechSweepConfig, out: Path, finished: Sequence[SpeechRun], *,
                       seed: int) -> dict[str, Path]:
    """``comparisons/<imbalance>/``: the report of every system's seeds, the reference's first, so
    each system's Δ against the reference is paired over the same resampled rows and seeds."""
    from llmfair.report import write_report

    written = {}
    for label in dict.fromkeys(r.imbalance for r in finished):
        level = [r for r in finished if r.imbalance == label]
        ordered = [r for r in level if r.system == config.reference] + [r for r in level if r.system != config.reference]
        if not ordered or ordered[0].system != config.reference or len({r.system for r in ordered}) < 2:
            logger.info("imbalance %s: no paired comparison (needs the reference %r and another system)",
                        label, config.reference)
            continue
        target = out / "comparisons" / label
        write_report([run_dir(out, r.run_id) / f"predictions_{_predict_split(r)}.csv" for r in ordered], target,
                     names=[r.run_id for r in ordered], systems=[r.system for r in ordered],
                     n_resamples=config.n_resamples, seed=seed, unit=config.unit, plots=False)
        written[label] = target / "comparison.md"
    return written
