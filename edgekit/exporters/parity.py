"""Parity: run an artifact in its own runtime on the reference's inputs and compare."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from edgekit.agent.runtimes import Runner
from edgekit.compression.model import top1_accuracy
from edgekit.config.target import Tolerance
from edgekit.exporters.base import ParityResult
from edgekit.models import Inputs, ModelSpec


def to_numpy(sample: Inputs) -> list[np.ndarray]:
    return [t.detach().numpy() for t in sample]


def compare(reference: list[list[np.ndarray]], actual: list[list[np.ndarray]], tol: Tolerance, *,
            class_scores: bool = True) -> ParityResult:
    """Worst-case error and cosine over samples; top-1 agreement on the first output when it holds class
    scores (an embedding's or a language model's argmax agreeing says nothing, so it is not judged)."""
    max_err, worst_cos, agree = 0.0, 1.0, []
    for ref, out in zip(reference, actual):
        if len(ref) != len(out):
            return ParityResult(len(reference), float("inf"), -1.0, None, False,
                                [f"artifact gives {len(out)} outputs, reference {len(ref)}"])
        r = np.concatenate([a.astype(np.float64).ravel() for a in ref])
        o = np.concatenate([a.astype(np.float64).ravel() for a in out])
        if r.shape != o.shape:
            return ParityResult(len(reference), float("inf"), -1.0, None, False,
                                [f"output sizes differ: artifact {o.size}, reference {r.size}"])
        if not np.isfinite(o).all():  # NaN compares false with everything: it would slip past max()/min()
            return ParityResult(len(reference), float("inf"), -1.0, None, False, ["outputs are not finite"])
        max_err = max(max_err, float(np.max(np.abs(r - o))) if r.size else 0.0)
        worst_cos = min(worst_cos, _cosine(r, o))
        if class_scores and ref[0].shape[-1] > 1:
            agree.append(int(np.argmax(ref[0].reshape(-1, ref[0].shape[-1])[0])) ==
                         int(np.argmax(out[0].reshape(-1, out[0].shape[-1])[0])))
    top1 = float(np.mean(agree)) if agree else None
    failures = _failures(max_err, worst_cos, top1, tol)
    return ParityResult(len(reference), max_err, worst_cos, top1, not failures, failures)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def _failures(err: float, cos: float, top1: float | None, tol: Tolerance) -> list[str]:
    out = []
    if tol.max_abs_err is not None and err > tol.max_abs_err:
        out.append(f"max_abs_err {err:.3g} > {tol.max_abs_err:g}")
    if tol.min_cosine is not None and cos < tol.min_cosine:
        out.append(f"cosine {cos:.5f} < {tol.min_cosine:g}")
    if tol.min_top1_agreement is not None and top1 is not None and top1 < tol.min_top1_agreement:
        out.append(f"top1_agreement {top1:.3f} < {tol.min_top1_agreement:g}")
    return out


def check_parity(runner: Runner, samples: Sequence[Inputs], reference: list[list[np.ndarray]],
                 tol: Tolerance, *, class_scores: bool = True) -> ParityResult:
    """Run the artifact on ``samples`` and compare with ``reference`` (PyTorch on the same samples)."""
    actual = [runner.run(to_numpy(s)) for s in samples]
    return compare(reference, actual, tol, class_scores=class_scores)


def runner_accuracy(runner: Runner, spec: ModelSpec) -> float | None:
    """Top-1 accuracy computed by the artifact's own runtime, or None without an eval set."""
    if spec.eval_set is None:
        return None
    return top1_accuracy(lambda x: runner.run(to_numpy(x)), spec.eval_set)
