"""A real multi-node Ray cluster on loopback for tests and benchmarks: each node a ``ray start --block``
process group of its own (so one node can be killed whole), token authentication on, every port on
127.0.0.1, each node with its own build cache folder (nodes do not share a disk in a real cluster).

Standard library only at import; Ray's own ``ray`` command does the work.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

# A one-host cluster: Ray would otherwise advertise (and bind) the host's routable address.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


_PROCESS_TOKEN = os.environ.get("RAY_AUTH_TOKEN") or secrets.token_hex(32)
_JOIN_ON_LOOPBACK = """
import sys
import ray._private.services as services
services.resolve_ip_for_localhost = lambda host: host
from ray.scripts.scripts import main
sys.argv[0] = "ray"
sys.exit(main())
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray_command() -> str:
    """The ``ray`` command beside this interpreter (a venv's bin), else on PATH."""
    beside = Path(sys.executable).with_name("ray")
    found = str(beside) if beside.exists() else shutil.which("ray")
    if not found:
        raise RuntimeError("the `ray` command is not installed: pip install 'edgekit[cluster]'")
    return found


@dataclass
class RayNode:
    name: str
    process: subprocess.Popen[bytes]
    labels: dict[str, str]
    resources: dict[str, float]
    build_cache: Path
    log: Path

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the node's whole process group: raylet, object store, its workers and actors."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)


@dataclass
class RayTestCluster:
    """``address`` to pass as ``--cluster``; ``env`` for a driver (token and loopback settings)."""

    address: str
    root: Path
    env: dict[str, str]
    nodes: list[RayNode] = field(default_factory=list)

    def add_node(self, name: str, *, cpus: int = 2, labels: dict[str, str] | None = None,
                 resources: dict[str, float] | None = None, timeout: float = 60.0) -> RayNode:
        """Start another node joined to the head and wait until the cluster lists it."""
        import json

        labels, resources = dict(labels or {}), dict(resources or {})
        build_cache = self.root / name / "builds"
        build_cache.mkdir(parents=True, exist_ok=True)
        argv = [ray_command(), "start", "--block", "--disable-usage-stats", f"--num-cpus={cpus}",
                "--node-ip-address", "127.0.0.1"]
        env = {**os.environ, **self.env, "EDGEKIT_BUILD_CACHE": str(build_cache)}
        if self.nodes:
            # A joining node: Ray's loopback switch (LOOPBACK_ENV) refuses to join a cluster, and without it
            # `ray start` rewrites 127.0.0.1 (its own and the head's) to the host's routable address. So this
            # node's `ray start` runs with that rewrite turned off (a test-only patch; Ray 2.60).
            argv = [sys.executable, "-c", _JOIN_ON_LOOPBACK, *argv[1:], "--address", self.address]
            env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
        else:
            argv += ["--head", f"--port={self.address.rsplit(':', 1)[1]}", "--include-dashboard=false",
                     f"--temp-dir={self.root / 'ray'}"]
        if labels:
            argv += ["--labels", ",".join(f"{k}={v}" for k, v in labels.items())]
        if resources:
            argv += ["--resources", json.dumps(resources)]
        log = self.root / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        node = RayNode(name, proc, labels, resources, build_cache, log)
        self.nodes.append(node)
        self._wait_nodes(sum(n.alive for n in self.nodes), timeout, node)  # killed nodes are not listed as active
        return node

    def _wait_nodes(self, count: int, timeout: float, node: RayNode) -> None:
        deadline = time.monotonic() + timeout
        argv = [ray_command(), "status", "--address", self.address]
        env = {**os.environ, **self.env}
        while time.monotonic() < deadline:
            if not node.alive:
                raise RuntimeError(f"ray node {node.name} exited: {node.log.read_text()[-3000:]}")
            got = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
            active = got.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
            if got.returncode == 0 and active.count(" node_") >= count:
                return
            time.sleep(0.5)
        raise RuntimeError(f"ray node {node.name} did not join within {timeout:g} s: {node.log.read_text()[-3000:]}")

    @contextlib.contextmanager
    def as_driver(self) -> Iterator["RayTestCluster"]:
        """This process drives the cluster (its token and loopback settings in ``os.environ``) until the block
        ends; then it disconnects and the environment is as it was."""
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            yield self
        finally:
            if "edgekit.cluster" in sys.modules:
                sys.modules["edgekit.cluster"].disconnect()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "RayTestCluster":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start_ray_cluster(head_labels: dict[str, str] | None = None, *, cpus: int = 2,
                      head_resources: dict[str, float] | None = None, token: str | None = None) -> RayTestCluster:
    """A head node on 127.0.0.1 (a free port), token authentication on; add nodes with ``add_node``.

    Its folder is short and under /tmp: Ray's unix sockets live there and their paths must stay < 108 bytes.
    """
    root = Path(tempfile.mkdtemp(prefix="ekray-", dir="/tmp"))
    # One token per process: Ray's driver caches the token it first read, so every cluster a process drives
    # shares it.
    env = {**LOOPBACK_ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token or _PROCESS_TOKEN}
    cluster = RayTestCluster(f"127.0.0.1:{_free_port()}", root, env)
    try:
        cluster.add_node("head", cpus=cpus, labels=head_labels, resources=head_resources)
    except BaseException:
        cluster.stop()
        raise
    return cluster
