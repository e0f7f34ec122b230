"""The exporter contract and what an export produces."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from edgekit.compression import CompressedModel
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
    bytes: int | None = None
    parity: ParityResult | None = None
    accuracy: float | None = None
    reference_accuracy: float | None = None
    export_seconds: float | None = None
    check_seconds: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Exported and within its parity tolerance: fit to ship."""
        return self.error is None and self.parity is not None and self.parity.ok


class Exporter(ABC):
    """Writes one target's artifact for one precision into an empty folder."""

    format: ClassVar[str]

    @abstractmethod
    def export(self, cm: CompressedModel, precision: str, target: Target, dest: Path) -> Path:
        """Write the artifact (and any side files) into ``dest``; return the main file's path."""


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
