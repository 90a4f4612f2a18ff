"""``--set`` reaches nested keys of a recipe, validated like the YAML, and the resolved objective
options are what a run records."""
from __future__ import annotations

from pathlib import Path

import pytest

from llmfair.errors import ConfigError
from llmfair.training.config import RunConfig, parse_override

RECIPE = Path(__file__).resolve().parents[1] / "llmfair" / "resources" / "demo_tiny.yaml"


def _load(*sets: str) -> RunConfig:
    return RunConfig.from_yaml(RECIPE, dict(parse_override(s) for s in sets))


def test_nested_objective_options_reach_the_objective():
    config = _load("objective.name=minmaxgap", "objective.options.lambda_init=0.5", "objective.options.weight=dual")
    assert config.objective.options == {"lambda_init": 0.5, "weight": "dual"}
    resolved = config.objective.resolved_options()
    assert resolved["lambda_init"] == 0.5 and resolved["weight"] == "dual"
    assert resolved["reduction"] == "hard"  # defaults are filled in: a run records every value it used


def test_nested_override_creates_mappings_and_parses_yaml_values():
    config = _load("data.train_imbalance.language=eng", "data.train_imbalance.ratio=5", "training.learning_rate=1e-4")
    assert config.data.train_imbalance == {"language": "eng", "ratio": 5}
    assert config.data.imbalance().ratio == 5
    assert config.training["learning_rate"] == pytest.approx(1e-4)


@pytest.mark.parametrize("sets, message", [
    (("objective.name=minmaxgap", "objective.options.lamda_init=1"), r"unknown key\(s\) \['lamda_init'\].*MinMaxGapOptions"),
    (("objective.options.lambda_init=0.5",), r"unknown key\(s\) \['lambda_init'\]"),  # erm has no such option
    (("objective.name=minmaxgap", "objective.options.weight=dul"), r"weight='dul'"),
    (("objective.name=minmaxgap", "objective.options.lambda_init=-1"), r"lambda_init >= 0"),
    (("objective.name=nosuch",), r"'nosuch' is not a registered objective"),
    (("model.dtype.bits=16",), r"'model.dtype' is 'float32'.*not a mapping"),
    (("objective.=1",), r"section.key=value"),
    (("data.train_imbalance.ratio=0.5",), r"train_imbalance.ratio=0.5"),
])
def test_bad_nested_overrides_name_the_key(sets, message):
    with pytest.raises(ConfigError, match=message) as info:
        _load(*sets)
    assert "\n" not in str(info.value)


def test_yaml_and_set_give_the_same_error(tmp_path):
    import yaml

    values = yaml.safe_load(RECIPE.read_text())
    values["objective"] = {"name": "minmaxgap", "options": {"lamda_init": 1}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(ConfigError) as from_yaml:
        RunConfig.from_yaml(path)
    with pytest.raises(ConfigError) as from_set:
        _load("objective.name=minmaxgap", "objective.options.lamda_init=1")
    assert str(from_yaml.value).split(": ", 1)[1] == str(from_set.value).split(": ", 1)[1]
