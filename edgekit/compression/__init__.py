"""``compress``: prepare a model for its profile's precisions.

Quantization is backend-specific: each export target applies the profile's scheme with its own quantizer
(torchao XNNPACKQuantizer, litert-torch PT2EQuantizer, onnxruntime QDQ), so one calibration set serves
all of them. ``compress`` validates the model, the scheme and the calibration data once, up front, and
records the fp32 reference (outputs and accuracy) that every artifact is judged against.

``CompressedModel`` and the accuracy helpers live in ``compression.model`` and are re-exported here; the
submodules import them from there, never from this package, which imports the submodules.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from edgekit.compression._calibration import check_calibration, load_calibration_file
from edgekit.compression.model import (
    CompressedModel,
    flat_outputs,
    fp32_accuracy,
    reference_outputs,
    top1_accuracy,
)
from edgekit.compression.quantize import linear_mode
from edgekit.config.profile import Profile, host_profile, load_profile
from edgekit.errors import CompressError, ModelError
from edgekit.models import EvalSet, Inputs, ModelSpec, as_inputs, load_model, model_family

if TYPE_CHECKING:
    from edgekit.config.recipe import Recipe

__all__ = ["QUANT_MODES", "CompressedModel", "compress", "flat_outputs", "fp32_accuracy", "reference_outputs",
           "top1_accuracy"]

# Quantization modes a profile may name (applied per target at export). Recipe steps (prune, distill,
# lowrank, mixed_precision, qat) are edgekit.config.recipe.STEP_TYPES; compression.recipe runs them.
QUANT_MODES: dict[str, str] = {
    "static": "post-training static quantization, calibrated",
    "dynamic": "post-training dynamic quantization (weights int8, activations at run time)",
    "qat": "quantization-aware training (pt2e, the target's quantizer), fine-tuned from the fp32 model",
}


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
    if example_inputs is None and input_shape is None and calibration is not None \
            and not isinstance(calibration, (str, Path)) and len(calibration) > 0:
        example_inputs = as_inputs(calibration[0])  # the calibration samples show the input signature
    spec = load_model(model, example_inputs=example_inputs, input_shape=input_shape, allow_pickle=allow_pickle)
    prof = load_profile(profile) if profile is not None else host_profile()
    mode = prof.quantization.mode  # a Literal of QUANT_MODES' keys: the profile's validation refused any other
    _check_forward(spec)
    if mode == "qat" and recipe is None:
        raise CompressError(f"profile {prof.name!r} asks for quantization.mode qat: pass a recipe with a qat step "
                            "(it needs training data and epochs), e.g. recipe=Recipe(steps=[Qat()])")
    samples = _calibration_samples(spec, calibration)
    # A transformer's Linear layers quantize dynamically (ranges at run time): no calibration is needed.
    dynamic_linear = linear_mode(prof.quantization, spec.module) == "dynamic"
    needs_calibration = "int8" in prof.precisions and mode == "static" and not dynamic_linear
    if needs_calibration:
        if samples is None:
            raise CompressError(
                f"model {spec.name!r}: int8 static quantization needs calibration data; pass --calibration "
                "FILE (.npy/.npz/.pt) or calibration=[...]"
            )
        q = prof.quantization.calibration
        samples = check_calibration(samples, spec.example_inputs, min_samples=q.min_samples, max_samples=q.max_samples)
    steps = [f"fp32 reference: {spec.origin}"]
    if "int8" in prof.precisions and dynamic_linear:
        steps.append(f"int8 for a {model_family(spec.module)}: Linear layers dynamic (int8 per-channel weights, "
                     f"activations at run time), embeddings {prof.quantization.layers.embedding}; applied per "
                     "target at export")
    elif "int8" in prof.precisions:
        w, a = prof.quantization.weight, prof.quantization.activation
        symmetry = "symmetric" if w.symmetric else "asymmetric"
        steps.append(
            f"int8 {mode} ({QUANT_MODES[mode]}): weights {w.granularity} {symmetry}, "
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


def _calibration_samples(
    spec: ModelSpec, calibration: str | Path | Sequence[Inputs | torch.Tensor] | None,
) -> list[Inputs] | None:
    if calibration is None:
        return spec.calibration
    if isinstance(calibration, (str, Path)):
        return load_calibration_file(calibration, spec.example_inputs)
    return [as_inputs(s) for s in calibration]
