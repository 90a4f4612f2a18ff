"""Running the feature sweep: :func:`run_sweep` trains a shard's unfinished runs and collects the
results; :func:`execute_run` is one run — the imbalanced train/dev of (ratio, seed), the head
trained by :func:`llmfair.ssl.train_head.train_head` with the method's objective, sampler and
groups, predictions on the untouched test split — writing ``runs/predictions_<id>.csv`` and then
(last, atomically) ``runs/metrics_<id>.json``; :func:`execute_runs` does the same for the runs of
one (fold, ratio, seed) trained together as batched heads (:mod:`llmfair.ssl.batched_head`), the
sweep's default.

A run whose two files exist is skipped, after checking that its recorded fingerprint (everything
that determines its result) matches the config; so an interrupted sweep resumes where it stopped,
and a changed config is refused instead of mixing results. Every run's objective is built under the
run's seed, so a run's result does not depend on the runs the process trained before it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from llmfair._atomic import write_json
from llmfair.data.example import Example
from llmfair.data.labels import CREMA_D
from llmfair.errors import ConfigError, DataError
from llmfair.ssl.train_head import HeadTrainingResult
from llmfair.sweep.config import SUPERVISION_LEVELS, SweepConfig
from llmfair.sweep import raters
from llmfair.sweep.inputs import SweepInputs, TrainingGroups, training_groups
from llmfair.sweep.plan import RUNS_DIR, RunSpec, is_finished, metrics_path, plan_runs, predictions_path
from llmfair.sweep.results import collect_results

logger = logging.getLogger(__name__)


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
        **({"ratings_file": str(Path(config.ratings_file).resolve())} if config.ratings_file else {}),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


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


def _train_head(*args: Any, **kwargs: Any) -> HeadTrainingResult:
    """:func:`llmfair.ssl.train_head.train_head`, looked up on :mod:`llmfair.sweep` at call time:
    ``llmfair.sweep.train_head`` stays the one name to replace to observe or intercept the sweep's
    training (the tests count and capture the calls through it). Replacing it makes the sweep train
    every run through it, one at a time (:func:`run_sweep`)."""
    from llmfair import sweep

    return sweep.train_head(*args, **kwargs)


BATCHED_ENV = "LLMFAIR_SWEEP_BATCHED"
"""Environment switch: ``1`` (or ``true``, ``yes``, ``on``) trains the runs of one (fold, ratio, seed)
as batched heads. Off by default. On the CREMA-D-sized grid (``bench/bench_sweep.py``, fold 1, 65
runs, 2 processes on this project's 2-core CPU) it measured 1.45× the one-at-a-time speed (wall
211 s against 307 s); the results agree to 5e-6 in a test probability with the same selected epoch
for every method but DisEnt, ADV and MADV, which differ by up to 7.1e-2 — as much as a one-ulp
change of the features moves their own one-at-a-time results (up to 6.9e-2,
docs/experiments/head_rounding_sensitivity.py). It stays off because a batched head's
rounding depends on which runs share its batch (about 1e-7 after 5 epochs), so those three
methods' results would depend on the sweep's sharding; docs/performance.md has the figures."""


def _use_batches(batched: bool | None) -> bool:
    """Whether :func:`run_sweep` trains runs in batches: the argument, else :data:`BATCHED_ENV`
    (default off); never while ``llmfair.sweep.train_head`` is replaced."""
    from llmfair import sweep
    from llmfair.ssl.train_head import train_head

    if sweep.train_head is not train_head:
        return False
    if batched is not None:
        return bool(batched)
    return os.environ.get(BATCHED_ENV, "0").strip().lower() in ("1", "true", "yes", "on")


def _build_objective(config: SweepConfig, run: RunSpec, groups: TrainingGroups):
    """The run's objective, built under its seed: modules an objective creates in its constructor
    (ADV's adversary layers) draw from torch's global RNG, so without the seed they would depend on
    which runs the process built before (the shard, a resumed sweep, the batching)."""
    import torch

    from llmfair.objectives import build_objective

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run.seed)
        return build_objective(run.method.objective, groups.spec, run.method.options,
                               source=f"{config.source} method {run.method.name!r} options")


@dataclass
class _RunInputs:
    """One run up to its training: the splits, the rows and the ``train_head`` arguments."""

    run: RunSpec
    splits: Any
    train: list[Example]
    dev: list[Example]
    test: list[Example]
    groups: TrainingGroups
    owner: np.ndarray | None  # per-rater rows: the training utterance of each row
    ratings: Any
    job: Any  # llmfair.ssl.batched_head.HeadJob
    seconds: float


def _run_inputs(config: SweepConfig, run: RunSpec, data: SweepInputs,
                shared: dict[tuple, Any] | None = None) -> _RunInputs:
    """The run's splits, groups, objective and ``train_head`` arguments. ``shared`` caches the
    feature rows of a (split, fold, ratio, seed), so that runs trained together read one tensor."""
    import torch

    from llmfair.objectives import OBJECTIVES
    from llmfair.ssl.batched_head import HeadJob

    started = time.perf_counter()
    shared = {} if shared is None else shared
    method = run.method
    splits = data.splits(run.fold, run.ratio, run.seed)
    train = [e for e in splits.examples if e.split == "train"]
    dev = [e for e in splits.examples if e.split == "dev"]
    test = [e for e in splits.examples if e.split == "test"]
    if not train or not test:
        raise DataError(f"run {run.run_id}: fold {run.fold} has {len(train)} training and {len(test)} test rows")
    features = data.features()
    ratings = raters.cached_ratings(config.ratings_file, CREMA_D) if config.ratings_file else None
    if method.groups == "rater":  # one training row per (utterance, rater) annotation
        per_rater = raters.per_rater_training(train, ratings, CREMA_D.num_classes)
        owner, train_labels, train_classes = per_rater.example_index, per_rater.labels, per_rater.classes
        groups = TrainingGroups(per_rater.spec, per_rater.ids, np.eye(per_rater.spec.num_groups)[per_rater.ids],
                                per_rater.names)
    else:
        owner, train_labels = None, _soft(train)
        train_classes = np.array([e.emotion for e in train], dtype=np.int64)
        groups = training_groups(run, train, data.groups())
    objective = _build_objective(config, run, groups)
    wants_probs = hasattr(OBJECTIVES[method.objective], "set_group_probabilities")
    x = features.values

    def rows(split: str, examples: Sequence[Example]):
        key = (split, run.fold, run.ratio, run.seed)
        if key not in shared:
            shared[key] = x[torch.as_tensor(features.rows([e.id for e in examples]))]
        return shared[key]

    train_x = rows("train", train) if owner is None else rows("train", train)[torch.as_tensor(owner)]
    job = HeadJob(
        train_x, train_labels, groups.ids, objective,
        dev_features=rows("dev", dev) if dev else None, dev_labels=_soft(dev) if dev else None,
        dev_genders=np.array([e.gender for e in dev]) if dev else None,
        options=config.training_options(run.seed, method), head_options=config.head_options(),
        train_classes=train_classes,
        group_probabilities=groups.probs if wants_probs else None, group_names=groups.names if wants_probs else None)
    return _RunInputs(run, splits, train, dev, test, groups, owner, ratings, job, time.perf_counter() - started)


def _write_run(config: SweepConfig, inputs: _RunInputs, result: HeadTrainingResult, data: SweepInputs,
               out: Path) -> dict[str, Any]:
    """Predict the test split, write the run's predictions and (last, atomically) its metrics."""
    import torch

    from llmfair.objectives import OBJECTIVES
    from llmfair.predictions import write_predictions

    started = time.perf_counter()
    run, method, splits, train, dev, test = inputs.run, inputs.run.method, inputs.splits, inputs.train, inputs.dev, inputs.test
    groups, owner, ratings = inputs.groups, inputs.owner, inputs.ratings
    features = data.features()
    probs = result.predict_proba(features.values[torch.as_tensor(features.rows([e.id for e in test]))])
    pred_file = predictions_path(out, run.run_id)
    pred = write_predictions(
        pred_file, ids=[e.id for e in test], split="test", language="eng", modality="audio",
        gender=[e.gender for e in test], speaker=[str(e.speaker) for e in test], classes=CREMA_D, probs=probs,
        labels=_soft(test, np.float64), extra={"fold": [run.fold] * len(test)})
    used = [train[i] for i in (result.train_rows if owner is None else owner[result.train_rows])]
    metrics = run_metrics(pred)
    rater_side = None
    if ratings is not None:  # the test predictions once per annotation: the rater side of the run
        rater_table = raters.rater_side_table(pred, test, ratings, raters.rater_predictions_path(out, run.run_id))
        rater_side = raters.rater_side_figures(pred, rater_table)
        metrics.update({name: rater_side[name] for name in raters.RATER_FIGURES})
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
        "metrics": metrics,
        "n_train": len(train), "n_train_used": len(used), "n_dev": len(dev), "n_test": len(test),
        "train_counts": splits.counts.get("train", _counts(train)), "train_counts_used": _counts(used),
        "dev_counts": splits.counts.get("dev", _counts(dev)),
        "group_names": [groups.spec.describe(i) for i in range(groups.spec.num_groups)],
        "group_counts": np.bincount(groups.ids, minlength=groups.spec.num_groups).tolist(),
        "best_epoch": result.best_epoch, "best_dev_loss": result.best_dev_loss, "selection": result.selection,
        "num_steps": result.num_steps,
        "history": result.history, "figures": result.figures, "train_seconds": result.seconds,
        "seconds": inputs.seconds + result.seconds + time.perf_counter() - started, "predictions": pred_file.name,
        **({"rater_side": rater_side} if rater_side is not None else {}),
        **({"n_train_rows": len(owner)} if owner is not None else {}),
    }
    write_json(metrics_path(out, run.run_id), _finite(record))
    return record


def execute_run(config: SweepConfig, run: RunSpec, data: SweepInputs, out: Path) -> dict[str, Any]:
    """Train one run (through ``llmfair.sweep.train_head``) and write its predictions and (last) its
    metrics; returns the metrics record."""
    inputs = _run_inputs(config, run, data)
    result: HeadTrainingResult = _train_head(**inputs.job.train_head_kwargs())
    return _write_run(config, inputs, result, data, out)


def execute_runs(config: SweepConfig, runs: Sequence[RunSpec], data: SweepInputs, out: Path, *,
                 max_heads: int | None = None) -> list[dict[str, Any]]:
    """Train ``runs`` together with :func:`llmfair.ssl.batched_head.train_heads` — the runs whose
    training loops coincide as one batched computation, the others one at a time — and write each
    run's files as :func:`execute_run` does; returns their metrics records in the order of ``runs``.

    The runs that train write their files even when another fails; the first failure is raised
    after them.
    """
    from llmfair.ssl.batched_head import MAX_HEADS, train_heads

    shared: dict[tuple, Any] = {}
    inputs = [_run_inputs(config, run, data, shared) for run in runs]
    results = train_heads([i.job for i in inputs], max_heads=max_heads or MAX_HEADS, on_error="return")
    records, failure = [], None
    for run_inputs, result in zip(inputs, results):
        if isinstance(result, Exception):
            failure = failure or result
            continue
        records.append(_write_run(config, run_inputs, result, data, out))
    if failure is not None:
        raise failure
    return records


def _batches(runs: Sequence[RunSpec]) -> list[list[RunSpec]]:
    """The runs that share a training set — one (fold, ratio, seed) — together, in plan order."""
    groups: dict[tuple, list[RunSpec]] = {}
    for run in runs:
        groups.setdefault((run.fold, run.ratio, run.seed), []).append(run)
    return list(groups.values())


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
              collect: bool = True, progress: bool = True, batched: bool | None = None) -> SweepSummary:
    """Run the shard's unfinished runs (finished ones are skipped), then collect the results.

    By default every run trains one at a time through ``llmfair.sweep.train_head``
    (:func:`execute_run`). With ``batched=True`` (or ``LLMFAIR_SWEEP_BATCHED=1``) the runs of one
    (fold, ratio, seed) train together as batched heads (:func:`execute_runs`,
    :mod:`llmfair.ssl.batched_head`): 1.45× faster on a 2-core CPU and equal to one at a time
    within float rounding, which DisEnt, ADV and MADV amplify (see :data:`BATCHED_ENV`).

    Args:
        config: the sweep.
        out: output directory (default ``config.out``).
        shard: ``(i, n)``: run every n-th run of :func:`plan_runs` from i.
        collect: write results.csv / results.md / plots from every finished run in ``out`` after.
        progress: a tqdm bar over the shard's runs.
        batched: train runs together (None: :data:`BATCHED_ENV`, default off).

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
    data = SweepInputs(config, out, progress=progress)
    skipped, pending = [], []
    for run in runs:
        if is_finished(out, run.run_id):
            _check_finished(config, run, out)
            skipped.append(run.run_id)
        else:
            pending.append(run)
    done: set[str] = set()
    with tqdm(total=len(runs), initial=len(skipped), desc=f"sweep shard {shard[0]}/{shard[1]}", unit="run",
              disable=not progress) as bar:
        together = _use_batches(batched)
        for batch in _batches(pending) if together else [[run] for run in pending]:
            records = execute_runs(config, batch, data, out) if together else [execute_run(config, batch[0], data, out)]
            for record in records:
                done.add(record["run_id"])
                logger.info("run %s: F1 %.3f, TPR gap %.3f (%.1f s)", record["run_id"], record["metrics"]["f1"],
                            record["metrics"]["tpr_gap_rms"], record["seconds"])
            bar.update(len(batch))
    ran = [run.run_id for run in pending if run.run_id in done]
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
