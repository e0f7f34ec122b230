"""An emulated arm64 test device: a Debian arm64 root filesystem run by qemu-user, reached over its own sshd.

The root filesystem (``debootstrap --arch=arm64 --variant=minbase``, python3 + a venv with the Raspberry Pi's
usual runtimes, OpenSSH) is built once per recipe and cached like the device envs (a file lock, a temporary
folder, an atomic rename). A device runs the root's aarch64 ``sshd`` with ``chroot``, so everything it starts
is aarch64 code run by qemu-user and ``uname -m`` says aarch64. Its folder (keys, sshd config, workdir) stays
on the host side and is bind-mounted at ``/srv/edgekit/<name>-<id>``, where the device sees it.

Mounts: every command that needs /proc, /sys, /dev/pts or a bind inside the root (the build's apt and pip, a
device's sshd) runs in a private mount namespace of its own (``unshare --mount``) and mounts them there. The
host's mount table never changes, and the mounts vanish with the namespace's last process: stopping a device,
a failed build, even a SIGKILLed test run cannot leave a mount behind.

What it proves: the device-side code (agent, runtimes' aarch64 wheels, numpy 1.x) runs on arm64 and gives the
right answers. What it does not: emulated latency is 30 to 100x off and meaningless as a timing.

Needs root, ``debootstrap``, ``unshare``, ``chroot`` and a qemu-aarch64 binfmt_misc handler (``.ci/run`` sets
them up).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from edgekit.testing._envs import EnvUnavailable, cached_build
from edgekit.testing._sshd import TestDevice, launch_sshd

ARM64_ENV = "arm64"  # the env name `python -m edgekit.testing serve --device NAME=arm64:pi4` takes
SUITE = "bookworm"
APT_PACKAGES = ["python3", "python3-venv", "openssh-server", "ca-certificates"]
# onnxruntime 1.28 and later segfault on import under qemu-aarch64; 1.27 runs there.
# executorch is left out: its aarch64 wheel needs torch (a 427 MB aarch64 wheel) -- see README.
PIP_REQUIREMENTS = ["tflite-runtime==2.14.0", "numpy<2", "onnxruntime==1.27.0"]
IMPORT_CHECK = "import numpy, tflite_runtime.interpreter, onnxruntime"
DEVICE_PYTHON = "/opt/edgekit-venv/bin/python"
DEVICE_CA = "/etc/edgekit-host-ca.crt"  # the host's CA bundle, for pip inside the root
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
BINFMT = Path("/proc/sys/fs/binfmt_misc")
SETUP_HINT = ("apt-get install -y qemu-user-static binfmt-support debootstrap; "
              "mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; update-binfmts --enable qemu-aarch64 "
              "(.ci/run does this)")
_STEP_TIMEOUT = 1800.0  # seconds per build step (debootstrap over a slow mirror, pip under emulation)


class Arm64Unavailable(EnvUnavailable):
    """This machine cannot run an emulated arm64 device (not root, no binfmt handler, no debootstrap)."""


def arm64_unavailable() -> str | None:
    """Why this machine cannot build or run the emulated arm64 device, or None if it can."""
    if platform.system() != "Linux":
        return "emulated arm64 devices need Linux (qemu-user via binfmt_misc)"
    if platform.machine() == "aarch64":
        return None if os.geteuid() == 0 and shutil.which("debootstrap") else "needs root and debootstrap"  # native
    missing = []
    if os.geteuid() != 0:
        missing.append("root (chroot and mount need it)")
    for tool in ("debootstrap", "unshare", "chroot", "mount", "ssh-keygen"):
        if not shutil.which(tool):
            missing.append(f"{tool} not found")
    handler = binfmt_handler()
    if handler is None:
        missing.append(f"no enabled qemu-aarch64 handler in {BINFMT} (binfmt_misc mounted: {_binfmt_mounted()})")
    if missing:
        return f"cannot run an emulated arm64 device: {'; '.join(missing)}. Set-up: {SETUP_HINT}"
    return None


def binfmt_handler() -> dict[str, str] | None:
    """The enabled qemu-aarch64 binfmt_misc entry: {"interpreter", "flags"}, or None."""
    try:
        text = (BINFMT / "qemu-aarch64").read_text()
    except OSError:
        return None
    lines = text.splitlines()
    if not lines or lines[0].strip() != "enabled":
        return None
    fields = dict(line.split(" ", 1) for line in lines[1:] if " " in line)
    return {"interpreter": fields.get("interpreter", ""), "flags": fields.get("flags:", fields.get("flags", ""))}


def _binfmt_mounted() -> bool:
    return (BINFMT / "register").exists()


def debian_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The Debian mirror apt already uses (sources.list or deb822 *.sources), else deb.debian.org."""
    files = [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*.list")),
             *sorted((sources / "sources.list.d").glob("*.sources"))]
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for uri, suites in _deb_entries(text, deb822=path.suffix == ".sources"):
            if SUITE in suites and "/debian" in uri and "security" not in uri:
                return uri.rstrip("/")
    return DEFAULT_MIRROR


def _deb_entries(text: str, deb822: bool) -> list[tuple[str, list[str]]]:
    """(uri, suites) of each enabled binary-package source."""
    out = []
    if not deb822:
        for line in text.splitlines():
            words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()  # drop "[arch=...]" options
            if len(words) >= 3 and words[0] == "deb":
                out.append((words[1], [words[2]]))
        return out
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.strip().startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.strip()
        if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes").lower() != "no":
            out.extend((uri, fields.get("suites", "").split()) for uri in fields.get("uris", "").split())
    return out


def recipe() -> dict[str, Any]:
    """What the cached root filesystem is built from; its hash names the cache entry."""
    return {"kind": "debootstrap", "suite": SUITE, "arch": "arm64", "variant": "minbase", "apt": APT_PACKAGES,
            "pip": PIP_REQUIREMENTS, "python": DEVICE_PYTHON, "host_machine": platform.machine()}


def arm64_root(cache: Path | None = None, *, log: Any = None) -> Path:
    """The cached arm64 root filesystem, built on first use (6 to 10 minutes); raises Arm64Unavailable if it cannot be.

    ``log(message)`` hears about each build step. Timings of the build are in ``build_info(root)``.
    """
    reason = arm64_unavailable()
    if reason:
        raise Arm64Unavailable(reason)

    def build(tmp: Path) -> dict[str, Any]:
        timings = _build(tmp / "rootfs", log or (lambda _msg: None))
        return {"mirror": debian_mirror(), "build_seconds": timings, "built": time.time()}

    return cached_build(ARM64_ENV, recipe(), build, cache=cache, remove=_remove_tree) / "rootfs"


def build_info(rootfs: Path) -> dict[str, Any]:
    """The recipe, mirror and per-step build seconds recorded beside a cached root filesystem."""
    return json.loads((Path(rootfs).parent / "edgekit-env.json").read_text())


def _build(rootfs: Path, log: Any) -> dict[str, float]:
    timings: dict[str, float] = {}
    mirror = debian_mirror()

    def step(name: str, argv: list[str]) -> None:
        log(f"arm64 device: {name}")
        start = time.monotonic()
        _run(argv, name)
        timings[name] = round(time.monotonic() - start, 1)

    # In a private mount namespace: debootstrap mounts /proc and /sys in the target while it works.
    step("debootstrap", ["unshare", "--mount", "--propagation", "private", "debootstrap", "--arch=arm64",
                         "--variant=minbase", SUITE, str(rootfs), mirror])
    _fix_interpreter(rootfs)
    policy = rootfs / "usr/sbin/policy-rc.d"  # never start services inside: the device starts its own sshd
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    shutil.copyfile(HOST_CA, rootfs / DEVICE_CA.lstrip("/"))  # pip trusts what the host trusts
    env = ["/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8",
           "DEBIAN_FRONTEND=noninteractive", f"PIP_CERT={DEVICE_CA}", "PIP_DISABLE_PIP_VERSION_CHECK=1",
           "PIP_DEFAULT_TIMEOUT=180", "PIP_NO_CACHE_DIR=1"]
    inside = [*in_root(rootfs), *env]
    step("apt-get install", [*inside, "apt-get", "install", "-y", "-q", "--no-install-recommends", *APT_PACKAGES])
    _run([*inside, "apt-get", "clean"], "apt-get clean")
    step("venv", [*inside, "python3", "-m", "venv", str(Path(DEVICE_PYTHON).parent.parent)])
    step("pip install", [*inside, DEVICE_PYTHON, "-m", "pip", "install", "-q", *PIP_REQUIREMENTS])
    step("import check", [*inside, DEVICE_PYTHON, "-I", "-c", IMPORT_CHECK])
    for key in rootfs.glob("etc/ssh/ssh_host_*"):  # the package's own host keys: each device brings its own
        key.unlink()
    (rootfs / "run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)  # sshd's privilege separation dir
    (rootfs / "srv/edgekit").mkdir(parents=True, exist_ok=True)
    return timings


def in_root(rootfs: Path, binds: list[tuple[Path, str]] | None = None) -> list[str]:
    """argv prefix running a command (its words appended) inside ``rootfs``, in a private mount namespace with
    /proc, /sys (read-only), /dev/pts and each (host folder, device path) of ``binds`` mounted; all of them
    vanish with the namespace's last process. The namespace's first process becomes the command (exec)."""
    mounts = [f"mount -t proc proc {shlex.quote(str(rootfs / 'proc'))}",
              f"mount -t sysfs -o ro sysfs {shlex.quote(str(rootfs / 'sys'))}",
              f"mount --bind /dev/pts {shlex.quote(str(rootfs / 'dev/pts'))}"]
    mounts += [f"mount --bind {shlex.quote(str(src))} {shlex.quote(str(rootfs / dst.lstrip('/')))}"
               for src, dst in binds or []]
    script = " && ".join([*mounts, 'exec chroot "$0" "$@"'])
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(rootfs)]


def _fix_interpreter(rootfs: Path) -> None:
    """Without binfmt's F flag the kernel looks the interpreter up inside the chroot: put it there."""
    handler = binfmt_handler()
    if handler and "F" not in handler["flags"] and handler["interpreter"]:
        dest = rootfs / handler["interpreter"].lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(handler["interpreter"]), dest)


def start_arm64_device(
    root: Path,
    *,
    name: str = "pi",
    profile: str | None = "pi4",
    tags: list[str] | None = None,
    cache: Path | None = None,
    log: Any = None,
) -> TestDevice:
    """Start an emulated arm64 device: its keys and workdir under ``root`` (host side), seen by it at
    ``/srv/edgekit/<id>``; its python is ``DEVICE_PYTHON`` (tflite-runtime, onnxruntime 1.27, numpy 1.x)."""
    rootfs = arm64_root(cache, log=log)
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    device_root = f"/srv/edgekit/{name}-{uuid.uuid4().hex[:8]}"
    mountpoint = rootfs / device_root.lstrip("/")
    mountpoint.mkdir(parents=True)  # an empty folder on the host; only the device's namespace mounts on it
    return launch_sshd(root, name=name, python=DEVICE_PYTHON, user="root", profile=profile,
                       tags=list(tags or ["arm64", "emulated"]),
                       sshd=[*in_root(rootfs, [(root, device_root)]), "/usr/sbin/sshd"], device_root=device_root,
                       cleanups=[mountpoint.rmdir], banner_timeout=60.0)


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below ``path`` in this process's mount namespace (from /proc/self/mountinfo)."""
    base = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
            if point == base or point.startswith(base.rstrip("/") + "/"):
                found.append(Path(point))
    return sorted(set(found))


def _remove_tree(path: Path) -> None:
    """rm -rf ``path``, refusing while anything is mounted inside it (rm would reach into the host's /proc, /sys
    or /dev/pts). Build steps mount only in namespaces of their own, so this is a guard, not a step."""
    points = mounts_under(path)
    if points:
        raise RuntimeError(f"not removing {path}: still mounted inside it: {', '.join(map(str, points))}")
    shutil.rmtree(path, ignore_errors=True)


def _run(argv: list[str], what: str, timeout: float = _STEP_TIMEOUT) -> None:
    """Run ``argv`` in a process group of its own; on timeout the whole group is killed (debootstrap and
    apt start children that would outlive a killed parent and keep the root busy)."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as e:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        raise RuntimeError(f"arm64 device {what} timed out after {timeout:.0f}s: {' '.join(argv)}") from e
    except BaseException:  # interrupted: do not leave the build running in the background
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        raise
    if proc.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-30:])
        raise RuntimeError(f"arm64 device {what} failed ({' '.join(argv)}):\n{tail}")
