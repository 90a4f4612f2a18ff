"""Run by `accelerate launch --multi_gpu --num_processes 2 ...` from tests/test_speechllm_run.py.

    train_tiny.py RECIPE.yaml RUN_DIR [SECTION.KEY=VALUE ...]

The speech-LLM run of ``llmfair.speechllm.run.train`` on the tiny model, after checking that two
ranks really run (accelerate's CPU flag with two processes silently runs one; see ENVIRONMENT.md). Rank 0 writes
``RUN_DIR/world.json`` with the world size seen before training.
"""
import json
import sys
from pathlib import Path

import torch

from llmfair.speechllm.run import train
from llmfair.training.run_inputs import training_arguments
from llmfair.training.config import RunConfig, parse_override
from llmfair.training.trainer import shutdown_distributed

recipe, out = sys.argv[1], Path(sys.argv[2])
config = RunConfig.from_yaml(recipe, dict(parse_override(s) for s in sys.argv[3:]))
args = training_arguments(config, out)  # the arguments train() builds; this sets up the process group
assert args.world_size == 2, f"expected 2 processes, got world_size={args.world_size}"
assert torch.distributed.is_initialized() and torch.distributed.get_world_size() == 2
world = {"world_size": torch.distributed.get_world_size(), "backend": torch.distributed.get_backend(),
         "per_device_train_batch_size": args.per_device_train_batch_size}
train(config, out, predict_splits=[])
if args.process_index == 0:
    (out / "world.json").write_text(json.dumps(world))
shutdown_distributed(exit_code=0)
