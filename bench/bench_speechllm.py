"""Benchmark: training-step time of the tiny speech LLM under MinMaxGAP vs ERM, and with vs
without the frozen-encoder cache.

One tiny Qwen2-Audio with LoRA (targets ``llm``, trained projector, no dropout), one batch of 8
built-in-corpus clips (English and German audio, both genders) collated once and reused, so
every step sees identical inputs. A step is what ``FairTrainer.compute_loss`` does plus the
backward: forward through the classifier → objective on the per-sample losses → ``backward``
(no optimiser update, so the weights and thus the work stay the same). After warm-up the
variants run interleaved (alternating order, ``--steps`` each) and the table shows the median
and quartiles per variant and the ratios of medians:

- minmaxgap / erm with the encoder cache (goal ≤ 1.02: the gap term is a few vector ops);
- erm without / with the encoder cache (the cache skips the audio tower, ~97 % of a forward);

plus the peak resident memory of the process. Not run by pytest.

    .venv/bin/python bench/bench_speechllm.py [--steps 40] [--warmup 5] [--threads 1] [--cache-dir DIR]
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

BATCH = 8


def build(corpus: Path):
    """(classifier, batch without meta keys, group ids, {name: objective}) for one fixed batch."""
    from llmfair.data.labels import MELD
    from llmfair.objectives import GroupSpec, TrainingStats, build_objective
    from llmfair.speechllm.run import build_classifier, load_examples, to_records
    from llmfair.training.config import RunConfig
    from llmfair.training.trainer import META_KEYS

    config = RunConfig.from_mapping({
        "model": {"name_or_path": "tiny", "dtype": "float32"},
        "data": {"root": str(corpus), "languages": ["eng", "deu"], "modalities": ["audio"]},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "targets": "llm", "train_projector": True},
    }, source="bench")
    train = load_examples(config)["train"]
    keys = list(config.objective.group_keys)
    spec, _ = GroupSpec.from_records([{k: getattr(e, k) for k in keys} for e in train], keys)
    # a fixed batch holding both genders of both cells
    rng = np.random.default_rng(0)
    order = rng.permutation(len(train))
    by_group: dict[tuple, list[int]] = {}
    for i in order:
        by_group.setdefault(tuple(getattr(train[i], k) for k in keys), []).append(int(i))
    picked = [rows[j] for j in range(BATCH) for rows in by_group.values() if j < len(rows)][:BATCH]
    examples = [train[i] for i in picked]
    torch.manual_seed(0)
    classifier, _, collator, _ = build_classifier(config)
    classifier.train()
    batch = collator(to_records(examples, spec, keys))
    group_ids = batch["group_ids"]
    inputs = {k: v for k, v in batch.items() if k not in META_KEYS}
    all_groups = np.array([r["group_ids"] for r in to_records(train, spec, keys)])
    stats = TrainingStats.from_arrays(all_groups, np.array([e.emotion for e in train]), spec.num_groups,
                                      MELD.num_classes)
    objectives = {}
    for name in ("erm", "minmaxgap"):
        objective = build_objective(name, spec, {}, source="bench")
        objective.setup(stats)
        objectives[name] = objective.train()
    genders = sorted({e.gender for e in examples})
    cells = sorted({f"{e.language}/{e.modality}" for e in examples})
    return classifier, inputs, group_ids, objectives, f"{len(examples)} clips, cells {cells}, genders {genders}"


def step(classifier, inputs, group_ids, objective) -> float:
    """One forward + objective + backward; seconds."""
    from llmfair.objectives import ObjectiveInputs

    start = time.perf_counter()
    classifier.zero_grad(set_to_none=True)
    outputs = classifier(**inputs)
    result = objective(ObjectiveInputs(per_sample_loss=outputs["per_sample_loss"], group_ids=group_ids,
                                       logits=outputs["logits"], features=outputs["features"]))
    result.loss.backward()
    return time.perf_counter() - start


def objective_only(objective, per_sample_loss: torch.Tensor, group_ids: torch.Tensor) -> float:
    """The objective's own share of a step: its forward and backward on fixed per-sample losses."""
    from llmfair.objectives import ObjectiveInputs

    start = time.perf_counter()
    leaf = per_sample_loss.detach().requires_grad_(True)
    objective(ObjectiveInputs(per_sample_loss=leaf, group_ids=group_ids)).loss.backward()
    return time.perf_counter() - start


def run_interleaved(variants: dict, steps: int, warmup: int) -> dict[str, list[float]]:
    """Time each variant ``steps`` times, alternating the order every round; warm-up discarded."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(steps):
        for name in (names if i % 2 == 0 else names[::-1]):
            times[name].append(variants[name]())
    return times


def describe(times: list[float]) -> tuple[float, float, float]:
    q1, median, q3 = np.percentile(times, [25, 50, 75])
    return 1000 * q1, 1000 * median, 1000 * q3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per variant (≥ 30)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared machine, 2-thread timings of this 64-wide model are "
                             "mostly scheduling noise)")
    parser.add_argument("--cache-dir", default=None,
                        help="LLMFAIR_CACHE (tiny model + encoder cache); default a temporary directory")
    parser.add_argument("--corpus", default=None, help="built-in corpus directory (default: generated in a temp dir)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="bench-speechllm-") as tmp:
        os.environ["LLMFAIR_CACHE"] = args.cache_dir or str(Path(tmp) / "cache")
        from llmfair.data.synth import SynthConfig, generate_corpus

        corpus = Path(args.corpus) if args.corpus else Path(tmp) / "corpus"
        generate_corpus(corpus, SynthConfig(seed=0, utterances_per_pair=40))
        setup = time.perf_counter()
        classifier, inputs, group_ids, objectives, what = build(corpus)
        cache = classifier.encoder_cache
        print(f"tiny Qwen2-Audio + LoRA, batch {what}; torch {torch.__version__}, {args.threads} threads; "
              f"setup {time.perf_counter() - setup:.1f} s")

        def with_cache(name):
            def run():
                classifier.encoder_cache = cache
                return step(classifier, inputs, group_ids, objectives[name])
            return run

        def without_cache():
            classifier.encoder_cache = None
            try:
                return step(classifier, inputs, group_ids, objectives["erm"])
            finally:
                classifier.encoder_cache = cache

        objective_times = run_interleaved({"erm": with_cache("erm"), "minmaxgap": with_cache("minmaxgap")},
                                          args.steps, args.warmup)
        cache_times = run_interleaved({"erm, cached encoder": with_cache("erm"), "erm, full forward": without_cache},
                                      args.steps, args.warmup)
        with torch.no_grad():
            losses = classifier(**inputs)["per_sample_loss"]
        alone = run_interleaved({name: (lambda o=o: objective_only(o, losses, group_ids))
                                 for name, o in objectives.items()}, 20 * args.steps, args.warmup)

    print(f"\n{'variant':<24}{'q1 ms':>9}{'median ms':>11}{'q3 ms':>9}{'n':>5}")
    for name, values in [*objective_times.items(), *cache_times.items()]:
        q1, median, q3 = describe(values)
        print(f"{name:<24}{q1:>9.1f}{median:>11.1f}{q3:>9.1f}{len(values):>5}")
    for name, values in alone.items():
        q1, median, q3 = describe(values)
        print(f"{'objective only: ' + name:<24}{q1:>9.3f}{median:>11.3f}{q3:>9.3f}{len(values):>5}")

    def ratios(times: dict[str, list[float]], a: str, b: str) -> tuple[float, float]:
        """Ratio of medians, and the median of the per-round ratios (robust to load drifting)."""
        paired = np.asarray(times[a]) / np.asarray(times[b])
        return statistics.median(times[a]) / statistics.median(times[b]), float(np.median(paired))

    mmg, mmg_paired = ratios(objective_times, "minmaxgap", "erm")
    nocache, nocache_paired = ratios(cache_times, "erm, full forward", "erm, cached encoder")
    print(f"\nminmaxgap / erm step time: {mmg:.3f} (ratio of medians), {mmg_paired:.3f} (median of paired ratios); "
          f"goal <= 1.02")
    print(f"full forward / cached encoder step time: {nocache:.2f}x (ratio of medians), {nocache_paired:.2f}x (paired)")
    print(f"encoder cache: {cache.hits} hits, {cache.misses} misses, {cache.encoder_calls} encoder calls")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
