"""Benchmark: what each compression method buys, on real data, measured side by side in one run.

    .venv/bin/python scripts/bench/compression.py [--models digits-cnn,digits-cnn-wide] [--min-seconds 2]

For each model: the fp32 model and one variant per method (structured pruning + fine-tuning, structured
pruning + distillation, low-rank + fine-tuning, QAT), each exported to ExecuTorch int8 (XNNPACK) and
measured on the `local` device, one thread. Every variant is timed in two rounds (forward, then reverse
order) and the p50s averaged, so drift on a shared machine hits all of them alike. Prints a table of
params, MACs, artifact size, accuracy (host runtime) and latency, then checks the goals of issue 5:

- channel pruning at 50%: >= 1.6x lower latency than the unpruned int8 model, <= 1 point accuracy drop
  after fine-tuning or distillation;
- distillation beats training the same student from scratch on labels alone (same init, same steps), on
  the whole training set and on 10% of it (the teacher saw all of it: where distillation usually pays);
- QAT int8 accuracy >= PTQ int8 accuracy;
- low-rank at half the parameters loses <= 1 point after fine-tuning.
No budget is set on these recipes: the table shows what each method really costs.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time

import numpy as np
import pandas as pd
import torch

import edgekit
from edgekit import BenchConfig, Distill, LowRank, Prune, Qat, Recipe, TrainSpec
from edgekit.compression._measure import count_macs, count_params
from edgekit.compression._train import TrainSettings, train
from edgekit.compression.model import accuracy
from edgekit.compression.distill import distill
from edgekit.models import TrainSet, load_model

EPOCHS = 10  # distillation and the from-scratch student alike


def variants(threads: int) -> dict[str, Recipe | None]:
    prune = Prune(granularity="channel", ratio=0.5, iterations=2, finetune=TrainSpec(epochs=4))
    return {
        "fp32 model (PTQ int8)": None,
        "prune 50% + fine-tune": Recipe(name="prune-ft", train_threads=threads, steps=[prune]),
        "prune 50% + distill": Recipe(name="prune-kd", train_threads=threads, steps=[
            prune.model_copy(update={"finetune": TrainSpec(epochs=0)}), Distill(train=TrainSpec(epochs=EPOCHS))]),
        "low-rank 0.5 + fine-tune": Recipe(name="lowrank", train_threads=threads, steps=[
            LowRank(param_ratio=0.5, finetune=TrainSpec(epochs=6))]),
        "QAT int8": Recipe(name="qat", train_threads=threads, steps=[Qat(train=TrainSpec(epochs=2, lr=1e-4))]),
    }


def scratch_vs_distill(cm: edgekit.compression.CompressedModel, teacher: torch.nn.Module, seeds: int,
                       fraction: float) -> tuple[list[float], list[float]]:
    """The pruned architecture re-initialized, trained on labels alone vs distilled from ``teacher``, on the
    first ``fraction`` of the training set (same optimizer steps either way: EPOCHS / fraction epochs)."""
    spec = cm.spec
    n = max(2, int(len(spec.train_set) * fraction))
    data = TrainSet(inputs=tuple(t[:n] for t in spec.train_set.inputs), labels=spec.train_set.labels[:n])
    epochs = round(EPOCHS / fraction)
    scratch, kd = [], []
    for seed in range(seeds):
        torch.manual_seed(seed)
        student = copy.deepcopy(spec.module)
        for m in student.modules():
            if hasattr(m, "reset_parameters") and m is not student:
                m.reset_parameters()
        settings = TrainSettings(epochs=epochs, lr=1e-3, seed=seed, threads=1)
        a, b = copy.deepcopy(student), copy.deepcopy(student)
        train(a, data, settings, desc="scratch")
        distill(b, teacher, data, settings, temperature=4.0, alpha=0.7)
        scratch.append(accuracy(a, spec.eval_set))
        kd.append(accuracy(b, spec.eval_set))
    return scratch, kd


def measure(model: str, profile: str, min_seconds: float, seeds: int, out: str) -> None:
    spec = load_model(model)
    print(f"\n=== {model}: {spec.origin}")
    built: dict[str, edgekit.compression.CompressedModel] = {}
    for label, recipe in variants(1).items():
        t = time.perf_counter()
        built[label] = edgekit.compress(spec, profile, recipe=recipe)
        print(f"  {label}: compressed in {time.perf_counter() - t:.1f} s")
    arts = {}
    for label, cm in built.items():
        (art,) = edgekit.export(cm, ["executorch"], f"{out}/{model}/{label.split()[0]}-{len(arts)}",
                                precisions=["int8"], jobs=1)
        if art.error:
            print(f"  {label}: export failed: {art.error}")
        arts[label] = art
    order = list(arts)
    p50: dict[str, list[float]] = {k: [] for k in order}
    config = BenchConfig(threads=1, min_seconds=min_seconds)
    for rnd in (order, order[::-1]):
        df = edgekit.benchmark([arts[k] for k in rnd], config=config)
        for k in rnd:  # rows come back recommended-first: match them by artifact path
            row = df[df["artifact_path"] == str(arts[k].path)]
            p50[k].append(float(row["latency_ms_p50"].iloc[0]) if len(row) else float("nan"))
    rows = []
    for k in order:
        cm, art = built[k], arts[k]
        rows.append({
            "variant": k, "params": count_params(cm.spec.module), "MACs": count_macs(cm.spec.module, cm.spec.example_inputs),
            "KiB": art.bytes / 1024 if art.bytes else float("nan"),
            "fp32 acc %": 100 * (cm.reference_accuracy or float("nan")),
            "int8 acc %": 100 * (art.accuracy if art.accuracy is not None else float("nan")),
            "p50 ms": float(np.mean(p50[k])), "p50 rounds": "/".join(f"{v:.3f}" for v in p50[k]),
        })
    table = pd.DataFrame(rows)
    base = table.iloc[0]
    table["x faster"] = base["p50 ms"] / table["p50 ms"]
    table["drop pts"] = base["int8 acc %"] - table["int8 acc %"]
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.3f}".format):
        print(table.to_string(index=False))

    def row(label: str) -> pd.Series:
        return table[table["variant"] == label].iloc[0]

    ft, kd, lr, qat = row("prune 50% + fine-tune"), row("prune 50% + distill"), row("low-rank 0.5 + fine-tune"), row("QAT int8")
    best_drop = min(ft["drop pts"], kd["drop pts"])
    speed = max(ft["x faster"], kd["x faster"])
    print(f"GOAL channel pruning 50% >= 1.6x faster (ET int8): {'PASS' if speed >= 1.6 else 'FAIL'} ({speed:.2f}x)")
    print(f"GOAL ... with <= 1 point drop after fine-tune or distill: {'PASS' if best_drop <= 1.0 else 'FAIL'} "
          f"(fine-tune {ft['drop pts']:+.2f}, distill {kd['drop pts']:+.2f} pts vs the fp32 model's int8)")
    print(f"GOAL QAT int8 accuracy >= PTQ int8: {'PASS' if qat['int8 acc %'] >= base['int8 acc %'] else 'FAIL'} "
          f"(QAT {qat['int8 acc %']:.2f} %, PTQ {base['int8 acc %']:.2f} %)")
    ratio = lr["params"] / base["params"]
    print(f"GOAL low-rank at half params loses <= 1 point: {'PASS' if lr['drop pts'] <= 1.0 else 'FAIL'} "
          f"({lr['drop pts']:+.2f} pts; model params {ratio:.2f}x of the original)")
    for fraction in (1.0, 0.1):
        scratch, kdist = scratch_vs_distill(built["prune 50% + fine-tune"], spec.module, seeds, fraction)
        print(f"student = the 50%-pruned architecture, re-initialized; {100 * fraction:g}% of the training set, "
              f"{round(EPOCHS / fraction)} epochs, {seeds} seeds:")
        print(f"  labels only: {', '.join(f'{100 * a:.2f}' for a in scratch)} % (mean {100 * np.mean(scratch):.2f})")
        print(f"  distilled:   {', '.join(f'{100 * a:.2f}' for a in kdist)} % (mean {100 * np.mean(kdist):.2f})")
        print(f"GOAL distillation beats training from scratch ({100 * fraction:g}% of labels): "
              f"{'PASS' if np.mean(kdist) > np.mean(scratch) else 'FAIL'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="digits-cnn,digits-cnn-wide")
    ap.add_argument("--profile", default="x86")
    ap.add_argument("--min-seconds", type=float, default=2.0)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as out:
        for model in args.models.split(","):
            measure(model.strip(), args.profile, args.min_seconds, args.seeds, out)
    print(f"\nwall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
