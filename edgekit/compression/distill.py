"""Knowledge distillation: a frozen teacher's soft targets, and optionally its intermediate features.

Response-based (Hinton et al.): ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``;
the T^2 keeps the soft term's gradients at the scale of the hard one as T grows.
Feature-based (FitNets): for each ``student layer -> teacher layer`` pair, a learned projection (1x1 conv
for feature maps, linear for vectors) maps the student's features to the teacher's width, pooled to the
teacher's spatial size, and ``beta * MSE`` pulls them together. Projections exist only during training.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

from edgekit.compression._steps import StepContext, StepResult, register_step_handler
from edgekit.compression._train import TrainData, TrainSettings, batches, first_output, mask_keeper, train
from edgekit.config.recipe import Distill
from edgekit.errors import CompressError
from edgekit.models import Inputs, ModelSpec


@dataclass
class DistillReport:
    temperature: float
    alpha: float
    beta: float
    features: dict[str, str] = field(default_factory=dict)
    epochs: int = 0

    def summary(self) -> str:
        text = f"distilled: T={self.temperature:g}, alpha={self.alpha:g}, {self.epochs} epoch(s)"
        if self.features:
            pairs = ", ".join(f"{s}<-{t}" for s, t in self.features.items())
            text += f"; features ({pairs}), beta={self.beta:g}"
        return text


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) at temperature T, times T^2, averaged over the batch."""
    t = temperature
    log_p_student = torch.log_softmax(student_logits / t, dim=-1)
    p_teacher = torch.softmax(teacher_logits / t, dim=-1)
    return torch.nn.functional.kl_div(log_p_student, p_teacher, reduction="batchmean") * (t * t)


def distill(
    student: nn.Module,
    teacher: nn.Module,
    data: TrainData,
    settings: TrainSettings,
    *,
    temperature: float = 4.0,
    alpha: float = 0.7,
    features: Mapping[str, str] | None = None,
    beta: float = 1.0,
    desc: str = "distill",
    after_step: Callable[[], None] | None = None,
) -> DistillReport:
    """Train ``student`` in place against a frozen copy of ``teacher``."""
    if temperature <= 0:
        raise CompressError(f"distill: temperature {temperature} must be > 0")
    if not 0.0 <= alpha <= 1.0:
        raise CompressError(f"distill: alpha {alpha} must be in [0, 1] (weight of the soft-target term)")
    teacher = copy.deepcopy(teacher).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    pairs = dict(features or {})
    taps = _FeatureTaps(student, teacher, pairs)
    try:
        sample = next(iter(batches(data, settings, 0)), None)
        if sample is None:
            raise CompressError("distill: the training data yielded no batch")
        projections = taps.build_projections(sample[0])
        ce = nn.CrossEntropyLoss()

        def loss_fn(model: nn.Module, inputs: Inputs, labels: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                t_logits = first_output(teacher(*inputs))
            s_logits = first_output(model(*inputs))
            loss = alpha * soft_target_loss(s_logits, t_logits, temperature) + (1 - alpha) * ce(s_logits, labels)
            if pairs:
                loss = loss + beta * taps.feature_loss(projections)
            return loss

        params = list(student.parameters()) + list(projections.parameters())
        train(student, data, settings, loss_fn=loss_fn, params=params, desc=desc, after_step=after_step)
    finally:
        taps.close()
    return DistillReport(temperature, alpha, beta, pairs, settings.epochs)


class _FeatureTaps:
    """Forward hooks capturing the paired layers' outputs in student and teacher."""

    def __init__(self, student: nn.Module, teacher: nn.Module, pairs: dict[str, str]) -> None:
        self.pairs = pairs
        s_mods, t_mods = dict(student.named_modules()), dict(teacher.named_modules())
        bad = [f"student layer {s!r}" for s in pairs if s not in s_mods]
        bad += [f"teacher layer {t!r}" for t in pairs.values() if t not in t_mods]
        if bad:
            raise CompressError(f"distill features: unknown {', '.join(bad)}; layers are named as in "
                                f"model.named_modules(), e.g. {', '.join(list(s_mods)[1:6])}")
        self.seen: dict[str, torch.Tensor] = {}
        self.hooks = [s_mods[s].register_forward_hook(self._keep(f"s:{s}")) for s in pairs]
        self.hooks += [t_mods[t].register_forward_hook(self._keep(f"t:{t}")) for t in pairs.values()]
        self.student, self.teacher = student, teacher

    def _keep(self, key: str) -> Callable[[nn.Module, object, object], None]:
        def hook(_m: nn.Module, _i: object, out: object) -> None:
            self.seen[key] = first_output(out)
        return hook

    def build_projections(self, inputs: Inputs) -> nn.ModuleDict:
        projections = nn.ModuleDict()
        if not self.pairs:
            return projections
        with torch.no_grad():
            self.student.eval()
            self.student(*inputs)
            self.teacher(*inputs)
        for i, (s, t) in enumerate(self.pairs.items()):
            fs, ft = self.seen[f"s:{s}"], self.seen[f"t:{t}"]
            if fs.dim() != ft.dim() or fs.dim() not in (2, 4):
                raise CompressError(f"distill features: {s!r} gives shape {tuple(fs.shape)[1:]}, {t!r} gives "
                                    f"{tuple(ft.shape)[1:]}; pair layers that both give feature maps (N,C,H,W) "
                                    "or both vectors (N,F)")
            if fs.dim() == 4:
                projections[str(i)] = nn.Conv2d(fs.shape[1], ft.shape[1], 1, bias=False)
            else:
                projections[str(i)] = nn.Linear(fs.shape[1], ft.shape[1], bias=False)
        return projections

    def feature_loss(self, projections: nn.ModuleDict) -> torch.Tensor:
        total = torch.zeros(())
        for i, (s, t) in enumerate(self.pairs.items()):
            fs, ft = projections[str(i)](self.seen[f"s:{s}"]), self.seen[f"t:{t}"].detach()
            if fs.dim() == 4 and fs.shape[-2:] != ft.shape[-2:]:
                fs = torch.nn.functional.adaptive_avg_pool2d(fs, (ft.shape[-2], ft.shape[-1]))
            total = total + torch.nn.functional.mse_loss(fs, ft)
        return total

    def close(self) -> None:
        for h in self.hooks:
            h.remove()
        self.seen.clear()


@register_step_handler(Distill)
def _distill_step(step: Distill, ctx: StepContext) -> StepResult:
    """A recipe's ``distill`` step: the teacher is the model before the recipe; the student the model as the
    previous steps left it, or ``step.student``."""
    st = ctx.state
    if step.student is not None:
        st.module = _student(step.student, ctx.spec)
    report = distill(st.module, ctx.teacher, ctx.data("distill"), ctx.settings(step.train),
                     temperature=step.temperature, alpha=step.alpha, features=step.features, beta=step.beta,
                     after_step=mask_keeper(st.module, st.masks))
    return ctx.result(report.summary())


def _student(student: Any, spec: ModelSpec) -> nn.Module:
    if isinstance(student, nn.Module):
        return copy.deepcopy(student)
    from edgekit.models import load_model

    return load_model(str(student), example_inputs=spec.example_inputs).module
