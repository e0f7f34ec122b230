"""The closing summary of a test run (tests/conftest.py): skipped tests grouped by what they need, and the one
command that installs it; nothing extra when nothing was skipped."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from edgekit.testing import _arm64, _netns
from edgekit.testing.pytest_plugin import SSHD_MISSING

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"


def _conftest() -> ModuleType:
    """The repo's tests/conftest.py as a module of its own name (``conftest`` is ambiguous in sys.modules)."""
    spec = importlib.util.spec_from_file_location("edgekit_tests_conftest", CONFTEST)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The reasons as the fixtures and tests give them on a machine that has none of it.
ARM64 = (f"cannot run an emulated arm64 device: debootstrap not found; no enabled qemu-aarch64 handler in "
         f"/proc/sys/fs/binfmt_misc (binfmt_misc mounted: False). Set-up: {_arm64.SETUP_HINT}")
NETNS_NOT_ROOT = f"network-namespace test devices need root ({_netns.SETUP_HINT})"
NETNS_NO_NFT = f"'nft' not found: {_netns.SETUP_HINT}"
CHROMIUM = "chromium not installed: apt-get install -y chromium"
PY39 = ("device env 'pi-bullseye' needs Python 3.9, which is not installed here (apt-get install python3.9, or "
        "pyenv install 3.9)")
FAULTS = ("faketime not installed: apt-get install -y faketime (.ci/run does this); readonly workdir: cannot mount "
          "a tmpfs workdir here (root needed): mount: permission denied")


def test_skips_are_grouped_by_what_they_need_with_the_command_that_installs_it() -> None:
    reasons = [SSHD_MISSING] * 12 + ["sshd not installed: apt-get install -y openssh-server"] + [ARM64] * 3 \
        + [NETNS_NOT_ROOT] * 9 + [NETNS_NO_NFT] + [CHROMIUM] * 2 + [PY39] * 2 + [FAULTS] \
        + ["could not import 'mlflow': No module named 'mlflow'"] \
        + ["running as root: chmod 000 does not stop root from reading"]
    lines = _conftest().skip_summary(reasons)
    assert lines == [
        "13 skipped: need sshd (openssh-server)",
        " 3 skipped: need arm64 emulation (root, qemu-user-static, binfmt_misc, debootstrap)",
        " 2 skipped: need Chromium (headless)",
        "10 skipped: need network namespaces (root with CAP_NET_ADMIN, iproute2, nftables)",
        " 1 skipped: need faketime + root (to mount tmpfs workdirs)",
        " 2 skipped: need Python 3.9 (apt-get install python3.9, or set EDGEKIT_AGENT_OLD_PYTHON; .ci/run does "
        "not install it)",
        " 1 skipped: need Python packages not in this venv: mlflow",
        " 1 skipped: running as root: chmod 000 does not stop root from reading",
        "One command installs what .ci/run can and runs every test as CI does: sudo bash .ci/run",
        "  apt-get install openssh-server qemu-user-static binfmt-support debootstrap chromium faketime nftables "
        "iproute2",
        *lines[-2:],
    ]
    assert "binfmt_misc for qemu-aarch64" in lines[-2] and "as root" in lines[-1]


def test_nothing_skipped_says_nothing_and_no_install_line_when_ci_would_not_help() -> None:
    summary = _conftest().skip_summary
    assert summary([]) == []
    assert summary([PY39, "some other reason"]) == [
        "1 skipped: need Python 3.9 (apt-get install python3.9, or set EDGEKIT_AGENT_OLD_PYTHON; .ci/run does "
        "not install it)",
        "1 skipped: some other reason",
    ]


def test_ci_run_installs_what_the_summary_says_it_does() -> None:
    ci = (CONFTEST.parents[1] / ".ci" / "run").read_text()
    steps = _conftest().CI_STEPS
    packages = steps[0].split("apt-get install", 1)[1].split()
    assert len(packages) == 8 and all(f" {p}" in ci for p in packages), packages
    for step in ("update-binfmts --enable qemu-aarch64", "bash scripts/setup", "bash scripts/check",
                 "bash scripts/test", "EDGEKIT_REQUIRE_SSHD=1", "EDGEKIT_REQUIRE_ARM64=1",
                 "EDGEKIT_REQUIRE_BROWSER=1", "EDGEKIT_REQUIRE_NETNS=1"):
        assert step in ci


def test_a_real_run_prints_the_groups_at_the_end(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(f"""
        import pytest

        def test_ok():
            pass

        @pytest.mark.parametrize("i", range(2))
        def test_ssh(i):
            pytest.skip({SSHD_MISSING!r})

        def test_browser():
            pytest.skip({CHROMIUM!r})

        @pytest.mark.skipif(True, reason="a reason nobody knows")
        def test_other():
            pass
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=1, skipped=4)
    result.stdout.fnmatch_lines([
        "*= what the skipped tests need =*",
        "2 skipped: need sshd (openssh-server)",
        "1 skipped: need Chromium (headless)",
        "1 skipped: a reason nobody knows",
        "One command installs what .ci/run can and runs every test as CI does: sudo bash .ci/run",
        "  apt-get install openssh-server *",
    ])


def test_a_run_without_skips_prints_nothing_extra(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile("def test_ok():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=1)
    assert "skipped" not in result.stdout.str() and ".ci/run" not in result.stdout.str()
