"""GPU facts around a timed run (the answer's ``gpu`` block) and the GPUs a device has (``devices check``).

Why: a GPU figure means little without the GPU's state. A clock held down by a power cap or heat, or a
card already full of another job's memory, changes latency as much as the model does. So a GPU run records,
before and after the timed loop, what the GPU says about itself, and a clock held down for a reason other
than idling marks the row noisy, as a throttled CPU does (``conditions.py``).

Sources:

- NVML (``pynvml`` from the nvidia-ml-py package; imported only when present), for the GPU that is CUDA
  device 0 here (see ``sensors.open_nvml``): name, driver and CUDA driver versions, enforced power limit,
  SM and memory clocks, temperature, clock event ("throttle") reasons, memory in use, and this process's
  own GPU memory from ``nvmlDeviceGetComputeRunningProcesses`` matched by pid. In a container NVML lists
  the host's pids, so the process may not be found: its memory is then None, with that reason.
- A Jetson has no NVML; its GPU load and frequency come from sysfs (relative to ``sysfs_root`` so tests use
  fake trees): load in per-mille from ``sys/devices/gpu.0/load``, ``sys/devices/platform/gpu.0/load`` or
  the GPU devfreq node's ``device/load``; frequency in Hz from ``cur_freq`` of the devfreq node
  (``sys/class/devfreq/*``) whose name or ``device/of_node/name`` says gpu / ga10b (Orin) / gv11b (Xavier) /
  gp10b (TX2) / gm20b (Nano, TX1). Energy on a Jetson is the INA3221 total input rail (``sensors.py``).

Standard library only (runs on the device); nothing here raises for a missing or unreadable GPU: every item
that cannot be read is None, with the reason under its key in ``unavailable``.
"""

from __future__ import annotations

import glob
import os
from typing import Any, Dict, List, Optional, Tuple

from .sensors import SensorError, import_pynvml, nvml_text, open_nvml

MIB = 1024 * 1024

# nvmlClocksEventReason* (formerly nvmlClocksThrottleReason*) bits, from nvml.h.
THROTTLE_BITS = (
    (0x1, "GpuIdle"), (0x2, "ApplicationsClocksSetting"), (0x4, "SwPowerCap"), (0x8, "HwSlowdown"),
    (0x10, "SyncBoost"), (0x20, "SwThermalSlowdown"), (0x40, "HwThermalSlowdown"), (0x80, "HwPowerBrakeSlowdown"),
    (0x100, "DisplayClockSetting"),
)
# Reasons that mean the clocks were held below what the work asked for: power cap, heat, hardware slowdown.
# GpuIdle, ApplicationsClocksSetting, SyncBoost and DisplayClockSetting are settings or idling, not disturbances.
NOISY_THROTTLE = ("SwPowerCap", "HwSlowdown", "SwThermalSlowdown", "HwThermalSlowdown", "HwPowerBrakeSlowdown")

JETSON_LOAD_FILES = ("sys/devices/gpu.0/load", "sys/devices/platform/gpu.0/load")
DEVFREQ_GLOB = "sys/class/devfreq/*"
JETSON_GPU_NAMES = ("gpu", "ga10b", "gv11b", "gp10b", "gm20b")

GPU_KEYS = (
    "available", "reason", "source", "selected_by", "index", "name", "uuid", "pci_bus_id", "driver", "cuda_driver_version",
    "power_limit_w", "memory_mib_total", "memory_mib_process", "memory_mib_used_total",
    "memory_mib_used_total_before_load", "sm_clock_mhz_before", "sm_clock_mhz_after", "mem_clock_mhz_before",
    "mem_clock_mhz_after", "temp_c_before", "temp_c_after", "throttle_reasons_before", "throttle_reasons",
    "jetson_gpu_load_pct_before", "jetson_gpu_load_pct_after", "jetson_gpu_freq_mhz_before",
    "jetson_gpu_freq_mhz_after", "unavailable",
)


def throttle_names(mask: int) -> List[str]:
    """Names of the set clock event reason bits, low bits first; unknown bits as hex."""
    names = [name for bit, name in THROTTLE_BITS if mask & bit]
    rest = mask & ~sum(bit for bit, _ in THROTTLE_BITS)
    return names + ([f"0x{rest:x}"] if rest else [])


def cuda_version_text(value: int) -> str:
    """NVML's CUDA driver version integer (12040) as CUDA writes it ("12.4")."""
    return f"{value // 1000}.{(value % 1000) // 10}"


def not_measured(reason: str) -> Dict[str, Any]:
    """The ``gpu`` block of a run that did not look at the GPU (a CPU run)."""
    block: Dict[str, Any] = dict.fromkeys(GPU_KEYS)
    block.update(available=False, reason=reason, unavailable={})
    return block


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# ---- Jetson sysfs -----------------------------------------------------------------------------------


def _read_text(path: str) -> str:
    with open(path, encoding="ascii", errors="replace") as f:
        return f.read().strip().strip("\x00").strip()


def jetson_gpu_files(root: str) -> Tuple[Optional[str], Optional[str]]:
    """(the GPU load file, the GPU devfreq folder) under ``root``, each None when absent."""
    devfreq = None
    for d in sorted(glob.glob(os.path.join(root, DEVFREQ_GLOB))):
        names = [os.path.basename(d).lower()]
        try:
            names.append(_read_text(os.path.join(d, "device/of_node/name")).lower())
        except OSError:
            pass
        if any(gpu in name for name in names for gpu in JETSON_GPU_NAMES):
            devfreq = d
            break
    loads = [os.path.join(root, rel) for rel in JETSON_LOAD_FILES]
    if devfreq is not None:
        loads.append(os.path.join(devfreq, "device/load"))
    load = next((p for p in loads if os.path.isfile(p)), None)
    return load, devfreq


# ---- the probe around a run -------------------------------------------------------------------------


class GpuProbe:
    """Opened before the model loads (so the GPU memory in use before it is known), snapshot before and after
    the timed loop, then ``summary``. ``use_nvml`` False: Jetson sysfs only."""

    def __init__(self, sysfs_root: str = "/", use_nvml: bool = True) -> None:
        self.root = sysfs_root
        self.nvml: Any = None
        self.handle: Any = None
        self.nvml_reason: Optional[str] = None if use_nvml else "NVML not asked for"
        self.facts: Dict[str, Any] = {}
        self.unavailable: Dict[str, str] = {}
        if use_nvml:
            try:
                self.nvml, self.handle, how = open_nvml()
                self.facts = self._static_facts(how)
            except SensorError as exc:
                self.nvml_reason = str(exc)
        self.load_file, self.devfreq = jetson_gpu_files(sysfs_root)
        memory = self._nvml_item("memory_mib_total", lambda: self.nvml.nvmlDeviceGetMemoryInfo(self.handle))
        self.facts["memory_mib_total"] = None if memory is None else memory.total / MIB
        self.used_before_load = None if memory is None else memory.used / MIB

    def _nvml_item(self, key: str, read: Any) -> Any:
        if self.nvml is None:
            return None
        try:
            return read()
        except Exception as exc:  # pynvml.NVMLError (NotSupported on some boards), or anything odd
            self.unavailable[key] = _why(exc)
            return None

    def _static_facts(self, how: str) -> Dict[str, Any]:
        nvml, h = self.nvml, self.handle
        item = self._nvml_item
        return {
            "index": item("index", lambda: int(nvml.nvmlDeviceGetIndex(h))),
            "name": item("name", lambda: nvml_text(nvml.nvmlDeviceGetName(h))),
            "uuid": item("uuid", lambda: nvml_text(nvml.nvmlDeviceGetUUID(h))),
            "pci_bus_id": item("pci_bus_id", lambda: nvml_text(nvml.nvmlDeviceGetPciInfo(h).busId)),
            "driver": item("driver", lambda: nvml_text(nvml.nvmlSystemGetDriverVersion())),
            "cuda_driver_version": item("cuda_driver_version",
                                        lambda: cuda_version_text(int(nvml.nvmlSystemGetCudaDriverVersion()))),
            "power_limit_w": item("power_limit_w", lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0),
            "selected_by": how,
        }

    def _memory_used_mib(self) -> float:
        return float(self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used) / MIB

    def _throttle_mask(self) -> int:
        nvml = self.nvml
        read = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
            nvml.nvmlDeviceGetCurrentClocksThrottleReasons
        return int(read(self.handle))

    def snapshot(self, what: str, with_process: bool = False) -> Dict[str, Any]:
        """The GPU's state now; ``what`` ("before"/"after") keys the reasons of what could not be read."""
        nvml, h = self.nvml, self.handle
        item = self._nvml_item
        snap: Dict[str, Any] = {
            "sm_clock_mhz": item(f"sm_clock_mhz_{what}",
                                 lambda: int(nvml.nvmlDeviceGetClockInfo(h, getattr(nvml, "NVML_CLOCK_SM", 1)))),
            "mem_clock_mhz": item(f"mem_clock_mhz_{what}",
                                  lambda: int(nvml.nvmlDeviceGetClockInfo(h, getattr(nvml, "NVML_CLOCK_MEM", 2)))),
            "temp_c": item(f"temp_c_{what}",
                           lambda: int(nvml.nvmlDeviceGetTemperature(h, getattr(nvml, "NVML_TEMPERATURE_GPU", 0)))),
            "throttle": item(f"throttle_reasons_{what}", lambda: throttle_names(self._throttle_mask())),
            "memory_used_mib": item(f"memory_mib_used_total_{what}", self._memory_used_mib),
            "jetson_load_pct": self._jetson(f"jetson_gpu_load_pct_{what}", self.load_file, 0.1),
            "jetson_freq_mhz": self._jetson(f"jetson_gpu_freq_mhz_{what}",
                                            self.devfreq and os.path.join(self.devfreq, "cur_freq"), 1e-6),
        }
        if with_process:
            snap["memory_process_mib"] = self._process_memory_mib()
        return snap

    def _jetson(self, key: str, path: Optional[str], scale: float) -> Optional[float]:
        if not path:
            return None
        try:
            return int(_read_text(path)) * scale
        except (OSError, ValueError) as exc:
            self.unavailable[key] = f"{path}: {_why(exc)}"
            return None

    def _process_memory_mib(self) -> Optional[float]:
        if self.nvml is None:
            return None
        key = "memory_mib_process"
        try:
            procs = list(self.nvml.nvmlDeviceGetComputeRunningProcesses(self.handle))
        except Exception as exc:
            self.unavailable[key] = f"nvmlDeviceGetComputeRunningProcesses: {_why(exc)}"
            return None
        pid = os.getpid()
        mine = [p for p in procs if getattr(p, "pid", None) == pid]
        if not mine:
            pids = ", ".join(str(getattr(p, "pid", "?")) for p in procs) or "none"
            self.unavailable[key] = (f"this process (pid {pid}) is not among the GPU's compute processes as NVML "
                                     f"lists them (pids: {pids}); in a container NVML lists the host's pids: "
                                     "compare memory_mib_used_total with memory_mib_used_total_before_load")
            return None
        used: List[int] = [u for u in (getattr(p, "usedGpuMemory", None) for p in mine) if u is not None]
        if len(used) < len(mine):
            self.unavailable[key] = "NVML does not report per-process memory here (usedGpuMemory not available)"
            return None
        return sum(used) / MIB

    def summary(self, before: Dict[str, Any], after: Dict[str, Any]) -> Dict[str, Any]:
        """The ``gpu`` block (keys: GPU_KEYS)."""
        jetson = any(s.get(k) is not None for s in (before, after) for k in ("jetson_load_pct", "jetson_freq_mhz"))
        sources = (["nvml"] if self.nvml is not None else []) + (["jetson-sysfs"] if jetson else [])
        block: Dict[str, Any] = dict.fromkeys(GPU_KEYS)
        block.update({k: v for k, v in self.facts.items() if k in GPU_KEYS})
        unavailable = dict(self.unavailable)
        if self.nvml is None:
            unavailable["nvml"] = self.nvml_reason or "not opened"
        no_jetson = (f"no Jetson GPU load ({', '.join(JETSON_LOAD_FILES)}) or GPU devfreq node ({DEVFREQ_GLOB}) "
                     f"readable under {self.root}")
        if not jetson and self.nvml is None:  # on an NVML GPU a missing Jetson node is no news
            unavailable["jetson"] = no_jetson
        block.update({
            "available": bool(sources),
            "reason": None if sources else f"{self.nvml_reason}; {no_jetson}",
            "source": "+".join(sources) or None,
            "memory_mib_process": after.get("memory_process_mib"),
            "memory_mib_used_total": after.get("memory_used_mib"),
            "memory_mib_used_total_before_load": self.used_before_load,
            "sm_clock_mhz_before": before.get("sm_clock_mhz"), "sm_clock_mhz_after": after.get("sm_clock_mhz"),
            "mem_clock_mhz_before": before.get("mem_clock_mhz"), "mem_clock_mhz_after": after.get("mem_clock_mhz"),
            "temp_c_before": before.get("temp_c"), "temp_c_after": after.get("temp_c"),
            "throttle_reasons_before": before.get("throttle"), "throttle_reasons": after.get("throttle"),
            "jetson_gpu_load_pct_before": before.get("jetson_load_pct"),
            "jetson_gpu_load_pct_after": after.get("jetson_load_pct"),
            "jetson_gpu_freq_mhz_before": before.get("jetson_freq_mhz"),
            "jetson_gpu_freq_mhz_after": after.get("jetson_freq_mhz"),
            "unavailable": unavailable,
        })
        return block


def noisy_reasons(block: Dict[str, Any]) -> List[str]:
    """Reasons to call a GPU run noisy: clocks held down by a power cap, heat or a hardware slowdown."""
    out = []
    for key, when in (("throttle_reasons_before", "before"), ("throttle_reasons", "after")):
        bad = [r for r in (block.get(key) or []) if r in NOISY_THROTTLE]
        if bad:
            out.append(f"GPU clocks held down {when} the run: {', '.join(bad)} (NVML clock event reasons)")
    return out


# ---- devices check ----------------------------------------------------------------------------------


def describe_gpus(sysfs_root: str = "/") -> Dict[str, Any]:
    """For ``devices check``: the NVIDIA GPUs NVML lists, or why none; and a Jetson's GPU sysfs nodes."""
    load, devfreq = jetson_gpu_files(sysfs_root)
    out: Dict[str, Any] = {"available": False, "reason": None, "driver": None, "cuda_driver_version": None,
                           "devices": [], "jetson": {"load_file": load, "devfreq": devfreq}}
    try:
        nvml = import_pynvml()
        nvml.nvmlInit()
    except SensorError as exc:
        out["reason"] = str(exc)
    except Exception as exc:
        out["reason"] = f"no NVIDIA GPU (nvmlInit failed: {exc})"
    else:
        try:
            out["driver"] = nvml_text(nvml.nvmlSystemGetDriverVersion())
            out["cuda_driver_version"] = cuda_version_text(int(nvml.nvmlSystemGetCudaDriverVersion()))
            for i in range(int(nvml.nvmlDeviceGetCount())):
                h = nvml.nvmlDeviceGetHandleByIndex(i)
                out["devices"].append({"index": i, "name": nvml_text(nvml.nvmlDeviceGetName(h)),
                                       "memory_mib_total": nvml.nvmlDeviceGetMemoryInfo(h).total / MIB})
            out["available"] = bool(out["devices"])
            out["reason"] = None if out["devices"] else "NVML lists no GPU"
        except Exception as exc:
            out["reason"] = f"NVML query failed: {_why(exc)}"
        finally:
            try:
                nvml.nvmlShutdown()
            except Exception:
                pass
    if not out["available"] and (load or devfreq):
        out["available"] = True  # a Jetson: its GPU is known from sysfs
        out["reason"] = f"{out['reason']}; Jetson GPU found in sysfs"
    return out
