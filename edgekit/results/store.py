"""The results store: one folder per run, written so that a crash loses nothing and corrupts nothing.

::

    <results dir>/<run id>/
        meta.json        what was asked, model hash, profile/target versions, device facts, times, status
        journal.jsonl    append-only: every row the moment it arrives (flushed and fsynced), device facts,
                         artifact manifests. The source of truth while a run is alive and after a crash.
        rows.parquet     the run's table, written atomically when the run ends or is interrupted
        artifacts/<profile>/   the artifacts the run measured (reused by ``--resume``)

``rows.parquet`` and ``meta.json`` are replaced atomically (``edgekit._fs``: written beside, fsynced, renamed
with ``os.replace``; never half-written under their names);
a journal line cut short by a crash is ignored. A row replaces an earlier one with the same key (device,
model, target, precision, threads): that is how retries and ``--resume`` leave no duplicates.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import threading
import time
from dataclasses import asdict, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from edgekit._fs import atomic_path, atomic_write_bytes
from edgekit.results.rows import to_frame
from edgekit.results.rows import row_key
from edgekit.errors import ConfigError, UnknownNameError

META, JOURNAL, ROWS = "meta.json", "journal.jsonl", "rows.parquet"
_JSON_COLUMNS = ("op_profile", "provider_nodes")  # nested dicts of varying shape: stored as JSON text in Parquet


def results_dir(path: str | Path | None = None) -> Path:
    """``path``, else ``$EDGEKIT_RESULTS``, else ``./edgekit-results``."""
    return Path(path if path is not None else os.environ.get("EDGEKIT_RESULTS", "edgekit-results"))


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Run:
    """One run's folder. Appends are thread-safe: a fleet's device threads share one Run."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.id = root.name
        self._lock = threading.Lock()

    @classmethod
    def create(cls, store: str | Path | None, meta: dict[str, Any]) -> "Run":
        base = results_dir(store)
        base.mkdir(parents=True, exist_ok=True)
        run_id = f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"
        root = base / run_id
        root.mkdir()
        run = cls(root)
        run.write_meta({"run_id": run_id, "status": "running", "started": now_iso(), **meta})
        return run

    @classmethod
    def open(cls, run_id: str, store: str | Path | None = None) -> "Run":
        base = results_dir(store)
        root = base / run_id
        if not (root / META).is_file():
            known = [p.name for p in base.iterdir() if (p / META).is_file()] if base.is_dir() else []
            raise UnknownNameError("run", run_id, known, hint=f"runs are folders in {base} (--results DIR)")
        return cls(root)

    # ---- metadata -----------------------------------------------------------------------------------

    @property
    def meta(self) -> dict[str, Any]:
        try:
            return json.loads((self.root / META).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"unreadable run metadata: {exc}", source=str(self.root / META)) from exc

    def write_meta(self, meta: dict[str, Any]) -> None:
        atomic_write_bytes(self.root / META, json.dumps(meta, indent=2, default=_json_default).encode())

    def update_meta(self, **changes: Any) -> dict[str, Any]:
        with self._lock:
            meta = {**self.meta, **changes}
            self.write_meta(meta)
            return meta

    # ---- journal ------------------------------------------------------------------------------------

    def append(self, kind: str, **record: Any) -> None:
        """One journal line, on disk (fsynced) before this returns: a crash after it loses nothing."""
        line = json.dumps({"kind": kind, "time": time.time(), **record}, default=_json_default)
        with self._lock, open(self.root / JOURNAL, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def records(self, kind: str | None = None) -> Iterator[dict[str, Any]]:
        """Journal records in order; a last line cut short by a crash is skipped."""
        path = self.root / JOURNAL
        if not path.is_file():
            return
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict) and (kind is None or rec.get("kind") == kind):
                    yield rec

    def latest(self, kind: str, key: str) -> list[dict[str, Any]]:
        """The last ``kind`` record for each value of its ``key`` field (a later record replaces an earlier
        one), ordered by that value: a search's trials by number."""
        last: dict[Any, dict[str, Any]] = {}
        for rec in self.records(kind):
            last[rec[key]] = rec
        return [last[k] for k in sorted(last)]

    def journal_rows(self) -> list[dict[str, Any]]:
        """The run's rows from the journal: the last row per key, and a device's failure row only if
        nothing about that device came after it."""
        latest: dict[Any, tuple[int, dict[str, Any]]] = {}
        last_seen: dict[Any, int] = {}
        for seq, rec in enumerate(self.records("row")):
            row = rec["row"]
            latest[row_key(row)] = (seq, row)
            last_seen[row.get("device")] = seq
        kept = []
        for seq, row in sorted(latest.values(), key=lambda item: item[0]):
            device_level = row.get("target") is None
            if device_level and last_seen[row.get("device")] != seq:
                continue
            kept.append(row)
        return kept

    def rows(self) -> pd.DataFrame:
        """The run's table: rows.parquet when the run was finalized, else rebuilt from the journal."""
        path = self.root / ROWS
        if path.is_file() and self.meta.get("status") != "running":
            return read_rows(path)
        return to_frame(self.journal_rows())

    def finalize(self, status: str, **meta: Any) -> pd.DataFrame:
        """Write rows.parquet (atomically) from the journal and mark the run ``status``."""
        df = to_frame(self.journal_rows())
        write_parquet(df, self.root / ROWS)
        self.update_meta(status=status, ended=now_iso(), rows=len(df),
                         failed_rows=int(df["error"].notna().sum()) if len(df) else 0, **meta)
        return df


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    """Write atomically: a crash never leaves a half-written file under the final name."""
    out = df.copy()
    for col in _JSON_COLUMNS:
        if col in out.columns:
            out[col] = [None if v is None else json.dumps(v, default=_json_default) for v in out[col]]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        out.to_parquet(tmp, index=False)


def read_rows(path: Path) -> pd.DataFrame:
    df = pd.read_parquet(path)
    for col in _JSON_COLUMNS:
        if col in df.columns:
            df[col] = [json.loads(v) if isinstance(v, str) else None for v in df[col]]
    for col in df.columns:  # Parquet gives numpy arrays for lists; rows elsewhere hold lists
        if df[col].dtype == object:
            df[col] = [v.tolist() if hasattr(v, "tolist") and not isinstance(v, (str, bytes)) else v
                       for v in df[col]]
    return to_frame(df.to_dict(orient="records"))


def load_run(run_id: str, store: str | Path | None = None) -> pd.DataFrame:
    """A stored run's rows as a DataFrame (also a run that crashed: its journal is read)."""
    return Run.open(run_id, store).rows()


def list_runs(store: str | Path | None = None) -> pd.DataFrame:
    """One line per run, newest first: id, status, model, devices, rows, failed rows, times."""
    base = results_dir(store)
    items: list[dict[str, Any]] = []
    for root in sorted(base.iterdir() if base.is_dir() else [], reverse=True):
        if not (root / META).is_file():
            continue
        try:
            meta = Run(root).meta
        except ConfigError as exc:
            items.append({"run_id": root.name, "status": f"unreadable: {exc}"})
            continue
        items.append({"run_id": root.name, "status": meta.get("status"), "model": meta.get("model"),
                      "devices": len(meta.get("request", {}).get("devices", [])), "rows": meta.get("rows"),
                      "failed_rows": meta.get("failed_rows"), "started": meta.get("started"),
                      "ended": meta.get("ended")})
    cols = ["run_id", "status", "model", "devices", "rows", "failed_rows", "started", "ended"]
    return pd.DataFrame(items, columns=cols)


def artifact_record(art: Any) -> dict[str, Any]:
    """An Artifact as JSON-able data, for the journal (``--resume`` rebuilds it without exporting)."""
    return asdict(art)


def artifact_from_record(data: dict[str, Any]) -> Any:
    from edgekit.exporters.base import Artifact, ParityResult

    kw: dict[str, Any] = {f.name: data.get(f.name) for f in fields(Artifact)}
    for key in ("path", "inputs", "eval_set"):
        kw[key] = Path(kw[key]) if kw[key] else None
    kw["files"] = [Path(p) for p in kw["files"] or []]
    kw["parity"] = ParityResult(**kw["parity"]) if kw["parity"] else None
    return Artifact(**kw)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)
