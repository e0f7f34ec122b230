"""The device registry (``devices.yaml``): where artifacts run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from edgekit.config._yaml import read_yaml, validate
from edgekit.errors import ConfigError, UnknownNameError

LOCAL = "local"


class _DeviceBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    profile: str | None = Field(default=None, description="profile name; local picks the host's when unset")
    tags: list[str] = Field(default_factory=list)


class LocalDevice(_DeviceBase):
    """This host; each artifact runs in a fresh subprocess."""

    kind: Literal["local"] = "local"
    python: str | None = Field(default=None, description="interpreter for the agent; default: this one")
    workdir: str | None = None


class SshDevice(_DeviceBase):
    """A device reached over SSH. No passwords: keys come from identity_file or ssh-agent."""

    kind: Literal["ssh"]
    host: str
    port: int = Field(default=22, ge=1, le=65535)
    user: str | None = None
    identity_file: str | None = None
    known_hosts: str | None = None
    python: str = "python3"
    workdir: str = "~/.edgekit"


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
    parsed = validate(DeviceFile, data, path=file, lines=lines)
    seen: set[str] = set()
    for i, dev in enumerate(parsed.devices):
        if dev.name in seen:
            raise ConfigError(
                f"duplicate device name {dev.name!r}; names must be unique",
                source=f"{file}:{lines.get(('devices', i, 'name'), '?')}", field=f"devices.{i}.name",
            )
        seen.add(dev.name)
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


