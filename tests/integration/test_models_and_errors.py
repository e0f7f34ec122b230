"""Models from files and factories, several inputs of any dtype, and bad input that must fail clearly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import edgekit
from edgekit import BenchConfig
from edgekit.errors import CalibrationError, CompressError, ModelError, UnknownNameError
from tiny_models import bucketizer, encoder_inputs, small_cnn, tiny_encoder

pytestmark = pytest.mark.slow
QUICK = BenchConfig(min_iterations=10, min_seconds=0.05, warmup_iterations=2, warmup_seconds=0.0)


def test_two_input_transformer_with_int64_inputs_exports_everywhere(tmp_path: Path) -> None:
    samples = encoder_inputs(48)
    cm = edgekit.compress(tiny_encoder(), "x86", samples[8:], example_inputs=samples[0])
    arts = edgekit.export(cm, out_dir=tmp_path)
    assert [(a.target, a.precision) for a in arts] == [
        (t, p) for t in ("executorch", "tflite", "onnx") for p in ("fp32", "int8")
    ]
    for art in arts:
        assert art.ok, (art.target, art.precision, art.error, art.parity)
        assert art.parity is not None and art.parity.samples == 32  # no eval set: the calibration samples
    df = edgekit.benchmark(arts, config=QUICK)
    assert df["latency_ms_p50"].notna().all() and bool(df.loc[0, "recommended"])


def test_a_target_that_cannot_export_an_op_gives_a_row_and_the_others_run(tmp_path: Path) -> None:
    x = torch.randn(1, 8)
    df = edgekit.deploy(bucketizer(), example_inputs=x, calibration=[torch.randn(1, 8) for _ in range(32)],
                        precisions=["fp32"], out_dir=tmp_path, config=QUICK)
    rows = df.set_index("target")
    for target in ("executorch", "tflite"):
        assert "op aten.bucketize" in rows.loc[target, "error"], rows.loc[target, "error"]
        assert np.isnan(rows.loc[target, "latency_ms_p50"])
    assert rows.loc["onnx", "error"] is None and rows.loc["onnx", "parity_ok"]
    assert rows.loc["onnx", "latency_ms_p50"] > 0 and bool(rows.loc["onnx", "recommended"])


def test_pt2_file_with_npy_calibration(tmp_path: Path) -> None:
    model, x = small_cnn(), torch.randn(1, 3, 16, 16)
    pt2 = tmp_path / "cnn.pt2"
    torch.export.save(torch.export.export(model, (x,)), str(pt2))
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(0).standard_normal((40, 3, 16, 16)).astype(np.float32))
    cm = edgekit.compress(str(pt2), "x86", str(calib))
    assert cm.name == "cnn" and len(cm.calibration) == 40
    arts = edgekit.export(cm, targets=["onnx", "executorch"], out_dir=tmp_path / "out")
    assert all(a.ok for a in arts), [(a.target, a.error, a.parity) for a in arts]


def test_factory_model_needs_an_input_shape(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="--input-shape"):
        edgekit.compress("tiny_models:small_cnn", "x86")
    cm = edgekit.compress("tiny_models:small_cnn", "x86", [torch.randn(1, 3, 8, 8) for _ in range(32)],
                          input_shape="1,3,8,8")
    assert cm.spec.example_inputs[0].shape == (1, 3, 8, 8)


def test_pickled_module_needs_opt_in(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save(small_cnn(), path)
    with pytest.raises(ModelError, match="weights_only=True.*--allow-pickle"):
        edgekit.compress(str(path), "x86", input_shape="1,3,8,8")
    cm = edgekit.compress(str(path), "x86", [torch.randn(1, 3, 8, 8) for _ in range(32)],
                          input_shape="1,3,8,8", allow_pickle=True)
    assert isinstance(cm.spec.module, torch.nn.Module)


def test_calibration_errors_name_the_problem(tmp_path: Path) -> None:
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(CalibrationError, match="at least 32"):
        edgekit.compress(small_cnn(), "x86", [x] * 5, example_inputs=x)
    with pytest.raises(CalibrationError, match=r"shape \(1, 3, 9, 9\).*shape \(1, 3, 8, 8\)"):
        edgekit.compress(small_cnn(), "x86", [torch.randn(1, 3, 9, 9)] * 40, example_inputs=x)
    with pytest.raises(CalibrationError, match="dtype torch.float64"):
        edgekit.compress(small_cnn(), "x86", [x.double()] * 40, example_inputs=x)
    bad = tmp_path / "calib.npy"
    np.save(bad, np.zeros((40, 3, 5, 5), np.float32))
    with pytest.raises(CalibrationError, match=r"calib.npy: input 0 has shape \(40, 3, 5, 5\)"):
        edgekit.compress(small_cnn(), "x86", str(bad), example_inputs=x)
    with pytest.raises(CompressError, match="needs calibration data"):
        edgekit.compress(small_cnn(), "x86", example_inputs=x)


def test_model_whose_forward_fails_is_refused() -> None:
    with pytest.raises(ModelError, match=r"forward failed on the example inputs \[\(1, 3\)\]: RuntimeError: .*"
                                         r"Pass inputs the model takes \(--input-shape, or example_inputs\)"):
        edgekit.compress(small_cnn(), "x86", example_inputs=torch.randn(1, 3))


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(UnknownNameError, match="valid: digits-cnn, digits-cnn-wide, gpt2-tiny, minilm-l6, mobilenet-v2"):
        edgekit.compress("resnet-50")
    with pytest.raises(UnknownNameError, match="valid: executorch, onnx, tflite"):
        edgekit.export(edgekit.compress(small_cnn(), "x86", [torch.randn(1, 3, 8, 8)] * 32,
                                        example_inputs=torch.randn(1, 3, 8, 8)), targets=["tensorrt"])
    with pytest.raises(UnknownNameError, match="unknown device 'pi4'"):
        edgekit.deploy("digits-cnn", device="pi4")


def test_parallel_and_serial_export_agree(tmp_path: Path) -> None:
    x = torch.randn(1, 3, 8, 8)
    calib = [torch.randn(1, 3, 8, 8) for _ in range(32)]
    runs = {}
    for jobs in (1, 2):
        events: list[str] = []
        cm = edgekit.compress(small_cnn(), "x86", calib, example_inputs=x)
        arts = edgekit.export(cm, targets=["onnx", "tflite"], out_dir=tmp_path / f"jobs{jobs}", jobs=jobs,
                              cache=False, on_event=events.append)  # both runs build: no cache hit
        assert all(a.ok for a in arts), [(a.target, a.precision, a.error) for a in arts]
        assert any("(worker 2)" in e for e in events) == (jobs == 2), events
        runs[jobs] = [(a.target, a.precision, a.bytes) for a in arts]
    assert runs[1] == runs[2]  # same artifacts, byte counts included, whichever process made them


def test_a_model_other_interpreters_cannot_load_is_exported_here(tmp_path: Path) -> None:
    class Local(torch.nn.Module):  # defined in a function: a worker process could not unpickle it
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.fc(x))

    events: list[str] = []
    cm = edgekit.compress(Local().eval(), "x86", [torch.randn(1, 6) for _ in range(32)], example_inputs=torch.randn(1, 6))
    arts = edgekit.export(cm, targets=["onnx"], out_dir=tmp_path, jobs=2, on_event=events.append)
    assert all(a.ok for a in arts) and not any("worker" in e for e in events)
