"""Security against real sshd test devices: quoting and the device's workdir, what a device sends back, secrets.

| case                                                         | where it is tested                                      |
| ------------------------------------------------------------ | ------------------------------------------------------- |
| unknown host key refused, with the fix                       | test_ssh_devices.py::test_unknown_host_key_is_refused_with_the_fix_then_trusted_on_request |
| changed host key refused, with the fix                       | test_ssh_devices.py::test_changed_host_key_is_refused    |
| a wrong key refused, with the fix                            | test_ssh_devices.py::test_wrong_key_is_refused_naming_the_device |
| no secret fields in devices.yaml                             | unit/test_config.py::test_devices_file_entries_and_errors |
| a key passphrase from ssh-agent, none in the run's files     | here                                                     |
| device names, workdirs with shell characters                 | test_ssh_devices.py::test_names_and_paths_with_shell_characters_stay_words |
| model names and paths with shell characters and ``..``; nothing written outside the workdir; temporary files removed | here |
| malformed, deep, hostile or wrongly typed answers            | unit/test_untrusted_output.py                           |
| an answer of 40 MB                                           | here                                                     |
| HTML and terminal escapes in the report and the terminal     | unit/test_untrusted_output.py, unit/test_report.py       |
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch

import edgekit
from edgekit.errors import DeviceError
from edgekit.testing import write_devices_file

pytestmark = [pytest.mark.ssh, pytest.mark.slow]

QUICK = edgekit.BenchConfig(warmup_iterations=1, warmup_seconds=0, min_iterations=10, min_seconds=0.05, threads=1,
                            energy=False)
# Shell that would leave a file named `pwned` in its working folder if any layer ran it.
SHELL = "; touch pwned $(touch pwned) `touch pwned` 'q\" "


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")} if root.exists() else set()


def _pwned(*roots: Path) -> list[Path]:
    """Files named ``pwned`` in these trees, or in a login's home or the test's working folder."""
    import pwd

    found = [p for root in roots if root.exists() for p in root.rglob("pwned")]
    homes = {Path.cwd(), Path.home(), Path(pwd.getpwuid(os.getuid()).pw_dir)}
    return found + [home / "pwned" for home in homes if (home / "pwned").exists()]


def test_shell_characters_and_dots_never_run_and_nothing_is_written_outside_the_workdir(
        sshd_device_factory, isolated_ssh_env, tmp_path: Path) -> None:
    from tiny_models import small_cnn

    # A model whose folder and file name, and so its name, carry shell characters and '..'.
    models = tmp_path / f"models{SHELL}"
    models.mkdir()
    pt2 = models / f"m{SHELL}...pt2"
    torch.export.save(torch.export.export(small_cnn(), (torch.randn(1, 3, 8, 8),)), str(pt2))
    calibration = tmp_path / "calib.npy"
    np.save(calibration, np.random.default_rng(0).standard_normal((40, 3, 8, 8)).astype(np.float32))

    # OBSERVATION (not a fault): the device's python runs with HOME, TMPDIR and its working folder pointed at
    # empty folders this test watches; whatever the agent, a runtime or an injected command writes there shows.
    watched = {name: tmp_path / "watched" / name for name in ("home", "tmp", "cwd")}
    for folder in watched.values():
        folder.mkdir(parents=True)
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\n# edgekit test observation: HOME, TMPDIR and the working folder are watched\n"
                      f"export HOME={shlex.quote(str(watched['home']))} TMPDIR={shlex.quote(str(watched['tmp']))}\n"
                      f"cd {shlex.quote(str(watched['cwd']))} || exit 1\nexec {shlex.quote(sys.executable)} \"$@\"\n")
    python.chmod(0o755)
    dev = sshd_device_factory("quoted", python=str(python), profile="x86")
    name = f"pi 4{SHELL}.."
    base = dev.root / f"work dir{SHELL}"
    workdir = base / "w"
    entry = {**dev.entry(), "name": name, "workdir": f"{base}/sub/../w"}  # '..' inside the workdir: normalized
    devices_file = write_devices_file(tmp_path / "devices.yaml", [entry])
    stale = workdir / "tmp" / "run-999999999-killed"  # what an agent killed mid-run would leave
    stale.mkdir(parents=True)
    (stale / "trace.json").write_text("{}")
    out_dir = tmp_path / "out"
    before = _files(dev.root) | _files(tmp_path)

    df = edgekit.deploy(str(pt2), device=name, targets=["onnx"], precisions=["fp32"], calibration=str(calibration),
                        config=dataclasses.replace(QUICK, profile_ops=True),
                        devices_file=devices_file, out_dir=out_dir)
    row = df.iloc[0]
    assert row["error"] is None and row["device"] == name and row["model"] == f"m{SHELL}..", row["error"]
    assert row["op_profile"]["status"] == "measured"  # onnxruntime's profiler wrote (and we removed) a trace

    assert not _pwned(tmp_path, dev.root), "a shell ran one of the names"
    new = (_files(dev.root) | _files(tmp_path)) - before
    outside = sorted(str(p) for p in new if workdir not in p.parents and out_dir not in p.parents and p != out_dir)
    assert not outside, f"written outside the device's workdir (and the host's out_dir): {outside}"
    assert not (base / "sub").exists()
    assert not [p for folder in watched.values() for p in folder.iterdir()], "the agent wrote to HOME, TMPDIR or cwd"
    # the agent's temporary files were removed, and so was what a killed run left; the store holds only groups
    assert sorted(p.name for p in workdir.iterdir()) == ["measure.lock", "store", "tmp"]
    assert list((workdir / "tmp").iterdir()) == [] and (workdir / "measure.lock").read_bytes() == b""  # released
    assert not [p for p in (workdir / "store").iterdir() if p.name.startswith(".")]


def _tiny_onnx(folder: Path) -> Any:
    """A real, tiny ONNX artifact (Relu on float32 [1, 4]) and its inputs, as an export leaves them."""
    import onnx
    from onnx import TensorProto, helper

    from edgekit.exporters.base import Artifact

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(folder / "model.onnx"))
    np.savez(folder / "inputs.npz", np.zeros((1, 4), np.float32))
    return Artifact(model="tiny", profile="x86", target="onnx", format="onnx", precision="fp32", threads=1,
                    path=folder / "model.onnx", files=[folder / "model.onnx"], inputs=folder / "inputs.npz")


def test_an_answer_of_40_mb_is_cut_off_and_is_that_artifacts_row(sshd_device_factory, isolated_ssh_env,
                                                                  tmp_path: Path) -> None:
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\n# edgekit test fault injection: `run` answers with 40 MB of output\n"
                      'if [ "$2" = run ]; then cat >/dev/null; head -c 41943040 /dev/zero | tr "\\0" x; exit 0; fi\n'
                      f'exec {shlex.quote(sys.executable)} "$@"\n')
    python.chmod(0o755)
    dev = sshd_device_factory("chatty", python=str(python), profile="x86")
    art = _tiny_onnx(tmp_path)
    start = time.monotonic()
    df = edgekit.benchmark([art], "chatty", QUICK, devices_file=write_devices_file(tmp_path / "d.yaml", [dev]))
    assert time.monotonic() - start < 120
    error = df.iloc[0]["error"]
    assert error.startswith("benchmark failed: the device sent more than 32 MiB of output"), error[:500]
    assert len(error) < 10_000


# ---- secrets ------------------------------------------------------------------------------------------

PASSPHRASE = "correct horse battery staple 8675309"


@pytest.fixture
def ssh_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A real ssh-agent of this test's own (its socket under tmp_path), stopped by its pid afterwards."""
    sock = tmp_path / "agent.sock"
    proc = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sock.exists(), "ssh-agent did not start"
        yield sock
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def test_a_key_passphrase_comes_from_ssh_agent_and_no_secret_reaches_the_results(
        sshd_device_factory, isolated_ssh_env, tmp_path: Path, ssh_agent: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    dev = sshd_device_factory("locked", env="host", profile="x86")
    key = tmp_path / "id_locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", PASSPHRASE, "-f", str(key)], check=True, timeout=30)
    with open(dev.root / "authorized_keys", "a") as f:
        f.write(Path(f"{key}.pub").read_text())
    devices_file = write_devices_file(tmp_path / "devices.yaml", [{**dev.entry(), "identity_file": str(key)}])

    # No agent: refused, saying where the passphrase comes from.
    with pytest.raises(DeviceError, match=rf"the key {key} is protected by a passphrase: load it into ssh-agent "
                                          rf"\(ssh-add {key}\); edgekit never stores passphrases"):
        edgekit.check_device("locked", devices_file=devices_file)

    # The key in a real ssh-agent (unlocked once, by ssh-add): a fleet run works.
    askpass = tmp_path / "askpass"
    askpass.write_text(f"#!/bin/sh\necho {shlex.quote(PASSPHRASE)}\n")
    askpass.chmod(0o700)
    env = {**os.environ, "SSH_AUTH_SOCK": str(ssh_agent), "SSH_ASKPASS": str(askpass),
           "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"}
    added = subprocess.run(["ssh-add", str(key)], env=env, stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=30)
    assert added.returncode == 0, added.stderr
    monkeypatch.setenv("SSH_AUTH_SOCK", str(ssh_agent))
    result = edgekit.bench("digits-cnn", ["locked"], targets=["onnx"], precisions=["fp32"], config=QUICK,
                           devices_file=devices_file, results=tmp_path / "runs")
    assert result["locked"].ok and result.df.iloc[0]["latency_ms_p50"] > 0, result["locked"].error

    # Nothing the run stored holds the passphrase or the private key (its path is fine).
    private = [line for line in key.read_text().splitlines() if line and not line.startswith("-----")]
    assert private
    for path in [p for p in result.run_dir.rglob("*") if p.is_file()] + [devices_file]:
        data = path.read_bytes()
        assert PASSPHRASE.encode() not in data, path
        assert not [line for line in private if line.encode() in data], f"private key material in {path}"
    meta = json.loads((result.run_dir / "meta.json").read_text())
    assert "identity_file" not in json.dumps(meta["request"])  # the request names devices, not their keys
