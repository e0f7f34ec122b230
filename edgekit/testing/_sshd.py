"""Real OpenSSH test devices on loopback: one foreground sshd per device, its own keys and workdir.

Only the standard library is imported here so ``import edgekit.testing`` stays cheap.
"""

from __future__ import annotations

import atexit
import functools
import getpass
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

SSHD = "/usr/sbin/sshd"
HOST = "127.0.0.1"
TAG_VAR = "EDGEKIT_TEST_DEVICE"  # set in every session's environment, to find processes that left the tree
_BANNER_TIMEOUT = 10.0
_BIND_RETRIES = 5
_live: weakref.WeakSet[TestDevice] = weakref.WeakSet()


@dataclass(eq=False)
class TestDevice:
    """A running loopback sshd that looks like a device; ``stop()`` ends it and everything it started."""

    __test__ = False  # not a pytest test class

    name: str
    host: str
    port: int
    user: str
    identity_file: Path
    known_hosts: Path
    workdir: Path
    python: str
    root: Path
    process: subprocess.Popen[bytes]
    profile: str | None = None
    tags: list[str] = field(default_factory=list)
    tag: str = ""  # value of $EDGEKIT_TEST_DEVICE in this device's sessions
    # Where the device sees ``root`` (it runs in a chroot); None: the device sees host paths as they are.
    device_root: str | None = None
    cleanups: list[Callable[[], None]] = field(default_factory=list)  # run by stop() once processes are gone

    def device_path(self, path: str | os.PathLike[str]) -> str:
        """``path`` (on this host, under ``root``) as the device sees it."""
        if self.device_root is None:
            return str(path)
        rel = Path(path).relative_to(self.root)
        return self.device_root if rel == Path(".") else f"{self.device_root}/{rel.as_posix()}"

    def entry(self) -> dict[str, Any]:
        """This device as a ``devices.yaml`` entry (plain strings, ready for yaml.safe_dump).

        ``workdir`` and ``python`` are device-side paths; the keys and known_hosts are the host's (client side).
        """
        return {
            "name": self.name, "kind": "ssh", "host": self.host, "port": self.port, "user": self.user,
            "identity_file": str(self.identity_file), "known_hosts": str(self.known_hosts),
            "python": self.python, "workdir": self.device_path(self.workdir), "profile": self.profile,
            "tags": list(self.tags),
        }

    def _client_opts(self) -> list[str]:
        # -F /dev/null and explicit files: the ssh CLI reads ~/.ssh from the passwd entry, not $HOME.
        return [
            "-i", str(self.identity_file), "-F", "/dev/null",
            "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", "IdentityAgent=none", "-o", "ConnectTimeout=10",
        ]

    def ssh_argv(self, *command: str) -> list[str]:
        """An OpenSSH ``ssh`` argv for this device; ``command`` words are joined by ssh and run by the shell."""
        return ["ssh", *self._client_opts(), "-p", str(self.port), f"{self.user}@{self.host}", *command]

    def scp_argv(self, local: str | os.PathLike[str], remote: str | os.PathLike[str]) -> list[str]:
        """An ``scp`` argv copying ``local`` to ``remote`` (a relative remote path is taken inside workdir)."""
        target = str(remote) if Path(remote).is_absolute() else self.device_path(self.workdir / remote)
        return ["scp", "-q", *self._client_opts(), "-P", str(self.port), str(local), f"{self.user}@{self.host}:{target}"]

    def descendants(self) -> list[int]:
        """Session processes: the listener's process tree plus anything carrying this device's tag (daemonized)."""
        procs = _procs()
        found: set[int] = set()
        if self.process.poll() is None:  # not yet reaped, so the pid cannot have been reused
            children: dict[int, list[int]] = {}
            for pid, (ppid, _, _) in procs.items():
                children.setdefault(ppid, []).append(pid)
            todo = [self.process.pid]
            while todo:
                for child in children.get(todo.pop(), []):
                    if child not in found:
                        found.add(child)
                        todo.append(child)
        if self.tag:
            found.update(pid for pid in procs if _has_tag(pid, self.tag))
        found.discard(self.process.pid)
        found.discard(os.getpid())
        return sorted(pid for pid in found if procs.get(pid, (0, "Z", 0))[1] != "Z")

    def kill_sessions(self, timeout: float = 3.0) -> None:
        """End every session (and what it started) but keep the listener: simulates a dropped link/reboot of work."""
        _terminate(self.descendants, timeout)

    def stop(self, timeout: float = 3.0) -> None:
        """Kill the listener and all its descendants: SIGTERM, then SIGKILL after ``timeout``. Idempotent."""
        listener = [self.process.pid] if self.process.poll() is None else []
        # Snapshot the tree first: once the listener dies its sessions are reparented and lose the link.
        _terminate(lambda: listener + self.descendants(), timeout)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL was sent above
            self.process.kill()
            self.process.wait(timeout=timeout)
        _run_cleanups(self.cleanups)
        _live.discard(self)

    def log(self) -> str:
        """sshd's stderr so far (errors only at LogLevel ERROR)."""
        path = self.root / "sshd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> TestDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_sshd(
    root: Path,
    *,
    name: str = "dev",
    python: str | None = None,
    user: str | None = None,
    profile: str | None = None,
    tags: list[str] | None = None,
) -> TestDevice:
    """Start a real sshd on a free loopback port with keys, known_hosts and a workdir under ``root``."""
    if not Path(SSHD).exists():
        raise RuntimeError(f"{SSHD} not found: apt-get install -y openssh-server")
    return launch_sshd(root, name=name, python=python or sys.executable, user=user, profile=profile, tags=tags)


def launch_sshd(
    root: Path,
    *,
    name: str,
    python: str,
    user: str | None = None,
    profile: str | None = None,
    tags: list[str] | None = None,
    sshd: Sequence[str] = (SSHD,),
    device_root: str | None = None,
    cleanups: list[Callable[[], None]] | None = None,
    banner_timeout: float = _BANNER_TIMEOUT,
    host: str = HOST,
    port: int | None = None,
    device_cls: type[TestDevice] = TestDevice,
    extra: dict[str, Any] | None = None,
) -> TestDevice:
    """Keys, config and workdir under ``root``; ``sshd`` (an argv prefix) started on ``host``, on ``port`` or
    a free one.

    A device in a root filesystem of its own passes the argv that runs that root's sshd there and
    ``device_root``, where that sshd sees ``root``; a device in a network namespace passes the argv that enters
    it and its address. ``cleanups`` run when the device stops, or here if it never starts; the device is a
    ``device_cls`` built with ``extra`` fields too.
    """
    cleanups = list(cleanups or [])
    try:
        return _launch(Path(root).resolve(), name, python, user or getpass.getuser(), profile, tags, list(sshd),
                       device_root, cleanups, banner_timeout, host, port, device_cls, extra or {})
    except BaseException:
        _run_cleanups(cleanups)
        raise


def _launch(root: Path, name: str, python: str, user: str, profile: str | None, tags: list[str] | None,
            sshd: list[str], device_root: str | None, cleanups: list[Callable[[], None]],
            banner_timeout: float, host: str, fixed_port: int | None, device_cls: type[TestDevice],
            extra: dict[str, Any]) -> TestDevice:
    root.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0 and device_root is None and not Path("/run/sshd").is_dir():
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # "Missing privilege separation directory"
    host_key, client_key = root / "ssh_host_ed25519_key", root / "id_ed25519"
    for key in (host_key, client_key):
        if not key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"edgekit-{name}", "-f", str(key)],
                           check=True, capture_output=True, timeout=30)
    (root / "authorized_keys").write_text(Path(f"{client_key}.pub").read_text())
    host_pub = " ".join(Path(f"{host_key}.pub").read_text().split()[:2])  # "ssh-ed25519 AAAA...", no comment
    workdir = root / "workdir"
    workdir.mkdir(exist_ok=True)
    tag = uuid.uuid4().hex
    device = (lambda p: str(p)) if device_root is None else (lambda p: f"{device_root}/{p.relative_to(root)}")

    last_error = ""
    for _ in range(1 if fixed_port else _BIND_RETRIES):
        port = fixed_port or _free_port()
        cfg = root / "sshd_config"
        cfg.write_text(_config(root, host, port, user, host_key, tag, device, _sshd_version(tuple(sshd))))
        log = root / "sshd.log"
        with open(log, "wb") as err:  # the child keeps its own copy of the fd
            proc = subprocess.Popen([*sshd, "-D", "-e", "-f", device(cfg)], stdin=subprocess.DEVNULL,
                                    stdout=err, stderr=err)
        if _wait_banner(proc, host, port, banner_timeout):
            alias = host if port == 22 else f"[{host}]:{port}"  # how OpenSSH names it in known_hosts
            (root / "known_hosts").write_text(f"{alias} {host_pub}\n")
            dev = device_cls(name=name, host=host, port=port, user=user, identity_file=client_key,
                             known_hosts=root / "known_hosts", workdir=workdir, python=python,
                             root=root, process=proc, profile=profile, tags=list(tags or []), tag=tag,
                             device_root=device_root, cleanups=cleanups, **extra)
            _live.add(dev)
            return dev
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=5)
        last_error = log.read_text(errors="replace")
        if "Address already in use" not in last_error and "Cannot bind" not in last_error:
            break  # not the port race: retrying will not help
    tail = "\n".join(last_error.strip().splitlines()[-20:])
    raise RuntimeError(f"sshd for test device {name!r} did not come up (config {root / 'sshd_config'}):\n{tail}")


def _run_cleanups(cleanups: list[Callable[[], None]]) -> None:
    """Run and forget each cleanup, last registered first; all of them run even if one fails."""
    errors = []
    while cleanups:
        try:
            cleanups.pop()()
        except Exception as exc:  # noqa: BLE001 - the rest must still run; reported below
            errors.append(exc)
    if errors:
        raise errors[0]


def _config(root: Path, host: str, port: int, user: str, host_key: Path, tag: str, device: Callable[[Path], str],
            version: tuple[int, int]) -> str:
    lines = [
        f"ListenAddress {host}", f"Port {port}", f"HostKey {device(host_key)}",
        f"AuthorizedKeysFile {device(root / 'authorized_keys')}", f"PidFile {device(root / 'sshd.pid')}",
        f"AllowUsers {user}",
        "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        f"UsePAM {'no' if user == 'root' else 'yes'}",  # root: no PAM; others are "locked" without PAM
        "PermitRootLogin prohibit-password", "StrictModes no",
        "Subsystem sftp internal-sftp", "MaxStartups 100:30:200",
        "ClientAliveInterval 10", "ClientAliveCountMax 3",
        "LogLevel ERROR", "PrintMotd no", "PrintLastLog no", "UseDNS no",
        f"SetEnv {TAG_VAR}={tag}",  # no AcceptEnv: the client's environment never reaches the device
    ]
    if version >= (9, 8):
        lines.append("PerSourcePenalties no")  # many test logins from 127.0.0.1 must not get it blocked
    return "\n".join(lines) + "\n"


@functools.lru_cache(maxsize=4)
def _sshd_version(sshd: tuple[str, ...] = (SSHD,)) -> tuple[int, int]:
    out = subprocess.run([*sshd, "-V"], capture_output=True, text=True, timeout=60)
    m = re.search(r"OpenSSH_(\d+)\.(\d+)", out.stdout + out.stderr)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _wait_banner(proc: subprocess.Popen[bytes], host: str, port: int, timeout: float = _BANNER_TIMEOUT) -> bool:
    """True once sshd at ``host:port`` sends ``SSH-``; False if it exits or stays silent for ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=min(timeout, 5.0)) as s:
                if s.recv(64).startswith(b"SSH-"):
                    s.sendall(b"SSH-2.0-edgekit-probe\r\n")  # else sshd logs an error about the silent client
                    return True
        except OSError:
            pass
        time.sleep(0.02)
    return False


def _procs() -> dict[int, tuple[int, str, int]]:
    """pid -> (ppid, state, starttime) from /proc/*/stat."""
    out: dict[int, tuple[int, str, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                rest = f.read().rsplit(b")", 1)[1].split()  # comm may contain spaces and ')'
        except (OSError, IndexError):
            continue
        out[int(entry.name)] = (int(rest[1]), rest[0].decode(), int(rest[19]))
    return out


def _has_tag(pid: int, tag: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f"{TAG_VAR}={tag}".encode() in f.read().split(b"\0")
    except OSError:
        return False


def _terminate(find: Any, timeout: float) -> None:
    """SIGTERM what ``find()`` returns (re-asking, so late children are caught), SIGKILL survivors after timeout."""
    seen: dict[int, int] = {}  # pid -> starttime, so a reused pid is never signalled
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
        deadline = time.monotonic() + wait
        sent: set[int] = set()
        while True:
            procs = _procs()
            for pid in find():
                if pid in procs and procs[pid][1] != "Z":
                    seen.setdefault(pid, procs[pid][2])
            alive = [p for p, start in seen.items()
                     if p in procs and procs[p][2] == start and procs[p][1] != "Z"]
            if not alive:
                return
            for pid in alive:
                if pid not in sent:
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
                    sent.add(pid)
            if time.monotonic() >= deadline:
                break
            time.sleep(0.02)


@atexit.register
def _stop_all() -> None:
    """A crashed or interrupted test run must not leave sshd listeners behind."""
    for dev in list(_live):
        try:
            dev.stop(timeout=1.0)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
