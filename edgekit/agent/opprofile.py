"""Per-operator time from the runtime's own profiler, or an honest "unavailable".

Run it as a separate pass AFTER the timed loop, never during it: profiling adds work to every inference, so
its figures say where the time goes, not how long an inference takes. It loads its own session or module.

What each runtime gives (checked with onnxruntime 1.32, executorch 1.5.1, ai-edge-litert 2.3.0):

- ONNX Runtime: ``SessionOptions.enable_profiling`` writes a chrome-trace JSON at ``end_profiling()``. Each
  node of the optimized graph logs a ``<node>_kernel_time`` event (cat "Node", microseconds, the op type in
  ``args.op_name``). Graph optimization fuses nodes, so a Conv+Relu shows as one Conv node.
- ExecuTorch: a module loaded with ``enable_etdump=True`` records an ETDump, read back with
  ``executorch.devtools.Inspector``. A portable/optimized kernel shows as one OPERATOR_CALL per instruction
  (named by its ``native_call_<kernel>`` event). A delegate call shows as one DELEGATE_CALL; XNNPACK also logs
  its own operators inside it, in whole microseconds (each op's time is truncated).
- LiteRT / tflite-runtime: the Python Interpreter has no op profiler (only ``benchmark_model
  --enable_op_profiling=true`` gives one), so the answer is "unavailable".

Runs on the device: standard library, numpy and the runtime; imports nothing from edgekit.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import runtimes
from .execution import GPU_PROVIDERS, plan_from_request

MEASURED = "measured"
TFLITE_HINT = "use benchmark_model --enable_op_profiling=true"


def profile_ops(fmt: str, path: str, inputs: Sequence[np.ndarray], threads: int = 1, iterations: int = 20,
                warmup: int = 1, execution: Optional[Dict[str, Any]] = None,
                trt_cache_dir: Optional[str] = None) -> Dict[str, Any]:
    """Profile ``iterations`` inferences (after ``warmup`` unrecorded ones) and attribute time to operators.

    Returns {"status": "measured" | "unavailable: <why>", "method", "ops": [{"name", "type", "time_ms",
    "share"}] (time_ms: mean per inference; share: of the summed op time; slowest first), "iterations",
    "warmup", "op_time_ms" (summed op time per inference), "run_time_ms" (mean whole inference as the
    profiler saw it), "runtime": {"name", "version"}}. Never raises for a runtime's failure: a profiling
    pass must not fail a benchmark. ``execution`` (ONNX): the request's execution block, so the profile runs
    on the providers the timed run used; ``trt_cache_dir``: the timed run's TensorRT engine cache (reused, not rebuilt).
    """
    if fmt not in PROFILERS:
        raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(sorted(PROFILERS))}")
    if iterations < 1 or warmup < 0:
        raise ValueError(f"iterations must be >= 1 and warmup >= 0, got {iterations} and {warmup}")
    try:
        if fmt == "onnx":
            return _profile_onnx(path, list(inputs), threads, iterations, warmup, execution, trt_cache_dir)
        return PROFILERS[fmt](path, list(inputs), threads, iterations, warmup)
    except runtimes.RuntimeMissing as exc:
        return unavailable(str(exc), iterations=iterations, warmup=warmup)
    except Exception as exc:  # the runtime failed while profiling
        return unavailable(f"profiling failed: {type(exc).__name__}: {exc}", iterations=iterations, warmup=warmup)


def unavailable(why: str, method: str = "", runtime: Optional[Dict[str, str]] = None, iterations: int = 0,
                warmup: int = 0) -> Dict[str, Any]:
    return {"status": f"unavailable: {why}", "method": method, "ops": [], "iterations": iterations,
            "warmup": warmup, "op_time_ms": None, "run_time_ms": None, "runtime": runtime}


def _result(method: str, rows: List[Tuple[str, str, float]], runtime: Dict[str, str], iterations: int,
            warmup: int, run_time_ms: Optional[float]) -> Dict[str, Any]:
    """rows: (name, type, mean ms per inference)."""
    total = sum(t for _, _, t in rows)
    ops: List[Dict[str, Any]] = [
        {"name": n, "type": t, "time_ms": round(ms, 6), "share": round(ms / total, 6) if total > 0 else None}
        for n, t, ms in rows]
    ops.sort(key=lambda o: (-o["time_ms"], o["name"]))
    if not ops:
        return unavailable("the profiler recorded no operator events", method, runtime, iterations, warmup)
    return {"status": MEASURED, "method": method, "ops": ops, "iterations": iterations, "warmup": warmup,
            "op_time_ms": round(total, 6), "run_time_ms": None if run_time_ms is None else round(run_time_ms, 6),
            "runtime": runtime}


# ---- ONNX Runtime -----------------------------------------------------------------------------------


def _profile_onnx(path: str, inputs: List[np.ndarray], threads: int, iterations: int, warmup: int,
                  execution: Optional[Dict[str, Any]] = None, trt_cache_dir: Optional[str] = None) -> Dict[str, Any]:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise runtimes.RuntimeMissing("onnxruntime is not installed") from exc
    runtime = {"name": "onnxruntime", "version": ort.__version__}
    events, providers = _onnx_trace(ort, path, inputs, threads, warmup + iterations, execution, trt_cache_dir)
    rows, runs, run_ms = onnx_ops_from_trace(events, warmup)
    method = (f"onnxruntime {ort.__version__} SessionOptions.enable_profiling: '<node>_kernel_time' events "
              f"(cat Node, microsecond resolution) of the optimized graph on {', '.join(providers)}, {threads} "
              f"thread(s); fused nodes appear under the fused node's name and op type; mean over {runs} runs "
              f"after {warmup} warm-up run(s)")
    if any(p in GPU_PROVIDERS for p in providers):
        method += "; inputs fed from the host (session.run), and a GPU kernel's event is its host-side time"
    return _result(method, rows, runtime, runs, warmup, run_ms)


def _onnx_trace(ort: Any, path: str, inputs: List[np.ndarray], threads: int, runs: int,
                execution: Optional[Dict[str, Any]],
                trt_cache_dir: Optional[str]) -> Tuple[List[Dict[str, Any]], List[str]]:
    """(the chrome-trace events of ``runs`` profiled runs, the providers the session registered)."""
    tmp = tempfile.mkdtemp(prefix="edgekit-ort-profile-")
    try:
        made = runtimes.onnx_session(ort, path, threads, plan_from_request(execution),
                                     profile_prefix=os.path.join(tmp, "ort"), trt_cache_dir=trt_cache_dir)
        session = made.session
        declared = session.get_inputs()
        if len(declared) != len(inputs):
            raise ValueError(f"the ONNX model takes {len(declared)} input(s), got {len(inputs)}")
        feed = {i.name: runtimes._cast(a, runtimes._ONNX_TYPES.get(i.type, a.dtype)) for i, a in zip(declared, inputs)}
        for _ in range(runs):
            session.run(None, feed)
        providers = list(session.get_providers())
        trace = session.end_profiling()
        with open(trace if os.path.isabs(trace) else os.path.join(tmp, os.path.basename(trace)), encoding="utf-8") as f:
            events = json.load(f)
        del session, made
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return events, providers


def onnx_nodes_by_provider(path: str, inputs: Sequence[np.ndarray], threads: int,
                           execution: Optional[Dict[str, Any]], trt_cache_dir: Optional[str] = None) -> Dict[str, int]:
    """How many nodes of the optimized graph each provider ran, from one profiled inference in a short
    session of its own (same options and providers as the timed one). Raises on any failure: the caller
    reports it. A subgraph that TensorRT (or another compiling provider) took counts as one node."""
    import onnxruntime as ort

    events, _ = _onnx_trace(ort, path, list(inputs), threads, 1, execution, trt_cache_dir)
    counts = nodes_by_provider_from_trace(events)
    if not counts:
        raise ValueError("the profiler recorded no node events")
    return counts


def nodes_by_provider_from_trace(events: List[Dict[str, Any]]) -> Dict[str, int]:
    """{provider: distinct node names} from an ORT trace's ``<node>_kernel_time`` events (``args.provider``)."""
    nodes: Dict[str, set] = {}
    for e in events:
        name = e.get("name", "")
        if e.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        provider = str((e.get("args") or {}).get("provider") or "unknown")
        nodes.setdefault(provider, set()).add(name[: -len("_kernel_time")])
    return {provider: len(names) for provider, names in sorted(nodes.items())}


def onnx_ops_from_trace(events: List[Dict[str, Any]], warmup: int) -> Tuple[List[Tuple[str, str, float]], int, Optional[float]]:
    """(rows of (node name, op type, mean ms per run), measured runs, mean model_run ms) from an ORT trace.

    Node events before the first measured ``model_run`` (the warm-up runs) are dropped.
    """
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])
    measured = runs[warmup:]
    if not measured:
        return [], 0, None
    start = measured[0]["ts"]
    totals: Dict[str, float] = {}
    types: Dict[str, str] = {}
    for e in events:
        name = e.get("name", "")
        if e.get("cat") != "Node" or not name.endswith("_kernel_time") or e.get("ts", -1) < start:
            continue
        node = name[: -len("_kernel_time")]
        totals[node] = totals.get(node, 0.0) + float(e.get("dur", 0))
        types[node] = str((e.get("args") or {}).get("op_name", "unknown"))
    n = len(measured)
    rows = [(node, types[node], us / 1000.0 / n) for node, us in totals.items()]
    return rows, n, sum(float(r["dur"]) for r in measured) / 1000.0 / n


# ---- ExecuTorch -------------------------------------------------------------------------------------


def _profile_executorch(path: str, inputs: List[np.ndarray], threads: int, iterations: int, warmup: int) -> Dict[str, Any]:
    try:
        import torch
        from executorch.extension.pybindings import portable_lib
    except ImportError as exc:
        raise runtimes.RuntimeMissing(f"executorch pybindings cannot be imported: {exc}") from exc
    runtime = {"name": "executorch", "version": runtimes._dist_version("executorch")}

    def no(why: str) -> Dict[str, Any]:
        return unavailable(why, "ETDump", runtime, iterations, warmup)

    threads_note = runtimes._set_executorch_threads(threads)
    try:
        module = portable_lib._load_for_executorch(path, enable_etdump=True, debug_buffer_size=0)
    except TypeError as exc:
        return no(f"this executorch's _load_for_executorch does not take enable_etdump ({exc})")
    if not getattr(module, "has_etdump", lambda: False)():
        return no("the executorch pybindings were built without the ETDump event tracer "
                  "(ExecuTorchModule.has_etdump() is False)")
    try:
        from executorch.devtools import Inspector
    except ImportError as exc:
        return no(f"executorch.devtools.Inspector cannot be imported, so the ETDump cannot be read ({exc})")
    prepared = [torch.from_numpy(np.ascontiguousarray(a)) for a in inputs]
    for _ in range(warmup + iterations):
        module.forward(prepared)
    tmp = tempfile.mkdtemp(prefix="edgekit-etdump-")
    try:
        etdump = os.path.join(tmp, "run.etdp")
        module.write_etdump_result_to_file(etdump)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Output Buffer not found": we asked for timings only
            inspector = Inspector(etdump_path=etdump)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows, runs, run_ms, delegate_calls, inner = executorch_ops_from_events(
        [e for block in inspector.event_blocks for e in block.events], warmup)
    if runs <= 0:
        return no("the ETDump holds no measured Method::execute run")
    if not delegate_calls:
        delegates = "no delegate calls"
    elif inner:
        delegates = ("delegated subgraphs split into the delegate's own per-op events (XNNPACK: whole microseconds, "
                     "each op truncated, so sub-microsecond ops read 0; the DELEGATE_CALL time they do not cover is "
                     "listed as 'unattributed')")
    else:
        delegates = "each delegated subgraph is one DELEGATE_CALL (the delegate logged no per-op events)"
    method = (f"executorch {runtime['version']} ETDump (enable_etdump=True) read with executorch.devtools.Inspector: "
              f"one OPERATOR_CALL per non-delegated instruction, named by its native_call_<kernel> event; {delegates}; "
              f"no ETRecord, so no source-node names; mean over {runs} runs after {warmup} warm-up run(s)")
    if threads_note:
        method += f"; {threads_note}"
    return _result(method, rows, runtime, runs, warmup, run_ms)


def executorch_ops_from_events(events: List[Any], warmup: int
                               ) -> Tuple[List[Tuple[str, str, float]], int, Optional[float], int, bool]:
    """(rows, measured runs, mean Method::execute ms, delegate calls, whether a delegate logged per-op events).

    ``events``: executorch.devtools Inspector events; ``perf_data.raw`` holds one duration (ms) per run.
    """
    def mean(e: Any) -> Optional[float]:
        raw = list(getattr(e.perf_data, "raw", None) or []) if e.perf_data is not None else []
        raw = raw[warmup:]
        return sum(raw) / len(raw) if raw else None

    execute = [e for e in events if e.name == "Method::execute" and e.perf_data is not None]
    if not execute:
        return [], 0, None, 0, False
    runs = len(execute[0].perf_data.raw) - warmup
    run_ms = mean(execute[0])
    kernels: Dict[Optional[int], str] = {}  # keyed by instruction id (None: an event without one)
    op_calls: List[Tuple[Optional[int], float]] = []
    delegate_calls: List[Tuple[Optional[int], float]] = []
    inner: Dict[Optional[int], List[Tuple[str, float]]] = {}
    for e in events:
        ms = mean(e)
        instr: Optional[int] = getattr(e, "_instruction_id", None)
        if ms is None or e.name in ("Method::execute", "Method::init", "Program::load_method"):
            continue
        if getattr(e, "is_delegated_op", False):
            inner.setdefault(instr, []).append((e.name, ms))
        elif e.name.startswith("native_call_"):
            kernels[instr] = e.name[len("native_call_"):]
        elif e.name == "OPERATOR_CALL":
            op_calls.append((instr, ms))
        elif e.name == "DELEGATE_CALL":
            delegate_calls.append((instr, ms))
    rows: List[Tuple[str, str, float]] = []
    for instr, ms in op_calls:
        kernel = kernels.get(instr, "OPERATOR_CALL")
        op_type = kernel[: -len(".out")] if kernel.endswith(".out") else kernel
        rows.append((f"{kernel} (instruction {instr})", op_type, ms))
    for instr, ms in delegate_calls:
        parts = inner.get(instr, [])
        if not parts:
            rows.append((f"DELEGATE_CALL (instruction {instr})", "DELEGATE_CALL", ms))
            continue
        for name, part_ms in parts:
            head, sep, _ = name.rpartition(" #")
            rows.append((f"{name} (delegate, instruction {instr})", head if sep else name, part_ms))
        rest = ms - sum(p for _, p in parts)
        if rest > 0:
            rows.append((f"DELEGATE_CALL (instruction {instr}) unattributed", "DELEGATE_CALL", rest))
    return rows, runs, run_ms, len(delegate_calls), bool(inner)


# ---- LiteRT / tflite-runtime ------------------------------------------------------------------------


def _profile_tflite(path: str, inputs: List[np.ndarray], threads: int, iterations: int, warmup: int) -> Dict[str, Any]:
    interpreter_cls, name, version = runtimes._tflite_interpreter()
    runtime = {"name": name, "version": version}
    interp = interpreter_cls(model_path=path, num_threads=threads)
    native = getattr(interp, "_interpreter", None)
    found = sorted({f"{type(obj).__name__}.{attr}" for obj in (interp, native) if obj is not None
                    for attr in dir(obj) if "profil" in attr.lower() and not attr.startswith("__")
                    and callable(getattr(obj, attr, None))})
    if found:
        why = (f"{name} {version} exposes {', '.join(found)}, which edgekit does not read yet; {TFLITE_HINT}")
    else:
        why = (f"{name} {version}: the Python Interpreter has no op profiler (no profiling method on "
               f"{type(interp).__name__} or its native wrapper {type(native).__name__}); {TFLITE_HINT}")
    return unavailable(why, "benchmark_model --enable_op_profiling=true (not run by the agent)", runtime,
                       iterations, warmup)


PROFILERS = {
    "executorch": _profile_executorch,
    "onnx": _profile_onnx,
    "tflite": _profile_tflite,
}
