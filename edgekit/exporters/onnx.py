"""ONNX through torch.onnx (dynamo); fp16 by exporting a half-precision copy; int8 as onnxruntime QDQ."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterator

import torch

from edgekit.compression import CompressedModel
from edgekit.config.target import Target
from edgekit.exporters.base import Exporter


class OnnxExporter(Exporter):
    format = "onnx"

    def export(self, cm: CompressedModel, precision: str, target: Target, dest: Path) -> Path:
        path = dest / f"model{target.extension}"
        if precision == "int8":
            fp32 = dest / "_fp32" / "model.onnx"
            fp32.parent.mkdir()
            # Inline weights: onnxruntime's pre-processing cannot follow external data (< 2 GB models).
            self._torch_export(cm.spec.module, cm.spec.example_inputs, fp32, target, external_data=False)
            self._quantize(cm, fp32, path)
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

    @staticmethod
    def _torch_export(module: torch.nn.Module, inputs: tuple, path: Path, target: Target,
                      external_data: bool = True) -> None:
        kwargs: dict[str, Any] = {"dynamo": True, "verbose": False, "external_data": external_data}
        if target.opset:
            kwargs["opset_version"] = target.opset
        torch.onnx.export(module, inputs, str(path), **kwargs)

    @staticmethod
    def _quantize(cm: CompressedModel, fp32: Path, out: Path) -> None:
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
        if q.mode == "dynamic":
            quantize_dynamic(str(prepped), str(out), per_channel=q.per_channel, weight_type=QuantType.QInt8)
            return
        quantize_static(
            str(prepped), str(out), _Reader(prepped, cm.calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=q.per_channel,
            activation_type=QuantType.QUInt8 if q.activation.dtype == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"WeightSymmetric": q.weight.symmetric, "ActivationSymmetric": q.activation.symmetric},
        )


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
