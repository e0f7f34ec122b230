"""Network faults in fleet runs, on test devices in network namespaces (real sshd behind a veth link).

Each fault is real: a link cut from the namespace side (``ip link set down``), a token-bucket rate limit
(``tc tbf``) so a push lasts seconds, random packet drop by nftables inside the namespace, a delaying TCP relay,
a port nothing listens on, and an sshd killed with its sessions. The faults and the checks of what a run must
look like afterwards live in ``edgekit.testing._faults``, shared with ``scripts/bench/faults.py``.

Needs root, iproute2 and nftables (skipped saying so, or failed where $EDGEKIT_REQUIRE_NETNS is set).
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from edgekit.testing import _netns
from edgekit.testing._faults import (
    DETECT_BOUND_S, DEVICE_TIMEOUT_S, DelayRelay, FaultLab, Observation, link_cut_mid_push, loss_and_delay,
    refused_netns, sshd_killed_mid_run, unreachable,
)

pytestmark = [pytest.mark.ssh, pytest.mark.slow, pytest.mark.netns]


@pytest.fixture
def lab(sshd_device_factory: Any, netns_device_factory: Any, isolated_ssh_env: Path,
        tmp_path: Path) -> Iterator[FaultLab]:
    """Loopback and namespace devices from the plugin's factories (stopped by them); relays closed here."""
    lab = FaultLab(tmp_path, sshd=sshd_device_factory, netns=netns_device_factory)
    try:
        yield lab
    finally:
        lab.close()


def _explain(obs: Observation) -> str:
    return (f"observed: {obs.observed}\nproblems: {obs.problems}\nrows lost: {obs.rows_lost}\n"
            f"detect: {obs.detect_s}\ndetails: {obs.details}")


def _rows(obs: Observation, device: str) -> dict[tuple[str, str], dict[str, Any]]:
    df = obs.result.df
    return {(r["target"], r["precision"]): r for r in df[df["device"] == device].to_dict(orient="records")}


def test_a_link_cut_mid_push_is_noticed_in_seconds_retried_and_never_runs_a_partial_group(lab: FaultLab) -> None:
    obs = link_cut_mid_push(lab, restore=True)
    assert not obs.problems and not obs.rows_lost, _explain(obs)
    # the cut landed in the middle of an artifact's push (its unfinished group was still there)
    assert any(f.endswith((".onnx", ".onnx.data")) for f in obs.details["in_flight"]), _explain(obs)
    # noticed by the TCP user timeout and keepalives, not after a 40 s+ hang, as a lost connection
    assert obs.detect_s is not None and obs.detect_s < DETECT_BOUND_S, _explain(obs)
    assert "connection lost" in obs.details["retries"][0], _explain(obs)
    cut, loop = obs.result["cut"], obs.result["loop"]
    assert cut.ok and cut.attempts >= 2 and loop.ok, _explain(obs)
    # the retry pushed again and measured: the same bytes as the other device ran, so the same answers
    mine, theirs = _rows(obs, "cut")[("onnx", "fp32")], _rows(obs, "loop")[("onnx", "fp32")]
    assert mine["stage"] == "done" and mine["latency_ms_p50"] > 0 and mine["attempts"] >= 2
    assert mine["device_accuracy"] == theirs["device_accuracy"]
    # store_problems (in obs.problems) found no .tmp group left and every published group matching its name


def test_a_link_that_stays_down_is_a_failed_row_within_the_device_timeout(lab: FaultLab) -> None:
    obs = link_cut_mid_push(lab, restore=False)
    assert not obs.problems and not obs.rows_lost, _explain(obs)
    assert obs.detect_s is not None and obs.detect_s < DETECT_BOUND_S, _explain(obs)
    cut = obs.result["cut"]
    assert cut.stage == "connect" and ("cannot reach" in cut.error or "no answer" in cut.error), _explain(obs)
    (row,) = _rows(obs, "cut").values()
    assert row["stage"] == "connect" and row["error"] == cut.error and "after 2 tries" in row["error"]
    assert _rows(obs, "loop")[("onnx", "fp32")]["latency_ms_p50"] > 0  # the other device's row is kept


def test_loss_and_delay_make_a_run_slower_but_it_succeeds(lab: FaultLab) -> None:
    obs = loss_and_delay(lab, loss=5, delay=0.1)
    assert not obs.problems and not obs.rows_lost, _explain(obs)
    assert obs.result["lossy"].ok
    assert _rows(obs, "lossy")[("onnx", "fp32")]["latency_ms_p50"] > 0
    unimpaired, impaired = obs.details["seconds"]
    assert impaired > unimpaired, _explain(obs)  # a ratio, no tight bound: this machine is shared


def test_a_device_unreachable_from_the_start_fails_at_connect_with_the_cause(lab: FaultLab) -> None:
    obs = unreachable(lab)
    assert not obs.problems and not obs.rows_lost, _explain(obs)
    down = obs.result["down"]
    assert down.stage == "connect" and ("no answer" in down.error or "cannot reach" in down.error), _explain(obs)
    assert down.attempts == 2 and obs.detect_s is not None and obs.detect_s < DEVICE_TIMEOUT_S
    assert obs.result["loop"].ok


def test_a_refused_port_fails_at_connect_with_the_cause(lab: FaultLab) -> None:
    obs = refused_netns(lab)
    assert not obs.problems and not obs.rows_lost, _explain(obs)
    refused = obs.result["refuse"]
    assert refused.stage == "connect" and "connection refused" in refused.error, _explain(obs)
    assert obs.detect_s is not None and obs.detect_s < 5, _explain(obs)  # a reset comes back at once
    assert obs.result["loop"].ok


def test_sshd_killed_mid_run_is_a_failed_row_and_the_rows_before_it_are_kept(lab: FaultLab) -> None:
    obs = sshd_killed_mid_run(lab)
    assert not obs.problems and not obs.rows_lost, _explain(obs)
    crash = obs.result["crash"]
    assert crash.stage == "connect" and "connection refused" in crash.error, _explain(obs)
    assert obs.detect_s is not None and obs.detect_s < 10, _explain(obs)
    rows = _rows(obs, "crash")
    assert rows[("onnx", "fp32")]["stage"] == "done" and rows[("onnx", "fp32")]["latency_ms_p50"] > 0
    assert ("onnx", "int8") not in rows  # the run the crash interrupted left no half-measured row
    assert {k for k, r in _rows(obs, "loop").items() if r["stage"] == "done"} == {("onnx", "fp32"), ("onnx", "int8")}


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True, timeout=30).stdout


def test_a_namespace_device_never_routes_off_this_host_and_leaves_nothing_behind(netns_device_factory: Any) -> None:
    before = (_ip("netns", "list"), _ip("-o", "link", "show"), _ip("route", "show"))
    dev = netns_device_factory("clean")
    ns = dev.ns
    assert f"blackhole {_netns.SUBNET}" in _ip("route", "show")
    assert ns.name in _ip("netns", "list") and ns.host_if in _ip("-o", "link", "show")
    dev.link_down()
    for addr, where in ((dev.host, f"dev {ns.host_if}"),  # the cut device: its dead link, nowhere else
                        ("10.213.255.254", "Invalid argument")):  # an address no device has: the blackhole
        got = subprocess.run(["ip", "route", "get", addr], capture_output=True, text=True, timeout=30)
        assert where in got.stdout + got.stderr, (addr, got)
        assert " via " not in got.stdout, (addr, got)  # never a gateway, so never off this host
    dev.link_up()
    dev.shape(1000)
    dev.drop(5)
    dev.stop()
    after = (_ip("netns", "list"), _ip("-o", "link", "show"), _ip("route", "show"))
    assert ns.name not in after[0] and ns.host_if not in after[1]
    if f"blackhole {_netns.SUBNET}" not in before[2]:  # another run's device may hold it: then it stays
        assert f"{_netns.SUBNET}" not in after[2]
    assert "ekh" not in after[1] or "ekh" in before[1]


def test_the_delay_relay_delays_each_way_and_forwards_every_byte() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(10)

    def echo() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    relay = DelayRelay(server.getsockname(), delay=0.1)
    try:
        with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as c:
            payload = bytes(range(256)) * 4096  # 1 MiB
            start = time.monotonic()
            c.sendall(payload)
            got = bytearray()
            while len(got) < len(payload):
                got += c.recv(65536)
            took = time.monotonic() - start
        assert bytes(got) == payload
        assert 0.2 <= took < 5, took  # 100 ms each way, and no throttling beyond it
    finally:
        relay.close()
        server.close()
        thread.join(timeout=5)
