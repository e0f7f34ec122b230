"""One home for every pt2e quantizer and the single calibration loop; exporters, QAT and sensitivity call it.

``quantizer_for(backend, scheme)`` builds a backend's quantizer from the profile's scheme (``QUANTIZERS``:
XNNPACK's for the ExecuTorch artifact, ONNX's QAT path and the simulated int8 the recipe and mixed precision
score; litert-torch's PT2EQuantizer for LiteRT), so every caller quantizes the same way. ``calibrate`` is
the one prepare_pt2e -> calibration samples -> convert_pt2e loop; ``quantize_pt2e`` runs it, or a recipe's
QAT instead. onnxruntime's QDQ quantization is not here: it rewrites an exported .onnx file, not a pt2e
graph (exporters/onnx.py). torchao, executorch and litert-torch load inside these functions only, when an
int8 model is built.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import torch

from edgekit.compression.model import CompressedModel
from edgekit.config.profile import QuantizationScheme
from edgekit.errors import CompressError, ExportError, UnknownNameError
from edgekit.models import Inputs

__all__ = ["QUANTIZERS", "calibrate", "calibration_samples", "capture", "check_fp32_layers", "check_scheme",
           "in_layers", "keep_layers_fp32", "node_module_paths", "ptq_patterns_only", "quantize_pt2e",
           "quantized_layers", "quantizer_for"]


# --- the backends' quantizers, by name -----------------------------------------------------------------


def _xnnpack(scheme: QuantizationScheme, qat: bool, weight_range: tuple[int, int] = (-127, 127)) -> Any:
    try:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
    except ImportError as exc:
        raise CompressError("int8 with XNNPACK's quantizer (ExecuTorch int8, ONNX QAT, mixed precision and the "
                            "recipe's int8 accuracy) needs ExecuTorch; install edgekit[executorch]") from exc
    config = get_symmetric_quantization_config(is_per_channel=scheme.per_channel, is_dynamic=scheme.mode == "dynamic",
                                               is_qat=qat, weight_qmin=weight_range[0], weight_qmax=weight_range[1])
    return XNNPACKQuantizer().set_global(config)


def _onnxruntime(scheme: QuantizationScheme, qat: bool) -> Any:
    """ONNX's pt2e path (QAT): XNNPACK's quantizer, whose quantize/dequantize ops export as ONNX QDQ, with
    7-bit weights where the profile asks for ``reduce_range`` (onnxruntime's u8 x s8 kernels saturate on x86
    CPUs without VNNI: digits-cnn QAT onnx int8 cosine 0.9606 with 8-bit weights on an AVX2-only EPYC)."""
    return _xnnpack(scheme, qat, (-63, 63) if scheme.weight.reduce_range else (-127, 127))


def _litert(scheme: QuantizationScheme, qat: bool) -> Any:
    try:
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    except ImportError as exc:
        raise CompressError("int8 with LiteRT's quantizer needs litert-torch; install edgekit[tflite]") from exc
    config = get_symmetric_quantization_config(is_per_channel=scheme.per_channel, is_dynamic=scheme.mode == "dynamic",
                                               is_qat=qat)
    return PT2EQuantizer().set_global(config)


# backend -> builder(scheme, qat) of its pt2e quantizer, set globally from the profile's scheme.
QUANTIZERS: dict[str, Callable[[QuantizationScheme, bool], Any]] = {
    "litert": _litert, "onnxruntime": _onnxruntime, "xnnpack": _xnnpack}


def quantizer_for(backend: str, scheme: QuantizationScheme, *, qat: bool = False,
                  fp32_layers: Sequence[str] = ()) -> Any:
    """``backend``'s pt2e quantizer for ``scheme`` (QAT flavour when ``qat``), leaving ``fp32_layers`` fp32.

    Unknown backends fail listing the valid ones. Whether the backend can honour the scheme at all is
    ``check_scheme``'s question, asked by the caller that names the target.
    """
    if backend not in QUANTIZERS:
        raise UnknownNameError("quantizer backend", backend, QUANTIZERS)
    return keep_layers_fp32(QUANTIZERS[backend](scheme, qat), fp32_layers)


def ptq_patterns_only(quantizer: Any) -> Any:
    """An XNNPACKQuantizer without its conv+BatchNorm (QAT) patterns, for repeated post-training runs.

    Post-training prepare_pt2e folds BatchNorm into the conv before annotating, so the conv+bn patterns
    (QAT's) can never match; building them re-traces 12 pattern graphs (~6 s) per layer measured.
    """
    quantizer.SUPPORTED_PATTERNS = [p for p in type(quantizer).SUPPORTED_PATTERNS if "_bn" not in p.name]
    return quantizer


def check_scheme(cm: CompressedModel, target: str, *, asymmetric_weights: bool = False) -> None:
    """Refuse a scheme the backend's quantizer cannot honour, rather than quietly use another."""
    w = cm.profile.quantization.weight
    if not w.symmetric and not asymmetric_weights:
        raise ExportError(target, f"this quantizer supports only symmetric int8 weights; set "
                                  f"quantization.weight.symmetric: true in profile {cm.profile.name!r}")


# --- capture, calibrate, convert -------------------------------------------------------------------------


def capture(cm: CompressedModel) -> torch.export.ExportedProgram:
    return torch.export.export(cm.spec.module, cm.spec.example_inputs)


def calibration_samples(cm: CompressedModel) -> Sequence[Inputs]:
    """The model's calibration set; without one, its example inputs."""
    return cm.calibration or [cm.spec.example_inputs]


def calibrate(graph: torch.fx.GraphModule, quantizer: Any, samples: Sequence[Inputs], *,
              fold_quantize: bool = True) -> torch.fx.GraphModule:
    """prepare_pt2e -> run ``samples`` -> convert_pt2e: the one post-training calibration loop.

    One sample at a time: batching needs a dynamic-batch capture, which cost as much as it saved
    (measured on mobilenet-v2: the observers, not the batch size, dominate).
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for sample in samples:
            prepared(*sample)
    return convert_pt2e(prepared, fold_quantize=fold_quantize)


def quantize_pt2e(cm: CompressedModel, quantizer: Any, *, fold_quantize: bool = True) -> torch.fx.GraphModule:
    """``cm`` int8 through ``quantizer``: calibrated on its samples, or fine-tuned by a recipe's QAT plan."""
    if cm.qat is not None:  # a recipe's qat step: fine-tune with this quantizer instead of calibrating
        return cm.qat.quantize(cm.spec.module, quantizer, fold_quantize=fold_quantize,
                               fp32_layers=tuple(cm.fp32_layers))
    return calibrate(capture(cm).module(), quantizer, calibration_samples(cm), fold_quantize=fold_quantize)


# --- mixed precision: layers left in fp32 in an otherwise int8 artifact --------------------------------


def node_module_paths(node: torch.fx.Node) -> list[str]:
    """The module names (``features.0``, ``features``...) a captured node was called from, innermost last."""
    paths = []
    for path, _ in node.meta.get("nn_module_stack", {}).values():
        paths.append(path[len("L['self'].") :] if path.startswith("L['self'].") else path)
    return paths


def in_layers(node: torch.fx.Node, names: Sequence[str]) -> bool:
    """Whether ``node`` was called from one of the modules ``names`` (or from a module inside one)."""
    wanted = set(names)
    return any(p in wanted for p in node_module_paths(node))


def keep_layers_fp32(quantizer: Any, names: Sequence[str]) -> Any:
    """``quantizer``, but leaving every op of the modules ``names`` unannotated, so they stay fp32.

    Neither backend's own route works for this: ``set_module_name(name, None)`` asserts in both the
    XNNPACKQuantizer and litert-torch's PT2EQuantizer, and litert's module-name filter strips a prefix
    (``L__self___``) that torch 2.13's ``nn_module_stack`` keys no longer carry, so it matches nothing. The
    wrapper marks those nodes as already annotated (with no specs) before the backend annotates: every
    backend annotator skips a pattern with an annotated node, so no observer is placed on them.
    """
    if not names:
        return quantizer
    return _keep_fp32_quantizer_class()(quantizer, list(names))


def _weight_is_quantized(node: torch.fx.Node) -> bool:
    weight = node.args[1] if len(node.args) > 1 else None
    return isinstance(weight, torch.fx.Node) and "dequantize" in str(weight.target)


def quantized_layers(gm: torch.fx.GraphModule) -> dict[str, bool]:
    """Each conv/linear of a converted pt2e graph, by module name: True when its weight is int8.

    After ``convert_pt2e`` an int8 weight reaches its op through a ``dequantize_per_channel`` /
    ``dequantize_per_tensor`` node; an fp32 weight comes straight from its parameter.
    """
    found: dict[str, bool] = {}
    for node in gm.graph.nodes:
        if node.op == "call_function" and _is_weighted_op(node):
            paths = node_module_paths(node)
            name = paths[-1] if paths else node.name
            found[name] = found.get(name, False) or _weight_is_quantized(node)
    return found


def check_fp32_layers(gm: torch.fx.GraphModule, names: Sequence[str], target: str) -> None:
    """Refuse an artifact in which a layer asked to stay fp32 was quantized anyway, or was not found."""
    if not names:
        return
    layers = quantized_layers(gm)
    for name in names:
        mine = {k: q for k, q in layers.items() if k == name or k.startswith(name + ".")}
        if not mine:
            raise ExportError(target, f"fp32 layer {name!r} has no conv/linear op in the captured graph; "
                                      f"layers found: {', '.join(sorted(layers)) or '(none)'}")
        quantized = sorted(k for k, q in mine.items() if q)
        if quantized:
            raise ExportError(target, f"fp32 layer {name!r} was quantized anyway ({', '.join(quantized)}); "
                                      "refusing to build an int8 artifact that ignores fp32_layers")


_WEIGHTED_OPS = ("conv1d", "conv2d", "conv3d", "convolution", "conv_transpose", "linear")


def _is_weighted_op(node: torch.fx.Node) -> bool:
    name = str(node.target).split(".")[-2] if "." in str(node.target) else str(node.target)
    return name.startswith(_WEIGHTED_OPS)


@functools.cache
def _keep_fp32_quantizer_class() -> type:
    """Defined on first use: torchao is imported only when an int8 artifact is built."""
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, Quantizer

    class KeepFp32(Quantizer):
        def __init__(self, inner: Any, names: list[str]) -> None:
            super().__init__()
            self.inner = inner
            self.names = names

        def transform_for_annotation(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            return self.inner.transform_for_annotation(model)

        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            marked = []
            for node in model.graph.nodes:
                fresh = "quantization_annotation" not in node.meta
                if node.op == "call_function" and fresh and in_layers(node, self.names):
                    node.meta["quantization_annotation"] = QuantizationAnnotation(_annotated=True)
                    marked.append(node)
            model = self.inner.annotate(model)
            for node in marked:  # nothing to observe: leave them as if never annotated
                del node.meta["quantization_annotation"]
            return model

        def validate(self, model: torch.fx.GraphModule) -> None:
            self.inner.validate(model)

        def prepare_obs_or_fq_callback(self, model: torch.fx.GraphModule, edge_or_node_to_obs_or_fq: dict) -> None:
            self.inner.prepare_obs_or_fq_callback(model, edge_or_node_to_obs_or_fq)

        def __getattr__(self, name: str) -> Any:  # global_config, is_dynamic... as the wrapped quantizer
            return getattr(self.__dict__["inner"], name)

    return KeepFp32
