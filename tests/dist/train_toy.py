"""Run by `accelerate launch --multi_gpu --num_processes 2 ...` from tests/test_trainer.py."""
import json
import sys

import torch

from llmfair.training.trainer import shutdown_distributed
from tests._toy import make_trainer

out_dir, batch = sys.argv[1], int(sys.argv[2])
trainer = make_trainer(out_dir, batch=batch, steps=2, options={"weight": "ratio", "lambda_init": 1.0})
assert trainer.args.world_size == 2, f"expected 2 processes, got world_size={trainer.args.world_size}"
assert torch.distributed.get_world_size() == 2
trainer.train()
if trainer.args.process_index == 0:
    weights = {k: v.tolist() for k, v in trainer.model.state_dict().items()}
    with open(f"{out_dir}/weights.json", "w") as fh:
        json.dump({"world_size": trainer.args.world_size, "weights": weights}, fh)
shutdown_distributed(exit_code=0)
