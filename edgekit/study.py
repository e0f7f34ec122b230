"""``search``: the Pareto front of targets x precisions x pruning x threads, measured on the user's device.

How a search goes:

- **The engine is Optuna** (multi-objective TPE), its study kept in SQLite in the run's folder
  (``study.db``), so ``resume=RUN_ID`` continues an interrupted search without repeating a finished trial.
  The sampler is re-seeded before every trial from the seed and the number of finished trials, so a
  resumed search asks what the uninterrupted one would have asked.
- **A trial** picks a target, a precision, a channel-pruning ratio (fine-tuned) and a thread count. A
  combination the space cannot build (a precision the target does not offer, pruning a transformer) is
  skipped with its reason and never measured. The artifact is built through the build cache.
- **Device time only where it can pay**: a trial is first judged on the host, at no device cost: a failed
  build or parity check, or a host-side constraint missed (``accuracy_drop``, ``cosine``, ``size_mb``), ends
  it there. An artifact already measured with the same thread count is not measured again. ``device_budget``
  bounds the measurements.
- **The front is confirmed**: its members are measured a second time at the end, and the front and the
  pick are taken from those figures, so a lucky draw does not make the front.
- Every trial is a ``trial`` record in the run's journal and every measurement a row, as for ``bench``.
  A device lost mid-search ends the search with what was measured (``stopped``); resume it later.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import pandas as pd

from edgekit._version import __version__
from edgekit.config.bench import BenchConfig
from edgekit.config.device import LocalDevice, SshDevice, device_profile, get_device
from edgekit.config.search import (
    Constraint,
    Objective,
    SearchSpace,
    load_space,
    parse_constraint,
    parse_objective,
)
from edgekit.config.target import load_target
from edgekit.errors import AgentError, ConfigError, DeviceError, UnknownNameError
from edgekit.results.rows import finite as _num
from edgekit.results.store import Run, now_iso

if TYPE_CHECKING:
    from edgekit.exporters.base import Artifact

ProgressFn = Callable[[str], None]
DEFAULT_OBJECTIVES = ("latency_p50", "accuracy")
DEFAULT_TRIALS = 20
_PARAMS = ("target", "precision", "prune", "lowrank", "keep_fp32", "distill", "qat", "threads")
_RECIPE = ("prune", "lowrank", "keep_fp32", "distill", "qat")  # what makes a variant of the model
_FIELD = {"target": "targets", "precision": "precisions"}  # trial parameter -> SearchSpace field


@dataclass
class SearchResult:
    """The search's outcome: ``front`` (a row per Pareto member, confirmed), ``pick`` (the member chosen
    under the constraints, or None) and why, every ``trials`` record, and ``closest`` (when nothing met the
    constraints: the trials nearest to them, with by how much each misses)."""

    front: pd.DataFrame
    pick: pd.Series | None
    pick_reason: str
    trials: pd.DataFrame
    closest: pd.DataFrame
    run_id: str
    run_dir: Path
    stopped: str | None = None  # why the search ended early (a device lost), None when it ran its course
    measurements: int = 0  # device measurements the run holds (confirmations and a resumed run's included)


def search(
    model: Any,
    device: str | LocalDevice | SshDevice = "local",
    *,
    objectives: Sequence[str] = DEFAULT_OBJECTIVES,
    constraints: Sequence[str] = (),
    trials: int | None = None,
    seed: int = 0,
    space: "str | Path | dict[str, Any] | SearchSpace | None" = None,
    profile: Any = None,
    train_data: Any = None,
    config: BenchConfig | None = None,
    device_budget: int | None = None,
    confirm: bool = True,
    results: str | Path | None = None,
    resume: str | None = None,
    devices_file: str | Path | None = None,
    confirm_on: Sequence[str] = (),
    mlflow: str | None = None,
    cluster: str | None = None,
    on_progress: ProgressFn | None = None,
) -> SearchResult:
    """Search ``model``'s builds for the Pareto front of ``objectives`` on ``device``; see the module doc.

    ``confirm_on``: more devices each front member is measured on at the end (their figures join the
    front as ``<column>@<device>``; the front itself is the search device's). ``mlflow``: a tracking URI
    the run's rows are logged to, as for ``bench``. ``cluster``: a Ray cluster's address (``edgekit.cluster``):
    each trial's export runs there as a task (its compression stays here) and every measurement goes through
    the device's leasing actor, so a search and fleet runs on one cluster never share a device at once."""
    say = on_progress or (lambda msg: None)
    if resume:
        run = Run.open(resume, results)
        stored = run.meta.get("search") or {}
        if not stored:
            raise ConfigError(f"run {resume} is not a search run (no 'search' in its meta)", field="resume")
        model = model if model is not None else _stored_model(stored, resume)
        device, objectives, constraints = stored["device"], stored["objectives"], stored["constraints"]
        trials, seed, space = trials or stored["trials"], stored["seed"], SearchSpace(**stored["space"])
        profile = profile or stored.get("profile")
        config = config or BenchConfig(**stored["config"])
        device_budget = device_budget if device_budget is not None else stored.get("device_budget")
        cluster = cluster or stored.get("cluster")
    if model is None:
        raise ConfigError("no model given", field="model")
    trials = DEFAULT_TRIALS if trials is None else trials
    objs = [parse_objective(o) for o in objectives]
    if not objs:
        raise ConfigError("give at least one objective", field="objectives")
    cons = [parse_constraint(c) for c in constraints]
    if trials < 1:
        raise ConfigError(f"trials must be >= 1, got {trials}", field="trials")
    dev = get_device(device, devices_file)
    prof = device_profile(dev, profile)
    cfg = config or BenchConfig(min_seconds=0.5)
    from edgekit.models import load_model, model_family

    spec = load_model(model)
    family = model_family(spec.module)
    sp = load_space(space).resolved(prof, family)
    for t in sp.targets or []:
        load_target(t)  # an unknown target fails now, listing the valid ones
    record = {"model": _as_given(model), "model_is_object": not isinstance(model, (str, Path)), "device": dev.name,
              "objectives": [str(o) for o in objs], "constraints": [str(c) for c in cons], "trials": trials,
              "seed": seed, "space": sp.model_dump(), "profile": prof.name, "config": dataclasses.asdict(cfg),
              "device_budget": device_budget, "cluster": cluster}
    if resume:
        run.update_meta(status="running", resumed=[*run.meta.get("resumed", []), now_iso()],
                        search={**run.meta["search"], "trials": trials})
    else:
        run = Run.create(results, {"kind": "search", "model": record["model"], "edgekit_version": __version__,
                                   "search": record})
    extra = [get_device(d, devices_file) for d in confirm_on]  # unknown names fail before any work
    from edgekit.cluster import connect

    engine = _Search(run, spec, dev, prof, sp, objs, cons, cfg, train_data, say, devices_file,
                     connect(cluster) if cluster else None)
    result = engine.go(trials, seed, device_budget, confirm, extra)
    if mlflow:
        from edgekit.results.mlflow_log import log_run

        log_run(run, run.rows(), mlflow)
    return result


# ---- the engine ----------------------------------------------------------------------------------------


@dataclass
class _Trial:
    number: int
    params: dict[str, Any]
    status: str = "running"  # measured | reused | skipped | rejected | failed
    reason: str = ""
    row: dict[str, Any] = field(default_factory=dict)


class _Search:
    def __init__(self, run: Run, spec: Any, dev: Any, prof: Any, space: SearchSpace, objs: list[Objective],
                 cons: list[Constraint], cfg: BenchConfig, train_data: Any, say: ProgressFn,
                 devices_file: str | Path | None, cluster: Any = None) -> None:
        self.run, self.spec, self.dev, self.prof, self.space = run, spec, dev, prof, space
        self.cluster = cluster
        self.objs, self.cons, self.cfg, self.train_data, self.say = objs, cons, cfg, train_data, say
        self.devices_file = devices_file
        self.variants: dict[tuple[Any, ...], Any] = {}  # (prune, lowrank, ...) -> CompressedModel, once per process
        self.measured: dict[tuple[str, int], dict[str, Any]] = {}  # (artifact sha, threads) -> row
        self.measurements = sum(1 for _ in run.records("row"))  # the run's, a resumed one's included
        for rec in run.records("trial"):  # a resumed search: what was measured is not measured again
            if rec.get("status") == "measured" and rec.get("artifact_sha256"):
                self.measured[(rec["artifact_sha256"], rec["params"]["threads"])] = rec["row"]

    # -- the loop --

    def go(self, trials: int, seed: int, device_budget: int | None, confirm: bool,
           confirm_on: Sequence[Any] = ()) -> SearchResult:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(
            study_name="search", storage=f"sqlite:///{self.run.root / 'study.db'}", load_if_exists=True,
            directions=["minimize" if o.direction == "min" else "maximize" for o in self.objs])
        for t in study.get_trials(deepcopy=False):  # killed mid-trial: it never finished, ask it again
            if t.state == optuna.trial.TrialState.RUNNING:
                study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        stopped = None
        combos = self._combos()
        repeats = 0
        while True:
            finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()
                        and t.state != optuna.trial.TrialState.FAIL]
            tried = {_key(t.params) for t in finished if not t.user_attrs.get("repeat")}
            if len(tried) >= trials:
                break
            if combos and tried >= combos:
                self.say(f"every one of the {len(combos)} combinations was tried")
                break
            if device_budget is not None and self.measurements >= device_budget:
                self.say(f"device budget of {device_budget} measurements spent")
                break
            # Re-seeded from the history's length: a resumed search asks what an uninterrupted one would.
            study.sampler = optuna.samplers.TPESampler(seed=seed * 100_003 + len(finished), multivariate=True,
                                                      n_startup_trials=min(8, max(3, trials // 3)))
            trial = study.ask()
            params = {name: trial.suggest_categorical(name, self._choices(name)) for name in _PARAMS}
            if _key(params) in tried:  # the sampler came back to a combination already judged: not a trial
                trial.set_user_attr("repeat", True)
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                repeats += 1
                if repeats >= 30:
                    self.say("the sampler keeps proposing combinations already tried: stopping")
                    break
                continue
            repeats = 0
            current = _Trial(trial.number, params)
            try:
                self._evaluate(current)
            except (DeviceError, AgentError) as exc:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                stopped = f"device {self.dev.name!r} lost at trial {trial.number}: {exc}"
                self.say(stopped)
                break
            self._tell(study, trial, current)
        front = self._front()
        if confirm and not stopped and len(front):
            try:
                front = self._confirm(front)
            except (DeviceError, AgentError) as exc:
                stopped = f"device {self.dev.name!r} lost while confirming the front: {exc}"
        for other in confirm_on:
            if len(front) and not stopped:
                front = self._confirm_on(front, other)
        return self._result(front, stopped)

    def _choices(self, param: str) -> list[Any]:
        return list(getattr(self.space, _FIELD.get(param, param)) or [])

    def _combos(self) -> set[tuple[Any, ...]]:
        return set(itertools.product(*(self._choices(name) for name in _PARAMS)))

    def _tell(self, study: Any, trial: Any, t: _Trial) -> None:
        import optuna

        rec = {"number": t.number, "params": t.params, "status": t.status, "reason": t.reason,
               "row": t.row, "artifact_sha256": t.row.get("artifact_sha256")}
        self.run.append("trial", **rec)
        if t.status in ("measured", "reused"):
            values = [t.row.get(o.column) for o in self.objs]
            if any(v is None or (isinstance(v, float) and not np.isfinite(v)) for v in values):
                missing = [o.name for o, v in zip(self.objs, values) if v is None]
                self.run.append("trial", **{**rec, "status": "failed",
                                            "reason": f"no figure for objective(s) {', '.join(missing)}"})
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                return
            for c in self.cons:  # Optuna's own constraint API: > 0 is infeasible, and by how much
                trial.set_constraint(c.name, c.miss(_num(t.row.get(c.column))) or 0.0)
            study.tell(trial, [float(v) for v in values if v is not None])
        else:  # skipped or rejected on the host: no device figure to tell
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)

    # -- one trial --

    def _evaluate(self, t: _Trial) -> None:
        p = t.params
        why = self._invalid(p)
        if why:
            t.status, t.reason = "skipped", why
            self.say(f"trial {t.number} {_label(p)}: skipped: {why}")
            return
        self.say(f"trial {t.number} {_label(p)}: building")
        cm = self._variant(tuple(p[k] for k in _RECIPE))
        from edgekit.exporters import export

        out = self.run.root / "artifacts"
        built = self.cluster.export(cm, [p["target"]], [p["precision"]], out, on_event=self.say) if self.cluster else None
        (art,) = built[0] if built else export(cm, [p["target"]], out, precisions=[p["precision"]], jobs=1)
        art.model = _variant_name(self.spec.name, p)
        host = _host_row(art, self._base_accuracy(cm))
        t.row = {**host, **p, "trial": t.number}
        if not art.ok:
            t.status, t.reason = "rejected", art.error or "parity: " + "; ".join(art.parity.failures if art.parity else [])
            self.say(f"trial {t.number}: rejected on the host: {t.reason[:120]}")
            return
        for c in self.cons:
            if c.host and (c.miss(host.get(c.column)) or 0) > 0:
                t.status, t.reason = "rejected", f"{c} missed on the host ({c.name} = {host.get(c.column):.4g})"
                self.say(f"trial {t.number}: {t.reason}")
                return
        key = (host["artifact_sha256"], p["threads"])
        if key in self.measured:
            t.status, t.row = "reused", {**self.measured[key], **p, "trial": t.number}
            return
        self.say(f"trial {t.number} {_label(p)}: measuring on {self.dev.name}")
        row = self._measure(art, p["threads"], host)
        t.row = {**row, **p, "trial": t.number}
        if row.get("error"):
            t.status, t.reason = "rejected", f"measurement failed: {row['error']}"
            return
        t.status = "measured"
        self.measured[key] = t.row

    def _base_accuracy(self, cm: Any) -> float | None:
        """The unpruned fp32 model's accuracy, which ``accuracy_drop`` is measured from."""
        if cm is not None and cm.baseline_accuracy is not None:
            return float(cm.baseline_accuracy)
        base = self.variants.get((0.0, 0.0, 0, False, False))
        if base is None:
            from edgekit.compression.model import fp32_accuracy

            return fp32_accuracy(self.spec)
        return base.reference_accuracy

    def _invalid(self, p: dict[str, Any]) -> str:
        target = load_target(p["target"])
        if p["precision"] not in target.precisions:
            return f"target {target.name} offers {', '.join(target.precisions)}, not {p['precision']}"
        from edgekit.models import model_family

        family = model_family(self.spec.module)
        trains = p["prune"] > 0 or p["lowrank"] > 0 or p["distill"] or p["qat"]
        if (p["prune"] > 0 or p["lowrank"] > 0 or p["distill"]) and family != "cnn":
            return f"pruning, low-rank and distillation are searched for CNNs only (this model is a {family})"
        if trains and self.train_data is None and self.spec.train_set is None:
            return "this combination trains, and the model brings no training data (pass train_data=)"
        if p["precision"] == "int4" and family != "transformer":
            return "int4 quantizes Linear layers (transformers); this model is a cnn"
        if p["distill"] and not (p["prune"] > 0 or p["lowrank"] > 0):
            return "distillation needs a smaller student: prune or lowrank > 0"
        if (p["qat"] or p["keep_fp32"]) and p["precision"] != "int8":
            return f"QAT and mixed precision change int8 artifacts only, not {p['precision']}"
        if p["qat"] and p["keep_fp32"]:
            return "QAT with layers kept fp32 is not searched: QAT trains every quantized layer"
        return ""

    def _variant(self, key: tuple[Any, ...]) -> Any:
        """The compressed model for (prune, lowrank, keep_fp32, distill, qat): a recipe built from them, run
        once per process (its steps in the order the built-in recipes use)."""
        if key not in self.variants:
            from edgekit.compression import compress
            from edgekit.config.recipe import Distill, LowRank, MixedPrecision, Prune, Qat, Recipe, TrainSpec

            prune, lowrank, keep_fp32, distill, qat = key
            epochs = TrainSpec(epochs=self.space.finetune_epochs)
            steps: list[Any] = []
            if prune:
                steps.append(Prune(granularity="channel", ratio=prune, finetune=epochs))
            if lowrank:
                steps.append(LowRank(energy=lowrank, finetune=epochs))
            if distill:
                steps.append(Distill(train=epochs))
            if qat:
                steps.append(Qat(train=TrainSpec(epochs=max(1, self.space.finetune_epochs), lr=1e-4)))
            if keep_fp32:
                steps.append(MixedPrecision(keep_fp32=keep_fp32))
            spec = dataclasses.replace(self.spec, module=copy.deepcopy(self.spec.module))
            recipe = Recipe(name=_variant_name("variant", dict(zip(_RECIPE, key))), steps=steps) if steps else None
            self.say(f"compressing {self.spec.name}" + (f" ({', '.join(s.label() for s in steps)})" if steps else ""))
            self.variants[key] = compress(spec, self.prof, recipe=recipe, train_data=self.train_data)
        return self.variants[key]

    def _run_on(self, device: Any, art: "Artifact", threads: int, host: dict[str, Any]) -> dict[str, Any]:
        """``art`` measured on ``device`` at ``threads``: the artifact's host columns, then the device's."""
        from edgekit.device.measure import benchmark

        cfg = dataclasses.replace(self.cfg, threads=threads)
        if self.cluster is None:
            return {**host, **_plain(benchmark([art], device, cfg, devices_file=self.devices_file).iloc[0].to_dict())}
        import time

        from edgekit.results.rows import to_frame

        rows: list[dict[str, Any]] = []
        budget = cfg.run_timeout + cfg.lock_timeout + 120
        bundle = self.cluster.bundle([art], self.run.root / "artifacts")
        self.cluster.measure(get_device(device, self.devices_file), bundle, cfg, skip=(),
                             deadline=time.monotonic() + budget, on_row=rows.append, on_info=lambda i: None,
                             on_event=lambda m: None, stopped=lambda: False)
        return {**host, **_plain(to_frame(rows).iloc[0].to_dict())}

    def _measure(self, art: "Artifact", threads: int, host: dict[str, Any]) -> dict[str, Any]:
        """A measurement on the search's device, journalled; a lost device raises (the search stops)."""
        row = self._run_on(self.dev, art, threads, host)
        if row.get("error") and _device_lost(row["error"]):
            raise DeviceError(row["error"])
        self.measurements += 1
        self.run.append("row", row=row)
        return row

    # -- the front --

    def _rows(self) -> pd.DataFrame:
        measured = [{**r["row"], "trial": r["number"], "status": r["status"]}
                    for r in self.run.latest("trial", "number") if r["status"] in ("measured", "reused")]
        return pd.DataFrame(measured)

    def _front(self) -> pd.DataFrame:
        df = self._rows()
        if df.empty:
            return df
        return self._feasible_front(df.drop_duplicates(subset=["artifact_sha256", "threads"]))

    def _feasible_front(self, df: pd.DataFrame) -> pd.DataFrame:
        """The rows that meet every constraint and that no other row dominates on the objectives."""
        df = df.assign(feasible=[all(c.miss(_num(r.get(c.column))) == 0 for c in self.cons)
                                 for _, r in df.iterrows()])
        values = np.column_stack([_num_col(df, o.column) * (1 if o.direction == "min" else -1) for o in self.objs])
        return df[pareto_mask(values) & df["feasible"].to_numpy()].reset_index(drop=True)

    def _confirm(self, front: pd.DataFrame) -> pd.DataFrame:
        """Measure every front member again and keep the later figures; members that are no longer on the
        front after it are dropped."""
        confirmed = []
        for _, r in front.iterrows():
            self.say(f"confirming {_label(r.to_dict())}")
            art = _artifact_of(r)
            row = self._measure(art, int(r["threads"]), _host_row(art, self._base_accuracy(None)))
            confirmed.append({**r.to_dict(), **{k: v for k, v in row.items() if k.startswith(("latency_", "peak_rss",
                              "energy_", "iterations", "noisy"))}, "confirmed": True,
                              "first_latency_ms_p50": r.get("latency_ms_p50")})
        return self._feasible_front(pd.DataFrame(confirmed))

    def _confirm_on(self, front: pd.DataFrame, other: Any) -> pd.DataFrame:
        """Each front member measured on ``other`` too: its figures as ``<column>@<device>`` columns (a
        device that fails gives its error there instead, and the search's own front stands)."""
        self.say(f"confirming the front on {other.name}")
        out = front.copy()
        for i, (_, r) in enumerate(front.iterrows()):
            art = _artifact_of(r)
            row = self._run_on(other, art, int(r["threads"]), _host_row(art, self._base_accuracy(None)))
            self.run.append("row", row=row)
            for col in ("latency_ms_p50", "latency_ms_p90", "peak_rss_mb", "energy_mj_per_inference", "error"):
                out.loc[out.index[i], f"{col}@{other.name}"] = row.get(col)
        return out

    def _result(self, front: pd.DataFrame, stopped: str | None) -> SearchResult:
        trials = self._trials()
        pick, reason, closest = None, "", pd.DataFrame()
        if len(front):
            first = self.objs[0]
            order = front.sort_values(first.column, ascending=first.direction == "min", kind="stable")
            pick = order.iloc[0]
            held = f" meeting {', '.join(str(c) for c in self.cons)}" if self.cons else ""
            reason = (f"best {first.name} ({_num(pick[first.column]):.4g}) among the {len(front)} front "
                      f"member(s){held}")
        else:
            closest = self._closest()
            reason = ("no measured trial meets " + ", ".join(str(c) for c in self.cons)) if self.cons else \
                "no trial was measured"
        self.run.append("front", rows=front.to_dict("records") if len(front) else [], pick=reason,
                        pick_trial=None if pick is None else int(pick["trial"]))
        self.run.finalize("stopped" if stopped else "complete", stopped=stopped)
        return SearchResult(front=front, pick=pick, pick_reason=reason, trials=trials, closest=closest,
                            run_id=self.run.id, run_dir=self.run.root, stopped=stopped,
                            measurements=self.measurements)

    def _trials(self) -> pd.DataFrame:
        rows = []
        for r in self.run.latest("trial", "number"):
            row = r.get("row") or {}
            rows.append({"trial": r["number"], **r["params"], "status": r["status"], "reason": r["reason"],
                         **{o.column: row.get(o.column) for o in self.objs},
                         **{c.column: row.get(c.column) for c in self.cons}})
        return pd.DataFrame(rows)

    def _closest(self) -> pd.DataFrame:
        """The trials nearest to meeting every constraint, with each constraint's miss."""
        df = self._rows()
        if df.empty or not self.cons:
            return pd.DataFrame()
        for c in self.cons:
            df[f"miss_{c.name}"] = [c.miss(_num(v)) for v in df.get(c.column, pd.Series([None] * len(df)))]
        misses = df[[f"miss_{c.name}" for c in self.cons]].astype(float)
        scale = misses.abs().max().replace(0, 1)
        df["miss_total"] = (misses / scale).sum(axis=1, skipna=False)
        keep = ["trial", *_PARAMS, *[c.column for c in self.cons], *[f"miss_{c.name}" for c in self.cons]]
        return df.sort_values("miss_total").head(3)[[k for k in keep if k in df.columns]].reset_index(drop=True)


def front_artifact(run_id: str, pick: int | None = None, results: str | Path | None = None) -> "Artifact":
    """The artifact of a search's pick (or of front member ``pick``, by trial number), checked as it was
    built: its files must still hash as they did, so what ships is what was measured."""
    from edgekit._fs import sha256_file

    run = Run.open(run_id, results)
    fronts = list(run.records("front"))
    if not fronts or not fronts[-1]["rows"]:
        raise ConfigError(f"search {run_id} has no front (not finished, or nothing met its constraints); "
                          f"finish it with edgekit search --resume {run_id}", field="from_search")
    rows, chosen = fronts[-1]["rows"], pick if pick is not None else fronts[-1].get("pick_trial")
    match = [r for r in rows if r["trial"] == chosen] if chosen is not None else rows[:1]
    if not match:
        raise UnknownNameError("front member (trial number)", str(chosen), [str(r["trial"]) for r in rows])
    art = _artifact_of(pd.Series(match[0]))
    if art.path is None or not art.path.is_file() or sha256_file(art.path) != match[0]["artifact_sha256"]:
        raise ConfigError(f"the artifact of trial {match[0]['trial']} ({art.path}) is gone or changed since the "
                          "search measured it; run the search again", field="from_search")
    return art


# ---- helpers --------------------------------------------------------------------------------------------


def pareto_mask(values: np.ndarray) -> np.ndarray:
    """Rows not dominated by any other (every column minimized); a row with a NaN is never on the front."""
    n = len(values)
    valid = np.isfinite(values).all(axis=1) if n else np.zeros(0, dtype=bool)
    mask = valid.copy()
    for i in range(n):
        if not valid[i]:
            continue
        others = values[valid]
        dominated = np.any(np.all(others <= values[i], axis=1) & np.any(others < values[i], axis=1))
        mask[i] = not dominated
    return mask


def _host_row(art: "Artifact", base_accuracy: float | None) -> dict[str, Any]:
    """The artifact's columns as a row, with ``accuracy_drop`` in points below the *unpruned* fp32 model
    (a pruned variant's own fp32 accuracy would hide what pruning cost)."""
    from edgekit._fs import sha256_file
    from edgekit.results.rows import artifact_row

    row = artifact_row(art, "host")
    del row["device"]
    row["artifact_mb"] = art.bytes / 1e6 if art.bytes else None
    row["base_accuracy"] = base_accuracy
    row["accuracy_drop"] = (100 * (base_accuracy - art.accuracy)
                            if base_accuracy is not None and art.accuracy is not None else None)
    row["artifact_sha256"] = sha256_file(art.path) if art.path else None
    row["artifact_files"] = [str(f) for f in art.files]
    row["artifact_inputs"] = str(art.inputs) if art.inputs else None
    row["artifact_eval_set"] = str(art.eval_set) if art.eval_set else None
    row["artifact_record"] = json.loads(json.dumps(dataclasses.asdict(art), default=str))
    return row


def _artifact_of(row: pd.Series) -> "Artifact":
    from edgekit.results.store import artifact_from_record

    return artifact_from_record(row["artifact_record"])


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if isinstance(v, np.generic):
            v = v.item()
        elif isinstance(v, np.ndarray):
            v = v.tolist()
        out[k] = v
    return out


def _num_col(df: pd.DataFrame, col: str) -> np.ndarray:
    if col not in df.columns:
        return np.full(len(df), np.nan)
    return pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)


def _device_lost(error: str) -> bool:
    lowered = error.lower()
    return any(s in lowered for s in ("connection refused", "timed out", "no route", "connection lost",
                                      "could not connect", "unreachable", "connection reset"))


def _key(params: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(params.get(k) for k in _PARAMS)


def _label(p: dict[str, Any]) -> str:
    return f"{p['target']} {p['precision']}{_variant_name('', p)} x{p['threads']}"


def _variant_name(name: str, p: dict[str, Any]) -> str:
    """``name`` with what the variant changed, e.g. ``digits-cnn+prune0.5+kd+qat`` (rows key on it)."""
    parts = [f"prune{p['prune']:g}" if p.get("prune") else "", f"lowrank{p['lowrank']:g}" if p.get("lowrank") else "",
             f"fp32x{p['keep_fp32']}" if p.get("keep_fp32") else "", "kd" if p.get("distill") else "",
             "qat" if p.get("qat") else ""]
    return "+".join([name, *[x for x in parts if x]]) if any(parts) else name


def _as_given(model: Any) -> str:
    if isinstance(model, (str, Path)):
        return str(Path(model).resolve()) if Path(model).is_file() else str(model)
    return f"<{type(model).__name__} object>"


def _stored_model(stored: dict[str, Any], run_id: str) -> str:
    if stored.get("model_is_object"):
        raise ConfigError(f"search {run_id} searched a Python model object: pass the model again to resume it",
                          field="model")
    return str(stored["model"])


__all__ = ["SearchResult", "front_artifact", "pareto_mask", "search"]
