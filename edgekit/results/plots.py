"""The report's plots: matplotlib figures drawn from a run's measured rows, as PNG bytes and PNG files.

The page that embeds them is ``edgekit.results.report``; its ``write_report`` is the entry point. Matplotlib
loads inside the drawing functions, never on import.

The rows given here are the report's prepared table (``report._prepare``): every numeric figure is a float
(NaN where missing) and these derived columns exist: ``_label`` (target/precision, the bar key), ``_flagged``
(noisy or emulated), ``_acc`` (accuracy, on-device when measured there) and ``_acc_on_device``.

Missing is never zero: a row without a figure gets no point or bar, and the caption says how many are left
out. Data text (device names, labels) comes from devices and is escaped for matplotlib's mathtext (``$``)
before it goes into a plot; captions are html-escaped here, as the page embeds them as they are.
"""

from __future__ import annotations

import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from edgekit._fs import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["PLOT_NAMES", "Plot", "cell_text", "devices_in_order", "draw_plots", "energy_values", "numeric",
           "pareto_front", "truthy", "write_pngs"]

PLOT_NAMES = ("latency_vs_accuracy", "latency_by_device", "memory", "energy")  # and "search" for a search run

# Hatch patterns for bars whose figure needs a caveat; the legend spells each one out.
_MARKS = {
    "flagged": ("///", "hatched: noisy or emulated (timing not trustworthy)"),
    "gross": ("...", "dotted: gross energy (device idle draw not subtracted; no error bar)"),
    "estimated": ("xxx", "crossed: estimated from the profile's power model, not measured"),
}
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
_LOG_SPAN = 10.0  # an axis spanning more than this ratio goes log scale


@dataclass(frozen=True)
class Plot:
    """One drawn plot: its PNG, and the text the page shows with it."""

    name: str
    title: str
    png: bytes
    alt: str
    caption: str  # HTML, already escaped


# ---- the pareto front ----------------------------------------------------------------------------------


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


# ---- the table's cells, for plots and page -------------------------------------------------------------


def numeric(t: pd.DataFrame, col: str) -> pd.Series:
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


def cell_text(v: Any) -> str | None:
    """A cell as text, None when missing or empty."""
    if _missing(v):
        return None
    s = str(v)
    return s if s.strip() else None


def truthy(v: Any) -> bool:
    return False if _missing(v) else bool(v)


def devices_in_order(t: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(str(d) for d in t["device"]))


# ---- plots ---------------------------------------------------------------------------------------------


def draw_plots(m: pd.DataFrame, search: dict[str, Any] | None = None) -> dict[str, Plot]:
    """The plots the measured rows ``m`` allow, by name (and a search run's trials and front, ``search``:
    see ``report.search_data``). Matplotlib loads here, not on import."""
    drawn = [_search(search)] if search else []
    if not m.empty:
        colors = _key_colors(m)
        drawn += [_latency_vs_accuracy(m), _latency_by_device(m, colors), _memory(m, colors), _energy(m, colors)]
    return {p.name: p for p in drawn if p is not None}


_AXIS = {"latency_ms_p50": "p50 latency on the device (ms)", "latency_ms_p90": "p90 latency on the device (ms)",
         "accuracy": "top-1 accuracy (fraction)", "parity_cosine": "worst cosine vs PyTorch fp32",
         "artifact_mb": "artifact size (MB)", "peak_rss_mb": "peak RSS (MiB)",
         "energy_mj_per_inference": "energy per inference (mJ)"}


def _search(s: dict[str, Any]) -> Plot | None:
    """Every measured trial on the first two objectives, the confirmed front joined and ringed, the pick
    starred; trials stopped on the host are counted in the caption (they have no device figure)."""
    trials: pd.DataFrame = s["trials"]
    objectives: list[tuple[str, str, str]] = s["objectives"]  # (name, column, min|max)
    if trials.empty or not objectives:
        return None
    measured = trials[trials["status"].isin(["measured", "reused"])].copy()
    (xname, xcol, _), (yname, ycol, ydir) = objectives[0], (objectives[1] if len(objectives) > 1
                                                             else ("trial", "trial", "min"))
    measured["_x"], measured["_y"] = numeric(measured, xcol), numeric(measured, ycol)
    pts = measured[measured["_x"].notna() & measured["_y"].notna()]
    if pts.empty:
        return None
    front: pd.DataFrame = s["front"]
    fig = _figure()
    ax = fig.add_subplot()
    ax.scatter(pts["_x"], pts["_y"], s=36, color="tab:gray", alpha=0.7, zorder=3, label="measured trial")
    if len(front):
        f = front.assign(_x=numeric(front, xcol), _y=numeric(front, ycol)).sort_values("_x")
        ax.step(f["_x"], f["_y"], where="post", color="black", ls="--", lw=1.1, zorder=2)
        ax.scatter(f["_x"], f["_y"], s=160, facecolors="none", edgecolors="black", linewidths=1.2, zorder=4,
                   label="Pareto front (confirmed)")
        if xcol == "latency_ms_p50" and "first_latency_ms_p50" in f.columns:  # first draw -> confirmation
            for _, r in f.iterrows():
                ax.plot([r["first_latency_ms_p50"], r["_x"]], [r["_y"], r["_y"]], color="black", lw=0.6, alpha=0.5)
        for _, r in f.iterrows():
            variant = str(r.get("model", "")).partition("+")[2]
            ax.annotate(_mpl(f"{r['target']} {r['precision']}" + (f" {variant}" if variant else "")
                             + f" x{r['threads']}"), (r["_x"], r["_y"]), fontsize=7, xytext=(5, 4),
                        textcoords="offset points")
    pick = s.get("pick")
    if pick is not None:
        ax.scatter([numeric(pd.DataFrame([pick]), xcol).iloc[0]], [numeric(pd.DataFrame([pick]), ycol).iloc[0]],
                   marker="*", s=260, color="tab:red", zorder=5, label="pick")
    if _log_span(pts["_x"]):
        ax.set_xscale("log")
    ax.set_xlabel(_AXIS.get(xcol, xname))
    ax.set_ylabel(_AXIS.get(ycol, yname))
    ax.set_title("Search: every measured trial and the front")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    judged = len(trials) - len(measured)
    caption = (f"{len(pts)} measured trial(s) of {len(trials)}; {judged} stopped before the device (skipped: "
               f"a combination the space cannot build; rejected: build, parity or a host-side constraint). "
               f"Grey: each trial's first measurement. The dashed line joins the front, measured a second time "
               f"at the end (ringed; a thin line from its first figure); the star is the pick "
               f"({html.escape(str(s.get('pick_reason') or 'none'))}). y better when "
               f"{'lower' if ydir == 'min' else 'higher'}.")
    alt = f"Scatter plot of {xname} against {yname} for {len(pts)} search trials, with the Pareto front"
    return Plot("search", "Search: trials and Pareto front", _png(fig), alt, caption)


def write_pngs(plots: dict[str, Plot], png_dir: Path) -> dict[str, Path]:
    """Write each plot to ``png_dir/<name>.png`` (atomically, readable by all: 0o644); plot name -> file.

    A PNG of a plot not drawn this time is removed: one left over from an earlier report must not pass for
    this run's plot.
    """
    png_dir.mkdir(parents=True, exist_ok=True)
    pngs: dict[str, Path] = {}
    for name in ("search", *PLOT_NAMES):
        path = png_dir / f"{name}.png"
        if name in plots:
            atomic_write_bytes(path, plots[name].png, mode=0o644)
            pngs[name] = path
        else:
            path.unlink(missing_ok=True)
    return pngs


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


def _latency_vs_accuracy(m: pd.DataFrame) -> Plot | None:
    from matplotlib import colormaps
    from matplotlib.lines import Line2D

    pts = m[m["_acc"].notna()].copy()
    if pts.empty:
        return None
    pts["_p50"] = numeric(pts, "latency_ms_p50")
    pts["_pct"] = pts["_acc"] * 100
    front = pareto_front(pts, x="_p50", y="_acc")
    fig = _figure()
    ax = fig.add_subplot()
    cmap = colormaps["tab10"]
    handles = []
    devices = devices_in_order(pts)
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
    return Plot("latency_vs_accuracy", "Latency vs accuracy", _png(fig), alt, html.escape(caption))


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
    devices = devices_in_order(rows)
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


def _latency_by_device(m: pd.DataFrame, colors: dict[str, Any]) -> Plot | None:
    p50 = numeric(m, "latency_ms_p50")
    low, high = numeric(m, "latency_ms_p50_ci95_low"), numeric(m, "latency_ms_p50_ci95_high")
    png = _bars(m, p50, colors, err_low=p50 - low, err_high=high - p50, marks={"flagged": m["_flagged"]},
                title="p50 latency by device", ylabel="p50 latency per inference (ms)")
    no_ci = int((p50.notna() & (low.isna() | high.isna())).sum())
    caption = "Median latency per inference; error bars: the 95 % confidence interval of the median."
    caption += f" {no_ci} bar(s) have no confidence interval." if no_ci else ""
    caption += _flag_note(m, p50)
    alt = f"Grouped bar chart of p50 latency for {len(m)} measured rows on {m['device'].nunique()} device(s)"
    return Plot("latency_by_device", "Latency by device", png, alt, html.escape(caption))


def _memory(m: pd.DataFrame, colors: dict[str, Any]) -> Plot | None:
    rss = numeric(m, "peak_rss_mb")
    if rss.isna().all():
        return None
    png = _bars(m, rss, colors, marks={"flagged": m["_flagged"]}, title="Peak memory",
                ylabel="peak RSS (MiB)")
    methods = sorted({s for s in (cell_text(v) for v in m.loc[rss.notna(), "memory_method"]) if s})
    caption = "Peak resident memory of the process running the model."
    caption += f" Measured as: {'; '.join(methods)}." if methods else ""
    caption += _left_out(m, rss, "peak RSS figure") + _flag_note(m, rss)
    alt = f"Grouped bar chart of peak RSS in MiB for {int(rss.notna().sum())} measured rows"
    return Plot("memory", "Memory", png, alt, html.escape(caption))


def energy_values(m: pd.DataFrame) -> tuple[pd.Series, pd.Series, pd.Series, pd.Series]:
    """Per row: the figure to plot (net energy, else the gross figure), its error, and whether it is gross
    or an estimate."""
    net, gross = numeric(m, "energy_mj_per_inference"), numeric(m, "energy_total_mj_per_inference")
    is_gross = net.isna() & gross.notna()
    value = net.where(net.notna(), gross)
    err = numeric(m, "energy_error_mj").where(~is_gross)  # the error column is the net figure's
    estimated = pd.Series([(cell_text(s) or "").startswith("estimated") for s in m["energy_status"]], index=m.index)
    return value, err, is_gross, estimated & value.notna()


def _energy(m: pd.DataFrame, colors: dict[str, Any]) -> Plot | None:
    value, err, is_gross, estimated = energy_values(m)
    if value.isna().all():
        return None
    png = _bars(m, value, colors, err_low=err, err_high=err,
                marks={"flagged": m["_flagged"], "gross": is_gross, "estimated": estimated},
                title="Energy per inference", ylabel="energy per inference (mJ)")
    sources = sorted({s for s in (cell_text(v) for v in m.loc[value.notna(), "energy_source"]) if s})
    caption = ("Energy per inference above the device's idle draw, with its error bar."
               + (f" Source: {'; '.join(sources)}." if sources else ""))
    if is_gross.any():
        caption += (f" {int(is_gross.sum())} dotted bar(s) are gross figures: the idle baseline could not be"
                    " measured, so the device's idle draw is included.")
    if estimated.any():
        caption += f" {int(estimated.sum())} crossed bar(s) are estimates from a power model, not measurements."
    caption += _left_out(m, value, "energy figure") + _flag_note(m, value)
    alt = f"Grouped bar chart of energy per inference in mJ for {int(value.notna().sum())} rows"
    return Plot("energy", "Energy", png, alt, html.escape(caption))
