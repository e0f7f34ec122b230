"""Transports keyed by device kind: ``local`` (subprocess here) and ``ssh`` (paramiko)."""

from __future__ import annotations

from edgekit.config.device import LocalDevice, SshDevice
from edgekit.transport.base import CommandResult, PushStats, Transport, file_sha256

__all__ = ["CommandResult", "PushStats", "Transport", "file_sha256", "open_transport"]


def open_transport(device: LocalDevice | SshDevice) -> Transport:
    """Connect to ``device``; paramiko is imported only here, when an SSH device is used."""
    if isinstance(device, LocalDevice):
        from edgekit.transport.local import LocalTransport

        return LocalTransport(device)
    from edgekit.transport.ssh import SshTransport

    return SshTransport(device)
