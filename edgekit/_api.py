"""The public verbs. Each stage takes validated config; ``deploy`` chains them for one device."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from edgekit.config.device import LocalDevice, SshDevice, device_profile, get_device, with_trust
from edgekit.config.profile import Profile

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from edgekit.config.bench import BenchConfig, BenchRequest, FleetConfig
    from edgekit.compression import CompressedModel
    from edgekit.config.recipe import Recipe
    from edgekit.config.target import Target
    from edgekit.exporters import Artifact, BuildCache, BuildProgress
    from edgekit.fleet import FleetResult
    from edgekit.study import SearchResult


def compress(
    model: Any,
    profile: str | Path | Profile | None = None,
    calibration: Any = None,
    *,
    example_inputs: "torch.Tensor | Sequence[torch.Tensor] | None" = None,
    input_shape: str | None = None,
    allow_pickle: bool = False,
    recipe: "str | Path | Recipe | None" = None,
    train_data: Any = None,
    val_data: Any = None,
    on_event: Callable[[str], None] | None = None,
) -> "CompressedModel":
    """Prepare ``model`` for ``profile`` (default: this host's), compressed by ``recipe`` if given.

    ``train_data``: re-iterable ``(inputs, labels)`` batches (a DataLoader) for the recipe's training steps;
    built-in models bring their own. See :func:`edgekit.compression.compress`.
    """
    from edgekit.compression import compress as _compress

    return _compress(model, profile, calibration, example_inputs=example_inputs, input_shape=input_shape,
                     allow_pickle=allow_pickle, recipe=recipe, train_data=train_data, val_data=val_data,
                     on_event=on_event)


def export(
    compressed: "CompressedModel",
    targets: "Sequence[str | Target] | None" = None,
    out_dir: str | Path = "artifacts",
    *,
    precisions: Sequence[str] | None = None,
    check: bool = True,
    jobs: int | None = None,
    cache: "bool | BuildCache" = True,
    on_event: Callable[[str], None] | None = None,
    on_progress: "Callable[[BuildProgress], None] | None" = None,
) -> "list[Artifact]":
    """Export to each target x precision and check parity in each artifact's runtime.

    ``jobs`` processes export at once (default: one per core). ``cache``: re-use artifacts built before from
    the same inputs (False: rebuild, store nothing); ``on_progress``: each artifact's build stage.
    """
    from edgekit.exporters import export as _export

    return _export(compressed, targets, out_dir, precisions=precisions, check=check, jobs=jobs, cache=cache,
                   on_event=on_event, on_progress=on_progress)


def build_cache(root: str | Path | None = None) -> "BuildCache":
    """The build cache (``$EDGEKIT_CACHE``/builds unless ``root``): ``entries()``, ``size()``, ``clear()``."""
    from edgekit.exporters.cache import BuildCache

    return BuildCache(root)


def benchmark(
    artifacts: "Sequence[Artifact]",
    device: str | LocalDevice | SshDevice = "local",
    config: "BenchConfig | None" = None,
    *,
    devices_file: str | Path | None = None,
    on_event: Callable[[str], None] | None = None,
) -> "pd.DataFrame":
    """Measure artifacts on a device; one row each, the recommended one first."""
    from edgekit.device.measure import benchmark as _benchmark

    return _benchmark(artifacts, device, config, devices_file=devices_file, on_event=on_event)


def benchmark_steps(
    compressed: "CompressedModel",
    device: str | LocalDevice | SshDevice = "local",
    *,
    target: "str | Target | None" = None,
    precision: str | None = None,
    out_dir: str | Path = "artifacts",
    config: "BenchConfig | None" = None,
    devices_file: str | Path | None = None,
    cache: bool = True,
    on_event: Callable[[str], None] | None = None,
) -> "pd.DataFrame":
    """Export the model after each recipe step to one target and measure all of them on ``device``.

    The rows are the results table's (latency, size, accuracy on the device...) plus the step's columns
    (``step``, ``method``, ``label``, ``status``, ``params``, ``nonzero_params``, ``macs``): what each step
    bought, measured side by side in one run. Default target: the profile's first; precision: int8 when the
    profile has it.
    """
    from edgekit.compression.recipe import step_models
    from edgekit.transport import open_transport

    dev = get_device(device, devices_file)
    open_transport(dev).close()  # fail fast, before an export per step, on a device we cannot reach
    prof = compressed.profile
    tgt = target or prof.targets[0]
    prec = precision or ("int8" if "int8" in prof.precisions else prof.precisions[0])
    variants = step_models(compressed)
    artifacts = []
    for record, variant in variants:
        if on_event:
            on_event(f"exporting step {record.step} ({record.label}) to {tgt} {prec}")
        artifacts += export(variant, [tgt], out_dir, precisions=[prec], jobs=1, cache=cache)
    df = benchmark(artifacts, dev, config, on_event=on_event)
    return _join_steps(df, variants)


def layer_sensitivity(compressed: "CompressedModel", *, metric: str = "sqnr",
                      precision: str = "int8") -> "pd.DataFrame":
    """Per layer, how much int8 (or int4) hurts when only that layer is quantized (SQNR and worst cosine of
    the output, or accuracy drop): the report behind mixed precision, most sensitive first."""
    from edgekit.compression.sensitivity import layer_sensitivity as _sensitivity

    return _sensitivity(compressed, metric=metric, precision=precision)


def save_model(compressed: "CompressedModel", path: str | Path) -> Path:
    """Write the compressed fp32 model as a torch.export ``.pt2`` (with its example inputs), so it can be
    deployed later with ``--model FILE.pt2``. Mixed-precision layers and QAT are export-time plans, not
    weights: ``deploy --recipe`` carries them, a ``.pt2`` does not."""
    import torch

    from edgekit._fs import atomic_path
    from edgekit.errors import CompressError

    out = Path(path)
    if out.suffix != ".pt2":
        raise CompressError(f"{out}: the compressed model is saved as a torch.export program; name it *.pt2")
    out.parent.mkdir(parents=True, exist_ok=True)
    program = torch.export.export(compressed.spec.module.eval(), compressed.spec.example_inputs)
    with atomic_path(out) as tmp:
        torch.export.save(program, str(tmp))
    return out


def _join_steps(df: "pd.DataFrame", variants: list) -> "pd.DataFrame":
    import pandas as pd

    steps = pd.DataFrame([{**{k: v for k, v in r.row().items() if k in _STEP_COLUMNS}, "model": m.name,
                           "recipe_accuracy": r.accuracy} for r, m in variants])
    merged = steps.merge(df, on="model", how="left")
    return merged.sort_values("step", kind="stable").reset_index(drop=True)


_STEP_COLUMNS = ("step", "method", "label", "status", "params", "nonzero_params", "macs", "evaluated_as")


def op_table(df: "pd.DataFrame") -> "pd.DataFrame":
    """Per-op profiles of a benchmark run with ``profile_ops=True``: a row per op per measured artifact."""
    from edgekit.results.rows import op_table as _op_table

    return _op_table(df)


def deploy(
    model: Any,
    device: str | LocalDevice | SshDevice = "local",
    *,
    profile: str | Path | Profile | None = None,
    targets: "Sequence[str | Target] | None" = None,
    precisions: Sequence[str] | None = None,
    calibration: Any = None,
    example_inputs: "torch.Tensor | Sequence[torch.Tensor] | None" = None,
    input_shape: str | None = None,
    allow_pickle: bool = False,
    recipe: "str | Path | Recipe | None" = None,
    train_data: Any = None,
    out_dir: str | Path = "artifacts",
    jobs: int | None = None,
    cache: bool = True,
    config: "BenchConfig | None" = None,
    devices_file: str | Path | None = None,
    trust_new_host: bool = False,
    on_event: Callable[[str], None] | None = None,
    on_progress: "Callable[[BuildProgress], None] | None" = None,
) -> "pd.DataFrame":
    """Compress for the device's profile (by ``recipe`` if given), export its targets, check parity, push,
    benchmark on the device."""
    dev = with_trust(get_device(device, devices_file), trust_new_host)
    prof = device_profile(dev, profile)
    from edgekit.transport import open_transport

    open_transport(dev).close()  # fail fast, before minutes of export, on a device we cannot reach
    if on_event:
        on_event(f"compressing {model if isinstance(model, (str, Path)) else type(model).__name__} for {prof.name}")
    cm = compress(model, prof, calibration, example_inputs=example_inputs, input_shape=input_shape,
                  allow_pickle=allow_pickle, recipe=recipe, train_data=train_data, on_event=on_event)
    artifacts = export(cm, targets, out_dir, precisions=precisions, jobs=jobs, cache=cache, on_event=on_event,
                       on_progress=on_progress)
    return benchmark(artifacts, dev, config, on_event=on_event)


def bench(
    model: Any = None,
    devices: Sequence[str] | None = None,
    *,
    tags: Sequence[str] | None = None,
    all_devices: bool = False,
    profile: str | Path | Profile | None = None,
    targets: Sequence[str] | None = None,
    precisions: Sequence[str] | None = None,
    calibration: str | Path | None = None,
    input_shape: str | None = None,
    allow_pickle: bool = False,
    recipe: str | Path | None = None,
    config: "BenchConfig | None" = None,
    fleet: "FleetConfig | None" = None,
    devices_file: str | Path | None = None,
    results: str | Path | None = None,
    resume: str | None = None,
    trust_new_host: bool = False,
    mlflow: str | None = None,
    cache: bool = True,
    request: "BenchRequest | None" = None,
    on_progress: Callable[[str | None, str, str], None] | None = None,
) -> "FleetResult":
    """Benchmark ``model`` on many devices at once (by name, ``tags`` or ``all_devices``).

    Artifacts are built once per profile; devices run ``fleet.parallel`` at a time, each with its own
    timeout and retries; every row is stored the moment it arrives (``results``, default
    ``./edgekit-results``), so ``resume=RUN_ID`` finishes an interrupted run. The result maps device ->
    outcome, with ``.df``, ``.succeeded``, ``.failed`` and ``.run_id``. See :mod:`edgekit.fleet`.

    The keywords are the fields of :class:`edgekit.BenchRequest`; pass ``request=`` instead to give them
    as one object (what the CLI does), not both.
    """
    from edgekit.config.bench import BenchRequest
    from edgekit.fleet import bench as _bench

    given = BenchRequest(model=model, devices=devices, tags=tags, all_devices=all_devices, profile=profile,
                         targets=targets, precisions=precisions, calibration=calibration, input_shape=input_shape,
                         allow_pickle=allow_pickle, recipe=recipe, config=config, fleet=fleet,
                         devices_file=devices_file, results=results, trust_new_host=trust_new_host, mlflow=mlflow,
                         cache=cache)
    if request is not None:
        if given != BenchRequest():
            from edgekit.errors import ConfigError

            raise ConfigError("give the run's settings either as keywords or as request=, not both", field="request")
        given = request
    return _bench(given, resume=resume, on_progress=on_progress)


def search(
    model: Any = None,
    device: str | LocalDevice | SshDevice = "local",
    *,
    objectives: Sequence[str] = ("latency_p50", "accuracy"),
    constraints: Sequence[str] = (),
    trials: int | None = None,
    seed: int = 0,
    space: Any = None,
    profile: str | Path | Profile | None = None,
    train_data: Any = None,
    config: "BenchConfig | None" = None,
    device_budget: int | None = None,
    confirm: bool = True,
    results: str | Path | None = None,
    resume: str | None = None,
    devices_file: str | Path | None = None,
    confirm_on: Sequence[str] = (),
    mlflow: str | None = None,
    cluster: str | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> "SearchResult":
    """The Pareto front of ``model``'s builds (targets x precisions x channel pruning x threads) for
    ``objectives``, measured on ``device``, and the member to ship under ``constraints``.

    Objectives: ``latency_p50``, ``latency_p90``, ``accuracy``, ``fidelity``, ``size``, ``memory``, ``energy``
    (``name:min|max`` overrides the direction). Constraints: ``accuracy_drop<=1``, ``p50_ms<=5``,
    ``size_mb<=2``, ``cosine>=0.99``... ``space``: a :class:`edgekit.SearchSpace`, a dict or a YAML file.
    ``trials``: distinct combinations judged (default 20; on resume, the run's unless raised here).
    ``resume=RUN_ID`` continues a search without repeating a finished trial. ``cluster``: a Ray cluster's
    address: exports as Ray tasks, measurements through the device's leasing actor. See :mod:`edgekit.study`.
    """
    from edgekit.study import search as _search

    return _search(model, device, objectives=objectives, constraints=constraints, trials=trials, seed=seed,
                   space=space, profile=profile, train_data=train_data, config=config, device_budget=device_budget,
                   confirm=confirm, results=results, resume=resume, devices_file=devices_file,
                   confirm_on=confirm_on, mlflow=mlflow, cluster=cluster, on_progress=on_progress)


def search_artifact(run_id: str, pick: int | None = None, results: str | Path | None = None) -> "Artifact":
    """A finished search's pick (or front member ``pick``, by trial number), ready for :func:`benchmark`
    on any device: ``edgekit deploy --from-search RUN``."""
    from edgekit.study import front_artifact

    return front_artifact(run_id, pick, results)


def load_run(run_id: str, results: str | Path | None = None) -> "pd.DataFrame":
    """A stored run's rows (also of a run that crashed: its journal is read)."""
    from edgekit.results.store import load_run as _load_run

    return _load_run(run_id, results)


def compare_runs(run_a: str, run_b: str, results: str | Path | None = None) -> "pd.DataFrame":
    """``run_b`` against ``run_a``, per row and metric; a regression only beyond the measurements' 95 %
    interval. See :mod:`edgekit.results.compare`."""
    from edgekit.results.compare import compare_runs as _compare

    return _compare(load_run(run_a, results), load_run(run_b, results))
