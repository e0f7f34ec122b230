"""``edgekit search`` with Optuna, the real toolchains and runtimes: on ``local`` and on a loopback sshd
device; resume after SIGKILL; invalid combinations; constraints nothing meets; a device lost mid-search."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import edgekit
from edgekit import BenchConfig
from edgekit.results.store import Run
from edgekit.testing import write_devices_file

QUICK = BenchConfig(warmup_iterations=2, warmup_seconds=0, min_iterations=10, min_seconds=0.05)
SPACE = {"targets": ["onnx", "tflite"], "precisions": ["fp32", "int8"], "prune": [0.0], "threads": [1]}


def _measured_keys(run_dir: Path) -> list[tuple[Any, ...]]:
    """(target, precision, prune, threads) of every trial that spent a measurement."""
    run = Run(run_dir)
    return [tuple(r["params"][k] for k in ("target", "precision", "prune", "qat", "keep_fp32", "threads"))
            for r in run.records("trial") if r["status"] == "measured"]


def test_a_search_on_local_finds_the_front_and_picks_under_the_constraint(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    result = edgekit.search("digits-cnn", "local", constraints=["accuracy_drop<=1"], trials=4, seed=0, space=SPACE,
                            config=QUICK, results=tmp_path, mlflow=uri)
    assert result.stopped is None
    assert len(result.trials) == 4 and set(result.trials["status"]) <= {"measured", "reused"}
    assert len(result.front) >= 1 and result.front["confirmed"].all()  # every member measured twice
    pick = result.pick
    assert pick is not None and pick["accuracy_drop"] <= 1
    assert pick["latency_ms_p50"] == result.front["latency_ms_p50"].min()  # first objective: latency
    assert "best latency_p50" in result.pick_reason
    assert (result.run_dir / "study.db").is_file()  # Optuna's own storage, in the run's folder
    rows = edgekit.load_run(result.run_id, tmp_path)  # the measurements, in the results store like bench's
    assert {"latency_ms_p50", "accuracy", "target", "precision"} <= set(rows.columns) and len(rows) >= 4
    assert len(set(_measured_keys(result.run_dir))) == len(_measured_keys(result.run_dir))  # none measured twice
    client = mlflow.tracking.MlflowClient(uri)
    (exp,) = [e for e in client.search_experiments() if e.name == "edgekit"]
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.tags["edgekit.run_id"] == result.run_id
    assert run.data.params["search.constraints"] == "accuracy_drop<=1"
    assert any(k.endswith("/latency_ms_p50") for k in run.data.metrics)


def test_combinations_the_space_cannot_build_are_skipped_with_the_reason_and_never_measured(tmp_path: Path) -> None:
    result = edgekit.search("digits-cnn", "local", trials=2, space={"targets": ["tflite"], "precisions": ["int4"],
                                                                      "prune": [0.0], "threads": [1]},
                            config=QUICK, results=tmp_path)
    assert list(result.trials["status"]) == ["skipped"]  # the one combination: not counted twice
    assert "int4 quantizes Linear layers" in result.trials["reason"].iloc[0]
    assert result.measurements == 0 and result.pick is None and result.front.empty


def test_qat_and_mixed_precision_are_dimensions_of_the_space(tmp_path: Path) -> None:
    space = {"targets": ["onnx"], "precisions": ["fp32", "int8"], "prune": [0.0], "qat": [False, True],
             "keep_fp32": [0, 1], "threads": [1], "finetune_epochs": 1}
    result = edgekit.search("digits-cnn", "local", trials=8, seed=1, space=space, config=QUICK, results=tmp_path,
                            confirm=False)
    by_status = result.trials.groupby("status")["trial"].count().to_dict()
    assert by_status == {"measured": 4, "skipped": 4}, result.trials[["precision", "qat", "keep_fp32", "status"]]
    reasons = set(result.trials.loc[result.trials["status"] == "skipped", "reason"])
    assert any("change int8 artifacts only" in r for r in reasons) and any("QAT with layers kept" in r for r in reasons)
    rows = edgekit.load_run(result.run_id, tmp_path)
    assert {"digits-cnn", "digits-cnn+qat", "digits-cnn+fp32x1"} <= set(rows["model"])  # a row key per variant


def test_a_constraint_nothing_meets_ends_with_the_closest_trials_and_their_miss(tmp_path: Path) -> None:
    result = edgekit.search("digits-cnn", "local", constraints=["p50_ms<=0.000001"], trials=2, space=SPACE,
                            config=QUICK, results=tmp_path, confirm=False)
    assert result.pick is None and "no measured trial meets p50_ms<=1e-06" in result.pick_reason
    assert len(result.closest) >= 1 and (result.closest["miss_p50_ms"] > 0).all()


_KILLABLE = """
import sys
import edgekit
from edgekit import BenchConfig
space = {"targets": ["onnx", "tflite"], "precisions": ["fp32", "int8"], "prune": [0.0], "threads": [1]}
edgekit.search("digits-cnn", "local", trials=4, seed=3, space=space, results=sys.argv[1],
               config=BenchConfig(warmup_iterations=2, warmup_seconds=0, min_iterations=10, min_seconds=0.05))
"""


def test_a_search_killed_midway_resumes_without_repeating_a_finished_trial(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE, str(tmp_path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 400
    run_dir = None
    while time.monotonic() < deadline and proc.poll() is None:
        runs = [p for p in tmp_path.iterdir() if (p / "journal.jsonl").is_file()]
        if runs and sum(1 for r in Run(runs[0]).records("trial") if r["status"] == "measured") >= 2:
            run_dir = runs[0]
            break
        time.sleep(0.2)
    assert run_dir is not None and proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = _measured_keys(run_dir)
    result = edgekit.search(None, resume=run_dir.name, results=tmp_path)
    after = _measured_keys(run_dir)
    assert after[: len(before)] == before  # the finished trials stand as they were
    assert len(set(after)) == len(after) == 4  # and none was measured again
    assert result.pick is not None and len(result.trials) == 4
    assert Run(run_dir).meta["status"] == "complete" and len(Run(run_dir).meta["resumed"]) == 1


def test_the_verb_is_not_shadowed_by_its_module() -> None:
    import edgekit.study  # noqa: F401  (the engine; no module is named like the verb)

    assert callable(edgekit.search) and edgekit.search.__module__ == "edgekit._api"


def test_bad_names_fail_listing_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(edgekit.errors.UnknownNameError, match="valid: accuracy, energy, fidelity, latency_p50"):
        edgekit.search("digits-cnn", objectives=["speed"], results=tmp_path)
    with pytest.raises(edgekit.errors.UnknownNameError, match="accuracy_drop, cosine"):
        edgekit.search("digits-cnn", constraints=["acc_drop<=1"], results=tmp_path)
    with pytest.raises(edgekit.errors.ConfigError, match="NAME<=VALUE"):
        edgekit.search("digits-cnn", constraints=["accuracy_drop=1"], results=tmp_path)
    bad = tmp_path / "space.yaml"
    bad.write_text("targets: [onnx]\nprecision: [int8]\n")
    with pytest.raises(edgekit.errors.ConfigError, match=r"space.yaml.*precision"):
        edgekit.search("digits-cnn", space=bad, results=tmp_path)
    with pytest.raises(edgekit.errors.UnknownNameError, match="unknown target 'onnxx'"):
        edgekit.search("digits-cnn", space={"targets": ["onnxx"]}, results=tmp_path)


@pytest.mark.ssh
def test_a_search_on_a_loopback_ssh_device_and_the_cli(sshd_device_factory, isolated_ssh_env,
                                                       tmp_path: Path) -> None:
    dev = sshd_device_factory("searchbox", env="host", profile="x86")
    devices = write_devices_file(tmp_path / "devices.yaml", [dev])
    space = tmp_path / "space.yaml"
    space.write_text("targets: [onnx]\nprecisions: [fp32, int8]\nprune: [0.0]\nthreads: [1]\n")
    res = subprocess.run([sys.executable, "-m", "edgekit", "search", "--model", "digits-cnn", "--device", "searchbox",
                          "--devices-file", str(devices), "--space", str(space), "--trials", "2",
                          "--constraint", "accuracy_drop<=1", "--min-seconds", "0.05", "--results",
                          str(tmp_path / "res"), "--confirm-on", "local", "--json"], capture_output=True, text=True,
                         timeout=900, env=dict(os.environ))
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    assert set(out) >= {"front", "pick", "run_id"} and out["pick"]["device"] == "searchbox"
    assert out["pick"]["target"] == "onnx" and out["pick"]["accuracy_drop"] <= 1
    assert all(r["latency_ms_p50@local"] > 0 for r in out["front"])  # --confirm-on: the front, measured there too
    shipped = subprocess.run([sys.executable, "-m", "edgekit", "deploy", "--from-search", out["run_id"], "--device",
                              "searchbox", "--devices-file", str(devices), "--results", str(tmp_path / "res"),
                              "--min-seconds", "0.05", "--json"], capture_output=True, text=True, timeout=600)
    assert shipped.returncode == 0, shipped.stderr[-3000:]
    (row,) = json.loads(shipped.stdout)
    assert (row["target"], row["precision"], row["device"]) == ("onnx", out["pick"]["precision"], "searchbox")
    assert row["error"] is None and row["latency_ms_p50"] > 0
    report = tmp_path / "report.html"
    rep = subprocess.run([sys.executable, "-m", "edgekit", "report", out["run_id"], "-o", str(report), "--results",
                          str(tmp_path / "res")], capture_output=True, text=True, timeout=300)
    assert rep.returncode == 0, rep.stderr[-2000:]
    assert 'data-plot="search"' in report.read_text()  # all trials and the front, in the page


@pytest.mark.ssh
def test_a_device_lost_mid_search_ends_it_with_what_was_measured_then_it_resumes(
        sshd_device_factory, isolated_ssh_env, tmp_path: Path) -> None:
    dev = sshd_device_factory("flaky", env="host", profile="x86")
    devices = write_devices_file(tmp_path / "devices.yaml", [dev])
    state = {"measured": 0}

    def progress(msg: str) -> None:
        if "measuring on flaky" in msg:
            state["measured"] += 1
            if state["measured"] == 2:
                dev.stop()  # the device goes away before the second measurement

    result = edgekit.search("digits-cnn", "flaky", trials=3, space=SPACE, config=QUICK, results=tmp_path,
                            devices_file=devices, on_progress=progress)
    assert result.stopped is not None and "flaky" in result.stopped
    assert result.measurements == 1 and Run(result.run_dir).meta["status"] == "stopped"
    kept = _measured_keys(result.run_dir)
    assert len(kept) == 1
    dev2 = sshd_device_factory("flaky", env="host", profile="x86")  # back (a new port: a new registry entry)
    devices = write_devices_file(tmp_path / "devices.yaml", [dev2])
    resumed = edgekit.search(None, resume=result.run_id, results=tmp_path, devices_file=devices)
    assert resumed.stopped is None and _measured_keys(result.run_dir)[:1] == kept
    assert len(resumed.trials) == 3 and resumed.pick is not None
    assert isinstance(resumed.front, pd.DataFrame)
