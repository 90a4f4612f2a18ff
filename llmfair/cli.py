"""The ``llmfair`` command line. Every subcommand has ``--help``; errors print as one line on stderr
with a non-zero exit code (set LLMFAIR_DEBUG=1 for the traceback)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from llmfair.errors import LlmfairError

logger = logging.getLogger("llmfair")


def _detect_corpus(path: Path) -> str:
    if (path / "ENG_DEU").is_dir() or (path / "ENG_JPN").is_dir():
        return "meld_st"
    if any(path.glob("labels_consensus_*.csv")):
        return "crema_d"
    raise LlmfairError(f"{path} is neither a MELD-ST directory (ENG_DEU/, ENG_JPN/) nor CREMA-D labels "
                       "(labels_consensus_K.csv)")


# ----------------------------------------------------------------------------------------- data
def cmd_data_synth(args: argparse.Namespace) -> int:
    from llmfair.data.synth import SynthConfig, generate_corpus
    from llmfair.options import dataclass_from_args

    config = dataclass_from_args(SynthConfig, args)
    manifest = generate_corpus(args.out, config, overwrite=args.overwrite)
    print(f"built-in corpus (seed {manifest['seed']}) in {args.out}")
    if args.crema_d_layout:
        from llmfair.data.synth.crema_d_layout import write_crema_d_layout

        layout = write_crema_d_layout(args.out, args.crema_d_layout, seed=config.seed, overwrite=args.overwrite)
        left_out = sum(layout["dropped"].values())
        print(f"CREMA-D layout: {layout['rows']} clips of {sum(layout['speakers'].values())} speakers in 5 "
              f"speaker-disjoint folds, with every rater vote in ratings.csv, in {args.crema_d_layout}"
              + (f" ({left_out} left out: surprise or no vote)" if left_out else ""))
    return 0


def cmd_data_stats(args: argparse.Namespace) -> int:
    from llmfair.data.labels import CREMA_D, MELD
    from llmfair.data.stats import corpus_stats, format_stats

    root = Path(args.dir)
    if not root.is_dir():
        raise LlmfairError(f"not a directory: {root}")
    kind = _detect_corpus(root)
    modalities = tuple(m.strip() for m in args.modalities.split(",") if m.strip())
    if kind == "meld_st":
        from llmfair.data.meld_st import DEFAULT_PATH_TEMPLATE, read_meld_st

        examples = read_meld_st(root, modalities=modalities, path_template=args.path_template or DEFAULT_PATH_TEMPLATE,
                                gender_table=args.gender_table, check_audio=not args.no_check_audio)
        space = MELD
    else:
        from llmfair.data.crema_d import read_crema_d

        examples = read_crema_d(root, args.fold, check_audio=False)
        space = CREMA_D
    stats = corpus_stats(examples, space)
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    return 0


def cmd_data_imbalance(args: argparse.Namespace) -> int:
    from llmfair.data.crema_d import read_crema_d
    from llmfair.data.imbalance import build_imbalanced_splits
    from llmfair.data.labels import CREMA_D

    examples = read_crema_d(Path(args.crema_d), args.fold, check_audio=False)
    result = build_imbalanced_splits(examples, CREMA_D, args.ratio, args.seed)
    if args.json:
        print(json.dumps(result.counts, indent=2))
        return 0
    print(f"CREMA-D fold {args.fold}, ratio 1:{args.ratio:g}, seed {args.seed}; train and dev imbalanced, "
          "test untouched")
    for split, table in result.counts.items():
        f = sum(v["female"] for v in table.values())
        m = sum(v["male"] for v in table.values())
        print(f"\n== {split}: {f + m} single-label rows ({f} F / {m} M)"
              + (f", plus {result.no_majority[split]} without a majority label" if result.no_majority.get(split) else ""))
        print(f"{'emotion':<10}{'majority':>10}{'female':>8}{'male':>8}")
        for emotion, row in table.items():
            print(f"{emotion:<10}{result.majority_gender[emotion]:>10}{row['female']:>8}{row['male']:>8}")
    return 0


# ----------------------------------------------------------------------------------------- train
def _load_run_config(path: str, overrides: list[str]):
    from llmfair.training.config import RunConfig, parse_override

    return RunConfig.from_yaml(path, dict(parse_override(s) for s in overrides))


def cmd_train(args: argparse.Namespace) -> int:
    from llmfair.speechllm.run import parse_seeds, seed_run_dir, train, train_seeds

    config = _load_run_config(args.config, args.set)
    seeds = parse_seeds(args.seeds)
    if seeds is not None and len(seeds) > 1:
        result = train_seeds(config, args.out, seeds, resume=args.resume, overwrite=args.overwrite)
        for seed in seeds:
            manifest = result["runs"][seed]
            print(f"seed {seed}: {manifest['global_steps']} steps, run in {seed_run_dir(args.out, seed)}")
        print(f"{len(seeds)} seeds listed in {Path(args.out) / 'seeds.json'}")
        return 0
    if seeds is not None:
        config.training = {**config.training, "seed": seeds[0]}
    manifest = train(config, args.out, resume=args.resume, overwrite=args.overwrite)
    print(f"run in {args.out}: {manifest['global_steps']} steps, adapter in {Path(args.out) / 'adapter'}")
    for split, path in manifest["predictions"].items():
        print(f"predictions ({split}): {path}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from llmfair.check import format_report
    from llmfair.check.preflight import check_recipe
    from llmfair.training.config import parse_override

    report = check_recipe(args.config, dict(parse_override(s) for s in args.set), run_dir=args.out,
                          progress=not args.no_progress and sys.stderr.isatty(), use_cache=not args.no_cache)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report), end="\n" if args.json else "")
    return 0 if report.ok else 1


def _csv_list(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def cmd_benchmark(args: argparse.Namespace) -> int:
    from llmfair.benchmark import run_benchmark

    recipe = _load_run_config(args.recipe, args.set) if args.recipe else None
    if args.set and not args.recipe:
        raise LlmfairError("--set needs --recipe (it overrides values of that recipe)")
    result = run_benchmark(
        args.model, args.runs, args.out, recipe=recipe, corpus=args.corpus, split=args.split,
        languages=_csv_list(args.languages), modalities=_csv_list(args.modalities) or ("audio", "audio_text"),
        batch_size=args.batch_size, encoder_cache=not args.no_encoder_cache, n_resamples=args.n_resamples,
        unit=args.unit, seed=args.seed, plots=not args.no_plots, overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(result["report_result"]["markdown"], end="")
    speakers = result["speakers"]
    print(f"\n{len(result['systems'])} system(s) on {result['rows']} rows ({result['split']} split; "
          f"{speakers['female']} female / {speakers['male']} male speakers) in {result['seconds']:.0f} s; "
          f"tables and report in {args.out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from llmfair.speechllm.run import predict

    path = predict(args.run_dir, args.split, args.out, batch_size=args.batch_size)
    print(f"predictions ({args.split}): {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from llmfair.speechllm.export import export_run

    out = export_run(args.run_dir, args.out, merge=args.merge, overwrite=args.overwrite, n_resamples=args.n_resamples)
    print(f"peft adapter{' + merged checkpoint' if args.merge else ''} and model card in {out}")
    return 0


# ----------------------------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    from llmfair.demo import demo_table, run_demo
    from llmfair.speechllm.run import parse_seeds

    seeds = parse_seeds(args.seeds) if args.seeds else [args.seed]
    result = run_demo(args.out, seeds=seeds, corpus_seed=args.seed, epochs=args.epochs,
                      n_resamples=args.n_resamples, unit=args.unit, progress=not args.no_progress)
    print()
    print(demo_table(result["comparison"]))
    out = Path(args.out)
    print(f"\nfinished in {result['seconds']['total']:.0f} s; runs in {out}, predictions and report in "
          f"{out / 'benchmark'} (comparison: {out / 'benchmark' / 'report' / 'comparison.md'})")
    return 0


# ----------------------------------------------------------------------------------------- report
def cmd_report(args: argparse.Namespace) -> int:
    from llmfair.report import write_report

    result = write_report(args.predictions, args.out, names=_csv_list(args.names), systems=_csv_list(args.systems),
                          n_resamples=args.n_resamples, seed=args.seed, unit=args.unit, plots=not args.no_plots)
    print(result["markdown"], end="")
    print(f"\nreport written to {args.out}")
    return 0


# ----------------------------------------------------------------------------------------- sweep
def cmd_sweep(args: argparse.Namespace) -> int:
    from llmfair.speechllm.sweep import is_speech_sweep
    from llmfair.sweep import SweepConfig, collect_results, parse_shard, run_sweep

    if is_speech_sweep(args.config):
        return _speech_sweep(args)
    config = SweepConfig.from_yaml(args.config)
    if not (args.out or config.out):
        raise LlmfairError(f"{args.config}: no output directory; set 'out' in the config or pass --out")
    out = Path(args.out or config.out)
    if args.collect_only:
        paths = collect_results(out, reference=config.reference, overall=config.overall)
    else:
        summary = run_sweep(config, out, parse_shard(args.shard), progress=not args.no_progress)
        print(f"shard {args.shard}: {len(summary.planned)} runs, {len(summary.ran)} trained, "
              f"{len(summary.skipped)} already finished ({summary.seconds:.0f} s)")
        paths = summary.results
    print(f"results: {paths['markdown']} and {paths['csv']}; plots: {', '.join(str(p) for p in paths['plots'])}")
    return 0


def _speech_sweep(args: argparse.Namespace) -> int:
    """``llmfair sweep`` of a speech-LLM sweep YAML (one with a ``recipe``)."""
    from llmfair.speechllm.sweep import SpeechSweepConfig, collect_results, run_sweep
    from llmfair.sweep import parse_shard

    config = SpeechSweepConfig.from_yaml(args.config)
    if not (args.out or config.out):
        raise LlmfairError(f"{args.config}: no output directory; set 'out' in the config or pass --out")
    out = Path(args.out or config.out)
    if args.collect_only:
        paths = collect_results(config, out)
    else:
        summary = run_sweep(config, out, parse_shard(args.shard), progress=not args.no_progress,
                            extend=args.extend)
        print(f"shard {args.shard}: {len(summary.planned)} runs, {len(summary.ran)} trained, "
              f"{len(summary.skipped)} already finished ({summary.seconds:.0f} s)")
        paths = summary.results
    if paths.get("missing"):
        print(f"{len(paths['missing'])} run(s) of the grid not finished yet (other shards?)")
    print(f"front: {paths['front'][0]} and {paths['front'][1]}")
    for label, path in (paths.get("comparisons") or {}).items():
        print(f"paired comparison ({label}): {path}")
    if paths.get("summary"):
        print(Path(paths["summary"]).read_text(encoding="utf-8"))
    return 0


# ----------------------------------------------------------------------------------------- features, groups
def _option_values(pairs: Sequence[str]) -> dict:
    import yaml

    values = {}
    for text in pairs:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise LlmfairError(f"--option {text!r}: expected KEY=VALUE")
        values[key.strip()] = yaml.safe_load(value)
    return values


def cmd_features_extract(args: argparse.Namespace) -> int:
    from llmfair.ssl import build_feature_extractor
    from llmfair.ssl.extract import extract_corpus_features, read_corpus

    options = _option_values(args.option)
    if args.model is not None:
        if args.extractor != "ssl":
            raise LlmfairError(f"--model applies to the ssl extractor, not {args.extractor!r}")
        options["model"] = args.model
    layers = None
    if args.layers:
        try:
            layers = [int(t) for t in args.layers.split(",") if t.strip()]
        except ValueError:
            raise LlmfairError(f"--layers {args.layers!r}: expected comma-separated layer numbers, e.g. 0,6,12") from None
    extractor = build_feature_extractor(args.extractor, options, source="--option")
    kind, examples = read_corpus(args.corpus, audio_dir=args.audio_dir)
    summary = extract_corpus_features(
        examples, extractor, args.out, layers=layers, chunk_size=args.chunk_size, batch_size=args.batch_size,
        cache_dir=args.cache_dir, progress=not args.no_progress,
        corpus={"kind": kind, "path": str(Path(args.corpus).resolve()),
                "audio_dir": str(Path(args.audio_dir).resolve()) if args.audio_dir else None})
    shape = tuple(summary.features.values.shape[1:])
    if summary.already_finished:
        print(f"{args.out} already holds these {args.extractor} features {shape} of {len(summary.features.ids)} "
              "utterances; nothing to do")
    else:
        print(f"{args.extractor} features {shape} of {len(summary.features.ids)} utterances in {args.out} "
              f"({summary.num_chunks} chunks: {summary.chunks_resumed} resumed, {summary.chunks_extracted} extracted; "
              f"{summary.seconds:.0f} s)")
    print(f"a sweep reads them as  features: {{path: {Path(args.out) / 'features.safetensors'}}};  groups: "
          f"llmfair groups infer --features {args.out} --out GROUPS.csv")
    return 0


def cmd_groups_infer(args: argparse.Namespace) -> int:
    from llmfair.groups.infer import GroupInferenceOptions, infer_groups, sidecar

    options = GroupInferenceOptions(methods=args.method, K=_csv_list(args.k) or [], pseudo_model=args.pseudo_model,
                                    pseudo_folds=args.pseudo_folds, seed=args.seed, tsne=not args.no_tsne)
    result = infer_groups(args.features, args.out, options, progress=not args.no_progress)
    if result.pseudo_accuracy is not None:
        print(f"pseudo gender ({options.pseudo_model}): accuracy {result.pseudo_accuracy:.3f} against the true gender")
    for k, purity in result.purity.items():
        print(f"k-means K={k}: purity {purity:.3f}")
    print(f"groups file {result.path}; purity and contingency tables in {sidecar(result.path, '.purity.md')}"
          + (f"; t-SNE in {sidecar(result.path, '.tsne.png')}" if options.tsne else ""))
    return 0


# ----------------------------------------------------------------------------------------- correct
def cmd_correct_fit(args: argparse.Namespace) -> int:
    from llmfair.correction import CorrectionOptions, fit_correction
    from llmfair.correction.io import format_figures
    from llmfair.options import dataclass_from_args

    options = dataclass_from_args(CorrectionOptions, args)
    result = fit_correction(args.emotion, args.gender, args.out, kind=args.kind, options=options,
                            overwrite=args.overwrite, progress=sys.stderr.isatty())
    train = result["train"]
    print(f"correction net ({args.kind}) fitted on {result['n_rows']} rows: {train['epochs_run']} epochs, "
          f"{train['steps']} steps in {train['seconds']:.2f} s")
    print("before → after on the fitting rows (training-set figures):")
    print(format_figures(result["figures"]))
    print(f"model written to {args.out}")
    return 0


def cmd_correct_apply(args: argparse.Namespace) -> int:
    from llmfair.correction import apply_correction
    from llmfair.correction.io import format_figures

    result = apply_correction(args.model, args.emotion, args.gender, args.out, overwrite=args.overwrite)
    print(f"corrected {result['n_corrected']} rows"
          + (f" ({result['n_passed_through']} of unknown speaker gender passed through)" if result["n_passed_through"]
             else ""))
    print(format_figures(result["figures"]))
    print(f"corrected tables: {result['emotion']}, {result['gender']}; figures in {Path(args.out) / 'figures.md'}")
    return 0


def cmd_correct_gender_model(args: argparse.Namespace) -> int:
    from llmfair.correction import GenderModelOptions, train_gender_model
    from llmfair.options import dataclass_from_args

    options = dataclass_from_args(GenderModelOptions, args)
    summary = train_gender_model(args.corpus, args.out, options, overwrite=args.overwrite,
                                 progress=sys.stderr.isatty())
    print(f"gender model ({options.features} features) trained on {summary['train_rows']} train utterances")
    for split, info in summary["splits"].items():
        excluded = f", {info['excluded_unknown_gender']} of unknown gender left out" if info["excluded_unknown_gender"] else ""
        print(f"{split}: {info['rows']} rows, accuracy {info['accuracy']:.3f}{excluded} → {info['table']}")
    return 0


# ----------------------------------------------------------------------------------------- configs
def cmd_configs(args: argparse.Namespace) -> int:
    from llmfair import launch_configs

    if args.show:
        print(launch_configs.read_text(args.show), end="")
        return 0
    if args.copy:
        written = launch_configs.copy_to(args.copy, args.names or None, overwrite=args.overwrite)
        for path in written:
            print(path)
        print(f"{len(written)} launch config(s) in {args.copy}; launch from that folder, e.g. accelerate launch "
              "--config_file recipes/accelerate/zero2.yaml ...")
        return 0
    width = max(len(n) for n in launch_configs.names())
    for name in launch_configs.names():
        print(f"{name:<{width}}  {launch_configs.DESCRIPTIONS[name]}")
    return 0


# ----------------------------------------------------------------------------------------- parser
def _add_data_commands(sub) -> None:
    """``data synth|stats|imbalance``."""
    data = sub.add_parser("data", help="corpora: build the built-in corpus, statistics, imbalance splits")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")

    synth = data_sub.add_parser("synth", help="generate the built-in offline corpus (MELD-ST layout)")
    synth.add_argument("--out", required=True, help="output directory")
    synth.add_argument("--overwrite", action="store_true", help="replace a different corpus already in --out")
    from llmfair.data.synth import SynthConfig
    from llmfair.options import add_dataclass_arguments

    add_dataclass_arguments(synth, SynthConfig)
    synth.add_argument("--crema-d-layout", default=None, metavar="DIR",
                       help="also write the corpus in CREMA-D's EMO-SUPERB layout into DIR (5 speaker-disjoint folds, "
                            "labels_consensus_K.csv, audio/), for feature sweeps (recipes/sweeps/idi_builtin.yaml)")
    synth.set_defaults(func=cmd_data_synth)

    stats = data_sub.add_parser("stats", help="counts per split × language × modality × gender × emotion")
    stats.add_argument("dir", help="a MELD-ST directory (or the built-in corpus) or a CREMA-D labels directory")
    stats.add_argument("--json", action="store_true", help="print JSON instead of tables")
    stats.add_argument("--modalities", default="audio,audio_text", help="comma-separated (default: both)")
    stats.add_argument("--path-template", default=None, help="MELD-ST audio path template (see docs/data.md)")
    stats.add_argument("--gender-table", default=None, help="CSV speaker,gender overriding the packaged table")
    stats.add_argument("--no-check-audio", action="store_true", help="do not require the audio files")
    stats.add_argument("--fold", type=int, default=1, help="CREMA-D fold (default 1)")
    stats.set_defaults(func=cmd_data_stats)

    imb = data_sub.add_parser("imbalance", help="controlled gender imbalance on CREMA-D (IDI protocol)")
    imb.add_argument("--crema-d", required=True, help="directory of labels_consensus_K.csv")
    imb.add_argument("--fold", type=int, required=True, help="EMO-SUPERB fold 1-5")
    imb.add_argument("--ratio", type=float, required=True, help="r of the 1:r setting, e.g. 20")
    imb.add_argument("--seed", type=int, default=0, help="seed of the minority draw (default 0)")
    imb.add_argument("--json", action="store_true", help='print {"train": {"angry": {"female": n, "male": n}, ...}, ...}')
    imb.set_defaults(func=cmd_data_imbalance)


def _add_run_commands(sub) -> None:
    """``check``, ``train``, ``predict``, ``export``: one speech-LLM run."""
    check = sub.add_parser("check", help="check a recipe before paying for it: every value, the data, every audio "
                                         "header, the plan; nothing is loaded or trained")
    check.add_argument("config", help="recipe YAML, e.g. recipes/configs/demo_tiny.yaml")
    check.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a recipe value (YAML syntax); repeatable, as for train")
    check.add_argument("--out", default=None, help="the run directory the run would use (named in the arguments)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument("--no-cache", action="store_true", help="read every audio header again (ignore the cache)")
    check.add_argument("--no-progress", action="store_true", help="no progress bar")
    check.set_defaults(func=cmd_check)

    train = sub.add_parser("train", help="LoRA-tune a speech LLM with an objective (recipe YAML)")
    train.add_argument("config", help="recipe YAML, e.g. recipes/configs/demo_tiny.yaml")
    train.add_argument("--out", required=True, help="run directory")
    train.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a recipe value (YAML syntax); repeatable")
    train.add_argument("--seeds", default=None, metavar="S1,S2,...",
                       help="training seed(s); several train one run per seed into OUT/seed-<s>/ (same corpus, "
                            "listed in OUT/seeds.json) for reports that separate seed noise from row noise")
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    train.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    train.set_defaults(func=cmd_train)

    predict = sub.add_parser("predict", help="write the predictions table of a finished run")
    predict.add_argument("run_dir", help="a run directory written by `llmfair train`")
    predict.add_argument("--split", default="test", help="train, dev or test (default test)")
    predict.add_argument("--out", default=None, help="CSV path (default RUN_DIR/predictions_SPLIT.csv)")
    predict.add_argument("--batch-size", type=int, default=8)
    predict.set_defaults(func=cmd_predict)

    export = sub.add_parser("export", help="publish a run: peft adapter, optional merged checkpoint, model card")
    export.add_argument("run_dir", help="a run directory written by `llmfair train`")
    export.add_argument("--out", required=True, help="output directory")
    export.add_argument("--merge", action="store_true", help="also write the adapter merged into the base weights")
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    export.add_argument("--n-resamples", type=int, default=1000, help="bootstrap resamples for the card's results")
    export.set_defaults(func=cmd_export)


def _add_evaluation_commands(sub) -> None:
    """``report`` and ``benchmark``: predictions tables to figures."""
    report = sub.add_parser(
        "report", help="metrics.json, Markdown/CSV tables and plots from predictions tables; several files are compared"
    )
    report.add_argument("predictions", nargs="+", metavar="PRED",
                        help="predictions table(s) (CSV or Parquet); with several, the first is the reference")
    report.add_argument("--out", required=True, help="report directory (created; existing files are replaced)")
    report.add_argument("--names", default=None, help="comma-separated run names (default: the file stems)")
    report.add_argument("--systems", default=None,
                        help="comma-separated system of each table (default: each table is its own system); tables "
                             "sharing a system are its seeds: figures are averaged over them and compared paired")
    report.add_argument("--n-resamples", type=int, default=1000, help="bootstrap replicates (default 1000; 0: none)")
    report.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    report.add_argument("--unit", choices=["utterance", "speaker"], default="utterance",
                        help="bootstrap unit (default utterance; speaker = cluster bootstrap)")
    report.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    report.set_defaults(func=cmd_report)

    bench = sub.add_parser("benchmark", help="score base models zero-shot and fine-tuned runs on one corpus split; "
                                             "predictions per system and a paired comparison report")
    bench.add_argument("runs", nargs="*", metavar="RUN",
                       help="finished run directories ([NAME=]DIR; a run trained with --seeds is one system; "
                            "directories given the same NAME are seeds of one system)")
    bench.add_argument("--model", action="append", default=[], metavar="[NAME=]MODEL[:FAMILY]",
                       help="base model scored zero-shot: tiny, a local directory or a hub id, with its backbone family "
                            "(e.g. tiny:voxtral; default: the recipe's model.family, or the checkpoint's); repeatable. "
                            "When given, every RUN must have been trained on one of them (model and family)")
    bench.add_argument("--out", required=True, help="output directory (predictions per system, report/, benchmark.json)")
    bench.add_argument("--recipe", default=None,
                       help="recipe YAML for the zero-shot systems' prompts, verbalizer and loading "
                            "(default: the packaged demo recipe); runs use their own")
    bench.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a value of --recipe (YAML syntax); repeatable")
    bench.add_argument("--corpus", default=None, help="MELD-ST-layout directory (default: the recipe's data.root)")
    bench.add_argument("--split", default="test", choices=["train", "dev", "test"], help="split to score (default test)")
    bench.add_argument("--languages", default=None, help="comma-separated (default: every language of the corpus)")
    bench.add_argument("--modalities", default="audio,audio_text", help="comma-separated (default: both)")
    bench.add_argument("--batch-size", type=int, default=None, help="rows per forward (default: the recipe's eval batch size)")
    bench.add_argument("--no-encoder-cache", action="store_true", help="run the audio encoder on every row")
    bench.add_argument("--unit", choices=["utterance", "speaker"], default="utterance",
                       help="bootstrap unit of the report (speaker = cluster bootstrap; see README)")
    bench.add_argument("--n-resamples", type=int, default=1000, help="bootstrap replicates (default 1000)")
    bench.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    bench.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    bench.add_argument("--no-progress", action="store_true", help="no progress bars")
    bench.add_argument("--overwrite", action="store_true", help="replace the files of an earlier benchmark in --out")
    bench.set_defaults(func=cmd_benchmark)


def _add_study_commands(sub) -> None:
    """``sweep``, ``demo`` and ``configs``: grids, the demo, the launch configs."""
    sweep = sub.add_parser("sweep", help="methods × imbalance ratios × folds × seeds (× K) on cached features, "
                                          "resumable; IDI-format results table and plots")
    sweep.add_argument("config", help="sweep YAML: a feature sweep (corpus, labels_dir, features, methods, ratios, folds, "
                                      "seeds) or a speech-LLM sweep (recipe, objectives with option grids, seeds, "
                                      "train_imbalance)")
    sweep.add_argument("--out", default=None, help="output directory (default: the config's 'out')")
    sweep.add_argument("--shard", default="0/1", metavar="I/N",
                       help="run every N-th run of the grid starting at I (default 0/1: all); finished runs are skipped")
    sweep.add_argument("--collect-only", action="store_true",
                       help="train nothing: rebuild results.csv/.md and plots from the finished runs in --out")
    sweep.add_argument("--no-progress", action="store_true", help="no progress bar")
    sweep.add_argument("--extend", action="store_true",
                       help="speech-LLM sweeps: accept a grid that adds runs to the sweep in --out (nothing else may change)")
    sweep.set_defaults(func=cmd_sweep)

    demo = sub.add_parser("demo", help="built-in corpus → tiny Qwen2-Audio with erm and minmaxgap → benchmark with the "
                                       "base model zero-shot, paired differences")
    demo.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    demo.add_argument("--seed", type=int, default=0, help="corpus seed (and the training seed without --seeds)")
    demo.add_argument("--seeds", default=None, metavar="S1,S2,...", help="training seeds (default: --seed)")
    demo.add_argument("--epochs", type=float, default=None, help="override the demo recipe's epochs")
    demo.add_argument("--unit", choices=["utterance", "speaker"], default="speaker",
                      help="bootstrap unit of the comparison (default speaker)")
    demo.add_argument("--n-resamples", type=int, default=1000, help="bootstrap resamples in the report")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(func=cmd_demo)

    configs = sub.add_parser("configs", help="the accelerate / DeepSpeed launch configs shipped with llmfair: list, "
                                             "print or copy them")
    configs.add_argument("--show", metavar="NAME", default=None, help="print one config (e.g. zero2.yaml)")
    configs.add_argument("--copy", metavar="DIR", default=None, help="copy configs into DIR at their recipe paths")
    configs.add_argument("names", nargs="*", metavar="NAME", help="with --copy: only these (default: all)")
    configs.add_argument("--overwrite", action="store_true", help="with --copy: replace differing files of the same name")
    configs.set_defaults(func=cmd_configs)


def _add_idi_commands(sub) -> None:
    """``features extract`` and ``groups infer``: frozen features of a corpus, inferred groups (IDI)."""
    features = sub.add_parser("features", help="frozen speech features of a corpus, extracted once (resumable)")
    features_sub = features.add_subparsers(dest="features_command", required=True, metavar="FEATURES_COMMAND")
    ext = features_sub.add_parser(
        "extract", help="extract a corpus's features into a features directory (features.safetensors + ids, what a "
                        "sweep's features: path reads); resumable: a killed run continues where it stopped")
    ext.add_argument("corpus", help="a MELD-ST directory (the built-in corpus) or a CREMA-D labels directory")
    ext.add_argument("--extractor", required=True, help="ssl, speaker or acoustic")
    ext.add_argument("--model", default=None, help="ssl: hub id or local directory of the model (offline: only local "
                                                   "files and the Hugging Face cache are read)")
    ext.add_argument("--layers", default=None, metavar="L1,L2,...",
                     help="ssl: keep only these layers (0 = the CNN output; default all)")
    ext.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                     help="another extractor option (YAML value); repeatable")
    ext.add_argument("--audio-dir", default=None, help="CREMA-D: the folder of the .wav clips (default CORPUS/audio)")
    ext.add_argument("--out", required=True, help="the features directory")
    ext.add_argument("--chunk-size", type=int, default=256, help="clips per resumable chunk (default 256)")
    ext.add_argument("--batch-size", type=int, default=16, help="clips per extractor call (default 16)")
    ext.add_argument("--cache-dir", default=None, help="also keep per-clip features in this cache (shared across jobs)")
    ext.add_argument("--no-progress", action="store_true", help="no progress bar")
    ext.set_defaults(func=cmd_features_extract)

    groups = sub.add_parser("groups", help="implicit demography inference: pseudo gender labels and k-means clusters")
    groups_sub = groups.add_subparsers(dest="groups_command", required=True, metavar="GROUPS_COMMAND")
    infer = groups_sub.add_parser(
        "infer", help="pseudo genders and k-means clusters of a features directory → the groups file a sweep reads "
                      "(groups_file), cluster purity per K and the t-SNE figure")
    infer.add_argument("--features", required=True, help="a features directory (llmfair features extract), e.g. "
                                                         "speaker embeddings")
    infer.add_argument("--method", default="pseudo,kmeans", help="pseudo, kmeans or both, comma-separated (default both)")
    infer.add_argument("--k", default="2,4,8,16,32", metavar="K1,K2,...", help="k-means cluster counts (default IDI's)")
    infer.add_argument("--pseudo-model", default="builtin",
                       help="builtin (logistic regression on the features, cross-fitted over speakers), a classifier "
                            ".json, or a transformers audio-classification model id or directory")
    infer.add_argument("--pseudo-folds", type=int, default=5, help="speaker folds of the builtin classifier (default 5)")
    infer.add_argument("--seed", type=int, default=42, help="k-means random_state (IDI: 42)")
    infer.add_argument("--no-tsne", action="store_true", help="skip the t-SNE figure")
    infer.add_argument("--out", required=True, help="the groups CSV; beside it: .purity.csv, .purity.md, .tsne.png, .json")
    infer.add_argument("--no-progress", action="store_true", help="no progress bar")
    infer.set_defaults(func=cmd_groups_infer)


def _add_correction_commands(sub) -> None:
    """``correct gender-model|fit|apply``: the post-hoc correction net."""
    from llmfair.options import add_dataclass_arguments

    correct = sub.add_parser("correct", help="post-hoc cross-modal correction net (emotion x speaker gender)")
    correct_sub = correct.add_subparsers(dest="correct_command", required=True, metavar="CORRECT_COMMAND")
    from llmfair.correction.gender import GenderModelOptions
    from llmfair.correction.options import MODEL_KIND_NAMES, CorrectionOptions

    gmodel = correct_sub.add_parser("gender-model", help="train the offline speaker-gender classifier on a corpus's "
                                    "train split; write predictions_<split>.csv")
    gmodel.add_argument("--corpus", required=True, help="MELD-ST-layout corpus directory with audio (or the built-in one)")
    gmodel.add_argument("--out", required=True, help="output directory (classifier + predictions tables)")
    gmodel.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_dataclass_arguments(gmodel, GenderModelOptions)
    gmodel.set_defaults(func=cmd_correct_gender_model)

    cfit = correct_sub.add_parser("fit", help="fit the correction net on validation-split emotion + gender predictions")
    cfit.add_argument("--emotion", required=True, metavar="PRED", help="emotion predictions table (dev split)")
    cfit.add_argument("--gender", required=True, metavar="PRED", help="gender predictions table of the same utterances")
    cfit.add_argument("--out", required=True, help="model directory")
    cfit.add_argument("--kind", choices=MODEL_KIND_NAMES, default="joint",
                      help="joint (the correction net) or independent (ablation: each task from its own model)")
    cfit.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_dataclass_arguments(cfit, CorrectionOptions)
    cfit.set_defaults(func=cmd_correct_fit)

    capply = correct_sub.add_parser("apply", help="correct held-out predictions; write corrected tables and figures")
    capply.add_argument("--model", required=True, help="a model directory written by `llmfair correct fit`")
    capply.add_argument("--emotion", required=True, metavar="PRED", help="emotion predictions table (e.g. test split)")
    capply.add_argument("--gender", required=True, metavar="PRED", help="gender predictions table of the same utterances")
    capply.add_argument("--out", required=True, help="output directory")
    capply.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    capply.set_defaults(func=cmd_correct_apply)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmfair", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_data_commands, _add_run_commands, _add_evaluation_commands, _add_idi_commands,
                _add_study_commands, _add_correction_commands):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        print("llmfair: interrupted", file=sys.stderr)
        return 130
    except (LlmfairError, OSError, ValueError) as exc:
        if os.environ.get("LLMFAIR_DEBUG"):
            raise
        print(f"llmfair: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
