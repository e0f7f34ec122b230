"""ExecuTorch ``.pte`` lowered to the XNNPACK delegate.

int8 for CNNs: torchao pt2e + XNNPACKQuantizer (static, calibrated). Transformers (and every int4 artifact):
torchao ``quantize_`` weight configs (``compression.quantize.weight_quantized``) that XNNPACK lowers to its
dynamic-int8-activation kernels (qd8 x qc8w / qb4w), with the embedding tables' dequantize + lookup fused
into ExecuTorch's quantized embedding kernel (``do_quant_fusion_and_const_prop``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from edgekit.compression.model import CompressedModel
from edgekit.compression.quantize import (
    capture,
    check_fp32_layers,
    check_scheme,
    quantize_pt2e,
    quantizer_for,
    weight_path,
    weight_quantized,
)
from edgekit.config.target import Target
from edgekit.exporters.base import Exporter, report_stage


class ExecutorchExporter(Exporter):
    format = "executorch"

    def export(self, cm: CompressedModel, precision: str, target: Target, dest: Path) -> Path:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower

        config = None
        if weight_path(cm, precision):
            import executorch.kernels.quantized  # noqa: F401  (registers the quantized embedding's out variant)

            report_stage("quantize")
            module = weight_quantized(cm.spec.module, precision, cm.profile.quantization,
                                      fp32_layers=cm.fp32_layers, int8_layers=cm.int8_layers)
            program = torch.export.export(module, cm.spec.example_inputs)
            config = ExecutorchBackendConfig(do_quant_fusion_and_const_prop=True)
        elif precision == "int8":
            check_scheme(cm, target.name)
            report_stage("quantize")
            # cm.fp32_layers (mixed precision) stay fp32: XNNPACK then runs them as fp32 kernels.
            quantizer = quantizer_for("xnnpack", cm.profile.quantization, qat=cm.qat is not None,
                                      fp32_layers=cm.fp32_layers)
            gm = quantize_pt2e(cm, quantizer)
            check_fp32_layers(gm, cm.fp32_layers, target.name)
            program = torch.export.export(gm, cm.spec.example_inputs)
        else:
            program = capture(cm)
        report_stage("lower")
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        path = dest / f"model{target.extension}"
        path.write_bytes(lowered.to_executorch(config).buffer)
        return path
