"""LiteRT ``.tflite`` through litert-torch; int8 through its PT2EQuantizer (full-integer, int8 inputs)."""

from __future__ import annotations

from pathlib import Path

from edgekit.compression import CompressedModel
from edgekit.config.target import Target
from edgekit.exporters._pt2e import check_scheme, quantize_pt2e
from edgekit.exporters.base import Exporter


class TfliteExporter(Exporter):
    format = "tflite"

    def export(self, cm: CompressedModel, precision: str, target: Target, dest: Path) -> Path:
        import litert_torch

        path = dest / f"model{target.extension}"
        if precision == "int8":
            from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
            from litert_torch.quantize.quant_config import QuantConfig

            check_scheme(cm, target.name)
            q = cm.profile.quantization
            quantizer = PT2EQuantizer().set_global(
                get_symmetric_quantization_config(is_per_channel=q.per_channel, is_dynamic=q.mode == "dynamic")
            )
            gm = quantize_pt2e(cm, quantizer, fold_quantize=False)
            edge = litert_torch.convert(gm, cm.spec.example_inputs, quant_config=QuantConfig(pt2e_quantizer=quantizer))
        else:
            edge = litert_torch.convert(cm.spec.module, cm.spec.example_inputs)
        edge.export(str(path))
        return path
