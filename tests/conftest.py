"""Shared test set-up: a private cache per session so tests never read or pollute the user's, and a closing
summary of what the skipped tests need."""

from __future__ import annotations

import os
import re
import tempfile
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Real sshd test devices (sshd_device_factory, sshd_session_factory, isolated_ssh_env).
pytest_plugins = ["edgekit.testing.pytest_plugin"]


def pytest_configure(config: pytest.Config) -> None:
    # One cache for the whole run (the trained digits model, the agent bundle); tests must not touch ~/.cache.
    if "EDGEKIT_CACHE" not in os.environ:
        os.environ["EDGEKIT_CACHE"] = str(REPO / ".pytest-edgekit-cache")
    # The build cache starts empty every run: each key's toolchains run (and are tested) once per session,
    # and a later test building the same key re-uses it, as a user's second build would.
    if "EDGEKIT_BUILD_CACHE" not in os.environ:
        os.environ["EDGEKIT_BUILD_CACHE"] = tempfile.mkdtemp(prefix="edgekit-build-cache-")


@pytest.fixture(autouse=True)
def _clean_config_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A user's EDGEKIT_* folders and devices file must not leak into tests."""
    for var in ("EDGEKIT_PROFILES", "EDGEKIT_TARGETS", "EDGEKIT_DEVICES"):
        monkeypatch.delenv(var, raising=False)


# ---- what a run skipped, and what would run it -----------------------------------------------------------
# On a fresh machine many tests skip (no sshd, qemu, chromium, nftables...). At the end of the run, the skips
# are grouped by what they need, with the one command that installs it: .ci/run (apt-get, then the tests as
# CI runs them). The patterns match the skip reasons of the fixtures in edgekit.testing (pytest_plugin, _arm64,
# _netns, _envs) and of the tests themselves (test_report, test_device_faults, test_ssh_devices, agent tests).

# (what is needed, whether `.ci/run` installs it, patterns that find it in a skip reason)
SKIP_NEEDS: tuple[tuple[str, bool, tuple[str, ...]], ...] = (
    ("sshd (openssh-server)", True, (r"\bsshd not installed\b", r"/sshd not found\b")),
    ("arm64 emulation (root, qemu-user-static, binfmt_misc, debootstrap)", True,
     (r"\bemulated arm64\b", r"^needs root and debootstrap$")),
    ("Chromium (headless)", True, (r"^chromium not installed\b",)),
    ("network namespaces (root with CAP_NET_ADMIN, iproute2, nftables)", True,
     (r"\bnetwork.namespace", r"\brun as root with iproute2\b")),
    ("faketime", True, (r"\bfaketime not installed\b",)),
    ("root (to mount tmpfs workdirs)", True, (r"\btmpfs\b",)),
    ("Python 3.9 (apt-get install python3.9, or set EDGEKIT_AGENT_OLD_PYTHON; .ci/run does not install it)", False,
     (r"\bPython 3\.9\b", r"\bEDGEKIT_AGENT_OLD_PYTHON\b")),
)
CI_COMMAND = "sudo bash .ci/run"
CI_STEPS = (  # what .ci/run does, in its order
    "  apt-get install openssh-server qemu-user-static binfmt-support debootstrap chromium faketime nftables iproute2",
    "  (each only where missing), enables binfmt_misc for qemu-aarch64, then runs scripts/setup, scripts/check and",
    "  the tests as root, where anything still missing fails instead of skipping.",
)
_MODULE = re.compile(r"^could not import '([^']+)'")


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The reason a skipped test (or module) gives, without pytest's ``Skipped: `` prefix."""
    longrepr = report.longrepr
    reason = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr or "")
    return reason.removeprefix("Skipped: ").strip()


def skip_summary(reasons: list[str]) -> list[str]:
    """Lines saying what the skips need, a group per line ("N skipped: need ..."), and the command that
    installs it; no lines when nothing was skipped. A reason naming several needs counts once, under all of
    them together. Reasons that match no known need are shown as they are."""
    groups: Counter[tuple[int, ...]] = Counter()
    modules: dict[str, int] = {}
    other: Counter[str] = Counter()
    for reason in reasons:
        needs = tuple(i for i, (_, _, pats) in enumerate(SKIP_NEEDS) if any(re.search(p, reason) for p in pats))
        module = _MODULE.match(reason)
        if needs:
            groups[needs] += 1
        elif module:
            modules[module.group(1)] = modules.get(module.group(1), 0) + 1
        else:
            other[" ".join(reason.split())[:150] or "(no reason given)"] += 1
    rows = [(n, "need " + " + ".join(SKIP_NEEDS[i][0] for i in key)) for key, n in sorted(groups.items())]
    if modules:
        rows.append((sum(modules.values()), f"need Python packages not in this venv: {', '.join(sorted(modules))}"))
    rows += [(n, reason) for reason, n in other.most_common()]
    if not rows:
        return []
    width = len(str(max(n for n, _ in rows)))
    lines = [f"{n:>{width}} skipped: {what}" for n, what in rows]
    if any(SKIP_NEEDS[i][1] for key in groups for i in key):
        lines += [f"One command installs what .ci/run can and runs every test as CI does: {CI_COMMAND}", *CI_STEPS]
    return lines


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    skipped = terminalreporter.stats.get("skipped", [])
    lines = skip_summary([skip_reason(r) for r in skipped])
    if lines:
        terminalreporter.section("what the skipped tests need", sep="=")
        for line in lines:
            terminalreporter.line(line)
