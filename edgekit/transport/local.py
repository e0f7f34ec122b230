"""The built-in ``local`` device: this host, one fresh subprocess per command."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from edgekit.config.device import LocalDevice
from edgekit.errors import AgentError
from edgekit.transport.base import CommandResult, Transport


class LocalTransport(Transport):
    def __init__(self, device: LocalDevice) -> None:
        self.device = device
        self.python = device.python or sys.executable

    def put(self, local: Path) -> str:
        # Same filesystem: nothing to copy; the agent reads the artifact where export left it.
        return str(Path(local).resolve())

    def run(self, argv: list[str], *, timeout: float) -> CommandResult:
        start = time.perf_counter()
        env = dict(os.environ)
        # Each artifact's numbers must not depend on how many threads BLAS libraries start by default.
        env.setdefault("OMP_NUM_THREADS", "1")
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                                  cwd=self.device.workdir or None, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise AgentError(f"timed out after {timeout:.0f} s", command=argv,
                             stdout=_text(exc.stdout), stderr=_text(exc.stderr)) from exc
        except OSError as exc:
            raise AgentError(f"cannot start: {exc}", command=argv) from exc
        return CommandResult(argv, proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start)


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data
