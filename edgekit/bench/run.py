"""``benchmark``: push each artifact to a device, run it through the agent there, collect rows.

One artifact's failure (push, missing runtime, agent crash) is that artifact's row, never the end of the
others; only a device we cannot use at all (unreachable, agent cannot be installed) raises DeviceError.
"""

from __future__ import annotations

import json
import posixpath
import re
import time
from pathlib import Path
from typing import Any, Callable, Collection, Sequence

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
            except DeviceError as exc:
                if raise_transient and exc.transient:
                    raise
                row.update(error=f"benchmark failed: {exc}", stage="measure")
            except AgentError as exc:
                row.update(error=f"benchmark failed: {exc}", stage="measure")
            emit(row)
    return rows


RowKey = tuple[Any, ...]


def row_key(row: dict[str, Any]) -> RowKey:
    """What one row measures: a later row with the same key replaces it (retries, ``--resume``)."""
    return (row.get("device"), row.get("model"), row.get("target"), row.get("precision"), row.get("threads"))


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
        raise DeviceError(f"cannot install the agent: {exc}", transient=exc.transient) from exc


def describe_device(transport: Transport, agent: str, formats: Collection[str] | None = None) -> dict[str, Any]:
    """The agent's ``info``: CPU, memory, OS, python, runtimes that import (only ``formats``' when given),
    energy sensors."""
    argv = [transport.python, agent, "info"]
    if formats is not None:
        argv += ["--formats", ",".join(sorted(formats))]
    workdir = getattr(transport, "workdir", None)
    if not transport.is_local and workdir:  # importing torch makes a cache folder in $TMPDIR
        argv += ["--scratch", posixpath.join(workdir, "tmp")]
    res = transport.run(argv, timeout=INFO_TIMEOUT_S)
    host_now = time.time()
    answer = _last_json(res.stdout)
    if res.exit_code == 127 or (answer is None and "not found" in res.stderr):
        raise DeviceError(f"python {transport.python!r} not found on the device: set 'python' in devices.yaml "
                          "to an interpreter there (python3.9 or newer)", device=transport.device_name)
    if answer is None or answer.get("ok") is not True:
        raise AgentError(f"device {transport.device_name!r}: the agent could not describe the device",
                         command=argv, exit_code=res.exit_code, stdout=res.stdout, stderr=res.stderr)
    try:
        info = checked_info(answer)
    except AgentError as exc:
        raise AgentError(f"device {transport.device_name!r}: {exc}", command=argv, exit_code=res.exit_code) from exc
    if info.get("time_unix") is not None:  # the answer is at most a link's latency old
        info["clock_skew_s"] = round(info["time_unix"] - host_now, 1)
    return info


# Facts the host reads from ``info``, a device's answer and so untrusted: a fact of the wrong type becomes
# None; all text is made printable and all numbers finite.
_INFO_TEXT = ("machine", "cpu_model", "os", "kernel", "python", "python_executable", "numpy")
_INFO_NUMBERS = ("mem_total_mib", "time_unix")


def checked_info(answer: dict[str, Any]) -> dict[str, Any]:
    """The agent's ``info`` answer with every fact of the type the host relies on; AgentError when the
    runtimes table, which decides what is pushed, is not there."""
    from edgekit.bench.results import malformed

    runtimes = answer.get("runtimes")
    if not isinstance(runtimes, dict) or not all(isinstance(v, dict) for v in runtimes.values()):
        raise malformed("runtimes", "an object of format -> {package, version, error}", runtimes)
    info = _plain(answer)
    for key in _INFO_TEXT:
        info[key] = info[key] if isinstance(info.get(key), str) else None
    for key in _INFO_NUMBERS:
        info[key] = info[key] if isinstance(info.get(key), (int, float)) and not isinstance(info[key], bool) else None
    info["cores"] = info["cores"] if isinstance(info.get("cores"), int) and not isinstance(info["cores"], bool) else None
    info["emulated"] = info.get("emulated") is True
    emulation = info["emulation"] if isinstance(info.get("emulation"), dict) else {}
    evidence = emulation.get("evidence")
    info["emulation"] = {**emulation, "evidence": [e for e in evidence if isinstance(e, str)]
                         if isinstance(evidence, list) else []}
    info["energy"] = info["energy"] if isinstance(info.get("energy"), dict) else {}
    info["runtimes"] = {fmt: {k: rt.get(k) if isinstance(rt.get(k), str) else None
                              for k in ("package", "version", "error")} for fmt, rt in info["runtimes"].items()}
    return info


def _plain(value: Any, depth: int = 0) -> Any:
    """A device's JSON with its text made printable and its numbers finite (NaN, inf: None), 16 levels deep."""
    from edgekit.bench.results import MAX_TEXT, finite, printable

    if depth > 16:
        return None
    if isinstance(value, dict):
        return {printable(k, 200): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, str):
        return printable(value, MAX_TEXT)
    if isinstance(value, float):
        return finite(value)
    return value


def _measure(art: Any, transport: Transport, agent: str, cfg: BenchConfig, remote: bool,
             threads: int, deadline: float | None = None) -> dict[str, Any]:
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
    workdir = getattr(transport, "workdir", None)
    if remote and workdir:  # the agent's (and its runtime's) temporary files stay inside the device's workdir
        request["scratch"] = posixpath.join(workdir, "tmp")
    if remote:  # the agent re-hashes before running: bytes changed on the device are never measured
        request["sha256"] = {staged[f]: file_sha256(f) for f in files} | {r: file_sha256(f) for f, r in pushed.items()}
    timeout = cfg.timeout
    if deadline is not None:
        timeout = min(timeout, deadline - time.monotonic())
        if timeout <= 0:
            raise DeviceError("the device's time budget ran out before this artifact ran", device=transport.device_name)
    return run_agent(transport, agent, request, timeout)


def _energy_request(cfg: BenchConfig, art: Any) -> dict[str, Any] | None:
    if not cfg.energy:
        return None
    return {"idle_seconds": cfg.idle_seconds, "interval_s": cfg.energy_interval_s,
            "external": list(cfg.external_meter) if cfg.external_meter else None,
            "power_model": art.power_model}


def run_agent(transport: Transport, agent: str, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run the agent once with ``request`` on stdin; its JSON answer, or AgentError with the command and output."""
    from edgekit.bench.results import printable

    argv = [transport.python, agent, "run", "--request", "-"]
    res = transport.run(argv, timeout=timeout, stdin=json.dumps(request).encode())
    answer = _last_json(res.stdout)
    if answer is None:
        why = "the agent gave no JSON answer"
        if res.exit_code < 0 or res.exit_code in (137, 143):
            why = (f"the agent was killed (exit status {res.exit_code}) before it answered; the kernel's OOM "
                   "killer does this when the device runs out of memory (see dmesg there): if so, try a smaller "
                   "model or precision int8")
        elif _OUT_OF_MEMORY.search(res.stderr[-4000:]):
            why = ("the agent died out of memory before it answered (a memory limit such as ulimit -v or a "
                   "cgroup, or too little free RAM): free memory on the device, or try a smaller model or "
                   "precision int8")
        raise AgentError(why, command=argv, exit_code=res.exit_code, stdout=res.stdout, stderr=res.stderr)
    if answer.get("ok") is not True:
        err = answer.get("error") if isinstance(answer.get("error"), dict) else {}
        stage, kind, message = (printable(err.get(key, default), 2000) for key, default in
                                (("stage", "?"), ("type", "Error"), ("message", "")))
        if kind == "HashMismatch":
            message += _forget_corrupt(transport, request, message)
        raise AgentError(f"{stage}: {kind}: {message}", command=argv, exit_code=res.exit_code, stderr=res.stderr)
    return answer


# What a process that ran out of memory leaves on stderr: Python, numpy, OpenBLAS, C++ runtimes, the loader.
_OUT_OF_MEMORY = re.compile(r"MemoryError|Cannot allocate memory|bad_alloc|Memory allocation (still )?failed|"
                            r"failed to map segment|[Oo]ut of memory")


def _forget_corrupt(transport: Transport, request: dict[str, Any], message: str) -> str:
    """Remove the device's store folder of the file ``message`` names as changed, so the next run pushes it again.

    Only folders directly in ``<workdir>/store`` are removed: never anything outside the device's workdir.
    """
    workdir = getattr(transport, "workdir", None)
    if transport.is_local or not workdir:
        return ""
    store = posixpath.join(workdir, "store")
    groups = sorted({posixpath.dirname(p) for p in request.get("sha256") or {} if message.startswith(f"{p}:")
                     and posixpath.normpath(p) == p and posixpath.dirname(posixpath.dirname(p)) == store})
    if not groups:
        return ""
    res = transport.run([transport.python, "-c", "import shutil, sys\nfor g in sys.argv[1:]: shutil.rmtree(g)",
                         *groups], timeout=60)
    if res.exit_code != 0:
        return f" (removing the corrupted copy failed: {res.stderr.strip()[-300:]})"
    return " (edgekit removed the device's copy: the next run, or --resume, pushes it again)"


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
