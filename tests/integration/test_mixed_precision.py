"""Mixed precision on digits-cnn: per-layer int8 sensitivity, then int8 artifacts with a layer left fp32.

The proof that a layer really stayed fp32 is read from what was built: the converted pt2e graph (its weight
is not dequantized from int8), the ONNX graph (no DequantizeLinear feeds its weight), the TFLite tensors
(its weight is float32) and the ExecuTorch program (its fp32 weight bytes are in the .pte).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import edgekit
from edgekit.compression import CompressedModel, compress
from edgekit.compression.sensitivity import keep_fp32, layer_sensitivity, quantizable_layers
from edgekit.errors import CompressError
from edgekit.models import load_model

LAYERS = {"features.0", "features.3", "features.7", "classifier.1", "classifier.3"}


@pytest.fixture(scope="module")
def cm() -> CompressedModel:
    # The profile's minimum of 32 calibration samples: the histogram observers' cost is per sample, and
    # the table calibrates once per layer.
    spec = load_model("digits-cnn")
    return compress(spec, "x86", calibration=spec.calibration[:32])


@pytest.fixture(scope="module")
def table(cm: CompressedModel) -> pd.DataFrame:
    return layer_sensitivity(cm)


def _mixed(cm: CompressedModel, **kw: object) -> CompressedModel:
    return keep_fp32(dataclasses.replace(cm, steps=list(cm.steps), fp32_layers=[]), **kw)


def test_sensitivity_table_has_every_layer_most_sensitive_first(cm: CompressedModel, table: pd.DataFrame) -> None:
    print("\n" + table.to_string() + f"\nall layers int8: {table.attrs['all_int8_sqnr_db']:.1f} dB")
    assert set(table["layer"]) == LAYERS == set(quantizable_layers(cm.spec.module))
    assert list(table.columns[:5]) == ["layer", "op", "params", "weight_int8", "sqnr_db"]
    assert table["weight_int8"].all()  # each row really measured its layer in int8
    assert all(math.isfinite(v) and 20 < v < 80 for v in table["sqnr_db"])
    assert table["sqnr_db"].is_monotonic_increasing
    # One layer's int8 noise is less than all of theirs together.
    assert table.attrs["all_int8_sqnr_db"] < table["sqnr_db"].min()


def test_accuracy_metric_reports_the_drop_in_points(cm: CompressedModel) -> None:
    df = layer_sensitivity(cm, metric="accuracy", layers=["classifier"])
    assert list(df["layer"]) == ["classifier"]
    assert df["accuracy"].between(0.9, 1.0).all()  # int8 of one layer barely moves a 99% classifier
    np.testing.assert_allclose(df["accuracy_drop_pts"], 100 * (cm.reference_accuracy - df["accuracy"]))
    assert "all_int8_accuracy" not in df.attrs  # only for a whole-model table


def test_keep_fp32_takes_the_most_sensitive_and_records_a_step(cm: CompressedModel, table: pd.DataFrame) -> None:
    mixed = _mixed(cm, n=2, sensitivity=table)
    assert mixed.fp32_layers == list(table["layer"][:2])
    assert mixed.steps[-1].startswith("mixed precision: 2 layer(s) kept fp32") and "dB" in mixed.steps[-1]
    assert cm.fp32_layers == []  # _mixed worked on a copy
    assert _mixed(cm, layers=["classifier"]).fp32_layers == ["classifier"]  # a container holds layers


def test_bad_choices_fail_listing_the_valid_layers(cm: CompressedModel, table: pd.DataFrame) -> None:
    with pytest.raises(CompressError, match=r"\['features.1'\]; valid .*features.0, features.3"):
        _mixed(cm, layers=["features.1"])  # a BatchNorm: nothing to keep
    with pytest.raises(CompressError, match="exactly one of n"):
        _mixed(cm, n=1, layers=["features.0"])
    with pytest.raises(CompressError, match=r"n must be an integer in \[0, 5\]"):
        _mixed(cm, n=6, sensitivity=table)
    with pytest.raises(CompressError, match="metric must be one of sqnr, accuracy, both"):
        layer_sensitivity(cm, metric="mse")
    blind = dataclasses.replace(cm, spec=dataclasses.replace(cm.spec, eval_set=None))
    with pytest.raises(CompressError, match="needs an eval set"):
        layer_sensitivity(blind, metric="both")


@pytest.mark.parametrize("backend", ["xnnpack", "litert"])
def test_quantizer_leaves_exactly_the_kept_layer_fp32(cm: CompressedModel, backend: str) -> None:
    from edgekit.compression.quantize import keep_layers_fp32, quantize_pt2e, quantized_layers

    if backend == "xnnpack":
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )

        quantizer = XNNPACKQuantizer()
    else:
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config

        quantizer = PT2EQuantizer()
    quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True))
    gm = quantize_pt2e(cm, keep_layers_fp32(quantizer, ["features.3"]), fold_quantize=backend == "xnnpack")
    assert quantized_layers(gm) == {name: name != "features.3" for name in LAYERS}


@pytest.fixture(scope="module")
def exported(cm: CompressedModel, table: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """int8 artifacts of digits-cnn, every target, with its most sensitive layer kept fp32."""
    mixed = _mixed(cm, n=1, sensitivity=table)
    arts = edgekit.export(mixed, precisions=["int8"], out_dir=tmp_path_factory.mktemp("mixed"), jobs=1)
    return {"kept": mixed.fp32_layers[0], "arts": {a.target: a for a in arts}}


@pytest.mark.slow
@pytest.mark.parametrize("target", ["executorch", "onnx", "tflite"])
def test_int8_artifacts_with_a_fp32_layer_pass_parity(exported: dict, target: str) -> None:
    art = exported["arts"][target]
    assert art.ok, art.error
    assert art.parity.ok, art.parity.failures
    assert art.accuracy is not None and art.accuracy > 0.95


@pytest.mark.slow
def test_executorch_program_carries_the_kept_layer_in_fp32(cm: CompressedModel, exported: dict) -> None:
    # The XNNPACK payload stores constant weights as they are: the kept Linear's fp32 bytes are in the
    # .pte verbatim; an int8 Linear's are not (classifier.1 has no BatchNorm folded in to change them).
    pte = exported["arts"]["executorch"].path.read_bytes()
    assert exported["kept"] == "classifier.3"  # a Linear: its weight reaches XNNPACK unchanged
    for name, fp32 in (("classifier.3", True), ("classifier.1", False)):
        weight = cm.spec.module.get_submodule(name).weight.detach().numpy().astype(np.float32)
        assert (weight.tobytes() in pte) is fp32, name


@pytest.mark.slow
def test_onnx_kept_node_reads_its_fp32_weight_and_the_rest_are_qdq(exported: dict) -> None:
    import onnx

    graph = onnx.load(str(exported["arts"]["onnx"].path)).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    weighted = [n for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    assert len(weighted) == len(LAYERS)
    kept = [n for n in weighted if f"{exported['kept']}.weight" in n.input]
    assert len(kept) == 1  # its weight initializer goes straight in: no DequantizeLinear
    for node in weighted:
        if node is not kept[0]:
            assert producer.get(node.input[1]) == "DequantizeLinear", node.name


@pytest.mark.slow
def test_tflite_kept_layer_has_a_float32_weight(cm: CompressedModel, exported: dict) -> None:
    from ai_edge_litert.interpreter import Interpreter

    shape = tuple(cm.spec.module.get_submodule(exported["kept"]).weight.shape)
    tensors = Interpreter(model_path=str(exported["arts"]["tflite"].path)).get_tensor_details()
    dtypes = {np.dtype(t["dtype"]).name for t in tensors if tuple(t["shape"]) == shape}
    assert dtypes == {"float32"}, dtypes
    int8 = {tuple(t["shape"]) for t in tensors if np.dtype(t["dtype"]).name == "int8"}
    assert (64, 256) in int8  # classifier.1 (convs are stored OHWI, so their shapes differ from PyTorch's)


@pytest.mark.slow
def test_a_layer_the_exporter_cannot_find_fails_the_artifact(cm: CompressedModel, tmp_path: Path) -> None:
    # Set directly (keep_fp32 refuses it): a BatchNorm, folded into the conv before ONNX quantization.
    odd = dataclasses.replace(cm, fp32_layers=["features.1"])
    [art] = edgekit.export(odd, targets=["onnx"], precisions=["int8"], out_dir=tmp_path, check=False, jobs=1)
    assert not art.ok and "fp32 layer 'features.1'" in art.error and "refusing to quantize it silently" in art.error
