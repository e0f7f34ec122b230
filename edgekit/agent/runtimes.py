"""Load and run one artifact in its own runtime.

Runs on the device: standard library plus numpy and whichever runtime is installed; imports nothing from
edgekit. The host uses the same code for parity checks, so what is checked is what the agent runs.

A runner splits a call in three so the timed region holds only the runtime's own work:
``prepare`` (dtype conversion, int8 input quantization, and on a GPU provider the copy of the inputs to the
GPU: once, untimed), ``invoke`` (timed), ``finish`` (outputs back to the host, dequantized to float).

ONNX runs take the request's ``execution`` block (see ``execution.py``): the providers it asks for that
onnxruntime has here, in order; what the session actually registered is ``OnnxRunner.providers_used``.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import shutil
import tempfile
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

# The agent imports these before it times load_ms, so load_ms is the model's load, not torch's import.
from .device_info import RUNTIME_CANDIDATES
from .execution import (CPU, GPU_DEVICE_ID, GPU_PROVIDERS, TENSORRT, Plan, io_mode, missing_providers_message,
                        plan_from_request, provider_options, select_providers)

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
    """onnxruntime with the providers the request's ``execution`` block asks for (default: CPU only).

    On a GPU provider the inputs are bound on the GPU with IO binding (``_GpuIo``), so the timed ``invoke``
    is the GPU's work, synchronized; ``execution.include_copies`` puts the host<->device copies in it too.
    """

    format = "onnx"

    def __init__(self, path: str, threads: int, execution: Optional[Dict[str, Any]] = None,
                 trt_cache_root: Optional[str] = None, digests: Optional[Dict[str, str]] = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise _missing("onnxruntime", exc) from exc
        self.runtime, self.version = "onnxruntime", ort.__version__
        self.plan = plan_from_request(execution)
        made = onnx_session(ort, path, threads, self.plan, trt_cache_root=trt_cache_root, digests=digests)
        self.session, self.chosen, self.available = made.session, made.chosen, made.available
        self.trt_cache_dir, self.trt_cache_reused = made.trt_cache_dir, made.trt_cache_reused
        self._keep = made  # owns a temporary engine cache, removed with the runner
        self.providers_used: List[str] = list(self.session.get_providers())
        self.io_binding, self.copies_timed = io_mode(self.providers_used, self.plan.include_copies)
        self.inputs = self.session.get_inputs()
        self._gpu: Optional[_GpuIo] = None
        if self.io_binding:
            outputs = [o.name for o in self.session.get_outputs()]
            self._gpu = _GpuIo(ort, self.session, outputs, self.plan.include_copies)

    def prepare(self, inputs: Sequence[np.ndarray]) -> Any:
        _check_arity(inputs, len(self.inputs), "the ONNX model")
        feed = {i.name: _cast(a, _ONNX_TYPES.get(i.type, a.dtype)) for i, a in zip(self.inputs, inputs)}
        return feed if self._gpu is None else self._gpu.prepare(feed)

    def invoke(self, prepared: Any) -> Any:
        if self._gpu is not None:
            return self._gpu.invoke(prepared)
        return self.session.run(None, prepared)

    def finish(self, raw: Any) -> list[np.ndarray]:
        if self._gpu is not None:
            raw = self._gpu.finish(raw)
        return [np.asarray(r, dtype=np.float32) if np.issubdtype(np.asarray(r).dtype, np.floating) else np.asarray(r) for r in raw]


@dataclass
class OnnxSession:
    session: Any
    chosen: List[str]  # the requested providers onnxruntime has here, in order: what it was asked for
    available: List[str]  # onnxruntime.get_available_providers()
    trt_cache_dir: Optional[str] = None
    trt_cache_reused: Optional[bool] = None  # engines were already in the cache before this session


def session_options(ort: Any, threads: int) -> Any:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return opts


def onnx_session(ort: Any, path: str, threads: int, plan: Plan, profile_prefix: Optional[str] = None,
                 trt_cache_root: Optional[str] = None, digests: Optional[Dict[str, str]] = None,
                 trt_cache_dir: Optional[str] = None) -> OnnxSession:
    """An InferenceSession on the plan's providers; RuntimeMissing when none of them is here.

    Without an execution block this is exactly the old session: ``providers=["CPUExecutionProvider"]``.
    TensorRT engines go to ``trt_cache_dir`` when given (a second session of the same run: reuse the first
    one's engines), else to a folder under ``trt_cache_root`` (see ``_trt_cache``).
    """
    available = list(ort.get_available_providers())
    opts = session_options(ort, threads)
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    if not plan.explicit:
        return OnnxSession(ort.InferenceSession(path, opts, providers=[CPU]), [CPU], available)
    chosen, missing = select_providers(plan, available)
    if not chosen:
        raise RuntimeMissing(missing_providers_message(plan, available, missing, ort.__version__))
    made = OnnxSession(None, chosen, available)
    if TENSORRT in chosen and trt_cache_dir:
        os.makedirs(trt_cache_dir, exist_ok=True)
        made.trt_cache_dir, made.trt_cache_reused = trt_cache_dir, _has_engines(trt_cache_dir)
    elif TENSORRT in chosen:
        made.trt_cache_dir, made.trt_cache_reused = _trt_cache(made, trt_cache_root, path, plan, ort.__version__,
                                                               digests or {})
    # enable_fallback=0: without the CPU in the plan, a GPU provider that fails to start must fail the load,
    # not let onnxruntime's Python wrapper retry on the CPU (older onnxruntime ignores the keyword; the
    # providers check below catches it there).
    extra = {} if plan.cpu_fallback else {"enable_fallback": 0}
    made.session = ort.InferenceSession(path, opts, providers=chosen,
                                        provider_options=provider_options(plan, chosen, made.trt_cache_dir), **extra)
    used = list(made.session.get_providers())
    if any(p in GPU_PROVIDERS for p in chosen) and hasattr(made.session, "disable_fallback"):
        made.session.disable_fallback()  # a GPU failure mid-benchmark must not quietly continue on the CPU
    if plan.gpu_requested and not plan.cpu_fallback and not any(p in GPU_PROVIDERS for p in used):
        raise RuntimeMissing(f"{', '.join(p for p in chosen if p in GPU_PROVIDERS)} did not start (onnxruntime "
                             f"registered only {', '.join(used)}; its error is on the agent's stderr) and "
                             "cpu_fallback is false: check the CUDA, cuDNN and TensorRT libraries onnxruntime-gpu "
                             "was built for")
    return made


def _trt_cache(made: OnnxSession, root: Optional[str], path: str, plan: Plan, ort_version: str,
               digests: Dict[str, str]) -> "tuple[str, bool]":
    """(TensorRT engine cache folder, whether it already held engines).

    Building an engine takes seconds to minutes, so with a workdir (``root`` = ``<scratch>/trt-engines``,
    i.e. ``<workdir>/tmp/trt-engines``: inside the device's workdir, and not one of the ``run-<pid>-*``
    folders a run removes) the cache outlives the run. onnxruntime does not notice a changed model, precision
    or onnxruntime/TensorRT version in a cache it is pointed at, so each combination gets a folder of its
    own, named by them and by the artifact's content hash. Without a workdir (a local run) the engines go to
    a temporary folder removed with the runner: the agent writes nothing outside the device's workdir.
    """
    if root is None:
        folder = tempfile.mkdtemp(prefix="edgekit-trt-engines-")
        weakref.finalize(made, shutil.rmtree, folder, True)
        return folder, False
    from .measure import artifact_files

    h = hashlib.sha256()
    for f in artifact_files(path, "onnx"):
        h.update((digests.get(f) or _file_sha256(f)).encode())
    precision = "fp16" if plan.fp16 else "fp32"
    key = f"ort{ort_version}-trt{_dist_version('tensorrt')}-{precision}{'-int8' if plan.int8 else ''}-{h.hexdigest()[:16]}"
    folder = os.path.join(root, re.sub(r"[^A-Za-z0-9._-]", "_", key))
    reused = _has_engines(folder)
    os.makedirs(folder, exist_ok=True)
    return folder, reused


def _has_engines(folder: str) -> bool:
    return os.path.isdir(folder) and any(n.endswith(".engine") for n in os.listdir(folder))


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class _Bound:
    binding: Any  # onnxruntime.IOBinding
    host: Dict[str, np.ndarray]  # the prepared inputs on the host
    device: Dict[str, Any]  # their OrtValues on the GPU (held: the binding must not outlive them)


class _GpuIo:
    """Inputs and outputs bound on the GPU (device ``cuda``, id ``GPU_DEVICE_ID``) with IO binding.

    Default: the inputs are copied to the GPU once in ``prepare`` (untimed); ``invoke`` runs and waits for the
    outputs (``synchronize_outputs``), so its time is the GPU's; ``finish`` copies the outputs back (untimed).
    ``include_copies``: ``invoke`` also copies the inputs host->device and the outputs device->host.
    """

    def __init__(self, ort: Any, session: Any, outputs: Sequence[str], include_copies: bool) -> None:
        self.ort, self.session, self.outputs, self.include_copies = ort, session, list(outputs), include_copies

    def _to_device(self, arr: np.ndarray) -> Any:
        return self.ort.OrtValue.ortvalue_from_numpy(arr, "cuda", GPU_DEVICE_ID)

    def prepare(self, feed: Dict[str, np.ndarray]) -> _Bound:
        binding = self.session.io_binding()
        for name in self.outputs:  # onnxruntime allocates them on the GPU at each run
            binding.bind_output(name, "cuda", GPU_DEVICE_ID)
        device: Dict[str, Any] = {}
        if not self.include_copies:
            device = {name: self._to_device(arr) for name, arr in feed.items()}
            for name, value in device.items():
                binding.bind_ortvalue_input(name, value)
        return _Bound(binding, feed, device)

    def invoke(self, prepared: _Bound) -> Any:
        binding = prepared.binding
        if self.include_copies:
            for name, arr in prepared.host.items():
                value = self._to_device(arr)
                prepared.device[name] = value
                binding.bind_ortvalue_input(name, value)
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()  # the run is asynchronous on the GPU: wait for it inside the timed call
        if self.include_copies:
            return binding.copy_outputs_to_cpu()
        return binding

    def finish(self, raw: Any) -> List[np.ndarray]:
        if self.include_copies:  # already copied back inside invoke
            return list(raw)
        return list(raw.copy_outputs_to_cpu())


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
        from tflite_runtime import interpreter as lite
        import tflite_runtime
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
        try:  # registers the quantized embedding kernels a transformer's int8/int4 .pte calls
            import executorch.kernels.quantized  # noqa: F401
        except ImportError:
            pass
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


def load_runner(fmt: str, path: str, threads: int = 1, execution: Optional[Dict[str, Any]] = None,
                trt_cache_root: Optional[str] = None, digests: Optional[Dict[str, str]] = None) -> Runner:
    """Open ``path`` in the runtime for ``fmt``. Raises RuntimeMissing when that runtime is absent, or (ONNX)
    when none of the execution providers the ``execution`` block asks for is here.

    ``execution``, ``trt_cache_root`` and ``digests`` (file -> sha256, for the engine cache's name) matter to
    ONNX only: the other runtimes have no provider choice here, and the agent's answer says so.
    """
    if fmt not in RUNNERS:
        raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    if fmt == "onnx":
        return OnnxRunner(path, threads, execution, trt_cache_root, digests)
    return RUNNERS[fmt](path, threads)
