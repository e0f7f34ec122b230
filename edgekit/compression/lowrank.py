"""Low-rank factorization: replace a Linear / Conv2d by two thinner layers from a truncated SVD.

A weight ``W`` (out x in, or out x in*kh*kw for a conv) is ``U S Vh``; keeping ``r`` singular values gives
``W ~ (U_r sqrt(S_r)) (sqrt(S_r) Vh_r)``, i.e. a layer into ``r`` channels then a 1x1 / linear layer out.
Splitting ``sqrt(S)`` across both factors keeps their scales alike, which int8 quantization of each factor
needs. Both factors are plain ``nn.Linear`` / ``nn.Conv2d``, so every exporter and quantizer handles them.

The factorized model loses accuracy until it is fine-tuned; a recipe's ``lowrank`` step fine-tunes after.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence, cast

import torch
from torch import nn

from edgekit.compression._steps import StepContext, StepResult, register_step_handler
from edgekit.config.recipe import LowRank
from edgekit.errors import CompressError

__all__ = ["FactorizedLayer", "LowRankReport", "eligible_layers", "factorize"]

# Layers smaller than this are not worth a second kernel launch.
DEFAULT_MIN_PARAMS = 1024
# Marks a factorized pair, so a second factorize() leaves it alone.
_MARK = "_edgekit_lowrank"


@dataclass
class FactorizedLayer:
    name: str
    kind: str  # "linear" | "conv2d"
    shape: tuple[int, ...]  # the original weight's shape
    rank: int
    full_rank: int
    energy_kept: float  # fraction of sum(S^2) kept by the first ``rank`` singular values
    params_before: int  # weight + bias
    params_after: int


@dataclass
class LowRankReport:
    """What ``factorize`` did: one entry per factorized layer, and why each other candidate was skipped."""

    layers: list[FactorizedLayer] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    model_params_before: int = 0
    model_params_after: int = 0

    @property
    def params_before(self) -> int:
        """Parameters of the factorized layers before factorization."""
        return sum(x.params_before for x in self.layers)

    @property
    def params_after(self) -> int:
        return sum(x.params_after for x in self.layers)

    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per candidate layer (factorized first), for a table or ``pandas.DataFrame``."""
        rows: list[dict[str, Any]] = [
            {"layer": x.name, "kind": x.kind, "shape": "x".join(map(str, x.shape)), "rank": x.rank,
             "full_rank": x.full_rank, "energy_kept": round(x.energy_kept, 6), "params_before": x.params_before,
             "params_after": x.params_after, "status": "factorized"}
            for x in self.layers
        ]
        rows += [{"layer": name, "kind": None, "shape": None, "rank": None, "full_rank": None, "energy_kept": None,
                  "params_before": None, "params_after": None, "status": f"skipped: {why}"}
                 for name, why in self.skipped.items()]
        return rows

    def summary(self) -> str:
        """One line for ``CompressedModel.steps``."""
        if not self.layers:
            return f"low-rank: no layer factorized ({len(self.skipped)} skipped)"
        ranks = ", ".join(f"{x.name} r={x.rank}/{x.full_rank}" for x in self.layers)
        return (f"low-rank: {len(self.layers)} layer(s) factorized ({ranks}); params of those layers "
                f"{self.params_before} -> {self.params_after}; model {self.model_params_before} -> "
                f"{self.model_params_after}")


def eligible_layers(module: nn.Module) -> dict[str, nn.Linear | nn.Conv2d]:
    """Layers ``factorize`` can act on: every nn.Linear and every ungrouped nn.Conv2d, by module name."""
    inside_pair = {f"{name}." for name, m in module.named_modules() if getattr(m, _MARK, False)}
    return {
        name: m for name, m in module.named_modules()
        if (isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1))
        and not any(name.startswith(p) for p in inside_pair)
    }


def factorize(
    module: nn.Module,
    *,
    energy: float | None = None,
    param_ratio: float | None = None,
    layers: Sequence[str] | None = None,
    min_params: int = DEFAULT_MIN_PARAMS,
) -> LowRankReport:
    """Factorize ``module``'s Linear / Conv2d layers **in place** and report what changed.

    In place, like ``torch.nn.utils.prune``: callers that need the original deep-copy it first. The rank
    of each layer is the smallest keeping ``energy`` of its squared singular values (0 < energy <= 1), or
    ``floor(param_ratio * m*n / (m+n))`` so the pair holds about ``param_ratio`` of the weight (0 < ratio
    < 1). Per layer rather than a global allocation: it needs no calibration data and keeps each layer's
    cost predictable. A layer is only replaced when the pair is smaller than the original.
    """
    _check_args(energy, param_ratio, min_params)
    candidates = eligible_layers(module)
    if layers is not None:
        unknown = [n for n in layers if n not in candidates]
        if unknown:
            raise CompressError(f"factorize: unknown or ineligible layer(s) {unknown}; eligible (nn.Linear, "
                                f"nn.Conv2d with groups=1): {', '.join(candidates) or '(none)'}")
        candidates = {n: candidates[n] for n in layers}
    report = LowRankReport(model_params_before=_count(module))
    for name, layer in module.named_modules():  # grouped convs are reported too: say why they stay
        if isinstance(layer, nn.Conv2d) and layer.groups != 1 and (layers is None or name in layers):
            report.skipped[name] = f"grouped conv (groups={layer.groups})"
    for name, layer in candidates.items():
        weight = layer.weight.detach()
        m, n = weight.shape[0], weight[0].numel()
        if m * n < min_params:
            report.skipped[name] = f"{m * n} weights < min_params={min_params}"
            continue
        s = torch.linalg.svdvals(weight.reshape(m, n).double())
        rank = (_rank_for_energy(s, energy) if energy is not None  # else param_ratio is set: _check_args
                else math.floor(cast(float, param_ratio) * m * n / (m + n)))
        if rank < 1:
            report.skipped[name] = f"param_ratio={param_ratio} leaves rank 0 for a {m}x{n} weight"
            continue
        if rank * (m + n) >= m * n:
            report.skipped[name] = (f"rank {rank} of {min(m, n)} would not reduce parameters "
                                    f"({rank}*({m}+{n}) >= {m}*{n})")
            continue
        pair = _factor(layer, rank)
        _replace(module, name, pair)
        kept = float((s[:rank] ** 2).sum() / (s**2).sum()) if s.abs().sum() > 0 else 1.0
        report.layers.append(FactorizedLayer(
            name=name, kind="linear" if isinstance(layer, nn.Linear) else "conv2d", shape=tuple(weight.shape),
            rank=rank, full_rank=min(m, n), energy_kept=kept, params_before=_count(layer),
            params_after=_count(pair),
        ))
    report.model_params_after = _count(module)
    return report


def _check_args(energy: float | None, param_ratio: float | None, min_params: int) -> None:
    if (energy is None) == (param_ratio is None):
        raise CompressError("factorize: pass exactly one of energy (0 < energy <= 1: fraction of the squared "
                            "singular values to keep) or param_ratio (0 < param_ratio < 1: parameters to keep)")
    if energy is not None and not (isinstance(energy, (int, float)) and 0 < energy <= 1):
        raise CompressError(f"factorize: energy must be in (0, 1], got {energy!r}")
    if param_ratio is not None and not (isinstance(param_ratio, (int, float)) and 0 < param_ratio < 1):
        raise CompressError(f"factorize: param_ratio must be in (0, 1), got {param_ratio!r}")
    if not isinstance(min_params, int) or min_params < 0:
        raise CompressError(f"factorize: min_params must be an integer >= 0, got {min_params!r}")


def _rank_for_energy(s: torch.Tensor, energy: float) -> int:
    """Smallest r with sum(s[:r]^2) >= energy * sum(s^2); 1e-9 absorbs rounding, so energy=1.0 means
    "drop only the numerically zero singular values" rather than "keep all of them"."""
    sq = s**2
    total = float(sq.sum())
    if total == 0.0:
        return 1
    kept = torch.cumsum(sq, 0) / total
    return int((kept < energy - 1e-9).sum()) + 1


def _factor(layer: nn.Linear | nn.Conv2d, rank: int) -> nn.Sequential:
    """The two-layer replacement at ``rank``: ``first`` projects to ``rank`` channels, ``second`` expands."""
    weight = layer.weight.detach()
    m = weight.shape[0]
    u, s, vh = torch.linalg.svd(weight.reshape(m, -1).double(), full_matrices=False)
    root = s[:rank].sqrt()
    a = (root[:, None] * vh[:rank]).to(weight.dtype)  # (rank, n)
    b = (u[:, :rank] * root[None, :]).to(weight.dtype)  # (m, rank)
    bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        first: nn.Linear | nn.Conv2d = nn.Linear(layer.in_features, rank, bias=False)
        second: nn.Linear | nn.Conv2d = nn.Linear(rank, m, bias=bias)
        first.weight.data.copy_(a)
        second.weight.data.copy_(b)
    else:
        assert isinstance(layer, nn.Conv2d)
        # The stubs type a Conv2d's own kernel_size/stride/padding/dilation tuple[int, ...]; they are 2-tuples.
        first = nn.Conv2d(layer.in_channels, rank, layer.kernel_size, stride=layer.stride, padding=layer.padding,  # type: ignore[arg-type]
                          dilation=layer.dilation, bias=False, padding_mode=layer.padding_mode)  # type: ignore[arg-type]
        second = nn.Conv2d(rank, m, 1, bias=bias)
        first.weight.data.copy_(a.reshape(rank, *weight.shape[1:]))
        second.weight.data.copy_(b.reshape(m, rank, 1, 1))
    if layer.bias is not None and second.bias is not None:  # both or neither: second has bias=bias
        second.bias.data.copy_(layer.bias.detach())
    pair = nn.Sequential(first, second).to(device=weight.device)
    pair.train(layer.training)
    for p in pair.parameters():
        p.requires_grad_(layer.weight.requires_grad)
    setattr(pair, _MARK, True)
    return pair


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@register_step_handler(LowRank)
def _lowrank_step(step: LowRank, ctx: StepContext) -> StepResult:
    """A recipe's ``lowrank`` step: factorize, then fine-tune the factors."""
    st = ctx.state
    report = factorize(st.module, energy=step.energy, param_ratio=step.param_ratio, layers=step.layers)
    st.masks = {}  # factorized layers are new tensors: the old zeros mean nothing there
    if step.finetune.epochs:
        ctx.fit(st.module, step.finetune, "lowrank fine-tune")
    return ctx.result(report.summary())
