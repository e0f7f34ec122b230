"""Pruning: unstructured magnitude, structured channels (physically removed), and 2:4 semi-structured.

- **channel** removes whole filters with torch-pruning's dependency graph, which rewires what depends on
  them (BatchNorm, the next conv or linear, flatten, residual adds, depthwise groups). The model gets
  smaller and faster on every runtime. The layers producing the model's outputs are never pruned (their
  width is the model's interface).
- **unstructured** zeroes the smallest weights (global L1 magnitude) and makes the zeros permanent. Shapes
  stay: dense kernels (XNNPACK, LiteRT, onnxruntime CPU) run it no faster; it pays in compressed size, or
  on sparse kernels.
- **2:4** keeps the 2 largest of every 4 consecutive weights along the input channels: the pattern
  NVIDIA's sparse tensor cores (Ampere and later, Jetson Orin) run at up to 2x through TensorRT. The
  weights stay dense in the artifact; TensorRT detects the pattern when building with sparsity enabled.

Schedules: one-shot (prune, then fine-tune) or iterative (``iterations`` rounds of prune -> fine-tune, the
ratio rising linearly to its target), which keeps more accuracy at high ratios.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import torch
from torch import nn

from edgekit.compression._steps import StepContext, StepResult, register_step_handler
from edgekit.compression._train import sparsity_masks
from edgekit.config.recipe import Prune
from edgekit.errors import CompressError
from edgekit.models import Inputs

Granularity = Literal["unstructured", "channel", "2:4"]
Importance = Literal["l1", "l2", "bn_scale"]
# finetune(module, round_index) trains the module in place after each pruning round.
Finetune = Callable[[nn.Module, int], None]

_PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class PruneReport:
    """What was pruned: per layer, channels (structured) or sparsity (unstructured, 2:4)."""

    granularity: str
    ratio: float
    importance: str
    iterations: int
    layers: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        text = (f"{self.granularity} pruning, ratio {self.ratio:g}, importance {self.importance}, "
                f"{self.iterations} round(s); {len(self.layers)} layer(s) pruned")
        if self.skipped:
            text += f", {len(self.skipped)} left whole ({'; '.join(f'{k}: {v}' for k, v in self.skipped.items())})"
        return text


def prune(
    module: nn.Module,
    example_inputs: Inputs,
    *,
    granularity: Granularity,
    ratio: float = 0.5,
    importance: Importance = "l1",
    iterations: int = 1,
    finetune: Finetune | None = None,
    ignore: Sequence[str] = (),
    round_to: int | None = None,
) -> PruneReport:
    """Prune ``module`` in place; ``finetune`` (if given) runs after each round."""
    _check_args(module, granularity, ratio, iterations, ignore)
    ignored = set(ignore)
    if granularity == "channel":
        return _prune_channels(module, example_inputs, ratio, importance, iterations, finetune, ignored, round_to)
    if granularity == "unstructured":
        if importance == "bn_scale":
            raise CompressError("pruning: importance 'bn_scale' ranks channels; unstructured pruning ranks single "
                                "weights by magnitude: use importance l1")
        return _prune_unstructured(module, ratio, iterations, finetune, ignored)
    return _prune_2_4(module, finetune, ignored)


def _check_args(module: nn.Module, granularity: str, ratio: float, iterations: int, ignore: Sequence[str]) -> None:
    if granularity not in ("unstructured", "channel", "2:4"):
        raise CompressError(f"pruning: unknown granularity {granularity!r}; valid: unstructured, channel, 2:4")
    if not 0.0 < ratio < 1.0:
        raise CompressError(f"pruning: ratio {ratio} must be in (0, 1), the fraction of weights or channels removed")
    if granularity == "2:4" and ratio != 0.5:
        raise CompressError(f"pruning: 2:4 sparsity removes exactly half the weights; ratio {ratio} cannot apply "
                            "(omit it or set 0.5)")
    if iterations < 1:
        raise CompressError(f"pruning: iterations {iterations} must be at least 1")
    names = dict(module.named_modules())
    unknown = [n for n in ignore if n not in names]
    if unknown:
        valid = ", ".join(n for n, m in names.items() if isinstance(m, _PRUNABLE))
        raise CompressError(f"pruning: ignore names unknown layer(s) {unknown}; layers: {valid}")
    if type(module).__name__ == "_ExportedModule":
        raise CompressError("pruning: a model loaded from a .pt2 file is a traced graph, which pruning cannot "
                            "rewire; pass the nn.Module (package.module:function) instead")


def output_layers(module: nn.Module, example_inputs: Inputs) -> list[str]:
    """Names of the prunable layers whose output is (part of) the model's output: never to be narrowed."""
    produced: dict[int, str] = {}
    hooks = []
    for name, m in module.named_modules():
        if isinstance(m, _PRUNABLE):
            hooks.append(m.register_forward_hook(lambda _m, _i, out, name=name: produced.__setitem__(id(out), name)))
    try:
        with torch.no_grad():
            result = module(*example_inputs)
    finally:
        for h in hooks:
            h.remove()
    outs = result if isinstance(result, (tuple, list)) else [result]
    found = [produced[id(o)] for o in outs if id(o) in produced]
    if not found:  # the output passes through e.g. a reshape: protect the last prunable layer run
        found = [list(produced.values())[-1]] if produced else []
    return found


def _prune_channels(
    module: nn.Module, example_inputs: Inputs, ratio: float, importance: str, iterations: int,
    finetune: Finetune | None, ignored: set[str], round_to: int | None,
) -> PruneReport:
    import torch_pruning as tp

    names = dict(module.named_modules())
    protected = set(output_layers(module, example_inputs)) | ignored
    imp: Any = {
        "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
        "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
        "bn_scale": tp.importance.BNScaleImportance,
    }[importance]()
    before = {n: _width(m) for n, m in names.items() if isinstance(m, _PRUNABLE)}
    try:
        pruner = tp.pruner.MetaPruner(
            module, example_inputs, importance=imp, pruning_ratio=ratio, iterative_steps=iterations,
            ignored_layers=[names[n] for n in protected], round_to=round_to,
        )
    except Exception as exc:
        raise CompressError(f"channel pruning: torch-pruning could not trace the model's dependency graph "
                            f"({type(exc).__name__}: {exc})") from exc
    module.eval()
    for i in range(iterations):
        pruner.step()
        if finetune is not None:
            finetune(module, i)
    report = PruneReport("channel", ratio, importance, iterations)
    for n, m in module.named_modules():
        if n in before:
            after = _width(m)
            if after != before[n]:
                report.layers[n] = f"{before[n]} -> {after} channels"
            elif n in protected:
                report.skipped[n] = "model output" if n not in ignored else "ignored"
    return report


def _width(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels  # type: ignore[return-value]


def _weights(module: nn.Module, ignored: set[str]) -> list[tuple[str, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear]]:
    return [(n, m) for n, m in module.named_modules() if isinstance(m, _PRUNABLE) and n not in ignored]


def _prune_unstructured(
    module: nn.Module, ratio: float, iterations: int, finetune: Finetune | None, ignored: set[str],
) -> PruneReport:
    from torch.nn.utils import prune as tprune

    layers = _weights(module, ignored)
    params = [(m, "weight") for _, m in layers]
    done = 0.0
    for i in range(iterations):
        target = ratio * (i + 1) / iterations
        # torch's amount applies to the weights still unpruned: convert the cumulative target.
        amount = 1.0 - (1.0 - target) / (1.0 - done)
        tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=amount)
        done = target
        if finetune is not None:
            finetune(module, i)  # the masks stay applied while training: pruned weights stay zero
    report = PruneReport("unstructured", ratio, "l1", iterations)
    for name, m in layers:
        tprune.remove(m, "weight")  # permanent: plain zeros in a plain weight
        w = m.weight.detach()
        report.layers[name] = f"{100.0 * float((w == 0).float().mean()):.1f}% zeros"
    return report


def mask_2_4(weight: torch.Tensor) -> torch.Tensor:
    """Keep the 2 largest-magnitude of every 4 consecutive input channels (per output channel, per tap)."""
    w = weight.detach()
    moved = w.movedim(1, -1) if w.dim() > 2 else w  # (out, *kernel, in): groups run along input channels
    groups = moved.abs().reshape(-1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, groups.topk(2, dim=1).indices, True)
    mask = keep.reshape(moved.shape)
    return mask.movedim(-1, 1) if w.dim() > 2 else mask


def is_2_4(weight: torch.Tensor) -> bool:
    """Every group of 4 consecutive input channels holds at most 2 non-zeros."""
    w = weight.detach()
    moved = w.movedim(1, -1) if w.dim() > 2 else w
    return bool(((moved.reshape(-1, 4) != 0).sum(dim=1) <= 2).all())


def _prune_2_4(module: nn.Module, finetune: Finetune | None, ignored: set[str]) -> PruneReport:
    from torch.nn.utils import prune as tprune

    report = PruneReport("2:4", 0.5, "l1", 1)
    pruned = []
    for name, m in _weights(module, ignored):
        groups = getattr(m, "groups", 1)
        in_ch = m.weight.shape[1]
        if groups != 1:
            report.skipped[name] = "grouped/depthwise conv: the sparse kernels take dense convs only"
        elif in_ch % 4:
            report.skipped[name] = f"{in_ch} input channels, not a multiple of 4"
        else:
            tprune.custom_from_mask(m, "weight", mask_2_4(m.weight))
            pruned.append((name, m))
    if not pruned:
        raise CompressError("2:4 pruning: no layer has a multiple of 4 input channels; nothing to sparsify")
    if finetune is not None:
        finetune(module, 0)  # custom_from_mask keeps the pattern during training
    for name, m in pruned:
        tprune.remove(m, "weight")
        report.layers[name] = "2:4"
    return report


@register_step_handler(Prune)
def _prune_step(step: Prune, ctx: StepContext) -> StepResult:
    """A recipe's ``prune`` step: prune with fine-tuning rounds; zeros left by unstructured / 2:4 stay zero
    through later training."""
    st = ctx.state
    granularity = step.granularity
    ratio = 0.5 if granularity == "2:4" else step.ratio

    def finetune(module: nn.Module, round_index: int) -> None:
        if step.finetune.epochs:
            ctx.fit(module, step.finetune, f"prune round {round_index + 1} fine-tune")

    report = prune(st.module, ctx.spec.example_inputs, granularity=granularity, ratio=ratio,  # type: ignore[arg-type]
                   importance=step.importance, iterations=step.iterations, finetune=finetune,
                   ignore=step.ignore, round_to=step.round_to)
    if granularity != "channel":
        st.masks.update(sparsity_masks(st.module))
    return ctx.result(report.summary())
