"""Latency loop, latency statistics, peak memory and artifact size.

Why it is built this way: people buy edgekit for numbers they can trust, so the timed region holds one
``invoke`` call and nothing else (inputs are prepared before), every raw sample is kept, every loop is
bounded, and each figure says how it was obtained. Standard library + numpy only (runs on the device).
"""

from __future__ import annotations

import math
import mmap
import os
import sys
import time
from array import array
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

# A hard cap on loop iterations, on top of max_seconds, so a loop always ends even if the clock misbehaves.
MAX_ITERATIONS = 10_000_000
MIB = 1024 * 1024


@dataclass
class LoopResult:
    samples_ns: array  # one int64 per invoke, nanoseconds
    seconds: float  # wall time of the whole window, first invoke start to last invoke end
    truncated: bool  # a minimum (iterations or seconds) was not met when a bound stopped the loop

    @property
    def iterations(self) -> int:
        return len(self.samples_ns)


def timed_loop(
    invoke: Callable[[Any], Any],
    prepared: Any,
    min_iterations: int,
    min_seconds: float,
    max_seconds: float,
    max_iterations: int = MAX_ITERATIONS,
) -> LoopResult:
    """Call ``invoke(prepared)`` until both minimums are met, never past ``max_seconds``/``max_iterations``.

    Only the call itself is timed (perf_counter_ns). At least one call is always made. Samples go into an
    ``array('q')`` (8 bytes each) so millions of them do not inflate peak memory.
    """
    samples = array("q")
    min_ns, max_ns = int(min_seconds * 1e9), int(max_seconds * 1e9)
    clock = time.perf_counter_ns
    start = clock()
    while True:
        t0 = clock()
        invoke(prepared)
        t1 = clock()
        samples.append(t1 - t0)
        elapsed = t1 - start
        if len(samples) >= min_iterations and elapsed >= min_ns:
            return LoopResult(samples, elapsed / 1e9, truncated=False)
        if elapsed >= max_ns or len(samples) >= max_iterations:
            return LoopResult(samples, elapsed / 1e9, truncated=True)


def timed_call(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """(fn(*args), its wall time in ms): for runner construction (load) and the first inference."""
    t0 = time.perf_counter_ns()
    result = fn(*args)
    return result, (time.perf_counter_ns() - t0) / 1e6


def latency_stats(samples_ns: Sequence[int]) -> dict[str, Any]:
    """All raw samples (ms) plus stats derived from them; the raw samples stay the source of truth."""
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    if ms.size == 0:
        raise ValueError("no latency samples")
    # np.percentile's default is linear interpolation; not passing method= keeps old numpy (Pi) working.
    p50, p90, p95, p99 = (float(v) for v in np.percentile(ms, [50, 90, 95, 99]))
    return {
        "samples": ms.tolist(),
        "min": float(ms.min()),
        "max": float(ms.max()),
        "mean": float(ms.mean()),
        "std": float(ms.std(ddof=1)) if ms.size > 1 else None,
        "p50": p50,
        "p90": p90,
        "p95": p95,
        "p99": p99,
        "ci95_p50": median_ci95(ms),
    }


def median_ci95(values: Any) -> list[float]:
    """Distribution-free 95% CI of the median from order statistics.

    The rank of the median is Binomial(n, 1/2); with the normal approximation the bounds are the order
    statistics at ranks n/2 - 1.96*sqrt(n)/2 and 1 + n/2 + 1.96*sqrt(n)/2 (1-based), rounded outwards
    and clamped to [1, n], so the interval always lies in the sample range and contains the median.
    """
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = x.size
    half_width = 1.96 * math.sqrt(n) / 2
    lo = max(1, math.floor(n / 2 - half_width))
    hi = min(n, math.ceil(1 + n / 2 + half_width))
    return [float(x[lo - 1]), float(x[hi - 1])]


def top1_accuracy(predict: Callable[[Any], Sequence[Any]], samples: Sequence[Any], labels: Any) -> float:
    """Top-1 over the first output. One definition for PyTorch, the host's runtimes and the device's agent,
    so their figures compare."""
    preds = [int(np.argmax(np.asarray(predict(x)[0]).reshape(-1))) for x in samples]
    return float(np.mean(np.asarray(preds) == np.asarray(labels).reshape(-1)))


# ---- memory -----------------------------------------------------------------------------------------

PROC_STATUS = "/proc/self/status"
METHOD_VMHWM = "VmHWM from /proc/self/status (MiB)"
METHOD_RUSAGE = "ru_maxrss (getrusage) (MiB)"


def peak_rss_mib(proc_status: str = PROC_STATUS) -> tuple[Optional[float], str]:
    """Peak resident set size of this process so far, in MiB, and how it was read.

    VmHWM is exact and readable on Linux; elsewhere ru_maxrss (KiB on Linux, bytes on macOS).
    """
    vmhwm = read_vmhwm_mib(proc_status)
    if vmhwm is not None:
        return vmhwm, METHOD_VMHWM
    return _ru_maxrss_mib(), METHOD_RUSAGE


CLEAR_REFS = "/proc/self/clear_refs"


def reset_peak_rss(clear_refs: str = CLEAR_REFS) -> tuple[bool, str]:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs): (done, why not)."""
    try:
        with open(clear_refs, "w", encoding="ascii") as f:
            f.write("5")
        return True, ""
    except OSError as exc:
        return False, f"cannot reset VmHWM via {clear_refs} ({exc.strerror or exc})"


def read_vmhwm_mib(proc_status: str = PROC_STATUS) -> Optional[float]:
    """VmHWM from a /proc status file (the kernel writes it in kB, which are KiB), or None."""
    try:
        with open(proc_status, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / MIB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _ru_maxrss_mib() -> Optional[float]:
    try:
        import resource
    except ImportError:  # Windows
        return None
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    unit = 1 if sys.platform == "darwin" else 1024
    return maxrss * unit / MIB if maxrss > 0 else None


# ---- artifact size ----------------------------------------------------------------------------------


def artifact_files(path: str, fmt: str) -> list[str]:
    """The files that make up the artifact: the file itself, plus for ONNX its external-data files.

    External data is found from the model itself (the ``location`` entries of its initializers), not by
    guessing names, so ``model.onnx.data`` and any other layout are counted exactly.
    """
    files = [path]
    if fmt == "onnx":
        base = os.path.dirname(os.path.abspath(path))
        for location in sorted(onnx_external_locations(path)):
            candidate = os.path.normpath(os.path.join(base, location))
            if os.path.isfile(candidate) and candidate not in files:
                files.append(candidate)
    return files


def onnx_external_locations(path: str) -> set[str]:
    """``location`` values of external-data initializers in an ONNX file; empty if none or unreadable.

    A tiny protobuf walk (ModelProto.graph=7 -> GraphProto.initializer=5 -> TensorProto.external_data=13
    -> StringStringEntryProto key=1/value=2) so the agent needs no ``onnx`` package. The file is mmapped
    and weights are skipped by length, so large models are not read into memory.
    """
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            found: set[str] = set()
            for graph in _pb_fields(buf, 0, len(buf), 7):
                for tensor in _pb_fields(buf, graph[0], graph[1], 5):
                    for entry in _pb_fields(buf, tensor[0], tensor[1], 13):
                        kv = {k: bytes(buf[s:e]) for k in (1, 2) for s, e in _pb_fields(buf, entry[0], entry[1], k)}
                        if kv.get(1) == b"location" and 2 in kv:
                            found.add(kv[2].decode("utf-8", "replace"))
            return found
    except (OSError, ValueError, IndexError):
        return set()


def _pb_fields(buf: Any, start: int, end: int, wanted: int) -> list[tuple[int, int]]:
    """(start, end) spans of the length-delimited fields numbered ``wanted`` in buf[start:end]."""
    spans, pos = [], start
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if field == wanted:
                spans.append((pos, pos + length))
            pos += length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
    return spans


def _varint(buf: Any, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
