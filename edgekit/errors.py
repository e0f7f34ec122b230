"""The one error tree of edgekit.

Every error edgekit raises on purpose derives from :class:`EdgekitError`, so a pipeline can catch one
type. Lower-layer errors (pydantic, yaml, runtimes, subprocess) are translated at the boundary with
``raise ... from exc`` so the cause stays visible.

::

    EdgekitError
    ├── ConfigError            a YAML/config value is wrong; names file, line and field
    │   └── UnknownNameError   a profile/target/model/device/method name is not known; lists valid ones
    ├── ModelError             a model cannot be loaded or its forward fails
    ├── CalibrationError       calibration data is missing, too small, or of the wrong shape/dtype
    ├── CompressError          a compression method failed
    ├── ExportError            a target could not export a model; names the target and, if known, the op
    ├── DeviceError            a device cannot be used (unsupported kind, unreachable, ...)
    ├── AgentError             the benchmark agent failed; carries the command, exit code, output tail
    ├── ResultsError           a stored run cannot be read, compared or logged (MLflow)
    └── ClusterError           the Ray cluster cannot be used (Ray missing, address, token, no gateway node)
"""

from __future__ import annotations

import re
import shlex
from difflib import get_close_matches
from typing import Iterable, Sequence

__all__ = [
    "AgentError",
    "CalibrationError",
    "ClusterError",
    "CompressError",
    "ConfigError",
    "DeviceError",
    "EdgekitError",
    "ExportError",
    "ModelError",
    "ResultsError",
    "UnknownNameError",
]


class EdgekitError(Exception):
    """Root of all edgekit errors."""


class ConfigError(EdgekitError):
    """A configuration value is invalid.

    ``source`` is the file (and line, when known) and ``field`` the dotted field path.
    """

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None) -> None:
        self.source = source
        self.field = field
        prefix = ""
        if source:
            prefix += f"{source}: "
        if field:
            prefix += f"field '{field}': "
        super().__init__(prefix + message)


class UnknownNameError(ConfigError):
    """A name was looked up in a registry that does not hold it."""

    def __init__(self, kind: str, name: str, valid: Iterable[str], *, hint: str = "") -> None:
        self.kind = kind
        self.name = name
        self.valid = sorted(valid)
        close = get_close_matches(name, self.valid, n=1)
        msg = f"unknown {kind} {name!r}; valid: {', '.join(self.valid) or '(none)'}"
        if close:
            msg += f" (did you mean {close[0]!r}?)"
        if hint:
            msg += f". {hint}"
        super().__init__(msg)


class ModelError(EdgekitError):
    """A model could not be loaded, or its forward pass failed."""


class CalibrationError(EdgekitError):
    """Calibration data is unusable for quantization."""


class CompressError(EdgekitError):
    """A compression step failed."""


class ExportError(EdgekitError):
    """A target could not export a model."""

    def __init__(self, target: str, message: str, *, op: str | None = None) -> None:
        self.target = target
        self.op = op
        where = f"target {target!r}"
        if op:
            where += f", op {op}"
        super().__init__(f"{where}: {message}")


class DeviceError(EdgekitError):
    """A device cannot be used: unreachable, refused, unknown host key, workdir not writable, ...

    The message starts with the device's name, so a fleet's errors say which device each is about.
    ``transient`` marks what may pass if tried again (refused, no answer, connection lost): a fleet run
    retries those with back-off; a wrong host key or a refused login it does not.
    """

    def __init__(self, message: str, *, device: str | None = None, transient: bool = False) -> None:
        self.device = device
        self.transient = transient
        super().__init__(f"device {device!r}: {message}" if device else message)


class AgentError(EdgekitError):
    """The on-device agent failed. The message carries the command, exit code and output tail."""

    def __init__(
        self, message: str, *, command: Sequence[str] = (), exit_code: int | None = None,
        stdout: str = "", stderr: str = "",
    ) -> None:
        self.command = list(command)
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr
        parts = [message]
        if self.command:
            parts.append(f"command: {shlex.join(self.command)}")
        if exit_code is not None:
            parts.append(f"exit code: {exit_code}")
        for name, text in (("stdout", stdout), ("stderr", stderr)):
            tail = _tail(text)
            if tail:
                parts.append(f"last lines of {name}:\n{tail}")
        super().__init__("\n".join(parts))


# C0 and C1 control characters (terminal escapes: ESC, CSI; CR, which overwrites a line), zero-width
# characters and Unicode direction overrides (text that reads differently than it is); tab and newline stay.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")
_TAIL_CHARS = 4000


def printable(value: object, limit: int | None = None) -> str:
    """``value`` as text a terminal shows as it is: control characters become visible ``\\x1b``-style
    escapes, so a device cannot clear a screen, recolour or rewrite what the user reads."""
    text = _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                            else f"\\u{ord(m.group()):04x}", str(value))
    if limit is not None and len(text) > limit:
        text = text[:limit] + f"... ({len(text) - limit} characters cut)"
    return text


def _tail(text: str, lines: int = 15) -> str:
    """The last lines of a device's output, bounded (one 200 kB line is still one line) and printable."""
    tail = "\n".join(text.strip().splitlines()[-lines:])
    if len(tail) > _TAIL_CHARS:
        tail = f"({len(tail) - _TAIL_CHARS} characters cut) ..." + tail[-_TAIL_CHARS:]
    return printable(tail)


class ResultsError(EdgekitError):
    """A stored run cannot be read, compared, reported or logged; the run's own files are never changed."""


class ClusterError(EdgekitError):
    """The Ray cluster cannot be used: Ray is not installed, the address does not answer, the token is
    refused, or no node can reach a device (its ``gateway`` matches none). Says what would fix it."""
