"""Pytest fixtures for real sshd test devices. Enable with ``pytest_plugins = ["edgekit.testing.pytest_plugin"]``."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgekit.testing._arm64 import arm64_unavailable, start_arm64_device
from edgekit.testing._envs import EnvUnavailable, device_python
from edgekit.testing._netns import netns_unavailable, start_netns_device
from edgekit.testing._sshd import SSHD, TestDevice, start_sshd

SSHD_MISSING = "sshd not installed: apt-get install -y openssh-server (.ci/run does this)"
REQUIRE_SSHD = "EDGEKIT_REQUIRE_SSHD"  # set (as .ci/run does): a missing sshd fails the ssh tests
REQUIRE_ARM64 = "EDGEKIT_REQUIRE_ARM64"  # set (as .ci/run does): a machine that cannot emulate arm64 fails
REQUIRE_NETNS = "EDGEKIT_REQUIRE_NETNS"  # set (as .ci/run does): no root / ip / nft fails the netns tests

DeviceFactory = Callable[..., TestDevice]


def _require(missing: str | None, env_var: str) -> None:
    """Skip saying why a device kind cannot run here; fail instead where ``env_var`` is set (CI)."""
    if missing:
        if os.environ.get(env_var):
            pytest.fail(f"{missing} ({env_var} is set)")
        pytest.skip(missing)


def _stopping(start: DeviceFactory) -> Iterator[DeviceFactory]:
    """A factory whose devices are all stopped, newest first, when the fixture ends."""
    started: list[TestDevice] = []

    def make(*args: Any, **kw: Any) -> TestDevice:
        dev = start(*args, **kw)
        started.append(dev)
        return dev

    try:
        yield make
    finally:
        for dev in reversed(started):
            dev.stop()


def _env_python(env: str, kw: dict[str, Any]) -> dict[str, Any]:
    """``kw`` with ``python`` set to device env ``env``'s unless given; skips saying why it cannot be built."""
    if "python" not in kw:
        try:
            kw["python"] = device_python(env)
        except EnvUnavailable as exc:
            pytest.skip(str(exc))
    return kw


def _factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeviceFactory]:
    _require(None if Path(SSHD).exists() else SSHD_MISSING, REQUIRE_SSHD)

    def start(name: str = "dev", env: str = "host", **kw: Any) -> TestDevice:
        """Start device ``name`` whose python is device env ``env`` (``python=`` in kw overrides it)."""
        return start_sshd(tmp_path_factory.mktemp(f"sshd-{name}"), name=name, **_env_python(env, kw))

    yield from _stopping(start)


@pytest.fixture
def sshd_device_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeviceFactory]:
    """``make(name="dev", env="host", **kw) -> TestDevice``; every device is stopped after the test."""
    yield from _factory(tmp_path_factory)


@pytest.fixture(scope="session")
def sshd_session_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeviceFactory]:
    """Like ``sshd_device_factory`` but devices live until the end of the session (for expensive reuse)."""
    yield from _factory(tmp_path_factory)


@pytest.fixture
def isolated_ssh_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """No ssh-agent and a fresh $HOME, so the user's ~/.ssh never leaks into a test. Opt in; returns the HOME.

    The ssh CLI takes ~ from the passwd entry, not $HOME: TestDevice.ssh_argv passes -F /dev/null for that.
    """
    from edgekit._fs import cache_dir

    monkeypatch.setenv("EDGEKIT_CACHE", str(cache_dir()))  # keep the real cache (device envs) despite the new HOME
    for var in ("SSH_AUTH_SOCK", "SSH_AGENT_PID"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    return home


def _arm64_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeviceFactory]:
    _require(arm64_unavailable(), REQUIRE_ARM64)

    def start(name: str = "pi", **kw: Any) -> TestDevice:
        """Start emulated arm64 device ``name`` (profile pi4 unless ``profile=``); builds the root on first use."""
        return start_arm64_device(tmp_path_factory.mktemp(f"arm64-{name}"), name=name, **kw)

    yield from _stopping(start)


@pytest.fixture
def arm64_device_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeviceFactory]:
    """``make(name="pi", profile="pi4") -> TestDevice``: an emulated arm64 device (qemu-user chroot + sshd),
    stopped after the test (its mounts end with it). Skips saying why where the machine cannot emulate arm64;
    fails there instead when $EDGEKIT_REQUIRE_ARM64 is set.
    """
    yield from _arm64_factory(tmp_path_factory)


@pytest.fixture(scope="session")
def arm64_session_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeviceFactory]:
    """Like ``arm64_device_factory`` but devices live until the end of the session."""
    yield from _arm64_factory(tmp_path_factory)


@pytest.fixture
def netns_device_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeviceFactory]:
    """``make(name="dev", env="host", **kw) -> NetnsDevice``: a real sshd in a network namespace of its own behind
    a veth link the test can cut, rate-limit or make lossy (see ``edgekit.testing._netns``); it, its namespace and
    its link are removed after the test. Skips saying why without root, ``ip`` or ``nft``; fails there instead
    when $EDGEKIT_REQUIRE_NETNS is set.
    """
    _require(netns_unavailable(), REQUIRE_NETNS)

    def start(name: str = "dev", env: str = "host", **kw: Any) -> TestDevice:
        return start_netns_device(tmp_path_factory.mktemp(f"netns-{name}"), name=name, **_env_python(env, kw))

    yield from _stopping(start)
