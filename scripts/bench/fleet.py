"""Fleet scaling: wall time of ``edgekit.bench`` on 1, 4 and 16 test devices, as ratios to 1 device.

Each device is a real OpenSSH sshd on loopback (edgekit.testing), all on this host with profile x86; 16 are
started once and reused. Every measured ``bench`` call (same model, onnx fp32, ``parallel`` = the number of
devices) runs in a fresh Python process, so its peak RSS is its own; sizes are interleaved round by round
(1, 4, 16, 1, 4, 16, ...) on this shared machine and the median per size is reported.

Two series:
- ``measure``: a small fixed measurement per device (default: warm-up 2, >= 20 runs and >= 0.5 s, 1 thread),
  the same on every device whatever the fleet size;
- ``tiny``: the least device work there is (no warm-up, 1 run, 0 s), so what is left is host orchestration,
  SSH and starting the agent: the host-side cost of a fleet.

The test devices run their agents on this very machine, so at 16 devices sixteen agents share its cores. To
show how much of the device phase is that contention, the CPU time spent on the devices (what each sshd
listener reaped: sessions and the agents they ran) and the whole machine's CPU time (other jobs included)
are read from /proc around each run.

Goal (issue): wall time at 16 devices <= 1.5x that of 1 device.

    .venv/bin/python scripts/bench/fleet.py [--sizes 1,4,16] [--rounds 2] [--min-seconds 0.5] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODEL = "digits-cnn"
TARGETS, PRECISIONS = ["onnx"], ["fp32"]
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---- the child: one bench call in a fresh process ----------------------------------------------------


def child(spec: dict[str, Any]) -> None:
    """Run one ``edgekit.bench`` call and print one JSON line describing it."""
    import edgekit

    events: list[tuple[float, str | None, str, str]] = []

    def on_progress(device: str | None, stage: str, detail: str) -> None:
        events.append((time.monotonic(), device, stage, detail))

    cfg = edgekit.BenchConfig(warmup_iterations=spec["warmup"], warmup_seconds=0, min_iterations=spec["iterations"],
                              min_seconds=spec["min_seconds"], threads=1, energy=False, device_accuracy=False)
    fleet = edgekit.FleetConfig(parallel=len(spec["devices"]), device_timeout=spec["timeout"])
    cpu0 = _cpu(resource.RUSAGE_SELF)
    start = time.monotonic()
    result = edgekit.bench(MODEL, spec["devices"], targets=TARGETS, precisions=PRECISIONS, config=cfg, fleet=fleet,
                           devices_file=spec["devices_file"], results=spec["results"], on_progress=on_progress)
    end = time.monotonic()
    cpu1 = _cpu(resource.RUSAGE_SELF)
    df = result.df
    rows = int((df["stage"] == "done").sum()) if "stage" in df else len(df)
    print(json.dumps({
        "wall_s": end - start, **_phases(events, start, end),
        "cpu_s": cpu1 - cpu0, "cpu_total_s": cpu1, "export_cpu_s": _cpu(resource.RUSAGE_CHILDREN),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rows": rows, "failed": {k: f"{v.stage}: {v.error}" for k, v in result.failed.items()},
        "retried": sorted(k for k, v in result.items() if v.attempts > 1),
    }), flush=True)


def _cpu(who: int) -> float:
    ru = resource.getrusage(who)
    return ru.ru_utime + ru.ru_stime


def _phases(events: list[tuple[float, str | None, str, str]], start: float, end: float) -> dict[str, Any]:
    """Export / device phase from the progress timestamps, and each device's time split into its steps:
    setup (connect, agent install, device facts), measure (stage the artifact, run the agent), close."""
    per: dict[str, dict[str, float]] = {}
    for ts, dev, stage, detail in events:
        if dev is None:
            continue
        marks = per.setdefault(dev, {})
        if stage == "connecting":
            marks.setdefault("connect", ts)
        elif stage == "measuring" and detail.startswith("measuring "):
            marks.setdefault("measure", ts)
        elif stage == "measuring" and detail.endswith(" rows"):
            marks["row"] = ts
        elif stage in ("done", "failed"):
            marks["end"] = ts
    connects = [m["connect"] for m in per.values() if "connect" in m]
    ends = [m["end"] for m in per.values() if "end" in m]
    first, last = (min(connects), max(ends)) if connects and ends else (end, end)
    steps = {"setup": ("connect", "measure"), "measure": ("measure", "row"), "close": ("row", "end"),
             "device": ("connect", "end")}
    split = {}
    for name, (a, b) in steps.items():
        spans = [m[b] - m[a] for m in per.values() if a in m and b in m]
        split[f"{name}_med_s"] = statistics.median(spans) if spans else float("nan")
        split[f"{name}_max_s"] = max(spans) if spans else float("nan")
    return {"export_s": first - start, "device_phase_s": last - first, "finalize_s": end - last,
            "launch_spread_s": (max(connects) - first) if connects else 0.0, **split}


# ---- the parent: devices, rounds, tables -------------------------------------------------------------


def isolate_ssh_env(home: Path) -> None:
    """A fresh HOME and no ssh-agent (inherited by every child), so the user's ~/.ssh is never touched; the
    real edgekit cache (trained models, agent bundle) is kept, as edgekit's own ``isolated_ssh_env`` does."""
    from edgekit._fs import cache_dir

    os.environ["EDGEKIT_CACHE"] = str(cache_dir())
    for var in ("SSH_AUTH_SOCK", "SSH_AGENT_PID"):
        os.environ.pop(var, None)
    home.mkdir()
    os.environ["HOME"] = str(home)


def reaped_cpu_s(pid: int) -> float:
    """CPU seconds of the processes ``pid`` has reaped (cutime + cstime): for an sshd listener, its sessions
    and everything they ran, once they ended."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        rest = f.read().rsplit(b")", 1)[1].split()
    return (int(rest[13]) + int(rest[14])) / CLK_TCK


def machine_cpu_s() -> float:
    """Busy CPU seconds of the whole machine so far (all cores, every process, other jobs included)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def wait_sessions_gone(devices: list[Any], timeout: float = 10.0) -> None:
    """Wait until the devices' sessions have ended (so their CPU time has been reaped by the listeners)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(d.descendants() for d in devices):
        time.sleep(0.05)


def run_child(spec: dict[str, Any], devices: list[Any], timeout: float) -> dict[str, Any]:
    """One bench call in a fresh process (its own session, so a timeout ends its export workers too)."""
    used = devices[:len(spec["devices"])]
    wait_sessions_gone(devices)
    dev0, mach0 = sum(reaped_cpu_s(d.process.pid) for d in used), machine_cpu_s()
    proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:  # timeout or Ctrl-C: end the child and its export workers, then report
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    wait_sessions_gone(used)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((err or out).strip().splitlines()[-25:])
        raise RuntimeError(f"bench on {len(spec['devices'])} devices exited with status {proc.returncode}:\n{tail}")
    res = json.loads(lines[-1])
    res["device_cpu_s"] = sum(reaped_cpu_s(d.process.pid) for d in used) - dev0
    res["machine_cpu_s"] = machine_cpu_s() - mach0
    return res


def med(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def print_series(title: str, by_size: dict[int, list[dict[str, Any]]], cores: int) -> None:
    sizes = sorted(by_size)
    base = by_size[sizes[0]]
    wall1, phase1, cpu1, rss1 = (med(base, k) for k in ("wall_s", "device_phase_s", "cpu_s", "peak_rss_mib"))
    n1 = sizes[0]
    print(f"\n{title}")
    print(f"{'devices':>7} {'wall s':>7} {'wall x':>7} {'dev-phase s':>11} {'phase x':>8} {'host CPU s':>10} "
          f"{'CPU/+dev':>9} {'peak RSS MiB':>12} {'RSS/+dev':>9} {'rows':>5} {'failed':>6}")
    for n in sizes:
        runs = by_size[n]
        wall, phase, cpu, rss = (med(runs, k) for k in ("wall_s", "device_phase_s", "cpu_s", "peak_rss_mib"))
        extra = n - n1
        cpu_per = f"{(cpu - cpu1) / extra:9.3f}" if extra else f"{'-':>9}"
        rss_per = f"{(rss - rss1) / extra:8.2f}M" if extra else f"{'-':>9}"
        failed = sum(len(r["failed"]) for r in runs)
        print(f"{n:7d} {wall:7.2f} {wall / wall1:6.2f}x {phase:11.2f} {phase / phase1:7.2f}x {cpu:10.2f} "
              f"{cpu_per} {rss:12.1f} {rss_per} {med(runs, 'rows'):5.0f} {failed:6d}")
    print("  where the time goes (medians; per device: setup = connect + agent install + device facts, "
          "measure = stage artifact + agent run)")
    print(f"{'devices':>7} {'export s':>8} {'launch spread s':>15} {'setup med/max s':>15} {'measure med/max s':>17} "
          f"{'device CPU s':>12} {'/ ' + str(cores) + ' cores s':>11} {'machine busy':>12} {'export CPU s':>12}")
    for n in sizes:
        runs = by_size[n]
        dev_cpu = med(runs, "device_cpu_s")
        busy = statistics.median(r["machine_cpu_s"] / (r["child_wall_s"] * cores) for r in runs)
        print(f"{n:7d} {med(runs, 'export_s'):8.2f} {med(runs, 'launch_spread_s'):15.2f} "
              f"{med(runs, 'setup_med_s'):7.2f}/{med(runs, 'setup_max_s'):<7.2f} "
              f"{med(runs, 'measure_med_s'):8.2f}/{med(runs, 'measure_max_s'):<8.2f} "
              f"{dev_cpu:12.2f} {dev_cpu / cores:11.2f} {busy:11.0%} {med(runs, 'export_cpu_s'):12.2f}")
    for key, label in (("wall_s", "wall"), ("device_phase_s", "device phase")):
        raw = "; ".join(f"{n}: " + ", ".join(f"{r[key]:.2f}" for r in by_size[n]) for n in sizes)
        print(f"  raw {label} s per round (devices: runs): {raw}")


def print_note(results: dict[str, dict[int, list[dict[str, Any]]]], base: int, top: int, cores: int) -> None:
    """Where the largest fleet's device phase goes, from what was measured: device-side CPU against the host's."""
    m, tiny = results["measure"], results["tiny"]
    phase, dev_cpu = med(m[top], "device_phase_s"), med(m[top], "device_cpu_s")
    floor = dev_cpu / cores
    host_top, host_base = med(m[top], "cpu_s"), med(m[base], "cpu_s")
    per_extra = (host_top - host_base) / (top - base) if top > base else 0.0
    tiny_per = med(tiny[top], "device_cpu_s") / top
    print(f"\nnote: the {top} 'devices' run their agents on this same {cores}-core machine; a real fleet runs each "
          f"on its own hardware. At {top} devices (measure series) the devices used {dev_cpu:.1f} s of CPU "
          f"({dev_cpu / top:.2f} s per device), so their phase cannot be shorter than {floor:.1f} s on {cores} cores: "
          f"{floor / phase:.0%} of the {phase:.1f} s measured. With 1 timed run (tiny series) they still used "
          f"{tiny_per:.2f} s per device ({tiny_per / (dev_cpu / top):.0%} of the measure series'): what a device "
          f"costs before and besides its timed loop (the setup column: connect, agent install, the agent's device "
          f"facts; then the agent's start). Host side: the bench process used {host_top:.1f} s of CPU at {top} "
          f"devices against {host_base:.1f} s at {base} ({per_extra:+.3f} s per extra device), launch spread "
          f"{med(m[top], 'launch_spread_s'):.2f} s.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,4,16", help="fleet sizes, comma-separated (the first is the base)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2, help="warm-up iterations per device (measure series)")
    parser.add_argument("--iterations", type=int, default=20, help="minimum timed iterations per device")
    parser.add_argument("--min-seconds", type=float, default=0.5, help="minimum timed seconds per device")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one bench call may take")
    parser.add_argument("--quick", action="store_true", help="smoke run: sizes 1,2, one round")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return 0
    sizes = [1, 2] if args.quick else sorted({int(s) for s in args.sizes.split(",")})
    rounds = 1 if args.quick else args.rounds
    if sizes[0] < 1 or rounds < 1:
        parser.error("sizes must be >= 1 and rounds >= 1")
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-fleet-") as tmp:
        root = Path(tmp)
        isolate_ssh_env(root / "home")
        devices: list[Any] = []
        try:
            return measure(args, sizes, rounds, root, devices, began)
        except KeyboardInterrupt:
            print("\ninterrupted: stopping the test devices", file=sys.stderr)
            return 130
        finally:
            for dev in devices:
                dev.stop()


def measure(args: argparse.Namespace, sizes: list[int], rounds: int, root: Path, devices: list[Any],
            began: float) -> int:
    from edgekit.testing import start_sshd, write_devices_file

    for i in range(max(sizes)):
        devices.append(start_sshd(root / f"d{i}", name=f"d{i}", python=sys.executable, profile="x86"))
    devices_file = write_devices_file(root / "devices.yaml", devices)
    series = {
        "measure": {"warmup": args.warmup, "iterations": args.iterations, "min_seconds": args.min_seconds},
        "tiny": {"warmup": 0, "iterations": 1, "min_seconds": 0.0},
    }
    cores = os.cpu_count() or 1

    def one(name: str, n: int) -> dict[str, Any]:
        spec = {**series[name], "devices": [d.name for d in devices[:n]], "devices_file": str(devices_file),
                "results": str(root / "runs"), "timeout": args.timeout}
        t0 = time.monotonic()
        try:
            res = run_child(spec, devices, args.timeout)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"fleet bench: the {name} run on {n} devices took over {args.timeout:g} s (--timeout)")
        except RuntimeError as exc:
            raise SystemExit(f"fleet bench: the {name} run on {n} devices failed: {exc}")
        res["child_wall_s"] = time.monotonic() - t0
        print(f"  {name:7} {n:2d} devices: wall {res['wall_s']:6.2f} s, device phase {res['device_phase_s']:6.2f} s, "
              f"rows {res['rows']}, failed {len(res['failed'])}  (process {res['child_wall_s']:.1f} s)", flush=True)
        return res

    print(f"{MODEL}, {'/'.join(TARGETS)} {'/'.join(PRECISIONS)}, {len(devices)} loopback sshd devices on this host "
          f"({cores} cores), parallel = devices; measure: warm-up {args.warmup}, >= {args.iterations} runs and "
          f">= {args.min_seconds:g} s, 1 thread; tiny: 1 run", flush=True)
    print(f"warm-up run on all {max(sizes)} devices (not counted: installs the agent, fills caches)", flush=True)
    one("tiny", max(sizes))
    results: dict[str, dict[int, list[dict[str, Any]]]] = {name: {n: [] for n in sizes} for name in series}
    for r in range(rounds):
        print(f"round {r + 1}/{rounds}", flush=True)
        for n in sizes:
            for name in series:
                results[name][n].append(one(name, n))

    print_series(f"measure series (device work: warm-up {args.warmup}, >= {args.iterations} runs, "
                 f">= {args.min_seconds:g} s), median of {rounds} round(s)", results["measure"], cores)
    print_series(f"tiny series (device work: 1 run; host orchestration + SSH + agent start), median of {rounds} "
                 f"round(s)", results["tiny"], cores)
    print("\ncolumns: x = ratio to the smallest fleet; dev-phase = first device connecting to last device done "
          "(export excluded); host CPU = the bench process (user+sys, its threads included, export in-process "
          "for a single target) during the call; CPU/+dev, RSS/+dev = increment per device beyond the smallest "
          "fleet; device CPU = CPU reaped by the device sshds (sessions + agents, all on this host); machine busy "
          "= all of this machine's CPU use (other jobs too) over the bench process's life.")

    base, top = sizes[0], sizes[-1]
    m = results["measure"]
    ratio = med(m[top], "wall_s") / med(m[base], "wall_s")
    print_note(results, base, top, cores)
    goal = "" if (base, top) == (1, 16) else f" (the goal is stated for 1 -> 16; here {base} -> {top})"
    print(f"goal: wall at {top} devices <= 1.5x of {base} device{'s' if base > 1 else ''}: "
          f"{'PASS' if ratio <= 1.5 else 'FAIL'} ({ratio:.2f}){goal}")
    print(f"took {time.monotonic() - began:.0f} s")
    failed = {f"{name} {n}": r["failed"] for name in series for n in sizes for r in results[name][n] if r["failed"]}
    if failed:
        print(f"fleet bench: devices failed in some runs, so those figures are not comparable: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
