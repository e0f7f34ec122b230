"""Shared pt2e steps: capture, quantize with a backend's quantizer, calibrate."""

from __future__ import annotations

import functools
from typing import Any, Sequence

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
    if cm.qat is not None:  # a recipe's qat step: fine-tune with this quantizer instead of calibrating
        return cm.qat.quantize(cm.spec.module, quantizer, fold_quantize=fold_quantize,
                               fp32_layers=tuple(cm.fp32_layers))

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
