"""The results store: the journal survives a crash, later rows replace earlier ones, files are never half-written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

import edgekit
from edgekit.results.store import Run, list_runs, load_run
from edgekit.errors import ConfigError, UnknownNameError


def _row(device: str, precision: str = "fp32", p50: float | None = 1.0, stage: str = "done", **kw: object) -> dict:
    return {"device": device, "model": "m", "target": "onnx" if precision else None, "precision": precision,
            "threads": 1 if precision else None, "latency_ms_p50": p50, "stage": stage,
            "error": None if stage == "done" else f"{stage} failed", **kw}


def test_a_journal_line_cut_short_by_a_crash_is_skipped_and_the_rest_kept(tmp_path: Path) -> None:
    run = Run.create(tmp_path, {"model": "m"})
    run.append("row", row=_row("a", "fp32"))
    run.append("row", row=_row("a", "int8"))
    with open(run.root / "journal.jsonl", "a") as f:
        f.write('{"kind": "row", "row": {"device": "b", "mod')  # the host died mid-write
    df = load_run(run.id, tmp_path)  # status is still "running": rebuilt from the journal
    assert sorted(df["precision"]) == ["fp32", "int8"] and set(df["device"]) == {"a"}


def test_a_later_row_replaces_an_earlier_one_and_a_device_failure_only_while_it_is_the_latest(tmp_path: Path) -> None:
    run = Run.create(tmp_path, {"model": "m"})
    run.append("row", row=_row("a", "fp32", p50=None, stage="measure"))
    run.append("row", row=_row("b", None, p50=None, stage="connect"))  # device-level failure
    run.append("row", row=_row("c", None, p50=None, stage="connect"))
    run.append("row", row=_row("a", "fp32", p50=2.0))  # retried: replaces the failed one
    run.append("row", row=_row("b", "fp32", p50=3.0))  # resumed: the device's failure row goes
    df = run.finalize("complete")
    got = {(r["device"], r["precision"]): (r["stage"], None if pd.isna(r["latency_ms_p50"]) else r["latency_ms_p50"])
           for r in df.to_dict(orient="records")}
    assert got == {("a", "fp32"): ("done", 2.0), ("b", "fp32"): ("done", 3.0), ("c", None): ("connect", None)}
    meta = run.meta
    assert meta["status"] == "complete" and meta["rows"] == 3 and meta["failed_rows"] == 1
    again = load_run(run.id, tmp_path)  # now from rows.parquet
    assert len(again) == 3 and list(again.columns) == list(df.columns)


def test_rows_with_nested_values_round_trip_through_parquet(tmp_path: Path) -> None:
    run = Run.create(tmp_path, {"model": "m"})
    prof = {"status": "measured", "ops": [{"name": "conv", "time_ms": 0.1}], "method": "tflite"}
    run.append("row", row=_row("a", latency_ms_samples=[0.9, 1.0, 1.1], op_profile=prof, noisy_reasons=["load"]))
    run.finalize("complete")
    r = load_run(run.id, tmp_path).iloc[0]
    assert r["latency_ms_samples"] == [0.9, 1.0, 1.1] and r["op_profile"] == prof and r["noisy_reasons"] == ["load"]
    assert not [p for p in run.root.iterdir() if p.name.endswith(".tmp")]


def test_a_failed_parquet_write_leaves_the_previous_file_whole(tmp_path: Path, monkeypatch) -> None:
    run = Run.create(tmp_path, {"model": "m"})
    run.append("row", row=_row("a"))
    run.finalize("complete")
    before = (run.root / "rows.parquet").read_bytes()
    run.append("row", row=_row("a", "int8"))

    def crash(self, path, *a, **kw):  # the disk fills up half-way through the write
        Path(path).write_bytes(b"PAR1 half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("pandas.DataFrame.to_parquet", crash)
    with pytest.raises(OSError):
        run.finalize("complete")
    assert (run.root / "rows.parquet").read_bytes() == before
    assert not [p for p in run.root.iterdir() if p.name.endswith(".tmp")]


def test_list_runs_newest_first_and_unknown_runs_are_named(tmp_path: Path) -> None:
    first = Run.create(tmp_path, {"model": "a", "request": {"devices": ["x", "y"]}})
    os.rename(first.root, tmp_path / "20000101-000000-aaaaaa")  # an older run
    Run.create(tmp_path, {"model": "b", "request": {"devices": ["x"]}})
    runs = list_runs(tmp_path)
    assert list(runs["model"]) == ["b", "a"] and list(runs["devices"]) == [1, 2]
    with pytest.raises(UnknownNameError, match=r"unknown run 'nope'.*20000101-000000-aaaaaa"):
        edgekit.load_run("nope", tmp_path)


def test_unreadable_metadata_names_the_file(tmp_path: Path) -> None:
    run = Run.create(tmp_path, {"model": "m"})
    (run.root / "meta.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"meta.json: unreadable run metadata"):
        run.meta
    assert "unreadable" in list_runs(tmp_path).iloc[0]["status"]


def test_meta_is_replaced_whole(tmp_path: Path) -> None:
    run = Run.create(tmp_path, {"model": "m"})
    run.update_meta(status="complete", note="x" * 100_000)
    assert json.loads((run.root / "meta.json").read_text())["note"] == "x" * 100_000


def test_fleet_config_is_validated_on_construction() -> None:
    with pytest.raises(ConfigError, match="field 'parallel': must be an integer >= 1"):
        edgekit.FleetConfig(parallel=0)
    with pytest.raises(ConfigError, match="field 'device_timeout'"):
        edgekit.FleetConfig(device_timeout=0)
    cfg = edgekit.FleetConfig(backoff_s=1, backoff_max_s=5)
    waits = [cfg.backoff(n) for n in (1, 2, 3, 4, 5)]
    assert 0.75 <= waits[0] <= 1.25 and 1.5 <= waits[1] <= 2.5 and all(w <= 5 * 1.25 for w in waits)
