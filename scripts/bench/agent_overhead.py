"""Agent overhead: does measuring through the agent change what is measured?

For each runtime (ONNX Runtime, LiteRT, ExecuTorch; fp32 artifacts of one model, 1 thread):
- the agent's median latency (a fresh process per run, per-call timing) versus a bare tight loop of the
  same runtime call in this process (blocks of calls timed together, so no per-call timer cost), side
  by side, alternating, in one run (goal: ratio <= 1.03);
- the spread of the agent's median over 5 runs, as a coefficient of variation (goal <= 5% on a quiet
  machine; this one is shared, so it is reported as measured);
- the agent's whole-process peak RSS versus ``/usr/bin/time -v`` (kernel's maxrss) of the very same agent
  run (goal within 5%); the model's peak (read before the agent builds its report) is shown beside it.

    .venv/bin/python scripts/bench/agent_overhead.py [--model digits-cnn] [--seconds 2] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import edgekit
from edgekit.agent.runtimes import load_runner
from edgekit.config.bench import BenchConfig

BLOCK = 20  # calls timed together in the bare loop


def bare_median_ms(fmt: str, path: str, inputs: list[np.ndarray], seconds: float) -> float:
    runner = load_runner(fmt, path, 1)
    prepared = runner.prepare(inputs)
    for _ in range(50):
        runner.invoke(prepared)
    per_call, end = [], time.perf_counter() + seconds
    invoke = runner.invoke
    while time.perf_counter() < end:
        t0 = time.perf_counter_ns()
        for _ in range(BLOCK):
            invoke(prepared)
        per_call.append((time.perf_counter_ns() - t0) / BLOCK / 1e6)
    return float(np.median(per_call))


def maxrss_check(art: Any, seconds: float) -> tuple[float, float, float]:
    """(agent's whole-process peak, its model peak (before reporting), /usr/bin/time's maxrss) of one run, MiB."""
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp) / "request.json"
        req.write_text(json.dumps({
            "artifact": str(art.path), "format": art.format, "inputs": str(art.inputs), "threads": 1,
            "warmup_iterations": 10, "warmup_seconds": 0.2, "min_iterations": 50, "min_seconds": seconds,
            "max_seconds": seconds * 2 + 10, "energy": None}))
        proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "edgekit.agent", "run", "--request",
                               str(req)], capture_output=True, text=True, timeout=600)
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    return answer["memory"]["peak_rss_mb_process"], answer["memory"]["peak_rss_mb"], kib / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="digits-cnn")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-agent-") as tmp:
        cm = edgekit.compress(args.model, "x86")
        arts = edgekit.export(cm, precisions=["fp32"], out_dir=tmp)
        with np.load(arts[0].inputs) as npz:
            inputs = [npz[f"arr_{i}"] for i in range(len(npz.files))]
        cfg = BenchConfig(threads=1, min_seconds=args.seconds, energy=False, device_accuracy=False)
        print(f"{args.model}, fp32, 1 thread, {args.seconds:g} s per measurement, {args.runs} alternating rounds")
        print(f"{'runtime':12} {'bare p50 ms':>12} {'agent p50 ms':>13} {'ratio':>7} {'agent CV':>9} "
              f"{'agent RSS':>10} {'time -v RSS':>12} {'RSS diff':>9} {'model RSS':>10}")
        for art in arts:
            bare, agent = [], []
            for _ in range(args.runs):
                bare.append(bare_median_ms(art.format, str(art.path), inputs, args.seconds))
                agent.append(float(edgekit.benchmark([art], config=cfg).iloc[0]["latency_ms_p50"]))
            ratio = statistics.median(agent) / statistics.median(bare)
            cv = statistics.stdev(agent) / statistics.mean(agent)
            own, model, kernel = maxrss_check(art, args.seconds)
            diff = (own - kernel) / kernel
            print(f"{art.target:12} {statistics.median(bare):12.4f} {statistics.median(agent):13.4f} {ratio:7.3f} "
                  f"{cv:8.1%} {own:9.1f}M {kernel:11.1f}M {diff:+8.1%} {model:9.1f}M   "
                  f"ratio<=1.03 {'PASS' if ratio <= 1.03 else 'FAIL'}, CV<=5% {'PASS' if cv <= 0.05 else 'FAIL'}, "
                  f"RSS within 5% {'PASS' if abs(diff) <= 0.05 else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
