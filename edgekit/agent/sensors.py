"""Energy and power sensors of a device: finding them, checking they can be read, and reading them.

Runs on the device: standard library only, Python >= 3.9. ``meters.py`` measures a timed window with the
sensor ``find_sensor`` picks here; ``describe_sources`` tells ``devices check`` what a run would use.

Why hand-written: these sensors are kernel files (powercap, hwmon, the INA3221 drivers) and a vendor
command (``vcgencmd``), and no maintained library reads them on a bare device with the standard library
only. Reading one is a file read or a subprocess call; what needs care, and is written down here, is which
zones or rails to use, because summing the wrong ones would count energy twice.

Sources, in order of preference (all paths relative to ``sysfs_root`` so tests can use fake trees):

0. ``nvml``: the NVIDIA GPU's own board energy through NVML (``pynvml``, from the nvidia-ml-py package,
   imported only when present): ``nvmlDeviceGetTotalEnergyConsumption`` (a millijoule counter since the
   driver loaded; Volta and later) read at the window's edges, else ``nvmlDeviceGetPowerUsage`` (mW) sampled.
   Tried first, and only, when the run's work is on an NVIDIA GPU (``accelerator="cuda"``: the agent passes
   it when the ONNX session's nodes run on the CUDA or TensorRT provider, not merely when the profile asks
   for a GPU): the work of a GPU run is on the GPU board, so its row must carry the GPU's energy even on a
   machine with RAPL. A CPU run's work is not on the GPU board, so NVML is never used for one, even where no
   CPU sensor is readable, nor for a GPU request that fell back to the CPU: its figure would be the idle
   GPU's, under a real-looking label. The GPU is the one CUDA calls device 0 (the
   first entry of ``CUDA_VISIBLE_DEVICES``, an NVML index or a GPU UUID, when it is set; NVML numbers GPUs
   in PCI order, CUDA by default fastest first: on a machine with mixed GPUs set
   ``CUDA_DEVICE_ORDER=PCI_BUS_ID``). A Jetson has no NVML: there the INA3221's total input rail (below),
   which includes the GPU, measures a GPU run.
1. ``rapl``: Linux powercap, top-level package zones only: ``sys/class/powercap/intel-rapl:N/energy_uj``.
   The subzones ``intel-rapl:N:M`` (core, uncore, dram) are parts of a package, so summing them too would
   count energy twice. The counter wraps at ``max_energy_range_uj``; one wrap per window is corrected.
2. ``jetson-ina3221``: the INA3221 power monitor of a Jetson module, through hwmon
   (``sys/class/hwmon/hwmonN`` whose ``name`` is ``ina3221``: ``inK_label``, ``inK_input`` in mV,
   ``currK_input`` in mA, K = 1..3) or the older L4T iio driver
   (``sys/bus/i2c/drivers/ina3221x/*/iio:device*/``: ``rail_name_K``, ``in_powerK_input`` in mW).
   Only the module's total input rail is used (``VDD_IN``, ``POM_5V_IN``, ``5V_IN``, else the single label
   ending in ``_IN``): the other rails (``VDD_CPU_GPU_CV``, ``VDD_SOC``, ...) are parts of that input, so
   adding them would count power twice. A module without such a rail (e.g. AGX Orin's labels) is not used.
3. ``pi5-pmic``: the Raspberry Pi 5 PMIC via ``vcgencmd pmic_read_adc``: the sum of V x A over the rails
   that report both a current ``X_A`` and a voltage ``X_V``. This is what the PMIC supplies; the PMIC's own
   conversion losses and the 5 V peripherals (USB, fan) are not in it, so it is below the input power.
4. ``hwmon``: a generic hwmon energy counter ``energy*_input`` (uJ; package/socket labels preferred, never
   summed with per-core counters), else one generic power sensor ``power*_input`` (uW, instantaneous).
5. ``external``: a command (argv from the config) printing one reading per call: ``J <joules>`` or
   ``<joules> J`` (a cumulative count, used like a counter) or ``W <watts>`` / ``<watts> W`` (sampled).
   If configured it is the only source tried (the user asked for it); if it fails nothing replaces it.

A sensor's ``kind`` says how the meter uses it: a ``"counter"`` (cumulative energy) is read at the edges
of the window, a ``"power"`` sensor (instantaneous watts) is sampled throughout.

Interface used by the meter and by ``device_info.py``::

    sensor, reason, checked = find_sensor(sysfs_root, vcgencmd, external, command_timeout_s, accelerator)
    describe_sources(sysfs_root)  # {"available", "source", "reason", "checked"}
    nvml, handle, how = open_nvml()  # also used by gpu.py for the GPU facts of a run
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

# ---- constants ----------------------------------------------------------------------------------------

SOURCE_NAMES = ("nvml", "rapl", "jetson-ina3221", "pi5-pmic", "hwmon", "external")
COMMAND_TIMEOUT_S = 5.0  # default limit per call of vcgencmd or the external command

RAPL_GLOB = "sys/class/powercap/intel-rapl:*"
HWMON_DIR_GLOB = "sys/class/hwmon/hwmon*"
INA3221_I2C_GLOB = "sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*"
INA3221X_IIO_GLOB = "sys/bus/i2c/drivers/ina3221x/*/iio:device*"
_RAPL_PACKAGE_ZONE = re.compile(r"^intel-rapl:\d+$")
_PACKAGE_LABEL = re.compile(r"socket|package|pkg", re.IGNORECASE)
# Jetson total-input rails, best first: VDD_IN (Orin, Nano docs, TX1/TX2), POM_5V_IN (Nano, TX2 kernels),
# 5V_IN (Xavier NX docs). Any other single label ending in _IN is accepted as a last resort.
INA3221_INPUT_RAILS = ("VDD_IN", "POM_5V_IN", "5V_IN")

# RAPL updates its counters about every millisecond (976 us on Intel); a read can be that stale.
RAPL_UPDATE_INTERVAL_S = 1e-3
# hwmon drivers may publish ``update_interval`` (ms); without it we assume the RAPL-like 1 ms and say so.
HWMON_DEFAULT_UPDATE_INTERVAL_S = 1e-3
COUNTER_RESOLUTION_UJ = 1  # sysfs counters count whole microjoules
# NVML documents neither how often the energy counter nor the power reading is refreshed; public
# measurements put the power reading at tens of ms to a 1 s average depending on the GPU, so the error bar
# assumes 100 ms for the counter, and the note says so.
NVML_UPDATE_INTERVAL_S = 0.1
NVML_RESOLUTION_J = 1e-3  # the counter counts whole millijoules


# ---- counter arithmetic and sysfs reads ---------------------------------------------------------------


class CounterError(ValueError):
    """A counter reading that cannot be turned into energy (e.g. it went backwards with no wrap range)."""


class SensorError(Exception):
    """A sensor that answered, but not with a reading (a command failed, its output does not parse)."""


def read_uj(path: Path) -> int:
    """Read an integer sysfs file. Raises OSError (PermissionError for root-only files) or ValueError."""
    return int(_read_text(path).strip())


def _read_text(path: Path) -> str:
    """The one place sysfs is read (tests replace it to simulate root-only files)."""
    with open(path, encoding="ascii") as f:
        return f.read()


def _read_optional(path: Path) -> str:
    try:
        return _read_text(path).strip()
    except (OSError, ValueError):
        return ""


def _read_int(path: Path) -> Optional[int]:
    try:
        return int(_read_text(path).strip())
    except (OSError, ValueError):
        return None


def counter_delta_uj(before: int, after: int, max_range_uj: Optional[int]) -> int:
    """after - before, corrected for one wrap of a counter that restarts from 0 past ``max_range_uj``.

    The kernel's counter is raw_count * unit with max_range = (2**32 - 1) * unit, so the exact correction
    is max_range + one unit; the missing unit (~15-60 uJ) is far below the error bar and is ignored.
    More than one wrap per window cannot be seen; with RAPL's ~262 kJ range that needs a window longer
    than range / power (over 40 minutes at 100 W), far beyond any benchmark window.
    """
    delta = after - before
    if delta >= 0:
        return delta
    if not max_range_uj:
        raise CounterError(f"counter went backwards ({before} -> {after} uJ) and has no known wrap range")
    return delta + max_range_uj


def _probe(path: Path, permission_hint: str) -> str:
    """'' if the file reads as an integer, otherwise what is wrong with it."""
    try:
        read_uj(path)
        return ""
    except PermissionError:
        return f"{path}: permission denied ({permission_hint})"
    except (OSError, ValueError) as exc:
        return f"{path}: {type(exc).__name__}: {exc}"


# ---- commands (vcgencmd, external meters) ------------------------------------------------------------


def _resolve_command(command: str) -> Optional[str]:
    """The executable's path: looked up on PATH for a bare name; None when missing or not executable."""
    if os.sep in command or (os.altsep and os.altsep in command):
        return command if os.path.isfile(command) and os.access(command, os.X_OK) else None
    return shutil.which(command)


def run_command(argv: List[str], timeout_s: float) -> str:
    """stdout of one call; SensorError on a missing program, timeout or non-zero exit.

    stdin is /dev/null: the agent's own stdin must never be read by a meter command.
    """
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise SensorError(f"{argv[0]} did not answer within {timeout_s} s") from None
    except OSError as exc:
        raise SensorError(f"cannot run {argv[0]}: {type(exc).__name__}: {exc}") from None
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip())[-300:]
        raise SensorError(f"{argv[0]} exited with status {proc.returncode}: {tail!r}")
    return proc.stdout


_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_PMIC_LINE = re.compile(r"^\s*([A-Za-z0-9_]+)_([AV])\b[^=]*=\s*(" + _NUMBER + r")\s*([AV]?)\s*$")
_EXTERNAL_LINE = re.compile(
    r"^\s*(?:([JjWw])\s*[:=]?\s*(" + _NUMBER + r")|(" + _NUMBER + r")\s*([JjWw]))\s*$")


def parse_pmic_output(text: str) -> dict:
    """{rail: watts} from ``vcgencmd pmic_read_adc`` output, for rails with both X_A and X_V lines.

    Lines look like ``   VDD_CORE_A current(7)=2.02200000A`` and ``   VDD_CORE_V volt(15)=0.88000000V``;
    voltage-only lines (``EXT5V_V``, ``BATT_V``) have no current and are not power.
    """
    amps: dict = {}
    volts: dict = {}
    for line in text.splitlines():
        m = _PMIC_LINE.match(line)
        if not m:
            continue
        rail, kind, value, unit = m.groups()
        if unit and unit != kind:
            continue  # "X_A ...=1.0V" is not a reading we understand
        (amps if kind == "A" else volts)[rail] = float(value)
    return {rail: volts[rail] * amps[rail] for rail in sorted(set(amps) & set(volts))}


def parse_external_reading(text: str) -> Tuple[str, float, float]:
    """(unit "J" or "W", value, resolution) from an external meter's output (its last non-empty line).

    Accepts ``J 12.5``, ``12.5 J``, ``12.5J``, ``W 3.2``, ``3.2 W``; the resolution is the printed precision
    (``12.50`` -> 0.01). SensorError for anything else.
    """
    lines = [ln for ln in text.splitlines() if ln.strip()]
    m = _EXTERNAL_LINE.match(lines[-1]) if lines else None
    if not m:
        raise SensorError(f"external meter printed {text.strip()[-200:]!r}, expected 'J <joules>' or 'W <watts>'")
    unit = (m.group(1) or m.group(4)).upper()
    number = m.group(2) or m.group(3)
    try:
        exponent = Decimal(number).as_tuple().exponent
    except InvalidOperation:  # pragma: no cover - the regex only lets numbers through
        raise SensorError(f"external meter printed a bad number {number!r}") from None
    value = float(number)
    if not math.isfinite(value):
        raise SensorError(f"external meter printed a non-finite number {number!r}")
    return unit, value, 10.0 ** int(exponent)


# ---- sensors ------------------------------------------------------------------------------------------


class Sensor:
    """A named source; ``kind`` is "counter" (read at the window's edges) or "power" (sampled)."""

    name = ""
    kind = ""

    def __init__(self, detail: str, update_interval_s: Optional[float], notes: Optional[List[str]] = None):
        self.detail = detail
        self.update_interval_s = update_interval_s  # the sensor's own refresh period, when known
        self.notes = list(notes or [])

    @property
    def source(self) -> str:
        return f"{self.name}: {self.detail}"


class CounterSensor(Sensor):
    kind = "counter"
    resolution_j = COUNTER_RESOLUTION_UJ * 1e-6

    def read(self) -> Any:
        raise NotImplementedError

    def delta_j(self, before: Any, after: Any) -> float:
        raise NotImplementedError


class PowerSensor(Sensor):
    kind = "power"

    def read_w(self) -> float:
        raise NotImplementedError


@dataclass
class Counter:
    path: Path  # file holding a cumulative energy count in microjoules
    label: str
    max_range_uj: Optional[int] = None  # the counter wraps past this; None: not known (64-bit hwmon)


class SysfsCounters(CounterSensor):
    """RAPL package zones or hwmon energy counters, summed."""

    def __init__(self, name: str, counters: List[Counter], update_interval_s: float,
                 notes: Optional[List[str]] = None):
        self.name = name
        self.counters = counters
        super().__init__(", ".join(f"{c.path} ({c.label})" for c in counters), update_interval_s, notes)
        self.resolution_j = COUNTER_RESOLUTION_UJ * 1e-6 * len(counters)

    def read(self) -> List[int]:
        return [read_uj(c.path) for c in self.counters]

    def delta_j(self, before: List[int], after: List[int]) -> float:
        total = sum(counter_delta_uj(b, a, c.max_range_uj) for c, b, a in zip(self.counters, before, after))
        return total * 1e-6


class HwmonPower(PowerSensor):
    name = "hwmon"

    def __init__(self, path: Path, label: str, update_interval_s: Optional[float], notes: Optional[List[str]] = None):
        self.path = path
        super().__init__(f"{path} ({label}, uW, sampled)", update_interval_s, notes)

    def read_w(self) -> float:
        return read_uj(self.path) * 1e-6  # the file holds microwatts


@dataclass
class Ina3221Rail:
    label: str
    where: str  # for messages: the device directory and channel
    voltage_path: Optional[Path] = None  # mV (hwmon in{K}_input, or iio in_voltage{K}_input)
    current_path: Optional[Path] = None  # mA
    power_path: Optional[Path] = None  # mW (iio in_power{K}_input)
    update_interval_s: Optional[float] = None

    def read_w(self) -> float:
        if self.power_path is not None:
            return read_uj(self.power_path) * 1e-3
        assert self.voltage_path is not None and self.current_path is not None
        return read_uj(self.voltage_path) * read_uj(self.current_path) * 1e-6  # mV * mA = uW


class Ina3221Power(PowerSensor):
    name = "jetson-ina3221"

    def __init__(self, rail: Ina3221Rail, others: List[str], notes: Optional[List[str]] = None):
        self.rail = rail
        files = (f"{rail.power_path.name} mW" if rail.power_path is not None
                 else f"{rail.voltage_path.name} mV x {rail.current_path.name} mA")  # type: ignore[union-attr]
        detail = f"{rail.where} {rail.label} ({files}, sampled)"
        if others:
            detail += f"; sub-rails not added: {', '.join(others)}"
        super().__init__(detail, rail.update_interval_s, notes)

    def read_w(self) -> float:
        return self.rail.read_w()


class PmicPower(PowerSensor):
    name = "pi5-pmic"

    def __init__(self, command: str, rails: List[str], timeout_s: float):
        self.argv = [command, "pmic_read_adc"]
        self.timeout_s = timeout_s
        super().__init__(f"{command} pmic_read_adc (sum of {len(rails)} rails: {', '.join(rails)}; sampled)", None)

    def read_w(self) -> float:
        rails = parse_pmic_output(run_command(self.argv, self.timeout_s))
        if not rails:
            raise SensorError(f"{self.argv[0]} pmic_read_adc printed no rail with both current and voltage")
        return sum(rails.values())


class ExternalJoules(CounterSensor):
    name = "external"

    def __init__(self, argv: List[str], timeout_s: float, resolution_j: float):
        self.argv = list(argv)
        self.timeout_s = timeout_s
        super().__init__(f"{' '.join(argv)} (cumulative joules)", None,
                         ["external meter's own update interval unknown: the longest read call is used"])
        self.resolution_j = resolution_j

    def read(self) -> float:
        unit, value, resolution = parse_external_reading(run_command(self.argv, self.timeout_s))
        if unit != "J":
            raise SensorError(f"external meter switched from J to {unit}")
        self.resolution_j = max(self.resolution_j, resolution)
        return value

    def delta_j(self, before: float, after: float) -> float:
        if after < before:
            raise CounterError(f"external meter's joule count went backwards ({before} -> {after} J)")
        return after - before


class ExternalWatts(PowerSensor):
    name = "external"

    def __init__(self, argv: List[str], timeout_s: float):
        self.argv = list(argv)
        self.timeout_s = timeout_s
        super().__init__(f"{' '.join(argv)} (watts, sampled)", None)

    def read_w(self) -> float:
        unit, value, _ = parse_external_reading(run_command(self.argv, self.timeout_s))
        if unit != "W":
            raise SensorError(f"external meter switched from W to {unit}")
        return value


# ---- NVML (NVIDIA GPUs) -------------------------------------------------------------------------------


def import_pynvml() -> Any:
    """The ``pynvml`` module (package nvidia-ml-py), or SensorError saying why not."""
    try:
        import pynvml
    except ModuleNotFoundError:
        raise SensorError("pynvml (nvidia-ml-py) is not installed") from None
    except Exception as exc:  # installed but broken
        raise SensorError(f"pynvml (nvidia-ml-py) does not import: {type(exc).__name__}: {exc}") from None
    return pynvml


def open_nvml() -> Tuple[Any, Any, str]:
    """(pynvml, the handle of the GPU that is CUDA device 0 here, how it was picked); SensorError with the
    reason otherwise ("no NVIDIA GPU (nvmlInit failed: ...)"). nvmlInit counts its callers, so every user
    may init on its own; the agent never shuts NVML down before it exits."""
    nvml = import_pynvml()
    try:
        nvml.nvmlInit()
    except Exception as exc:
        raise SensorError(f"no NVIDIA GPU (nvmlInit failed: {exc})") from None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    first = visible.split(",")[0].strip() if visible is not None else None
    try:
        if first is None:
            if nvml.nvmlDeviceGetCount() < 1:
                raise SensorError("NVML sees no GPU (nvmlDeviceGetCount() is 0)")
            return nvml, nvml.nvmlDeviceGetHandleByIndex(0), "NVML index 0"
        if first.isdigit():
            return nvml, nvml.nvmlDeviceGetHandleByIndex(int(first)), f"NVML index {first} (CUDA_VISIBLE_DEVICES={visible})"
        if first.startswith(("GPU-", "MIG-")):
            return nvml, nvml.nvmlDeviceGetHandleByUUID(first), f"UUID {first} (CUDA_VISIBLE_DEVICES={visible})"
    except SensorError:
        raise
    except Exception as exc:
        raise SensorError(f"NVML has no GPU {first or 0}: {type(exc).__name__}: {exc}") from None
    raise SensorError(f"CUDA_VISIBLE_DEVICES={visible!r}: CUDA sees no GPU here")


def nvml_text(value: Any) -> str:
    """NVML strings: bytes from older pynvml, str from newer."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _nvml_label(nvml: Any, handle: Any, how: str) -> str:
    try:
        return f"GPU {nvml_text(nvml.nvmlDeviceGetName(handle))}, {how}"
    except Exception:
        return f"GPU, {how}"


class NvmlEnergy(CounterSensor):
    """nvmlDeviceGetTotalEnergyConsumption: the GPU board's energy since the driver loaded, in mJ."""

    name = "nvml"
    resolution_j = NVML_RESOLUTION_J

    def __init__(self, nvml: Any, handle: Any, label: str, notes: Optional[List[str]] = None):
        self.nvml, self.handle = nvml, handle
        super().__init__(f"{label}: nvmlDeviceGetTotalEnergyConsumption (mJ counter)", NVML_UPDATE_INTERVAL_S,
                         ["NVML does not document the counter's update period: "
                          f"{NVML_UPDATE_INTERVAL_S:g} s assumed for the error bar"] + list(notes or []))

    def read(self) -> int:
        return int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))

    def delta_j(self, before: int, after: int) -> float:
        if after < before:  # a 64-bit millijoule counter does not wrap; going back means a driver reload
            raise CounterError(f"NVML energy counter went backwards ({before} -> {after} mJ; driver reloaded?)")
        return (after - before) * 1e-3


class NvmlPower(PowerSensor):
    """nvmlDeviceGetPowerUsage (mW), sampled: for GPUs without the energy counter (before Volta)."""

    name = "nvml"

    def __init__(self, nvml: Any, handle: Any, label: str, notes: Optional[List[str]] = None):
        self.nvml, self.handle = nvml, handle
        super().__init__(f"{label}: nvmlDeviceGetPowerUsage (mW, sampled)", None,
                         ["NVML's power reading may be an average over up to 1 s on some GPUs: short windows "
                          "are smoothed"] + list(notes or []))

    def read_w(self) -> float:
        return float(self.nvml.nvmlDeviceGetPowerUsage(self.handle)) * 1e-3


# ---- discovery ----------------------------------------------------------------------------------------

# A finder returns (sensor or None, what was checked and what came of it, a problem worth a "not used"
# note when a later source is chosen: present but unreadable).
Found = Tuple[Optional[Sensor], str, str]


def find_sensor(sysfs_root: str = "/", vcgencmd: Optional[str] = "vcgencmd", external: Optional[List[str]] = None,
                command_timeout_s: float = COMMAND_TIMEOUT_S,
                accelerator: Optional[str] = None) -> Tuple[Optional[Sensor], str, List[str]]:
    """(the preferred readable sensor or None, why none when None, what was checked with outcomes).

    ``accelerator``: the run's accelerator ("cuda") or None for a CPU run; only a GPU run tries NVML (first).
    """
    root = Path(sysfs_root)
    if external:
        finders: List[Callable[[], Found]] = [lambda: _find_external(external, command_timeout_s)]
    else:
        finders = [lambda: _find_nvml(accelerator), lambda: _find_rapl(root), lambda: _find_ina3221(root),
                   lambda: _find_pmic(vcgencmd, command_timeout_s), lambda: _find_hwmon(root)]
    checked: List[str] = []
    problems: List[str] = []
    for finder in finders:
        try:
            sensor, outcome, problem = finder()
        except Exception as exc:  # a finder bug or an odd tree must not stop the benchmark
            sensor, outcome, problem = None, f"probe failed: {type(exc).__name__}: {exc}", ""
        checked.append(outcome)
        if sensor is not None:
            sensor.notes[:0] = [f"not used: {p}" for p in problems]
            return sensor, "", checked
        if problem:
            problems.append(problem)
    if external:
        return None, (f"external meter failed ({checked[0]}); no other sensor was tried because an external "
                      f"meter was requested"), checked
    checked.append("external: not configured (config 'external')")
    return None, f"no readable energy or power sensor (checked: {'; '.join(checked)})", checked


def _find_nvml(accelerator: Optional[str]) -> Found:
    where = "nvml: GPU board energy (nvmlDeviceGetTotalEnergyConsumption, else nvmlDeviceGetPowerUsage)"
    if accelerator != "cuda":
        return None, ("nvml: not tried: the run's work is on the CPU (NVML measures the GPU board: it is used only "
                      "when the work runs on a CUDA GPU)"), ""
    try:
        nvml, handle, how = open_nvml()
    except SensorError as exc:
        return None, f"{where}: {exc}", f"nvml: {exc}"
    label = _nvml_label(nvml, handle, how)
    try:
        nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        return NvmlEnergy(nvml, handle, label), f"{where}: used the energy counter of {label}", ""
    except Exception as exc:
        counter = f"nvmlDeviceGetTotalEnergyConsumption: {type(exc).__name__}: {exc}"
    try:
        nvml.nvmlDeviceGetPowerUsage(handle)
    except Exception as exc:
        text = f"{label}: {counter}; nvmlDeviceGetPowerUsage: {type(exc).__name__}: {exc}"
        return None, f"{where}: not readable: {text}", f"nvml: {text}"
    sensor = NvmlPower(nvml, handle, label, [f"no energy counter ({counter}): power sampled instead"])
    return sensor, f"{where}: used the power reading of {label}", ""


def _find_rapl(root: Path) -> Found:
    where = f"rapl: {root / 'sys/class/powercap/intel-rapl:N/energy_uj'}"
    zones = sorted(p for p in root.glob(RAPL_GLOB) if _RAPL_PACKAGE_ZONE.match(p.name))
    counters, problems = [], []
    for zone in zones:
        energy = zone / "energy_uj"
        problem = _probe(energy, "RAPL energy_uj is root-only since Linux 5.10; run the agent as root")
        if problem:
            problems.append(problem)
            continue
        label = _read_optional(zone / "name") or zone.name
        counters.append(Counter(energy, label, _read_int(zone / "max_energy_range_uj")))
    if problems:  # a partial set of packages would undercount: use all or none
        text = "; ".join(problems)
        return None, f"{where}: not readable: {text}", f"rapl: {text}"
    if not counters:
        return None, f"{where}: not present", ""
    sensor = SysfsCounters("rapl", counters, RAPL_UPDATE_INTERVAL_S)
    return sensor, f"{where}: used", ""


def _hwmon_dirs(root: Path, patterns: Tuple[str, ...]) -> List[Path]:
    seen, dirs = set(), []
    for pattern in patterns:
        for d in sorted(root.glob(pattern)):
            key = os.path.realpath(d)
            if d.is_dir() and key not in seen:
                seen.add(key)
                dirs.append(d)
    return dirs


def _interval_ms(path: Path) -> Optional[float]:
    ms = _read_int(path)
    return ms / 1000 if ms and ms > 0 else None


def _ina3221_rails(root: Path) -> List[Ina3221Rail]:
    rails: List[Ina3221Rail] = []
    for d in _hwmon_dirs(root, (HWMON_DIR_GLOB, INA3221_I2C_GLOB)):
        if _read_optional(d / "name") != "ina3221":
            continue
        interval = _interval_ms(d / "update_interval")
        for k in (1, 2, 3):  # in4..in7 / curr4 are shunt voltages and sums, not rails
            label = _read_optional(d / f"in{k}_label")
            if not label or label.upper() == "NC" or _read_int(d / f"in{k}_enable") == 0:
                continue
            volt, curr = d / f"in{k}_input", d / f"curr{k}_input"
            if volt.exists() and curr.exists():
                rails.append(Ina3221Rail(label, f"{d} in{k}", voltage_path=volt, current_path=curr,
                                         update_interval_s=interval))
    for d in sorted(root.glob(INA3221X_IIO_GLOB)):
        for k in (0, 1, 2):
            label = _read_optional(d / f"rail_name_{k}")
            if not label:
                continue
            power = d / f"in_power{k}_input"
            volt, curr = d / f"in_voltage{k}_input", d / f"in_current{k}_input"
            if power.exists():
                rails.append(Ina3221Rail(label, f"{d} channel {k}", power_path=power))
            elif volt.exists() and curr.exists():
                rails.append(Ina3221Rail(label, f"{d} channel {k}", voltage_path=volt, current_path=curr))
    return rails


def _find_ina3221(root: Path) -> Found:
    where = (f"jetson-ina3221: {root / HWMON_DIR_GLOB}/name == ina3221, {root / INA3221_I2C_GLOB}, "
             f"{root / INA3221X_IIO_GLOB}/in_power*_input")
    rails = _ina3221_rails(root)
    if not rails:
        return None, f"{where}: not present", ""
    labels = [r.label for r in rails]
    chosen: Optional[Ina3221Rail] = None
    for name in INA3221_INPUT_RAILS:
        chosen = next((r for r in rails if r.label.upper() == name), None)
        if chosen is not None:
            break
    if chosen is None:
        candidates = [r for r in rails if r.label.upper().endswith("_IN")]
        if len(candidates) != 1:
            why = "several candidate input rails" if candidates else "no total-input rail"
            text = f"{why} among {', '.join(labels)}; sub-rails are never summed (they would double-count)"
            return None, f"{where}: {text}", f"jetson-ina3221: {text}"
        chosen = candidates[0]
    try:
        chosen.read_w()
    except (OSError, ValueError) as exc:
        hint = " (needs read permission)" if isinstance(exc, PermissionError) else ""
        text = f"{chosen.where} {chosen.label}: {type(exc).__name__}: {exc}{hint}"
        return None, f"{where}: not readable: {text}", f"jetson-ina3221: {text}"
    notes = [] if chosen.update_interval_s else ["INA3221 update interval unknown: the sampling interval is used"]
    sensor = Ina3221Power(chosen, [r.label for r in rails if r is not chosen], notes)
    return sensor, f"{where}: used {chosen.label}", ""


def _find_pmic(vcgencmd: Optional[str], timeout_s: float) -> Found:
    if not vcgencmd:
        return None, "pi5-pmic: vcgencmd pmic_read_adc: skipped (vcgencmd set to null)", ""
    where = f"pi5-pmic: {vcgencmd} pmic_read_adc"
    command = _resolve_command(vcgencmd)
    if command is None:
        return None, f"{where}: {vcgencmd} not found or not executable", ""
    try:
        rails = parse_pmic_output(run_command([command, "pmic_read_adc"], timeout_s))
    except SensorError as exc:  # e.g. a Pi 4's vcgencmd: "Command not registered"
        return None, f"{where}: {exc}", ""
    if not rails:
        return None, f"{where}: no rail with both current and voltage in its output", ""
    return PmicPower(command, list(rails), timeout_s), f"{where}: used", ""


def _find_hwmon(root: Path) -> Found:
    """One hwmon energy counter (or the package/socket ones, summed), else one power sensor: drivers such
    as amd_energy also expose per-core counters, and adding those to the socket counter would count twice."""
    where = f"hwmon: {root / HWMON_DIR_GLOB}/energy*_input, power*_input"
    readable, problems = _readable_hwmon(root, "energy*_input")
    packages = [c for c in readable if _PACKAGE_LABEL.search(c.label)]
    chosen = packages or readable[:1]
    if chosen:
        interval = _interval_ms(chosen[0].path.parent / "update_interval")
        notes = [] if interval else ["hwmon update interval unknown; 1 ms assumed for the error bar"]
        sensor: Sensor = SysfsCounters("hwmon", chosen, interval or HWMON_DEFAULT_UPDATE_INTERVAL_S, notes)
        return sensor, f"{where}: used energy counter", ""
    powers, power_problems = _readable_hwmon(root, "power*_input")
    problems += power_problems
    packages = [c for c in powers if _PACKAGE_LABEL.search(c.label)]
    pick = (packages or powers)[:1]
    if pick:
        p = pick[0]
        notes = [f"{len(powers) - 1} other hwmon power sensor(s) not added"] if len(powers) > 1 else []
        sensor = HwmonPower(p.path, p.label, _interval_ms(p.path.parent / "update_interval"), notes)
        return sensor, f"{where}: used power sensor", ""
    if problems:
        text = "; ".join(problems)
        return None, f"{where}: not readable: {text}", f"hwmon: {text}"
    return None, f"{where}: not present", ""


def _readable_hwmon(root: Path, pattern: str) -> Tuple[List[Counter], List[str]]:
    readable, problems = [], []
    for path in sorted(root.glob(f"{HWMON_DIR_GLOB}/{pattern}")):
        problem = _probe(path, "needs read permission")
        if problem:
            problems.append(problem)
            continue
        label = _read_optional(path.with_name(path.name.replace("_input", "_label")))
        hwmon_name = _read_optional(path.parent / "name") or path.parent.name
        readable.append(Counter(path, f"{hwmon_name} {label}" if label else hwmon_name))
    return readable, problems


def _find_external(argv: List[str], timeout_s: float) -> Found:
    where = f"external: {' '.join(argv)}"
    try:
        unit, _, resolution = parse_external_reading(run_command(argv, timeout_s))
    except SensorError as exc:
        return None, f"{where}: {exc}", ""
    if unit == "J":
        return ExternalJoules(argv, timeout_s, resolution), f"{where}: used (J)", ""
    return ExternalWatts(argv, timeout_s), f"{where}: used (W)", ""


def describe_sources(sysfs_root: str = "/", vcgencmd: Optional[str] = "vcgencmd",
                     external: Optional[List[str]] = None, accelerator: Optional[str] = None) -> dict:
    """For ``devices check``: which source a run would use, or why none, and everything checked.
    ``accelerator``: describe a GPU run's source ("cuda") instead of a CPU run's (None)."""
    sensor, reason, checked = find_sensor(sysfs_root, vcgencmd, external, accelerator=accelerator)
    if sensor is None:
        return {"available": False, "source": None, "reason": reason, "checked": checked}
    return {"available": True, "source": sensor.source, "reason": "; ".join(sensor.notes), "checked": checked}
