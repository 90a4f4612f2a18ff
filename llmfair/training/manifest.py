"""The run manifest: what it takes to reproduce and audit a run, written into every run directory."""
from __future__ import annotations

import platform
import resource
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from llmfair._atomic import write_json

PACKAGES = ("llmfair", "torch", "transformers", "peft", "accelerate", "datasets", "evaluate", "scikit-learn",
            "numpy", "safetensors", "deepspeed", "bitsandbytes")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    """The commit of the source tree (with ``+dirty`` when it has local changes), if it is a git checkout."""
    try:
        root = Path(__file__).resolve().parents[2]
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def peak_memory() -> dict[str, float | None]:
    """Peak resident memory of this process (MiB) and peak CUDA memory when a GPU was used."""
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cuda = None
    try:
        import torch

        if torch.cuda.is_available():
            cuda = torch.cuda.max_memory_allocated() / 2**20
    except ImportError:
        pass
    return {"peak_rss_mib": rss_kib / 1024, "peak_cuda_mib": cuda}


def write_manifest(run_dir: str | Path, **fields: Any) -> dict[str, Any]:
    """Write ``run_dir/manifest.json`` with the given fields plus environment facts."""
    manifest = {
        **fields,
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "memory": peak_memory(),
    }
    write_json(Path(run_dir) / "manifest.json", manifest)
    return manifest
