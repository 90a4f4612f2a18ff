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
from llmfair.objectives import rw as _rw  # noqa: F401  (registers "rw")
from llmfair.objectives import gdro as _gdro  # noqa: F401  (registers "gdro", "gadro")
from llmfair.objectives import pgdro as _pgdro  # noqa: F401  (registers "pgdro")
from llmfair.objectives import gr as _gr  # noqa: F401  (registers "gr")
from llmfair.objectives import lff as _lff  # noqa: F401  (registers "lff")
from llmfair.objectives import disent as _disent  # noqa: F401  (registers "disent")
from llmfair.objectives import adv as _adv  # noqa: F401  (registers "adv", "madv")
from llmfair.objectives import two_sided as _two_sided  # noqa: F401  (registers "two_sided")
from llmfair.objectives.minmaxgap import MinMaxGapOptions

__all__ = [
    "OBJECTIVES", "CrossRankReducer", "GroupSpec", "Objective", "ObjectiveInputs", "ObjectiveOutput", "TrainingStats",
    "MinMaxGapOptions", "build_objective", "register_objective",
]
