"""GPU energy and facts: NVML (sensors.py, meters.py, gpu.py), a Jetson's GPU sysfs, ``info``, scripts/gpu-check.

This machine has no NVIDIA GPU, no driver, no nvidia-ml-py and no Jetson. Everything GPU-side here is FAKE
and labelled so: ``fake_pynvml.py`` beside this file (FAKE NVML, loaded as ``pynvml``), FAKE Jetson sysfs
trees built under tmp_path, a FAKE GPU runner for the agent's run, and a FAKE ``torch`` for gpu-check's
load. What is real: the agent's code, the meter's windows (real sleeps), onnxruntime's CPU provider, and
the agent and gpu-check run as subprocesses.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from edgekit.agent import __main__ as agent_main
from edgekit.agent import device_info, gpu, meters, runtimes, sensors
from edgekit.agent.execution import CPU, CUDA

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
FAKE_NVML = HERE / "fake_pynvml.py"
GPU_CHECK = REPO / "scripts" / "gpu-check"
IDLE_W, LOAD_W = 40.0, 100.0  # the FAKE board's idle power and what an "inference" adds


def load_fake_nvml(monkeypatch: pytest.MonkeyPatch, **config: Any) -> ModuleType:
    """A fresh FAKE NVML module installed as ``pynvml`` for this test only."""
    spec = importlib.util.spec_from_file_location("pynvml", FAKE_NVML)
    assert spec is not None and spec.loader is not None
    fake = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fake)
    assert fake.FAKE is True
    fake.CONFIG.update(config)
    fake.set_power_w(fake.CONFIG["idle_w"])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return fake


def no_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on this machine, whatever is installed: ``import pynvml`` fails."""
    monkeypatch.setitem(sys.modules, "pynvml", None)


def fake_nvml_dir(tmp_path: Path) -> Path:
    """A folder holding the FAKE NVML as ``pynvml.py``, for PYTHONPATH of a subprocess."""
    d = tmp_path / "fake-nvml"
    d.mkdir(exist_ok=True)
    shutil.copy(FAKE_NVML, d / "pynvml.py")
    return d


def fake_rapl(root: Path) -> None:
    """FAKE powercap package zone (a machine with RAPL)."""
    zone = root / "sys/class/powercap/intel-rapl:0"
    zone.mkdir(parents=True)
    (zone / "energy_uj").write_text("1000\n")
    (zone / "name").write_text("package-0\n")


def fake_jetson_gpu(root: Path, load_permille: int, freq_hz: int, via_of_node: bool) -> None:
    """FAKE Jetson GPU sysfs: load (per-mille) and a devfreq node (Hz), named as on Orin (ga10b)."""
    if via_of_node:  # devfreq folder with a neutral name; the device tree node says what it is
        d = root / "sys/class/devfreq/devfreq0"
        (d / "device/of_node").mkdir(parents=True, exist_ok=True)
        (d / "device/of_node/name").write_bytes(b"ga10b\x00")
        (d / "device/load").write_text(f"{load_permille}\n")
    else:
        d = root / "sys/class/devfreq/17000000.ga10b"
        d.mkdir(parents=True, exist_ok=True)
        (root / "sys/devices/gpu.0").mkdir(parents=True, exist_ok=True)
        (root / "sys/devices/gpu.0/load").write_text(f"{load_permille}\n")
    (d / "cur_freq").write_text(f"{freq_hz}\n")
    other = root / "sys/class/devfreq/15340000.vic"  # another devfreq device: not the GPU
    other.mkdir(parents=True, exist_ok=True)
    (other / "cur_freq").write_text("115200000\n")


# ---- which energy source a run uses -----------------------------------------------------------------


def test_a_gpu_run_uses_nvml_before_rapl_and_a_cpu_run_never(monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    load_fake_nvml(monkeypatch)
    fake_rapl(tmp_path)
    sensor, _, checked = sensors.find_sensor(str(tmp_path), None, accelerator="cuda")
    assert sensor is not None and sensor.name == "nvml" and sensor.kind == "counter"
    assert "FAKE NVIDIA H200" in sensor.source and "nvmlDeviceGetTotalEnergyConsumption" in sensor.source
    assert checked == [c for c in checked if c.startswith("nvml: ")]  # found first
    sensor, _, checked = sensors.find_sensor(str(tmp_path), None)
    assert sensor is not None and sensor.name == "rapl"
    assert checked[0].startswith("nvml: not tried: the run's work is on the CPU")


def test_without_pynvml_a_gpu_run_falls_back_and_says_why(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    no_nvml(monkeypatch)
    fake_rapl(tmp_path)
    sensor, _, _ = sensors.find_sensor(str(tmp_path), None, accelerator="cuda")
    assert sensor is not None and sensor.name == "rapl"
    assert "not used: nvml: pynvml (nvidia-ml-py) is not installed" in sensor.notes


def test_no_driver_is_reported_as_no_nvidia_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    load_fake_nvml(monkeypatch, init_error="Driver Not Loaded")
    info = sensors.describe_sources(str(tmp_path), None, accelerator="cuda")
    assert info["available"] is False
    assert "nvml: " in info["reason"] and "no NVIDIA GPU (nvmlInit failed: Driver Not Loaded)" in info["reason"]


@pytest.mark.parametrize("visible, ok, why", [
    ("GPU-00000000-fake-0000-0000-000000000000", True, "UUID GPU-"),
    ("0,1", True, "NVML index 0 (CUDA_VISIBLE_DEVICES=0,1)"),
    ("1", False, "NVML has no GPU 1"),
    ("", False, "CUDA sees no GPU"),
])
def test_the_gpu_is_cuda_device_0(monkeypatch: pytest.MonkeyPatch, visible: str, ok: bool, why: str) -> None:
    load_fake_nvml(monkeypatch)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    if ok:
        _, handle, how = sensors.open_nvml()
        assert handle == "fake-gpu-0" and why in how
    else:
        with pytest.raises(sensors.SensorError, match=why):
            sensors.open_nvml()


# ---- energy per inference ---------------------------------------------------------------------------


def fake_inferences(fake: ModuleType, n: int, seconds: float) -> float:
    """n FAKE inferences, each raising the board power by LOAD_W for ``seconds``; returns the busy time."""
    busy = 0.0
    for _ in range(n):
        t0 = time.perf_counter()
        fake.set_power_w(IDLE_W + LOAD_W)
        time.sleep(seconds)
        fake.set_power_w(IDLE_W)
        busy += time.perf_counter() - t0
    return busy


def test_energy_per_inference_from_the_nvml_counter_is_the_known_power(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    fake = load_fake_nvml(monkeypatch, idle_w=IDLE_W)
    fake_rapl(tmp_path)  # present, and not used: the work is on the GPU
    meter = meters.open_meter({"sysfs_root": str(tmp_path), "vcgencmd": None, "accelerator": "cuda"})
    assert meter.source is not None and meter.source.startswith("nvml: ")
    meter.measure_idle(0.2)
    meter.start()
    busy = fake_inferences(fake, 20, 0.005)
    meter.stop()
    r = meter.result(20)
    assert r["status"] == "measured"
    assert r["idle_power_mw"] == pytest.approx(IDLE_W * 1e3, rel=0.01)
    expected_mj = LOAD_W * busy * 1e3 / 20  # the energy above idle the FAKE board drew per inference
    assert r["energy_mj_per_inference"] == pytest.approx(expected_mj, rel=0.03)
    assert r["energy_total_mj_per_inference"] > r["energy_mj_per_inference"]
    assert "NVIDIA GPU board's energy from NVML" in r["note"] and "0.1 s assumed" in r["note"]


def test_a_gpu_without_the_energy_counter_is_sampled(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = load_fake_nvml(monkeypatch, idle_w=IDLE_W, energy_counter=False)
    meter = meters.open_meter({"sysfs_root": str(tmp_path), "vcgencmd": None, "accelerator": "cuda",
                               "interval_s": 0.01})
    assert meter.sensor is not None and meter.sensor.kind == "power"
    meter.measure_idle(0.1)
    fake.set_power_w(IDLE_W + LOAD_W)
    meter.start()
    time.sleep(0.3)
    meter.stop()
    fake.set_power_w(IDLE_W)
    r = meter.result(10)
    assert r["status"] == "measured"
    assert r["active_power_mw"] == pytest.approx((IDLE_W + LOAD_W) * 1e3, rel=0.05)
    assert r["idle_power_mw"] == pytest.approx(IDLE_W * 1e3, rel=0.01)
    assert "no energy counter" in r["note"]


def test_a_bad_accelerator_in_the_meter_config_is_refused() -> None:
    with pytest.raises(ValueError, match="'accelerator'"):
        meters.check_config({"accelerator": "tpu"})


# ---- GPU facts ------------------------------------------------------------------------------------------


def test_gpu_facts_around_a_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    load_fake_nvml(monkeypatch)
    probe = gpu.GpuProbe(str(tmp_path))
    block = probe.summary(probe.snapshot("before"), probe.snapshot("after", with_process=True))
    assert set(block) == set(gpu.GPU_KEYS)
    assert block["available"] is True and block["source"] == "nvml" and block["reason"] is None
    assert block["name"] == "FAKE NVIDIA H200 (test double)" and block["index"] == 0
    assert block["driver"] == "999.99.99" and block["cuda_driver_version"] == "12.4"
    assert block["power_limit_w"] == 700.0 and block["memory_mib_total"] == 143_771
    assert block["memory_mib_process"] == pytest.approx(1234.0)
    assert block["memory_mib_used_total_before_load"] == 512.0 and block["memory_mib_used_total"] == 2048.0
    assert (block["sm_clock_mhz_before"], block["sm_clock_mhz_after"]) == (1410, 1980)
    assert (block["mem_clock_mhz_before"], block["mem_clock_mhz_after"]) == (2619, 3201)
    assert (block["temp_c_before"], block["temp_c_after"]) == (41, 63)
    assert block["throttle_reasons_before"] == ["GpuIdle"] and block["throttle_reasons"] == []
    assert gpu.noisy_reasons(block) == []  # idling before the run is not a disturbance
    json.dumps(block, allow_nan=False)


def test_thermal_throttle_makes_the_run_noisy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    load_fake_nvml(monkeypatch, throttle=[0x2, 0x40 | 0x4])
    probe = gpu.GpuProbe(str(tmp_path))
    block = probe.summary(probe.snapshot("before"), probe.snapshot("after"))
    assert block["throttle_reasons_before"] == ["ApplicationsClocksSetting"]
    assert block["throttle_reasons"] == ["SwPowerCap", "HwThermalSlowdown"]
    reasons = gpu.noisy_reasons(block)
    assert len(reasons) == 1 and "after the run" in reasons[0] and "HwThermalSlowdown" in reasons[0]


def test_a_pid_nvml_cannot_see_is_said_not_guessed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    load_fake_nvml(monkeypatch, pid_visible=False)
    probe = gpu.GpuProbe(str(tmp_path))
    block = probe.summary(probe.snapshot("before"), probe.snapshot("after", with_process=True))
    assert block["memory_mib_process"] is None
    assert "container" in block["unavailable"]["memory_mib_process"]
    assert block["memory_mib_used_total"] is not None


def test_without_pynvml_the_gpu_block_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    no_nvml(monkeypatch)
    probe = gpu.GpuProbe(str(tmp_path))
    block = probe.summary(probe.snapshot("before"), probe.snapshot("after", with_process=True))
    assert block["available"] is False
    assert block["reason"].startswith("pynvml (nvidia-ml-py) is not installed")
    assert block["sm_clock_mhz_after"] is None and block["memory_mib_process"] is None


@pytest.mark.parametrize("via_of_node", [False, True])
def test_jetson_gpu_load_and_frequency_from_sysfs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                  via_of_node: bool) -> None:
    no_nvml(monkeypatch)  # a Jetson has no NVML
    fake_jetson_gpu(tmp_path, 0, 306_000_000, via_of_node)
    probe = gpu.GpuProbe(str(tmp_path))
    before = probe.snapshot("before")
    fake_jetson_gpu(tmp_path, 987, 918_000_000, via_of_node)  # busy during the run
    block = probe.summary(before, probe.snapshot("after", with_process=True))
    assert block["available"] is True and block["source"] == "jetson-sysfs"
    assert block["jetson_gpu_load_pct_before"] == 0 and block["jetson_gpu_load_pct_after"] == pytest.approx(98.7)
    assert block["jetson_gpu_freq_mhz_before"] == pytest.approx(306.0)
    assert block["jetson_gpu_freq_mhz_after"] == pytest.approx(918.0)
    assert "pynvml" in block["unavailable"]["nvml"]


def test_an_unreadable_jetson_file_is_a_reason_not_a_zero(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    no_nvml(monkeypatch)
    fake_jetson_gpu(tmp_path, 500, 306_000_000, False)
    probe = gpu.GpuProbe(str(tmp_path))
    (tmp_path / "sys/devices/gpu.0/load").write_text("busy\n")
    block = probe.summary(probe.snapshot("before"), probe.snapshot("after"))
    assert block["jetson_gpu_load_pct_before"] is None and "ValueError" in block["unavailable"]["jetson_gpu_load_pct_before"]
    assert block["jetson_gpu_freq_mhz_after"] == pytest.approx(306.0) and block["available"] is True


# ---- devices check ---------------------------------------------------------------------------------------


def test_info_lists_gpus_providers_and_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    load_fake_nvml(monkeypatch)
    facts = device_info.gpus()
    assert facts["available"] is True and facts["driver"] == "999.99.99" and facts["cuda_driver_version"] == "12.4"
    assert facts["devices"] == [{"index": 0, "name": "FAKE NVIDIA H200 (test double)", "memory_mib_total": 143_771}]
    providers, why = device_info.onnxruntime_providers(True)
    assert providers is not None and CPU in providers and why is None
    assert device_info.onnxruntime_providers(False) == (None, "not probed: onnx is not among the formats asked about")
    trt = device_info.tensorrt_facts(True)
    if trt["version"] is None:
        assert trt["reason"].startswith("tensorrt is not installed")


def test_info_without_nvml_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    no_nvml(monkeypatch)
    facts = device_info.gpus()
    assert facts["available"] is False and facts["reason"] == "pynvml (nvidia-ml-py) is not installed"


def test_info_command_with_fake_nvml(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(fake_nvml_dir(tmp_path))}
    proc = subprocess.run([sys.executable, "-m", "edgekit.agent", "info", "--formats", "onnx"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    facts = json.loads(proc.stdout)
    assert facts["gpu"]["devices"][0]["name"] == "FAKE NVIDIA H200 (test double)"
    assert CPU in facts["onnxruntime_providers"] and set(facts["tensorrt"]) == {"version", "library", "reason"}


# ---- the agent's run -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import onnx
    from onnx import TensorProto, helper

    d = tmp_path_factory.mktemp("gpu-nvml")
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(d / "model.onnx"))
    np.savez(d / "inputs.npz", np.ones((1, 16), np.float32))
    return d


def run_request(work: Path, **overrides: Any) -> dict[str, Any]:
    return {"artifact": str(work / "model.onnx"), "format": "onnx", "inputs": str(work / "inputs.npz"),
            "threads": 1, "warmup_iterations": 2, "warmup_seconds": 0.0, "min_iterations": 20, "min_seconds": 0.2,
            "max_seconds": 20.0, **overrides}


def test_agent_run_reports_gpu_facts_and_a_throttled_gpu_is_noisy(onnx_work: Path, tmp_path: Path) -> None:
    """The agent in a subprocess with the FAKE NVML on PYTHONPATH; the model runs on the real CPU provider."""
    env = {**os.environ, "PYTHONPATH": str(fake_nvml_dir(tmp_path)),
           "FAKE_PYNVML_CONFIG": json.dumps({"throttle": [0x0, 0x40]})}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    req = run_request(onnx_work, execution={"accelerator": "cuda", "providers": [CUDA, CPU]},
                      energy={"idle_seconds": 0.1}, sensors={"root": str(tmp_path)})
    (tmp_path / "req.json").write_text(json.dumps(req))
    proc = subprocess.run([sys.executable, "-m", "edgekit.agent", "run", "--request", str(tmp_path / "req.json")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    g = result["gpu"]
    assert g["available"] is True and g["name"] == "FAKE NVIDIA H200 (test double)"
    assert g["memory_mib_process"] == pytest.approx(1234.0)  # the agent's own pid, as the FAKE lists it
    assert g["temp_c_before"] == 41 and g["temp_c_after"] == 63 and g["throttle_reasons"] == ["HwThermalSlowdown"]
    cond = result["conditions"]
    assert cond["noisy"] is True and any("HwThermalSlowdown" in r for r in cond["noisy_reasons"])
    # The work ran on the CPU: the GPU board's energy must not stand for it.
    assert result["execution"]["accelerator_used"] == "cpu"
    assert "nvml: not tried: the run's work is on the CPU" in result["energy"]["status"]


class FakeGpuRunner(runtimes.Runner):
    """FAKE runner for tests: says it runs on CUDAExecutionProvider (this machine has no GPU). Each invoke
    raises the FAKE NVML board power by LOAD_W for 2 ms, as a GPU inference would."""

    format, runtime, version = "onnx", "onnxruntime", "fake"
    chosen = providers_used = [CUDA, CPU]
    available = [CUDA, CPU]
    io_binding, copies_timed = True, False
    trt_cache_dir = trt_cache_reused = None

    def __init__(self, fake: ModuleType) -> None:
        self.fake = fake

    def prepare(self, inputs: Any) -> Any:
        return list(inputs)

    def invoke(self, prepared: Any) -> Any:
        self.fake.set_power_w(IDLE_W + LOAD_W)
        time.sleep(0.002)
        self.fake.set_power_w(IDLE_W)
        return prepared

    def finish(self, raw: Any) -> list[np.ndarray]:
        return list(raw)


def test_a_gpu_run_reports_the_gpu_boards_energy_per_inference(monkeypatch: pytest.MonkeyPatch, onnx_work: Path,
                                                                tmp_path: Path) -> None:
    """run() in this process with a FAKE GPU runner and the FAKE NVML: on a box with RAPL, the GPU row's
    energy is the GPU board's, and per inference it is the power the FAKE board added while inferring."""
    fake = load_fake_nvml(monkeypatch, idle_w=IDLE_W)
    fake_rapl(tmp_path)
    monkeypatch.setattr(runtimes, "load_runner", lambda *a, **k: FakeGpuRunner(fake))
    monkeypatch.setattr(agent_main, "_count_nodes", lambda *a: ({CUDA: 3, CPU: 1}, ""))
    req = run_request(onnx_work, execution={"accelerator": "cuda", "providers": [CUDA, CPU]},
                      energy={"idle_seconds": 0.2}, sensors={"root": str(tmp_path), "vcgencmd": "/nonexistent"})
    result = agent_main.run(req)
    e = result["energy"]
    assert e["status"] == "measured" and e["source"].startswith("nvml: GPU FAKE NVIDIA H200")
    mean_invoke_ms = float(np.mean(result["latency_ms"]["samples"]))
    assert e["energy_mj_per_inference"] == pytest.approx(LOAD_W * mean_invoke_ms, rel=0.05)  # W x ms = mJ
    ex = result["execution"]
    assert ex["accelerator_used"] == "cuda" and ex["accelerator_ok"] is True and ex["io_binding"] is True
    assert ex["note"] == "1 of 4 nodes ran on CPUExecutionProvider"
    assert "synchronize_outputs" in result["timing_note"]
    assert result["gpu"]["available"] is True and result["gpu"]["memory_mib_process"] == pytest.approx(1234.0)
    json.dumps(result, allow_nan=False)


# ---- scripts/gpu-check ---------------------------------------------------------------------------------


def test_gpu_check_without_nvml_says_so_and_exits_2(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    (blocker / "pynvml").mkdir(parents=True)  # a pynvml that cannot be imported, whatever is installed
    (blocker / "pynvml" / "__init__.py").write_text("raise ModuleNotFoundError('blocked for test', name='pynvml')\n")
    env = {**os.environ, "PYTHONPATH": str(blocker)}
    proc = subprocess.run([sys.executable, str(GPU_CHECK)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no NVIDIA GPU/NVML here: pynvml (nvidia-ml-py) is not installed" in proc.stdout


FAKE_TORCH = '''"""FAKE torch for tests: this machine has no CUDA GPU. Only what scripts/gpu-check calls; a matmul keeps the
FAKE NVML board power raised until empty_cache(), as a busy GPU would draw more."""
import time

import pynvml

__version__ = "0.0+fake"
float16 = "float16"


class cuda:
    @staticmethod
    def is_available():
        return True

    @staticmethod
    def init():
        pass

    @staticmethod
    def synchronize():
        pass

    @staticmethod
    def empty_cache():
        pynvml.set_power_w(pynvml.CONFIG["idle_w"])


class Tensor:
    def __matmul__(self, other):
        pynvml.set_power_w(pynvml.CONFIG["idle_w"] + 300.0)
        time.sleep(0.001)
        return Tensor()


def randn(*shape, device=None, dtype=None):
    return Tensor()
'''


def test_gpu_check_runs_through_with_fakes(tmp_path: Path) -> None:
    """The whole script on FAKE NVML and FAKE torch (short windows): every step runs and the checks pass."""
    fakes = fake_nvml_dir(tmp_path)
    (fakes / "torch.py").write_text(FAKE_TORCH)
    env = {**os.environ, "PYTHONPATH": str(fakes), "EDGEKIT_GPU_CHECK_SECONDS": "0.3,0.5"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run([sys.executable, str(GPU_CHECK)], env=env, capture_output=True, text=True, timeout=120)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-3000:]
    for line in ("PASS: loaded power above idle", "PASS: process GPU memory while tensors live",
                 "PASS: info lists a GPU", "PASS: CPU figures labelled as such",
                 "PASS: energy not taken from the GPU board for CPU work",
                 "PASS: CUDA-only request without fallback fails at load", "cannot be exercised on this machine",
                 "sm_clock_mhz_before: 1410", "gpu-check: 0 check(s) failed"):
        assert line in out, out
