"""Worker nodes of a real Ray cluster SIGKILLed mid-run (raylet, object store, workers and the device actors
on it, all at once), first while the build task lowers an artifact, then while the devices measure: Ray
retries the build on the replacement node that joins with the same label, the devices' actors are restarted
there too, the driver retries the devices, and the run ends with every row once: none lost, none duplicated."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

import edgekit
from edgekit.results.store import Run
from edgekit.testing import RayTestCluster, start_ray_cluster, write_devices_file

pytestmark = [pytest.mark.ssh, pytest.mark.slow, pytest.mark.cluster]


def test_worker_nodes_killed_mid_build_and_mid_measuring_lose_and_duplicate_nothing(sshd_device_factory,
                                                                                     tmp_path: Path) -> None:
    cluster = start_ray_cluster(cpus=0)  # the head runs no task: the build has to run on a worker node
    try:
        with cluster.as_driver():
            _kill_nodes_mid_run(cluster, sshd_device_factory, tmp_path)
    finally:
        cluster.stop()


def _kill_nodes_mid_run(cluster: RayTestCluster, sshd_device_factory: Any, tmp_path: Path) -> None:
    from edgekit.cluster import connect

    nodes = [cluster.add_node("pool-1", labels={"pool": "x", "name": "pool-1"})]
    devices = [{**sshd_device_factory(n, env="host", profile="x86").entry(), "gateway": "pool=x"}
               for n in ("p1", "p2")]
    devices_file = write_devices_file(tmp_path / "devices.yaml", devices)
    events: dict[str, Any] = {}
    threads: list[threading.Thread] = []

    def kill_then_replace(why: str) -> None:
        nodes[-1].kill()
        events[why] = time.monotonic()
        nodes.append(cluster.add_node(f"pool-{len(nodes) + 1}", labels={"pool": "x", "name": f"pool-{len(nodes) + 1}"}))

    def progress(device: str | None, stage: str, detail: str) -> None:
        # the first kill while the build task lowers an artifact, the second after the first row arrives
        if device is None and stage.startswith("build ") and detail.startswith("lower") and "build" not in events:
            events["build"] = None
            threads.append(threading.Thread(target=kill_then_replace, args=("killed in build",), daemon=True))
            threads[-1].start()
        if device and stage == "measuring" and detail.endswith(" rows") and "measure" not in events:
            events["measure"] = None
            threads.append(threading.Thread(target=kill_then_replace, args=("killed in measure",), daemon=True))
            threads[-1].start()

    cfg = edgekit.BenchConfig(warmup_iterations=1, warmup_seconds=0, min_iterations=5, min_seconds=0.5,
                              idle_seconds=0, energy=False, threads=[1, 2])
    fleet = edgekit.FleetConfig(cluster=cluster.address, retries=8, backoff_s=2, backoff_max_s=5, build_cpus=1)
    result = edgekit.bench("digits-cnn", ["p1", "p2"], targets=["onnx"], precisions=["fp32", "int8"],
                           config=cfg, fleet=fleet, devices_file=devices_file, results=tmp_path / "runs",
                           trust_new_host=True, on_progress=progress)
    for t in threads:
        t.join(timeout=120)  # a replacement node still joining would outlive the test
    assert "killed in build" in events and "killed in measure" in events, f"a node was not killed: {events}"
    assert not result.failed, {k: v.error for k, v in result.failed.items()}
    run = Run(result.run_dir)
    rows = [r["row"] for r in run.records("row")]
    done = [(r["device"], r["target"], r["precision"], r["threads"]) for r in rows if r["stage"] == "done"]
    assert len(done) == 8 and len(set(done)) == 8, done  # 2 devices x 2 precisions x 2 thread counts, once each
    assert all(r["stage"] == "done" for r in rows), [r for r in rows if r["stage"] != "done"]
    retries = list(run.records("retry"))
    assert retries and all("lost the actor" in r["error"] or "connect" in r["error"] for r in retries), retries
    name = {n["node_id"]: n["labels"]["name"] for n in connect(cluster.address).nodes() if "name" in n["labels"]}
    (built,) = list(run.records("artifacts"))
    assert name[built["built_on"]] == "pool-2"  # Ray retried the build task on the node that replaced pool-1
    assert {name[r["measured_on"]] for r in rows} == {"pool-2", "pool-3"}  # then the devices moved with their actors
