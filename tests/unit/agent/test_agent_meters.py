"""Energy meters of the on-device agent (edgekit/agent/meters.py, its sensors in edgekit/agent/sensors.py).

This machine has no energy or power sensors (no /sys/class/powercap, no hwmon, no vcgencmd). Every sysfs tree
here is a FAKE that the test builds under tmp_path, laid out like the real kernel interfaces, and every
command (vcgencmd, external meters) is a FAKE shell script the test writes into tmp_path; each fake says
so in its contents. Windows are real (short sleeps), so figures are checked against the window the meter
itself reports.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from edgekit.agent import meters, sensors

AGENT_DIR = Path(meters.__file__).resolve().parent
RAPL_RANGE_UJ = 262_143_328_850  # a real max_energy_range_uj value from an Intel package zone
FAST = 0.01  # sampling interval for the tests (s)


# ---- FAKE sensors ---------------------------------------------------------------------------------------


def put(path: Path, text: str) -> None:
    """Write atomically, so a sampler thread never reads a half-written FAKE sensor file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def fake_rapl(root: Path, zone: str, energy_uj: int, name: str = "package-0",
              max_range: Optional[int] = RAPL_RANGE_UJ) -> Path:
    """FAKE powercap zone: <root>/sys/class/powercap/<zone>/{energy_uj, max_energy_range_uj, name}."""
    d = root / "sys/class/powercap" / zone
    put(d / "energy_uj", f"{energy_uj}\n")
    put(d / "name", f"{name}\n")
    if max_range is not None:
        put(d / "max_energy_range_uj", f"{max_range}\n")
    return d / "energy_uj"


def fake_hwmon(root: Path, hwmon: str, name: str, files: dict[str, Any]) -> Path:
    """FAKE hwmon device: <root>/sys/class/hwmon/<hwmon>/{name, <file>: <value>...}."""
    d = root / "sys/class/hwmon" / hwmon
    put(d / "name", f"{name}\n")
    for file, value in files.items():
        put(d / file, f"{value}\n")
    return d


def fake_ina3221(d: Path, rails: dict[int, tuple[str, int, int]], update_interval_ms: int = 1) -> Path:
    """FAKE mainline ina3221 hwmon device in directory d: inK_label, inK_input (mV), currK_input (mA), plus
    the shunt-voltage channels in4..in6, the shunt sum in7 and the current sum curr4 the real driver has
    (which must never be mistaken for rails)."""
    put(d / "name", "ina3221\n")
    put(d / "update_interval", f"{update_interval_ms}\n")
    for k, (label, mv, ma) in rails.items():
        put(d / f"in{k}_label", f"{label}\n")
        put(d / f"in{k}_enable", "1\n")
        put(d / f"in{k}_input", f"{mv}\n")
        put(d / f"curr{k}_input", f"{ma}\n")
        put(d / f"in{k + 3}_input", "9999\n")  # shunt voltage in uV
    put(d / "in7_label", "sum of shunt voltages\n")
    put(d / "in7_input", "77777\n")
    put(d / "curr4_input", "88888\n")
    return d


def fake_script(tmp_path: Path, name: str, what: str, body: str) -> str:
    """A FAKE command (executable shell script) standing in for a real meter tool."""
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\n# FAKE {what}, written by tests/unit/agent/test_agent_meters.py: "
                    f"this machine has no such meter.\n{body}\n")
    path.chmod(0o755)
    return str(path)


# Real-looking `vcgencmd pmic_read_adc` output of a Raspberry Pi 5 (rail, kind, channel, value).
PMIC_READINGS = [
    ("3V7_WL_SW", "A", 0, 0.0), ("3V3_SYS", "A", 1, 0.05562030), ("1V8_SYS", "A", 2, 0.17470820),
    ("DDR_VDD2", "A", 3, 0.02147022), ("DDR_VDDQ", "A", 4, 0.0), ("1V1_SYS", "A", 5, 0.19286460),
    ("0V8_SYS", "A", 6, 0.34741740), ("VDD_CORE", "A", 7, 2.02200000), ("3V3_DAC", "A", 17, 0.00012210),
    ("3V3_ADC", "A", 18, 0.0), ("0V8_AON", "A", 16, 0.00122100), ("HDMI", "A", 22, 0.02222220),
    ("3V7_WL_SW", "V", 8, 3.73741600), ("3V3_SYS", "V", 9, 3.31153700), ("1V8_SYS", "V", 10, 1.79926700),
    ("DDR_VDD2", "V", 11, 1.11355300), ("DDR_VDDQ", "V", 12, 0.60561660), ("1V1_SYS", "V", 13, 1.10549400),
    ("0V8_SYS", "V", 14, 0.80073250), ("VDD_CORE", "V", 15, 0.88000000), ("3V3_DAC", "V", 20, 3.30402900),
    ("3V3_ADC", "V", 21, 3.30402900), ("0V8_AON", "V", 19, 0.79890110), ("HDMI", "V", 23, 5.17428600),
    ("EXT5V", "V", 24, 5.13000000), ("BATT", "V", 25, 0.0),  # voltage only: not power
]


def pmic_text() -> str:
    lines = []
    for rail, kind, channel, value in PMIC_READINGS:
        word = "current" if kind == "A" else "volt"
        lines.append(f"{rail}_{kind} {word}({channel})={value:.8f}{kind}".rjust(40))
    return "\n".join(lines) + "\n"


def pmic_expected_w() -> float:
    amps = {r: v for r, k, _, v in PMIC_READINGS if k == "A"}
    volts = {r: v for r, k, _, v in PMIC_READINGS if k == "V"}
    return sum(volts[r] * amps[r] for r in amps)  # every current rail has a voltage; EXT5V/BATT have no current


def fake_vcgencmd(tmp_path: Path) -> str:
    return fake_script(tmp_path, "vcgencmd", "vcgencmd of a Raspberry Pi 5", (
        'if [ "$1" != "pmic_read_adc" ]; then echo "Command not registered" >&2; exit 255; fi\n'
        f"cat <<'EOF'\n{pmic_text()}EOF"))


def measure(meter: meters.Meter, seconds: float, iterations: int, during: Optional[Callable[[], None]] = None,
            ) -> dict[str, Any]:
    """start, (change the FAKE sensor), sleep as the 'timed loop', stop, result."""
    meter.start()
    if during is not None:
        during()
    time.sleep(seconds)
    meter.stop()
    return meter.result(iterations)


def config(root: Path, **kw: Any) -> dict[str, Any]:
    """A config that only sees the FAKE tree (no vcgencmd unless given), samples fast, with short timeouts."""
    cfg: dict[str, Any] = {"sysfs_root": str(root), "vcgencmd": None, "interval_s": FAST, "command_timeout_s": 5.0}
    cfg.update(kw)
    return cfg


# ---- the module itself ----------------------------------------------------------------------------------


def test_runs_on_an_old_python(tmp_path: Path) -> None:
    """meters.py alone on Python 3.9, measuring a FAKE hwmon power sensor."""
    from edgekit.testing._envs import find_python

    old = os.environ.get("EDGEKIT_AGENT_OLD_PYTHON") or find_python("3.9")
    if not old:
        pytest.skip("no Python 3.9 here (set EDGEKIT_AGENT_OLD_PYTHON, or install python3.9)")
    fake_hwmon(tmp_path, "hwmon0", "fake_power", {"power1_input": 3_000_000})
    script = (f"import sys; sys.path.insert(0, {str(AGENT_DIR)!r}); import meters, time\n"
              f"m = meters.open_meter({{'sysfs_root': {str(tmp_path)!r}, 'vcgencmd': None, 'interval_s': 0.01}})\n"
              "m.measure_idle(0.05); m.start(); time.sleep(0.1); m.stop(); r = m.result(10)\n"
              "assert r['status'].startswith('measured'), r\n"  # idle == active here: net is within noise
              "assert abs(r['active_power_mw'] - 3000) < 1e-6, r\n")
    subprocess.run([old, "-I", "-c", script], check=True, timeout=60)


# ---- counter arithmetic -----------------------------------------------------------------------------


def test_counter_delta_without_and_with_one_wrap() -> None:
    assert sensors.counter_delta_uj(1_000, 3_500, RAPL_RANGE_UJ) == 2_500
    assert sensors.counter_delta_uj(RAPL_RANGE_UJ - 1_000, 500, RAPL_RANGE_UJ) == 1_500
    with pytest.raises(sensors.CounterError, match="went backwards"):
        sensors.counter_delta_uj(5_000, 10, None)


# ---- rapl ---------------------------------------------------------------------------------------------


def test_rapl_uses_package_zones_only_and_corrects_wrap(tmp_path: Path) -> None:
    pkg = fake_rapl(tmp_path, "intel-rapl:0", RAPL_RANGE_UJ - 2_000_000)
    fake_rapl(tmp_path, "intel-rapl:0:0", 123, name="core")  # a subzone: part of package 0, must be ignored
    (tmp_path / "sys/class/powercap/intel-rapl").mkdir()  # the control-type directory, no counter

    meter = meters.open_meter(config(tmp_path))
    assert meter.source == f"rapl: {pkg} (package-0)"
    assert "intel-rapl:0:0" not in meter.source

    # The counter wraps past max_energy_range_uj during the window: 2 J before the wrap + 3 J after.
    r = measure(meter, 0.05, 100, during=lambda: put(pkg, "3000000\n"))
    assert r["status"] == "measured" and r["source"] == meter.source
    assert r["energy_total_mj_per_inference"] == pytest.approx(5_000 / 100)
    window, tau = r["window_s"], r["interval_s"]
    assert 0.05 <= window < 5 and tau >= sensors.RAPL_UPDATE_INTERVAL_S
    # error (per inference) = (P * tau + 2 * 1 uJ) / N with P = 5 J / window
    assert r["energy_total_error_mj"] == pytest.approx(((5.0 / window) * tau + 2e-6) * 1e3 / 100)
    assert r["active_power_mw"] == pytest.approx(5.0 / window * 1e3)
    assert r["samples"] == 2
    # No idle baseline was measured: the net figure is not invented.
    assert r["energy_mj_per_inference"] is None and r["energy_error_mj"] is None and r["idle_power_mw"] is None
    assert "idle baseline not measured" in r["note"] and "CPU package energy" in r["note"]


def test_rapl_sums_all_packages(tmp_path: Path) -> None:
    p0 = fake_rapl(tmp_path, "intel-rapl:0", 1_000, name="package-0")
    p1 = fake_rapl(tmp_path, "intel-rapl:1", 5_000, name="package-1")
    meter = meters.open_meter(config(tmp_path))
    assert "package-0" in meter.source and "package-1" in meter.source

    def both() -> None:
        put(p0, "2001000\n")
        put(p1, "3005000\n")

    r = measure(meter, 0.02, 10, during=both)
    assert r["energy_total_mj_per_inference"] == pytest.approx(5_000 / 10)


def _deny_reads_of(monkeypatch: pytest.MonkeyPatch, file_name: str) -> None:
    """Simulate a root-only file: tests run as root here, so chmod 000 would not stop the reads."""
    real = sensors._read_text

    def read(path: Path) -> str:
        if Path(path).name == file_name:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(sensors, "_read_text", read)


def test_root_only_rapl_is_reported_as_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_rapl(tmp_path, "intel-rapl:0", 1_000)
    _deny_reads_of(monkeypatch, "energy_uj")
    meter = meters.open_meter(config(tmp_path))
    assert meter.source is None
    r = measure(meter, 0.01, 5)
    assert r["status"].startswith("unavailable: no readable energy or power sensor")
    assert "permission denied" in r["status"] and "root" in r["status"] and "intel-rapl:0/energy_uj" in r["status"]
    assert r["energy_total_mj_per_inference"] is None and r["energy_mj_per_inference"] is None


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="running as root: chmod 000 does not stop root from reading (covered by the "
                           "simulated PermissionError test above)")
def test_chmod_000_rapl_is_unreadable(tmp_path: Path) -> None:
    fake_rapl(tmp_path, "intel-rapl:0", 1_000).chmod(0)
    reason = sensors.describe_sources(str(tmp_path), vcgencmd=None)["reason"]
    assert "permission denied" in reason and "root" in reason


def test_an_unreadable_counter_path_is_reported(tmp_path: Path) -> None:
    """A FAKE zone whose energy_uj is a directory: present but not readable as a counter."""
    (tmp_path / "sys/class/powercap/intel-rapl:0/energy_uj").mkdir(parents=True)
    info = sensors.describe_sources(str(tmp_path), vcgencmd=None)
    assert info["available"] is False and "IsADirectoryError" in info["reason"]


def test_unreadable_rapl_falls_back_to_the_next_source_and_notes_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_rapl(tmp_path, "intel-rapl:0", 1_000)
    fake_hwmon(tmp_path, "hwmon0", "fake_power", {"power1_input": 1_000_000})
    _deny_reads_of(monkeypatch, "energy_uj")
    meter = meters.open_meter(config(tmp_path))
    assert meter.source is not None and meter.source.startswith("hwmon: ")
    r = measure(meter, 0.03, 3)
    assert "not used: rapl:" in r["note"] and "permission denied" in r["note"]


def test_a_counter_that_does_not_advance_is_unavailable_not_zero(tmp_path: Path) -> None:
    fake_rapl(tmp_path, "intel-rapl:0", 42_000)
    meter = meters.open_meter(config(tmp_path))
    r = measure(meter, 0.02, 50)
    assert r["status"].startswith("unavailable: counter did not advance over a ")
    assert r["energy_total_mj_per_inference"] is None and r["source"] == meter.source


# ---- jetson-ina3221 ---------------------------------------------------------------------------------


def test_ina3221_orin_uses_vdd_in_only(tmp_path: Path) -> None:
    """FAKE Orin Nano INA3221: VDD_IN is the module input; VDD_CPU_GPU_CV and VDD_SOC are parts of it."""
    d = fake_ina3221(tmp_path / "sys/class/hwmon/hwmon1",
                     {1: ("VDD_IN", 5080, 1510), 2: ("VDD_CPU_GPU_CV", 5072, 400), 3: ("VDD_SOC", 5064, 630)})
    meter = meters.open_meter(config(tmp_path))
    assert meter.source is not None and meter.source.startswith(f"jetson-ina3221: {d} in1 VDD_IN")
    assert "sub-rails not added: VDD_CPU_GPU_CV, VDD_SOC" in meter.source
    r = measure(meter, 0.15, 30)
    input_mw = 5080 * 1510 / 1000  # mV * mA / 1000 = mW
    assert r["status"] == "measured"
    assert r["active_power_mw"] == pytest.approx(input_mw, rel=1e-9)  # the input rail alone, nothing added
    assert r["energy_total_mj_per_inference"] == pytest.approx(input_mw * r["window_s"] / 30, rel=1e-9)
    assert r["samples"] >= 3 and "Jetson module input power" in r["note"]


def test_ina3221_nano_pom_5v_in_under_the_i2c_driver_path(tmp_path: Path) -> None:
    fake_ina3221(tmp_path / "sys/bus/i2c/drivers/ina3221/6-0040/hwmon/hwmon3",
                 {1: ("POM_5V_IN", 5000, 800), 2: ("POM_5V_GPU", 5000, 100), 3: ("POM_5V_CPU", 5000, 300)})
    meter = meters.open_meter(config(tmp_path))
    assert meter.sensor is not None and meter.sensor.read_w() == pytest.approx(4.0)  # type: ignore[attr-defined]
    assert "POM_5V_IN" in meter.source


def test_ina3221x_iio_of_older_l4t(tmp_path: Path) -> None:
    """FAKE L4T ina3221x iio device: rail_name_K and in_powerK_input (mW)."""
    d = tmp_path / "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0"
    for k, (name, mw) in enumerate([("VDD_IN", 4321), ("VDD_GPU", 1000), ("VDD_CPU", 900)]):
        put(d / f"rail_name_{k}", f"{name}\n")
        put(d / f"in_power{k}_input", f"{mw}\n")
    meter = meters.open_meter(config(tmp_path))
    assert meter.source is not None and "VDD_IN (in_power0_input mW" in meter.source
    r = measure(meter, 0.1, 10)
    assert r["active_power_mw"] == pytest.approx(4321, rel=1e-9)


def test_ina3221_without_an_input_rail_is_not_summed(tmp_path: Path) -> None:
    """FAKE AGX-Orin-like labels: no total input rail, so the sub-rails are not added up into a 'total'."""
    fake_ina3221(tmp_path / "sys/class/hwmon/hwmon0",
                 {1: ("VDD_GPU_SOC", 5000, 500), 2: ("VDD_CPU_CV", 5000, 500), 3: ("VIN_SYS_5V0", 5000, 500)})
    info = sensors.describe_sources(str(tmp_path), vcgencmd=None)
    assert info["available"] is False
    assert "no total-input rail among VDD_GPU_SOC, VDD_CPU_CV, VIN_SYS_5V0" in info["reason"]
    assert "never summed" in info["reason"]


# ---- pi5-pmic ---------------------------------------------------------------------------------------


def test_parse_pmic_output_pairs_current_and_voltage() -> None:
    rails = sensors.parse_pmic_output(pmic_text())
    assert rails["VDD_CORE"] == pytest.approx(2.022 * 0.88)
    assert "EXT5V" not in rails and "BATT" not in rails  # voltage only
    assert len(rails) == 12
    assert sum(rails.values()) == pytest.approx(pmic_expected_w())
    assert sensors.parse_pmic_output("error=1 error_msg=\"Command not registered\"\n") == {}


def test_pi5_pmic_with_a_fake_vcgencmd(tmp_path: Path) -> None:
    vcgencmd = fake_vcgencmd(tmp_path)
    meter = meters.open_meter(config(tmp_path, vcgencmd=vcgencmd, interval_s=0.02))
    assert meter.source is not None and meter.source.startswith(f"pi5-pmic: {vcgencmd} pmic_read_adc (sum of 12 rails")
    r = measure(meter, 0.2, 20)
    assert r["status"] == "measured"
    assert r["active_power_mw"] == pytest.approx(pmic_expected_w() * 1e3, rel=1e-9)
    assert "PMIC conversion losses" in r["note"]


def test_pi5_pmic_missing_or_failing_vcgencmd_is_not_a_source(tmp_path: Path) -> None:
    missing = sensors.describe_sources(str(tmp_path), vcgencmd=str(tmp_path / "no-such-vcgencmd"))
    assert any(c.startswith("pi5-pmic:") and "not found" in c for c in missing["checked"])
    pi4 = fake_script(tmp_path, "vcgencmd4", "vcgencmd of a Raspberry Pi 4 (no PMIC)",
                      'echo "Command not registered" >&2; exit 255')
    failing = sensors.describe_sources(str(tmp_path), vcgencmd=pi4)
    assert failing["available"] is False
    assert any("exited with status 255" in c and "Command not registered" in c for c in failing["checked"])


# ---- generic hwmon ----------------------------------------------------------------------------------


def test_hwmon_energy_prefers_socket_counters_over_per_core_ones(tmp_path: Path) -> None:
    d = fake_hwmon(tmp_path, "hwmon2", "amd_energy", {
        "energy1_input": 100, "energy1_label": "Ecore000", "energy2_input": 200, "energy2_label": "Ecore001",
        "energy3_input": 9_000, "energy3_label": "Esocket0", "update_interval": 10})
    meter = meters.open_meter(config(tmp_path))
    assert meter.source == f"hwmon: {d / 'energy3_input'} (amd_energy Esocket0)"
    r = measure(meter, 0.05, 1_000, during=lambda: put(d / "energy3_input", "1009000\n"))
    assert r["energy_total_mj_per_inference"] == pytest.approx(1.0)  # 1 J over 1000 inferences
    assert r["interval_s"] == pytest.approx(0.010)
    assert r["energy_total_error_mj"] == pytest.approx(((1.0 / r["window_s"]) * 0.010 + 2e-6) * 1e3 / 1_000)


def test_hwmon_power_sensor_is_sampled(tmp_path: Path) -> None:
    fake_hwmon(tmp_path, "hwmon0", "fake_power", {"power1_input": 2_500_000, "power1_label": "board"})  # uW
    meter = meters.open_meter(config(tmp_path))
    assert meter.source is not None and "power1_input (fake_power board, uW, sampled)" in meter.source
    r = measure(meter, 0.15, 15)
    assert r["active_power_mw"] == pytest.approx(2_500, rel=1e-9)
    assert r["energy_total_mj_per_inference"] == pytest.approx(2.5 * r["window_s"] * 1e3 / 15, rel=1e-9)
    assert r["interval_s"] >= FAST and r["samples"] >= 3


# ---- external -------------------------------------------------------------------------------------------


def test_parse_external_reading() -> None:
    assert sensors.parse_external_reading("J 12.345\n") == ("J", 12.345, pytest.approx(0.001))
    assert sensors.parse_external_reading("banner\n7.5W\n")[:2] == ("W", 7.5)
    assert sensors.parse_external_reading("3 J")[0] == "J"
    with pytest.raises(sensors.SensorError, match="expected 'J <joules>' or 'W <watts>'"):
        sensors.parse_external_reading("12.5 kWh")


def test_external_meter_in_joules_mode(tmp_path: Path) -> None:
    reading = tmp_path / "joules.txt"
    put(reading, "J 100.000\n")
    cmd = fake_script(tmp_path, "meter-j", "external energy meter (cumulative joules)", f'cat "{reading}"')
    meter = meters.open_meter(config(tmp_path, external=[cmd]))
    assert meter.source == f"external: {cmd} (cumulative joules)"
    r = measure(meter, 0.05, 50, during=lambda: put(reading, "J 102.500\n"))
    assert r["status"] == "measured" and r["samples"] == 2
    assert r["energy_total_mj_per_inference"] == pytest.approx(2_500 / 50)
    # tau is the longest read call (unknown meter refresh); r = 1 mJ from the printed precision
    tau = r["interval_s"]
    assert r["energy_total_error_mj"] == pytest.approx(((2.5 / r["window_s"]) * tau + 2 * 0.001) * 1e3 / 50)


def test_external_meter_in_watts_mode(tmp_path: Path) -> None:
    reading = tmp_path / "watts.txt"
    put(reading, "6.25 W\n")
    cmd = fake_script(tmp_path, "meter-w", "external power meter (watts)", f'cat "{reading}"')
    meter = meters.open_meter(config(tmp_path, external=[cmd]))
    assert meter.source == f"external: {cmd} (watts, sampled)"
    r = measure(meter, 0.15, 10)
    assert r["active_power_mw"] == pytest.approx(6_250, rel=1e-9)


def test_external_meter_takes_precedence_and_is_not_replaced_when_it_fails(tmp_path: Path) -> None:
    fake_rapl(tmp_path, "intel-rapl:0", 1_000)
    cmd = fake_script(tmp_path, "meter", "external power meter", 'echo "W 3"')
    assert meters.open_meter(config(tmp_path, external=[cmd])).source.startswith("external: ")
    broken = fake_script(tmp_path, "broken", "broken external meter", 'echo "no reading" ; exit 2')
    info = sensors.describe_sources(str(tmp_path), vcgencmd=None, external=[broken])
    assert info["available"] is False and "exited with status 2" in info["reason"]
    assert "no other sensor was tried" in info["reason"] and len(info["checked"]) == 1


# ---- preference order, nothing readable, power model, disabled ---------------------------------------------


def test_sources_are_preferred_in_order(tmp_path: Path) -> None:
    fake_rapl(tmp_path, "intel-rapl:0", 1_000)
    fake_ina3221(tmp_path / "sys/class/hwmon/hwmon1", {1: ("VDD_IN", 5000, 1000)})
    fake_hwmon(tmp_path, "hwmon0", "fake_power", {"power1_input": 1_000_000})
    vcgencmd = fake_vcgencmd(tmp_path)

    def first() -> str:
        sensor, _, _ = sensors.find_sensor(str(tmp_path), vcgencmd)
        assert sensor is not None
        return sensor.name

    assert first() == "rapl"
    (tmp_path / "sys/class/powercap/intel-rapl:0/energy_uj").unlink()
    assert first() == "jetson-ina3221"
    (tmp_path / "sys/class/hwmon/hwmon1/name").write_text("not-ina\n")
    assert first() == "pi5-pmic"
    os.unlink(vcgencmd)
    assert first() == "hwmon"


def test_nothing_readable_is_unavailable_with_what_was_checked(tmp_path: Path) -> None:
    meter = meters.open_meter(config(tmp_path, vcgencmd=str(tmp_path / "vcgencmd")))
    assert meter.source is None
    meter.measure_idle(0.01)
    r = measure(meter, 0.01, 10)
    assert set(r) == set(meters.RESULT_KEYS)
    assert r["status"].startswith("unavailable: no readable energy or power sensor (checked: ")
    for name in sensors.SOURCE_NAMES:
        assert f"{name}: " in r["status"], name
    assert all(r[k] is None for k in ("energy_mj_per_inference", "energy_total_mj_per_inference",
                                      "energy_error_mj", "idle_power_mw", "active_power_mw", "source"))
    info = sensors.describe_sources(str(tmp_path), vcgencmd=str(tmp_path / "vcgencmd"))
    assert info["available"] is False and info["source"] is None
    assert [c.split(":")[0] for c in info["checked"]] == list(sensors.SOURCE_NAMES)


def test_power_model_is_an_estimate_never_a_measurement(tmp_path: Path) -> None:
    meter = meters.open_meter(config(tmp_path, power_model={"idle_w": 2.0, "active_w": 7.0}))
    assert meter.source == "power-model: device profile (idle_w=2.0, active_w=7.0)"
    r = measure(meter, 0.05, 10)
    assert r["status"] == "estimated"
    assert r["energy_mj_per_inference"] == pytest.approx(5.0 * r["window_s"] * 1e3 / 10)
    assert r["energy_total_mj_per_inference"] == pytest.approx(7.0 * r["window_s"] * 1e3 / 10)
    assert r["idle_power_mw"] == 2_000 and r["active_power_mw"] == 7_000 and r["energy_error_mj"] is None
    assert "estimate from the device profile" in r["note"] and "no readable energy or power sensor" in r["note"]


def test_disabled_meter() -> None:
    meter = meters.open_meter(None)
    meter.measure_idle(0.01)
    r = measure(meter, 0.0, 1)
    assert r["status"] == "unavailable: disabled by request" and r["energy_total_mj_per_inference"] is None


@pytest.mark.parametrize("bad", [
    {"sysfs_rot": "/"}, {"interval_s": 0}, {"interval_s": True}, {"external": "meter"}, {"external": []},
    {"power_model": {"idle_w": 5.0, "active_w": 2.0}}, {"power_model": {"idle_w": 1.0}}, {"idle_seconds": -1},
])
def test_malformed_config_is_rejected(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="energy config"):
        meters.open_meter(bad)


# ---- idle subtraction, alignment, error bars ------------------------------------------------------------


def test_idle_power_is_subtracted(tmp_path: Path) -> None:
    """FAKE hwmon power file: 2 W while idle, 5 W during the window."""
    d = fake_hwmon(tmp_path, "hwmon0", "fake_power", {"power1_input": 2_000_000})
    meter = meters.open_meter(config(tmp_path))
    meter.measure_idle(0.1)
    put(d / "power1_input", "5000000\n")
    r = measure(meter, 0.2, 40)
    t, n = r["window_s"], 40
    assert r["status"] == "measured"
    assert r["idle_power_mw"] == pytest.approx(2_000, rel=1e-9)
    assert r["active_power_mw"] == pytest.approx(5_000, rel=1e-9)  # no idle sample leaks into the window
    assert r["energy_total_mj_per_inference"] == pytest.approx(5.0 * t * 1e3 / n, rel=1e-9)
    assert r["energy_mj_per_inference"] == pytest.approx((5.0 - 2.0) * t * 1e3 / n, rel=1e-9)
    # constant power: no standard-error term, only the edge term P * dt (idle SE is 0 too)
    assert r["energy_error_mj"] == pytest.approx(5.0 * r["interval_s"] * 1e3 / n, rel=1e-9)
    assert "above idle" in r["note"]


def test_idle_subtraction_with_an_external_watt_meter(tmp_path: Path) -> None:
    reading = tmp_path / "watts.txt"
    put(reading, "W 1.5\n")
    cmd = fake_script(tmp_path, "meter-w", "external power meter (watts)", f'cat "{reading}"')
    meter = meters.open_meter(config(tmp_path, external=[cmd], interval_s=0.02))
    meter.measure_idle(0.1)
    put(reading, "W 4.0\n")
    r = measure(meter, 0.15, 30)
    assert r["idle_power_mw"] == pytest.approx(1_500) and r["active_power_mw"] == pytest.approx(4_000)
    assert r["energy_mj_per_inference"] == pytest.approx(2.5 * r["window_s"] * 1e3 / 30, rel=1e-9)


def test_net_energy_within_idle_noise_is_reported_and_flagged(tmp_path: Path) -> None:
    d = fake_hwmon(tmp_path, "hwmon0", "fake_power", {"power1_input": 5_500_000})
    meter = meters.open_meter(config(tmp_path))
    meter.measure_idle(0.05)
    put(d / "power1_input", "5000000\n")
    r = measure(meter, 0.1, 10)
    assert r["status"] == "measured: within idle noise (net energy <= 0 after idle subtraction)"
    assert r["energy_mj_per_inference"] == pytest.approx(-0.5 * r["window_s"] * 1e3 / 10, rel=1e-9)
    assert r["energy_total_mj_per_inference"] > 0


def test_idle_counter_that_does_not_advance_leaves_net_unmeasured(tmp_path: Path) -> None:
    pkg = fake_rapl(tmp_path, "intel-rapl:0", 1_000)
    meter = meters.open_meter(config(tmp_path))
    meter.measure_idle(0.02)
    r = measure(meter, 0.02, 10, during=lambda: put(pkg, "501000\n"))
    assert r["status"] == "measured" and r["energy_total_mj_per_inference"] == pytest.approx(50.0)
    assert r["energy_mj_per_inference"] is None and "counter did not advance over" in r["note"]


def test_window_alignment_counts_only_the_window() -> None:
    samples = [(0.0, 100.0), (0.5, 100.0), (0.99, 100.0), (1.0, 5.0), (1.5, 5.0), (2.0, 5.0), (2.01, 100.0),
               (3.0, 100.0)]
    assert meters.integrate_window(samples, 1.0, 2.0) == (pytest.approx(5.0), 1)
    assert meters.integrate_window(samples, 1.25, 1.75)[0] == pytest.approx(2.5)
    # an edge between samples is interpolated: 0.49 s at 100 W, then 10 ms ramping 100 -> 5 W
    assert meters.integrate_window(samples, 0.5, 1.0)[0] == pytest.approx(49 + 0.01 * 52.5)
    # an edge outside the samples holds the nearest one
    assert meters.integrate_window(samples, -1.0, 0.0)[0] == pytest.approx(100.0)
    assert meters.integrate_window(list(reversed(samples)), 1.0, 2.0)[0] == pytest.approx(5.0)


def test_error_bar_shrinks_with_longer_windows_and_short_windows_are_flagged(tmp_path: Path) -> None:
    fake_hwmon(tmp_path, "hwmon0", "fake_power", {"power1_input": 4_000_000})
    rate = 1_000  # inferences per second, as a steady benchmark would give
    short = measure(meters.open_meter(config(tmp_path, interval_s=0.02)), 0.05, int(0.05 * rate))
    long = measure(meters.open_meter(config(tmp_path, interval_s=0.02)), 0.5, int(0.5 * rate))
    assert long["energy_total_error_mj"] < short["energy_total_error_mj"] / 3
    assert "too short to trust" in short["note"]
    assert "too short to trust" not in long["note"]


class _AlternatingPower(sensors.PowerSensor):
    """FAKE in-process power sensor alternating between 4 W and 6 W on every read."""

    name = "hwmon"

    def __init__(self) -> None:
        super().__init__("FAKE alternating power sensor", None)
        self.reads = 0

    def read_w(self) -> float:
        self.reads += 1
        return 4.0 if self.reads % 2 else 6.0


def test_noisy_samples_widen_the_error_bar_by_the_standard_error() -> None:
    meter = meters.Meter(_AlternatingPower(), config={"interval_s": FAST})
    r = measure(meter, 0.2, 20)
    edge_only = r["active_power_mw"] * r["interval_s"] / 20
    assert 4_000 < r["active_power_mw"] < 6_000
    assert r["energy_total_error_mj"] > edge_only * 1.01


# ---- sensors failing mid-run ----------------------------------------------------------------------------


def test_power_sensor_failing_mid_run_is_unavailable(tmp_path: Path) -> None:
    d = fake_hwmon(tmp_path, "hwmon0", "fake_power", {"power1_input": 3_000_000})
    meter = meters.open_meter(config(tmp_path))
    r = measure(meter, 0.1, 10, during=lambda: put(d / "power1_input", "garbage\n"))
    assert r["status"].startswith(f"unavailable: reading {meter.source} failed: ValueError")
    assert r["energy_total_mj_per_inference"] is None and r["source"] == meter.source


def test_counter_vanishing_mid_run_is_unavailable(tmp_path: Path) -> None:
    pkg = fake_rapl(tmp_path, "intel-rapl:0", 1_000)
    meter = meters.open_meter(config(tmp_path))
    r = measure(meter, 0.01, 10, during=pkg.unlink)
    assert r["status"].startswith("unavailable: reading rapl: ") and "FileNotFoundError" in r["status"]


def test_external_meter_failing_mid_run_is_unavailable(tmp_path: Path) -> None:
    flag = tmp_path / "unplugged"
    cmd = fake_script(tmp_path, "meter-w", "external power meter that gets unplugged",
                      f'if [ -e "{flag}" ]; then echo "meter unplugged" >&2; exit 3; fi\necho "W 2"')
    meter = meters.open_meter(config(tmp_path, external=[cmd]))
    meter.measure_idle(0.03)
    r = measure(meter, 0.1, 10, during=flag.touch)
    assert r["status"].startswith("unavailable: reading external: ") and "exited with status 3" in r["status"]
    assert "meter unplugged" in r["status"]


def test_idle_failure_is_a_note_not_a_crash(tmp_path: Path) -> None:
    d = fake_hwmon(tmp_path, "hwmon0", "fake_power", {"power1_input": 3_000_000})
    meter = meters.open_meter(config(tmp_path))
    put(d / "power1_input", "garbage\n")
    meter.measure_idle(0.02)
    put(d / "power1_input", "3000000\n")
    r = measure(meter, 0.05, 10)
    assert r["status"] == "measured" and r["energy_mj_per_inference"] is None
    assert "idle baseline not measured: reading hwmon:" in r["note"]
