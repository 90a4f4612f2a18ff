"""Entry point for `accelerate launch`: LoRA-tune a speech LLM with an llmfair objective.

    accelerate launch --config_file accelerate_config.yaml recipes/train_speechllm.py \\
        recipes/configs/demo_tiny.yaml --out runs/tiny_erm [--set objective.name=minmaxgap] [--resume]

Every process runs this script; the Trainer (through accelerate) handles the data-parallel
setup, and the objective all-reduces its per-cell statistics.
"""
from __future__ import annotations

import argparse
import logging
import sys

from llmfair.errors import LlmfairError
from llmfair.speechllm.run import train
from llmfair.training.config import RunConfig, parse_override
from llmfair.training.trainer import shutdown_distributed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="recipe YAML (see recipes/configs/)")
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a recipe value (YAML syntax), e.g. objective.name=minmaxgap")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    parser.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = RunConfig.from_yaml(args.config, dict(parse_override(s) for s in args.set))
        train(config, args.out, resume=args.resume, overwrite=args.overwrite)
    except LlmfairError as exc:
        print(f"train_speechllm: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    code = main()
    if code == 0:
        shutdown_distributed(exit_code=0)  # outputs are written; skip the C++ teardown that can abort
    sys.exit(code)
