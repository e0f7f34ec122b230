"""The run report: the Pareto front, a self-contained page whose data is escaped, plots drawn from real
measured rows (never a 0 for a missing figure), and a real headless Chromium that renders them offline."""

from __future__ import annotations

import html
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from edgekit.results.plots import pareto_front
from edgekit.results.report import write_report
from edgekit.results.rows import to_frame
from edgekit.testing._browser import find_chromium, render
from edgekit.testing.pytest_plugin import _require

REQUIRE_BROWSER = "EDGEKIT_REQUIRE_BROWSER"  # set (as CI should): a missing Chromium fails the browser tests
CHROMIUM_MISSING = "chromium not installed: apt-get install -y chromium"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

EVIL_DEVICE = "<script>alert(1)</script>"
EVIL_ERROR = '"><img src=x onerror=alert(1)>'

META = {"run_id": "20261124-000000-abc123", "model": "digits-cnn", "model_sha256": "0123456789abcdef" * 4,
        "started": "2026-11-24T00:00:00+00:00", "ended": "2026-11-24T00:03:12+00:00",
        "edgekit_version": "0.1.0", "status": "complete",
        "devices": {"local": {"machine": "x86_64", "cores": 2, "emulated": False}}}

# A stand-in energy meter for a machine without sensors: a cumulative joule count of 1 W of base draw plus
# 10 W per busy CPU-second (/proc/stat). The real pipeline (idle baseline, window, error bar) runs on it.
ENERGY_METER = [sys.executable, "-c", "import os, time; f = open('/proc/stat').readline().split(); "
                "print('J', round(time.time() + 10 * sum(map(int, f[1:4])) / os.sysconf('SC_CLK_TCK'), 6))"]


# ---- real measured rows (export once per module, measure on `local`) ---------------------------------


def _bench_config(**kw: Any) -> Any:
    import edgekit

    base = dict(min_iterations=5, min_seconds=0.05, warmup_iterations=1, warmup_seconds=0, energy=False,
                device_accuracy=True)
    return edgekit.BenchConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    import edgekit

    cm = edgekit.compress("digits-cnn", "x86")
    arts = edgekit.export(cm, out_dir=tmp_path_factory.mktemp("report-artifacts"), jobs=1)
    assert all(a.ok for a in arts), [a.error for a in arts]
    return arts


@pytest.fixture(scope="module")
def two_devices(artifacts: list[Any]) -> pd.DataFrame:
    """Real rows measured on `local`, once more under a second device name, and a device that failed to
    connect (a device-level row, as the fleet writes it)."""
    import edgekit

    df = edgekit.benchmark(artifacts, "local", _bench_config())
    assert df["error"].isna().all(), list(df["error"])
    failed = {"device": "b", "model": "digits-cnn", "stage": "connect", "attempts": 3,
              "error": "device 'b': connection refused"}
    rows = [*df.to_dict(orient="records"), *df.assign(device="local-2").to_dict(orient="records"), failed]
    return to_frame(rows)


@pytest.fixture(scope="module")
def report(two_devices: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return write_report(two_devices, META, tmp_path_factory.mktemp("report") / "report.html")


@pytest.fixture(scope="module")
def chromium() -> str:
    exe = find_chromium()
    _require(None if exe else CHROMIUM_MISSING, REQUIRE_BROWSER)
    return exe  # type: ignore[return-value]


# ---- helpers -------------------------------------------------------------------------------------------


class _Tags(HTMLParser):
    """Every start tag of a page with its attributes, and the text of its scripts."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self._in_script = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts.append(data)

    def named(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for t, attrs in self.tags if t == tag]


def _assert_png(path: Path) -> np.ndarray:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_MAGIC, path
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100, pixels.shape
    return pixels


def _assert_no_injected_markup(page: str) -> None:
    tags = _Tags(page)
    assert len(tags.named("script")) == 1, "only the page's own script"
    assert all("alert" not in s for s in tags.scripts)
    for tag, attrs in tags.tags:
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
    assert all(img.get("class") == "plot" and (img.get("src") or "").startswith("data:image/png;base64,")
               for img in tags.named("img"))


def _hand_row(device: str, target: str, p50: float | None, **kw: Any) -> dict[str, Any]:
    """A hand-made row: for tests of logic (escaping), not of measurements."""
    row = {"device": device, "model": "m", "profile": "x86", "target": target, "precision": "int8", "threads": 1,
           "latency_ms_p50": p50, "latency_ms_p50_ci95_low": p50, "latency_ms_p50_ci95_high": p50,
           "accuracy": 0.9, "reference_accuracy": 0.9, "parity_ok": True, "peak_rss_mb": 40.0, "error": None}
    return {**row, **kw}


# ---- pareto_front ---------------------------------------------------------------------------------------


def test_pareto_front_drops_dominated_rows_keeps_exact_ties_and_skips_missing_values() -> None:
    df = pd.DataFrame({
        "latency_ms_p50": [1.0, 2.0, 2.0, 3.0, 1.0, 0.5, np.nan, 4.0, 0.4, 2.5],
        "accuracy": [0.90, 0.95, 0.95, 0.94, 0.85, None, 0.99, 0.97, 0.80, 0.95],
    }, index=list("abcdefghij"), dtype=object)  # object columns with None, as to_frame leaves them
    front = pareto_front(df)
    # d: slower and worse than b; e: as fast as a but worse; j: as accurate as b but slower.
    # f and g have no accuracy / no latency: never on the front (g would otherwise beat everything).
    assert list(front.index) == list(df.index) and front.dtype == bool
    assert sorted(df.index[front]) == ["a", "b", "c", "h", "i"]


def test_pareto_front_takes_any_two_columns_and_an_empty_table() -> None:
    df = pd.DataFrame({"ms": [5.0, 1.0], "acc": [0.99, 0.99]})
    assert list(pareto_front(df, x="ms", y="acc")) == [False, True]
    assert pareto_front(df.iloc[:0], x="ms", y="acc").empty


# ---- the page, on hand-made rows (logic only) -----------------------------------------------------------


def test_device_names_errors_and_facts_from_devices_are_escaped(tmp_path: Path) -> None:
    rows = [_hand_row(EVIL_DEVICE, "onnx", 1.0), _hand_row("cost $5 \\ $x^$", "tflite", 2.0),  # mathtext
            _hand_row("b", "onnx", None, error=EVIL_ERROR, stage="push")]
    meta = {"run_id": EVIL_DEVICE, "devices": {EVIL_DEVICE: {"cpu_model": EVIL_ERROR, "os": "<b>os</b>"}}}
    files = write_report(to_frame(rows), meta, tmp_path / "r.html")
    page = files.html.read_text()
    for evil in (EVIL_DEVICE, EVIL_ERROR, "<b>os</b>"):
        assert evil not in page
    assert html.escape(EVIL_DEVICE) in page and html.escape(EVIL_ERROR) in page
    _assert_no_injected_markup(page)
    assert set(files.pngs) == {"latency_vs_accuracy", "latency_by_device", "memory"}


def test_empty_and_all_failed_tables_still_give_a_page(tmp_path: Path) -> None:
    failed = to_frame([_hand_row("a", "onnx", None, error="export failed", stage="export")])
    for name, df in (("empty", pd.DataFrame()), ("columns-only", to_frame([])), ("all-failed", failed)):
        files = write_report(df, {}, tmp_path / f"{name}.html")
        page = files.html.read_text()
        assert files.pngs == {} and 'data-plots-expected="0"' in page, name
        assert "No measured rows" in page, name
    assert "export failed" in page  # the all-failed page lists the failure


# ---- the page, on real measured rows --------------------------------------------------------------------


@pytest.mark.slow
def test_report_is_one_self_contained_file_with_valid_pngs(report: Any) -> None:
    page = report.html.read_text()
    assert set(report.pngs) == {"latency_vs_accuracy", "latency_by_device", "memory"}
    assert all(p.parent == report.html.with_name("report_png") for p in report.pngs.values())
    for path in report.pngs.values():
        _assert_png(path)
    tags = _Tags(page)
    links = [v or "" for _, attrs in tags.tags for k, v in attrs.items() if k in ("src", "href")]
    assert links and all(v.startswith(("data:image/png;base64,", "#")) for v in links), links
    assert not any("http://" in v or "https://" in v for _, attrs in tags.tags for v in attrs.values() if v)
    plots = tags.named("img")
    assert sorted(img["data-plot"] for img in plots) == sorted(report.pngs)  # type: ignore[type-var]
    assert all(img.get("alt") for img in plots)
    assert 'data-plots-expected="3"' in page
    # energy=False: no figure, so no energy plot, and the page says why
    assert "Energy: not measured" in page and "unavailable: disabled by request" in page
    # the failed device is listed (stage, attempts, error) and not plotted
    assert "device &#x27;b&#x27;: connection refused" in page and "<td>connect</td>" in page
    assert not [p for p in report.html.parent.iterdir() if p.name.endswith(".tmp")]  # atomic writes


@pytest.mark.slow
def test_energy_is_plotted_when_measured_and_a_stale_energy_png_goes(artifacts: list[Any], tmp_path: Path) -> None:
    import edgekit

    fast = [a for a in artifacts if a.target in ("onnx", "tflite")]  # their runtimes import quickly
    cfg = _bench_config(min_seconds=0.2, energy=True, idle_seconds=0.2, external_meter=ENERGY_METER,
                        device_accuracy=False)
    df = edgekit.benchmark(fast, "local", cfg)
    assert pd.to_numeric(df["energy_mj_per_inference"], errors="coerce").notna().any(), list(df["energy_status"])
    pngs = tmp_path / "pngs"
    files = write_report(df, {}, tmp_path / "energy.html", png_dir=pngs)
    assert "energy" in files.pngs and files.pngs["energy"].parent == pngs
    _assert_png(files.pngs["energy"])
    page = files.html.read_text()
    assert 'data-plot="energy"' in page and "Energy: not measured" not in page

    none = df.assign(energy_mj_per_inference=None, energy_total_mj_per_inference=None,
                     energy_status="unavailable: no sensor")
    again = write_report(none, {}, tmp_path / "energy.html", png_dir=pngs)
    assert "energy" not in again.pngs and not (pngs / "energy.png").exists()
    assert "unavailable: no sensor" in again.html.read_text()


# ---- a real browser --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_chromium_renders_every_plot_of_the_report(report: Any, chromium: str, tmp_path: Path) -> None:
    import re

    dom = render(report.html, timeout=60)
    body = re.search(r"<body[^>]*>", dom)
    assert body, dom[:500]
    rendered = re.search(r'data-plots-rendered="(\d+)"', body.group(0))
    expected = re.search(r'data-plots-expected="(\d+)"', body.group(0))
    assert rendered and expected, body.group(0)
    assert int(rendered.group(1)) == int(expected.group(1)) >= 3

    shot = tmp_path / "page.png"
    render(report.html, screenshot=shot, timeout=60)
    pixels = _assert_png(shot)[..., :3]
    assert pixels.shape[:2] == (2000, 1280)
    assert pixels.std() > 0
    # the plots are painted: coloured pixels (bars, markers) far beyond what the few coloured links give
    saturation = pixels.max(axis=2) - pixels.min(axis=2)
    assert int((saturation > 0.4).sum()) > 5000


def test_chromium_runs_no_injected_markup(chromium: str, tmp_path: Path) -> None:
    rows = [_hand_row(EVIL_DEVICE, "onnx", 1.0), _hand_row("b", "onnx", None, error=EVIL_ERROR)]
    files = write_report(to_frame(rows), {"devices": {EVIL_DEVICE: {"os": EVIL_ERROR}}}, tmp_path / "r.html")
    dom = render(files.html, timeout=60)
    _assert_no_injected_markup(dom)
    assert 'data-plots-rendered="3"' in dom
