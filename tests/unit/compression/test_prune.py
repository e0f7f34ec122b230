"""Pruning on real models: channels physically removed and rewired, zeros made permanent, 2:4 patterns."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgekit.compression._measure import count_macs, count_nonzero, count_params
from edgekit.compression._train import TrainSettings, mask_keeper, sparsity_masks, train
from edgekit.compression.model import accuracy
from edgekit.compression.prune import is_2_4, mask_2_4, output_layers, prune
from edgekit.errors import CompressError
from edgekit.models import load_model


@pytest.fixture(scope="module")
def digits():  # type: ignore[no-untyped-def]
    return load_model("digits-cnn")


class ResidualDepthwise(nn.Module):
    """A residual add and a depthwise conv: the couplings a hand-written channel pruner gets wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.BatchNorm2d(32), nn.ReLU())
        self.pw = nn.Sequential(nn.Conv2d(32, 32, 1), nn.BatchNorm2d(32))
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        y = torch.relu(y + self.pw(self.dw(y)))
        return self.head(y.mean((2, 3)))


def test_channel_pruning_removes_channels_and_keeps_the_output_width(digits) -> None:  # type: ignore[no-untyped-def]
    module = copy.deepcopy(digits.module)
    before_params, before_macs = count_params(module), count_macs(module, digits.example_inputs)
    report = prune(module, digits.example_inputs, granularity="channel", ratio=0.5)
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32]  # 16, 32, 64 halved
    bns = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [b.num_features for b in bns] == [8, 16, 32]  # rewired with their convs
    assert module.classifier[3].out_features == 10 and report.skipped == {"classifier.3": "model output"}
    assert count_params(module) < 0.35 * before_params
    assert count_macs(module, digits.example_inputs) < 0.35 * before_macs
    assert module(*digits.example_inputs).shape == (1, 10)
    torch.export.export(module.eval(), digits.example_inputs)  # still exportable


def test_channel_pruning_handles_residual_adds_and_depthwise_groups() -> None:
    torch.manual_seed(0)
    model = ResidualDepthwise().eval()
    x = (torch.randn(1, 3, 16, 16),)
    prune(model, x, granularity="channel", ratio=0.5, importance="bn_scale")
    # The add couples stem and pw; the depthwise conv follows its input: all pruned to one width.
    widths = {model.stem[0].out_channels, model.dw[0].out_channels, model.dw[0].groups, model.pw[0].out_channels,
              model.head.in_features}
    assert widths == {16}
    assert model(*x).shape == (1, 5)
    torch.export.export(model, x)


def test_iterative_channel_pruning_fine_tunes_between_rounds(digits) -> None:  # type: ignore[no-untyped-def]
    module = copy.deepcopy(digits.module)
    rounds: list[int] = []

    def finetune(m: nn.Module, i: int) -> None:
        rounds.append(count_params(m))
        train(m, digits.train_set, TrainSettings(epochs=1, threads=1))

    prune(module, digits.example_inputs, granularity="channel", ratio=0.5, iterations=2, finetune=finetune)
    assert len(rounds) == 2 and rounds[0] > rounds[1]  # the ratio rises over the rounds
    assert accuracy(module, digits.eval_set) > 0.95


def test_unstructured_pruning_is_permanent_and_reaches_the_ratio(digits) -> None:  # type: ignore[no-untyped-def]
    module = copy.deepcopy(digits.module)
    prune(module, digits.example_inputs, granularity="unstructured", ratio=0.6, iterations=3)
    weights = [m.weight for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(0.6, abs=0.01)
    assert not any("weight_orig" in n for n, _ in module.named_parameters())  # no reparametrization left
    assert count_nonzero(module) < count_params(module)


def test_later_training_keeps_pruned_zeros(digits) -> None:  # type: ignore[no-untyped-def]
    module = copy.deepcopy(digits.module)
    prune(module, digits.example_inputs, granularity="unstructured", ratio=0.5)
    masks = sparsity_masks(module)
    zeros = count_params(module) - count_nonzero(module)
    train(module, digits.train_set, TrainSettings(epochs=1, threads=1), after_step=mask_keeper(module, masks))
    assert count_params(module) - count_nonzero(module) >= zeros


def test_2_4_sparsity_pattern_on_every_eligible_layer(digits) -> None:  # type: ignore[no-untyped-def]
    module = copy.deepcopy(digits.module)
    report = prune(module, digits.example_inputs, granularity="2:4", ratio=0.5)
    assert "features.0" in report.skipped  # 1 input channel: not a multiple of 4
    for name in report.layers:
        assert is_2_4(module.get_submodule(name).weight), name
    w = torch.tensor([[0.1, -3.0, 2.0, 0.5, 1.0, 1.0, -1.0, 0.0]])
    mask = mask_2_4(w)
    assert mask[0, :4].tolist() == [False, True, True, False]  # the two largest magnitudes
    assert int(mask[0, 4:].sum()) == 2 and not bool(mask[0, 7])  # ties: any two of the three, never the zero


def test_output_layers_found_by_identity(digits) -> None:  # type: ignore[no-untyped-def]
    assert output_layers(digits.module, digits.example_inputs) == ["classifier.3"]


@pytest.mark.parametrize("kwargs, match", [
    ({"granularity": "channel", "ratio": 1.2}, "ratio 1.2 must be in"),
    ({"granularity": "2:4", "ratio": 0.3}, "exactly half"),
    ({"granularity": "rows", "ratio": 0.5}, "unknown granularity 'rows'"),
    ({"granularity": "channel", "ratio": 0.5, "ignore": ["features.99"]}, "unknown layer"),
    ({"granularity": "unstructured", "ratio": 0.5, "importance": "bn_scale"}, "ranks channels"),
])
def test_bad_arguments_are_named(digits, kwargs, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CompressError, match=match):
        prune(copy.deepcopy(digits.module), digits.example_inputs, **kwargs)
