"""``export``: write each target x precision artifact, then check it against PyTorch in its own runtime.

An artifact is built in a temporary folder and moved into place only when complete, so a partial
artifact is never left where it could be used. A target that fails yields an Artifact with the error
(naming the op when the exporter does) and the other targets still run.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

from edgekit.compression import CompressedModel
from edgekit.config.target import Target, load_target
from edgekit.errors import ExportError, UnknownNameError
from edgekit.exporters.base import Artifact, Exporter, ParityResult, find_op

__all__ = ["EXPORTERS", "Artifact", "Exporter", "ParityResult", "export", "get_exporter"]

# format -> "module:Class"; imported only when that format is used (heavy backends).
EXPORTERS: dict[str, str] = {
    "executorch": "edgekit.exporters.executorch:ExecutorchExporter",
    "onnx": "edgekit.exporters.onnx:OnnxExporter",
    "tflite": "edgekit.exporters.tflite:TfliteExporter",
}


def get_exporter(fmt: str) -> Exporter:
    if fmt not in EXPORTERS:
        raise UnknownNameError("export format", fmt, EXPORTERS)
    mod, _, cls = EXPORTERS[fmt].partition(":")
    return getattr(importlib.import_module(mod), cls)()


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
    tasks = [(t, p) for t in resolved for p in usable[t.name]]
    done = _export_all(compressed, tasks, out, check=check, jobs=jobs, on_event=on_event)
    artifacts: list[Artifact] = []
    for target in resolved:
        if not usable[target.name]:
            artifacts.append(_artifact(compressed, target, "/".join(wanted),
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
    arrays = {f"input_{k}": np.stack([s[k].detach().numpy() for s in ev.inputs[:n]]) for k in range(len(ev.inputs[0]))}
    path = out_dir / _safe(cm.name) / _safe(cm.profile.name) / "eval.npz"
    np.savez(path, labels=ev.labels.numpy()[:n], **arrays)
    return path


def _artifact(cm: CompressedModel, target: Target, precision: str, **kw: object) -> Artifact:
    power = cm.profile.power_model.model_dump() if cm.profile.power_model else None
    return Artifact(model=cm.name, profile=cm.profile.name, target=target.name, format=target.format,
                    precision=precision, threads=cm.profile.threads, power_model=power,
                    reference_accuracy=cm.reference_accuracy, **kw)  # type: ignore[arg-type]


def export_one(cm: CompressedModel, target: Target, precision: str, out_dir: Path, *, check: bool = True) -> Artifact:
    art = _artifact(cm, target, precision)
    final = out_dir / _safe(cm.name) / _safe(cm.profile.name) / f"{_safe(target.name)}-{precision}"
    final.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    log = final.parent / f"{final.name}.export.log"
    log.unlink(missing_ok=True)
    try:
        with captured_output(log):
            main = get_exporter(target.format).export(cm, precision, target, tmp)
        if not main.is_file():
            raise ExportError(target.name, f"exporter wrote no {main.name}")
        if final.exists():
            shutil.rmtree(final)
        tmp.chmod(0o755)  # mkdtemp makes it 0700
        tmp.rename(final)
    except Exception as exc:
        art.error = f"{_describe(exc, target)} (toolchain log: {log})"
        art.export_seconds = time.perf_counter() - start
        return art
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already on success; on failure or Ctrl-C, never left half-done
    art.export_seconds = time.perf_counter() - start
    art.path = final / main.name
    art.files = sorted(p for p in final.iterdir() if p.is_file())
    art.bytes = sum(p.stat().st_size for p in art.files)
    if check:
        start = time.perf_counter()
        with captured_output(log):
            _check(art, cm, target)
        art.check_seconds = time.perf_counter() - start
    return art


@contextmanager
def captured_output(log: Path) -> Iterator[None]:
    """Send the toolchains' chatter (C++ and Python, stdout and stderr) to ``log``.

    Exporters print progress and warnings at the file-descriptor level; left alone, they would corrupt
    the CLI's --json output and bury its table.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "ab") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _check(art: Artifact, cm: CompressedModel, target: Target) -> None:
    from edgekit.agent.runtimes import load_runner
    from edgekit.exporters.parity import check_parity, runner_accuracy

    try:
        runner = load_runner(target.format, str(art.path), threads=cm.profile.threads)
        art.parity = check_parity(runner, cm.parity_inputs(), cm.reference_outputs(),
                                  target.tolerance_for(art.precision))
        art.accuracy = runner_accuracy(runner, cm.spec)
    except Exception as exc:
        art.error = f"{target.name}: exported, but running it failed: {type(exc).__name__}: {exc}"


def _describe(exc: Exception, target: Target) -> str:
    if isinstance(exc, ExportError):
        return str(exc)
    text = re.sub(r"\x1b\[[0-9;]*m", "", f"{type(exc).__name__}: {exc}")  # toolchains colour their errors
    op = find_op(text)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return str(ExportError(target.name, f"export failed: {first[:500]}", op=op))


def _safe(name: str) -> str:
    """A name as one path component: no separators, no leading dots."""
    cleaned = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name).lstrip(".")
    return cleaned or "_"
