"""Build one artifact: written into a temporary folder, moved into place only when complete, then checked.

A partial artifact is never left where it could be used. A failure becomes the Artifact's error (naming
the op when the exporter does), so the other targets still run. Its own module, so the export workers
(``_parallel``) import it without importing the package that starts them.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from edgekit.config.target import Target
from edgekit.errors import ExportError
from edgekit.exporters.base import _STAGE, Artifact, BuildProgress, find_op, get_exporter

if TYPE_CHECKING:
    from edgekit.compression.model import CompressedModel


ProgressFn = Callable[[BuildProgress], None]


def artifact_dir(cm: CompressedModel, target: Target, precision: str, out_dir: Path) -> Path:
    return out_dir / _safe(cm.name) / _safe(cm.profile.name) / f"{_safe(target.name)}-{precision}"


def export_one(cm: CompressedModel, target: Target, precision: str, out_dir: Path, *, check: bool = True,
               on_progress: ProgressFn | None = None) -> Artifact:
    def stage(name: str, detail: str = "") -> None:
        if on_progress is not None:
            on_progress(BuildProgress(target.name, precision, name, detail))

    token = _STAGE.set(stage)
    try:
        art = _export_one(cm, target, precision, out_dir, check, stage)
    finally:
        _STAGE.reset(token)
    stage("failed" if art.error else "done", art.error or "")
    return art


def _export_one(cm: CompressedModel, target: Target, precision: str, out_dir: Path, check: bool,
                stage: Callable[[str], None]) -> Artifact:
    art = new_artifact(cm, target, precision)
    final = artifact_dir(cm, target, precision, out_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    log = final.parent / f"{final.name}.export.log"
    log.unlink(missing_ok=True)
    try:
        stage("export")
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
        stage("check")
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


def new_artifact(cm: CompressedModel, target: Target, precision: str, **kw: object) -> Artifact:
    power = cm.profile.power_model.model_dump() if cm.profile.power_model else None
    return Artifact(model=cm.name, profile=cm.profile.name, target=target.name, format=target.format,
                    precision=precision, threads=cm.profile.threads, power_model=power,
                    execution=cm.profile.execution_request(),
                    reference_accuracy=cm.reference_accuracy, **kw)  # type: ignore[arg-type]


def _check(art: Artifact, cm: CompressedModel, target: Target) -> None:
    from edgekit.agent.runtimes import load_runner
    from edgekit.exporters.parity import check_parity, runner_accuracy

    try:
        runner = load_runner(target.format, str(art.path), threads=cm.profile.threads)
        art.parity = check_parity(runner, cm.parity_inputs(), cm.reference_outputs(),
                                  target.tolerance_for(art.precision), class_scores=cm.spec.class_scores)
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
