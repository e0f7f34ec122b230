"""What runs on the cluster's nodes: the build task, one leasing actor per device, and the artifact registry.

Imported only once Ray is (``edgekit.cluster.connect``); the nodes import it from their own edgekit install.
"""

from __future__ import annotations

import queue
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import ray

from edgekit.cluster.build import BuildSpec, build_profile
from edgekit.cluster.bundle import artifacts_at, digest, pack, write_files
from edgekit.exporters.cache import BuildCache

CLAIM_TTL_S = 30.0  # a build claim not renewed for this long belongs to a dead builder: another may take it
# (at once when the builder's node is gone)


def node_id() -> str:
    return ray.get_runtime_context().get_node_id()


def _node_alive(node: str) -> bool:
    """Whether the cluster still has this node (a claim of a dead node's builder is free at once, not after
    its time-to-live)."""
    return any(n["NodeID"] == node and n.get("Alive") for n in ray.nodes())


# ---- artifact registry: the cluster-wide half of the build cache -------------------------------------------


@ray.remote(num_cpus=0)
class ArtifactRegistry:
    """Build-cache key -> the entry's record and files (an object this actor owns, so it outlives the task
    that built it), plus who is building which key right now. One per cluster, on the head node."""

    def __init__(self) -> None:
        self.entries: dict[str, Any] = {}
        self.claims: dict[str, tuple[str, float]] = {}
        self.publishes: dict[str, list[str]] = {}  # key -> the nodes that published it (de-duplication check)

    def get(self, key: str) -> list[Any] | None:
        ref = self.entries.get(key)
        return None if ref is None else [ref]  # in a list: Ray hands a nested ref over without resolving it

    def claim(self, key: str, owner: str) -> str:
        """"built" (fetch it), "yours" (build it, renewing the claim), or "theirs" (someone else is)."""
        if key in self.entries:
            return "built"
        held = self.claims.get(key)
        now = time.monotonic()
        if held is None or held[0] == owner or now - held[1] > CLAIM_TTL_S or not _node_alive(held[0].split(":")[0]):
            self.claims[key] = (owner, now)
            return "yours"
        return "theirs"

    def release(self, key: str, owner: str) -> None:
        if self.claims.get(key, ("",))[0] == owner:
            del self.claims[key]

    def publish(self, key: str, record: dict[str, Any], contents: dict[str, bytes], node: str) -> None:
        self.publishes.setdefault(key, []).append(node)
        if key not in self.entries:
            self.entries[key] = ray.put((record, contents))
        self.claims.pop(key, None)

    def stats(self) -> dict[str, Any]:
        return {"entries": len(self.entries), "publishes": dict(self.publishes)}


class _Claim:
    """A build-cache key's lock across the cluster (the registry's claim), shaped like ``filelock.FileLock``
    for ``exporters._Build``: ``acquire(timeout=0)`` raises ``filelock.Timeout`` while another node builds
    it. While held, a thread renews the claim; a builder that dies stops renewing and loses it."""

    def __init__(self, registry: Any, key: str) -> None:
        import secrets

        self.registry, self.key = registry, key
        self.owner = f"{node_id()}:{secrets.token_hex(4)}"
        self._stop = threading.Event()

    def acquire(self, timeout: float = -1) -> "_Claim":
        from filelock import Timeout

        start = time.monotonic()
        while ray.get(self.registry.claim.remote(self.key, self.owner)) == "theirs":
            if 0 <= timeout <= time.monotonic() - start:
                raise Timeout(self.key)
            time.sleep(0.5)
        self._stop.clear()
        threading.Thread(target=self._renew, daemon=True).start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(CLAIM_TTL_S / 3):
            self.registry.claim.remote(self.key, self.owner)

    def release(self) -> None:
        self._stop.set()
        ray.get(self.registry.release.remote(self.key, self.owner))

    def __enter__(self) -> "_Claim":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


class ClusterBuildCache(BuildCache):
    """This node's build cache, backed by the cluster's registry: a key another node built is fetched (and
    hash-checked) instead of built; a key built here is published; the build lock is the registry's claim."""

    def __init__(self, registry: Any) -> None:
        super().__init__()
        self.registry = registry

    def lock(self, key: str) -> Any:
        return _Claim(self.registry, key)

    def lookup(self, key: str) -> tuple[dict[str, Any] | None, str | None]:
        record, damaged = super().lookup(key)
        if record is not None:
            return record, damaged
        found = ray.get(self.registry.get.remote(key))
        if found is None:
            return None, damaged
        theirs, contents = ray.get(found[0])
        why_not = self.add_entry(key, theirs, contents)
        if why_not:
            return None, why_not
        return super().lookup(key)

    def store(self, key: str, art: Any) -> str | None:
        why_not = super().store(key, art)
        entry = None if why_not else self.read_entry(key)
        if entry is not None:
            ray.get(self.registry.publish.remote(key, *entry, node_id()))
        return why_not


# ---- build tasks --------------------------------------------------------------------------------------------


def _pump(work: Callable[[Callable[[dict[str, Any]], None]], None], last: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    """Run ``work(put)`` in a thread and yield what it puts, as it puts it, through the first item whose kind is
    in ``last``. Ray's streaming generators yield from the task's own thread, while edgekit's build and
    measuring report through callbacks: this joins the two. The thread is always waited for, even when the
    consumer stops listening (a driver gone): an actor's next call never overlaps this one's work."""
    items: queue.Queue[dict[str, Any]] = queue.Queue()
    thread = threading.Thread(target=work, args=(items.put,), daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            yield item
            if item["kind"] in last:
                return
    finally:
        thread.join()


Work = Callable[[Callable[[str], None], Callable[[Any], None]], "tuple[list[Any], dict[str, Any]]"]


def _streamed(work: Work, out: Path) -> Iterator[dict[str, Any]]:
    """Run ``work(on_event, on_progress)`` in a thread, streaming ``{"kind": "event"|"progress", ...}`` items as
    they happen, then ``{"kind": "bundle", ...}`` (the artifacts under ``out``, see ``bundle.pack``) or
    ``{"kind": "error", ...}``, each with the node that built."""
    def run(put: Callable[[dict[str, Any]], None]) -> None:
        try:
            arts, extra = work(lambda m: put({"kind": "event", "msg": m}),
                               lambda p: put({"kind": "progress", "target": p.target, "precision": p.precision,
                                              "stage": p.stage, "detail": p.detail}))
            put({"kind": "bundle", **pack(arts, out), **extra, "node": node_id()})
        except BaseException as exc:  # noqa: BLE001 - handed to the driver as the build's failure
            put({"kind": "error", "message": f"{type(exc).__name__}: {exc}", "node": node_id()})

    yield from _pump(run, ("bundle", "error"))


def build_task(spec: BuildSpec, prof: Any, registry: Any, jobs: int) -> Iterator[dict[str, Any]]:
    """A fleet's profile: compress and export (``build.build_profile``) on this node."""
    with tempfile.TemporaryDirectory(prefix="edgekit-build-") as tmp:
        root = Path(tmp)
        local = spec.materialize(root / "inputs")
        cache = ClusterBuildCache(registry) if spec.cache else False

        def work(on_event: Callable[[str], None], on_progress: Callable[[Any], None]) -> tuple[list[Any], dict[str, Any]]:
            arts, sha = build_profile(local, prof, root / "out", cache=cache, jobs=jobs, on_event=on_event,
                                      on_progress=on_progress)
            return arts, {"model_sha256": sha}

        yield from _streamed(work, root / "out")


def export_task(model: bytes, targets: list[str], precisions: list[str], registry: Any,
                jobs: int) -> Iterator[dict[str, Any]]:
    """An already compressed model (pickled, as the export workers take it) exported on this node."""
    import pickle

    from edgekit.exporters import export

    with tempfile.TemporaryDirectory(prefix="edgekit-export-") as tmp:
        out = Path(tmp) / "out"
        cm = pickle.loads(model)

        def work(on_event: Callable[[str], None], on_progress: Callable[[Any], None]) -> tuple[list[Any], dict[str, Any]]:
            return export(cm, targets, out, precisions=precisions, cache=ClusterBuildCache(registry), jobs=jobs,
                          on_event=on_event, on_progress=on_progress), {}

        yield from _streamed(work, out)


# ---- one actor per device ----------------------------------------------------------------------------------


@ray.remote(num_cpus=0)
class DeviceLease:
    """The only way this cluster measures on its device: Ray runs an actor's calls one at a time, and every
    run asks the same named actor, so two runs never measure on the device at once."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self.node = node_id()
        self.root = Path(tempfile.gettempdir()) / "edgekit-cluster" / "bundles"
        self.unpacked: dict[str, list[Any]] = {}

    def where(self) -> str:
        return self.node

    def measure(self, bundle: list[Any], key: str, records: list[dict[str, Any]], cfg: Any, skip: list[Any],
                budget_s: float) -> Iterator[dict[str, Any]]:
        """Stream ``{"kind": "info"|"event"|"row", ...}`` items, then ``{"kind": "end"}`` or ``{"kind": "error"}``.

        ``bundle`` is ``[ObjectRef]`` of the artifacts' files (in a list, so Ray does not fetch it for every
        call); it is fetched, checked and written once per node (``<tmp>/edgekit-cluster/bundles/<key>``), the
        first time an actor there needs ``key`` (the bundle's ``digest``)."""
        from edgekit.device.measure import measure_on
        from edgekit.errors import AgentError, DeviceError
        from edgekit.transport import open_transport

        yield {"kind": "started"}  # the driver times how long the call waited for this actor (scheduling)
        if key not in self.unpacked:
            dest = self.root / key
            if not dest.is_dir():  # else another actor on this node wrote (and checked) it already
                files = ray.get(bundle[0])
                if digest(files) != key:
                    raise ValueError(f"bundle {key[:12]} arrived with other contents")
                write_files(files, dest)
            self.unpacked[key] = artifacts_at(records, dest)
        arts = self.unpacked[key]
        deadline = time.monotonic() + budget_s

        def work(put: Callable[[dict[str, Any]], None]) -> None:
            started = time.perf_counter()
            try:
                transport = open_transport(self.device)
                try:
                    measure_on(transport, arts, cfg, on_event=lambda m: put({"kind": "event", "msg": m}),
                               skip={tuple(k) for k in skip},
                               on_row=lambda r: put({"kind": "row", "row": {**r, "measured_on": self.node}}),
                               on_info=lambda i: put({"kind": "info", "info": i}), deadline=deadline,
                               raise_transient=True)
                finally:
                    transport.close()
                put({"kind": "end", "measure_s": time.perf_counter() - started})
            except (DeviceError, AgentError) as exc:
                put({"kind": "error", "type": type(exc).__name__, "message": str(exc),
                     "transient": bool(getattr(exc, "transient", False))})
            except BaseException as exc:  # noqa: BLE001 - the driver records it for this device
                put({"kind": "error", "type": "internal", "message": f"{type(exc).__name__}: {exc}",
                     "transient": False})

        yield from _pump(work, ("end", "error"))
