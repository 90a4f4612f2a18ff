"""Resumable feature extraction of a whole corpus into one features directory
(``llmfair features extract``).

A features directory holds::

    features.safetensors  tensor "features", (N, D) or (N, L, D) float32, in the row order of
    features.ids.json     the N utterance ids (a JSON list)
    utterances.csv        id, speaker, gender, split, language, audio: the corpus rows of the features
    features.json         the manifest: corpus, extractor configuration and hash, layers, shape;
                          written last, so its presence marks a finished extraction

``features.safetensors`` beside ``features.ids.json`` is exactly what a feature sweep reads
(``features: {path: DIR/features.safetensors}``, :func:`llmfair.sweep.load_feature_file`), and
what :mod:`llmfair.groups.infer` (``llmfair groups infer --features DIR``) clusters and labels.

**Resumable.** The rows are cut into chunks of ``chunk_size`` in corpus order. Each finished chunk
is written atomically to ``chunks/NNNNN.safetensors`` and only then recorded in ``progress.json``
(also atomic), so a killed job leaves whole chunks behind — at worst one chunk file that is not yet
recorded, which is recomputed. A restart with the same corpus and extractor configuration skips
the recorded chunks; when all are done the final files are assembled (each written atomically, the
manifest last) and ``chunks/`` and ``progress.json`` are removed. A directory holding another
corpus's or another extractor's features, finished or not, is refused rather than mixed.

With ``cache_dir`` every chunk goes through the per-clip feature cache
(:func:`llmfair.ssl.cache.extract_features`), so clips already cached by another job are not
extracted again; without it the chunk's clips are extracted directly.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from llmfair._atomic import atomic_path, write_json, write_text
from llmfair.data.example import Example
from llmfair.errors import ConfigError, DataError
from llmfair.ssl.extractors import FeatureExtractor

logger = logging.getLogger(__name__)

FEATURES_FILE = "features.safetensors"
IDS_FILE = "features.ids.json"
UTTERANCES_FILE = "utterances.csv"
MANIFEST_FILE = "features.json"
PROGRESS_FILE = "progress.json"
CHUNKS_DIR = "chunks"
FORMAT = "llmfair.features"
TENSOR = "features"
UTTERANCE_COLUMNS: tuple[str, ...] = ("id", "speaker", "gender", "split", "language", "audio")


# ------------------------------------------------------------------------------------- the corpus
def corpus_kind(path: str | os.PathLike) -> str:
    """``meld_st`` (a MELD-ST directory, e.g. the built-in corpus) or ``crema_d`` (EMO-SUPERB label files).

    Raises:
        DataError: neither (naming what each layout has).
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"corpus directory not found: {root}")
    if (root / "ENG_DEU").is_dir() or (root / "ENG_JPN").is_dir():
        return "meld_st"
    if any(root.glob("labels_consensus_*.csv")):
        return "crema_d"
    raise DataError(f"{root} is neither a MELD-ST directory (ENG_DEU/, ENG_JPN/; the built-in corpus) nor CREMA-D "
                    "labels (labels_consensus_K.csv)")


def read_corpus(path: str | os.PathLike, *, audio_dir: str | os.PathLike | None = None) -> tuple[str, list[Example]]:
    """Every utterance of a corpus with its audio: ``(kind, examples)``.

    - MELD-ST layout (the built-in corpus): the ``audio`` rows of every split and language
      (:func:`llmfair.data.meld_st.read_meld_st`; ``audio_text`` rows share their clips).
    - CREMA-D labels: the rows of the first fold file (each holds all clips), with the audio in
      ``audio_dir`` (default ``PATH/audio`` when that folder exists, as in the built-in corpus's
      CREMA-D layout). Missing clips are listed.
    """
    kind = corpus_kind(path)
    if kind == "meld_st":
        from llmfair.data.meld_st import read_meld_st

        return kind, read_meld_st(path, modalities=("audio",))
    from llmfair.data.crema_d import available_folds, read_crema_d

    if audio_dir is None:
        if not (Path(path) / "audio").is_dir():
            raise ConfigError(f"{path} holds CREMA-D labels: give the folder of its .wav clips (--audio-dir)")
        audio_dir = Path(path) / "audio"
    return kind, read_crema_d(path, available_folds(path)[0], audio_dir=audio_dir)


def ids_sha256(ids: Sequence[str]) -> str:
    """sha256 (hex) of the ids in order, one per line: the identity of a corpus's rows."""
    return hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------------------- reading a result
@dataclass
class FeatureSet:
    """A finished features directory (:func:`load_feature_set`).

    Attributes:
        folder: the directory.
        ids: the N utterance ids in row order.
        values: (N, D) or (N, L, D) float32.
        utterances: DataFrame with :data:`UTTERANCE_COLUMNS`, one row per id, in row order.
        manifest: ``features.json``.
    """

    folder: Path
    ids: tuple[str, ...]
    values: np.ndarray
    utterances: Any
    manifest: dict

    @property
    def extractor(self) -> str:
        """The extractor's registered name."""
        return str(self.manifest["extractor"]["name"])

    @property
    def config_hash(self) -> str:
        """The extractor configuration hash (:meth:`FeatureExtractor.config_hash`)."""
        return str(self.manifest["extractor"]["config_hash"])


def _read_manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path} is not a features manifest written by `llmfair features extract`")
    return manifest


def _read_progress(folder: Path) -> dict | None:
    path = folder / PROGRESS_FILE
    if not path.is_file():
        return None
    try:
        progress = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        logger.warning("%s is unreadable; the extraction starts over", path)
        return None
    return progress if isinstance(progress, dict) and progress.get("format") == FORMAT else None


def load_feature_set(folder: str | os.PathLike) -> FeatureSet:
    """Read a features directory written by :func:`extract_corpus_features`.

    Raises:
        DataError: the folder is missing, holds an unfinished extraction (run the same command again
            to finish it), or its files disagree (ids, metadata, rows).
    """
    import pandas as pd
    from safetensors import safe_open

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"features directory not found: {folder}")
    manifest = _read_manifest(folder)
    if manifest is None:
        progress = _read_progress(folder)
        if progress is not None:
            raise DataError(f"{folder} holds an unfinished extraction ({len(progress.get('done', []))} of "
                            f"{progress.get('num_chunks')} chunks): run `llmfair features extract` with the same "
                            "arguments to finish it")
        raise DataError(f"{folder} is not a features directory (no {MANIFEST_FILE}); write one with "
                        "`llmfair features extract CORPUS --extractor NAME --out DIR`")
    try:
        with safe_open(str(folder / FEATURES_FILE), framework="np") as fh:
            meta = fh.metadata() or {}
            values = fh.get_tensor(TENSOR)
    except Exception as exc:  # safetensors raises SafetensorError, OSError ... for missing or damaged files
        raise DataError(f"{folder / FEATURES_FILE} is not readable ({type(exc).__name__}: {exc}); extract again "
                        "into a new directory") from None
    ids = json.loads((folder / IDS_FILE).read_text(encoding="utf-8"))
    utterances = pd.read_csv(folder / UTTERANCES_FILE, dtype=str, keep_default_na=False)
    want = manifest["corpus"]["ids_sha256"]
    if meta.get("ids_sha256") != want or ids_sha256(ids) != want or utterances["id"].tolist() != ids:
        raise DataError(f"{folder}: {FEATURES_FILE}, {IDS_FILE}, {UTTERANCES_FILE} and {MANIFEST_FILE} do not "
                        "describe the same rows; extract again into a new directory")
    if meta.get("config_hash") != manifest["extractor"]["config_hash"] or values.shape[0] != len(ids):
        raise DataError(f"{folder}: {FEATURES_FILE} does not match {MANIFEST_FILE}; extract again into a new directory")
    return FeatureSet(folder, tuple(ids), values.astype(np.float32, copy=False), utterances, manifest)


# ------------------------------------------------------------------------------------- the job
@dataclass
class ExtractionSummary:
    """What :func:`extract_corpus_features` did."""

    features: FeatureSet
    num_chunks: int
    chunks_resumed: int
    chunks_extracted: int
    already_finished: bool
    seconds: float


def _chunk_path(folder: Path, index: int) -> Path:
    return folder / CHUNKS_DIR / f"{index:05d}.safetensors"


def _read_chunk(path: Path, chunk_ids_sha: str, config_hash: str) -> np.ndarray | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as fh:
            meta = fh.metadata() or {}
            values = fh.get_tensor(TENSOR)
    except Exception as exc:  # a missing or damaged chunk is recomputed
        logger.warning("chunk %s is unreadable (%s); extracting it again", path, type(exc).__name__)
        return None
    if meta.get("ids_sha256") != chunk_ids_sha or meta.get("config_hash") != config_hash:
        logger.warning("chunk %s belongs to other rows or another extractor; extracting it again", path)
        return None
    return values


def _write_tensor(path: Path, values: np.ndarray, metadata: dict[str, str]) -> None:
    from safetensors.numpy import save_file

    with atomic_path(path) as tmp:
        save_file({TENSOR: np.ascontiguousarray(values, dtype=np.float32)}, str(tmp), metadata=metadata)


def _select_layers(values: np.ndarray, layers: Sequence[int] | None, extractor: str) -> np.ndarray:
    if layers is None:
        return values
    if values.ndim != 3:
        raise ConfigError(f"layers: the {extractor!r} extractor gives {values.ndim - 1}-D features per clip; layers "
                          "select from layered (L, D) features (the ssl extractor)")
    bad = [i for i in layers if not -values.shape[1] <= i < values.shape[1]]
    if bad:
        raise ConfigError(f"layers {bad} out of range: the model gives {values.shape[1]} layers (0 = the CNN output)")
    return values[:, list(layers), :]


def _utterance_table(examples: Sequence[Example]) -> str:
    import pandas as pd

    frame = pd.DataFrame({
        "id": [e.id for e in examples], "speaker": [str(e.speaker) for e in examples],
        "gender": [e.gender for e in examples], "split": [e.split for e in examples],
        "language": [e.language for e in examples],
        "audio": [os.fspath(e.audio) if isinstance(e.audio, (str, os.PathLike)) else "" for e in examples]})
    return frame.to_csv(index=False, lineterminator="\n")


def extract_corpus_features(
    examples: Sequence[Example],
    extractor: FeatureExtractor,
    out: str | os.PathLike,
    *,
    corpus: dict[str, Any] | None = None,
    layers: Sequence[int] | None = None,
    chunk_size: int = 256,
    batch_size: int = 16,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> ExtractionSummary:
    """Extract the features of every example into the features directory ``out``, resumably.

    Args:
        examples: the corpus rows (:func:`read_corpus`); ids must be unique. Row order is kept.
        extractor: a built extractor (:func:`llmfair.ssl.build_feature_extractor`).
        out: the features directory (created; see the module docstring for its files).
        corpus: what to record about the corpus in the manifest (e.g. ``{"kind", "path"}``).
        layers: keep only these layers of layered (N, L, D) features (the ``ssl`` extractor).
        chunk_size: rows per chunk (the unit of resumption). A restart keeps the chunk size the
            unfinished extraction started with.
        batch_size: clips per ``extractor.extract`` call.
        cache_dir: per-clip feature cache root (optional; see the module docstring).
        progress: a tqdm bar over the clips.

    Raises:
        ConfigError: ``out`` holds features (finished or not) of other rows or another extractor
            configuration, or a bad ``chunk_size`` / ``layers``.
        DataError: the extractor fails on a clip (naming it) or gives rows of several shapes.
    """
    from tqdm.auto import tqdm

    from llmfair.ssl.cache import extract_clips, extract_features

    started = time.perf_counter()
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
    examples = list(examples)
    if not examples:
        raise DataError("no utterances to extract features from")
    ids = [e.id for e in examples]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"utterance id {dup!r} appears more than once; features are keyed by id")
    folder = Path(out)
    config_hash = extractor.config_hash()
    identity = {"extractor": extractor.name, "config_hash": config_hash,
                "layers": list(layers) if layers is not None else None, "ids_sha256": ids_sha256(ids), "n": len(ids)}

    def refuse(what: str, recorded: dict) -> None:
        if recorded.get("ids_sha256") != identity["ids_sha256"]:
            other = "other rows (another corpus, or another version of it)"
        elif recorded.get("extractor") != identity["extractor"]:
            other = "another extractor"
        elif recorded.get("config_hash") != identity["config_hash"]:
            other = "another configuration of the extractor"
        else:
            other = "other layers"
        raise ConfigError(f"{folder} holds {what} of {other} ({recorded.get('extractor')} features of "
                          f"{recorded.get('n')} rows); use another --out, or delete it to start over")

    manifest = _read_manifest(folder) if folder.is_dir() else None
    if manifest is not None:
        recorded = {**manifest["identity"]}
        if recorded != identity:
            refuse("a finished extraction", recorded)
        _remove_chunks(folder)
        logger.info("%s: features already extracted (%d rows); nothing to do", folder, len(ids))
        return ExtractionSummary(load_feature_set(folder), int(manifest.get("num_chunks", 0)), 0, 0, True,
                                 time.perf_counter() - started)

    state = _read_progress(folder) if folder.is_dir() else None
    if state is not None:
        if state.get("identity") != identity:
            refuse("an unfinished extraction", state.get("identity") or {})
        if state.get("chunk_size") != chunk_size:
            logger.info("resuming with the chunk size %s the extraction started with (not %s)",
                        state.get("chunk_size"), chunk_size)
            chunk_size = int(state["chunk_size"])
    else:
        state = {"format": FORMAT, "identity": identity, "chunk_size": chunk_size, "done": [], "seconds": 0.0}
    num_chunks = -(-len(ids) // chunk_size)
    state["num_chunks"] = num_chunks
    done = {int(i) for i in state.get("done", [])}
    bounds = [(i * chunk_size, min(len(ids), (i + 1) * chunk_size)) for i in range(num_chunks)]
    resumed = len(done)
    if resumed:
        logger.info("%s: resuming, %d of %d chunks already extracted", folder, resumed, num_chunks)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / PROGRESS_FILE, state)

    extracted = 0
    session_start = time.perf_counter()
    with tqdm(total=len(ids), initial=sum(b - a for i, (a, b) in enumerate(bounds) if i in done),
              desc=f"features {extractor.name}", unit="clip", disable=not progress) as bar:
        for index, (start, stop) in enumerate(bounds):
            if index in done:
                continue
            chunk = examples[start:stop]
            if cache_dir is not None:
                values = extract_features(extractor, chunk, cache_dir, batch_size, progress=False)
            else:
                values = extract_clips(extractor, chunk, batch_size)
            values = _select_layers(values, layers, extractor.name)
            _write_tensor(_chunk_path(folder, index), values,
                          {"ids_sha256": ids_sha256(ids[start:stop]), "config_hash": config_hash})
            done.add(index)
            state["done"] = sorted(done)
            state["seconds"] = float(state.get("seconds", 0.0)) + (time.perf_counter() - session_start)
            session_start = time.perf_counter()
            write_json(folder / PROGRESS_FILE, state)
            extracted += 1
            bar.update(stop - start)

    parts = []
    for index, (start, stop) in enumerate(bounds):
        values = _read_chunk(_chunk_path(folder, index), ids_sha256(ids[start:stop]), config_hash)
        if values is None:  # damaged since it was recorded: extract it again
            chunk = examples[start:stop]
            values = (extract_features(extractor, chunk, cache_dir, batch_size, progress=False) if cache_dir
                      is not None else extract_clips(extractor, chunk, batch_size))
            values = _select_layers(values, layers, extractor.name)
            extracted += 1
        parts.append(values)
    shapes = {p.shape[1:] for p in parts}
    if len(shapes) > 1:
        raise DataError(f"extractor {extractor.name!r} produced features of several shapes {sorted(shapes)} in {folder}")
    values = np.concatenate(parts)
    meta = {"format": FORMAT, "extractor": extractor.name, "config_hash": config_hash, "ids_sha256": identity["ids_sha256"]}
    _write_tensor(folder / FEATURES_FILE, values, meta)
    write_text(folder / IDS_FILE, json.dumps(ids) + "\n")
    write_text(folder / UTTERANCES_FILE, _utterance_table(examples))
    manifest = {
        "format": FORMAT, "version": 1, "identity": identity,
        "corpus": {**(corpus or {}), "n": len(ids), "ids_sha256": identity["ids_sha256"]},
        "extractor": {"name": extractor.name, "config_hash": config_hash,
                      "config": json.loads(json.dumps(extractor.hashed_config(), default=str))},
        "layers": identity["layers"], "shape": list(values.shape), "dtype": "float32",
        "num_chunks": num_chunks, "chunk_size": chunk_size, "chunks_resumed": resumed,
        "extraction_seconds": round(float(state.get("seconds", 0.0)), 3),
        "files": [FEATURES_FILE, IDS_FILE, UTTERANCES_FILE, MANIFEST_FILE],
    }
    write_json(folder / MANIFEST_FILE, manifest)  # last: marks the extraction finished
    _remove_chunks(folder)
    logger.info("%s: %s features %s of %d rows (%d chunks, %d resumed)", folder, extractor.name,
                tuple(values.shape[1:]), len(ids), num_chunks, resumed)
    return ExtractionSummary(load_feature_set(folder), num_chunks, resumed, extracted, False,
                             time.perf_counter() - started)


def _remove_chunks(folder: Path) -> None:
    """Remove the job's own temporaries: chunks/NNNNN.safetensors and progress.json."""
    chunks = folder / CHUNKS_DIR
    if chunks.is_dir():
        for path in chunks.glob("*.safetensors"):
            if path.stem.isdigit():
                path.unlink(missing_ok=True)
        try:
            chunks.rmdir()
        except OSError:  # something else lives there: leave it
            pass
    (folder / PROGRESS_FILE).unlink(missing_ok=True)
