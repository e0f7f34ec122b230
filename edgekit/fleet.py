"""``bench``: one model on many devices at once, with nothing lost when a device, or the host, fails.

How a run goes:

- Devices are grouped by profile. Each profile's artifacts are compressed and exported once, in one
  background thread, in the order the devices were named; a device waits only for its own profile's.
- Device threads run at most ``FleetConfig.parallel`` at a time. Each has its own time budget
  (``device_timeout``, counted from when its artifacts are ready): at the deadline the host closes its
  connection, and a thread still stuck ``grace_s`` later is abandoned and its failure recorded for it.
- A transient connection error (refused, no answer, connection lost) is retried with exponential
  back-off and jitter; the retry measures only what is still missing. A wrong host key or a refused
  login is not retried: trying again cannot fix it.
- Every row goes to the run's journal (fsynced) the moment it is measured. A failed device is a row too,
  with the ``stage`` it reached and the cause. ``resume=RUN_ID`` measures only what has no row yet, or
  whose row failed for a device reason (connection, timeout, agent), with the run's own artifacts.
- With ``FleetConfig.cluster`` the builds run as Ray tasks and each device is measured through its leasing
  actor (``edgekit.cluster``); everything above stays here, the same for both.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import pandas as pd

from edgekit._version import __version__
from edgekit.config.bench import BenchRequest
from edgekit.config.device import LOCAL, LocalDevice, SshDevice, device_profile, load_devices, with_trust
from edgekit.config.profile import Profile
from edgekit.device.measure import measure_on
from edgekit.errors import AgentError, ConfigError, DeviceError, EdgekitError, UnknownNameError
from edgekit.results.rows import RowKey, row_key
from edgekit.results.store import Run, artifact_from_record, artifact_record, now_iso

if TYPE_CHECKING:
    from edgekit.cluster import Cluster
    from edgekit.exporters.base import Artifact, BuildProgress
    from edgekit.transport import Transport

ProgressFn = Callable[[str | None, str, str], None]  # (device or None for the host, stage, detail)

# Row stages that settle a key: measured, or failed for a reason another try would not change.
SETTLED_STAGES = frozenset({"done", "export", "runtime"})


@dataclass
class DeviceOutcome:
    """How one device's part of the run ended."""

    device: str
    profile: str
    stage: str  # "done", or the stage it failed in: export, connect, agent, measure, timeout, interrupted
    error: str | None = None
    attempts: int = 0
    seconds: float = 0.0
    rows: int = 0  # rows measured in this session (a resumed run counts only the new ones)

    @property
    def ok(self) -> bool:
        return self.error is None


class FleetResult(dict[str, DeviceOutcome]):
    """Device name -> outcome, plus the run's rows. One bad device never hides the others."""

    def __init__(self, outcomes: dict[str, DeviceOutcome], df: pd.DataFrame, run: Run) -> None:
        super().__init__(outcomes)
        self.df = df
        self.run_id = run.id
        self.run_dir = run.root

    @property
    def succeeded(self) -> dict[str, DeviceOutcome]:
        return {k: v for k, v in self.items() if v.ok}

    @property
    def failed(self) -> dict[str, DeviceOutcome]:
        return {k: v for k, v in self.items() if not v.ok}


def select_devices(
    names: Sequence[str] | None = None,
    tags: Sequence[str] | None = None,
    all_devices: bool = False,
    devices_file: str | Path | None = None,
) -> list[LocalDevice | SshDevice]:
    """Devices by name, by tag (any of them), or all registered ones (``local`` only when none are)."""
    registry = load_devices(devices_file)
    chosen: dict[str, LocalDevice | SshDevice] = {}
    if all_devices:
        chosen = {n: d for n, d in registry.items() if n != LOCAL or len(registry) == 1}
    for name in names or []:
        if name not in registry:
            raise UnknownNameError("device", name, registry, hint="register it in devices.yaml")
        chosen[name] = registry[name]
    for tag in tags or []:
        tagged = {n: d for n, d in registry.items() if tag in d.tags}
        if not tagged:
            known = sorted({t for d in registry.values() for t in d.tags})
            raise ConfigError(f"no device has tag {tag!r}; tags in use: {', '.join(known) or '(none)'}",
                              field="tags")
        chosen.update(tagged)
    if not chosen:
        raise ConfigError("no devices chosen: name them (devices=[...] / --devices a,b), pick by tag "
                          "(--tag), or take every registered one (--all)", field="devices")
    return list(chosen.values())


def bench(request: BenchRequest, *, resume: str | None = None, on_progress: ProgressFn | None = None) -> FleetResult:
    """Benchmark ``request.model`` on every chosen device; see the module docstring for how failures are kept.

    ``resume``: the id of an earlier run to complete (its model, devices and settings are reused; the model
    must be given again only if it was a Python object).
    """
    if resume:
        run = Run.open(resume, request.results)
        request = request.resumed(run.meta.get("request") or {}, resume)
    if request.model is None:
        raise ConfigError("no model given", field="model")
    chosen = [with_trust(d, request.trust_new_host) for d in
              select_devices(request.devices, request.tags, request.all_devices, request.devices_file)]
    profiles = {d.name: (device_profile(d, request.profile), d) for d in chosen}
    record = request.record([d.name for d in chosen])
    cluster = _connect(request.fleet_config.cluster)
    if resume:
        run.update_meta(status="running", resumed=[*run.meta.get("resumed", []), now_iso()],
                        **({"cluster": cluster.facts()} if cluster else {}))
    else:
        run = Run.create(request.results, {**_run_meta(request.model, record, profiles),
                                           "cluster": cluster.facts() if cluster else None})
    ctx = _Context(run, request, on_progress or (lambda *a: None), record["model"], cluster)
    exports = _start_exports(ctx, profiles, reuse=bool(resume))
    settled = _settled_keys(run) if resume else {}
    jobs = [_Job(dev, profiles[dev.name][0].name, exports[profiles[dev.name][0].name], settled.get(dev.name, set()))
            for dev in chosen]
    try:
        _run_jobs(ctx, jobs)
    except KeyboardInterrupt:
        ctx.stop.set()
        for job in jobs:
            if not job.finished.is_set():
                _give_up(ctx, job, "interrupted", "the host run was interrupted before this device finished")
        run.finalize("interrupted", devices={**run.meta.get("devices", {}), **ctx.facts})
        raise
    df = run.finalize("complete", devices={**run.meta.get("devices", {}), **ctx.facts})
    result = FleetResult({j.device.name: j.outcome for j in jobs}, df, run)
    if request.mlflow:
        from edgekit.results.mlflow_log import log_run

        log_run(run, df, request.mlflow)
    return result


# ---- internals -------------------------------------------------------------------------------------


class _Context:
    def __init__(self, run: Run, request: BenchRequest, progress: ProgressFn, model: str,
                 cluster: "Cluster | None" = None) -> None:
        self.run, self.request, self.progress, self.model = run, request, progress, model
        self.cfg, self.fleet = request.bench_config, request.fleet_config
        self.stop = threading.Event()
        self.facts: dict[str, Any] = {}
        self.cluster = cluster
        self.built_on: dict[str, str | None] = {}  # profile -> the cluster node that built its artifacts


def _connect(address: str | None) -> "Cluster | None":
    if address is None:
        return None
    from edgekit.cluster import connect

    return connect(address)


@dataclass
class _Job:
    device: LocalDevice | SshDevice
    profile: str
    artifacts: "Future[list[Artifact]]"
    settled: set[RowKey]
    outcome: DeviceOutcome = field(init=False)
    stage: str = "waiting"
    attempts: int = 0
    deadline: float | None = None
    transport: "Transport | None" = None
    timed_out: bool = False
    finished: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.outcome = DeviceOutcome(self.device.name, self.profile, "waiting")


def _run_meta(model: Any, request: dict[str, Any], profiles: dict[str, tuple[Profile, Any]]) -> dict[str, Any]:
    from edgekit.config.target import load_target

    meta_profiles: dict[str, Any] = {}
    for prof, _ in profiles.values():
        if prof.name in meta_profiles:
            continue
        targets = {}
        for t in request["targets"] or prof.targets:
            try:
                tgt = load_target(t)
                targets[tgt.name] = {"source": tgt.source, "sha256": _file_sha(tgt.source)}
            except EdgekitError as exc:
                targets[str(t)] = {"error": str(exc)}
        meta_profiles[prof.name] = {"source": prof.source, "sha256": _file_sha(prof.source), "targets": targets}
    is_file = isinstance(model, (str, Path)) and Path(model).is_file()
    return {"model": request["model"], "model_sha256": _file_sha(str(model)) if is_file else None,
            "edgekit_version": __version__, "request": request, "profiles": meta_profiles,
            "device_profiles": {name: p.name for name, (p, _) in profiles.items()}, "host": _host_facts()}


def _host_facts() -> dict[str, Any]:
    import platform

    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
            "node": platform.node()}


def _file_sha(path: str | None) -> str | None:
    if not path or not Path(path).is_file():
        return None
    from edgekit.transport import file_sha256

    return file_sha256(Path(path))


def _start_exports(ctx: _Context, profiles: dict[str, tuple[Profile, Any]], *,
                   reuse: bool) -> dict[str, "Future[list[Artifact]]"]:
    """A future per profile; one thread exports the profiles in turn (each export uses every core)."""
    order: dict[str, Profile] = {}
    for prof, _ in profiles.values():
        order.setdefault(prof.name, prof)
    futures: dict[str, Future[list[Artifact]]] = {name: Future() for name in order}
    previous = _artifact_records(ctx.run) if reuse else {}

    def work() -> None:
        for name, prof in order.items():
            fut = futures[name]
            try:
                arts = _reusable(previous.get(name))
                if arts is not None:
                    ctx.built_on[name] = previous[name].get("built_on")
                else:
                    arts = _export_profile(ctx, prof)
                fut.set_result(arts)
            except BaseException as exc:  # noqa: BLE001 - the devices of this profile report it
                fut.set_exception(exc)

    threading.Thread(target=work, name="edgekit-export", daemon=True).start()
    return futures


def _export_profile(ctx: _Context, prof: Profile) -> list[Artifact]:
    from edgekit.cluster.build import BuildSpec, build_profile
    from edgekit.exporters.base import BuildProgress

    def event(msg: str) -> None:
        ctx.progress(None, f"export {prof.name}", msg)

    def built(p: BuildProgress) -> None:  # a line per artifact, its stage as it moves
        ctx.progress(None, f"build {prof.name} {p.target} {p.precision}", p.stage + (f" {p.detail}" if p.detail else ""))

    started = time.perf_counter()
    spec, out = BuildSpec.of(ctx.request), ctx.run.root / "artifacts" / prof.name
    node = None
    if ctx.cluster is not None:
        arts, model_sha, node = ctx.cluster.build(
            spec, prof, out, cpus=ctx.fleet.build_cpus, on_event=event,
            on_progress=lambda p: built(BuildProgress(p["target"], p["precision"], p["stage"], p["detail"])))
    else:
        arts, model_sha = build_profile(spec, prof, out, cache=ctx.request.cache, on_event=event, on_progress=built)
    ctx.built_on[prof.name] = node
    ctx.run.append("artifacts", profile=prof.name, model_sha256=model_sha, built_on=node,
                   seconds=round(time.perf_counter() - started, 3),
                   artifacts=[artifact_record(a) for a in arts], sha256=_artifact_hashes(arts))
    event(f"{sum(a.ok for a in arts)}/{len(arts)} artifacts ready" + (f" (built on node {node[:12]})" if node else ""))
    return arts


def _artifact_hashes(arts: list[Artifact]) -> dict[str, str]:
    from edgekit.cluster.bundle import artifact_files
    from edgekit.transport import file_sha256

    return {str(f): file_sha256(f) for f in artifact_files(arts)}


def _artifact_records(run: Run) -> dict[str, dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for rec in run.records("artifacts"):
        latest[rec["profile"]] = rec
    return latest


def _reusable(record: dict[str, Any] | None) -> list[Artifact] | None:
    """The run's own artifacts, if every file is still there unchanged; else None (export again)."""
    if not record:
        return None
    from edgekit.transport import file_sha256

    for path, digest in (record.get("sha256") or {}).items():
        if not Path(path).is_file() or file_sha256(Path(path)) != digest:
            return None
    return [artifact_from_record(a) for a in record["artifacts"]]


def _settled_keys(run: Run) -> dict[str, set[RowKey]]:
    settled: dict[str, set[RowKey]] = {}
    for row in run.journal_rows():
        if row.get("stage") in SETTLED_STAGES and row.get("target") is not None:
            settled.setdefault(row["device"], set()).add(row_key(row))
    return settled


def _run_jobs(ctx: _Context, jobs: list[_Job]) -> None:
    """Start devices in the order named, at most ``parallel`` at once, each once its artifacts are ready;
    watch their deadlines until every one is finished or abandoned."""
    pending = list(jobs)
    for job in pending:
        ctx.progress(job.device.name, "waiting", f"for the {job.profile} artifacts")
    while not all(job.finished.is_set() for job in jobs):
        running = sum(1 for j in jobs if j.deadline is not None and not j.finished.is_set())
        for job in list(pending):
            if not job.artifacts.done():
                continue
            if job.artifacts.exception() is not None:
                pending.remove(job)
                _give_up(ctx, job, "export", f"export for profile {job.profile!r} failed: {job.artifacts.exception()}")
            elif running < ctx.fleet.parallel:
                pending.remove(job)
                running += 1
                job.deadline = time.monotonic() + ctx.fleet.device_timeout
                threading.Thread(target=_device_main, args=(ctx, job), name=f"edgekit-{job.device.name}",
                                 daemon=True).start()
        now = time.monotonic()
        for job in jobs:
            if job.finished.is_set() or job.deadline is None or now < job.deadline:
                continue
            if not job.timed_out:
                job.timed_out = True
                ctx.progress(job.device.name, "timeout", f"no result within {ctx.fleet.device_timeout:g} s: closing")
                _close_quietly(job.transport)
            elif now > job.deadline + ctx.fleet.grace_s:
                _give_up(ctx, job, "timeout", f"device {job.device.name!r}: no result within device_timeout "
                         f"{ctx.fleet.device_timeout:g} s (stuck in stage {job.stage}; abandoned)")
        time.sleep(0.05)


def _device_main(ctx: _Context, job: _Job) -> None:
    try:
        _measure_device(ctx, job, job.artifacts.result())
    except BaseException as exc:  # noqa: BLE001 - a bug here must not take the other devices down
        _give_up(ctx, job, job.stage, f"internal error: {type(exc).__name__}: {exc}")


def _measure_device(ctx: _Context, job: _Job, artifacts: list[Artifact]) -> None:
    from edgekit.transport import open_transport

    name = job.device.name
    new_rows = 0

    def on_row(row: dict[str, Any]) -> None:
        nonlocal new_rows
        with job.lock:
            if job.finished.is_set():  # abandoned meanwhile: its failure row is already written
                return
            extra = {"built_on": ctx.built_on.get(job.profile)} if ctx.cluster is not None else {}
            ctx.run.append("row", row={**row, **extra, "attempts": job.attempts})
        job.settled.add(row_key(row))
        new_rows += 1
        ctx.progress(name, "measuring", f"{len(job.settled)} rows")

    def on_info(info: dict[str, Any]) -> None:
        ctx.facts[name] = info
        ctx.run.append("device", device=name, info=info)

    while not ctx.stop.is_set():
        job.attempts += 1
        try:
            job.stage = "connect"
            ctx.progress(name, "connecting", f"try {job.attempts}")
            if ctx.cluster is not None:
                ctx.cluster.lease(job.device)  # its actor, on a node its gateway names
                job.stage = "measure"
                timings = ctx.cluster.measure(
                    job.device, ctx.cluster.bundle(artifacts, ctx.run.root / "artifacts" / job.profile), ctx.cfg,
                    skip=set(job.settled),
                    deadline=job.deadline or time.monotonic() + ctx.fleet.device_timeout, on_row=on_row,
                    on_info=on_info, on_event=lambda msg: ctx.progress(name, "measuring", msg),
                    stopped=lambda: job.timed_out or ctx.stop.is_set() or job.finished.is_set())
                ctx.run.append("cluster_job", device=name, attempt=job.attempts, **timings)
            else:
                job.transport = open_transport(job.device)
                try:
                    job.stage = "measure"
                    measure_on(job.transport, artifacts, ctx.cfg,
                               on_event=lambda msg: ctx.progress(name, "measuring", msg), skip=set(job.settled),
                               on_row=on_row, on_info=on_info, deadline=job.deadline, raise_transient=True)
                finally:
                    _close_quietly(job.transport)
            _finish(ctx, job, DeviceOutcome(name, job.profile, "done", None, job.attempts,
                                            time.monotonic() - job.started, new_rows))
            return
        except (DeviceError, AgentError) as exc:
            if job.timed_out:
                _give_up(ctx, job, "timeout", f"device {name!r}: no result within device_timeout "
                         f"{ctx.fleet.device_timeout:g} s (in stage {job.stage}): {exc}")
                return
            stage = job.stage if isinstance(exc, DeviceError) else "agent"
            transient = isinstance(exc, DeviceError) and exc.transient
            wait = ctx.fleet.backoff(job.attempts)
            if transient and job.attempts <= ctx.fleet.retries and time.monotonic() + wait < (job.deadline or 0):
                ctx.run.append("retry", device=name, attempt=job.attempts, stage=stage, error=str(exc), wait_s=wait)
                ctx.progress(name, "retrying", f"in {wait:.1f} s after: {exc}")
                if ctx.stop.wait(wait):
                    return
                continue
            tries = f" (after {job.attempts} tries)" if job.attempts > 1 else ""
            _give_up(ctx, job, stage, f"{exc}{tries}")
            return


def _give_up(ctx: _Context, job: _Job, stage: str, error: str) -> None:
    """Record the device's failure as a row (once), unless it already finished."""
    with job.lock:
        if job.finished.is_set():
            return
        row = {"device": job.device.name, "profile": job.profile, "model": ctx.model, "target": None,
               "precision": None, "threads": None, "error": error, "stage": stage, "attempts": job.attempts}
        ctx.run.append("row", row=row)
        job.outcome = DeviceOutcome(job.device.name, job.profile, stage, error, job.attempts,
                                    time.monotonic() - job.started)
        job.finished.set()
    ctx.progress(job.device.name, "failed", f"{stage}: {error.splitlines()[0]}")


def _finish(ctx: _Context, job: _Job, outcome: DeviceOutcome) -> None:
    with job.lock:
        if job.finished.is_set():
            return
        job.outcome = outcome
        job.finished.set()
    ctx.progress(job.device.name, "done", f"{outcome.rows} rows in {outcome.seconds:.1f} s")


def _close_quietly(transport: "Transport | None") -> None:
    if transport is None:
        return
    try:
        transport.close()
    except Exception:  # noqa: BLE001 - closing a dead link may raise; it is closed either way
        pass
