"""What a device sends back is untrusted: malformed or huge JSON, wrong types, absurd numbers, HTML, rich
markup and terminal escape codes. Nothing may crash: each becomes a row with a clear error, or its values
are rejected or made printable; the terminal table and the HTML report show them as text.

The device is the ``local`` one with a real agent bundle and a real ONNX model, but its python is a shell
script that answers ``run`` (or ``info``) with crafted output: FAULT INJECTION, labelled in the script too.
The well-formed answers start from one real agent run. The 40 MB answer needs the SSH transport's cap:
see tests/integration/test_security.py.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import edgekit
from edgekit.device.client import checked_info
from edgekit.results.store import Run
from edgekit.errors import AgentError
from edgekit.exporters.base import Artifact

EDGEKIT = [str(Path(sys.executable).with_name("edgekit"))]
QUICK = edgekit.BenchConfig(warmup_iterations=1, warmup_seconds=0, min_iterations=5, min_seconds=0.01, threads=1,
                            energy=False, device_accuracy=False)
RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e]")  # what must never reach a terminal
SCRIPT = "<script>alert(1)</script>"
CLEAR_SCREEN = "\x1b[2J\x1b[31m"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    """A tiny real ONNX model (MatMul + Relu, float32 [1, 16]) and its inputs, as an export would leave them."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    d = tmp_path_factory.mktemp("untrusted")
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(d / "model.onnx"))
    np.savez(d / "inputs.npz", np.zeros((1, 16), np.float32))
    return Artifact(model="tiny", profile="x86", target="onnx", format="onnx", precision="fp32", threads=1,
                    path=d / "model.onnx", files=[d / "model.onnx"], inputs=d / "inputs.npz",
                    bytes=(d / "model.onnx").stat().st_size)


@pytest.fixture(scope="module")
def real_answer(artifact: Artifact) -> dict[str, Any]:
    """The agent's real answer for the tiny model: the base every crafted answer is made from."""
    df = edgekit.benchmark([artifact], "local", QUICK)
    assert df.iloc[0]["error"] is None, df.iloc[0]["error"]
    request = {"artifact": str(artifact.path), "format": "onnx", "inputs": str(artifact.inputs), "threads": 1,
               "warmup_iterations": 1, "warmup_seconds": 0, "min_iterations": 5, "min_seconds": 0.01,
               "max_seconds": 10, "profile_ops": True}
    out = subprocess.run([sys.executable, "-m", "edgekit.agent", "run", "--request", "-"], input=json.dumps(request),
                         capture_output=True, text=True, timeout=120)
    answer = json.loads(out.stdout)
    assert answer["ok"] and answer["op_profile"]["ops"], out.stderr[-2000:]
    return answer


def crafted_device(tmp_path: Path, *, run: str | bytes | None = None, info: str | None = None,
                   name: str = "crafted") -> edgekit.LocalDevice:
    """FAULT INJECTION: a local device whose python answers ``run`` / ``info`` with the given output instead
    of running the agent; anything else (uploads, the other command) runs the real python."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    lines = ["#!/bin/sh", "# edgekit test fault injection: this device answers with crafted output"]
    for command, output in (("run", run), ("info", info)):
        if output is None:
            continue
        answer = tmp_path / f"{command}-answer"
        answer.write_bytes(output if isinstance(output, bytes) else output.encode())
        lines.append(f'if [ "$2" = {command} ]; then cat >/dev/null; cat {shlex.quote(str(answer))}; exit 0; fi')
    lines.append(f'exec {shlex.quote(sys.executable)} "$@"')
    script = tmp_path / "python"
    script.write_text("\n".join(lines) + "\n")
    script.chmod(0o755)
    return edgekit.LocalDevice(name=name, python=str(script))


def measure(artifact: Artifact, device: edgekit.LocalDevice) -> dict[str, Any]:
    df = edgekit.benchmark([artifact], device, QUICK)
    assert len(df) == 1
    return df.iloc[0].to_dict()


def texts(value: Any) -> list[str]:
    """Every string inside a row value (nested lists and dicts included)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in (*texts(k), *texts(v))]
    if isinstance(value, (list, tuple, np.ndarray)):
        return [t for v in value for t in texts(v)]
    return []


def assert_printable(row: dict[str, Any]) -> None:
    bad = [t for v in row.values() for t in texts(v) if RAW_CONTROL.search(t)]
    assert not bad, bad


def with_changes(answer: dict[str, Any], path: str, value: Any) -> str:
    """``answer`` as JSON with the field at dotted ``path`` set to ``value`` (NaN is written as JSON's NaN)."""
    changed = json.loads(json.dumps(answer))
    *parents, last = path.split(".")
    node = changed
    for key in parents:
        node = node[key]
    node[last] = value
    return json.dumps(changed)


# ---- output that is no answer at all ----------------------------------------------------------------


@pytest.mark.parametrize("output", [
    "Segmentation fault\nnot json at all\n",
    '{"ok": true, "latency_ms": {"p50": 1.0',  # cut short
    '{"a": ' * 100_000 + "1" + "}" * 100_000,  # 100k deep: json.loads raises RecursionError
    '[{"ok": true}]',  # JSON, but not an object
    "\x1b[2J\x1b[31mYOU HAVE BEEN PWNED\x1b]0;title\x07\n",
], ids=["garbage", "truncated", "100k-deep", "a-list", "escape-codes"])
def test_output_that_is_not_an_answer_is_a_row_with_a_clear_error(artifact: Artifact, tmp_path: Path,
                                                                  output: str) -> None:
    row = measure(artifact, crafted_device(tmp_path, run=output))
    assert row["error"].startswith("benchmark failed: the agent gave no JSON answer"), row["error"][:300]
    assert row["stage"] == "measure" and pd.isna(row["latency_ms_p50"])
    assert len(row["error"]) < 10_000, "a device's output must be cut, not copied whole into the row"
    assert_printable(row)


# ---- answers of the wrong shape ---------------------------------------------------------------------


@pytest.mark.parametrize(("path", "value", "field"), [
    ("latency_ms", [1.0, 2.0], "latency_ms"),
    ("latency_ms.p50", "fast", "latency_ms.p50"),
    ("latency_ms.p50", float("nan"), "latency_ms.p50"),
    ("latency_ms.p90", -1.0, "latency_ms.p90"),
    ("latency_ms.samples", {"0": 1.0}, "latency_ms.samples"),
    ("latency_ms.samples", [0.01, 1e308, 0.01, 0.01, 0.01], "latency_ms.samples"),
    ("latency_ms.samples", [0.01, -5.0, 0.01, 0.01, 0.01], "latency_ms.samples"),
    ("latency_ms.p50", 1e6, "latency_ms.p50"),  # not within its own samples
    ("iterations", "5", "iterations"),
], ids=["latency-a-list", "p50-a-string", "p50-nan", "negative-p90", "samples-a-dict", "sample-1e308",
        "negative-sample", "p50-outside-samples", "iterations-a-string"])
def test_a_malformed_answer_is_a_row_naming_the_field(artifact: Artifact, tmp_path: Path,
                                                      real_answer: dict[str, Any], path: str, value: Any,
                                                      field: str) -> None:
    row = measure(artifact, crafted_device(tmp_path, run=with_changes(real_answer, path, value)))
    assert f"the device's answer is malformed: field '{field}' must be" in row["error"], row["error"]
    assert "edgekit devices check" in row["error"]  # the fix: see what answers on the device
    assert row["stage"] == "measure" and pd.isna(row["latency_ms_p50"])


@pytest.mark.parametrize("answer", [
    {"ok": False, "error": "boom"},
    {"ok": False, "error": ["a", "list"]},
    {"ok": "yes", "latency_ms": {}},
    {"ok": False, "error": {"stage": CLEAR_SCREEN, "type": ["x"], "message": f"{SCRIPT} [bold]{CLEAR_SCREEN}"}},
], ids=["error-a-string", "error-a-list", "ok-a-string", "hostile-error"])
def test_a_failure_answer_of_any_shape_is_a_row(artifact: Artifact, tmp_path: Path, answer: dict[str, Any]) -> None:
    row = measure(artifact, crafted_device(tmp_path, run=json.dumps(answer)))
    assert row["error"].startswith("benchmark failed: "), row["error"]
    assert_printable(row)
    if isinstance(answer.get("error"), dict):
        assert "\\x1b[2J" in row["error"] and SCRIPT in row["error"]  # shown as text, not acted on


def test_hostile_text_and_wrong_types_in_a_good_answer_are_made_safe(artifact: Artifact, tmp_path: Path,
                                                                     real_answer: dict[str, Any]) -> None:
    answer = json.loads(json.dumps(real_answer))
    answer["runtime"] = {"name": SCRIPT, "version": CLEAR_SCREEN + "1.0"}
    answer["machine"], answer["python"] = "[bold red]x86_64[/]", ["3", "11"]
    answer["memory"] = {"peak_rss_mb": "lots", "peak_rss_mb_after_load": float("inf"), "method": "\u202eevil"}
    answer["energy"] = ["not", "a", "dict"]
    answer["conditions"] = {"noisy": "yes", "noisy_reasons": [CLEAR_SCREEN, 3], "cpu_freq_mhz_before": "2GHz"}
    answer["op_profile"]["ops"] = ["x", {"name": "\x1b]0;t\x07", "time_ms": "1", "share": 0.5},
                                   *answer["op_profile"]["ops"]]
    answer["timed_seconds"], answer["load_ms"] = 1e400, [1]  # 1e400 is JSON for infinity
    row = measure(artifact, crafted_device(tmp_path, run=json.dumps(answer).replace("Infinity", "1e400")))
    assert row["error"] is None and row["latency_ms_p50"] == real_answer["latency_ms"]["p50"]
    assert row["runtime"] == SCRIPT  # text stays text: the report escapes it as HTML
    assert row["runtime_version"] == "\\x1b[2J\\x1b[31m1.0" and row["machine"] == "[bold red]x86_64[/]"
    assert row["python_version"] is None and row["peak_rss_mb"] is None and row["peak_rss_mb_after_load"] is None
    assert row["memory_method"] == "\\u202eevil" and row["energy_status"] is None
    assert row["noisy"] is None and list(row["noisy_reasons"]) == ["\\x1b[2J\\x1b[31m"]
    assert row["cpu_freq_mhz_before"] is None and row["timed_seconds"] is None and row["load_ms"] is None
    assert [op["name"] for op in row["op_profile"]["ops"]] == [op["name"] for op in real_answer["op_profile"]["ops"]]
    assert len(edgekit.op_table(pd.DataFrame([row]))) == len(real_answer["op_profile"]["ops"])
    assert_printable(row)


# ---- what the user sees: the terminal table and the HTML report -----------------------------------------


def test_the_terminal_table_and_the_report_show_device_text_as_text(artifact: Artifact, tmp_path: Path,
                                                                    real_answer: dict[str, Any]) -> None:
    hostile = json.loads(json.dumps(real_answer))
    hostile["runtime"] = {"name": SCRIPT, "version": CLEAR_SCREEN}
    good = measure(artifact, crafted_device(tmp_path / "a", run=json.dumps(hostile), name=f"dev {SCRIPT}"))
    bad = measure(artifact, crafted_device(tmp_path / "b", run=f"{CLEAR_SCREEN}[/] {SCRIPT}\n", name="dev [/]b"))
    facts = checked_info(json.loads(_info(os=CLEAR_SCREEN + SCRIPT)))  # as a fleet stores them
    run = Run.create(tmp_path / "runs", {"model": "tiny", "devices": {f"dev {SCRIPT}": facts}})
    for row in (good, bad):
        run.append("row", row=row)
    run.finalize("complete")
    env_runs = ["--results", str(tmp_path / "runs")]
    shown = subprocess.run([*EDGEKIT, "results", "show", run.id, *env_runs], capture_output=True, text=True,
                           timeout=120)
    assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr[-2000:]
    assert "\x1b" not in shown.stdout + shown.stderr, "a device's escape codes reached the terminal"
    assert "\\x1b[2J" in shown.stdout and "dev [/]b" in shown.stdout and "<script>" in shown.stdout
    page = tmp_path / "report.html"
    out = subprocess.run([*EDGEKIT, "report", run.id, "-o", str(page), *env_runs], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    html = page.read_text()
    assert SCRIPT not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "\x1b" not in html


def test_an_error_message_with_markup_and_escapes_is_printed_as_text() -> None:
    out = subprocess.run([*EDGEKIT, "results", "show", f"[/]run{CLEAR_SCREEN}"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "unknown run '[/]run\\x1b[2J\\x1b[31m'" in out.stderr and "\x1b" not in out.stderr


# ---- the device's facts (`info`) -------------------------------------------------------------------------


def _info(**changes: Any) -> str:
    base = {"ok": True, "agent_version": "1", "machine": "x86_64", "cpu_model": "cpu", "cores": 2,
            "mem_total_mib": 1024.0, "os": "Linux", "kernel": "6", "python": "3.11.7", "python_executable": "/py",
            "numpy": "2.4", "emulated": False, "emulation": {"emulated": False, "emulator": None, "evidence": []},
            "runtimes": {f: {"package": "p", "version": "1", "error": None} for f in ("executorch", "onnx", "tflite")},
            "energy": {"available": False, "reason": "none"}, "time_unix": time.time()}
    return json.dumps({**base, **changes})


def test_device_facts_of_the_wrong_type_or_with_escapes_are_made_safe(tmp_path: Path) -> None:
    info = _info(cores="many", mem_total_mib="lots", os=CLEAR_SCREEN + SCRIPT, emulated="yes",
                 emulation={"evidence": [CLEAR_SCREEN, 7]}, energy=["x"], numpy=[2],
                 runtimes={"onnx": {"package": SCRIPT, "version": 1, "error": None}, "tflite": {}})
    device = crafted_device(tmp_path, info=info, name="facts")
    check = edgekit.check_device(device, profile="x86")
    facts = check.info
    assert facts["cores"] is None and facts["mem_total_mib"] is None and facts["numpy"] is None
    assert facts["os"] == "\\x1b[2J\\x1b[31m" + SCRIPT and facts["emulated"] is False
    assert facts["runtimes"]["onnx"] == {"package": SCRIPT, "version": None, "error": None}
    assert check.runnable_targets == ["onnx"] and any("target tflite" in m for m in check.missing)
    assert not [t for t in texts(check.to_dict()) if RAW_CONTROL.search(t)]
    devices = tmp_path / "devices.yaml"
    devices.write_text(f"devices:\n  - {{name: facts, kind: local, python: {shlex.quote(device.python or '')}}}\n")
    out = subprocess.run([*EDGEKIT, "devices", "check", "facts", "--profile", "x86", "--devices-file", str(devices)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "\x1b" not in out.stdout + out.stderr and "not ready" in out.stdout


@pytest.mark.parametrize("runtimes", [["onnx"], "onnxruntime", {"onnx": "onnxruntime 1.0"}, None])
def test_device_facts_without_a_runtimes_table_are_an_agent_error_naming_it(tmp_path: Path, runtimes: Any) -> None:
    device = crafted_device(tmp_path, info=_info(runtimes=runtimes))
    with pytest.raises(AgentError, match=r"device 'crafted': the device's answer is malformed: field 'runtimes'"):
        edgekit.check_device(device, profile="x86")


def test_a_device_clock_far_off_is_a_warning_of_devices_check(tmp_path: Path) -> None:
    behind = edgekit.check_device(crafted_device(tmp_path, info=_info(time_unix=time.time() - 10 * 86400)),
                                  profile="x86")
    assert behind.info["clock_skew_s"] == pytest.approx(-10 * 86400, abs=60)
    (warning,) = [w for w in behind.warnings if "clock" in w]
    assert "10 days behind this host's" in warning and "latency is unaffected" in warning and "ntp" in warning
    in_time = edgekit.check_device(crafted_device(tmp_path / "ok", info=_info()), profile="x86")
    assert abs(in_time.info["clock_skew_s"]) < 60 and not [w for w in in_time.warnings if "clock" in w]
