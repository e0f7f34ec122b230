"""Mixed precision: measure how much each layer suffers from int8 (or int4), and keep the worst ones higher.

A layer's sensitivity is measured with only that layer quantized and every other layer fp32, so the figure
is the layer's own damage, not its share of everyone's. For a CNN the quantizer is torchao pt2e's
XNNPACKQuantizer set from the profile's scheme and calibrated with the model's calibration set; for a
transformer (and int4) it is the weight quantization its artifacts get (``quantize.weight_quantized``:
dynamic int8 activations, int8 or int4 weights), i.e. what the ExecuTorch artifact will do. Every exporter
then honours ``CompressedModel.fp32_layers`` (and, in int4 artifacts, ``int8_layers``).
"""

from __future__ import annotations

import copy
import dataclasses
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
    int4_ok,
    keep_layers_fp32,
    linearized,
    quantizable_linear,
    quantized_layers,
    quantizer_for,
    weight_path,
    weight_quantized,
)
from edgekit.config.recipe import MixedPrecision
from edgekit.errors import CompressError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["METRICS", "QUANTIZABLE", "keep_fp32", "keep_int8", "layer_sensitivity", "quantizable_layers", "sqnr_db",
           "worst_cosine"]

# Module types whose weights the int8 quantizers quantize (XNNPACK, litert-torch, onnxruntime QDQ).
QUANTIZABLE: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
)
METRICS = ("sqnr", "accuracy", "both")


def quantizable_layers(module: nn.Module) -> dict[str, nn.Module]:
    """Conv / Linear modules by name (``features.0``): the layers mixed precision chooses among (GPT-2's
    transposed ``Conv1D`` layers count as the Linear layers they are)."""
    if any(type(m).__name__ == "Conv1D" for m in module.modules()):
        module = linearized(copy.deepcopy(module))
    return {name: m for name, m in module.named_modules() if name and isinstance(m, QUANTIZABLE)}


def worst_cosine(reference: Sequence[Sequence[np.ndarray]], other: Sequence[Sequence[np.ndarray]]) -> float:
    """The worst sample's cosine similarity of ``other`` to ``reference`` (all outputs of a sample joined)."""
    worst = 1.0
    for ref, out in zip(reference, other):
        r = np.concatenate([np.ravel(a).astype(np.float64) for a in ref])
        o = np.concatenate([np.ravel(a).astype(np.float64) for a in out])
        nr, no = float(np.linalg.norm(r)), float(np.linalg.norm(o))
        cos = 1.0 if nr == no == 0 else (0.0 if nr == 0 or no == 0 else float(r @ o) / (nr * no))
        worst = min(worst, cos)
    return worst


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
    cm: CompressedModel, *, metric: str = "sqnr", layers: Sequence[str] | None = None, precision: str = "int8",
) -> pd.DataFrame:
    """One row per quantizable layer, most sensitive first, measured with only that layer int8.

    Columns: ``layer``, ``op``, ``params``, ``weight_int8`` (the quantizer did quantize it), ``sqnr_db``
    (final output vs the fp32 reference on the parity inputs; always computed, it is cheap), and with
    ``metric="accuracy"`` or ``"both"``: ``accuracy`` and ``accuracy_drop_pts`` (vs
    ``cm.reference_accuracy``, in percentage points). ``"sqnr"`` and ``"both"`` sort by SQNR (lowest
    first): on a small eval set accuracy moves in steps of one sample. ``"accuracy"`` sorts by the drop.
    ``cosine`` (worst sample vs the reference) is always there too. ``precision="int4"`` (or int8 of a
    transformer) measures the weight quantization the transformer's artifacts get, Linear layers only.
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
    if weight_path(cm, precision):
        return _weight_sensitivity(cm, precision, chosen, reference, metric, all_layers=layers is None)
    captured = capture(cm).module()
    rows = []
    for name in chosen:
        others = [n for n in candidates if n != name and not n.startswith(name + ".")]
        gm, int8 = _quantize_all_but(cm, captured, others)
        row: dict[str, Any] = {
            "layer": name, "op": type(cm.spec.module.get_submodule(name)).__name__,
            "params": sum(p.numel() for p in cm.spec.module.get_submodule(name).parameters()),
            "weight_int8": any(q for k, q in int8.items() if k == name or k.startswith(name + ".")),
        }
        outputs = _run(gm, cm.parity_inputs())
        row.update(sqnr_db=sqnr_db(reference, outputs), cosine=worst_cosine(reference, outputs))
        if with_accuracy:
            row.update(_accuracy(gm, cm))
        rows.append(row)
    df = _ranked(pd.DataFrame(rows), metric)
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
    names, why = _choose(cm, n, layers, sensitivity, "keep_fp32", "int8")
    cm.fp32_layers = names
    cm.steps.append(f"mixed precision: {len(names)} layer(s) kept fp32 in quantized artifacts ({why})"
                    if names else "mixed precision: no layer kept fp32")
    return cm


def keep_int8(
    cm: CompressedModel,
    n: int | None = None,
    layers: Sequence[str] | None = None,
    sensitivity: pd.DataFrame | None = None,
) -> CompressedModel:
    """Give the ``n`` most sensitive Linear layers under int4 (or the named ``layers``) int8 weights in every
    int4 artifact: the int4 model's mixed precision. Sets ``cm.int8_layers``; returns ``cm``."""
    names, why = _choose(cm, n, layers, sensitivity, "keep_int8", "int4")
    cm.int8_layers = names
    cm.steps.append(f"mixed precision: {len(names)} layer(s) kept int8 in int4 artifacts ({why})"
                    if names else "mixed precision: no layer kept int8 in int4 artifacts")
    return cm


def _choose(cm: CompressedModel, n: int | None, layers: Sequence[str] | None, sensitivity: pd.DataFrame | None,
            who: str, precision: str) -> tuple[list[str], str]:
    if (n is None) == (layers is None):
        raise CompressError(f"{who}: pass exactly one of n (how many of the most sensitive layers) or layers "
                            "(module names)")
    candidates = quantizable_layers(cm.spec.module)
    if layers is not None:
        return _check_names(list(dict.fromkeys(layers)), cm.spec.module, who), "as asked"
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= len(candidates):
        raise CompressError(f"{who}: n must be an integer in [0, {len(candidates)}] (the model's "
                            f"quantizable layers), got {n!r}")
    table = sensitivity if sensitivity is not None else layer_sensitivity(cm, metric="sqnr", precision=precision)
    if "layer" not in getattr(table, "columns", ()):
        raise CompressError(f"{who}: sensitivity must be a layer_sensitivity() table (a 'layer' column)")
    names = _check_names([str(x) for x in table["layer"][:n]], cm.spec.module, who)
    return names, "most sensitive: " + ", ".join(_describe(r) for r in table.head(n).to_dict("records"))


def _ranked(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Most sensitive first: by accuracy drop (SQNR breaking ties) for ``metric="accuracy"``, else by SQNR."""
    if df.empty:
        return df
    if metric == "accuracy":
        df = df.sort_values(["accuracy_drop_pts", "sqnr_db"], ascending=[False, True], kind="stable")
    else:
        df = df.sort_values("sqnr_db", kind="stable")
    return df.reset_index(drop=True)


def _weight_sensitivity(cm: CompressedModel, precision: str, chosen: list[str], reference: list[list[np.ndarray]],
                        metric: str, *, all_layers: bool) -> pd.DataFrame:
    """``layer_sensitivity`` for the weight-quantization route: one Linear quantized at a time, eagerly."""
    import pandas as pd

    scheme = cm.profile.quantization
    module = linearized(copy.deepcopy(cm.spec.module))
    linears = {n for n, m in module.named_modules() if quantizable_linear(m)}
    inputs = cm.parity_inputs()
    rows = []
    for name in chosen:
        mine = [k for k in linears if k == name or k.startswith(name + ".")]
        if not mine:
            continue  # a convolution: this route leaves it fp32, so it has no sensitivity here
        layer = module.get_submodule(name)
        probe = weight_quantized(module, precision, scheme, only=[name], embeddings=False)
        outputs = _run(probe, inputs)
        bits = 4 if precision == "int4" and all(int4_ok(module.get_submodule(k), scheme.int4.group_size)
                                                 for k in mine) else 8
        row: dict[str, Any] = {"layer": name, "op": type(layer).__name__,
                               "params": sum(p.numel() for p in layer.parameters()), "weight_bits": bits,
                               "sqnr_db": sqnr_db(reference, outputs), "cosine": worst_cosine(reference, outputs)}
        if metric in ("accuracy", "both"):
            row.update(_accuracy(probe, cm))
        rows.append(row)
    df = _ranked(pd.DataFrame(rows), metric)
    if all_layers:
        whole = _run(weight_quantized(module, precision, scheme), inputs)
        df.attrs[f"all_{precision}_sqnr_db"] = sqnr_db(reference, whole)
        df.attrs[f"all_{precision}_cosine"] = worst_cosine(reference, whole)
    df.attrs["reference_accuracy"] = cm.reference_accuracy
    df.attrs["metric"] = metric
    df.attrs["precision"] = precision
    return df


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
    quantizer = keep_layers_fp32(quantizer_for("xnnpack", cm.profile.quantization), fp32)
    gm = calibrate(copy.deepcopy(captured), quantizer, calibration_samples(cm))
    return gm, quantized_layers(gm)


def _run(gm: nn.Module, samples: Sequence[tuple[torch.Tensor, ...]]) -> list[list[np.ndarray]]:
    with torch.no_grad():
        return [flat_outputs(gm(*s)) for s in samples]


def _accuracy(gm: nn.Module, cm: CompressedModel) -> dict[str, float]:
    assert cm.spec.eval_set is not None
    with torch.no_grad():
        acc = top1_accuracy(lambda x: flat_outputs(gm(*x)), cm.spec.eval_set)
    ref = cm.reference_accuracy if cm.reference_accuracy is not None else acc
    return {"accuracy": acc, "accuracy_drop_pts": 100.0 * (ref - acc)}


@register_step_handler(MixedPrecision)
def _mixed_precision_step(step: MixedPrecision, ctx: StepContext) -> StepResult:
    """A recipe's ``mixed_precision`` step: keep the most sensitive (or the named) layers fp32 (and, in an
    int4 model, int8); scored as the quantized model that leaves.

    ``auto`` keeps the fewest layers whose model meets the recipe's budget, found by bisection over the
    sensitivity ranking (keeping more layers at higher precision does not lower fidelity, within noise).
    """
    ctx.state.precision = step.precision
    variant = ctx.variant()
    if ctx.spec.eval_set is not None:  # accuracy drops are measured against this step's own fp32 model
        variant.reference_accuracy = accuracy(ctx.state.module, ctx.spec.eval_set)
    table: pd.DataFrame | None = None
    if isinstance(step.keep_fp32, int) or step.keep_fp32 == "auto" or isinstance(step.keep_int8, int) \
            or step.keep_int8 == "auto":
        table = layer_sensitivity(variant, metric=step.metric, precision=step.precision)
    plan = {"fp32": step.keep_fp32, "int8": step.keep_int8 if step.precision == "int4" else 0}
    for kind in ("fp32", "int8"):
        if plan[kind] == "auto":
            plan[kind] = _fewest_that_fit(ctx, variant, table, kind, plan)
    keep_fp32(variant, **_how(plan["fp32"]), sensitivity=table)
    ctx.state.fp32_layers = list(variant.fp32_layers)
    if step.precision == "int4":
        keep_int8(variant, **_how(plan["int8"]), sensitivity=table)
        ctx.state.int8_layers = [n for n in variant.int8_layers if n not in ctx.state.fp32_layers]
    detail = f"fp32 layers: {', '.join(ctx.state.fp32_layers) or 'none'}"
    if step.precision == "int4":
        detail += f"; int8 layers: {', '.join(ctx.state.int8_layers) or 'none'}"
    return ctx.result(detail, int8=True)


def _how(keep: Any) -> dict[str, Any]:
    return {"n": keep} if isinstance(keep, int) else {"layers": list(keep)}


def _fewest_that_fit(ctx: StepContext, variant: CompressedModel, table: Any, kind: str, plan: dict[str, Any]) -> int:
    if ctx.fits is None:
        raise CompressError(f"mixed_precision: keep_{kind}: auto needs a recipe budget (min_cosine or "
                            "max_accuracy_drop) to aim at")
    ranked = [str(x) for x in table["layer"]]

    def fits(n: int) -> bool:
        trial = dataclasses.replace(variant, int8_layers=list(variant.int8_layers), fp32_layers=list(variant.fp32_layers))
        other = plan["int8" if kind == "fp32" else "fp32"]
        if other != "auto":
            setattr(trial, f"{'int8' if kind == 'fp32' else 'fp32'}_layers",
                    ranked[:other] if isinstance(other, int) else list(other))
        setattr(trial, f"{kind}_layers", ranked[:n])
        scored, _ = ctx.quantized_model(trial)
        return bool(ctx.fits(scored))  # type: ignore[misc]

    lo, hi = 0, len(ranked)
    if not fits(hi):
        return hi  # even all of them is over budget: the recipe's judgement says so next
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo
