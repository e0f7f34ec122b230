"""Fault matrix: each fault injected for real into an ``edgekit.bench`` fleet run, and what the run did about it.

Every case starts its own real sshd test devices (edgekit.testing): on loopback, or in network namespaces
behind a veth link (root, iproute2, nftables; the subnet is blackholed first, links are cut from the namespace
side, everything is removed afterwards). The faults and the checks are ``edgekit.testing._faults``, the same
code tests/integration/test_network_faults.py runs:

- link cut mid-push (a 400 kbit/s link, cut while an artifact is being pushed), restored or left down;
- 5 % packet loss both ways + 100 ms added each way (nftables drop + a delaying relay), against the same
  device unimpaired;
- a device unreachable from the start, a refused port (namespace and loopback), a silent host;
- sshd killed with its sessions during an agent run; the agent SIGKILLed (as the OOM killer would).

Prints: fault | expected outcome | observed outcome | time to detect (s) | rows lost | ok. "time to detect" is
from the fault (the cut, the kill, or the device's first connection attempt) to the host reporting it (a retry
or a failed row). "rows lost" counts rows that should be in the run and are not, in the returned frame or the
stored run: every row of the healthy devices and every row measured before the fault; it must be 0. Exits 1 if
any row is lost or any outcome is not the expected one; cases that cannot run here are printed as
"skipped: <reason>" and do not fail the run.

    sudo .venv/bin/python scripts/bench/faults.py [--only link-cut-restored,silent-host] [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edgekit.testing._faults import CASES, FaultLab, Observation, unavailable

COLUMNS = ("fault", "expected outcome", "observed outcome", "time to detect (s)", "rows lost", "ok")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help=f"comma-separated cases: {', '.join(c.name for c in CASES)}")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    args = parser.parse_args()
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)  # a dead link is the point here: no tracebacks
    chosen = CASES
    if args.only:
        names = args.only.split(",")
        unknown = sorted(set(names) - {c.name for c in CASES})
        if unknown:
            parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(c.name for c in CASES)}")
        chosen = [c for c in CASES if c.name in names]

    rows: list[dict[str, Any]] = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-faults-") as tmp:
        for case in chosen:
            reason = unavailable(case)
            if reason:
                rows.append(_row(case.name, "-", f"skipped: {reason}", None, None, None))
                continue
            print(f"running {case.name} ...", file=sys.stderr, flush=True)
            start = time.monotonic()
            obs = _run(case, Path(tmp) / case.name)
            took = time.monotonic() - start
            failed |= not obs.ok
            rows.append(_row(obs.fault, obs.expected, obs.observed, obs.detect_s, len(obs.rows_lost), obs.ok,
                             problems=obs.problems + [f"row lost: {r}" for r in obs.rows_lost],
                             seconds=round(took, 1), details=obs.details))
            print(f"  {case.name}: {'ok' if obs.ok else 'NOT AS EXPECTED'} in {took:.0f} s", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=1, default=str))
    else:
        _table(rows)
    return 1 if failed else 0


def _run(case: Any, root: Path) -> Observation:
    """One case in a lab of its own; a case that crashes is an observation too (and not the expected one)."""
    lab = FaultLab(root, python=sys.executable)
    try:
        return case.run(lab)
    except Exception as exc:  # noqa: BLE001 - report it in the table and go on with the other cases
        return Observation(case.name, "-", f"error: {type(exc).__name__}: {exc}",
                           problems=[f"{type(exc).__name__}: {exc}"])
    finally:
        lab.close()


def _row(fault: str, expected: str, observed: str, detect: float | None, lost: int | None, ok: bool | None,
         **extra: Any) -> dict[str, Any]:
    return {"fault": fault, "expected outcome": expected, "observed outcome": observed,
            "time to detect (s)": None if detect is None else round(detect, 2), "rows lost": lost, "ok": ok,
            **extra}


def _table(rows: list[dict[str, Any]]) -> None:
    def cell(row: dict[str, Any], col: str) -> str:
        value = row[col]
        if value is None:
            return "-"
        if col == "ok":
            return "yes" if value else "NO"
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    cells = [[cell(r, c) for c in COLUMNS] for r in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(COLUMNS)]
    print(" | ".join(c.ljust(w) for c, w in zip(COLUMNS, widths)))
    print("-+-".join("-" * w for w in widths))
    for line in cells:
        print(" | ".join(v.ljust(w) for v, w in zip(line, widths)))
    for r in rows:
        for problem in r.get("problems") or []:
            print(f"{r['fault']}: {problem}")


if __name__ == "__main__":
    sys.exit(main())
