"""Log a stored run to MLflow: parameters, one metric per device/target/precision/threads, the report.

MLflow is optional (``pip install edgekit[mlflow]``) and imported only here. Any tracking URI works
(``file:./mlruns``, ``sqlite:///mlflow.db``, ``http://server:5000``); MLflow 3 refuses a plain file store
unless ``MLFLOW_ALLOW_FILE_STORE=true`` is set, and the error says so.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pandas as pd

from edgekit.results.store import Run
from edgekit.errors import ResultsError

# Row column -> metric name suffix; what a pipeline tracks over time.
METRIC_COLUMNS = ("latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_p50_ci95_low",
                  "latency_ms_p50_ci95_high", "accuracy", "device_accuracy", "peak_rss_mb", "artifact_bytes",
                  "energy_mj_per_inference")


def log_run(run: Run, df: pd.DataFrame, uri: str, *, experiment: str = "edgekit") -> str:
    """Log ``run`` to the MLflow tracking server at ``uri``; the MLflow run id."""
    try:
        import mlflow
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise ResultsError("MLflow logging needs mlflow: pip install 'edgekit[mlflow]' (or mlflow-skinny)") from exc
    meta = run.meta
    try:
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
        mlrun = client.create_run(exp_id, run_name=run.id, tags={"edgekit.run_id": run.id,
                                                                  "edgekit.status": str(meta.get("status"))})
        rid = mlrun.info.run_id
        client.log_batch(rid, params=[mlflow.entities.Param(k, _short(v)) for k, v in params(meta).items()],
                         metrics=[mlflow.entities.Metric(k, v, 0, 0) for k, v in metrics(df).items()])
        report = run.root / "report.html"
        if not report.is_file():
            from edgekit.results.report import write_report

            write_report(df, meta, report)
        for path in (report, run.root / "rows.parquet", run.root / "meta.json"):
            if path.is_file():
                client.log_artifact(rid, str(path))
        client.set_terminated(rid)
        return rid
    except Exception as exc:  # noqa: BLE001 - MLflow raises its own and transport errors; the run is safe
        hint = ""
        if "MLFLOW_ALLOW_FILE_STORE" in str(exc):
            hint = " (MLflow 3 wants MLFLOW_ALLOW_FILE_STORE=true for a file store, or use sqlite:///mlflow.db)"
        raise ResultsError(f"logging run {run.id} to MLflow at {uri} failed{hint}: {type(exc).__name__}: {exc}; "
                             f"the run itself is stored in {run.root}") from exc


def params(meta: dict[str, Any]) -> dict[str, Any]:
    req = meta.get("request", {})
    out = {"model": meta.get("model"), "model_sha256": meta.get("model_sha256"),
           "edgekit_version": meta.get("edgekit_version"), "devices": ",".join(req.get("devices", [])),
           "targets": req.get("targets"), "precisions": req.get("precisions"), "recipe": req.get("recipe"),
           "edgekit_run_id": meta.get("run_id")}
    for name, prof in (meta.get("profiles") or {}).items():
        out[f"profile.{name}.sha256"] = prof.get("sha256")
    for key, value in (req.get("config") or {}).items():
        out[f"bench.{key}"] = value
    for key, value in (meta.get("search") or {}).items():  # a search run: its objectives, constraints, space
        if key not in ("config", "model"):
            out[f"search.{key}"] = json.dumps(value) if isinstance(value, dict) else value
    return {k: v for k, v in out.items() if v is not None}


def metrics(df: pd.DataFrame) -> dict[str, float]:
    """``<device>/<target>/<precision>/t<threads>/<column>`` -> value, for measured rows (prefixed by the
    model when the rows hold several, as a search's variants do)."""
    out: dict[str, float] = {}
    several = "model" in df.columns and df["model"].nunique() > 1
    for _, r in df.iterrows():
        if r.get("error") is not None or r.get("latency_ms_p50") is None or pd.isna(r.get("latency_ms_p50")):
            continue
        keys = (r["device"], r["target"], r["precision"], f"t{int(r['threads'])}")
        prefix = "/".join(_name(str(x)) for x in ((r["model"], *keys) if several else keys))
        for col in METRIC_COLUMNS:
            value = r.get(col)
            if value is not None and not pd.isna(value):
                out[f"{prefix}/{col}"] = float(value)
    return out


def _name(text: str) -> str:
    """MLflow metric names allow letters, digits, _ - . / and space; device names are the user's."""
    return re.sub(r"[^A-Za-z0-9_.\- ]", "_", text)[:100]


def _short(value: Any) -> str:
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return text[:6000]  # MLflow's limit on a parameter value
