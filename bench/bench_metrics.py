"""Benchmark: per-slice metrics and bootstrap intervals against fairlearn's MetricFrame.

A synthetic predictions table of 30,000 rows × 7 classes in 12 slices (3 languages × 2 modalities
× 2 genders). Prints, side by side:

- per-slice accuracy / weighted F1 / macro F1: llmfair ``SliceMetrics`` vs fairlearn
  ``MetricFrame(...).by_group`` (values checked identical to 1e-12 here);
- 1,000 bootstrap resamples of the same per-slice metrics: llmfair ``resample_statistics`` vs
  fairlearn ``MetricFrame(n_boot=...)`` (fairlearn is timed on ``--fairlearn-boot`` resamples
  and scaled linearly to the same count; its own intervals come from other random draws, so
  only timings are compared);
- the full ``bootstrap_ci`` (overall, slices, gaps, fairness figures) for both units.

Not run by pytest.

    .venv/bin/python bench/bench_metrics.py [--rows 30000] [--resamples 1000] [--fairlearn-boot 50]
"""
from __future__ import annotations

import argparse
import functools
import time

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame
from sklearn.metrics import accuracy_score, f1_score

from llmfair.data.labels import MELD
from llmfair.metrics import SliceMetrics, bootstrap_ci, resample_statistics
from llmfair.predictions import Predictions

BY = ["language", "modality", "gender"]
METRICS = ("accuracy", "weighted_f1", "macro_f1")
SK_METRICS = {
    "accuracy": accuracy_score,
    "weighted_f1": functools.partial(f1_score, average="weighted", zero_division=0),
    "macro_f1": functools.partial(f1_score, average="macro", zero_division=0),
}


def synthetic(rows: int, seed: int) -> Predictions:
    rng = np.random.default_rng(seed)
    k = MELD.num_classes
    labels = rng.choice(k, rows, p=np.linspace(3, 0.5, k) / np.linspace(3, 0.5, k).sum())
    gender = rng.choice(["female", "male"], rows)
    logits = rng.normal(size=(rows, k))
    logits[np.arange(rows), labels] += np.where(gender == "male", 1.6, 1.2)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    frame = pd.DataFrame(
        {"id": np.arange(rows).astype(str), "split": "test", "language": rng.choice(["eng", "deu", "jpn"], rows),
         "modality": rng.choice(["audio", "audio_text"], rows), "gender": gender,
         "speaker": np.char.add("spk", rng.integers(0, 300, rows).astype(str)),
         "label": np.asarray(MELD.classes)[labels]}
    )
    for j, c in enumerate(MELD.classes):
        frame[f"prob_{c}"] = probs[:, j]
    frame["prediction"] = np.asarray(MELD.classes)[probs.argmax(axis=1)]
    return Predictions.from_frame(frame, source="synthetic")


def best_of(repeat: int, fn):
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=30_000)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--fairlearn-boot", type=int, default=50, help="fairlearn resamples actually timed")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    pred = synthetic(args.rows, args.seed)
    sensitive = pred.frame[BY]
    print(f"table: {pred.n} rows x {pred.num_classes} classes, "
          f"{len(sensitive.drop_duplicates())} slices ({' x '.join(BY)})")

    # ---- per-slice point metrics
    t_ours, table = best_of(args.repeat, lambda: SliceMetrics.from_predictions(pred, BY).table(METRICS))
    t_fl, by_group = best_of(args.repeat, lambda: MetricFrame(
        metrics=SK_METRICS, y_true=pred.labels, y_pred=pred.predictions, sensitive_features=sensitive).by_group)
    ours = table.set_index(BY)[list(METRICS)]
    theirs = by_group.loc[ours.index, list(METRICS)].astype(float)
    diff = float(np.abs(ours.to_numpy() - theirs.to_numpy()).max())
    if diff > 1e-12:
        raise SystemExit(f"per-slice values differ from fairlearn by {diff:.3g}")
    print(f"\nper-slice metrics ({', '.join(METRICS)}), best of {args.repeat}:")
    print(f"  llmfair SliceMetrics      {t_ours * 1e3:9.1f} ms")
    print(f"  fairlearn MetricFrame     {t_fl * 1e3:9.1f} ms")
    print(f"  speed ratio               {t_fl / t_ours:9.1f} x   (max |difference| {diff:.1e})")

    # ---- bootstrap of the per-slice metrics
    def ours_boot():
        reps = resample_statistics(pred, BY, unit="utterance", n_resamples=args.resamples, seed=args.seed)
        return np.stack([reps.metric(m) for m in METRICS], axis=-1)

    t_ours_boot, values = best_of(args.repeat, ours_boot)
    start = time.perf_counter()
    MetricFrame(metrics=SK_METRICS, y_true=pred.labels, y_pred=pred.predictions, sensitive_features=sensitive,
                n_boot=args.fairlearn_boot, ci_quantiles=[0.025, 0.975], random_state=args.seed)
    t_fl_boot = (time.perf_counter() - start) * args.resamples / args.fairlearn_boot
    print(f"\nbootstrap of the per-slice metrics, {args.resamples} utterance resamples:")
    print(f"  llmfair resample_statistics + metrics {t_ours_boot:9.3f} s   ({values.shape[0]} x {values.shape[1]} x {values.shape[2]} values)")
    print(f"  fairlearn MetricFrame(n_boot)         {t_fl_boot:9.3f} s   (timed {args.fairlearn_boot}, scaled to {args.resamples})")
    print(f"  speed ratio                           {t_fl_boot / t_ours_boot:9.1f} x")

    # ---- everything the report needs
    print(f"\nfull bootstrap_ci (overall, 12 slices, gaps per cell + overall, fairness figures), {args.resamples} resamples:")
    for unit in ("utterance", "speaker"):
        t, result = best_of(args.repeat, lambda: bootstrap_ci(pred, unit=unit, n_resamples=args.resamples, seed=args.seed))
        print(f"  unit={unit:<10} {t:7.3f} s   min usable replicates {int(result.slices['usable'].min())}")


if __name__ == "__main__":
    main()
