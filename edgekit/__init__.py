"""edgekit: compress, export, deploy and benchmark PyTorch models on edge devices.

``import edgekit`` stays light: torch and the runtimes load when a verb needs them.
"""

from edgekit import errors
from edgekit._api import (
    bench,
    benchmark,
    benchmark_steps,
    build_cache,
    compare_runs,
    compress,
    deploy,
    export,
    layer_sensitivity,
    load_run,
    op_table,
    save_model,
    search,
    search_artifact,
)
from edgekit._version import __version__ as __version__
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
    device_profile,
    get_device,
    host_profile,
    list_profiles,
    list_targets,
    load_devices,
    load_profile,
    load_recipe,
    load_target,
)
from edgekit.config.bench import BenchConfig, BenchRequest, FleetConfig
from edgekit.config.search import SearchSpace
from edgekit.device.check import DeviceCheck, check_device
from edgekit.errors import EdgekitError
from edgekit.exporters.base import BuildProgress
from edgekit.exporters.cache import BuildCache

__all__ = [
    "Backoff",
    "BenchConfig",
    "BenchRequest",
    "Budget",
    "BuildCache",
    "BuildProgress",
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
    "SearchSpace",
    "SshDevice",
    "Target",
    "TrainSpec",
    "bench",
    "benchmark",
    "benchmark_steps",
    "build_cache",
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
    "search",
    "search_artifact",
]
