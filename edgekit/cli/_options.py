"""Options several commands share, each defined once: a command applies the decorator, so a flag's name,
type and help are the same wherever it appears."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

Decorator = Callable[[Any], Any]


def _stack(*options: Decorator) -> Decorator:
    """One decorator applying ``options`` in order (the first is listed first in ``--help``)."""

    def apply(f: Any) -> Any:
        for option in reversed(options):
            f = option(f)
        return f

    return apply


# --- loading the model (deploy, bench, compress, sensitivity; --profile also devices check) ---

_MODEL_HELP = "Built-in name (see `edgekit models`), FILE.pt2, FILE.pt or package.module:function."
_RECIPE_HELP = ("Compress by this recipe: a built-in name or a YAML file (steps: prune, distill, lowrank, "
                "mixed_precision, qat; budget; backoff).")


def model_option(required: bool = True) -> Decorator:
    """``--model``; ``bench`` does not require it (``--resume`` brings the run's)."""
    return click.option("--model", required=required, help=_MODEL_HELP)


profile_option = click.option(
    "--profile", help="Profile name or YAML path, instead of the device's own (default: the device's; this "
                      "host's when the device is local or there is none).")
calibration_option = click.option(
    "--calibration", type=click.Path(dir_okay=False), help="Calibration samples: .npy, .npz or .pt.")
input_shape_option = click.option(
    "--input-shape", help="Input shape(s), e.g. 1,3,224,224 (several: separate with ';').")
allow_pickle_option = click.option(
    "--allow-pickle", is_flag=True, help="Load a .pt model with full pickle (runs code: trusted files only).")


def recipe_option(required: bool = False) -> Decorator:
    """``--recipe`` (the value reaches the command as ``recipe_file``); ``compress`` requires it."""
    return click.option("--recipe", "recipe_file", required=required, type=click.Path(dir_okay=False),
                        help=_RECIPE_HELP)


# --- what to build ---

targets_option = click.option(
    "--targets", help="Comma-separated export targets (default: the profile's; see `edgekit targets`).")
precisions_option = click.option(
    "--precisions", help="Comma-separated precisions, e.g. fp32,int8 (default: the profile's).")
no_cache_option = click.option(
    "--no-cache", is_flag=True, help="Rebuild every artifact: ignore the build cache and store nothing in it.")
export_options = _stack(targets_option, precisions_option, no_cache_option)
out_dir_option = click.option(
    "--out-dir", default="artifacts", show_default=True, type=click.Path(file_okay=False),
    help="Folder the artifacts are written to.")

# --- devices ---

device_option = click.option(
    "--device", default="local", show_default=True, help="Device name from the devices file, or local.")
devices_file_option = click.option(
    "--devices-file", "devices_file", type=click.Path(dir_okay=False),
    help="The devices file (registry) to use (default: $EDGEKIT_DEVICES, else ./devices.yaml).")
trust_option = click.option(
    "--trust-new-host", is_flag=True,
    help="Accept an SSH host key seen for the first time and record it in known_hosts.")


def _device_names(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--devices`` takes names: a registry file given there is the ``--devices-file`` mix-up, said so."""
    for item in [value or "", *(value or "").split(",")]:
        item = item.strip()
        if item.lower().endswith((".yaml", ".yml")) and Path(item).is_file():
            raise click.BadParameter(
                f"{item!r} is a file: --devices takes device names (a,b); the registry file is --devices-file")
    return value


device_names_option = click.option(
    "--devices", "device_names", callback=_device_names,
    help="Comma-separated device names from the devices file (see --devices-file).")

# --- output ---

out_option = click.option(
    "--out", "out_file", type=click.Path(dir_okay=False), help="Also write the rows to this .parquet file.")
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print the result as JSON on stdout instead of a table.")
results_option = click.option(
    "--results", "results_dir", type=click.Path(file_okay=False),
    help="Results store (default: $EDGEKIT_RESULTS, else ./edgekit-results).")

# --- how hard to measure (deploy, bench; compress has --min-seconds only) ---


def min_seconds_option(*aliases: str) -> Decorator:
    """``--min-seconds`` and ``aliases`` (deploy and bench also accept ``--min-duration``)."""
    return click.option("--min-seconds", *aliases, "min_seconds", type=float, default=1.0, show_default=True,
                        help="Timed seconds at least (MLPerf-style minimum duration; minutes are fine).")


measure_options = _stack(
    click.option("--threads", help="Threads for each runtime, or several (1,2,4: a row each). Default: the profile's."),
    click.option("--min-iterations", type=int, default=50, show_default=True, help="Timed runs at least."),
    min_seconds_option("--min-duration"),
    click.option("--warmup-iterations", type=int, default=10, show_default=True),
    click.option("--warmup-seconds", type=float, default=0.2, show_default=True),
    click.option("--idle-seconds", type=float, default=0.5, show_default=True,
                 help="Idle power baseline before each timed window (where a power sensor reads)."),
    click.option("--external-meter",
                 help="Command printing joules or watts per call (e.g. 'meter-read --port /dev/ttyUSB0')."),
    click.option("--no-energy", is_flag=True, help="Do not read energy sensors."),
    click.option("--profile-ops", is_flag=True, help="Also profile per op (separate pass, after timing)."),
    click.option("--include-copies", is_flag=True,
                 help="On a GPU execution provider, time host<->device copies too (default: GPU time only)."),
)


def bench_config(threads: str | None, min_iterations: int, min_seconds: float, warmup_iterations: int,
                 warmup_seconds: float, idle_seconds: float, external_meter: str | None, no_energy: bool,
                 profile_ops: bool, include_copies: bool) -> Any:
    """The :class:`edgekit.BenchConfig` of :data:`measure_options`' values."""
    from edgekit import BenchConfig

    return BenchConfig(
        min_iterations=min_iterations, min_seconds=min_seconds, warmup_iterations=warmup_iterations,
        warmup_seconds=warmup_seconds, threads=_thread_counts(threads), idle_seconds=idle_seconds,
        external_meter=shlex.split(external_meter) if external_meter else None, energy=not no_energy,
        profile_ops=profile_ops, include_copies=include_copies)


def _thread_counts(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r}: give thread counts like 4 or 1,2,4", param_hint="--threads") from None


def csv(value: str | None) -> list[str] | None:
    """``a, b`` -> ``["a", "b"]``; None for nothing given."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


# What builds and measures artifacts, shared by ``deploy`` and ``bench`` (one definition, one help text).
build_and_measure_options = _stack(profile_option, export_options, calibration_option, input_shape_option,
                                   allow_pickle_option, recipe_option(), measure_options)
