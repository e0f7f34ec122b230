"""What ``edgekit search`` explores and optimizes: the space, the objectives, the constraints.

Objectives and constraints are named (``latency_p50``, ``accuracy_drop<=1``); an unknown name fails
listing the valid ones. The space defaults from the profile (its targets and precisions) and the model
(channel pruning for a CNN); a YAML file or a :class:`SearchSpace` overrides any part of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edgekit.config._yaml import read_yaml, validate
from edgekit.errors import ConfigError, UnknownNameError

# name -> (row column, default direction, what it is)
OBJECTIVES: dict[str, tuple[str, str, str]] = {
    "latency_p50": ("latency_ms_p50", "min", "median latency on the device, ms"),
    "latency_p90": ("latency_ms_p90", "min", "90th-percentile latency on the device, ms"),
    "accuracy": ("accuracy", "max", "top-1 on the held-out set, in the artifact's runtime"),
    "fidelity": ("parity_cosine", "max", "worst cosine of the artifact's outputs against PyTorch fp32 (unlabeled models)"),
    "size": ("artifact_mb", "min", "artifact size, MB"),
    "memory": ("peak_rss_mb", "min", "peak resident memory of the measuring process, MiB"),
    "energy": ("energy_mj_per_inference", "min", "energy per inference where a sensor or power model gives it, mJ"),
}

# name -> (row column, judged on the host before any device time)
CONSTRAINTS: dict[str, tuple[str, bool]] = {
    "accuracy_drop": ("accuracy_drop", True),  # points below the fp32 model's own accuracy
    "cosine": ("parity_cosine", True),
    "size_mb": ("artifact_mb", True),
    "p50_ms": ("latency_ms_p50", False),
    "p90_ms": ("latency_ms_p90", False),
    "memory_mb": ("peak_rss_mb", False),
    "energy_mj": ("energy_mj_per_inference", False),
}

_CONSTRAINT = re.compile(r"^\s*([A-Za-z0-9_]+)\s*(<=|>=)\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Objective:
    name: str
    column: str
    direction: Literal["min", "max"]

    def __str__(self) -> str:
        return f"{self.name}:{self.direction}"


@dataclass(frozen=True)
class Constraint:
    name: str
    column: str
    op: Literal["<=", ">="]
    limit: float
    host: bool  # judged from the build alone (no device time spent on a trial that fails it)

    def miss(self, value: float | None) -> float | None:
        """How far ``value`` is from meeting the constraint (0 when it meets it; None when unknown)."""
        if value is None or value != value:
            return None
        return max(0.0, value - self.limit) if self.op == "<=" else max(0.0, self.limit - value)

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.limit:g}"


def parse_objective(text: str) -> Objective:
    name, _, direction = text.strip().partition(":")
    if name not in OBJECTIVES:
        raise UnknownNameError("objective", name, OBJECTIVES)
    column, default, _ = OBJECTIVES[name]
    direction = direction or default
    if direction not in ("min", "max"):
        raise ConfigError(f"objective {text!r}: the direction after ':' is min or max", field="objectives")
    return Objective(name, column, direction)  # type: ignore[arg-type]


def parse_constraint(text: str) -> Constraint:
    m = _CONSTRAINT.match(text)
    if not m:
        raise ConfigError(f"constraint {text!r}: write NAME<=VALUE or NAME>=VALUE, e.g. accuracy_drop<=1, "
                          f"p50_ms<=5; names: {', '.join(sorted(CONSTRAINTS))}", field="constraints")
    name, op, value = m.groups()
    if name not in CONSTRAINTS:
        raise UnknownNameError("constraint", name, CONSTRAINTS)
    column, host = CONSTRAINTS[name]
    try:
        limit = float(value)
    except ValueError as exc:
        raise ConfigError(f"constraint {text!r}: {value!r} is not a number", field="constraints") from exc
    return Constraint(name, column, op, limit, host)  # type: ignore[arg-type]


class SearchSpace(BaseModel):
    """Each field lists the choices a trial picks from; None takes the default (profile / model)."""

    model_config = ConfigDict(extra="forbid")

    targets: list[str] | None = Field(default=None, min_length=1, description="default: the profile's targets")
    precisions: list[str] | None = Field(default=None, min_length=1, description="default: the profile's")
    prune: list[float] | None = Field(default=None, min_length=1,
                                      description="channel-pruning ratios, 0 = none (default: 0, 0.25, 0.5 for a CNN)")
    lowrank: list[float] = Field(default=[0.0], min_length=1,
                                 description="low-rank energy kept (0 = none), e.g. [0, 0.9]; fine-tuned")
    keep_fp32: list[int] = Field(default=[0], min_length=1,
                                 description="mixed precision: the k most sensitive layers kept fp32 (int8 only)")
    distill: list[bool] = Field(default=[False], min_length=1,
                                description="fine-tune a pruned/low-rank student from the original model")
    qat: list[bool] = Field(default=[False], min_length=1, description="quantization-aware training (int8 only)")
    threads: list[int] | None = Field(default=None, min_length=1, description="default: 1 and the profile's")
    finetune_epochs: int = Field(default=2, ge=0, description="fine-tuning after pruning / low-rank / distillation")

    def resolved(self, profile: Any, family: str) -> "SearchSpace":
        prune = self.prune if self.prune is not None else ([0.0, 0.25, 0.5] if family == "cnn" else [0.0])
        for r in prune:
            if not 0 <= r < 1:
                raise ConfigError(f"space.prune: ratio {r} is not in [0, 1)", field="prune")
        for e in self.lowrank:
            if not 0 <= e < 1:
                raise ConfigError(f"space.lowrank: energy {e} is not in [0, 1) (0: no factorization)", field="lowrank")
        if any(k < 0 for k in self.keep_fp32):
            raise ConfigError("space.keep_fp32: layer counts are >= 0", field="keep_fp32")
        threads = self.threads or sorted({1, int(profile.threads)})
        if any(t < 1 for t in threads):
            raise ConfigError("space.threads: thread counts are >= 1", field="threads")
        return self.model_copy(update={"targets": list(self.targets or profile.targets),
                                       "precisions": list(self.precisions or profile.precisions),
                                       "prune": sorted(set(prune)), "threads": threads,
                                       "lowrank": sorted(set(self.lowrank)), "keep_fp32": sorted(set(self.keep_fp32)),
                                       "distill": sorted(set(self.distill)), "qat": sorted(set(self.qat))})


def load_space(space: "str | Path | dict[str, Any] | SearchSpace | None") -> SearchSpace:
    if space is None:
        return SearchSpace()
    if isinstance(space, SearchSpace):
        return space
    if isinstance(space, dict):
        try:
            return SearchSpace(**space)
        except Exception as exc:  # pydantic's message names the field
            raise ConfigError(f"search space: {exc}", field="space") from exc
    path = Path(space)
    if not path.is_file():
        raise ConfigError(f"search space file {path} does not exist", field="space")
    data, lines = read_yaml(path)
    return validate(SearchSpace, data, path=path, lines=lines)
