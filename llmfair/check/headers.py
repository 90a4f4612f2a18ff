"""Read the header of every audio file a run will touch, in parallel, with a cache.

A header read (``soundfile.info``) gives frames, sample rate and channels in well under a
millisecond per WAV, where decoding a clip costs its whole length; it finds missing, unreadable
and empty files before a model loads. The cache maps each absolute path to the header seen at a
given size and modification time, so a second check of an unchanged corpus stats the files and
reads nothing (``bench/bench_check.py`` measures both).

The cache lives in ``$LLMFAIR_CACHE/audio_headers/`` (one JSON file per corpus folder) and is
written atomically; a corrupt or foreign cache file is ignored and rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from llmfair._atomic import write_text

CACHE_FORMAT = 1


@dataclass(frozen=True)
class AudioHeader:
    """What a header read found for one file. ``error`` is None for a readable file."""

    path: str
    frames: int = 0
    sample_rate: int = 0
    channels: int = 0
    error: str | None = None

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def read_header(path: str) -> AudioHeader:
    """The header of one file (never raises: a problem is recorded in ``error``)."""
    import soundfile as sf

    if not os.path.isfile(path):
        return AudioHeader(path, error="missing")
    try:
        info = sf.info(path)
    except Exception as exc:  # noqa: BLE001 - soundfile raises several types for corrupt files
        return AudioHeader(path, error=f"unreadable ({str(exc).strip() or type(exc).__name__})")
    return AudioHeader(path, int(info.frames), int(info.samplerate), int(info.channels))


def default_cache_file(paths: Sequence[str]) -> Path:
    """The cache file for a set of paths: one per common folder, under ``$LLMFAIR_CACHE``."""
    from llmfair.speechllm.tiny import default_cache_dir

    folder = os.path.commonpath([os.path.dirname(p) for p in paths]) if paths else "."
    digest = hashlib.sha1(os.path.abspath(folder).encode("utf-8")).hexdigest()[:16]
    return default_cache_dir() / "audio_headers" / f"{digest}.json"


def _load_cache(cache_file: Path) -> dict[str, list]:
    try:
        data = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("files"), dict):
        return {}
    return data["files"]


def _stat_key(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


@dataclass
class ScanResult:
    """Headers in input order, and how many came from the cache."""

    headers: list[AudioHeader]
    cached: int
    read: int


def scan_headers(paths: Iterable[str | os.PathLike], *, cache_file: str | os.PathLike | None = None,
                 use_cache: bool = True, workers: int | None = None, progress: bool = False,
                 desc: str = "audio headers") -> ScanResult:
    """Headers of ``paths`` (duplicates read once), reusing cached headers of unchanged files.

    Args:
        cache_file: where the cache lives (default :func:`default_cache_file`).
        use_cache: False reads every header and leaves the cache alone.
        workers: reader threads (default ``min(16, 4 × CPUs)``: header reads wait on the disk).
        progress: a tqdm bar on stderr.
    """
    from tqdm.auto import tqdm

    paths = [os.path.abspath(os.fspath(p)) for p in paths]
    unique = list(dict.fromkeys(paths))
    cache_path = Path(cache_file) if cache_file is not None else default_cache_file(unique)
    cache = _load_cache(cache_path) if use_cache else {}
    stats = {p: _stat_key(p) for p in unique}
    found: dict[str, AudioHeader] = {}
    todo = []
    for p in unique:
        entry = cache.get(p)
        if entry is not None and stats[p] is not None and tuple(entry[:2]) == stats[p]:
            frames, rate, channels, error = entry[2:6]
            found[p] = AudioHeader(p, frames, rate, channels, error)
        else:
            todo.append(p)
    if todo:
        workers = workers or min(16, 4 * (os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=workers) as pool, \
                tqdm(total=len(todo), desc=desc, unit="file", disable=not progress, leave=False) as bar:
            for header in pool.map(read_header, todo, chunksize=64):
                found[header.path] = header
                bar.update()
    if use_cache and todo:
        for p in todo:
            h, key = found[p], stats[p]
            if key is not None:  # a missing file is not cached: it may appear
                cache[p] = [key[0], key[1], h.frames, h.sample_rate, h.channels, h.error]
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        write_text(cache_path, json.dumps({"format": CACHE_FORMAT, "files": cache}, separators=(",", ":")))
    return ScanResult([found[p] for p in paths], cached=len(unique) - len(todo), read=len(todo))
