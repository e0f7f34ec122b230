"""Benchmark: building artifacts (cold, warm, partly changed) and what they run at, side by side in one run.

    .venv/bin/python scripts/bench/artifacts.py [--model mobilenet-v2] [--min-seconds 2] [--skip-pruned]

One run, on a private empty build cache (a temporary $EDGEKIT_BUILD_CACHE):

1. cold build of the model's six artifacts (x86: executorch, tflite, onnx x fp32, int8), parity and
   accuracy checks included, with each artifact's stage times; and of digits-cnn's;
2. warm build: the same inputs again (every artifact a cache hit, no toolchain call counted);
3. one changed input: the x86 -> pi4 profile (its int8 scheme differs, its fp32 graphs do not);
4. QAT's fixed cost per quantizer (capture + prepare_qat_pt2e + convert, no training), for XNNPACK's
   quantizer and then onnxruntime's 7-bit one in the same process;
5. every artifact's median latency against torch eager fp32 (one thread each; eager timed before and
   after), and a channel-pruned (50%, fine-tuned) int8 ExecuTorch artifact against the unpruned one.

Prints each goal of issue 18 (and issue 2's recommendation goal) as PASS/FAIL with its figure.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("EDGEKIT_BUILD_CACHE", tempfile.mkdtemp(prefix="edgekit-bench-cache-"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import edgekit  # noqa: E402
from edgekit import BenchConfig, BuildProgress, Prune, Recipe, TrainSpec  # noqa: E402
from edgekit.agent.measure import latency_stats, timed_loop  # noqa: E402
from edgekit.models import load_model  # noqa: E402


def goal(name: str, ok: bool, figure: str) -> None:
    print(f"GOAL {name}: {'PASS' if ok else 'FAIL'} ({figure})")


def eager_p50(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], min_seconds: float) -> dict[str, Any]:
    """torch eager fp32 with the agent's own timing loop (warm-up, then >= 50 runs and >= min_seconds)."""
    torch.set_num_threads(1)
    with torch.inference_mode():
        timed_loop(lambda x: module(*x), inputs, 10, 0.5, 60.0)
        loop = timed_loop(lambda x: module(*x), inputs, 50, min_seconds, 600.0)
    return latency_stats(loop.samples_ns)


class Stages:
    """Each artifact's stage times, from the build's progress events."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.seen: dict[tuple[str, str], list[tuple[str, float]]] = {}

    def __call__(self, e: BuildProgress) -> None:
        self.seen.setdefault((e.target, e.precision), []).append((e.stage, time.perf_counter() - self.t0))

    def built(self) -> int:
        return sum(1 for v in self.seen.values() if any(s == "export" for s, _ in v))

    def hits(self) -> int:
        return sum(1 for v in self.seen.values() if any(s == "cached" for s, _ in v))

    def table(self) -> str:
        lines = []
        for (t, p), ev in self.seen.items():
            spans = [f"{a} {b_t - a_t:.1f}s" for (a, a_t), (_, b_t) in zip(ev, ev[1:])]
            lines.append(f"    {t + '-' + p:<17} {', '.join(spans) or ev[0][0]}")
        return "\n".join(lines)


def build(spec: Any, profile: str, out: str, label: str) -> tuple[list[Any], float, float, Stages]:
    t = time.perf_counter()
    cm = edgekit.compress(spec, profile)
    compress_s = time.perf_counter() - t
    stages = Stages()
    t = time.perf_counter()
    arts = edgekit.export(cm, out_dir=out, on_progress=stages)
    export_s = time.perf_counter() - t
    bad = [f"{a.target}-{a.precision}: {a.error}" for a in arts if not a.ok]
    print(f"{label}: compress {compress_s:.1f} s + export {export_s:.1f} s = {compress_s + export_s:.1f} s wall; "
          f"{stages.built()} built, {stages.hits()} cache hits{'; NOT OK: ' + '; '.join(bad) if bad else ''}")
    return arts, compress_s, export_s, stages


class DigitsImages:
    """mobilenet-v2's own training data (scikit-learn digits upsampled to 224x224), 16 images a batch,
    made as they are used (the whole set as images would be 0.8 GB)."""

    def __iter__(self) -> Any:
        from edgekit.models.digits import load_digits_split
        from edgekit.models.mobilenet import to_image

        x, y, _, _ = load_digits_split()
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        for i in range(0, len(order), 16):
            idx = order[i : i + 16]
            yield to_image(x[idx]), y[idx]


def qat_fixed_costs(spec: Any) -> list[tuple[str, float, float, float]]:
    """(quantizer, capture s, prepare s, convert s) for XNNPACK's, then onnxruntime's, in one process."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    from edgekit.compression._patterns import install
    from edgekit.compression.qat import _capture_for_training
    from edgekit.compression.quantize import quantizer_for

    install()
    prof = edgekit.load_profile("x86")
    batch = (torch.cat([s[0] for s in spec.calibration[:8]]),)
    out = []
    for backend in ("xnnpack", "onnxruntime"):
        t0 = time.perf_counter()
        captured = _capture_for_training(copy.deepcopy(spec.module).train(), batch)
        t1 = time.perf_counter()
        prepared = prepare_qat_pt2e(captured, quantizer_for(backend, prof.quantization, qat=True))
        t2 = time.perf_counter()
        convert_pt2e(prepared)
        out.append((backend, t1 - t0, t2 - t1, time.perf_counter() - t2))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenet-v2")
    ap.add_argument("--min-seconds", type=float, default=2.0)
    ap.add_argument("--skip-pruned", action="store_true", help="skip the pruned + fine-tuned artifact (minutes)")
    args = ap.parse_args()
    print(f"build cache: {os.environ['EDGEKIT_BUILD_CACHE']} (empty at start); {os.cpu_count()} cores")

    t = time.perf_counter()
    spec = load_model(args.model)
    digits = load_model("digits-cnn")
    print(f"models loaded in {time.perf_counter() - t:.1f} s")
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as out:
        arts, c_s, e_s, stages = build(spec, "x86", f"{out}/cold", f"{args.model} cold (empty cache)")
        print(stages.table())
        _, dc_s, de_s, _ = build(digits, "x86", f"{out}/digits", "digits-cnn cold (empty cache)")
        _, wc_s, we_s, warm = build(spec, "x86", f"{out}/warm", f"{args.model} warm (same inputs)")
        _, pc_s, pe_s, pi4 = build(spec, "pi4", f"{out}/pi4", f"{args.model} x86 -> pi4 profile")

        cold = c_s + e_s
        goal(f"cold build of {args.model}'s {len(arts)} artifacts <= 30 s", cold <= 30, f"{cold:.1f} s")
        goal("cold build of digits-cnn <= 10 s", dc_s + de_s <= 10, f"{dc_s + de_s:.1f} s")
        goal("warm build <= 1 s, 0 toolchain calls", we_s <= 1 and warm.built() == 0,
             f"export {we_s:.2f} s, {warm.built()} built, {warm.hits()} hits; compress before it {wc_s:.1f} s")
        goal("x86 -> pi4 rebuilds only the changed keys (3 int8 rebuilt, 3 fp32 re-used)",
             pi4.built() == 3 and pi4.hits() == 3, f"{pi4.built()} built, {pi4.hits()} hits, export {pe_s:.1f} s")

        costs = qat_fixed_costs(spec)
        for backend, cap, prep, conv in costs:
            total = cap + prep + conv
            goal(f"QAT fixed cost of the {backend} quantizer <= 10 s", total <= 10,
                 f"{total:.1f} s: capture {cap:.1f} + prepare_qat_pt2e {prep:.1f} + convert {conv:.1f}")

        pruned_art = None
        if not args.skip_pruned:
            t = time.perf_counter()
            recipe = Recipe(name="prune50", steps=[Prune(granularity="channel", ratio=0.5,
                                                         finetune=TrainSpec(epochs=1))])
            pcm = edgekit.compress(load_model(args.model), "x86", recipe=recipe,  # a fresh copy to prune
                                   train_data=DigitsImages())
            (pruned_art,) = edgekit.export(pcm, ["executorch"], f"{out}/pruned", precisions=["int8"])
            pruned_art.model = f"{args.model}-pruned50"
            print(f"pruned 50% + fine-tuned 1 epoch + exported in {time.perf_counter() - t:.1f} s; "
                  f"host accuracy {pruned_art.accuracy}, fp32 model {pcm.baseline_accuracy}")

        before = eager_p50(spec.module, spec.example_inputs, args.min_seconds)
        measured = [*arts, *([pruned_art] if pruned_art is not None else [])]
        df = edgekit.benchmark(measured, config=BenchConfig(threads=1, min_seconds=args.min_seconds))
        after = eager_p50(spec.module, spec.example_inputs, args.min_seconds)
    eager = float(np.mean([before["p50"], after["p50"]]))
    print(f"\ntorch eager fp32, 1 thread: p50 {before['p50']:.2f} ms before, {after['p50']:.2f} ms after "
          f"(ratios below use their mean, {eager:.2f} ms)")
    print(f"{'artifact':<30}{'p50 ms':>9}{'p99 ms':>9}{'x eager':>9}{'parity':>8}{'cosine':>9}{'acc %':>7}  rec")
    for _, r in df.iterrows():
        name = f"{r['model']} {r['target']}-{r['precision']}"
        acc = "-" if r["accuracy"] is None or np.isnan(r["accuracy"]) else f"{100 * r['accuracy']:.1f}"
        if r["error"]:
            print(f"{name:<30} error: {r['error'][:100]}")
            continue
        print(f"{name:<30}{r['latency_ms_p50']:>9.2f}{r['latency_ms_p99']:>9.2f}"
              f"{eager / r['latency_ms_p50']:>8.1f}x{'ok' if r['parity_ok'] else 'FAIL':>8}"
              f"{r['parity_cosine']:>9.4f}{acc:>7}  {'*' if r['recommended'] else ''}")
    ref = df["reference_accuracy"].iloc[0]
    print(f"fp32 PyTorch reference accuracy: {100 * ref:.1f} %\n")

    base = df[df["model"] == args.model]
    measured_rows = base[base["latency_ms_p50"].notna()]
    if measured_rows.empty:
        sys.exit("no artifact could be measured: see the errors above")
    fastest = measured_rows.loc[measured_rows["latency_ms_p50"].idxmin()]
    rec = df[df["recommended"]]
    if rec.empty:
        goal("recommended within 10% of fastest", False, "no artifact recommended")
    else:
        ratio = rec["latency_ms_p50"].iloc[0] / fastest["latency_ms_p50"]
        goal("recommended within 10% of fastest", ratio <= 1.10,
             f"recommended {rec['target'].iloc[0]}-{rec['precision'].iloc[0]} is {ratio:.2f}x the fastest, "
             f"{fastest['target']}-{fastest['precision']}")
    if pruned_art is not None:
        pr = df[df["model"] == pruned_art.model].iloc[0]
        unpruned = base[(base["target"] == "executorch") & (base["precision"] == "int8")].iloc[0]
        x_eager = eager / pr["latency_ms_p50"]
        x_int8 = unpruned["latency_ms_p50"] / pr["latency_ms_p50"]
        drop = 100 * (ref - pr["accuracy"])
        goal("pruned 50% + int8 ExecuTorch >= 15x eager fp32", x_eager >= 15, f"{x_eager:.1f}x")
        goal("pruned 50% + int8 >= 2.5x the unpruned int8 artifact", x_int8 >= 2.5,
             f"{x_int8:.2f}x ({pr['latency_ms_p50']:.2f} vs {unpruned['latency_ms_p50']:.2f} ms)")
        goal("pruned 50% + int8 within 1 point of the fp32 model", drop <= 1.0,
             f"{100 * pr['accuracy']:.1f} % vs {100 * ref:.1f} %: {drop:+.1f} points")


if __name__ == "__main__":
    main()
