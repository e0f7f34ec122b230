"""Test helpers: real loopback sshd devices, devices in network namespaces (links to cut, slow down or make
lossy; root), device-side Python envs and an emulated arm64 device (qemu-user), for edgekit's tests and yours.

Cheap to import (standard library only). Pytest fixtures: ``pytest_plugins = ["edgekit.testing.pytest_plugin"]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from edgekit.testing._arm64 import Arm64Unavailable, arm64_root, arm64_unavailable, start_arm64_device
from edgekit.testing._envs import DEVICE_ENVS, EnvUnavailable, device_python
from edgekit.testing._netns import NetnsDevice, NetnsUnavailable, netns_unavailable, start_netns_device
from edgekit.testing._ray import RayTestCluster, start_ray_cluster
from edgekit.testing._sshd import TestDevice, start_sshd

__all__ = [
    "DEVICE_ENVS", "Arm64Unavailable", "EnvUnavailable", "NetnsDevice", "NetnsUnavailable", "RayTestCluster",
    "TestDevice",
    "arm64_root", "arm64_unavailable", "device_python", "netns_unavailable", "start_arm64_device",
    "start_netns_device", "start_ray_cluster", "start_sshd", "write_devices_file",
]


def write_devices_file(path: Path, devices: Sequence[TestDevice | dict[str, Any]]) -> Path:
    """Write a ``devices.yaml`` for these devices, so code under test finds them like real ones."""
    import yaml

    entries = [d.entry() if isinstance(d, TestDevice) else dict(d) for d in devices]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"devices": entries}, sort_keys=False))
    return path
