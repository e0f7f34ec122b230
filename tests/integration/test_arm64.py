"""The pi4 profile's artifacts on a real arm64 CPU -- emulated by qemu-user -- over a real sshd.

The device is a Debian bookworm arm64 root filesystem (debootstrap, cached between runs) whose own aarch64
``sshd`` runs under ``chroot``; its venv has the Raspberry Pi's usual runtimes (tflite-runtime 2.14 with numpy
1.x, onnxruntime 1.27: later releases segfault on import under qemu). Nothing is mocked: the agent, numpy and
the runtimes' aarch64 wheels run as aarch64 code. Latency from it is meaningless, and the rows say so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import edgekit
from edgekit.config.bench import BenchConfig
from edgekit.results.rows import EMULATED_NOTE
from edgekit.testing import TestDevice, arm64_root, write_devices_file
from edgekit.testing._arm64 import PIP_REQUIREMENTS, build_info, mounts_under

pytestmark = [pytest.mark.arm64, pytest.mark.ssh, pytest.mark.slow]

QUICK = BenchConfig(warmup_iterations=2, warmup_seconds=0, min_iterations=10, min_seconds=0.05, threads=1)
EDGEKIT = [str(Path(sys.executable).with_name("edgekit"))]
T = 120  # seconds: bound on each command run on the emulated device (python startup alone is ~1 s there)
ONNXRUNTIME = next(r.split("==")[1] for r in PIP_REQUIREMENTS if r.startswith("onnxruntime=="))


@pytest.fixture(scope="module")
def pi(arm64_session_factory) -> TestDevice:
    """One emulated Pi for the module; the first run of all builds its root filesystem (6-10 min), later ones
    reuse it."""
    start = time.monotonic()
    dev = arm64_session_factory("pi", profile="pi4")
    print(f"\nemulated arm64 device up in {time.monotonic() - start:.1f} s "
          f"(root build steps, when it was built: {build_info(arm64_root())['build_seconds']})")
    return dev


@pytest.fixture
def devices_yaml(tmp_path: Path, pi: TestDevice) -> Path:
    return write_devices_file(tmp_path / "devices.yaml", [pi])


def _ssh(dev: TestDevice, *command: str) -> str:
    out = subprocess.run(dev.ssh_argv(*command), capture_output=True, text=True, timeout=T)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_device_is_aarch64_over_ssh_and_its_root_is_built_once(pi: TestDevice) -> None:
    assert _ssh(pi, "uname", "-m").strip() == "aarch64"
    assert _ssh(pi, pi.python, "-c", "'import platform; print(platform.machine())'").strip() == "aarch64"
    # The device sees its own paths: the workdir it is given is inside its root, and it is the host's folder.
    entry = pi.entry()
    assert entry["workdir"].startswith("/srv/edgekit/pi-") and entry["python"] == "/opt/edgekit-venv/bin/python"
    _ssh(pi, "sh", "-c", f"'echo from-the-device > {entry['workdir']}/hello'")
    assert (pi.workdir / "hello").read_text() == "from-the-device\n"
    # Cached: asking again is a lookup, not a build.
    start = time.monotonic()
    root = arm64_root()
    assert time.monotonic() - start < 1.0
    info = build_info(root)
    assert info["arch"] == "arm64" and info["pip"] == PIP_REQUIREMENTS
    assert {"debootstrap", "apt-get install", "pip install"} <= set(info["build_seconds"])


def test_its_mounts_live_in_its_own_namespace_and_stop_ends_them_with_every_session(arm64_device_factory) -> None:
    root = arm64_root()
    assert mounts_under(root) == []  # the host's mount table never sees the device's mounts
    dev = arm64_device_factory("short")
    device_dir = root / dev.entry()["workdir"].lstrip("/")
    inside = Path(f"/proc/{dev.process.pid}/mountinfo").read_text()  # paths as sshd sees them, in its chroot
    for point in ("/proc", "/sys", "/dev/pts", dev.entry()["workdir"].rsplit("/", 1)[0]):
        assert f" {point} " in inside, point  # the device's namespace has them, the host does not
    assert mounts_under(root) == []
    client = subprocess.Popen(dev.ssh_argv("sleep", "303"), stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + T
        while time.monotonic() < deadline and not any(b"303" in _cmdline(p) for p in dev.descendants()):
            time.sleep(0.2)
        sessions = dev.descendants()
        assert sessions
        dev.stop()
        assert all(_gone(p) for p in sessions) and dev.process.poll() is not None  # the namespace is gone
        assert client.wait(timeout=T) != 0
    finally:
        client.kill()
        client.wait(timeout=T)
    assert mounts_under(root) == [] and not device_dir.parent.exists()
    assert dev.identity_file.exists() and dev.workdir.is_dir()  # the host-side folder stays, for the caller
    dev.stop()  # idempotent


def test_devices_check_says_aarch64_emulated_and_lists_the_runtimes(pi: TestDevice, devices_yaml: Path) -> None:
    out = subprocess.run([*EDGEKIT, "devices", "check", "pi", "--devices-file", str(devices_yaml), "--json"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 1, out.stderr  # pi4 also wants executorch, which the emulated Pi does not have
    report = json.loads(out.stdout)
    info = report["info"]
    assert info["machine"] == "aarch64" and info["emulated"] is True
    assert "qemu" in (info["emulation"]["emulator"] or "") and info["emulation"]["evidence"]
    assert info["numpy"].startswith("1.") and info["python"].startswith("3.11.")
    assert info["runtimes"]["tflite"] == {"package": "tflite-runtime", "version": "2.14.0", "error": None}
    assert info["runtimes"]["onnx"] == {"package": "onnxruntime", "version": ONNXRUNTIME, "error": None}
    assert info["runtimes"]["executorch"]["package"] is None
    assert report["runnable_targets"] == ["tflite", "onnx"]
    assert any(w.startswith("the CPU is emulated") and "meaningless" in w for w in report["warnings"])
    assert not any("is for arm64 but the device is" in w for w in report["warnings"])  # the arch is right
    out = subprocess.run([*EDGEKIT, "devices", "check", "pi", "--devices-file", str(devices_yaml)],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200"})
    assert "aarch64 (emulated: qemu-user)" in out.stdout and "warning: the CPU is emulated" in out.stdout
    assert "tflite-runtime 2.14.0" in out.stdout and f"onnxruntime {ONNXRUNTIME}" in out.stdout


def test_pi4_artifacts_run_on_the_emulated_arm_cpu_with_host_accuracy(pi: TestDevice, devices_yaml: Path,
                                                                      digits_artifacts: Any) -> None:
    """What `edgekit deploy --device pi --profile pi4 --threads 1` measures, on the session's pi4 artifacts."""
    arts = digits_artifacts("pi4")
    start = time.monotonic()
    df = edgekit.benchmark(arts, "pi", QUICK, devices_file=devices_yaml)
    print(f"\nbenchmark of {len(arts)} pi4 artifacts on the emulated device: {time.monotonic() - start:.1f} s")
    rows = {(r["target"], r["precision"]): r for r in df.to_dict(orient="records")}
    assert df["emulated"].tolist() == [True] * len(df)
    for prec in ("fp32", "int8"):
        tfl, onnx = rows[("tflite", prec)], rows[("onnx", prec)]
        assert tfl["error"] is None and onnx["error"] is None, (tfl["error"], onnx["error"])
        assert (tfl["runtime"], tfl["runtime_version"]) == ("tflite-runtime", "2.14.0")
        assert (onnx["runtime"], onnx["runtime_version"]) == ("onnxruntime", ONNXRUNTIME)
        for row in (tfl, onnx):
            assert row["machine"] == "aarch64" and row["latency_ms_p50"] > 0 and row["device_eval_samples"] == 360
            assert row["noisy"] and EMULATED_NOTE in row["noisy_reasons"]  # timings flagged as meaningless
            assert pd.isna(row["energy_mj_per_inference"]) and row["energy_status"].startswith("unavailable: emul")
        # Accuracy scored on the ARM CPU equals the host's for the same artifact (tflite: bit-identical kernels'
        # decisions on all 360 held-out digits).
        assert tfl["device_accuracy"] == tfl["accuracy"], (prec, tfl["device_accuracy"], tfl["accuracy"])
        assert abs(onnx["device_accuracy"] - onnx["accuracy"]) <= 1 / 360 + 1e-9, (prec, onnx)
    for prec in ("fp32", "int8"):
        assert rows[("executorch", prec)]["error"].startswith("runtime missing on device 'pi'")
        assert pd.isna(rows[("executorch", prec)]["latency_ms_p50"])
    assert df["recommended"].sum() == 1


def test_outputs_computed_on_the_arm_cpu_match_the_pytorch_reference(pi: TestDevice, devices_yaml: Path,
                                                                     digits_artifacts: Any, tmp_path: Path) -> None:
    """Parity on the device itself: the agent's own runner, on the ARM CPU, against PyTorch fp32 on the host,
    with the target's tolerance (the same check export does on the host)."""
    from edgekit.config.target import load_target
    from edgekit.exporters.parity import compare

    arts = [a for a in digits_artifacts("pi4") if a.format in ("tflite", "onnx")]
    edgekit.benchmark(arts, "pi", QUICK, devices_file=devices_yaml)  # stages agent + artifacts (no-op if there)
    cm = edgekit.compress("digits-cnn", "pi4")
    samples = [s if isinstance(s, tuple) else (s,) for s in cm.parity_inputs()]
    reference = cm.reference_outputs()
    batch = np.concatenate([s[0].numpy() for s in samples])
    np.save(pi.workdir / "parity_inputs.npy", batch)  # the workdir is the device's folder, seen from the host
    agent = next(pi.workdir.glob("store/*/edgekit-agent-*.pyz"))
    for art in arts:
        staged = next(p for p in pi.workdir.glob(f"store/*/*{art.path.suffix}")
                      if p.read_bytes() == art.path.read_bytes())
        script = ("import sys, numpy as np; sys.path.insert(0, sys.argv[1]); "
                  "from edgekit_agent.runtimes import load_runner; r = load_runner(sys.argv[2], sys.argv[3], 1); "
                  "x = np.load(sys.argv[4]); "
                  "np.save(sys.argv[5], np.stack([r.run([x[i:i + 1]])[0] for i in range(len(x))]))")
        out_name = f"parity-{art.target}-{art.precision}.npy"
        _ssh(pi, pi.python, "-c", f'"{script}"', pi.device_path(agent), art.format, pi.device_path(staged),
             pi.device_path(pi.workdir / "parity_inputs.npy"), pi.device_path(pi.workdir / out_name))
        actual = [[o] for o in np.load(pi.workdir / out_name)]
        result = compare(reference, actual, load_target(art.target).tolerance_for(art.precision))
        assert result.ok, (art.target, art.precision, result.failures)
        assert result.top1_agreement >= art.parity.top1_agreement - 1 / len(samples)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return True
