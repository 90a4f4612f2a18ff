"""Training objectives, one module per method, registered by name.

``build_objective(name, group_spec, options)`` instantiates one; ``OBJECTIVES`` lists them.
"""
from llmfair.objectives.base import (
    OBJECTIVES,
    CrossRankReducer,
    GroupSpec,
    Objective,
    ObjectiveInputs,
    ObjectiveOutput,
    TrainingStats,
    build_objective,
    register_objective,
)
from llmfair.objectives import erm as _erm  # noqa: F401  (registers "erm")
from llmfair.objectives import minmaxgap as _minmaxgap  # noqa: F401  (registers "minmaxgap")
from llmfair.objectives.minmaxgap import MinMaxGapOptions

__all__ = [
    "OBJECTIVES", "CrossRankReducer", "GroupSpec", "Objective", "ObjectiveInputs", "ObjectiveOutput", "TrainingStats",
    "MinMaxGapOptions", "build_objective", "register_objective",
]
