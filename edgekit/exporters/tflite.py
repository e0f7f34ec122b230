"""LiteRT ``.tflite`` through litert-torch; int8 through its PT2EQuantizer (full-integer, int8 inputs)."""

from __future__ import annotations

from pathlib import Path

from edgekit.compression.model import CompressedModel
from edgekit.compression.quantize import (
    check_fp32_layers,
    check_scheme,
    keep_layers_fp32,
    quantize_pt2e,
    quantizer_for,
)
from edgekit.config.target import Target
from edgekit.errors import ExportError
from edgekit.exporters.base import Exporter


# Checked with litert-torch 0.10.0 + torchao 0.18.0: its conv+BatchNorm QAT annotator hands torch.export a
# function, not a module. PTQ (calibration) is unaffected.
_QAT_UNSUPPORTED = (
    "QAT int8 is not available for LiteRT with this toolchain: litert-torch 0.10's conv+BatchNorm QAT "
    "annotator fails under torchao 0.18 (it passes a function to torch.export). The executorch and onnx int8 "
    "artifacts carry the QAT result; for a .tflite, compress without the qat step (PTQ int8)"
)


class TfliteExporter(Exporter):
    format = "tflite"

    def export(self, cm: CompressedModel, precision: str, target: Target, dest: Path) -> Path:
        import litert_torch

        path = dest / f"model{target.extension}"
        if precision == "int8":
            from litert_torch.quantize.quant_config import QuantConfig

            check_scheme(cm, target.name)
            quantizer = quantizer_for("litert", cm.profile.quantization, qat=cm.qat is not None)
            # cm.fp32_layers stay fp32 (float ops between dequantize/quantize); QuantConfig only reads
            # the global config, so it gets the bare quantizer.
            try:
                gm = quantize_pt2e(cm, keep_layers_fp32(quantizer, cm.fp32_layers), fold_quantize=False)
            except ValueError as exc:
                if cm.qat is not None and "Expected `mod` to be an instance" in str(exc):
                    raise ExportError(target.name, _QAT_UNSUPPORTED) from exc
                raise
            check_fp32_layers(gm, cm.fp32_layers, target.name)
            edge = litert_torch.convert(gm, cm.spec.example_inputs, quant_config=QuantConfig(pt2e_quantizer=quantizer))
        else:
            edge = litert_torch.convert(cm.spec.module, cm.spec.example_inputs)
        edge.export(str(path))
        return path
