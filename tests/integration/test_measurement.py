"""What a row measures, end to end through the agent on `local`: thread sweeps, memory phases, on-device
accuracy, per-op profiles, energy (a FAKE sysfs power sensor, since this VM has none) and run conditions."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import edgekit
from edgekit.config.bench import BenchConfig
from edgekit.results.rows import op_table
from edgekit.errors import ConfigError

pytestmark = pytest.mark.slow

QUICK: dict[str, Any] = {"warmup_iterations": 2, "warmup_seconds": 0.0, "min_iterations": 20, "min_seconds": 0.1,
                         "idle_seconds": 0.1}


@pytest.fixture(scope="module")
def x86_artifacts(digits_artifacts: Any) -> list[Any]:
    return digits_artifacts("x86")


def _pick(arts: list[Any], target: str, precision: str) -> Any:
    return next(a for a in arts if a.target == target and a.precision == precision)


def test_a_thread_sweep_gives_a_row_per_count_with_every_measurement(x86_artifacts: list[Any]) -> None:
    arts = [_pick(x86_artifacts, t, "int8") for t in ("onnx", "tflite", "executorch")]
    df = edgekit.benchmark(arts, config=BenchConfig(threads=(1, 2), **QUICK))
    assert sorted(zip(df["target"], df["threads"])) == [(t, n) for t in ("executorch", "onnx", "tflite") for n in (1, 2)]
    assert df["error"].isna().all(), df["error"].tolist()
    for _, r in df.iterrows():
        assert r["latency_ms_min"] <= r["latency_ms_p50"] <= r["latency_ms_p90"] <= r["latency_ms_p95"] \
            <= r["latency_ms_p99"] <= r["latency_ms_max"]
        assert r["latency_ms_p50_ci95_low"] <= r["latency_ms_p50"] <= r["latency_ms_p50_ci95_high"]
        assert len(r["latency_ms_samples"]) == r["iterations"] >= 20 and r["timed_seconds"] >= 0.1
        assert r["load_ms"] > 0 and r["first_inference_ms"] > 0 and r["runtime_import_ms"] >= 0
        # Memory: after-load and steady-state peaks apart (VmHWM reset between them), artifact size on disk.
        assert 0 < r["peak_rss_mb_steady"] <= r["peak_rss_mb"] and 0 < r["peak_rss_mb_after_load"] <= r["peak_rss_mb"]
        assert "clear_refs" in r["memory_method"] and r["artifact_bytes"] > 0
        # What was shipped, scored by the runtime that runs it: the same 360 held-out digits as on the host.
        assert r["device_eval_samples"] == 360 and r["device_accuracy"] == pytest.approx(r["accuracy"])
        # Run conditions are reported; this VM's missing sensors are None (never 0).
        assert isinstance(r["noisy"], bool) and isinstance(r["noisy_reasons"], list)
        assert r["cpu_freq_mhz_before"] is None or r["cpu_freq_mhz_before"] > 0
        assert r["runtime_version"] and r["python_version"] == ".".join(map(str, sys.version_info[:3]))
    assert df["recommended"].sum() == 1


def test_energy_is_unavailable_with_the_reason_on_this_vm_never_zero(x86_artifacts: list[Any]) -> None:
    df = edgekit.benchmark([_pick(x86_artifacts, "onnx", "int8")], config=BenchConfig(threads=1, **QUICK))
    row = df.iloc[0]
    assert row["energy_mj_per_inference"] is None or pd.isna(row["energy_mj_per_inference"])
    assert row["energy_status"].startswith("unavailable: no readable energy or power sensor")
    assert "rapl" in row["energy_status"] and "ina3221" in row["energy_status"] and "pi5-pmic" in row["energy_status"]


def test_energy_from_a_fake_hwmon_power_sensor_end_to_end(x86_artifacts: list[Any], tmp_path: Path) -> None:
    """FAKE sysfs tree: a generic hwmon power sensor reading a constant 3 W (this VM has no sensor)."""
    hwmon = tmp_path / "fake-root/sys/class/hwmon/hwmon0"
    hwmon.mkdir(parents=True)
    (hwmon / "name").write_text("fake_power\n")
    (hwmon / "power1_input").write_text("3000000\n")  # microwatts
    cfg = BenchConfig(threads=1, sensors_root=str(tmp_path / "fake-root"), energy_interval_s=0.01,
                      **{**QUICK, "min_seconds": 0.5, "idle_seconds": 0.3})
    row = edgekit.benchmark([_pick(x86_artifacts, "onnx", "fp32")], config=cfg).iloc[0]
    assert row["energy_status"].startswith("measured") and "power1_input" in row["energy_source"]
    assert row["energy_active_power_mw"] == pytest.approx(3000) and row["energy_idle_power_mw"] == pytest.approx(3000)
    # Gross energy per inference = 3 W x window / runs; above idle it is ~0 and the status says so.
    expected = 3000 * row["energy_window_s"] / row["iterations"]
    assert row["energy_total_mj_per_inference"] == pytest.approx(expected, rel=0.02)
    assert abs(row["energy_mj_per_inference"]) <= row["energy_error_mj"] and row["energy_error_mj"] > 0


def test_a_profile_power_model_gives_an_estimate_marked_as_such(tmp_path: Path) -> None:
    from edgekit.config.profile import PowerModel

    prof = edgekit.load_profile("x86").model_copy(update={"power_model": PowerModel(idle_w=2.0, active_w=5.0)})
    cm = edgekit.compress("digits-cnn", prof)
    arts = edgekit.export(cm, targets=["onnx"], precisions=["fp32"], out_dir=tmp_path / "a")
    row = edgekit.benchmark(arts, config=BenchConfig(threads=1, **QUICK)).iloc[0]
    assert row["energy_status"] == "estimated" and row["energy_source"].startswith("power-model")
    assert row["energy_mj_per_inference"] == pytest.approx(3000 * row["energy_window_s"] / row["iterations"], rel=0.01)


def test_per_op_profiles_where_the_runtime_has_one(x86_artifacts: list[Any]) -> None:
    arts = [_pick(x86_artifacts, t, "fp32") for t in ("onnx", "executorch", "tflite")]
    df = edgekit.benchmark(arts, config=BenchConfig(threads=1, profile_ops=True, **QUICK))
    ops = op_table(df)
    assert list(ops.columns) == ["device", "target", "precision", "threads", "op", "type", "time_ms", "share", "method"]
    for target in ("onnx", "executorch"):
        mine = ops[ops["target"] == target]
        assert len(mine) >= 3 and mine["share"].sum() == pytest.approx(1.0, abs=0.02), target
    onnx_types = set(ops[ops["target"] == "onnx"]["type"])
    assert onnx_types & {"Conv", "FusedConv", "Gemm", "FusedGemm"}
    tfl = df[df["target"] == "tflite"].iloc[0]["op_profile"]
    assert tfl["status"].startswith("unavailable") and "benchmark_model" in tfl["status"]


def test_bad_bench_settings_name_the_field() -> None:
    with pytest.raises(ConfigError, match="threads"):
        BenchConfig(threads=(1, 0))
    with pytest.raises(ConfigError, match="external_meter"):
        BenchConfig(external_meter="meter --joules")
    with pytest.raises(ConfigError, match="energy_interval_s"):
        BenchConfig(energy_interval_s=0)
    long = BenchConfig(min_seconds=300)  # MLPerf-style minutes: the bounds follow
    assert long.max_seconds == 600 and long.timeout > 600 + 300
    assert os.environ.get("EDGEKIT_DEVICES") is None
