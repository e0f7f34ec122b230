"""Validated configuration: profiles, targets, devices."""

from edgekit.config.device import LocalDevice, SshDevice, get_device, load_devices
from edgekit.config.profile import Profile, QuantizationScheme, host_profile, list_profiles, load_profile
from edgekit.config.target import Target, Tolerance, list_targets, load_target

__all__ = [
    "LocalDevice",
    "Profile",
    "QuantizationScheme",
    "SshDevice",
    "Target",
    "Tolerance",
    "get_device",
    "host_profile",
    "list_profiles",
    "list_targets",
    "load_devices",
    "load_profile",
    "load_target",
]
