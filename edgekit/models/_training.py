"""Built-in models: training them reproducibly, and caching the result by a hash of the recipe."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

from edgekit._fs import atomic_path, cache_dir

M = TypeVar("M", bound=torch.nn.Module)


def cached_module(name: str, recipe: dict[str, Any], make: Callable[[], M], train: Callable[[], M]) -> M:
    """The trained module from the cache; trains and caches it on first use (or if the cache is unreadable)."""
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_dir() / "models" / f"{name}-{key}.pt"
    if path.is_file():
        model = make()
        try:
            model.load_state_dict(torch.load(path, weights_only=True))
            return model.eval()
        except Exception:  # truncated, or written by another version: retrain over it
            pass
    model = train().eval()
    _save_atomic(model.state_dict(), path)
    return model


def _save_atomic(state: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, mode=0o600) as tmp:  # 0o600 as before (mkstemp's): private to the user
        torch.save(state, tmp)


def fit(
    model: M, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer, *, epochs: int, batch: int, seed: int,
    transform: Callable[[torch.Tensor], torch.Tensor] = lambda b: b,
    sched: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> M:
    """Plain cross-entropy training of a built-in classifier; reproducible from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), batch):
            b = perm[i : i + batch]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(transform(x[b])), y[b]).backward()
            opt.step()
        if sched is not None:
            sched.step()
    return model
