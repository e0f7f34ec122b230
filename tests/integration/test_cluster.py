"""Fleets on a real Ray cluster: a head and a second node, each a separate ``ray start`` process on 127.0.0.1
with its own label (lab=a, lab=b) and its own build-cache folder, token authentication on; real sshd test
devices split between the two labs by ``gateway:``.

Covered: a run across both labs (each device measured from its lab's node; the run's meta and rows say
where), a gateway no node has, two concurrent runs on the same devices (windows never overlap, from the
agents' own clocks; each build-cache key built once in the cluster), a device whose lock a process outside
the cluster holds, and a driver SIGKILLed then resumed. Node loss: ``test_cluster_faults.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

import edgekit
from edgekit.results.store import Run
from edgekit.testing import RayTestCluster, start_ray_cluster, write_devices_file

pytestmark = [pytest.mark.ssh, pytest.mark.slow, pytest.mark.cluster]

EDGEKIT = str(Path(sys.executable).with_name("edgekit"))
QUICK = ["--warmup-iterations", "1", "--warmup-seconds", "0", "--min-iterations", "5", "--min-seconds", "0.05",
         "--idle-seconds", "0", "--no-energy"]


@pytest.fixture(scope="module")
def labs() -> Iterator[RayTestCluster]:
    """Head node (lab=a) and a second node (lab=b); this process drives it with the cluster's token."""
    cluster = start_ray_cluster({"lab": "a"})
    try:
        cluster.add_node("lab-b", labels={"lab": "b"})
        with cluster.as_driver():
            yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def lab_devices(sshd_session_factory, tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    """a1, a2 behind lab=a; b1, b2 behind lab=b; c1 behind lab=c, which no node has."""
    entries = {}
    for name, lab in (("a1", "a"), ("a2", "a"), ("b1", "b"), ("b2", "b")):
        entries[name] = {**sshd_session_factory(name, env="host", profile="x86").entry(), "gateway": f"lab={lab}"}
    entries["c1"] = {**entries["a1"], "name": "c1", "gateway": "lab=c"}
    path = write_devices_file(tmp_path_factory.mktemp("labs") / "devices.yaml", list(entries.values()))
    return path, entries


def _node_of(meta: dict[str, Any], lab: str) -> str:
    (node,) = [n["node_id"] for n in meta["cluster"]["nodes"] if n["labels"].get("lab") == lab]
    return node


def _bench(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([EDGEKIT, "bench", "--model", "digits-cnn", "--trust-new-host", *QUICK, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or dict(os.environ))


def _run_dir(results: Path) -> Path:
    (run,) = [p for p in results.iterdir() if p.is_dir()]
    return run


def test_a_fleet_runs_across_both_labs_each_device_from_its_own_labs_node(labs, lab_devices, tmp_path: Path) -> None:
    devices_file, _ = lab_devices
    proc = _bench("--devices", "a1,a2,b1,b2,c1", "--targets", "onnx", "--precisions", "fp32", "--cluster",
                  labs.address, "--devices-file", str(devices_file), "--results", str(tmp_path / "runs"), "--json")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err[-3000:]  # c1 failed (its row says why); the others did not
    rows = {r["device"]: r for r in json.loads(out)}
    meta = Run(_run_dir(tmp_path / "runs")).meta
    assert meta["cluster"]["ray_version"] == "2.60.0" and len(meta["cluster"]["nodes"]) == 2
    node_a, node_b = _node_of(meta, "a"), _node_of(meta, "b")
    for name, node in (("a1", node_a), ("a2", node_a), ("b1", node_b), ("b2", node_b)):
        row = rows[name]
        assert row["stage"] == "done" and row["error"] is None, row
        assert row["measured_on"] == node, f"{name} was measured on {row['measured_on']}, not its lab's node"
        assert row["built_on"] in (node_a, node_b)
        assert row["window_start_unix"] <= row["window_end_unix"] and row["lock_wait_s"] == 0
    assert len({rows[n]["built_on"] for n in ("a1", "a2", "b1", "b2")}) == 1  # one build for the profile
    c1 = rows["c1"]
    assert c1["stage"] == "connect" and "gateway 'lab=c'" in c1["error"] and "lab=a" in c1["error"], c1


def _windows(run_dir: Path) -> list[dict[str, Any]]:
    return [r for r in Run(run_dir).records("row") if r["row"].get("stage") == "done"]


def test_two_runs_sharing_the_cluster_never_measure_one_device_at_once(labs, lab_devices, tmp_path: Path) -> None:
    devices_file, _ = lab_devices
    common = ["--devices", "a1,b1", "--targets", "onnx", "--precisions", "int8", "--threads", "1,2",
              "--min-seconds", "0.3", "--cluster", labs.address, "--devices-file", str(devices_file), "--json"]
    first = _bench(*common, "--results", str(tmp_path / "one"))
    second = _bench(*common, "--results", str(tmp_path / "two"))
    for proc in (first, second):
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    windows: dict[str, list[tuple[float, float, str]]] = {}
    for name in ("one", "two"):
        for rec in _windows(_run_dir(tmp_path / name)):
            row = rec["row"]
            assert row["lock_wait_s"] == 0, "the device's lock was contended: the actor did not keep the runs apart"
            windows.setdefault(row["device"], []).append((row["window_start_unix"], row["window_end_unix"], name))
    assert sorted(windows) == ["a1", "b1"] and all(len(w) == 4 for w in windows.values()), windows
    for device, spans in windows.items():
        spans.sort()
        for (s0, e0, r0), (s1, e1, r1) in zip(spans, spans[1:]):
            assert e0 <= s1, f"{device}: a window of run {r0} ({s0:.3f}-{e0:.3f}) overlaps one of {r1} ({s1:.3f}-{e1:.3f})"
    # both runs asked for the same build-cache keys at once: each was built (published) once in the cluster
    from edgekit.cluster import connect

    publishes = connect(labs.address).registry_stats()["publishes"]
    assert publishes and all(len(nodes) == 1 for nodes in publishes.values()), publishes


def test_a_device_locked_from_outside_the_cluster_is_waited_for_then_reported(labs, lab_devices, tmp_path: Path) -> None:
    devices_file, entries = lab_devices
    lock = Path(entries["a2"]["workdir"]) / "measure.lock"
    holder = ("import fcntl, os, sys, time\n"
              "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
              "fcntl.flock(fd, fcntl.LOCK_EX)\n"
              "print('held', flush=True)\n"
              "time.sleep(float(sys.argv[2]))\n")

    def hold(seconds: float) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-c", holder, str(lock), str(seconds)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        return proc

    fleet = edgekit.FleetConfig(cluster=labs.address, retries=0)
    quick = dict(warmup_iterations=1, warmup_seconds=0, min_iterations=5, min_seconds=0.05, idle_seconds=0,
                 energy=False, threads=1)
    outsider = hold(600)
    try:
        result = edgekit.bench("digits-cnn", ["a2"], targets=["onnx"], precisions=["fp32"], devices_file=devices_file,
                               results=tmp_path / "busy", fleet=fleet, trust_new_host=True,
                               config=edgekit.BenchConfig(**quick, lock_timeout=2))
    finally:
        outsider.kill()
        outsider.wait()
    (row,) = result.df.to_dict(orient="records")
    assert row["stage"] == "measure" and "the device is busy" in row["error"], row
    assert "measure.lock" in row["error"] and "no owner recorded" in row["error"] and "lock_timeout" in row["error"]

    outsider = hold(3)  # frees itself after 3 s: the run waits for it, then measures
    result = edgekit.bench("digits-cnn", ["a2"], targets=["onnx"], precisions=["fp32"], devices_file=devices_file,
                           results=tmp_path / "waited", fleet=fleet, trust_new_host=True,
                           config=edgekit.BenchConfig(**quick, lock_timeout=60))
    outsider.wait()
    (row,) = result.df.to_dict(orient="records")
    assert row["stage"] == "done" and row["error"] is None, row
    assert 1.0 < row["lock_wait_s"] < 60, row["lock_wait_s"]


def test_a_killed_driver_resumes_on_the_cluster_with_no_row_lost_or_repeated(labs, lab_devices, tmp_path: Path) -> None:
    devices_file, _ = lab_devices
    results = tmp_path / "runs"
    proc = _bench("--devices", "a1,b2", "--targets", "onnx", "--precisions", "fp32,int8", "--threads", "1,2",
                  "--min-seconds", "0.5", "--parallel", "1", "--cluster", labs.address, "--devices-file",
                  str(devices_file), "--results", str(results), "--json")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        runs = [p for p in results.iterdir() if p.is_dir()] if results.is_dir() else []
        if runs and len(_windows(runs[0])) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    run_dir = _run_dir(results)
    before = len(_windows(run_dir))
    assert 2 <= before < 8

    resumed = subprocess.run([EDGEKIT, "bench", "--resume", run_dir.name, "--results", str(results), "--devices-file",
                              str(devices_file), "--json"],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    done = [r["row"] for r in _windows(run_dir)]
    keys = [(r["device"], r["target"], r["precision"], r["threads"]) for r in done]
    assert len(keys) == 8 and len(set(keys)) == 8, keys  # every key once: none lost, none measured twice
    assert len(list(Run(run_dir).records("artifacts"))) == 1  # the resume re-used the run's own build
    assert Run(run_dir).meta["cluster"]["address"] == labs.address
    assert {r["measured_on"] for r in done if r["device"] == "a1"} == {_node_of(Run(run_dir).meta, "a")}


def test_without_ray_the_cluster_option_names_the_extra_to_install(tmp_path: Path) -> None:
    # Ray is installed here; hiding it from one process (a None entry in sys.modules) is how its absence is made.
    code = ("import sys; sys.modules['ray'] = None\n"
            "from edgekit.cluster import connect\n"
            "from edgekit.errors import ClusterError\n"
            "try:\n    connect('127.0.0.1:6379')\n"
            "except ClusterError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "needs Ray" in out.stdout and "edgekit[cluster]" in out.stdout, out.stdout + out.stderr


def test_a_search_on_the_cluster_exports_there_and_measures_through_the_devices_actor(labs, lab_devices,
                                                                                      tmp_path: Path) -> None:
    devices_file, _ = lab_devices
    space = tmp_path / "space.yaml"
    space.write_text("targets: [onnx]\nprecisions: [fp32, int8]\nprune: [0.0]\nthreads: [1]\n")
    proc = subprocess.run([EDGEKIT, "search", "--model", "digits-cnn", "--device", "b1", "--space", str(space),
                           "--trials", "2", "--min-seconds", "0.05", "--cluster", labs.address, "--devices-file",
                           str(devices_file), "--results", str(tmp_path / "runs"), "--json"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["pick"] is not None
    run = Run(tmp_path / "runs" / out["run_id"])
    rows = [r["row"] for r in run.records("row")]
    assert rows and all(r["error"] is None for r in rows)
    from edgekit.cluster import connect

    nodes = {n["labels"].get("lab"): n["node_id"] for n in connect(labs.address).nodes()}
    assert {r["measured_on"] for r in rows} == {nodes["b"]}  # b1 sits behind lab b
    assert run.meta["search"]["cluster"] == labs.address
