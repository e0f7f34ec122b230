"""The public verbs. Each stage takes validated config; ``deploy`` chains them for one device."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from edgekit.config.device import LocalDevice, SshDevice, get_device
from edgekit.config.profile import Profile, host_profile, load_profile

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from edgekit.bench.config import BenchConfig
    from edgekit.compression import CompressedModel
    from edgekit.config.target import Target
    from edgekit.exporters import Artifact


def compress(
    model: Any,
    profile: str | Path | Profile | None = None,
    calibration: Any = None,
    *,
    example_inputs: "torch.Tensor | Sequence[torch.Tensor] | None" = None,
    input_shape: str | None = None,
    allow_pickle: bool = False,
) -> "CompressedModel":
    """Prepare ``model`` for ``profile`` (default: this host's). See :func:`edgekit.compression.compress`."""
    from edgekit.compression import compress as _compress

    return _compress(model, profile, calibration, example_inputs=example_inputs, input_shape=input_shape,
                     allow_pickle=allow_pickle)


def export(
    compressed: "CompressedModel",
    targets: "Sequence[str | Target] | None" = None,
    out_dir: str | Path = "artifacts",
    *,
    precisions: Sequence[str] | None = None,
    check: bool = True,
    jobs: int | None = None,
    on_event: Callable[[str], None] | None = None,
) -> "list[Artifact]":
    """Export to each target x precision and check parity in each artifact's runtime.

    ``jobs`` processes export at once (default: one per core).
    """
    from edgekit.exporters import export as _export

    return _export(compressed, targets, out_dir, precisions=precisions, check=check, jobs=jobs, on_event=on_event)


def benchmark(
    artifacts: "Sequence[Artifact]",
    device: str | LocalDevice | SshDevice = "local",
    config: "BenchConfig | None" = None,
    *,
    devices_file: str | Path | None = None,
    on_event: Callable[[str], None] | None = None,
) -> "pd.DataFrame":
    """Measure artifacts on a device; one row each, the recommended one first."""
    from edgekit.bench.run import benchmark as _benchmark

    return _benchmark(artifacts, device, config, devices_file=devices_file, on_event=on_event)


def op_table(df: "pd.DataFrame") -> "pd.DataFrame":
    """Per-op profiles of a benchmark run with ``profile_ops=True``: a row per op per measured artifact."""
    from edgekit.bench.results import op_table as _op_table

    return _op_table(df)


def device_profile(device: LocalDevice | SshDevice, override: str | Path | Profile | None = None) -> Profile:
    """``override``, else the device's own profile, else (local only) the one matching this host."""
    if override is not None:
        return load_profile(override)
    if device.profile:
        return load_profile(device.profile)
    return host_profile()


def with_trust(device: LocalDevice | SshDevice, trust_new_host: bool) -> LocalDevice | SshDevice:
    """The device, accepting (and recording) an unknown host key when the caller said so."""
    if trust_new_host and isinstance(device, SshDevice):
        return device.model_copy(update={"trust_new_host": True})
    return device


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
    out_dir: str | Path = "artifacts",
    jobs: int | None = None,
    config: "BenchConfig | None" = None,
    devices_file: str | Path | None = None,
    trust_new_host: bool = False,
    on_event: Callable[[str], None] | None = None,
) -> "pd.DataFrame":
    """Compress for the device's profile, export its targets, check parity, push, benchmark on the device."""
    dev = with_trust(get_device(device, devices_file), trust_new_host)
    prof = device_profile(dev, profile)
    from edgekit.transport import open_transport

    open_transport(dev).close()  # fail fast, before minutes of export, on a device we cannot reach
    if on_event:
        on_event(f"compressing {model if isinstance(model, (str, Path)) else type(model).__name__} for {prof.name}")
    cm = compress(model, prof, calibration, example_inputs=example_inputs, input_shape=input_shape,
                  allow_pickle=allow_pickle)
    artifacts = export(cm, targets, out_dir, precisions=precisions, jobs=jobs, on_event=on_event)
    return benchmark(artifacts, dev, config, on_event=on_event)
