"""Result rows: one per artifact on a device; raw samples kept, summaries derived."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import pandas as pd

from edgekit.errors import AgentError, printable

if TYPE_CHECKING:
    from edgekit.exporters.base import Artifact

# Accuracy is a fraction; "one point" is 0.01.
ACCURACY_BUDGET = 0.01

CONDITION_COLUMNS = ("noisy", "noisy_reasons", "cpu_governor", "cpu_freq_mhz_before", "cpu_freq_mhz_after",
                     "cpu_freq_mhz_min_after", "temp_c_before", "temp_c_after", "throttled", "throttled_flags",
                     "load_avg_1m_before", "other_cpu_cores")

# Where the artifact ran: the profile's accelerator, the onnxruntime providers that ran it, and whether that
# earned the accelerator's label (a CPU fallback under a GPU profile is flagged and never recommended).
EXECUTION_COLUMNS = ("accelerator", "accelerator_used", "accelerator_ok", "accelerator_note", "execution_providers",
                     "execution_providers_requested", "provider_nodes", "io_binding", "copies_timed",
                     "trt_engine_build_ms")
GPU_COLUMNS = ("gpu_status", "gpu_name", "gpu_driver", "gpu_memory_mib_process", "gpu_sm_clock_mhz_before",
               "gpu_sm_clock_mhz_after", "gpu_mem_clock_mhz_before", "gpu_mem_clock_mhz_after", "gpu_temp_c_before",
               "gpu_temp_c_after", "gpu_throttle_reasons", "gpu_power_limit_w")

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
    *CONDITION_COLUMNS, "emulated", *EXECUTION_COLUMNS, *GPU_COLUMNS,
    "runtime", "runtime_version", "machine", "python_version", "export_seconds", "check_seconds", "cache_hit", "artifact_path", "error",
    "stage",
    "latency_ms_samples", "op_profile",
]


def finite(value: Any) -> float | None:
    """``value`` as a float, or None when it is missing, NaN, infinite or not a number (untrusted rows)."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def artifact_row(art: Artifact, device: str) -> dict[str, Any]:
    """The export half of a row, from an Artifact."""
    p = art.parity
    return {
        "device": device, "profile": art.profile, "model": art.model, "target": art.target,
        "precision": art.precision, "artifact_bytes": art.bytes, "threads": art.threads,
        "parity_max_abs_err": p.max_abs_err if p else None, "parity_cosine": p.cosine if p else None,
        "parity_top1_agreement": p.top1_agreement if p else None, "parity_ok": bool(p and p.ok),
        "parity_failures": "; ".join(p.failures) if p else None,
        "accuracy": art.accuracy, "reference_accuracy": art.reference_accuracy,
        "export_seconds": art.export_seconds, "check_seconds": art.check_seconds, "cache_hit": art.cache_hit,
        "artifact_path": str(art.path) if art.path else None,
        "error": art.error,
    }


def measurement_fields(result: dict[str, Any], *, max_ms: float | None = None) -> dict[str, Any]:
    """The measured half of a row, from the agent's JSON answer; units are in the column names.

    The answer comes from a device, so it is untrusted: the latencies every summary rests on must be there
    and make sense (finite, >= 0, at most ``max_ms``, the run's timeout), else AgentError names the field;
    any other figure of the wrong type becomes None, and text is made printable (see :func:`printable`).
    """
    lat = _checked_latency(result, max_ms)
    mem, energy, cond = _mapping(result, "memory"), _mapping(result, "energy"), _mapping(result, "conditions")
    acc, runtime = _mapping(result, "device_accuracy"), _mapping(result, "runtime")
    window = _mapping(result, "window")
    given = lat.get("ci95_p50")
    ci: list[Any] = given if isinstance(given, list) and len(given) == 2 else [None, None]
    num, text = _number, _text
    fields = {
        "latency_ms_p50": float(lat["p50"]), "latency_ms_p90": float(lat["p90"]), "latency_ms_p95": num(lat.get("p95")),
        "latency_ms_p99": float(lat["p99"]), "latency_ms_mean": float(lat["mean"]), "latency_ms_std": num(lat.get("std")),
        "latency_ms_min": num(lat.get("min")), "latency_ms_max": num(lat.get("max")),
        "latency_ms_p50_ci95_low": num(ci[0]), "latency_ms_p50_ci95_high": num(ci[1]),
        "latency_ms_samples": [float(v) for v in lat["samples"]], "iterations": result["iterations"],
        "timed_seconds": num(result.get("timed_seconds")), "truncated": _flag(result.get("truncated")),
        "threads": _count(result.get("threads")), "load_ms": num(result.get("load_ms")),
        "first_inference_ms": num(result.get("first_inference_ms")),
        "runtime_import_ms": num(result.get("runtime_import_ms")),
        "peak_rss_mb_after_load": num(mem.get("peak_rss_mb_after_load")),
        "peak_rss_mb_steady": num(mem.get("peak_rss_mb_steady")), "peak_rss_mb": num(mem.get("peak_rss_mb")),
        "peak_rss_mb_process": num(mem.get("peak_rss_mb_process")), "memory_method": text(mem.get("method")),
        "energy_mj_per_inference": num(energy.get("energy_mj_per_inference")),
        "energy_total_mj_per_inference": num(energy.get("energy_total_mj_per_inference")),
        "energy_error_mj": num(energy.get("energy_error_mj")), "energy_idle_power_mw": num(energy.get("idle_power_mw")),
        "energy_active_power_mw": num(energy.get("active_power_mw")), "energy_window_s": num(energy.get("window_s")),
        "energy_status": text(energy.get("status")), "energy_source": text(energy.get("source")),
        "energy_note": text(energy.get("note")),
        **_conditions(cond),
        "device_accuracy": num(acc.get("top1")), "device_eval_samples": _count(acc.get("samples")),
        "runtime": text(runtime.get("name")), "runtime_version": text(runtime.get("version")),
        "machine": text(result.get("machine")), "python_version": text(result.get("python")),
        "op_profile": _op_profile(result.get("op_profile")),
        # the measuring window on the device's own clock, and how long its lock was waited for (agent/devlock.py)
        "window_start_unix": num(window.get("start_unix")), "window_end_unix": num(window.get("end_unix")),
        "lock_wait_s": num(window.get("lock_wait_s")),
    }
    if fields["threads"] is None:  # the row's own thread count stands
        del fields["threads"]
    return fields


def execution_fields(result: dict[str, Any], requested: dict[str, Any] | None) -> dict[str, Any]:
    """Where the agent ran the artifact, judged against what the profile asked for (``requested``: the
    artifact's ``execution``, None for a CPU profile). An accelerator that did not run makes the row
    ``noisy`` with the reason, ``accelerator_ok`` False, and keeps it from being recommended."""
    ex = _mapping(result, "execution")
    used = _texts(ex.get("providers_used")) or []
    nodes = ex.get("nodes_by_provider")
    fields: dict[str, Any] = {
        "accelerator": requested.get("accelerator") if requested else None,
        "accelerator_used": _text(ex.get("accelerator_used")), "accelerator_ok": None,
        "accelerator_note": _text(ex.get("note")), "execution_providers": used or None,
        "execution_providers_requested": _texts(ex.get("providers_requested")),
        "provider_nodes": {printable(k, 100): c for k, v in nodes.items() if (c := _count(v)) is not None}
        if isinstance(nodes, dict) else None,
        "io_binding": _flag(ex.get("io_binding")), "copies_timed": _flag(ex.get("copies_timed")),
        "trt_engine_build_ms": _number(ex.get("trt_engine_build_ms")),
    }
    if requested and requested.get("accelerator") not in (None, "none"):
        agent_ok = _flag(ex.get("accelerator_ok"))
        gpu_ran = fields["accelerator_used"] in ("cuda", "tensorrt")
        fields["accelerator_ok"] = bool(agent_ok and gpu_ran)
        if not fields["accelerator_ok"]:
            why = fields["accelerator_note"] or (
                f"the profile asks for {requested['accelerator']} but the device reported "
                f"{', '.join(used) if used else 'no execution providers'}")
            fields["accelerator_note"] = f"{why} (not a {requested['accelerator']} figure)" \
                if "figure" not in why else why
    return fields


def gpu_fields(result: dict[str, Any]) -> dict[str, Any]:
    """GPU facts over the measuring window (NVML, or a Jetson's sysfs), or why there are none."""
    gpu = _mapping(result, "gpu")
    if not gpu:
        return {"gpu_status": None}
    status = "measured" if gpu.get("available") is True else f"unavailable: {_text(gpu.get('reason')) or 'unknown'}"
    fields: dict[str, Any] = {"gpu_status": status, "gpu_name": _text(gpu.get("name")),
                              "gpu_driver": _text(gpu.get("driver")),
                              "gpu_memory_mib_process": _number(gpu.get("memory_mib_process")),
                              "gpu_throttle_reasons": _texts(gpu.get("throttle_reasons")),
                              "gpu_power_limit_w": _number(gpu.get("power_limit_w"))}
    for name in ("sm_clock_mhz", "mem_clock_mhz", "temp_c"):
        for when in ("before", "after"):
            fields[f"gpu_{name}_{when}"] = _number(gpu.get(f"{name}_{when}"))
    return fields


def flag_accelerator(row: dict[str, Any]) -> dict[str, Any]:
    """A row whose profile's accelerator did not run is ``noisy``, saying so in plain words."""
    if row.get("accelerator_ok") is False:
        mark_noisy(row, row.get("accelerator_note"))
    return row


def mark_noisy(row: dict[str, Any], reason: str | None) -> None:
    """The row's figures were disturbed or are not what they claim: ``noisy``, with ``reason`` added."""
    row["noisy"] = True
    row["noisy_reasons"] = [*(row.get("noisy_reasons") or []), reason]


# ---- what a device sends back is untrusted ------------------------------------------------------------

MALFORMED_HINT = ("is the device's 'python' (devices.yaml) running edgekit's agent unchanged? "
                  "`edgekit devices check NAME` shows what answers there")
MAX_TEXT = 2000  # characters kept of one string from a device

def malformed(field: str, expected: str, got: Any) -> AgentError:
    shown = printable(repr(got), 80)
    return AgentError(f"the device's answer is malformed: field '{field}' must be {expected}, got {shown}; "
                      f"{MALFORMED_HINT}")


def _checked_latency(result: Any, max_ms: float | None) -> dict[str, Any]:
    """The latency block, or AgentError naming the first field that is missing, of the wrong type or absurd."""
    if not isinstance(result, dict):
        raise malformed("(top level)", "a JSON object", result)
    lat = result.get("latency_ms")
    if not isinstance(lat, dict):
        raise malformed("latency_ms", "an object", lat)
    bound = f"[0, {max_ms:g}] (the run's timeout)" if max_ms is not None else ">= 0"
    samples = lat.get("samples")
    if not isinstance(samples, list) or not samples or not all(_latency(v, max_ms) for v in samples):
        bad = next((v for v in samples if not _latency(v, max_ms)), samples) if isinstance(samples, list) else samples
        raise malformed("latency_ms.samples", f"a non-empty list of latencies, each a number of ms in {bound}", bad)
    for key in ("p50", "p90", "p99", "mean"):
        if not _latency(lat.get(key), max_ms):
            raise malformed(f"latency_ms.{key}", f"a number of ms in {bound}", lat.get(key))
    low, high = min(samples), max(samples)
    if not low <= lat["p50"] <= high:
        raise malformed("latency_ms.p50", f"within the samples' range [{low:g}, {high:g}]", lat["p50"])
    iterations = result.get("iterations")
    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations != len(samples):
        raise malformed("iterations", f"the number of samples ({len(samples)})", iterations)
    return lat


def _latency(value: Any, max_ms: float | None) -> bool:
    return _number(value) is not None and value >= 0 and (max_ms is None or value <= max_ms)


def _number(value: Any) -> float | None:
    """A finite number from a device, else None (a string, a list, NaN or infinity is not a figure)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return finite(value)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return printable(value, MAX_TEXT) if isinstance(value, str) else None


def _texts(value: Any) -> list[str] | None:
    return [printable(v, MAX_TEXT) for v in value if isinstance(v, str)] if isinstance(value, list) else None


def _mapping(result: dict[str, Any], key: str) -> dict[str, Any]:
    value = result.get(key)
    return value if isinstance(value, dict) else {}


_CONDITION_KINDS = {"noisy": _flag, "noisy_reasons": _texts, "cpu_governor": _text, "throttled": _flag,
                    "throttled_flags": _texts}


def _conditions(cond: dict[str, Any]) -> dict[str, Any]:
    return {k: _CONDITION_KINDS.get(k, _number)(cond.get(k)) for k in CONDITION_COLUMNS}


def _op_profile(profile: Any) -> dict[str, Any] | None:
    """Per-op times: text made printable, ops without a numeric time dropped (tables format them as numbers)."""
    if not isinstance(profile, dict):
        return None
    clean: dict[str, Any] = {k: _text(v) if isinstance(v, str) else _number(v) if isinstance(v, (int, float)) else None
             for k, v in profile.items() if isinstance(k, str) and k not in ("ops", "runtime")}
    runtime = profile.get("runtime")
    clean["runtime"] = {k: _text(v) for k, v in runtime.items() if isinstance(k, str)} if isinstance(runtime, dict) else None
    ops = profile.get("ops")
    clean["ops"] = [{"name": _text(op.get("name")), "type": _text(op.get("type")),
                     "time_ms": _number(op.get("time_ms")), "share": _number(op.get("share"))}
                    for op in (ops if isinstance(ops, list) else []) if isinstance(op, dict)
                    and _number(op.get("time_ms")) is not None and _number(op.get("share")) is not None]
    return clean


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
        mark_noisy(row, EMULATED_NOTE)
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
    if "accelerator_ok" in df:  # a GPU profile's row that ran on the CPU is not that profile's figure
        measured &= df["accelerator_ok"].map(lambda ok: ok is not False)
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


RowKey = tuple[Any, ...]


def row_key(row: dict[str, Any]) -> RowKey:
    """What one row measures: a later row with the same key replaces it (retries, ``--resume``)."""
    return (row.get("device"), row.get("model"), row.get("target"), row.get("precision"), row.get("threads"))
