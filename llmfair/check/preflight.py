"""Everything a speech-LLM run can be checked for before a model loads.

``check_run(config)`` resolves the recipe into what the run will see and pay for:

* **model**: the checkpoint resolves without a download attempt offline (``tiny``, a local
  directory with ``config.json``, or a cached/reachable hub id); its encoder window and width come
  from the checkpoint's own config files, never from its weights;
* **training arguments**: built exactly as the run builds them (the Trainer's own checks run);
* **data**: examples, speakers per gender and clips per language × modality × gender for every
  split the run touches, unknown-gender rows (with speakers), speakers shared between train and
  the predict split (reported, not an error: MELD-ST's main cast is in every split);
* **audio**: every header of every touched split (:mod:`llmfair.check.headers`): missing,
  unreadable, empty and too-short files are errors; other rates or channel counts are listed (they
  are resampled / downmixed); durations are summarised with the clips over the encoder window,
  which the collator truncates;
* **plan**: steps per epoch, total steps, effective batch, epochs and the encoder cache's size.

Problems are collected, not raised one by one: :class:`CheckReport` holds every problem (the run
cannot start) and every warning (it can). Nothing is written except the header cache.
"""
from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from llmfair.errors import ConfigError, LlmfairError

DEFAULT_WINDOW_SECONDS = 30.0
"""Qwen2-Audio's encoder window (``chunk_length``) when the checkpoint's processor config is not at hand."""
DEFAULT_ENCODER_WIDTH = 1280
"""Qwen2-Audio-7B's audio encoder width (``audio_config.d_model``)."""
LIST_LIMIT = 5


class CheckFailed(LlmfairError):
    """A run that cannot start; ``report`` lists every problem."""

    def __init__(self, report: "CheckReport") -> None:
        self.report = report
        n = len(report.problems)
        head = report.problems[0] if n == 1 else f"{n} problems: " + "; ".join(report.problems)
        super().__init__(head)


@dataclass
class CheckReport:
    """The outcome of :func:`check_run` (``to_dict`` is what ``llmfair check --json`` prints)."""

    recipe: str
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    audio: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}

    def raise_if_failed(self) -> None:
        if self.problems:
            raise CheckFailed(self)


def _listing(items: Sequence[str], limit: int = LIST_LIMIT) -> str:
    head = ", ".join(str(i) for i in items[:limit])
    return head + (f" (and {len(items) - limit} more)" if len(items) > limit else "")


# ------------------------------------------------------------------------------------ model
def _read_json(path: str | os.PathLike | None) -> dict[str, Any]:
    if not path or not os.path.isfile(path):
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _window_seconds(preprocessor: dict[str, Any]) -> float | None:
    if preprocessor.get("n_samples") and preprocessor.get("sampling_rate"):
        return float(preprocessor["n_samples"]) / float(preprocessor["sampling_rate"])
    if preprocessor.get("chunk_length"):
        return float(preprocessor["chunk_length"])
    return None


def check_model(config, report: CheckReport) -> None:
    """Resolve the checkpoint without loading (or downloading) weights; fill ``report.model``.

    The backbone family comes from the checkpoint's ``model_type`` (``config.json``) and must match
    a recipe's ``model.family``; a checkpoint of no registered family is a problem naming the
    supported ones. ``tiny`` is the tiny build of ``model.family`` (Qwen2-Audio by default)."""
    from llmfair.speechllm.backbones import get_backbone, resolve_family
    from llmfair.speechllm.loading import resolve_model_source

    m = config.model
    info: dict[str, Any] = {"name_or_path": m.name_or_path, "family": m.family, "window_seconds": None,
                            "window_source": None, "encoder_width": None}
    report.model = info
    if m.family is not None:
        try:
            get_backbone(m.family)
        except ConfigError as exc:
            report.problems.append(f"{config.source} [model]: family: {exc}")
            return
    backbone = None
    if m.name_or_path == "tiny":
        from llmfair.speechllm.tiny import DEFAULT_FAMILY, tiny_spec

        backbone = get_backbone(m.family or DEFAULT_FAMILY)
        spec = tiny_spec(family=backbone.name)
        info.update(source="tiny (built locally, no download)", window_seconds=float(spec["window_seconds"]),
                    window_source="tiny model spec", encoder_width=backbone.tiny_encoder_width(spec), dtype_bytes=4)
    else:
        try:
            source, local_only, _ = resolve_model_source(m.name_or_path)
        except ConfigError as exc:
            report.problems.append(f"{config.source} [model]: name_or_path: {exc}")
            return
        info["source"] = source if local_only else f"{source} (not in the local cache: downloaded when the run starts)"
        if os.path.isdir(source):
            model_config = _read_json(Path(source) / "config.json")
            preprocessor = _read_json(Path(source) / "preprocessor_config.json")
        else:
            from huggingface_hub import try_to_load_from_cache

            def cached(name):
                found = try_to_load_from_cache(source, name)
                return found if isinstance(found, str) else None

            model_config, preprocessor = _read_json(cached("config.json")), _read_json(cached("preprocessor_config.json"))
        if model_config:
            try:
                backbone = resolve_family(m.family, model_config.get("model_type"), where=f"model {m.name_or_path!r}")
            except ConfigError as exc:
                report.problems.append(f"{config.source} [model]: {exc}")
                return
        elif m.family is not None:
            backbone = get_backbone(m.family)
        window = backbone.window_seconds(preprocessor) if backbone is not None else _window_seconds(preprocessor)
        info["window_seconds"] = window if window is not None else DEFAULT_WINDOW_SECONDS
        info["window_source"] = "preprocessor_config.json" if window is not None else "assumed (Qwen2-Audio default)"
        width = backbone.encoder_width(model_config) if backbone is not None else None
        info["encoder_width"] = int(width) if width else DEFAULT_ENCODER_WIDTH
        import torch

        on_gpu = torch.cuda.is_available()
        info["dtype_bytes"] = 4 if m.dtype == "float32" or (m.dtype == "auto" and not on_gpu) else 2
    if backbone is not None:
        info["family"] = backbone.name
    if m.quantization:
        from llmfair.speechllm.loading import _quantization_config

        try:
            _quantization_config(m.quantization)
        except ConfigError as exc:
            report.problems.append(f"{config.source} [model]: quantization={m.quantization!r}: {exc}")


# ------------------------------------------------------------------------------------ training arguments
def check_training_arguments(config, run_dir: str | os.PathLike | None, report: CheckReport):
    """Build the run's ``FairTrainingArguments`` as ``train`` does (None and a problem when they fail)."""
    from llmfair.training.run_inputs import training_arguments

    try:
        return training_arguments(config, Path(run_dir) if run_dir is not None else Path("<run>"))
    except (ConfigError, ValueError, TypeError) as exc:
        text = str(exc)
        report.problems.append(text if text.startswith(config.source) else f"{config.source} [training]: {text}")
        return None


# ------------------------------------------------------------------------------------ data
def _counts(rows) -> dict[str, Any]:
    speakers: dict[str, set] = {"female": set(), "male": set(), "unknown": set()}
    clips: dict[str, int] = {}
    for e in rows:
        speakers.setdefault(e.gender, set()).add(e.speaker)
        key = f"{e.language}/{e.modality}/{e.gender}"
        clips[key] = clips.get(key, 0) + 1
    unknown_rows = sum(1 for e in rows if e.gender == "unknown")
    return {"examples": len(rows), "speakers": {g: len(s) for g, s in speakers.items()},
            "clips": dict(sorted(clips.items())), "unknown_gender_rows": unknown_rows,
            "unknown_gender_speakers": sorted(speakers["unknown"])}


def check_data(config, report: CheckReport, *, splits: Sequence[str] | None = None):
    """Read the splits the run touches (nothing is written); fill ``report.data``. Returns the
    Examples per split, or None when they cannot be read (the reason is a problem)."""
    from llmfair.training.run_inputs import corpus_generation, read_examples

    data = config.data
    if not data.root:
        report.problems.append(f"{config.source} [data]: 'root' (the MELD-ST directory) is required")
        return None
    try:
        generate, refusal = corpus_generation(config)
    except LlmfairError as exc:
        report.problems.append(f"{config.source} [data]: {exc}")
        return None
    if refusal:
        report.problems.append(refusal)
        return None
    if generate:
        report.warnings.append(f"{data.root} will be generated first (built-in corpus, synth_seed "
                               f"{data.synth_seed}); its data and audio are checked when the run starts")
        report.data = {"root": data.root, "generated_by_run": True}
        return None
    try:
        by_split = read_examples(config, check_audio=False)
    except LlmfairError as exc:
        report.problems.append(f"{config.source} [data]: {exc}")
        return None
    if splits is not None:
        by_split = {s: rows for s, rows in by_split.items() if s in splits}
    report.data = {"root": data.root, "splits": {s: _counts(rows) for s, rows in by_split.items()}}
    for split, summary in report.data["splits"].items():
        if summary["unknown_gender_rows"]:
            report.warnings.append(
                f"{split}: {summary['unknown_gender_rows']} row(s) of {len(summary['unknown_gender_speakers'])} "
                f"speaker(s) without a gender ({_listing(summary['unknown_gender_speakers'])}): trained on, left out "
                f"of every gender gap; add them to a gender table (data.gender_table)")
    train_split, predict_split = data.train_split, data.predict_split
    if train_split in by_split and predict_split in by_split and predict_split != train_split:
        shared = sorted({e.speaker for e in by_split[train_split]} & {e.speaker for e in by_split[predict_split]})
        report.data["speakers_shared"] = {"splits": [train_split, predict_split], "count": len(shared),
                                          "speakers": shared}
    return by_split


# ------------------------------------------------------------------------------------ audio
def check_audio(by_split, report: CheckReport, *, window_seconds: float | None, progress: bool = False,
                use_cache: bool = True) -> dict[str, float]:
    """Read every header of the touched splits; fill ``report.audio``. Returns the seconds of
    every readable file by absolute path."""
    from llmfair.check.headers import scan_headers
    from llmfair.data.audio import TARGET_SAMPLE_RATE
    from llmfair.speechllm.collator import MIN_AUDIO_SECONDS

    paths_by_split = {s: sorted({e.audio for e in rows}) for s, rows in by_split.items()}
    every = sorted({p for paths in paths_by_split.values() for p in paths})
    scan = scan_headers(every, progress=progress, use_cache=use_cache)
    headers = {h.path: h for h in scan.headers}
    audio: dict[str, Any] = {"files": len(every), "headers_read": scan.read, "headers_cached": scan.cached,
                             "window_seconds": window_seconds, "splits": {}}
    for split, paths in paths_by_split.items():
        hs = [headers[os.path.abspath(p)] for p in paths]
        bad = {kind: [h.path for h in hs if h.error and h.error.startswith(kind)] for kind in ("missing", "unreadable")}
        readable = [h for h in hs if not h.error]
        empty = [h.path for h in readable if h.frames == 0]
        short = [h.path for h in readable if 0 < h.seconds < MIN_AUDIO_SECONDS]
        odd = [f"{h.path} ({h.sample_rate} Hz, {h.channels} ch)" for h in readable
               if h.sample_rate != TARGET_SAMPLE_RATE or h.channels != 1]
        durations = [h.seconds for h in readable if h.frames > 0]
        long = [f"{h.path} ({h.seconds:.1f} s)" for h in readable
                if window_seconds is not None and h.seconds > window_seconds]
        audio["splits"][split] = {
            "files": len(paths), "missing": bad["missing"], "unreadable": bad["unreadable"], "empty": empty,
            "too_short": short, "resampled_or_downmixed": odd, "over_window": long,
            "seconds": {"min": min(durations), "median": statistics.median(durations), "max": max(durations),
                        "total": sum(durations)} if durations else None,
        }
        for kind, files, what in (("missing", bad["missing"], "missing"),
                                  ("unreadable", bad["unreadable"], "unreadable (corrupt or not audio)"),
                                  ("empty", empty, "empty (0 samples)"),
                                  ("too_short", short, f"shorter than the {MIN_AUDIO_SECONDS} s the encoder needs")):
            if files:
                report.problems.append(f"{split}: {len(files)} audio file(s) {what}: {_listing(files)}")
        if odd:
            report.warnings.append(f"{split}: {len(odd)} audio file(s) not 16 kHz mono, resampled/downmixed when "
                                   f"read: {_listing(odd)}")
        if long:
            report.warnings.append(f"{split}: {len(long)} clip(s) longer than the encoder window "
                                   f"({window_seconds:g} s) are truncated to it (counted in the manifest): "
                                   f"{_listing(long)}")
    report.audio = audio
    return {h.path: h.seconds for h in scan.headers if not h.error}


# ------------------------------------------------------------------------------------ plan
def _audio_tokens(seconds: float, window: float) -> int:
    frames = int(min(seconds, window) * 100)  # 10 ms mel hop
    return max((((frames - 1) // 2 + 1) - 2) // 2 + 1, 0) if frames > 0 else 0


def check_plan(config, args, by_split, report: CheckReport, seconds: dict[str, float] | None = None) -> None:
    """Steps, effective batch and encoder-cache size (from ``seconds`` per absolute audio path);
    zero training steps is a problem."""
    data = config.data
    n_train = len(by_split[data.train_split]) if by_split and data.train_split in by_split else None
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    plan: dict[str, Any] = {"train_examples": n_train, "world_size": world}
    report.plan = plan
    if args is None:
        return
    per_device, accumulation = args.per_device_train_batch_size, args.gradient_accumulation_steps
    plan.update(per_device_batch=per_device, gradient_accumulation_steps=accumulation,
                effective_batch=per_device * accumulation * world, epochs=args.num_train_epochs,
                max_steps=args.max_steps)
    if n_train is None:
        return
    batches = math.ceil(n_train / (per_device * world)) if n_train else 0
    per_epoch = max(batches // accumulation, 1) if batches else 0  # as the Trainer counts update steps
    total = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * per_epoch)
    plan.update(steps_per_epoch=per_epoch, total_steps=total)
    if total <= 0:
        report.problems.append(
            f"{config.source} [training]: the run would train 0 steps (num_train_epochs={args.num_train_epochs}, "
            f"max_steps={args.max_steps}, {n_train} train examples, per_device_train_batch_size={per_device}, "
            f"gradient_accumulation_steps={accumulation})")
    model = report.model
    if config.encoder_cache and seconds and model.get("encoder_width") and model.get("window_seconds"):
        clips = {e.audio for rows in by_split.values() for e in rows}
        count = _audio_tokens
        if model.get("family"):
            from llmfair.speechllm.backbones import get_backbone

            count = get_backbone(model["family"]).audio_tokens_per_clip  # Voxtral pads every clip to its window
        tokens = sum(count(seconds.get(os.path.abspath(p), 0.0), model["window_seconds"]) for p in clips)
        plan["encoder_cache_bytes"] = int(tokens * model["encoder_width"] * model.get("dtype_bytes", 4))


# ------------------------------------------------------------------------------------ entry point
def check_run(config, *, run_dir: str | os.PathLike | None = None, splits: Sequence[str] | None = None,
              progress: bool = False, use_cache: bool = True, training: bool = True) -> CheckReport:
    """Check ``config`` (a loaded :class:`~llmfair.training.config.RunConfig`) for a run.

    Args:
        run_dir: where the run will write (the Trainer's arguments name it).
        splits: the splits the command touches (default: train, eval and predict split).
        progress: a progress bar over the header reads.
        use_cache: reuse (and update) the header cache.
        training: check the training arguments and the plan (False for ``predict``).
    """
    report = CheckReport(recipe=config.source)
    check_model(config, report)
    args = check_training_arguments(config, run_dir, report) if training else None
    by_split = check_data(config, report, splits=splits)
    if by_split is not None:
        seconds = check_audio(by_split, report, window_seconds=report.model.get("window_seconds"),
                              progress=progress, use_cache=use_cache)
        if training:
            check_plan(config, args, by_split, report, seconds)
    return report


def check_recipe(path: str | os.PathLike, overrides: dict[str, Any] | None = None, **kwargs) -> CheckReport:
    """:func:`check_run` of the recipe at ``path`` with ``--set`` ``overrides``. A recipe with invalid
    values gives a report listing each of them, plus what can still be checked without a valid
    recipe (the model path and the data root)."""
    from llmfair.training.config import RunConfig
    from llmfair.training.recipe_schema import RecipeError

    try:
        config = RunConfig.from_yaml(path, overrides)
    except RecipeError as exc:
        report = CheckReport(recipe=str(path), problems=list(exc.problems))
        _check_raw_paths(path, overrides, report)
        return report
    return check_run(config, **kwargs)


def _check_raw_paths(path, overrides, report: CheckReport) -> None:
    """The model path and data root of a recipe that does not load as a whole."""
    import yaml

    from llmfair.speechllm.loading import resolve_model_source
    from llmfair.training.config import RecipeLoader, apply_overrides

    try:
        values = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=RecipeLoader) or {}
        apply_overrides(values, overrides or {}, source=str(path))
    except (OSError, yaml.YAMLError, ConfigError):
        return
    model = (values.get("model") or {}).get("name_or_path") if isinstance(values.get("model"), dict) else None
    if isinstance(model, str) and model != "tiny":
        try:
            resolve_model_source(model)
        except ConfigError as exc:
            report.problems.append(f"{path} [model]: name_or_path: {exc}")
    data = values.get("data") if isinstance(values.get("data"), dict) else {}
    root = data.get("root")
    if isinstance(root, str) and root and data.get("synth_seed") is None and not os.path.isdir(root):
        report.problems.append(f"{path} [data]: root={root!r} is not a directory")


def check_examples(by_split, *, source: str, window_seconds: float | None = None,
                   progress: bool = False) -> CheckReport:
    """The audio checks of :func:`check_run` for Examples read elsewhere (``benchmark``)."""
    report = CheckReport(recipe=source)
    check_audio(by_split, report, window_seconds=window_seconds, progress=progress)
    return report
