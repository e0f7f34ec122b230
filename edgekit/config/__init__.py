"""Validated configuration: profiles, targets, devices, recipes."""

from edgekit.config.device import LocalDevice, SshDevice, get_device, load_devices
from edgekit.config.profile import Profile, QuantizationScheme, host_profile, list_profiles, load_profile
from edgekit.config.recipe import (
    Backoff,
    Budget,
    Distill,
    LowRank,
    MixedPrecision,
    Prune,
    Qat,
    Recipe,
    TrainSpec,
    load_recipe,
)
from edgekit.config.target import Target, Tolerance, list_targets, load_target

__all__ = [
    "Backoff",
    "Budget",
    "Distill",
    "LocalDevice",
    "LowRank",
    "MixedPrecision",
    "Profile",
    "Prune",
    "Qat",
    "QuantizationScheme",
    "Recipe",
    "SshDevice",
    "Target",
    "Tolerance",
    "TrainSpec",
    "get_device",
    "host_profile",
    "list_profiles",
    "list_targets",
    "load_devices",
    "load_profile",
    "load_recipe",
    "load_target",
]
