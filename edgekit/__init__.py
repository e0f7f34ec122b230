"""edgekit: compress, export, deploy and benchmark PyTorch models on edge devices.

``import edgekit`` stays light: torch and the runtimes load when a verb needs them.
"""

from edgekit import errors
from edgekit._api import (
    benchmark,
    benchmark_steps,
    compress,
    deploy,
    device_profile,
    export,
    layer_sensitivity,
    op_table,
    save_model,
)
from edgekit._check import DeviceCheck, check_device
from edgekit.bench.config import BenchConfig
from edgekit.config import (
    Backoff,
    Budget,
    Distill,
    LocalDevice,
    LowRank,
    MixedPrecision,
    Profile,
    Prune,
    Qat,
    Recipe,
    SshDevice,
    Target,
    TrainSpec,
    get_device,
    host_profile,
    list_profiles,
    list_targets,
    load_devices,
    load_profile,
    load_recipe,
    load_target,
)
from edgekit.errors import EdgekitError

__version__ = "0.1.0"

__all__ = [
    "Backoff",
    "BenchConfig",
    "Budget",
    "DeviceCheck",
    "Distill",
    "EdgekitError",
    "LocalDevice",
    "LowRank",
    "MixedPrecision",
    "Profile",
    "Prune",
    "Qat",
    "Recipe",
    "SshDevice",
    "Target",
    "TrainSpec",
    "benchmark",
    "benchmark_steps",
    "check_device",
    "compress",
    "deploy",
    "device_profile",
    "errors",
    "export",
    "get_device",
    "host_profile",
    "layer_sensitivity",
    "list_profiles",
    "list_targets",
    "load_devices",
    "load_profile",
    "load_recipe",
    "load_target",
    "op_table",
    "save_model",
]
