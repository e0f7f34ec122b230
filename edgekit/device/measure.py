"""``benchmark``: push each artifact to a device, run it through the agent there, collect rows.

One artifact's failure (push, missing runtime, agent crash) is that artifact's row, never the end of the
others; only a device we cannot use at all (unreachable, agent cannot be installed) raises DeviceError.
"""

from __future__ import annotations

import os
import posixpath
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, Sequence

import pandas as pd

from edgekit.agent.device_info import runtime_names
from edgekit.config.bench import BenchConfig
from edgekit.config.device import LocalDevice, SshDevice, get_device
from edgekit.device.client import describe_device, install_agent, run_agent
from edgekit.errors import AgentError, DeviceError
from edgekit.results.rows import (
    RowKey,
    artifact_row,
    execution_fields,
    flag_accelerator,
    gpu_fields,
    mark_emulated,
    measurement_fields,
    row_key,
    to_frame,
)
from edgekit.transport import Transport, file_sha256, open_transport

if TYPE_CHECKING:
    from edgekit.exporters.base import Artifact


def benchmark(
    artifacts: Sequence[Artifact],
    device: str | LocalDevice | SshDevice = "local",
    config: BenchConfig | None = None,
    *,
    devices_file: str | Path | None = None,
    on_event: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Measure every artifact on ``device``; failed exports, pushes and runs become rows with ``error``."""
    cfg = config or BenchConfig()
    dev = get_device(device, devices_file)
    with open_transport(dev) as transport:
        rows = measure_on(transport, artifacts, cfg, on_event)
    return to_frame(rows)


def measure_on(transport: Transport, artifacts: Sequence[Artifact], cfg: BenchConfig,
               on_event: Callable[[str], None] | None = None, *, skip: Collection[RowKey] = (),
               on_row: Callable[[dict[str, Any]], None] | None = None,
               on_info: Callable[[dict[str, Any]], None] | None = None, deadline: float | None = None,
               raise_transient: bool = False) -> list[dict[str, Any]]:
    """One row per artifact x thread count, each handed to ``on_row`` the moment it is complete.

    A fleet run passes ``skip`` (keys already measured: resume and retries), a ``deadline``
    (``time.monotonic()``) that bounds every agent run, and ``raise_transient``: a lost connection then
    propagates, to be retried, instead of becoming the error of every artifact left. ``on_info`` gets the
    device's facts (asked for on the local device too when it is given).
    """
    remote = not transport.is_local
    agent = install_agent(transport)
    formats = {a.format for a in artifacts if not a.error and a.path is not None}
    info = describe_device(transport, agent, formats) if remote or on_info else None
    if info and on_info:
        on_info(info)
    runtimes = info["runtimes"] if info else None
    emulated = bool(info.get("emulated")) if info else _host_emulated()
    rows = []

    def emit(row: dict[str, Any]) -> None:
        mark_emulated(row, emulated)
        rows.append(row)
        if on_row:
            on_row(row)

    for art in artifacts:
        problem = art.error or _missing_runtime(art, runtimes, transport)
        if problem or art.path is None:
            if row_key(artifact_row(art, transport.device_name)) not in skip:
                stage = "export" if art.error or art.path is None else "runtime"
                emit({**artifact_row(art, transport.device_name), "error": problem, "stage": stage})
            continue
        for threads in cfg.thread_counts(art.threads):  # one fresh agent process, and one row, per count
            row = {**artifact_row(art, transport.device_name), "threads": threads, "stage": "done"}
            if row_key(row) in skip:
                continue
            if on_event:
                on_event(f"measuring {art.target} {art.precision} ({threads} threads) on {transport.device_name}")
            try:
                answer = _measure(art, transport, agent, cfg, remote, threads, deadline)
                row.update(measurement_fields(answer, max_ms=cfg.timeout * 1e3 if cfg.timeout else None))
                row.update(execution_fields(answer, art.execution), **gpu_fields(answer))
                flag_accelerator(row)
            except DeviceError as exc:
                if raise_transient and exc.transient:
                    raise
                row.update(error=f"benchmark failed: {exc}", stage="measure")
            except AgentError as exc:
                row.update(error=f"benchmark failed: {exc}", stage="measure")
            emit(row)
    return rows


def _host_emulated() -> bool:
    """The local device is this host: is this process itself run by qemu-user?"""
    from edgekit.agent.device_info import cpu_emulation

    return bool(cpu_emulation()["emulated"])


def _missing_runtime(art: Artifact, runtimes: dict[str, Any] | None, transport: Transport) -> str | None:
    """Why the device cannot run ``art`` (its runtime does not import there), or None."""
    if runtimes is None or runtimes.get(art.format, {}).get("package"):
        return None
    why = runtimes.get(art.format, {}).get("error") or "not importable"
    return (f"runtime missing on device {transport.device_name!r}: {art.format} artifacts need "
            f"{runtime_names(art.format)} for {transport.python} ({why})")


def _measure(art: Artifact, transport: Transport, agent: str, cfg: BenchConfig, remote: bool,
             threads: int, deadline: float | None = None) -> dict[str, Any]:
    path, inputs = art.path, art.inputs
    if path is None or inputs is None:  # measure_on passes only exported artifacts; an export always writes inputs
        raise AgentError(f"artifact {art.target} {art.precision} has no file or no inputs to measure")
    files = list(art.files) or [path]
    staged = dict(zip(files, transport.stage(files)))
    pushed = {inputs: transport.put(inputs)}
    if cfg.device_accuracy and art.eval_set is not None:
        pushed[art.eval_set] = transport.put(art.eval_set)
    request: dict[str, Any] = {
        "artifact": staged[path], "format": art.format, "inputs": pushed[inputs], "threads": threads,
        "warmup_iterations": cfg.warmup_iterations, "warmup_seconds": cfg.warmup_seconds,
        "min_iterations": cfg.min_iterations, "min_seconds": cfg.min_seconds, "max_seconds": cfg.max_seconds,
        "energy": _energy_request(cfg, art), "sensors": {"root": cfg.sensors_root},
        "profile_ops": cfg.profile_ops, "eval": pushed.get(art.eval_set) if art.eval_set else None,
    }
    if art.execution:  # an accelerator profile: the agent asks for its providers and says which ran
        request["execution"] = {**art.execution, "include_copies": cfg.include_copies}
    workdir = transport.workdir
    if remote and workdir:  # the agent's (and its runtime's) temporary files stay inside the device's workdir
        request["scratch"] = posixpath.join(workdir, "tmp")
    if workdir:  # one measuring window at a time on the device, whichever host or cluster asks (agent/devlock.py)
        where = workdir if remote else os.path.abspath(os.path.expanduser(workdir))
        request.update(lock=posixpath.join(where, "measure.lock"), lock_timeout_s=cfg.lock_timeout,
                       lock_owner=lock_owner())
    if remote:  # the agent re-hashes before running: bytes changed on the device are never measured
        request["sha256"] = {staged[f]: file_sha256(f) for f in files} | {r: file_sha256(f) for f, r in pushed.items()}
    timeout = cfg.run_timeout + (cfg.lock_timeout if workdir else 0.0)
    if deadline is not None:
        timeout = min(timeout, deadline - time.monotonic())
        if timeout <= 0:
            raise DeviceError("the device's time budget ran out before this artifact ran", device=transport.device_name)
    return run_agent(transport, agent, request, timeout)


def lock_owner() -> str:
    """Who holds a device's lock, as another run waiting for it is told: this host and process."""
    import socket

    return f"edgekit on {socket.gethostname()} pid {os.getpid()}"


def _energy_request(cfg: BenchConfig, art: Artifact) -> dict[str, Any] | None:
    if not cfg.energy:
        return None
    return {"idle_seconds": cfg.idle_seconds, "interval_s": cfg.energy_interval_s,
            "external": list(cfg.external_meter) if cfg.external_meter else None,
            "power_model": art.power_model}


