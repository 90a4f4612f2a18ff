"""Benchmark: per backbone family, on its tiny build, the training-step time with and without the
frozen-encoder cache and the peak memory of each, side by side in one run.

For every registered family (``llmfair.speechllm.backbones``; or ``--families``; Voxtral needs
``mistral-common``, and a family that cannot run is reported, not fatal) one batch of 8
built-in-corpus clips (English and German audio, both genders) is collated once and reused; a
step is what ``FairTrainer.compute_loss`` does plus the backward (forward through the classifier →
ERM on the per-sample losses → ``backward``; no optimiser update, so the work stays the same).
LoRA targets ``llm`` with a trained projector, so the encoder is frozen and cacheable.

* **time**: cached and uncached steps run interleaved in one process per family (alternating
  order, ``--steps`` each after ``--warmup``); the table shows medians and quartiles and the ratio
  full forward / cached encoder (ratio of medians and median of the per-round ratios);
* **memory**: each (family, variant) runs alone in a fresh process, so the numbers do not mix:
  peak resident memory of the process and its rise during the steps (peak − resident before the
  first step); with ``--device cuda`` also ``torch.cuda.max_memory_allocated`` over the steps.

Not run by pytest::

    .venv/bin/python bench/bench_backbones.py [--steps 30] [--warmup 5] [--threads 1] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BATCH = 8
ROOT = Path(__file__).resolve().parents[1]


def _rss_mib() -> float:
    """Current resident memory of this process (Linux /proc), MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build(family: str, corpus: Path, device: str):
    """(classifier, batch without meta keys, group ids, erm objective) for one fixed batch."""
    import torch

    from llmfair.data.labels import MELD
    from llmfair.objectives import GroupSpec, TrainingStats, build_objective
    from llmfair.speechllm.run import build_classifier, load_examples, to_records
    from llmfair.training.config import RunConfig
    from llmfair.training.trainer import META_KEYS

    config = RunConfig.from_mapping({
        "model": {"name_or_path": "tiny", "family": family, "dtype": "float32"},
        "data": {"root": str(corpus), "languages": ["eng", "deu"], "modalities": ["audio"]},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "targets": "llm", "train_projector": True},
    }, source="bench")
    train = load_examples(config)["train"]
    keys = list(config.objective.group_keys)
    spec, _ = GroupSpec.from_records([{k: getattr(e, k) for k in keys} for e in train], keys)
    rng = np.random.default_rng(0)
    by_group: dict[tuple, list[int]] = {}
    for i in rng.permutation(len(train)):
        by_group.setdefault(tuple(getattr(train[i], k) for k in keys), []).append(int(i))
    picked = [rows[j] for j in range(BATCH) for rows in by_group.values() if j < len(rows)][:BATCH]
    examples = [train[i] for i in picked]
    torch.manual_seed(0)
    classifier, _, collator, _ = build_classifier(config)
    classifier.to(device).train()
    batch = collator(to_records(examples, spec, keys))
    group_ids = batch["group_ids"].to(device)
    inputs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items() if k not in META_KEYS}
    all_groups = np.array([r["group_ids"] for r in to_records(train, spec, keys)])
    stats = TrainingStats.from_arrays(all_groups, np.array([e.emotion for e in train]), spec.num_groups,
                                      MELD.num_classes)
    objective = build_objective("erm", spec, {}, source="bench")
    objective.setup(stats)
    return classifier, inputs, group_ids, objective.train()


def step(classifier, inputs, group_ids, objective, cache) -> float:
    """One forward + objective + backward with (``cache``) or without (None) the encoder cache; seconds."""
    import torch

    from llmfair.objectives import ObjectiveInputs

    classifier.encoder_cache = cache
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    classifier.zero_grad(set_to_none=True)
    outputs = classifier(**inputs)
    result = objective(ObjectiveInputs(per_sample_loss=outputs["per_sample_loss"], group_ids=group_ids,
                                       logits=outputs["logits"], features=outputs["features"]))
    result.loss.backward()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def worker(args) -> dict:
    """One family in this process: ``--mode time`` (both variants interleaved) or ``memory-cached`` /
    ``memory-full`` (one variant alone)."""
    import torch

    torch.set_num_threads(args.threads)
    classifier, inputs, group_ids, objective = build(args.family, Path(args.corpus), args.device)
    cache = classifier.encoder_cache
    variants = {"cached": cache, "full": None}
    if args.mode == "time":
        for _ in range(args.warmup):
            for v in variants.values():
                step(classifier, inputs, group_ids, objective, v)
        times: dict[str, list[float]] = {name: [] for name in variants}
        names = list(variants)
        for i in range(args.steps):
            for name in (names if i % 2 == 0 else names[::-1]):
                times[name].append(step(classifier, inputs, group_ids, objective, variants[name]))
        return {"times": times, "encoder_calls": cache.encoder_calls,
                "tokens": int(inputs["attention_mask"].sum()), "mel_frames": int(inputs["feature_attention_mask"].sum())}
    name = args.mode.split("-", 1)[1]
    if name == "cached":  # fill the cache first: what the steps of an epoch after the first see
        step(classifier, inputs, group_ids, objective, cache)
    before = _rss_mib()
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        cuda_before = torch.cuda.memory_allocated()
    for _ in range(args.warmup + args.steps):
        step(classifier, inputs, group_ids, objective, variants[name])
    out = {"rss_before_mib": before, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if args.device == "cuda":
        out["cuda_peak_step_mib"] = (torch.cuda.max_memory_allocated() - cuda_before) / 2**20
    return out


def _spawn(family: str, mode: str, args, corpus: Path, env: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--family", family, "--mode", mode,
           "--corpus", str(corpus), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--threads", str(args.threads), "--device", args.device]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{family} {mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=None, help="comma-separated (default: every registered family)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--family", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    import torch

    from llmfair.speechllm.backbones import family_names, get_backbone

    families = args.families.split(",") if args.families else family_names()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench-backbones-") as tmp:
        env = {**os.environ, "LLMFAIR_CACHE": str(Path(tmp) / "cache"), "HF_HUB_OFFLINE": "1",
               "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        from llmfair.data.synth import SynthConfig, generate_corpus

        corpus = Path(tmp) / "corpus"
        generate_corpus(corpus, SynthConfig(seed=0, utterances_per_pair=40))
        failed = {}
        for family in families:
            started = time.perf_counter()
            try:
                rows[family] = {"time": _spawn(family, "time", args, corpus, env),
                                "memory_cached": _spawn(family, "memory-cached", args, corpus, env),
                                "memory_full": _spawn(family, "memory-full", args, corpus, env)}
            except RuntimeError as exc:  # e.g. Voxtral without mistral-common: the other families still run
                failed[family] = str(exc).strip().splitlines()[-1]
                print(f"{family}: failed ({failed[family]})", file=sys.stderr)
                continue
            print(f"{family}: measured in {time.perf_counter() - started:.0f} s", file=sys.stderr)

    device = torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU, {args.threads} thread(s)"
    print(f"tiny builds + LoRA (llm, trained projector), ERM, batch of {BATCH} clips; {device}; torch "
          f"{torch.__version__}; {args.steps} timed steps per variant after {args.warmup} warm-up\n")
    head = (f"{'family':<14}{'cached ms':>11}{'full ms':>10}{'full/cached':>13}{'paired':>8}"
            f"{'peak RSS cached':>17}{'peak RSS full':>15}{'rise cached':>13}{'rise full':>11}")
    if args.device == "cuda":
        head += f"{'CUDA step cached':>18}{'CUDA step full':>16}"
    print(head)
    for family, row in rows.items():
        times = row["time"]["times"]
        cached, full = statistics.median(times["cached"]), statistics.median(times["full"])
        paired = float(np.median(np.asarray(times["full"]) / np.asarray(times["cached"])))
        mc, mf = row["memory_cached"], row["memory_full"]
        line = (f"{family:<14}{1000 * cached:>11.1f}{1000 * full:>10.1f}{full / cached:>12.2f}x{paired:>7.2f}x"
                f"{mc['peak_rss_mib']:>13.0f} MiB{mf['peak_rss_mib']:>11.0f} MiB"
                f"{mc['peak_rss_mib'] - mc['rss_before_mib']:>9.0f} MiB{mf['peak_rss_mib'] - mf['rss_before_mib']:>7.0f} MiB")
        if args.device == "cuda":
            line += f"{mc['cuda_peak_step_mib']:>14.1f} MiB{mf['cuda_peak_step_mib']:>12.1f} MiB"
        print(line)
    print("\nquartiles (ms): " + "; ".join(
        f"{f} cached {1000 * np.percentile(r['time']['times']['cached'], 25):.1f}-"
        f"{1000 * np.percentile(r['time']['times']['cached'], 75):.1f}, full "
        f"{1000 * np.percentile(r['time']['times']['full'], 25):.1f}-{1000 * np.percentile(r['time']['times']['full'], 75):.1f}"
        for f, r in rows.items()))
    print("families: " + "; ".join(f"{f} = {get_backbone(f).title} ({r['time']['tokens']} tokens in the batch, "
                                    f"{r['time']['encoder_calls']} encoder call(s) with the cache)"
                                    for f, r in rows.items()))
    for family, reason in failed.items():
        print(f"{family}: not measured: {reason}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "steps": args.steps, "rows": rows, "failed": failed},
                                              indent=2))


if __name__ == "__main__":
    main()
