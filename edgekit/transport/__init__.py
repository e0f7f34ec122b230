"""Transports keyed by device kind; SSH arrives with the devices issue."""

from __future__ import annotations

from edgekit.config.device import LocalDevice, SshDevice
from edgekit.errors import DeviceError
from edgekit.transport.base import CommandResult, Transport

__all__ = ["CommandResult", "Transport", "open_transport"]


def open_transport(device: LocalDevice | SshDevice) -> Transport:
    if isinstance(device, LocalDevice):
        from edgekit.transport.local import LocalTransport

        return LocalTransport(device)
    raise DeviceError(
        f"device {device.name!r} is kind {device.kind!r}: this edgekit version runs only on the built-in "
        "'local' device (SSH transport not built yet); use --device local"
    )
