"""What a device is and what it can run, for ``edgekit devices check``.

Runs on the device with the standard library only: it must answer even where numpy or every runtime is
missing, because saying *what* is missing is its job. Each runtime is probed by importing it, which is the
only test that counts (a wheel built for numpy 1.x installed beside numpy 2 is present but does not import).
"""

from __future__ import annotations

import importlib
import os
import platform
import re
import sys
import threading
from typing import Any, Iterable, Optional

# format -> alternatives, each (distribution, modules to import); the first that imports is reported.
RUNTIME_CANDIDATES: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "executorch": (("executorch", ("torch", "executorch.runtime", "executorch.extension.pybindings.portable_lib")),),
    "onnx": (("onnxruntime", ("onnxruntime",)),),
    "tflite": (("ai-edge-litert", ("ai_edge_litert.interpreter",)),
               ("tflite-runtime", ("tflite_runtime.interpreter",))),
}


def runtime_names(fmt: str) -> str:
    """The packages that can run ``fmt``, as a user reads them: "ai-edge-litert or tflite-runtime"."""
    return " or ".join(dist for dist, _ in RUNTIME_CANDIDATES[fmt])


def probe_runtimes(formats: Optional[Iterable[str]] = None) -> dict[str, dict[str, Optional[str]]]:
    """format -> {"package", "version"} when one imports, else {"package": None, "error": why not}.

    ``formats`` limits the probe to what a run needs: importing every runtime (torch for executorch) costs
    seconds of CPU on a small board, for each benchmark run.
    """
    out: dict[str, dict[str, Optional[str]]] = {}
    wanted = set(formats) if formats is not None else set(RUNTIME_CANDIDATES)
    for fmt, candidates in RUNTIME_CANDIDATES.items():
        if fmt not in wanted:
            continue
        errors = []
        for dist, modules in candidates:
            try:
                for name in modules:
                    importlib.import_module(name)
            except Exception as exc:  # ImportError, or numpy ABI errors raised as AttributeError/RuntimeError
                errors.append(f"{dist}: {type(exc).__name__}: {_first_line(exc)}")
                continue
            out[fmt] = {"package": dist, "version": _dist_version(dist), "error": None}
            break
        else:
            out[fmt] = {"package": None, "version": None, "error": "; ".join(errors)}
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""


def _dist_version(name: str) -> Optional[str]:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


def numpy_version() -> Optional[str]:
    try:
        import numpy

        return str(numpy.__version__)
    except Exception:
        return None


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> Optional[str]:
    """x86 says ``model name``; ARM boards say ``Model`` (Raspberry Pi) or only ``Hardware``/``CPU part``."""
    fields = _cpuinfo_fields(cpuinfo)
    for key in ("model name", "Model", "Hardware", "cpu model", "Processor"):
        if fields.get(key):
            return fields[key]
    return platform.processor() or None


def mem_total_mib(meminfo: str = "/proc/meminfo") -> Optional[float]:
    try:
        with open(meminfo, encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def os_name(os_release: str = "/etc/os-release") -> str:
    try:
        with open(os_release, encoding="utf-8") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return f"{platform.system()} {platform.release()}"


_ARM = ("aarch64", "arm64", "armv7l", "armv6l", "armv8l", "arm")
_X86 = ("x86_64", "amd64", "i386", "i686")


def cpu_emulation(
    machine: Optional[str] = None,
    cpuinfo: str = "/proc/cpuinfo",
    thread_exe: Optional[str] = None,
) -> dict[str, Any]:
    """Is this CPU emulated by user-mode qemu (an arm64 Debian root run on an x86 host via binfmt_misc)?

    qemu-user answers the uname syscall and ``/proc/self/exe`` as the guest would, but not the per-thread
    ``/proc/thread-self/exe``, which the kernel resolves to the real executable: qemu itself. The second tell:
    ``/proc/cpuinfo`` is the host kernel's, so an aarch64 process reads x86 fields (``vendor_id``, ``flags``)
    there instead of ARM ones (``CPU implementer``, ``Features``). Either one marks the device emulated.
    Returns {"emulated": bool, "emulator": path or None, "evidence": [why]}.
    """
    machine = (machine or platform.machine()).lower()
    evidence = []
    emulator = None
    exe = _thread_exe(thread_exe)
    if exe and re.match(r"qemu-|.*-binfmt", os.path.basename(exe)):
        emulator = exe
        evidence.append(f"the kernel runs this process as {exe} (/proc/thread-self/exe)")
    fields = _cpuinfo_fields(cpuinfo)
    x86_fields = "vendor_id" in fields or "flags" in fields
    arm_fields = "CPU implementer" in fields or "Features" in fields
    if machine in _ARM and x86_fields and not arm_fields:
        evidence.append(f"{machine} process but /proc/cpuinfo is an x86 CPU's ({fields.get('vendor_id', '?')}, "
                        f"{fields.get('model name', '?')})")
    elif machine in _X86 and arm_fields and not x86_fields:
        evidence.append(f"{machine} process but /proc/cpuinfo is an ARM CPU's")
    return {"emulated": bool(evidence), "emulator": emulator, "evidence": evidence}


def _thread_exe(path: Optional[str]) -> Optional[str]:
    candidates = [path] if path else ["/proc/thread-self/exe", f"/proc/self/task/{threading.get_native_id()}/exe"]
    for cand in candidates:
        try:
            return os.readlink(cand)
        except OSError:
            continue
    return None


def _cpuinfo_fields(cpuinfo: str) -> dict[str, str]:
    """The first value of each field of /proc/cpuinfo (the first processor's)."""
    fields: dict[str, str] = {}
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() not in fields:
                    fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def energy_sensors(sysfs_root: str = "/") -> dict[str, Any]:
    from .sensors import describe_sources

    return describe_sources(sysfs_root)


def gpus(sysfs_root: str = "/") -> dict[str, Any]:
    """NVIDIA GPUs through NVML (name, memory; driver and CUDA driver versions), or why none."""
    try:
        from .gpu import describe_gpus

        return describe_gpus(sysfs_root)
    except Exception as exc:  # never let a GPU probe cost the rest of the answer
        return {"available": False, "reason": f"GPU probe failed: {type(exc).__name__}: {_first_line(exc)}",
                "driver": None, "cuda_driver_version": None, "devices": [], "jetson": None}


def onnxruntime_providers(probe: bool) -> tuple[Optional[list[str]], Optional[str]]:
    """(onnxruntime.get_available_providers(), None) or (None, why not). A CPU build of onnxruntime lists no
    CUDA or TensorRT provider: that is what tells a Jetson or GPU box it cannot run a GPU profile."""
    if not probe:
        return None, "not probed: onnx is not among the formats asked about"
    try:
        import onnxruntime

        return [str(p) for p in onnxruntime.get_available_providers()], None
    except Exception as exc:
        return None, f"onnxruntime does not import: {type(exc).__name__}: {_first_line(exc)}"


def tensorrt_facts(probe: bool) -> dict[str, Optional[str]]:
    """The ``tensorrt`` Python module's version and where the loader finds libnvinfer (the library
    onnxruntime's TensorrtExecutionProvider loads), or why not."""
    if not probe:
        return {"version": None, "library": None, "reason": "not probed: onnx is not among the formats asked about"}
    import ctypes.util

    try:
        library = ctypes.util.find_library("nvinfer")
    except Exception:  # find_library runs ldconfig/gcc; neither may be usable here
        library = None
    try:
        import tensorrt

        return {"version": str(getattr(tensorrt, "__version__", None) or _dist_version("tensorrt")),
                "library": library, "reason": None}
    except ModuleNotFoundError:
        reason = "tensorrt is not installed (pip install tensorrt; on a Jetson it comes with JetPack)"
    except Exception as exc:
        reason = f"tensorrt does not import: {type(exc).__name__}: {_first_line(exc)}"
    return {"version": None, "library": library, "reason": reason}


def device_info(formats: Optional[Iterable[str]] = None) -> dict[str, Any]:
    wanted = list(formats) if formats is not None else None
    onnx = wanted is None or "onnx" in wanted
    providers, providers_reason = onnxruntime_providers(onnx)
    emulation = cpu_emulation()
    return {
        "machine": platform.machine(),
        "emulated": emulation["emulated"],  # latency measured here is not the real CPU's
        "emulation": emulation,
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "mem_total_mib": mem_total_mib(),
        "os": os_name(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "numpy": numpy_version(),
        "runtimes": probe_runtimes(wanted),
        "energy": energy_sensors(),
        "gpu": gpus(),
        "onnxruntime_providers": providers,
        "onnxruntime_providers_reason": providers_reason,
        "tensorrt": tensorrt_facts(onnx),
    }
