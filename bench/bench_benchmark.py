"""Benchmark: zero-shot scoring throughput of `llmfair benchmark` on the tiny Qwen2-Audio, with and
without the frozen-encoder cache, side by side in one run.

A built-in corpus (``--utterances-per-pair``, default the built-in default) is synthesised into a
temporary directory; its test split (every language, both modalities) is scored by the tiny base
model zero-shot through :func:`llmfair.benchmark.run_benchmark`:

1. ``cache cold``: an empty encoder cache (every clip is encoded once and stored);
2. ``cache warm``: the same cache again (every clip served from disk);
3. ``no cache``: the audio tower runs on every row.

Printed: rows, seconds and rows/s of each, and the ratios warm/no-cache and cold/no-cache. The
order warm → no cache → warm is repeated ``--repeats`` times and the median kept. Not run by pytest.

    .venv/bin/python bench/bench_benchmark.py [--utterances-per-pair N] [--repeats 2] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utterances-per-pair", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["LLMFAIR_CACHE"] = str(tmp / "cache")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from llmfair.benchmark import run_benchmark
        from llmfair.data.synth import SynthConfig, generate_corpus

        knobs = {} if args.utterances_per_pair is None else {"utterances_per_pair": args.utterances_per_pair}
        generate_corpus(tmp / "corpus", SynthConfig(seed=0, **knobs))

        def score(name: str, cache: bool) -> tuple[int, float]:
            result = run_benchmark(["tiny"], [], tmp / name, corpus=tmp / "corpus", encoder_cache=cache,
                                   batch_size=args.batch_size, n_resamples=0, plots=False, overwrite=True,
                                   progress=False)
            return result["rows"], result["systems"][0]["tables"][0]["seconds"]["score"]

        rows, cold = score("cold", True)
        warm, none = [], []
        for _ in range(args.repeats):
            warm.append(score("warm", True)[1])
            none.append(score("none", False)[1])
        warm_s, none_s = statistics.median(warm), statistics.median(none)
        print(f"zero-shot scoring, tiny Qwen2-Audio, {rows} rows (test split, all languages, both modalities), "
              f"batch {args.batch_size}, {args.threads} threads")
        print(f"{'variant':<12}{'seconds':>10}{'rows/s':>10}")
        for name, sec in (("cache cold", cold), ("cache warm", warm_s), ("no cache", none_s)):
            print(f"{name:<12}{sec:>10.2f}{rows / sec:>10.1f}")
        print(f"speed-up warm cache / no cache: {none_s / warm_s:.2f}x; cold cache / no cache: {none_s / cold:.2f}x")


if __name__ == "__main__":
    started = time.time()
    main()
    print(f"({time.time() - started:.0f} s in all)")
