"""Run a recipe: apply its steps in order, check each against the accuracy budget, back off when over.

Each step works on a copy of the model as the previous steps left it. After the step (and its own
fine-tuning) the model is scored on the held-out set: in fp32, or, after ``mixed_precision`` and
``qat``, as the simulated int8 model those steps are about. A step over budget is retried weaker (a
smaller pruning ratio, a higher rank) up to ``backoff.max_tries`` times, then skipped; every attempt is
recorded. The teacher for ``distill`` is the model before the recipe.

Steps are dispatched by config type to the handler each step's module registers (``compression._steps``);
importing those modules here registers them before the first dispatch.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

# Each step's module registers its handler on import (qat.py's through the QatPlan import below).
import edgekit.compression.distill  # noqa: F401
import edgekit.compression.lowrank  # noqa: F401
import edgekit.compression.prune  # noqa: F401
import edgekit.compression.sensitivity  # noqa: F401
from edgekit.compression._measure import count_macs, count_nonzero, count_params, state_bytes
from edgekit.compression._steps import StepContext, StepState, apply_step
from edgekit.compression._train import TrainData
from edgekit.compression.model import CompressedModel, accuracy, flat_outputs, fp32_accuracy, reference_outputs
from edgekit.compression.qat import QatPlan
from edgekit.compression.sensitivity import worst_cosine
from edgekit.config.recipe import Prune, Recipe
from edgekit.errors import CompressError
from edgekit.models import EvalSet

Event = Callable[[str], None] | None


@dataclass
class StepRecord:
    """One row of the recipe's report; ``module`` is the model after this step (for per-step export)."""

    step: int
    method: str
    label: str
    status: str  # reference | applied | backed off | skipped
    detail: str
    params: int
    nonzero_params: int
    macs: int
    fp32_bytes: int
    accuracy: float | None
    accuracy_drop_pts: float | None
    cosine: float | None  # fidelity: worst held-out sample's cosine vs the fp32 model before the recipe
    evaluated_as: str
    seconds: float
    attempts: list[str] = field(default_factory=list)
    module: nn.Module | None = field(default=None, repr=False)
    fp32_layers: list[str] = field(default_factory=list)
    qat: QatPlan | None = field(default=None, repr=False)
    int8_layers: list[str] = field(default_factory=list)
    precision: str = "int8"

    def row(self) -> dict[str, Any]:
        skip = {"module", "qat", "attempts", "fp32_layers", "int8_layers"}
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}
        out["attempts"] = " | ".join(self.attempts)
        out["fp32_layers"] = ",".join(self.fp32_layers)
        out["int8_layers"] = ",".join(self.int8_layers)
        return out


class _Judge:
    """Scores a step's model against the budget: top-1 on the labelled held-out set (when there is one) and
    fidelity, the worst held-out sample's cosine vs the fp32 model before the recipe."""

    def __init__(self, recipe: Recipe, cm: CompressedModel, teacher: nn.Module, val: EvalSet | None) -> None:
        self.budget = recipe.budget
        self.val = val
        self.inputs = val.inputs[:64] if val is not None else cm.parity_inputs()
        self.reference = reference_outputs(dataclasses.replace(cm.spec, module=teacher), self.inputs)
        self.baseline = accuracy(teacher, val) if val is not None else None

    def score(self, scored: Any) -> tuple[float | None, float]:
        acc = accuracy(scored, self.val) if self.val is not None else None
        with torch.no_grad():
            outputs = [flat_outputs(scored(*s)) for s in self.inputs]
        return acc, worst_cosine(self.reference, outputs)

    def ok(self, drop: float | None, cosine: float | None) -> bool:
        b = self.budget
        if b is None:
            return True
        if b.max_accuracy_drop is not None and drop is not None and drop > b.max_accuracy_drop:
            return False
        return not (b.min_cosine is not None and cosine is not None and cosine < b.min_cosine)

    def fits(self, scored: Any) -> bool:
        acc, cosine = self.score(scored)
        return self.ok(_drop(self.baseline, acc), cosine)

    def verdict(self, drop: float | None, cosine: float | None) -> str:
        b = self.budget
        if b is None or self.ok(drop, cosine):
            return ""
        parts = []
        if b.max_accuracy_drop is not None and drop is not None and drop > b.max_accuracy_drop:
            parts.append(f"drop > budget {b.max_accuracy_drop:g}")
        if b.min_cosine is not None and cosine is not None and cosine < b.min_cosine:
            parts.append(f"cosine < budget {b.min_cosine:g}")
        return " " + ", ".join(parts)


def run_recipe(
    cm: CompressedModel,
    recipe: Recipe,
    *,
    train_data: TrainData | None = None,
    val_data: EvalSet | None = None,
    on_event: Event = None,
) -> CompressedModel:
    """``cm`` compressed by ``recipe``: a new CompressedModel whose ``history`` holds a record per step."""
    spec = cm.spec
    val = val_data or spec.eval_set
    if recipe.budget is not None and recipe.budget.max_accuracy_drop is not None and val is None:
        raise CompressError(f"recipe {recipe.name!r} has an accuracy budget, and model {spec.name!r} has no "
                            "labelled held-out set; pass val_data=EvalSet(...), or budget on fidelity instead "
                            "(budget: {min_cosine: 0.99})")
    teacher = spec.module
    judge = _Judge(recipe, cm, teacher, val)
    baseline = judge.baseline
    history = [_record(0, "reference", "fp32 model", "reference", spec.origin, StepState(teacher, [], None), cm,
                       baseline, baseline, "fp32", 0.0, cosine=1.0)]
    state = StepState(copy.deepcopy(teacher), [], None)
    for group in _groups(recipe, cm):
        if on_event:
            on_event(", ".join(f"step {i}/{len(recipe.steps)}: {step.label()}" for i, step in group))
        state, records = _run_group(group, state, history[-1], cm, recipe, teacher, train_data, judge)
        history += records
    out_spec = dataclasses.replace(spec, module=state.module.eval(), name=f"{spec.name}-{recipe.name}",
                                   origin=f"{spec.origin}; compressed by recipe {recipe.name!r}: {recipe.label()}")
    applied = [f"step {r.step} {r.label}: {r.status}; {r.detail}" for r in history[1:]]
    return dataclasses.replace(
        cm, spec=out_spec, reference_accuracy=fp32_accuracy(out_spec),
        steps=[*cm.steps, *applied], fp32_layers=list(state.fp32_layers), int8_layers=list(state.int8_layers),
        qat=state.qat, history=history,
        baseline_accuracy=baseline, _reference=None,
    )


def _groups(recipe: Recipe, cm: CompressedModel) -> list[list[tuple[int, Any]]]:
    """Steps judged together: each step with ``check_budget: false`` joins the next one's group."""
    groups: list[list[tuple[int, Any]]] = [[]]
    for index, step in enumerate(recipe.steps, start=1):
        groups[-1].append((index, _with_profile_defaults(step, cm)))
        if step.check_budget:
            groups.append([])
    return [g for g in groups if g]


def _run_group(
    group: list[tuple[int, Any]], state: StepState, before: StepRecord, cm: CompressedModel, recipe: Recipe,
    teacher: nn.Module, train_data: TrainData | None, judge: _Judge,
) -> tuple[StepState, list[StepRecord]]:
    """Apply the group's steps on a copy; judge the result; over budget, retry with every step that can be
    made weaker made weaker, up to ``backoff.max_tries`` times, else keep the model as it was."""
    start = time.perf_counter()
    attempts: list[str] = []
    current = [step for _, step in group]
    for tries in range(recipe.backoff.max_tries + 1):
        candidate = state.copy()
        records = []
        for (index, original), step in zip(group, current):
            t0 = time.perf_counter()
            ctx = StepContext(candidate, cm, teacher, train_data, recipe.train_threads,
                              fits=judge.fits if recipe.budget is not None else None)
            detail, scored, evaluated_as = apply_step(step, ctx)
            acc, fidelity = judge.score(scored)
            records.append(_record(index, original.method, step.label(), "", detail, candidate, cm, acc,
                                   judge.baseline, evaluated_as, time.perf_counter() - t0, cosine=fidelity))
        drop, cosine = records[-1].accuracy_drop_pts, records[-1].cosine
        ok = judge.ok(drop, cosine)
        attempts.append(f"{' -> '.join(s.label() for s in current)}: accuracy {_pct(records[-1].accuracy)}, "
                        f"drop {_pts(drop)}, cosine {_cos(cosine)}{judge.verdict(drop, cosine)}")
        if ok:
            for r in records:
                r.status, r.attempts = ("applied" if tries == 0 else "backed off"), list(attempts)
            return candidate, records
        weaker = [s.weaker(recipe.backoff.factor) for s in current]
        if all(w is None for w in weaker):
            break
        current = [w if w is not None else s for w, s in zip(weaker, current)]
    # Over budget however weak: the model stays as it was before this group, and so do its figures.
    reason = f"over budget after {len(attempts)} attempt(s); the model stays as before this step"
    return state, [_record(index, step.method, step.label(), "skipped", reason, state, cm, before.accuracy,
                           judge.baseline, before.evaluated_as, time.perf_counter() - start, attempts,
                           cosine=before.cosine) for index, step in group]


def _with_profile_defaults(step: Any, cm: CompressedModel) -> Any:
    """A prune step without a granularity takes the profile's: the hardware decides what kind pays."""
    if not isinstance(step, Prune) or step.granularity is not None:
        return step
    granularity = cm.profile.pruning.granularity
    if granularity == "none":
        raise CompressError(f"prune: profile {cm.profile.name!r} sets pruning.granularity: none; set granularity "
                            "in the step (unstructured, channel or 2:4)")
    return step.model_copy(update={"granularity": granularity, "ratio": 0.5 if granularity == "2:4" else step.ratio})


def _record(
    index: int, method: str, label: str, status: str, detail: str, st: StepState, cm: CompressedModel,
    acc: float | None, baseline: float | None, evaluated_as: str, seconds: float, attempts: list[str] | None = None,
    *, cosine: float | None = None,
) -> StepRecord:
    module = st.module
    return StepRecord(
        step=index, method=method, label=label, status=status, detail=detail, params=count_params(module),
        nonzero_params=count_nonzero(module), macs=count_macs(module, cm.spec.example_inputs),
        fp32_bytes=state_bytes(module), accuracy=acc, accuracy_drop_pts=_drop(baseline, acc), cosine=cosine,
        evaluated_as=evaluated_as, seconds=round(seconds, 2), attempts=attempts or [],
        module=copy.deepcopy(module).eval(), fp32_layers=list(st.fp32_layers), qat=st.qat,
        int8_layers=list(st.int8_layers), precision=st.precision,
    )


def _drop(baseline: float | None, acc: float | None) -> float | None:
    if baseline is None or acc is None:
        return None
    return round(100.0 * (baseline - acc), 3)


def _pct(acc: float | None) -> str:
    return "n/a" if acc is None else f"{100.0 * acc:.2f}%"


def _cos(cosine: float | None) -> str:
    return "n/a" if cosine is None else f"{cosine:.4f}"


def _pts(drop: float | None) -> str:
    return "n/a" if drop is None else f"{drop:+.2f} pts"


def step_models(cm: CompressedModel) -> list[tuple[StepRecord, CompressedModel]]:
    """A CompressedModel per recorded step (skipped ones excluded), named ``<model>-step<k>``, ready to
    export: the model as it was after that step, with that step's fp32 layers and QAT plan."""
    out = []
    for record in cm.history:
        if record.module is None or record.status == "skipped":
            continue
        spec = dataclasses.replace(cm.spec, module=record.module, name=f"{cm.spec.name}-step{record.step}")
        out.append((record, dataclasses.replace(cm, spec=spec, fp32_layers=list(record.fp32_layers),
                                                int8_layers=list(record.int8_layers), qat=record.qat,
                                                reference_accuracy=fp32_accuracy(spec), _reference=None)))
    return out
