"""Benchmark: per-run time of a 20-run tiny-model speech-LLM sweep with and without the reuse of
cached encoder outputs across runs.

One process, one built-in corpus (English rows, both modalities), 20 runs (erm and minmaxgap with
weight fixed, ratio, dual: 4 systems × 5 seeds), each a short LoRA run (2 epochs on a seeded
subsample of the train rows) followed by predicting the English test split. Three modes, run
one after another over the same 20 recipes:

- ``shared``: what ``llmfair sweep`` does: every run's encoder cache shares one in-memory store
  (and the disk cache), so each clip is encoded once for the whole sweep;
- ``per-run``: the store and the disk cache are emptied before each run, so each run encodes
  its clips once and reuses them within its epochs only;
- ``off``: ``encoder_cache: false``: the audio tower runs in every forward.

The table shows the median and quartiles of the per-run wall time per mode (training + the test
predictions, after one warm-up run that builds the tiny model) and the ratios of medians. Not
run by pytest.

    .venv/bin/python bench/bench_speech_sweep.py [--runs 20] [--rows 200] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path



def plan(out: Path, corpus: Path, rows: int, runs: int, encoder_cache: bool):
    from llmfair.speechllm.sweep import SpeechSweepConfig, plan_runs

    recipe = Path(__file__).resolve().parents[1] / "llmfair" / "resources" / "demo_tiny.yaml"
    seeds = list(range(max(1, runs // 4)))
    config = SpeechSweepConfig.from_mapping({
        "recipe": str(recipe),
        "set": {"data.root": str(corpus), "data.synth_seed": None, "data.max_train_examples": rows,
                "data.languages": ["eng"], "training.num_train_epochs": 2, "training.disable_tqdm": True,
                "training.report_to": [],
                "encoder_cache": encoder_cache},
        "objectives": [{"name": "erm"}, {"name": "minmaxgap", "sampler": "group_covering",
                                         "grid": {"weight": ["fixed", "ratio", "dual"]}}],
        "seeds": seeds, "n_resamples": 0}, source="bench")
    return plan_runs(config)[:runs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--rows", type=int, default=200, help="train rows per run (seeded subsample)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-speech-sweep-"))
    os.environ["LLMFAIR_CACHE"] = str(work / "cache")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import logging

    logging.disable(logging.WARNING)
    from llmfair.data.synth import SynthConfig, generate_corpus
    from llmfair.speechllm.encoder_cache import clear_shared_memory
    from llmfair.speechllm.run import train
    from llmfair.speechllm.tiny import default_cache_dir
    from llmfair.training.config import RunConfig

    corpus = work / "corpus"
    generate_corpus(corpus, SynthConfig(seed=0))
    times: dict[str, list[float]] = {}
    for mode in ("shared", "per-run", "off"):
        clear_shared_memory()
        shutil.rmtree(default_cache_dir() / "encoder", ignore_errors=True)
        runs = plan(work / mode, corpus, args.rows, args.runs, encoder_cache=mode != "off")
        warm = RunConfig.from_mapping(runs[0].recipe, source="bench warm-up")
        train(warm, work / mode / "warm-up", predict_splits=[])  # builds the tiny model once
        if mode == "per-run":
            clear_shared_memory()
            shutil.rmtree(default_cache_dir() / "encoder", ignore_errors=True)
        times[mode] = []
        for run in runs:
            if mode == "per-run":
                clear_shared_memory()
                shutil.rmtree(default_cache_dir() / "encoder", ignore_errors=True)
            started = time.perf_counter()
            train(RunConfig.from_mapping(run.recipe, source=run.run_id), work / mode / run.run_id,
                  predict_splits=["test"])
            times[mode].append(time.perf_counter() - started)
            print(f"{mode:>8} {run.run_id:<40} {times[mode][-1]:6.1f} s", flush=True)

    def quartiles(values):
        q = statistics.quantiles(values, n=4)
        return q[0], statistics.median(values), q[2]

    print(f"\n{args.runs} runs per mode, {args.rows} train rows × 2 epochs + the test split each, "
          f"{args.threads} threads, torch {torch.__version__}")
    print(f"{'mode':>8} {'q1':>7} {'median':>7} {'q3':>7}   total")
    for mode, values in times.items():
        q1, med, q3 = quartiles(values)
        print(f"{mode:>8} {q1:7.1f} {med:7.1f} {q3:7.1f}   {sum(values):6.0f} s")
    shared = statistics.median(times["shared"])
    print(f"per-run / shared (median per-run time): {statistics.median(times['per-run']) / shared:.2f}")
    print(f"off / shared: {statistics.median(times['off']) / shared:.2f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
