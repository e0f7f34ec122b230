"""``edgekit bench`` (a model on many devices), ``edgekit results list|show|compare``, ``edgekit report``."""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

import edgekit
import edgekit.cli._options as opt
from edgekit.cli._main import _json_rows, _print_rows, _print_table, _stderr, _stdout, cli, emit_rows, escape


@cli.command("bench")
@opt.model_option(required=False)
@opt.device_names_option
@click.option("--tag", "tags", multiple=True, help="Every device with this tag (repeat for several).")
@click.option("--all", "all_devices", is_flag=True, help="Every registered device (local only when none are).")
@opt.build_and_measure_options
@click.option("--parallel", type=click.IntRange(min=1), default=4, show_default=True, help="Devices at once.")
@click.option("--device-timeout", type=float, default=1800.0, show_default=True,
              help="Seconds per device, from when its artifacts are ready.")
@click.option("--retries", type=click.IntRange(min=0), default=2, show_default=True,
              help="Retries of a device after a connection error (exponential back-off).")
@click.option("--cluster", "cluster", metavar="HOST:PORT",
              help="Run on this Ray cluster (ray start --head): builds as Ray tasks, each device through one leasing "
                   "actor on a node its 'gateway' names. Needs edgekit[cluster].")
@click.option("--build-cpus", type=click.IntRange(min=1), default=2, show_default=True,
              help="With --cluster: CPUs each profile's build task takes.")
@opt.results_option
@click.option("--resume", "resume_id",
              help="Finish run RUN_ID: measure only what it is missing (then --model is optional; the devices are "
                   "the run's).")
@opt.devices_file_option
@opt.trust_option
@click.option("--mlflow", "mlflow_uri", help="Also log the run to this MLflow tracking URI.")
@click.option("--report", "report_file", type=click.Path(dir_okay=False), help="Also write the HTML report here.")
@opt.out_option
@opt.json_option
def bench(model: str | None, device_names: str | None, tags: tuple[str, ...], all_devices: bool,
          profile: str | None, targets: str | None, precisions: str | None, no_cache: bool, calibration: str | None,
          input_shape: str | None, allow_pickle: bool, recipe_file: str | None, parallel: int,
          device_timeout: float, retries: int, cluster: str | None, build_cpus: int, results_dir: str | None, resume_id: str | None,
          devices_file: str | None, trust_new_host: bool, mlflow_uri: str | None, report_file: str | None,
          out_file: str | None, as_json: bool, **measure: Any) -> None:
    """Benchmark MODEL on many devices at once; every row is stored as it arrives (see `edgekit results`).

    Exit status 1 when a device failed (its row says where and why), 130 when interrupted: finish the run
    with --resume RUN_ID.
    """
    from edgekit import BenchRequest, FleetConfig

    if not resume_id and not model:
        raise click.UsageError("give --model (or --resume RUN_ID)")
    # A resumed run keeps its own measuring and fleet settings unless some are given again here.
    given = _given_on_command_line()
    fleet_given = given & {f.name for f in dataclasses.fields(FleetConfig)}
    request = BenchRequest(
        model=model, devices=opt.csv(device_names), tags=list(tags), all_devices=all_devices, profile=profile,
        targets=opt.csv(targets), precisions=opt.csv(precisions), calibration=calibration, input_shape=input_shape,
        allow_pickle=allow_pickle, recipe=recipe_file,
        config=opt.bench_config(**measure) if not resume_id or given & set(measure) else None,
        fleet=FleetConfig(parallel=parallel, device_timeout=device_timeout, retries=retries, cluster=cluster,
                          build_cpus=build_cpus) if not resume_id or fleet_given else None,
        devices_file=devices_file, results=results_dir, trust_new_host=trust_new_host, mlflow=mlflow_uri,
        cache=not no_cache)
    progress = _Progress()
    _sigterm_interrupts()
    try:
        with progress:
            result = edgekit.bench(request=request, resume=resume_id, on_progress=progress.update)
    except KeyboardInterrupt:
        run = progress.run_hint(results_dir)
        _stderr().print(f"[yellow]interrupted[/]: every finished row is stored; finish with "
                        f"edgekit bench --resume {run}", markup=True, highlight=False)
        raise SystemExit(130) from None
    if report_file:
        _write_report(result.df, result.run_dir, Path(report_file))
    if not emit_rows(result.df, out_file, as_json):
        _print_fleet(result)
    raise SystemExit(0 if not result.failed else 1)


def _given_on_command_line() -> set[str]:
    """The parameters of this command that were given, not left at their defaults."""
    ctx = click.get_current_context()
    return {name for name in ctx.params
            if ctx.get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT, None)}


def _sigterm_interrupts() -> None:
    """SIGTERM (a CI job cancelled, a service stopped) ends the run like Ctrl-C: rows kept, run finalized."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


class _Progress:
    """Each device's stage: a live table on a terminal, a line per change otherwise (CI logs)."""

    def __init__(self) -> None:
        self.state: dict[str, tuple[str, str, float]] = {}
        self.lock = threading.Lock()
        self.live: Any = None
        self.tty = sys.stderr.isatty()

    def __enter__(self) -> "_Progress":
        if self.tty:
            from rich.live import Live

            self.live = Live(get_renderable=self.table, console=_stderr(), refresh_per_second=4, transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def update(self, device: str | None, stage: str, detail: str) -> None:
        from edgekit.results.rows import printable

        name = device or stage  # host-side work (an export) shows under its own name, its stage is its message
        stage = stage if device else "working"
        with self.lock:
            before = self.state.get(name, ("", "", 0.0))
            self.state[name] = (stage, detail, before[2] or time.monotonic())
        if not self.tty and before[0] != stage:
            click.echo(printable(f"[{name}] {stage} {detail}".rstrip()), err=True)

    def table(self) -> Any:
        from rich.table import Table

        table = Table(title="edgekit bench")
        for col in ("device", "stage", "detail", "s"):
            table.add_column(col)
        colour = {"done": "green", "failed": "red", "retrying": "yellow", "timeout": "red"}
        with self.lock:
            items = list(self.state.items())
        for name, (stage, detail, since) in items:
            style = colour.get(stage, "")
            table.add_row(escape(name), f"[{style}]{escape(stage)}[/]" if style else escape(stage),
                          escape(detail[:80]), f"{time.monotonic() - since:.0f}")
        return table

    def run_hint(self, results_dir: str | None) -> str:
        from edgekit.results.store import list_runs

        runs = list_runs(results_dir)
        return str(runs.iloc[0]["run_id"]) if len(runs) else "RUN_ID"


def _print_fleet(result: Any) -> None:
    from rich.table import Table

    df = result.df
    table = Table(title=escape(f"run {result.run_id}"))
    for col in ("device", "profile", "status", "rows", "best artifact", "p50 ms", "tries", "s"):
        table.add_column(col)
    for name, out in result.items():
        best = df[(df["device"] == name) & df["recommended"].astype(bool)]
        art, p50 = "-", "-"
        if len(best):
            b = best.iloc[0]
            art, p50 = f"{b['target']} {b['precision']} t{int(b['threads'])}", f"{b['latency_ms_p50']:.3g}"
        status = "[green]ok[/]" if out.ok else f"[red]failed ({escape(out.stage)})[/]"
        measured = int(((df["device"] == name) & df["error"].isna()).sum())
        table.add_row(escape(name), escape(out.profile), status, str(measured), escape(art), p50,
                      str(out.attempts), f"{out.seconds:.0f}")
    console = _stdout()
    console.print(table)
    for name, out in result.failed.items():
        console.print(f"[red]{escape(name)}[/]: {escape(str(out.error))}")
    bad = df[df["error"].notna() & df["target"].notna()]
    for _, row in bad.iterrows():
        console.print(f"[yellow]{escape(str(row['device']))} {escape(str(row['target']))} "
                      f"{escape(str(row['precision']))}[/]: {escape(str(row['error']).splitlines()[0])}")
    console.print(f"stored in {escape(str(result.run_dir))}: edgekit results show {result.run_id} | "
                  f"edgekit report {result.run_id} -o report.html", highlight=False)


@cli.group()
def results() -> None:
    """Stored fleet runs: list, show, compare."""


@results.command("list")
@opt.results_option
@opt.json_option
def results_list(results_dir: str | None, as_json: bool) -> None:
    """Runs, newest first."""
    from edgekit.results.store import list_runs, results_dir as default_dir

    _print_rows(_json_rows(list_runs(results_dir)), as_json, f"runs in {default_dir(results_dir)}")


@results.command("show")
@click.argument("run_id")
@opt.results_option
@opt.out_option
@opt.json_option
def results_show(run_id: str, results_dir: str | None, out_file: str | None, as_json: bool) -> None:
    """A run's rows, a table per device."""
    from edgekit.results.store import Run

    run = Run.open(run_id, results_dir)
    df, meta = run.rows(), run.meta
    if emit_rows(df, out_file, as_json):
        return
    console = _stdout()
    console.print(escape(f"run {run_id}: {meta.get('status')}, model {meta.get('model')}, started "
                         f"{meta.get('started')}, ended {meta.get('ended') or '-'}"), highlight=False)
    for device in dict.fromkeys(df["device"]):
        _print_table(df[df["device"] == device].reset_index(drop=True))


@results.command("compare")
@click.argument("run_a")
@click.argument("run_b")
@opt.results_option
@click.option("--all", "show_all", is_flag=True, help="Also show changes within noise.")
@click.option("--fail-on-regression", is_flag=True, help="Exit status 1 when B regressed anywhere.")
@opt.json_option
def results_compare(run_a: str, run_b: str, results_dir: str | None, show_all: bool, fail_on_regression: bool,
                    as_json: bool) -> None:
    """RUN_B against RUN_A: flags a change only where it exceeds the measurements' own 95 % interval."""
    from edgekit.results.compare import compare_runs, regressions

    cmp = compare_runs(edgekit.load_run(run_a, results_dir), edgekit.load_run(run_b, results_dir))
    if as_json:
        click.echo(json.dumps(_json_rows(cmp), indent=2))
    else:
        _print_compare(cmp, run_a, run_b, show_all)
    raise SystemExit(1 if fail_on_regression and len(regressions(cmp)) else 0)


def _print_compare(cmp: Any, run_a: str, run_b: str, show_all: bool) -> None:
    from rich.table import Table

    shown = cmp if show_all else cmp[~cmp["verdict"].isin(["within noise", "same"])]
    table = Table(title=escape(f"{run_b} against {run_a}"))
    for col in ("device", "target", "precision", "threads", "metric", "A", "B", "change", "+-95%", "verdict"):
        table.add_column(col)
    colour = {"regression": "red", "improvement": "green"}
    for _, r in shown.iterrows():
        verdict = escape(str(r["verdict"]))
        if r["verdict"] in colour:
            verdict = f"[{colour[r['verdict']]}]{verdict}[/]"
        if r["noisy"] is True:
            verdict += " (noisy)"
        pct = f" ({r['delta_pct']:+.1f} %)" if r["delta_pct"] is not None and r["delta_pct"] == r["delta_pct"] else ""
        table.add_row(*[escape(str(r[k])) for k in ("device", "target", "precision")],
                      str(r["threads"]), escape(str(r["metric"])), _g(r["a"]), _g(r["b"]),
                      (_g(r["delta"], signed=True) + pct) if r["delta"] == r["delta"] else "-",
                      _g(r["uncertainty"]), verdict)
    console = _stdout()
    console.print(table)
    counts = cmp["verdict"].value_counts().to_dict()
    console.print(", ".join(f"{n} {v}" for v, n in counts.items()) or "nothing to compare", highlight=False)


def _g(v: Any, signed: bool = False) -> str:
    if v is None or v != v:
        return "-"
    return f"{v:+.4g}" if signed else f"{v:.4g}"


@cli.command("report")
@click.argument("run_id")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False), default="report.html", show_default=True)
@click.option("--png-dir", type=click.Path(file_okay=False), help="Where the PNGs go (default: beside the page).")
@opt.results_option
def report(run_id: str, output: str, png_dir: str | None, results_dir: str | None) -> None:
    """A self-contained HTML page of a run: plots (latency vs accuracy with the Pareto front, latency,
    memory, energy where measured), the table, failures and device facts; also PNGs."""
    from edgekit.results.store import Run

    run = Run.open(run_id, results_dir)
    files = _write_report(run.rows(), run.root, Path(output), png_dir)
    click.echo(f"{files.html} ({len(files.pngs)} plots; PNGs in {next(iter(files.pngs.values())).parent})"
               if files.pngs else str(files.html))


def _write_report(df: Any, run_dir: Path, output: Path, png_dir: str | None = None) -> Any:
    from edgekit.results.report import search_data, write_report
    from edgekit.results.store import Run

    return write_report(df, Run(run_dir).meta, output, png_dir=Path(png_dir) if png_dir else None,
                        search=search_data(run_dir))
