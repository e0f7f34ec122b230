"""The host side of the agent on one device: install it, ask what the device is, run it, and validate
its answer (a device's output is untrusted) before anything above uses it."""

from __future__ import annotations

import json
import posixpath
import re
import time
from typing import Any, Collection

from edgekit._fs import cache_dir
from edgekit.errors import AgentError, DeviceError
from edgekit.results.rows import MAX_TEXT, finite, malformed, printable
from edgekit.transport import Transport

INFO_TIMEOUT_S = 180.0  # importing torch for executorch on a Pi takes tens of seconds


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
    workdir = transport.workdir
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
_INFO_TEXT = ("machine", "cpu_model", "os", "kernel", "python", "python_executable", "numpy",
              "onnxruntime_providers_reason")
_INFO_NUMBERS = ("mem_total_mib", "time_unix")


def checked_info(answer: dict[str, Any]) -> dict[str, Any]:
    """The agent's ``info`` answer with every fact of the type the host relies on; AgentError when the
    runtimes table, which decides what is pushed, is not there."""

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
    for key in ("gpu", "tensorrt"):
        info[key] = info[key] if isinstance(info.get(key), dict) else {}
    providers = info.get("onnxruntime_providers")
    info["onnxruntime_providers"] = [p for p in providers if isinstance(p, str)] if isinstance(providers, list) else None
    info["runtimes"] = {fmt: {k: rt.get(k) if isinstance(rt.get(k), str) else None
                              for k in ("package", "version", "error")} for fmt, rt in info["runtimes"].items()}
    return info


def _plain(value: Any, depth: int = 0) -> Any:
    """A device's JSON with its text made printable and its numbers finite (NaN, inf: None), 16 levels deep."""

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


def run_agent(transport: Transport, agent: str, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run the agent once with ``request`` on stdin; its JSON answer, or AgentError with the command and output."""

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
        error = answer.get("error")
        err: dict[str, Any] = error if isinstance(error, dict) else {}
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
    workdir = transport.workdir
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
