"""The device registry (``devices.yaml``): where artifacts run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgekit.config._yaml import read_yaml, validate
from edgekit.config.profile import Profile, host_profile, load_profile
from edgekit.errors import ConfigError, UnknownNameError

LOCAL = "local"


class _DeviceBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    profile: str | None = Field(default=None, description="profile name; local picks the host's when unset")
    tags: list[str] = Field(default_factory=list)
    gateway: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_.\-/]+(=[A-Za-z0-9_.\-/]+)?$",
        description="on a Ray cluster (--cluster), which nodes can reach this device: 'KEY=VALUE' (a node "
                    "label, ray start --labels) or 'NAME' (a custom resource, ray start --resources); default: any")


class LocalDevice(_DeviceBase):
    """This host; each artifact runs in a fresh subprocess."""

    kind: Literal["local"] = "local"
    python: str | None = Field(default=None, description="interpreter for the agent; default: this one")
    workdir: str | None = None


_SECRET_FIELDS = ("password", "passphrase", "key_passphrase", "private_key")
_SECRETS_HINT = ("secrets do not belong in devices.yaml; remove it and use identity_file with a key loaded into "
                 "ssh-agent (ssh-add KEY), or a key without a passphrase")


class SshDevice(_DeviceBase):
    """A device reached over SSH. No passwords: keys come from identity_file or ssh-agent."""

    kind: Literal["ssh"]
    host: str = Field(min_length=1)
    port: int = Field(default=22, ge=1, le=65535)
    user: str | None = Field(default=None, description="login name; default: the local user's")
    identity_file: str | None = Field(default=None, description="private key; unset: ssh-agent / ~/.ssh keys")
    known_hosts: str | None = Field(default=None, description="default: ~/.ssh/known_hosts")
    trust_new_host: bool = Field(default=False, description="accept and record an unknown host key")
    python: str = Field(default="python3", min_length=1, description="interpreter on the device")
    workdir: str = Field(default="~/.edgekit", min_length=1, description="device-side folder; ~ = login home")
    connect_timeout: float = Field(default=15.0, gt=0, le=600)

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data: object) -> object:
        if isinstance(data, dict):
            for key in _SECRET_FIELDS:
                if key in data:
                    raise ValueError(f"field {key!r}: {_SECRETS_HINT}")
        return data


Device = Annotated[Union[LocalDevice, SshDevice], Field(discriminator="kind")]


class DeviceFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    devices: list[Device] = Field(default_factory=list)


def default_devices_path() -> Path:
    """``$EDGEKIT_DEVICES``, else ``./devices.yaml``."""
    return Path(os.environ.get("EDGEKIT_DEVICES", "devices.yaml"))


def load_devices(path: Path | str | None = None) -> dict[str, LocalDevice | SshDevice]:
    """Name -> device. ``local`` is always present unless the file redefines it."""
    devices: dict[str, LocalDevice | SshDevice] = {LOCAL: LocalDevice(name=LOCAL)}
    explicit = path is not None or "EDGEKIT_DEVICES" in os.environ
    file = Path(path) if path is not None else default_devices_path()
    if not file.is_file():
        if explicit:
            raise ConfigError("devices file not found; create it or unset EDGEKIT_DEVICES", source=str(file))
        return devices
    data, lines = read_yaml(file)
    if data is None:
        return devices
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping with a 'devices:' list", source=str(file))
    entries = data.get("devices")
    for i, entry in enumerate(entries if isinstance(entries, list) else []):
        for key in _SECRET_FIELDS:
            if isinstance(entry, dict) and key in entry:
                raise ConfigError(_SECRETS_HINT, source=f"{file}:{lines.get(('devices', i, key), '?')}",
                                  field=f"devices.{i}.{key}")
    parsed = validate(DeviceFile, data, path=file, lines=lines)
    seen: dict[str, int] = {}
    for i, dev in enumerate(parsed.devices):
        if dev.name in seen:
            first = lines.get(("devices", seen[dev.name], "name"), "?")
            raise ConfigError(
                f"duplicate device name {dev.name!r}; names must be unique: rename this one or the one at line {first}",
                source=f"{file}:{lines.get(('devices', i, 'name'), '?')}", field=f"devices.{i}.name",
            )
        seen[dev.name] = i
        devices[dev.name] = dev
    return devices


def get_device(name: str | LocalDevice | SshDevice, path: Path | str | None = None) -> LocalDevice | SshDevice:
    """A device by name; unknown names list the known ones and the closest match."""
    if isinstance(name, (LocalDevice, SshDevice)):
        return name
    devices = load_devices(path)
    if name not in devices:
        raise UnknownNameError("device", name, devices, hint="register it in devices.yaml")
    return devices[name]


def device_profile(device: LocalDevice | SshDevice, override: str | Path | Profile | None = None) -> Profile:
    """``override``, else the device's own profile, else (local only) the one matching this host."""
    if override is not None:
        return load_profile(override)
    if device.profile:
        return load_profile(device.profile)
    return host_profile()


def with_trust(device: LocalDevice | SshDevice, trust_new_host: bool) -> LocalDevice | SshDevice:
    """The device, accepting (and recording) an unknown host key when the caller said so."""
    if trust_new_host and isinstance(device, SshDevice):
        return device.model_copy(update={"trust_new_host": True})
    return device
