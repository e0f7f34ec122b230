"""Model sources and calibration files (no export: fast)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgekit.compression._calibration import check_calibration, load_calibration_file
from edgekit.errors import CalibrationError, ModelError, UnknownNameError
from edgekit.models import load_model, parse_shapes
from edgekit.models.mobilenet import MobileNetV2


def test_mobilenet_v2_is_the_standard_architecture() -> None:
    model = MobileNetV2().eval()
    # torchvision's mobilenet_v2() has exactly this many parameters (MobileNetV2-1.0, 1000 classes).
    assert sum(p.numel() for p in model.parameters()) == 3_504_872
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


@pytest.mark.parametrize(("text", "shapes"), [("1,3,224,224", [(1, 3, 224, 224)]), ("1x16;1x16", [(1, 16), (1, 16)])])
def test_parse_shapes(text: str, shapes: list[tuple[int, ...]]) -> None:
    assert parse_shapes(text) == shapes


@pytest.mark.parametrize("text", ["1,a,3", "0,3", ","])
def test_bad_shapes_say_what_is_expected(text: str) -> None:
    with pytest.raises(ModelError, match="--input-shape"):
        parse_shapes(text)


def test_unknown_model_names_the_forms_accepted() -> None:
    with pytest.raises(UnknownNameError, match=r"digits-cnn, digits-cnn-wide, gpt2-tiny, minilm-l6, mobilenet-v2.*\.pt2.*package\.module:function"):
        load_model("resnet")


def test_factory_errors_are_model_errors() -> None:
    with pytest.raises(ModelError, match="cannot import"):
        load_model("no_such_package.mod:make", input_shape="1,3")
    with pytest.raises(ModelError, match="expected a torch.nn.Module"):
        load_model("builtins:dict", input_shape="1,3")


def test_missing_and_bad_pt2_files(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="file not found"):
        load_model(str(tmp_path / "nope.pt2"))
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="re-save it with torch.export.save"):
        load_model(str(junk))


def test_state_dict_pickle_is_explained(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(ModelError, match="not an nn.Module"):
        load_model(str(path), input_shape="1,2")


EXAMPLE = (torch.zeros(1, 1, 8, 8),)


def test_npy_npz_and_pt_calibration_files(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).standard_normal((40, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "c.npy", arr)
    np.savez(tmp_path / "c.npz", arr)
    torch.save(torch.from_numpy(arr), tmp_path / "c.pt")
    for name in ("c.npy", "c.npz", "c.pt"):
        samples = load_calibration_file(tmp_path / name, EXAMPLE)
        assert len(samples) == 40 and samples[3][0].shape == (1, 1, 8, 8)
        assert torch.equal(samples[3][0][0], torch.from_numpy(arr[3]))


def test_two_input_npz_keeps_argument_order(tmp_path: Path) -> None:
    ids = np.arange(40 * 4, dtype=np.int64).reshape(40, 4)
    mask = np.ones((40, 4), dtype=np.int64)
    np.savez(tmp_path / "c.npz", ids, mask)
    example = (torch.zeros(1, 4, dtype=torch.int64), torch.zeros(1, 4, dtype=torch.int64))
    samples = load_calibration_file(tmp_path / "c.npz", example)
    assert samples[1][0].tolist() == [[4, 5, 6, 7]] and samples[1][1].tolist() == [[1, 1, 1, 1]]
    checked = check_calibration(samples, example, min_samples=32, max_samples=256)
    assert len(checked) == 40


def test_pickled_object_in_calibration_pt_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    torch.save({"x": object()}, path)
    with pytest.raises(CalibrationError, match="cannot read calibration data"):
        load_calibration_file(path, EXAMPLE)


def test_empty_and_wrong_kind_calibration(tmp_path: Path) -> None:
    np.save(tmp_path / "empty.npy", np.zeros((0, 1, 8, 8), np.float32))
    with pytest.raises(CalibrationError, match="0 calibration sample"):
        check_calibration(load_calibration_file(tmp_path / "empty.npy", EXAMPLE), EXAMPLE, min_samples=32,
                          max_samples=256)
    (tmp_path / "c.csv").write_text("1,2\n")
    with pytest.raises(CalibrationError, match="use .npy, .npz or .pt"):
        load_calibration_file(tmp_path / "c.csv", EXAMPLE)
    with pytest.raises(CalibrationError, match="not found"):
        load_calibration_file(tmp_path / "missing.npy", EXAMPLE)
    np.savez(tmp_path / "two.npz", np.zeros((40, 1, 8, 8), np.float32), np.zeros((40, 3), np.float32))
    with pytest.raises(CalibrationError, match="holds 2 input array"):
        load_calibration_file(tmp_path / "two.npz", EXAMPLE)


def test_calibration_keeps_at_most_max_samples() -> None:
    samples = [EXAMPLE] * 300
    assert len(check_calibration(samples, EXAMPLE, min_samples=32, max_samples=256)) == 256
