"""Running the feature sweep: :func:`run_sweep` trains a shard's unfinished runs and collects the
results; :func:`execute_run` is one run — the imbalanced train/dev of (ratio, seed), the head
trained by :func:`llmfair.ssl.train_head.train_head` with the method's objective, sampler and
groups, predictions on the untouched test split — writing ``runs/predictions_<id>.csv`` and then
(last, atomically) ``runs/metrics_<id>.json``.

A run whose two files exist is skipped, after checking that its recorded fingerprint (everything
that determines its result) matches the config; so an interrupted sweep resumes where it stopped,
and a changed config is refused instead of mixing results.
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
from llmfair.sweep.inputs import SweepInputs, training_groups
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
    training (the tests count and capture the calls through it)."""
    from llmfair import sweep

    return sweep.train_head(*args, **kwargs)


def execute_run(config: SweepConfig, run: RunSpec, data: SweepInputs, out: Path) -> dict[str, Any]:
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

    result: HeadTrainingResult = _train_head(
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
    data = SweepInputs(config, out)
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
