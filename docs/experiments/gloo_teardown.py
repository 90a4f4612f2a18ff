"""Minimal reproduction of the 2-rank gloo teardown abort that llmfair's entry points avoid with
``os._exit`` (llmfair.training.trainer.shutdown_distributed).

A DDP-wrapped module whose C++ reducer still holds the gloo process group when the interpreter
exits aborts intermittently with "terminate called without an active exception", even after
``barrier()`` and ``destroy_process_group()``. Releasing the module first removes it. Measured on
this project's CPU machine (torch 2.13.0+cpu, 2 cores), 30 launches each:

    keep               4 of 30 launches aborted (exit code 1 after the script finished)
    del_then_destroy   0 of 30

    for mode in keep del_then_destroy; do
      python -m torch.distributed.run --nproc_per_node 2 docs/experiments/gloo_teardown.py $mode; echo $?
    done

Upstream report: not filed from here (no network); this file is the reproduction to file.
"""
import os, sys
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

dist.init_process_group("gloo")
model = DDP(torch.nn.Linear(4, 2))
model(torch.randn(8, 4)).sum().backward()
mode = sys.argv[1]
if mode == "del_then_destroy":
    del model
    import gc; gc.collect()
dist.barrier()
dist.destroy_process_group()
# mode "keep": the DDP module (and its reducer, which holds the process group) lives until interpreter exit
