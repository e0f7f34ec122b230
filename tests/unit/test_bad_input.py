"""The bad-input battery: every mistake a user can make in a file or an argument is an EdgekitError whose
message names the file (and line), the field or op, and the fix. Nothing here needs a device.

Where each case is tested (this file holds the ones that were missing):

| case                                          | test                                                               |
| --------------------------------------------- | ------------------------------------------------------------------ |
| malformed YAML: profile                       | unit/test_config.py::test_malformed_yaml_names_the_line            |
| malformed YAML: recipe                        | unit/test_recipe_config.py::test_malformed_yaml_and_missing_file   |
| malformed YAML: devices, target               | here: test_malformed_yaml_names_file_line_and_the_fix              |
| unknown field: profile, recipe                | test_config::test_bad_profile_names_file_line_and_field, test_recipe_config::test_errors_name_file_line_and_field |
| unknown field: devices, target                | here: test_unknown_fields_and_wrong_types_name_the_line_and_field  |
| wrong type: profile                           | test_config::test_bad_profile_names_file_line_and_field            |
| wrong type: devices, target, recipe; bad kind | here: test_unknown_fields_and_wrong_types_name_the_line_and_field  |
| a secret in devices.yaml                      | test_config::test_devices_file_entries_and_errors                  |
| duplicate device names                        | test_config::test_devices_file_entries_and_errors                  |
| a profile naming a missing target             | here: test_a_profile_naming_a_missing_target_names_its_line        |
| a model whose forward fails                   | integration/test_models_and_errors.py::test_model_whose_forward_fails_is_refused |
| an op one target cannot export                | test_models_and_errors::test_a_target_that_cannot_export_an_op_gives_a_row_and_the_others_run |
| calibration of the wrong shape or dtype       | test_models_and_errors::test_calibration_errors_name_the_problem; a file's dtype: here |
| an empty calibration set                      | unit/test_models.py::test_empty_and_wrong_kind_calibration         |
| a ``.pt`` pickle without opting in            | test_models_and_errors::test_pickled_module_needs_opt_in           |
| a ``.pt2`` from a newer torch                 | here: test_a_pt2_from_a_newer_torch_names_both_versions_and_the_fix |
| bad shapes, unknown model forms               | test_models::test_bad_shapes_say_what_is_expected, test_unknown_model_names_the_forms_accepted |
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

import edgekit
from edgekit.compression._calibration import load_calibration_file
from edgekit.config.recipe import load_recipe
from edgekit.errors import CalibrationError, ConfigError, ModelError

TARGET = "name: t\nformat: onnx\nextension: .onnx\nprecisions: [fp32]\ntolerance: {fp32: {}}\n"
LOADERS: dict[str, Callable[[str], Any]] = {"devices.yaml": edgekit.load_devices, "t.yaml": edgekit.load_target,
                                            "r.yaml": load_recipe}


def _error(tmp_path: Path, file: str, text: str) -> tuple[Path, str]:
    path = tmp_path / file
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        LOADERS[file](str(path))
    return path, str(info.value)


@pytest.mark.parametrize(("file", "text", "line"), [
    ("devices.yaml", "devices:\n  - {name: a, kind: ssh, host: h\n", 3),
    ("t.yaml", "name: t\nformat: onnx\n  extension: .onnx\n", 3),
])
def test_malformed_yaml_names_file_line_and_the_fix(tmp_path: Path, file: str, text: str, line: int) -> None:
    path, msg = _error(tmp_path, file, text)
    assert msg.startswith(f"{path}:{line}: malformed YAML: ") and msg.endswith("fix the syntax"), msg


@pytest.mark.parametrize(("file", "text", "line", "field", "words"), [
    ("devices.yaml", "devices:\n  - name: a\n    kind: ssh\n    host: h\n    prot: 22\n", 5, "devices.0.prot",
     "unknown field; remove it or check its spelling"),
    ("t.yaml", TARGET + "opst: 17\n", 6, "opst", "unknown field; remove it or check its spelling"),
    ("devices.yaml", "devices:\n  - name: a\n    kind: ssh\n    host: h\n    port: twenty\n", 5, "devices.0.port",
     "should be a valid integer, unable to parse string as an integer (got 'twenty')"),
    ("devices.yaml", "devices:\n  - name: a\n    kind: ftp\n    host: h\n", 3, "devices.0.kind",
     "Input tag 'ftp' found using 'kind' does not match any of the expected tags: 'local', 'ssh'"),
    ("t.yaml", TARGET + "opset: seventeen\n", 6, "opset", "should be a valid integer"),
    ("r.yaml", "name: r\nsteps:\n  - prune: {ratio: half}\n", 3, "steps.0.prune.ratio",
     "should be a valid number, unable to parse string as a number (got 'half')"),
], ids=["devices-unknown-field", "target-unknown-field", "devices-wrong-type", "devices-unknown-kind",
        "target-wrong-type", "recipe-wrong-type"])
def test_unknown_fields_and_wrong_types_name_the_line_and_field(tmp_path: Path, file: str, text: str, line: int,
                                                                field: str, words: str) -> None:
    path, msg = _error(tmp_path, file, text)
    # the line of the field itself, and the field as written in the file (no union tag like devices.0.ssh.port)
    assert msg.startswith(f"{path}:{line}: field '{field}': ") and words in msg, msg


def test_a_profile_naming_a_missing_target_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("name: p\narch: x86_64\nbackend: fbgemm\nprecisions: [fp32]\ntargets:\n  - onnx\n  - tflit\n")
    with pytest.raises(ConfigError) as info:
        edgekit.load_profile(str(path))
    msg = str(info.value)
    assert msg.startswith(f"{path}:7: field 'targets.1': profile 'p' names unknown target 'tflit'; "
                          "valid: executorch, onnx, tflite (did you mean 'tflite'?)"), msg
    assert "add tflit.yaml to a folder in $EDGEKIT_TARGETS (--targets-dir)" in msg
    with pytest.raises(ConfigError, match="names unknown target 'tflit'"):  # before anything is compressed
        edgekit.compress(torch.nn.Linear(4, 2), str(path), [torch.zeros(1, 4)] * 32, example_inputs=torch.zeros(1, 4))


def test_a_pt2_from_a_newer_torch_names_both_versions_and_the_fix(tmp_path: Path) -> None:
    """A real torch.export.save archive whose version record says a newer torch (schema major 99) wrote it."""
    real = tmp_path / "real.pt2"
    torch.export.save(torch.export.export(torch.nn.Linear(3, 2), (torch.zeros(1, 3),)), str(real))
    newer = tmp_path / "newer.pt2"
    with zipfile.ZipFile(real) as src, zipfile.ZipFile(newer, "w") as dst:
        records = [n for n in src.namelist() if n.endswith("models/model.json")]
        assert records, src.namelist()
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename in records:
                record = json.loads(data)
                assert record["torch_version"] == torch.__version__ and "schema_version" in record
                record.update(torch_version="9.1.0", schema_version={"major": 99, "minor": 0})
                data = json.dumps(record).encode()
            dst.writestr(item, data)
    with pytest.raises(ModelError) as info:
        edgekit.compress(str(newer), "x86")
    msg = str(info.value)
    assert msg.startswith(f"{newer}: saved by torch 9.1.0, which this torch {torch.__version__} cannot load"), msg
    assert f"re-export it with torch.export.save under torch {torch.__version__}, or install torch 9.1.0" in msg


def test_a_calibration_file_of_the_wrong_dtype_names_the_file_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "calib.npy"
    np.save(path, np.zeros((40, 1, 8, 8), np.float64))
    with pytest.raises(CalibrationError) as info:
        load_calibration_file(path, (torch.zeros(1, 1, 8, 8),))
    assert str(info.value) == (f"{path}: input 0 has dtype torch.float64; the model takes torch.float32. Convert the "
                               "data (numpy: .astype(np.float32)) and save it again")
