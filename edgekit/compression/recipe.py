"""Run a recipe: apply its steps in order, check each against the accuracy budget, back off when over.

Each step works on a copy of the model as the previous steps left it. After the step (and its own
fine-tuning) the model is scored on the held-out set: in fp32, or, after ``mixed_precision`` and
``qat``, as the simulated int8 model those steps are about. A step over budget is retried weaker (a
smaller pruning ratio, a higher rank) up to ``backoff.max_tries`` times, then skipped; every attempt is
recorded. The teacher for ``distill`` is the model before the recipe.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from edgekit.compression import CompressedModel, fp32_accuracy
from edgekit.compression._measure import count_macs, count_nonzero, count_params, state_bytes
from edgekit.compression._train import (
    TrainData,
    TrainSettings,
    accuracy,
    mask_keeper,
    sparsity_masks,
    train,
    train_data_for,
)
from edgekit.compression.qat import QatPlan
from edgekit.config.recipe import Distill, LowRank, MixedPrecision, Prune, Qat, Recipe, TrainSpec
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
    evaluated_as: str
    seconds: float
    attempts: list[str] = field(default_factory=list)
    module: nn.Module | None = field(default=None, repr=False)
    fp32_layers: list[str] = field(default_factory=list)
    qat: QatPlan | None = field(default=None, repr=False)

    def row(self) -> dict[str, Any]:
        skip = {"module", "qat", "attempts", "fp32_layers"}
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}
        out["attempts"] = " | ".join(self.attempts)
        out["fp32_layers"] = ",".join(self.fp32_layers)
        return out


@dataclass
class _State:
    module: nn.Module
    fp32_layers: list[str]
    qat: QatPlan | None
    # Zeros left by unstructured / 2:4 pruning, by parameter name: later training keeps them zero.
    masks: dict[str, torch.Tensor] = field(default_factory=dict)

    def copy(self) -> "_State":
        return _State(copy.deepcopy(self.module), list(self.fp32_layers), self.qat, dict(self.masks))


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
    if recipe.budget is not None and val is None:
        raise CompressError(f"recipe {recipe.name!r} has an accuracy budget, and model {spec.name!r} has no "
                            "held-out set; pass val_data=EvalSet(...) or drop the budget")
    teacher = spec.module
    baseline = accuracy(teacher, val) if val is not None else None
    history = [_record(0, "reference", "fp32 model", "reference", spec.origin, _State(teacher, [], None), cm,
                       baseline, baseline, "fp32", 0.0)]
    state = _State(copy.deepcopy(teacher), [], None)
    for group in _groups(recipe, cm):
        if on_event:
            on_event(", ".join(f"step {i}/{len(recipe.steps)}: {step.label()}" for i, step in group))
        state, records = _run_group(group, state, history[-1], cm, recipe, teacher, train_data, val, baseline)
        history += records
    out_spec = dataclasses.replace(spec, module=state.module.eval(), name=f"{spec.name}-{recipe.name}",
                                   origin=f"{spec.origin}; compressed by recipe {recipe.name!r}: {recipe.label()}")
    applied = [f"step {r.step} {r.label}: {r.status}; {r.detail}" for r in history[1:]]
    return dataclasses.replace(
        cm, spec=out_spec, reference_accuracy=fp32_accuracy(out_spec),
        steps=[*cm.steps, *applied], fp32_layers=list(state.fp32_layers), qat=state.qat, history=history,
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
    group: list[tuple[int, Any]], state: _State, before: StepRecord, cm: CompressedModel, recipe: Recipe,
    teacher: nn.Module, train_data: TrainData | None, val: EvalSet | None, baseline: float | None,
) -> tuple[_State, list[StepRecord]]:
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
            detail, scored, evaluated_as = _apply(step, candidate, cm, teacher, train_data, recipe.train_threads)
            acc = accuracy(scored, val) if val is not None else None
            records.append(_record(index, original.method, step.label(), "", detail, candidate, cm, acc, baseline,
                                   evaluated_as, time.perf_counter() - t0))
        drop = records[-1].accuracy_drop_pts
        ok = recipe.budget is None or drop is None or drop <= recipe.budget.max_accuracy_drop
        attempts.append(f"{' -> '.join(s.label() for s in current)}: accuracy {_pct(records[-1].accuracy)}, "
                        f"drop {_pts(drop)}{'' if ok else f' > budget {recipe.budget.max_accuracy_drop:g}'}")  # type: ignore[union-attr]
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
    return state, [_record(index, step.method, step.label(), "skipped", reason, state, cm, before.accuracy, baseline,
                           before.evaluated_as, time.perf_counter() - start, attempts) for index, step in group]


def _apply(
    step: Any, st: _State, cm: CompressedModel, teacher: nn.Module, train_data: TrainData | None,
    threads: int | None,
) -> tuple[str, Any, str]:
    """Apply one step to ``st`` in place; return (detail, what to score, how it is scored)."""
    spec = cm.spec

    def settings(t: TrainSpec) -> TrainSettings:
        return TrainSettings(epochs=t.epochs, lr=t.lr, batch_size=t.batch_size, seed=t.seed, threads=threads)

    def fit(module: nn.Module, t: TrainSpec, what: str) -> None:
        train(module, train_data_for(spec, train_data, what), settings(t), desc=what,
              after_step=mask_keeper(module, st.masks))

    if isinstance(step, Prune):
        from edgekit.compression.prune import prune

        granularity = step.granularity
        ratio = 0.5 if granularity == "2:4" else step.ratio

        def finetune(module: nn.Module, round_index: int) -> None:
            if step.finetune.epochs:
                fit(module, step.finetune, f"prune round {round_index + 1} fine-tune")

        report = prune(st.module, spec.example_inputs, granularity=granularity, ratio=ratio,  # type: ignore[arg-type]
                       importance=step.importance, iterations=step.iterations, finetune=finetune,
                       ignore=step.ignore, round_to=step.round_to)
        if granularity != "channel":
            st.masks.update(sparsity_masks(st.module))
        return report.summary(), _scored(st, cm), _evaluated_as(st)
    if isinstance(step, Distill):
        from edgekit.compression.distill import distill

        if step.student is not None:
            st.module = _student(step.student, spec)
        data = train_data_for(spec, train_data, "distill")
        report = distill(st.module, teacher, data, settings(step.train), temperature=step.temperature,
                         alpha=step.alpha, features=step.features, beta=step.beta,
                         after_step=mask_keeper(st.module, st.masks))
        return report.summary(), _scored(st, cm), _evaluated_as(st)
    if isinstance(step, LowRank):
        from edgekit.compression.lowrank import factorize

        report = factorize(st.module, energy=step.energy, param_ratio=step.param_ratio, layers=step.layers)
        st.masks = {}  # factorized layers are new tensors: the old zeros mean nothing there
        if step.finetune.epochs:
            fit(st.module, step.finetune, "lowrank fine-tune")
        return report.summary(), _scored(st, cm), _evaluated_as(st)
    if isinstance(step, MixedPrecision):
        from edgekit.compression.sensitivity import keep_fp32, layer_sensitivity

        variant = _variant(cm, st)
        if spec.eval_set is not None:  # accuracy drops are measured against this step's own fp32 model
            variant.reference_accuracy = accuracy(st.module, spec.eval_set)
        if isinstance(step.keep_fp32, int):
            table = layer_sensitivity(variant, metric=step.metric)
            kept = keep_fp32(variant, n=step.keep_fp32, sensitivity=table)
        else:
            kept = keep_fp32(variant, layers=step.keep_fp32)
        st.fp32_layers = list(kept.fp32_layers)
        return f"fp32 layers: {', '.join(st.fp32_layers) or 'none'}", _int8(st, cm), _evaluated_as(st, int8=True)
    if isinstance(step, Qat):
        st.qat = QatPlan(settings(step.train), train_data_for(spec, train_data, "qat"), masks=dict(st.masks))
        return (f"QAT {step.train.epochs} epoch(s) at lr {step.train.lr:g}; int8 artifacts fine-tune with their "
                "target's quantizer", _int8(st, cm), _evaluated_as(st))
    raise CompressError(f"recipe: unknown step {step!r}")


def _with_profile_defaults(step: Any, cm: CompressedModel) -> Any:
    """A prune step without a granularity takes the profile's: the hardware decides what kind pays."""
    if not isinstance(step, Prune) or step.granularity is not None:
        return step
    granularity = cm.profile.pruning.granularity
    if granularity == "none":
        raise CompressError(f"prune: profile {cm.profile.name!r} sets pruning.granularity: none; set granularity "
                            "in the step (unstructured, channel or 2:4)")
    return step.model_copy(update={"granularity": granularity, "ratio": 0.5 if granularity == "2:4" else step.ratio})


def _student(student: Any, spec: Any) -> nn.Module:
    if isinstance(student, nn.Module):
        return copy.deepcopy(student)
    from edgekit.models import load_model

    return load_model(str(student), example_inputs=spec.example_inputs).module


def _variant(cm: CompressedModel, st: _State) -> CompressedModel:
    spec = dataclasses.replace(cm.spec, module=st.module.eval())
    return dataclasses.replace(cm, spec=spec, fp32_layers=list(st.fp32_layers), qat=st.qat, steps=list(cm.steps),
                               reference_accuracy=None, _reference=None)


def _scored(st: _State, cm: CompressedModel) -> Any:
    """What a step's accuracy is taken on: the int8 model once a step made int8 the point, else fp32."""
    return _int8(st, cm) if (st.qat is not None or st.fp32_layers) else st.module


def _int8(st: _State, cm: CompressedModel) -> torch.fx.GraphModule:
    """The XNNPACK int8 model as PyTorch simulates it: QAT when planned, else PTQ with calibration."""
    from edgekit.config.target import load_target
    from edgekit.exporters import get_exporter
    from edgekit.exporters._pt2e import quantize_pt2e

    variant = _variant(cm, st)
    quantizer = get_exporter("executorch")._quantizer(variant, load_target("executorch"))  # type: ignore[attr-defined]
    gm = quantize_pt2e(variant, quantizer)
    from torchao.quantization.pt2e import allow_exported_model_train_eval

    allow_exported_model_train_eval(gm)
    return gm


def _evaluated_as(st: _State, int8: bool = False) -> str:
    if st.qat is not None:
        return "int8 QAT (XNNPACK, simulated)"
    if st.fp32_layers or int8:
        return "int8 PTQ (XNNPACK, simulated)"
    return "fp32"


def _record(
    index: int, method: str, label: str, status: str, detail: str, st: _State, cm: CompressedModel,
    acc: float | None, baseline: float | None, evaluated_as: str, seconds: float, attempts: list[str] | None = None,
) -> StepRecord:
    module = st.module
    return StepRecord(
        step=index, method=method, label=label, status=status, detail=detail, params=count_params(module),
        nonzero_params=count_nonzero(module), macs=count_macs(module, cm.spec.example_inputs),
        fp32_bytes=state_bytes(module), accuracy=acc, accuracy_drop_pts=_drop(baseline, acc),
        evaluated_as=evaluated_as, seconds=round(seconds, 2), attempts=attempts or [],
        module=copy.deepcopy(module).eval(), fp32_layers=list(st.fp32_layers), qat=st.qat,
    )


def _drop(baseline: float | None, acc: float | None) -> float | None:
    if baseline is None or acc is None:
        return None
    return round(100.0 * (baseline - acc), 3)


def _pct(acc: float | None) -> str:
    return "n/a" if acc is None else f"{100.0 * acc:.2f}%"


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
        out.append((record, dataclasses.replace(cm, spec=spec, fp32_layers=list(record.fp32_layers), qat=record.qat,
                                                reference_accuracy=fp32_accuracy(spec), _reference=None)))
    return out
