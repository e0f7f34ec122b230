"""What a compression step changed, counted on the module itself: parameters, non-zeros, MACs."""

from __future__ import annotations

import torch

from edgekit.models import Inputs


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_nonzero(module: torch.nn.Module) -> int:
    """Unstructured and 2:4 pruning keep the tensor shapes: the zeros are what they removed."""
    return sum(int(torch.count_nonzero(p.detach())) for p in module.parameters())


def count_macs(module: torch.nn.Module, example_inputs: Inputs) -> int:
    """Multiply-accumulates of one forward pass, counted by PyTorch's FLOP counter (matmul/conv FLOPs / 2).

    Dense counts: zeros left by unstructured pruning still cost MACs on a dense kernel, which is what the
    exported artifacts run.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = module.training
    module.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            module(*example_inputs)
    finally:
        module.train(was_training)
    return counter.get_total_flops() // 2


def state_bytes(module: torch.nn.Module) -> int:
    """fp32 weight bytes (parameters and buffers): the model's size before any artifact is written."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)
