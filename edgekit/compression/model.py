"""``CompressedModel`` and the accuracy helpers every stage scores with.

Its own module, so compression's submodules (and the exporters) import it from here rather than from the
package ``__init__``, which imports them back: that was the import circle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

from edgekit.config.profile import Profile
from edgekit.models import EvalSet, Inputs, ModelSpec

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["CompressedModel", "accuracy", "flat_outputs", "fp32_accuracy", "reference_outputs", "top1_accuracy"]


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
    # Linear layers kept at int8 in an int4 artifact (mixed precision for int4): the most sensitive ones.
    int8_layers: list[str] = field(default_factory=list)
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


def top1_accuracy(predict: Callable[[Inputs], list[np.ndarray]], eval_set: EvalSet) -> float:
    """Top-1 over the first output. One definition for PyTorch and every runtime, so their figures compare."""
    from edgekit.agent.measure import top1_accuracy as top1

    return top1(predict, eval_set.inputs, eval_set.labels.numpy())


def accuracy(module: torch.nn.Module | Callable[..., Any], eval_set: EvalSet) -> float:
    """Top-1 on the held-out set, the same definition every artifact and device is scored with."""
    if isinstance(module, torch.nn.Module):
        module.eval()
    with torch.no_grad():
        return top1_accuracy(lambda x: flat_outputs(module(*x)), eval_set)


def fp32_accuracy(spec: ModelSpec) -> float | None:
    """The model's own top-1 on its held-out set (None without one): the reference artifacts are judged by.

    Remembered in the build cache (``build_cache_dir()/reference``) by a digest of the model's code, weights and eval set (and
    torch's version), so a rebuild whose artifacts all come from the build cache does not re-run it
    (mobilenet-v2: 8 s of eager inference on 360 images)."""
    if spec.eval_set is None:
        return None
    import hashlib
    import json

    from edgekit._fs import atomic_write_text, build_cache_dir
    from edgekit._digest import code_digest, inputs_digest, state_sha256

    ev = spec.eval_set
    parts = [torch.__version__, code_digest(spec.module), state_sha256(spec.module),
             inputs_digest([*ev.inputs, (ev.labels,)])]
    key = hashlib.sha256("|".join(parts).encode()).hexdigest()
    memo = build_cache_dir() / "reference" / f"{key}.json"
    try:
        return float(json.loads(memo.read_text())["accuracy"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    value = accuracy(spec.module, spec.eval_set)
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(memo, json.dumps({"accuracy": value, "model": spec.name}))
    except OSError:
        pass  # a memo that cannot be written costs the next build the same 8 s, nothing else
    return value


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
