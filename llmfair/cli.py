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


# ----------------------------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    from llmfair.data.labels import MELD
    from llmfair.data.meld_st import read_meld_st
    from llmfair.data.stats import corpus_stats, format_stats
    from llmfair.data.synth import SynthConfig, generate_corpus

    out = Path(args.out)
    corpus = out / "corpus"
    generate_corpus(corpus, SynthConfig(seed=args.seed))
    examples = read_meld_st(corpus, modalities=("audio", "audio_text"))
    print(format_stats(corpus_stats(examples, MELD)))
    print(f"\nbuilt-in corpus in {corpus}")
    return 0


# ----------------------------------------------------------------------------------------- report
def cmd_report(args: argparse.Namespace) -> int:
    from llmfair.report import write_report

    names = [n.strip() for n in args.names.split(",")] if args.names else None
    result = write_report(args.predictions, args.out, names=names, n_resamples=args.n_resamples, seed=args.seed,
                          unit=args.unit, plots=not args.no_plots)
    print(result["markdown"], end="")
    print(f"\nreport written to {args.out}")
    return 0


# ----------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmfair", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="corpora: build the built-in corpus, statistics, imbalance splits")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")

    synth = data_sub.add_parser("synth", help="generate the built-in offline corpus (MELD-ST layout)")
    synth.add_argument("--out", required=True, help="output directory")
    synth.add_argument("--overwrite", action="store_true", help="replace a different corpus already in --out")
    from llmfair.data.synth import SynthConfig
    from llmfair.options import add_dataclass_arguments

    add_dataclass_arguments(synth, SynthConfig)
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

    report = sub.add_parser(
        "report", help="metrics.json, Markdown/CSV tables and plots from predictions tables; several files are compared"
    )
    report.add_argument("predictions", nargs="+", metavar="PRED",
                        help="predictions table(s) (CSV or Parquet); with several, the first is the reference")
    report.add_argument("--out", required=True, help="report directory (created; existing files are replaced)")
    report.add_argument("--names", default=None, help="comma-separated run names (default: the file stems)")
    report.add_argument("--n-resamples", type=int, default=1000, help="bootstrap replicates (default 1000; 0: none)")
    report.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    report.add_argument("--unit", choices=["utterance", "speaker"], default="utterance",
                        help="bootstrap unit (default utterance; speaker = cluster bootstrap)")
    report.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    report.set_defaults(func=cmd_report)

    demo = sub.add_parser("demo", help="the end-to-end demo on the built-in corpus")
    demo.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)
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
