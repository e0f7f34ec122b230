"""FAKE NVML for tests: this machine has no NVIDIA GPU, no driver and no nvidia-ml-py.

A stand-in for the ``pynvml`` module of nvidia-ml-py, with the functions the agent calls and the same
names, argument order and units (mJ, mW, MHz, degrees C, bytes). Tests load this file as ``pynvml``
(``monkeypatch.setitem(sys.modules, "pynvml", ...)``), or copy it to ``<tmp>/pynvml.py`` and put that folder on
``PYTHONPATH`` for an agent run in a subprocess; there ``FAKE_PYNVML_CONFIG`` (JSON) overrides ``CONFIG``.

The energy counter is exact: it integrates the fake board power over time, and ``set_power_w`` changes the
power (a test's "inference" raises it while it works), so a test knows the energy the meter must find.
"""

from __future__ import annotations

import json
import os
import threading
import time
from types import SimpleNamespace
from typing import Any, Dict, List

FAKE = True  # lets a test assert it loaded this file and not a real pynvml

NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
MIB = 1024 * 1024

CONFIG: Dict[str, Any] = {
    "init_error": None,  # a string: nvmlInit raises NVMLError with it (no driver)
    "name": "FAKE NVIDIA H200 (test double)",
    "driver": "999.99.99",
    "cuda_driver_version": 12040,
    "power_limit_mw": 700_000,
    "total_mib": 143_771,
    "used_mib": [512.0, 2048.0],  # successive reads of the memory in use (the last one repeats)
    "energy_counter": True,  # False: nvmlDeviceGetTotalEnergyConsumption is "Not Supported" (pre-Volta)
    "idle_w": 80.0,
    "sm_clock_mhz": [1410, 1980],
    "mem_clock_mhz": [2619, 3201],
    "temp_c": [41, 63],
    "throttle": [0x1, 0x0],  # GpuIdle before, nothing after
    "process_mib": 1234.0,
    "pid_visible": True,  # False: NVML lists another pid (a container's view)
    "uuid": "GPU-00000000-fake-0000-0000-000000000000",
}
CONFIG.update(json.loads(os.environ.get("FAKE_PYNVML_CONFIG", "{}")))


class NVMLError(Exception):
    """As pynvml.NVMLError: the NVML return code's text."""


class NVMLError_NotSupported(NVMLError):
    pass


_lock = threading.Lock()
_state: Dict[str, Any] = {"power_w": CONFIG["idle_w"], "energy_j": 1_000_000.0, "since": time.perf_counter(),
                          "reads": {}, "inits": 0}


def _energy_now() -> float:
    now = time.perf_counter()
    return _state["energy_j"] + _state["power_w"] * (now - _state["since"])


def set_power_w(watts: float) -> None:
    """Change the fake board power from now on (the counter keeps the energy drawn so far)."""
    with _lock:
        _state["energy_j"] = _energy_now()
        _state["since"] = time.perf_counter()
        _state["power_w"] = float(watts)


def _next(key: str) -> Any:
    """Successive values of a list setting: the first read gets the first, the last one repeats."""
    values = CONFIG[key]
    if not isinstance(values, list):
        return values
    n = _state["reads"].get(key, 0)
    _state["reads"][key] = n + 1
    return values[min(n, len(values) - 1)]


def _handle(handle: Any) -> None:
    if handle != "fake-gpu-0":
        raise NVMLError("Invalid Argument")


def nvmlInit() -> None:
    if CONFIG["init_error"]:
        raise NVMLError(CONFIG["init_error"])
    _state["inits"] += 1


def nvmlShutdown() -> None:
    _state["inits"] -= 1


def nvmlDeviceGetCount() -> int:
    return 1


def nvmlDeviceGetHandleByIndex(index: int) -> str:
    if index != 0:
        raise NVMLError("Invalid Argument")
    return "fake-gpu-0"


def nvmlDeviceGetHandleByUUID(uuid: str) -> str:
    if uuid != CONFIG["uuid"]:
        raise NVMLError("Not Found")
    return "fake-gpu-0"


def nvmlDeviceGetIndex(handle: Any) -> int:
    _handle(handle)
    return 0


def nvmlDeviceGetName(handle: Any) -> bytes:
    _handle(handle)
    return CONFIG["name"].encode()  # older pynvml returns bytes: the agent must decode


def nvmlDeviceGetUUID(handle: Any) -> str:
    return CONFIG["uuid"]


def nvmlDeviceGetPciInfo(handle: Any) -> Any:
    return SimpleNamespace(busId="00000000:FA:KE.0")


def nvmlSystemGetDriverVersion() -> str:
    return CONFIG["driver"]


def nvmlSystemGetCudaDriverVersion() -> int:
    return CONFIG["cuda_driver_version"]


def nvmlDeviceGetEnforcedPowerLimit(handle: Any) -> int:
    return CONFIG["power_limit_mw"]


def nvmlDeviceGetMemoryInfo(handle: Any) -> Any:
    used = _next("used_mib") * MIB
    total = CONFIG["total_mib"] * MIB
    return SimpleNamespace(total=total, used=used, free=total - used)


def nvmlDeviceGetTotalEnergyConsumption(handle: Any) -> int:
    _handle(handle)
    if not CONFIG["energy_counter"]:
        raise NVMLError_NotSupported("Not Supported")
    with _lock:
        return int(_energy_now() * 1000)  # millijoules


def nvmlDeviceGetPowerUsage(handle: Any) -> int:
    _handle(handle)
    with _lock:
        return int(_state["power_w"] * 1000)  # milliwatts


def nvmlDeviceGetClockInfo(handle: Any, clock: int) -> int:
    return _next("sm_clock_mhz" if clock == NVML_CLOCK_SM else "mem_clock_mhz")


def nvmlDeviceGetTemperature(handle: Any, sensor: int) -> int:
    return _next("temp_c")


def nvmlDeviceGetCurrentClocksEventReasons(handle: Any) -> int:
    return _next("throttle")


def nvmlDeviceGetComputeRunningProcesses(handle: Any) -> List[Any]:
    pid = os.getpid() if CONFIG["pid_visible"] else 999_999
    return [SimpleNamespace(pid=pid, usedGpuMemory=int(CONFIG["process_mib"] * MIB))]
