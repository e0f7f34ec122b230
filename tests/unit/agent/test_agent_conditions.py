"""Device conditions of the on-device agent (edgekit/agent/conditions.py).

This VM has no cpufreq directories, no thermal zones and no vcgencmd (checked: /sys/devices/system/cpu/cpu0
has no cpufreq, /sys/class/thermal is empty; /proc/cpuinfo has "cpu MHz" lines). The real snapshot test
uses what is here; every other tree is a FAKE that the test builds under tmp_path, laid out like the
kernel's, and every vcgencmd is a FAKE shell script.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Dict, Optional

import pytest

from edgekit.agent import conditions

AGENT_SRC = Path(conditions.__file__)
NO_VCGENCMD = "/nonexistent/vcgencmd"


# ---- FAKE trees ---------------------------------------------------------------------------------------


def fake_cpus(root: Path, cores: Dict[int, tuple], online: Optional[str] = None) -> None:
    """FAKE cpufreq: <root>/sys/devices/system/cpu/cpuN/cpufreq/{scaling_governor, scaling_cur_freq (kHz)}.

    ``cores``: N -> (governor or None, kHz or None); None leaves that file out.
    """
    base = root / "sys/devices/system/cpu"
    for n, (governor, khz) in cores.items():
        d = base / f"cpu{n}" / "cpufreq"
        d.mkdir(parents=True, exist_ok=True)
        if governor is not None:
            (d / "scaling_governor").write_text(f"{governor}\n")
        if khz is not None:
            (d / "scaling_cur_freq").write_text(f"{khz}\n")
    if online is not None:
        (base / "online").write_text(f"{online}\n")


def set_freq(root: Path, n: int, khz: int) -> None:
    (root / f"sys/devices/system/cpu/cpu{n}/cpufreq/scaling_cur_freq").write_text(f"{khz}\n")


def fake_zone(root: Path, n: int, type_: str, milli_c: int, trip_milli_c: Optional[int] = None) -> Path:
    """FAKE thermal zone: <root>/sys/class/thermal/thermal_zoneN/{type, temp, trip_point_0_temp/_type}."""
    d = root / f"sys/class/thermal/thermal_zone{n}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "type").write_text(f"{type_}\n")
    (d / "temp").write_text(f"{milli_c}\n")
    if trip_milli_c is not None:
        (d / "trip_point_0_temp").write_text(f"{trip_milli_c}\n")
        (d / "trip_point_0_type").write_text("passive\n")
    return d


def fake_loadavg(root: Path, one: float, cores: int = 4) -> None:
    """FAKE <root>/proc/loadavg plus a <root>/sys/.../cpu/online naming ``cores`` CPUs."""
    (root / "proc").mkdir(parents=True, exist_ok=True)
    (root / "proc/loadavg").write_text(f"{one:.2f} 0.50 0.40 3/200 12345\n")
    base = root / "sys/devices/system/cpu"
    base.mkdir(parents=True, exist_ok=True)
    (base / "online").write_text(f"0-{cores - 1}\n")


def fake_vcgencmd(tmp_path: Path, output: str, code: int = 0, name: str = "vcgencmd") -> str:
    """FAKE vcgencmd: a shell script that prints ``output`` for get_throttled."""
    script = tmp_path / name
    script.write_text(f'#!/bin/sh\n[ "$1" = get_throttled ] || exit 9\necho "{output}"\nexit {code}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


# ---- the real machine ---------------------------------------------------------------------------------


def test_real_snapshot_does_not_crash_and_explains_every_gap() -> None:
    snap = conditions.snapshot()
    for key in ("cpu_governor", "cpu_freq_mhz", "thermal", "throttled", "load_avg"):
        if snap[key] is None:
            assert snap["unavailable"].get(key), f"{key} is None without a reason"
    assert isinstance(snap["time_monotonic_s"], float)
    if snap["cpu_freq_mhz"] is not None:
        assert snap["cpu_freq_method"]
        assert all(v is None or v > 0 for v in snap["cpu_freq_mhz"].values())
    if snap["load_avg"] is not None:
        assert len(snap["load_avg"]) == 3
    assert snap["cpu_count"] is None or snap["cpu_count"] >= 1
    after = conditions.snapshot()
    judged = conditions.judge(snap, after)
    row = conditions.summarize(snap, after, judged)
    assert isinstance(row["noisy"], bool) and isinstance(row["noisy_reasons"], list)
    if not os.path.exists("/sys/devices/system/cpu/cpu0/cpufreq"):
        assert "cpufreq" in snap["unavailable"]["cpu_governor"]
        assert row["cpu_governor"] is None


# ---- frequency and governor (FAKE) --------------------------------------------------------------------


def test_frequency_drop_is_noisy(tmp_path: Path) -> None:
    fake_cpus(tmp_path, {0: ("ondemand", 1_800_000), 1: ("ondemand", 1_800_000)}, online="0-1")
    before = conditions.snapshot(str(tmp_path), vcgencmd=NO_VCGENCMD)
    assert before["cpu_governor"] == {"cpu0": "ondemand", "cpu1": "ondemand"}
    assert before["cpu_freq_mhz"] == {"cpu0": 1800.0, "cpu1": 1800.0}
    assert before["cpu_freq_method"].startswith("sysfs cpufreq scaling_cur_freq")
    set_freq(tmp_path, 1, 1_500_000)  # -16.7 %
    after = conditions.snapshot(str(tmp_path), vcgencmd=NO_VCGENCMD)
    judged = conditions.judge(before, after)
    assert judged["noisy"]
    assert any(r.startswith("cpu1 frequency dropped 1800 -> 1500 MHz") for r in judged["noisy_reasons"])
    assert not any("cpu0" in r for r in judged["noisy_reasons"])
    assert any("ondemand" in n for n in judged["notes"])  # a moving governor is a note, not a reason
    row = conditions.summarize(before, after, judged)
    assert row["cpu_governor"] == "ondemand"
    assert row["cpu_freq_mhz_before"] == 1800.0
    assert row["cpu_freq_mhz_after"] == 1650.0
    assert row["cpu_freq_mhz_min_after"] == 1500.0
    assert row["noisy"] is True


def test_small_drop_within_threshold_and_fixed_governor_are_quiet(tmp_path: Path) -> None:
    fake_cpus(tmp_path, {0: ("performance", 2_400_000), 1: ("performance", 2_400_000)}, online="0-1")
    fake_loadavg(tmp_path, 0.1, cores=2)
    before = conditions.snapshot(str(tmp_path), vcgencmd=NO_VCGENCMD)
    set_freq(tmp_path, 0, 2_350_000)  # -2 %, under the 5 % default
    after = conditions.snapshot(str(tmp_path), vcgencmd=NO_VCGENCMD)
    judged = conditions.judge(before, after)
    assert judged == {"noisy": False, "noisy_reasons": [], "notes": []}
    assert conditions.judge(before, after, freq_drop=0.01)["noisy"]


def test_cpuinfo_cur_freq_fallback_and_a_core_without_reading(tmp_path: Path) -> None:
    fake_cpus(tmp_path, {0: ("schedutil", None), 1: ("schedutil", None)})
    (tmp_path / "sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_cur_freq").write_text("1200000\n")
    snap = conditions.snapshot(str(tmp_path), vcgencmd=NO_VCGENCMD)
    assert snap["cpu_freq_mhz"] == {"cpu0": 1200.0, "cpu1": None}
    assert "cpuinfo_cur_freq" in snap["cpu_freq_method"]
    assert "not present" in snap["unavailable"]["cpu_freq_mhz:cpu1"]
    assert snap["cpu_count"] == 2  # no 'online' file: counted from the cpuN directories


def test_proc_cpuinfo_fallback_without_cpufreq(tmp_path: Path) -> None:
    (tmp_path / "sys/devices/system/cpu/cpu0").mkdir(parents=True)
    (tmp_path / "sys/devices/system/cpu/cpu1").mkdir(parents=True)
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text(
        "processor\t: 0\nmodel name\t: FAKE\ncpu MHz\t\t: 2596.142\n\nprocessor\t: 1\ncpu MHz\t\t: 1400.5\n\n")
    snap = conditions.snapshot(str(tmp_path), vcgencmd=NO_VCGENCMD)
    assert snap["cpu_freq_mhz"] == {"cpu0": 2596.142, "cpu1": 1400.5}
    assert snap["cpu_freq_method"].startswith("proc/cpuinfo")
    assert snap["cpu_governor"] is None and "no cpufreq" in snap["unavailable"]["cpu_governor"]
    assert "cpu_freq_mhz" not in snap["unavailable"]


def test_arm_cpuinfo_without_mhz_lines_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "sys/devices/system/cpu/cpu0").mkdir(parents=True)
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text("processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd\n")
    snap = conditions.snapshot(str(tmp_path), vcgencmd=NO_VCGENCMD)
    assert snap["cpu_freq_mhz"] is None and snap["cpu_freq_method"] is None
    assert "no 'cpu MHz' lines" in snap["unavailable"]["cpu_freq_mhz"]


# ---- thermal (FAKE) -----------------------------------------------------------------------------------


def test_thermal_zones_read_in_celsius(tmp_path: Path) -> None:
    fake_zone(tmp_path, 0, "cpu-thermal", 48_312, trip_milli_c=80_000)
    fake_zone(tmp_path, 1, "gpu-thermal", 51_000)
    before = conditions.snapshot(str(tmp_path), vcgencmd=NO_VCGENCMD)
    assert before["thermal"]["thermal_zone0"] == {
        "type": "cpu-thermal", "temp_c": 48.312, "trip_point_0_temp_c": 80.0, "trip_point_0_type": "passive"}
    assert before["thermal"]["thermal_zone1"]["trip_point_0_temp_c"] is None
    assert "not present" in before["unavailable"]["thermal:thermal_zone1:trip_point_0_temp_c"]
    (tmp_path / "sys/class/thermal/thermal_zone0/temp").write_text("80000\n")  # reaches the trip point
    after = conditions.snapshot(str(tmp_path), vcgencmd=NO_VCGENCMD)
    judged = conditions.judge(before, after)
    assert judged["noisy"]
    assert any("thermal_zone0 (cpu-thermal) at 80 C after the run" in r for r in judged["noisy_reasons"])
    row = conditions.summarize(before, after, judged)
    assert row["temp_c_before"] == 51.0 and row["temp_c_after"] == 80.0


def test_unreadable_temp_is_none_not_zero(tmp_path: Path) -> None:
    zone = fake_zone(tmp_path, 0, "soc", 40_000)
    (zone / "temp").write_text("\n")  # some drivers answer with nothing (or EINVAL) while the sensor sleeps
    snap = conditions.snapshot(str(tmp_path), vcgencmd=NO_VCGENCMD)
    assert snap["thermal"]["thermal_zone0"]["temp_c"] is None
    assert snap["unavailable"]["thermal:thermal_zone0:temp_c"]
    assert snap["unavailable"]["thermal"] == "no thermal zone's temp could be read"
    assert conditions.summarize(snap, snap, conditions.judge(snap, snap))["temp_c_after"] is None


# ---- throttling (FAKE vcgencmd) -----------------------------------------------------------------------


def test_decode_throttled_bits() -> None:
    assert conditions.decode_throttled(0x50005) == [
        "under_voltage_now", "throttled_now", "under_voltage_occurred", "throttled_occurred"]
    assert conditions.decode_throttled(0) == []
    assert conditions.decode_throttled(0xF000F) == list(conditions.THROTTLE_BITS.values())


def test_fake_vcgencmd_throttled_now_is_noisy(tmp_path: Path) -> None:
    vc = fake_vcgencmd(tmp_path, "throttled=0x50005")
    snap = conditions.snapshot(str(tmp_path / "root"), vcgencmd=vc)
    assert snap["throttled"] == {
        "raw": "0x50005", "bits": 0x50005,
        "flags": ["under_voltage_now", "throttled_now", "under_voltage_occurred", "throttled_occurred"],
        "now": ["under_voltage_now", "throttled_now"],
        "occurred": ["under_voltage_occurred", "throttled_occurred"]}
    judged = conditions.judge(snap, snap)
    assert judged["noisy"]
    assert any(r.startswith("throttling active after the run: under_voltage_now, throttled_now") for r in judged["noisy_reasons"])
    row = conditions.summarize(snap, snap, judged)
    assert row["throttled"] is True
    assert row["throttled_flags"] == snap["throttled"]["flags"]


def test_throttling_that_newly_occurred_during_the_run_is_noisy(tmp_path: Path) -> None:
    before = conditions.snapshot(str(tmp_path / "root"), vcgencmd=fake_vcgencmd(tmp_path, "throttled=0x0", name="vc0"))
    after = conditions.snapshot(str(tmp_path / "root"), vcgencmd=fake_vcgencmd(tmp_path, "throttled=0x80000", name="vc1"))
    judged = conditions.judge(before, after)
    assert judged["noisy_reasons"] == [
        "throttling occurred during the run: soft_temp_limit_occurred (throttled=0x0 -> 0x80000)"]
    assert conditions.summarize(before, after, judged)["throttled"] is True
    # Already set before the run: a note, not noise; and not "throttled" for this run.
    judged_again = conditions.judge(after, after)
    assert judged_again["noisy"] is False and judged_again["notes"]
    assert conditions.summarize(after, after, judged_again)["throttled"] is False
    # No before-reading: bits that "occurred" since boot are not pinned on this run.
    unknown = conditions.snapshot(str(tmp_path / "root"), vcgencmd=NO_VCGENCMD)
    judged_unknown = conditions.judge(unknown, after)
    assert judged_unknown["noisy"] is False and "not known whether during the run" in judged_unknown["notes"][0]
    assert conditions.summarize(unknown, after, judged_unknown)["throttled"] is False


def test_clean_throttled_output(tmp_path: Path) -> None:
    snap = conditions.snapshot(str(tmp_path / "root"), vcgencmd=fake_vcgencmd(tmp_path, "throttled=0x0"))
    judged = conditions.judge(snap, snap)
    assert snap["throttled"]["flags"] == [] and not any("throttl" in r for r in judged["noisy_reasons"])
    row = conditions.summarize(snap, snap, judged)
    assert row["throttled"] is False and row["throttled_flags"] == []


def test_vcgencmd_failure_is_unavailable_with_its_output(tmp_path: Path) -> None:
    vc = fake_vcgencmd(tmp_path, "VCHI initialization failed", code=255)
    snap = conditions.snapshot(str(tmp_path / "root"), vcgencmd=vc)
    assert snap["throttled"] is None
    assert "exited 255" in snap["unavailable"]["throttled"]
    assert "VCHI initialization failed" in snap["unavailable"]["throttled"]


# ---- load (FAKE) --------------------------------------------------------------------------------------


def fake_proc_stat(root: Path, busy_ticks: int) -> None:
    """FAKE <root>/proc/stat: only the first ('cpu' total) line matters; idle/iowait are not busy."""
    (root / "proc").mkdir(parents=True, exist_ok=True)
    (root / "proc/stat").write_text(f"cpu  {busy_ticks} 0 0 999999 777 0 0 0 0 0\ncpu0 1 2 3 4\n")


def _window(tmp_path: Path, busy_before: int, busy_after: int, seconds: float, own_s: float = 0.0):
    fake_proc_stat(tmp_path, busy_before)
    before = conditions.snapshot(str(tmp_path), vcgencmd=NO_VCGENCMD)
    fake_proc_stat(tmp_path, busy_after)
    after = conditions.snapshot(str(tmp_path), vcgencmd=NO_VCGENCMD)
    # The window's length and this process's own CPU time, set exactly rather than waited for.
    after["time_monotonic_s"] = before["time_monotonic_s"] + seconds
    after["self_cpu_s"] = before["self_cpu_s"] + own_s
    return before, after


def test_other_processes_busy_during_the_window_make_it_noisy(tmp_path: Path) -> None:
    hz = os.sysconf("SC_CLK_TCK")
    # 2 s window: 3 core-seconds busy in total, 1 of them ours -> others kept 1.0 core busy.
    before, after = _window(tmp_path, 1000, 1000 + 3 * hz, 2.0, own_s=1.0)
    assert conditions.other_cpu_cores(before, after) == pytest.approx(1.0)
    judged = conditions.judge(before, after)
    assert judged["noisy"] and judged["noisy_reasons"][0].startswith("busy machine: other processes used 1.00 cores")
    assert conditions.summarize(before, after, judged)["other_cpu_cores"] == pytest.approx(1.0)


def test_our_own_cpu_time_and_an_old_load_average_are_not_noise(tmp_path: Path) -> None:
    hz = os.sysconf("SC_CLK_TCK")
    fake_loadavg(tmp_path, 3.5, cores=4)  # a minute of earlier runs: informative, not a reason
    before, after = _window(tmp_path, 1000, 1000 + 2 * hz, 2.0, own_s=1.95)
    judged = conditions.judge(before, after)
    assert not judged["noisy"], judged
    assert conditions.summarize(before, after, judged)["load_avg_1m_before"] == 3.5


def test_a_window_too_short_for_tick_counts_is_not_judged(tmp_path: Path) -> None:
    before, after = _window(tmp_path, 1000, 1100, 0.1)
    assert conditions.other_cpu_cores(before, after) is None


# ---- nothing at all (FAKE empty root) -----------------------------------------------------------------


def test_missing_everything_is_none_with_reasons(tmp_path: Path) -> None:
    snap = conditions.snapshot(str(tmp_path), vcgencmd=NO_VCGENCMD)
    for key in ("cpu_count", "cpu_governor", "cpu_freq_mhz", "cpu_freq_method", "thermal", "throttled", "load_avg",
                "cpu_busy_s"):
        assert snap[key] is None, key
    for key in ("cpu_count", "cpu_governor", "cpu_freq_mhz", "thermal", "throttled", "load_avg"):
        assert snap["unavailable"][key], key
    assert "not found" in snap["unavailable"]["throttled"]
    judged = conditions.judge(snap, snap)
    assert judged["noisy"] is False and judged["noisy_reasons"] == []
    row = conditions.summarize(snap, snap, judged)
    assert {k for k, v in row.items() if v is not None} == {"noisy", "noisy_reasons"}
    assert snap["unavailable"]["cpu_busy_s"]
    assert conditions.snapshot(str(tmp_path), vcgencmd=None)["unavailable"]["throttled"] == "vcgencmd query disabled"


def test_summary_has_the_row_fields() -> None:
    snap = conditions.snapshot("/nonexistent-root", vcgencmd=NO_VCGENCMD)
    row = conditions.summarize(snap, snap, conditions.judge(snap, snap))
    assert set(row) >= {
        "cpu_governor", "cpu_freq_mhz_before", "cpu_freq_mhz_after", "cpu_freq_mhz_min_after", "temp_c_before",
        "temp_c_after", "throttled", "throttled_flags", "load_avg_1m_before", "noisy", "noisy_reasons"}


# ---- device-side constraints --------------------------------------------------------------------------
