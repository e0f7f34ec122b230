"""Test devices in network namespaces: a real sshd behind a veth link the tests can cut, slow down or make lossy.

Each device gets a namespace ``edgekit-<pid>-<n>`` and a veth pair: ``ekh<n>`` on the host (``10.213.x.1/30``)
and ``ekd<n>`` inside (``10.213.x.2/30``), where its sshd listens on port 22. Its keys, config and workdir stay on
the host's filesystem (a network namespace changes only the network), so tests read its ``store/`` directly.

Network safety, in this order:

- Before any namespace exists, ``10.213.0.0/16`` gets a blackhole route (``proto 213``, so it is recognisably
  edgekit's). With a link cut, the host's ``/30`` route is ignored or goes nowhere and the blackhole catches
  the traffic: nothing for the test subnet ever leaves this machine by the default route.
- Links are cut from the namespace side (``ip -n NS link set ekd<n> down``).
- Teardown kills the namespace's sshd and its sessions, deletes the host veth, then the namespace; the last
  device of the subnet (in any process: it counts the host interfaces still addressed in the subnet) removes
  the blackhole route. A lock file serialises set-up and teardown across processes, and namespaces left by a
  process that died (SIGKILL) are cleaned up by the next set-up.

Faults on a device: ``link_down``/``link_up``; ``shape(kbit)`` (``tc tbf`` on the host veth, so host-to-device
traffic is rate-limited: ``netem`` is not in every kernel); ``drop(percent)`` (an nftables table in the
namespace dropping that share of packets both ways). Latency is a host-side relay: see ``_faults.DelayRelay``.

Needs root, ``ip`` (iproute2), ``tc`` and ``nft`` (nftables); ``netns_unavailable()`` says what is missing.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from edgekit.testing._envs import EnvUnavailable
from edgekit.testing._sshd import SSHD, TestDevice, _terminate, launch_sshd

SUBNET = ipaddress.ip_network("10.213.0.0/16")
ROUTE_PROTO = "213"  # marks the blackhole route as edgekit's: only such a route is ever removed
NS_PREFIX = "edgekit-"
HOST_IF, DEV_IF = "ekh", "ekd"
LOCK_FILE = Path("/run/edgekit-netns.lock")
SSH_PORT = 22
SETUP_HINT = "run as root with iproute2, tc and nftables installed: apt-get install -y iproute2 nftables"
_CMD_TIMEOUT = 30.0


class NetnsUnavailable(EnvUnavailable):
    """This machine cannot run network-namespace test devices (not root, no ip/tc/nft, subnet in use)."""


def netns_unavailable() -> str | None:
    """Why namespace devices cannot run here, or None if they can."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return f"network-namespace test devices need root ({SETUP_HINT})"
    missing = [name for bit, name in _CAPS.items() if not _cap_effective() >> bit & 1]
    if missing:
        return (f"network-namespace test devices need {' and '.join(missing)}, which this root lacks (a container "
                "without --cap-add NET_ADMIN/SYS_ADMIN or --privileged?)")
    for tool in ("ip", "tc", "nft"):
        if not shutil.which(tool):
            return f"{tool!r} not found: {SETUP_HINT}"
    if not Path(SSHD).exists():
        return f"{SSHD} not found: apt-get install -y openssh-server"
    routes = _ip("-4", "route", "show", "root", str(SUBNET), check=False).stdout
    foreign = [line for line in routes.splitlines() if line.strip() and not _ours(line)
               and not re.search(rf"\bdev {HOST_IF}\d+\b", line)]  # a device link's own /30 is ours too
    if foreign:
        return f"{SUBNET} is already routed on this host ({foreign[0].strip()}): not touching it"
    return None


@dataclass
class Netns:
    """One namespace and its veth link; ``delete()`` removes both (and the blackhole route if it is the last)."""

    name: str
    index: int

    @property
    def host_if(self) -> str:
        return f"{HOST_IF}{self.index}"

    @property
    def dev_if(self) -> str:
        return f"{DEV_IF}{self.index}"

    @property
    def host_addr(self) -> str:
        return str(SUBNET.network_address + 4 * self.index + 1)

    @property
    def dev_addr(self) -> str:
        return str(SUBNET.network_address + 4 * self.index + 2)

    def exec_argv(self) -> list[str]:
        """argv prefix running a command inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    @classmethod
    def create(cls) -> Netns:
        """Blackhole the subnet (if not yet), then a namespace with its link up and addressed."""
        with _locked():
            _clean_stale()
            _ensure_blackhole()
            index = _free_index()
            ns = cls(f"{NS_PREFIX}{os.getpid()}-{index}", index)
            try:
                _ip("netns", "add", ns.name)
                _ip("link", "add", ns.host_if, "type", "veth", "peer", "name", ns.dev_if, "netns", ns.name)
                _ip("addr", "add", f"{ns.host_addr}/30", "dev", ns.host_if)
                _ip("link", "set", ns.host_if, "up")
                _ip("-n", ns.name, "addr", "add", f"{ns.dev_addr}/30", "dev", ns.dev_if)
                _ip("-n", ns.name, "link", "set", "lo", "up")
                _ip("-n", ns.name, "link", "set", ns.dev_if, "up")
            except BaseException:
                _remove(ns.name, ns.index)
                _release_blackhole()
                raise
        return ns

    def delete(self) -> None:
        """Kill what still runs inside, delete the host veth and the namespace; idempotent."""
        with _locked():
            _remove(self.name, self.index)
            _release_blackhole()

    # ---- faults ------------------------------------------------------------------------------------------

    def link_down(self) -> None:
        """Cut the link from the namespace side: the host end stays, packets to the device go nowhere."""
        _ip("-n", self.name, "link", "set", self.dev_if, "down")

    def link_up(self) -> None:
        _ip("-n", self.name, "link", "set", self.dev_if, "up")

    def shape(self, rate_kbit: int, burst_kb: int = 16) -> None:
        """Rate-limit host-to-device traffic (a token bucket on the host veth; deleted with it)."""
        _run(["tc", "qdisc", "replace", "dev", self.host_if, "root", "tbf", "rate", f"{rate_kbit}kbit",
              "burst", f"{burst_kb}kb", "latency", "1s"])

    def unshape(self) -> None:
        _run(["tc", "qdisc", "del", "dev", self.host_if, "root"], check=False)

    def drop(self, percent: int) -> None:
        """Drop ``percent`` % of the packets entering and leaving the namespace, at random (nftables)."""
        if not 0 < percent < 100:
            raise ValueError(f"percent must be in 1..99, got {percent}")
        rules = "\n".join([
            "table inet edgekit_loss {",
            f"  chain in {{ type filter hook input priority 0; policy accept; numgen random mod 100 < {percent} drop; }}",
            f"  chain out {{ type filter hook output priority 0; policy accept; numgen random mod 100 < {percent} drop; }}",
            "}",
        ])
        self.undrop()
        _run([*self.exec_argv(), "nft", "-f", "-"], input=rules)

    def undrop(self) -> None:
        _run([*self.exec_argv(), "nft", "delete", "table", "inet", "edgekit_loss"], check=False)

    def pids(self) -> list[int]:
        """Processes running inside the namespace."""
        out = _ip("netns", "pids", self.name, check=False).stdout
        return [int(p) for p in out.split() if p.isdigit()]


@dataclass(eq=False)
class NetnsDevice(TestDevice):
    """A TestDevice whose sshd runs in a network namespace of its own (``netns``), reached over a veth link."""

    __test__ = False
    netns: Netns | None = None

    @property
    def ns(self) -> Netns:
        assert self.netns is not None
        return self.netns

    def link_down(self) -> None:
        self.ns.link_down()

    def link_up(self) -> None:
        self.ns.link_up()

    def shape(self, rate_kbit: int, burst_kb: int = 16) -> None:
        self.ns.shape(rate_kbit, burst_kb)

    def unshape(self) -> None:
        self.ns.unshape()

    def drop(self, percent: int) -> None:
        self.ns.drop(percent)

    def undrop(self) -> None:
        self.ns.undrop()

    def kill_sshd(self, timeout: float = 3.0) -> None:
        """Kill the listener and every session (what they started with them), keeping the namespace and its
        link: the device's port now refuses, as after a crash of its sshd."""
        listener = [self.process.pid] if self.process.poll() is None else []
        _terminate(lambda: listener + self.descendants(), timeout)
        self.process.wait(timeout=timeout)

    def via(self, host: str, port: int, *, name: str | None = None) -> dict[str, object]:
        """This device's entry reached at ``host:port`` instead (a relay in front of it); trusts its host key
        under that name too."""
        key = self.known_hosts.read_text().splitlines()[0].split(None, 1)[1]
        alias = host if port == 22 else f"[{host}]:{port}"
        with open(self.known_hosts, "a", encoding="utf-8") as f:
            f.write(f"{alias} {key}\n")
        return {**self.entry(), "name": name or self.name, "host": host, "port": port}


def start_netns_device(
    root: Path,
    *,
    name: str = "dev",
    python: str | None = None,
    user: str | None = None,
    profile: str | None = None,
    tags: list[str] | None = None,
) -> NetnsDevice:
    """A real sshd in a new network namespace, listening on its veth address; keys, config and workdir under
    ``root``. Raises NetnsUnavailable saying why where this machine cannot (see ``netns_unavailable``)."""
    reason = netns_unavailable()
    if reason:
        raise NetnsUnavailable(reason)
    root = Path(root).resolve()
    ns = Netns.create()
    dev = launch_sshd(root, name=name, python=python or sys.executable, user=user, profile=profile, tags=tags,
                      sshd=(*ns.exec_argv(), SSHD), host=ns.dev_addr, port=SSH_PORT, cleanups=[ns.delete],
                      device_cls=NetnsDevice, extra={"netns": ns})
    assert isinstance(dev, NetnsDevice)
    return dev


# ---- internals -------------------------------------------------------------------------------------------


_CAPS = {12: "CAP_NET_ADMIN", 21: "CAP_SYS_ADMIN"}  # links and routes; namespaces and their mounts


def _cap_effective() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        return 0


def _run(argv: list[str], *, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=_CMD_TIMEOUT)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(["ip", *args], check=check)


def _ours(route_line: str) -> bool:
    words = route_line.split()
    return bool(words) and words[0] == "blackhole" and f"proto {ROUTE_PROTO}" in route_line


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One process at a time sets up or tears down namespaces (index choice, the blackhole's last user)."""
    with open(LOCK_FILE, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _ensure_blackhole() -> None:
    routes = _ip("-4", "route", "show", "exact", str(SUBNET)).stdout
    if not any(_ours(line) for line in routes.splitlines()):
        _ip("route", "add", "blackhole", str(SUBNET), "proto", ROUTE_PROTO)


def _users() -> list[str]:
    """Host interfaces holding an address in the subnet: namespace links still in use, by any process."""
    out = _ip("-o", "-4", "addr", "show", "to", str(SUBNET), check=False).stdout
    return [line.split()[1] for line in out.splitlines() if line.strip()]


def _release_blackhole() -> None:
    """Remove edgekit's blackhole route once no link in the subnet is left."""
    if _users():
        return
    routes = _ip("-4", "route", "show", "exact", str(SUBNET), check=False).stdout
    if any(_ours(line) for line in routes.splitlines()):
        _ip("route", "del", "blackhole", str(SUBNET), "proto", ROUTE_PROTO, check=False)


def _namespaces() -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(NS_PREFIX)]


def _free_index() -> int:
    used = {int(m.group(1)) for ns in _namespaces() if (m := re.fullmatch(rf"{NS_PREFIX}\d+-(\d+)", ns))}
    out = _ip("-o", "link", "show", check=False).stdout
    used |= {int(m.group(1)) for m in re.finditer(rf"^\d+: (?:{HOST_IF}|{DEV_IF})(\d+)[@:]", out, re.M)}
    for index in range(1, SUBNET.num_addresses // 4):
        if index not in used:
            return index
    raise RuntimeError(f"no free /30 left in {SUBNET}")


def _remove(name: str, index: int) -> None:
    """Kill what runs in namespace ``name``, delete its host veth, then the namespace. Missing parts are fine."""
    if name in _namespaces():
        for _ in range(50):  # bounded: SIGKILL ends them at once; re-ask for children started meanwhile
            pids = [int(p) for p in _ip("netns", "pids", name, check=False).stdout.split() if p.isdigit()]
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
            time.sleep(0.05)
    _ip("link", "del", f"{HOST_IF}{index}", check=False)
    if name in _namespaces():
        _ip("netns", "del", name)


def _clean_stale() -> None:
    """Namespaces whose creating process is gone (killed test runs): remove them and their links."""
    for ns in _namespaces():
        m = re.fullmatch(rf"{NS_PREFIX}(\d+)-(\d+)", ns)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            _remove(ns, int(m.group(2)))


