"""Compression recipes: an ordered chain of steps under an accuracy (or fidelity) budget, from YAML or Python.

YAML (each step a one-key mapping; the profile fills what a step leaves out)::

    name: small-and-int8
    budget: {max_accuracy_drop: 1.0}      # points of top-1 vs the fp32 model, on the held-out set
                                          # or {min_cosine: 0.97}: worst-sample cosine vs the fp32 model's
                                          # outputs on held-out inputs, for models without labels
    backoff: {factor: 0.5, max_tries: 2}  # a step over budget retries weaker: ratio x0.5, ...
    steps:
      - prune: {granularity: channel, ratio: 0.5, iterations: 2, finetune: {epochs: 4}}
      - distill: {temperature: 4, alpha: 0.7, train: {epochs: 10}}
      - qat: {train: {epochs: 2, lr: 1.0e-4}}

Python: ``Recipe(steps=[Prune(ratio=0.5), Distill(), Qat()], budget=Budget(max_accuracy_drop=1.0))``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from edgekit.config._catalog import Catalog

__all__ = ["Backoff", "Budget", "Distill", "LowRank", "MixedPrecision", "Prune", "Qat", "Recipe", "Step",
           "TrainSpec", "list_recipes", "load_recipe"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class TrainSpec(_Strict):
    """Fine-tuning settings of a step (Adam, cosine decay, seeded)."""

    epochs: NonNegativeInt = 3
    lr: PositiveFloat = 1e-3
    batch_size: PositiveInt = 64
    seed: int = 0


class _Step(_Strict):
    check_budget: bool = Field(default=True, description="false: judge this step together with the next one "
                                                         "(e.g. prune, then distill to win accuracy back)")


class Prune(_Step):
    method: Literal["prune"] = "prune"
    granularity: Literal["unstructured", "channel", "2:4"] | None = Field(
        default=None, description="default: the profile's pruning.granularity")
    ratio: float = Field(default=0.5, gt=0, lt=1, description="fraction of channels (or weights) removed")
    importance: Literal["l1", "l2", "bn_scale"] = "l1"
    iterations: PositiveInt = Field(default=1, description="1: one-shot; more: prune -> fine-tune rounds")
    round_to: PositiveInt | None = Field(default=None, description="keep channel counts multiples of this")
    ignore: list[str] = Field(default_factory=list, description="layer names never pruned")
    finetune: TrainSpec = TrainSpec()

    def weaker(self, factor: float) -> "Prune | None":
        if self.granularity == "2:4":
            return None  # the pattern is fixed: nothing weaker to try
        return self.model_copy(update={"ratio": round(self.ratio * factor, 4)})

    def label(self) -> str:
        return f"prune({self.granularity or 'profile'}, {self.ratio:g})"


class Distill(_Step):
    method: Literal["distill"] = "distill"
    temperature: PositiveFloat = 4.0
    alpha: float = Field(default=0.7, ge=0, le=1, description="weight of the soft-target term")
    features: dict[str, str] = Field(default_factory=dict, description="student layer -> teacher layer, matched by MSE")
    beta: float = Field(default=1.0, ge=0, description="weight of the feature term")
    student: Any = Field(default=None, description="package.module:function or an nn.Module; default: the model "
                                                   "as the previous steps left it")
    train: TrainSpec = TrainSpec(epochs=10)

    def weaker(self, factor: float) -> None:
        return None

    def label(self) -> str:
        return f"distill(T={self.temperature:g}, alpha={self.alpha:g})"


class LowRank(_Step):
    method: Literal["lowrank"] = "lowrank"
    energy: float | None = Field(default=None, gt=0, le=1, description="fraction of squared singular values kept")
    param_ratio: float | None = Field(default=None, gt=0, lt=1, description="target params / original params")
    layers: list[str] | None = None
    finetune: TrainSpec = TrainSpec()

    @model_validator(mode="after")
    def _one_rule(self) -> "LowRank":
        if (self.energy is None) == (self.param_ratio is None):
            raise ValueError("set exactly one of energy or param_ratio")
        return self

    def weaker(self, factor: float) -> "LowRank":
        if self.energy is not None:
            return self.model_copy(update={"energy": round(1 - (1 - self.energy) * factor, 6)})
        return self.model_copy(update={"param_ratio": round(1 - (1 - self.param_ratio) * factor, 6)})  # type: ignore[operator]

    def label(self) -> str:
        rule = f"energy={self.energy:g}" if self.energy is not None else f"param_ratio={self.param_ratio:g}"
        return f"lowrank({rule})"


Keep = Union[NonNegativeInt, list[str], Literal["auto"]]


class MixedPrecision(_Step):
    method: Literal["mixed_precision"] = "mixed_precision"
    precision: Literal["int8", "int4"] = Field(default="int8", description="the precision the rest of the model "
                                                                            "takes (int4: transformers' Linear layers)")
    keep_fp32: Keep = Field(default=1, description="how many of the most sensitive layers (or which layers) stay "
                                                   "fp32; auto: the fewest that meet the recipe's budget")
    keep_int8: Keep = Field(default=0, description="with precision int4: how many of the most sensitive Linear "
                                                   "layers (or which) keep int8 weights; auto as for keep_fp32")
    metric: Literal["sqnr", "accuracy"] = "sqnr"

    @model_validator(mode="after")
    def _int8_needs_int4(self) -> "MixedPrecision":
        if self.precision == "int8" and self.keep_int8 not in (0, []):
            raise ValueError("keep_int8 applies to precision int4 only")
        if self.keep_fp32 == "auto" and self.keep_int8 == "auto":
            raise ValueError("set at most one of keep_fp32 and keep_int8 to auto")
        return self

    def weaker(self, factor: float) -> None:
        return None

    def label(self) -> str:
        if self.precision == "int4":
            return f"mixed_precision(int4, keep_fp32={self.keep_fp32}, keep_int8={self.keep_int8})"
        return f"mixed_precision(keep_fp32={self.keep_fp32})"


class Qat(_Step):
    method: Literal["qat"] = "qat"
    train: TrainSpec = TrainSpec(epochs=2, lr=1e-4)

    def weaker(self, factor: float) -> None:
        return None

    def label(self) -> str:
        return "qat(int8)"


Step = Annotated[Union[Prune, Distill, LowRank, MixedPrecision, Qat], Field(discriminator="method")]
# Step name (the YAML key) -> its config class; compression.recipe runs each through its registered handler.
STEP_TYPES = {"prune": Prune, "distill": Distill, "lowrank": LowRank, "mixed_precision": MixedPrecision, "qat": Qat}


class Budget(_Strict):
    """What a step may cost. Accuracy needs labels; fidelity (``min_cosine``) needs only held-out inputs."""

    max_accuracy_drop: float | None = Field(default=None, ge=0, description="points of top-1 vs the fp32 model")
    min_cosine: float | None = Field(default=None, ge=-1, le=1, description="worst-sample cosine similarity of the "
                                     "outputs vs the fp32 model's, on the held-out inputs")

    @model_validator(mode="after")
    def _one_bound(self) -> "Budget":
        if self.max_accuracy_drop is None and self.min_cosine is None:
            raise ValueError("set max_accuracy_drop (points of top-1) or min_cosine (fidelity), or both")
        return self


class Backoff(_Strict):
    factor: float = Field(default=0.5, gt=0, lt=1)
    max_tries: NonNegativeInt = 2


class Recipe(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=False, arbitrary_types_allowed=True)

    name: str = "recipe"
    description: str = ""
    budget: Budget | None = None
    backoff: Backoff = Backoff()
    train_threads: PositiveInt | None = Field(default=None, description="torch threads while training (default: "
                                              "torch's); 1 is fastest for small models on a busy machine")
    steps: list[Step] = Field(min_length=1)
    source: str | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _last_step_checks(self) -> "Recipe":
        if not self.steps[-1].check_budget:
            raise ValueError("the last step has check_budget: false, so no step would judge it; remove that")
        return self

    @model_validator(mode="before")
    @classmethod
    def _one_key_steps(cls, data: Any) -> Any:
        """``- prune: {ratio: 0.5}`` in YAML is ``{"method": "prune", "ratio": 0.5}``."""
        if not isinstance(data, dict) or not isinstance(data.get("steps"), list):
            return data
        steps = []
        for item in data["steps"]:
            if isinstance(item, dict) and len(item) == 1 and "method" not in item:
                (method, body), = item.items()
                if method not in STEP_TYPES:
                    raise ValueError(f"unknown step {method!r}; valid: {', '.join(STEP_TYPES)}")
                item = {"method": method, **(body or {})} if isinstance(body, dict) or body is None else item
            steps.append(item)
        return {**data, "steps": steps}

    def label(self) -> str:
        return " -> ".join(s.label() for s in self.steps)


RECIPES: Catalog[Recipe] = Catalog("recipe", Recipe, "EDGEKIT_RECIPES")


def list_recipes(extra_dir: Path | str | None = None) -> dict[str, Recipe]:
    """Built-in recipes (``recipes/``), then folders in ``$EDGEKIT_RECIPES``, then ``extra_dir``."""
    return RECIPES.all(extra_dir)


def load_recipe(name_or_path: str | Path | Recipe) -> Recipe:
    """A recipe by name (``prune-distill-qat``) or YAML path; errors name file:line and the field
    (``steps.0.prune.ratio``)."""
    return RECIPES.get(name_or_path)
