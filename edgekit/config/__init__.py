"""Validated configuration: profiles, targets, devices, recipes, benchmark settings."""

from edgekit.config.device import LocalDevice, SshDevice, device_profile, get_device, load_devices, with_trust
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
    "device_profile",
    "get_device",
    "host_profile",
    "list_profiles",
    "list_targets",
    "load_devices",
    "load_profile",
    "load_recipe",
    "load_target",
    "with_trust",
]
