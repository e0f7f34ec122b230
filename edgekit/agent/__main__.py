"""Agent command line: ``python -m edgekit.agent run --request REQ.json`` (or ``python agent.pyz run ...``).

Prints exactly one JSON object on stdout, success or failure, because the host parses it over SSH; logs
and tracebacks go to stderr. While the agent works, file descriptor 1 is pointed at stderr, so a runtime
that prints from C code cannot corrupt the JSON.

Stages, as reported in errors: ``request`` (reading and checking the request and the inputs file),
``lock`` (the device's measuring lock stayed held by another run for ``lock_timeout_s``, see ``devlock.py``),
``load`` (importing the runtime, constructing the runner; with an ``execution`` block, counting the nodes
each execution provider runs), ``warmup`` (preparing inputs, first inference,
warm-up loop), ``run`` (idle baseline, timed loop, statistics, memory, energy, run conditions), ``accuracy``
(the eval set through the runtime, untimed), ``profile`` (a per-op pass, untimed, when asked).
Exit codes: 0 ok, 1 other failure, 2 bad request, 3 runtime missing (also: none of the execution
providers an ``execution`` block asks for is in this onnxruntime).

GPU runs: the optional request field ``execution`` names the accelerator and onnxruntime providers
(``execution.py``); every answer carries an ``execution`` block (keys ``execution.BLOCK_KEYS``: what was asked
for, what ran, node counts per provider, whether the figures are the accelerator's) and a ``gpu`` block (keys
``gpu.GPU_KEYS``: NVML or Jetson sysfs facts before and after the timed loop, or why there are none).

``python -m edgekit.agent info`` prints which runtimes import here (for device checks).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import os
import platform
import sys
import time
import traceback
from typing import Any, Iterator, Optional, TextIO

AGENT_VERSION = "1"
EXIT_OK, EXIT_FAILURE, EXIT_BAD_REQUEST, EXIT_RUNTIME_MISSING = 0, 1, 2, 3
FORMATS = ("executorch", "onnx", "tflite")  # mirrors runtimes.FORMATS; checked by a test

TIMING_NOTE = "perf_counter_ns around each invoke only; inputs prepared before; gc disabled while timing"
MEMORY_NOTE = "whole-process peak (interpreter, numpy, runtime, model, inputs); MiB = 2**20 bytes"

log = logging.getLogger("edgekit-agent")


class StageFailure(Exception):
    """A failure of one stage, to report as ``{"ok": false, "error": {...}}`` with an exit code.

    Device side only: the host reads that answer and raises its own ``edgekit.errors.AgentError``.
    """

    def __init__(self, stage: str, type_: str, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.stage, self.type, self.message, self.exit_code = stage, type_, message, exit_code

    def response(self) -> dict[str, Any]:
        error = {"stage": self.stage, "type": self.type, "message": self.message}
        return {"ok": False, "agent_version": AGENT_VERSION, "error": error}


def bad_request(message: str, type_: str = "BadRequest") -> StageFailure:
    return StageFailure("request", type_, message, EXIT_BAD_REQUEST)


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Turn any exception raised in a stage into a StageFailure naming the stage."""
    try:
        yield
    except StageFailure:
        raise
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        if out_of_memory(exc):
            raise StageFailure(name, "MemoryError", f"out of memory in stage {name} ({type(exc).__name__}: {exc}): "
                             f"{OOM_HINT}") from exc
        missing = type(exc).__name__ == "RuntimeMissing"
        code = EXIT_RUNTIME_MISSING if missing else EXIT_FAILURE
        raise StageFailure(name, type(exc).__name__, str(exc), code) from exc


OOM_HINT = ("the device ran out of memory (a limit such as ulimit -v or a cgroup, or too little free RAM): free "
            "memory on the device, or try a smaller model or precision int8")
# How running out of memory reads where no MemoryError is raised: the dynamic loader mapping a runtime's
# library, C++ runtimes (std::bad_alloc, onnxruntime's allocator), OpenBLAS, errno ENOMEM.
_OOM_TEXT = ("failed to map segment", "cannot allocate memory", "bad_alloc", "failed to allocate memory",
             "memory allocation failed", "out of memory")


def out_of_memory(exc: BaseException) -> bool:
    """Did ``exc`` (or what caused it: a runtime that "is not installed" because its library could not be
    mapped) come from running out of memory?"""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, MemoryError) or any(t in str(exc).lower() for t in _OOM_TEXT):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1  # type: ignore[assignment]
    return False


# ---- request ----------------------------------------------------------------------------------------

_INT, _NUMBER, _STR = "an integer", "a number", "a string"
# field -> (kind, lowest allowed value)
REQUEST_FIELDS: dict[str, tuple[str, Optional[float]]] = {
    "artifact": (_STR, None),
    "format": (_STR, None),
    "inputs": (_STR, None),
    "threads": (_INT, 1),
    "warmup_iterations": (_INT, 0),
    "warmup_seconds": (_NUMBER, 0),
    "min_iterations": (_INT, 1),
    "min_seconds": (_NUMBER, 0),
    "max_seconds": (_NUMBER, 0),
}
OPTIONAL_FIELDS = ("energy", "sha256", "sensors", "eval", "profile_ops", "scratch", "execution", "lock",
                   "lock_timeout_s", "lock_owner")


def read_request(path: str) -> dict[str, Any]:
    """Load and validate the request file (``-``: standard input); errors name the field and the bad value."""
    try:
        if path == "-":
            request = json.loads(sys.stdin.read())
        else:
            with open(path, encoding="utf-8") as f:
                request = json.load(f)
    except FileNotFoundError as exc:
        raise bad_request(f"request file not found: {path}", "FileNotFoundError") from exc
    except (OSError, ValueError) as exc:
        raise bad_request(f"cannot read request {path}: {exc}", type(exc).__name__) from exc
    validate_request(request)
    return request


def validate_request(request: Any) -> None:
    if not isinstance(request, dict):
        raise bad_request(f"request must be a JSON object, got {type(request).__name__}")
    unknown = sorted(set(request) - set(REQUEST_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise bad_request(f"unknown request field(s) {unknown}; valid: {sorted([*REQUEST_FIELDS, *OPTIONAL_FIELDS])}")
    for name, (kind, lowest) in REQUEST_FIELDS.items():
        if name not in request:
            raise bad_request(f"missing request field '{name}' ({kind})")
        _check_field(name, request[name], kind, lowest)
    if request["format"] not in FORMATS:
        raise bad_request(f"request field 'format' is {request['format']!r}; valid: {', '.join(FORMATS)}")
    if request["max_seconds"] <= 0 or request["max_seconds"] < request["min_seconds"]:
        value = request["max_seconds"]
        raise bad_request(f"request field 'max_seconds' is {value!r}; it must be > 0 and >= min_seconds")
    _check_optional(request)
    for name in ("artifact", "inputs"):
        if not os.path.isfile(request[name]):
            raise bad_request(f"request field '{name}': file not found: {request[name]}", "FileNotFoundError")
    verify_sha256(request.get("sha256"))


def verify_sha256(expected: Any) -> None:
    """Refuse to run a file whose bytes are not the ones the host sent (a flipped bit, a half copy)."""
    if expected is None:
        return
    if not isinstance(expected, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in expected.items()):
        raise bad_request(f"request field 'sha256' must map file paths to hex digests, got {expected!r}")
    for path, digest in sorted(expected.items()):
        actual = file_sha256(path)
        if actual != digest.lower():
            raise bad_request(f"{path}: sha256 is {actual}, expected {digest}: the file changed after upload; "
                              "push it again", "HashMismatch")


def file_sha256(path: str) -> str:
    import hashlib

    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise bad_request(f"request field 'sha256': cannot read {path}: {exc}", type(exc).__name__) from exc
    return h.hexdigest()


def _check_field(name: str, value: Any, kind: str, lowest: Optional[float]) -> None:
    ok_type = {
        _STR: isinstance(value, str) and value != "",
        _INT: isinstance(value, int) and not isinstance(value, bool),
        _NUMBER: isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
    }[kind]
    if not ok_type:
        raise bad_request(f"request field '{name}' must be {kind}, got {value!r}")
    if lowest is not None and value < lowest:
        raise bad_request(f"request field '{name}' must be >= {lowest:g}, got {value!r}")


ENERGY_KEYS = ("external", "idle_seconds", "interval_s", "power_model")
SENSOR_KEYS = ("root", "vcgencmd")


def _check_optional(request: dict[str, Any]) -> None:
    energy, sensors = request.get("energy"), request.get("sensors")
    if energy is not None:
        if not isinstance(energy, dict) or set(energy) - set(ENERGY_KEYS):
            raise bad_request(f"request field 'energy' must be null or an object with keys {list(ENERGY_KEYS)}, "
                              f"got {energy!r}")
        from .meters import check_config

        try:
            check_config(_meter_config(energy, "/", "vcgencmd"))
        except ValueError as exc:
            raise bad_request(f"request field 'energy': {exc}") from exc
    if sensors is not None:
        if not isinstance(sensors, dict) or set(sensors) - set(SENSOR_KEYS) or \
                not all(isinstance(v, str) and v for v in sensors.values()):
            raise bad_request(f"request field 'sensors' must be an object of strings with keys {list(SENSOR_KEYS)}, "
                              f"got {sensors!r}")
    scratch = request.get("scratch")
    if scratch is not None and not (isinstance(scratch, str) and os.path.isabs(scratch)):
        raise bad_request(f"request field 'scratch' must be an absolute folder path, got {scratch!r}")
    lock = request.get("lock")
    if lock is not None and not (isinstance(lock, str) and os.path.isabs(lock)):
        raise bad_request(f"request field 'lock' must be an absolute file path, got {lock!r}")
    if "lock_timeout_s" in request:
        _check_field("lock_timeout_s", request["lock_timeout_s"], _NUMBER, 0)
    if not isinstance(request.get("lock_owner", ""), str):
        raise bad_request(f"request field 'lock_owner' must be a string, got {request['lock_owner']!r}")
    if not isinstance(request.get("profile_ops", False), bool):
        raise bad_request(f"request field 'profile_ops' must be true or false, got {request['profile_ops']!r}")
    path = request.get("eval")
    if path is not None and not (isinstance(path, str) and os.path.isfile(path)):
        raise bad_request(f"request field 'eval': file not found: {path!r}", "FileNotFoundError")
    from .execution import check_execution

    try:
        check_execution(request.get("execution"))
    except ValueError as exc:
        raise bad_request(str(exc)) from exc


def load_inputs(path: str) -> list[Any]:
    """Positional inputs from an ``np.savez`` file (arr_0, arr_1, ...), fully read into memory now."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as npz:
            names = sorted(npz.files, key=lambda n: int(n[4:]) if n.startswith("arr_") and n[4:].isdigit() else -1)
            expected = [f"arr_{i}" for i in range(len(names))]
            if names != expected:
                raise ValueError(f"arrays must be named {expected} (np.savez positional), found {sorted(npz.files)}")
            return [np.array(npz[n]) for n in names]
    except Exception as exc:  # OSError, ValueError, zipfile.BadZipFile...: all mean a bad inputs file
        raise bad_request(f"request field 'inputs': cannot load {path}: {exc}", type(exc).__name__) from exc


# ---- run --------------------------------------------------------------------------------------------


def run(request: dict[str, Any]) -> dict[str, Any]:
    """Hold the device's measuring lock (``devlock``) around :func:`measure_artifact`; the answer says when
    the window was, on this device's clock, and how long the lock was waited for."""
    from .devlock import DeviceBusy, measuring_window

    try:
        with measuring_window(request.get("lock"), float(request.get("lock_timeout_s", 300.0)),
                              request.get("lock_owner", "")) as window:
            response = measure_artifact(request)
    except DeviceBusy as exc:
        raise StageFailure("lock", "DeviceBusy", str(exc)) from exc
    return {**response, "window": window}


def measure_artifact(request: dict[str, Any]) -> dict[str, Any]:
    """Load, warm up, measure idle power, time, then (untimed) score and profile one artifact."""
    modules = _import_agent_modules()
    sensors = request.get("sensors") or {}
    root, vcgencmd = sensors.get("root", "/"), sensors.get("vcgencmd", "vcgencmd")
    # Load average before this process loads anything: the runtime import and model load are not "others".
    load_before = modules.conditions.snapshot(root, None).get("load_avg")
    inputs = load_inputs(request["inputs"])
    measure = modules.measure
    plan = modules.execution.plan_from_request(request.get("execution"))
    probe = _gpu_probe(plan, request["format"], root)  # before the load: the GPU memory in use without the model
    runner, import_ms, load_ms, rss_after_load = _load(modules.runtimes, measure, request)
    with stage("load"):
        nodes, nodes_note = _count_nodes(runner, plan, request, inputs)
        used = modules.execution.accelerator_used(nodes, getattr(runner, "providers_used", []))
        # The energy of a run whose work is on the GPU is the GPU board's (NVML) where it can be read.
        accelerator = "cuda" if used in ("cuda", "tensorrt") else None
        meter = modules.meters.open_meter(_meter_config(request.get("energy"), root, vcgencmd, accelerator))
    gc.collect()
    gc.disable()  # as timeit does: a collection pass inside the timed region is not the model's cost
    try:
        with stage("warmup"):
            prepared = runner.prepare(inputs)
            _, first_ms = measure.timed_call(runner.invoke, prepared)
            warm = _warm_up(measure, runner, prepared, request)
        with stage("run"):
            reset, reset_note = measure.reset_peak_rss()  # from here on VmHWM is the steady state's peak
            meter.measure_idle()  # the config's idle_seconds; a no-op without a sensor
            before = {**modules.conditions.snapshot(root, vcgencmd), "load_avg": load_before}
            gpu_before = probe.snapshot("before") if probe else {}
            meter.start()
            loop = measure.timed_loop(runner.invoke, prepared, request["min_iterations"],
                                      request["min_seconds"], request["max_seconds"])
            meter.stop()
            after = modules.conditions.snapshot(root, vcgencmd)
            gpu_after = probe.snapshot("after", with_process=True) if probe else {}
    finally:
        gc.enable()
    log.info("%d iterations in %.3f s", loop.iterations, loop.seconds)
    with stage("run"):
        # Peak memory is read before anything else allocates (scoring, profiling, JSON-ready lists).
        rss_steady, method = measure.peak_rss_mib()
        energy = meter.result(loop.iterations)
        conditions = modules.conditions.summarize(before, after, modules.conditions.judge(before, after))
        gpu = _gpu_block(probe, gpu_before, gpu_after, plan, request["format"], conditions)
        execution = _execution_block(modules.execution, runner, plan, request["format"], nodes, nodes_note,
                                     load_ms, first_ms)
    with stage("accuracy"):
        accuracy = _device_accuracy(measure, runner, request.get("eval"))
    with stage("profile"):
        ops = None
        if request.get("profile_ops"):
            from . import opprofile

            ops = opprofile.profile_ops(request["format"], request["artifact"], inputs, request["threads"],
                                        execution=request.get("execution"),
                                        trt_cache_dir=getattr(runner, "trt_cache_dir", None))
    files = measure.artifact_files(request["artifact"], request["format"])
    return {
        "ok": True,
        "agent_version": AGENT_VERSION,
        "format": request["format"],
        "artifact": request["artifact"],
        "artifact_bytes": sum(os.path.getsize(f) for f in files),
        "artifact_files": files,
        "runtime": runner.info(),
        "threads": request["threads"],
        "execution": execution,
        "runtime_import_ms": import_ms,
        "load_ms": load_ms,
        "first_inference_ms": first_ms,
        "warmup": {"iterations": warm[0], "seconds": warm[1]},
        "latency_ms": measure.latency_stats(loop.samples_ns),
        "iterations": loop.iterations,
        "timed_seconds": loop.seconds,
        "truncated": loop.truncated,
        "timing_note": _timing_note(execution),
        "memory": _memory(rss_after_load, rss_steady, method, reset, reset_note),
        "energy": energy,
        "gpu": gpu,
        "conditions": conditions,
        "device_accuracy": accuracy,
        "op_profile": ops,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


GPU_TIMING_NOTES = {
    False: "GPU: inputs bound on the GPU before timing (IO binding), each invoke waits for its outputs "
           "(synchronize_outputs); host<->device copies not timed",
    True: "GPU: each invoke copies the inputs host->device, runs, waits, and copies the outputs back (copies timed)",
}


def _timing_note(execution: dict[str, Any]) -> str:
    if not execution["io_binding"]:
        return TIMING_NOTE
    return f"{TIMING_NOTE}; {GPU_TIMING_NOTES[execution['copies_timed']]}"


def _gpu_probe(plan: Any, fmt: str, root: str) -> Any:
    """The GPU probe of a run that asks for an accelerator on a format that can use one; else None."""
    if not plan.accelerator or fmt != "onnx":
        return None
    with stage("load"):
        from .gpu import GpuProbe

        return GpuProbe(root)


def _count_nodes(runner: Any, plan: Any, request: dict[str, Any], inputs: list[Any]) -> tuple[Optional[dict[str, int]], str]:
    """Nodes per provider, for a request that chose its providers (ONNX): one profiled inference in a short
    session of its own, before the timed run, so the energy source can follow where the work runs. It comes
    after the after-load memory reading, and the steady-state peak is reset before the timed loop, so its
    memory counts in neither. Without an execution block this costs nothing: the session is CPU-only, as
    before, and every node is on the CPU by construction."""
    if request["format"] != "onnx" or not plan.explicit:
        return None, ""
    from . import opprofile

    try:
        counts = opprofile.onnx_nodes_by_provider(request["artifact"], inputs, request["threads"],
                                                  request.get("execution"), runner.trt_cache_dir)
        return counts, ""
    except Exception as exc:  # counting is a check, not the benchmark: say it failed and go on
        traceback.print_exc(file=sys.stderr)
        return None, f"nodes per provider not counted ({type(exc).__name__}: {exc})"


def _execution_block(execution: Any, runner: Any, plan: Any, fmt: str, nodes: Optional[dict[str, int]],
                     nodes_note: str, load_ms: float, first_ms: float) -> dict[str, Any]:
    if fmt != "onnx":
        return execution.non_onnx_block(plan, fmt, runner.runtime)
    used = execution.accelerator_used(nodes, runner.providers_used)
    # TensorRT builds its engines when the session is created (static shapes) or at the first run (dynamic
    # shapes): the build lies inside load_ms + first_inference_ms, so that sum is trt_engine_build_ms (it
    # also holds the ordinary graph load and one inference). With trt_engine_cache_reused it is the time to
    # load cached engines, not to build them.
    trt_ms = load_ms + first_ms if used == "tensorrt" else None
    return execution.execution_block(plan, runner.available, runner.chosen, runner.providers_used, nodes, nodes_note,
                                     runner.io_binding, runner.copies_timed, trt_ms, runner.trt_cache_dir,
                                     runner.trt_cache_reused)


def _gpu_block(probe: Any, before: dict[str, Any], after: dict[str, Any], plan: Any, fmt: str,
               conditions: dict[str, Any]) -> dict[str, Any]:
    """The answer's ``gpu`` block; clocks held down by power or heat make the run noisy, as CPU throttling does."""
    from . import gpu

    if probe is None:
        why = ("not measured: a CPU run (no accelerator in request field 'execution')" if not plan.accelerator
               else f"not measured: {fmt} runs on the CPU here")
        return gpu.not_measured(why)
    block = probe.summary(before, after)
    reasons = gpu.noisy_reasons(block)
    if reasons:
        conditions["noisy_reasons"] = list(conditions["noisy_reasons"]) + reasons
        conditions["noisy"] = True
    return block


def _meter_config(energy: Optional[dict[str, Any]], root: str, vcgencmd: str,
                  accelerator: Optional[str] = None) -> Optional[dict[str, Any]]:
    if energy is None:
        return None
    config = {k: v for k, v in energy.items() if v is not None}
    return {**config, "sysfs_root": root, "vcgencmd": vcgencmd, "accelerator": accelerator}


def _memory(after_load: Optional[float], steady: Optional[float], method: str, reset: bool,
            reset_note: str) -> dict[str, Any]:
    """After-load peak and steady-state peak apart, when the kernel let us reset VmHWM between them."""
    if reset:
        how = f"{method}; read after load, then reset via /proc/self/clear_refs (5) before the timed loop"
        steady_peak = steady
    else:
        how = f"{method}; {reset_note}: the steady-state peak cannot be told apart from the load peak"
        steady_peak = None
    peaks = [v for v in (after_load, steady) if v is not None]
    return {"peak_rss_mb_after_load": after_load, "peak_rss_mb_steady": steady_peak,
            "peak_rss_mb": max(peaks) if peaks else None, "method": how, "note": MEMORY_NOTE}


def _device_accuracy(measure: Any, runner: Any, path: Optional[str]) -> Optional[dict[str, Any]]:
    """Top-1 on the eval set, computed by this device's runtime: what was measured is what was shipped."""
    if not path:
        return None
    import numpy as np

    with np.load(path, allow_pickle=False) as npz:
        names = sorted((n for n in npz.files if n.startswith("input_")), key=lambda n: int(n[6:]))
        if not names or "labels" not in npz.files:
            raise ValueError(f"{path}: an eval set needs input_0.. and labels, found {sorted(npz.files)}")
        columns, labels = [np.array(npz[n]) for n in names], np.array(npz["labels"])
    samples = [[col[i] for col in columns] for i in range(len(labels))]
    return {"top1": measure.top1_accuracy(runner.run, samples, labels), "samples": len(labels)}


def _import_agent_modules() -> Any:
    """The numpy-using modules, imported late so a device without numpy still gets a JSON answer."""
    with stage("load"):
        try:
            from . import conditions, execution, measure, meters, runtimes
        except ImportError as exc:
            if exc.name != "numpy":
                raise
            message = f"numpy is not installed: {exc}"
            raise StageFailure("load", "RuntimeMissing", message, EXIT_RUNTIME_MISSING) from exc
    return argparse.Namespace(conditions=conditions, execution=execution, measure=measure, meters=meters,
                              runtimes=runtimes)


def _load(runtimes: Any, measure: Any, request: dict[str, Any]) -> tuple[Any, float, float, Optional[float]]:
    """Import the runtime, construct the runner (timed as load_ms), then read peak memory."""
    scratch = request.get("scratch")
    # TensorRT engines outlive the run in <workdir>/tmp/trt-engines (see runtimes._trt_cache for why and how).
    trt_cache_root = os.path.join(scratch, "trt-engines") if scratch else None
    with stage("load"):
        import_ms = runtimes.import_runtime(request["format"])
        runner, load_ms = measure.timed_call(
            runtimes.load_runner, request["format"], request["artifact"], request["threads"],
            request.get("execution"), trt_cache_root, request.get("sha256"))
    rss_after_load, _ = measure.peak_rss_mib()
    log.info("loaded %s in %.1f ms (runtime import %.1f ms)", request["artifact"], load_ms, import_ms)
    return runner, import_ms, load_ms, rss_after_load


def _warm_up(measure: Any, runner: Any, prepared: Any, request: dict[str, Any]) -> tuple[int, float]:
    """Warm-up until both warm-up minimums are met (bounded by max_seconds); (iterations, seconds)."""
    if request["warmup_iterations"] == 0 and request["warmup_seconds"] == 0:
        return 0, 0.0
    warm = measure.timed_loop(runner.invoke, prepared, request["warmup_iterations"],
                              request["warmup_seconds"], request["max_seconds"])
    return warm.iterations, warm.seconds


def info(formats: Optional[str] = None) -> dict[str, Any]:
    """Facts for ``devices check``; answers even without numpy, since saying what is missing is its job.
    ``formats`` (comma-separated): probe only these runtimes."""
    with stage("load"):
        from .device_info import device_info

        wanted = [f for f in formats.split(",") if f] if formats is not None else None
        facts = device_info(wanted)
    # Read last, so the host compares it with its own clock a link's latency later.
    return {"ok": True, "agent_version": AGENT_VERSION, **facts, "time_unix": time.time()}


@contextlib.contextmanager
def scratch_dir(parent: Optional[str]) -> Iterator[Optional[str]]:
    """Temporary files of this run (ours, and a runtime's that honours TMPDIR) in a folder of their own under
    ``parent`` (the device's workdir), removed when the run ends. Folders that killed runs left are swept."""
    if parent is None:
        yield None
        return
    import shutil
    import tempfile

    try:
        os.makedirs(parent, exist_ok=True)
        _sweep_scratch(parent)
        folder = tempfile.mkdtemp(prefix=f"run-{os.getpid()}-", dir=parent)
    except OSError as exc:
        raise bad_request(f"cannot make a folder for temporary files in {parent} (request field 'scratch'): "
                          f"{exc}; free space or choose another 'workdir'", type(exc).__name__) from exc
    saved = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir = os.environ["TMPDIR"] = folder
    try:
        yield folder
    finally:
        tempfile.tempdir = saved[0]
        if saved[1] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved[1]
        shutil.rmtree(folder, ignore_errors=True)


def _sweep_scratch(parent: str) -> None:
    """Remove ``run-<pid>-*`` folders whose process is gone (a run killed before it could clean up)."""
    import shutil

    for name in os.listdir(parent):
        parts = name.split("-")
        if len(parts) < 3 or parts[0] != "run" or not parts[1].isdigit():
            continue
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
        except OSError:
            pass  # alive, another user's: not ours to judge


# ---- entry point ------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would print usage and exit 2 without JSON
        raise bad_request(f"command line: {message}")


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = _Parser(prog="edgekit-agent", description="Benchmark one artifact; prints one JSON object.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command")
    run_parser = sub.add_parser("run", help="benchmark the artifact described by a request file")
    run_parser.add_argument("--request", required=True, help="path of the request JSON, or - for stdin")
    info_parser = sub.add_parser("info", help="describe this device: CPU, memory, OS, python, runtimes, energy sensors")
    info_parser.add_argument("--formats", help="probe only these runtimes (comma-separated formats)")
    info_parser.add_argument("--scratch", help="folder for temporary files (a runtime's import may write some)")
    args = parser.parse_args(argv)
    if args.command is None:
        raise bad_request("command line: a command is required: run --request REQ.json | info")
    return args


@contextlib.contextmanager
def stdout_reserved_for_json() -> Iterator[TextIO]:
    """Yield a stream on the real stdout; meanwhile fd 1 and sys.stdout point at stderr."""
    sys.stdout.flush()
    try:
        saved_fd = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # no usable fd 1: nothing to protect
        yield sys.stdout
        return
    real_stdout, sys.stdout = sys.stdout, sys.stderr
    try:
        yield real_stdout
    finally:
        sys.stderr.flush()
        os.dup2(saved_fd, 1)
        os.close(saved_fd)
        sys.stdout = real_stdout


def _log_to_stderr() -> None:
    """Our own handler only: runtimes' log records keep their own format and are not labelled as ours."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("edgekit-agent: %(message)s"))
        log.addHandler(handler)
        log.propagate = False


def main(argv: Optional[list[str]] = None) -> int:
    _log_to_stderr()
    # onnxruntime's import writes a telemetry device id under ~/.cache and a session file in $TMPDIR: the
    # agent writes only inside the device's workdir, and a benchmark sends nothing anywhere.
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    with stdout_reserved_for_json() as out:
        response, code = _respond(argv)
    out.write(json.dumps(response, allow_nan=False) + "\n")
    out.flush()
    return code


def _add_process_peak(response: dict[str, Any]) -> None:
    """The whole process's peak, reporting included (what ``/usr/bin/time -v`` sees), beside the model's."""
    memory = response.get("memory")
    if not isinstance(memory, dict):
        return
    from .measure import read_vmhwm_mib

    peaks = [v for v in (read_vmhwm_mib(), memory.get("peak_rss_mb_after_load"), memory.get("peak_rss_mb"))
             if v is not None]
    memory["peak_rss_mb_process"] = max(peaks) if peaks else None


def _respond(argv: Optional[list[str]]) -> tuple[dict[str, Any], int]:
    try:
        args = parse_args(argv)
        log.setLevel(logging.INFO if args.verbose else logging.WARNING)
        if args.command == "info":
            with scratch_dir(args.scratch):
                response = info(args.formats)
        else:
            request = read_request(args.request)
            with scratch_dir(request.get("scratch")):
                response = run(request)
        json.dumps(response, allow_nan=False)  # fail here, inside the error handling, not after it
        _add_process_peak(response)
        return response, EXIT_OK
    except StageFailure as exc:
        return exc.response(), exc.exit_code
    except (Exception, KeyboardInterrupt) as exc:
        traceback.print_exc(file=sys.stderr)
        if out_of_memory(exc):
            message = f"out of memory ({type(exc).__name__}: {exc}): {OOM_HINT}"
            return StageFailure("run", "MemoryError", message).response(), EXIT_FAILURE
        return StageFailure("run", type(exc).__name__, str(exc)).response(), EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
