"""Result rows: one per artifact on a device; raw samples kept, summaries derived."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import pandas as pd

# Accuracy is a fraction; "one point" is 0.01.
ACCURACY_BUDGET = 0.01

CONDITION_COLUMNS = ("noisy", "noisy_reasons", "cpu_governor", "cpu_freq_mhz_before", "cpu_freq_mhz_after",
                     "cpu_freq_mhz_min_after", "temp_c_before", "temp_c_after", "throttled", "throttled_flags",
                     "load_avg_1m_before", "other_cpu_cores")

COLUMNS = [
    "recommended", "device", "profile", "model", "target", "precision", "threads", "artifact_bytes",
    "parity_max_abs_err", "parity_cosine", "parity_top1_agreement", "parity_ok", "parity_failures",
    "accuracy", "reference_accuracy", "device_accuracy", "device_eval_samples",
    "latency_ms_p50", "latency_ms_p90", "latency_ms_p95", "latency_ms_p99", "latency_ms_mean", "latency_ms_std",
    "latency_ms_min", "latency_ms_max", "latency_ms_p50_ci95_low", "latency_ms_p50_ci95_high", "iterations",
    "timed_seconds", "truncated", "load_ms", "first_inference_ms", "runtime_import_ms",
    "peak_rss_mb_after_load", "peak_rss_mb_steady", "peak_rss_mb", "peak_rss_mb_process", "memory_method",
    "energy_mj_per_inference", "energy_total_mj_per_inference", "energy_error_mj", "energy_idle_power_mw",
    "energy_active_power_mw", "energy_window_s", "energy_status", "energy_source", "energy_note",
    *CONDITION_COLUMNS, "emulated",
    "runtime", "runtime_version", "machine", "python_version", "export_seconds", "artifact_path", "error",
    "latency_ms_samples", "op_profile",
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
    """The measured half of a row, from the agent's JSON answer; units are in the column names."""
    lat, mem = result["latency_ms"], result.get("memory") or {}
    energy, cond = result.get("energy") or {}, result.get("conditions") or {}
    acc, runtime = result.get("device_accuracy") or {}, result.get("runtime") or {}
    ci = lat.get("ci95_p50") or [None, None]
    return {
        "latency_ms_p50": lat["p50"], "latency_ms_p90": lat["p90"], "latency_ms_p95": lat.get("p95"),
        "latency_ms_p99": lat["p99"], "latency_ms_mean": lat["mean"], "latency_ms_std": lat.get("std"),
        "latency_ms_min": lat.get("min"), "latency_ms_max": lat.get("max"),
        "latency_ms_p50_ci95_low": ci[0], "latency_ms_p50_ci95_high": ci[1],
        "latency_ms_samples": list(lat["samples"]), "iterations": result["iterations"],
        "timed_seconds": result.get("timed_seconds"), "truncated": result.get("truncated"),
        "threads": result.get("threads"), "load_ms": result.get("load_ms"),
        "first_inference_ms": result.get("first_inference_ms"), "runtime_import_ms": result.get("runtime_import_ms"),
        "peak_rss_mb_after_load": mem.get("peak_rss_mb_after_load"), "peak_rss_mb_steady": mem.get("peak_rss_mb_steady"),
        "peak_rss_mb": mem.get("peak_rss_mb"), "peak_rss_mb_process": mem.get("peak_rss_mb_process"),
        "memory_method": mem.get("method"),
        "energy_mj_per_inference": energy.get("energy_mj_per_inference"),
        "energy_total_mj_per_inference": energy.get("energy_total_mj_per_inference"),
        "energy_error_mj": energy.get("energy_error_mj"), "energy_idle_power_mw": energy.get("idle_power_mw"),
        "energy_active_power_mw": energy.get("active_power_mw"), "energy_window_s": energy.get("window_s"),
        "energy_status": energy.get("status"), "energy_source": energy.get("source"), "energy_note": energy.get("note"),
        **{k: cond.get(k) for k in CONDITION_COLUMNS},
        "device_accuracy": acc.get("top1"), "device_eval_samples": acc.get("samples"),
        "runtime": runtime.get("name"), "runtime_version": runtime.get("version"),
        "machine": result.get("machine"), "python_version": result.get("python"),
        "op_profile": result.get("op_profile"),
    }



EMULATED_NOTE = "emulated CPU (qemu-user): latency is not the real hardware's, meaningless as a timing"


_ENERGY_FIGURES = ("energy_mj_per_inference", "energy_total_mj_per_inference", "energy_error_mj",
                   "energy_idle_power_mw", "energy_active_power_mw", "energy_window_s")


def mark_emulated(row: dict[str, Any], emulated: bool) -> dict[str, Any]:
    """Flag a row from an emulated device: ``emulated`` is True and a measured row is ``noisy`` saying why.

    Its energy figures are dropped: a sensor (or the profile's power model) times an emulated duration is not
    the real hardware's energy either.
    """
    row["emulated"] = bool(emulated)
    if emulated and row.get("latency_ms_p50") is not None:
        row["noisy"] = True
        row["noisy_reasons"] = [*(row.get("noisy_reasons") or []), EMULATED_NOTE]
        row.update(dict.fromkeys(_ENERGY_FIGURES))
        row["energy_status"] = f"unavailable: {EMULATED_NOTE}"
        row["energy_source"] = None
    return row


def op_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per-op profiles (``profile_ops=True``) as one long table: a row per op per measured artifact."""
    rows = []
    for _, r in df.iterrows():
        prof = r.get("op_profile")
        if not isinstance(prof, dict):
            continue
        for op in prof.get("ops") or []:
            rows.append({"device": r["device"], "target": r["target"], "precision": r["precision"],
                         "threads": r["threads"], "op": op.get("name"), "type": op.get("type"),
                         "time_ms": op.get("time_ms"), "share": op.get("share"), "method": prof.get("method")})
    cols = ["device", "target", "precision", "threads", "op", "type", "time_ms", "share", "method"]
    return pd.DataFrame(rows, columns=cols)


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
