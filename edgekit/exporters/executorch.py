"""ExecuTorch ``.pte`` lowered to the XNNPACK delegate; int8 through torchao pt2e + XNNPACKQuantizer."""

from __future__ import annotations

from pathlib import Path

import torch

from edgekit.compression import CompressedModel
from edgekit.config.target import Target
from edgekit.exporters._pt2e import capture, check_fp32_layers, check_scheme, keep_layers_fp32, quantize_pt2e
from edgekit.exporters.base import Exporter


class ExecutorchExporter(Exporter):
    format = "executorch"

    def export(self, cm: CompressedModel, precision: str, target: Target, dest: Path) -> Path:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        if precision == "int8":
            gm = quantize_pt2e(cm, self._quantizer(cm, target))
            check_fp32_layers(gm, cm.fp32_layers, target.name)
            program = torch.export.export(gm, cm.spec.example_inputs)
        else:
            program = capture(cm)
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        path = dest / f"model{target.extension}"
        path.write_bytes(lowered.to_executorch().buffer)
        return path

    @staticmethod
    def _quantizer(cm: CompressedModel, target: Target) -> object:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )

        check_scheme(cm, target.name)
        q = cm.profile.quantization
        config = get_symmetric_quantization_config(is_per_channel=q.per_channel, is_dynamic=q.mode == "dynamic",
                                                   is_qat=cm.qat is not None)
        # cm.fp32_layers (mixed precision) stay fp32: XNNPACK then runs them as fp32 kernels.
        return keep_layers_fp32(XNNPACKQuantizer().set_global(config), cm.fp32_layers)
