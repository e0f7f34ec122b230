"""Compare two runs: a change is a regression only where it is larger than the measurements' own uncertainty.

Per matched row (device, model, target, precision, threads) and metric:

- ``latency_ms_p50``: each run's 95 % CI of the median (order statistics, from the agent). The two
  half-widths combine as ``sqrt(a**2 + b**2)``; a slow-down beyond that is a regression.
- ``device_accuracy``: a binomial 95 % interval of the difference of two proportions,
  ``1.96 * sqrt(p1 q1 / n1 + p2 q2 / n2)``, never tighter than one sample of the smaller set.
- ``energy_mj_per_inference``: each row's ``energy_error_mj``, combined the same way.
- ``peak_rss_mb`` and ``artifact_bytes`` carry no interval: the change is shown, never judged.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from edgekit.results.rows import finite

KEY = ["device", "model", "target", "precision", "threads"]
# metric -> (higher is better?, how its uncertainty is found)
METRICS = {
    "latency_ms_p50": (False, "ci95"),
    "device_accuracy": (True, "binomial"),
    "energy_mj_per_inference": (False, "energy_error"),
    "peak_rss_mb": (False, None),
    "artifact_bytes": (False, None),
}
COLUMNS = [*KEY, "metric", "a", "b", "delta", "delta_pct", "uncertainty", "verdict", "noisy"]


def compare_runs(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Row per matched key and metric; ``verdict``: regression, improvement, within noise, not judged, ..."""
    ma, mb = _measured(a), _measured(b)
    merged = ma.merge(mb, on=KEY, how="outer", suffixes=("_a", "_b"), indicator=True)
    out: list[dict[str, Any]] = []
    for _, r in merged.iterrows():
        key = {k: r[k] for k in KEY}
        if r["_merge"] != "both":
            out.append({**key, "metric": "-", "verdict": "only in A" if r["_merge"] == "left_only" else "only in B"})
            continue
        noisy = bool(_true(r.get("noisy_a")) or _true(r.get("noisy_b")))
        for metric, (higher_better, how) in METRICS.items():
            va, vb = finite(r.get(f"{metric}_a")), finite(r.get(f"{metric}_b"))
            if va is None or vb is None:
                continue
            delta = vb - va
            unc = _uncertainty(how, r, va, vb)
            out.append({**key, "metric": metric, "a": va, "b": vb, "delta": delta,
                        "delta_pct": 100 * delta / va if va else None, "uncertainty": unc,
                        "verdict": _verdict(delta, unc, higher_better), "noisy": noisy})
    return pd.DataFrame(out, columns=COLUMNS)


def regressions(cmp: pd.DataFrame) -> pd.DataFrame:
    return cmp[cmp["verdict"] == "regression"]


def _measured(df: pd.DataFrame) -> pd.DataFrame:
    ok = df[df["error"].isna() & df["latency_ms_p50"].notna()] if len(df) else df
    cols = KEY + [c for c in (*METRICS, "latency_ms_p50_ci95_low", "latency_ms_p50_ci95_high", "device_eval_samples",
                              "energy_error_mj", "noisy") if c in df.columns and c not in KEY]
    return ok[cols].drop_duplicates(subset=KEY, keep="last")


def _uncertainty(how: str | None, r: Any, va: float, vb: float) -> float | None:
    if how == "ci95":
        ha = _half_width(r.get("latency_ms_p50_ci95_low_a"), r.get("latency_ms_p50_ci95_high_a"))
        hb = _half_width(r.get("latency_ms_p50_ci95_low_b"), r.get("latency_ms_p50_ci95_high_b"))
        return math.hypot(ha, hb) if ha is not None and hb is not None else None
    if how == "binomial":
        na, nb = finite(r.get("device_eval_samples_a")), finite(r.get("device_eval_samples_b"))
        if not na or not nb:
            return None
        se = math.sqrt(va * (1 - va) / na + vb * (1 - vb) / nb)
        return max(1.96 * se, 1 / min(na, nb))
    if how == "energy_error":
        ea, eb = finite(r.get("energy_error_mj_a")), finite(r.get("energy_error_mj_b"))
        return math.hypot(ea, eb) if ea is not None and eb is not None else None
    return None


def _verdict(delta: float, unc: float | None, higher_better: bool) -> str:
    if unc is None:
        return "not judged (no interval)" if delta else "same"
    worse = -delta if higher_better else delta
    if worse > unc:
        return "regression"
    if -worse > unc:
        return "improvement"
    return "within noise"


def _half_width(lo: Any, hi: Any) -> float | None:
    lo, hi = finite(lo), finite(hi)
    return (hi - lo) / 2 if lo is not None and hi is not None else None


def _true(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and bool(v)
