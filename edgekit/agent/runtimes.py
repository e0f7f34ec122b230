"""Load and run one artifact in its own runtime.

Runs on the device: standard library plus numpy and whichever runtime is installed; imports nothing from
edgekit. The host uses the same code for parity checks, so what is checked is what the agent runs.

A runner splits a call in three so the timed region holds only the runtime's own work:
``prepare`` (dtype conversion, int8 input quantization: once, untimed), ``invoke`` (timed), ``finish``
(dequantize outputs to float).
"""

from __future__ import annotations

import importlib
import re
import time
from typing import Any, Callable, Sequence

import numpy as np

# The agent imports these before it times load_ms, so load_ms is the model's load, not torch's import.
from .device_info import RUNTIME_CANDIDATES

FORMATS = ("executorch", "onnx", "tflite")


class RuntimeMissing(RuntimeError):
    """The runtime for a format is not installed here, or is installed and does not import."""


def _missing(what: str, exc: ImportError) -> RuntimeMissing:
    """Not installed, or installed but unloadable (a numpy ABI clash; a library the loader could not map
    because memory ran out): the message says which, with the import error."""
    if isinstance(exc, ModuleNotFoundError):
        return RuntimeMissing(f"{what} is not installed")
    return RuntimeMissing(f"{what} is installed but does not import: {exc}")


def import_runtime(fmt: str) -> float:
    """Import the runtime for ``fmt`` if it is here; the time taken, in ms. Absence is load_runner's to report."""
    t0 = time.perf_counter_ns()
    for _, group in RUNTIME_CANDIDATES[fmt]:
        try:
            for name in group:
                importlib.import_module(name)
            break
        except ImportError:
            continue
    return (time.perf_counter_ns() - t0) / 1e6


class Runner:
    format: str = ""
    runtime: str = ""
    version: str = ""
    threads_note: str = ""

    def prepare(self, inputs: Sequence[np.ndarray]) -> Any:
        raise NotImplementedError

    def invoke(self, prepared: Any) -> Any:
        raise NotImplementedError

    def finish(self, raw: Any) -> list[np.ndarray]:
        raise NotImplementedError

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self.finish(self.invoke(self.prepare(inputs)))

    def info(self) -> dict[str, str]:
        info = {"name": self.runtime, "version": self.version}
        if self.threads_note:
            info["threads_note"] = self.threads_note
        return info


def _check_arity(inputs: Sequence[np.ndarray], expected: int, what: str) -> None:
    if len(inputs) != expected:
        raise ValueError(f"{what} takes {expected} input(s), got {len(inputs)}")


class OnnxRunner(Runner):
    format = "onnx"

    def __init__(self, path: str, threads: int) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise _missing("onnxruntime", exc) from exc
        self.runtime, self.version = "onnxruntime", ort.__version__
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.inputs = self.session.get_inputs()

    def prepare(self, inputs: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        _check_arity(inputs, len(self.inputs), "the ONNX model")
        return {i.name: _cast(a, _ONNX_TYPES.get(i.type, a.dtype)) for i, a in zip(self.inputs, inputs)}

    def invoke(self, prepared: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, prepared)

    def finish(self, raw: list[np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(r, dtype=np.float32) if np.issubdtype(np.asarray(r).dtype, np.floating) else np.asarray(r) for r in raw]


_ONNX_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
    "tensor(int32)": np.int32, "tensor(bool)": np.bool_, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
}


class TfliteRunner(Runner):
    """LiteRT (ai-edge-litert) or, on a classic Pi, tflite-runtime."""

    format = "tflite"

    def __init__(self, path: str, threads: int) -> None:
        interpreter_cls, self.runtime, self.version = _tflite_interpreter()
        self.interp = interpreter_cls(model_path=path, num_threads=threads)
        self.interp.allocate_tensors()
        self.in_details, self.out_details = _signature_order(self.interp)

    def prepare(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        _check_arity(inputs, len(self.in_details), "the TFLite model")
        return [_to_tflite_input(a, d) for a, d in zip(inputs, self.in_details)]

    def invoke(self, prepared: list[np.ndarray]) -> list[np.ndarray]:
        for arr, d in zip(prepared, self.in_details):
            self.interp.set_tensor(d["index"], arr)
        self.interp.invoke()
        return [self.interp.get_tensor(d["index"]) for d in self.out_details]

    def finish(self, raw: list[np.ndarray]) -> list[np.ndarray]:
        return [_from_tflite_output(a, d) for a, d in zip(raw, self.out_details)]


def _tflite_interpreter() -> tuple[Any, str, str]:
    litert_error: Any = None
    try:
        from ai_edge_litert import interpreter as lite
        import ai_edge_litert
        return lite.Interpreter, "ai-edge-litert", getattr(ai_edge_litert, "__version__", _dist_version("ai-edge-litert"))
    except ImportError as exc:
        litert_error = exc
    try:
        from tflite_runtime import interpreter as lite  # type: ignore[import-not-found]
        import tflite_runtime  # type: ignore[import-not-found]
        return lite.Interpreter, "tflite-runtime", getattr(tflite_runtime, "__version__", _dist_version("tflite-runtime"))
    except ImportError as exc:
        if not isinstance(litert_error, ModuleNotFoundError):  # installed: why it does not import matters
            raise _missing("ai-edge-litert", litert_error) from litert_error
        raise RuntimeMissing("neither ai-edge-litert nor tflite-runtime is installed") from exc


def _signature_order(interp: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Input and output details in the PyTorch argument / output order.

    Tensor ids need not follow argument order. litert-torch names signature entries ``args_N`` and
    ``output_N``; where every name carries such an index, order by it. Otherwise keep the
    interpreter's own order.
    """
    ins, outs = interp.get_input_details(), interp.get_output_details()
    try:
        sigs = interp.get_signature_list()
        if len(sigs) != 1:
            return ins, outs
        runner = interp.get_signature_runner(next(iter(sigs)))
        by_index = {d["index"]: d for d in ins + outs}
        return (_ordered(runner.get_input_details(), by_index, ins),
                _ordered(runner.get_output_details(), by_index, outs))
    except Exception:  # old tflite-runtime without signature runners
        return ins, outs


def _ordered(sig: dict[str, dict[str, Any]], by_index: dict[int, dict[str, Any]],
             fallback: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keyed = []
    for name, detail in sig.items():
        m = re.fullmatch(r"(?:args|output)_(\d+)", name)
        if m is None or detail["index"] not in by_index:
            return fallback
        keyed.append((int(m.group(1)), by_index[detail["index"]]))
    return [d for _, d in sorted(keyed, key=lambda kv: kv[0])]


def _to_tflite_input(arr: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    scale, zero = detail.get("quantization", (0.0, 0))
    if dtype.kind in "iu" and scale and np.issubdtype(arr.dtype, np.floating):
        # A full-integer model takes quantized inputs: use the model's own scale and zero point.
        info = np.iinfo(dtype)
        return np.clip(np.round(arr / scale + zero), info.min, info.max).astype(dtype)
    return np.ascontiguousarray(arr.astype(dtype, copy=False))


def _from_tflite_output(arr: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero = detail.get("quantization", (0.0, 0))
    if np.dtype(detail["dtype"]).kind in "iu" and scale:
        return ((arr.astype(np.float32) - zero) * scale).astype(np.float32)
    return np.array(arr, copy=True)


class ExecutorchRunner(Runner):
    format = "executorch"

    def __init__(self, path: str, threads: int) -> None:
        try:
            import torch
            from executorch.runtime import Runtime
        except ImportError as exc:
            raise _missing("executorch", exc) from exc
        self._torch = torch
        self.runtime, self.version = "executorch", _dist_version("executorch")
        self.threads_note = _set_executorch_threads(threads)
        self.program = Runtime.get().load_program(path)  # held: the method must not outlive its program
        self.method = self.program.load_method("forward")

    def prepare(self, inputs: Sequence[np.ndarray]) -> list[Any]:
        return [self._torch.from_numpy(np.ascontiguousarray(a)) for a in inputs]

    def invoke(self, prepared: list[Any]) -> Any:
        return self.method.execute(prepared)

    def finish(self, raw: Any) -> list[np.ndarray]:
        return [o.detach().numpy().copy() if hasattr(o, "numpy") else np.asarray(o) for o in raw]


def _set_executorch_threads(threads: int) -> str:
    try:
        from executorch.extension.pybindings import portable_lib

        portable_lib._unsafe_reset_threadpool(threads)
        return ""
    except Exception as exc:  # the API is marked experimental; keep going with the default pool
        return f"thread count not set ({type(exc).__name__}: {exc}); runtime default used"


def _cast(arr: np.ndarray, dtype: Any) -> np.ndarray:
    return np.ascontiguousarray(arr.astype(dtype, copy=False))


def _dist_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return "unknown"


RUNNERS: dict[str, Callable[[str, int], Runner]] = {
    "executorch": ExecutorchRunner,
    "onnx": OnnxRunner,
    "tflite": TfliteRunner,
}


def load_runner(fmt: str, path: str, threads: int = 1) -> Runner:
    """Open ``path`` in the runtime for ``fmt``. Raises RuntimeMissing when that runtime is absent."""
    if fmt not in RUNNERS:
        raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    return RUNNERS[fmt](path, threads)
