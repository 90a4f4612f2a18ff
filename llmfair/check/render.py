"""A :class:`~llmfair.check.preflight.CheckReport` as text for the terminal."""
from __future__ import annotations

from llmfair.check.preflight import CheckReport


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _family(name: str | None) -> str:
    """``voxtral (Voxtral, VoxtralForConditionalGeneration)``; the name alone if not registered."""
    if not name:
        return "unknown (no config.json at hand and no model.family)"
    from llmfair.speechllm.backbones import BACKBONES, get_backbone

    if name not in BACKBONES:
        return name
    backbone = get_backbone(name)
    return f"{name} ({backbone.title}, {backbone.model_class_name})"


def _data_lines(data: dict) -> list[str]:
    lines = [f"data     {data.get('root')}"]
    splits = data.get("splits") or {}
    if not splits:
        return lines
    lines.append(f"  {'split':<8}{'examples':>9}{'female spk':>12}{'male spk':>10}{'no gender':>11}")
    for split, s in splits.items():
        sp = s["speakers"]
        lines.append(f"  {split:<8}{s['examples']:>9}{sp.get('female', 0):>12}{sp.get('male', 0):>10}"
                     f"{s['unknown_gender_rows']:>11}")
    cells = sorted({c for s in splits.values() for c in s["clips"]})
    lines.append(f"  {'clips: language/modality/gender':<34}" + "".join(f"{split:>8}" for split in splits))
    lines += [f"  {c:<34}" + "".join(f"{s['clips'].get(c, 0):>8}" for s in splits.values()) for c in cells]
    shared = data.get("speakers_shared")
    if shared:
        a, b = shared["splits"]
        lines.append(f"  speakers in both {a} and {b}: {shared['count']} (reported, not an error: MELD-ST's main "
                     "cast speaks in every split)")
    return lines


def _audio_lines(audio: dict) -> list[str]:
    lines = [f"audio    {audio['files']} files ({audio['headers_cached']} headers from the cache, "
             f"{audio['headers_read']} read); encoder window {audio['window_seconds']:g} s"
             if audio.get("window_seconds") else f"audio    {audio['files']} files"]
    lines.append(f"  {'split':<8}{'files':>7}{'min s':>8}{'median s':>10}{'max s':>8}{'over window':>13}"
                 f"{'problems':>10}")
    for split, a in audio["splits"].items():
        sec = a["seconds"] or {}
        bad = sum(len(a[k]) for k in ("missing", "unreadable", "empty", "too_short"))
        fmt = (lambda v: f"{v:.2f}") if sec else (lambda v: "-")
        lines.append(f"  {split:<8}{a['files']:>7}{fmt(sec.get('min')):>8}{fmt(sec.get('median')):>10}"
                     f"{fmt(sec.get('max')):>8}{len(a['over_window']):>13}{bad:>10}")
    return lines


def _plan_lines(plan: dict) -> list[str]:
    if plan.get("total_steps") is None:
        return []
    line = (f"plan     {plan['train_examples']} train examples: {plan['steps_per_epoch']} steps/epoch, "
            f"{plan['total_steps']} steps in all"
            + (f" (max_steps {plan['max_steps']})" if plan.get("max_steps", -1) > 0 else f" ({plan['epochs']:g} epochs)")
            + f"; effective batch {plan['effective_batch']} = {plan['per_device_batch']} per device × "
              f"{plan['gradient_accumulation_steps']} accumulation × {plan['world_size']} process(es)")
    lines = [line]
    if plan.get("encoder_cache_bytes") is not None:
        lines.append(f"  encoder cache ≈ {_size(plan['encoder_cache_bytes'])} on disk (every clip of the run encoded "
                     "once)")
    return lines


def format_report(report: CheckReport) -> str:
    """The report as lines of text: model, data, audio, plan, warnings, problems, verdict."""
    lines = [f"llmfair check {report.recipe}"]
    model = report.model
    if model.get("source"):
        window = (f"; encoder window {model['window_seconds']:g} s ({model['window_source']})"
                  if model.get("window_seconds") else "")
        lines.append(f"model    {model['source']}{window}")
        lines.append(f"  family {_family(model.get('family'))}")
    if report.data:
        lines += _data_lines(report.data)
    if report.audio:
        lines += _audio_lines(report.audio)
    lines += _plan_lines(report.plan)
    if report.warnings:
        lines.append(f"warnings ({len(report.warnings)}):")
        lines += [f"  - {w}" for w in report.warnings]
    if report.problems:
        lines.append(f"problems ({len(report.problems)}):")
        lines += [f"  - {p}" for p in report.problems]
        lines.append("FAILED: the run cannot start")
    else:
        lines.append("OK: the run can start")
    return "\n".join(lines) + "\n"
