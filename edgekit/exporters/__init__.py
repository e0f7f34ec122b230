"""``export``: write each target x precision artifact, then check it against PyTorch in its own runtime.

An artifact is built in a temporary folder and moved into place only when complete, so a partial
artifact is never left where it could be used (``_build``). A target that fails yields an Artifact with
the error (naming the op when the exporter does) and the other targets still run. Importing this package
loads no torch: the exporters and the model type load when an export runs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from edgekit.config.target import Target, load_target
from edgekit.exporters._build import _safe, artifact_dir, export_one, new_artifact
from edgekit.exporters.base import EXPORTERS, Artifact, BuildProgress, Exporter, ParityResult, get_exporter
from edgekit.exporters.cache import BuildCache, artifact_keys, cached_artifact

if TYPE_CHECKING:
    from edgekit.compression.model import CompressedModel

__all__ = ["EXPORTERS", "Artifact", "BuildCache", "BuildProgress", "Exporter", "ParityResult", "export", "get_exporter"]


def export(
    compressed: CompressedModel,
    targets: Sequence[str | Target] | None = None,
    out_dir: str | Path = "artifacts",
    *,
    precisions: Sequence[str] | None = None,
    check: bool = True,
    jobs: int | None = None,
    cache: bool | BuildCache = True,
    on_event: Callable[[str], None] | None = None,
    on_progress: Callable[[BuildProgress], None] | None = None,
) -> list[Artifact]:
    """Export ``compressed`` to each target (default: its profile's, in order) and precision.

    ``check`` runs parity (and accuracy, when the model has an eval set) in each artifact's runtime.
    ``jobs`` worker processes export at once (default: one per core; 1 exports in this process).
    ``cache``: re-use artifacts already built from the same inputs (the build cache, see
    :mod:`edgekit.exporters.cache`); False rebuilds everything and stores nothing. ``on_progress`` gets each
    artifact's stage as it moves (export, quantize, lower, check, done / failed / cached).
    """
    prof = compressed.profile
    resolved = [load_target(t) for t in (targets or prof.targets)]
    wanted = list(precisions or prof.precisions)
    out = Path(out_dir)
    inputs = write_example_inputs(compressed, out)
    eval_set = write_eval_set(compressed, out)
    usable = {t.name: [p for p in wanted if p in t.precisions] for t in resolved}
    tasks: list[tuple[Target, str]] = [(t, p) for t in resolved for p in usable[t.name]]
    store = (cache if isinstance(cache, BuildCache) else BuildCache()) if cache else None
    done = _Build(compressed, out, check, jobs, store, on_event, on_progress).run(tasks)
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


class _Build:
    """One export call: cache hits restored, the rest built (in worker processes when there are several
    and the model pickles), each new artifact stored under its key while this process holds the key's
    lock, so a second process asking for the same key waits for it and re-uses it."""

    def __init__(self, cm: CompressedModel, out: Path, check: bool, jobs: int | None, store: BuildCache | None,
                 on_event: Callable[[str], None] | None, on_progress: Callable[[BuildProgress], None] | None) -> None:
        self.cm, self.out, self.check, self.jobs, self.store = cm, out, check, jobs, store
        self.on_event = on_event
        self.on_progress = on_progress
        self.done: dict[tuple[str, str], Artifact] = {}

    def progress(self, event: BuildProgress) -> None:
        if self.on_progress:
            self.on_progress(event)
        if self.on_event and event.stage in ("export", "cached", "failed"):
            text = {"export": "building", "cached": "build cache hit", "failed": "failed"}[event.stage]
            self.on_event(f"{event.target} {event.precision}: {text}{': ' + event.detail if event.detail else ''}")

    def run(self, tasks: list[tuple[Target, str]]) -> dict[tuple[str, str], Artifact]:
        from filelock import Timeout

        if self.store is None:
            self._build(tasks)
            return self.done
        keys = artifact_keys(self.cm, tasks, check=self.check)
        mine: list[tuple[Target, str]] = []
        theirs: list[tuple[Target, str]] = []
        locks = {}
        try:
            for task in tasks:
                key = keys[(task[0].name, task[1])]
                if key is None:  # no stable key (a QAT plan on a shuffling DataLoader): built, not cached
                    mine.append(task)
                    continue
                if self._restore(task, key):
                    continue
                lock = self.store.lock(key)
                try:
                    lock.acquire(timeout=0)
                except Timeout:
                    theirs.append(task)  # another process is building it: wait for it after our own
                    continue
                locks[key] = lock
                if self._restore(task, key):  # it finished between our look and our lock
                    lock.release()
                    del locks[key]
                    continue
                self.store.clean_partial(key)
                mine.append(task)
            self._build(mine)
            for target, precision in mine:
                key = keys[(target.name, precision)]
                if key is not None:
                    self._store(key, self.done[(target.name, precision)])
        finally:
            for lock in locks.values():
                lock.release()
        for task in theirs:
            self._wait_for(task, keys[(task[0].name, task[1])] or "")
        return self.done

    def _restore(self, task: tuple[Target, str], key: str) -> bool:
        assert self.store is not None
        target, precision = task
        start = time.perf_counter()
        record, damaged = self.store.lookup(key)
        if damaged and self.on_event:
            self.on_event(f"{target.name} {precision}: {damaged}")
        if record is None:
            return False
        final = artifact_dir(self.cm, target, precision, self.out)
        files = self.store.restore(key, record, final)
        art = cached_artifact(record, new_artifact(self.cm, target, precision), files, time.perf_counter() - start)
        self.done[(target.name, precision)] = art
        self.progress(BuildProgress(target.name, precision, "cached", key[:12]))
        return True

    def _store(self, key: str, art: Artifact) -> None:
        assert self.store is not None
        if art.path is None or art.error is not None:
            return
        why_not = self.store.store(key, art)
        if why_not and self.on_event:
            self.on_event(f"{art.target} {art.precision}: {why_not}")

    def _wait_for(self, task: tuple[Target, str], key: str) -> None:
        """Another process holds the key's lock: wait until it is done, then re-use what it built (or build
        it here, holding the lock, when it failed or was killed)."""
        assert self.store is not None
        target, precision = task
        self.progress(BuildProgress(target.name, precision, "waiting", "another process is building it"))
        with self.store.lock(key):
            if self._restore(task, key):
                return
            self.store.clean_partial(key)
            self._build([task])
            self._store(key, self.done[(target.name, precision)])

    def _build(self, tasks: list[tuple[Target, str]]) -> None:
        from edgekit.exporters._parallel import export_parallel, payload

        if not tasks:
            return
        workers = min(self.jobs or os.cpu_count() or 1, len(tasks))
        if workers > 1:
            if self.check:
                self.cm.reference_outputs()  # once, here, and pickled along, rather than in every worker
            data = payload(self.cm)
            if data is not None:
                built, tasks = export_parallel(data, tasks, self.out, check=self.check, workers=workers,
                                               on_progress=self.progress, on_event=self.on_event)
                self.done.update(built)
        for target, precision in sorted(tasks, key=_calibration_order):  # the calibration-sharing pair's order
            self.done[(target.name, precision)] = export_one(self.cm, target, precision, self.out, check=self.check,
                                                             on_progress=self.progress)


def _calibration_order(task: tuple[Target, str]) -> int:
    from edgekit.exporters._parallel import _SHARED_CALIBRATION

    key = (task[0].format, task[1])
    return _SHARED_CALIBRATION.index(key) if key in _SHARED_CALIBRATION else len(_SHARED_CALIBRATION)


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
