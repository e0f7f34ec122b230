"""Commands: deploy, devices (list, check), profiles, targets, models. ``compress`` lives in _compress.py."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

import edgekit
import edgekit.cli._options as opt
from edgekit.errors import EdgekitError

TABLE_COLUMNS = [
    ("recommended", "rec"), ("target", "target"), ("precision", "prec"), ("threads", "thr"),
    ("artifact_bytes", "KiB"), ("parity_ok", "parity"), ("parity_cosine", "cosine"), ("accuracy", "acc %"),
    ("device_accuracy", "dev acc %"), ("latency_ms_p50", "p50 ms"), ("latency_ms_p90", "p90 ms"),
    ("latency_ms_p99", "p99 ms"), ("iterations", "runs"), ("peak_rss_mb", "RSS MiB"),
    ("energy_mj_per_inference", "mJ/inf"), ("noisy", "noisy"),
]


def _stderr() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _stdout() -> Any:
    """A terminal gets its own width; a pipe or file gets rows that are not squeezed to 80 columns."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=200)


def escape(value: Any) -> str:
    """``value`` for a rich console: markup escaped, control characters (a device's terminal escapes: what a
    device sends back is untrusted) shown as ``\\x1b``, never sent to the terminal."""
    from rich.markup import escape as escape_markup

    from edgekit.results.rows import printable

    return escape_markup(printable(value))


def _fail(exc: EdgekitError) -> NoReturn:
    """The one way an :class:`EdgekitError` ends a command: its one line on stderr, exit status 2."""
    _stderr().print(f"[bold red]error:[/] {escape(exc)}", markup=True, highlight=False, soft_wrap=True)
    raise SystemExit(2)


class EdgekitGroup(click.Group):
    """The ``edgekit`` group: every command runs inside its :meth:`invoke`, so an :class:`EdgekitError`
    from any command (or subcommand group) is reported here, once, by :func:`_fail`. This holds for
    ``main`` (``standalone_mode=False``) and for click's own ``cli.main()`` / ``CliRunner`` alike."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgekitError as exc:
            _fail(exc)


@click.group(cls=EdgekitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(edgekit.__version__, prog_name="edgekit")
@click.option("--profiles", "profiles_dir", type=click.Path(file_okay=False), help="Extra folder of profile YAMLs.")
@click.option("--targets-dir", type=click.Path(file_okay=False), help="Extra folder of target YAMLs.")
def cli(profiles_dir: str | None, targets_dir: str | None) -> None:
    """Compress, export, deploy and benchmark PyTorch models on edge devices."""
    if profiles_dir:
        os.environ["EDGEKIT_PROFILES"] = os.pathsep.join(filter(None, [os.environ.get("EDGEKIT_PROFILES"), profiles_dir]))
    if targets_dir:
        os.environ["EDGEKIT_TARGETS"] = os.pathsep.join(filter(None, [os.environ.get("EDGEKIT_TARGETS"), targets_dir]))


@cli.command()
@opt.device_option
@opt.model_option(required=False)
@opt.build_and_measure_options
@opt.out_dir_option
@click.option("--jobs", type=click.IntRange(min=1), help="Export processes at once (default: one per core).")
@click.option("--from-search", "from_search", help="Ship search RUN's pick (built and checked by the search) "
                                                   "instead of building from --model.")
@click.option("--pick", "pick_trial", type=int, help="With --from-search: the front member of this trial number.")
@opt.results_option
@opt.out_option
@opt.devices_file_option
@opt.trust_option
@opt.json_option
def deploy(device: str, model: str | None, profile: str | None, targets: str | None, precisions: str | None,
           no_cache: bool, calibration: str | None, input_shape: str | None, allow_pickle: bool,
           recipe_file: str | None, out_dir: str, jobs: int | None, from_search: str | None, pick_trial: int | None,
           results_dir: str | None, out_file: str | None, devices_file: str | None, trust_new_host: bool,
           as_json: bool, **measure: Any) -> None:
    """Compress MODEL for a device's profile, export its targets, check parity and benchmark them (or, with
    --from-search RUN, push and benchmark that search's pick)."""
    from edgekit.cli._build import BuildBars

    console = _stderr()
    config = opt.bench_config(**measure)
    if from_search:
        if model:
            raise click.UsageError("give --model or --from-search, not both")
        art = edgekit.search_artifact(from_search, pick_trial, results_dir)
        with console.status("measuring the search's pick") as status:
            df = edgekit.benchmark([art], device, config, devices_file=devices_file,
                                   on_event=lambda msg: status.update(escape(msg)))
        if not emit_rows(df, out_file, as_json):
            _print_table(df)
        return
    if not model:
        raise click.UsageError("give --model (or --from-search RUN)")
    with BuildBars(console) as bars:
        df = edgekit.deploy(
            model, device, profile=profile, targets=opt.csv(targets), precisions=opt.csv(precisions),
            calibration=calibration, input_shape=input_shape, allow_pickle=allow_pickle,
            recipe=recipe_file, out_dir=out_dir, jobs=jobs, cache=not no_cache, config=config,
            devices_file=devices_file, trust_new_host=trust_new_host, on_event=bars.status,
            on_progress=bars.update,
        )
    if emit_rows(df, out_file, as_json):
        return
    _print_table(df)
    if config.profile_ops:
        _print_ops(df)
    if out_file:
        console.print(f"rows written to {out_file}")


def emit_rows(df: Any, out_file: str | None, as_json: bool) -> bool:
    """Write ``--out`` (parquet) and, with ``--json``, print the rows; True when stdout is done."""
    if out_file:
        from edgekit.results.store import write_parquet

        write_parquet(df, Path(out_file))
    if as_json:
        click.echo(json.dumps(_json_rows(df), indent=2))
    return as_json


def _print_ops(df: Any, top: int = 8) -> None:
    """The slowest ops of each artifact, or why its runtime gave no per-op profile."""
    from rich.table import Table

    from edgekit.results.rows import op_table

    console, ops = _stdout(), op_table(df)
    for _, row in df.iterrows():
        prof = row.get("op_profile")
        if not isinstance(prof, dict):
            continue
        name = f"{row['target']} {row['precision']} ({row['threads']} threads)"
        if not str(prof.get("status", "")).startswith("measured"):
            console.print(f"per-op profile of {escape(name)}: {escape(str(prof.get('status')))}")
            continue
        sel = ops[(ops["target"] == row["target"]) & (ops["precision"] == row["precision"]) &
                  (ops["threads"] == row["threads"])].head(top)
        table = Table(title=escape(f"slowest ops: {name}"))
        for col in ("op", "type", "time_ms", "share"):
            table.add_column(col)
        for _, op in sel.iterrows():
            table.add_row(escape(str(op["op"])), escape(str(op["type"])), f"{op['time_ms']:.4f}", f"{100 * op['share']:.1f} %")
        console.print(table)


def _json_rows(df: Any) -> list[dict[str, Any]]:
    rows = df.to_dict(orient="records")
    return [{k: _plain(v) for k, v in row.items()} for row in rows]


def _plain(v: Any) -> Any:
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def _fmt(col: str, v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if col == "recommended":
        return "*" if v else ""
    if col == "parity_ok":
        return "ok" if v else "FAIL"
    if col == "iterations":
        return f"{v:.0f}"
    if col == "artifact_bytes":
        return f"{v / 1024:.0f}"
    if col in ("accuracy", "device_accuracy"):
        return f"{100 * v:.1f}"
    if col == "noisy":
        return "noisy" if v else ""
    if col == "threads":
        return str(int(v))
    if col == "parity_cosine":
        return f"{v:.4f}"
    if isinstance(v, float):
        return f"{v:.3g}" if v < 1 else f"{v:.1f}" if v < 1000 else f"{v:.0f}"
    return str(v)


def _print_table(df: Any) -> None:
    from rich.table import Table

    first = df.iloc[0] if len(df) else None
    title = f"{first['model']} on {first['device']} (profile {first['profile']})" if first is not None else "no rows"
    table = Table(title=escape(title))
    for _, head in TABLE_COLUMNS:
        table.add_column(head, justify="right" if head not in ("target", "prec") else "left")
    for _, row in df.iterrows():
        table.add_row(*[escape(_fmt(col, row[col])) for col, _ in TABLE_COLUMNS])
    console = _stdout()
    console.print(table)
    if first is not None and first.get("reference_accuracy") is not None and not _isnan(first["reference_accuracy"]):
        console.print(f"fp32 PyTorch reference accuracy: {100 * first['reference_accuracy']:.1f} %")
    energy = df["energy_status"].dropna().unique()
    if len(energy):
        console.print(f"energy: {escape(str(energy[0]))}")
    reasons = sorted({r for rs in df["noisy_reasons"].dropna() for r in (rs if isinstance(rs, list) else [rs])})
    if reasons:
        console.print(f"[yellow]noisy runs:[/] {escape('; '.join(reasons))}")
    for _, row in df.iterrows():
        if row["error"]:
            console.print(f"[red]{escape(row['target'])} {escape(row['precision'])}:[/] {escape(row['error'])}")
        elif not row["parity_ok"]:
            console.print(f"[yellow]{escape(row['target'])} {escape(row['precision'])} is out of tolerance, not "
                          f"recommended:[/] {escape(str(row['parity_failures']))}")
    if not df["recommended"].any():
        console.print("[bold red]no artifact is within tolerance and the accuracy budget: none recommended[/]")


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


@cli.group()
def devices() -> None:
    """Registered devices (devices.yaml) and what each can run."""


@devices.command("list")
@opt.devices_file_option
@opt.json_option
def devices_list(devices_file: str | None, as_json: bool) -> None:
    """List registered devices (no connection is made)."""
    items = edgekit.load_devices(devices_file)
    rows = [{"name": d.name, "kind": d.kind, "host": getattr(d, "host", "-"), "port": getattr(d, "port", "-"),
             "user": getattr(d, "user", None) or "-", "profile": d.profile or "(host's)", "tags": d.tags,
             "python": d.python or "(this one)", "workdir": d.workdir or "-"} for d in items.values()]
    _print_rows(rows, as_json, "devices")


@devices.command("check")
@click.argument("name")
@opt.profile_option
@opt.devices_file_option
@opt.trust_option
@opt.json_option
def devices_check(name: str, profile: str | None, devices_file: str | None, trust_new_host: bool,
                  as_json: bool) -> None:
    """Connect to NAME and report its CPU, memory, OS, python, runtimes, energy sensors, and what is missing.

    Exit status 1 when the device lacks something its profile needs.
    """
    with _stderr().status(f"checking {name}"):
        check = edgekit.check_device(name, profile=profile, devices_file=devices_file, trust_new_host=trust_new_host)
    if as_json:
        click.echo(json.dumps(check.to_dict(), indent=2))
    else:
        _print_check(check)
    raise SystemExit(0 if check.ok else 1)


def _gpu_facts(info: dict[str, Any]) -> list[tuple[str, Any]]:
    """The GPU, driver, CUDA and TensorRT versions and onnxruntime's providers, as ``devices check`` lists them."""
    gpu: dict[str, Any] = info["gpu"] if isinstance(info.get("gpu"), dict) else {}
    devices = [d for d in gpu.get("devices") or [] if isinstance(d, dict)]
    if devices:
        shown = "; ".join(str(d.get("name")) for d in devices)
        shown += f" (driver {gpu.get('driver')}, CUDA {gpu.get('cuda_driver_version')})"
    elif gpu.get("jetson"):
        shown = "Jetson integrated GPU (sysfs)"
    else:
        shown = f"none: {gpu.get('reason') or 'not reported'}"
    providers = info.get("onnxruntime_providers")
    trt: dict[str, Any] = info["tensorrt"] if isinstance(info.get("tensorrt"), dict) else {}
    return [("gpu", shown),
            ("onnxruntime providers", ", ".join(map(str, providers)) if isinstance(providers, list)
             else info.get("onnxruntime_providers_reason")),
            ("tensorrt", trt.get("version") or trt.get("reason"))]


def _print_check(check: Any) -> None:
    from rich.table import Table

    info = check.info
    table = Table(title=escape(f"device {check.device} ({check.kind}, profile {check.profile})"), show_header=False)
    table.add_column("fact")
    table.add_column("value")
    ram = info.get("mem_total_mib")
    arch = f"{info.get('machine')} (emulated: qemu-user)" if info.get("emulated") else info.get("machine")
    facts = [("arch", arch), ("cpu", info.get("cpu_model")), ("cores", info.get("cores")),
             ("ram", f"{ram / 1024:.1f} GiB" if ram else None), ("os", info.get("os")),
             ("python", f"{info.get('python')} ({info.get('python_executable')})"), ("numpy", info.get("numpy"))]
    for fmt, rt in sorted(info.get("runtimes", {}).items()):
        facts.append((f"runtime {fmt}", f"{rt['package']} {rt['version']}" if rt.get("package") else "missing"))
    facts += _gpu_facts(info)
    energy = info.get("energy", {})
    facts.append(("energy", energy.get("source") if energy.get("available") else "none readable"))
    for key, value in facts:
        table.add_row(key, escape(str(value if value is not None else "unknown")))
    console = _stdout()
    console.print(table)
    for line in check.warnings:
        console.print(f"[yellow]warning:[/] {escape(line)}")
    for line in check.missing:
        console.print(f"[red]missing:[/] {escape(line)}")
    verdict = (f"[green]ready[/]: runs {', '.join(check.runnable_targets)}" if check.ok
               else "[red]not ready[/] for every target of its profile")
    console.print(verdict)


@cli.command()
@opt.json_option
def profiles(as_json: bool) -> None:
    """List hardware profiles (built-in and your own)."""
    items = edgekit.list_profiles()
    host = edgekit.host_profile().name
    rows = [{"name": p.name, "host": p.name == host, "arch": p.arch, "backend": p.backend,
             "precisions": p.precisions, "quantization": f"{p.quantization.mode} w:{p.quantization.weight.granularity}"
             f"{'/sym' if p.quantization.weight.symmetric else '/asym'} a:{p.quantization.activation.dtype}",
             "pruning": p.pruning.granularity, "targets": p.targets, "threads": p.threads, "source": p.source}
            for p in items.values()]
    _print_rows(rows, as_json, "profiles (host: the one `local` uses)")


@cli.command()
@opt.json_option
def targets(as_json: bool) -> None:
    """List export targets and their parity tolerances."""
    items = edgekit.list_targets()
    rows: list[dict[str, Any]] = [
        {"name": t.name, "format": t.format, "extension": t.extension, "precisions": t.precisions,
         "tolerance": {k: v.model_dump(exclude_none=True) for k, v in t.tolerance.items()}, "source": t.source}
        for t in items.values()]
    if not as_json:
        for row in rows:
            row["tolerance"] = [_tolerance_text(p, bounds) for p, bounds in row["tolerance"].items()]
    _print_rows(rows, as_json, "export targets")


def _tolerance_text(precision: str, bounds: dict[str, float]) -> str:
    short = {"max_abs_err": "err<=", "min_cosine": "cos>=", "min_top1_agreement": "top1>="}
    return f"{precision}: " + " ".join(f"{short[k]}{v:g}" for k, v in bounds.items())


@cli.command()
def models() -> None:
    """List built-in models."""
    from edgekit.models import BUILTIN

    for name in BUILTIN:
        click.echo(name)


def _print_rows(rows: list[dict[str, Any]], as_json: bool, title: str) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(title=escape(title))
    keys = [k for k in (rows[0] if rows else []) if k != "source"]  # paths make the table unreadable; --json has them
    for key in keys:
        table.add_column(key)
    for row in rows:
        table.add_row(*[escape(", ".join(map(str, row[k])) if isinstance(row[k], list) else str(row[k])) for k in keys])
    _stdout().print(table)


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="edgekit", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
