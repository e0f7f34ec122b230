"""Benchmark: fleets on a Ray cluster (issue 17) against today's thread fan-out, on loopback devices.

    .venv/bin/python scripts/bench/cluster.py [--devices 32] [--parallel 8] [--dedup-runs 3]
        [--models digits-cnn,digits-cnn-wide,mobilenet-v2,minilm-l6]

One run, on this host:

- a real two-node Ray cluster on 127.0.0.1 (``ray start`` head + a second node, token auth on, each node with
  its own build-cache folder), and 32 loopback devices: 4 real sshds, 8 device entries each (a workdir each,
  so each has its own measuring lock), no gateway (any node);
- warm-up: each model built once by each backend (one device), and every device's actor started (a run of
  the first model on all devices): the cold figures are printed, not judged;
- timed: each model on every device, thread fan-out then Ray, same settings (ONNX fp32, one thread count);
  the per-job overhead is the driver's time for a device-job minus the measuring inside the actor
  (``cluster_job`` journal records), its scheduling the time from the call to the actor starting it;
- de-duplication: ``--dedup-runs`` driver processes at once, each a run of a model no node has built yet,
  on 8 devices: the cluster's registry must hold one publish per build-cache key;
- node loss: the second node SIGKILLed after the first rows of a run on every device: every row must be
  there once, and the time from the kill to the run's end is printed.

Goals, each PASS/FAIL with its figure: per-job overhead <= 50 ms (median), scheduling p99 <= 1 s, each key built
once, 0 rows lost and 0 duplicated on node loss.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path = [p for p in sys.path if Path(p).resolve() != Path(__file__).resolve().parent]  # not a package
os.environ.setdefault("EDGEKIT_BUILD_CACHE", tempfile.mkdtemp(prefix="edgekit-bench-cache-"))

import edgekit  # noqa: E402
from edgekit.results.store import Run  # noqa: E402
from edgekit.testing import start_ray_cluster, start_sshd, write_devices_file  # noqa: E402

EDGEKIT = str(Path(sys.executable).with_name("edgekit"))
QUICK = edgekit.BenchConfig(warmup_iterations=2, warmup_seconds=0, min_iterations=10, min_seconds=0.1,
                            idle_seconds=0, energy=False, threads=1, device_accuracy=False)


def goal(name: str, ok: bool, figure: str) -> None:
    print(f"GOAL {name}: {'PASS' if ok else 'FAIL'} ({figure})", flush=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def run(model: str, devices: list[str], devices_file: Path, results: Path, cluster: str | None,
        config: edgekit.BenchConfig = QUICK, parallel: int = 8, on_progress: Any = None) -> tuple[Any, float]:
    fleet = edgekit.FleetConfig(parallel=parallel, cluster=cluster, retries=8, backoff_s=1, backoff_max_s=4,
                                build_cpus=2)
    started = time.perf_counter()
    result = edgekit.bench(model, devices, targets=["onnx"], precisions=["fp32"], config=config, fleet=fleet,
                           devices_file=devices_file, results=results, trust_new_host=True, on_progress=on_progress)
    return result, time.perf_counter() - started


def jobs(result: Any) -> list[dict[str, Any]]:
    return list(Run(result.run_dir).records("cluster_job"))


def check_rows(result: Any, expected: int) -> tuple[int, int, list[str]]:
    rows = [r["row"] for r in Run(result.run_dir).records("row")]
    keys = [(r["device"], r["target"], r["precision"], r["threads"]) for r in rows if r.get("stage") == "done"]
    failed = [f"{r['device']}: {r['error']}" for r in rows if r.get("stage") != "done"]
    return expected - len(set(keys)), len(keys) - len(set(keys)), failed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=32)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--dedup-runs", type=int, default=3)
    ap.add_argument("--models", default="digits-cnn,digits-cnn-wide,mobilenet-v2,minilm-l6")
    args = ap.parse_args()
    models = args.models.split(",")
    root = Path(tempfile.mkdtemp(prefix="edgekit-bench-cluster-"))
    cluster = start_ray_cluster()
    os.environ.update(cluster.env)
    try:
        t0 = time.perf_counter()
        worker = cluster.add_node("worker")
        print(f"cluster: head + 1 node on 127.0.0.1 ({cluster.address}), token auth on; "
              f"{os.cpu_count()} host cores shared by both nodes, the sshds and this driver", flush=True)
        sshds = [start_sshd(root / f"sshd{i}", name=f"sshd{i}", profile="x86") for i in range(4)]
        entries = []
        for i in range(args.devices):
            e = sshds[i % len(sshds)].entry()
            entries.append({**e, "name": f"dev{i:02d}", "workdir": f"{e['workdir']}/dev{i:02d}"})
        devices_file = write_devices_file(root / "devices.yaml", entries)
        names = [e["name"] for e in entries]
        print(f"{len(names)} loopback devices on {len(sshds)} sshds; set-up {time.perf_counter() - t0:.1f} s", flush=True)

        # ---- warm-up: builds (each backend once per model) and the devices' actors --------------------------
        for m in models:
            _, thread_s = run(m, names[:1], devices_file, root / "warm", None)
            _, ray_s = run(m, names[:1], devices_file, root / "warm", cluster.address)
            print(f"warm-up {m}: thread backend (build + 1 device) {thread_s:.1f} s; Ray (build task + 1 device) "
                  f"{ray_s:.1f} s", flush=True)
        cold, cold_s = run(models[0], names, devices_file, root / "warm", cluster.address, parallel=args.parallel)
        cold_sched = [j["scheduling_s"] for j in jobs(cold)]
        print(f"actors started on every device: {models[0]} on {len(names)} devices in {cold_s:.1f} s; scheduling "
              f"median {statistics.median(cold_sched) * 1e3:.0f} ms, p99 {pct(cold_sched, 99) * 1e3:.0f} ms (cold: "
              f"includes starting each device's actor process)", flush=True)

        # ---- timed: the same work on both backends ---------------------------------------------------------
        overhead, sched, walls = [], [], {"thread": 0.0, "ray": 0.0}
        for m in models:
            thread_res, thread_s = run(m, names, devices_file, root / "timed", None, parallel=args.parallel)
            ray_res, ray_s = run(m, names, devices_file, root / "timed", cluster.address, parallel=args.parallel)
            walls["thread"] += thread_s
            walls["ray"] += ray_s
            js = jobs(ray_res)
            overhead += [j["driver_s"] - j["measure_s"] for j in js]
            sched += [j["scheduling_s"] for j in js]
            bad = [f for res in (thread_res, ray_res) for f in check_rows(res, len(names))[2]]
            print(f"{m}: {len(names)} devices, thread fan-out {thread_s:.1f} s, Ray {ray_s:.1f} s "
                  f"({ray_s / thread_s:.2f}x); per-job overhead median {statistics.median(overhead[-len(js):]) * 1e3:.1f} ms"
                  + (f"; FAILED ROWS: {bad[:3]}" if bad else ""), flush=True)
        n_jobs = len(overhead)
        print(f"all models: thread fan-out {walls['thread']:.1f} s, Ray {walls['ray']:.1f} s for {n_jobs} device-jobs "
              f"each; wall difference per device-job {(walls['ray'] - walls['thread']) / n_jobs * 1e3:.0f} ms "
              f"(noisy: both share 2 cores with the sshds and agents)", flush=True)
        med = statistics.median(overhead)
        goal("orchestration overhead per device-job (median, driver time minus measuring in the actor) <= 50 ms",
             med <= 0.050, f"{med * 1e3:.1f} ms over {n_jobs} device-jobs; p90 {pct(overhead, 90) * 1e3:.1f} ms")
        p99 = pct(sched, 99)
        goal("scheduling p99 (call to the device's actor starting the job) <= 1 s", p99 <= 1.0,
             f"{p99 * 1e3:.0f} ms; median {statistics.median(sched) * 1e3:.1f} ms over {len(sched)} jobs")

        # ---- de-duplication: N drivers at once, a model no node has built ----------------------------------
        from edgekit.cluster import connect

        before = connect(cluster.address).registry_stats()["publishes"]
        share = max(1, min(8, len(names) // args.dedup_runs))
        procs = [subprocess.Popen([EDGEKIT, "bench", "--model", "digits-cnn", "--devices",
                                   ",".join(names[share * i:share * i + share]),
                                   "--targets", "onnx,tflite", "--precisions", "int8", "--threads", "1",
                                   "--min-iterations", "10", "--min-seconds", "0.1", "--idle-seconds", "0", "--no-energy",
                                   "--cluster", cluster.address, "--devices-file", str(devices_file), "--results",
                                   str(root / f"dedup{i}"), "--trust-new-host", "--json"],
                                  stdout=subprocess.DEVNULL, stderr=open(root / f"dedup{i}.log", "w"), text=True)
                 for i in range(args.dedup_runs)]
        codes = [p.wait(timeout=1800) for p in procs]
        for i, code in enumerate(codes):
            if code != 0:
                print(f"de-duplication run {i} failed ({code}): {(root / f'dedup{i}.log').read_text()[-2000:]}", flush=True)
        after = connect(cluster.address).registry_stats()["publishes"]
        new = {k: v for k, v in after.items() if k not in before}
        twice = {k[:12]: v for k, v in new.items() if len(v) != 1}
        hits = sum(1 for i in range(args.dedup_runs) for rec in Run(next((root / f"dedup{i}").iterdir())).records("artifacts")
                   for a in rec["artifacts"] if a.get("cache_hit"))
        goal(f"{args.dedup_runs} runs of one model on {share} devices each, at once: each build-cache key built once in the "
             "cluster", bool(new) and not twice and all(c == 0 for c in codes),
             f"{len(new)} new keys, publishes per key {sorted(len(v) for v in new.values())}, {hits} artifact(s) "
             f"re-used from the registry by the other runs; exit codes {codes}" + (f"; built more than once: {twice}" if twice else ""))

        # ---- node loss ---------------------------------------------------------------------------------------
        killed: dict[str, float] = {}

        def progress(device: str | None, stage: str, detail: str) -> None:
            if device and stage == "measuring" and detail.endswith(" rows") and "started" not in killed:
                killed["started"] = 1.0
                threading.Timer(0.5, lambda: (worker.kill(), killed.setdefault("at", time.time()))).start()

        cfg = dataclasses.replace(QUICK, threads=(1, 2), min_seconds=0.3)
        res, loss_s = run(models[0], names, devices_file, root / "loss", cluster.address, config=cfg,
                          parallel=args.parallel, on_progress=progress)
        lost, dup, failed = check_rows(res, 2 * len(names))
        rows = [r for r in Run(res.run_dir).records("row")]
        retried = {r["device"] for r in Run(res.run_dir).records("retry")}
        after_kill = [r["time"] for r in rows if r["time"] > killed.get("at", 0) and r["row"]["device"] in retried]
        recover = (max(after_kill) - killed["at"]) if after_kill and "at" in killed else float("nan")
        goal("node loss mid-run: 0 rows lost, 0 duplicated", "at" in killed and lost == 0 and dup == 0 and not failed,
             f"{lost} lost, {dup} duplicated, {len(failed)} failed rows; {len(retried)} device(s) retried after the "
             f"node was killed; their last row {recover:.1f} s after the kill; run {loss_s:.1f} s")
        print(f"what 2 cores limit: each device-job here is ~{statistics.median(j['measure_s'] for j in jobs(ray_res)):.2f} s "
              "of ssh + agent start + measuring on the same 2 cores as both Ray nodes and the driver, so wall-clock "
              "ratios mostly measure CPU contention, not orchestration; the per-job overhead above is the Ray-only "
              "part (actor call, bundle fetch, row streaming).", flush=True)
        print(f"what it implies for 500 devices: {med * 1e3:.1f} ms x 500 = {med * 500:.1f} s of orchestration per "
              f"pass over the fleet, spread over --parallel device-jobs at once; each device's actor is one Ray "
              "worker process (175 MB RSS idle, measured separately) on its gateway node, started once per cluster.", flush=True)
    finally:
        from edgekit.cluster import disconnect

        disconnect()
        cluster.stop()
        for s in locals().get("sshds", []):
            s.stop()


if __name__ == "__main__":
    main()
