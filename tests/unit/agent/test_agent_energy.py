"""Energy sensors of the on-device agent (edgekit/agent/energy.py).

This VM has no power sensors (no /sys/class/powercap, no hwmon), so every sysfs tree here is a FAKE that
the test builds under tmp_path, laid out like the real kernel interfaces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytest

from edgekit.agent import energy

RAPL_RANGE_UJ = 262_143_328_850  # a real max_energy_range_uj value from an Intel package zone


def fake_rapl(
    root: Path, zone: str, energy_uj: int, name: str = "package-0", max_range: Optional[int] = RAPL_RANGE_UJ
) -> Path:
    """FAKE powercap zone: <root>/sys/class/powercap/<zone>/{energy_uj, max_energy_range_uj, name}."""
    d = root / "sys/class/powercap" / zone
    d.mkdir(parents=True, exist_ok=True)
    (d / "energy_uj").write_text(f"{energy_uj}\n")
    (d / "name").write_text(f"{name}\n")
    if max_range is not None:
        (d / "max_energy_range_uj").write_text(f"{max_range}\n")
    return d / "energy_uj"


def fake_hwmon(
    root: Path, hwmon: str, counters: dict[int, tuple[int, Optional[str]]], name: str = "amd_energy"
) -> Path:
    """FAKE hwmon device: <root>/sys/class/hwmon/<hwmon>/{name, energyN_input, energyN_label}."""
    d = root / "sys/class/hwmon" / hwmon
    d.mkdir(parents=True, exist_ok=True)
    (d / "name").write_text(f"{name}\n")
    for n, (value, label) in counters.items():
        (d / f"energy{n}_input").write_text(f"{value}\n")
        if label is not None:
            (d / f"energy{n}_label").write_text(f"{label}\n")
    return d


# ---- counter arithmetic -----------------------------------------------------------------------------


def test_delta_without_wrap() -> None:
    assert energy.counter_delta_uj(1_000, 3_500, RAPL_RANGE_UJ) == 2_500


def test_delta_corrects_one_wrap() -> None:
    assert energy.counter_delta_uj(RAPL_RANGE_UJ - 1_000, 500, RAPL_RANGE_UJ) == 1_500


def test_backwards_without_a_range_is_an_error_not_a_negative_energy() -> None:
    with pytest.raises(energy.CounterError, match="went backwards"):
        energy.counter_delta_uj(5_000, 10, None)


# ---- RAPL -------------------------------------------------------------------------------------------


def test_rapl_uses_package_zones_only_and_corrects_wrap(tmp_path: Path) -> None:
    pkg = fake_rapl(tmp_path, "intel-rapl:0", RAPL_RANGE_UJ - 2_000_000)
    fake_rapl(tmp_path, "intel-rapl:0:0", 123, name="core")  # a subzone: part of package 0, must be ignored
    (tmp_path / "sys/class/powercap/intel-rapl").mkdir()  # the control-type directory, no counter

    sensor, reason = energy.find_sensor(str(tmp_path))
    assert sensor is not None and reason == ""
    assert sensor.kind == "rapl" and [c.path for c in sensor.counters] == [pkg]
    assert "package-0" in sensor.source and str(pkg) in sensor.source

    before = sensor.read()
    pkg.write_text("3000000\n")  # the counter wrapped past max_energy_range_uj during the window
    after = sensor.read()
    assert sensor.delta_uj(before, after) == 5_000_000

    result = energy.energy_result(sensor, before, after, seconds=0.5, iterations=100)
    assert result["status"] == "measured"
    assert result["mj_per_inference"] == pytest.approx(5_000 / 100)  # 5 J over 100 inferences
    # error = P * 1 ms + 2 uJ, per inference; P = 5 J / 0.5 s = 10 W -> 10 mJ + 0.002 mJ
    assert result["error_mj"] == pytest.approx((10.0 + 0.002) / 100)
    assert result["source"] == sensor.source
    assert "not idle-subtracted" in result["note"]


def test_rapl_sums_all_packages(tmp_path: Path) -> None:
    p0 = fake_rapl(tmp_path, "intel-rapl:0", 1_000, name="package-0")
    p1 = fake_rapl(tmp_path, "intel-rapl:1", 5_000, name="package-1")
    sensor, _ = energy.find_sensor(str(tmp_path))
    assert sensor is not None and len(sensor.counters) == 2
    before = sensor.read()
    p0.write_text("2000\n")
    p1.write_text("8000\n")
    assert sensor.delta_uj(before, sensor.read()) == 4_000


def test_root_only_rapl_is_reported_as_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_rapl(tmp_path, "intel-rapl:0", 1_000)
    _deny_reads_of(monkeypatch, "energy_uj")  # tests run as root here, so chmod would not block reads
    sensor, reason = energy.find_sensor(str(tmp_path))
    assert sensor is None
    assert "not readable" in reason and "permission denied" in reason and "root" in reason
    assert "intel-rapl:0/energy_uj" in reason


def test_unreadable_rapl_falls_back_to_hwmon_and_notes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_rapl(tmp_path, "intel-rapl:0", 1_000)
    fake_hwmon(tmp_path, "hwmon0", {1: (10, None)})
    _deny_reads_of(monkeypatch, "energy_uj")
    sensor, _ = energy.find_sensor(str(tmp_path))
    assert sensor is not None and sensor.kind == "hwmon"
    assert any("not used" in n and "permission denied" in n for n in sensor.notes)


def _deny_reads_of(monkeypatch: pytest.MonkeyPatch, file_name: str) -> None:
    real = energy._read_text

    def read(path: Path) -> str:
        if Path(path).name == file_name:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(energy, "_read_text", read)


# ---- hwmon ------------------------------------------------------------------------------------------


def test_hwmon_prefers_socket_counters_over_per_core_ones(tmp_path: Path) -> None:
    d = fake_hwmon(tmp_path, "hwmon2", {1: (100, "Ecore000"), 2: (200, "Ecore001"), 3: (9_000, "Esocket0")})
    (d / "update_interval").write_text("10\n")  # ms
    sensor, _ = energy.find_sensor(str(tmp_path))
    assert sensor is not None and sensor.kind == "hwmon"
    assert [c.path.name for c in sensor.counters] == ["energy3_input"]
    assert sensor.update_interval_s == pytest.approx(0.010)

    before = sensor.read()
    (d / "energy3_input").write_text("1009000\n")
    result = energy.energy_result(sensor, before, sensor.read(), seconds=1.0, iterations=1_000)
    assert result["mj_per_inference"] == pytest.approx(1.0)  # 1 J = 1000 mJ over 1000 inferences
    assert result["error_mj"] == pytest.approx((1.0 * 0.010 * 1e3 + 0.002) / 1_000)


def test_hwmon_without_labels_uses_one_counter_and_notes_the_assumed_interval(tmp_path: Path) -> None:
    fake_hwmon(tmp_path, "hwmon0", {1: (10, None), 2: (20, None)}, name="board")
    sensor, _ = energy.find_sensor(str(tmp_path))
    assert sensor is not None and [c.path.name for c in sensor.counters] == ["energy1_input"]
    assert sensor.update_interval_s == energy.HWMON_DEFAULT_UPDATE_INTERVAL_S
    assert any("1 ms assumed" in n for n in sensor.notes)


# ---- honesty when there is nothing to measure -------------------------------------------------------


def test_no_sensor_is_unavailable_never_zero(tmp_path: Path) -> None:
    sensor, reason = energy.find_sensor(str(tmp_path))
    assert sensor is None
    assert reason.startswith("no readable energy sensor (checked: ")
    assert "intel-rapl" in reason and "hwmon" in reason
    result = energy.unavailable(reason)
    assert result["mj_per_inference"] is None and result["error_mj"] is None
    assert result["status"].startswith("unavailable: ")


def test_a_counter_that_does_not_advance_is_unavailable(tmp_path: Path) -> None:
    fake_rapl(tmp_path, "intel-rapl:0", 42_000)
    sensor, _ = energy.find_sensor(str(tmp_path))
    assert sensor is not None
    reading = sensor.read()
    result = energy.energy_result(sensor, reading, sensor.read(), seconds=0.3, iterations=50)
    assert result["mj_per_inference"] is None
    assert result["status"].startswith("unavailable: counter did not advance over a 0.300 s window")
    assert result["source"] == sensor.source


def test_a_garbled_counter_is_reported(tmp_path: Path) -> None:
    fake_rapl(tmp_path, "intel-rapl:0", 0).write_text("not a number\n")
    sensor, reason = energy.find_sensor(str(tmp_path))
    assert sensor is None and "ValueError" in reason
