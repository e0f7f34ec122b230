"""The emulated arm64 device's pieces that need no emulator: finding the mirror, telling emulation apart,
mapping host paths to device paths. (The device itself: tests/integration/test_arm64.py.)"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from edgekit.agent.device_info import cpu_emulation
from edgekit.testing._arm64 import arm64_unavailable, debian_mirror
from edgekit.testing._sshd import TestDevice

X86_CPUINFO = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\nflags\t\t: fpu vme sse2\n"
PI4_CPUINFO = ("processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
               "CPU implementer\t: 0x41\nCPU part\t: 0xd08\n\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n")


def _apt(tmp_path: Path, sources_list: str = "", **d: str) -> Path:
    (tmp_path / "sources.list.d").mkdir(parents=True)
    (tmp_path / "sources.list").write_text(sources_list)
    for name, text in d.items():
        (tmp_path / "sources.list.d" / name.replace("_", ".")).write_text(text)
    return tmp_path


def test_mirror_comes_from_deb822_sources_skipping_security_and_disabled(tmp_path: Path) -> None:
    apt = _apt(tmp_path, debian_sources=(
        "Types: deb\nURIs: http://security.debian.org/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\n"
        "Types: deb\nEnabled: no\nURIs: http://off.example/debian\nSuites: bookworm\n\n"
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main\n"))
    assert debian_mirror(apt) == "http://mirror.example/debian"


def test_mirror_from_a_one_line_sources_list_with_options(tmp_path: Path) -> None:
    apt = _apt(tmp_path, "# deb http://old.example/debian bookworm main\n"
                         "deb [arch=amd64 signed-by=/k.gpg] http://ftp.example.org/debian bookworm main\n")
    assert debian_mirror(apt) == "http://ftp.example.org/debian"


def test_mirror_defaults_to_deb_debian_org(tmp_path: Path) -> None:
    assert debian_mirror(_apt(tmp_path, "deb https://packages.example.com/apt stable main\n")) == \
        "http://deb.debian.org/debian"


def test_the_system_mirror_is_found_here() -> None:
    assert debian_mirror().startswith(("http://", "https://"))


def _exe_link(tmp_path: Path, target: str) -> str:
    link = tmp_path / "exe"
    link.symlink_to(target)
    return str(link)


def test_qemu_user_is_told_by_the_kernels_exe_and_the_hosts_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(X86_CPUINFO)
    found = cpu_emulation("aarch64", str(cpuinfo), _exe_link(tmp_path, "/usr/bin/qemu-aarch64-static"))
    assert found["emulated"] and found["emulator"] == "/usr/bin/qemu-aarch64-static"
    assert len(found["evidence"]) == 2 and "AuthenticAMD" in found["evidence"][1]
    # Either tell alone is enough (a qemu that fakes /proc/cpuinfo still shows in the exe link).
    cpuinfo.write_text(PI4_CPUINFO)
    (tmp_path / "other").mkdir()
    assert cpu_emulation("aarch64", str(cpuinfo), _exe_link(tmp_path / "other", "/usr/bin/qemu-aarch64"))["emulated"]


def test_a_real_pi_and_a_real_x86_host_are_not_emulated(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(PI4_CPUINFO)
    assert not cpu_emulation("aarch64", str(cpuinfo), _exe_link(tmp_path, "/usr/bin/python3.11"))["emulated"]
    cpuinfo.write_text(X86_CPUINFO)
    assert not cpu_emulation("x86_64", str(cpuinfo), str(tmp_path / "exe"))["emulated"]


def test_this_host_is_not_emulated() -> None:
    assert cpu_emulation() == {"emulated": False, "emulator": None, "evidence": []}


def test_device_paths_map_the_host_folder_into_the_chroot(tmp_path: Path) -> None:
    dev = TestDevice(name="pi", host="127.0.0.1", port=1, user="root", identity_file=tmp_path / "id",
                     known_hosts=tmp_path / "kh", workdir=tmp_path / "workdir", python="/opt/v/bin/python",
                     root=tmp_path, process=None, device_root="/srv/edgekit/pi-1")  # type: ignore[arg-type]
    assert dev.device_path(tmp_path / "workdir" / "a b") == "/srv/edgekit/pi-1/workdir/a b"
    assert dev.device_path(tmp_path) == "/srv/edgekit/pi-1"
    entry = dev.entry()
    assert entry["workdir"] == "/srv/edgekit/pi-1/workdir" and entry["identity_file"] == str(tmp_path / "id")
    assert dev.scp_argv("f", "x.bin")[-1] == "root@127.0.0.1:/srv/edgekit/pi-1/workdir/x.bin"


def test_prerequisites_are_reported_not_assumed() -> None:
    reason = arm64_unavailable()
    binfmt = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
    ready = os.geteuid() == 0 and binfmt.exists() and binfmt.read_text().startswith("enabled") and \
        subprocess.run(["sh", "-c", "command -v debootstrap"], capture_output=True, timeout=10).returncode == 0
    assert (reason is None) == ready, reason
    if reason:
        assert "update-binfmts --enable qemu-aarch64" in reason


def test_rows_from_an_emulated_device_are_marked_and_carry_no_energy() -> None:
    from edgekit.results.rows import EMULATED_NOTE, mark_emulated

    measured = {"latency_ms_p50": 2.0, "noisy": False, "noisy_reasons": [], "energy_mj_per_inference": 3.0,
                "energy_status": "estimated", "energy_source": "power-model"}
    row = mark_emulated(dict(measured), True)
    assert row["emulated"] is True and row["noisy"] is True and row["noisy_reasons"] == [EMULATED_NOTE]
    assert row["energy_mj_per_inference"] is None and row["energy_status"] == f"unavailable: {EMULATED_NOTE}"
    assert mark_emulated(dict(measured), False) == {**measured, "emulated": False}
    missing = mark_emulated({"latency_ms_p50": None, "error": "runtime missing"}, True)
    assert missing["emulated"] is True and "noisy" not in missing  # nothing was timed


def test_devices_check_warns_that_an_emulated_cpu_is_no_timing_reference() -> None:
    from edgekit.device.check import DeviceCheck, _judge
    from edgekit.config.profile import load_profile

    info = {"machine": "aarch64", "cores": 2, "numpy": "1.26.4", "python_executable": "/opt/v/bin/python",
            "emulated": True, "emulation": {"emulated": True, "evidence": ["qemu-aarch64-static runs it"]},
            "runtimes": {"tflite": {"package": "tflite-runtime", "version": "2.14.0"},
                         "onnx": {"package": "onnxruntime", "version": "1.27.0"},
                         "executorch": {"package": None, "error": "No module named 'torch'"}},
            "energy": {"available": False, "reason": "none"}}
    check = DeviceCheck("pi", "ssh", "pi4", info)
    _judge(check, load_profile("pi4"))
    assert check.runnable_targets == ["tflite", "onnx"]
    assert check.warnings[0].startswith("the CPU is emulated (qemu-aarch64-static runs it)")
    assert not any("is for arm64 but the device is" in w for w in check.warnings)
