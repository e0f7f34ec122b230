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

import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from edgekit.config.target import Target
from edgekit.exporters.base import Artifact

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


def shares(tasks: Sequence[Task], workers: int) -> list[list[Task]]:
    """Longest-first onto the least-loaded worker."""
    lanes: list[list[Task]] = [[] for _ in range(workers)]
    load = [0] * workers
    for task in sorted(tasks, key=lambda t: -_COST.get((t[0].format, t[1]), 1)):
        i = load.index(min(load))
        lanes[i].append(task)
        load[i] += _COST.get((task[0].format, task[1]), 1)
    return [lane for lane in lanes if lane]


def export_parallel(
    data: bytes, tasks: Sequence[Task], out_dir: Path, *, check: bool, workers: int,
    on_event: Callable[[str], None] | None = None,
) -> tuple[dict[tuple[str, str], Artifact], list[Task]]:
    """Artifacts the workers made, and the tasks whose worker failed (to be exported here)."""
    done: dict[tuple[str, str], Artifact] = {}
    failed: list[Task] = []
    with tempfile.TemporaryDirectory(prefix="edgekit-export-") as tmp:
        model = Path(tmp) / "model.pkl"
        model.write_bytes(data)
        procs = []
        for i, lane in enumerate(shares(tasks, workers)):
            job, result = Path(tmp) / f"job{i}.pkl", Path(tmp) / f"result{i}.pkl"
            job.write_bytes(pickle.dumps({"tasks": lane, "out_dir": str(out_dir), "check": check}))
            if on_event:
                on_event(f"exporting {', '.join(f'{t.name} {p}' for t, p in lane)} (worker {i + 1})")
            argv = [sys.executable, "-m", "edgekit.exporters._parallel", str(model), str(job), str(result)]
            procs.append((lane, result, subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                         stderr=subprocess.DEVNULL, env=_worker_env())))
        for lane, result, proc in procs:
            proc.wait()
            if proc.returncode == 0 and result.is_file():
                for art in pickle.loads(result.read_bytes()):
                    done[(art.target, art.precision)] = art
            failed += [t for t in lane if (t[0].name, t[1]) not in done]
    return done, failed


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # one core per worker: the workers already use every core
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # the parent's imports resolve the same
    return env


def _work(model_path: str, job_path: str, result_path: str) -> None:
    from edgekit.exporters._build import export_one

    cm = pickle.loads(Path(model_path).read_bytes())
    job = pickle.loads(Path(job_path).read_bytes())
    arts = [export_one(cm, t, p, Path(job["out_dir"]), check=job["check"]) for t, p in job["tasks"]]
    tmp = Path(result_path + ".tmp")
    tmp.write_bytes(pickle.dumps(arts))
    tmp.rename(result_path)


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    _work(*sys.argv[1:4])
