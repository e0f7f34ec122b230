"""Headless Chromium for tests: render a local HTML file and get its DOM after scripts ran, or a screenshot.

Offline by construction. The page is a ``file://`` URL, and the background services that phone home are
switched off. That is not enough on its own: with only those flags, Chromium 156 still asked
clients2.google.com, update.googleapis.com and accounts.google.com (seen through a local proxy). So there is
a backstop. Every host name (and the proxy's address) resolves to nothing, and all traffic is sent to a
proxy on a closed loopback port (``--host-resolver-rules``, ``--proxy-server``). Under strace, a render with
these flags sends nothing. Its only network call is a UDP ``connect()`` that probes IPv6 routing, and that
sends no packet.

Each render gets a fresh profile (``--user-data-dir`` and ``$HOME``) in a temporary folder that is removed
afterwards, so nothing is read from or left in the user's profile. Chromium runs in its own session, and
its whole process group is killed when the render ends or times out. ``--no-sandbox`` is required as root
(CI containers) and is harmless here: the page is our own report.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
    "--disable-default-apps", "--metrics-recording-only", "--mute-audio",
    "--disable-dev-shm-usage",  # a container's small /dev/shm crashes the renderer; /tmp is used instead
    "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",  # backstop: no way out
    "--hide-scrollbars",
    "--virtual-time-budget=5000",  # run the page's load handlers, then stop: no real waiting
)
WINDOW = "--window-size=1280,2000"


def find_chromium() -> str | None:
    """The Chromium (or Chrome) executable to use, or None when none is installed."""
    for name in CANDIDATES:
        path = name if os.path.isabs(name) else shutil.which(name)
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def render(html: Path, screenshot: Path | None = None, timeout: float = 60) -> str:
    """Load ``html`` in headless Chromium. Without ``screenshot``: return the DOM after the page's scripts
    ran (``--dump-dom``). With it: write a 1280x2000 PNG screenshot there and return Chromium's stdout.

    Raises RuntimeError naming the cause (no Chromium, a timeout, a non-zero exit, no screenshot written)
    with the tail of Chromium's stderr.
    """
    exe = find_chromium()
    if exe is None:
        raise RuntimeError(f"no Chromium found (looked for {', '.join(CANDIDATES)}): apt-get install -y chromium")
    page = Path(html).resolve()
    if not page.is_file():  # Chromium would render its own error page and exit 0
        raise RuntimeError(f"no such page to render: {page}")
    url = page.as_uri()
    profile = Path(tempfile.mkdtemp(prefix="edgekit-chromium-"))
    try:
        if screenshot is not None:
            screenshot = Path(screenshot).resolve()
            screenshot.unlink(missing_ok=True)  # so an old file cannot pass for this render's
            mode = [f"--screenshot={screenshot}", WINDOW]
        else:
            mode = ["--dump-dom"]
        argv = [exe, *FLAGS, f"--user-data-dir={profile}", *mode, url]
        stdout, stderr = _run(argv, profile, timeout)
        if screenshot is not None and not (screenshot.is_file() and screenshot.stat().st_size):
            raise RuntimeError(f"chromium wrote no screenshot to {screenshot}\n{_tail(stderr)}")
        return stdout
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def _run(argv: list[str], home: Path, timeout: float) -> tuple[str, str]:
    # $HOME and the XDG folders point into the throw-away profile: Chromium's NSS database (~/.pki) and
    # caches must not land in, or be read from, the user's home.
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / "config"),
           "XDG_CACHE_HOME": str(home / "cache")}
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, errors="replace", env=env, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        _, stderr = proc.communicate()
        raise RuntimeError(f"chromium did not finish within {timeout:g} s: {' '.join(argv)}\n{_tail(stderr)}") from None
    finally:
        _kill_group(proc.pid)  # helpers (crashpad handler, zygotes) must not outlive the render
    if proc.returncode != 0:
        raise RuntimeError(f"chromium exited with status {proc.returncode}: {' '.join(argv)}\n{_tail(stderr)}")
    return stdout, stderr


def _kill_group(pgid: int) -> None:
    """Kill the process group Chromium leads (it was started in a session of its own)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(stderr: str, lines: int = 15) -> str:
    """The last lines of stderr, without the noise a container always produces (D-Bus complaints, and
    Debian's launcher script tripping over its own /dev/shm check)."""
    noise = ("dbus", "unexpected operator")
    useful = [ln for ln in (stderr or "").splitlines() if ln.strip() and not any(n in ln.lower() for n in noise)]
    return "chromium stderr (last lines):\n" + "\n".join(useful[-lines:]) if useful else "chromium stderr: (empty)"
