"""Shared pt2e steps: capture, quantize with a backend's quantizer, calibrate."""

from __future__ import annotations

from typing import Any

import torch

from edgekit.compression import CompressedModel
from edgekit.errors import ExportError


def capture(cm: CompressedModel) -> torch.export.ExportedProgram:
    return torch.export.export(cm.spec.module, cm.spec.example_inputs)


def quantize_pt2e(cm: CompressedModel, quantizer: Any, *, fold_quantize: bool = True) -> torch.fx.GraphModule:
    """prepare_pt2e -> run the calibration samples -> convert_pt2e.

    One sample at a time: batching needs a dynamic-batch capture, which cost as much as it saved
    (measured on mobilenet-v2: the observers, not the batch size, dominate).
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    prepared = prepare_pt2e(capture(cm).module(), quantizer)
    with torch.no_grad():
        for sample in cm.calibration or [cm.spec.example_inputs]:
            prepared(*sample)
    return convert_pt2e(prepared, fold_quantize=fold_quantize)


def check_scheme(cm: CompressedModel, target: str, *, asymmetric_weights: bool = False) -> None:
    """Refuse a scheme the backend's quantizer cannot honour, rather than quietly use another."""
    w = cm.profile.quantization.weight
    if not w.symmetric and not asymmetric_weights:
        raise ExportError(target, f"this quantizer supports only symmetric int8 weights; set "
                                  f"quantization.weight.symmetric: true in profile {cm.profile.name!r}")
