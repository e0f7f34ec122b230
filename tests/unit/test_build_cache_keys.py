"""Build-cache keys (what changes one and what does not), eviction, and ``edgekit cache``; no toolchain runs."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

import edgekit
from edgekit.cli._main import cli
from edgekit.exporters import Artifact, BuildCache, ParityResult
from edgekit.exporters.cache import artifact_keys


@pytest.fixture(scope="module")
def digits() -> Any:
    return edgekit.compress("digits-cnn", "x86")


def _keys(cm: Any, precisions: tuple[str, ...] = ("fp32", "int8")) -> dict[tuple[str, str], str | None]:
    targets = [edgekit.load_target("executorch"), edgekit.load_target("onnx")]
    return artifact_keys(cm, [(t, p) for t in targets for p in precisions], check=True)


def test_keys_differ_by_target_and_precision_and_are_stable(digits: Any) -> None:
    keys = _keys(digits)
    assert len(set(keys.values())) == 4 and None not in keys.values()
    assert _keys(digits) == keys


def test_a_changed_weight_changes_every_key(digits: Any) -> None:
    changed = copy.copy(digits)
    changed.spec = copy.copy(digits.spec)
    changed.spec.module = copy.deepcopy(digits.spec.module)
    with torch.no_grad():
        next(changed.spec.module.parameters()).view(-1)[0] += 1e-3
    assert not set(_keys(changed).values()) & set(_keys(digits).values())


def test_fp32_keys_ignore_the_profile_but_quantized_keys_follow_its_scheme(digits: Any) -> None:
    pi4 = edgekit.compress("digits-cnn", "pi4")
    a, b = _keys(digits), _keys(pi4)
    assert a[("onnx", "fp32")] == b[("onnx", "fp32")]
    assert a[("onnx", "int8")] != b[("onnx", "int8")]
    threads = copy.copy(digits)
    threads.profile = digits.profile.model_copy(update={"threads": 3})
    assert _keys(threads) == a  # threads shape the measurement, not the artifact


def test_mixed_precision_layers_change_only_quantized_keys(digits: Any) -> None:
    mixed = copy.copy(digits)
    mixed.fp32_layers = ["features.0"]
    a, b = _keys(digits), _keys(mixed)
    assert a[("onnx", "fp32")] == b[("onnx", "fp32")] and a[("onnx", "int8")] != b[("onnx", "int8")]


def _fake_artifact(folder: Path, name: str, size: int) -> Artifact:
    folder.mkdir(parents=True)
    path = folder / "model.onnx"
    path.write_bytes(os.urandom(size))
    return Artifact(model=name, profile="x86", target="onnx", format="onnx", precision="fp32", threads=1, path=path,
                    files=[path], bytes=size, parity=ParityResult(1, 0.0, 1.0, 1.0, True), accuracy=0.9)


def test_least_recently_used_entries_are_evicted_past_the_limit(tmp_path: Path) -> None:
    store = BuildCache(tmp_path / "cache", max_bytes=4000)  # two entries fit (1000 B + entry.json each), not three
    for i, key in enumerate(["a" * 64, "b" * 64]):
        assert store.store(key, _fake_artifact(tmp_path / f"art-{key[:1]}", f"m{i}", 1000)) is None
        os.utime(store.entries_dir / key / "entry.json", (i, i))  # a used long ago, b after it
    assert store.lookup("a" * 64)[0] is not None  # a is used now: b is the least recently used
    assert store.store("c" * 64, _fake_artifact(tmp_path / "art-c", "m2", 1000)) is None
    assert sorted(e.key[0] for e in store.entries()) == ["a", "c"]


def test_an_entry_with_a_missing_file_is_dropped(tmp_path: Path) -> None:
    store = BuildCache(tmp_path / "c")
    store.store("d" * 64, _fake_artifact(tmp_path / "d", "m", 10))
    (store.entries_dir / ("d" * 64) / "model.onnx").unlink()
    record, why = store.lookup("d" * 64)
    assert record is None and why is not None and "missing" in why
    assert store.entries() == []


def test_cache_commands_list_du_and_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEKIT_BUILD_CACHE", str(tmp_path / "c"))
    BuildCache().store("e" * 64, _fake_artifact(tmp_path / "e", "my-model", 2048))
    runner = CliRunner()
    listed = runner.invoke(cli, ["cache", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    (row,) = json.loads(listed.output)
    assert row["model"] == "my-model" and row["bytes"] > 2048
    du = runner.invoke(cli, ["cache", "du", "--json"])
    assert json.loads(du.output)["entries"] == 1
    cleared = runner.invoke(cli, ["cache", "clear"])
    assert cleared.exit_code == 0 and "removed 1" in cleared.output
    assert BuildCache().entries() == []
