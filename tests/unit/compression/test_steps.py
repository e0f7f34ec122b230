"""Recipe steps dispatch through handlers registered by config type."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

import edgekit.compression.recipe  # noqa: F401  registers the built-in step handlers
from edgekit.compression._steps import _HANDLERS, StepContext, StepResult, apply_step, register_step_handler
from edgekit.config.recipe import STEP_TYPES
from edgekit.errors import CompressError


def test_every_recipe_step_type_has_a_handler() -> None:
    assert set(STEP_TYPES.values()) <= set(_HANDLERS)


def test_unknown_step_type_fails_listing_the_valid_ones() -> None:
    @dataclass
    class Quantize4:
        bits: int = 4

    with pytest.raises(CompressError, match="valid step types: Distill, LowRank, MixedPrecision, Prune, Qat"):
        apply_step(Quantize4(), None)  # type: ignore[arg-type]


def test_a_new_step_is_one_registration() -> None:
    @dataclass
    class Noop:
        pass

    @register_step_handler(Noop)
    def _noop(step: Noop, ctx: StepContext) -> StepResult:
        return StepResult("nothing done", ctx, "fp32")

    try:
        assert apply_step(Noop(), "ctx") == ("nothing done", "ctx", "fp32")  # type: ignore[arg-type]
    finally:
        del _HANDLERS[Noop]
