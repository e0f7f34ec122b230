"""What edgekit needs to know about a model besides its weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

Inputs = tuple[torch.Tensor, ...]


@dataclass
class EvalSet:
    """Held-out inputs and integer labels: accuracy is top-1 over the first output."""

    inputs: list[Inputs]
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.inputs)


@dataclass
class TrainSet:
    """Labelled training samples, stacked (N, ...) per input: what built-in models fine-tune from."""

    inputs: Inputs
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class ModelSpec:
    """A model with the inputs that describe it.

    ``example_inputs`` fixes shapes and dtypes for export; ``calibration`` feeds int8 observers;
    ``parity_inputs`` are what every artifact is compared on; ``eval_set`` gives accuracy;
    ``train_set`` lets compression methods that train (fine-tuning, distillation, QAT) run without a loader.
    """

    name: str
    module: torch.nn.Module
    example_inputs: Inputs
    calibration: list[Inputs] | None = None
    parity_inputs: list[Inputs] | None = None
    eval_set: EvalSet | None = None
    train_set: TrainSet | None = None
    origin: str = "python"

    def parity_batch(self, calibration: list[Inputs] | None = None) -> list[Inputs]:
        """What artifacts are compared on: parity inputs, else the eval set, else calibration samples."""
        if self.parity_inputs:
            return self.parity_inputs
        if self.eval_set is not None:
            return self.eval_set.inputs[:64]
        samples = calibration or self.calibration
        if samples:
            return samples[:32]
        return [self.example_inputs]


def as_inputs(x: torch.Tensor | Sequence[torch.Tensor]) -> Inputs:
    """One sample's inputs as a tuple of tensors (a bare tensor is a one-input model)."""
    if isinstance(x, torch.Tensor):
        return (x,)
    return tuple(x)
