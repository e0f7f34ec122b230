"""Which execution providers a run asks for, which it got, and what to call the figures that came out.

Why: a profile such as ``jetson-orin`` says ``accelerator: cuda``, but onnxruntime runs whatever providers it
is given and, where a GPU provider is missing or fails to start, quietly runs on the CPU. A CPU figure under
a GPU profile's name is worse than no figure. So the request names the providers it wants, the runner asks
onnxruntime for those (and only those) that are available, and the answer says what actually ran, node by
node, in plain words when it is not what was asked for.

The request's optional ``execution`` object (absent or null: the CPU provider only, as before)::

    {"accelerator": "cuda" | null,
     "providers": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
     "cpu_fallback": true,               # CPUExecutionProvider is kept (appended if not listed); false: never asked for
     "tensorrt": {"fp16": false, "int8": false},
     "include_copies": false}            # GPU runs: time host->device and device->host copies too

``providers`` defaults to ``["CUDAExecutionProvider"]`` for ``accelerator: "cuda"`` and to
``["CPUExecutionProvider"]`` without an accelerator. Listing a GPU provider without an accelerator means
``"cuda"``. The answer's ``execution`` block is built by ``execution_block`` (keys: ``BLOCK_KEYS``).

Standard library only (runs on the device, imported before any runtime); onnxruntime itself is used in
``runtimes.py`` and ``opprofile.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = (TENSORRT, CUDA)  # providers that run on an NVIDIA GPU, the device "cuda" of IO binding
ACCELERATORS = ("cuda",)
EXECUTION_KEYS = ("accelerator", "providers", "cpu_fallback", "tensorrt", "include_copies")
TENSORRT_KEYS = ("fp16", "int8")
GPU_DEVICE_ID = 0  # CUDA device 0 of this process (CUDA_VISIBLE_DEVICES picks which physical GPU that is)
CPU_MAJORITY = 0.5  # more than this share of the nodes on the CPU: the figures are mostly CPU work

BLOCK_KEYS = (
    "accelerator", "providers_requested", "cpu_fallback", "providers_available", "providers_used",
    "nodes_by_provider", "accelerator_used", "accelerator_ok", "note", "io_binding", "copies_timed",
    "tensorrt", "trt_engine_build_ms", "trt_engine_cache_path", "trt_engine_cache_reused",
)

INSTALL_HINTS = {
    CUDA: "install onnxruntime-gpu in place of onnxruntime (on a Jetson: the onnxruntime-gpu wheel built for "
          "its JetPack), with the CUDA and cuDNN libraries it was built for",
    TENSORRT: "TensorrtExecutionProvider needs onnxruntime-gpu and the TensorRT libraries (pip install tensorrt; "
              "on a Jetson they come with JetPack)",
}


@dataclass
class Plan:
    """What a request asks for, defaults filled in. ``explicit``: the request carried an execution block."""

    accelerator: Optional[str] = None
    providers: List[str] = field(default_factory=lambda: [CPU])  # in order, CPU appended when cpu_fallback
    cpu_fallback: bool = True
    fp16: bool = False
    int8: bool = False
    include_copies: bool = False
    explicit: bool = False

    @property
    def gpu_requested(self) -> List[str]:
        return [p for p in self.providers if p in GPU_PROVIDERS]


# ---- the request ------------------------------------------------------------------------------------


def check_execution(value: Any) -> None:
    """ValueError naming the field (``execution.providers``...) for anything malformed; None is fine."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise ValueError(f"request field 'execution' must be null or an object with keys {list(EXECUTION_KEYS)}, "
                         f"got {value!r}")
    unknown = sorted(set(value) - set(EXECUTION_KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in request field 'execution'; valid: {list(EXECUTION_KEYS)}")
    accelerator = value.get("accelerator")
    if accelerator is not None and accelerator not in ACCELERATORS:
        raise ValueError(f"request field 'execution.accelerator' is {accelerator!r}; valid: null, "
                         f"{', '.join(repr(a) for a in ACCELERATORS)}")
    providers = value.get("providers")
    if providers is not None:
        if not isinstance(providers, list) or not providers or \
                not all(isinstance(p, str) and p.endswith("ExecutionProvider") for p in providers):
            raise ValueError("request field 'execution.providers' must be a non-empty list of onnxruntime provider "
                             f"names (e.g. {TENSORRT!r}, {CUDA!r}, {CPU!r}), got {providers!r}")
        if len(set(providers)) != len(providers):
            raise ValueError(f"request field 'execution.providers' lists a provider twice: {providers!r}")
    for name in ("cpu_fallback", "include_copies"):
        if not isinstance(value.get(name, False), bool):
            raise ValueError(f"request field 'execution.{name}' must be true or false, got {value[name]!r}")
    trt = value.get("tensorrt")
    if trt is not None:
        if not isinstance(trt, dict) or set(trt) - set(TENSORRT_KEYS) or \
                not all(isinstance(v, bool) for v in trt.values()):
            raise ValueError(f"request field 'execution.tensorrt' must be null or an object of true/false with keys "
                             f"{list(TENSORRT_KEYS)}, got {trt!r}")
    plan = plan_from_request(value)
    if value.get("cpu_fallback") is False and providers and CPU in providers and len(providers) > 1:
        raise ValueError(f"request field 'execution.providers' lists {CPU} but 'execution.cpu_fallback' is false: "
                         "drop one of the two")
    if plan.accelerator and not plan.gpu_requested:
        raise ValueError(f"request field 'execution.accelerator' is {plan.accelerator!r} but 'execution.providers' "
                         f"({', '.join(plan.providers)}) has no GPU provider ({', '.join(GPU_PROVIDERS)})")


def plan_from_request(value: Optional[Dict[str, Any]]) -> Plan:
    """The plan for a checked ``execution`` value (None: CPU only, today's behaviour)."""
    if value is None:
        return Plan()
    cpu_fallback = bool(value.get("cpu_fallback", True))
    accelerator = value.get("accelerator")
    providers = list(value.get("providers") or ([CUDA] if accelerator else [CPU]))
    if accelerator is None and any(p in GPU_PROVIDERS for p in providers):
        accelerator = "cuda"  # a GPU provider was asked for: judge the answer as a GPU run
    if cpu_fallback and CPU not in providers:
        providers.append(CPU)
    trt = value.get("tensorrt") or {}
    return Plan(accelerator=accelerator, providers=providers, cpu_fallback=cpu_fallback,
                fp16=bool(trt.get("fp16", False)), int8=bool(trt.get("int8", False)),
                include_copies=bool(value.get("include_copies", False)), explicit=True)


# ---- choosing providers -----------------------------------------------------------------------------


def select_providers(plan: Plan, available: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(the requested providers onnxruntime has here, in the requested order; the requested ones it lacks)."""
    chosen = [p for p in plan.providers if p in available]
    missing = [p for p in plan.providers if p not in available]
    return chosen, missing


def missing_providers_message(plan: Plan, available: Sequence[str], missing: Sequence[str], version: str) -> str:
    """Why loading failed: none of the requested providers is here. Ends with what to install."""
    hints = [INSTALL_HINTS[p] for p in (CUDA, TENSORRT) if p in missing]
    fallback = "" if plan.cpu_fallback else " and cpu_fallback is false"
    text = (f"execution provider(s) {', '.join(missing)} requested{fallback}, but onnxruntime {version} here offers "
            f"only {', '.join(available) or 'none'}")
    return text + (": " + "; ".join(hints) if hints else "")


def provider_options(plan: Plan, chosen: Sequence[str], trt_cache_dir: Optional[str]) -> List[Dict[str, Any]]:
    """One options dict per chosen provider, for ``InferenceSession(providers=..., provider_options=...)``."""
    options: List[Dict[str, Any]] = []
    for name in chosen:
        if name == TENSORRT:
            trt: Dict[str, Any] = {"device_id": GPU_DEVICE_ID, "trt_fp16_enable": plan.fp16,
                                   "trt_int8_enable": plan.int8}
            if trt_cache_dir:
                trt.update(trt_engine_cache_enable=True, trt_engine_cache_path=trt_cache_dir)
            options.append(trt)
        elif name == CUDA:
            options.append({"device_id": GPU_DEVICE_ID})
        else:
            options.append({})
    return options


def io_mode(providers_used: Sequence[str], include_copies: bool) -> Tuple[bool, bool]:
    """(bind inputs and outputs on the GPU with IO binding, time the host<->device copies too).

    On a GPU provider, ``session.run`` with numpy arrays copies every input to the device and every output
    back inside the call; binding them on the device leaves the GPU's own work in the timed call. On the CPU
    there is nothing to copy, so nothing changes.
    """
    on_gpu = any(p in GPU_PROVIDERS for p in providers_used)
    return on_gpu, on_gpu and include_copies


# ---- judging what ran -------------------------------------------------------------------------------


def accelerator_used(nodes_by_provider: Optional[Dict[str, int]], providers_used: Sequence[str]) -> str:
    """``tensorrt`` if TensorRT took a node, else ``cuda`` if CUDA did, else ``cpu``. Without a node count,
    what the session registered decides (a registered provider need not have taken a node: the note says
    the count is missing)."""
    if nodes_by_provider is not None:
        took = {p for p, n in nodes_by_provider.items() if n > 0}
    else:
        took = set(providers_used)
    if TENSORRT in took:
        return "tensorrt"
    if CUDA in took:
        return "cuda"
    return "cpu"


def judge(plan: Plan, available: Sequence[str], chosen: Sequence[str], used: Sequence[str],
          nodes_by_provider: Optional[Dict[str, int]], nodes_note: str = "") -> Tuple[str, bool, Optional[str]]:
    """(accelerator_used, accelerator_ok, note in plain words or None)."""
    used_acc = accelerator_used(nodes_by_provider, used)
    notes: List[str] = []
    ok = True
    requested = f"{plan.accelerator} ({', '.join(plan.gpu_requested)})"
    if plan.accelerator and used_acc == "cpu":
        ok = False
        not_here = [p for p in plan.gpu_requested if p not in available]
        failed = [p for p in plan.gpu_requested if p in chosen and p not in used]
        idle = [p for p in plan.gpu_requested if p in used]
        if not_here and len(not_here) == len(plan.gpu_requested):
            hints = "; ".join(INSTALL_HINTS[p] for p in (CUDA, TENSORRT) if p in not_here)
            notes.append(f"profile asks for {requested} but onnxruntime here has only {', '.join(available)}: "
                         f"these are CPU figures, not GPU figures; {hints}")
        elif failed:
            notes.append(f"profile asks for {requested}; {', '.join(failed)} is installed but did not start (onnxruntime "
                         "fell back to the CPU; its error is on the agent's stderr: usually CUDA, cuDNN or TensorRT "
                         "libraries missing or of the wrong version): these are CPU figures, not GPU figures")
        elif idle:
            notes.append(f"profile asks for {requested}; {', '.join(idle)} is registered but took no node of this "
                         "model (no GPU kernel for its operators and types): these are CPU figures, not GPU figures")
        else:
            notes.append(f"profile asks for {requested} but the model ran on {', '.join(used) or 'the CPU'}: "
                         "these are CPU figures, not GPU figures")
    elif plan.accelerator and nodes_by_provider:
        total = sum(nodes_by_provider.values())
        on_cpu = nodes_by_provider.get(CPU, 0)
        if used_acc == "cuda" and total and on_cpu / total > CPU_MAJORITY:
            ok = False
            notes.append(f"{on_cpu} of {total} nodes ran on {CPU} (more than half; onnxruntime also keeps shape "
                         "computations there on purpose): these figures are mostly CPU work, not GPU figures")
        elif on_cpu:
            notes.append(f"{on_cpu} of {total} nodes ran on {CPU}")
        if used_acc == "tensorrt":
            notes.append("a subgraph TensorRT compiled counts as one node")
    if plan.accelerator and ok:
        missing = [p for p in plan.gpu_requested if p not in available]
        if missing:
            notes.append(f"{', '.join(missing)} not available here ({'; '.join(INSTALL_HINTS[p] for p in missing)})")
        failed = [p for p in plan.gpu_requested if p in chosen and p not in used]
        if failed:
            notes.append(f"{', '.join(failed)} is installed but did not start (its error is on the agent's stderr); "
                         f"ran on {', '.join(used)}")
        if not plan.cpu_fallback and nodes_by_provider and nodes_by_provider.get(CPU):
            notes.append("cpu_fallback is false, but onnxruntime always keeps the CPU provider for nodes no other "
                         "provider takes")
    if nodes_note:
        notes.append(nodes_note)
    return used_acc, ok, "; ".join(notes) if notes else None


def execution_block(plan: Plan, available: Sequence[str], chosen: Sequence[str], used: Sequence[str],
                    nodes_by_provider: Optional[Dict[str, int]], nodes_note: str = "", io_binding: bool = False,
                    copies_timed: bool = False, trt_engine_build_ms: Optional[float] = None,
                    trt_cache_path: Optional[str] = None, trt_cache_reused: Optional[bool] = None) -> Dict[str, Any]:
    """The answer's ``execution`` block for an ONNX run (keys: BLOCK_KEYS)."""
    used_acc, ok, note = judge(plan, available, chosen, used, nodes_by_provider, nodes_note)
    return {
        "accelerator": plan.accelerator,
        "providers_requested": list(plan.providers),
        "cpu_fallback": plan.cpu_fallback,
        "providers_available": list(available),
        "providers_used": list(used),
        "nodes_by_provider": None if nodes_by_provider is None else dict(sorted(nodes_by_provider.items())),
        "accelerator_used": used_acc,
        "accelerator_ok": ok,
        "note": note,
        "io_binding": io_binding,
        "copies_timed": copies_timed,
        "tensorrt": {"fp16": plan.fp16, "int8": plan.int8} if TENSORRT in chosen else None,
        "trt_engine_build_ms": trt_engine_build_ms,
        "trt_engine_cache_path": trt_cache_path,
        "trt_engine_cache_reused": trt_cache_reused,
    }


def non_onnx_block(plan: Plan, fmt: str, runtime: str) -> Dict[str, Any]:
    """The ``execution`` block for a format without execution providers here (ExecuTorch, LiteRT)."""
    note = None
    if plan.accelerator:
        note = (f"profile asks for {plan.accelerator} ({', '.join(plan.gpu_requested)}), but the agent runs {fmt} "
                f"artifacts with {runtime} on the CPU only (no GPU delegate path here): these are CPU figures, not "
                "GPU figures; export to onnx for a CUDA/TensorRT run")
    return {
        "accelerator": plan.accelerator,
        "providers_requested": list(plan.providers) if plan.explicit else [],
        "cpu_fallback": plan.cpu_fallback,
        "providers_available": [],
        "providers_used": [],
        "nodes_by_provider": None,
        "accelerator_used": "cpu",
        "accelerator_ok": plan.accelerator is None,
        "note": note,
        "io_binding": False,
        "copies_timed": False,
        "tensorrt": None,
        "trt_engine_build_ms": None,
        "trt_engine_cache_path": None,
        "trt_engine_cache_reused": None,
    }
