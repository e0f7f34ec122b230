"""Export targets: a format, its runtime, and how close to PyTorch its outputs must stay."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, confloat

from edgekit.config._catalog import Catalog

# Defined here, not in profile.py: a profile names its targets, so profile.py imports this module and
# never the other way round.
# int4: 4-bit weights in groups with int8 dynamic activations for Linear/matmul layers, weight-only embeddings
# (transformers; ``quantization.int4`` in the profile). A target lists it only where its runtime has kernels.
Precision = Literal["fp32", "fp16", "int8", "int4"]


class Tolerance(BaseModel):
    """Parity bounds against the PyTorch fp32 reference. ``None`` leaves a bound unchecked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_abs_err: confloat(ge=0) | None = None  # type: ignore[valid-type]
    min_cosine: confloat(ge=-1, le=1) | None = None  # type: ignore[valid-type]
    min_top1_agreement: confloat(ge=0, le=1) | None = None  # type: ignore[valid-type]


class Target(BaseModel):
    """An export target, from ``targets/NAME.yaml``."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    format: Literal["executorch", "tflite", "onnx"]
    extension: str = Field(pattern=r"^\.[a-z0-9]+$")
    delegate: str | None = None
    precisions: list[Precision] = Field(min_length=1)
    tolerance: dict[Precision, Tolerance]
    opset: int | None = None
    runtime_packages: dict[str, list[str]] = Field(
        default_factory=dict, description="arch -> pip requirements that give the runtime on a device",
    )
    source: str | None = Field(default=None, exclude=True)

    def tolerance_for(self, precision: str) -> Tolerance:
        return self.tolerance.get(precision, Tolerance())  # type: ignore[call-overload]


TARGETS: Catalog[Target] = Catalog("target", Target, "EDGEKIT_TARGETS")


def list_targets(extra_dir: Path | str | None = None) -> dict[str, Target]:
    """All targets: built-in ones, then ``$EDGEKIT_TARGETS`` folders, then ``extra_dir``."""
    return TARGETS.all(extra_dir)


def load_target(name_or_path: str | Path | Target, extra_dir: Path | str | None = None) -> Target:
    """A target by name or YAML path; unknown names list the valid ones."""
    return TARGETS.get(name_or_path, extra_dir)
