"""What edgekit needs to know about a model besides its weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

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
    # What the first output is. "class_scores": top-1 agreement applies in parity. "features" (embeddings,
    # hidden states, a language model's logits over many positions): only cosine and max abs error do.
    # None: class scores for a model with a labelled eval set or without attention, features otherwise.
    outputs: Literal["class_scores", "features"] | None = None

    @property
    def class_scores(self) -> bool:
        if self.outputs is not None:
            return self.outputs == "class_scores"
        return self.eval_set is not None or model_family(self.module) == "cnn"

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


def model_family(module: torch.nn.Module) -> Literal["cnn", "transformer"]:
    """"transformer" when the model has token embeddings or attention, else "cnn".

    It decides the default int8 scheme of Linear layers (dynamic in a transformer, as the convolutions'
    static scheme in a CNN) and whether parity judges top-1 agreement.
    """
    for m in module.modules():
        if isinstance(m, (torch.nn.Embedding, torch.nn.MultiheadAttention)):
            return "transformer"
        # An attention block with its own query/key/value projections (transformers' *Attention classes).
        # A CNN's channel "attention" (squeeze-excitation, CBAM) keeps its small MLP inside a Sequential.
        projections = [c for c in m.children() if isinstance(c, torch.nn.Linear) or type(c).__name__ == "Conv1D"]
        if "Attention" in type(m).__name__ and len(projections) >= 2:
            return "transformer"
    return "cnn"
