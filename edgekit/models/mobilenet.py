"""``mobilenet-v2``: the standard MobileNetV2-1.0 at 224x224 (Sandler et al. 2018), 1000 classes.

No pretrained weights can be fetched here, and random weights make a poor int8 subject (their
activations carry almost no signal, so quantization noise swamps it). So at first use the network is
trained for one epoch on scikit-learn's digits, upsampled to 3x224x224, and cached: the architecture and
cost are the standard ones, and the weights are trained weights with an accuracy to check against.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgekit.models._spec import EvalSet, ModelSpec
from edgekit.models._training import cached_module, fit

# (expansion t, output channels c, repeats n, first stride s) from Table 2 of the paper.
SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def _conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(cin, hidden, 1, 1))
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), _conv_bn(hidden, cout, 1, 1, act=False)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(3, 32, 3, 2)]
        cin = 32
        for t, c, n, s in SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(_conv_bn(cin, 1280, 1, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


# Small batches: the cost is per image, so one epoch of batch 16 buys four times the updates of batch 64.
RECIPE: dict[str, Any] = {"version": 2, "seed": 0, "epochs": 1, "batch": 16, "lr": 1e-3, "bn_images": 256, "size": 224}


def to_image(x: torch.Tensor, size: int = 224) -> torch.Tensor:
    """Digits (N, 1, 8, 8) in [0, 1] -> (N, 3, size, size) in [-1, 1]."""
    return nn.functional.interpolate(x.repeat(1, 3, 1, 1), size=(size, size), mode="bilinear",
                                     align_corners=False) * 2 - 1


def train(x: torch.Tensor, y: torch.Tensor) -> MobileNetV2:
    torch.manual_seed(RECIPE["seed"])
    model = MobileNetV2()
    opt = torch.optim.AdamW(model.parameters(), lr=RECIPE["lr"], weight_decay=1e-4)
    fit(model, x, y, opt, epochs=RECIPE["epochs"], batch=RECIPE["batch"], seed=RECIPE["seed"],
        transform=lambda b: to_image(b, RECIPE["size"]))
    _recalibrate_batchnorm(model, x[: RECIPE["bn_images"]])
    return model


def _recalibrate_batchnorm(model: MobileNetV2, x: torch.Tensor) -> None:
    """Exact BatchNorm statistics (cumulative average) of the trained weights; momentum leaves them stale."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(0, len(x), 32):
            model(to_image(x[i : i + 32], RECIPE["size"]))
    model.eval()


def build() -> ModelSpec:
    from edgekit.models.digits import load_digits_split

    x_tr, y_tr, x_te, y_te = load_digits_split()
    model = cached_module("mobilenet-v2", RECIPE, MobileNetV2, lambda: train(x_tr, y_tr))
    return ModelSpec(
        name="mobilenet-v2",
        module=model,
        example_inputs=(to_image(x_te[:1]),),
        calibration=[(to_image(x_tr[i : i + 1]),) for i in range(128)],
        eval_set=EvalSet(inputs=[(to_image(x_te[i : i + 1]),) for i in range(len(y_te))], labels=y_te),
        origin="built-in: MobileNetV2-1.0 224x224, 1000 classes, trained 1 epoch on scikit-learn digits upsampled",
    )
