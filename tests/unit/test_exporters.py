"""Exporter plumbing that needs no toolchain: registry, op naming, output capture, parity maths."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from edgekit import BenchConfig
from edgekit.config.target import Tolerance
from edgekit.errors import ConfigError, UnknownNameError
from edgekit.exporters import EXPORTERS, get_exporter
from edgekit.exporters._build import _safe, captured_output
from edgekit.exporters.base import find_op
from edgekit.exporters.parity import compare


def test_registry_is_keyed_by_format_and_lists_valid_keys() -> None:
    assert sorted(EXPORTERS) == ["executorch", "onnx", "tflite"]
    with pytest.raises(UnknownNameError, match="valid: executorch, onnx, tflite"):
        get_exporter("coreml")


@pytest.mark.parametrize(
    ("message", "op"),
    [
        ("RuntimeError: Lowering not found: aten.bucketize.Tensor", "aten.bucketize.Tensor"),
        ("SpecViolationError: operator torch.ops.aten.linalg_inv_ex.default is not Aten Canonical",
         "aten.linalg_inv_ex.default"),
        ("Unsupported operator: 'my_custom_op'", "my_custom_op"),
        ("Number of input tokens (1) does not match output tokens (0)", None),
    ],
)
def test_find_op_names_the_operator(message: str, op: str | None) -> None:
    assert find_op(message) == op


def test_captured_output_catches_file_descriptor_writes(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    with captured_output(log):
        os.write(1, b"from C stdout\n")
        os.write(2, b"from C stderr\n")
    text = log.read_text()
    assert "from C stdout" in text and "from C stderr" in text


def test_names_become_safe_path_components() -> None:
    assert _safe("../../etc") == "_.._etc"
    assert _safe("my model; rm -rf") == "my_model__rm_-rf"
    assert _safe("...") == "_"


def test_parity_compare_flags_each_bound() -> None:
    ref = [[np.array([[1.0, 2.0, 3.0]])], [np.array([[3.0, 2.0, 1.0]])]]
    same = compare(ref, ref, Tolerance(max_abs_err=0.0, min_cosine=1.0, min_top1_agreement=1.0))
    assert same.ok and same.max_abs_err == 0 and same.top1_agreement == 1.0
    off = [[np.array([[1.0, 2.0, 3.5]])], [np.array([[3.0, 2.0, 3.1]])]]  # second sample's top-1 flips
    res = compare(ref, off, Tolerance(max_abs_err=0.1, min_cosine=0.99, min_top1_agreement=1.0))
    assert not res.ok and res.top1_agreement == 0.5
    assert any("max_abs_err" in f for f in res.failures) and any("top1_agreement" in f for f in res.failures)
    bad = compare(ref, [[np.array([[np.nan, 0, 0]])], [np.array([[3.0, 2.0, 1.0]])]], Tolerance())
    assert not bad.ok and "outputs are not finite" in bad.failures


def test_bench_config_validates_its_fields() -> None:
    with pytest.raises(ConfigError, match="field 'min_iterations'"):
        BenchConfig(min_iterations=0)
    with pytest.raises(ConfigError, match="field 'max_seconds'"):
        BenchConfig(min_seconds=10, max_seconds=5)
    with pytest.raises(ConfigError, match="field 'threads'"):
        BenchConfig(threads=0)
