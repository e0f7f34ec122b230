"""onnxruntime recipes for transformer encoders exported with ``torch.onnx.export(dynamo=True)``.

Why not just ``onnxruntime.transformers.optimizer.optimize_model(model_type="bert")``: the dynamo exporter
decomposes ``scaled_dot_product_attention`` into a shape the BERT fusion does not match (the scale is split
as ``sqrt(scale)`` on both Q and K, K^T is a Reshape/Transpose(0,2,1)/Reshape chain, the mask is a boolean
``Where(mask, 0, -inf)`` and softmax is followed by an ``IsNaN``/``Where`` guard), so it fuses SkipLayerNorm
and BiasGelu but never Attention. onnxscript's ORT fusions (shipped with the dynamo exporter) are written for
exactly that decomposition and fuse SDPA -> MultiHeadAttention -> Attention (onnxscript is part of the
``onnx`` extra). Measured on all-MiniLM-L6-v2: Attention x6, SkipLayerNormalization x13, BiasGelu x6.

Quantization runs on the *plain* (unfused) graph: onnxruntime's quantizers only rewrite MatMul/Gemm/Gather
whose weight is an initializer, and a fused ``Attention`` node keeps its packed QKV weight in fp32 (no
QAttention is produced by ``quantize_dynamic`` here), which costs size and speed.
"""

from __future__ import annotations

import collections
import os
import tempfile
from pathlib import Path
from typing import Sequence

from edgekit.errors import ExportError

__all__ = ["optimize_fp32", "quantize_gathers", "quantize_int4", "quantize_int8", "quantize_int8_nodes"]

_TARGET = "onnx"  # the target these recipes serve (targets/onnx.yaml)
_FUSED_OPS = (
    "Attention",
    "MultiHeadAttention",
    "SkipLayerNormalization",
    "LayerNormalization",
    "BiasGelu",
    "Gelu",
    "FastGelu",
    "FusedMatMul",
    "EmbedLayerNormalization",
    "MatMulNBits",
    "MatMulInteger",
    "DynamicQuantizeMatMul",
    "GatherBlockQuantized",
)


def _op_counts(path: Path) -> list[str]:
    """Counts of the fused / quantized ops in a model, as short strings for a log (``"Attention x6"``)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    counts = collections.Counter(n.op_type for n in model.graph.node)
    return [f"{op} x{counts[op]}" for op in _FUSED_OPS if counts[op]]


def _fold_offline(src: Path, dst: Path) -> None:
    """Serialize onnxruntime's BASIC-level graph (constant folding, e.g. the Concat that packs Q/K/V weights
    for ``Attention``) so the file is what the session would run. BASIC only: EXTENDED/ALL may write
    layout- or hardware-specific nodes (NCHWc) that another machine's onnxruntime cannot load."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(dst)
    so.log_severity_level = 3
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])


def _fuse_onnxscript(src: Path, dst: Path) -> None:
    """Fuse with onnxscript's ORT rewriter (it matches the dynamo exporter's SDPA decomposition)."""
    import onnx_ir as ir
    import onnxscript.optimizer
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    model = ir.load(str(src))
    onnxscript.optimizer.optimize(model)  # fold the constant shape arithmetic of an optimize=False export
    model, _ = optimize_for_ort(model)
    ir.save(model, str(dst))


def optimize_fp32(src: Path, dst: Path) -> list[str]:
    """Fuse attention, SkipLayerNorm and BiasGelu so the fp32 graph runs at onnxruntime's best on CPU.

    Writes one self-contained file (weights inline, only standard and ``com.microsoft`` ops) that a default
    CPU session loads. Returns the fused op counts for a log.
    """
    src, dst = Path(src), Path(dst)
    with tempfile.TemporaryDirectory() as tmp:
        fused = Path(tmp) / "fused.onnx"
        try:
            _fuse_onnxscript(src, fused)
            _fold_offline(fused, dst)
            _loads(dst)  # a fused graph can pass BASIC folding and still fail the full optimizer (GPT-2's Gemm)
        except Exception as exc:
            raise ExportError(_TARGET, f"fp32 graph optimization failed: {exc}") from exc
    return _op_counts(dst)


def _loads(path: Path) -> None:
    """Raise unless a default CPU session (all graph optimizations, as on the device) loads ``path``."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def quantize_gathers(src: Path, dst: Path, exclude: Sequence[str] = ()) -> None:
    """Weight-only int8 for embedding tables: ``quantize_dynamic`` on Gather quantizes only the table
    (input 0, an initializer) and puts a DequantizeLinear after it; the indices stay int64."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dst),
        op_types_to_quantize=["Gather"],
        per_channel=False,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(exclude),
    )


def quantize_int8(
    src: Path, dst: Path, *, per_channel: bool = True, reduce_range: bool = False, exclude: Sequence[str] = ()
) -> None:
    """Dynamic int8 for MatMul/Gemm (int8 weights, per-call uint8 activations) plus int8 embedding tables.

    Dynamic, never static QDQ: attention's activations have no stable range to calibrate. ``reduce_range``
    (7-bit weights) avoids the u8s8 int16 saturation of AVX2 hosts without VNNI; on MiniLM it measured
    slightly *less* accurate than 8-bit weights, hence the default False. Pass the plain (unfused) graph.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        quantize_dynamic(
            str(src),
            str(dst),
            op_types_to_quantize=["MatMul", "Gemm", "Gather"],
            per_channel=per_channel,
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(exclude),
            extra_options={"MatMulConstBOnly": True},
        )
    except Exception as exc:
        raise ExportError(_TARGET, f"dynamic int8 quantization failed: {exc}") from exc


def quantize_int4(
    src: Path, dst: Path, *, block_size: int = 32, accuracy_level: int = 4, exclude: Sequence[str] = (),
    embedding_bits: int = 4,
) -> None:
    """4-bit symmetric block weights (MatMulNBits) and 4-bit embedding tables (GatherBlockQuantized; with
    ``embedding_bits=8`` the caller quantizes the tables afterwards with ``quantize_gathers``).

    ``accuracy_level=4`` selects the int8-activation compute kernel. Embeddings are most of a small
    encoder's bytes, so they are quantized too (axis 1, blocks along the hidden dim; indices untouched).
    Pass the plain (unfused) graph: a fused Attention's packed QKV weight is not a MatMul and stays fp32.
    """
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    ops: tuple[str, ...] = ("MatMul", "Gather") if embedding_bits == 4 else ("MatMul",)
    axes: tuple[tuple[str, int], ...] = (("MatMul", 0), ("Gather", 1)) if embedding_bits == 4 else (("MatMul", 0),)
    try:
        cfg = DefaultWeightOnlyQuantConfig(
            block_size=block_size,
            is_symmetric=True,
            accuracy_level=accuracy_level,
            op_types_to_quantize=ops,
            quant_axes=axes,
            bits=4,
        )
        quant = MatMulNBitsQuantizer(
            onnx.load(str(src)),
            bits=4,
            block_size=block_size,
            is_symmetric=True,
            accuracy_level=accuracy_level,
            nodes_to_exclude=list(exclude),
            op_types_to_quantize=ops,
            quant_axes=axes,
            algo_config=cfg,
        )
        quant.process()
        quant.model.save_model_to_file(str(dst), use_external_data_format=False)
    except Exception as exc:
        raise ExportError(_TARGET, f"4-bit weight quantization failed: {exc}") from exc
    if not os.path.exists(dst):
        raise ExportError(_TARGET, f"4-bit weight quantization wrote no file at {dst}")


def quantize_int8_nodes(src: Path, dst: Path, nodes: Sequence[str], *, per_channel: bool = True,
                        reduce_range: bool = False) -> None:
    """Dynamic int8 for just ``nodes`` (MatMul): the layers an int4 model keeps at int8 (mixed precision)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul", "Gemm"], nodes_to_quantize=list(nodes),
                         per_channel=per_channel, reduce_range=reduce_range, weight_type=QuantType.QInt8,
                         extra_options={"MatMulConstBOnly": True})
    except Exception as exc:
        raise ExportError(_TARGET, f"dynamic int8 quantization of the int8 layers failed: {exc}") from exc
