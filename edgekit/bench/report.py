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
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import pandas as pd

from edgekit.bench.results import finite

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["PLOT_NAMES", "ReportFiles", "pareto_front", "write_report"]

PLOT_NAMES = ("latency_vs_accuracy", "latency_by_device", "memory", "energy")

# Hatch patterns for bars whose figure needs a caveat; the legend spells each one out.
_MARKS = {
    "flagged": ("///", "hatched: noisy or emulated (timing not trustworthy)"),
    "gross": ("...", "dotted: gross energy (device idle draw not subtracted; no error bar)"),
    "estimated": ("xxx", "crossed: estimated from the profile's power model, not measured"),
}
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
_DASH = "\u2014"  # shown for a missing value: never 0
_LOG_SPAN = 10.0  # an axis spanning more than this ratio goes log scale

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


@dataclass(frozen=True)
class _Plot:
    name: str
    title: str
    png: bytes
    alt: str
    caption: str  # HTML, already escaped


# ---- public API --------------------------------------------------------------------------------------


def pareto_front(df: pd.DataFrame, x: str = "latency_ms_p50", y: str = "accuracy") -> pd.Series:
    """A bool mask over ``df``'s rows: True where no other row is at least as good on both axes and strictly
    better on one (lower ``x`` and higher ``y`` are better).

    The front is taken over all the rows given, whatever their device. Rows that tie exactly on both axes
    are all on the front. A row with a missing (or non-finite) ``x`` or ``y`` is never on it.
    """
    xs = pd.to_numeric(df[x], errors="coerce").to_numpy(dtype=float)
    ys = pd.to_numeric(df[y], errors="coerce").to_numpy(dtype=float)
    valid = np.isfinite(xs) & np.isfinite(ys)
    front = np.zeros(len(df), dtype=bool)
    best = -np.inf  # the best y among strictly smaller x
    for xv in np.unique(xs[valid]):  # ascending
        at = valid & (xs == xv)
        top = ys[at].max()
        if top > best:  # only the best y at this x can beat everything faster
            front |= at & (ys == top)
            best = top
    return pd.Series(front, index=df.index, name="pareto")


def write_report(df: pd.DataFrame, meta: dict[str, Any], out: str | Path, *,
                 png_dir: str | Path | None = None) -> ReportFiles:
    """Write the HTML report of a run to ``out`` (atomically) and its plots as PNGs to ``png_dir``
    (default: ``<out stem>_png/`` beside ``out``).

    ``df`` is a results table (``edgekit.bench.results.COLUMNS``, plus ``stage`` and ``attempts`` from a
    fleet run when present). ``meta`` is the run's metadata; any key may be missing. An empty or all-failed
    table still gives a valid page that says there is nothing measured.
    """
    out = Path(out)
    png_dir = Path(png_dir) if png_dir is not None else out.with_name(f"{out.stem}_png")
    table = _prepare(df)
    plots = _draw_plots(table[table["_measured"]])

    png_dir.mkdir(parents=True, exist_ok=True)
    pngs: dict[str, Path] = {}
    for name in PLOT_NAMES:  # a PNG left over from an earlier report must not pass for this run's plot
        path = png_dir / f"{name}.png"
        if name in plots:
            _write_atomic(path, plots[name].png)
            pngs[name] = path
        else:
            path.unlink(missing_ok=True)

    out.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(out, _page(table, dict(meta or {}), plots).encode("utf-8"))
    return ReportFiles(html=out, pngs=pngs)


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
    errors = [_text(v) for v in t["error"]]
    p50 = _num(t, "latency_ms_p50")
    t["_measured"] = pd.Series([e is None for e in errors], index=t.index, dtype=bool) & np.isfinite(p50)
    t["_flagged"] = [_truthy(n) or _truthy(e) for n, e in zip(t["noisy"], t["emulated"])]
    t["_label"] = _labels(t)
    acc, dev_acc = _num(t, "accuracy"), _num(t, "device_accuracy")
    t["_acc"] = dev_acc.where(dev_acc.notna(), acc)
    t["_acc_on_device"] = dev_acc.notna()
    return t


def _labels(t: pd.DataFrame) -> list[str]:
    """``target/precision``; the model and thread count join in only when the table has several."""
    several_models = t["model"].map(_text).dropna().nunique() > 1
    several_threads = pd.to_numeric(t["threads"], errors="coerce").dropna().nunique() > 1
    labels = []
    for _, r in t.iterrows():
        label = f"{_text(r['target']) or '?'}/{_text(r['precision']) or '?'}"
        if several_models:
            label = f"{_text(r['model']) or '?'} {label}"
        if several_threads and finite(r["threads"]) is not None:
            label += f" \u00d7{int(finite(r['threads']))}t"  # type: ignore[arg-type]
        labels.append(label)
    return labels


def _num(t: pd.DataFrame, col: str) -> pd.Series:
    """Column ``col`` as floats (NaN where missing or not a number; all NaN when the column is absent)."""
    if col not in t.columns:
        return pd.Series(np.nan, index=t.index, dtype=float)
    return pd.to_numeric(t[col], errors="coerce").astype(float)


def _missing(v: Any) -> bool:
    if v is None:
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):  # lists and arrays are values, not missing
        return False


def _text(v: Any) -> str | None:
    """A cell as text, None when missing or empty."""
    if _missing(v):
        return None
    s = str(v)
    return s if s.strip() else None


def _truthy(v: Any) -> bool:
    return False if _missing(v) else bool(v)


def _devices_in_order(t: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(str(d) for d in t["device"]))


# ---- plots ---------------------------------------------------------------------------------------------


def _draw_plots(m: pd.DataFrame) -> dict[str, _Plot]:
    """The plots the measured rows ``m`` allow, by name. Matplotlib loads here, not on import."""
    if m.empty:
        return {}
    colors = _key_colors(m)
    drawn = [_latency_vs_accuracy(m), _latency_by_device(m, colors), _memory(m, colors), _energy(m, colors)]
    return {p.name: p for p in drawn if p is not None}


def _figure(width: float = 8.5, height: float = 5.0) -> Figure:
    # A bare Figure, not pyplot: no global backend switch (a notebook's stays as it was), no figure
    # registry to leak from, and safe from worker threads. savefig renders it with Agg.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})  # no tool URL inside the PNG
    return buf.getvalue()


def _mpl(text: str, limit: int = 40) -> str:
    """Data text made safe for a matplotlib label: ``$`` would start mathtext (and can fail the draw)."""
    text = text if len(text) <= limit else text[: limit - 1] + "\u2026"
    return text.replace("\\", "\\\\").replace("$", r"\$")


def _key_colors(m: pd.DataFrame) -> dict[str, Any]:
    """One colour per target/precision label, the same in every bar plot."""
    from matplotlib import colormaps

    keys = sorted(set(m["_label"]))
    cmap = colormaps["tab10" if len(keys) <= 10 else "tab20"]
    return {k: cmap(i % cmap.N) for i, k in enumerate(keys)}


def _latency_vs_accuracy(m: pd.DataFrame) -> _Plot | None:
    from matplotlib import colormaps
    from matplotlib.lines import Line2D

    pts = m[m["_acc"].notna()].copy()
    if pts.empty:
        return None
    pts["_p50"] = _num(pts, "latency_ms_p50")
    pts["_pct"] = pts["_acc"] * 100
    front = pareto_front(pts, x="_p50", y="_acc")
    fig = _figure()
    ax = fig.add_subplot()
    cmap = colormaps["tab10"]
    handles = []
    devices = _devices_in_order(pts)
    for i, device in enumerate(devices):
        d = pts[pts["device"].astype(str) == device]
        color, marker = cmap(i % cmap.N), _MARKERS[i % len(_MARKERS)]
        size = 40 + 36 * min(len(devices) - 1 - i, 4)  # later devices smaller, so a shared point shows them all
        solid = ~d["_flagged"].astype(bool)
        ax.scatter(d.loc[solid, "_p50"], d.loc[solid, "_pct"], s=size, marker=marker, color=color, zorder=3)
        ax.scatter(d.loc[~solid, "_p50"], d.loc[~solid, "_pct"], s=size, marker=marker, facecolors="none",
                   edgecolors=color, linewidths=1.4, zorder=3)
        handles.append(Line2D([], [], ls="", marker=marker, color=color, label=_mpl(device)))
    f = pts[front.to_numpy()].sort_values("_p50")
    ax.step(f["_p50"], f["_pct"], where="post", color="black", ls="--", lw=1.1, zorder=2)
    ax.scatter(f["_p50"], f["_pct"], s=190, facecolors="none", edgecolors="black", linewidths=1.2, zorder=4)
    handles.append(Line2D([], [], color="black", ls="--", marker="o", markersize=11, markerfacecolor="none",
                          label="Pareto front (ringed): no other point\nis both faster and more accurate"))
    if pts["_flagged"].any():
        handles.append(Line2D([], [], ls="", marker="o", markerfacecolor="none", markeredgecolor="dimgray",
                              label="hollow: noisy or emulated\n(timing not trustworthy)"))
    _label_points(ax, pts)
    log = _log_span(pts["_p50"])
    if log:
        ax.set_xscale("log")
    ax.set_xlabel("p50 latency per inference (ms" + (", log scale)" if log else ")"))
    ax.set_ylabel("top-1 accuracy (%)")
    _accuracy_limits(ax, pts["_pct"])
    ax.set_title("Latency vs accuracy")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)

    on_device = int(pts["_acc_on_device"].sum())
    caption = (f"x: median (p50) latency per inference. y: top-1 accuracy measured on the device "
               f"({on_device} of {len(pts)} points), else the host-side accuracy of the artifact. The dashed "
               f"step line joins the Pareto front over all devices: points that no other point beats on both "
               f"latency and accuracy (ringed).")
    if pts["_flagged"].any():
        caption += " Hollow markers: noisy or emulated rows, whose timing is not the hardware's steady state."
    if len(pts) < len(m):
        caption += f" {len(m) - len(pts)} measured row(s) without any accuracy figure are not shown."
    alt = f"Scatter plot of p50 latency against accuracy for {len(pts)} measured rows, with the Pareto front"
    return _Plot("latency_vs_accuracy", "Latency vs accuracy", _png(fig), alt, html.escape(caption))


def _accuracy_limits(ax: Axes, pct: pd.Series) -> None:
    """Keep the accuracy axis within 0..100 %, with a readable band when every point has the same value."""
    lo, hi = float(pct.min()), float(pct.max())
    pad = max((hi - lo) * 0.15, 0.5)
    ax.set_ylim(max(lo - pad, 0.0), min(hi + pad, 100.0 + pad / 3))


def _label_points(ax: Axes, pts: pd.DataFrame) -> None:
    """A ``target/precision`` label per point; the same label at the same spot is written once, and
    neighbours (in latency order) are staggered so they overlap less."""
    offsets = ((5, 5), (5, -11), (5, 14), (5, -20))
    seen: set[tuple[str, float, float]] = set()
    for _, r in pts.sort_values(["_p50", "_pct"]).iterrows():
        key = (str(r["_label"]), round(float(r["_p50"]), 12), round(float(r["_pct"]), 9))
        if key in seen:
            continue
        ax.annotate(_mpl(str(r["_label"]), 28), (r["_p50"], r["_pct"]), xytext=offsets[len(seen) % len(offsets)],
                    textcoords="offset points", fontsize=7, color="#333333")
        seen.add(key)


def _log_span(values: pd.Series) -> bool:
    v = values.dropna()
    return bool(len(v) and (v > 0).all() and v.max() / v.min() > _LOG_SPAN)


def _bars(m: pd.DataFrame, values: pd.Series, colors: dict[str, Any], *, err_low: pd.Series | None = None,
          err_high: pd.Series | None = None, marks: dict[str, pd.Series] | None = None,
          title: str, ylabel: str) -> bytes:
    """Grouped bars: a group per device, a bar per target/precision label. Rows whose value is NaN get no
    bar (a missing figure is not a zero). Error bars where both error halves are known."""
    from matplotlib.patches import Patch

    have = values.notna()
    rows = m[have]
    devices = _devices_in_order(rows)
    keys = [k for k in colors if k in set(rows["_label"])]
    width = 0.8 / max(len(keys), 1)
    fig = _figure(max(7.0, min(18.0, 3.0 + 0.32 * len(devices) * len(keys))), 4.8)
    ax = fig.add_subplot()
    used_marks: set[str] = set()
    for gi, device in enumerate(devices):
        in_device = rows["device"].astype(str) == device
        for ki, key in enumerate(keys):
            hit = rows.index[in_device & (rows["_label"] == key)]
            if not len(hit):
                continue
            i = hit[0]  # one row per device and label (the store keeps the last of retries)
            x = gi + (ki - (len(keys) - 1) / 2) * width
            row_marks = [name for name, s in (marks or {}).items() if bool(s.get(i, False))]
            used_marks.update(row_marks)
            hatch = "".join(_MARKS[name][0] for name in row_marks) or None
            ax.bar(x, values[i], width * 0.92, color="white" if hatch else colors[key], edgecolor=colors[key],
                   hatch=hatch, linewidth=1.2, zorder=2)
            lo = err_low[i] if err_low is not None else np.nan
            hi = err_high[i] if err_high is not None else np.nan
            if np.isfinite(lo) and np.isfinite(hi):
                ax.errorbar(x, values[i], yerr=[[max(lo, 0.0)], [max(hi, 0.0)]], fmt="none", ecolor="black",
                            elinewidth=1, capsize=3, zorder=3)
    ax.set_xticks(range(len(devices)), [_mpl(d, 24) for d in devices],
                  rotation=20 if len(devices) > 4 else 0, ha="right" if len(devices) > 4 else "center")
    log = _log_span(values[have])
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel + (" (log scale)" if log else ""))
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3, zorder=0)
    handles = [Patch(facecolor=colors[k], edgecolor=colors[k], label=_mpl(k)) for k in keys]
    handles += [Patch(facecolor="white", edgecolor="dimgray", hatch=_MARKS[name][0], label=_MARKS[name][1])
                for name in _MARKS if name in used_marks]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _png(fig)


def _left_out(m: pd.DataFrame, values: pd.Series, what: str) -> str:
    n = int(values.isna().sum())
    return f" {n} measured row(s) have no {what} and get no bar." if n else ""


def _flag_note(m: pd.DataFrame, values: pd.Series) -> str:
    return " Hatched bars: noisy or emulated rows." if m.loc[values.notna(), "_flagged"].any() else ""


def _latency_by_device(m: pd.DataFrame, colors: dict[str, Any]) -> _Plot | None:
    p50 = _num(m, "latency_ms_p50")
    low, high = _num(m, "latency_ms_p50_ci95_low"), _num(m, "latency_ms_p50_ci95_high")
    png = _bars(m, p50, colors, err_low=p50 - low, err_high=high - p50, marks={"flagged": m["_flagged"]},
                title="p50 latency by device", ylabel="p50 latency per inference (ms)")
    no_ci = int((p50.notna() & (low.isna() | high.isna())).sum())
    caption = "Median latency per inference; error bars: the 95 % confidence interval of the median."
    caption += f" {no_ci} bar(s) have no confidence interval." if no_ci else ""
    caption += _flag_note(m, p50)
    alt = f"Grouped bar chart of p50 latency for {len(m)} measured rows on {m['device'].nunique()} device(s)"
    return _Plot("latency_by_device", "Latency by device", png, alt, html.escape(caption))


def _memory(m: pd.DataFrame, colors: dict[str, Any]) -> _Plot | None:
    rss = _num(m, "peak_rss_mb")
    if rss.isna().all():
        return None
    png = _bars(m, rss, colors, marks={"flagged": m["_flagged"]}, title="Peak memory",
                ylabel="peak RSS (MiB)")
    methods = sorted({s for s in (_text(v) for v in m.loc[rss.notna(), "memory_method"]) if s})
    caption = "Peak resident memory of the process running the model."
    caption += f" Measured as: {'; '.join(methods)}." if methods else ""
    caption += _left_out(m, rss, "peak RSS figure") + _flag_note(m, rss)
    alt = f"Grouped bar chart of peak RSS in MiB for {int(rss.notna().sum())} measured rows"
    return _Plot("memory", "Memory", png, alt, html.escape(caption))


def _energy_values(m: pd.DataFrame) -> tuple[pd.Series, pd.Series, pd.Series, pd.Series]:
    """Per row: the figure to plot (net energy, else the gross figure), its error, and whether it is gross
    or an estimate."""
    net, gross = _num(m, "energy_mj_per_inference"), _num(m, "energy_total_mj_per_inference")
    is_gross = net.isna() & gross.notna()
    value = net.where(net.notna(), gross)
    err = _num(m, "energy_error_mj").where(~is_gross)  # the error column is the net figure's
    estimated = pd.Series([(_text(s) or "").startswith("estimated") for s in m["energy_status"]], index=m.index)
    return value, err, is_gross, estimated & value.notna()


def _energy(m: pd.DataFrame, colors: dict[str, Any]) -> _Plot | None:
    value, err, is_gross, estimated = _energy_values(m)
    if value.isna().all():
        return None
    png = _bars(m, value, colors, err_low=err, err_high=err,
                marks={"flagged": m["_flagged"], "gross": is_gross, "estimated": estimated},
                title="Energy per inference", ylabel="energy per inference (mJ)")
    sources = sorted({s for s in (_text(v) for v in m.loc[value.notna(), "energy_source"]) if s})
    caption = ("Energy per inference above the device's idle draw, with its error bar."
               + (f" Source: {'; '.join(sources)}." if sources else ""))
    if is_gross.any():
        caption += (f" {int(is_gross.sum())} dotted bar(s) are gross figures: the idle baseline could not be"
                    " measured, so the device's idle draw is included.")
    if estimated.any():
        caption += f" {int(estimated.sum())} crossed bar(s) are estimates from a power model, not measurements."
    caption += _left_out(m, value, "energy figure") + _flag_note(m, value)
    alt = f"Grouped bar chart of energy per inference in mJ for {int(value.notna().sum())} rows"
    return _Plot("energy", "Energy", png, alt, html.escape(caption))


# ---- the page ------------------------------------------------------------------------------------------


def _page(t: pd.DataFrame, meta: dict[str, Any], plots: dict[str, _Plot]) -> str:
    measured, failed = t[t["_measured"]], t[~t["_measured"]]
    script_hash = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
    style_hash = base64.b64encode(hashlib.sha256(_CSS.encode()).digest()).decode()
    csp = (f"default-src 'none'; img-src data:; style-src 'sha256-{style_hash}'; "
           f"script-src 'sha256-{script_hash}'; base-uri 'none'; form-action 'none'")
    title = f"edgekit report: {_text(meta.get('run_id')) or _text(meta.get('model')) or 'results'}"
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
        f"<footer>Written by edgekit {html.escape(_text(meta.get('edgekit_version')) or '')} on "
        f"{html.escape(datetime.now(timezone.utc).isoformat(timespec='seconds'))}. Self-contained: this page "
        "loads nothing from the network.</footer>",
        f"<script>{_SCRIPT}</script>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _header(meta: dict[str, Any], measured: pd.DataFrame, failed: pd.DataFrame) -> str:
    status = _text(meta.get("status"))
    sha = _text(meta.get("model_sha256"))
    started, ended = _text(meta.get("started")), _text(meta.get("ended"))
    fields: list[tuple[str, str]] = []
    if _text(meta.get("run_id")):
        fields.append(("Run", _esc(meta["run_id"])))
    if _text(meta.get("model")):
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
    if _text(meta.get("edgekit_version")):
        fields.append(("edgekit", _esc(meta["edgekit_version"])))
    profiles = meta.get("profiles")
    if isinstance(profiles, (dict, list, tuple)) and profiles:
        fields.append(("Profiles", _esc(", ".join(str(p) for p in profiles))))
    fields.append(("Rows", f"{len(measured)} measured, {len(failed)} failed"))
    heading = _esc(_text(meta.get("run_id")) or "")
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


def _plot_sections(t: pd.DataFrame, measured: pd.DataFrame, plots: dict[str, _Plot]) -> str:
    out = ['<section id="plots">']
    if measured.empty:
        out.append('<h2>Plots</h2><p class="empty">No measured rows: nothing to plot'
                   + (f" ({len(t)} row(s), all failed)." if len(t) else ".") + "</p>")
    for name in PLOT_NAMES:
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
        statuses = pd.Series([_text(s) or "no energy status recorded" for s in measured["energy_status"]])
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
    order = {d: i for i, d in enumerate(_devices_in_order(measured))}
    rows = measured.assign(_dev_order=measured["device"].astype(str).map(order),
                           _rec=~measured["recommended"].map(_truthy), _p50=_num(measured, "latency_ms_p50"))
    rows = rows.sort_values(["_dev_order", "_rec", "_p50"], kind="stable")
    value, err, is_gross, estimated = _energy_values(rows)
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
            _energy_cell(value[i], err[i], bool(is_gross[i]), bool(estimated[i]), _text(r.get("energy_status"))),
            _conditions_cell(r),
            "<td>yes</td>" if _truthy(r["recommended"]) else "<td></td>",
        ]
        if with_attempts:
            cells.append(_td_num(_fmt(r.get("attempts"), 0)))
        cls = ' class="recommended"' if _truthy(r["recommended"]) else ""
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
        error = _text(r["error"]) or "no latency recorded (and no error given)"
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
    text = _text(value)
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
    flags = [name for name in ("noisy", "emulated") if _truthy(r.get(name))]
    if not flags:
        return "<td></td>"
    reasons = r.get("noisy_reasons")
    why = "; ".join(str(x) for x in reasons) if isinstance(reasons, Iterable) and not isinstance(reasons, str) \
        else (_text(reasons) or "")
    title = f' title="{_esc(why)}"' if why else ""
    return f'<td class="flag"{title}>{_esc(", ".join(flags))}</td>'


# ---- files ---------------------------------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes) -> None:
    """Write beside ``path`` and rename over it: a reader never sees a half-written file under its name."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would make a shared report unreadable to others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
