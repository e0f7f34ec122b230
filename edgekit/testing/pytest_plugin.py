"""Pytest fixtures for real sshd test devices. Enable with ``pytest_plugins = ["edgekit.testing.pytest_plugin"]``."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgekit.testing._envs import EnvUnavailable, device_python
from edgekit.testing._sshd import SSHD, TestDevice, start_sshd

SSHD_MISSING = "sshd not installed: apt-get install -y openssh-server (.ci/run does this)"

DeviceFactory = Callable[..., TestDevice]


def _factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeviceFactory]:
    if not Path(SSHD).exists():
        if os.environ.get("EDGEKIT_REQUIRE_SSHD"):
            pytest.fail(SSHD_MISSING)
        pytest.skip(SSHD_MISSING)
    started: list[TestDevice] = []

    def make(name: str = "dev", env: str = "host", **kw: Any) -> TestDevice:
        """Start device ``name`` whose python is device env ``env`` (``python=`` in kw overrides it)."""
        if "python" not in kw:
            try:
                kw["python"] = device_python(env)
            except EnvUnavailable as exc:
                pytest.skip(str(exc))
        dev = start_sshd(tmp_path_factory.mktemp(f"sshd-{name}"), name=name, **kw)
        started.append(dev)
        return dev

    try:
        yield make
    finally:
        for dev in reversed(started):
            dev.stop()


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
    from edgekit._paths import cache_dir

    monkeypatch.setenv("EDGEKIT_CACHE", str(cache_dir()))  # keep the real cache (device envs) despite the new HOME
    for var in ("SSH_AUTH_SOCK", "SSH_AGENT_PID"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    return home
