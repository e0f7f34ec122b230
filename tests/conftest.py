"""Shared test set-up: a private cache per session so tests never read or pollute the user's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Real sshd test devices (sshd_device_factory, sshd_session_factory, isolated_ssh_env).
pytest_plugins = ["edgekit.testing.pytest_plugin"]


def pytest_configure(config: pytest.Config) -> None:
    # One cache for the whole run (the trained digits model, the agent bundle); tests must not touch ~/.cache.
    if "EDGEKIT_CACHE" not in os.environ:
        os.environ["EDGEKIT_CACHE"] = str(REPO / ".pytest-edgekit-cache")


@pytest.fixture(autouse=True)
def _clean_config_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A user's EDGEKIT_* folders and devices file must not leak into tests."""
    for var in ("EDGEKIT_PROFILES", "EDGEKIT_TARGETS", "EDGEKIT_DEVICES"):
        monkeypatch.delenv(var, raising=False)
