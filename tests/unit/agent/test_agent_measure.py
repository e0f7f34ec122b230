"""Latency loop, statistics, memory and artifact size of the on-device agent (edgekit/agent/measure.py)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.agent import measure


# ---- statistics -------------------------------------------------------------------------------------


def test_latency_stats_match_numpy_and_keep_raw_samples() -> None:
    rng = np.random.default_rng(0)
    samples_ns = rng.integers(1_000_000, 3_000_000, size=501).tolist()
    stats = measure.latency_stats(samples_ns)
    ms = np.asarray(samples_ns) / 1e6
    assert stats["samples"] == pytest.approx(ms.tolist())
    for key, q in (("p50", 50), ("p90", 90), ("p95", 95), ("p99", 99)):
        assert stats[key] == pytest.approx(np.percentile(ms, q))
    assert stats["std"] == pytest.approx(np.std(ms, ddof=1))
    assert stats["min"] <= stats["p50"] <= stats["p90"] <= stats["p95"] <= stats["p99"] <= stats["max"]
    lo, hi = stats["ci95_p50"]
    assert stats["min"] <= lo <= stats["p50"] <= hi <= stats["max"]


def test_one_sample_has_no_std_and_a_degenerate_ci() -> None:
    stats = measure.latency_stats([2_000_000])
    assert stats["std"] is None
    assert stats["p50"] == stats["p99"] == 2.0
    assert stats["ci95_p50"] == [2.0, 2.0]


def test_no_samples_is_an_error_not_nan() -> None:
    with pytest.raises(ValueError):
        measure.latency_stats([])


def test_median_ci_uses_binomial_order_statistics() -> None:
    # n = 100: ranks 50 - 9.8 -> 40 (floor) and 1 + 50 + 9.8 -> 61 (ceil), 1-based.
    values = np.arange(1.0, 101.0)[::-1]  # unsorted on purpose
    assert measure.median_ci95(values) == [40.0, 61.0]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 10, 37, 1000])
def test_median_ci_is_clamped_and_contains_the_median(n: int) -> None:
    values = np.random.default_rng(n).normal(size=n)
    lo, hi = measure.median_ci95(values)
    assert values.min() <= lo <= np.median(values) <= hi <= values.max()


# ---- the timed loop ---------------------------------------------------------------------------------


def test_loop_stops_when_both_minimums_are_met() -> None:
    calls: list[int] = []
    result = measure.timed_loop(calls.append, 1, min_iterations=5, min_seconds=0.0, max_seconds=10.0)
    assert result.iterations == len(calls) == 5
    assert not result.truncated

    result = measure.timed_loop(lambda _: None, None, min_iterations=3, min_seconds=0.05, max_seconds=10.0)
    assert result.seconds >= 0.05 and result.iterations >= 3 and not result.truncated


def test_loop_times_only_the_call() -> None:
    result = measure.timed_loop(lambda _: time.sleep(0.002), None, 10, min_seconds=0.0, max_seconds=10.0)
    assert all(s >= 2_000_000 for s in result.samples_ns)
    assert sum(result.samples_ns) / 1e9 <= result.seconds


def test_loop_is_bounded_by_max_seconds_and_says_so() -> None:
    result = measure.timed_loop(lambda _: time.sleep(0.01), None, 1000, min_seconds=0.0, max_seconds=0.05)
    assert result.truncated
    assert 1 <= result.iterations < 1000
    assert result.seconds < 1.0


def test_loop_is_bounded_by_the_iteration_cap() -> None:
    result = measure.timed_loop(lambda _: None, None, 10, min_seconds=100.0, max_seconds=100.0, max_iterations=7)
    assert result.iterations == 7 and result.truncated


def test_timed_call_returns_result_and_ms() -> None:
    value, ms = measure.timed_call(lambda a, b: a + b, 2, 3)
    assert value == 5 and ms >= 0


# ---- memory -----------------------------------------------------------------------------------------


def test_vmhwm_is_read_from_proc_status(tmp_path: Path) -> None:
    status = tmp_path / "status"  # a fake /proc/self/status
    status.write_text("Name:\tpython\nVmPeak:\t  999999 kB\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n")
    assert measure.peak_rss_mib(str(status)) == (20.0, measure.METHOD_VMHWM)


def test_without_proc_the_rusage_fallback_is_used_and_named(tmp_path: Path) -> None:
    value, method = measure.peak_rss_mib(str(tmp_path / "absent"))
    assert method == measure.METHOD_RUSAGE
    assert value is not None and value > 1


def test_real_peak_rss_is_positive() -> None:
    value, method = measure.peak_rss_mib()
    assert value is not None and value > 1 and "MiB" in method


# ---- artifact size ----------------------------------------------------------------------------------


def _tiny_onnx() -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.ones((16, 64), np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_onnx_external_data_is_found_from_the_model(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(_tiny_onnx(), str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
    assert measure.onnx_external_locations(str(path)) == {"weights.bin"}
    files = measure.artifact_files(str(path), "onnx")
    assert files == [str(path), str(tmp_path / "weights.bin")]
    assert (tmp_path / "weights.bin").stat().st_size >= 16 * 64 * 4


def test_inline_onnx_and_other_formats_are_one_file(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(_tiny_onnx(), str(path))
    (tmp_path / "unrelated.data").write_bytes(b"x")
    assert measure.artifact_files(str(path), "onnx") == [str(path)]
    assert measure.artifact_files(str(path), "tflite") == [str(path)]


def test_a_file_that_is_not_onnx_gives_no_external_data(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(bytes(range(256)) * 4)
    assert measure.onnx_external_locations(str(junk)) == set()
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    assert measure.onnx_external_locations(str(empty)) == set()
