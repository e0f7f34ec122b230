"""Push benchmark: edgekit's content-addressed SSH push versus OpenSSH ``scp``, side by side in one run.

A real sshd test device on loopback (edgekit.testing). Each round pushes a fresh 50 MB artifact with
edgekit (connect, local sha256, stream into a temporary folder while hashing on the device, rename) and
copies the same file with ``scp`` (which also connects); rounds alternate so both see the same load. Then the unchanged artifact is
pushed again on a new connection, as a second ``deploy`` would: no bytes may be sent.

Goals (issue 3): push throughput >= 0.7x scp's; an unchanged redeploy sends 0 bytes in < 1 s per device.

    .venv/bin/python scripts/bench/push.py [--mb 50] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import edgekit
from edgekit.device.client import install_agent
from edgekit.testing import start_sshd
from edgekit.transport import base as transport_base
from edgekit.transport import open_transport


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-push-") as tmp:
        root = Path(tmp)
        dev = start_sshd(root / "device", name="bench", python=sys.executable)
        try:
            return run(dev, root, args.mb, args.rounds)
        finally:
            dev.stop()


def run(dev, root: Path, mb: int, rounds: int) -> int:  # type: ignore[no-untyped-def]
    device = edgekit.SshDevice(**dev.entry())
    push_s, scp_s = [], []
    for i in range(rounds):
        artifact = root / f"model-{i}.pte"
        artifact.write_bytes(os.urandom(mb * 1024 * 1024))  # new content: nothing to skip
        transport_base._HASHES.clear()  # the local hash is part of a first push
        start = time.perf_counter()  # from connecting, as scp's time is
        with open_transport(device) as t:
            t.stage([artifact])
            assert t.stats.bytes_sent == artifact.stat().st_size
        push_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        subprocess.run(dev.scp_argv(artifact, f"scp-{i}.bin"), check=True, timeout=600)
        scp_s.append(time.perf_counter() - start)
    push, scp = statistics.median(push_s), statistics.median(scp_s)
    print(f"{mb} MB over loopback, median of {rounds} alternating rounds")
    print(f"  edgekit push (connect, hash, stream+verify, rename): {push:6.2f} s  {mb / push:6.1f} MB/s  {push_s}")
    print(f"  scp                                               : {scp:6.2f} s  {mb / scp:6.1f} MB/s  {scp_s}")
    ratio = scp / push
    print(f"  push throughput / scp throughput = {ratio:.2f}  (goal >= 0.70: {'PASS' if ratio >= 0.7 else 'FAIL'})")

    # An unchanged redeploy: new connection, agent + artifact + inputs already there.
    last = root / f"model-{rounds - 1}.pte"
    inputs = root / "inputs.npz"
    inputs.write_bytes(os.urandom(4096))
    with open_transport(device) as t:
        install_agent(t)
        t.stage([last])
        t.put(inputs)
    times, sent = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        with open_transport(device) as t:
            install_agent(t)
            t.stage([last])
            t.put(inputs)
            sent.append(t.stats.bytes_sent)
        times.append(time.perf_counter() - start)
    again = statistics.median(times)
    ok = again < 1.0 and not any(sent)
    print(f"unchanged redeploy (connect + agent + artifact + inputs): {again:.3f} s, bytes sent {sent}  "
          f"(goal 0 bytes and < 1 s: {'PASS' if ok else 'FAIL'})")
    shutil.rmtree(dev.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
