"""Benchmark: every artifact of a model against torch eager, side by side in one run.

    .venv/bin/python scripts/bench/artifacts.py [--model mobilenet-v2] [--min-seconds 2]

Prints each artifact's median latency as a speed-up over torch eager fp32 (one thread each), measured in
the same run: eager is timed before and after the artifacts, so drift on a shared machine shows.
Also prints the wall time of compress + export of all artifacts, and checks the goals of issue 2:
the recommended artifact within 10% of the fastest one measured, and compress + export under 60 s.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

import numpy as np
import torch

import edgekit
from edgekit.agent.measure import latency_stats, timed_loop
from edgekit import BenchConfig
from edgekit.models import load_model


def eager_p50(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], min_seconds: float) -> dict[str, Any]:
    """torch eager fp32 with the agent's own timing loop (warm-up, then >= 50 runs and >= min_seconds)."""
    torch.set_num_threads(1)
    with torch.inference_mode():
        timed_loop(lambda x: module(*x), inputs, 10, 0.5, 60.0)
        loop = timed_loop(lambda x: module(*x), inputs, 50, min_seconds, 600.0)
    return latency_stats(loop.samples_ns)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenet-v2")
    ap.add_argument("--profile", default="x86")
    ap.add_argument("--min-seconds", type=float, default=2.0)
    args = ap.parse_args()

    t = time.perf_counter()
    spec = load_model(args.model)
    print(f"model {args.model}: built/loaded in {time.perf_counter() - t:.1f} s ({spec.origin})")
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as out:
        t = time.perf_counter()
        cm = edgekit.compress(spec, args.profile)
        arts = edgekit.export(cm, out_dir=out)
        build_s = time.perf_counter() - t
        per = ", ".join(f"{a.target}-{a.precision} {a.export_seconds:.1f}+{a.check_seconds or 0:.1f}s" for a in arts)
        print(f"compress + export of {len(arts)} artifacts, parity and accuracy checks included: {build_s:.1f} s wall")
        print(f"  per artifact, export+check seconds (worker processes run side by side): {per}")

        before = eager_p50(spec.module, spec.example_inputs, args.min_seconds)
        df = edgekit.benchmark(arts, config=BenchConfig(threads=1, min_seconds=args.min_seconds))
        after = eager_p50(spec.module, spec.example_inputs, args.min_seconds)
    eager = float(np.mean([before["p50"], after["p50"]]))
    print(f"\ntorch eager fp32, 1 thread: p50 {before['p50']:.2f} ms before, {after['p50']:.2f} ms after "
          f"(ratios below use their mean, {eager:.2f} ms)")
    print(f"{'artifact':<18}{'p50 ms':>9}{'p99 ms':>9}{'x eager':>9}{'parity':>8}{'cosine':>9}{'acc %':>7}  rec")
    for _, r in df.iterrows():
        acc = "-" if r["accuracy"] is None or np.isnan(r["accuracy"]) else f"{100 * r['accuracy']:.1f}"
        if r["error"]:
            print(f"{r['target'] + '-' + r['precision']:<18} error: {r['error'][:100]}")
            continue
        print(f"{r['target'] + '-' + r['precision']:<18}{r['latency_ms_p50']:>9.2f}{r['latency_ms_p99']:>9.2f}"
              f"{eager / r['latency_ms_p50']:>8.1f}x{'ok' if r['parity_ok'] else 'FAIL':>8}"
              f"{r['parity_cosine']:>9.4f}{acc:>7}  {'*' if r['recommended'] else ''}")
    ref = df["reference_accuracy"].iloc[0]
    if ref is not None and not np.isnan(ref):
        print(f"fp32 PyTorch reference accuracy: {100 * ref:.1f} %")

    measured = df[df["latency_ms_p50"].notna()]
    if measured.empty:
        raise SystemExit("no artifact could be measured: see the errors above")
    fastest = measured.loc[measured["latency_ms_p50"].idxmin()]
    rec = df[df["recommended"]]
    print()
    if rec.empty:
        print("GOAL recommended within 10% of fastest: FAIL (no artifact recommended)")
    else:
        ratio = rec["latency_ms_p50"].iloc[0] / fastest["latency_ms_p50"]
        print(f"GOAL recommended within 10% of fastest: {'PASS' if ratio <= 1.10 else 'FAIL'} "
              f"(recommended {rec['target'].iloc[0]}-{rec['precision'].iloc[0]} is {ratio:.2f}x the fastest, "
              f"{fastest['target']}-{fastest['precision']})")
    print(f"GOAL compress + export under 60 s: {'PASS' if build_s < 60 else 'FAIL'} ({build_s:.1f} s)")


if __name__ == "__main__":
    main()
