"""Devices over SSH, end to end, against real OpenSSH sshd test devices on loopback.

Each test device is a real ``sshd`` (edgekit.testing) with its own host key, client key and workdir, and a
real device-side Python: ``pi-like`` has only tflite-runtime + numpy<2 (the classic Raspberry Pi set-up),
``onnx-only`` only onnxruntime, ``host`` this venv (executorch, onnxruntime, ai-edge-litert), ``bare`` no
numpy at all. Nothing is mocked.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import edgekit
from edgekit.config.bench import BenchConfig
from edgekit.errors import DeviceError
from edgekit.testing import TestDevice, write_devices_file

pytestmark = [pytest.mark.ssh, pytest.mark.slow]

QUICK = BenchConfig(warmup_iterations=2, warmup_seconds=0, min_iterations=10, min_seconds=0.05, threads=1)
EDGEKIT = [str(Path(os.sys.executable).with_name("edgekit"))]


@pytest.fixture(scope="module")
def pi4_artifacts(digits_artifacts: Any) -> list[Any]:
    """digits-cnn for the pi4 profile, all three targets x fp32/int8."""
    return digits_artifacts("pi4")


@pytest.fixture
def devices_yaml(tmp_path: Path):
    def write(*devices: TestDevice | dict[str, Any]) -> Path:
        return write_devices_file(tmp_path / "devices.yaml", list(devices))
    return write


def _by_target(df: pd.DataFrame) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["target"], r["precision"]): r for r in df.to_dict(orient="records")}


def _store_groups(dev: TestDevice) -> list[Path]:
    store = dev.workdir / "store"
    return sorted(p for p in store.iterdir() if not p.name.startswith(".")) if store.is_dir() else []


# ---- the three device-side environments the issue names ------------------------------------------------


def test_pi_like_device_runs_tflite_with_numpy_1_and_reports_the_rest_missing(
        sshd_device_factory, isolated_ssh_env, devices_yaml, pi4_artifacts) -> None:
    dev = sshd_device_factory("pi-like", env="pi-like", profile="pi4")
    df = edgekit.benchmark(pi4_artifacts, "pi-like", QUICK, devices_file=devices_yaml(dev))
    rows = _by_target(df)
    for prec in ("fp32", "int8"):
        row = rows[("tflite", prec)]
        assert row["error"] is None, row["error"]
        assert row["runtime"] == "tflite-runtime" and row["runtime_version"] == "2.14.0"
        assert row["latency_ms_p50"] > 0 and row["iterations"] >= 10 and row["device"] == "pi-like"
    for target in ("executorch", "onnx"):
        for prec in ("fp32", "int8"):
            err = rows[(target, prec)]["error"]
            assert err.startswith("runtime missing on device 'pi-like'")
            assert pd.isna(rows[(target, prec)]["latency_ms_p50"])
    assert df.iloc[0]["target"] == "tflite" and df.iloc[0]["recommended"]
    # Accuracy computed on the device by tflite-runtime, on the eval set pushed with the artifact.
    for prec in ("fp32", "int8"):
        row = rows[("tflite", prec)]
        assert row["device_eval_samples"] == 360 and row["device_accuracy"] == pytest.approx(row["accuracy"])
    # Artifacts for missing runtimes are never sent: only the agent, the inputs, the eval set and two tflite files.
    assert len(_store_groups(dev)) == 5


def test_the_agent_runs_on_python_3_9_as_on_raspberry_pi_os_bullseye(
        sshd_device_factory, isolated_ssh_env, devices_yaml, pi4_artifacts) -> None:
    """The oldest Python the agent supports, for real (not only parsed): 3.9 + tflite-runtime + numpy 1.x."""
    dev = sshd_device_factory("bullseye", env="pi-bullseye", profile="pi4")
    tfl = [a for a in pi4_artifacts if a.target == "tflite"]
    df = edgekit.benchmark(tfl, "bullseye", QUICK, devices_file=devices_yaml(dev))
    assert df["error"].isna().all(), df["error"].tolist()
    assert set(df["python_version"].str[:4]) == {"3.9."} and set(df["runtime"]) == {"tflite-runtime"}
    assert (df["device_accuracy"] == df["accuracy"]).all() and df["peak_rss_mb_steady"].notna().all()


def test_onnx_only_device(sshd_device_factory, isolated_ssh_env, devices_yaml, pi4_artifacts) -> None:
    dev = sshd_device_factory("onnx-box", env="onnx-only", profile="pi4")
    df = edgekit.benchmark(pi4_artifacts, "onnx-box", QUICK, devices_file=devices_yaml(dev))
    measured = df[df["error"].isna()]
    assert sorted(measured["target"]) == ["onnx", "onnx"] and set(measured["runtime"]) == {"onnxruntime"}
    assert df[df["error"].notna()]["error"].str.contains("runtime missing on device 'onnx-box'").all()


def test_deploy_over_ssh_from_the_cli_matches_local_rows(sshd_device_factory, isolated_ssh_env, devices_yaml,
                                                          tmp_path: Path) -> None:
    """`edgekit deploy --device NAME` on a device with executorch + onnxruntime: every artifact measured."""
    dev = sshd_device_factory("et-box", env="host", profile="pi4")
    proc = subprocess.run(
        [*EDGEKIT, "deploy", "--device", "et-box", "--model", "digits-cnn", "--devices-file", str(devices_yaml(dev)),
         "--threads", "1", "--min-iterations", "10", "--min-seconds", "0.05", "--out-dir", str(tmp_path / "a"),
         "--json"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout)
    assert len(rows) == 6 and {r["device"] for r in rows} == {"et-box"} and {r["profile"] for r in rows} == {"pi4"}
    assert all(r["error"] is None and r["parity_ok"] and r["latency_ms_p50"] > 0 for r in rows), rows
    assert {r["runtime"] for r in rows} == {"executorch", "onnxruntime", "ai-edge-litert"}
    assert sum(r["recommended"] for r in rows) == 1
    # Each artifact ran from the device's content-addressed store, not from the host's folder.
    assert len(_store_groups(dev)) == 1 + 2 + 6  # agent, inputs + eval set, artifacts


def test_python_api_deploy_on_a_pi_like_device(sshd_device_factory, isolated_ssh_env, devices_yaml,
                                                tmp_path: Path) -> None:
    dev = sshd_device_factory("pi", env="pi-like", profile="pi4")
    df = edgekit.deploy("digits-cnn", device="pi", targets=["tflite"], config=QUICK,
                        devices_file=devices_yaml(dev), out_dir=tmp_path)
    assert list(df["device"].unique()) == ["pi"] and df["error"].isna().all(), df["error"].tolist()
    assert set(df["runtime"]) == {"tflite-runtime"} and df["recommended"].sum() == 1


# ---- push -------------------------------------------------------------------------------------------


def test_push_is_content_addressed_verified_and_never_resent(sshd_device_factory, isolated_ssh_env,
                                                            tmp_path: Path) -> None:
    from edgekit.transport import open_transport

    dev = sshd_device_factory("store")
    blob = tmp_path / "model.bin"
    blob.write_bytes(os.urandom(3 * 1024 * 1024))
    side = tmp_path / "model.bin.data"
    side.write_bytes(b"sidecar")
    device = edgekit.SshDevice(**dev.entry())
    with open_transport(device) as t:
        remote = t.stage([blob, side])
        assert t.stats.bytes_sent == blob.stat().st_size + 7 and t.stats.files_skipped == 0
        assert Path(remote[0]).read_bytes() == blob.read_bytes()
        assert Path(remote[0]).parent == Path(remote[1]).parent  # sidecar beside its model, original names
    with open_transport(device) as t:  # a new connection, as on the next deploy
        assert t.stage([blob, side]) == remote
        assert t.stats.bytes_sent == 0 and t.stats.files_skipped == 2
    leftovers = [p.name for p in (dev.workdir / "store").iterdir() if p.name.startswith(".tmp")]
    assert leftovers == []


def test_a_transfer_that_does_not_hash_right_is_never_published(sshd_device_factory, isolated_ssh_env,
                                                               tmp_path: Path) -> None:
    from edgekit.transport.ssh import SshTransport

    dev = sshd_device_factory("verify")
    blob = tmp_path / "a.bin"
    blob.write_bytes(b"x" * 1000)
    with SshTransport(edgekit.SshDevice(**dev.entry())) as t:
        store = f"{t.workdir}/store"
        with pytest.raises(DeviceError, match=r"device 'verify': upload to .* failed: ValueError: a.bin: sha256 mismatch after transfer"):
            t._upload_group([blob], {"a.bin": "0" * 64}, store, f"{store}/final")
    assert not (dev.workdir / "store" / "final").exists()
    assert [p for p in (dev.workdir / "store").iterdir()] == []


def test_bytes_changed_on_the_device_after_upload_are_refused_before_running(
        sshd_device_factory, isolated_ssh_env, devices_yaml, pi4_artifacts) -> None:
    dev = sshd_device_factory("flip", env="host")
    tfl = [a for a in pi4_artifacts if a.target == "tflite"]
    path = devices_yaml(dev)
    assert edgekit.benchmark(tfl, "flip", QUICK, devices_file=path)["error"].isna().all()
    int8 = next(a for a in tfl if a.precision == "int8")
    victim = next(p for p in (dev.workdir / "store").glob("*/model.tflite") if p.read_bytes() == int8.path.read_bytes())
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    rows = _by_target(edgekit.benchmark(tfl, "flip", QUICK, devices_file=path))
    assert "HashMismatch" in rows[("tflite", "int8")]["error"] and "changed after upload" in rows[("tflite", "int8")]["error"]
    assert rows[("tflite", "fp32")]["error"] is None  # the other artifact is unaffected


# ---- host keys, keys, quoting ------------------------------------------------------------------------


def test_unknown_host_key_is_refused_with_the_fix_then_trusted_on_request(sshd_device_factory, isolated_ssh_env,
                                                                          tmp_path: Path) -> None:
    dev = sshd_device_factory("newbox")
    known = tmp_path / "known_hosts"
    entry = {**dev.entry(), "known_hosts": str(known)}
    with pytest.raises(DeviceError, match=r"device 'newbox': unknown host key for \[127.0.0.1\]:\d+ \(ssh-ed25519 "
                                          r"SHA256:.*ssh-keyscan -p \d+ 127.0.0.1 >> .*--trust-new-host"):
        edgekit.check_device(edgekit.SshDevice(**entry))
    assert not known.exists()
    check = edgekit.check_device(edgekit.SshDevice(**entry), trust_new_host=True)
    assert check.info["machine"] and f"[127.0.0.1]:{dev.port} ssh-ed25519 " in known.read_text()
    edgekit.check_device(edgekit.SshDevice(**entry))  # recorded: accepted from now on without the flag


def test_changed_host_key_is_refused(sshd_device_factory, isolated_ssh_env, tmp_path: Path) -> None:
    a, b = sshd_device_factory("a"), sshd_device_factory("b")
    known = tmp_path / "known_hosts"
    # b's key recorded under a's address: what a reinstalled device (or an impostor) looks like.
    known.write_text(b.known_hosts.read_text().replace(f"]:{b.port} ", f"]:{a.port} "))
    with pytest.raises(DeviceError, match=r"host key of \[127.0.0.1\]:\d+ CHANGED.*ssh-keygen -R"):
        edgekit.check_device(edgekit.SshDevice(**{**a.entry(), "known_hosts": str(known)}))


def test_wrong_key_is_refused_naming_the_device(sshd_device_factory, isolated_ssh_env) -> None:
    a, b = sshd_device_factory("a"), sshd_device_factory("b")
    with pytest.raises(DeviceError, match=r"device 'a': authentication failed for .*@127.0.0.1:\d+ with key .*"
                                          r"authorized_keys"):
        edgekit.check_device(edgekit.SshDevice(**{**a.entry(), "identity_file": str(b.identity_file)}))


def test_names_and_paths_with_shell_characters_stay_words(sshd_device_factory, isolated_ssh_env, devices_yaml,
                                                         tmp_path: Path, pi4_artifacts) -> None:
    marker = tmp_path / "pwned"
    name = f"pi 4'; touch {marker}; echo \"$(touch {marker})\""
    dev = sshd_device_factory("quoted")
    workdir = tmp_path / f"work dir; touch {marker} $(touch {marker}) 'q'"
    entry = {**dev.entry(), "name": name, "workdir": str(workdir)}
    tfl = [a for a in pi4_artifacts if a.target == "tflite" and a.precision == "int8"]
    df = edgekit.benchmark(tfl, name, QUICK, devices_file=devices_yaml(entry))
    assert df["error"].isna().all(), df["error"].tolist()
    assert df.iloc[0]["device"] == name and not marker.exists()
    assert len(list((workdir / "store").iterdir())) == 4  # agent, inputs, eval set, artifact: all in that workdir


# ---- faults -----------------------------------------------------------------------------------------


def test_devices_check_reports_facts_and_what_is_missing(sshd_device_factory, isolated_ssh_env,
                                                         devices_yaml) -> None:
    pi, bare = sshd_device_factory("pi", env="pi-like", profile="pi4"), sshd_device_factory("bare", env="bare",
                                                                                             profile="pi4")
    path = str(devices_yaml(pi, bare))
    out = subprocess.run([*EDGEKIT, "devices", "check", "pi", "--devices-file", path, "--json"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 1, out.stderr  # the pi4 profile also wants executorch and onnx
    report = json.loads(out.stdout)
    info = report["info"]
    assert info["machine"] == os.uname().machine and info["cores"] >= 1 and info["mem_total_mib"] > 0
    assert info["os"] and info["cpu_model"] and info["python"].count(".") == 2 and info["numpy"].startswith("1.")
    assert info["runtimes"]["tflite"] == {"package": "tflite-runtime", "version": "2.14.0", "error": None}
    assert report["runnable_targets"] == ["tflite"]
    assert any(m.startswith("target executorch: executorch does not import") for m in report["missing"])
    assert any("no energy sensor" in w or "energy" in w for w in report["warnings"]) or info["energy"]["available"]
    out = subprocess.run([*EDGEKIT, "devices", "check", "bare", "--devices-file", path], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 1 and "numpy is not installed" in out.stdout and "not ready" in out.stdout
    listing = subprocess.run([*EDGEKIT, "devices", "list", "--devices-file", path, "--json"], capture_output=True,
                             text=True, timeout=60)
    assert [d["name"] for d in json.loads(listing.stdout)] == ["local", "pi", "bare"]


def test_a_device_python_without_any_runtime_gives_rows_not_a_crash(
        sshd_device_factory, isolated_ssh_env, devices_yaml, pi4_artifacts) -> None:
    dev = sshd_device_factory("bare", env="bare")
    df = edgekit.benchmark(pi4_artifacts, "bare", QUICK, devices_file=devices_yaml(dev))
    assert len(df) == 6 and df["error"].str.startswith("runtime missing on device 'bare'").all()


def test_missing_device_python_and_refused_port_name_the_cause(sshd_device_factory, isolated_ssh_env,
                                                              pi4_artifacts) -> None:
    dev = sshd_device_factory("nopy")
    with pytest.raises(DeviceError, match=r"device 'nopy'.*python '/nonexistent/python3' not found"):
        edgekit.benchmark(pi4_artifacts[:1], edgekit.SshDevice(**{**dev.entry(), "python": "/nonexistent/python3"}))
    entry = dev.entry()
    dev.stop()
    with pytest.raises(DeviceError, match=r"device 'nopy': connection refused by 127.0.0.1:\d+"):
        edgekit.benchmark(pi4_artifacts[:1], edgekit.SshDevice(**entry))


def test_a_killed_agent_is_that_artifacts_row_and_the_next_one_runs(
        sshd_device_factory, isolated_ssh_env, devices_yaml, pi4_artifacts) -> None:
    dev = sshd_device_factory("killer", env="host")
    tfl = sorted((a for a in pi4_artifacts if a.target == "tflite"), key=lambda a: a.precision)  # fp32 first
    killed: list[int] = []

    def kill_first_agent() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            for pid in dev.descendants():
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if any(b"edgekit-agent" in c for c in cmd) and b"run" in cmd:
                    os.kill(pid, 9)
                    killed.append(pid)
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_first_agent)
    killer.start()
    cfg = BenchConfig(warmup_iterations=1, warmup_seconds=0, min_iterations=10, min_seconds=3, threads=1)
    df = edgekit.benchmark(tfl, "killer", cfg, devices_file=devices_yaml(dev))
    killer.join(timeout=130)
    rows = _by_target(df)
    assert killed, "the agent was never seen running"
    assert "killed" in rows[("tflite", "fp32")]["error"] and "edgekit-agent" in rows[("tflite", "fp32")]["error"]
    assert "OOM killer" in rows[("tflite", "fp32")]["error"]  # the likely cause, and where to look (dmesg)
    assert rows[("tflite", "int8")]["error"] is None and rows[("tflite", "int8")]["latency_ms_p50"] > 0


def test_a_run_past_its_timeout_is_killed_on_the_device(sshd_device_factory, isolated_ssh_env, devices_yaml,
                                                        pi4_artifacts) -> None:
    dev = sshd_device_factory("slow", env="host")
    art = next(a for a in pi4_artifacts if a.target == "tflite" and a.precision == "int8")
    # timeout bounds the run itself; the wait for the device's lock has its own bound (lock_timeout) on top
    cfg = BenchConfig(warmup_iterations=0, warmup_seconds=0, min_iterations=1, min_seconds=60, max_seconds=60,
                      timeout=8, threads=1, lock_timeout=0)
    start = time.monotonic()
    df = edgekit.benchmark([art], "slow", cfg, devices_file=devices_yaml(dev))
    assert time.monotonic() - start < 40
    assert "timed out after 8 s on device 'slow' (killed)" in df.iloc[0]["error"]
    time.sleep(0.5)
    assert not [p for p in dev.descendants() if b"edgekit-agent" in Path(f"/proc/{p}/cmdline").read_bytes()]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a read-only / tiny tmpfs workdir needs root")
@pytest.mark.parametrize("fault", ["read-only", "full"])
def test_unwritable_workdir_is_a_clear_device_error(sshd_device_factory, isolated_ssh_env, tmp_path: Path,
                                                    fault: str) -> None:
    from edgekit.transport import open_transport

    dev = sshd_device_factory("disk")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    opts = "ro,size=1m" if fault == "read-only" else "size=256k"
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {mounted.stderr.strip()}")
    try:
        blob = tmp_path / "big.bin"
        blob.write_bytes(os.urandom(1024 * 1024))
        with open_transport(edgekit.SshDevice(**{**dev.entry(), "workdir": str(mnt / "w")})) as t:
            with pytest.raises(DeviceError) as err:
                t.stage([blob])
        text = str(err.value)
        assert text.startswith("device 'disk': upload to ") and str(mnt) in text
        assert ("is read-only" in text) if fault == "read-only" else ("disk full" in text and "needed" in text)
        assert not [p for p in mnt.rglob("*") if p.is_file()]  # nothing half-written is left behind
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_serve_runs_test_devices_for_the_readme_until_interrupted(isolated_ssh_env, tmp_path: Path) -> None:
    import signal
    import socket

    import yaml

    if not Path("/usr/sbin/sshd").exists():
        pytest.skip("sshd not installed")
    devices = tmp_path / "test-devices.yaml"
    proc = subprocess.Popen([os.sys.executable, "-m", "edgekit.testing", "serve", "--device", "demo=host:x86",
                             "--devices-file", str(devices), "--root", str(tmp_path / "root")],
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not devices.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        entry = yaml.safe_load(devices.read_text())["devices"][0]
        out = subprocess.run([*EDGEKIT, "devices", "check", "demo", "--devices-file", str(devices)],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0 and "ready" in out.stdout, out.stdout + out.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", entry["port"]), timeout=2).close()
    assert not devices.exists()  # its devices are gone, so is the file naming them
