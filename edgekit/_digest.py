"""Content digests of a model and its data: what the build cache's keys and the memo of a model's fp32
accuracy are made of. Hex sha256 strings. The bottom layer: it imports nothing from edgekit, and torch
only when a digest is computed."""

from __future__ import annotations

import hashlib
from typing import Any, Iterable, Sequence

__all__ = ["code_digest", "inputs_digest", "state_sha256", "update_tensor"]


def inputs_digest(samples: Iterable[Sequence[Any]]) -> str:
    h = hashlib.sha256()
    for sample in samples:
        for t in sample:
            update_tensor(h, t)
        h.update(b"|")
    return h.hexdigest()


def update_tensor(h: Any, tensor: Any) -> None:
    import torch

    t = tensor.detach().cpu().contiguous()
    h.update(f"{t.dtype}:{tuple(t.shape)}".encode())
    h.update((t.float() if t.dtype == torch.bfloat16 else t).numpy().tobytes())  # numpy has no bfloat16


def state_sha256(module: Any) -> str:
    """What the weights are: a hash over the state dict (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        update_tensor(h, tensor)
    return h.hexdigest()


def code_digest(module: Any) -> str:
    """What the model's code is: each module class's source (its name where Python has none) and a
    GraphModule's generated code, so an edited ``forward`` is a new key."""
    import inspect

    import torch

    h = hashlib.sha256()
    seen: set[type] = set()
    for m in module.modules():
        cls = type(m)
        if isinstance(m, torch.fx.GraphModule):
            h.update(m.code.encode())
        if cls in seen:
            continue
        seen.add(cls)
        h.update(f"{cls.__module__}.{cls.__qualname__}".encode())
        try:
            h.update(inspect.getsource(cls).encode())
        except (OSError, TypeError):
            pass
    return h.hexdigest()
