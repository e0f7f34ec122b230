"""Quantization schemes by layer kind: which route a model takes, and the weight quantization itself.

Small models built here (an embedding + attention + Linear toy, a CNN, GPT-2 from a 1-layer config), real
torchao; the real pretrained MiniLM and every target's runtime are in tests/integration/test_transformers.py.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from edgekit.compression import compress
from edgekit.compression.quantize import linear_mode, linearized, weight_path, weight_quantized
from edgekit.compression.sensitivity import keep_int8, layer_sensitivity, quantizable_layers, worst_cosine
from edgekit.config.profile import load_profile
from edgekit.config.recipe import Budget, MixedPrecision, Recipe
from edgekit.config.target import Tolerance
from edgekit.errors import CompressError
from edgekit.exporters.parity import compare
from edgekit.models import ModelSpec, model_family


class TinyEncoder(nn.Module):
    """Token embeddings -> self-attention -> MLP -> mean pool: the layer kinds of a sentence encoder."""

    def __init__(self, vocab: int = 200, width: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width, padding_idx=0)
        self.attn = nn.MultiheadAttention(width, 4, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, 4 * width)
        self.down = nn.Linear(4 * width, width)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        h = self.norm(h + self.attn(h, h, h, need_weights=False)[0])
        h = h + self.down(nn.functional.gelu(self.up(h)))
        return h.mean(1)


class TinyCnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


def _ids(n: int, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(1, 200, (1, 16), generator=g),) for _ in range(n)]


@pytest.fixture
def encoder() -> ModelSpec:
    torch.manual_seed(0)
    samples = _ids(40)
    return ModelSpec("tiny-encoder", TinyEncoder().eval(), samples[0], calibration=samples[:32],
                     parity_inputs=samples[32:])


def test_model_family_and_the_linear_scheme_each_gets() -> None:
    x86 = load_profile("x86").quantization
    assert model_family(TinyEncoder()) == "transformer"
    assert model_family(TinyCnn()) == "cnn"
    assert linear_mode(x86, TinyEncoder()) == "dynamic"
    assert linear_mode(x86, TinyCnn()) == "static"  # a CNN's head follows the convolutions: unchanged
    forced = x86.model_copy(update={"layers": x86.layers.model_copy(update={"linear": "static"})})
    assert linear_mode(forced, TinyEncoder()) == "static"


def test_which_route_each_artifact_takes(encoder: ModelSpec) -> None:
    cm = compress(encoder, "x86")
    assert weight_path(cm, "int8") and weight_path(cm, "int4") and not weight_path(cm, "fp32")
    cnn = compress(TinyCnn(), "x86", calibration=[torch.randn(1, 1, 12, 12) for _ in range(32)])
    assert not weight_path(cnn, "int8")  # CNNs keep the calibrated pt2e graph
    assert weight_path(cnn, "int4")


def test_compress_takes_the_signature_from_the_first_calibration_sample() -> None:
    samples = [torch.randn(1, 1, 12, 12) for _ in range(32)]
    cm = compress(TinyCnn(), "x86", calibration=samples)
    assert [tuple(t.shape) for t in cm.spec.example_inputs] == [(1, 1, 12, 12)]


def test_transformer_needs_no_calibration(encoder: ModelSpec) -> None:
    spec = dataclasses.replace(encoder, calibration=None)
    assert compress(spec, "x86").calibration == []


def test_weight_quantization_keeps_indices_and_named_layers(encoder: ModelSpec) -> None:
    scheme = load_profile("x86").quantization
    ref = [[encoder.module(*s).detach().numpy()] for s in encoder.parity_inputs]
    q8 = weight_quantized(encoder.module, "int8", scheme, fp32_layers=["down"])
    assert type(q8.down.weight) is nn.Parameter or type(q8.down.weight) is torch.Tensor  # left fp32
    assert type(q8.up.weight).__name__ != "Parameter"  # a torchao quantized tensor
    assert type(q8.embed.weight).__name__ != "Parameter"  # the table, weight-only
    out = [[q8(*s).detach().numpy()] for s in encoder.parity_inputs]
    assert worst_cosine(ref, out) > 0.99
    q4 = weight_quantized(encoder.module, "int4", scheme, int8_layers=["up"])
    assert q4.up.weight.dtype == torch.float32 and "8" in str(getattr(q4.up.weight, "target_dtype", "int8"))
    out4 = [[q4(*s).detach().numpy()] for s in encoder.parity_inputs]
    assert 0.9 < worst_cosine(ref, out4) < worst_cosine(ref, out)  # 4-bit costs more than 8-bit
    assert encoder.module.embed.padding_idx == 0  # the caller's model is untouched


def test_gpt2_conv1d_layers_count_as_linear() -> None:
    transformers = pytest.importorskip("transformers")
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64,
                                                                 n_positions=16, bos_token_id=63, eos_token_id=63)).eval()
    names = set(quantizable_layers(model))
    assert {"transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_fc", "lm_head"} <= names
    ids = torch.randint(0, 64, (1, 8))
    with torch.no_grad():
        before = model(ids).logits
        after = linearized(model)(ids).logits
    assert isinstance(model.transformer.h[0].attn.c_attn, nn.Linear)
    torch.testing.assert_close(before, after)


def test_int4_sensitivity_and_keep_int8(encoder: ModelSpec) -> None:
    cm = compress(encoder, "x86")
    table = layer_sensitivity(cm, precision="int4")
    assert set(table["layer"]) == {"up", "down"}  # Linear layers only (MultiheadAttention keeps its own fp32)
    assert list(table["sqnr_db"]) == sorted(table["sqnr_db"])
    assert table.attrs["precision"] == "int4" and table.attrs["all_int4_cosine"] < 1
    keep_int8(cm, n=1, sensitivity=table)
    assert cm.int8_layers == [table["layer"][0]]


def test_fidelity_budget_without_labels_picks_the_fewest_int8_layers(encoder: ModelSpec) -> None:
    cm = compress(encoder, "x86")
    all_int4 = layer_sensitivity(cm, precision="int4").attrs["all_int4_cosine"]
    ref = [[encoder.module(*s).detach().numpy()] for s in encoder.parity_inputs]
    best_model = weight_quantized(encoder.module, "int4", cm.profile.quantization, int8_layers=["up", "down"])
    best = worst_cosine(ref, [[best_model(*s).detach().numpy()] for s in encoder.parity_inputs])
    assert best > all_int4
    budget = (all_int4 + best) / 2  # between all-int4 and every Linear int8: some layer must stay int8
    recipe = Recipe(name="int4-fidelity", budget=Budget(min_cosine=budget),
                    steps=[MixedPrecision(precision="int4", keep_fp32=0, keep_int8="auto")])
    out = compress(encoder, "x86", recipe=recipe)
    row = out.history[-1]
    assert row.status == "applied" and row.cosine is not None and row.cosine >= budget
    assert 0 < len(out.int8_layers) <= 2 and out.fp32_layers == []
    assert "cosine" in row.attempts[0]


def test_budget_and_mixed_precision_config_errors() -> None:
    with pytest.raises(ValidationError, match="max_accuracy_drop .* or min_cosine"):
        Budget()
    with pytest.raises(ValidationError, match="keep_int8 applies to precision int4"):
        MixedPrecision(keep_int8=2)
    with pytest.raises(ValidationError, match="at most one"):
        MixedPrecision(precision="int4", keep_fp32="auto", keep_int8="auto")


def test_auto_without_a_budget_says_what_it_needs(encoder: ModelSpec) -> None:
    recipe = Recipe(steps=[MixedPrecision(precision="int4", keep_fp32=0, keep_int8="auto")])
    with pytest.raises(CompressError, match="auto needs a recipe budget"):
        compress(encoder, "x86", recipe=recipe)


def test_top1_agreement_is_judged_on_class_scores_only() -> None:
    ref = [[np.array([[0.1, 0.9, 0.0]])]]
    out = [[np.array([[0.9, 0.1, 0.0]])]]
    tol = Tolerance(min_top1_agreement=1.0)
    assert compare(ref, out, tol).top1_agreement == 0.0
    features = compare(ref, out, tol, class_scores=False)
    assert features.top1_agreement is None and features.ok


def test_a_cnn_with_channel_attention_stays_a_cnn() -> None:
    class ChannelAttention(nn.Module):  # squeeze-excitation: an MLP inside a Sequential, no q/k/v
        def __init__(self) -> None:
            super().__init__()
            self.mlp = nn.Sequential(nn.Linear(8, 2), nn.ReLU(), nn.Linear(2, 8))

    class SelfAttention(nn.Module):  # a transformer's: its own projections
        def __init__(self) -> None:
            super().__init__()
            self.query, self.key, self.value = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)

    assert model_family(nn.Sequential(nn.Conv2d(3, 8, 3), ChannelAttention())) == "cnn"
    assert model_family(nn.Sequential(nn.Linear(8, 8), SelfAttention())) == "transformer"
