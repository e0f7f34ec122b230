"""Recipe steps, registered by config type: a new step is one handler and one ``@register_step_handler``.

Each step's handler lives next to its method (prune.py, distill.py, lowrank.py, sensitivity.py, qat.py)
and gets a :class:`StepContext`: the model as the previous steps left it, and the shared means to train it
and score it. The handler modules import this module; it imports none of them (compression.recipe imports
them, so they are registered before it dispatches), so registration makes no import circle.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, TypeVar

import torch
from torch import nn

from edgekit.compression._train import TrainData, TrainSettings, mask_keeper, train, train_data_for
from edgekit.compression.model import CompressedModel
from edgekit.compression.quantize import check_scheme, quantize_pt2e, quantizer_for, weight_path, weight_quantized
from edgekit.config.recipe import TrainSpec
from edgekit.errors import CompressError
from edgekit.models import ModelSpec

__all__ = ["StepContext", "StepHandler", "StepResult", "StepState", "apply_step", "register_step_handler"]


@dataclass
class StepState:
    """The model as the steps so far left it."""

    module: nn.Module
    fp32_layers: list[str]
    qat: Any  # a compression.qat.QatPlan once a qat step ran, else None
    # Zeros left by unstructured / 2:4 pruning, by parameter name: later training keeps them zero.
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    # Set by a mixed_precision step: the precision the model is judged at, and (int4) the layers kept int8.
    precision: str = "int8"
    int8_layers: list[str] = field(default_factory=list)

    def copy(self) -> "StepState":
        return StepState(copy.deepcopy(self.module), list(self.fp32_layers), self.qat, dict(self.masks),
                         self.precision, list(self.int8_layers))


class StepResult(NamedTuple):
    detail: str  # the report's line for this step
    scored: Any  # what its accuracy is taken on: the fp32 module, or the simulated int8 graph
    evaluated_as: str


@dataclass
class StepContext:
    """What a step handler works with: it changes ``state`` in place."""

    state: StepState
    cm: CompressedModel
    teacher: nn.Module  # the model before the recipe
    train_data: TrainData | None
    threads: int | None
    # The recipe's budget as a test of a scored model (None without a budget): what ``auto`` choices aim at.
    fits: Callable[[Any], bool] | None = None

    @property
    def spec(self) -> ModelSpec:
        return self.cm.spec

    def settings(self, t: TrainSpec) -> TrainSettings:
        return TrainSettings(epochs=t.epochs, lr=t.lr, batch_size=t.batch_size, seed=t.seed, threads=self.threads)

    def data(self, what: str) -> TrainData:
        return train_data_for(self.spec, self.train_data, what)

    def fit(self, module: nn.Module, t: TrainSpec, what: str) -> None:
        """Fine-tune ``module`` per ``t``, keeping pruned zeros zero."""
        train(module, self.data(what), self.settings(t), desc=what, after_step=mask_keeper(module, self.state.masks))

    def variant(self) -> CompressedModel:
        """``cm`` with the state's module, fp32 layers and QAT plan, and no fp32 reference yet."""
        st = self.state
        spec = dataclasses.replace(self.cm.spec, module=st.module.eval())
        return dataclasses.replace(self.cm, spec=spec, fp32_layers=list(st.fp32_layers), qat=st.qat,
                                   int8_layers=list(st.int8_layers), steps=list(self.cm.steps),
                                   reference_accuracy=None, _reference=None)

    def quantized_model(self, variant: CompressedModel | None = None) -> tuple[nn.Module, str]:
        """The model as its ExecuTorch artifact will compute, simulated in PyTorch, and how it was built.

        A transformer (or any int4 model): torchao's weight quantization, eager. Otherwise the XNNPACK int8
        pt2e graph: QAT when planned, else PTQ with calibration.
        """
        from torchao.quantization.pt2e import allow_exported_model_train_eval

        variant = variant or self.variant()
        precision = self.state.precision
        if weight_path(variant, precision):
            module = weight_quantized(variant.spec.module, precision, variant.profile.quantization,
                                      fp32_layers=variant.fp32_layers, int8_layers=variant.int8_layers)
            return module, f"{precision} weights, dynamic int8 activations (torchao, simulated)"
        check_scheme(variant, "executorch")  # judged as the ExecuTorch int8 artifact will be built
        quantizer = quantizer_for("xnnpack", variant.profile.quantization, qat=variant.qat is not None,
                                  fp32_layers=variant.fp32_layers)
        gm = quantize_pt2e(variant, quantizer)
        allow_exported_model_train_eval(gm)
        return gm, "int8 QAT (XNNPACK, simulated)" if variant.qat is not None else "int8 PTQ (XNNPACK, simulated)"

    def result(self, detail: str, *, int8: bool = False) -> StepResult:
        """The step's outcome, scored quantized once a step made that the point (``int8``, QAT, fp32 or int8
        layers, int4)."""
        st = self.state
        if st.qat is not None or st.fp32_layers or st.int8_layers or st.precision != "int8" or int8:
            scored, how = self.quantized_model()
            return StepResult(detail, scored, how)
        return StepResult(detail, st.module, "fp32")


StepHandler = Callable[[Any, StepContext], StepResult]
H = TypeVar("H", bound=StepHandler)

# step config type (edgekit.config.recipe.Prune...) -> the function that applies it
_HANDLERS: dict[type, StepHandler] = {}


def register_step_handler(config_type: type) -> Callable[[H], H]:
    """Register the decorated function as the handler of steps of type ``config_type``."""

    def register(handler: H) -> H:
        _HANDLERS[config_type] = handler
        return handler

    return register


def apply_step(step: Any, ctx: StepContext) -> StepResult:
    """Apply ``step`` through the handler registered for its type; an unknown type lists the known ones."""
    handler = _HANDLERS.get(type(step))
    if handler is None:
        valid = ", ".join(sorted(t.__name__ for t in _HANDLERS)) or "(none registered)"
        raise CompressError(f"recipe: no handler for step {step!r} of type {type(step).__name__}; valid step "
                            f"types: {valid}")
    return handler(step, ctx)
