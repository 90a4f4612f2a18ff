"""Training objectives, one module per method, registered by name.

``build_objective(name, group_spec, options)`` instantiates one; ``OBJECTIVES`` maps the
registered names to their classes and :func:`available_objectives` lists them.

Adding a method is one file and one test row: a module ``llmfair/objectives/<name>.py`` whose
class carries ``@register_objective("<name>")`` is imported (so registered) by this package
without an import list — every module whose name does not start with ``_`` is, in sorted order —
and ``tests/test_objective_contract.py`` runs the contract checks on every registered name once
its table has a row for it. Method modules import only :mod:`llmfair.objectives.base` and the
private modules (``_groups``, ``_state``, ``_dro``, ``_bias_model``, ``_adversary``), never each other.
"""
import importlib
import pkgutil

from llmfair.objectives.base import (
    OBJECTIVES,
    CrossRankReducer,
    GroupSpec,
    Objective,
    ObjectiveInputs,
    ObjectiveOutput,
    TrainingStats,
    available_objectives,
    build_objective,
    register_objective,
)


def _method_modules() -> list[str]:
    """Names of the method modules of this package: every module not starting with ``_``, but base."""
    return sorted(info.name for info in pkgutil.iter_modules(__path__)
                  if not info.name.startswith("_") and info.name != "base")


for _name in _method_modules():
    importlib.import_module(f"{__name__}.{_name}")  # each registers its objective(s)
del _name

from llmfair.objectives.minmaxgap import MinMaxGapOptions  # noqa: E402

__all__ = [
    "OBJECTIVES", "CrossRankReducer", "GroupSpec", "Objective", "ObjectiveInputs", "ObjectiveOutput", "TrainingStats",
    "MinMaxGapOptions", "available_objectives", "build_objective", "register_objective",
]
