"""``export``: write each target x precision artifact, then check it against PyTorch in its own runtime.

An artifact is built in a temporary folder and moved into place only when complete, so a partial
artifact is never left where it could be used (``_build``). A target that fails yields an Artifact with
the error (naming the op when the exporter does) and the other targets still run. Importing this package
loads no torch: the exporters and the model type load when an export runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from edgekit.config.target import Target, load_target
from edgekit.exporters._build import _safe, export_one, new_artifact
from edgekit.exporters.base import EXPORTERS, Artifact, Exporter, ParityResult, get_exporter

if TYPE_CHECKING:
    from edgekit.compression.model import CompressedModel

__all__ = ["EXPORTERS", "Artifact", "Exporter", "ParityResult", "export", "get_exporter"]


def export(
    compressed: CompressedModel,
    targets: Sequence[str | Target] | None = None,
    out_dir: str | Path = "artifacts",
    *,
    precisions: Sequence[str] | None = None,
    check: bool = True,
    jobs: int | None = None,
    on_event: Callable[[str], None] | None = None,
) -> list[Artifact]:
    """Export ``compressed`` to each target (default: its profile's, in order) and precision.

    ``check`` runs parity (and accuracy, when the model has an eval set) in each artifact's runtime.
    ``jobs`` worker processes export at once (default: one per core; 1 exports in this process).
    """
    prof = compressed.profile
    resolved = [load_target(t) for t in (targets or prof.targets)]
    wanted = list(precisions or prof.precisions)
    out = Path(out_dir)
    inputs = write_example_inputs(compressed, out)
    eval_set = write_eval_set(compressed, out)
    usable = {t.name: [p for p in wanted if p in t.precisions] for t in resolved}
    tasks: list[tuple[Target, str]] = [(t, p) for t in resolved for p in usable[t.name]]
    done = _export_all(compressed, tasks, out, check=check, jobs=jobs, on_event=on_event)
    artifacts: list[Artifact] = []
    for target in resolved:
        if not usable[target.name]:
            artifacts.append(new_artifact(compressed, target, "/".join(wanted),
                                       error=f"target {target.name!r} supports {target.precisions}, "
                                             f"the profile asks for {wanted}"))
        for precision in usable[target.name]:
            art = done[(target.name, precision)]
            art.inputs = inputs
            art.eval_set = eval_set
            artifacts.append(art)
    return artifacts


def _export_all(
    cm: CompressedModel, tasks: list[tuple[Target, str]], out: Path, *, check: bool, jobs: int | None,
    on_event: Callable[[str], None] | None,
) -> dict[tuple[str, str], Artifact]:
    from edgekit.exporters._parallel import export_parallel, payload

    workers = min(jobs or os.cpu_count() or 1, len(tasks))
    done: dict[tuple[str, str], Artifact] = {}
    if workers > 1:
        if check:
            cm.reference_outputs()  # once, here, and pickled along, rather than in every worker
        data = payload(cm)
        if data is not None:
            done, tasks = export_parallel(data, tasks, out, check=check, workers=workers, on_event=on_event)
    for target, precision in tasks:
        if on_event:
            on_event(f"exporting {target.name} {precision}")
        done[(target.name, precision)] = export_one(cm, target, precision, out, check=check)
    return done


def write_example_inputs(cm: CompressedModel, out_dir: Path) -> Path:
    """The inputs the agent times with (``arr_0``, ``arr_1``... in argument order), beside the artifacts."""
    import numpy as np

    path = out_dir / _safe(cm.name) / _safe(cm.profile.name) / "inputs.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, *[t.detach().numpy() for t in cm.spec.example_inputs])
    return path


EVAL_SET_MAX_BYTES = 64 * 1024 * 1024  # pushed to every device: a prefix of a large eval set, counted


def write_eval_set(cm: CompressedModel, out_dir: Path) -> Path | None:
    """The held-out set the device's own runtime scores: ``input_0``.. (N, *sample shape) + ``labels`` (N,)."""
    import numpy as np

    ev = cm.spec.eval_set
    if ev is None or len(ev) == 0:
        return None
    per_sample = sum(t.numel() * t.element_size() for t in ev.inputs[0])
    n = max(1, min(len(ev), EVAL_SET_MAX_BYTES // max(per_sample, 1)))
    arrays: dict[str, Any] = {f"input_{k}": np.stack([s[k].detach().numpy() for s in ev.inputs[:n]]) for k in range(len(ev.inputs[0]))}
    path = out_dir / _safe(cm.name) / _safe(cm.profile.name) / "eval.npz"
    np.savez(path, labels=ev.labels.numpy()[:n], **arrays)
    return path
