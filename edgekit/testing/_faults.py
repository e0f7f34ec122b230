"""Faults, injected for real into fleet runs: one implementation shared by the tests and ``scripts/bench/faults.py``.

Fault injectors (each labelled FAULT INJECTION):

- ``fault_python``: a device python that SIGKILLs its first agent run (what the OOM killer does) or hangs;
- ``SilentHost``: a port that accepts connections and never speaks;
- ``DelayRelay``: a TCP relay on loopback adding a fixed delay each way (``netem`` is not in every kernel);
- ``PushCutter``: cuts a namespace device's link from the namespace side while an artifact is being pushed;
- ``SshdKiller``: kills a device's sshd and its sessions while its n-th agent run is running.

The fault matrix: ``CASES``, each a function taking a ``FaultLab`` (where devices and runs come from) and
returning an ``Observation``: what was expected, what happened, how long the host took to notice, how many
rows were lost, and ``problems`` (empty when the outcome is the expected one). Every case is a real
``edgekit.bench`` run on real sshd test devices (loopback, or network namespaces: ``_netns``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, Queue
from typing import TYPE_CHECKING, Any, Callable

from edgekit._fs import sha256_file
from edgekit.testing._netns import NetnsDevice, netns_unavailable, start_netns_device
from edgekit.testing._sshd import TestDevice, start_sshd

if TYPE_CHECKING:
    from edgekit.fleet import FleetResult

MODEL = "digits-cnn"
TARGETS = ["onnx"]
RATE_KBIT = 400  # a slow link: the ~180 KB fp32 artifact takes about 3.6 s to push
DETECT_BOUND_S = 25.0  # a dead link must be noticed well before this (TCP user timeout 10 s + keepalives)
DEVICE_TIMEOUT_S = 90.0
_ARTIFACT_SUFFIXES = (".onnx", ".data", ".tflite", ".pte")


# ---- fault injectors ---------------------------------------------------------------------------------------


def fault_python(path: Path, python: str, *, kill_after: float | None = None, hang: bool = False) -> str:
    """FAULT INJECTION: a device python that SIGKILLs its first agent ``run`` after ``kill_after`` s (what
    the OOM killer does), or makes every ``run`` hang; ``info`` and uploads run normally.

    The first killed run touches ``path.with_suffix(".killed")`` as it starts: the kill lands ``kill_after`` s
    after that file's mtime."""
    marker = path.with_suffix(".killed")
    if hang:
        action = 'if [ "$2" = run ]; then exec sleep 600; fi'
    else:
        action = (f'if [ "$2" = run ] && [ ! -e {marker} ]; then touch {marker}; '
                  f'(sleep {kill_after}; kill -9 $$) & fi')
    path.write_text(f"#!/bin/sh\n# edgekit test fault injection\n{action}\nexec {python} \"$@\"\n")
    path.chmod(0o755)
    return str(path)


class SilentHost:
    """FAULT INJECTION: a TCP port that accepts connections and never says a word (a hung device or a
    black-holing proxy)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                continue

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=2)
        for c in [*self.conns, self.sock]:
            c.close()


class DelayRelay:
    """FAULT INJECTION: a TCP relay on 127.0.0.1 that forwards to ``target`` ``delay`` seconds late, each way.

    A delay line, not a throttle: each chunk is stamped when it arrives and sent when its time comes, so the
    link's round trip grows by ``2 * delay`` and its throughput is bounded only by TCP's window over that RTT.
    """

    def __init__(self, target: tuple[str, int], delay: float = 0.1) -> None:
        self.target, self.delay = target, delay
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.socks: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, name="delay-relay", daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                continue
            try:
                server = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()  # the device is unreachable: so is the relay
                continue
            for s in (client, server):
                s.settimeout(None)  # blocking; close() shuts them down, which wakes every blocked call
                self.socks.append(s)
            for src, dst in ((client, server), (server, client)):
                line: Queue[tuple[float, bytes]] = Queue()
                for fn, args in ((self._read, (src, line)), (self._write, (line, dst))):
                    t = threading.Thread(target=fn, args=args, name="delay-relay", daemon=True)
                    t.start()
                    self.threads.append(t)

    def _read(self, src: socket.socket, line: Queue[tuple[float, bytes]]) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            line.put((time.monotonic() + self.delay, data))
            if not data:
                return

    def _write(self, line: Queue[tuple[float, bytes]], dst: socket.socket) -> None:
        while not self.stop.is_set():
            try:
                due, data = line.get(timeout=0.2)
            except Empty:
                continue
            wait = due - time.monotonic()
            if wait > 0 and self.stop.wait(wait):
                return
            try:
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        for s in self.socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self.threads:
            t.join(timeout=2)
        for s in [*self.socks, self.sock]:
            s.close()


class PushCutter:
    """FAULT INJECTION: cut ``device``'s link ``after`` s into its first artifact push (a ``.tmp-*`` group in
    its store holding a model file), from the namespace side. ``cut_at`` (monotonic) says when; ``in_flight``
    lists the unfinished group's files, as seen just after the cut (empty: the push had already finished)."""

    def __init__(self, device: NetnsDevice, after: float = 0.5, timeout: float = 300.0) -> None:
        self.device, self.after, self.timeout = device, after, timeout
        self.cut_at: float | None = None
        self.in_flight: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="push-cutter", daemon=True)

    def start(self) -> PushCutter:
        self.thread.start()
        return self

    def _run(self) -> None:
        store = self.device.workdir / "store"
        deadline = time.monotonic() + self.timeout
        while not self.stop.is_set() and time.monotonic() < deadline:
            pushing = [d for d in _tmp_groups(store) if any(f.endswith(_ARTIFACT_SUFFIXES) for f in _names(d))]
            if pushing:
                if self.stop.wait(self.after):
                    return
                self.device.link_down()
                self.cut_at = time.monotonic()
                self.in_flight = [f"{d.name}/{f}" for d in pushing if d.exists() for f in _names(d)]
                return
            time.sleep(0.02)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


class SshdKiller:
    """FAULT INJECTION: kill ``device``'s sshd and every session (the agent with them) ``after`` s into its
    ``nth`` agent run: a device that crashes or reboots mid-run. ``killed_at`` (monotonic) says when."""

    def __init__(self, device: NetnsDevice, nth: int = 2, after: float = 0.5, timeout: float = 300.0) -> None:
        self.device, self.nth, self.after, self.timeout = device, nth, after, timeout
        self.killed_at: float | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="sshd-killer", daemon=True)

    def start(self) -> SshdKiller:
        self.thread.start()
        return self

    def _run(self) -> None:
        seen: set[int] = set()
        deadline = time.monotonic() + self.timeout
        while not self.stop.is_set() and time.monotonic() < deadline:
            seen.update(pid for pid in self.device.descendants() if _is_agent_run(pid))
            if len(seen) >= self.nth:
                if self.stop.wait(self.after):
                    return
                self.device.kill_sshd()
                self.killed_at = time.monotonic()
                return
            time.sleep(0.02)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


# ---- what a run left behind --------------------------------------------------------------------------------


def store_problems(workdir: Path, settle_s: float = 30.0) -> list[str]:
    """What is wrong with a device's content-addressed store: an unfinished ``.tmp-*`` group still there after
    ``settle_s`` (a dropped session's receiver needs a moment to notice), or a published group whose files do
    not hash to its folder's name (a partial or corrupted group that an agent could have run)."""
    store = Path(workdir) / "store"
    deadline = time.monotonic() + settle_s
    while _tmp_groups(store) and time.monotonic() < deadline:
        time.sleep(0.2)
    problems = [f"unfinished transfer left in the store: {d.name} ({', '.join(_names(d)) or 'empty'})"
                for d in _tmp_groups(store)]
    for group in sorted(store.iterdir()) if store.is_dir() else []:
        if group.name.startswith("."):
            continue
        digests = {f.name: sha256_file(f) for f in group.iterdir() if f.is_file()}
        if hashlib.sha256(json.dumps(sorted(digests.items())).encode()).hexdigest() != group.name:
            problems.append(f"published group {group.name[:16]} does not match its files {sorted(digests)}")
    return problems


def rows_lost(result: FleetResult, results: Path, expected: dict[str, set[tuple[str, str]]]) -> list[str]:
    """Rows that should be in the run and are not: every (target, precision) of the devices in ``expected``,
    plus every row any device had measured (journal) before whatever happened to it; each must be a measured
    row both in ``result.df`` and in the stored run (``edgekit.load_run``)."""
    import edgekit
    from edgekit.results.store import Run

    want = {(dev, t, p, 1) for dev, keys in expected.items() for t, p in keys}
    want |= {_key(r["row"]) for r in Run(result.run_dir).records("row") if _measured(r["row"])}
    stored = edgekit.load_run(result.run_id, results)
    kept = [{_key(r) for r in df.to_dict(orient="records") if _measured(r)} for df in (result.df, stored)]
    return sorted(f"{d}/{t}/{p}/t{n}" for d, t, p, n in want - (kept[0] & kept[1]))


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    threads = row.get("threads")
    return row.get("device"), row.get("target"), row.get("precision"), None if threads is None else int(threads)


def _measured(row: dict[str, Any]) -> bool:
    lat = row.get("latency_ms_p50")
    return row.get("stage") == "done" and not row.get("error") and lat is not None and lat == lat and lat > 0


def _tmp_groups(store: Path) -> list[Path]:
    try:
        return [d for d in store.iterdir() if d.name.startswith(".tmp-")]
    except OSError:
        return []


def _names(folder: Path) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except OSError:
        return []


def _is_agent_run(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return b"run" in argv and b"--request" in argv and any(a.endswith(b".pyz") for a in argv)


# ---- the lab: devices, runs, events ------------------------------------------------------------------------


class Events:
    """``on_progress`` for ``edgekit.bench``: every (monotonic time, device, stage, detail), and hooks."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, str | None, str, str]] = []
        self.hooks: list[tuple[str, str, Callable[[], None]]] = []
        self.lock = threading.Lock()

    def __call__(self, device: str | None, stage: str, detail: str) -> None:
        with self.lock:
            self.seen.append((time.monotonic(), device, stage, detail))
            hooks = [fn for d, s, fn in self.hooks if d == device and s == stage]
        for fn in hooks:
            fn()

    def on(self, device: str, stage: str, fn: Callable[[], None]) -> None:
        """Call ``fn()`` (in the device's thread) each time ``device`` reports ``stage``."""
        self.hooks.append((device, stage, fn))

    def first(self, device: str, stages: tuple[str, ...], after: float = 0.0) -> float | None:
        with self.lock:
            return next((t for t, d, s, _ in self.seen if d == device and s in stages and t >= after), None)


@dataclass
class Observation:
    """One row of the fault matrix."""

    fault: str
    expected: str
    observed: str = ""
    detect_s: float | None = None
    rows_lost: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # empty: the outcome was the expected one
    result: Any = None  # the FleetResult
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.rows_lost


DeviceStarter = Callable[..., TestDevice]


class FaultLab:
    """Where a case gets its devices and runs: folders under ``root``; devices from the given starters (pytest's
    factories, which stop them) or started here and stopped by ``close()``."""

    def __init__(self, root: Path, *, sshd: DeviceStarter | None = None, netns: DeviceStarter | None = None,
                 python: str | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.results = self.root / "runs"
        self.python = python
        self._sshd, self._netns = sshd, netns
        self._owned: list[Any] = []
        self._runs = 0

    def sshd(self, name: str, **kw: Any) -> TestDevice:
        if self._sshd is not None:
            return self._sshd(name, **kw)
        kw.setdefault("python", self.python)
        return self.own(start_sshd(self.root / f"sshd-{name}", name=name, **kw))

    def netns(self, name: str, **kw: Any) -> NetnsDevice:
        if self._netns is not None:
            dev = self._netns(name, **kw)
            assert isinstance(dev, NetnsDevice)
            return dev
        kw.setdefault("python", self.python)
        return self.own(start_netns_device(self.root / f"netns-{name}", name=name, **kw))

    def own(self, thing: Any) -> Any:
        """Stop (``stop()``) or close (``close()``) ``thing`` when the lab closes."""
        self._owned.append(thing)
        return thing

    def bench(self, devices: list[TestDevice | dict[str, Any]], *, fleet: Any, events: Events,
              precisions: tuple[str, ...] = ("fp32",), config: Any = None) -> FleetResult:
        import edgekit
        from edgekit.testing import write_devices_file

        self._runs += 1
        names = [d.name if isinstance(d, TestDevice) else d["name"] for d in devices]
        devices_file = write_devices_file(self.root / f"devices-{self._runs}.yaml", devices)
        return edgekit.bench(MODEL, names, targets=TARGETS, precisions=list(precisions), config=config or quick(),
                             fleet=fleet, devices_file=devices_file, results=self.results, on_progress=events)

    def close(self) -> None:
        """Stop and close what the lab owns, newest first; all of it, even if one fails."""
        errors = []
        while self._owned:
            thing = self._owned.pop()
            try:
                thing.stop() if isinstance(thing, TestDevice) else thing.close()
            except Exception as exc:  # noqa: BLE001 - the rest must still be stopped; re-raised below
                errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self) -> FaultLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def quick(min_seconds: float = 0.05) -> Any:
    import edgekit

    return edgekit.BenchConfig(warmup_iterations=2, warmup_seconds=0, min_iterations=10, min_seconds=min_seconds,
                               threads=1, energy=False)


def fleet_config(**kw: Any) -> Any:
    import edgekit

    return edgekit.FleetConfig(**{"parallel": 4, "retries": 2, "backoff_s": 1.0, "device_timeout": DEVICE_TIMEOUT_S,
                                  "grace_s": 10.0, **kw})


# ---- checks shared by the cases ----------------------------------------------------------------------------


def _expect_done(obs: Observation, device: str) -> None:
    out = obs.result[device]
    if not out.ok:
        obs.problems.append(f"{device} failed at {out.stage}: {out.error}")


def _expect_failed(obs: Observation, device: str, stage: str, causes: tuple[str, ...], started: float | None,
                   events: Events) -> None:
    """``device`` failed at ``stage`` with one of ``causes`` in its row, within the device timeout."""
    out = obs.result[device]
    rows = obs.result.df[(obs.result.df["device"] == device) & obs.result.df["target"].isna()]
    if out.ok:
        obs.problems.append(f"{device} succeeded; expected a failure at {stage}")
        return
    if out.stage != stage:
        obs.problems.append(f"{device} failed at stage {out.stage!r}, expected {stage!r}: {out.error}")
    if not any(c in (out.error or "") for c in causes):
        obs.problems.append(f"{device}'s error does not say why ({' / '.join(causes)}): {out.error}")
    if len(rows) != 1 or rows.iloc[0]["stage"] != out.stage or rows.iloc[0]["error"] != out.error:
        obs.problems.append(f"{device}: expected one failed row with its stage and cause, got {len(rows)}")
    ended = events.first(device, ("failed",))
    if started is None or ended is None or ended - started >= DEVICE_TIMEOUT_S:
        obs.problems.append(f"{device}: not failed within the device timeout {DEVICE_TIMEOUT_S:g} s")


def _detect(obs: Observation, events: Events, device: str, since: float | None, bound: float) -> None:
    noticed = events.first(device, ("retrying", "failed"), after=since or 0.0) if since is not None else None
    obs.detect_s = None if noticed is None or since is None else noticed - since
    if obs.detect_s is None:
        obs.problems.append(f"the host never noticed the fault on {device}")
    elif obs.detect_s > bound:
        obs.problems.append(f"the host took {obs.detect_s:.1f} s to notice the fault on {device} (bound {bound:g} s)")


def _finish(obs: Observation, expected: dict[str, set[tuple[str, str]]], results: Path) -> Observation:
    obs.rows_lost = rows_lost(obs.result, results, expected)
    return obs


def _retries(result: FleetResult, device: str) -> list[str]:
    """What each retry of ``device`` was after (from the run's journal)."""
    from edgekit.results.store import Run

    return [f"try {r['attempt']} ({r['stage']}): {r['error']}" for r in Run(result.run_dir).records("retry")
            if r["device"] == device]


def _cause(error: str | None, width: int = 70) -> str:
    text = (error or "").split(": ", 1)[-1] if error and error.startswith("device '") else (error or "")
    return text if len(text) <= width else text[: width - 3] + "..."


def _all_keys(precisions: tuple[str, ...]) -> set[tuple[str, str]]:
    return {(t, p) for t in TARGETS for p in precisions}


# ---- the cases ---------------------------------------------------------------------------------------------


def link_cut_mid_push(lab: FaultLab, *, restore: bool = True) -> Observation:
    """A rate-limited namespace device's link is cut during an artifact push; with ``restore`` it comes back
    once the host has noticed, else it stays down. A loopback device runs beside it."""
    obs = Observation(
        "link cut mid-push, restored" if restore else "link cut mid-push, stays down",
        f"noticed < {DETECT_BOUND_S:g} s, retried, all rows; no partial group" if restore
        else f"noticed < {DETECT_BOUND_S:g} s, failed row (connect) with the cause; no partial group")
    net = lab.netns("cut", profile="x86")
    loop = lab.sshd("loop", profile="x86")
    net.shape(RATE_KBIT)
    events = Events()
    if restore:
        events.on(net.name, "retrying", net.link_up)
    cutter = PushCutter(net).start()
    try:
        obs.result = lab.bench([{**net.entry(), "connect_timeout": 4}, loop], events=events,
                               fleet=fleet_config(retries=3 if restore else 1, backoff_s=1.0))
    finally:
        cutter.close()
        net.link_up()  # so the device's dropped session ends and its unfinished transfer is cleaned up
    obs.details.update(cut_at=cutter.cut_at, in_flight=cutter.in_flight, retries=_retries(obs.result, net.name))
    if cutter.cut_at is None:
        obs.problems.append("no artifact push was seen: the link was never cut")
    elif not cutter.in_flight:
        obs.problems.append("the push had already finished when the link was cut")
    _detect(obs, events, net.name, cutter.cut_at, DETECT_BOUND_S)
    out = obs.result[net.name]
    if restore:
        _expect_done(obs, net.name)
        if out.attempts < 2:
            obs.problems.append(f"{net.name} was not retried (attempts {out.attempts})")
        later = [_cause(r.split("): ", 1)[-1], 40) for r in obs.details["retries"][1:]]  # a retry that failed too
        obs.observed = (f"retried ({out.attempts} tries{': then ' + '; '.join(later) if later else ''}), "
                        f"{out.rows} rows measured" if out.ok else f"failed at {out.stage}: {_cause(out.error)}")
    else:
        _expect_failed(obs, net.name, "connect", ("cannot reach", "no answer", "handshake"),
                       events.first(net.name, ("connecting",)), events)
        obs.observed = "ok?!" if out.ok else f"failed at {out.stage}: {_cause(out.error)}"
    _expect_done(obs, loop.name)
    store = store_problems(net.workdir)
    obs.problems += store
    obs.observed += "; store clean" if not store else f"; {len(store)} store problems"
    expected = {loop.name: _all_keys(("fp32",))} | ({net.name: _all_keys(("fp32",))} if restore else {})
    return _finish(obs, expected, lab.results)


def loss_and_delay(lab: FaultLab, *, loss: int = 5, delay: float = 0.1) -> Observation:
    """The same namespace device benchmarked twice: as it is, then with ``loss`` % of packets dropped both ways
    and ``delay`` s added each way (a relay in front of it); the second must succeed, and take longer."""
    obs = Observation(f"{loss}% loss + {delay * 1000:.0f} ms delay", "succeeds, slower than unimpaired")
    net = lab.netns("lossy", profile="x86")
    times: list[float] = []
    results = []
    for impaired in (False, True):
        events = Events()
        entry: dict[str, Any] = net.entry()
        if impaired:
            shutil.rmtree(net.workdir / "store", ignore_errors=True)  # push everything again, as the first run did
            net.drop(loss)
            relay = lab.own(DelayRelay((net.host, net.port), delay))
            entry = net.via("127.0.0.1", relay.port)
        result = lab.bench([entry], events=events, fleet=fleet_config())
        results.append(result)
        start, done = events.first(net.name, ("connecting",)), events.first(net.name, ("done", "failed"))
        times.append((done - start) if start is not None and done is not None else float("nan"))
        if not result[net.name].ok:
            obs.problems.append(f"{'impaired' if impaired else 'unimpaired'} run failed at "
                                f"{result[net.name].stage}: {result[net.name].error}")
    net.undrop()
    obs.result = results[-1]
    ratio = times[1] / times[0] if times[0] > 0 else float("nan")
    obs.details.update(seconds=times, ratio=ratio)
    if not ratio > 1.0:
        obs.problems.append(f"the impaired run was not slower: {times[1]:.2f} s vs {times[0]:.2f} s")
    obs.observed = (f"ok, {times[1]:.1f} s vs {times[0]:.1f} s ({ratio:.1f}x)" if not obs.problems
                    else "; ".join(obs.problems))
    obs.rows_lost = [lost for result in results for lost in rows_lost(result, lab.results, {net.name: _all_keys(("fp32",))})]
    return obs


def unreachable(lab: FaultLab) -> Observation:
    """A namespace device whose link is down before the run starts."""
    obs = Observation("unreachable from the start", "failed row (connect) with the cause in time")
    net = lab.netns("down", profile="x86")
    loop = lab.sshd("loop", profile="x86")
    net.link_down()
    events = Events()
    try:
        obs.result = lab.bench([{**net.entry(), "connect_timeout": 3}, loop], events=events,
                               fleet=fleet_config(retries=1, backoff_s=0.5))
    finally:
        net.link_up()
    return _connect_failure(obs, lab, events, net.name, loop.name, ("no answer", "cannot reach"))


def refused_netns(lab: FaultLab) -> Observation:
    """A namespace device reached on a port nothing listens on: the device answers with a reset."""
    obs = Observation("refused port (namespace device)", "failed row (connect) with the cause in time")
    net = lab.netns("refuse", profile="x86")
    loop = lab.sshd("loop", profile="x86")
    events = Events()
    obs.result = lab.bench([{**net.entry(), "port": 2222}, loop], events=events,
                           fleet=fleet_config(retries=1, backoff_s=0.5))
    return _connect_failure(obs, lab, events, net.name, loop.name, ("connection refused",))


def refused_loopback(lab: FaultLab) -> Observation:
    """A loopback device whose sshd is gone: its port refuses."""
    obs = Observation("refused port (loopback)", "failed row (connect) with the cause in time")
    gone = lab.sshd("gone", profile="x86")
    entry = gone.entry()
    gone.stop()
    loop = lab.sshd("loop", profile="x86")
    events = Events()
    obs.result = lab.bench([entry, loop], events=events, fleet=fleet_config(retries=1, backoff_s=0.5))
    return _connect_failure(obs, lab, events, "gone", loop.name, ("connection refused",))


def silent_host(lab: FaultLab) -> Observation:
    """A port that accepts and never speaks (connect_timeout 2 s)."""
    obs = Observation("silent host", "failed row (connect) with the cause in time")
    loop = lab.sshd("loop", profile="x86")
    silent = lab.own(SilentHost())
    entry = {**loop.entry(), "name": "silent", "port": silent.port, "connect_timeout": 2}
    events = Events()
    obs.result = lab.bench([entry, loop], events=events, fleet=fleet_config(retries=1, backoff_s=0.5))
    return _connect_failure(obs, lab, events, "silent", loop.name, ("SSH handshake", "no answer"))


def _connect_failure(obs: Observation, lab: FaultLab, events: Events, device: str, other: str,
                     causes: tuple[str, ...]) -> Observation:
    started = events.first(device, ("connecting",))
    _expect_failed(obs, device, "connect", causes, started, events)
    _detect(obs, events, device, started, DETECT_BOUND_S)
    _expect_done(obs, other)
    out = obs.result[device]
    obs.observed = "ok?!" if out.ok else f"failed at {out.stage} ({out.attempts} tries): {_cause(out.error)}"
    return _finish(obs, {other: _all_keys(("fp32",))}, lab.results)


def sshd_killed_mid_run(lab: FaultLab) -> Observation:
    """A namespace device's sshd and sessions are killed during its second agent run (fp32 measured by then)."""
    precisions = ("fp32", "int8")
    obs = Observation("sshd killed mid-run", "failed row with the cause in time; rows before it kept")
    net = lab.netns("crash", profile="x86")
    loop = lab.sshd("loop", profile="x86")
    events = Events()
    killer = SshdKiller(net, nth=2).start()
    try:
        obs.result = lab.bench([net, loop], events=events, precisions=precisions, config=quick(min_seconds=2.0),
                               fleet=fleet_config(retries=1, backoff_s=0.5))
    finally:
        killer.close()
    obs.details.update(killed_at=killer.killed_at)
    if killer.killed_at is None:
        obs.problems.append("the device's second agent run was never seen: sshd was not killed")
    _detect(obs, events, net.name, killer.killed_at, 10.0)
    _expect_failed(obs, net.name, "connect", ("connection refused",), events.first(net.name, ("connecting",)), events)
    _expect_done(obs, loop.name)
    out = obs.result[net.name]
    kept = sum(1 for r in obs.result.df[obs.result.df["device"] == net.name].to_dict(orient="records") if _measured(r))
    if kept < 1:
        obs.problems.append(f"{net.name}: the row measured before the crash is missing")
    obs.observed = "ok?!" if out.ok else f"failed at {out.stage}: {_cause(out.error, 50)}; {kept} earlier row kept"
    return _finish(obs, {loop.name: _all_keys(precisions)}, lab.results)


def agent_sigkill(lab: FaultLab) -> Observation:
    """The device's first agent run is SIGKILLed 0.5 s in (as the OOM killer would); its other runs are fine."""
    precisions = ("fp32", "int8")
    obs = Observation("agent SIGKILL", "that row failed with the cause; every other row measured")
    wrapper = lab.root / "killer-python"
    python = lab.python or _host_python()
    killer = lab.sshd("killer", profile="x86", python=fault_python(wrapper, python, kill_after=0.5))
    loop = lab.sshd("loop", profile="x86")
    events = Events()
    obs.result = lab.bench([killer, loop], events=events, precisions=precisions, config=quick(min_seconds=1.0),
                           fleet=fleet_config())
    from edgekit.results.store import Run

    marker = wrapper.with_suffix(".killed")
    failed = [r for r in Run(obs.result.run_dir).records("row") if r["row"]["device"] == killer.name
              and r["row"].get("error")]
    if marker.exists() and failed:
        obs.detect_s = failed[0]["time"] - (marker.stat().st_mtime + 0.5)
    rows = obs.result.df[obs.result.df["device"] == killer.name].to_dict(orient="records")
    bad = [r for r in rows if r["error"]]
    if len(bad) != 1 or "killed" not in bad[0]["error"] or bad[0]["stage"] != "measure":
        obs.problems.append(f"expected exactly one killed row at stage measure, got {[r['error'] for r in bad]}")
    _expect_done(obs, loop.name)
    obs.observed = (f"{len(bad)} row failed ({_cause(bad[0]['error'], 40) if bad else '-'}), "
                    f"{sum(_measured(r) for r in rows)} measured")
    return _finish(obs, {loop.name: _all_keys(precisions)}, lab.results)


def _host_python() -> str:
    import sys

    return sys.executable


@dataclass
class Case:
    name: str
    run: Callable[[FaultLab], Observation]
    needs_netns: bool


CASES = [
    Case("link-cut-restored", link_cut_mid_push, True),
    Case("link-cut-down", lambda lab: link_cut_mid_push(lab, restore=False), True),
    Case("loss-delay", loss_and_delay, True),
    Case("unreachable", unreachable, True),
    Case("refused-netns", refused_netns, True),
    Case("sshd-killed", sshd_killed_mid_run, True),
    Case("agent-sigkill", agent_sigkill, False),
    Case("refused-loopback", refused_loopback, False),
    Case("silent-host", silent_host, False),
]


def unavailable(case: Case) -> str | None:
    """Why ``case`` cannot run on this machine, or None."""
    if not Path("/usr/sbin/sshd").exists():
        return "sshd not installed: apt-get install -y openssh-server"
    return netns_unavailable() if case.needs_netns else None
