"""Fleet runs against real OpenSSH sshd test devices on loopback: concurrency, failures kept apart, the
journal after a host crash, ``--resume``, the results store, compare, the report and MLflow.

Faults are real: a refused port is a stopped sshd, a silent host is a socket that accepts and never speaks,
and "agent killed" / "agent hangs" are the device's python wrapped by a shell script that SIGKILLs the agent
run (as the OOM killer would) or sleeps instead of running it. That wrapper is fault injection, labelled so.
"""

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
from edgekit.results.store import Run
from edgekit.fleet import select_devices
from edgekit.testing import write_devices_file
from edgekit.testing._faults import SilentHost, fault_python

pytestmark = [pytest.mark.ssh, pytest.mark.slow]

QUICK = edgekit.BenchConfig(warmup_iterations=2, warmup_seconds=0, min_iterations=10, min_seconds=0.05, threads=1,
                            energy=False)
FAST_RETRY = edgekit.FleetConfig(parallel=3, retries=1, backoff_s=0.2, device_timeout=300)
EDGEKIT = [str(Path(sys.executable).with_name("edgekit"))]
TARGETS = ["onnx", "tflite"]


def _journal(run_dir: Path, kind: str = "row") -> list[dict[str, Any]]:
    return list(Run(run_dir).records(kind))


def _rows_of(df: pd.DataFrame, device: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["target"], r["precision"]): r for r in df[df["device"] == device].to_dict(orient="records")}


@pytest.fixture
def fleet(sshd_device_factory, isolated_ssh_env, tmp_path: Path):
    """Four real sshd devices plus one whose sshd is gone; the devices.yaml naming all five."""
    host = sys.executable
    a = sshd_device_factory("x86-a", env="host", profile="x86", tags=["lab"])
    b = sshd_device_factory("x86-b", env="host", profile="x86", tags=["lab"])
    onnx = sshd_device_factory("onnx-only", env="onnx-only", profile="x86")
    killer = sshd_device_factory("killer", python=fault_python(tmp_path / "killer-python", host, kill_after=0.5),
                                 profile="x86")
    gone = sshd_device_factory("gone", env="host", profile="x86")
    gone_entry = gone.entry()
    gone.stop()  # its port now refuses: an unreachable device
    devices = [a, b, onnx, killer, gone_entry]
    return write_devices_file(tmp_path / "devices.yaml", devices), devices


def test_a_fleet_keeps_every_device_apart_and_stores_every_row(fleet, tmp_path: Path) -> None:
    devices_file, devices = fleet
    events: list[tuple[str | None, str, str]] = []
    cfg = edgekit.BenchConfig(warmup_iterations=2, warmup_seconds=0, min_iterations=10, min_seconds=1.0, threads=1,
                              energy=False)
    result = edgekit.bench("digits-cnn", ["x86-a", "x86-b", "onnx-only", "killer", "gone"], targets=TARGETS,
                           config=cfg, fleet=FAST_RETRY, devices_file=devices_file, results=tmp_path / "runs",
                           on_progress=lambda *e: events.append(e))
    df = result.df

    # the unreachable device is a failed row with stage and cause, retried once, and hides nothing
    assert set(result.failed) == {"gone"} and set(result.succeeded) == {"x86-a", "x86-b", "onnx-only", "killer"}
    gone = result.failed["gone"]
    assert gone.stage == "connect" and "connection refused" in gone.error and gone.attempts == 2
    gone_rows = df[df["device"] == "gone"]
    assert len(gone_rows) == 1 and gone_rows.iloc[0]["stage"] == "connect"
    assert "connection refused" in gone_rows.iloc[0]["error"] and "after 2 tries" in gone_rows.iloc[0]["error"]
    assert [e for e in events if e[0] == "gone" and e[1] == "retrying"], "no retry was reported"

    for name in ("x86-a", "x86-b"):
        rows = _rows_of(df, name)
        assert set(rows) == {(t, p) for t in TARGETS for p in ("fp32", "int8")}
        assert all(r["error"] is None and r["latency_ms_p50"] > 0 and r["stage"] == "done" for r in rows.values())
    rows = _rows_of(df, "onnx-only")  # different runtimes: onnx measured, tflite a runtime row
    assert rows[("onnx", "fp32")]["latency_ms_p50"] > 0 and rows[("onnx", "int8")]["latency_ms_p50"] > 0
    assert rows[("tflite", "fp32")]["stage"] == "runtime" and "runtime missing" in rows[("tflite", "fp32")]["error"]
    rows = _rows_of(df, "killer")  # its first agent run was SIGKILLed: that row, and only that one, failed
    failed = [r for r in rows.values() if r["error"]]
    assert len(failed) == 1 and "killed" in failed[0]["error"] and failed[0]["stage"] == "measure"
    assert sum(r["latency_ms_p50"] > 0 for r in rows.values() if not r["error"]) == 3

    # artifacts were built once for the one profile, not once per device
    run_dir = result.run_dir
    assert len(_journal(run_dir, "artifacts")) == 1
    assert sorted(p.name for p in (run_dir / "artifacts").iterdir()) == ["x86"]
    # every row reached the journal, the parquet and load_run alike; device facts came from the agent
    assert len(_journal(run_dir)) == len(df) == 4 + 4 + 4 + 4 + 1
    stored = edgekit.load_run(result.run_id, tmp_path / "runs")
    assert len(stored) == len(df) and set(stored["device"]) == set(df["device"])
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "complete" and meta["model"] == "digits-cnn" and meta["ended"]
    assert set(meta["devices"]) == {"x86-a", "x86-b", "onnx-only", "killer"}
    assert meta["devices"]["onnx-only"]["runtimes"]["onnx"]["package"] == "onnxruntime"
    assert meta["profiles"]["x86"]["sha256"] and meta["edgekit_version"] == edgekit.__version__


def test_devices_by_tag_and_a_silent_host_within_its_timeout(sshd_device_factory, isolated_ssh_env,
                                                            tmp_path: Path) -> None:
    a = sshd_device_factory("x86-a", env="host", profile="x86", tags=["lab"])
    hang = sshd_device_factory("hang", python=fault_python(tmp_path / "hang-python", sys.executable, hang=True),
                               profile="x86", tags=["lab"])
    silent = SilentHost()
    try:
        entry = {**a.entry(), "name": "silent", "port": silent.port, "connect_timeout": 2, "tags": ["lab"]}
        devices_file = write_devices_file(tmp_path / "devices.yaml", [a, hang, entry])
        start = time.monotonic()
        result = edgekit.bench("digits-cnn", tags=["lab"], targets=["onnx"], precisions=["fp32"], config=QUICK,
                               fleet=edgekit.FleetConfig(parallel=3, retries=1, backoff_s=0.2, device_timeout=20,
                                                         grace_s=5),
                               devices_file=devices_file, results=tmp_path / "runs")
        took = time.monotonic() - start
    finally:
        silent.close()
    assert set(result) == {"x86-a", "hang", "silent"}
    assert result["x86-a"].ok and result.df[result.df["device"] == "x86-a"].iloc[0]["latency_ms_p50"] > 0
    assert result["silent"].stage == "connect" and result["silent"].attempts == 2
    assert "SSH handshake" in result["silent"].error or "no answer" in result["silent"].error
    hung = result.df[result.df["device"] == "hang"].iloc[0]
    assert hung["error"] and ("timed out" in hung["error"] or "device_timeout" in hung["error"])
    assert took < 20 + 5 + 60, f"the fleet took {took:.0f} s: a hung device held it up"


def _wait_for(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _start_cli(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*EDGEKIT, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_an_interrupted_run_keeps_its_rows_and_resume_measures_only_what_is_missing(
        sshd_device_factory, isolated_ssh_env, tmp_path: Path, how: str) -> None:
    devs = [sshd_device_factory(f"d{i}", env="host", profile="x86") for i in range(3)]
    devices_file = write_devices_file(tmp_path / "devices.yaml", devs)
    runs = tmp_path / "runs"
    env = {**os.environ, "EDGEKIT_RESULTS": str(runs), "EDGEKIT_DEVICES": str(devices_file)}
    args = ["bench", "--model", "digits-cnn", "--devices", "d0,d1,d2", "--targets", "onnx", "--parallel", "1",
            "--threads", "1", "--min-iterations", "10", "--min-seconds", "1", "--warmup-iterations", "1",
            "--no-energy"]
    proc = _start_cli(args, env)
    try:
        def first_device_done() -> bool:
            run_dirs = list(runs.glob("*/journal.jsonl")) if runs.is_dir() else []
            return bool(run_dirs) and len([r for r in _journal(run_dirs[0].parent)]) >= 2
        _wait_for(first_device_done, 240, "the first device's rows in the journal")
        os.killpg(proc.pid, signal.SIGKILL if how == "SIGKILL" else signal.SIGINT)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    (run_dir,) = [p.parent for p in runs.glob("*/meta.json")]
    before = _journal(run_dir)
    meta = json.loads((run_dir / "meta.json").read_text())
    if how == "SIGINT":
        assert code == 130, proc.stderr.read().decode()[-2000:] if proc.stderr else code
        assert meta["status"] == "interrupted" and (run_dir / "rows.parquet").is_file()
    else:
        assert code == -signal.SIGKILL and meta["status"] == "running"  # a crash: nothing finalized
    assert not list(run_dir.glob(".*.tmp")), "a temporary file was left under the run"
    kept = edgekit.load_run(run_dir.name, runs)  # from the journal, or the parquet written on SIGINT
    done_before = {(r["row"]["device"], r["row"]["precision"]) for r in before if r["row"].get("stage") == "done"}
    assert len(done_before) >= 2 and {("d0", "fp32"), ("d0", "int8")} <= done_before
    assert {(r["device"], r["precision"]) for r in kept.to_dict(orient="records") if r["stage"] == "done"} >= done_before

    res = subprocess.run([*EDGEKIT, "bench", "--resume", run_dir.name], env=env, capture_output=True, timeout=600)
    assert res.returncode == 0, res.stderr.decode()[-3000:]
    after = _journal(run_dir)
    df = edgekit.load_run(run_dir.name, runs)
    keys = list(zip(df["device"], df["target"], df["precision"], df["threads"]))
    assert len(keys) == len(set(keys)) == 6, keys  # none lost, none duplicated
    assert (df["stage"] == "done").all() and (df["latency_ms_p50"] > 0).all()
    # what was measured before the interruption was not measured again
    measured_again = [r for r in after[len(before):] if (r["row"]["device"], r["row"]["precision"]) in done_before]
    assert not measured_again
    d0_then = {r["row"]["precision"]: r["row"]["latency_ms_p50"] for r in before if r["row"]["device"] == "d0"}
    d0_now = dict(zip(df[df["device"] == "d0"]["precision"], df[df["device"] == "d0"]["latency_ms_p50"]))
    assert d0_now == d0_then
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "complete" and len(meta["resumed"]) == 1
    assert len(_journal(run_dir, "artifacts")) == 1, "resume exported again instead of reusing the run's artifacts"


def test_results_list_show_compare_and_report_from_the_cli(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    env = {**os.environ, "EDGEKIT_RESULTS": str(runs)}
    bench = ["bench", "--model", "digits-cnn", "--devices", "local", "--targets", "onnx", "--threads", "1",
             "--min-iterations", "30", "--min-seconds", "0.3", "--warmup-iterations", "2", "--no-energy"]
    first = subprocess.run([*EDGEKIT, *bench], env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    second = subprocess.run([*EDGEKIT, *bench, "--report", str(tmp_path / "r.html")], env=env,
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    listed = json.loads(subprocess.run([*EDGEKIT, "results", "list", "--json"], env=env, capture_output=True,
                                       text=True, check=True).stdout)
    assert len(listed) == 2 and all(r["status"] == "complete" and r["rows"] == 2 for r in listed)
    new, old = listed[0]["run_id"], listed[1]["run_id"]
    shown = subprocess.run([*EDGEKIT, "results", "show", new, "--json"], env=env, capture_output=True, text=True,
                           check=True)
    assert {r["precision"] for r in json.loads(shown.stdout)} == {"fp32", "int8"}
    cmp = subprocess.run([*EDGEKIT, "results", "compare", old, new, "--json"], env=env, capture_output=True,
                         text=True, check=True)
    rows = json.loads(cmp.stdout)
    lat = [r for r in rows if r["metric"] == "latency_ms_p50"]
    assert len(lat) == 2 and all(r["uncertainty"] > 0 for r in lat)
    for r in lat:  # the verdict follows from the figures it prints
        expected = ("regression" if r["delta"] > r["uncertainty"] else
                    "improvement" if -r["delta"] > r["uncertainty"] else "within noise")
        assert r["verdict"] == expected
    acc = [r for r in rows if r["metric"] == "device_accuracy"]
    assert acc and all(r["verdict"] == "within noise" for r in acc if r["delta"] == 0)
    out = subprocess.run([*EDGEKIT, "report", new, "-o", str(tmp_path / "report.html")], env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    html = (tmp_path / "report.html").read_text()
    assert new in html and "data:image/png;base64," in html and (tmp_path / "r.html").is_file()
    missing = subprocess.run([*EDGEKIT, "results", "show", "no-such-run"], env=env, capture_output=True, text=True)
    assert missing.returncode == 2 and "unknown run 'no-such-run'" in missing.stderr and new in missing.stderr


def test_bench_logs_to_a_real_mlflow_file_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this opt-in
    uri = (tmp_path / "mlruns").as_uri()
    result = edgekit.bench("digits-cnn", ["local"], targets=["onnx"], precisions=["fp32"], config=QUICK,
                           results=tmp_path / "runs", mlflow=uri)
    client = mlflow.tracking.MlflowClient(uri)
    (exp,) = [e for e in client.search_experiments() if e.name == "edgekit"]
    (run,) = client.search_runs([exp.experiment_id])
    row = result.df.iloc[0]
    assert run.data.params["model"] == "digits-cnn" and run.data.tags["edgekit.run_id"] == result.run_id
    assert run.data.metrics["local/onnx/fp32/t1/latency_ms_p50"] == pytest.approx(row["latency_ms_p50"])
    assert run.data.metrics["local/onnx/fp32/t1/device_accuracy"] == pytest.approx(row["device_accuracy"])
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.html", "rows.parquet", "meta.json"} <= names


@pytest.mark.arm64
def test_a_mixed_arm64_and_x86_fleet_builds_one_artifact_set_per_profile(
        arm64_device_factory, sshd_device_factory, isolated_ssh_env, tmp_path: Path) -> None:
    pi = arm64_device_factory("pi", profile="pi4")
    x86 = sshd_device_factory("x86", env="host", profile="x86")
    devices_file = write_devices_file(tmp_path / "devices.yaml", [pi, x86])
    result = edgekit.bench("digits-cnn", ["pi", "x86"], targets=["tflite", "onnx"], precisions=["fp32"],
                           config=QUICK, devices_file=devices_file, results=tmp_path / "runs")
    assert not result.failed, {k: v.error for k, v in result.failed.items()}
    df = result.df
    assert sorted(r["profile"] for r in _journal(result.run_dir, "artifacts")) == ["pi4", "x86"]
    pi_rows, x86_rows = df[df["device"] == "pi"], df[df["device"] == "x86"]
    assert set(pi_rows["profile"]) == {"pi4"} and set(x86_rows["profile"]) == {"x86"}
    assert pi_rows["emulated"].all() and not x86_rows["emulated"].any()
    assert (pi_rows["latency_ms_p50"] > 0).all() and (x86_rows["latency_ms_p50"] > 0).all()
    facts = json.loads((result.run_dir / "meta.json").read_text())["devices"]
    assert facts["pi"]["machine"] == "aarch64" and facts["x86"]["machine"] == "x86_64"


def test_unknown_devices_tags_and_no_choice_are_clear_errors(tmp_path: Path) -> None:
    devices_file = write_devices_file(tmp_path / "devices.yaml", [
        {"name": "pi-kitchen", "kind": "ssh", "host": "127.0.0.1", "tags": ["arm64"]}])
    with pytest.raises(edgekit.errors.UnknownNameError, match=r"unknown device 'pi-kitchn'.*did you mean 'pi-kitchen'"):
        edgekit.bench("digits-cnn", ["pi-kitchn"], devices_file=devices_file, results=tmp_path)
    with pytest.raises(edgekit.errors.ConfigError, match=r"no device has tag 'x86'; tags in use: arm64"):
        edgekit.bench("digits-cnn", tags=["x86"], devices_file=devices_file, results=tmp_path)
    with pytest.raises(edgekit.errors.ConfigError, match=r"no devices chosen"):
        edgekit.bench("digits-cnn", devices_file=devices_file, results=tmp_path)
    assert [d.name for d in select_devices(all_devices=True, devices_file=devices_file)] == ["pi-kitchen"]
    assert not list(tmp_path.glob("*/meta.json")), "a run folder was made for a request that was refused"
