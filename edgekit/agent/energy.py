"""Energy per inference from the device's own energy counters, or an honest "unavailable".

Why: a missing sensor must never look like a measurement. So the sensor is picked automatically and named,
an unreadable or frozen counter is reported as such (never 0 mJ), and each figure carries an error bar.

Sensors, in order of preference (paths relative to a ``sysfs_root`` so tests can use fake trees):

- Linux RAPL powercap, top-level package zones only: ``sys/class/powercap/intel-rapl:N/energy_uj``. The
  subzones ``intel-rapl:N:M`` (core, uncore, dram) are parts of a package, so summing them too would
  count energy twice. The counter wraps at ``max_energy_range_uj``; one wrap per window is corrected.
- A generic hwmon energy counter: ``sys/class/hwmon/hwmon*/energy*_input`` (microjoules).

The figure is package (or board) energy over the timed window: it includes everything else the CPU did
meanwhile and is not idle-subtracted. Standard library only (runs on the device).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

RAPL_GLOB = "sys/class/powercap/intel-rapl:*"
HWMON_GLOB = "sys/class/hwmon/hwmon*/energy*_input"
_RAPL_PACKAGE_ZONE = re.compile(r"^intel-rapl:\d+$")
_PACKAGE_LABEL = re.compile(r"socket|package|pkg", re.IGNORECASE)

# RAPL updates its counters about every millisecond (976 us on Intel); a read can be that stale.
RAPL_UPDATE_INTERVAL_S = 1e-3
# hwmon drivers may publish ``update_interval`` (ms); without it we assume the RAPL-like 1 ms and say so.
HWMON_DEFAULT_UPDATE_INTERVAL_S = 1e-3
COUNTER_RESOLUTION_UJ = 1  # both interfaces count whole microjoules

NOTES = {
    "rapl": "CPU package energy over the timed window (everything the package did meanwhile), not idle-subtracted",
    "hwmon": "energy of the sensor's whole domain over the timed window, not idle-subtracted",
}


@dataclass
class Counter:
    path: Path  # file holding a cumulative energy count in microjoules
    label: str
    max_range_uj: Optional[int] = None  # the counter wraps past this; None: not known (64-bit hwmon)


@dataclass
class EnergySensor:
    kind: str  # "rapl" | "hwmon"
    counters: list[Counter]
    update_interval_s: float
    notes: list[str] = field(default_factory=list)

    @property
    def source(self) -> str:
        parts = ", ".join(f"{c.path} ({c.label})" for c in self.counters)
        return f"{self.kind}: {parts}"

    def read(self) -> list[int]:
        """One reading per counter, in microjoules."""
        return [read_uj(c.path) for c in self.counters]

    def delta_uj(self, before: list[int], after: list[int]) -> int:
        """Energy between two readings, summed over counters, with wrap-around corrected."""
        return sum(counter_delta_uj(b, a, c.max_range_uj) for c, b, a in zip(self.counters, before, after))


class CounterError(ValueError):
    """A counter reading that cannot be turned into energy (e.g. it went backwards with no wrap range)."""


def read_uj(path: Path) -> int:
    """Read a sysfs counter file. Raises OSError (PermissionError for root-only files) or ValueError."""
    return int(_read_text(path).strip())


def _read_text(path: Path) -> str:
    with open(path, encoding="ascii") as f:
        return f.read()


def counter_delta_uj(before: int, after: int, max_range_uj: Optional[int]) -> int:
    """after - before, corrected for one wrap of a counter that restarts from 0 past ``max_range_uj``.

    The kernel's counter is raw_count * unit with max_range = (2**32 - 1) * unit, so the exact correction
    is max_range + one unit; the missing unit (~15-60 uJ) is far below the error bar and is ignored.
    More than one wrap per window cannot be seen; with RAPL's ~262 kJ range that needs a window longer
    than range / power (over 40 minutes at 100 W), far beyond any max_seconds we use.
    """
    delta = after - before
    if delta >= 0:
        return delta
    if not max_range_uj:
        raise CounterError(f"counter went backwards ({before} -> {after} uJ) and has no known wrap range")
    return delta + max_range_uj


# ---- discovery --------------------------------------------------------------------------------------


def find_sensor(sysfs_root: str = "/") -> tuple[Optional[EnergySensor], str]:
    """The best readable energy sensor under ``sysfs_root``, or (None, why none is usable)."""
    root = Path(sysfs_root)
    problems: list[str] = []
    for finder in (_find_rapl, _find_hwmon):
        sensor, found_problems = finder(root)
        if sensor is not None:
            sensor.notes.extend(f"not used: {p}" for p in problems)
            return sensor, ""
        problems.extend(found_problems)
    checked = f"{root / 'sys/class/powercap/intel-rapl:N/energy_uj'}, {root / HWMON_GLOB}"
    if problems:
        return None, f"energy counters exist but are not readable: {'; '.join(problems)} (checked: {checked})"
    return None, f"no readable energy sensor (checked: {checked})"


def _find_rapl(root: Path) -> tuple[Optional[EnergySensor], list[str]]:
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
    if problems or not counters:  # a partial set of packages would undercount: use all or none
        return None, problems
    return EnergySensor("rapl", counters, RAPL_UPDATE_INTERVAL_S), []


def _find_hwmon(root: Path) -> tuple[Optional[EnergySensor], list[str]]:
    """One hwmon counter (or the package/socket ones, summed): drivers such as amd_energy also expose
    per-core counters, and adding those to the socket counter would count energy twice."""
    readable, problems = [], []
    for path in sorted(root.glob(HWMON_GLOB)):
        problem = _probe(path, "needs read permission")
        if problem:
            problems.append(problem)
            continue
        label = _read_optional(path.with_name(path.name.replace("_input", "_label")))
        hwmon_name = _read_optional(path.parent / "name") or path.parent.name
        readable.append(Counter(path, f"{hwmon_name} {label}" if label else hwmon_name))
    packages = [c for c in readable if _PACKAGE_LABEL.search(c.label)]
    chosen = packages or readable[:1]
    if not chosen:
        return None, problems
    interval_ms = _read_int(chosen[0].path.parent / "update_interval")
    notes = [] if interval_ms else ["hwmon update interval unknown; 1 ms assumed for error_mj"]
    interval = interval_ms / 1000 if interval_ms else HWMON_DEFAULT_UPDATE_INTERVAL_S
    return EnergySensor("hwmon", chosen, interval, notes), []


def _probe(path: Path, permission_hint: str) -> str:
    """'' if the counter reads as an integer, otherwise what is wrong with it."""
    try:
        read_uj(path)
        return ""
    except PermissionError:
        return f"{path}: permission denied ({permission_hint})"
    except (OSError, ValueError) as exc:
        return f"{path}: {type(exc).__name__}: {exc}"


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


# ---- turning two readings into a result -------------------------------------------------------------


def unavailable(reason: str, source: Optional[str] = None) -> dict[str, Any]:
    return {"mj_per_inference": None, "status": f"unavailable: {reason}", "source": source, "error_mj": None}


def energy_result(
    sensor: EnergySensor, before: list[int], after: list[int], seconds: float, iterations: int
) -> dict[str, Any]:
    """Energy per inference = delta energy over the timed window / iterations, with its error bar.

    error_mj (per inference) = (P * T_update + 2 * resolution) / iterations, where P = delta / seconds
    is the mean power over the window and T_update the sensor's update interval: each read may be up to
    one update stale, and the two reads' staleness bounds the window's error by one interval of energy;
    each read also rounds to the counter resolution (1 uJ, negligible next to the first term).
    """
    try:
        delta_uj = sensor.delta_uj(before, after)
    except CounterError as exc:
        return unavailable(str(exc), sensor.source)
    if delta_uj <= 0:
        # A real window on a real package always consumes energy; a frozen counter is not "0 mJ".
        frozen = f"counter did not advance over a {seconds:.3f} s window ({before} -> {after} uJ)"
        return unavailable(frozen, sensor.source)
    power_w = delta_uj * 1e-6 / seconds if seconds > 0 else 0.0
    error_total_mj = power_w * sensor.update_interval_s * 1e3 + 2 * COUNTER_RESOLUTION_UJ / 1e3
    return {
        "mj_per_inference": delta_uj / 1e3 / iterations,
        "status": "measured",
        "source": sensor.source,
        "error_mj": error_total_mj / iterations,
        "total_mj": delta_uj / 1e3,
        "mean_power_w": power_w,
        "window_s": seconds,
        "note": "; ".join([NOTES[sensor.kind]] + sensor.notes),
    }
