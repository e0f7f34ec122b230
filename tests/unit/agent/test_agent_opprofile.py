"""Per-op profiling of the on-device agent (edgekit/agent/opprofile.py), on real artifacts built here.

What the runtimes in this venv give (checked, and asserted below):
- onnxruntime: per-node kernel times from SessionOptions.enable_profiling;
- executorch 1.5.1: an ETDump (the pip pybindings are built with the event tracer), with XNNPACK's own
  per-op events inside each DELEGATE_CALL;
- ai-edge-litert: no op profiler in the Python API, so "unavailable".
The parser tests at the end feed FAKE events, built by hand in the runtimes' formats.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, List

import numpy as np
import pytest

from edgekit.agent import opprofile

AGENT_SRC = Path(opprofile.__file__)
ITERATIONS = 10


def assert_well_formed(result: dict, iterations: int = ITERATIONS) -> None:
    assert result["status"] == "measured", result["status"]
    assert result["method"] and result["iterations"] == iterations and result["warmup"] == 1
    ops = result["ops"]
    assert ops
    assert set(ops[0]) == {"name", "type", "time_ms", "share"}
    assert len({o["name"] for o in ops}) == len(ops), "op names must be unique"
    times = [o["time_ms"] for o in ops]
    assert times == sorted(times, reverse=True) and min(times) >= 0
    assert sum(o["share"] for o in ops) == pytest.approx(1.0, abs=1e-4)
    assert result["op_time_ms"] == pytest.approx(sum(times), rel=1e-4, abs=1e-5)
    assert result["run_time_ms"] > 0


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Temporary files go to an empty folder, so the test can see that the profiler removed its own."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


# ---- ONNX ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Conv -> Relu -> Flatten -> Gemm -> Sigmoid, built with onnx.helper (opset 17)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal((10, 16 * 30 * 30)).astype(np.float32), "fw"),
        numpy_helper.from_array(rng.standard_normal(10).astype(np.float32), "fb"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["g"], name="fc", transB=1),
        helper.make_node("Sigmoid", ["g"], ["y"], name="sigmoid"),
    ]
    graph = helper.make_graph(nodes, "edgekit-opprofile", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    onnx.save(model, str(path))
    return path


def test_onnx_ops_measured(onnx_model: Path, private_tmp: Path) -> None:
    pytest.importorskip("onnxruntime")
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    result = opprofile.profile_ops("onnx", str(onnx_model), [x], threads=1, iterations=ITERATIONS)
    assert_well_formed(result)
    types = {o["type"] for o in result["ops"]}
    # What runs is ORT's optimized graph: Relu fused into Conv, Sigmoid into the Gemm (FusedGemm).
    assert "Conv" in types and any(t.endswith("Gemm") for t in types), types
    assert "Relu" not in types and "Sigmoid" not in types, types
    assert "enable_profiling" in result["method"]
    assert result["runtime"]["name"] == "onnxruntime"
    assert list(private_tmp.iterdir()) == [], "the profile file and its folder must be removed"


def test_onnx_failure_is_reported_not_raised(onnx_model: Path) -> None:
    pytest.importorskip("onnxruntime")
    result = opprofile.profile_ops("onnx", str(onnx_model), [], threads=1, iterations=2)
    assert result["status"].startswith("unavailable: profiling failed: ValueError: the ONNX model takes 1 input")
    assert result["ops"] == [] and result["op_time_ms"] is None


def test_missing_runtime_is_unavailable(onnx_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    result = opprofile.profile_ops("onnx", str(onnx_model), [np.zeros((1, 3, 32, 32), np.float32)])
    assert result["status"] == "unavailable: onnxruntime is not installed"


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="unknown format"):
        opprofile.profile_ops("coreml", "m.mlpackage", [])
    with pytest.raises(ValueError, match="iterations"):
        opprofile.profile_ops("onnx", "m.onnx", [], iterations=0)


# ---- ExecuTorch ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pte_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Conv -> ReLU -> cumsum -> Linear, lowered to XNNPACK: cumsum is not delegable, so the program has two
    DELEGATE_CALLs with a portable kernel between them."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("executorch")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    class Mixed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 16, 3)
            self.fc = torch.nn.Linear(16 * 30 * 30, 10)

        def forward(self, x: Any) -> Any:
            y = torch.cumsum(torch.relu(self.conv(x)), dim=1)
            return self.fc(y.flatten(1))

    torch.manual_seed(0)
    ep = torch.export.export(Mixed().eval(), (torch.randn(1, 3, 32, 32),))
    program = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
    path = tmp_path_factory.mktemp("pte") / "mixed.pte"
    path.write_bytes(program.buffer)
    return path


def etdump_supported(path: Path) -> bool:
    """Ask the installed pybindings directly, independently of opprofile."""
    from executorch.extension.pybindings import portable_lib

    return bool(portable_lib._load_for_executorch(str(path), enable_etdump=True).has_etdump())


def test_executorch_ops(pte_model: Path, private_tmp: Path) -> None:
    x = np.random.default_rng(2).standard_normal((1, 3, 32, 32)).astype(np.float32)
    result = opprofile.profile_ops("executorch", str(pte_model), [x], threads=1, iterations=ITERATIONS)
    if not etdump_supported(pte_model):
        assert result["status"].startswith("unavailable: the executorch pybindings were built without the ETDump")
        return
    assert_well_formed(result)
    types = {o["type"] for o in result["ops"]}
    assert "cumsum" in types, types  # the portable kernel, named by its native_call_ event
    assert any(t.startswith("Convolution") for t in types), types  # XNNPACK's own per-op events
    assert any(t.startswith("Fully Connected") for t in types), types
    assert "ETDump" in result["method"] and "XNNPACK" in result["method"]
    # The ops are instruction-level parts of Method::execute, so they cannot add up to more than it.
    assert result["op_time_ms"] <= result["run_time_ms"] * 1.01
    assert list(private_tmp.iterdir()) == []


# ---- TFLite -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tflite_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    litert_torch = pytest.importorskip("litert_torch")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 10))
    path = tmp_path_factory.mktemp("tflite") / "m.tflite"
    litert_torch.convert(model.eval(), (torch.randn(1, 3, 8, 8),)).export(str(path))
    return path


def test_tflite_is_honestly_unavailable(tflite_model: Path) -> None:
    pytest.importorskip("ai_edge_litert")
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(tflite_model))
    offered = [a for obj in (interp, interp._interpreter) for a in dir(obj) if "profil" in a.lower() and not a.startswith("__")]
    result = opprofile.profile_ops("tflite", str(tflite_model), [np.zeros((1, 3, 8, 8), np.float32)], iterations=2)
    assert result["ops"] == [] and result["op_time_ms"] is None
    assert result["status"].startswith("unavailable: ai-edge-litert")
    assert result["status"].endswith("use benchmark_model --enable_op_profiling=true")
    if offered:  # a later ai-edge-litert: the answer must name what it found
        assert all(a in result["status"] for a in offered)
    else:  # ai-edge-litert 2.3.0
        assert "has no op profiler" in result["status"]


# ---- parsers on FAKE events ---------------------------------------------------------------------------


def ort_event(name: str, ts: int, dur: int, cat: str = "Node", op: str = "") -> dict:
    return {"cat": cat, "name": name, "ts": ts, "dur": dur, "ph": "X", "args": {"op_name": op} if op else {}}


def test_onnx_trace_drops_warmup_and_averages_per_run() -> None:
    events = [ort_event("session_initialization", 0, 100, cat="Session")]
    for run, (ts, conv_us) in enumerate([(1000, 500), (2000, 100), (3000, 140)]):  # run 0 is the warm-up
        events += [ort_event("conv_kernel_time", ts + 1, conv_us, op="Conv"),
                   ort_event("conv_fence_before", ts + 1, 0, op="Conv"),
                   ort_event("fc_kernel_time", ts + 200, 20, op="Gemm"),
                   ort_event("model_run", ts, 300, cat="Session")]
    rows, runs, run_ms = opprofile.onnx_ops_from_trace(events, warmup=1)
    assert runs == 2 and run_ms == pytest.approx(0.3)
    assert sorted(rows) == [("conv", "Conv", pytest.approx(0.12)), ("fc", "Gemm", pytest.approx(0.02))]


def et_event(name: str, raw: List[float], instr: int, delegated: bool = False) -> SimpleNamespace:
    """A FAKE executorch.devtools Event: only the attributes opprofile reads."""
    return SimpleNamespace(name=name, perf_data=SimpleNamespace(raw=raw), _instruction_id=instr,
                           is_delegated_op=delegated)


def test_executorch_events_split_delegates_and_name_kernels() -> None:
    events = [
        et_event("Method::init", [1.0], 0),
        et_event("Conv #1", [0.5, 0.010, 0.010], 0, delegated=True),
        et_event("DELEGATE_CALL", [0.9, 0.015, 0.013], 0),
        et_event("native_call_cumsum.out", [0.8, 0.040, 0.040], 1),
        et_event("OPERATOR_CALL", [0.8, 0.042, 0.042], 1),
        et_event("DELEGATE_CALL", [0.2, 0.006, 0.006], 2),  # a delegate that logs no per-op events
        et_event("Method::execute", [2.0, 0.070, 0.070], 0),
    ]
    rows, runs, run_ms, delegate_calls, inner = opprofile.executorch_ops_from_events(events, warmup=1)
    assert runs == 2 and run_ms == pytest.approx(0.070) and delegate_calls == 2 and inner
    assert sorted(rows) == sorted([
        ("Conv #1 (delegate, instruction 0)", "Conv", pytest.approx(0.010)),
        ("DELEGATE_CALL (instruction 0) unattributed", "DELEGATE_CALL", pytest.approx(0.004)),
        ("cumsum.out (instruction 1)", "cumsum", pytest.approx(0.042)),
        ("DELEGATE_CALL (instruction 2)", "DELEGATE_CALL", pytest.approx(0.006)),
    ])


# ---- device-side constraints --------------------------------------------------------------------------
