"""The agent's measuring lock (``agent/devlock.py``) with real flocks across processes, and the cluster's
settings: gateway syntax in devices.yaml, FleetConfig's address, a bundle refusing changed bytes."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgekit.agent.devlock import DeviceBusy, measuring_window
from edgekit.errors import ClusterError, ConfigError

HOLD = ("import sys, time\nsys.path.insert(0, sys.argv[3])\nfrom edgekit.agent.devlock import measuring_window\n"
        "with measuring_window(sys.argv[1], 5, 'the holder run'):\n    print('held', flush=True)\n"
        "    time.sleep(float(sys.argv[2]))\n")


def _hold(lock: Path, seconds: float) -> subprocess.Popen[str]:
    root = str(Path(__file__).resolve().parents[2])
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock), str(seconds), root], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_held_lock_times_out_naming_its_holder(tmp_path: Path) -> None:
    lock = tmp_path / "measure.lock"
    holder = _hold(lock, 30)
    try:
        started = time.monotonic()
        with pytest.raises(DeviceBusy) as err:
            with measuring_window(str(lock), 0.5):
                pass
        assert 0.5 <= time.monotonic() - started < 5
        text = str(err.value)
        assert f"pid {holder.pid}" in text and "the holder run" in text and "lock_timeout" in text
    finally:
        holder.kill()
        holder.wait()
    with measuring_window(str(lock), 0.5) as window:  # the kernel dropped the dead holder's lock
        pass
    assert window["lock_wait_s"] < 0.5 and window["start_unix"] <= window["end_unix"]


def test_a_lock_freed_while_waiting_is_taken_and_the_wait_reported(tmp_path: Path) -> None:
    lock = tmp_path / "measure.lock"
    holder = _hold(lock, 1.0)
    with measuring_window(str(lock), 30) as window:
        assert holder.poll() is not None or window["lock_wait_s"] > 0
    holder.wait()
    assert 0.5 < window["lock_wait_s"] < 30


def test_windows_in_one_process_never_overlap(tmp_path: Path) -> None:
    lock = str(tmp_path / "measure.lock")
    spans: list[tuple[float, float]] = []

    def measure() -> None:
        with measuring_window(lock, 30) as w:
            time.sleep(0.2)
        spans.append((w["start_unix"], w["end_unix"]))

    threads = [threading.Thread(target=measure) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spans.sort()
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans


def test_no_lock_path_measures_unlocked_and_says_so() -> None:
    with measuring_window(None, 1) as window:
        pass
    assert window["lock"] is None and window["start_unix"] is not None


def test_gateway_syntax_is_checked_where_devices_yaml_says_it(tmp_path: Path) -> None:
    from edgekit.config.device import load_devices

    ok = tmp_path / "ok.yaml"
    ok.write_text("devices:\n  - {name: a, kind: ssh, host: h, gateway: lab=b}\n  - {name: b, kind: ssh, host: h, "
                  "gateway: lab-gpu}\n")
    assert [d.gateway for d in load_devices(ok).values()] == [None, "lab=b", "lab-gpu"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("devices:\n  - {name: a, kind: ssh, host: h, gateway: 'lab b'}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*gateway"):
        load_devices(bad)


def test_fleet_config_checks_the_cluster_address() -> None:
    from edgekit.config.bench import FleetConfig

    assert FleetConfig(cluster="10.0.0.5:6379").cluster == "10.0.0.5:6379"
    with pytest.raises(ConfigError, match="HOST:PORT"):
        FleetConfig(cluster="10.0.0.5")
    with pytest.raises(ConfigError, match="build_cpus"):
        FleetConfig(build_cpus=0)


def test_a_resumed_run_keeps_its_cluster_unless_another_is_named() -> None:
    from edgekit.config.bench import BenchRequest, FleetConfig

    stored = BenchRequest(model="digits-cnn", fleet=FleetConfig(cluster="10.0.0.5:6379")).record(["a"])
    assert BenchRequest().resumed(stored, "r").fleet_config.cluster == "10.0.0.5:6379"
    assert BenchRequest(fleet=FleetConfig(parallel=2)).resumed(stored, "r").fleet_config.cluster == "10.0.0.5:6379"
    named = BenchRequest(fleet=FleetConfig(cluster="10.0.0.6:6379")).resumed(stored, "r")
    assert named.fleet_config.cluster == "10.0.0.6:6379"


def test_a_bundle_refuses_bytes_that_are_not_the_ones_that_passed(tmp_path: Path) -> None:
    from edgekit.cluster.bundle import pack, unpack
    from edgekit.exporters.base import Artifact

    (tmp_path / "src").mkdir()
    model, inputs = tmp_path / "src" / "m.onnx", tmp_path / "src" / "inputs.npz"
    model.write_bytes(b"model bytes")
    inputs.write_bytes(b"inputs")
    art = Artifact(model="m", profile="x86", target="onnx", format="onnx", precision="fp32", threads=1, path=model,
                   files=[model], inputs=inputs)
    bundle = pack([art], tmp_path / "src")
    (back,) = unpack(bundle, tmp_path / "dest")
    assert back.path == tmp_path / "dest" / "m.onnx" and back.path.read_bytes() == b"model bytes"
    assert bundle["sha256"]["m.onnx"] == hashlib.sha256(b"model bytes").hexdigest()
    bundle["files"]["m.onnx"] = b"model bytez"
    with pytest.raises(ClusterError, match="m.onnx arrived with another sha256"):
        unpack(bundle, tmp_path / "other")
    assert not (tmp_path / "other").exists()
