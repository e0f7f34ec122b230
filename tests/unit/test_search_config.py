"""Search objectives, constraints and space by name; the n-objective Pareto mask. No toolchain runs."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit import SearchSpace, load_profile
from edgekit.config.search import load_space, parse_constraint, parse_objective
from edgekit.errors import ConfigError, UnknownNameError
from edgekit.study import pareto_mask


def test_objectives_take_a_default_direction_that_can_be_overridden() -> None:
    assert str(parse_objective("latency_p50")) == "latency_p50:min"
    assert str(parse_objective("accuracy")) == "accuracy:max"
    assert parse_objective("size:max").direction == "max"
    with pytest.raises(ConfigError, match="min or max"):
        parse_objective("size:smallest")


def test_constraints_parse_and_say_by_how_much_a_value_misses() -> None:
    c = parse_constraint("accuracy_drop <= 1")
    assert (c.column, c.op, c.limit, c.host) == ("accuracy_drop", "<=", 1.0, True)
    assert c.miss(0.4) == 0 and c.miss(2.5) == pytest.approx(1.5) and c.miss(None) is None
    cos = parse_constraint("cosine>=0.99")
    assert cos.miss(0.98) == pytest.approx(0.01) and cos.miss(0.995) == 0
    assert parse_constraint("p50_ms<=5").host is False  # only the device can tell
    with pytest.raises(UnknownNameError, match="valid: accuracy_drop, cosine, energy_mj"):
        parse_constraint("latency<=5")


def test_the_space_defaults_from_the_profile_and_the_model_family() -> None:
    prof = load_profile("x86")
    cnn = SearchSpace().resolved(prof, "cnn")
    assert cnn.targets == prof.targets and cnn.precisions == prof.precisions and cnn.prune == [0.0, 0.25, 0.5]
    assert SearchSpace().resolved(prof, "transformer").prune == [0.0]
    with pytest.raises(ConfigError, match="prune"):
        SearchSpace(prune=[1.5]).resolved(prof, "cnn")
    with pytest.raises(ConfigError, match="search space"):
        load_space({"target": ["onnx"]})  # unknown key: extra fields are refused


def test_pareto_mask_keeps_the_non_dominated_rows_of_any_number_of_objectives() -> None:
    values = np.array([[1.0, 5.0, 1.0], [2.0, 4.0, 1.0], [2.0, 6.0, 1.0], [1.0, 5.0, 2.0], [np.nan, 0.0, 0.0]])
    assert pareto_mask(values).tolist() == [True, True, False, False, False]
