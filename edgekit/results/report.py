"""A run's report: one self-contained HTML page, plus its plots as PNG files for embedding elsewhere.

Why self-contained: a report is mailed, attached to tickets and opened offline, so it fetches nothing.
CSS is inline, the plots are ``data:`` PNGs, and the only script is a few lines of our own. A
Content-Security-Policy allows only that script (by hash), inline data images and the page's own style.

Device names, errors and device facts come from devices, and devices are not trusted. Every piece of data
is html-escaped, and it is escaped for matplotlib's mathtext (``$``) before it goes into a plot. If an
escape were ever missed, the policy above would still stop injected markup from running or loading anything.

Missing is never zero. A row without a figure is left out of that plot and the page says so. Failed rows
are listed in a table and never plotted. Noisy or emulated rows are drawn hollow or hatched, and the
legend says why.

The script counts the plot images that decoded and writes the count to ``<body data-plots-rendered>``,
next to ``data-plots-expected`` (written by Python: the number of PNGs embedded). A headless browser's
``--dump-dom`` therefore shows whether the plots rendered (see ``edgekit.testing._browser``).

This module assembles and writes the page; the plots are drawn in ``edgekit.results.plots``.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from edgekit._fs import atomic_write_text
from edgekit.results.plots import (
    PLOT_NAMES,
    Plot,
    cell_text,
    devices_in_order,
    draw_plots,
    energy_values,
    numeric,
    truthy,
    write_pngs,
)
from edgekit.results.rows import finite

__all__ = ["ReportFiles", "write_report"]

_DASH = "\u2014"  # shown for a missing value: never 0

_SCRIPT = """
window.addEventListener("load", function () {
  var n = 0;
  document.querySelectorAll("img.plot").forEach(function (img) {
    if (img.complete && img.naturalWidth > 0) { n += 1; }
  });
  document.body.dataset.plotsRendered = String(n);
});
"""

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: #1d2330; background: #fff; margin: 0 auto; padding: 1.2em 2em 3em; max-width: 1280px; }
h1 { font-size: 1.6em; margin: 0 0 .3em; }
h1 .run { font-weight: normal; color: #5a6275; }
h2 { font-size: 1.25em; margin: 1.8em 0 .5em; padding-bottom: .2em; border-bottom: 1px solid #dde1ea; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: .15em 1.2em; margin: .6em 0; }
dl.meta dt { color: #5a6275; }
dl.meta dd { margin: 0; }
.badge { display: inline-block; padding: 0 .55em; border-radius: .8em; font-size: .9em; background: #e6e9f0; }
.badge.complete { background: #d9f2df; color: #17622c; }
.badge.interrupted, .badge.running { background: #fdecc8; color: #7a4b00; }
.note { background: #fff7e0; border-left: 4px solid #e0a800; padding: .4em .8em; margin: .6em 0; }
.empty { color: #5a6275; font-style: italic; }
nav a { margin-right: 1em; }
figure { margin: .4em 0 1em; }
img.plot { max-width: 100%; height: auto; border: 1px solid #eef0f4; }
figcaption { color: #3d4456; font-size: .93em; max-width: 70em; margin-top: .3em; }
table { border-collapse: collapse; font-size: .92em; margin: .4em 0; }
th, td { border: 1px solid #dde1ea; padding: .25em .55em; text-align: left; vertical-align: top; }
th { background: #f3f5f9; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody tr:nth-child(even) { background: #fafbfd; }
tr.recommended td { background: #eefaf1; }
td.err { white-space: pre-wrap; word-break: break-word; max-width: 60em; font-family: ui-monospace, monospace;
         font-size: .9em; }
.flag { color: #7a4b00; }
details pre { white-space: pre-wrap; word-break: break-word; background: #f6f7fa; padding: .6em; }
footer { margin-top: 2.5em; color: #7a8193; font-size: .88em; }
"""


@dataclass(frozen=True)
class ReportFiles:
    """What ``write_report`` wrote: the page, and each plot it drew as a PNG (plot name -> file)."""

    html: Path
    pngs: dict[str, Path]


# ---- public API --------------------------------------------------------------------------------------


def write_report(df: pd.DataFrame, meta: dict[str, Any], out: str | Path, *,
                 png_dir: str | Path | None = None, search: dict[str, Any] | None = None) -> ReportFiles:
    """Write the HTML report of a run to ``out`` (atomically) and its plots as PNGs to ``png_dir``
    (default: ``<out stem>_png/`` beside ``out``).

    ``df`` is a results table (``edgekit.results.rows.COLUMNS``, plus ``stage`` and ``attempts`` from a
    fleet run when present). ``meta`` is the run's metadata; any key may be missing. An empty or all-failed
    table still gives a valid page that says there is nothing measured.
    """
    out = Path(out)
    png_dir = Path(png_dir) if png_dir is not None else out.with_name(f"{out.stem}_png")
    table = _prepare(df)
    plots = draw_plots(table[table["_measured"]], search)
    pngs = write_pngs(plots, png_dir)

    out.parent.mkdir(parents=True, exist_ok=True)
    # 0o644 whatever the umask, like the PNGs: a report is shared, others must be able to read it
    atomic_write_text(out, _page(table, dict(meta or {}), plots), mode=0o644)
    return ReportFiles(html=out, pngs=pngs)


def search_data(run_dir: Path) -> dict[str, Any] | None:
    """A search run's trials, objectives, confirmed front and pick, from its journal (None for other runs)."""
    from edgekit.config.search import OBJECTIVES
    from edgekit.results.store import Run

    run = Run(run_dir)
    meta = run.meta
    if meta.get("kind") != "search":
        return None
    trials = pd.DataFrame([{"trial": r["number"], **r["params"], "status": r["status"], **(r.get("row") or {})}
                           for r in run.latest("trial", "number")])
    objectives = []
    for text in meta["search"]["objectives"]:
        name, _, direction = text.partition(":")
        objectives.append((name, OBJECTIVES[name][0], direction or OBJECTIVES[name][1]))
    fronts = list(run.records("front"))
    front = pd.DataFrame(fronts[-1]["rows"]) if fronts else pd.DataFrame()
    pick_trial = fronts[-1].get("pick_trial") if fronts else None  # set whenever the front has a member
    chosen = front[front["trial"] == pick_trial] if pick_trial is not None else front.iloc[:0]
    pick = chosen.iloc[0].to_dict() if len(chosen) else None
    return {"trials": trials, "objectives": objectives, "front": front, "pick": pick,
            "pick_reason": fronts[-1].get("pick") if fronts else None}


# ---- the table, made uniform ---------------------------------------------------------------------------


def _prepare(df: pd.DataFrame) -> pd.DataFrame:
    """A copy with every column the report reads, and derived columns (``_``-prefixed) it plots from.

    Rows may come from ``to_frame``, Parquet or JSON: missing text may be None or NaN, numbers may sit in
    object columns. Everything numeric goes through ``to_numeric``, so a missing value is NaN and never 0.
    """
    t = df.copy().reset_index(drop=True)
    for col in ("device", "model", "target", "precision", "threads", "error", "noisy", "emulated",
                "noisy_reasons", "recommended", "energy_status", "energy_source", "memory_method"):
        if col not in t.columns:
            t[col] = None
    errors = [cell_text(v) for v in t["error"]]
    p50 = numeric(t, "latency_ms_p50")
    t["_measured"] = pd.Series([e is None for e in errors], index=t.index, dtype=bool) & np.isfinite(p50)
    t["_flagged"] = [truthy(n) or truthy(e) for n, e in zip(t["noisy"], t["emulated"])]
    t["_label"] = _labels(t)
    acc, dev_acc = numeric(t, "accuracy"), numeric(t, "device_accuracy")
    t["_acc"] = dev_acc.where(dev_acc.notna(), acc)
    t["_acc_on_device"] = dev_acc.notna()
    return t


def _labels(t: pd.DataFrame) -> list[str]:
    """``target/precision``; the model and thread count join in only when the table has several."""
    several_models = t["model"].map(cell_text).dropna().nunique() > 1
    several_threads = pd.to_numeric(t["threads"], errors="coerce").dropna().nunique() > 1
    labels = []
    for _, r in t.iterrows():
        label = f"{cell_text(r['target']) or '?'}/{cell_text(r['precision']) or '?'}"
        if several_models:
            label = f"{cell_text(r['model']) or '?'} {label}"
        if several_threads and finite(r["threads"]) is not None:
            label += f" \u00d7{int(finite(r['threads']))}t"  # type: ignore[arg-type]
        labels.append(label)
    return labels


# ---- the page ------------------------------------------------------------------------------------------


def _page(t: pd.DataFrame, meta: dict[str, Any], plots: dict[str, Plot]) -> str:
    measured, failed = t[t["_measured"]], t[~t["_measured"]]
    script_hash = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
    style_hash = base64.b64encode(hashlib.sha256(_CSS.encode()).digest()).decode()
    csp = (f"default-src 'none'; img-src data:; style-src 'sha256-{style_hash}'; "
           f"script-src 'sha256-{script_hash}'; base-uri 'none'; form-action 'none'")
    title = f"edgekit report: {cell_text(meta.get('run_id')) or cell_text(meta.get('model')) or 'results'}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{html.escape(csp)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head>",
        f'<body data-plots-expected="{len(plots)}">',
        _header(meta, measured, failed),
        '<nav><a href="#plots">Plots</a><a href="#results">Results</a><a href="#failed">Failed</a>'
        '<a href="#devices">Devices</a></nav>',
        _plot_sections(t, measured, plots),
        _results_table(measured),
        _failed_table(failed, t),
        _device_facts(meta),
        _raw_meta(meta),
        f"<footer>Written by edgekit {html.escape(cell_text(meta.get('edgekit_version')) or '')} on "
        f"{html.escape(datetime.now(timezone.utc).isoformat(timespec='seconds'))}. Self-contained: this page "
        "loads nothing from the network.</footer>",
        f"<script>{_SCRIPT}</script>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _header(meta: dict[str, Any], measured: pd.DataFrame, failed: pd.DataFrame) -> str:
    status = cell_text(meta.get("status"))
    sha = cell_text(meta.get("model_sha256"))
    started, ended = cell_text(meta.get("started")), cell_text(meta.get("ended"))
    fields: list[tuple[str, str]] = []
    if cell_text(meta.get("run_id")):
        fields.append(("Run", _esc(meta["run_id"])))
    if cell_text(meta.get("model")):
        fields.append(("Model", _esc(meta["model"])))
    if sha:
        fields.append(("Model SHA-256", f'<code title="{_esc(sha)}">{_esc(sha[:12])}</code>'))
    if status:
        fields.append(("Status", f'<span class="badge {_esc(status.split()[0])}">{_esc(status)}</span>'))
    if started:
        fields.append(("Started", _esc(started)))
    if ended:
        fields.append(("Ended", _esc(ended)))
    took = _duration(started, ended)
    if took:
        fields.append(("Duration", _esc(took)))
    if cell_text(meta.get("edgekit_version")):
        fields.append(("edgekit", _esc(meta["edgekit_version"])))
    profiles = meta.get("profiles")
    if isinstance(profiles, (dict, list, tuple)) and profiles:
        fields.append(("Profiles", _esc(", ".join(str(p) for p in profiles))))
    fields.append(("Rows", f"{len(measured)} measured, {len(failed)} failed"))
    heading = _esc(cell_text(meta.get("run_id")) or "")
    out = [f'<header><h1>edgekit report <span class="run">{heading}</span></h1><dl class="meta">']
    out += [f"<dt>{k}</dt><dd>{v}</dd>" for k, v in fields]
    out.append("</dl>")
    if status and status != "complete":
        out.append(f'<p class="note">This run is <b>{_esc(status)}</b>: the results may be partial.</p>')
    out.append("</header>")
    return "\n".join(out)


def _duration(started: str | None, ended: str | None) -> str | None:
    try:
        seconds = (datetime.fromisoformat(ended) - datetime.fromisoformat(started)).total_seconds()  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if seconds < 0:
        return None
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min {secs:02d} s" if hours else f"{minutes} min {secs:02d} s"


def _plot_sections(t: pd.DataFrame, measured: pd.DataFrame, plots: dict[str, Plot]) -> str:
    out = ['<section id="plots">']
    if measured.empty:
        out.append('<h2>Plots</h2><p class="empty">No measured rows: nothing to plot'
                   + (f" ({len(t)} row(s), all failed)." if len(t) else ".") + "</p>")
    for name in (["search"] if "search" in plots else []) + list(PLOT_NAMES):
        plot = plots.get(name)
        if plot is not None:
            uri = "data:image/png;base64," + base64.b64encode(plot.png).decode("ascii")
            out.append(f'<section id="plot-{name}"><h2>{_esc(plot.title)}</h2><figure>'
                       f'<img class="plot" data-plot="{name}" alt="{_esc(plot.alt)}" src="{uri}">'
                       f"<figcaption>{plot.caption}</figcaption></figure></section>")
        elif not measured.empty:
            out.append(f'<section id="plot-{name}">{_not_plotted(name, measured)}</section>')
    out.append("</section>")
    return "\n".join(out)


def _not_plotted(name: str, measured: pd.DataFrame) -> str:
    """Why a plot is absent, for the measured rows it would have shown."""
    if name == "energy":
        statuses = pd.Series([cell_text(s) or "no energy status recorded" for s in measured["energy_status"]])
        reasons = "".join(f"<li>{_esc(s)} ({n} row{'s' if n > 1 else ''})</li>"
                          for s, n in statuses.value_counts(sort=True).items())
        return f'<h2>Energy</h2><p class="empty">Energy: not measured.</p><ul class="reasons">{reasons}</ul>'
    what = {"latency_vs_accuracy": ("Latency vs accuracy", "no measured row has an accuracy figure"),
            "memory": ("Memory", "Memory: not measured (no row has a peak RSS figure)")}
    title, why = what.get(name, (name, "no data"))
    return f'<h2>{_esc(title)}</h2><p class="empty">{_esc(why)}.</p>'


_RESULT_COLUMNS = ("device", "target", "precision", "threads", "KiB", "accuracy %", "device acc %", "p50 ms",
                   "p90 ms", "p99 ms", "p50 CI95 ms", "RSS MiB", "mJ/inf", "noisy / emulated", "recommended")


def _results_table(measured: pd.DataFrame) -> str:
    head = f'<section id="results"><h2>Results ({len(measured)} measured row{"s" if len(measured) != 1 else ""})</h2>'
    if measured.empty:
        return head + '<p class="empty">No measured rows.</p></section>'
    with_attempts = "attempts" in measured.columns and measured["attempts"].map(finite).notna().any()
    cols = list(_RESULT_COLUMNS) + (["attempts"] if with_attempts else [])
    order = {d: i for i, d in enumerate(devices_in_order(measured))}
    rows = measured.assign(_dev_order=measured["device"].astype(str).map(order),
                           _rec=~measured["recommended"].map(truthy), _p50=numeric(measured, "latency_ms_p50"))
    rows = rows.sort_values(["_dev_order", "_rec", "_p50"], kind="stable")
    value, err, is_gross, estimated = energy_values(rows)
    body = []
    for i, r in rows.iterrows():
        cells = [
            _td(r["device"]), _td(r["target"]), _td(r["precision"]), _td_num(_fmt(r["threads"], 0)),
            _td_num(_fmt(_scaled(r.get("artifact_bytes"), 1 / 1024), decimals=1)),
            _td_num(_fmt(_scaled(r.get("accuracy"), 100), decimals=2)),
            _td_num(_fmt(_scaled(r.get("device_accuracy"), 100), decimals=2)),
            _td_num(_fmt(r.get("latency_ms_p50"))), _td_num(_fmt(r.get("latency_ms_p90"))),
            _td_num(_fmt(r.get("latency_ms_p99"))),
            _td_num(_ci(r.get("latency_ms_p50_ci95_low"), r.get("latency_ms_p50_ci95_high"))),
            _td_num(_fmt(r.get("peak_rss_mb"), decimals=1)),
            _energy_cell(value[i], err[i], bool(is_gross[i]), bool(estimated[i]), cell_text(r.get("energy_status"))),
            _conditions_cell(r),
            "<td>yes</td>" if truthy(r["recommended"]) else "<td></td>",
        ]
        if with_attempts:
            cells.append(_td_num(_fmt(r.get("attempts"), 0)))
        cls = ' class="recommended"' if truthy(r["recommended"]) else ""
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    thead = "".join(f"<th>{_esc(c)}</th>" for c in cols)
    return (head + f"<table class=\"results\"><thead><tr>{thead}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            "<p>KiB: artifact size. accuracy: host-side, of the artifact; device acc: scored with the device's "
            "runtime. CI95: 95 % confidence interval of p50. noisy / emulated: hover for the reasons. recommended: fastest artifact per device within "
            "parity tolerance and one accuracy point of fp32.</p></section>")


def _failed_table(failed: pd.DataFrame, t: pd.DataFrame) -> str:
    head = f'<section id="failed"><h2>Failed ({len(failed)})</h2>'
    if failed.empty:
        return head + '<p class="empty">No failed rows.</p></section>'
    cols = ["device", "target", "precision", "threads", "stage"]
    with_attempts = "attempts" in t.columns
    cols += ["attempts"] if with_attempts else []
    cols.append("error")
    body = []
    for _, r in failed.iterrows():
        error = cell_text(r["error"]) or "no latency recorded (and no error given)"
        cells = [_td(r["device"]), _td(r["target"]), _td(r["precision"]), _td_num(_fmt(r["threads"], 0)),
                 _td(r.get("stage"))]
        if with_attempts:
            cells.append(_td_num(_fmt(r.get("attempts"), 0)))
        cells.append(f'<td class="err">{_esc(error)}</td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    thead = "".join(f"<th>{_esc(c)}</th>" for c in cols)
    return head + f"<table class=\"failed\"><thead><tr>{thead}</tr></thead><tbody>{''.join(body)}</tbody></table></section>"


_FACT_COLUMNS = (("machine", "machine"), ("cpu_model", "CPU"), ("cores", "cores"), ("mem_total_mib", "memory MiB"),
                 ("os", "OS"), ("kernel", "kernel"), ("python", "Python"), ("numpy", "numpy"),
                 ("runtimes", "runtimes"), ("energy", "energy sensor"), ("emulated", "emulated"))


def _device_facts(meta: dict[str, Any]) -> str:
    head = '<section id="devices"><h2>Devices</h2>'
    devices = meta.get("devices")
    if isinstance(devices, (list, tuple)):  # names only
        devices = {str(d): {} for d in devices}
    if not isinstance(devices, dict) or not devices:
        return head + '<p class="empty">No device facts recorded.</p></section>'
    known = [k for k, _ in _FACT_COLUMNS]
    extra = sorted({k for f in devices.values() if isinstance(f, dict) for k, v in f.items()
                    if k not in known and not isinstance(v, (dict, list, tuple)) and k != "python_executable"})
    cols = [(k, label) for k, label in _FACT_COLUMNS
            if any(isinstance(f, dict) and k in f for f in devices.values())] + [(k, k) for k in extra]
    body = []
    for name, facts in devices.items():
        if not isinstance(facts, dict):
            body.append(f"<tr><td>{_esc(name)}</td><td colspan=\"{max(len(cols), 1)}\">{_esc(facts)}</td></tr>")
            continue
        cells = "".join(f"<td>{_esc(_fact_text(k, facts.get(k)))}</td>" for k, _ in cols)
        body.append(f"<tr><td>{_esc(name)}</td>{cells}</tr>")
    thead = "<th>device</th>" + "".join(f"<th>{_esc(label)}</th>" for _, label in cols)
    return head + f"<table class=\"devices\"><thead><tr>{thead}</tr></thead><tbody>{''.join(body)}</tbody></table></section>"


def _fact_text(key: str, value: Any) -> str:
    """One device fact as short text; the agent's nested answers (runtimes, energy) summarised."""
    if value is None:
        return _DASH
    if key == "runtimes" and isinstance(value, dict):
        parts = []
        for fmt, info in value.items():
            info = info if isinstance(info, dict) else {}
            pkg, version = info.get("package"), info.get("version")
            parts.append(f"{fmt}: {pkg} {version or ''}".rstrip() if pkg else f"{fmt}: missing")
        return ", ".join(parts) or _DASH
    if key == "energy" and isinstance(value, dict):
        return str(value.get("source") or "none") if value.get("available") else "none"
    if key == "mem_total_mib" and finite(value) is not None:
        return f"{finite(value):.0f}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)[:300]
    return str(value)


def _raw_meta(meta: dict[str, Any]) -> str:
    if not meta:
        return ""
    text = json.dumps(meta, indent=2, default=str, sort_keys=True)
    return f"<details><summary>Run metadata (raw)</summary><pre>{_esc(text)}</pre></details>"


# ---- cells and numbers ---------------------------------------------------------------------------------


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _td(value: Any) -> str:
    text = cell_text(value)
    return f"<td>{_esc(text)}</td>" if text is not None else f"<td>{_DASH}</td>"


def _td_num(text: str) -> str:
    return f'<td class="num">{text}</td>'


def _scaled(value: Any, factor: float) -> float | None:
    v = finite(value)
    return None if v is None else v * factor


def _fmt(value: Any, decimals: int | None = None, sig: int = 3) -> str:
    """A number for the table: fixed ``decimals``, else ``sig`` significant digits; missing is a dash."""
    v = finite(value)
    if v is None:
        return _DASH
    if decimals is None:
        decimals = max(0, sig - 1 - math.floor(math.log10(abs(v)))) if v else 0
    return f"{v:.{decimals}f}"


def _ci(low: Any, high: Any) -> str:
    lo, hi = finite(low), finite(high)
    return f"{_fmt(lo)}\u2013{_fmt(hi)}" if lo is not None and hi is not None else _DASH


def _energy_cell(value: float, err: float, gross: bool, estimated: bool, status: str | None) -> str:
    title = f' title="{_esc(status)}"' if status else ""
    if not np.isfinite(value):
        return f'<td class="num"{title}>{_DASH}</td>'
    text = _fmt(value) + (f" \u00b1 {_fmt(err)}" if np.isfinite(err) else "")
    text += " (gross)" if gross else ""
    text += " (estimated)" if estimated else ""
    return f'<td class="num"{title}>{_esc(text)}</td>'


def _conditions_cell(r: pd.Series) -> str:
    flags = [name for name in ("noisy", "emulated") if truthy(r.get(name))]
    if not flags:
        return "<td></td>"
    reasons = r.get("noisy_reasons")
    why = "; ".join(str(x) for x in reasons) if isinstance(reasons, Iterable) and not isinstance(reasons, str) \
        else (cell_text(reasons) or "")
    title = f' title="{_esc(why)}"' if why else ""
    return f'<td class="flag"{title}>{_esc(", ".join(flags))}</td>'

