"""edgekit: compress, export, deploy and benchmark PyTorch models on edge devices.

``import edgekit`` stays light: torch and the runtimes load when a verb needs them.
"""

from edgekit import errors
from edgekit._api import benchmark, compress, deploy, device_profile, export, op_table
from edgekit._check import DeviceCheck, check_device
from edgekit.bench.config import BenchConfig
from edgekit.config import (
    LocalDevice,
    Profile,
    SshDevice,
    Target,
    get_device,
    host_profile,
    list_profiles,
    list_targets,
    load_devices,
    load_profile,
    load_target,
)
from edgekit.errors import EdgekitError

__version__ = "0.1.0"

__all__ = [
    "BenchConfig",
    "DeviceCheck",
    "EdgekitError",
    "LocalDevice",
    "Profile",
    "SshDevice",
    "Target",
    "benchmark",
    "check_device",
    "compress",
    "deploy",
    "device_profile",
    "errors",
    "export",
    "get_device",
    "host_profile",
    "list_profiles",
    "list_targets",
    "load_devices",
    "load_profile",
    "load_target",
    "op_table",
]
