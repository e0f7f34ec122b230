"""The ``edgekit`` command as a user runs it: a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]


def edgekit(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "edgekit", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=900)


@pytest.mark.slow
def test_deploy_json_and_parquet(tmp_path: Path) -> None:
    res = edgekit("deploy", "--device", "local", "--model", "digits-cnn", "--targets", "onnx,tflite",
                  "--precisions", "int8", "--min-seconds", "0.2", "--json", "--out", "rows.parquet", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(res.stdout)  # stdout holds only the JSON: toolchain chatter went to the export logs
    assert [r["target"] for r in rows if r["recommended"]] == [rows[0]["target"]]
    required = {"device", "profile", "model", "target", "precision", "artifact_bytes", "parity_max_abs_err",
                "parity_cosine", "parity_ok", "accuracy", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99",
                "latency_ms_mean", "iterations", "peak_rss_mb", "energy_mj_per_inference", "energy_status"}
    assert required <= set(rows[0])
    assert {(r["target"], r["precision"]) for r in rows} == {("onnx", "int8"), ("tflite", "int8")}
    assert all(r["energy_mj_per_inference"] is None and r["energy_status"].startswith("unavailable") for r in rows)
    df = pd.read_parquet(tmp_path / "rows.parquet")
    assert list(df["target"]) == [r["target"] for r in rows]
    assert len(df.loc[0, "latency_ms_samples"]) == rows[0]["iterations"]
    assert (tmp_path / "artifacts" / "digits-cnn" / "x86" / "onnx-int8" / "model.onnx").is_file()


@pytest.mark.slow
def test_deploy_table_marks_the_recommended_row(tmp_path: Path) -> None:
    res = edgekit("deploy", "--model", "digits-cnn", "--targets", "onnx", "--min-seconds", "0.1", "--jobs", "1",
                  cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "digits-cnn on local (profile x86)" in res.stdout
    assert "fp32 PyTorch reference accuracy" in res.stdout and "energy: unavailable" in res.stdout


def test_unknown_model_fails_with_the_valid_names(tmp_path: Path) -> None:
    res = edgekit("deploy", "--model", "mobilenet-v3", cwd=tmp_path)
    assert res.returncode == 2
    assert "unknown model 'mobilenet-v3'" in res.stderr and "mobilenet-v2" in res.stderr
    assert "Traceback" not in res.stderr


def test_unknown_profile_and_device_fail_clearly(tmp_path: Path) -> None:
    res = edgekit("deploy", "--model", "digits-cnn", "--profile", "pi5", cwd=tmp_path)
    assert res.returncode == 2 and "unknown profile 'pi5'" in res.stderr and "pi4" in res.stderr
    res = edgekit("deploy", "--model", "digits-cnn", "--device", "pi4", cwd=tmp_path)
    assert res.returncode == 2 and "unknown device 'pi4'" in res.stderr


def test_profiles_lists_builtin_and_user_profiles(tmp_path: Path) -> None:
    extra = tmp_path / "mine"
    extra.mkdir()
    (extra / "rk3588.yaml").write_text(
        "name: rk3588\narch: aarch64\nbackend: xnnpack\nprecisions: [int8]\ntargets: [tflite]\n")
    res = edgekit("--profiles", str(extra), "profiles", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert set(rows) == {"jetson-orin", "pi4", "x86", "rk3588"}
    assert rows["x86"]["host"] is True and rows["pi4"]["pruning"] == "channel"


def test_bad_profile_file_error_names_file_and_field(tmp_path: Path) -> None:
    extra = tmp_path / "mine"
    extra.mkdir()
    (extra / "oops.yaml").write_text("name: oops\narch: x86_64\nbackend: fbgemm\nprecisions: [fp8]\ntargets: [onnx]\n")
    res = edgekit("--profiles", str(extra), "profiles", cwd=tmp_path)
    assert res.returncode == 2
    assert "oops.yaml:4" in res.stderr and "precisions.0" in res.stderr


@pytest.mark.slow
def test_an_artifact_out_of_tolerance_is_flagged_and_not_recommended(tmp_path: Path) -> None:
    """A user target with a tolerance no int8 artifact can meet: the row stays, flagged, never recommended."""
    targets = tmp_path / "targets"
    targets.mkdir()
    (targets / "onnx-strict.yaml").write_text(
        "name: onnx-strict\nformat: onnx\nextension: .onnx\nprecisions: [fp32, int8]\n"
        "tolerance:\n  fp32: {max_abs_err: 1.0e-3}\n  int8: {max_abs_err: 1.0e-6}\n")
    args = ("--targets-dir", str(targets), "deploy", "--model", "digits-cnn", "--targets", "onnx-strict",
            "--min-seconds", "0.1")
    res = edgekit(*args, "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = {r["precision"]: r for r in json.loads(res.stdout)}
    assert rows["int8"]["parity_ok"] is False and "max_abs_err" in rows["int8"]["parity_failures"]
    assert rows["int8"]["recommended"] is False and rows["fp32"]["recommended"] is True
    assert rows["int8"]["latency_ms_p50"] > 0  # still measured: flagged, not hidden
    table = edgekit(*args, cwd=tmp_path)
    assert "onnx-strict int8 is out of tolerance, not recommended" in table.stdout
