"""The sweep's grid: :class:`RunSpec` and its stable run id, :func:`plan_runs` (the fixed order,
split into shards), and where a run's files live under the output directory.

:func:`check_shard` is shared with the speech-LLM sweep (:mod:`llmfair.speechllm.sweep`), which
splits its grid the same way.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from llmfair.errors import ConfigError
from llmfair.sweep.config import MethodSpec, SweepConfig

RUNS_DIR = "runs"
"""The folder of ``out`` holding every run's predictions and metrics."""


@dataclass(frozen=True)
class RunSpec:
    """One training run of the grid."""

    method: MethodSpec
    ratio: float
    fold: int
    seed: int
    K: int | None = None

    @property
    def run_id(self) -> str:
        """``<method>-r<ratio>-f<fold>-s<seed>[-k<K>]`` (stable: file names and resumption use it)."""
        base = f"{self.method.name}-r{self.ratio:g}-f{self.fold}-s{self.seed}"
        return base if self.K is None else f"{base}-k{self.K}"


def plan_runs(config: SweepConfig, shard: tuple[int, int] = (0, 1)) -> list[RunSpec]:
    """The grid in its fixed order (method, K, ratio, fold, seed), then every n-th run from i.

    Raises:
        ConfigError: a shard outside ``0 <= i < n``.
    """
    i, n = check_shard(shard)
    runs = [RunSpec(m, r, f, s, k)
            for m in config.methods for k in (m.K or [None]) for r in config.ratios for f in config.folds
            for s in config.seeds]
    return runs[i::n]


def check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    """``shard`` as two ints ``(i, n)``: the i-th of n interleaved parts of a grid (runs ``i, i+n, ...``).

    Raises:
        ConfigError: not a pair of integers, or not ``n >= 1 and 0 <= i < n``.
    """
    try:
        i, n = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise ConfigError(f"shard must be (i, n), got {shard!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"shard {i}/{n}: need n >= 1 and 0 <= i < n")
    return i, n


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` → (i, n), e.g. ``"0/2"``."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match:
        raise ConfigError(f"--shard {text!r}: expected i/n, e.g. 0/2")
    return check_shard((int(match.group(1)), int(match.group(2))))


def predictions_path(out: str | os.PathLike, run_id: str) -> Path:
    """``out/runs/predictions_<run id>.csv``."""
    return Path(out) / RUNS_DIR / f"predictions_{run_id}.csv"


def metrics_path(out: str | os.PathLike, run_id: str) -> Path:
    """``out/runs/metrics_<run id>.json`` (written last: its presence marks a finished run)."""
    return Path(out) / RUNS_DIR / f"metrics_{run_id}.json"


def is_finished(out: str | os.PathLike, run_id: str) -> bool:
    """True when both the predictions and the metrics of the run exist (metrics are written last)."""
    return predictions_path(out, run_id).is_file() and metrics_path(out, run_id).is_file()
