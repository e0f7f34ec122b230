"""The exporter contract, the registry of exporters by format, and what an export produces.

Imports without torch: ``Artifact`` and ``ParityResult`` are plain dataclasses that the results store and
the CLI read back without loading any toolchain, and each exporter's module loads only when its format
is used.
"""

from __future__ import annotations

import importlib
import re
from abc import ABC, abstractmethod
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from edgekit.errors import UnknownNameError

if TYPE_CHECKING:
    from edgekit.compression.model import CompressedModel
    from edgekit.config.target import Target


@dataclass
class ParityResult:
    """Artifact outputs versus the PyTorch fp32 reference on the same inputs.

    ``cosine`` is the worst sample's cosine similarity (a mean would hide one bad input).
    """

    samples: int
    max_abs_err: float
    cosine: float
    top1_agreement: float | None
    ok: bool
    failures: list[str] = field(default_factory=list)


@dataclass
class Artifact:
    """One exported file set (target x precision), checked or with the error that stopped it."""

    model: str
    profile: str
    target: str
    format: str
    precision: str
    threads: int
    path: Path | None = None
    files: list[Path] = field(default_factory=list)
    inputs: Path | None = None
    eval_set: Path | None = None  # eval.npz: held-out inputs + labels, scored on the device
    power_model: dict[str, float] | None = None  # the profile's, for an energy estimate without a sensor
    execution: dict[str, Any] | None = None  # the profile's accelerator and providers (None: the CPU)
    bytes: int | None = None
    parity: ParityResult | None = None
    accuracy: float | None = None
    reference_accuracy: float | None = None
    export_seconds: float | None = None
    check_seconds: float | None = None
    cache_hit: bool = False  # re-used from the build cache: no toolchain ran, the figures are that build's
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Exported and within its parity tolerance: fit to ship."""
        return self.error is None and self.parity is not None and self.parity.ok


@dataclass(frozen=True)
class BuildProgress:
    """Where one artifact's build is: export (capture the graph), quantize, lower (the toolchain writes the
    file), check (parity and accuracy in its runtime), then done, failed, or cached (a build-cache hit)."""

    target: str
    precision: str
    stage: str
    detail: str = ""


BUILD_STAGES = ("export", "quantize", "lower", "check")
_STAGE: ContextVar[Callable[[str], None] | None] = ContextVar("edgekit_build_stage", default=None)


def report_stage(stage: str) -> None:
    """Called by an exporter as it moves on (``quantize``, ``lower``); shown on the build's progress line."""
    callback = _STAGE.get()
    if callback is not None:
        callback(stage)


class Exporter(ABC):
    """Writes one target's artifact for one precision into an empty folder."""

    format: ClassVar[str]

    @abstractmethod
    def export(self, cm: CompressedModel, precision: str, target: Target, dest: Path) -> Path:
        """Write the artifact (and any side files) into ``dest``; return the main file's path."""


# format -> "module:Class"; imported only when that format is used (heavy backends).
EXPORTERS: dict[str, str] = {
    "executorch": "edgekit.exporters.executorch:ExecutorchExporter",
    "onnx": "edgekit.exporters.onnx:OnnxExporter",
    "tflite": "edgekit.exporters.tflite:TfliteExporter",
}


def get_exporter(fmt: str) -> Exporter:
    if fmt not in EXPORTERS:
        raise UnknownNameError("export format", fmt, EXPORTERS)
    mod, _, cls = EXPORTERS[fmt].partition(":")
    return getattr(importlib.import_module(mod), cls)()


_OP_PATTERNS = [
    r"(aten\.[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?)",
    r"(torch\.ops\.[A-Za-z0-9_.]+)",
    r"operator ([A-Za-z0-9_:.]+)",
    r"[Oo]p(?:erator)? ['\"]?([A-Za-z0-9_:.]+)['\"]? (?:is )?not supported",
    r"[Uu]nsupported (?:op|operator)[: ]+['\"]?([A-Za-z0-9_:.]+)",
]


def find_op(message: str) -> str | None:
    """The operator an exporter's error names, when it names one."""
    for pattern in _OP_PATTERNS:
        m = re.search(pattern, message)
        if m:
            return m.group(1)
    return None
