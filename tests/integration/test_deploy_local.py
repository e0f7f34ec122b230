"""End to end on the built-in ``local`` device with the real toolchains and runtimes.

digits-cnn is trained on scikit-learn's digits; every artifact is exported, run in its own runtime
(ExecuTorch, LiteRT, onnxruntime) for parity and accuracy, and benchmarked by the agent in a fresh process.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import edgekit

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits_rows(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, Path]:
    out = tmp_path_factory.mktemp("artifacts")
    return edgekit.deploy("digits-cnn", device="local", out_dir=out), out


def test_six_artifacts_one_row_each(digits_rows: tuple[pd.DataFrame, Path]) -> None:
    df, _ = digits_rows
    assert sorted(zip(df["target"], df["precision"])) == [
        (t, p) for t in ("executorch", "onnx", "tflite") for p in ("fp32", "int8")
    ]
    assert set(df["device"]) == {"local"} and set(df["profile"]) == {"x86"} and set(df["model"]) == {"digits-cnn"}
    assert df["error"].isna().all(), df["error"].tolist()


def test_artifacts_on_disk_are_complete(digits_rows: tuple[pd.DataFrame, Path]) -> None:
    df, out = digits_rows
    suffix = {"executorch": ".pte", "tflite": ".tflite", "onnx": ".onnx"}
    for _, row in df.iterrows():
        path = Path(row["artifact_path"])
        assert path.is_file() and path.suffix == suffix[row["target"]]
        on_disk = sum(p.stat().st_size for p in path.parent.iterdir())
        assert row["artifact_bytes"] == on_disk
    onnx_fp32 = Path(df[(df.target == "onnx") & (df.precision == "fp32")]["artifact_path"].iloc[0])
    assert (onnx_fp32.parent / "model.onnx.data").is_file()  # the external-data file ships beside it
    assert not list(out.rglob(".*-*")), "no temporary export folder may be left behind"
    by = df.set_index(["target", "precision"])["artifact_bytes"]
    for t in ("executorch", "tflite", "onnx"):
        assert by[(t, "int8")] < 0.5 * by[(t, "fp32")]  # int8 weights are a quarter of fp32


def test_parity_and_accuracy_per_artifact(digits_rows: tuple[pd.DataFrame, Path]) -> None:
    df, _ = digits_rows
    ref = df["reference_accuracy"].iloc[0]
    assert ref > 0.95  # a trained digits CNN on its held-out split
    assert df["parity_ok"].all(), df[["target", "precision", "parity_failures"]].to_string()
    fp32 = df[df.precision == "fp32"]
    assert (fp32["parity_max_abs_err"] < 1e-3).all() and (fp32["parity_cosine"] > 0.9999).all()
    assert (fp32["accuracy"] == ref).all()  # fp32 artifacts predict exactly what PyTorch predicts
    int8 = df[df.precision == "int8"]
    assert (int8["parity_max_abs_err"] > 0).all()  # int8 really is quantized, not fp32 under a new name
    assert (int8["accuracy"] >= ref - 0.01).all()


def test_latency_memory_energy_fields(digits_rows: tuple[pd.DataFrame, Path]) -> None:
    df, _ = digits_rows
    for _, row in df.iterrows():
        samples = np.asarray(row["latency_ms_samples"])
        assert row["iterations"] >= 50 and len(samples) == row["iterations"]  # the defaults: >= 50 runs...
        assert row["timed_seconds"] >= 1.0 and not row["truncated"]  # ...and >= 1 s
        assert row["latency_ms_min"] <= row["latency_ms_p50"] <= row["latency_ms_p90"] <= row["latency_ms_p99"]
        assert row["latency_ms_p50"] == pytest.approx(np.percentile(samples, 50))
        assert row["latency_ms_mean"] == pytest.approx(samples.mean())
        assert row["latency_ms_std"] > 0
        assert row["peak_rss_mb"] >= row["peak_rss_mb_after_load"] > 10
        assert row["energy_mj_per_inference"] is None or np.isnan(row["energy_mj_per_inference"])
        assert row["energy_status"].startswith("unavailable")  # this VM has no energy sensor
        assert row["threads"] == 1 and row["runtime"] in ("executorch", "onnxruntime", "ai-edge-litert")


def test_recommended_is_fastest_acceptable_and_first(digits_rows: tuple[pd.DataFrame, Path]) -> None:
    df, _ = digits_rows
    assert bool(df.loc[0, "recommended"]) and df["recommended"].sum() == 1
    ok = df[df["parity_ok"] & (df["accuracy"] >= df["reference_accuracy"] - 0.01)]
    assert df.loc[0, "latency_ms_p50"] == ok["latency_ms_p50"].min()


def test_benchmark_takes_artifacts_from_export(tmp_path: Path) -> None:
    """The three verbs chained by hand give the same columns as deploy."""
    cm = edgekit.compress("digits-cnn", profile="x86")
    arts = edgekit.export(cm, targets=["onnx"], out_dir=tmp_path, precisions=["int8"])
    assert len(arts) == 1 and arts[0].ok and arts[0].accuracy is not None
    from edgekit import BenchConfig

    df = edgekit.benchmark(arts, device="local", config=BenchConfig(min_iterations=20, min_seconds=0.1))
    assert len(df) == 1 and df.loc[0, "iterations"] >= 20 and bool(df.loc[0, "recommended"])


def test_profile_override_runs_another_profiles_artifacts_here(tmp_path: Path) -> None:
    """jetson-orin on this CPU: fp16 and symmetric-activation int8 ONNX, checked with onnxruntime's CPU
    provider (no Jetson is lent to this project; TensorRT itself is not exercised)."""
    from edgekit import BenchConfig

    df = edgekit.deploy("digits-cnn", profile="jetson-orin", out_dir=tmp_path,
                        config=BenchConfig(min_iterations=10, min_seconds=0.05))
    assert sorted(zip(df["target"], df["precision"])) == [("onnx", "fp16"), ("onnx", "int8")]
    assert set(df["profile"]) == {"jetson-orin"} and set(df["threads"]) == {6}
    fp16 = df[df.precision == "fp16"].iloc[0]
    assert fp16["parity_ok"] and 0 < fp16["parity_max_abs_err"] < 0.1  # half precision, not fp32 renamed
    assert df["error"].isna().all()
