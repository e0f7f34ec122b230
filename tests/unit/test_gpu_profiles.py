"""GPU profiles on the host side: a CUDA profile's row that ran on the CPU is flagged, never recommended, and
``devices check`` says what is missing. This machine has no GPU: the real agent runs with the real CPU
provider of onnxruntime, which is exactly the case that must never pass as a GPU figure."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import edgekit
from edgekit.config import profile as profile_mod
from edgekit.errors import ConfigError
from edgekit.results.rows import acceptable, execution_fields, flag_accelerator, mark_recommended

CUDA_REQUEST = edgekit.load_profile("x86-cuda").execution_request()


def test_gpu_profiles_name_their_providers_and_cpu_profiles_ask_for_nothing() -> None:
    profiles = edgekit.list_profiles()
    for name in ("x86-cuda", "jetson-orin"):
        p = profiles[name]
        assert p.accelerator == "cuda" and p.execution.providers[0] == "TensorrtExecutionProvider"
        assert p.execution_request() == {"accelerator": "cuda", "providers": list(p.execution.providers),
                                         "cpu_fallback": True, "tensorrt": {"fp16": True, "int8": True}}
    assert profiles["x86"].execution_request() is None and profiles["pi4"].execution_request() is None


def test_a_cuda_profile_without_a_gpu_provider_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\narch: x86_64\nbackend: tensorrt\naccelerator: cuda\nprecisions: [fp16]\n"
                   "targets: [onnx]\n")
    with pytest.raises(ConfigError, match="GPU execution provider"):
        edgekit.load_profile(bad)


def test_local_picks_x86_cuda_only_with_a_driver_and_a_cuda_provider(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    assert edgekit.host_profile(arch="x86_64").name == "x86"  # this host: no NVIDIA driver, CPU onnxruntime
    driver = tmp_path / "nvidia-version"
    driver.write_text("NVRM version: FAKE driver file for this test\n")
    cuda = edgekit.load_profile("x86-cuda")
    match = cuda.match.model_copy(update={"files": [str(driver)]})
    monkeypatch.setattr(profile_mod, "available_providers", lambda: ["CPUExecutionProvider"])
    assert not match.matches("x86_64")  # a GPU without onnxruntime-gpu is not this profile's host
    monkeypatch.setattr(profile_mod, "available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert match.matches("x86_64")


def _answer(used: list[str], accelerator_used: str, ok: bool, note: str | None = None) -> dict:
    return {"execution": {"providers_requested": CUDA_REQUEST["providers"], "providers_used": used,
                          "nodes_by_provider": {p: 7 for p in used}, "accelerator_used": accelerator_used,
                          "accelerator_ok": ok, "note": note, "io_binding": accelerator_used != "cpu"}}


def test_a_cpu_fallback_under_a_gpu_profile_is_flagged_and_not_recommended() -> None:
    cpu = {"device": "d", "model": "m", "target": "onnx", "precision": "fp16", "latency_ms_p50": 1.0,
           "error": None, "parity_ok": True, "accuracy": None, "reference_accuracy": None, "noisy": False,
           "noisy_reasons": []}
    cpu.update(execution_fields(_answer(["CPUExecutionProvider"], "cpu", False), CUDA_REQUEST))
    flag_accelerator(cpu)
    assert cpu["accelerator"] == "cuda" and cpu["accelerator_used"] == "cpu" and cpu["accelerator_ok"] is False
    assert cpu["noisy"] is True and "not a cuda figure" in cpu["noisy_reasons"][-1]
    gpu = {**cpu, "precision": "int8", "latency_ms_p50": 2.0, "noisy": False, "noisy_reasons": []}
    gpu.update(execution_fields(_answer(["TensorrtExecutionProvider", "CPUExecutionProvider"], "tensorrt", True),
                                CUDA_REQUEST))
    assert list(acceptable(pd.DataFrame([cpu, gpu]))) == [False, True]
    df = mark_recommended(pd.DataFrame([cpu, gpu]))
    assert df.set_index("precision")["recommended"].to_dict() == {"fp16": False, "int8": True}


def test_an_answer_that_claims_the_gpu_without_a_gpu_provider_is_not_believed() -> None:
    fields = execution_fields(_answer(["CPUExecutionProvider"], "cpu", True), CUDA_REQUEST)
    assert fields["accelerator_ok"] is False
    assert execution_fields({}, CUDA_REQUEST)["accelerator_ok"] is False  # an agent that says nothing
    assert execution_fields({}, None)["accelerator_ok"] is None  # CPU profiles are not judged


@pytest.mark.slow
def test_a_cuda_profile_on_this_cpu_host_gives_a_flagged_row_from_the_real_agent(tmp_path: Path) -> None:
    cm = edgekit.compress("digits-cnn", "x86-cuda")
    arts = edgekit.export(cm, ["onnx"], tmp_path, precisions=["fp16"], jobs=1)
    assert arts[0].execution == CUDA_REQUEST
    df = edgekit.benchmark(arts, "local", edgekit.BenchConfig(min_iterations=5, min_seconds=0.05,
                                                               warmup_iterations=1, energy=False))
    row = df.iloc[0]
    assert row["error"] is None or pd.isna(row["error"]), row["error"]
    assert row["accelerator"] == "cuda" and row["accelerator_used"] == "cpu" and row["accelerator_ok"] == False  # noqa: E712
    assert list(row["execution_providers"]) == ["CPUExecutionProvider"]
    assert row["provider_nodes"]["CPUExecutionProvider"] > 0
    assert row["noisy"] == True and not row["recommended"]  # noqa: E712
    assert "not" in row["accelerator_note"] and "figure" in row["accelerator_note"]


def test_devices_check_names_the_missing_gpu_providers_and_their_packages() -> None:
    check = edgekit.check_device("local", profile="x86-cuda")
    missing = " ".join(check.missing)
    assert "CUDAExecutionProvider" in missing and "onnxruntime-gpu" in missing
    assert "TensorrtExecutionProvider" in missing and "tensorrt" in missing
    assert isinstance(check.info["onnxruntime_providers"], list)
    assert not check.ok
