"""The built-in ``local`` device: this host, one fresh subprocess per command."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from edgekit.config.device import LocalDevice
from edgekit.errors import AgentError
from edgekit.transport.base import CommandResult, PushStats, Transport


class LocalTransport(Transport):
    is_local = True

    def __init__(self, device: LocalDevice) -> None:
        self.device = device
        self.device_name = device.name
        self.python = device.python or sys.executable
        self.stats = PushStats()
        self.workdir = device.workdir or None

    def stage(self, files: Sequence[Path]) -> list[str]:
        # Same filesystem: nothing to copy; the agent reads the artifact where export left it.
        return [str(Path(f).resolve()) for f in files]

    def run(self, argv: list[str], *, timeout: float, stdin: bytes | None = None) -> CommandResult:
        start = time.perf_counter()
        env = dict(os.environ)
        # Each artifact's numbers must not depend on how many threads BLAS libraries start by default.
        env.setdefault("OMP_NUM_THREADS", "1")
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=timeout, env=env,
                                  cwd=self.workdir,
                                  **({"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}))
        except subprocess.TimeoutExpired as exc:
            raise AgentError(f"timed out after {timeout:.0f} s", command=argv,
                             stdout=_text(exc.stdout), stderr=_text(exc.stderr)) from exc
        except OSError as exc:
            raise AgentError(f"cannot start: {exc}", command=argv) from exc
        return CommandResult(argv, proc.returncode, _text(proc.stdout), _text(proc.stderr),
                             time.perf_counter() - start)


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data
