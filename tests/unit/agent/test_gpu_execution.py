"""Execution providers: what a run asks onnxruntime for, what it got, and how the answer labels the figures.

This machine has no GPU and its onnxruntime is a CPU build (providers: CPUExecutionProvider, plus Azure).
What is real here: onnxruntime's CPU provider, the agent end to end in a subprocess, a tiny ONNX model built
with onnx.helper. What is FAKE: the onnxruntime session used to check the GPU IO-binding call sequence
(``FakeGpuSession``: nothing here can run the CUDA provider), and the provider lists fed to the pure decision
functions of ``edgekit/agent/execution.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.agent import execution, opprofile, runtimes
from edgekit.agent.execution import CPU, CUDA, TENSORRT

REPO = Path(__file__).resolve().parents[3]
MODULE = [sys.executable, "-m", "edgekit.agent"]
FAST = {"threads": 1, "warmup_iterations": 3, "warmup_seconds": 0.0, "min_iterations": 10, "min_seconds": 0.05,
        "max_seconds": 20.0}
CUDA_WITH_FALLBACK = {"accelerator": "cuda", "providers": [CUDA, CPU], "cpu_fallback": True}
CUDA_ONLY = {"accelerator": "cuda", "providers": [CUDA], "cpu_fallback": False}

pytestmark = pytest.mark.skipif(CUDA in ort.get_available_providers(),
                                reason="these tests describe a CPU build of onnxruntime; this one has CUDA")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real model: y = Relu(x @ W + B) and, beside it, z = Sigmoid(y) (two outputs), float32 [1, 16]."""
    d = tmp_path_factory.mktemp("gpu-exec")
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "B"], ["a"]),
         helper.make_node("Relu", ["a"], ["y"]), helper.make_node("Sigmoid", ["y"], ["z"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 32])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(d / "model.onnx"))
    np.savez(d / "inputs.npz", rng.standard_normal((1, 16)).astype(np.float32))
    return d


def request(work: Path, **overrides: Any) -> dict[str, Any]:
    return {"artifact": str(work / "model.onnx"), "format": "onnx", "inputs": str(work / "inputs.npz"), **FAST,
            **overrides}


def run_agent(req: Any, tmp: Path, env: Optional[dict[str, str]] = None) -> tuple[int, dict[str, Any]]:
    (tmp / "request.json").write_text(json.dumps(req))
    proc = subprocess.run([*MODULE, "run", "--request", str(tmp / "request.json")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180)
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, f"stdout must be one JSON line, got {proc.stdout!r}; stderr: {proc.stderr[-2000:]}"
    return proc.returncode, json.loads(lines[0])


# ---- the request -----------------------------------------------------------------------------------------


def test_no_execution_block_is_the_old_cpu_plan() -> None:
    plan = execution.plan_from_request(None)
    assert plan.providers == [CPU] and plan.accelerator is None and not plan.explicit


def test_plan_defaults_and_cpu_fallback() -> None:
    assert execution.plan_from_request({"accelerator": "cuda"}).providers == [CUDA, CPU]
    assert execution.plan_from_request({"accelerator": "cuda", "cpu_fallback": False}).providers == [CUDA]
    plan = execution.plan_from_request({"providers": [TENSORRT, CUDA], "tensorrt": {"fp16": True}})
    assert plan.accelerator == "cuda"  # a GPU provider listed: judged as a GPU run
    assert plan.providers == [TENSORRT, CUDA, CPU] and plan.fp16 and not plan.int8


@pytest.mark.parametrize("value, named", [
    ("cuda", "'execution'"),
    ({"accelerator": "npu"}, "execution.accelerator"),
    ({"providers": []}, "execution.providers"),
    ({"providers": ["cuda"]}, "execution.providers"),
    ({"providers": [CUDA, CUDA]}, "twice"),
    ({"cpu_fallback": "yes"}, "execution.cpu_fallback"),
    ({"include_copies": 1}, "execution.include_copies"),
    ({"tensorrt": {"fp8": True}}, "execution.tensorrt"),
    ({"tensorrt": {"fp16": "true"}}, "execution.tensorrt"),
    ({"accelerator": "cuda", "providers": [CPU]}, "has no GPU provider"),
    ({"providers": [CUDA, CPU], "cpu_fallback": False}, "cpu_fallback"),
    ({"provider": [CUDA]}, "unknown key"),
])
def test_bad_execution_values_name_the_field(value: Any, named: str) -> None:
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        execution.check_execution(value)


def test_a_bad_execution_block_is_a_bad_request_exit_2(work: Path, tmp_path: Path) -> None:
    code, result = run_agent(request(work, execution={"accelerator": "cuda", "providers": "CUDA"}), tmp_path)
    assert code == 2 and result["error"]["stage"] == "request"
    assert "execution.providers" in result["error"]["message"]


# ---- choosing providers and judging the answer (pure functions, FAKE provider lists) -------------------


def test_requested_providers_are_kept_in_order_when_available() -> None:
    plan = execution.plan_from_request({"providers": [TENSORRT, CUDA, CPU]})
    assert execution.select_providers(plan, [CPU, CUDA, TENSORRT]) == ([TENSORRT, CUDA, CPU], [])
    assert execution.select_providers(plan, [CPU]) == ([CPU], [TENSORRT, CUDA])
    no_cpu = execution.plan_from_request({"providers": [CUDA], "cpu_fallback": False})
    assert execution.select_providers(no_cpu, [CPU]) == ([], [CUDA])


def test_tensorrt_options_carry_precision_and_the_engine_cache() -> None:
    plan = execution.plan_from_request({"providers": [TENSORRT, CUDA], "tensorrt": {"fp16": True, "int8": False}})
    trt, cuda, cpu = execution.provider_options(plan, [TENSORRT, CUDA, CPU], "/w/tmp/trt-engines/key")
    assert trt == {"device_id": 0, "trt_fp16_enable": True, "trt_int8_enable": False,
                   "trt_engine_cache_enable": True, "trt_engine_cache_path": "/w/tmp/trt-engines/key"}
    assert cuda == {"device_id": 0} and cpu == {}


@pytest.mark.parametrize("used, copies, expected", [
    ([CPU], False, (False, False)),
    ([CPU], True, (False, False)),  # nothing to copy on the CPU
    ([CUDA, CPU], False, (True, False)),
    ([TENSORRT, CUDA, CPU], True, (True, True)),
])
def test_io_binding_only_on_a_gpu_provider(used: list[str], copies: bool, expected: tuple[bool, bool]) -> None:
    assert execution.io_mode(used, copies) == expected


@pytest.mark.parametrize("nodes, used, expected", [
    ({TENSORRT: 1, CUDA: 2, CPU: 3}, [TENSORRT, CUDA, CPU], "tensorrt"),
    ({TENSORRT: 0, CUDA: 5, CPU: 1}, [TENSORRT, CUDA, CPU], "cuda"),
    ({CUDA: 0, CPU: 7}, [CUDA, CPU], "cpu"),
    (None, [CUDA, CPU], "cuda"),  # not counted: what the session registered
    (None, [CPU], "cpu"),
])
def test_accelerator_used(nodes: Optional[dict[str, int]], used: list[str], expected: str) -> None:
    assert execution.accelerator_used(nodes, used) == expected


def test_most_nodes_on_the_cpu_is_not_ok_and_says_how_many() -> None:
    plan = execution.plan_from_request(CUDA_WITH_FALLBACK)
    used, ok, note = execution.judge(plan, [CUDA, CPU], [CUDA, CPU], [CUDA, CPU], {CUDA: 2, CPU: 5})
    assert used == "cuda" and ok is False
    assert "5 of 7 nodes ran on CPUExecutionProvider" in note and "not GPU figures" in note
    used, ok, note = execution.judge(plan, [CUDA, CPU], [CUDA, CPU], [CUDA, CPU], {CUDA: 6, CPU: 1})
    assert ok is True and "1 of 7 nodes" in note


def test_a_provider_that_did_not_start_is_named() -> None:
    plan = execution.plan_from_request({"providers": [TENSORRT, CUDA]})
    used, ok, note = execution.judge(plan, [TENSORRT, CUDA, CPU], [TENSORRT, CUDA, CPU], [CUDA, CPU], {CUDA: 3})
    assert used == "cuda" and ok is True and "TensorrtExecutionProvider is installed but did not start" in note
    used, ok, note = execution.judge(plan, [TENSORRT, CUDA, CPU], [TENSORRT, CUDA, CPU], [CPU], {CPU: 3})
    assert used == "cpu" and ok is False and "did not start" in note and "not GPU figures" in note


def test_cpu_only_run_needs_no_note() -> None:
    plan = execution.plan_from_request(None)
    assert execution.judge(plan, [CPU], [CPU], [CPU], None) == ("cpu", True, None)


def test_non_onnx_format_with_an_accelerator_is_never_a_gpu_label() -> None:
    block = execution.non_onnx_block(execution.plan_from_request(CUDA_WITH_FALLBACK), "tflite", "ai-edge-litert")
    assert block["accelerator_used"] == "cpu" and block["accelerator_ok"] is False
    assert "not GPU figures" in block["note"] and set(block) == set(execution.BLOCK_KEYS)
    plain = execution.non_onnx_block(execution.plan_from_request(None), "executorch", "executorch")
    assert plain["accelerator_ok"] is True and plain["note"] is None


# ---- the real onnxruntime CPU provider -------------------------------------------------------------------


def test_cuda_with_fallback_runs_on_cpu_and_counts_every_node_there(work: Path) -> None:
    runner = runtimes.load_runner("onnx", str(work / "model.onnx"), 1, CUDA_WITH_FALLBACK)
    assert isinstance(runner, runtimes.OnnxRunner)
    assert runner.chosen == [CPU] and runner.providers_used == [CPU]
    assert runner.io_binding is False and runner.copies_timed is False
    x = np.load(work / "inputs.npz")["arr_0"]
    y, z = runner.run([x])
    assert y.shape == (1, 32) and np.all(y >= 0) and np.allclose(z, 1 / (1 + np.exp(-y)), atol=1e-6)
    nodes = opprofile.onnx_nodes_by_provider(str(work / "model.onnx"), [x], 1, CUDA_WITH_FALLBACK)
    assert set(nodes) == {CPU} and nodes[CPU] >= 1


def test_cuda_only_without_fallback_fails_to_load_naming_what_to_install(work: Path) -> None:
    with pytest.raises(runtimes.RuntimeMissing) as err:
        runtimes.load_runner("onnx", str(work / "model.onnx"), 1, CUDA_ONLY)
    message = str(err.value)
    assert "CUDAExecutionProvider" in message and "cpu_fallback is false" in message
    assert "install onnxruntime-gpu" in message
    trt = {"accelerator": "cuda", "providers": [TENSORRT], "cpu_fallback": False}
    with pytest.raises(runtimes.RuntimeMissing, match="pip install tensorrt"):
        runtimes.load_runner("onnx", str(work / "model.onnx"), 1, trt)


def test_op_profile_uses_the_requested_providers(work: Path) -> None:
    x = np.load(work / "inputs.npz")["arr_0"]
    result = opprofile.profile_ops("onnx", str(work / "model.onnx"), [x], iterations=2, execution=CUDA_ONLY)
    assert result["status"].startswith("unavailable") and "install onnxruntime-gpu" in result["status"]
    ok = opprofile.profile_ops("onnx", str(work / "model.onnx"), [x], iterations=2, execution=CUDA_WITH_FALLBACK)
    assert ok["status"] == "measured" and "on CPUExecutionProvider" in ok["method"]


def test_nodes_by_provider_from_a_trace_counts_distinct_nodes() -> None:
    events = [
        {"cat": "Node", "name": "conv_kernel_time", "args": {"provider": CUDA}},
        {"cat": "Node", "name": "conv_kernel_time", "args": {"provider": CUDA}},  # a second run of the same node
        {"cat": "Node", "name": "relu_kernel_time", "args": {"provider": CUDA}},
        {"cat": "Node", "name": "shape_kernel_time", "args": {"provider": CPU}},
        {"cat": "Node", "name": "shape_fence_before", "args": {"provider": CPU}},
        {"cat": "Session", "name": "model_run"},
    ]
    assert opprofile.nodes_by_provider_from_trace(events) == {CPU: 1, CUDA: 2}


# ---- the agent end to end -------------------------------------------------------------------------------


def test_agent_labels_cpu_figures_under_a_cuda_request(work: Path, tmp_path: Path) -> None:
    code, result = run_agent(request(work, execution=CUDA_WITH_FALLBACK, profile_ops=True), tmp_path)
    assert code == 0, result
    ex = result["execution"]
    assert set(ex) == set(execution.BLOCK_KEYS)
    assert ex["accelerator"] == "cuda" and ex["providers_requested"] == [CUDA, CPU]
    assert ex["providers_used"] == [CPU] and CPU in ex["providers_available"]
    assert ex["accelerator_used"] == "cpu" and ex["accelerator_ok"] is False
    assert "not GPU figures" in ex["note"] and "onnxruntime-gpu" in ex["note"]
    assert set(ex["nodes_by_provider"]) == {CPU} and ex["nodes_by_provider"][CPU] >= 1
    assert ex["io_binding"] is False and ex["copies_timed"] is False and ex["trt_engine_build_ms"] is None
    assert result["timing_note"].startswith("perf_counter_ns") and "GPU" not in result["timing_note"]
    assert result["op_profile"]["status"] == "measured"
    # A GPU was asked for: the answer says what it could see of one (nothing here), never silently nothing.
    assert result["gpu"]["available"] is False and "pynvml" in result["gpu"]["reason"]


def test_agent_cuda_only_request_fails_at_load_with_exit_3(work: Path, tmp_path: Path) -> None:
    code, result = run_agent(request(work, execution=CUDA_ONLY), tmp_path)
    assert code == 3 and result["ok"] is False
    assert result["error"]["stage"] == "load" and result["error"]["type"] == "RuntimeMissing"
    assert "CUDAExecutionProvider" in result["error"]["message"] and "onnxruntime-gpu" in result["error"]["message"]


def test_no_execution_key_keeps_the_old_answer(work: Path, tmp_path: Path) -> None:
    code, result = run_agent(request(work), tmp_path)
    assert code == 0
    assert result["execution"] == {
        "accelerator": None, "providers_requested": [CPU], "cpu_fallback": True,
        "providers_available": ort.get_available_providers(), "providers_used": [CPU], "nodes_by_provider": None,
        "accelerator_used": "cpu", "accelerator_ok": True, "note": None, "io_binding": False, "copies_timed": False,
        "tensorrt": None, "trt_engine_build_ms": None, "trt_engine_cache_path": None, "trt_engine_cache_reused": None}
    assert result["gpu"]["available"] is False and result["gpu"]["reason"].startswith("not measured: a CPU run")
    assert result["timing_note"] == "perf_counter_ns around each invoke only; inputs prepared before; gc disabled while timing"


def test_a_cpu_execution_block_counts_nodes_without_a_gpu_note(work: Path, tmp_path: Path) -> None:
    code, result = run_agent(request(work, execution={"providers": [CPU]}), tmp_path)
    assert code == 0
    ex = result["execution"]
    assert ex["accelerator"] is None and ex["accelerator_ok"] is True and ex["note"] is None
    assert set(ex["nodes_by_provider"]) == {CPU}


# ---- GPU IO binding: the call sequence, on a FAKE session ------------------------------------------------


class FakeOrtValue:
    """FAKE onnxruntime.OrtValue for tests: this machine has no CUDA; records which device a copy went to."""

    copies: list[tuple[str, str]] = []

    def __init__(self, arr: np.ndarray, device: str) -> None:
        self.arr, self.device = arr, device

    @classmethod
    def ortvalue_from_numpy(cls, arr: np.ndarray, device_type: str = "cpu", device_id: int = 0) -> FakeOrtValue:
        cls.copies.append(("host->device", f"{device_type}:{device_id}"))
        return cls(np.array(arr), f"{device_type}:{device_id}")


class FakeBinding:
    """FAKE onnxruntime.IOBinding for tests (no GPU here): keeps bound values and a log of calls."""

    def __init__(self, log: list[str]) -> None:
        self.log, self.inputs, self.outputs = log, {}, []

    def bind_output(self, name: str, device_type: str = "cpu", device_id: int = 0) -> None:
        self.log.append(f"bind_output {name} {device_type}:{device_id}")
        self.outputs.append(name)

    def bind_ortvalue_input(self, name: str, value: FakeOrtValue) -> None:
        self.log.append(f"bind_input {name} {value.device}")
        self.inputs[name] = value

    def synchronize_outputs(self) -> None:
        self.log.append("synchronize_outputs")

    def copy_outputs_to_cpu(self) -> list[np.ndarray]:
        self.log.append("copy_outputs_to_cpu")
        x = self.inputs["x"].arr
        return [x * 2, x.astype(np.float16)]


class FakeGpuSession:
    """FAKE onnxruntime.InferenceSession on CUDAExecutionProvider for tests: this machine has no NVIDIA GPU."""

    def __init__(self) -> None:
        self.log: list[str] = []

    def io_binding(self) -> FakeBinding:
        self.log.append("io_binding")
        return FakeBinding(self.log)

    def run_with_iobinding(self, binding: FakeBinding) -> None:
        self.log.append("run_with_iobinding")


def _timed_calls(log: list[str], start: int) -> list[str]:
    return [c for c in log[start:] if not c.startswith("bind_output")]


@pytest.mark.parametrize("include_copies", [False, True])
def test_gpu_io_binding_times_only_what_it_says(include_copies: bool) -> None:
    FakeOrtValue.copies = []
    session = FakeGpuSession()
    io = runtimes._GpuIo(type("FakeOrt", (), {"OrtValue": FakeOrtValue}), session, ["y", "z"], include_copies)
    x = np.ones((1, 4), np.float32)
    prepared = io.prepare({"x": x})
    assert "bind_output y cuda:0" in session.log and "bind_output z cuda:0" in session.log
    copies_in_prepare = len(FakeOrtValue.copies)
    mark = len(session.log)
    raw = io.invoke(prepared)  # the timed call
    timed = _timed_calls(session.log, mark)
    if include_copies:
        assert copies_in_prepare == 0 and len(FakeOrtValue.copies) == 1  # host->device inside invoke
        assert timed == ["bind_input x cuda:0", "run_with_iobinding", "synchronize_outputs", "copy_outputs_to_cpu"]
    else:
        assert copies_in_prepare == 1 and len(FakeOrtValue.copies) == 1  # copied once, untimed
        assert timed == ["run_with_iobinding", "synchronize_outputs"]  # GPU work, waited for, nothing else
    mark = len(session.log)
    y, z = io.finish(raw)  # untimed
    assert session.log[mark:] == ([] if include_copies else ["copy_outputs_to_cpu"])
    assert np.array_equal(y, x * 2) and z.dtype == np.float16


def test_onnx_runner_uses_io_binding_only_when_a_gpu_provider_runs(monkeypatch: pytest.MonkeyPatch,
                                                                 work: Path) -> None:
    """Which path the runner takes for which providers: a FAKE session claims CUDA (no GPU here)."""

    class FakeCudaSession(FakeGpuSession):
        """FAKE InferenceSession that says it runs on CUDAExecutionProvider (this machine has no GPU)."""

        def get_providers(self) -> list[str]:
            return [CUDA, CPU]

        def get_inputs(self) -> list[Any]:
            return [type("In", (), {"name": "x", "type": "tensor(float)"})()]

        def get_outputs(self) -> list[Any]:
            return [type("Out", (), {"name": "y"})(), type("Out", (), {"name": "z"})()]

        def disable_fallback(self) -> None:
            self.log.append("disable_fallback")

    made: dict[str, Any] = {}

    def fake_session(path: str, opts: Any, providers: list[str], provider_options: list[dict[str, Any]],
                     **kw: Any) -> FakeCudaSession:
        made.update(providers=providers, options=provider_options, kw=kw)
        made["session"] = FakeCudaSession()
        return made["session"]

    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(ort, "InferenceSession", fake_session)
    monkeypatch.setattr(ort, "OrtValue", FakeOrtValue)
    runner = runtimes.load_runner("onnx", str(work / "model.onnx"), 1,
                                  {"accelerator": "cuda", "providers": [TENSORRT, CUDA], "cpu_fallback": False})
    assert made["providers"] == [CUDA] and made["options"] == [{"device_id": 0}]
    assert made["kw"] == {"enable_fallback": 0}  # no CPU retry behind the request's back
    assert "disable_fallback" in made["session"].log
    assert runner.io_binding is True and runner.copies_timed is False and runner.providers_used == [CUDA, CPU]
    y, _ = runner.run([np.ones((1, 16), np.float32)])
    assert y.dtype == np.float32 and y.shape == (1, 16)


@pytest.mark.parametrize("module", ["execution.py", "gpu.py"])
def test_new_agent_modules_are_standard_library_only(module: str) -> None:
    """They answer where numpy or every runtime is missing (``info``, request checks): stdlib at module level,
    pynvml and onnxruntime only inside functions."""
    import ast

    tree = ast.parse((REPO / "edgekit" / "agent" / module).read_text(), feature_version=(3, 9))
    top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    top |= {(n.module or "").split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert top <= set(sys.stdlib_module_names), top - set(sys.stdlib_module_names)
