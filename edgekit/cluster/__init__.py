"""Fleets past one host: builds as Ray tasks, one leasing actor per device, on a running Ray cluster.

``edgekit bench ... --cluster ADDRESS`` (``FleetConfig(cluster=...)``) connects this driver to a cluster
started with ``ray start --head`` / ``ray start --address``; the fleet's own logic (journal, resume,
retries, deadlines, rows) stays in ``edgekit.fleet``. What moves onto the cluster:

- **Builds**: compress + export of each profile is a Ray task (``num_cpus=FleetConfig.build_cpus``) on any
  node, retried by Ray when its node dies. The node's build cache is backed by a cluster-wide registry
  (a named actor on the head node): a build-cache key built once anywhere is fetched, hash-checked, by
  any later build, and a key being built is claimed, so a second run waits for it instead of building it
  again. The artifacts travel to the driver and the devices' nodes through Ray's object store, each file
  checked against the sha256 that passed parity (``bundle.py``).
- **Devices**: each device is measured only through its named actor (``DeviceLease``), placed on a node
  that can reach it (``gateway:`` in devices.yaml: a node label ``KEY=VALUE`` or a custom resource
  ``NAME``; default any node). Ray runs one call of an actor at a time, and every run asks the same
  actor, so two runs on one cluster never measure a device at once; a run from outside the cluster is
  kept apart by the agent's own lock on the device (``agent/devlock.py``). The actor streams each row
  back as it is measured, so the driver journals it at once; when the actor's node dies the driver
  retries the device (``FleetConfig.retries``) and measures only what has no row yet.

Ray is an optional dependency (``edgekit[cluster]``); it is imported only here, on connect. Why not Ray's
own job scheduler: a fleet's unit of work is a device lease held across many measurements, which is
what an actor is; a task per measurement would lose the one-at-a-time guarantee across runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from edgekit.errors import AgentError, ClusterError, DeviceError

if TYPE_CHECKING:
    from edgekit.cluster.build import BuildSpec
    from edgekit.config.bench import BenchConfig
    from edgekit.config.device import LocalDevice, SshDevice
    from edgekit.config.profile import Profile
    from edgekit.exporters.base import Artifact

NAMESPACE = "edgekit"
INSTALL_HINT = "pip install 'edgekit[cluster]' (Ray 2.60) on this host and on every node of the cluster"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_connected: str | None = None


def connect(address: str) -> "Cluster":
    """This process as a driver of the Ray cluster at ``address`` (``HOST:PORT`` of ``ray start --head``)."""
    global _connected
    host = address.rsplit(":", 1)[0].strip("[]")
    if host in _LOOPBACK:
        # A one-host cluster on loopback: without this Ray advertises the host's routable address instead.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError as exc:
        raise ClusterError(f"--cluster needs Ray, which is not installed: {INSTALL_HINT}") from exc
    if ray.is_initialized():
        if _connected == address:
            return Cluster(address)
        ray.shutdown()
    try:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, logging_level=logging.WARNING,
                 configure_logging=False)
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, AuthenticationError, RuntimeError...
        raise ClusterError(
            f"cannot connect to the Ray cluster at {address}: {type(exc).__name__}: {str(exc).splitlines()[0]}. "
            "Start one with `ray start --head --port PORT` (and `ray start --address HEAD:PORT` on each other "
            "node), pass that address, and give this host the cluster's token (RAY_AUTH_MODE=token with "
            "RAY_AUTH_TOKEN or ~/.ray/auth_token)") from exc
    _connected = address
    return Cluster(address)


def disconnect() -> None:
    """Leave the cluster (the cluster and its device actors keep running)."""
    global _connected
    import ray

    if ray.is_initialized():
        ray.shutdown()
    _connected = None


def _placement(gateway: str | None) -> dict[str, Any]:
    """A device's ``gateway`` as Ray actor options: ``KEY=VALUE`` a node label, ``NAME`` a custom resource."""
    if not gateway:
        return {}
    if "=" in gateway:
        key, value = gateway.split("=", 1)
        return {"label_selector": {key: value}}
    return {"resources": {gateway: 0.001}}


def _code_digest() -> str:
    from edgekit.exporters.cache import toolchain_versions

    return toolchain_versions()["edgekit-source"][:12]


class Cluster:
    """A connected cluster: its facts, builds on it, and its device actors."""

    def __init__(self, address: str) -> None:
        import ray

        self.address = address
        self.ray = ray
        self._registry: Any = None
        self._actors: dict[str, Any] = {}
        self._bundles: dict[tuple[str, ...], tuple[Any, str, list[dict[str, Any]]]] = {}
        self._lock = threading.Lock()

    # ---- facts --------------------------------------------------------------------------------------------

    def nodes(self) -> list[dict[str, Any]]:
        """Alive and dead nodes: id, labels (Ray's own left out), CPUs, custom resources."""
        out = []
        for n in self.ray.nodes():
            res = n.get("Resources") or {}
            out.append({"node_id": n["NodeID"], "alive": bool(n.get("Alive")), "address": n.get("NodeManagerAddress"),
                        "labels": {k: v for k, v in (n.get("Labels") or {}).items() if not k.startswith("ray.io/")},
                        "cpus": res.get("CPU"),
                        "resources": {k: v for k, v in res.items() if k not in ("CPU", "GPU", "memory",
                                      "object_store_memory") and not k.startswith("node:")}})
        return out

    def facts(self) -> dict[str, Any]:
        """What a run's meta records about where it ran."""
        return {"address": self.address, "ray_version": self.ray.__version__, "nodes": self.nodes()}

    def nodes_for(self, gateway: str | None) -> list[str]:
        """Alive nodes that can reach a device with this ``gateway`` (all of them when None)."""
        where = _placement(gateway)
        labels, resources = where.get("label_selector", {}), where.get("resources", {})
        return [n["node_id"] for n in self.nodes() if n["alive"]
                and all(n["labels"].get(k) == v for k, v in labels.items())
                and all(n["resources"].get(r, 0) > 0 for r in resources)]

    # ---- builds -------------------------------------------------------------------------------------------

    def registry(self) -> Any:
        if self._registry is None:
            from edgekit.cluster._remote import ArtifactRegistry

            self._registry = ArtifactRegistry.options(  # type: ignore[attr-defined]
                name=f"artifacts:{_code_digest()}", namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
                resources={"node:__internal_head__": 0.001}).remote()
        return self._registry

    def registry_stats(self) -> dict[str, Any]:
        """How many entries the cluster holds and which node published each key (each should once)."""
        return dict(self.ray.get(self.registry().stats.remote()))

    def build(self, spec: "BuildSpec", prof: "Profile", dest: Path, *, cpus: int,
              on_event: Callable[[str], None], on_progress: Callable[[dict[str, Any]], None]) -> tuple[
                  list["Artifact"], str, str]:
        """Build the profile's artifacts in a Ray task; unpack them (hash-checked) under ``dest``. Returns the
        artifacts, the compressed model's weights digest and the node that built them."""
        from edgekit.cluster._remote import build_task
        from edgekit.cluster.bundle import unpack

        task = self.ray.remote(build_task).options(num_cpus=cpus, max_retries=3, retry_exceptions=False)
        item = self._collect(task.remote(spec.portable(), prof, self.registry(), cpus), f"profile {prof.name!r}",
                             on_event, on_progress)
        return unpack(item, dest), item["model_sha256"], item["node"]

    def export(self, cm: Any, targets: Sequence[str], precisions: Sequence[str], out: Path, *, cpus: int = 1,
               on_event: Callable[[str], None] | None = None) -> tuple[list["Artifact"], str] | None:
        """``edgekit.export`` of an already compressed model, in a Ray task; the artifacts (under ``out``, in a
        folder named by their contents) and the node that built them. None when the model does not pickle (a
        class defined in ``__main__``): export it here instead."""
        from edgekit.cluster._remote import export_task
        from edgekit.cluster.bundle import digest, unpack
        from edgekit.exporters._parallel import payload

        data = payload(cm)
        if data is None:
            return None
        task = self.ray.remote(export_task).options(num_cpus=cpus, max_retries=3, retry_exceptions=False)
        item = self._collect(task.remote(data, list(targets), list(precisions), self.registry(), cpus),
                             f"{cm.name} {'/'.join(targets)} {'/'.join(precisions)}", on_event or (lambda m: None),
                             lambda p: None)
        return unpack(item, out / digest(item)[:16]), item["node"]

    def _collect(self, stream: Any, what: str, on_event: Callable[[str], None],
                 on_progress: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Follow a build task's stream to its bundle; its failure as ClusterError."""
        for ref in stream:  # a streaming generator: one ref per item, as the task yields it
            item = self.ray.get(ref)
            if item["kind"] == "event":
                on_event(item["msg"])
            elif item["kind"] == "progress":
                on_progress(item)
            elif item["kind"] == "error":
                raise ClusterError(f"the build of {what} failed on node {item['node'][:12]}: {item['message']}")
            elif item["kind"] == "bundle":
                return dict(item)
        raise ClusterError(f"the build of {what} ended without its artifacts")

    # ---- devices ------------------------------------------------------------------------------------------

    def lease(self, device: "LocalDevice | SshDevice") -> Any:
        """The device's actor: created on a node that can reach it, or the one another run already made."""
        if device.name in self._actors:
            return self._actors[device.name]
        if not self.nodes_for(device.gateway):
            known = sorted({f"{k}={v}" for n in self.nodes() if n["alive"] for k, v in n["labels"].items()} |
                           {r for n in self.nodes() if n["alive"] for r in n["resources"]})
            raise DeviceError(f"no live node of the Ray cluster at {self.address} matches its gateway "
                              f"{device.gateway!r} (labels and resources of live nodes: {', '.join(known) or 'none'}); "
                              "start a node there with `ray start --address HEAD:PORT --labels KEY=VALUE`, or fix "
                              "'gateway' in devices.yaml", device=device.name)
        from edgekit.cluster._remote import DeviceLease

        # Named by where the device is (its address, workdir, gateway) and edgekit's code: every run on this device
        # shares one actor whatever else it sets (trust, tags, profile); a moved device or another edgekit gets its
        # own actor (and the agent's lock still keeps the two apart).
        where_it_is = device.model_dump(include={"name", "kind", "host", "port", "user", "workdir", "gateway"})
        tag = hashlib.sha256((json.dumps(where_it_is, sort_keys=True) + _code_digest()).encode()).hexdigest()[:12]
        actor = DeviceLease.options(  # type: ignore[attr-defined]
            name=f"device:{device.name}:{tag}", namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
            max_restarts=-1, max_task_retries=0, **_placement(device.gateway)).remote(device)
        self._actors[device.name] = actor
        return actor

    def bundle(self, arts: Sequence["Artifact"], root: Path) -> tuple[Any, str, list[dict[str, Any]]]:
        """The artifacts' files in the object store for the devices' nodes to fetch, their digest, and the
        artifacts' records (small: sent with every call). Put once per set of files (device threads share it)."""
        from edgekit.cluster.bundle import artifact_files, digest, pack

        key = tuple(str(f) for f in artifact_files(arts))
        with self._lock:
            if key not in self._bundles:
                packed = pack(arts, root)
                self._bundles[key] = self.ray.put(packed), digest(packed), packed["records"]
            return self._bundles[key]

    def measure(self, device: "LocalDevice | SshDevice", bundle: tuple[Any, str, list[dict[str, Any]]],
                cfg: "BenchConfig", *,
                skip: Iterable[Any],
                deadline: float, on_row: Callable[[dict[str, Any]], None], on_info: Callable[[dict[str, Any]], None],
                on_event: Callable[[str], None], stopped: Callable[[], bool]) -> dict[str, float | None]:
        """Measure on ``device`` through its actor, handing each row on as it arrives; the job's timings
        (``scheduling_s``: call to the actor starting it; ``driver_s``: the whole call; ``measure_s``: the
        measuring inside the actor). Raises DeviceError (``transient`` when the cluster lost the actor or its
        node: retry) or AgentError as a direct run would."""
        ray = self.ray
        name = device.name
        called = time.perf_counter()
        timings: dict[str, float | None] = {"scheduling_s": None, "driver_s": None, "measure_s": None}
        ref, key, records = bundle
        stream = self.lease(device).measure.remote([ref], key, records, cfg, list(skip),
                                                   max(deadline - time.monotonic(), 1.0))
        try:
            while True:
                ready, _ = ray.wait([stream], timeout=0.5)
                if not ready:
                    if stopped():
                        raise DeviceError("stopped while measuring on the cluster", device=name, transient=False)
                    continue
                try:
                    item = ray.get(next(stream))
                except StopIteration:
                    raise DeviceError("the device's actor ended without a result", device=name, transient=True)
                kind = item["kind"]
                if kind == "started":
                    timings["scheduling_s"] = time.perf_counter() - called
                elif kind == "row":
                    on_row(item["row"])
                elif kind == "info":
                    on_info(item["info"])
                elif kind == "event":
                    on_event(item["msg"])
                elif kind == "end":
                    timings.update(driver_s=time.perf_counter() - called, measure_s=item["measure_s"])
                    return timings
                elif kind == "error":
                    if item["type"] == "AgentError":
                        raise AgentError(item["message"])
                    raise DeviceError(item["message"], transient=item["transient"])
        except ray.exceptions.RayError as exc:
            raise DeviceError(f"the cluster lost the actor measuring it ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200]})", device=name, transient=True) from exc
