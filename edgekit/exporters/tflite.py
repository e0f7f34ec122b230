"""LiteRT ``.tflite`` through litert-torch.

int8 for CNNs: its PT2EQuantizer (full-integer, int8 inputs). Transformers (and int4): LiteRT's own
dynamic-range path, litert-torch's quantization recipes run by the AI Edge Quantizer: int8 per-channel (or
int4 blockwise) weights for fully-connected layers and embedding tables, activations quantized at run time.
That recipe applies one scheme to every weight: it cannot keep named layers fp32 or int8, so mixed
precision is refused here rather than ignored, and int4 embedding tables are 4-bit (``embedding_bits``
does not apply).
"""

from __future__ import annotations

from pathlib import Path

from edgekit.compression.model import CompressedModel
from edgekit.compression.quantize import (
    check_fp32_layers,
    check_scheme,
    keep_layers_fp32,
    quantize_pt2e,
    quantizer_for,
    weight_path,
)
from edgekit.config.target import Target
from edgekit.errors import ExportError
from edgekit.exporters.base import Exporter, report_stage


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
        if weight_path(cm, precision):
            report_stage("lower")  # the recipe quantizes inside the conversion
            edge = litert_torch.convert(cm.spec.module, cm.spec.example_inputs,
                                        quant_config=self._recipe(cm, precision, target))
        elif precision == "int8":
            from litert_torch.quantize.quant_config import QuantConfig

            check_scheme(cm, target.name)
            report_stage("quantize")
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
            report_stage("lower")
            edge = litert_torch.convert(gm, cm.spec.example_inputs, quant_config=QuantConfig(pt2e_quantizer=quantizer))
        else:
            report_stage("lower")
            edge = litert_torch.convert(cm.spec.module, cm.spec.example_inputs)
        edge.export(str(path))
        return path

    @staticmethod
    def _recipe(cm: CompressedModel, precision: str, target: Target) -> object:
        from litert_torch.generative.quantize import quant_attrs, quant_recipes

        if cm.fp32_layers or cm.int8_layers:
            kept = ", ".join([*cm.fp32_layers, *cm.int8_layers])
            raise ExportError(target.name, f"LiteRT's dynamic-range recipe quantizes every weight alike and cannot "
                                           f"keep layers ({kept}) at higher precision; the executorch and onnx "
                                           "artifacts honour mixed precision")
        if cm.profile.quantization.layers.embedding == "fp32":
            raise ExportError(target.name, "LiteRT's dynamic-range recipe quantizes embedding tables too; "
                                           "profile asks quantization.layers.embedding: fp32")
        if precision == "int8":
            return quant_recipes.full_dynamic_recipe(weight_dtype=quant_attrs.Dtype.INT8,
                                                     granularity=quant_attrs.Granularity.CHANNELWISE)
        blocks = getattr(quant_attrs.Granularity, f"BLOCKWISE_{cm.profile.quantization.int4.group_size}")
        return quant_recipes.full_dynamic_recipe(weight_dtype=quant_attrs.Dtype.INT4, granularity=blocks)
