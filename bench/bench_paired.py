"""Benchmark: paired bootstrap comparison of runs on the same rows (``llmfair.metrics.paired``).

A synthetic test set of ``--rows`` rows (each utterance in two modalities, 3 languages, 7 classes,
``--speakers`` speakers with one gender each) scored by ``--runs`` correlated runs (each run
changes a share of a shared base prediction). Prints, for both resampling units:

- the time of :func:`paired_comparison` (every system = one run; ``--resamples`` replicates),
  split into the joint resampling + figures (:func:`paired_figures`) and the comparison step;
- the same with the runs as seeds of one system against a second system (seed resampling);
- the single-run :func:`bootstrap_ci` time for scale (one run, same replicates);
- how much narrower the paired interval of Δ accuracy is than the unpaired one (difference of
  two independent single-run intervals, half-widths added).

Not run by pytest.

    .venv/bin/python bench/bench_paired.py [--rows 30000] [--runs 3] [--resamples 1000] [--speakers 40]
"""
from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from llmfair.data.labels import MELD
from llmfair.metrics import bootstrap_ci, paired_comparison, paired_figures
from llmfair.predictions import Predictions

from bench_metrics import best_of  # bench/ scripts run from their folder's path (python bench/bench_paired.py)


def synthetic_runs(rows: int, runs: int, speakers: int, seed: int) -> list[Predictions]:
    """``runs`` predictions tables on the same rows; run j re-draws 10 % of a shared base prediction."""
    rng = np.random.default_rng(seed)
    k = MELD.num_classes
    n_utt = rows // 2
    speaker = rng.integers(0, speakers, n_utt)
    gender = np.where(speaker % 2 == 0, "female", "male")
    language = np.array(["eng", "deu", "jpn"])[speaker % 3]
    labels = rng.choice(k, n_utt, p=np.linspace(3, 0.5, k) / np.linspace(3, 0.5, k).sum())
    base = {}
    for modality, acc in (("audio", 0.55), ("audio_text", 0.65)):
        good = rng.random(n_utt) < acc + np.where(gender == "male", 0.05, 0.0)
        base[modality] = np.where(good, labels, rng.integers(0, k, n_utt))
    out = []
    for j in range(runs):
        parts = []
        for modality in ("audio", "audio_text"):
            pred = base[modality].copy()
            redraw = rng.random(n_utt) < 0.1
            pred[redraw] = np.where(rng.random(redraw.sum()) < 0.6, labels[redraw], rng.integers(0, k, redraw.sum()))
            probs = np.full((n_utt, k), 0.3 / (k - 1))
            probs[np.arange(n_utt), pred] = 0.7
            frame = pd.DataFrame({
                "id": [f"u{i}" for i in range(n_utt)], "split": "test", "language": language, "modality": modality,
                "gender": gender, "speaker": [f"s{s}" for s in speaker], "label": np.asarray(MELD.classes)[labels],
            })
            for c_idx, c in enumerate(MELD.classes):
                frame[f"prob_{c}"] = probs[:, c_idx]
            frame["prediction"] = np.asarray(MELD.classes)[pred]
            parts.append(frame)
        out.append(Predictions.from_frame(pd.concat(parts, ignore_index=True), source=f"run{j}"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=30_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--speakers", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    runs = synthetic_runs(args.rows, args.runs, args.speakers, args.seed)
    r = args.resamples
    print(f"{runs[0].n} rows ({runs[0].n // 2} utterances × 2 modalities), {args.runs} runs, {runs[0].num_classes} classes, "
          f"{args.speakers} speakers, {r} resamples; best of {args.repeat}")
    systems = {f"run{j}": [run] for j, run in enumerate(runs)}
    for unit in ("utterance", "speaker"):
        t_all, result = best_of(args.repeat, lambda: paired_comparison(systems, unit=unit, n_resamples=r, seed=0))
        t_fig, figs = best_of(args.repeat, lambda: paired_figures(runs, unit=unit, n_resamples=r, seed=0))
        half = len(runs) // 2 or 1
        seeds = {"A": runs[:half], "B": runs[half:] or runs[:1]}
        t_seeds, _ = best_of(args.repeat, lambda: paired_comparison(seeds, unit=unit, n_resamples=r, seed=0))
        t_single, single = best_of(args.repeat, lambda: bootstrap_ci(runs[0], unit=unit, n_resamples=r, seed=0))
        other = bootstrap_ci(runs[1], unit=unit, n_resamples=r, seed=1) if len(runs) > 1 else single
        print(f"\n[{unit}] {figs.n_clusters} clusters, {len(figs.keys)} figures")
        print(f"  paired_comparison, {len(runs)} systems × 1 seed : {t_all:.3f} s  (paired_figures {t_fig:.3f} s)")
        print(f"  paired_comparison, seeds {len(seeds['A'])} vs {len(seeds['B'])}        : {t_seeds:.3f} s")
        print(f"  bootstrap_ci, one run (for scale)        : {t_single:.3f} s")
        if len(runs) > 1:
            name = list(systems)[1]
            d = result["paired"][name]["accuracy"]
            a = single.overall.set_index("metric").loc["accuracy"]
            b = other.overall.set_index("metric").loc["accuracy"]
            unpaired = (a["high"] - a["low"]) / 2 + (b["high"] - b["low"]) / 2
            paired = (d["ci_high"] - d["ci_low"]) / 2
            print(f"  Δ accuracy {name} − run0 = {d['delta']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}] "
                  f"p={d['p_value']:.3f}; paired half-width {paired:.4f} vs unpaired {unpaired:.4f} "
                  f"({unpaired / paired:.1f}× narrower)")


if __name__ == "__main__":
    main()
