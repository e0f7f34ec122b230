"""``benchmark``: push each artifact to a device, run it through the agent there, collect rows.

One artifact's failure (push, missing runtime, agent crash) is that artifact's row, never the end of the
others; only a device we cannot use at all (unreachable, agent cannot be installed) raises DeviceError.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from edgekit._paths import cache_dir
from edgekit.agent.device_info import runtime_names
from edgekit.bench.config import BenchConfig
from edgekit.bench.results import artifact_row, mark_emulated, measurement_fields, to_frame
from edgekit.config.device import LocalDevice, SshDevice, get_device
from edgekit.errors import AgentError, DeviceError
from edgekit.transport import Transport, file_sha256, open_transport

INFO_TIMEOUT_S = 180.0  # importing torch for executorch on a Pi takes tens of seconds


def benchmark(
    artifacts: Sequence[Any],
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


def measure_on(transport: Transport, artifacts: Sequence[Any], cfg: BenchConfig,
               on_event: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    remote = not transport.is_local
    agent = install_agent(transport)
    info = describe_device(transport, agent) if remote else None
    runtimes = info["runtimes"] if info else None
    emulated = bool(info.get("emulated")) if info else _host_emulated()
    rows = []
    for art in artifacts:
        problem = art.error or _missing_runtime(art, runtimes, transport)
        if problem or art.path is None:
            rows.append(mark_emulated({**artifact_row(art, transport.device_name), "error": problem}, emulated))
            continue
        for threads in cfg.thread_counts(art.threads):  # one fresh agent process, and one row, per count
            row = {**artifact_row(art, transport.device_name), "threads": threads}
            rows.append(row)
            if on_event:
                on_event(f"measuring {art.target} {art.precision} ({threads} threads) on {transport.device_name}")
            try:
                row.update(measurement_fields(_measure(art, transport, agent, cfg, remote, threads)))
            except (AgentError, DeviceError) as exc:
                row["error"] = f"benchmark failed: {exc}"
            mark_emulated(row, emulated)
    return rows


def _host_emulated() -> bool:
    """The local device is this host: is this process itself run by qemu-user?"""
    from edgekit.agent.device_info import cpu_emulation

    return bool(cpu_emulation()["emulated"])


def _missing_runtime(art: Any, runtimes: dict[str, Any] | None, transport: Transport) -> str | None:
    """Why the device cannot run ``art`` (its runtime does not import there), or None."""
    if runtimes is None or runtimes.get(art.format, {}).get("package"):
        return None
    why = runtimes.get(art.format, {}).get("error") or "not importable"
    return (f"runtime missing on device {transport.device_name!r}: {art.format} artifacts need "
            f"{runtime_names(art.format)} for {transport.python} ({why})")


def install_agent(transport: Transport) -> str:
    from edgekit.agent.bundle import build_agent

    try:
        return transport.put(build_agent(cache_dir() / "agent"))
    except DeviceError as exc:
        raise DeviceError(f"cannot install the agent: {exc}") from exc


def describe_device(transport: Transport, agent: str) -> dict[str, Any]:
    """The agent's ``info``: CPU, memory, OS, python, runtimes that import, energy sensors."""
    argv = [transport.python, agent, "info"]
    res = transport.run(argv, timeout=INFO_TIMEOUT_S)
    answer = _last_json(res.stdout)
    if res.exit_code == 127 or (answer is None and "not found" in res.stderr):
        raise DeviceError(f"python {transport.python!r} not found on the device: set 'python' in devices.yaml "
                          "to an interpreter there (python3.9 or newer)", device=transport.device_name)
    if answer is None or not answer.get("ok"):
        raise AgentError(f"device {transport.device_name!r}: the agent could not describe the device",
                         command=argv, exit_code=res.exit_code, stdout=res.stdout, stderr=res.stderr)
    return answer


def _measure(art: Any, transport: Transport, agent: str, cfg: BenchConfig, remote: bool,
             threads: int) -> dict[str, Any]:
    files = list(art.files) or [art.path]
    staged = dict(zip(files, transport.stage(files)))
    pushed = {art.inputs: transport.put(art.inputs)}
    if cfg.device_accuracy and art.eval_set is not None:
        pushed[art.eval_set] = transport.put(art.eval_set)
    request: dict[str, Any] = {
        "artifact": staged[art.path], "format": art.format, "inputs": pushed[art.inputs], "threads": threads,
        "warmup_iterations": cfg.warmup_iterations, "warmup_seconds": cfg.warmup_seconds,
        "min_iterations": cfg.min_iterations, "min_seconds": cfg.min_seconds, "max_seconds": cfg.max_seconds,
        "energy": _energy_request(cfg, art), "sensors": {"root": cfg.sensors_root},
        "profile_ops": cfg.profile_ops, "eval": pushed.get(art.eval_set) if art.eval_set else None,
    }
    if remote:  # the agent re-hashes before running: bytes changed on the device are never measured
        request["sha256"] = {staged[f]: file_sha256(f) for f in files} | {r: file_sha256(f) for f, r in pushed.items()}
    return run_agent(transport, agent, request, cfg.timeout)


def _energy_request(cfg: BenchConfig, art: Any) -> dict[str, Any] | None:
    if not cfg.energy:
        return None
    return {"idle_seconds": cfg.idle_seconds, "interval_s": cfg.energy_interval_s,
            "external": list(cfg.external_meter) if cfg.external_meter else None,
            "power_model": art.power_model}


def run_agent(transport: Transport, agent: str, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run the agent once with ``request`` on stdin; its JSON answer, or AgentError with the command and output."""
    argv = [transport.python, agent, "run", "--request", "-"]
    res = transport.run(argv, timeout=timeout, stdin=json.dumps(request).encode())
    answer = _last_json(res.stdout)
    if answer is None:
        why = "the agent gave no JSON answer"
        if res.exit_code < 0 or res.exit_code in (137, 143):
            why = f"the agent was killed (exit status {res.exit_code}) before it answered"
        raise AgentError(why, command=argv, exit_code=res.exit_code, stdout=res.stdout, stderr=res.stderr)
    if not answer.get("ok"):
        err = answer.get("error") or {}
        raise AgentError(f"{err.get('stage', '?')}: {err.get('type', 'Error')}: {err.get('message', '')}",
                         command=argv, exit_code=res.exit_code, stderr=res.stderr)
    return answer


def _last_json(stdout: str) -> dict[str, Any] | None:
    """The agent's answer; tolerate runtime chatter printed before it."""
    try:
        value = json.loads(stdout)
        return value if isinstance(value, dict) else None
    except (json.JSONDecodeError, RecursionError):
        pass
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                return None
            return value if isinstance(value, dict) else None
    return None
