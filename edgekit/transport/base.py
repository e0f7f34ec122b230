"""How the host reaches a device: make files available there, run commands there."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from edgekit._fs import sha256_file


@dataclass
class CommandResult:
    argv: list[str]
    exit_code: int  # -1: the command ended without an exit status (killed by a signal)
    stdout: str
    stderr: str
    seconds: float


@dataclass
class PushStats:
    """What staging cost: the second deploy of unchanged artifacts must send nothing."""

    bytes_sent: int = 0
    files_sent: int = 0
    files_skipped: int = 0


class Transport(ABC):
    """One device's connection."""

    device_name: str
    python: str
    stats: PushStats
    is_local: bool = False  # same filesystem and interpreter set as the host
    # The device-side folder edgekit owns (absolute on the device): the store, the agent's scratch files.
    # None where the device has no folder of edgekit's own (local without ``workdir``: the host's folders).
    workdir: str | None = None

    @abstractmethod
    def stage(self, files: Sequence[Path]) -> list[str]:
        """Make ``files`` (kept together in one folder) available on the device; their device paths."""

    @abstractmethod
    def run(self, argv: list[str], *, timeout: float, stdin: bytes | None = None) -> CommandResult:
        """Run ``argv`` (no shell: every word is passed as is) and wait at most ``timeout`` seconds."""

    def put(self, local: Path) -> str:
        return self.stage([local])[0]

    def close(self) -> None:
        """Release the connection (nothing to do for local)."""

    def __enter__(self) -> "Transport":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, remembered per (path, size, mtime): a redeploy does not rehash 50 MB."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(path)
    return _HASHES[key]
