"""Mixed precision: measure how much each layer suffers from int8, and keep the worst ones in fp32.

A layer's sensitivity is measured with only that layer int8 and every other layer fp32, so the figure is
the layer's own damage, not its share of everyone's. The quantizer is torchao pt2e's XNNPACKQuantizer set
from the profile's scheme and calibrated with the model's calibration set, i.e. what the ExecuTorch int8
artifact will do; every exporter then honours ``CompressedModel.fp32_layers``.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import nn

from edgekit.compression._steps import StepContext, StepResult, register_step_handler
from edgekit.compression.model import CompressedModel, accuracy, flat_outputs, top1_accuracy
from edgekit.compression.quantize import (
    calibrate,
    calibration_samples,
    capture,
    keep_layers_fp32,
    ptq_patterns_only,
    quantized_layers,
    quantizer_for,
)
from edgekit.config.recipe import MixedPrecision
from edgekit.errors import CompressError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["METRICS", "QUANTIZABLE", "keep_fp32", "layer_sensitivity", "quantizable_layers", "sqnr_db"]

# Module types whose weights the int8 quantizers quantize (XNNPACK, litert-torch, onnxruntime QDQ).
QUANTIZABLE: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
)
METRICS = ("sqnr", "accuracy", "both")


def quantizable_layers(module: nn.Module) -> dict[str, nn.Module]:
    """Conv / Linear modules by name (``features.0``): the layers mixed precision chooses among."""
    return {name: m for name, m in module.named_modules() if name and isinstance(m, QUANTIZABLE)}


def sqnr_db(reference: Sequence[Sequence[np.ndarray]], other: Sequence[Sequence[np.ndarray]]) -> float:
    """Signal-to-quantization-noise ratio of ``other`` against ``reference`` over all outputs, in dB."""
    ref = np.concatenate([np.ravel(a).astype(np.float64) for sample in reference for a in sample])
    out = np.concatenate([np.ravel(a).astype(np.float64) for sample in other for a in sample])
    noise = float(np.sum((ref - out) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(max(signal, 1e-30) / noise)


def layer_sensitivity(
    cm: CompressedModel, *, metric: str = "sqnr", layers: Sequence[str] | None = None
) -> pd.DataFrame:
    """One row per quantizable layer, most sensitive first, measured with only that layer int8.

    Columns: ``layer``, ``op``, ``params``, ``weight_int8`` (the quantizer did quantize it), ``sqnr_db``
    (final output vs the fp32 reference on the parity inputs; always computed, it is cheap), and with
    ``metric="accuracy"`` or ``"both"``: ``accuracy`` and ``accuracy_drop_pts`` (vs
    ``cm.reference_accuracy``, in percentage points). ``"sqnr"`` and ``"both"`` sort by SQNR (lowest
    first): on a small eval set accuracy moves in steps of one sample. ``"accuracy"`` sorts by the drop.
    Without ``layers``, ``df.attrs`` also holds the all-layers-int8 figures (``all_int8_sqnr_db``,
    ``all_int8_accuracy``) for context.
    """
    import pandas as pd

    if metric not in METRICS:
        raise CompressError(f"layer_sensitivity: metric must be one of {', '.join(METRICS)}, got {metric!r}")
    with_accuracy = metric in ("accuracy", "both")
    if with_accuracy and cm.spec.eval_set is None:
        raise CompressError(f"layer_sensitivity: metric={metric!r} needs an eval set, and model {cm.name!r} has "
                            "none; use metric='sqnr'")
    candidates = quantizable_layers(cm.spec.module)
    if not candidates:
        raise CompressError(f"layer_sensitivity: model {cm.name!r} has no Conv/Linear layer to quantize")
    chosen = list(candidates) if layers is None else _check_names(list(layers), cm.spec.module, "layer_sensitivity")
    reference = cm.reference_outputs()
    captured = capture(cm).module()
    rows = []
    for name in chosen:
        others = [n for n in candidates if n != name and not n.startswith(name + ".")]
        gm, int8 = _quantize_all_but(cm, captured, others)
        row: dict[str, Any] = {
            "layer": name, "op": type(cm.spec.module.get_submodule(name)).__name__,
            "params": sum(p.numel() for p in cm.spec.module.get_submodule(name).parameters()),
            "weight_int8": any(q for k, q in int8.items() if k == name or k.startswith(name + ".")),
            "sqnr_db": sqnr_db(reference, _run(gm, cm.parity_inputs())),
        }
        if with_accuracy:
            row.update(_accuracy(gm, cm))
        rows.append(row)
    df = pd.DataFrame(rows)
    if metric == "accuracy":
        df = df.sort_values(["accuracy_drop_pts", "sqnr_db"], ascending=[False, True], kind="stable")
    else:
        df = df.sort_values("sqnr_db", kind="stable")
    df = df.reset_index(drop=True)
    if layers is None:  # the whole-model figures, for context: one more calibration
        gm, _ = _quantize_all_but(cm, captured, [])
        df.attrs["all_int8_sqnr_db"] = sqnr_db(reference, _run(gm, cm.parity_inputs()))
        if with_accuracy:
            df.attrs["all_int8_accuracy"] = _accuracy(gm, cm)["accuracy"]
    df.attrs["reference_accuracy"] = cm.reference_accuracy
    df.attrs["metric"] = metric
    return df


def keep_fp32(
    cm: CompressedModel,
    n: int | None = None,
    layers: Sequence[str] | None = None,
    sensitivity: pd.DataFrame | None = None,
) -> CompressedModel:
    """Leave the ``n`` most sensitive layers, or the named ``layers``, in fp32 in every int8 artifact.

    Sets ``cm.fp32_layers`` (replacing any earlier choice) and records a line in ``cm.steps``; returns
    ``cm`` itself. ``sensitivity`` is a ``layer_sensitivity`` table to reuse; with ``n`` and none given,
    one is measured (SQNR). A name may be a container (``classifier``): everything inside stays fp32.
    """
    if (n is None) == (layers is None):
        raise CompressError("keep_fp32: pass exactly one of n (how many of the most sensitive layers) or layers "
                            "(module names)")
    candidates = quantizable_layers(cm.spec.module)
    if layers is not None:
        names = _check_names(list(dict.fromkeys(layers)), cm.spec.module, "keep_fp32")
        why = "as asked"
    else:
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= len(candidates):
            raise CompressError(f"keep_fp32: n must be an integer in [0, {len(candidates)}] (the model's "
                                f"quantizable layers), got {n!r}")
        table = sensitivity if sensitivity is not None else layer_sensitivity(cm, metric="sqnr")
        if "layer" not in getattr(table, "columns", ()):
            raise CompressError("keep_fp32: sensitivity must be a layer_sensitivity() table (a 'layer' column)")
        names = _check_names([str(x) for x in table["layer"][:n]], cm.spec.module, "keep_fp32")
        why = "most sensitive: " + ", ".join(_describe(r) for r in table.head(n).to_dict("records"))
    cm.fp32_layers = names
    cm.steps.append(f"mixed precision: {len(names)} layer(s) kept fp32 in int8 artifacts ({why})"
                    if names else "mixed precision: no layer kept fp32")
    return cm


def _describe(row: dict[str, Any]) -> str:
    parts = [f"{row['sqnr_db']:.1f} dB"] if "sqnr_db" in row else []
    if "accuracy_drop_pts" in row:
        parts.append(f"-{row['accuracy_drop_pts']:.2f} pts")
    return f"{row['layer']} ({', '.join(parts)})" if parts else str(row["layer"])


def _check_names(names: list[str], module: nn.Module, who: str) -> list[str]:
    """Module names that are, or contain, a quantizable layer; others fail listing the valid ones."""
    leaves = quantizable_layers(module)
    modules = dict(module.named_modules())
    bad = [x for x in names if x not in modules or not any(k == x or k.startswith(x + ".") for k in leaves)]
    if bad:
        raise CompressError(f"{who}: unknown or non-quantizable layer(s) {bad}; valid (Conv/Linear modules, or "
                            f"a module containing them): {', '.join(leaves)}")
    return names


def _quantize_all_but(
    cm: CompressedModel, captured: torch.fx.GraphModule, fp32: list[str]
) -> tuple[torch.fx.GraphModule, dict[str, bool]]:
    """int8 as the ExecuTorch target quantizes it (post-training, calibrated), except the layers ``fp32``;
    and which layers did get int8 weights.

    Not ``set_global(None)`` + ``set_module_name(layer, config)``: torchao's module-name filter rejects a
    conv->relu pattern whose relu is a sibling module (``nn.Sequential(conv, bn, relu)``), so the conv
    silently stays fp32. Excluding every other layer quantizes the conv together with its relu.
    """
    quantizer = keep_layers_fp32(ptq_patterns_only(quantizer_for("xnnpack", cm.profile.quantization)), fp32)
    gm = calibrate(copy.deepcopy(captured), quantizer, calibration_samples(cm))
    return gm, quantized_layers(gm)


def _run(gm: torch.fx.GraphModule, samples: Sequence[tuple[torch.Tensor, ...]]) -> list[list[np.ndarray]]:
    with torch.no_grad():
        return [flat_outputs(gm(*s)) for s in samples]


def _accuracy(gm: torch.fx.GraphModule, cm: CompressedModel) -> dict[str, float]:
    assert cm.spec.eval_set is not None
    with torch.no_grad():
        acc = top1_accuracy(lambda x: flat_outputs(gm(*x)), cm.spec.eval_set)
    ref = cm.reference_accuracy if cm.reference_accuracy is not None else acc
    return {"accuracy": acc, "accuracy_drop_pts": 100.0 * (ref - acc)}


@register_step_handler(MixedPrecision)
def _mixed_precision_step(step: MixedPrecision, ctx: StepContext) -> StepResult:
    """A recipe's ``mixed_precision`` step: keep the most sensitive (or the named) layers fp32; scored as
    the int8 model that leaves."""
    variant = ctx.variant()
    if ctx.spec.eval_set is not None:  # accuracy drops are measured against this step's own fp32 model
        variant.reference_accuracy = accuracy(ctx.state.module, ctx.spec.eval_set)
    if isinstance(step.keep_fp32, int):
        table = layer_sensitivity(variant, metric=step.metric)
        kept = keep_fp32(variant, n=step.keep_fp32, sensitivity=table)
    else:
        kept = keep_fp32(variant, layers=step.keep_fp32)
    ctx.state.fp32_layers = list(kept.fp32_layers)
    return ctx.result(f"fp32 layers: {', '.join(ctx.state.fp32_layers) or 'none'}", int8=True)
