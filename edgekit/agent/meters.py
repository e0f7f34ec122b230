"""Energy per inference from the device's own meters, an external meter, a labelled estimate, or an honest
"unavailable". Successor of ``energy.py``; runs on the device: standard library only, Python >= 3.9.

Why: a missing sensor must never look like a measurement. The meter is picked automatically and named in
the result, an unreadable or frozen sensor is reported as such (never 0 mJ), every figure carries an error
bar, and the idle draw of the device is measured and subtracted so the figure is the workload's own.

Sources, in order of preference (all paths relative to ``sysfs_root`` so tests can use fake trees):

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

With no readable source, a ``power_model`` from the device profile gives a result with status
``estimated`` (source ``power-model``), never ``measured``.

How a window is measured: counters (rapl, hwmon energy, external J) are read in ``start()`` and ``stop()``
and the window's time is taken at the middle of each read. Power sources are sampled by a background
thread every ``interval_s`` (plus one read in ``start()`` before, and one in ``stop()`` after, the timed
region so the window is always covered); the samples (perf_counter time, W) are integrated with the
trapezoid rule over exactly [t_start, t_stop], interpolating linearly at the edges (holding the nearest
sample where the edge is not bracketed), so samples outside the window do not count.

Idle baseline: ``measure_idle(seconds)`` measures the mean power P_idle while this process sleeps, just
before the workload. Then, for a window of T seconds, N inferences and window energy E:

- ``energy_total_mj_per_inference`` = E / N (gross: everything the sensor's domain drew);
- ``energy_mj_per_inference`` = (E - P_idle * T) / N (the workload's energy above idle); ``None`` when
  the idle baseline could not be measured (the gross figure is still given). If it comes out <= 0 the
  value is kept (a real measurement can fall within noise) and the status is
  ``measured: within idle noise (...)``, so it cannot be mistaken for a clean figure.

Error bar ``energy_error_mj`` (per inference, on ``energy_mj_per_inference``; ``energy_total_error_mj``
is the same without the idle term, on the gross figure). With P = E / T the window's mean power:

- counters: (P * tau + 2 * r) / N, where tau is the counter's update interval (RAPL ~1 ms; hwmon
  ``update_interval`` or 1 ms assumed; an external meter: the longest read call) and r its resolution
  (1 uJ per sysfs counter; the printed precision of an external meter): each read can be up to one update
  stale, which bounds the window's error by one interval of energy, and each read rounds to r.
- sampled power: (P * dt + SE(P) * T) / N, where dt is the effective sampling interval (the largest of the
  configured interval, the sensor's own update interval and the observed spacing of samples) and SE(P)
  = stdev(window samples) / sqrt(n) the standard error of the samples' mean: the first term bounds the
  edge error (a power step at the window's edge can be missed by up to one interval), the second the
  error of estimating the mean power from n samples (samples are correlated, so it is a floor).
- idle subtraction adds sigma_idle * T / N, with sigma_idle the idle mean's error: SE of the idle samples
  for sampled power, (P_idle * tau + 2 * r) / T_idle for counters.

A window shorter than 10 sampling (or update) intervals is flagged in ``note`` as too short to trust.

Interface used by the agent::

    meter = open_meter(config)   # None: disabled
    meter.measure_idle()         # before the timed loop (config idle_seconds, default 0.5 s)
    meter.start(); <timed loop>; meter.stop()
    meter.result(iterations)     # dict, see RESULT_KEYS

Any failure of a sensor during idle, start or stop becomes an ``unavailable: reading X failed: ...``
result (idle: a note), never an exception out of the meter.
"""

from __future__ import annotations

import bisect
import math
import os
import re
import shutil
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

# ---- configuration ----------------------------------------------------------------------------------

DEFAULTS = {
    "sysfs_root": "/",
    "vcgencmd": "vcgencmd",  # a name looked up on PATH, a path, or None to skip the Pi 5 PMIC
    "external": None,  # argv list of an external meter command, or None
    "interval_s": 0.05,  # sampling interval of power sources
    "power_model": None,  # {"idle_w": float, "active_w": float} from the device profile, or None
    "idle_seconds": 0.5,  # default length of measure_idle()
    "command_timeout_s": 5.0,  # per call of vcgencmd or the external command
}
RESULT_KEYS = (
    "status", "source", "energy_mj_per_inference", "energy_total_mj_per_inference", "energy_error_mj",
    "energy_total_error_mj", "idle_power_mw", "active_power_mw", "window_s", "samples", "interval_s", "note",
)
SOURCE_NAMES = ("rapl", "jetson-ina3221", "pi5-pmic", "hwmon", "external")

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
SHORT_WINDOW_INTERVALS = 10  # a window shorter than this many sampling intervals is flagged

NOTES = {
    "rapl": "CPU package energy (everything the package did meanwhile)",
    "jetson-ina3221": "Jetson module input power (sum of everything on the module; the carrier board is "
                      "not included where it has its own rail)",
    "pi5-pmic": "sum of the Pi 5 PMIC's rail powers (SoC, memory, IO); PMIC conversion losses and 5 V "
                "peripherals are not included, so this is below the board's input power",
    "hwmon": "energy of the sensor's whole domain",
    "external": "external meter's reading (its whole scope)",
}


def check_config(config: dict) -> dict:
    """The config with defaults filled in; ValueError naming the bad key for anything malformed."""
    if not isinstance(config, dict):
        raise ValueError(f"energy config must be a dict or None, got {config!r}")
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown energy config key(s) {unknown}; known: {sorted(DEFAULTS)}")
    cfg = dict(DEFAULTS)
    cfg.update(config)
    if not isinstance(cfg["sysfs_root"], str) or not cfg["sysfs_root"]:
        raise ValueError(f"energy config 'sysfs_root' must be a non-empty string, got {cfg['sysfs_root']!r}")
    if cfg["vcgencmd"] is not None and (not isinstance(cfg["vcgencmd"], str) or not cfg["vcgencmd"]):
        raise ValueError(f"energy config 'vcgencmd' must be a command name, a path or null, got {cfg['vcgencmd']!r}")
    ext = cfg["external"]
    if ext is not None and (not isinstance(ext, list) or not ext or not all(isinstance(a, str) and a for a in ext)):
        raise ValueError(f"energy config 'external' must be null or a non-empty argv list of strings, got {ext!r}")
    _check_number(cfg, "interval_s", 1e-3, 10.0)
    _check_number(cfg, "idle_seconds", 0.0, 600.0)
    _check_number(cfg, "command_timeout_s", 1e-3, 600.0)
    model = cfg["power_model"]
    if model is not None:
        if not isinstance(model, dict):
            raise ValueError(f"energy config 'power_model' must be null or a dict, got {model!r}")
        for key in ("idle_w", "active_w"):
            _check_number(model, key, 0.0, 1e6, where="power_model.")
        if model["active_w"] < model["idle_w"]:
            raise ValueError(f"energy config power_model: active_w ({model['active_w']}) < idle_w ({model['idle_w']})")
    return cfg


def _check_number(d: dict, key: str, low: float, high: float, where: str = "") -> None:
    value = d.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"energy config '{where}{key}' must be a number in [{low}, {high}], got {value!r}")


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


# ---- discovery ----------------------------------------------------------------------------------------

# A finder returns (sensor or None, what was checked and what came of it, a problem worth a "not used"
# note when a later source is chosen: present but unreadable).
Found = Tuple[Optional[Sensor], str, str]


def find_sensor(sysfs_root: str = "/", vcgencmd: Optional[str] = "vcgencmd", external: Optional[List[str]] = None,
                command_timeout_s: float = DEFAULTS["command_timeout_s"]) -> Tuple[Optional[Sensor], str, List[str]]:
    """(the preferred readable sensor or None, why none when None, what was checked with outcomes)."""
    root = Path(sysfs_root)
    if external:
        finders: List[Callable[[], Found]] = [lambda: _find_external(external, command_timeout_s)]
    else:
        finders = [lambda: _find_rapl(root), lambda: _find_ina3221(root),
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
        sensor = SysfsCounters("hwmon", chosen, interval or HWMON_DEFAULT_UPDATE_INTERVAL_S, notes)
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
                     external: Optional[List[str]] = None) -> dict:
    """For ``devices check``: which source a run would use, or why none, and everything checked."""
    sensor, reason, checked = find_sensor(sysfs_root, vcgencmd, external)
    if sensor is None:
        return {"available": False, "source": None, "reason": reason, "checked": checked}
    return {"available": True, "source": sensor.source, "reason": "; ".join(sensor.notes), "checked": checked}


# ---- sampling and integration -------------------------------------------------------------------------

Sample = Tuple[float, float]  # (time.perf_counter() seconds, watts)


def integrate_window(samples: List[Sample], t0: float, t1: float) -> Tuple[float, int]:
    """(joules over exactly [t0, t1], number of samples strictly inside) by the trapezoid rule.

    The power at each edge is interpolated linearly between the samples around it, or held from the
    nearest sample when the edge is not bracketed; samples outside the window only shape those edge values.
    """
    if not samples:
        raise ValueError("no power samples")
    if t1 <= t0:
        raise ValueError(f"empty window [{t0}, {t1}]")
    pts = sorted(samples)
    times = [t for t, _ in pts]

    def at(t: float) -> float:
        if t <= times[0]:
            return pts[0][1]
        if t >= times[-1]:
            return pts[-1][1]
        i = bisect.bisect_right(times, t)
        (ta, wa), (tb, wb) = pts[i - 1], pts[i]
        return wa if tb == ta else wa + (wb - wa) * (t - ta) / (tb - ta)

    inside = [(t, w) for t, w in pts if t0 < t < t1]
    knots = [(t0, at(t0))] + inside + [(t1, at(t1))]
    energy = sum((tb - ta) * (wa + wb) / 2 for (ta, wa), (tb, wb) in zip(knots, knots[1:]))
    return energy, len(inside)


def _standard_error(values: List[float]) -> Optional[float]:
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) >= 2 else None


class _Sampler:
    """A daemon thread appending (perf_counter, W) to ``samples`` every ``interval_s`` until stopped.

    It only reads (a file, or one short command), so the timed loop shares the CPU with a few reads per
    interval; a read that fails stops the thread and is kept in ``error``.
    """

    def __init__(self, read_w: Callable[[], float], interval_s: float, samples: List[Sample]):
        self.read_w = read_w
        self.interval_s = interval_s
        self.samples = samples
        self.error: Optional[BaseException] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgekit-power-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            begin = time.perf_counter()
            try:
                watts = self.read_w()
            except Exception as exc:  # kept for result(); the thread ends
                self.error = exc
                return
            end = time.perf_counter()
            self.samples.append(((begin + end) / 2, watts))
            self._stop.wait(max(0.0, self.interval_s - (time.perf_counter() - begin)))

    def stop(self, timeout_s: float) -> bool:
        """Stop and join; False if the thread is still stuck in a read after ``timeout_s``."""
        self._stop.set()
        self._thread.join(timeout_s)
        return not self._thread.is_alive()


def _timed_sample(read_w: Callable[[], float]) -> Sample:
    begin = time.perf_counter()
    watts = read_w()
    return (begin + time.perf_counter()) / 2, watts


def _failure(sensor: Sensor, exc: BaseException) -> str:
    return f"reading {sensor.source} failed: {type(exc).__name__}: {exc}"


# ---- the meter ----------------------------------------------------------------------------------------


class Meter:
    """Measures one timed window (and the idle baseline before it) with one sensor, or estimates it.

    ``source`` names the sensor (or the power model); None when there is nothing to measure with.
    """

    def __init__(self, sensor: Optional[Sensor], reason: str = "", checked: Optional[List[str]] = None,
                 config: Optional[dict] = None):
        cfg = dict(DEFAULTS)
        cfg.update(config or {})
        self.sensor = sensor
        self.reason = reason  # why there is no sensor
        self.checked = list(checked or [])
        self.interval_s = float(cfg["interval_s"])
        self.idle_seconds = float(cfg["idle_seconds"])
        self.command_timeout_s = float(cfg["command_timeout_s"])
        self.power_model = cfg["power_model"] if sensor is None else None
        if sensor is not None:
            self.source: Optional[str] = sensor.source
        elif self.power_model:
            pm = self.power_model
            self.source = f"power-model: device profile (idle_w={pm['idle_w']}, active_w={pm['active_w']})"
        else:
            self.source = None
        self._error: Optional[str] = None
        self._idle_w: Optional[float] = None
        self._idle_sigma_w = 0.0
        self._idle_note = "idle baseline not measured (measure_idle() was not called)"
        self._t_start: Optional[float] = None
        self._t_stop: Optional[float] = None
        self._readings: List[Any] = []
        self._read_s: List[float] = []  # how long each counter read took
        self._samples: List[Sample] = []
        self._sampler: Optional[_Sampler] = None

    # -- measuring --

    def measure_idle(self, seconds: Optional[float] = None) -> None:
        """Mean power while this process sleeps for ``seconds`` (default: config idle_seconds)."""
        seconds = self.idle_seconds if seconds is None else float(seconds)
        if self.sensor is None:
            return
        if seconds <= 0:
            self._idle_note = "idle baseline disabled (idle_seconds = 0)"
            return
        try:
            if isinstance(self.sensor, CounterSensor):
                self._idle_counter(self.sensor, seconds)
            else:
                self._idle_power(self.sensor, seconds)  # type: ignore[arg-type]
        except Exception as exc:
            self._idle_w = None
            self._idle_note = f"idle baseline not measured: {_failure(self.sensor, exc)}"

    def _idle_counter(self, sensor: CounterSensor, seconds: float) -> None:
        before, t0, _ = self._read_counter(sensor)
        time.sleep(seconds)
        after, t1, _ = self._read_counter(sensor)
        span = t1 - t0
        energy = sensor.delta_j(before, after)
        if energy <= 0:
            self._idle_note = f"idle baseline not measured: counter did not advance over {span:.3f} s idle"
            return
        self._idle_w = energy / span
        tau = max(sensor.update_interval_s or 0.0, max(self._read_s[-2:]))
        self._idle_sigma_w = (self._idle_w * tau + 2 * sensor.resolution_j) / span
        self._idle_note = f"idle power {self._idle_w * 1e3:.1f} mW measured over {span:.3f} s just before the run"

    def _idle_power(self, sensor: PowerSensor, seconds: float) -> None:
        samples: List[Sample] = []
        sampler = _Sampler(sensor.read_w, self.interval_s, samples)
        samples.append(_timed_sample(sensor.read_w))
        sampler.start()
        t0 = time.perf_counter()
        time.sleep(seconds)
        t1 = time.perf_counter()
        try:
            samples.append(_timed_sample(sensor.read_w))
        finally:
            sampler.stop(self.command_timeout_s + 1.0)
        if sampler.error is not None:
            raise sampler.error
        energy, _ = integrate_window(samples, t0, t1)
        inside = [w for t, w in samples if t0 < t < t1]
        self._idle_w = energy / (t1 - t0)
        se = _standard_error(inside)
        self._idle_sigma_w = se or 0.0
        self._idle_note = (f"idle power {self._idle_w * 1e3:.1f} mW measured over {t1 - t0:.3f} s "
                           f"({len(inside)} samples) just before the run")
        if se is None:
            self._idle_note += "; too few idle samples for an error estimate of the idle power"

    def _read_counter(self, sensor: CounterSensor) -> Tuple[Any, float, float]:
        begin = time.perf_counter()
        reading = sensor.read()
        end = time.perf_counter()
        self._read_s.append(end - begin)
        return reading, (begin + end) / 2, end - begin

    def start(self) -> None:
        """Call immediately before the timed loop."""
        if self._sampler is not None:  # start() twice without stop(): end the old sampler first
            self._sampler.stop(self.command_timeout_s + 1.0)
        self._t_start = self._t_stop = None
        self._readings, self._samples, self._sampler = [], [], None
        sensor = self.sensor
        if sensor is None:
            self._t_start = time.perf_counter()
            return
        self._error = None
        try:
            if isinstance(sensor, CounterSensor):
                reading, self._t_start, _ = self._read_counter(sensor)
                self._readings.append(reading)
            else:
                read_w = sensor.read_w  # type: ignore[attr-defined]
                self._samples.append(_timed_sample(read_w))
                self._sampler = _Sampler(read_w, self.interval_s, self._samples)
                self._sampler.start()
                self._t_start = time.perf_counter()
        except Exception as exc:
            self._error = _failure(sensor, exc)
            self._t_start = time.perf_counter()

    def stop(self) -> None:
        """Call immediately after the timed loop."""
        sensor = self.sensor
        if sensor is None or self._t_start is None:
            self._t_stop = time.perf_counter()
            return
        if isinstance(sensor, CounterSensor):
            if self._error is None:
                try:
                    reading, self._t_stop, _ = self._read_counter(sensor)
                    self._readings.append(reading)
                except Exception as exc:
                    self._error = _failure(sensor, exc)
            if self._t_stop is None:
                self._t_stop = time.perf_counter()
            return
        self._t_stop = time.perf_counter()
        sampler, self._sampler = self._sampler, None
        if sampler is None:  # start() failed; its error is kept
            return
        try:
            self._samples.append(_timed_sample(sensor.read_w))  # type: ignore[attr-defined]
        except Exception as exc:
            self._error = self._error or _failure(sensor, exc)
        stopped = sampler.stop(self.command_timeout_s + 1.0)
        if sampler.error is not None:
            self._error = self._error or _failure(sensor, sampler.error)
        if not stopped:
            self._error = self._error or f"reading {sensor.source} failed: the sampler did not stop (a read hung)"

    # -- results --

    def result(self, iterations: int) -> dict:
        """The energy figures for ``iterations`` inferences in the window (keys: RESULT_KEYS)."""
        window = None
        if self._t_start is not None and self._t_stop is not None:
            window = self._t_stop - self._t_start
        if self.sensor is None:
            if not self.power_model:
                return self._unavailable(self.reason or "no sensor", window)
            return self._estimate(iterations, window)
        if self._error is not None:
            return self._unavailable(self._error, window)
        if window is None:
            return self._unavailable("the meter was not started and stopped around the timed loop", None)
        if iterations < 1:
            return self._unavailable("no iterations were timed", window)
        if window <= 0:
            return self._unavailable(f"empty window ({window} s)", window)
        try:
            if isinstance(self.sensor, CounterSensor):
                figures = self._counter_window(self.sensor, window)
            else:
                figures = self._power_window(window)
        except Exception as exc:
            return self._unavailable(f"computing energy from {self.sensor.source} failed: "
                                     f"{type(exc).__name__}: {exc}", window)
        if isinstance(figures, str):
            return self._unavailable(figures, window)
        energy_j, err_window_j, interval, samples, notes = figures
        return self._measured(iterations, window, energy_j, err_window_j, interval, samples, notes)

    def _counter_window(self, sensor: CounterSensor, window: float) -> Any:
        before, after = self._readings
        try:
            energy = sensor.delta_j(before, after)
        except CounterError as exc:
            return str(exc)
        if energy <= 0:  # a real window always consumes energy; a frozen counter is not "0 mJ"
            return f"counter did not advance over a {window:.3f} s window ({before} -> {after})"
        tau = max(sensor.update_interval_s or 0.0, max(self._read_s[-2:]))
        power = energy / window
        error = power * tau + 2 * sensor.resolution_j
        return energy, error, tau, len(self._readings), []

    def _power_window(self, window: float) -> Any:
        t0, t1 = self._t_start, self._t_stop
        assert t0 is not None and t1 is not None
        energy, n_inside = integrate_window(self._samples, t0, t1)
        inside = [w for t, w in self._samples if t0 < t < t1]
        if max([w for _, w in self._samples]) <= 0:
            return f"power sensor read 0 W throughout the {window:.3f} s window (rail not connected?)"
        times = sorted(t for t, _ in self._samples)
        spacing = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else 0.0
        dt = max(self.interval_s, self.sensor.update_interval_s or 0.0, spacing)  # type: ignore[union-attr]
        se = _standard_error(inside)
        notes = []
        if se is None:
            notes.append(f"only {n_inside} sample(s) inside the window: no standard error of the mean power")
        error = (energy / window) * dt + (se or 0.0) * window
        return energy, error, dt, n_inside, notes

    def _measured(self, iterations: int, window: float, energy_j: float, err_window_j: float, interval: float,
                  samples: int, extra_notes: List[str]) -> dict:
        assert self.sensor is not None
        kind = "sampled every" if self.sensor.kind == "power" else "counter update interval"
        notes = [f"{NOTES[self.sensor.name]}; {kind} {interval:.4g} s"] + self.sensor.notes + extra_notes
        status = "measured"
        net_mj = net_err_mj = None
        if self._idle_w is not None:
            net_j = energy_j - self._idle_w * window
            net_err_j = err_window_j + self._idle_sigma_w * window
            net_mj, net_err_mj = net_j * 1e3 / iterations, net_err_j * 1e3 / iterations
            notes.append(self._idle_note + "; energy_mj_per_inference is above idle")
            if net_j <= 0:
                status = "measured: within idle noise (net energy <= 0 after idle subtraction)"
            elif net_j < net_err_j:
                notes.append("net energy above idle is smaller than its error bar")
        else:
            notes.append(self._idle_note + "; only the gross energy_total_mj_per_inference is given")
        if window < SHORT_WINDOW_INTERVALS * interval:
            notes.append(f"window {window:.4g} s is shorter than {SHORT_WINDOW_INTERVALS} sampling intervals "
                         f"({interval:.4g} s): too short to trust")
        return {
            "status": status,
            "source": self.source,
            "energy_mj_per_inference": net_mj,
            "energy_total_mj_per_inference": energy_j * 1e3 / iterations,
            "energy_error_mj": net_err_mj,
            "energy_total_error_mj": err_window_j * 1e3 / iterations,
            "idle_power_mw": None if self._idle_w is None else self._idle_w * 1e3,
            "active_power_mw": energy_j / window * 1e3,
            "window_s": window,
            "samples": samples,
            "interval_s": interval,
            "note": "; ".join(notes),
        }

    def _estimate(self, iterations: int, window: Optional[float]) -> dict:
        if window is None or window <= 0:
            return self._unavailable("the meter was not started and stopped around the timed loop", window)
        if iterations < 1:
            return self._unavailable("no iterations were timed", window)
        pm = self.power_model
        assert pm is not None
        idle_w, active_w = float(pm["idle_w"]), float(pm["active_w"])
        return {
            "status": "estimated",
            "source": self.source,
            "energy_mj_per_inference": (active_w - idle_w) * window * 1e3 / iterations,
            "energy_total_mj_per_inference": active_w * window * 1e3 / iterations,
            "energy_error_mj": None,
            "energy_total_error_mj": None,
            "idle_power_mw": idle_w * 1e3,
            "active_power_mw": active_w * 1e3,
            "window_s": window,
            "samples": None,
            "interval_s": None,
            "note": ("estimate from the device profile's power model (active_w over the window, idle_w "
                     "subtracted), not a measurement; no error bar; no sensor was readable: " + self.reason),
        }

    def _unavailable(self, reason: str, window: Optional[float]) -> dict:
        result = dict.fromkeys(RESULT_KEYS)
        result.update(status=f"unavailable: {reason}", source=self.source, window_s=window, note="")
        return result


def open_meter(config: Optional[dict]) -> Meter:
    """A meter for the request's energy config; None means disabled. ValueError for a malformed config;
    never raises for a missing or unreadable sensor (the meter reports that)."""
    if config is None:
        return Meter(None, "disabled by request")
    cfg = check_config(config)
    sensor, reason, checked = find_sensor(cfg["sysfs_root"], cfg["vcgencmd"], cfg["external"],
                                          cfg["command_timeout_s"])
    return Meter(sensor, reason, checked, cfg)
