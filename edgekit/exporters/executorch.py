"""ExecuTorch ``.pte`` lowered to the XNNPACK delegate; int8 through torchao pt2e + XNNPACKQuantizer."""

from __future__ import annotations

from pathlib import Path

import torch

from edgekit.compression.model import CompressedModel
from edgekit.compression.quantize import capture, check_fp32_layers, check_scheme, quantize_pt2e, quantizer_for
from edgekit.config.target import Target
from edgekit.exporters.base import Exporter


class ExecutorchExporter(Exporter):
    format = "executorch"

    def export(self, cm: CompressedModel, precision: str, target: Target, dest: Path) -> Path:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        if precision == "int8":
            check_scheme(cm, target.name)
            # cm.fp32_layers (mixed precision) stay fp32: XNNPACK then runs them as fp32 kernels.
            quantizer = quantizer_for("xnnpack", cm.profile.quantization, qat=cm.qat is not None,
                                      fp32_layers=cm.fp32_layers)
            gm = quantize_pt2e(cm, quantizer)
            check_fp32_layers(gm, cm.fp32_layers, target.name)
            program = torch.export.export(gm, cm.spec.example_inputs)
        else:
            program = capture(cm)
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        path = dest / f"model{target.extension}"
        path.write_bytes(lowered.to_executorch().buffer)
        return path
