"""The device's measuring lock: one measuring window at a time on a device, whoever started it.

Two runs sharing a Ray cluster never measure on one device at once (one actor per device leases it), but a
run from a host outside the cluster, or an older edgekit, knows nothing of that actor. So the agent itself
takes an exclusive ``flock`` on ``<workdir>/measure.lock`` from before the model loads until its figures are
taken, and records who holds it (host, pid, since when) inside the file. A run that finds the lock held
waits, polling, at most ``lock_timeout_s``; then it fails with the holder named. The kernel drops a flock
when its process dies, so a killed run never leaves the device locked.

Hand-written, standard library only: the agent runs on devices where nothing but Python and a runtime is
installed (``filelock`` is a host-side dependency).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from typing import Any, Iterator, Optional

POLL_S = 0.1


class DeviceBusy(Exception):
    """The lock stayed held by another run for the whole ``lock_timeout_s``."""


def _holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode() or "{}")
    except (OSError, ValueError):
        info = None
    if not isinstance(info, dict) or "pid" not in info:
        return "another process (no owner recorded: not an edgekit agent)"
    since = info.get("since_unix")
    age = f", for {time.time() - since:.0f} s" if isinstance(since, (int, float)) else ""
    return f"pid {info.get('pid')} on {info.get('host')} ({info.get('who') or 'an edgekit agent'}{age})"


@contextlib.contextmanager
def measuring_window(path: Optional[str], timeout_s: float, who: str = "") -> Iterator[dict[str, Any]]:
    """Hold the device's lock for the body; yields the window record (filled in on exit):
    ``lock_wait_s``, ``start_unix``, ``end_unix`` (this device's clock) and ``lock`` (the file, or None)."""
    window: dict[str, Any] = {"lock": path, "lock_wait_s": 0.0, "start_unix": None, "end_unix": None}
    try:
        import fcntl
    except ImportError:  # no flock on this platform: measure unlocked, and say so
        fcntl = None  # type: ignore[assignment]
    if path is None or fcntl is None:
        window["lock"] = None
        window["start_unix"] = time.time()
        yield window
        window["end_unix"] = time.time()
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        asked = time.monotonic()
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - asked
                if waited >= timeout_s:
                    raise DeviceBusy(
                        f"the device is busy: its measuring lock {path} is held by {_holder(fd)}; waited "
                        f"{waited:.0f} s (lock_timeout). Another edgekit run, possibly from a host outside this "
                        "cluster, is measuring here: let it finish, or raise lock_timeout") from None
                time.sleep(min(POLL_S, max(timeout_s - waited, 0.0)))
        window["lock_wait_s"] = round(time.monotonic() - asked, 3)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since_unix": time.time(), "who": who}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        window["start_unix"] = time.time()
        try:
            yield window
        finally:
            window["end_unix"] = time.time()
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
