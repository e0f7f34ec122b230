"""edgekit.testing: real loopback sshd devices and cached device-side Python envs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgekit.testing import TestDevice, device_python, write_devices_file

pytestmark = pytest.mark.ssh

T = 30  # seconds: bound on every subprocess call


@pytest.fixture
def device(sshd_device_factory, isolated_ssh_env) -> TestDevice:
    return sshd_device_factory("dev")


def _connect(dev: TestDevice, key: Path | None = None, known_hosts: Path | None = None):
    import paramiko

    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts or dev.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(dev.host, port=dev.port, username=dev.user, key_filename=str(key or dev.identity_file),
                   look_for_keys=False, allow_agent=False, timeout=10, banner_timeout=10, auth_timeout=10)
    return client


def _exec(client, command: str) -> str:
    _, stdout, _ = client.exec_command(command, timeout=T)
    out = stdout.read().decode()
    assert stdout.channel.recv_exit_status() == 0
    return out


def _wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := predicate()):
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return True


def test_ssh_cli_runs_a_command(device: TestDevice) -> None:
    out = subprocess.run(device.ssh_argv("echo", "hi"), capture_output=True, text=True, timeout=T)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hi\n"


def test_paramiko_verifies_host_key_and_execs(device: TestDevice) -> None:
    with _connect(device) as client:
        assert _exec(client, "echo hi") == "hi\n"
        assert _exec(client, f"{device.python} -c 'import sys; print(sys.prefix)'").strip() == sys.prefix


def test_wrong_client_key_is_refused(device: TestDevice, tmp_path: Path) -> None:
    import paramiko

    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True, timeout=T)
    with pytest.raises(paramiko.AuthenticationException):
        _connect(device, key=other)
    argv = device.ssh_argv("true")
    argv[argv.index(str(device.identity_file))] = str(other)
    assert subprocess.run(argv, capture_output=True, timeout=T).returncode == 255


def test_devices_have_distinct_host_keys_and_workdirs(sshd_device_factory, isolated_ssh_env) -> None:
    import paramiko

    a, b = sshd_device_factory("a"), sshd_device_factory("b")
    assert a.workdir != b.workdir and a.port != b.port
    with pytest.raises(paramiko.SSHException):  # a's host key is unknown to b's known_hosts: RejectPolicy
        _connect(a, known_hosts=b.known_hosts)


def test_stop_kills_session_commands_and_frees_port(device: TestDevice) -> None:
    client = subprocess.Popen(device.ssh_argv("sleep", "300"), stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        sleep = _wait_for(lambda: next((p for p in device.descendants() if _cmdline(p) == "sleep 300"), None))
        listener = device.process.pid
        device.stop()
        assert _gone(sleep) and _gone(listener)
        assert client.wait(timeout=T) != 0  # the connection dropped under it
    finally:
        client.kill()
        client.wait(timeout=T)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((device.host, device.port), timeout=5).close()
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((device.host, device.port))
        s.listen()
    device.stop()  # idempotent


def test_stop_kills_daemonized_commands(device: TestDevice) -> None:
    # The shell exits at once and the sleep is reparented away from sshd: found by the session tag.
    out = subprocess.run(device.ssh_argv("setsid sleep 301 </dev/null >/dev/null 2>&1 &"), timeout=T)
    assert out.returncode == 0
    sleep = _wait_for(lambda: next((p for p in device.descendants() if _cmdline(p) == "sleep 301"), None))
    device.stop()
    assert _gone(sleep)


def test_kill_sessions_keeps_listener(device: TestDevice) -> None:
    client = subprocess.Popen(device.ssh_argv("sleep", "302"), stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        sleep = _wait_for(lambda: next((p for p in device.descendants() if _cmdline(p) == "sleep 302"), None))
        device.kill_sessions()
        assert _gone(sleep) and device.process.poll() is None
        assert client.wait(timeout=T) != 0
    finally:
        client.kill()
        client.wait(timeout=T)
    out = subprocess.run(device.ssh_argv("echo", "again"), capture_output=True, text=True, timeout=T)
    assert out.stdout == "again\n"


def test_scp_argv_copies_into_workdir(device: TestDevice, tmp_path: Path) -> None:
    src = tmp_path / "blob.bin"
    src.write_bytes(os.urandom(4096))
    out = subprocess.run(device.scp_argv(src, "blob.bin"), capture_output=True, text=True, timeout=T)
    assert out.returncode == 0, out.stderr
    assert (device.workdir / "blob.bin").read_bytes() == src.read_bytes()


def test_devices_file_loads_as_ssh_devices(sshd_device_factory, tmp_path: Path) -> None:
    from edgekit.config import load_devices

    dev = sshd_device_factory("pi", profile="rpi4")
    path = write_devices_file(tmp_path / "devices.yaml", [dev, {"name": "other", "kind": "ssh", "host": "10.0.0.9"}])
    loaded = load_devices(path)
    assert loaded["pi"].port == dev.port and loaded["pi"].known_hosts == str(dev.known_hosts)
    assert loaded["pi"].workdir == str(dev.workdir) and loaded["pi"].profile == "rpi4"
    assert loaded["other"].host == "10.0.0.9"


def test_import_is_cheap() -> None:
    code = "import sys, edgekit.testing; print(sorted({'paramiko', 'torch', 'fabric', 'numpy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=T)
    assert out.stdout.strip() == "[]", out.stderr


def _py(python: str, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=T)


def test_pi_like_env_has_tflite_and_old_numpy() -> None:
    python = device_python("pi-like")  # first build takes ~10 s, then cached
    out = _py(python, "import tflite_runtime.interpreter, numpy; print(numpy.__version__)")
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split(".")[0]) < 2
    assert _py(python, "import torch").returncode != 0


def test_bare_env_has_no_numpy_and_is_cached() -> None:
    python = device_python("bare")
    assert _py(python, "import sys; print(sys.version)").returncode == 0
    assert "No module named 'numpy'" in _py(python, "import numpy").stderr
    t = time.monotonic()
    assert device_python("bare") == python
    assert time.monotonic() - t < 0.5


def test_host_env_is_this_interpreter() -> None:
    assert device_python("host") == sys.executable
    with pytest.raises(ValueError, match="known"):
        device_python("nope")


def test_device_runs_its_env_python_over_ssh(sshd_device_factory) -> None:
    dev = sshd_device_factory("pi", env="pi-like")
    out = subprocess.run(dev.ssh_argv(dev.python, "-c", "'import tflite_runtime, numpy; print(numpy.__version__)'"),
                         capture_output=True, text=True, timeout=T)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("1.")
