"""Export several artifacts at once, one worker process per core.

Lowering (ExecuTorch's passes, litert-torch's conversion) is single-threaded Python, so on a 2-core
machine two processes cut the wall time by about a third (mobilenet-v2: 106 s -> 69 s). Each worker is a
fresh interpreter (``python -m edgekit.exporters._parallel``) given a pickle of the compressed model and
its share of the artifacts. Not fork: forking a process that already holds litert/JAX or runtime threads
hangs. Not multiprocessing's spawn: it re-imports the user's script, which re-runs one that lacks an
``if __name__ == "__main__"`` guard. A model that cannot be pickled for another interpreter (a class
defined in ``__main__`` or inside a function) is exported in this process instead, as is any share whose
worker fails to start.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from edgekit.config.target import Target
from edgekit.exporters.base import Artifact, BuildProgress

if TYPE_CHECKING:
    from edgekit.compression.model import CompressedModel

# Rough relative cost, so the two workers get about equal shares.
_COST = {("executorch", "int8"): 6, ("executorch", "int4"): 6, ("tflite", "int8"): 5, ("tflite", "int4"): 5,
         ("executorch", "fp32"): 4, ("tflite", "fp32"): 3}

Task = tuple[Target, str]


def payload(cm: CompressedModel) -> bytes | None:
    """The model pickled for a fresh interpreter, or None where that interpreter could not load it."""
    if any(type(m).__module__ == "__main__" or "<locals>" in type(m).__qualname__ for m in cm.spec.module.modules()):
        return None
    try:
        return pickle.dumps(cm)
    except Exception:
        return None


# Artifacts whose pt2e quantizers place the same observers: one worker builds them, LiteRT's first (its
# observers are a superset), so the second re-uses the first's calibration (compression._observers) and the
# traced pattern graphs (compression._patterns) instead of repeating them (36 s on mobilenet-v2).
_SHARED_CALIBRATION = (("tflite", "int8"), ("executorch", "int8"))


def shares(tasks: Sequence[Task], workers: int) -> list[list[Task]]:
    """Longest-first onto the least-loaded worker; the int8 artifacts that share a calibration together."""
    def cost(group: list[Task]) -> int:
        return sum(_COST.get((t[0].format, t[1]), 1) for t in group)

    shared = sorted((t for t in tasks if (t[0].format, t[1]) in _SHARED_CALIBRATION),
                    key=lambda t: _SHARED_CALIBRATION.index((t[0].format, t[1])))
    groups = [shared] if len(shared) > 1 else [[t] for t in shared]
    groups += [[t] for t in tasks if t not in shared]
    lanes: list[list[Task]] = [[] for _ in range(workers)]
    load = [0] * workers
    for group in sorted(groups, key=lambda g: -cost(g)):
        i = load.index(min(load))
        lanes[i] += group
        load[i] += cost(group) - (len(group) - 1) * 2  # the second of a shared pair skips its calibration
    return [lane for lane in lanes if lane]


def export_parallel(
    data: bytes, tasks: Sequence[Task], out_dir: Path, *, check: bool, workers: int,
    on_progress: Callable[[BuildProgress], None] | None = None, on_event: Callable[[str], None] | None = None,
) -> tuple[dict[tuple[str, str], Artifact], list[Task]]:
    """Artifacts the workers made, and the tasks whose worker failed (to be exported here).

    Each worker appends its stages to an events file (a JSON line each), which this process forwards to
    ``on_progress`` while it waits.
    """
    done: dict[tuple[str, str], Artifact] = {}
    failed: list[Task] = []
    with tempfile.TemporaryDirectory(prefix="edgekit-export-") as tmp:
        model = Path(tmp) / "model.pkl"
        model.write_bytes(data)
        procs = []
        events = []
        for i, lane in enumerate(shares(tasks, workers)):
            job, result = Path(tmp) / f"job{i}.pkl", Path(tmp) / f"result{i}.pkl"
            events.append(_EventTail(Path(tmp) / f"events{i}.jsonl"))
            job.write_bytes(pickle.dumps({"tasks": lane, "out_dir": str(out_dir), "check": check,
                                          "events": str(events[-1].path)}))
            if on_event:
                on_event(f"exporting {', '.join(f'{t.name} {p}' for t, p in lane)} (worker {i + 1})")
            argv = [sys.executable, "-m", "edgekit.exporters._parallel", str(model), str(job), str(result)]
            procs.append((lane, result, subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                         stderr=subprocess.DEVNULL, env=_worker_env())))
        while any(proc.poll() is None for _, _, proc in procs):
            for tail in events:
                tail.forward(on_progress)
            time.sleep(0.2)
        for tail in events:
            tail.forward(on_progress)
        for lane, result, proc in procs:
            if proc.returncode == 0 and result.is_file():
                for art in pickle.loads(result.read_bytes()):
                    done[(art.target, art.precision)] = art
            failed += [t for t in lane if (t[0].name, t[1]) not in done]
    return done, failed


class _EventTail:
    """New complete lines of a worker's events file."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0

    def forward(self, on_progress: Callable[[BuildProgress], None] | None) -> None:
        if on_progress is None or not self.path.is_file():
            return
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.splitlines():
            on_progress(BuildProgress(**json.loads(line)))


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # one core per worker: the workers already use every core
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # the parent's imports resolve the same
    return env


def _work(model_path: str, job_path: str, result_path: str) -> None:
    from edgekit.exporters._build import export_one

    cm = pickle.loads(Path(model_path).read_bytes())
    job = pickle.loads(Path(job_path).read_bytes())
    with open(job["events"], "a") as events:
        def report(event: BuildProgress) -> None:
            events.write(json.dumps(event.__dict__) + "\n")
            events.flush()

        arts = [export_one(cm, t, p, Path(job["out_dir"]), check=job["check"], on_progress=report)
                for t, p in job["tasks"]]
    tmp = Path(result_path + ".tmp")
    tmp.write_bytes(pickle.dumps(arts))
    tmp.rename(result_path)


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    _work(*sys.argv[1:4])
