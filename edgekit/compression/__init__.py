"""``compress``: prepare a model for its profile's precisions.

Quantization is backend-specific: each export target applies the profile's scheme with its own quantizer
(torchao XNNPACKQuantizer, litert-torch PT2EQuantizer, onnxruntime QDQ), so one calibration set serves
all of them. ``compress`` validates the model, the scheme and the calibration data once, up front, and
records the fp32 reference (outputs and accuracy) that every artifact is judged against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

from edgekit.compression._calibration import check_calibration, load_calibration_file
from edgekit.config.profile import Profile, host_profile, load_profile
from edgekit.errors import CompressError, ModelError, UnknownNameError
from edgekit.models import EvalSet, Inputs, ModelSpec, as_inputs, load_model

if TYPE_CHECKING:
    import pandas as pd

    from edgekit.config.recipe import Recipe

__all__ = ["METHODS", "CompressedModel", "compress", "flat_outputs", "fp32_accuracy", "reference_outputs",
           "top1_accuracy"]

# Quantization modes a profile may name (applied per target at export). Recipe steps (prune, distill,
# lowrank, mixed_precision, qat) are registered in edgekit.config.recipe.METHODS; compression.recipe runs them.
METHODS: dict[str, str] = {
    "static": "post-training static quantization, calibrated",
    "dynamic": "post-training dynamic quantization (weights int8, activations at run time)",
    "qat": "quantization-aware training (pt2e, the target's quantizer), fine-tuned from the fp32 model",
}


@dataclass
class CompressedModel:
    """A model ready for export under ``profile``, with its fp32 reference."""

    spec: ModelSpec
    profile: Profile
    calibration: list[Inputs]
    reference_accuracy: float | None
    steps: list[str] = field(default_factory=list)
    # Module names (``features.0``) left in fp32 when an int8 artifact is built: mixed precision.
    fp32_layers: list[str] = field(default_factory=list)
    # Set by a recipe's ``qat`` step: int8 pt2e exports then fine-tune with the target's own quantizer
    # (prepare_qat_pt2e -> train -> convert_pt2e) instead of calibrating.
    qat: Any = None
    # After a recipe: a StepRecord per step (the first is the reference), and the fp32 model's accuracy
    # before the recipe, which the budget is measured against.
    history: list[Any] = field(default_factory=list)
    baseline_accuracy: float | None = None
    _reference: list[list[np.ndarray]] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    def reference_outputs(self) -> list[list[np.ndarray]]:
        """PyTorch fp32 outputs on the parity inputs, computed once for all artifacts."""
        if self._reference is None:
            self._reference = reference_outputs(self.spec, self.parity_inputs())
        return self._reference

    def parity_inputs(self) -> list[Inputs]:
        return self.spec.parity_batch(self.calibration)

    def report(self) -> "pd.DataFrame":
        """The recipe's steps as rows: params, MACs, fp32 size, accuracy and its drop, what was tried."""
        import pandas as pd

        return pd.DataFrame([r.row() for r in self.history])


def compress(
    model: str | Path | torch.nn.Module | ModelSpec,
    profile: str | Path | Profile | None = None,
    calibration: str | Path | Sequence[Inputs | torch.Tensor] | None = None,
    *,
    example_inputs: torch.Tensor | Sequence[torch.Tensor] | None = None,
    input_shape: str | None = None,
    allow_pickle: bool = False,
    recipe: "str | Path | Recipe | None" = None,
    train_data: Any = None,
    val_data: EvalSet | None = None,
    on_event: Callable[[str], None] | None = None,
) -> CompressedModel:
    """Validate ``model`` for ``profile`` (default: this host's), attach calibration data, run ``recipe``.

    ``calibration`` is a file (.npy/.npz/.pt) or a list of samples (each a tensor or a tuple of tensors);
    built-in models bring their own. ``train_data`` (re-iterable ``(inputs, labels)`` batches, e.g. a
    DataLoader, or an ``.npz`` file with ``x``/``x_0``.. and ``y``) feeds the recipe's training steps; ``val_data`` its accuracy budget (default: the
    model's held-out set).
    """
    spec = load_model(model, example_inputs=example_inputs, input_shape=input_shape, allow_pickle=allow_pickle)
    prof = load_profile(profile) if profile is not None else host_profile()
    mode = prof.quantization.mode
    if mode not in METHODS:
        raise UnknownNameError("quantization mode", mode, METHODS, hint=f"set quantization.mode in {prof.source}")
    _check_forward(spec)
    if mode == "qat" and recipe is None:
        raise CompressError(f"profile {prof.name!r} asks for quantization.mode qat: pass a recipe with a qat step "
                            "(it needs training data and epochs), e.g. recipe=Recipe(steps=[Qat()])")
    samples = _calibration_samples(spec, calibration)
    needs_calibration = "int8" in prof.precisions and mode == "static"
    if needs_calibration:
        if samples is None:
            raise CompressError(
                f"model {spec.name!r}: int8 static quantization needs calibration data; pass --calibration "
                "FILE (.npy/.npz/.pt) or calibration=[...]"
            )
        q = prof.quantization.calibration
        samples = check_calibration(samples, spec.example_inputs, min_samples=q.min_samples, max_samples=q.max_samples)
    steps = [f"fp32 reference: {spec.origin}"]
    if "int8" in prof.precisions:
        w, a = prof.quantization.weight, prof.quantization.activation
        steps.append(
            f"int8 {mode} ({METHODS[mode]}): weights {w.granularity} {'symmetric' if w.symmetric else 'asymmetric'}, "
            f"activations {a.dtype}; applied per target at export"
        )
    cm = CompressedModel(
        spec=spec, profile=prof, calibration=samples or [],
        reference_accuracy=fp32_accuracy(spec), steps=steps,
    )
    if recipe is None:
        return cm
    from edgekit.compression.recipe import run_recipe
    from edgekit.config.recipe import load_recipe

    if isinstance(train_data, (str, Path)):
        from edgekit.compression._calibration import load_train_file

        train_data = load_train_file(train_data, spec.example_inputs)

    return run_recipe(cm, load_recipe(recipe), train_data=train_data, val_data=val_data, on_event=on_event)


def _check_forward(spec: ModelSpec) -> None:
    try:
        with torch.no_grad():
            spec.module(*spec.example_inputs)
    except Exception as exc:
        raise ModelError(
            f"model {spec.name!r}: forward failed on the example inputs "
            f"{[tuple(t.shape) for t in spec.example_inputs]}: {type(exc).__name__}: {exc}. Pass inputs the model "
            "takes (--input-shape, or example_inputs), or fix its forward"
        ) from exc


def _calibration_samples(spec: ModelSpec, calibration: str | Path | Sequence | None) -> list[Inputs] | None:
    if calibration is None:
        return spec.calibration
    if isinstance(calibration, (str, Path)):
        return load_calibration_file(calibration, spec.example_inputs)
    return [as_inputs(s) for s in calibration]


def top1_accuracy(predict: Callable[[Inputs], list[np.ndarray]], eval_set: EvalSet) -> float:
    """Top-1 over the first output. One definition for PyTorch and every runtime, so their figures compare."""
    from edgekit.agent.measure import top1_accuracy as top1

    return top1(predict, eval_set.inputs, eval_set.labels.numpy())


def fp32_accuracy(spec: ModelSpec) -> float | None:
    """The model's own top-1 on its held-out set (None without one): the reference artifacts are judged by."""
    from edgekit.compression._train import accuracy

    return None if spec.eval_set is None else accuracy(spec.module, spec.eval_set)


def flat_outputs(out: object) -> list[np.ndarray]:
    """A module's outputs (tensor, tuple, list, nested) as a flat list of float arrays."""
    if isinstance(out, torch.Tensor):
        return [out.detach().float().numpy()]
    if isinstance(out, (tuple, list)):
        return [a for o in out for a in flat_outputs(o)]
    raise TypeError(f"unsupported model output type {type(out).__name__}")


def reference_outputs(spec: ModelSpec, samples: Sequence[Inputs]) -> list[list[np.ndarray]]:
    with torch.no_grad():
        return [flat_outputs(spec.module(*s)) for s in samples]
