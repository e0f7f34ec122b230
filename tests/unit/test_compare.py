"""Comparing runs: a change is flagged only where it exceeds the measurements' own interval."""

from __future__ import annotations

import numpy as np
import pandas as pd

from edgekit.results.compare import compare_runs
from edgekit.results.rows import to_frame


def _row(p50: float, lo: float, hi: float, acc: float = 0.99, n: int = 360, **kw: object) -> dict:
    return {"device": "pi", "model": "m", "target": "onnx", "precision": "int8", "threads": 1,
            "latency_ms_p50": p50, "latency_ms_p50_ci95_low": lo, "latency_ms_p50_ci95_high": hi,
            "device_accuracy": acc, "device_eval_samples": n, "peak_rss_mb": 50.0, "artifact_bytes": 1000,
            "parity_ok": True, **kw}


def _verdicts(a: list[dict], b: list[dict]) -> dict[str, str]:
    cmp = compare_runs(to_frame(a), to_frame(b))
    return dict(zip(cmp["metric"], cmp["verdict"]))


def test_a_slowdown_inside_the_intervals_is_noise_and_outside_is_a_regression() -> None:
    base = [_row(1.00, 0.95, 1.05)]
    assert _verdicts(base, [_row(1.05, 1.00, 1.10)])["latency_ms_p50"] == "within noise"  # 0.05 < hypot(.05,.05)
    assert _verdicts(base, [_row(1.20, 1.15, 1.25)])["latency_ms_p50"] == "regression"
    assert _verdicts(base, [_row(0.80, 0.75, 0.85)])["latency_ms_p50"] == "improvement"


def test_the_interval_comes_from_the_samples_the_agent_took() -> None:
    from edgekit.agent.measure import median_ci95

    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 0.05, 400), rng.normal(1.02, 0.05, 400)  # 2 % slower, but within the CIs? compute
    rows = []
    for s in (a, b):
        lo, hi = median_ci95(s)
        rows.append(_row(float(np.median(s)), lo, hi))
    cmp = compare_runs(to_frame([rows[0]]), to_frame([rows[1]]))
    lat = cmp[cmp["metric"] == "latency_ms_p50"].iloc[0]
    expected_unc = np.hypot((rows[0]["latency_ms_p50_ci95_high"] - rows[0]["latency_ms_p50_ci95_low"]) / 2,
                            (rows[1]["latency_ms_p50_ci95_high"] - rows[1]["latency_ms_p50_ci95_low"]) / 2)
    assert lat["uncertainty"] == expected_unc
    assert lat["verdict"] == ("regression" if lat["delta"] > expected_unc else "within noise")


def test_accuracy_uses_a_binomial_interval_never_finer_than_one_sample() -> None:
    base = [_row(1.0, 0.9, 1.1, acc=0.99, n=360)]
    assert _verdicts(base, [_row(1.0, 0.9, 1.1, acc=0.99 - 1 / 360, n=360)])["device_accuracy"] == "within noise"
    assert _verdicts(base, [_row(1.0, 0.9, 1.1, acc=0.90, n=360)])["device_accuracy"] == "regression"


def test_memory_and_size_are_shown_but_never_judged_and_unmatched_rows_are_listed() -> None:
    cmp = compare_runs(to_frame([_row(1, 0.9, 1.1)]),
                       to_frame([_row(1, 0.9, 1.1, peak_rss_mb=80.0), _row(1, 0.9, 1.1, device="jetson")]))
    v = {(d, m): verdict for d, m, verdict in zip(cmp["device"], cmp["metric"], cmp["verdict"])}
    assert v[("pi", "peak_rss_mb")] == "not judged (no interval)" and v[("pi", "artifact_bytes")] == "same"
    assert v[("jetson", "-")] == "only in B"


def test_failed_rows_are_not_compared() -> None:
    failed = _row(float("nan"), float("nan"), float("nan"), error="device 'pi': connection refused")
    cmp = compare_runs(to_frame([_row(1, 0.9, 1.1)]), to_frame([failed]))
    assert list(cmp["verdict"]) == ["only in A"]
    assert isinstance(cmp, pd.DataFrame)
