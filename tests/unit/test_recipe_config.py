"""Recipe YAML: one-key steps, the profile's defaults, errors that name file:line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekit import Distill, LowRank, Prune, Qat, Recipe, load_recipe
from edgekit.config.recipe import list_recipes
from edgekit.errors import ConfigError, UnknownNameError


def _write(tmp_path: Path, text: str, name: str = "r") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def test_yaml_steps_become_typed_steps(tmp_path: Path) -> None:
    path = _write(tmp_path, """\
name: r
budget: {max_accuracy_drop: 1.5}
backoff: {factor: 0.5, max_tries: 3}
steps:
  - prune: {granularity: channel, ratio: 0.4, iterations: 2}
  - distill: {temperature: 3, alpha: 0.6, features: {features.8: features.8}}
  - lowrank: {energy: 0.9}
  - mixed_precision: {keep_fp32: [classifier.3]}
  - qat: {}
""")
    recipe = load_recipe(path)
    assert [type(s) for s in recipe.steps] == [Prune, Distill, LowRank, type(recipe.steps[3]), Qat]
    assert recipe.steps[0].ratio == 0.4 and recipe.steps[0].iterations == 2
    assert recipe.steps[1].features == {"features.8": "features.8"}
    assert recipe.budget is not None and recipe.budget.max_accuracy_drop == 1.5
    assert recipe.label() == ("prune(channel, 0.4) -> distill(T=3, alpha=0.6) -> lowrank(energy=0.9) -> "
                              "mixed_precision(keep_fp32=['classifier.3']) -> qat(int8)")
    assert recipe.source == str(path)


def test_backoff_weakens_each_kind_of_step() -> None:
    assert Prune(ratio=0.5).weaker(0.5).ratio == 0.25  # type: ignore[union-attr]
    assert Prune(granularity="2:4").weaker(0.5) is None  # a fixed pattern has nothing weaker
    assert LowRank(param_ratio=0.5).weaker(0.5).param_ratio == 0.75
    assert LowRank(energy=0.8).weaker(0.5).energy == pytest.approx(0.9)
    assert Distill().weaker(0.5) is None and Qat().weaker(0.5) is None


@pytest.mark.parametrize("body, field, line, message", [
    ("steps:\n  - prune: {ratio: 1.5}\n", "steps.0.prune.ratio", 3, "less than 1"),
    ("steps:\n  - prune: {ratio: 0.5}\n  - distill: {alpha: 2}\n", "steps.1.distill.alpha", 4, "less than or equal"),
    ("steps:\n  - lowrank: {energy: 0.9, param_ratio: 0.5}\n", "steps.0.lowrank", 3, "exactly one of energy"),
    ("steps:\n  - prune: {ratoi: 0.5}\n", "steps.0.prune.ratoi", 3, "unknown field"),
    ("steps:\n  - shrink: {ratio: 0.5}\n", "(top level)", None, "unknown step 'shrink'"),
    ("steps: []\n", "steps", 2, "at least 1"),
    ("budget: {max_accuracy_drop: -1}\nsteps:\n  - qat: {}\n", "budget.max_accuracy_drop", 2, "greater than"),
    ("steps:\n  - qat: {check_budget: false}\n", "(top level)", None, "no step would judge it"),
])
def test_errors_name_file_line_and_field(tmp_path: Path, body: str, field: str, line: int | None, message: str) -> None:
    path = _write(tmp_path, "name: r\n" + body)
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    text = str(info.value)
    assert message in text and field in text
    if line is not None:
        assert f"{path}:{line}:" in text


def test_malformed_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_recipe(_write(tmp_path, "name: r\nsteps: [prune: {ratio: 0.5}\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(UnknownNameError, match="prune-distill-qat"):
        load_recipe("prune-distil-qat")  # close match offered


def test_built_in_recipes_load_by_name() -> None:
    recipes = list_recipes()
    assert {"prune-distill-qat", "prune-finetune", "lowrank", "sparse-2-4", "mixed-precision"} <= set(recipes)
    assert load_recipe("prune-distill-qat").label() == "prune(profile, 0.5) -> distill(T=4, alpha=0.7) -> qat(int8)"


def test_python_recipe_equals_yaml(tmp_path: Path) -> None:
    from_python = Recipe(name="r", steps=[Prune(ratio=0.5), Qat()])
    from_yaml = load_recipe(_write(tmp_path, "name: r\nsteps:\n  - prune: {ratio: 0.5}\n  - qat: {}\n"))
    assert from_python.model_dump() == from_yaml.model_dump()
