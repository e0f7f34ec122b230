"""The ``edgekit`` command as a user runs it: a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]


def edgekit(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent), COLUMNS="200", **(env or {}))
    return subprocess.run([sys.executable, "-m", "edgekit", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=900)


@pytest.mark.slow
def test_deploy_json_and_parquet(tmp_path: Path) -> None:
    res = edgekit("deploy", "--device", "local", "--model", "digits-cnn", "--targets", "onnx,tflite",
                  "--precisions", "int8", "--min-seconds", "0.2", "--json", "--out", "rows.parquet", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(res.stdout)  # stdout holds only the JSON: toolchain chatter went to the export logs
    assert [r["target"] for r in rows if r["recommended"]] == [rows[0]["target"]]
    required = {"device", "profile", "model", "target", "precision", "artifact_bytes", "parity_max_abs_err",
                "parity_cosine", "parity_ok", "accuracy", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99",
                "latency_ms_mean", "iterations", "peak_rss_mb", "energy_mj_per_inference", "energy_status"}
    assert required <= set(rows[0])
    assert {(r["target"], r["precision"]) for r in rows} == {("onnx", "int8"), ("tflite", "int8")}
    assert all(r["energy_mj_per_inference"] is None and r["energy_status"].startswith("unavailable") for r in rows)
    df = pd.read_parquet(tmp_path / "rows.parquet")
    assert list(df["target"]) == [r["target"] for r in rows]
    assert len(df.loc[0, "latency_ms_samples"]) == rows[0]["iterations"]
    assert (tmp_path / "artifacts" / "digits-cnn" / "x86" / "onnx-int8" / "model.onnx").is_file()


@pytest.mark.slow
def test_deploy_table_marks_the_recommended_row(tmp_path: Path) -> None:
    res = edgekit("deploy", "--model", "digits-cnn", "--targets", "onnx", "--min-seconds", "0.1", "--jobs", "1",
                  cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "digits-cnn on local (profile x86)" in res.stdout
    assert "fp32 PyTorch reference accuracy" in res.stdout and "energy: unavailable" in res.stdout


def test_unknown_model_fails_with_the_valid_names(tmp_path: Path) -> None:
    res = edgekit("deploy", "--model", "mobilenet-v3", cwd=tmp_path)
    assert res.returncode == 2
    assert "unknown model 'mobilenet-v3'" in res.stderr and "mobilenet-v2" in res.stderr
    assert "Traceback" not in res.stderr


def test_unknown_profile_and_device_fail_clearly(tmp_path: Path) -> None:
    res = edgekit("deploy", "--model", "digits-cnn", "--profile", "pi5", cwd=tmp_path)
    assert res.returncode == 2 and "unknown profile 'pi5'" in res.stderr and "pi4" in res.stderr
    res = edgekit("deploy", "--model", "digits-cnn", "--device", "pi4", cwd=tmp_path)
    assert res.returncode == 2 and "unknown device 'pi4'" in res.stderr


def test_profiles_lists_builtin_and_user_profiles(tmp_path: Path) -> None:
    extra = tmp_path / "mine"
    extra.mkdir()
    (extra / "rk3588.yaml").write_text(
        "name: rk3588\narch: aarch64\nbackend: xnnpack\nprecisions: [int8]\ntargets: [tflite]\n")
    res = edgekit("--profiles", str(extra), "profiles", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert set(rows) == {"jetson-orin", "pi4", "x86", "x86-cuda", "rk3588"}
    assert rows["x86"]["host"] is True and rows["pi4"]["pruning"] == "channel"


def test_bad_profile_file_error_names_file_and_field(tmp_path: Path) -> None:
    extra = tmp_path / "mine"
    extra.mkdir()
    (extra / "oops.yaml").write_text("name: oops\narch: x86_64\nbackend: fbgemm\nprecisions: [fp8]\ntargets: [onnx]\n")
    res = edgekit("--profiles", str(extra), "profiles", cwd=tmp_path)
    assert res.returncode == 2
    assert "oops.yaml:4" in res.stderr and "precisions.0" in res.stderr


@pytest.mark.slow
def test_an_artifact_out_of_tolerance_is_flagged_and_not_recommended(tmp_path: Path) -> None:
    """A user target with a tolerance no int8 artifact can meet: the row stays, flagged, never recommended."""
    targets = tmp_path / "targets"
    targets.mkdir()
    (targets / "onnx-strict.yaml").write_text(
        "name: onnx-strict\nformat: onnx\nextension: .onnx\nprecisions: [fp32, int8]\n"
        "tolerance:\n  fp32: {max_abs_err: 1.0e-3}\n  int8: {max_abs_err: 1.0e-6}\n")
    args = ("--targets-dir", str(targets), "deploy", "--model", "digits-cnn", "--targets", "onnx-strict",
            "--min-seconds", "0.1")
    res = edgekit(*args, "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = {r["precision"]: r for r in json.loads(res.stdout)}
    assert rows["int8"]["parity_ok"] is False and "max_abs_err" in rows["int8"]["parity_failures"]
    assert rows["int8"]["recommended"] is False and rows["fp32"]["recommended"] is True
    assert rows["int8"]["latency_ms_p50"] > 0  # still measured: flagged, not hidden
    table = edgekit(*args, cwd=tmp_path)
    assert "onnx-strict int8 is out of tolerance, not recommended" in table.stdout


# --- one flag, one meaning: the registry file is --devices-file everywhere, device names are --device/--devices

REGISTRY = "devices:\n  - {name: box, kind: local, profile: x86, tags: [lab]}\n"


@pytest.mark.parametrize("args", [
    ["deploy", "--model", "digits-cnn", "--device", "ghost"],
    ["compress", "--model", "digits-cnn", "--recipe", "prune-finetune", "--device", "ghost"],
    ["bench", "--model", "digits-cnn", "--devices", "ghost"],
    ["devices", "check", "ghost"],
], ids=["deploy", "compress", "bench", "devices-check"])
def test_every_command_reads_the_registry_given_by_devices_file(tmp_path: Path, args: list[str]) -> None:
    """The device named is looked up in the file --devices-file names (its ``box`` is among the valid names)."""
    (tmp_path / "reg.yaml").write_text(REGISTRY)
    res = edgekit(*args, "--devices-file", "reg.yaml", cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "unknown device 'ghost'; valid: box, local" in res.stderr and "Traceback" not in res.stderr


def test_devices_list_reads_devices_file_and_still_edgekit_devices(tmp_path: Path) -> None:
    (tmp_path / "reg.yaml").write_text(REGISTRY)
    listed = edgekit("devices", "list", "--devices-file", "reg.yaml", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert [d["name"] for d in json.loads(listed.stdout)] == ["local", "box"]
    from_env = edgekit("devices", "list", "--json", cwd=tmp_path, env={"EDGEKIT_DEVICES": "reg.yaml"})
    assert from_env.returncode == 0 and json.loads(from_env.stdout) == json.loads(listed.stdout)
    missing = edgekit("devices", "list", "--devices-file", "missing.yaml", cwd=tmp_path)
    assert missing.returncode == 2 and "missing.yaml: devices file not found" in missing.stderr


@pytest.mark.parametrize("value", ["reg.yaml", "local,reg.yaml", "fleet.yml"])
def test_bench_devices_given_the_registry_file_says_which_flag_takes_it(tmp_path: Path, value: str) -> None:
    (tmp_path / "reg.yaml").write_text(REGISTRY)
    (tmp_path / "fleet.yml").write_text(REGISTRY)
    res = edgekit("bench", "--model", "digits-cnn", "--devices", value, cwd=tmp_path)
    assert res.returncode == 2
    assert "--devices takes device names" in res.stderr and "the registry file is --devices-file" in res.stderr
    assert "Traceback" not in res.stderr and not list(tmp_path.glob("edgekit-results*"))


def test_the_registry_file_is_no_longer_devices_in_deploy(tmp_path: Path) -> None:
    (tmp_path / "reg.yaml").write_text(REGISTRY)
    res = edgekit("deploy", "--model", "digits-cnn", "--devices", "reg.yaml", cwd=tmp_path)
    assert res.returncode == 2 and "No such option" in res.stderr and "--devices-file" in res.stderr


# --- errors: every EdgekitError ends the same way, in one place (the edgekit group)

ERRORS = {
    "deploy": (["deploy", "--model", "mobilenet-v3"], "unknown model 'mobilenet-v3'"),
    "sensitivity": (["sensitivity", "--model", "mobilenet-v3"], "unknown model 'mobilenet-v3'"),
    "devices-list": (["devices", "list", "--devices-file", "missing.yaml"], "missing.yaml: devices file not found"),
    "devices-check": (["devices", "check", "ghost"], "unknown device 'ghost'"),
    "results-show": (["results", "show", "nope"], "unknown run 'nope'"),
    "results-compare": (["results", "compare", "nope", "nada"], "unknown run 'nope'"),
    "report": (["report", "nope"], "unknown run 'nope'"),
    "bench": (["bench", "--model", "digits-cnn", "--devices", "ghost"], "unknown device 'ghost'"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_an_edgekit_error_from_any_command_is_one_line_on_stderr_and_status_2(tmp_path: Path, case: str) -> None:
    args, message = ERRORS[case]
    res = edgekit(*args, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr
    assert res.stdout == ""


@pytest.mark.parametrize("case", ["devices-list", "results-show", "report"])
def test_an_edgekit_error_under_click_cli_runner_is_status_2_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 case: str) -> None:
    """``cli`` itself (not only ``main``) reports the error: click's own entry and CliRunner see exit 2."""
    from click.testing import CliRunner

    from edgekit.cli._main import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    args, message = ERRORS[case]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2, res.output
    assert res.stderr.strip().splitlines() == [res.stderr.strip()] and message in res.stderr
    assert res.stderr.startswith("error: ") and res.stdout == ""


# --- shared options: defined once, so their help is the same in every command

def _option_help(help_text: str, flag: str) -> str:
    """The help of ``flag`` in ``--help`` output, its wrapped lines joined."""
    lines = help_text.splitlines()
    for i, line in enumerate(lines):
        if line.strip().split(" ")[0].rstrip(",") == flag:
            block = [line.strip()[len(flag):]]
            for more in lines[i + 1:]:
                if not more.strip() or more.startswith("  -"):  # the next option: continuations are indented more
                    break
                block.append(more)
            return " ".join(" ".join(block).split())
    raise AssertionError(f"{flag} not in:\n{help_text}")


@pytest.mark.parametrize("flag", ["--calibration", "--profile", "--targets", "--precisions", "--input-shape",
                                  "--allow-pickle", "--recipe", "--threads", "--devices-file", "--trust-new-host",
                                  "--out", "--json"])
def test_bench_and_deploy_show_the_same_help_for_a_shared_option(flag: str) -> None:
    from click.testing import CliRunner

    from edgekit.cli._main import cli

    helps = {cmd: CliRunner().invoke(cli, [cmd, "--help"], terminal_width=100).output for cmd in ("bench", "deploy")}
    assert _option_help(helps["bench"], flag) == _option_help(helps["deploy"], flag) != ""


def test_model_loading_options_read_the_same_in_every_command() -> None:
    from click.testing import CliRunner

    from edgekit.cli._main import cli

    commands = {"deploy": ["deploy"], "bench": ["bench"], "compress": ["compress"], "sensitivity": ["sensitivity"],
                "devices check": ["devices", "check"]}
    helps = {name: CliRunner().invoke(cli, [*argv, "--help"], terminal_width=100).output
             for name, argv in commands.items()}
    for flag, where in {"--model": ["deploy", "bench", "compress", "sensitivity"],
                        "--profile": list(commands), "--calibration": ["deploy", "bench", "compress", "sensitivity"],
                        "--input-shape": ["deploy", "bench", "compress", "sensitivity"],
                        "--devices-file": ["deploy", "bench", "compress", "devices check"]}.items():
        texts = {_option_help(helps[name], flag).replace("[required]", "").strip() for name in where}
        assert len(texts) == 1, (flag, texts)
