"""The agent end to end: real ONNX model, real onnxruntime, a fresh subprocess per run.

Runs both ``python -m edgekit.agent`` from the repo and the bundled zipapp from a temp dir, and checks the
contract the host relies on: one JSON object on stdout, exit codes, and numbers that hold together.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.agent import runtimes
from edgekit.agent.bundle import MODULES, build_agent

REPO = Path(__file__).resolve().parents[3]
AGENT_DIR = REPO / "edgekit" / "agent"
MODULE = [sys.executable, "-m", "edgekit.agent"]
FAST = {"threads": 1, "warmup_iterations": 5, "warmup_seconds": 0.02,
        "min_iterations": 20, "min_seconds": 0.2, "max_seconds": 30.0}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real model (MatMul + Add + Relu, float32 [1, 16]), its inputs, and the built zipapp."""
    d = tmp_path_factory.mktemp("agent")
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "B"], ["a"]),
         helper.make_node("Relu", ["a"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by older onnxruntime too
    onnx.save(model, str(d / "model.onnx"))
    np.savez(d / "inputs.npz", rng.standard_normal((1, 16)).astype(np.float32))
    build_agent(d / "dist")
    return d


def request(work: Path, **overrides: Any) -> dict[str, Any]:
    req = {"artifact": str(work / "model.onnx"), "format": "onnx", "inputs": str(work / "inputs.npz"), **FAST}
    req.update(overrides)
    return req


def pyz(work: Path) -> Path:
    return next((work / "dist").glob("edgekit-agent-*.pyz"))


def run_agent(
    argv: list[str], req: Any, tmp: Path, cwd: Path = REPO, env: Optional[dict[str, str]] = None
) -> tuple[int, dict[str, Any], str]:
    """Run the agent; assert stdout is exactly one JSON object; return (exit code, object, stderr)."""
    req_path = tmp / "request.json"
    req_path.write_text(json.dumps(req))
    proc = subprocess.run([*argv, "run", "--request", str(req_path)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180)
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, f"stdout must be one JSON line, got {proc.stdout!r}; stderr: {proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stdout
    return proc.returncode, json.loads(lines[0]), proc.stderr


def assert_trustworthy(result: dict[str, Any], req: dict[str, Any]) -> None:
    assert result["ok"] is True, result
    assert result["format"] == "onnx" and result["runtime"]["name"] == "onnxruntime"
    assert result["artifact_bytes"] == Path(req["artifact"]).stat().st_size
    assert result["iterations"] >= req["min_iterations"]
    assert result["timed_seconds"] >= req["min_seconds"]
    assert result["truncated"] is False
    assert result["runtime_import_ms"] >= 0 and result["load_ms"] > 0 and result["first_inference_ms"] > 0
    lat = result["latency_ms"]
    assert len(lat["samples"]) == result["iterations"]
    assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert lat["ci95_p50"][0] <= lat["p50"] <= lat["ci95_p50"][1]
    assert sum(lat["samples"]) / 1e3 <= result["timed_seconds"]
    mem = result["memory"]
    assert mem["peak_rss_mb_after_load"] > 0 and mem["peak_rss_mb"] >= mem["peak_rss_mb_after_load"]
    # Linux lets a process reset its VmHWM: the steady-state peak is measured on its own.
    assert mem["peak_rss_mb_steady"] > 0 and "clear_refs" in mem["method"] and "MiB" in mem["method"]
    # This VM has no power sensors: the answer must say so, never report 0 mJ.
    assert result["energy"]["energy_mj_per_inference"] is None
    assert result["energy"]["status"].startswith("unavailable")
    cond = result["conditions"]
    assert isinstance(cond["noisy"], bool) and isinstance(cond["noisy_reasons"], list)
    assert cond["cpu_freq_mhz_before"] is None or cond["cpu_freq_mhz_before"] > 0
    assert result["device_accuracy"] is None and result["op_profile"] is None  # not asked for
    assert result["python"] and result["machine"]


# ---- success ----------------------------------------------------------------------------------------


def test_module_run_gives_trustworthy_numbers(work: Path, tmp_path: Path) -> None:
    req = request(work)
    code, result, _ = run_agent(MODULE, req, tmp_path)
    assert code == 0
    assert_trustworthy(result, req)


def test_zipapp_runs_alone_from_a_temp_dir(work: Path, tmp_path: Path) -> None:
    req = request(work)
    code, result, _ = run_agent([sys.executable, "-I", str(pyz(work))], req, tmp_path, cwd=tmp_path)
    assert code == 0
    assert_trustworthy(result, req)


ISOLATION_PROBE = """
import runpy, sys
pyz = sys.argv[1]
sys.argv = sys.argv[1:]
try:
    runpy.run_path(pyz, run_name="__main__")
except SystemExit as exc:
    code = exc.code
leaked = sorted(m for m in sys.modules if m == "edgekit" or m.startswith("edgekit."))
if leaked or "edgekit_agent.measure" not in sys.modules:
    sys.stderr.write(f"ISOLATION BROKEN: edgekit modules {leaked}\\n")
    sys.exit(99)
sys.exit(code)
"""


def test_zipapp_imports_nothing_from_edgekit(work: Path, tmp_path: Path) -> None:
    """Proof of self-containment that holds even where edgekit is installed: after a full run inside
    the zipapp, no ``edgekit`` module was ever imported, only the bundled ``edgekit_agent``."""
    argv = [sys.executable, "-I", "-c", ISOLATION_PROBE, str(pyz(work))]
    code, result, stderr = run_agent(argv, request(work), tmp_path, cwd=tmp_path)
    assert code == 0, stderr
    assert result["ok"] is True


def test_onnx_external_data_counts_in_artifact_bytes(work: Path, tmp_path: Path) -> None:
    model = onnx.load(str(work / "model.onnx"))
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True,
              location="ext.onnx.data", size_threshold=0)
    req = request(work, artifact=str(tmp_path / "ext.onnx"), min_seconds=0.0)
    code, result, _ = run_agent(MODULE, req, tmp_path)
    assert code == 0, result
    sizes = (tmp_path / "ext.onnx").stat().st_size + (tmp_path / "ext.onnx.data").stat().st_size
    assert result["artifact_bytes"] == sizes
    assert result["artifact_files"] == [str(tmp_path / "ext.onnx"), str(tmp_path / "ext.onnx.data")]


def test_a_loop_cut_by_max_seconds_is_flagged_truncated(work: Path, tmp_path: Path) -> None:
    req = request(work, min_iterations=9_000_000, min_seconds=0.0, max_seconds=0.1, energy=None)
    code, result, _ = run_agent(MODULE, req, tmp_path)
    assert code == 0
    assert result["truncated"] is True
    assert result["iterations"] < 9_000_000
    assert len(result["latency_ms"]["samples"]) == result["iterations"]
    assert result["energy"]["status"] == "unavailable: disabled by request"


def test_static_fake_energy_counter_is_not_reported_as_zero(work: Path, tmp_path: Path) -> None:
    """FAKE sysfs tree (this VM has no power sensors): a RAPL counter that never moves."""
    zone = tmp_path / "fake-sysfs/sys/class/powercap/intel-rapl:0"
    zone.mkdir(parents=True)
    (zone / "energy_uj").write_text("123456\n")
    (zone / "max_energy_range_uj").write_text("262143328850\n")
    (zone / "name").write_text("package-0\n")
    req = request(work, energy={"idle_seconds": 0.05}, sensors={"root": str(tmp_path / "fake-sysfs")})
    code, result, _ = run_agent(MODULE, req, tmp_path)
    assert code == 0
    e = result["energy"]
    assert e["energy_mj_per_inference"] is None and e["energy_error_mj"] is None
    assert e["status"].startswith("unavailable: counter did not advance")
    assert str(zone / "energy_uj") in e["source"]


# ---- failures: still one JSON object, with the right exit code --------------------------------------


def test_missing_runtime_exits_3(work: Path, tmp_path: Path) -> None:
    blockers = tmp_path / "blockers"
    for pkg in ("ai_edge_litert", "tflite_runtime"):
        (blockers / pkg).mkdir(parents=True)
        (blockers / pkg / "__init__.py").write_text('raise ImportError("blocked for test")\n')
    (tmp_path / "model.tflite").write_bytes(b"not really a model: the runtime is missing anyway")
    env = {**os.environ, "PYTHONPATH": str(blockers)}
    req = request(work, format="tflite", artifact=str(tmp_path / "model.tflite"))
    code, result, _ = run_agent(MODULE, req, tmp_path, env=env)
    assert code == 3
    assert result["ok"] is False
    assert result["error"]["type"] == "RuntimeMissing" and result["error"]["stage"] == "load"


@pytest.mark.parametrize("field", ["artifact", "min_seconds", "threads"])
def test_missing_field_exits_2_naming_it(work: Path, tmp_path: Path, field: str) -> None:
    req = request(work)
    del req[field]
    code, result, _ = run_agent(MODULE, req, tmp_path)
    assert code == 2 and result["ok"] is False
    assert result["error"]["stage"] == "request" and f"'{field}'" in result["error"]["message"]


@pytest.mark.parametrize("overrides, named", [
    ({"threads": "2"}, "threads"),
    ({"threads": 0}, "threads"),
    ({"min_iterations": True}, "min_iterations"),
    ({"format": "coreml"}, "format"),
    ({"max_seconds": 0.1, "min_seconds": 1.0}, "max_seconds"),
    ({"energy": {"root": "/"}}, "energy"),
    ({"energy": {"interval_s": -1}}, "interval_s"),
    ({"sensors": {"root": 3}}, "sensors"),
    ({"profile_ops": "yes"}, "profile_ops"),
    ({"eval": "/no/such/eval.npz"}, "eval"),
    ({"min_iteration": 5}, "min_iteration"),
])
def test_invalid_field_exits_2_naming_it(work: Path, tmp_path: Path, overrides: dict[str, Any], named: str) -> None:
    code, result, _ = run_agent(MODULE, request(work, **overrides), tmp_path)
    assert code == 2 and named in result["error"]["message"]


def test_missing_artifact_names_the_path(work: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "model.onnx"
    code, result, _ = run_agent(MODULE, request(work, artifact=str(missing)), tmp_path)
    assert code == 2
    assert result["error"]["type"] == "FileNotFoundError" and str(missing) in result["error"]["message"]


def test_request_that_is_not_json_exits_2(work: Path, tmp_path: Path) -> None:
    (tmp_path / "request.json").write_text("{not json")
    proc = subprocess.run([sys.executable, "-m", "edgekit.agent", "run", "--request", str(tmp_path / "request.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and json.loads(proc.stdout)["error"]["stage"] == "request"


def test_bad_command_line_is_json_too() -> None:
    proc = subprocess.run([*MODULE, "run"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "--request" in json.loads(proc.stdout)["error"]["message"]


def test_wrong_number_of_inputs_fails_in_warmup(work: Path, tmp_path: Path) -> None:
    np.savez(tmp_path / "two.npz", np.zeros((1, 16), np.float32), np.zeros((1, 16), np.float32))
    req = request(work, inputs=str(tmp_path / "two.npz"))
    code, result, stderr = run_agent(MODULE, req, tmp_path)
    assert code == 1 and result["error"]["stage"] == "warmup"
    assert "takes 1 input(s), got 2" in result["error"]["message"]
    assert "Traceback" in stderr


def test_noise_on_fd1_cannot_corrupt_the_json() -> None:
    """A runtime printing from C (fd 1) or Python (print) while the agent works lands on stderr."""
    code = (
        "import os\n"
        "from edgekit.agent.__main__ import stdout_reserved_for_json\n"
        "with stdout_reserved_for_json() as out:\n"
        "    os.write(1, b'C-level noise\\n'); print('python noise')\n"
        "out.write('{}\\n')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.stdout == "{}\n"
    assert "C-level noise" in proc.stderr and "python noise" in proc.stderr


# ---- the bundle -------------------------------------------------------------------------------------


def test_bundle_is_deterministic(tmp_path: Path) -> None:
    first, second = build_agent(tmp_path / "a"), build_agent(tmp_path / "b")
    assert first.name == second.name and first.read_bytes() == second.read_bytes()
    assert build_agent(tmp_path / "a") == first  # already built: the same file comes back


def test_bundle_holds_every_device_module() -> None:
    on_disk = {p.name for p in AGENT_DIR.glob("*.py")} - {"bundle.py"}
    assert on_disk == set(MODULES)


def test_agent_and_runtimes_agree_on_formats() -> None:
    from edgekit.agent.__main__ import FORMATS

    assert FORMATS == runtimes.FORMATS == tuple(sorted(runtimes.RUNTIME_CANDIDATES))


# Modules that must answer on a device without numpy (devices check, energy, conditions): stdlib only.
STDLIB_ONLY = {"bundle.py", "conditions.py", "device_info.py", "meters.py", "sensors.py"}


@pytest.mark.parametrize("module", sorted(MODULES) + ["bundle.py"])
def test_agent_sources_parse_as_python_3_9_and_import_no_edgekit(module: str) -> None:
    """A Pi may run Python 3.9; the device code may only import stdlib, numpy, runtimes and itself."""
    tree = ast.parse((AGENT_DIR / module).read_text(), feature_version=(3, 9))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0:
            assert not (node.module or "").startswith("edgekit"), f"{module} imports {node.module}"
        if isinstance(node, ast.Import):
            assert not any(a.name.startswith("edgekit") for a in node.names), module
    if module in STDLIB_ONLY:  # module level; an optional import inside a try (numpy's version) is fine
        top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
        top |= {(n.module or "").split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.level == 0}
        assert top <= set(sys.stdlib_module_names), top - set(sys.stdlib_module_names)


@pytest.mark.skipif(not os.environ.get("EDGEKIT_AGENT_OLD_PYTHON"),
                    reason="set EDGEKIT_AGENT_OLD_PYTHON to a Python 3.9 with numpy + onnxruntime (the ssh tests run "
                           "the agent on Python 3.9 with tflite-runtime anyway)")
def test_zipapp_on_an_old_python(work: Path, tmp_path: Path) -> None:
    req = request(work)
    argv = [os.environ["EDGEKIT_AGENT_OLD_PYTHON"], "-I", str(pyz(work))]
    code, result, _ = run_agent(argv, req, tmp_path, cwd=tmp_path)
    assert code == 0
    assert_trustworthy(result, req)
