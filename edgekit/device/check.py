"""``check_device``: can this device run what its profile calls for, and if not, what is missing."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgekit.config.device import LocalDevice, SshDevice, device_profile, get_device, with_trust
from edgekit.config.profile import Profile


@dataclass
class DeviceCheck:
    """The device's facts (from the agent's ``info`` on it) and what its profile needs that it lacks."""

    device: str
    kind: str
    profile: str
    info: dict[str, Any]
    missing: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    runnable_targets: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def check_device(
    device: str | LocalDevice | SshDevice,
    *,
    profile: str | Path | Profile | None = None,
    devices_file: str | Path | None = None,
    trust_new_host: bool = False,
) -> DeviceCheck:
    """Connect, install the agent, ask it what the device is; raises DeviceError if it cannot be reached."""
    from edgekit.device.client import describe_device, install_agent
    from edgekit.transport import open_transport

    dev = with_trust(get_device(device, devices_file), trust_new_host)
    prof = device_profile(dev, profile)
    with open_transport(dev) as transport:
        info = describe_device(transport, install_agent(transport))
    check = DeviceCheck(dev.name, dev.kind, prof.name, info)
    _judge(check, prof)
    return check


CLOCK_SKEW_WARN_S = 120.0  # beyond a link's latency and a little drift: the clock is not being kept


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def _judge(check: DeviceCheck, prof: Profile) -> None:
    import shlex

    from edgekit.agent.device_info import runtime_names
    from edgekit.config.target import load_target

    info, arch = check.info, check.info.get("machine", "?")
    if info.get("numpy") is None:
        check.missing.append(f"numpy is not installed for {info.get('python_executable')}: every runtime needs it")
    for name in prof.targets:
        target = load_target(name)
        runtime = info.get("runtimes", {}).get(target.format, {})
        if runtime.get("package"):
            check.runnable_targets.append(name)
            continue
        wanted = runtime_names(target.format)
        packages = target.runtime_packages.get(arch)
        fix = f"pip install {' '.join(shlex.quote(p) for p in packages)}" if packages else f"install {wanted}"
        check.missing.append(f"target {name}: {wanted} does not import ({runtime.get('error') or 'not installed'}); "
                             f"on the device: {fix}")
    emulation = info.get("emulation") or {}
    if info.get("emulated"):
        check.warnings.append(f"the CPU is emulated ({'; '.join(emulation.get('evidence') or ['qemu-user'])}): "
                              f"runtimes and results are {arch}'s, but latency, memory and energy figures are "
                              "meaningless as measurements of the real hardware")
    if prof.arch.lower() != str(arch).lower():
        check.warnings.append(f"profile {prof.name!r} is for {prof.arch} but the device is {arch}: its quantization "
                              "and threading choices may not fit; pick another profile for this device")
    cores = info.get("cores")
    if isinstance(cores, int) and prof.threads > cores:
        check.warnings.append(f"profile {prof.name!r} runs {prof.threads} threads but the device has {cores} cores: "
                              "oversubscribed runtimes spin and latency suffers; use --threads or another profile")
    skew = info.get("clock_skew_s")
    if isinstance(skew, (int, float)) and abs(skew) > CLOCK_SKEW_WARN_S:
        check.warnings.append(f"the device's clock is {_duration(abs(skew))} {'ahead of' if skew > 0 else 'behind'} "
                              "this host's: latency is unaffected (monotonic clocks), but times the device reports "
                              "(logs, file dates) are off; set its clock (timedatectl set-ntp true)")
    _judge_accelerator(check, prof)
    if not info.get("energy", {}).get("available"):
        check.warnings.append(f"no energy sensor: {info.get('energy', {}).get('reason', 'unknown')}")


def _judge_accelerator(check: DeviceCheck, prof: Profile) -> None:
    """A GPU profile on a device whose onnxruntime cannot reach the GPU: say which providers are missing and
    what installs them; its rows would be CPU figures (flagged, never recommended)."""
    from edgekit.agent.execution import INSTALL_HINTS

    if prof.accelerator == "none":
        return
    info = check.info
    available = info.get("onnxruntime_providers")
    if not isinstance(available, list):
        check.missing.append(f"profile {prof.name!r} runs on {prof.accelerator} through onnxruntime, which is not "
                             f"usable here ({info.get('onnxruntime_providers_reason') or 'not reported'})")
        return
    for provider in prof.execution.providers:
        if provider != "CPUExecutionProvider" and provider not in available:
            check.missing.append(f"execution provider {provider} (profile {prof.name!r}) is not in the device's "
                                 f"onnxruntime (it has {', '.join(available) or 'none'}): "
                                 f"{INSTALL_HINTS.get(provider, 'install it')}")
    gpu: dict[str, Any] = info["gpu"] if isinstance(info.get("gpu"), dict) else {}
    if not gpu.get("available") and not gpu.get("jetson"):
        check.warnings.append(f"no GPU readings ({gpu.get('reason') or 'not reported'}): GPU memory, clocks and "
                              "energy will be unavailable (discrete NVIDIA GPUs: pip install nvidia-ml-py)")
