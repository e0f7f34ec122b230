"""Result rows: one per artifact on a device; raw samples kept, summaries derived."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import pandas as pd

# Accuracy is a fraction; "one point" is 0.01.
ACCURACY_BUDGET = 0.01

COLUMNS = [
    "recommended", "device", "profile", "model", "target", "precision", "artifact_bytes",
    "parity_max_abs_err", "parity_cosine", "parity_top1_agreement", "parity_ok", "parity_failures",
    "accuracy", "reference_accuracy",
    "latency_ms_p50", "latency_ms_p90", "latency_ms_p95", "latency_ms_p99", "latency_ms_mean", "latency_ms_std",
    "latency_ms_min", "latency_ms_p50_ci95_low", "latency_ms_p50_ci95_high", "iterations", "timed_seconds", "truncated", "threads",
    "load_ms", "first_inference_ms", "peak_rss_mb_after_load", "peak_rss_mb", "memory_method",
    "energy_mj_per_inference", "energy_status", "energy_source",
    "runtime", "runtime_version", "export_seconds", "artifact_path", "error", "latency_ms_samples",
]


def artifact_row(art: Any, device: str) -> dict[str, Any]:
    """The export half of a row, from an Artifact."""
    p = art.parity
    return {
        "device": device, "profile": art.profile, "model": art.model, "target": art.target,
        "precision": art.precision, "artifact_bytes": art.bytes, "threads": art.threads,
        "parity_max_abs_err": p.max_abs_err if p else None, "parity_cosine": p.cosine if p else None,
        "parity_top1_agreement": p.top1_agreement if p else None, "parity_ok": bool(p and p.ok),
        "parity_failures": "; ".join(p.failures) if p else None,
        "accuracy": art.accuracy, "reference_accuracy": art.reference_accuracy,
        "export_seconds": art.export_seconds, "artifact_path": str(art.path) if art.path else None,
        "error": art.error,
    }


def measurement_fields(result: dict[str, Any]) -> dict[str, Any]:
    """The measured half of a row, from the agent's JSON answer."""
    lat, mem, energy = result["latency_ms"], result.get("memory", {}), result.get("energy", {})
    ci = lat.get("ci95_p50") or [None, None]
    return {
        "latency_ms_p50": lat["p50"], "latency_ms_p90": lat["p90"], "latency_ms_p95": lat.get("p95"),
        "latency_ms_p99": lat["p99"], "latency_ms_mean": lat["mean"], "latency_ms_std": lat.get("std"),
        "latency_ms_min": lat.get("min"), "latency_ms_p50_ci95_low": ci[0], "latency_ms_p50_ci95_high": ci[1],
        "latency_ms_samples": list(lat["samples"]), "iterations": result["iterations"],
        "timed_seconds": result.get("timed_seconds"), "truncated": result.get("truncated"),
        "threads": result.get("threads"), "load_ms": result.get("load_ms"),
        "first_inference_ms": result.get("first_inference_ms"),
        "peak_rss_mb_after_load": mem.get("peak_rss_mb_after_load"), "peak_rss_mb": mem.get("peak_rss_mb"),
        "memory_method": mem.get("method"),
        "energy_mj_per_inference": energy.get("mj_per_inference"), "energy_status": energy.get("status"),
        "energy_source": energy.get("source"),
        "runtime": result.get("runtime", {}).get("name"), "runtime_version": result.get("runtime", {}).get("version"),
    }


def to_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Rows as a DataFrame with every column, the recommended artifact first and marked."""
    df = pd.DataFrame(list(rows))
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = None
    df = df[COLUMNS + [c for c in df.columns if c not in COLUMNS]]
    for col in df.columns:
        if df[col].dtype == object or pd.api.types.is_string_dtype(df[col]):
            # pandas 3 stores text as "str" with NaN for missing; a missing error must be None, not a truthy NaN.
            df[col] = df[col].astype(object).where(df[col].notna(), None)
    return mark_recommended(df)


def acceptable(df: pd.DataFrame) -> pd.Series:
    """Shippable rows: measured, within parity tolerance, accuracy within budget of the fp32 reference."""
    measured = df["error"].isna() & df["latency_ms_p50"].notna() & df["parity_ok"].fillna(False).astype(bool)
    acc = pd.to_numeric(df["accuracy"], errors="coerce")
    ref = pd.to_numeric(df["reference_accuracy"], errors="coerce")
    within = acc.isna() | ref.isna() | (acc >= ref - ACCURACY_BUDGET - 1e-12)
    return measured & within


def mark_recommended(df: pd.DataFrame) -> pd.DataFrame:
    """Per device and model, the fastest acceptable artifact (by median latency) is recommended."""
    df = df.copy()
    df["recommended"] = False
    ok = acceptable(df)
    p50 = pd.to_numeric(df["latency_ms_p50"], errors="coerce")
    for _, idx in df.groupby(["device", "model"], sort=False, dropna=False).groups.items():
        cands = [i for i in idx if ok[i]]
        if cands:
            df.loc[min(cands, key=lambda i: p50[i]), "recommended"] = True
    order = np.lexsort((p50.fillna(np.inf).to_numpy(), (~ok).to_numpy(), (~df["recommended"]).to_numpy()))
    return df.iloc[order].reset_index(drop=True)
