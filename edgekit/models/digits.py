"""``digits-cnn``: a small CNN on scikit-learn's 8x8 digits, trained at first use and cached.

Real data that ships with a package: the model's accuracy is measured on a held-out split, so every
artifact's accuracy can be compared to the fp32 reference.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgekit.models._training import cached_module, fit
from edgekit.models._spec import EvalSet, ModelSpec, TrainSet

# Changing any of these retrains: the cache key is their hash.
RECIPE: dict[str, Any] = {"version": 1, "seed": 0, "epochs": 40, "batch": 64, "lr": 3e-3, "test_size": 0.2}


class DigitsCNN(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.BatchNorm2d(4 * width), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(4 * width * 4, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def load_digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test); images scaled to [0, 1], shape (N, 1, 8, 8)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target, dtype=torch.int64)
    idx = torch.arange(len(y)).numpy()
    tr, te = train_test_split(idx, test_size=RECIPE["test_size"], random_state=RECIPE["seed"], stratify=y.numpy())
    return x[tr], y[tr], x[te], y[te]


def train(x: torch.Tensor, y: torch.Tensor, width: int = 16) -> DigitsCNN:
    torch.manual_seed(RECIPE["seed"])
    model = DigitsCNN(width)
    opt = torch.optim.Adam(model.parameters(), lr=RECIPE["lr"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=RECIPE["epochs"])
    fit(model, x, y, opt, epochs=RECIPE["epochs"], batch=RECIPE["batch"], seed=RECIPE["seed"], sched=sched)
    return model.eval()


def build(width: int = 16) -> ModelSpec:
    """``digits-cnn`` (width 16, ~60k params); ``digits-cnn-wide`` (width 64): enough compute per inference
    that pruning and low-rank show on latency rather than drowning in per-call overhead."""
    x_tr, y_tr, x_te, y_te = load_digits_split()
    name, recipe = ("digits-cnn", RECIPE) if width == 16 else ("digits-cnn-wide", {**RECIPE, "width": width})
    model = cached_module(name, recipe, lambda: DigitsCNN(width), lambda: train(x_tr, y_tr, width))
    return ModelSpec(
        name=name,
        module=model,
        example_inputs=(x_te[:1],),
        calibration=[(x_tr[i : i + 1],) for i in range(128)],
        eval_set=EvalSet(inputs=[(x_te[i : i + 1],) for i in range(len(y_te))], labels=y_te),
        train_set=TrainSet(inputs=(x_tr,), labels=y_tr),
        origin="built-in: trained on scikit-learn digits (80/20 stratified split, seed 0)",
    )
