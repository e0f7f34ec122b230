"""The build cache with the real toolchains (ExecuTorch, onnxruntime) on digits-cnn: hit, miss, partial
rebuild, a corrupted entry, two processes building one key, a build killed mid-way, a full disk."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import edgekit
from edgekit import BuildCache, BuildProgress
from edgekit._fs import sha256_file


@pytest.fixture(scope="module")
def digits() -> Any:
    return edgekit.compress("digits-cnn", "x86")


def _by_key(arts: list[Any]) -> dict[tuple[str, str], Any]:
    return {(a.target, a.precision): a for a in arts}


def test_a_second_build_is_a_hit_that_runs_no_toolchain(digits: Any, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    store = BuildCache(tmp_path / "cache")
    first = edgekit.export(digits, ["executorch", "onnx"], tmp_path / "a", cache=store)
    assert all(a.ok and not a.cache_hit for a in first), [a.error for a in first]
    assert all(a.export_seconds and a.check_seconds is not None for a in first)
    assert len(store.entries()) == 4

    def no_toolchain(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a cache hit ran a toolchain")

    monkeypatch.setattr("edgekit.exporters.export_one", no_toolchain)
    monkeypatch.setattr("edgekit.exporters._parallel.export_parallel", no_toolchain)
    events: list[BuildProgress] = []
    second = edgekit.export(digits, ["executorch", "onnx"], tmp_path / "b", cache=store, on_progress=events.append)
    assert [e.stage for e in events] == ["cached"] * 4
    for key, a in _by_key(first).items():
        b = _by_key(second)[key]
        assert b.ok and b.cache_hit and b.check_seconds is None
        assert b.parity == a.parity and b.accuracy == a.accuracy and b.bytes == a.bytes
        assert b.path is not None and a.path is not None and tmp_path / "b" in b.path.parents
        assert sha256_file(b.path) == sha256_file(a.path)


def test_no_cache_rebuilds_and_stores_nothing(digits: Any, tmp_path: Path) -> None:
    store = BuildCache(tmp_path / "cache")
    edgekit.export(digits, ["onnx"], tmp_path / "a", precisions=["fp32"], cache=store)
    arts = edgekit.export(digits, ["onnx"], tmp_path / "b", precisions=["fp32"], cache=False)
    assert arts[0].ok and not arts[0].cache_hit
    assert len(store.entries()) == 1


def test_one_changed_input_rebuilds_only_the_artifacts_whose_key_changed(digits: Any, tmp_path: Path) -> None:
    store = BuildCache(tmp_path / "cache")
    edgekit.export(digits, ["onnx"], tmp_path / "a", precisions=["fp32"], cache=store)
    more = _by_key(edgekit.export(digits, ["onnx"], tmp_path / "b", precisions=["fp32", "int8"], cache=store))
    assert more[("onnx", "fp32")].cache_hit and not more[("onnx", "int8")].cache_hit
    # x86 -> pi4: the fp32 graph is the same bytes; pi4's int8 scheme (int8 activations) is not x86's (uint8)
    pi4 = _by_key(edgekit.export(edgekit.compress("digits-cnn", "pi4"), ["onnx"], tmp_path / "c",
                                 precisions=["fp32", "int8"], cache=store))
    assert pi4[("onnx", "fp32")].cache_hit and pi4[("onnx", "fp32")].profile == "pi4"
    assert not pi4[("onnx", "int8")].cache_hit and pi4[("onnx", "int8")].ok
    assert len(store.entries()) == 3


def test_a_corrupted_entry_is_removed_and_rebuilt_never_shipped(digits: Any, tmp_path: Path) -> None:
    store = BuildCache(tmp_path / "cache")
    (built,) = edgekit.export(digits, ["onnx"], tmp_path / "a", precisions=["fp32"], cache=store)
    (entry,) = store.entries()
    damaged = entry.path / "model.onnx"
    stat = damaged.stat()
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte, same size, same mtime: only the hash can tell
    damaged.write_bytes(bytes(data))
    os.utime(damaged, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    messages: list[str] = []
    (again,) = edgekit.export(digits, ["onnx"], tmp_path / "b", precisions=["fp32"], cache=store,
                              on_event=messages.append)
    assert not again.cache_hit and again.ok
    assert any("changed on disk" in m and "rebuilding" in m for m in messages), messages
    assert again.path is not None and built.path is not None
    assert again.path.read_bytes() != bytes(data)  # the damaged bytes were not shipped
    (fresh,) = store.entries()
    record, damage = store.lookup(fresh.key)
    assert record is not None and damage is None  # the rebuilt entry verifies


_BUILD = """
import json, sys
import edgekit
cm = edgekit.compress("digits-cnn", "x86")
events = []
arts = edgekit.export(cm, ["executorch"], sys.argv[1], precisions=["fp32"], jobs=1,
                      on_progress=lambda e: events.append(e.stage))
print(json.dumps([{"hit": a.cache_hit, "ok": a.ok, "path": str(a.path), "stages": events} for a in arts]))
"""


def _builder(out: Path, cache: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, EDGEKIT_BUILD_CACHE=str(cache))
    return subprocess.Popen([sys.executable, "-c", _BUILD, str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def test_two_processes_building_one_key_build_it_once(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    procs = [_builder(tmp_path / f"out{i}", cache) for i in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1])[0])
    assert all(r["ok"] for r in results)
    assert sorted(r["hit"] for r in results) == [False, True], results  # one built, the other re-used
    assert sha256_file(Path(results[0]["path"])) == sha256_file(Path(results[1]["path"]))
    assert len(BuildCache(cache).entries()) == 1


def test_a_build_killed_midway_leaves_nothing_taken_for_done(tmp_path: Path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "out"
    proc = _builder(out, cache)
    deadline = time.monotonic() + 300
    log = out / "digits-cnn" / "x86" / "executorch-fp32.export.log"
    while not log.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # inside the toolchain
    assert proc.poll() is None, "the build ended before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    store = BuildCache(cache)
    assert store.entries() == []
    assert not (out / "digits-cnn" / "x86" / "executorch-fp32").exists()  # only a hidden temp folder, if any
    # A later build takes the key's lock (the kernel freed the killed one's), builds it, and is not fooled.
    cm = edgekit.compress("digits-cnn", "x86")
    (art,) = edgekit.export(cm, ["executorch"], out, precisions=["fp32"], jobs=1, cache=store)
    assert art.ok and not art.cache_hit
    assert len(store.entries()) == 1 and list(store.tmp_dir.iterdir()) == []


def test_a_full_disk_leaves_no_partial_entry_and_says_so(digits: Any, tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs as the full disk needs root (CI runs as root)")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], check=True)
    try:
        store = BuildCache(small / "cache")
        messages: list[str] = []
        (art,) = edgekit.export(digits, ["onnx"], tmp_path / "out", precisions=["fp32"], cache=store,
                                on_event=messages.append)
        assert art.ok and not art.cache_hit  # the artifact itself (outside the cache) is fine
        assert any("not stored in the build cache" in m and "No space left" in m for m in messages), messages
        assert store.entries() == []
        assert list(store.tmp_dir.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=False)


_ONE = """
import sys
import edgekit
from edgekit._fs import sha256_file
from edgekit.compression import _observers
restored = []
real_restore = _observers.restore
_observers.restore = lambda prepared, key: restored.append(real_restore(prepared, key)) or restored[-1]
cm = edgekit.compress("digits-cnn", "x86")
arts = edgekit.export(cm, sys.argv[2].split(","), sys.argv[1], precisions=["int8"], jobs=1, cache=False)
print(" ".join(f"{a.target}={sha256_file(a.path)}" for a in arts), f"restored={sum(restored)}")
"""


def test_a_shared_calibration_builds_the_same_bytes_as_its_own(tmp_path: Path) -> None:
    """LiteRT int8 then ExecuTorch int8 in one process: ExecuTorch's observers are re-used from LiteRT's
    calibration (no sample is run again), and its .pte is byte for byte the one it calibrates alone."""
    def run(targets: str, out: str) -> dict[str, str]:
        res = subprocess.run([sys.executable, "-c", _ONE, str(tmp_path / out), targets], capture_output=True,
                             text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        return dict(pair.split("=") for pair in res.stdout.split())

    alone = run("executorch", "alone")
    shared = run("executorch,tflite", "shared")
    assert alone["restored"] == "0" and shared["restored"] == "1"  # ExecuTorch ran no calibration sample
    assert shared["executorch"] == alone["executorch"]


def test_the_observers_of_litert_cover_xnnpacks(digits: Any) -> None:
    from edgekit.compression import _observers
    from edgekit.compression.quantize import capture, quantizer_for
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    q = digits.profile.quantization
    lite = _observers.observers(prepare_pt2e(capture(digits).module(), quantizer_for("litert", q)))
    xnn = _observers.observers(prepare_pt2e(capture(digits).module(), quantizer_for("xnnpack", q)))
    assert set(xnn.values()) <= set(lite.values())  # what makes the shared calibration possible at all
