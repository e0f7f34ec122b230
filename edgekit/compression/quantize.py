"""One home for every pt2e quantizer and the single calibration loop; exporters, QAT and sensitivity call it.

``quantizer_for(backend, scheme)`` builds a backend's quantizer from the profile's scheme (``QUANTIZERS``:
XNNPACK's for the ExecuTorch artifact, ONNX's QAT path and the simulated int8 the recipe and mixed precision
score; litert-torch's PT2EQuantizer for LiteRT), so every caller quantizes the same way. ``calibrate`` is
the one prepare_pt2e -> calibration samples -> convert_pt2e loop; ``quantize_pt2e`` runs it, or a recipe's
QAT instead. onnxruntime's QDQ quantization is not here: it rewrites an exported .onnx file, not a pt2e
graph (exporters/onnx.py). torchao, executorch and litert-torch load inside these functions only, when an
int8 model is built.

Transformers take another route (``weight_path``): their Linear layers get dynamic int8 activations, their
embeddings weight-only int8, and ``int4`` 4-bit grouped weights, through torchao's ``quantize_`` configs
(``weight_quantized``), which XNNPACK lowers and which PyTorch runs eagerly for sensitivity and budgets.
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Callable, Sequence, cast

import torch
from torch import nn

from edgekit.compression.model import CompressedModel
from edgekit.config.profile import QuantizationScheme
from edgekit.errors import CompressError, ExportError, UnknownNameError
from edgekit.models import Inputs, model_family

__all__ = ["QUANTIZERS", "calibrate", "calibration_samples", "capture", "check_fp32_layers", "check_scheme",
           "in_layers", "int4_ok", "quantizable_linear", "keep_layers_fp32", "linear_mode", "linearized", "node_module_paths", "ptq_patterns_only",
           "quantize_pt2e", "quantized_layers", "quantizer_for", "weight_path", "weight_quantized"]


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
    quantizer = QUANTIZERS[backend](scheme, qat)
    if not qat and hasattr(type(quantizer), "SUPPORTED_PATTERNS"):
        quantizer = ptq_patterns_only(quantizer)  # XNNPACK's: no conv+BatchNorm pattern traces for PTQ
    return keep_layers_fp32(quantizer, fp32_layers)


def ptq_patterns_only(quantizer: Any) -> Any:
    """An XNNPACKQuantizer without its conv+BatchNorm (QAT) patterns, for repeated post-training runs.

    Post-training prepare_pt2e folds BatchNorm into the conv before annotating, so the conv+bn patterns
    (QAT's) can never match; building them re-traces 12 pattern graphs (12 ``torch.export`` calls: 2.1 s
    against 0.4 s on digits-cnn, identical results; ~6 s per layer measured in sensitivity).
    """
    quantizer.SUPPORTED_PATTERNS = [p for p in type(quantizer).SUPPORTED_PATTERNS if "_bn" not in p.name]
    return quantizer


def check_scheme(cm: CompressedModel, target: str, *, asymmetric_weights: bool = False) -> None:
    """Refuse a scheme the backend's quantizer cannot honour, rather than quietly use another."""
    w = cm.profile.quantization.weight
    if not w.symmetric and not asymmetric_weights:
        raise ExportError(target, f"this quantizer supports only symmetric int8 weights; set "
                                  f"quantization.weight.symmetric: true in profile {cm.profile.name!r}")


# --- transformers: Linear and Embedding weights through torchao's quantize_ --------------------------------


def linear_mode(scheme: QuantizationScheme, module: nn.Module) -> str:
    """How Linear layers are quantized: the profile's ``layers.linear``, with ``auto`` resolved by the model."""
    if scheme.layers.linear != "auto":
        return scheme.layers.linear
    return "dynamic" if model_family(module) == "transformer" else scheme.mode


def weight_path(cm: CompressedModel, precision: str) -> bool:
    """Whether this artifact is built by weight quantization (dynamic int8 / int4 Linear, weight-only
    embeddings) rather than the calibrated pt2e graph: int4 always, int8 for a transformer whose Linear
    layers are dynamic (a recipe's QAT keeps the pt2e route it trained)."""
    if precision == "int4":
        return True
    return (precision == "int8" and cm.qat is None and linear_mode(cm.profile.quantization, cm.spec.module) == "dynamic"
            and model_family(cm.spec.module) == "transformer")


def _covers(names: Sequence[str], fqn: str) -> bool:
    return any(fqn == n or fqn.startswith(n + ".") for n in names)


def quantizable_linear(layer: nn.Module) -> bool:
    """A Linear this route quantizes. Not ``nn.MultiheadAttention``'s output projection: the attention's
    functional forward reads that weight directly (and its packed input projection is no Linear at all), so
    those stay fp32; transformers' own attention layers are plain Linear modules and are quantized."""
    from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

    return isinstance(layer, nn.Linear) and not isinstance(layer, NonDynamicallyQuantizableLinear)


def int4_ok(layer: nn.Module, group_size: int) -> bool:
    """A Linear whose input width the group size divides; others stay int8 in an int4 artifact."""
    return isinstance(layer, nn.Linear) and layer.in_features % group_size == 0


def linearized(module: nn.Module) -> nn.Module:
    """``module`` with GPT-2-style ``Conv1D`` layers (a Linear whose weight is stored transposed, from
    ``transformers``) replaced in place by ``nn.Linear``, so every quantizer sees them as the Linear they are."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            child = cast(Any, child)
            if type(child).__name__ == "Conv1D" and hasattr(child, "nf") and child.weight.dim() == 2:
                linear = nn.Linear(child.weight.shape[0], child.weight.shape[1], bias=child.bias is not None)
                with torch.no_grad():
                    linear.weight.copy_(child.weight.t())
                    if child.bias is not None:
                        linear.bias.copy_(child.bias)
                setattr(parent, name, linear)
    return module


def weight_quantized(module: nn.Module, precision: str, scheme: QuantizationScheme, *,
                     fp32_layers: Sequence[str] = (), int8_layers: Sequence[str] = (),
                     only: Sequence[str] | None = None, embeddings: bool = True) -> nn.Module:
    """A copy of ``module`` with int8 (or int4) Linear weights and dynamic int8 activations, and weight-only
    embeddings, as torchao's ``quantize_`` configs that XNNPACK lowers (``Int8DynamicActivationIntxWeightConfig``,
    ``IntxWeightOnlyConfig``). It runs eagerly too: sensitivity and fidelity budgets score it directly.

    ``fp32_layers`` stay fp32; in an int4 model ``int8_layers`` keep int8 weights; ``only`` restricts the
    Linear layers touched (a sensitivity probe). Embedding indices are never quantized, only the tables.
    """
    try:
        from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig, quantize_
        from torchao.quantization.granularity import PerAxis, PerGroup
    except ImportError as exc:
        raise CompressError("int8/int4 weight quantization of a transformer needs torchao; install "
                            "edgekit[executorch]") from exc
    if precision not in ("int8", "int4"):
        raise CompressError(f"weight quantization: precision must be int8 or int4, got {precision!r}")
    group = scheme.int4.group_size
    int4_dtype = getattr(torch, "int4")  # noqa: B009  (missing from torch's type stubs)
    out = linearized(copy.deepcopy(module).eval())
    for m in out.modules():
        if isinstance(m, nn.Embedding):
            # padding_idx only shapes gradients; left set, ExecuTorch's fusion of the dequantize + embedding
            # pattern into its quantized embedding kernel does not match (a 3-argument aten.embedding).
            m.padding_idx = None

    def linear(mod: nn.Module, fqn: str) -> bool:
        return (quantizable_linear(mod) and not _covers(fp32_layers, fqn)
                and (only is None or _covers(only, fqn)))

    if embeddings and scheme.layers.embedding == "weight_only":
        four_bit = precision == "int4" and scheme.int4.embedding_bits == 4

        def table(m: nn.Module, fqn: str, bits: int) -> bool:  # 4-bit groups must divide the row
            grouped = four_bit and m.embedding_dim % group == 0 if isinstance(m, nn.Embedding) else False
            return isinstance(m, nn.Embedding) and not _covers(fp32_layers, fqn) and grouped == (bits == 4)

        quantize_(out, IntxWeightOnlyConfig(weight_dtype=int4_dtype, granularity=PerGroup(group)),
                  filter_fn=lambda m, fqn: table(m, fqn, 4))
        quantize_(out, IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0)),
                  filter_fn=lambda m, fqn: table(m, fqn, 8))
    int8 = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0))
    if precision == "int8":
        quantize_(out, int8, filter_fn=linear)
        return out
    four = Int8DynamicActivationIntxWeightConfig(weight_dtype=int4_dtype, weight_granularity=PerGroup(group))
    quantize_(out, int8, filter_fn=lambda m, fqn: linear(m, fqn) and (_covers(int8_layers, fqn)
                                                                     or not int4_ok(m, group)))
    quantize_(out, four, filter_fn=lambda m, fqn: linear(m, fqn) and not _covers(int8_layers, fqn)
              and int4_ok(m, group))
    return out


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

    from edgekit.compression._patterns import install

    from edgekit.compression import _observers

    install()  # torchao's pattern graphs traced once, not per prepare
    key = _observers.calibration_key(graph, samples)  # before prepare_pt2e rewrites the graph
    prepared = prepare_pt2e(graph, quantizer)
    if not _observers.restore(prepared, key):  # another quantizer calibrated the same observers: re-use them
        with torch.no_grad():
            for sample in samples:
                prepared(*sample)
        _observers.keep(prepared, key)
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
