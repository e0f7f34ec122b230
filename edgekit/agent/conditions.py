"""Device conditions around a timed run: CPU governor and frequency, temperatures, throttling, load.

Why: a latency figure taken while the CPU was throttled, hot or busy is not the model's speed. So the agent
takes a ``snapshot`` before and after the timed loop, ``judge`` flags the run as noisy with the reasons, and
``summarize`` turns both into flat, row-ready fields.

Sources (paths relative to ``sysfs_root`` so tests can use fake trees):

- ``sys/devices/system/cpu/cpu*/cpufreq/scaling_governor``: the frequency governor of each core.
- ``sys/devices/system/cpu/cpu*/cpufreq/scaling_cur_freq`` (kHz), else ``cpuinfo_cur_freq``, else the
  ``cpu MHz`` lines of ``proc/cpuinfo`` (x86 only; on a VM this is often the hypervisor's fixed figure).
- ``sys/class/thermal/thermal_zone*/{temp,type,trip_point_0_temp}`` (millidegrees Celsius).
- ``vcgencmd get_throttled`` (Raspberry Pi firmware): under-voltage, frequency capping, throttling.
- ``proc/loadavg``.

Every item that cannot be read is None, with the reason under the same key in ``unavailable``: an
unreadable sensor never reads as 0. Standard library only (runs on the device).

Take the "before" snapshot before the model is loaded when you can: the 1-minute load average counts the
agent's own loading and warm-up too.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import time
from typing import Any, Dict, List, Optional

CPU_DIR = "sys/devices/system/cpu"
THERMAL_GLOB = "sys/class/thermal/thermal_zone*"
CPUINFO = "proc/cpuinfo"
LOADAVG = "proc/loadavg"

# Governors that hold the frequency still (userspace: at whatever a user fixed it to).
FIXED_GOVERNORS = ("performance", "userspace")
OTHERS_BUSY_CORES = 0.25  # other processes busy on average for more than a quarter core: they competed
MIN_SPAN_FOR_LOAD_S = 0.5  # /proc/stat counts 10 ms ticks: a shorter window cannot tell
VCGENCMD_TIMEOUT_S = 5.0

# vcgencmd get_throttled bits (Raspberry Pi firmware documentation).
THROTTLE_BITS = {
    0: "under_voltage_now",
    1: "arm_freq_capped_now",
    2: "throttled_now",
    3: "soft_temp_limit_now",
    16: "under_voltage_occurred",
    17: "arm_freq_capped_occurred",
    18: "throttled_occurred",
    19: "soft_temp_limit_occurred",
}
NOW_FLAGS = tuple(name for bit, name in THROTTLE_BITS.items() if bit < 16)
OCCURRED_FLAGS = tuple(name for bit, name in THROTTLE_BITS.items() if bit >= 16)

_CPU_NAME = re.compile(r"^cpu(\d+)$")
_THROTTLED = re.compile(r"throttled=(0x[0-9a-fA-F]+|\d+)")


# ---- snapshot ---------------------------------------------------------------------------------------


def snapshot(sysfs_root: str = "/", vcgencmd: Optional[str] = "vcgencmd") -> Dict[str, Any]:
    """The conditions now. ``vcgencmd``: command name or path; None skips the throttling query.

    Keys: time_monotonic_s, cpu_count, cpu_governor ({cpuN: str|None}), cpu_freq_mhz ({cpuN: float|None}),
    cpu_freq_method, thermal ({zone: {type, temp_c, trip_point_0_temp_c, trip_point_0_type}}),
    throttled ({raw, bits, flags, now, occurred}), load_avg ([1m, 5m, 15m]), unavailable ({key: reason}).
    """
    unavailable: Dict[str, str] = {}
    snap: Dict[str, Any] = {"time_monotonic_s": time.monotonic(), "sysfs_root": sysfs_root}
    cpus = _cpu_dirs(sysfs_root)
    snap["cpu_count"] = _cpu_count(sysfs_root, cpus, unavailable)
    snap["cpu_governor"] = _governors(sysfs_root, cpus, unavailable)
    snap["cpu_freq_mhz"], snap["cpu_freq_method"] = _frequencies(sysfs_root, cpus, unavailable)
    snap["thermal"] = _thermal(sysfs_root, unavailable)
    snap["throttled"] = _throttled(vcgencmd, unavailable)
    snap["load_avg"] = _load_avg(sysfs_root, unavailable)
    snap["cpu_busy_s"] = _cpu_busy_seconds(sysfs_root, unavailable)
    snap["self_cpu_s"] = _self_cpu_seconds()
    snap["unavailable"] = unavailable
    return snap


def _cpu_busy_seconds(root: str, unavailable: Dict[str, str]) -> Optional[float]:
    """All CPUs' non-idle time since boot (``proc/stat`` first line, idle and iowait excluded), in seconds."""
    try:
        fields = _read(_path(root, "proc/stat")).splitlines()[0].split()
        if fields[0] != "cpu":
            raise ValueError("first line is not the 'cpu' total")
        ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
        busy = sum(ticks) - ticks[3] - ticks[4]
        return busy / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError) as exc:
        unavailable["cpu_busy_s"] = _why(exc)
        return None


def _self_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _path(root: str, rel: str) -> str:
    return os.path.join(root, rel)


def _read(path: str) -> str:
    with open(path, encoding="ascii", errors="replace") as f:
        return f.read().strip()


def _why(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"{exc.filename}: not present"
    if isinstance(exc, PermissionError):
        return f"{exc.filename}: permission denied"
    if isinstance(exc, OSError):
        return f"{getattr(exc, 'filename', '') or ''}: {exc.strerror or exc}".lstrip(": ")
    return f"{type(exc).__name__}: {exc}"


def _cpu_dirs(root: str) -> List[str]:
    """cpuN names under sys/devices/system/cpu, in numeric order."""
    try:
        names = os.listdir(_path(root, CPU_DIR))
    except OSError:
        return []
    found = [n for n in names if _CPU_NAME.match(n) and os.path.isdir(_path(root, f"{CPU_DIR}/{n}"))]
    return sorted(found, key=lambda n: int(n[3:]))


def _parse_cpu_list(text: str) -> List[int]:
    """'0-3,5' -> [0, 1, 2, 3, 5]."""
    cpus: List[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def _cpu_count(root: str, cpus: List[str], unavailable: Dict[str, str]) -> Optional[int]:
    try:
        online = _parse_cpu_list(_read(_path(root, f"{CPU_DIR}/online")))
        if online:
            return len(online)
    except (OSError, ValueError):
        pass
    if cpus:
        return len(cpus)
    try:
        n = sum(1 for line in _read(_path(root, CPUINFO)).splitlines() if line.split(":")[0].strip() == "processor")
        if n:
            return n
        unavailable["cpu_count"] = f"no CPUs under {_path(root, CPU_DIR)} and no processor lines in {_path(root, CPUINFO)}"
    except OSError as exc:
        unavailable["cpu_count"] = f"no CPUs under {_path(root, CPU_DIR)}; {_why(exc)}"
    return None


def _per_cpu(root: str, cpus: List[str], names: List[str], key: str, unavailable: Dict[str, str],
             parse: Any) -> Optional[Dict[str, Any]]:
    """Read the first readable of ``names`` in each cpuN/cpufreq; None when no core has cpufreq at all."""
    if not cpus:
        unavailable[key] = f"no cpuN directories under {_path(root, CPU_DIR)}"
        return None
    if not any(os.path.isdir(_path(root, f"{CPU_DIR}/{c}/cpufreq")) for c in cpus):
        unavailable[key] = (f"no cpufreq under {_path(root, CPU_DIR)}/cpu*/ (the kernel or the VM exposes "
                            "no frequency scaling)")
        return None
    values: Dict[str, Any] = {}
    for cpu in cpus:
        errors = []
        for name in names:
            try:
                values[cpu] = parse(_read(_path(root, f"{CPU_DIR}/{cpu}/cpufreq/{name}")))
                values[cpu + ":source"] = name
                break
            except (OSError, ValueError) as exc:
                errors.append(_why(exc))
        else:
            values[cpu] = None
            unavailable[f"{key}:{cpu}"] = "; ".join(errors)
    if all(values[c] is None for c in cpus):
        unavailable[key] = "no core's cpufreq could be read"
        return None
    return values


def _governors(root: str, cpus: List[str], unavailable: Dict[str, str]) -> Optional[Dict[str, Optional[str]]]:
    values = _per_cpu(root, cpus, ["scaling_governor"], "cpu_governor", unavailable, str)
    return None if values is None else {c: values[c] for c in cpus}


def _frequencies(root: str, cpus: List[str], unavailable: Dict[str, str]
                 ) -> "tuple[Optional[Dict[str, Optional[float]]], Optional[str]]":
    sub: Dict[str, str] = {}
    values = _per_cpu(root, cpus, ["scaling_cur_freq", "cpuinfo_cur_freq"], "cpu_freq_mhz", sub,
                      lambda s: int(s) / 1000.0)
    if values is not None:
        unavailable.update(sub)
        sources = sorted({values[c + ":source"] for c in cpus if values[c] is not None})
        return {c: values[c] for c in cpus}, "sysfs cpufreq " + ",".join(sources) + " (kHz)"
    # No cpufreq: /proc/cpuinfo "cpu MHz" (x86; ARM kernels print no such line).
    per_core = {k: v for k, v in sub.items() if k != "cpu_freq_mhz"}
    try:
        mhz = _cpuinfo_mhz(_read(_path(root, CPUINFO)))
    except OSError as exc:
        unavailable.update(per_core)
        unavailable["cpu_freq_mhz"] = f"{sub.get('cpu_freq_mhz', 'no cpufreq')}; {_why(exc)}"
        return None, None
    if not mhz:
        unavailable.update(per_core)
        unavailable["cpu_freq_mhz"] = f"{sub.get('cpu_freq_mhz', 'no cpufreq')}; no 'cpu MHz' lines in {_path(root, CPUINFO)}"
        return None, None
    return mhz, "proc/cpuinfo 'cpu MHz' (no cpufreq; on a VM this may be a fixed figure)"


def _cpuinfo_mhz(text: str) -> Dict[str, Optional[float]]:
    out: Dict[str, Optional[float]] = {}
    processor: Optional[int] = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "processor":
            try:
                processor = int(value.strip())
            except ValueError:
                processor = None
        elif key == "cpu MHz":
            try:
                mhz: Optional[float] = float(value.strip())
            except ValueError:
                mhz = None
            out[f"cpu{processor if processor is not None else len(out)}"] = mhz
    return out


def _thermal(root: str, unavailable: Dict[str, str]) -> Optional[Dict[str, Dict[str, Any]]]:
    zones = sorted(glob.glob(_path(root, THERMAL_GLOB)), key=lambda p: _zone_number(p))
    if not zones:
        unavailable["thermal"] = f"no thermal zones under {_path(root, 'sys/class/thermal')}"
        return None
    out: Dict[str, Dict[str, Any]] = {}
    for zone in zones:
        name = os.path.basename(zone)
        entry: Dict[str, Any] = {"type": None, "temp_c": None, "trip_point_0_temp_c": None, "trip_point_0_type": None}
        for field, fname, parse in (("type", "type", str), ("temp_c", "temp", _milli),
                                    ("trip_point_0_temp_c", "trip_point_0_temp", _milli),
                                    ("trip_point_0_type", "trip_point_0_type", str)):
            try:
                entry[field] = parse(_read(os.path.join(zone, fname)))
            except (OSError, ValueError) as exc:
                unavailable[f"thermal:{name}:{field}"] = _why(exc)
        out[name] = entry
    if all(z["temp_c"] is None for z in out.values()):
        unavailable["thermal"] = "no thermal zone's temp could be read"
    return out


def _zone_number(path: str) -> int:
    digits = re.sub(r"\D", "", os.path.basename(path))
    return int(digits) if digits else -1


def _milli(text: str) -> float:
    return int(text) / 1000.0


def decode_throttled(value: int) -> List[str]:
    """Names of the set bits of a ``vcgencmd get_throttled`` value, low bits first."""
    return [name for bit, name in sorted(THROTTLE_BITS.items()) if value & (1 << bit)]


def _throttled(vcgencmd: Optional[str], unavailable: Dict[str, str]) -> Optional[Dict[str, Any]]:
    if not vcgencmd:
        unavailable["throttled"] = "vcgencmd query disabled"
        return None
    try:
        proc = subprocess.run([vcgencmd, "get_throttled"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, timeout=VCGENCMD_TIMEOUT_S, check=False)
    except FileNotFoundError:
        unavailable["throttled"] = f"{vcgencmd} not found (not a Raspberry Pi, or its firmware tools are not installed)"
        return None
    except (OSError, subprocess.SubprocessError) as exc:
        unavailable["throttled"] = f"{vcgencmd} get_throttled failed: {type(exc).__name__}: {exc}"
        return None
    out = proc.stdout.decode("utf-8", "replace").strip()
    m = _THROTTLED.search(out)
    if proc.returncode != 0 or m is None:
        err = proc.stderr.decode("utf-8", "replace").strip()
        unavailable["throttled"] = (f"{vcgencmd} get_throttled exited {proc.returncode}: "
                                    f"{(out + ' ' + err).strip()[:200] or 'no output'}")
        return None
    bits = int(m.group(1), 0)
    flags = decode_throttled(bits)
    return {"raw": m.group(1), "bits": bits, "flags": flags,
            "now": [f for f in flags if f in NOW_FLAGS], "occurred": [f for f in flags if f in OCCURRED_FLAGS]}


def _load_avg(root: str, unavailable: Dict[str, str]) -> Optional[List[float]]:
    try:
        return [float(v) for v in _read(_path(root, LOADAVG)).split()[:3]]
    except (OSError, ValueError) as exc:
        unavailable["load_avg"] = _why(exc)
        return None


# ---- judging ----------------------------------------------------------------------------------------


def judge(before: Dict[str, Any], after: Dict[str, Any], *, freq_drop: float = 0.05) -> Dict[str, Any]:
    """Was the run between two snapshots disturbed? {"noisy", "noisy_reasons", "notes"}.

    Noisy: a core's frequency fell by more than ``freq_drop`` (a fraction), a throttling bit is set now or
    newly "occurred", a thermal zone is at or over its trip point 0, or other processes kept more than
    OTHERS_BUSY_CORES cores busy during the run (CPU time from /proc/stat minus this process's own). A governor that can move the frequency is only a note: the frequency check
    catches what it did.
    """
    reasons: List[str] = []
    notes: List[str] = []
    reasons += _freq_reasons(before.get("cpu_freq_mhz"), after.get("cpu_freq_mhz"), freq_drop)
    r, n = _throttle_reasons(before.get("throttled"), after.get("throttled"))
    reasons += r
    notes += n
    reasons += _thermal_reasons(before.get("thermal"), "before")
    reasons += _thermal_reasons(after.get("thermal"), "after")
    others = other_cpu_cores(before, after)
    if others is not None and others > OTHERS_BUSY_CORES:
        reasons.append(f"busy machine: other processes used {others:.2f} cores on average during the run "
                       f"(limit {OTHERS_BUSY_CORES:g})")
    governors = sorted({g for snap in (before, after) for g in (snap.get("cpu_governor") or {}).values() if g})
    moving = [g for g in governors if g not in FIXED_GOVERNORS]
    if moving:
        notes.append(f"governor {', '.join(moving)} may change the CPU frequency during a run; "
                     "'performance' holds it at the maximum")
    for what, snap in (("before", before), ("after", after)):
        if snap.get("cpu_freq_mhz") is None:
            notes.append(f"CPU frequency not known {what} the run: "
                         f"{snap.get('unavailable', {}).get('cpu_freq_mhz', 'not read')}")
    return {"noisy": bool(reasons), "noisy_reasons": reasons, "notes": notes}


def other_cpu_cores(before: Dict[str, Any], after: Dict[str, Any]) -> Optional[float]:
    """Mean number of cores kept busy by everything but this process between two snapshots.

    Why not the load average: it decays over a minute, so it still counts the previous artifact's run
    (ours) and this process's own model load; CPU time deltas over exactly the window do not.
    """
    b, a = before.get("cpu_busy_s"), after.get("cpu_busy_s")
    span = after.get("time_monotonic_s", 0.0) - before.get("time_monotonic_s", 0.0)
    if b is None or a is None or span < MIN_SPAN_FOR_LOAD_S:
        return None
    own = after.get("self_cpu_s", 0.0) - before.get("self_cpu_s", 0.0)
    return max(0.0, (a - b - own) / span)


def _freq_reasons(before: Optional[Dict[str, Optional[float]]], after: Optional[Dict[str, Optional[float]]],
                  freq_drop: float) -> List[str]:
    if not before or not after:
        return []
    out = []
    for cpu in sorted(set(before) & set(after), key=lambda c: (len(c), c)):
        b, a = before[cpu], after[cpu]
        if b and a is not None and a < b * (1.0 - freq_drop):
            out.append(f"{cpu} frequency dropped {b:g} -> {a:g} MHz ({(a - b) / b:+.1%}, limit -{freq_drop:.0%})")
    return out


def _throttle_reasons(before: Optional[Dict[str, Any]], after: Optional[Dict[str, Any]]) -> "tuple[List[str], List[str]]":
    reasons: List[str] = []
    notes: List[str] = []
    for what, snap in (("before", before), ("after", after)):
        if snap and snap["now"]:
            reasons.append(f"throttling active {what} the run: {', '.join(snap['now'])} (throttled={snap['raw']})")
    if after and after["occurred"]:
        if before is None:
            notes.append(f"throttling has occurred since boot ({', '.join(after['occurred'])}); "
                         "not known whether during the run")
        else:
            new = [f for f in after["occurred"] if f not in before["occurred"]]
            if new:
                reasons.append(f"throttling occurred during the run: {', '.join(new)} "
                               f"(throttled={before['raw']} -> {after['raw']})")
            else:
                notes.append(f"throttling had occurred before the run ({', '.join(after['occurred'])})")
    return reasons, notes


def _thermal_reasons(thermal: Optional[Dict[str, Dict[str, Any]]], what: str) -> List[str]:
    out = []
    for zone, z in (thermal or {}).items():
        temp, trip = z.get("temp_c"), z.get("trip_point_0_temp_c")
        if temp is not None and trip is not None and temp >= trip:
            out.append(f"{zone} ({z.get('type')}) at {temp:g} C {what} the run, at or over its trip point "
                       f"{trip:g} C ({z.get('trip_point_0_type') or 'type unknown'})")
    return out


# ---- flat fields ------------------------------------------------------------------------------------


def summarize(before: Dict[str, Any], after: Dict[str, Any], judged: Dict[str, Any]) -> Dict[str, Any]:
    """Row-ready fields, units in the names; None where the device did not say."""
    governors = sorted({g for snap in (after, before) for g in (snap.get("cpu_governor") or {}).values() if g})
    freqs_after = _values(after.get("cpu_freq_mhz"))
    throttled_after = after.get("throttled")
    if throttled_after is None:
        throttled, flags = None, None
    else:
        # As judge(): "occurred" bits count only when the before-snapshot shows they are new.
        earlier = before.get("throttled")
        new = [] if earlier is None else [f for f in throttled_after["occurred"] if f not in earlier["occurred"]]
        throttled = bool(throttled_after["now"]) or bool(new)
        flags = list(throttled_after["flags"])
    load = before.get("load_avg")
    return {
        "cpu_governor": ",".join(governors) if governors else None,
        "cpu_freq_method": after.get("cpu_freq_method") or before.get("cpu_freq_method"),
        "cpu_freq_mhz_before": _mean(_values(before.get("cpu_freq_mhz"))),
        "cpu_freq_mhz_after": _mean(freqs_after),
        "cpu_freq_mhz_min_after": min(freqs_after) if freqs_after else None,
        "temp_c_before": _max_temp(before.get("thermal")),
        "temp_c_after": _max_temp(after.get("thermal")),
        "throttled": throttled,
        "throttled_flags": flags,
        "load_avg_1m_before": load[0] if load else None,
        "other_cpu_cores": other_cpu_cores(before, after),
        "noisy": judged["noisy"],
        "noisy_reasons": list(judged["noisy_reasons"]),
    }


def _values(per_cpu: Optional[Dict[str, Optional[float]]]) -> List[float]:
    return [v for v in (per_cpu or {}).values() if v is not None]


def _mean(values: List[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def _max_temp(thermal: Optional[Dict[str, Dict[str, Any]]]) -> Optional[float]:
    temps = [z["temp_c"] for z in (thermal or {}).values() if z.get("temp_c") is not None]
    return max(temps) if temps else None
