"""``edgekit compress``: run a recipe, print what each step bought, optionally measure each step on a device."""

from __future__ import annotations

from typing import Any

import click

import edgekit
import edgekit.cli._options as opt
from edgekit.cli._main import _stderr, _stdout, cli, emit_rows

STEP_COLUMNS = [
    ("step", "#"), ("label", "step"), ("status", "status"), ("params", "params"), ("nonzero_params", "non-zero"),
    ("macs", "MACs"), ("accuracy", "acc %"), ("accuracy_drop_pts", "drop pts"), ("cosine", "cosine"),
    ("evaluated_as", "scored as"), ("seconds", "s"),
]
MEASURED_COLUMNS = [
    ("step", "#"), ("label", "step"), ("target", "target"), ("precision", "prec"), ("params", "params"),
    ("macs", "MACs"), ("artifact_bytes", "KiB"), ("accuracy", "acc %"), ("device_accuracy", "dev acc %"),
    ("latency_ms_p50", "p50 ms"), ("latency_ms_p90", "p90 ms"), ("parity_ok", "parity"),
]


@cli.command()
@opt.model_option()
@opt.recipe_option(required=True)
@opt.profile_option
@opt.calibration_option
@click.option("--train-data", type=click.Path(dir_okay=False),
              help="Training data .npz: x (or x_0, x_1, ...) and integer labels y. Built-in models bring their own.")
@opt.input_shape_option
@opt.allow_pickle_option
@click.option("--save", "save_path", type=click.Path(dir_okay=False),
              help="Write the compressed fp32 model as a torch.export .pt2 (deploy it with --model FILE.pt2).")
@click.option("--measure", is_flag=True, help="Export the model after each step and benchmark them all on --device.")
@opt.device_option
@click.option("--target", help="--measure exports to this target (default: the profile's first).")
@click.option("--precision", help="--measure precision (default: int8 when the profile has it).")
@opt.no_cache_option
@opt.min_seconds_option()
@opt.out_dir_option
@opt.out_option
@opt.devices_file_option
@opt.json_option
def compress(model: str, recipe_file: str, profile: str | None, calibration: str | None, train_data: str | None,
             input_shape: str | None, allow_pickle: bool, save_path: str | None, measure: bool, device: str,
             target: str | None, precision: str | None, no_cache: bool, min_seconds: float, out_dir: str,
             out_file: str | None,
             devices_file: str | None, as_json: bool) -> None:
    """Compress MODEL by a recipe under its accuracy budget and report each step."""
    from edgekit import BenchConfig

    console = _stderr()
    prof = profile or edgekit.device_profile(edgekit.get_device(device, devices_file)).name
    with console.status("starting") as status:
        cm = edgekit.compress(model, prof, calibration, input_shape=input_shape, allow_pickle=allow_pickle,
                              recipe=recipe_file, train_data=train_data, on_event=lambda msg: status.update(msg))
        df = cm.report()
        if measure:
            df = edgekit.benchmark_steps(cm, device, target=target, precision=precision, out_dir=out_dir,
                                         config=BenchConfig(min_seconds=min_seconds), devices_file=devices_file,
                                         cache=not no_cache, on_event=lambda msg: status.update(msg))
    if save_path:
        edgekit.save_model(cm, save_path)
    if emit_rows(df, out_file, as_json):
        return
    _print_steps(df, MEASURED_COLUMNS if measure else STEP_COLUMNS, title=f"{cm.name} ({cm.profile.name})")
    for record in cm.history[1:]:
        if len(record.attempts) > 1 or record.status == "skipped":
            console.print(f"step {record.step} {record.status}: {' | '.join(record.attempts)}", highlight=False)
    if save_path:
        console.print(f"compressed model written to {save_path}")


def _print_steps(df: Any, columns: list[tuple[str, str]], title: str) -> None:
    from rich.markup import escape
    from rich.table import Table

    from edgekit.cli._main import _fmt

    table = Table(title=title)
    for col, head in columns:
        table.add_column(head, justify="left" if col in ("label", "status", "target", "evaluated_as") else "right")
    for _, row in df.iterrows():
        table.add_row(*[escape(_step_fmt(col, row.get(col), _fmt)) for col, _ in columns])
    _stdout().print(table)


def _step_fmt(col: str, v: Any, fmt: Any) -> str:
    if col in ("params", "nonzero_params", "macs") and v is not None and v == v:
        return f"{int(v):,}"
    if col == "accuracy_drop_pts" and v is not None and v == v:
        return f"{v:+.2f}"
    if col == "cosine" and v is not None and v == v:  # fidelity vs the fp32 model: 4 places, as parity prints it
        return f"{v:.4f}"
    return fmt(col, v)


@cli.command()
@opt.model_option()
@opt.profile_option
@opt.calibration_option
@opt.input_shape_option
@click.option("--metric", type=click.Choice(["sqnr", "accuracy", "both"]), default="sqnr", show_default=True)
@opt.json_option
def sensitivity(model: str, profile: str | None, calibration: str | None, input_shape: str | None, metric: str,
                as_json: bool) -> None:
    """Per-layer int8 sensitivity of MODEL (only that layer quantized), most sensitive first."""
    with _stderr().status("measuring per-layer sensitivity"):
        cm = edgekit.compress(model, profile, calibration, input_shape=input_shape)
        df = edgekit.layer_sensitivity(cm, metric=metric)
    if emit_rows(df, None, as_json):
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{cm.name}: int8 sensitivity per layer (XNNPACK PTQ, only that layer int8)")
    for col in df.columns:
        table.add_column(str(col), justify="left" if col in ("layer", "op") else "right")
    for _, row in df.iterrows():
        table.add_row(*[escape(f"{v:.2f}" if isinstance(v, float) else str(v)) for v in row])
    _stdout().print(table)
    if "all_int8_sqnr_db" in df.attrs:
        _stderr().print(f"all layers int8: SQNR {df.attrs['all_int8_sqnr_db']:.1f} dB. Keep the top rows fp32 with "
                        "a recipe step: mixed_precision: {keep_fp32: N}", highlight=False)
