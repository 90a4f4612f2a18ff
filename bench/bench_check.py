"""Benchmark: the audio header scan of ``llmfair check`` on a MELD-ST-sized tree (20,000 WAVs).

Prints files/s for, side by side in one run: a first scan on one thread, a first scan with the
default thread pool (empty cache), and a second, cached scan of the unchanged tree (stats only).
The clips are short (the header read does not depend on a clip's length; the tree stays small on
disk). Not run by pytest.

    .venv/bin/python bench/bench_check.py [--files 20000] [--folders 40]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from llmfair.check.headers import scan_headers


def build_tree(root: Path, files: int, folders: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(files):
        folder = root / f"split{i % folders:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"clip_{i:05d}.wav"
        n = int(rng.integers(800, 3200))  # 0.05-0.2 s
        sf.write(path, (rng.standard_normal(n) * 0.01).astype(np.float32), 16_000, subtype="PCM_16")
        paths.append(path)
    return paths


def timed(label: str, n: int, fn) -> dict:
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    print(f"{label:<44}{seconds:>9.2f} s{n / seconds:>12,.0f} files/s   (read {result.read}, cached {result.cached})")
    return {"seconds": seconds, "files_per_s": n / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--folders", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        paths = build_tree(root / "tree", args.files, args.folders)
        print(f"{args.files} WAV files in {args.folders} folders written in {time.perf_counter() - t0:.1f} s "
              f"({os.cpu_count()} CPUs)")
        cache = root / "cache.json"
        one = timed("first scan, 1 thread, no cache", len(paths),
                    lambda: scan_headers(paths, use_cache=False, workers=1))
        first = timed("first scan, thread pool, empty cache", len(paths),
                      lambda: scan_headers(paths, cache_file=cache))
        cached = timed("second scan, cache (unchanged tree)", len(paths),
                       lambda: scan_headers(paths, cache_file=cache))
        print(f"cached / first (thread pool): {first['seconds'] / cached['seconds']:.1f}x faster; "
              f"thread pool / 1 thread: {one['seconds'] / first['seconds']:.2f}x; cache file "
              f"{cache.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
