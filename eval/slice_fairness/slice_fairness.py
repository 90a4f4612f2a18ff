"""Slice and gender-fairness metrics for speech emotion recognition, as an `evaluate` module.

Loads offline from its directory: evaluate.load("eval/slice_fairness"). The numbers come from the
llmfair library (llmfair.metrics.summary_dict, flattened by llmfair.report.flatten_summary), so
they equal what `llmfair report` writes for the same predictions.
"""
from __future__ import annotations

from typing import Any, Sequence

import datasets
import evaluate
import numpy as np
import pandas as pd

from llmfair.data.labels import get_label_space
from llmfair.errors import ConfigError, DataError
from llmfair.metrics import summary_dict
from llmfair.predictions import Predictions
from llmfair.report.tables import flatten_summary

_CITATION = """\
@misc{llmfair,
  title = {llmfair: measuring and reducing gender bias in speech emotion recognition},
  note = {Fairness figures follow the IDI paper (arXiv 2505.14449): RMS TPR gap and DP gap (Eqs. 4-5);
          per-(language, modality) gender gaps as in ERM-MinMaxGAP (arXiv 2603.21050)}
}
"""

_DESCRIPTION = """\
Per-slice metrics (accuracy, weighted F1, macro F1) for every (language, modality, gender) slice,
male - female gaps per (language, modality) cell and overall, and the gender-fairness figures
tpr_gap_rms, fpr_gap_rms, f1_gap_rms, dp_gap_sum, dp_gap_rms and worst_cell_gap. Gender "unknown"
rows count in the slices and the overall metrics but are excluded from every gap. Optional
bootstrap confidence intervals (utterance or speaker resampling).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted class per row, as class indices (int) or class names (str).
    references: true class per row, indices or names.
    languages: language per row (eng, deu, jpn).
    modalities: modality per row (audio, audio_text).
    genders: speaker gender per row (female/male/unknown; F/M/U accepted).
    speakers: (optional) speaker id per row, the cluster of the speaker bootstrap.
    probabilities: (optional) class probabilities per row (a list of K floats summing to 1);
        without them the one-hot of the prediction is used (the metrics use the predictions).
    ids: (optional) utterance id per row; rows sharing an id (the modalities of one utterance)
        are resampled together. Default: every row its own utterance.
    label_space: the classes in order (a list of names) or a known label space name
        ("meld", "crema_d"). Required.
    n_resamples: bootstrap replicates for the intervals (default 0: point estimates only).
    seed: bootstrap seed (default 0).
    unit: bootstrap unit, "utterance" (default) or "speaker".
    confidence: interval level (default 0.95).
Returns:
    A flat dict: "n", "n_unknown_gender", "accuracy", "weighted_f1", "macro_f1", the fairness
    figures, "<language>/<modality>/<gender>/<metric>" and ".../n" per slice,
    "gap/<language>/<modality>/<metric>" (|male - female|) and
    "male_minus_female/<language>/<modality>/<metric>" per cell ("all/all" overall). With
    n_resamples > 0 every figure also has "<key>/ci" = [low, high]. Undefined values are None.
Examples:
    >>> metric = evaluate.load("eval/slice_fairness")
    >>> out = metric.compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0],
    ...                      languages=["eng"] * 4, modalities=["audio"] * 4,
    ...                      genders=["female", "female", "male", "male"], label_space=["a", "b"])
    >>> out["eng/audio/female/accuracy"], out["gap/eng/audio/accuracy"]
    (1.0, 0.5)
"""

REQUIRED_INPUTS: tuple[str, ...] = ("predictions", "references", "languages", "modalities", "genders")
OPTIONAL_INPUTS: tuple[str, ...] = ("speakers", "probabilities", "ids")


def _features(prediction_type: str, reference_type: str) -> datasets.Features:
    return datasets.Features(
        {
            "predictions": datasets.Value(prediction_type),
            "references": datasets.Value(reference_type),
            "languages": datasets.Value("string"),
            "modalities": datasets.Value("string"),
            "genders": datasets.Value("string"),
            "speakers": datasets.Value("string"),
            "probabilities": datasets.Sequence(datasets.Value("float64")),
            "ids": datasets.Value("string"),
        }
    )


def _resolve_classes(label_space: Any) -> tuple[str, ...]:
    if label_space is None:
        raise ConfigError("slice_fairness needs label_space=[class names in order] or a label space name ('meld', 'crema_d')")
    if isinstance(label_space, str):
        return get_label_space(label_space).classes
    classes = tuple(str(c).strip() for c in label_space)
    if not classes or any(not c for c in classes) or len({c.lower() for c in classes}) != len(classes):
        raise ConfigError(f"label_space must list distinct, non-empty class names; got {list(label_space)}")
    return classes


def _class_names(values: Sequence[Any], classes: tuple[str, ...], name: str) -> np.ndarray:
    """Class indices or names → names; an index outside the label space is an error."""
    arr = np.asarray(values, dtype=object)
    # evaluate hands over one column type (int64 or string features), so the first value decides
    if arr.size and isinstance(arr[0], (int, np.integer)) and not isinstance(arr[0], bool):
        idx = np.asarray(values, dtype=np.int64)
        bad = (idx < 0) | (idx >= len(classes))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"slice_fairness: {name}[{i}] = {int(idx[i])} is not a class index of {list(classes)}")
        return np.asarray(classes, dtype=object)[idx]
    return arr.astype(str)


def predictions_table(
    *,
    predictions: Sequence[Any],
    references: Sequence[Any],
    languages: Sequence[str],
    modalities: Sequence[str],
    genders: Sequence[str],
    classes: tuple[str, ...],
    speakers: Sequence[str] | None = None,
    probabilities: Sequence[Sequence[float]] | None = None,
    ids: Sequence[str] | None = None,
) -> Predictions:
    """The llmfair predictions table of these columns (validated by Predictions.from_frame)."""
    n = len(predictions)
    columns = {"references": references, "languages": languages, "modalities": modalities, "genders": genders,
               "speakers": speakers, "probabilities": probabilities, "ids": ids}
    for name, values in columns.items():
        if values is not None and len(values) != n:
            raise DataError(f"slice_fairness: {name} has {len(values)} values but predictions has {n}")
    if n == 0:
        raise DataError("slice_fairness: no rows to evaluate")
    pred_names = _class_names(predictions, classes, "predictions")
    if probabilities is None:
        lookup = {c.lower(): j for j, c in enumerate(classes)}
        probs = np.zeros((n, len(classes)))
        idx = pd.Series(pred_names).str.strip().str.lower().map(lookup)
        ok = idx.notna().to_numpy()
        probs[np.flatnonzero(ok), idx[ok].to_numpy(dtype=np.int64)] = 1.0  # unknown names fail validation below
        probs[~ok] = 1.0 / len(classes)
    else:
        widths = {len(p) for p in probabilities}
        if widths != {len(classes)}:
            raise DataError(
                f"slice_fairness: probabilities must have {len(classes)} values per row (one per class of "
                f"{list(classes)}); found row lengths {sorted(widths)}"
            )
        probs = np.asarray(probabilities, dtype=np.float64)
    frame = pd.DataFrame(
        {
            "id": np.arange(n).astype(str) if ids is None else np.asarray(ids, dtype=object).astype(str),
            "split": "test",
            "language": np.asarray(languages, dtype=object).astype(str),
            "modality": np.asarray(modalities, dtype=object).astype(str),
            "gender": np.asarray(genders, dtype=object).astype(str),
            "speaker": "" if speakers is None else np.asarray(speakers, dtype=object).astype(str),
            "label": _class_names(references, classes, "references"),
        }
    )
    for j, c in enumerate(classes):
        frame[f"prob_{c}"] = probs[:, j]
    frame["prediction"] = pred_names
    return Predictions.from_frame(frame, source="slice_fairness inputs")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SliceFairness(evaluate.Metric):
    """Per-slice metrics, gender gaps and fairness figures (llmfair.metrics.summary_dict, flattened)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # class indices or names for predictions and references, in any combination
            features=[_features(p, r) for p in ("int64", "string") for r in ("int64", "string")],
            reference_urls=["https://arxiv.org/abs/2505.14449", "https://arxiv.org/abs/2603.21050"],
        )

    def _with_optional(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Fill absent optional inputs with empty placeholders (evaluate needs every feature) and
        check that all inputs have one value per prediction."""
        n = len(batch["predictions"])
        for name in REQUIRED_INPUTS:
            if batch.get(name) is None:
                raise DataError(f"slice_fairness: input {name!r} is missing; required: {list(REQUIRED_INPUTS)}")
        for name, value in batch.items():
            if value is not None and len(value) != n:
                raise DataError(f"slice_fairness: {name} has {len(value)} values but predictions has {n}")
        for name in OPTIONAL_INPUTS:
            if batch.get(name) is None:
                batch[name] = [[] for _ in range(n)] if name == "probabilities" else [""] * n
        return batch

    def add_batch(self, *, predictions=None, references=None, **kwargs):  # noqa: D401 - evaluate's signature
        """Add a batch of rows (same inputs as ``compute``; optional inputs may be left out)."""
        features = {k: kwargs.pop(k) for k in list(kwargs) if k in OPTIONAL_INPUTS + REQUIRED_INPUTS}
        batch = self._with_optional({"predictions": predictions, "references": references, **features})
        return super().add_batch(**batch, **kwargs)

    def compute(self, *, predictions=None, references=None, **kwargs):
        """Compute the figures; rows may also come from earlier ``add_batch`` calls."""
        if predictions is not None or references is not None:
            features = {k: kwargs.pop(k) for k in list(kwargs) if k in OPTIONAL_INPUTS + REQUIRED_INPUTS}
            batch = self._with_optional({"predictions": predictions, "references": references, **features})
            kwargs = {**batch, **kwargs}
            predictions, references = kwargs.pop("predictions"), kwargs.pop("references")
        return super().compute(predictions=predictions, references=references, **kwargs)

    def _compute(
        self,
        predictions,
        references,
        languages,
        modalities,
        genders,
        speakers,
        probabilities,
        ids,
        label_space=None,
        n_resamples: int = 0,
        seed: int = 0,
        unit: str = "utterance",
        confidence: float = 0.95,
    ) -> dict[str, Any]:
        classes = _resolve_classes(label_space)
        given_probs = [len(p) > 0 for p in probabilities]
        if any(given_probs) and not all(given_probs):
            raise DataError("slice_fairness: probabilities were given for some rows only")
        given_ids = [bool(i) for i in ids]
        if any(given_ids) and not all(given_ids):
            raise DataError("slice_fairness: ids were given for some rows only (or some are empty)")
        table = predictions_table(
            predictions=predictions, references=references, languages=languages, modalities=modalities,
            genders=genders, classes=classes, speakers=speakers,
            probabilities=probabilities if all(given_probs) else None, ids=ids if all(given_ids) else None,
        )
        summary = summary_dict(table, n_resamples=int(n_resamples), seed=int(seed), unit=unit, confidence=float(confidence))
        return flatten_summary(summary)
