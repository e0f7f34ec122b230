"""Quantization-aware training with pt2e: fine-tune under fake quantization, with the backend's own quantizer.

QAT's result belongs to a quantizer: its observers learn the ranges that quantizer's kernels will use. So a
model compressed with a ``qat`` step fine-tunes once per backend quantizer at export (XNNPACKQuantizer
for ExecuTorch and ONNX, litert-torch's PT2EQuantizer for TFLite), through the same
prepare -> train -> convert path PTQ takes with calibration (compression.quantize builds the quantizers
and hands them to ``QatPlan.quantize``). Results are cached per quantizer in the process, so the recipe's
own accuracy check and the ExecuTorch export share one run.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from edgekit.compression._steps import StepContext, StepResult, register_step_handler
from edgekit.compression._train import TrainData, TrainSettings, batches, mask_keeper, train
from edgekit.config.recipe import Qat
from edgekit.errors import CompressError
from edgekit.models import Inputs


@dataclass
class QatPlan:
    """How int8 artifacts of this model are made: QAT with these settings on this data, per quantizer."""

    settings: TrainSettings
    data: TrainData
    masks: dict[str, torch.Tensor] = field(default_factory=dict)  # pruned zeros to keep zero while training
    _cache: dict[Any, torch.fx.GraphModule] = field(default_factory=dict, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        # Export workers re-run QAT for their own quantizer; converted graphs stay in this process.
        state = dict(self.__dict__)
        state["_cache"] = {}
        return state

    def quantize(
        self, module: nn.Module, quantizer: Any, *, fold_quantize: bool = True, fp32_layers: tuple[str, ...] = (),
    ) -> torch.fx.GraphModule:
        key = (type(quantizer).__module__, type(quantizer).__qualname__, _weight_range(quantizer), fold_quantize,
               fp32_layers)
        if key not in self._cache:
            self._cache[key] = qat_quantize(module, quantizer, self.data, self.settings, fold_quantize=fold_quantize,
                                           masks=self.masks)
        return self._cache[key]


def _weight_range(quantizer: Any) -> tuple[Any, Any]:
    """The weights' integer range: one quantizer class serves 8-bit (ExecuTorch) and 7-bit (onnxruntime on
    x86) weights, and a QAT result learned for one range is not the other's."""
    spec = getattr(getattr(quantizer, "global_config", None), "weight", None)
    return getattr(spec, "quant_min", None), getattr(spec, "quant_max", None)


class _TrainableExport(nn.Module):
    """A pt2e-prepared graph cannot switch train/eval by itself (BatchNorm and fake-quant need it): this can."""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        super().__init__()
        self.gm = gm

    def forward(self, *args: torch.Tensor) -> Any:
        return self.gm(*args)

    def train(self, mode: bool = True) -> "_TrainableExport":
        from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

        self.training = mode
        (move_exported_model_to_train if mode else move_exported_model_to_eval)(self.gm)
        return self


def qat_quantize(
    module: nn.Module, quantizer: Any, data: TrainData, settings: TrainSettings, *, fold_quantize: bool = True,
    masks: dict[str, torch.Tensor] | None = None,
) -> torch.fx.GraphModule:
    """fp32 ``module`` -> capture (train mode, dynamic batch) -> prepare_qat_pt2e -> train -> convert_pt2e."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    from edgekit.compression._patterns import install

    install()  # the conv+BatchNorm pattern graphs: traced once, not 24 times per quantizer (9.5 s)
    first = next(iter(batches(data, settings, 0)), None)
    if first is None:
        raise CompressError("qat: the training data yielded no batch")
    captured = _capture_for_training(copy.deepcopy(module).train(), first[0])
    prepared = _TrainableExport(prepare_qat_pt2e(captured, quantizer))
    # The captured graph keeps the module's parameter names, so pruning masks map onto it by name.
    keep = mask_keeper(prepared.gm, masks or {})
    train(prepared, data, settings, desc=f"qat ({type(quantizer).__name__})", after_step=keep)
    prepared.eval()
    converted = convert_pt2e(prepared.gm, fold_quantize=fold_quantize)
    allow_exported_model_train_eval(converted)  # evaluation code calls .eval() on whatever it scores
    converted.eval()  # the patched eval() returns None
    return converted


def _capture_for_training(module: nn.Module, batch: Inputs) -> torch.fx.GraphModule:
    batch_dim = torch.export.Dim("batch", min=1, max=65536)
    try:
        program = torch.export.export(module, batch, dynamic_shapes=tuple({0: batch_dim} for _ in batch))
    except Exception as exc:
        raise CompressError(
            f"qat: torch.export could not capture the model in training mode with a dynamic batch dimension "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]}); QAT trains on batches, so the model must "
            "not fix its batch size (e.g. a reshape to a literal 1: use x.flatten(1) or x.shape[0])"
        ) from exc
    return program.module()


@register_step_handler(Qat)
def _qat_step(step: Qat, ctx: StepContext) -> StepResult:
    """A recipe's ``qat`` step: plan QAT (pruned zeros kept zero); scored as the QAT int8 model."""
    st = ctx.state
    st.qat = QatPlan(ctx.settings(step.train), ctx.data("qat"), masks=dict(st.masks))
    return ctx.result(f"QAT {step.train.epochs} epoch(s) at lr {step.train.lr:g}; int8 artifacts fine-tune with "
                      "their target's quantizer", int8=True)
