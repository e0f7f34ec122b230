"""edgekit: compress, export, deploy and benchmark PyTorch models on edge devices.

``import edgekit`` stays light: torch and the runtimes load when a verb needs them.
"""

from edgekit import errors
from edgekit._api import (
    bench,
    benchmark,
    benchmark_steps,
    compare_runs,
    compress,
    deploy,
    device_profile,
    export,
    layer_sensitivity,
    load_run,
    op_table,
    save_model,
)
from edgekit._check import DeviceCheck, check_device
from edgekit.bench.config import BenchConfig, FleetConfig
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
    "FleetConfig",
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
    "bench",
    "benchmark",
    "benchmark_steps",
    "check_device",
    "compare_runs",
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
    "load_run",
    "load_target",
    "op_table",
    "save_model",
]

# ``edgekit.bench`` is the fleet verb. Importing edgekit.bench.config above bound the subpackage to that name;
# bind the verb again. The subpackage (results, store, compare, report) stays importable as
# ``from edgekit.bench.store import ...``; a test checks both.
from edgekit._api import bench  # noqa: E402, F811
