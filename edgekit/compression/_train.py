"""The one training loop behind fine-tuning, distillation and QAT.

Training data is either a :class:`~edgekit.models.TrainSet` (built-in models bring one) or any re-iterable
of ``(inputs, labels)`` batches, such as a ``torch.utils.data.DataLoader``; ``inputs`` is a tensor or a
tuple of tensors (one per model input).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import torch

from edgekit.errors import CompressError
from edgekit.models import Inputs, ModelSpec, TrainSet, as_inputs

# loss(model, inputs, labels) -> scalar tensor; distillation and feature matching plug in here.
LossFn = Callable[[torch.nn.Module, Inputs, torch.Tensor], torch.Tensor]
TrainData = TrainSet | Iterable[Any]


@dataclass(frozen=True)
class TrainSettings:
    """How a step fine-tunes: Adam at ``lr`` for ``epochs`` over the data, cosine-decayed, seeded."""

    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0
    weight_decay: float = 0.0
    threads: int | None = None  # torch intra-op threads while training; None: torch's default


def sparsity_masks(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Where each weight is exactly zero: the pattern a later training step must keep (after pruning)."""
    return {n: p.detach() != 0 for n, p in module.named_parameters() if n.endswith("weight") and p.dim() > 1
            and bool((p == 0).any())}


def mask_keeper(module: torch.nn.Module, masks: dict[str, torch.Tensor]) -> Callable[[], None] | None:
    """An after-step hook that zeroes again what pruning zeroed; names or shapes that no longer match
    (a later structural step changed the layer) are dropped."""
    params = dict(module.named_parameters())
    live = [(params[n], m) for n, m in masks.items() if n in params and params[n].shape == m.shape]
    if not live:
        return None

    def keep() -> None:
        with torch.no_grad():
            for p, m in live:
                p.mul_(m)
    return keep


def cross_entropy(model: torch.nn.Module, inputs: Inputs, labels: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(first_output(model(*inputs)), labels)


def first_output(out: Any) -> torch.Tensor:
    """Classification models may return a tuple; the logits are the first tensor (as in accuracy)."""
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out


def batches(data: TrainData, settings: TrainSettings, epoch: int) -> Iterator[tuple[Inputs, torch.Tensor]]:
    """One epoch of ``(inputs, labels)``; a TrainSet is reshuffled per epoch from the seed."""
    if isinstance(data, TrainSet):
        gen = torch.Generator().manual_seed(settings.seed * 1000 + epoch)
        perm = torch.randperm(len(data), generator=gen)
        for i in range(0, len(perm), settings.batch_size):
            idx = perm[i : i + settings.batch_size]
            if len(idx) < 2:  # a batch of one breaks BatchNorm in train mode
                continue
            yield tuple(t[idx] for t in data.inputs), data.labels[idx]
        return
    for k, item in enumerate(data):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise CompressError(f"training data batch {k}: expected (inputs, labels), got {type(item).__name__}"
                                f"{f' of length {len(item)}' if isinstance(item, (tuple, list)) else ''}")
        yield as_inputs(item[0]), item[1]


def train(
    model: torch.nn.Module,
    data: TrainData,
    settings: TrainSettings,
    *,
    loss_fn: LossFn = cross_entropy,
    params: Iterable[torch.nn.Parameter] | None = None,
    desc: str = "fine-tune",
    after_step: Callable[[], None] | None = None,
) -> torch.nn.Module:
    """Train ``model`` in place (and return it, in eval mode). ``after_step`` re-applies constraints
    such as a 2:4 mask after each optimizer step."""
    torch.manual_seed(settings.seed)
    threads = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    trainable = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    if not trainable:
        raise CompressError(f"{desc}: the model has no trainable parameters")
    opt = torch.optim.Adam(trainable, lr=settings.lr, weight_decay=settings.weight_decay)
    steps = max(1, settings.epochs * _batches_per_epoch(data, settings))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    bar = _progress(steps, desc)
    model.train()
    try:
        for epoch in range(settings.epochs):
            for inputs, labels in batches(data, settings, epoch):
                opt.zero_grad()
                loss = loss_fn(model, inputs, labels)
                if not torch.isfinite(loss):
                    raise CompressError(f"{desc}: the loss became {loss.item()} in epoch {epoch + 1}; "
                                        f"lower the learning rate (lr={settings.lr})")
                loss.backward()
                opt.step()
                sched.step()
                if after_step is not None:
                    after_step()
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    finally:
        bar.close()
        torch.set_num_threads(threads)
    return model.eval()


def _batches_per_epoch(data: TrainData, settings: TrainSettings) -> int:
    if isinstance(data, TrainSet):
        return -(-len(data) // settings.batch_size)
    try:
        return len(data)  # type: ignore[arg-type]
    except TypeError:
        return 0


def _progress(total: int, desc: str) -> Any:
    """A tqdm bar on stderr when it is a terminal; silent in pipelines, CI and --json runs."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False, disable=not sys.stderr.isatty(), file=sys.stderr)


def train_data_for(spec: ModelSpec, given: TrainData | None, method: str) -> TrainData:
    """The user's data, else the model's own; a clear error when a training step has neither."""
    if given is not None:
        return given
    if spec.train_set is not None:
        return spec.train_set
    raise CompressError(
        f"{method} trains, and model {spec.name!r} brings no training data; pass train_data=DataLoader(...) "
        "yielding (inputs, labels) batches (CLI: --train-data FILE.npz with arrays x and y)"
    )
