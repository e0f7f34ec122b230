"""How the host reaches a device: put files there, run commands there."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path


@dataclass
class CommandResult:
    argv: list[str]
    exit_code: int
    stdout: str
    stderr: str
    seconds: float


class Transport(ABC):
    """One device's connection. ``put`` returns the path the device sees."""

    python: str

    @abstractmethod
    def put(self, local: Path) -> str: ...

    @abstractmethod
    def run(self, argv: list[str], *, timeout: float) -> CommandResult: ...

    def close(self) -> None:
        """Release the connection (nothing to do for local)."""
