"""Recipes end to end on real data (scikit-learn digits): budget and back-off, QAT artifacts in every
format, a user's own model and DataLoader, and `edgekit compress` from the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn

import edgekit
from edgekit import Budget, Distill, MixedPrecision, Prune, Qat, Recipe, TrainSpec
from edgekit.errors import CalibrationError, CompressError
from edgekit.models import EvalSet

FAST = TrainSpec(epochs=2, lr=3e-3)


def _by_target(arts: list[Any]) -> dict[tuple[str, str], Any]:
    return {(a.target, a.precision): a for a in arts}


def test_over_budget_step_backs_off_and_every_attempt_is_recorded() -> None:
    recipe = Recipe(name="harsh", train_threads=1, budget=Budget(max_accuracy_drop=0.5),
                    steps=[Prune(granularity="unstructured", ratio=0.97, finetune=TrainSpec(epochs=0))])
    cm = edgekit.compress("digits-cnn", "x86", recipe=recipe)
    report = cm.report()
    assert list(report["step"]) == [0, 1] and report["status"].iloc[0] == "reference"
    step = cm.history[1]
    assert len(step.attempts) >= 2 and "> budget 0.5" in step.attempts[0]  # 97% of weights gone: far over
    assert step.status in ("backed off", "skipped")
    if step.status == "backed off":
        assert step.accuracy_drop_pts <= 0.5 and step.label != "prune(unstructured, 0.97)"
        assert step.nonzero_params < step.params  # the weaker ratio still pruned
    else:
        assert step.params == step.nonzero_params  # nothing kept from the step
    assert cm.name == "digits-cnn-harsh" and cm.baseline_accuracy == pytest.approx(0.9944, abs=1e-3)


def test_a_step_without_its_own_check_is_judged_with_the_next_one() -> None:
    # Pruning 90% of the weights alone is far over a half-point budget; distillation may win it back, so the
    # pair is judged (and backed off) together.
    recipe = Recipe(name="pair", train_threads=1, budget=Budget(max_accuracy_drop=0.5), backoff={"max_tries": 1},
                    steps=[Prune(granularity="unstructured", ratio=0.9, finetune=TrainSpec(epochs=0),
                                 check_budget=False),
                           Distill(train=TrainSpec(epochs=2, lr=3e-3))])
    cm = edgekit.compress("digits-cnn", "x86", recipe=recipe)
    prune_rec, distill_rec = cm.history[1:]
    assert prune_rec.attempts == distill_rec.attempts and prune_rec.status == distill_rec.status
    assert all("prune(unstructured" in a and "-> distill(T=4" in a for a in prune_rec.attempts)
    assert prune_rec.accuracy is not None  # reported, though not judged alone
    if distill_rec.status != "skipped":
        assert distill_rec.accuracy_drop_pts <= 0.5
        assert distill_rec.nonzero_params < distill_rec.params  # distillation kept the pruned zeros


@pytest.mark.slow
def test_channel_pruned_model_exports_smaller_with_parity(digits_artifacts: Callable[[str], list[Any]],
                                                           tmp_path: Path) -> None:
    recipe = Recipe(name="half", train_threads=1, budget=Budget(max_accuracy_drop=1.0),
                    steps=[Prune(granularity="channel", ratio=0.5, finetune=TrainSpec(epochs=3))])
    cm = edgekit.compress("digits-cnn", "x86", recipe=recipe)
    assert cm.history[1].status == "applied" and cm.history[1].macs < 0.35 * cm.history[0].macs
    (art,) = edgekit.export(cm, ["executorch"], tmp_path, precisions=["int8"], jobs=1)
    base = _by_target(digits_artifacts("x86"))[("executorch", "int8")]
    assert art.ok and art.parity.ok, art.error
    assert art.bytes < 0.5 * base.bytes
    assert art.accuracy >= base.accuracy - 0.01  # within the 1-point budget, measured in the artifact's runtime


@pytest.mark.slow
def test_qat_int8_artifacts_for_executorch_and_onnx(digits_artifacts: Callable[[str], list[Any]], tmp_path: Path) -> None:
    import onnx

    recipe = Recipe(name="qat", train_threads=1, steps=[Qat(train=TrainSpec(epochs=1, lr=1e-4))])
    cm = edgekit.compress("digits-cnn", "x86", recipe=recipe)
    assert cm.qat is not None and cm.history[1].evaluated_as.startswith("int8 QAT")
    arts = _by_target(edgekit.export(cm, precisions=["int8"], out_dir=tmp_path, jobs=1))
    ptq = _by_target(digits_artifacts("x86"))
    # litert-torch 0.10 cannot prepare conv+BatchNorm for QAT under torchao 0.18: a clear error, not a PTQ
    # artifact passed off as QAT.
    assert "QAT int8 is not available for LiteRT" in arts[("tflite", "int8")].error
    for key in (("executorch", "int8"), ("onnx", "int8")):
        art = arts[key]
        assert art.ok and art.parity.ok, (key, art.error, art.parity)
        assert art.accuracy >= ptq[key].accuracy - 0.01, key  # QAT at least as good as PTQ, to one point
    ops = {n.op_type for n in onnx.load(str(arts[("onnx", "int8")].path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # the QAT graph's own QDQ, not a re-quantization


def test_mixed_precision_step_keeps_named_layers_fp32() -> None:
    recipe = Recipe(name="mp", steps=[MixedPrecision(keep_fp32=["classifier.3"])])
    cm = edgekit.compress("digits-cnn", "x86", recipe=recipe)
    assert cm.fp32_layers == ["classifier.3"]
    assert cm.history[1].evaluated_as == "int8 PTQ (XNNPACK, simulated)" and cm.history[1].accuracy > 0.98


class UserNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(24 * 16, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x))


def test_user_model_with_its_own_dataloader_and_validation_set() -> None:
    from edgekit.models.digits import load_digits_split

    x_tr, y_tr, x_te, y_te = load_digits_split()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_tr, y_tr), batch_size=32, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = UserNet()
    val = EvalSet(inputs=[(x_te[i : i + 1],) for i in range(len(y_te))], labels=y_te)
    recipe = Recipe(name="user", train_threads=1, budget=Budget(max_accuracy_drop=100.0),
                    steps=[Distill(student=None, train=TrainSpec(epochs=1, lr=3e-3))])
    with pytest.raises(CompressError, match="brings no training data; pass train_data"):
        edgekit.compress(model, "x86", example_inputs=x_te[:1], calibration=[x_tr[i : i + 1] for i in range(32)],
                         recipe=recipe, val_data=val)
    # The user's model is untrained: the pruning step's fine-tuning on their loader trains it.
    recipe = Recipe(name="user", train_threads=1, budget=Budget(max_accuracy_drop=100.0), steps=[
        Prune(granularity="channel", ratio=0.5, finetune=TrainSpec(epochs=3, lr=3e-3))])
    cm = edgekit.compress(model, "x86", example_inputs=x_te[:1], calibration=[x_tr[i : i + 1] for i in range(32)],
                          recipe=recipe, train_data=loader, val_data=val)
    assert cm.spec.module.conv[0].out_channels == 12
    assert cm.history[1].accuracy > 0.8  # trained by the fine-tuning on the user's loader


def test_training_data_file_errors_name_the_fix(tmp_path: Path) -> None:
    from edgekit.compression._calibration import load_train_file

    example = (torch.zeros(1, 1, 8, 8),)
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 1, 8, 8), np.float32), y=np.zeros(3, np.int64))
    with pytest.raises(CalibrationError, match="4 samples but 3 labels"):
        load_train_file(tmp_path / "bad.npz", example)
    np.savez(tmp_path / "shape.npz", x=np.zeros((4, 8, 7), np.float32), y=np.zeros(4, np.int64))
    with pytest.raises(CalibrationError, match=r"input 0 has shape \(4, 8, 7\); expected \(N, 1, 8, 8\)"):
        load_train_file(tmp_path / "shape.npz", example)
    np.savez(tmp_path / "nolabels.npz", x=np.zeros((4, 1, 8, 8), np.float32))
    with pytest.raises(CalibrationError, match="expected x .* and y"):
        load_train_file(tmp_path / "nolabels.npz", example)
    np.savez(tmp_path / "ok.npz", x=np.zeros((4, 1, 8, 8), np.float32), y=np.arange(4))
    data = load_train_file(tmp_path / "ok.npz", example)
    assert data.inputs[0].shape == (4, 1, 8, 8) and data.labels.tolist() == [0, 1, 2, 3]


@pytest.mark.slow
def test_cli_compress_measures_each_step_and_saves_the_model(tmp_path: Path) -> None:
    recipe = tmp_path / "small.yaml"
    recipe.write_text("name: small\ntrain_threads: 1\nbudget: {max_accuracy_drop: 1.0}\nsteps:\n"
                      "  - prune: {granularity: channel, ratio: 0.5, finetune: {epochs: 3, lr: 3.0e-3}}\n")
    saved = tmp_path / "small.pt2"
    res = subprocess.run(
        [sys.executable, "-m", "edgekit", "compress", "--model", "digits-cnn", "--profile", "x86", "--recipe",
         str(recipe), "--measure", "--target", "onnx", "--precision", "fp32", "--min-seconds", "0.1",
         "--out-dir", str(tmp_path / "artifacts"), "--save", str(saved), "--json"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(res.stdout)
    assert [r["step"] for r in rows] == [0, 1]
    base, pruned = rows
    assert pruned["label"] == "prune(channel, 0.5)" and pruned["params"] < base["params"] / 3
    for r in rows:  # measured on the local device, in the artifact's runtime
        assert r["target"] == "onnx" and r["latency_ms_p50"] > 0 and r["parity_ok"] and r["device"] == "local"
        assert r["artifact_bytes"] > 0 and r["model"].startswith("digits-cnn-small-step")
    assert pruned["artifact_bytes"] < base["artifact_bytes"]
    # The saved .pt2 is the compressed model: deployable by path.
    from edgekit.models import load_model

    spec = load_model(str(saved))
    assert sum(p.numel() for p in spec.module.parameters()) == pruned["params"]


def test_cli_compress_bad_recipe_names_line_and_field(tmp_path: Path) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("name: bad\nsteps:\n  - prune: {ratio: 2}\n")
    res = subprocess.run([sys.executable, "-m", "edgekit", "compress", "--model", "digits-cnn", "--recipe",
                          str(recipe)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 2
    text = " ".join(res.stderr.split())  # rich wraps long lines on stderr
    assert f"{recipe}:3: field 'steps.0.prune.ratio': Input should be less than 1 (got 2)" in text


def test_cli_sensitivity_table_as_json(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "edgekit", "sensitivity", "--model", "digits-cnn", "--profile", "x86",
                          "--json"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = json.loads(res.stdout)
    assert {r["layer"] for r in rows} == {"features.0", "features.3", "features.7", "classifier.1", "classifier.3"}
    sqnr = [r["sqnr_db"] for r in rows]
    assert sqnr == sorted(sqnr) and all(20 < v < 90 for v in sqnr)  # most sensitive (lowest SQNR) first


def test_deploy_with_a_recipe_measures_the_compressed_model(tmp_path: Path) -> None:
    recipe = Recipe(name="half", train_threads=1, steps=[Prune(granularity="channel", ratio=0.5,
                                                               finetune=TrainSpec(epochs=2, lr=3e-3))])
    df = edgekit.deploy("digits-cnn", recipe=recipe, targets=["onnx"], precisions=["fp32"], out_dir=tmp_path,
                        jobs=1, config=edgekit.BenchConfig(min_seconds=0.1, min_iterations=5, threads=1))
    (row,) = df.to_dict("records")
    assert row["model"] == "digits-cnn-half" and row["parity_ok"] and row["latency_ms_p50"] > 0
    assert row["device_accuracy"] == pytest.approx(row["accuracy"])  # the pruned model, scored on the device
