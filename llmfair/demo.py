"""The demo: built-in corpus → tiny Qwen2-Audio LoRA-tuned with ``erm`` and ``minmaxgap`` → a
benchmark of both runs and the base model zero-shot on the whole test split, both modalities, with
paired differences against ERM.

Layout of ``OUT``::

    OUT/corpus/                    the built-in corpus (generated once per seed, reused after)
    OUT/erm/, OUT/minmaxgap/       the runs (OUT/<objective>/seed-<s>/ with several seeds)
    OUT/benchmark/                 predictions per system, report/ (comparison.{md,json,csv}), benchmark.json
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

from llmfair.training.config import RunConfig

logger = logging.getLogger(__name__)

DEMO_OBJECTIVES: tuple[str, ...] = ("erm", "minmaxgap")
ZERO_SHOT_NAME = "zero-shot"
HEADLINE: tuple[tuple[str, str], ...] = (
    ("weighted_f1", "W-F1"), ("macro_f1", "macro F1"), ("worst_cell_gap", "worst-cell W-F1 gap"),
    ("f1_gap_rms", "F1 gap (RMS)"),
)


def demo_recipe(out: Path, *, corpus_seed: int, epochs: float | None = None) -> RunConfig:
    """The packaged demo recipe pointed at ``OUT/corpus`` (generated from ``corpus_seed``)."""
    from importlib import resources

    overrides: dict[str, Any] = {"data.root": str(out / "corpus"), "data.synth_seed": corpus_seed}
    if epochs is not None:
        overrides["training.num_train_epochs"] = epochs
    with resources.as_file(resources.files("llmfair") / "resources" / "demo_tiny.yaml") as path:
        return RunConfig.from_yaml(path, overrides)


def objective_config(base: RunConfig, name: str) -> RunConfig:
    """The demo recipe with objective ``name`` (MinMaxGAP with the group-covering sampler)."""
    options: dict[str, Any] = {}  # every objective at its defaults (MinMaxGAP's: docs/minmaxgap.md)
    return RunConfig.from_mapping({**base.to_dict(), "objective": {
        "name": name, "sampler": "group_covering" if name == "minmaxgap" else "random", "options": options}},
        source=base.source)


def _fmt(value: Any, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def demo_table(comparison: dict[str, Any]) -> str:
    """Headline figures per system (mean [interval]) and each system's paired Δ against the
    reference, marked ``*`` where the interval excludes 0 (read from ``comparison.json``)."""
    systems = comparison["systems"]
    reference = comparison.get("reference_system", comparison["reference"])
    paired = comparison.get("paired") or {}
    lines = [f"{'system':<12}" + "".join(f"{label:>28}" for _, label in HEADLINE)]
    for name, system in systems.items():
        cells = []
        for key, _ in HEADLINE:
            fig = system["figures"][key]
            cells.append(f"{_fmt(fig['mean'])} [{_fmt(fig['ci_low'])}, {_fmt(fig['ci_high'])}]")
        lines.append(f"{name:<12}" + "".join(f"{c:>28}" for c in cells))
    lines.append("")
    lines.append(f"paired Δ vs {reference} (same resampled {comparison['unit']}s for both; * = interval excludes 0):")
    for name, figures in paired.items():
        cells = []
        for key, _ in HEADLINE:
            d = figures[key]
            mark = "*" if d["resolved"] else " "
            cells.append(f"{_fmt(d['delta'], True)} [{_fmt(d['ci_low'], True)}, {_fmt(d['ci_high'], True)}]{mark}")
        lines.append(f"{name:<12}" + "".join(f"{c:>28}" for c in cells))
    speakers = comparison.get("speakers", {})
    lines.append(f"(test split: {comparison.get('n_rows', '?')} rows, {speakers.get('female', '?')} female and "
                 f"{speakers.get('male', '?')} male speakers; {comparison['n_resamples']} resamples)")
    return "\n".join(lines)


def run_demo(out: str | Path, *, seeds: Sequence[int] = (0,), corpus_seed: int = 0, epochs: float | None = None,
             n_resamples: int = 1000, unit: str = "speaker", progress: bool = True) -> dict[str, Any]:
    """Run the whole demo into ``out``; returns ``{"runs", "benchmark", "comparison", "seconds"}``."""
    import json

    from llmfair.benchmark import run_benchmark
    from llmfair.speechllm.run import parse_seeds, train, train_seeds

    out = Path(out)
    seeds = parse_seeds(list(seeds)) or [0]
    started = time.time()
    base = demo_recipe(out, corpus_seed=corpus_seed, epochs=epochs)
    runs: dict[str, Path] = {}
    seconds: dict[str, float] = {}
    for name in DEMO_OBJECTIVES:
        t0 = time.time()
        config = objective_config(base, name)
        if len(seeds) == 1:
            config.training = {**config.training, "seed": seeds[0]}
            manifest = train(config, out / name, overwrite=True, predict_splits=[])
            steps = manifest["global_steps"]
        else:
            result = train_seeds(config, out / name, seeds, overwrite=True, predict_splits=[])
            steps = sum(m["global_steps"] for m in result["runs"].values())
        runs[name] = out / name
        seconds[name] = time.time() - t0
        print(f"[{name}] trained {steps} steps ({len(seeds)} seed(s)) in {seconds[name]:.0f} s", flush=True)
    t0 = time.time()
    bench = run_benchmark(
        [f"{ZERO_SHOT_NAME}=tiny"], [f"{n}={p}" for n, p in runs.items()], out / "benchmark",
        recipe=base, corpus=out / "corpus", reference=DEMO_OBJECTIVES[0], n_resamples=n_resamples, unit=unit,
        overwrite=True, progress=progress)
    seconds["benchmark"] = time.time() - t0
    comparison = json.loads((out / "benchmark" / "report" / "comparison.json").read_text(encoding="utf-8"))
    seconds["total"] = time.time() - started
    return {"runs": {k: str(v) for k, v in runs.items()}, "benchmark": bench, "comparison": comparison,
            "seconds": seconds}
