"""``edgekit search``: the Pareto front of builds, measured on a device (see :mod:`edgekit.study`)."""

from __future__ import annotations

import json
from typing import Any

import click

import edgekit
import edgekit.cli._options as opt
from edgekit.cli._main import _json_rows, _plain, _stderr, _stdout, cli, escape

_SHOWN = [("trial", "trial"), ("model", "model (variant)"), ("target", "target"), ("precision", "prec"),
          ("threads", "thr"),
          ("latency_ms_p50", "p50 ms"), ("latency_ms_p50_ci95_low", "ci95 lo"), ("latency_ms_p50_ci95_high", "ci95 hi"),
          ("accuracy", "acc %"), ("accuracy_drop", "drop pts"), ("parity_cosine", "cosine"), ("artifact_mb", "MB"),
          ("peak_rss_mb", "RSS MiB"), ("energy_mj_per_inference", "mJ/inf")]


@cli.command("search")
@opt.model_option(required=False)
@opt.device_option
@click.option("--objectives", default="latency_p50,accuracy", show_default=True,
              help="Comma-separated NAME[:min|max]: latency_p50, latency_p90, accuracy, fidelity, size, memory, energy.")
@click.option("--constraint", "constraints", multiple=True,
              help="NAME<=V or NAME>=V (repeat): accuracy_drop, cosine, size_mb, p50_ms, p90_ms, memory_mb, energy_mj.")
@click.option("--trials", type=click.IntRange(min=1),
              help="Distinct combinations to judge (default 20; skipped ones count, repeats do not; on --resume "
                   "the run's unless raised).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--space", type=click.Path(dir_okay=False), help="YAML: targets, precisions, prune, threads, finetune_epochs.")
@opt.profile_option
@click.option("--device-budget", type=click.IntRange(min=1), help="At most this many measurements on the device.")
@click.option("--no-confirm", is_flag=True, help="Do not re-measure the front's members at the end.")
@opt.min_seconds_option()
@opt.results_option
@click.option("--resume", "resume_id", help="Continue search RUN_ID (its settings are kept; --trials may raise it).")
@click.option("--confirm-on", "confirm_on", multiple=True, help="Also measure the front on this device (repeat).")
@click.option("--mlflow", "mlflow_uri", help="Also log the run's rows to this MLflow tracking URI.")
@click.option("--cluster", "cluster", metavar="HOST:PORT",
              help="Run on this Ray cluster: each trial's export as a task, measurements through the device's "
                   "leasing actor. Needs edgekit[cluster].")
@opt.devices_file_option
@opt.json_option
def search(model: str | None, device: str, objectives: str, constraints: tuple[str, ...], trials: int | None, seed: int,
           space: str | None, profile: str | None, device_budget: int | None, no_confirm: bool, min_seconds: float,
           results_dir: str | None, resume_id: str | None, confirm_on: tuple[str, ...], mlflow_uri: str | None,
           cluster: str | None, devices_file: str | None, as_json: bool) -> None:
    """Search MODEL's targets x precisions x pruning x threads for the Pareto front measured on DEVICE.

    Exit status 1 when nothing met the constraints or the device was lost (resume with --resume RUN_ID).
    """
    if not resume_id and not model:
        raise click.UsageError("give --model (or --resume RUN_ID)")
    with _stderr().status("starting") as status:
        result = edgekit.search(
            model, device, objectives=opt.csv(objectives) or [], constraints=list(constraints), trials=trials,
            seed=seed, space=space, profile=profile, config=edgekit.BenchConfig(min_seconds=min_seconds),
            device_budget=device_budget, confirm=not no_confirm, results=results_dir, resume=resume_id,
            devices_file=devices_file, confirm_on=list(confirm_on), mlflow=mlflow_uri, cluster=cluster,
            on_progress=lambda msg: status.update(escape(msg)))
    if as_json:
        pick = None if result.pick is None else {k: _plain(v) for k, v in result.pick.items()}
        click.echo(json.dumps({"front": _json_rows(result.front), "pick": pick, "pick_reason": result.pick_reason,
                               "run_id": result.run_id, "stopped": result.stopped,
                               "closest": _json_rows(result.closest)}, indent=2, default=str))
    else:
        _print(result)
    raise SystemExit(0 if result.pick is not None and not result.stopped else 1)


def _print(result: Any) -> None:
    from rich.table import Table

    console = _stdout()
    measured = (result.trials["status"].isin(["measured", "reused"])).sum() if len(result.trials) else 0
    table = Table(title=f"Pareto front ({len(result.front)} of {measured} measured trials; run {result.run_id})")
    for _, head in _SHOWN:
        table.add_column(head, justify="right")
    for _, r in result.front.iterrows():
        table.add_row(*[_cell(col, r.get(col)) for col, _ in _SHOWN])
    console.print(table)
    if result.pick is not None:
        p = result.pick
        console.print(f"pick: trial {p['trial']}, {escape(p['model'])} {escape(p['target'])} {escape(p['precision'])} "
                      f"x{p['threads']}: {escape(result.pick_reason)}", highlight=False)
    else:
        console.print(f"no pick: {escape(result.pick_reason)}", highlight=False)
        if len(result.closest):
            console.print("closest trials (miss_*: by how much each constraint is missed):")
            console.print(escape(result.closest.to_string(index=False)), highlight=False)
    if result.stopped:
        console.print(f"[yellow]stopped[/]: {escape(result.stopped)}; continue with edgekit search --resume "
                      f"{result.run_id}", highlight=False)
    skipped = result.trials[~result.trials["status"].isin(["measured", "reused"])] if len(result.trials) else []
    for _, r in getattr(skipped, "iterrows", lambda: [])():
        knobs = ", ".join(f"{k} {r[k]}" for k in ("prune", "lowrank", "keep_fp32", "distill", "qat") if r.get(k))
        console.print(f"trial {r['trial']} {escape(r['target'])} {escape(r['precision'])} x{r['threads']}"
                      f"{' (' + escape(knobs) + ')' if knobs else ''}: {escape(r['status'])}: "
                      f"{escape(str(r['reason'])[:160])}", highlight=False)


def _cell(col: str, v: Any) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    if col == "accuracy":
        return f"{100 * v:.1f}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return escape(str(v))
