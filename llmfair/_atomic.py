"""Atomic writes: a reader never sees a half-written file, and llmfair never replaces a file it
did not write.

Every output goes to a temporary file in the destination directory and is renamed into place
(``os.replace`` is atomic on POSIX within one filesystem). Temporaries are named
``.NAME.<pid>.<random>.tmp``: a later write of the same ``NAME`` removes those whose process is
gone (a killed run's leftovers), never one a live process holds.

A directory written with :func:`atomic_directory` carries a record of its files
(:data:`RECORD_FILE`); replacing it is refused while it holds any file not in that record (a
user's file), naming one, so ``--overwrite`` can only ever replace llmfair's own output.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from llmfair.errors import DataError

RECORD_FILE = ".llmfair-written.json"
"""The files an llmfair command wrote into a directory (relative POSIX paths)."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(parent: str | os.PathLike, name: str) -> list[Path]:
    """Remove ``.NAME.<pid>.*.tmp`` / ``.old`` leftovers in ``parent`` whose process has ended.

    Only this module's naming pattern for ``name`` is touched, and only when the pid in it is not
    a running process (a temporary without a pid, or of a live process, is left alone).
    """
    removed = []
    parent = Path(parent)
    if not parent.is_dir():
        return removed
    for path in parent.glob(f".{glob_escape(name)}.*"):
        rest = path.name[len(name) + 2:]
        pid_text, _, tail = rest.partition(".")
        if not (pid_text.isdigit() and tail and path.suffix in (".tmp", ".old")):
            continue
        if int(pid_text) == os.getpid() or _pid_alive(int(pid_text)):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def glob_escape(text: str) -> str:
    import glob

    return glob.escape(text)


def _prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n")


def files_under(path: str | os.PathLike) -> list[str]:
    """Every file below ``path`` as a relative POSIX path (the record file excluded), sorted."""
    root = Path(path)
    out = []
    for dirpath, _, filenames in os.walk(root):
        for f in filenames:
            rel = (Path(dirpath) / f).relative_to(root).as_posix()
            if rel != RECORD_FILE:
                out.append(rel)
    return sorted(out)


def recorded_files(path: str | os.PathLike) -> set[str]:
    """The files the record in ``path`` says llmfair wrote (empty without a readable record)."""
    try:
        data = json.loads((Path(path) / RECORD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    files = data.get("files") if isinstance(data, dict) else None
    return {f for f in files if isinstance(f, str)} if isinstance(files, list) else set()


def write_record(path: str | os.PathLike, command: str, files: Iterable[str] | None = None) -> None:
    """Record ``files`` (default: every file now under ``path``) as written by ``command``."""
    files = sorted(files) if files is not None else files_under(path)
    write_json(Path(path) / RECORD_FILE, {"written_by": f"llmfair {command}", "files": files})


def foreign_files(path: str | os.PathLike, owned: Iterable[str] = ()) -> list[str]:
    """Files under ``path`` that neither its record nor ``owned`` lists: not llmfair's to replace."""
    mine = recorded_files(path) | set(owned)
    return [f for f in files_under(path) if f not in mine]


def check_replaceable(path: str | os.PathLike, *, what: str, overwrite: bool, owned: Iterable[str] = ()) -> None:
    """Refuse an output directory that cannot be (re)written.

    An absent or empty ``path`` is fine. One holding any file llmfair did not write is refused in
    every case, naming one (``--overwrite`` does not help: only a new or empty directory does);
    one holding only an earlier ``what`` needs ``overwrite``.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DataError(f"{path} exists and is not a directory; choose another output directory")
    if not path.is_dir() or not any(path.iterdir()):
        return
    foreign = foreign_files(path, owned)
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise DataError(f"{path} holds files llmfair did not write ({path / foreign[0]}{more}); llmfair never "
                        "replaces them: choose a new or empty directory")
    if not overwrite:
        raise DataError(f"{path} holds an earlier {what}; pass --overwrite to replace it")


@contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False, *, command: str = "",
                     owned: Iterable[str] = ()) -> Iterator[Path]:
    """Build a directory under a temporary name and move it onto ``path`` when the block succeeds.

    The new directory gets a record of its files (:data:`RECORD_FILE`, naming ``command``). With
    ``overwrite`` an existing ``path`` is replaced only after the new one is complete, so a failure
    part-way leaves the old directory untouched, and only when every file in it is llmfair's (its
    record, or ``owned``): a foreign file stops the replacement (:func:`check_replaceable`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)
    owned = list(owned)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        write_record(tmp, command or "")
        if path.exists():
            if not overwrite:
                raise FileExistsError(f"{path} appeared while it was being written; not replacing it")
            check_replaceable(path, what="output", overwrite=True, owned=owned)
            old = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".old", dir=path.parent))
            old.rmdir()
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
