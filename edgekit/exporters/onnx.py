"""ONNX through torch.onnx (dynamo); fp16 by exporting a half-precision copy; int8 as onnxruntime QDQ.

Transformers take onnxruntime's own transformer route (``_onnx_transformer``): fp32 with attention,
SkipLayerNorm and GELU fused; int8 as dynamic quantization of MatMul/Gemm (per-channel int8 weights, per-tensor
uint8 activations computed at run time) with int8 embedding tables; int4 as ``MatMulNBits`` blocks
(``accuracy_level`` 4: int8 compute) with 4-bit (``GatherBlockQuantized``) or int8 embedding tables. Layers a
mixed-precision step keeps fp32 (or int8 in an int4 model) are excluded by ONNX node.
"""

from __future__ import annotations

import copy
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from edgekit.compression.model import CompressedModel
from edgekit.compression.quantize import check_scheme, quantize_pt2e, quantizer_for, weight_path
from edgekit.config.target import Target
from edgekit.errors import ExportError
from edgekit.exporters.base import Exporter, report_stage
from edgekit.models import model_family


class OnnxExporter(Exporter):
    format = "onnx"

    def export(self, cm: CompressedModel, precision: str, target: Target, dest: Path) -> Path:
        path = dest / f"model{target.extension}"
        if weight_path(cm, precision):
            self._export_weight_quantized(cm, precision, path, target)
        elif precision == "fp32" and model_family(cm.spec.module) == "transformer":
            from edgekit.exporters._onnx_transformer import optimize_fp32

            with self._plain(cm, dest, target) as plain:
                try:
                    print(f"onnxruntime fusions: {', '.join(optimize_fp32(plain, path)) or 'none'}", flush=True)
                except ExportError as exc:
                    # onnxscript's fusions can leave a graph onnxruntime refuses (GPT-2: a Gemm given a 3-D
                    # input): ship the unfused graph, which parity then checks like any other.
                    print(f"onnxruntime fusions not applied, unfused graph kept: {exc}", flush=True)
                    path.unlink(missing_ok=True)
                    shutil.move(str(plain), str(path))
        elif precision == "int8" and cm.qat is not None:
            self._export_qat(cm, path, target)
        elif precision == "int8":
            fp32 = dest / "_fp32" / "model.onnx"
            fp32.parent.mkdir()
            # Inline weights: onnxruntime's pre-processing cannot follow external data (< 2 GB models).
            self._torch_export(cm.spec.module, cm.spec.example_inputs, fp32, target, external_data=False)
            report_stage("quantize")
            self._quantize(cm, fp32, path, target.name)
            for f in fp32.parent.iterdir():
                f.unlink()
            fp32.parent.rmdir()
        elif precision == "fp16":
            half = copy.deepcopy(cm.spec.module).half()
            inputs = tuple(t.half() if t.is_floating_point() else t for t in cm.spec.example_inputs)
            self._torch_export(half, inputs, path, target)
        else:
            self._torch_export(cm.spec.module, cm.spec.example_inputs, path, target)
        return path

    @contextmanager
    def _plain(self, cm: CompressedModel, dest: Path, target: Target) -> Iterator[Path]:
        """The fp32 graph with inline weights (what onnxruntime's optimizers and quantizers read), removed after."""
        work = dest / "_plain"
        work.mkdir()
        try:
            plain = work / "model.onnx"
            self._torch_export(cm.spec.module, cm.spec.example_inputs, plain, target, external_data=False)
            yield plain
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _export_weight_quantized(self, cm: CompressedModel, precision: str, path: Path, target: Target) -> None:
        """A transformer's int8 (dynamic MatMul, int8 embeddings) or int4 (MatMulNBits) artifact."""
        from edgekit.exporters import _onnx_transformer as ot

        q = cm.profile.quantization
        with self._plain(cm, path.parent, target) as plain:
            report_stage("quantize")
            fp32 = onnx_nodes_of_layers(plain, cm.fp32_layers, target.name)
            if precision == "int8":
                ot.quantize_int8(plain, path, per_channel=True, reduce_range=q.weight.reduce_range, exclude=fp32)
                check_onnx_fp32_nodes(path, fp32, target.name)
                return
            int8 = onnx_nodes_of_layers(plain, cm.int8_layers, target.name)
            four = plain.with_name("int4.onnx")
            ot.quantize_int4(plain, four, block_size=q.int4.group_size, accuracy_level=q.int4.accuracy_level,
                             exclude=[*fp32, *int8], embedding_bits=q.int4.embedding_bits)
            if q.int4.embedding_bits == 8:
                tables = four.with_name("tables.onnx")
                ot.quantize_gathers(four, tables)
                four = tables
            if int8:
                ot.quantize_int8_nodes(four, path, int8, reduce_range=q.weight.reduce_range)
            else:
                shutil.move(str(four), str(path))
            check_onnx_fp32_nodes(path, fp32, target.name)

    def _export_qat(self, cm: CompressedModel, path: Path, target: Target) -> None:
        """QAT learns its ranges inside a pt2e quantizer: export that converted graph, whose quantize /
        dequantize ops become ONNX QDQ, rather than re-quantize with onnxruntime and lose what QAT learned.
        The quantizer is XNNPACK's (symmetric per-channel int8 weights, int8 activations; 7-bit weights where
        the profile asks for ``reduce_range``)."""
        check_scheme(cm, target.name)
        report_stage("quantize")
        quantizer = quantizer_for("onnxruntime", cm.profile.quantization, qat=cm.qat is not None,
                                  fp32_layers=cm.fp32_layers)
        gm = quantize_pt2e(cm, quantizer)
        self._torch_export(gm, cm.spec.example_inputs, path, target, external_data=False)

    @staticmethod
    def _torch_export(module: torch.nn.Module, inputs: tuple, path: Path, target: Target,
                      external_data: bool = True) -> None:
        report_stage("lower")
        kwargs: dict[str, Any] = {"dynamo": True, "verbose": False, "external_data": external_data}
        if target.opset:
            kwargs["opset_version"] = target.opset
        torch.onnx.export(module, inputs, str(path), **kwargs)

    @staticmethod
    def _quantize(cm: CompressedModel, fp32: Path, out: Path, target: str) -> None:
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quant_pre_process,
            quantize_dynamic,
            quantize_static,
        )

        q = cm.profile.quantization
        prepped = fp32.with_name("prepped.onnx")
        quant_pre_process(str(fp32), str(prepped), skip_symbolic_shape=True)
        exclude = onnx_nodes_of_layers(prepped, cm.fp32_layers, target)  # mixed precision: left fp32
        if q.mode == "dynamic":
            quantize_dynamic(str(prepped), str(out), per_channel=q.per_channel, weight_type=QuantType.QInt8,
                             reduce_range=q.weight.reduce_range, nodes_to_exclude=exclude)
            check_onnx_fp32_nodes(out, exclude, target)
            return
        quantize_static(
            str(prepped), str(out), _Reader(prepped, cm.calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=q.per_channel,
            reduce_range=q.weight.reduce_range,
            activation_type=QuantType.QUInt8 if q.activation.dtype == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"WeightSymmetric": q.weight.symmetric, "ActivationSymmetric": q.activation.symmetric},
            nodes_to_exclude=exclude,
        )
        check_onnx_fp32_nodes(out, exclude, target)


_WEIGHTED_ONNX_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def onnx_nodes_of_layers(model: Path, layers: list[str], target: str) -> list[str]:
    """The ONNX node names of PyTorch modules ``layers`` (``features.0``), for ``nodes_to_exclude``.

    The dynamo exporter names each initializer after its parameter (``features.0.weight``), and that name
    survives BatchNorm folding, where the node's own ``pkg.torch.onnx.name_scopes`` becomes the BatchNorm's.
    So a node belongs to a layer when it reads one of that module's parameters; name scopes are the
    fallback. A layer that matches no node fails the export rather than being quantized silently.
    """
    if not layers:
        return []
    import onnx

    nodes = [n for n in onnx.load(str(model), load_external_data=False).graph.node if n.op_type in _WEIGHTED_ONNX_OPS]
    found: list[str] = []
    for layer in layers:
        hits = [n.name for n in nodes if any(i.startswith(layer + ".") for i in n.input)]
        if not hits:
            hits = [n.name for n in nodes if _in_scope(n, layer)]
        if not hits:
            raise ExportError(target, f"fp32 layer {layer!r}: no ONNX {'/'.join(_WEIGHTED_ONNX_OPS)} node reads its "
                                      "parameters or carries its name scope; refusing to quantize it silently")
        found += [h for h in hits if h not in found]
    return found


def _in_scope(node: Any, layer: str) -> bool:
    """``layer`` is the node's own Conv/Linear module, or a container around it.

    A node that folded a BatchNorm carries the BatchNorm's scope, which must not count as that module.
    """
    import ast

    props = {p.key: p.value for p in node.metadata_props}
    scopes = ast.literal_eval(props.get("pkg.torch.onnx.name_scopes", "[]"))
    classes = ast.literal_eval(props.get("pkg.torch.onnx.class_hierarchy", "[]"))
    if layer not in scopes:
        return False
    i = scopes.index(layer)
    own = classes[i].rsplit(".", 1)[-1] if i < len(classes) else ""
    return i < len(scopes) - 2 or own.startswith(("Conv", "Linear"))


def check_onnx_fp32_nodes(model: Path, names: list[str], target: str) -> None:
    """Refuse a quantized model in which an excluded node still reads an int8 weight.

    A quantized weight reaches its node as ``DequantizeLinear(int8 initializer)``; an activation's
    DequantizeLinear reads a QuantizeLinear's output instead.
    """
    if not names:
        return
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    init = {i.name for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        if node.name not in names:
            continue
        for i in node.input:
            p = producer.get(i)
            if p is not None and p.op_type == "DequantizeLinear" and p.input[0] in init:
                raise ExportError(target, f"ONNX node {node.name} was excluded from quantization but reads the "
                                          f"int8 weight {p.input[0]}")
            if node.op_type in ("ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul"):
                raise ExportError(target, f"ONNX node {node.name} was excluded from quantization but is "
                                          f"{node.op_type}")


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over our samples."""

    def __init__(self, model: Path, samples: list[tuple[torch.Tensor, ...]]) -> None:
        import onnx

        graph = onnx.load(str(model), load_external_data=False).graph
        init = {i.name for i in graph.initializer}
        self.names = [i.name for i in graph.input if i.name not in init]
        self.samples = samples
        self._it: Iterator[tuple[torch.Tensor, ...]] = iter(samples)

    def get_next(self) -> dict[str, Any] | None:
        sample = next(self._it, None)
        if sample is None:
            return None
        return {n: t.numpy() for n, t in zip(self.names, sample)}

    def rewind(self) -> None:
        self._it = iter(self.samples)
