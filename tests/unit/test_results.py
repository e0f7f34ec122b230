"""Recommendation: the fastest artifact within parity tolerance and one accuracy point of fp32."""

from __future__ import annotations

from typing import Any

from edgekit.results.rows import COLUMNS, to_frame


def row(target: str, precision: str, p50: float | None, *, parity_ok: bool = True, accuracy: float | None = 0.99,
        error: str | None = None, device: str = "local", model: str = "m") -> dict[str, Any]:
    return {"device": device, "model": model, "profile": "x86", "target": target, "precision": precision,
            "latency_ms_p50": p50, "parity_ok": parity_ok, "accuracy": accuracy, "reference_accuracy": 0.99,
            "error": error}


def test_fastest_acceptable_row_is_recommended_and_first() -> None:
    df = to_frame([
        row("onnx", "fp32", 2.0), row("executorch", "int8", 0.5), row("tflite", "int8", 0.7),
    ])
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    assert df.loc[0, "target"] == "executorch" and bool(df.loc[0, "recommended"])
    assert df["recommended"].sum() == 1
    assert list(df["latency_ms_p50"]) == [0.5, 0.7, 2.0]


def test_parity_failure_accuracy_drop_and_errors_are_never_recommended() -> None:
    df = to_frame([
        row("executorch", "int8", 0.1, parity_ok=False),
        row("tflite", "int8", 0.2, accuracy=0.975),  # 1.5 points below fp32: over budget
        row("onnx", "int8", None, error="target 'onnx', op aten.foo: export failed"),
        row("tflite", "fp32", 0.9, accuracy=0.981),  # 0.9 points below: within budget
        row("onnx", "fp32", 1.0),
    ])
    rec = df[df["recommended"]]
    assert list(zip(rec["target"], rec["precision"])) == [("tflite", "fp32")]
    assert df.loc[0, "target"] == "tflite" and df.loc[0, "precision"] == "fp32"
    assert df.iloc[-1]["error"] is not None or df.iloc[-1]["parity_ok"] is False  # failures sort last


def test_missing_accuracy_relies_on_parity_alone() -> None:
    df = to_frame([row("onnx", "fp32", 3.0, accuracy=None), row("onnx", "int8", 1.0, accuracy=None)])
    assert df.loc[0, "precision"] == "int8" and bool(df.loc[0, "recommended"])


def test_no_acceptable_row_means_no_recommendation() -> None:
    df = to_frame([row("onnx", "int8", 1.0, parity_ok=False), row("onnx", "fp32", None, error="boom")])
    assert not df["recommended"].any()


def test_one_recommendation_per_device_and_model() -> None:
    df = to_frame([row("onnx", "fp32", 1.0, device="a"), row("onnx", "int8", 0.5, device="a"),
                   row("onnx", "fp32", 2.0, device="b")])
    assert sorted(df[df["recommended"]]["device"]) == ["a", "b"]


def test_missing_text_is_none_not_a_truthy_nan() -> None:
    df = to_frame([row("onnx", "fp32", 1.0), row("tflite", "fp32", None, error="boom")])
    assert df.loc[0, "error"] is None and df.loc[1, "error"] == "boom"
